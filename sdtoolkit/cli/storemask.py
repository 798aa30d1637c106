"""Foreground / background masks for NS-LPIPS over an editing CSV (the CLI; the masks are made by
:mod:`sdtoolkit.evaluation.storemask`, docs/method.md §7)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.auto import tqdm

from sdtoolkit.cli import flags as cli
from sdtoolkit.core import checks, values
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.io import case_filename, save_image
from sdtoolkit.core.paths import check_name, check_writable_dir
from sdtoolkit.evaluation.storemask import (INPUT_EXT, MODES, REPO_ROOT, attention_mask, inversion_maps,
                                           reference_masks, reference_token, to_png)
from sdtoolkit.jobs.cases import read_cases


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser(__doc__)
    p.add_argument("--prompts_path", default=str(REPO_ROOT / "data" / "stylediffusion_editing.csv"),
                   help="editing CSV (case_number, prompt, blend_word)")
    p.add_argument("--input_path", default=str(REPO_ROOT / "results" / "input"), help="folder of '{case} {prompt}.png' ('.jpg' with --mode reference)")
    p.add_argument("--bgmask_path", default=str(REPO_ROOT / "results" / "bgmask"), help="output: background masks")
    p.add_argument("--fgmask_path", default=str(REPO_ROOT / "results" / "fgmask"), help="output: foreground masks")
    cli.add_flags(p, "--from_case", "--end_case")
    cli.add_model_flags(p, compile_flag=False, image_encoder=False, training=False)
    cli.add_flags(p, "--num_ddim_steps", defaults={"num_ddim_steps": 50}, helps={"num_ddim_steps": "DDIM steps of "
                  "the inversion whose attention makes the mask"})
    p.add_argument("--allow_missing", action="store_true", help="mask the cases whose input exists, exit 0")
    p.add_argument("--mode", choices=MODES, default="corrected",
                   help="'reference': the published mask script's heads, token, uint8/bicubic masks and .jpg inputs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    df = read_cases(args.prompts_path, ("case_number", "prompt", "blend_word"), args.from_case, args.end_case)
    cases = []
    for _, row in df.iterrows():
        try:
            blend = values.blend_words(row["blend_word"])
        except UsageError as exc:
            raise UsageError(f"{args.prompts_path}, case {row['case_number']}: {exc}") from None
        if blend is None:
            raise UsageError(f"{args.prompts_path}, case {row['case_number']}: empty blend_word; the mask needs a source word")
        cases.append((str(row["case_number"]).strip(), row["prompt"], blend[0]))
    checks.check_steps(args.num_ddim_steps)
    checks.check_size(args.resolution, False)
    for case, prompt, _ in cases:
        try:
            check_name(case_filename(case, prompt, INPUT_EXT[args.mode]), "case_number and prompt")
        except UsageError as exc:
            raise UsageError(f"{args.prompts_path}, case {case}: {exc}") from None
    check_writable_dir(args.fgmask_path, "--fgmask_path")
    check_writable_dir(args.bgmask_path, "--bgmask_path")
    ext = INPUT_EXT[args.mode]
    inputs = {case: Path(args.input_path) / case_filename(case, prompt, ext) for case, prompt, _ in cases}
    missing = [c for c in cases if not inputs[c[0]].is_file()]
    for case, _, _ in missing:
        print(f"missing input image (case {case}): {inputs[case]}", file=sys.stderr)
    if missing and not args.allow_missing:
        print(f"{len(missing)} of {len(cases)} cases miss their input (listed above); pass --allow_missing to mask the rest")
        print(f"masked 0 of {len(cases)} cases")
        return 1
    from sdtoolkit.core.models import load_models

    models = load_models(checks.model_id(args.model, args.sd_version), args.device, args.dtype, **cli.load_kwargs(args))
    checks.check_multiple(args.resolution, models.family.size_multiple)  # the size step, known once loaded
    done, failed = 0, []
    for case, prompt, words in tqdm([c for c in cases if c not in missing], desc="masks"):
        try:
            if args.mode == "reference":
                token = reference_token(prompt, words)
                amap = inversion_maps(models, inputs[case], prompt, args.num_ddim_steps, True, args.resolution,
                                      args.keep_aspect)
                fg_png, bg_png = reference_masks(amap[:, :, token])
            else:
                fg = attention_mask(models, inputs[case], prompt, words, args.num_ddim_steps, args.resolution,
                                    args.keep_aspect)
                fg_png, bg_png = to_png(fg), to_png(1 - fg)
        except ValueError as exc:
            failed.append(case)
            tqdm.write(f"case {case}: failed ({exc})")
            continue
        save_image(Path(args.fgmask_path) / case_filename(case, prompt), fg_png)
        save_image(Path(args.bgmask_path) / case_filename(case, prompt), bg_png)
        done += 1
    print(f"mode: {args.mode}; masked {done} of {len(cases)} cases ({len(missing)} missing input, {len(failed)} failed) -> "
          f"{args.fgmask_path}, {args.bgmask_path}")
    return 1 if failed or (missing and not args.allow_missing) else 0


def console() -> int:
    """Console-script entry point: :func:`main` with the CLI error convention (exit 2, one line)."""
    return cli.run_main(main)


if __name__ == "__main__":
    sys.exit(console())
