"""NS-LPIPS of an editing CSV's outputs (the CLI; the metric lives in :mod:`sdtoolkit.evaluation.ns_lpips`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from tqdm import tqdm

from sdtoolkit.cli import flags as cli
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.io import atomic_write
from sdtoolkit.core.models import resolve_device
from sdtoolkit.core.paths import check_writable_file
from sdtoolkit.evaluation.ns_lpips import (MODES, REPO_ROOT, RESULT_COLUMNS, build_lpips, case_files, editing_cases,
                                          load_case_images, ns_lpips)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = cli.ArgumentParser(
        prog="ns_lpips",
        description=(
            "NS-LPIPS (lower is better): LPIPS between input and edited image on the non-selected "
            "(background) region, both resized to 256x256 and multiplied by the soft background mask."
        ),
        epilog=(
            "Modes: 'reference' feeds the masked images in [0, 1] to LPIPS as the published script does "
            "(its 0.5 mask threshold has no effect there, the soft mask is used); 'corrected' masks the "
            "images in [0, 1] and then maps them to [-1, 1] as LPIPS expects, so masked-out pixels are -1 "
            "in both images. Output CSV: one row per scored case (case_number, prompt, target, ns_lpips); "
            "the mean over the scored cases is printed, not stored in the CSV."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--prompts_path", type=Path, default=REPO_ROOT / "data" / "stylediffusion_editing.csv",
                        help="editing CSV with columns case_number, prompt, target")
    parser.add_argument("--input_path", type=Path, default=REPO_ROOT / "results" / "input",
                        help="folder of input images '{case} {prompt}.png' ('.jpg' with --mode reference)")
    parser.add_argument("--edited_path", type=Path, default=REPO_ROOT / "results" / "ours",
                        help="folder of edited images '{case} {target}.png'")
    parser.add_argument("--mask_path", type=Path, default=REPO_ROOT / "results" / "bgmask",
                        help="folder of background masks '{case} {prompt}.png' (8-bit grayscale, 255 = "
                             "fully non-selected background, any size; other modes such as RGB are converted to gray)")
    cli.add_flags(parser, "--from_case", "--end_case")
    parser.add_argument("--mode", choices=MODES, default="corrected",
                        help="'reference': published script's [0, 1] LPIPS input; 'corrected': [-1, 1] input")
    parser.add_argument("--out", type=Path, default=None,
                        help="per-case result CSV; None: {edited_path}/../ns_lpips_{mode}.csv")
    parser.add_argument("--allow_missing", action="store_true",
                        help="score the cases whose files all exist and exit 0 although others miss files")
    parser.add_argument("--net", choices=("alex", "vgg", "squeeze"), default="alex",
                        help="LPIPS backbone (NS-LPIPS as published uses alex)")
    parser.add_argument("--offline_random_weights", action="store_true",
                        help="FOR TESTS ONLY: random backbone weights (fixed seed) instead of the ImageNet "
                             "weights torchvision downloads; the scores are not NS-LPIPS")
    parser.add_argument("--model", choices=("tiny",), default=None,
                        help="'tiny': random LPIPS backbone weights, offline (as --model tiny elsewhere: smoke runs, "
                             "the scores are noise); same as --offline_random_weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device for LPIPS")
    args = parser.parse_args(argv)
    args.offline_random_weights = args.offline_random_weights or args.model == "tiny"
    return args


def run(args: argparse.Namespace) -> int:
    """Score the selected cases, write the per-case CSV, print the mean; return the exit status."""
    cases = editing_cases(args.prompts_path, args.from_case, args.end_case)
    for flag, folder in (("--input_path", args.input_path), ("--edited_path", args.edited_path),
                         ("--mask_path", args.mask_path)):
        if not folder.is_dir():
            raise UsageError(f"{flag} {folder}: no such folder")
    device = resolve_device(args.device)
    out = check_writable_file(args.out or args.edited_path.resolve().parent / f"ns_lpips_{args.mode}.csv", "--out")

    present, incomplete = [], 0
    for case in cases:
        files = case_files(case, args.input_path, args.edited_path, args.mask_path, args.mode)
        missing = files.missing()
        for kind, path in missing:
            print(f"missing {kind} (case {case.case_number}): {path}", file=sys.stderr)
        if missing:
            incomplete += 1
        else:
            present.append((case, files))
    if incomplete and not args.allow_missing:
        print(f"{incomplete} of {len(cases)} cases miss files (listed above); nothing scored. "
              f"Pass --allow_missing to score the other {len(present)}.", file=sys.stderr)
        print(f"scored 0 of {len(cases)} cases")
        return 1
    if not present:
        print(f"scored 0 of {len(cases)} cases: every selected case misses files (listed above)")
        return 1

    try:
        loss_fn = build_lpips(args.net, args.offline_random_weights, device)
    except (OSError, RuntimeError) as err:
        print(f"ns_lpips: error: cannot build LPIPS-{args.net}: the backbone's ImageNet weights could not "
              f"be loaded or downloaded by torchvision ({err}); it caches them under $TORCH_HOME/hub/checkpoints",
              file=sys.stderr)
        return 1

    rows = []
    for case, files in tqdm(present, desc="NS-LPIPS", unit="case"):
        value = ns_lpips(loss_fn, *load_case_images(files.input, files.edited, files.mask, args.mode), mode=args.mode)
        tqdm.write(f"case {case.case_number}: NS-LPIPS {value:.6f}  ({case.prompt!r} -> {case.target!r})")
        rows.append((case.case_number, case.prompt, case.target, value))
    table = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    atomic_write(out, lambda tmp: table.to_csv(tmp, index=False))

    weights = "RANDOM backbone weights, for tests only" if args.offline_random_weights else "ImageNet backbone"
    print(f"NS-LPIPS mean = {table['ns_lpips'].mean():.6f} (mode: {args.mode}; LPIPS-{args.net}, {weights})")
    skipped = f"; {incomplete} skipped for missing files (listed above)" if incomplete else ""
    print(f"scored {len(present)} of {len(cases)} cases{skipped}; per-case values written to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0 (scored), 1 (missing files or LPIPS unavailable); bad input raises (:func:`console`: 2)."""
    return run(parse_args(argv))


def console(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: :func:`main` with the CLI error convention (exit 2, one line)."""
    return cli.run_main(main, argv, prog="ns_lpips")


if __name__ == "__main__":
    sys.exit(console())
