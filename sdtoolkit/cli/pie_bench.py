"""PIE-Bench runner: invert and edit every case of a PIE-Bench folder with one method; outputs in PnPInversion's layout.

    python pie_bench.py --data_path PIE-Bench --output_path output --method stylediffusion
    python eval_metrics/pie_metrics.py --data_path PIE-Bench --output_path output --methods stylediffusion

Defaults reproduce PIE-Bench's StyleDiffusion + P2P row (SD 1.4, T = 50, 100 inner steps, 1 epoch,
guidance 7.5, tau_v .5 / tau_c .6 / tau_s .6 / tau_u 0, no blend word, no reweighting, prompts without
brackets). Two tracks: mask-free (default, as published) and mask-allowed (``--use_annotation_mask``: the
case's annotation mask replaces LocalBlend's attention mask). Finished cases are skipped; inversions are kept
in ``--inversion_dir``. A broken case fails alone and is listed at the end; exit 2 only when nothing could run.
``accelerate launch pie_bench.py …`` splits the cases between processes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from sdtoolkit.cli import flags as cli
from sdtoolkit.cli.runs import shard, summary, table
from sdtoolkit.core import checks, values
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.naming import front_door
from sdtoolkit.core.paths import check_writable_dir
from sdtoolkit.core.settings import InversionMethod, Taus, to_enum
from sdtoolkit.jobs.pie import MANIFEST_FILE, CaseResult, PieSettings, ReplacementRule, run_case
from sdtoolkit.jobs.pie_data import CaseError, check_editing_types, load_benchmark, method_dir, method_folder_name, select_cases


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser(__doc__)
    p.add_argument("--data_path", required=True, help="PIE-Bench folder (mapping_file.json, annotation_images/)")
    p.add_argument("--output_path", required=True, help="outputs go to {output_path}/{method}+p2p/annotation_images/")
    p.add_argument("--method", default=InversionMethod.STYLEDIFFUSION.value, choices=[m.value for m in InversionMethod],
                   help="inversion method")
    p.add_argument("--inversion_dir", default=None,
                   help="where inversions are kept and reused (default {output_path}/inversions); point a second "
                        "editing setting's run here to re-edit without re-inverting")
    p.add_argument("--edit_category_list", nargs="+", default=None, help="editing type ids 0-9 (default: all)")
    cli.add_flags(p, "--from_case", "--end_case", defaults={"from_case": 0},
                  helps={"from_case": "first case (position in mapping_file.json, 0-based)",
                         "end_case": "stop before this position (default: the last case)"})
    cli.add_model_flags(p)
    cli.add_flags(p, "--num_ddim_steps", "--num_inner_steps", "--num_epoch", "--schedule", "--guidance_scale",
                  defaults={"num_ddim_steps": 50}, helps={"num_ddim_steps": "DDIM steps T (PIE-Bench's 50)"})
    # one value each (PIE-Bench's StyleDiffusion row: .5 / .6 / .6 / 0)
    cli.add_flags(p, *cli.TAU_FLAGS, defaults=PieSettings(model="").taus.as_dict())
    p.add_argument("--use_annotation_mask", action="store_true",
                   help="mask-allowed track: the annotation mask replaces LocalBlend's attention mask")
    p.add_argument("--blend_from_brackets", action="store_true", help="the [bracketed] words become the blend words")
    p.add_argument("--replacement_rule", default=ReplacementRule.WORDS.value, choices=[r.value for r in ReplacementRule],
                   help="Replacement when the prompts have the same number of words, or (char_length) of characters "
                        "as the published runner; else Refinement")
    cli.add_flags(p, "--seed", "--overwrite", helps={"overwrite": "redo finished cases"})
    return p


def settings_from(args: argparse.Namespace) -> PieSettings:
    """Checked settings from the parsed flags."""
    with front_door({"inversion": "--method"}):  # PIE-Bench runners call the inversion method --method
        inv = cli.invert_config(args, checks.model_id(args.model, args.sd_version), prompt="", image_path="",
                                inversion=args.method)
    taus = {name: one_value(items, f"--{name}")
            for name, items in values.tau_lists(lambda name: getattr(args, name)).items()}
    checks.check_size(args.resolution, False)
    return PieSettings(model=inv.model, method=inv.inversion, num_ddim_steps=inv.num_ddim_steps,
                       num_inner_steps=inv.num_inner_steps, num_epoch=inv.num_epoch,
                       guidance_scale=inv.guidance_scale, taus=Taus(**taus), use_annotation_mask=args.use_annotation_mask,
                       blend_from_brackets=args.blend_from_brackets,
                       replacement_rule=to_enum(ReplacementRule, args.replacement_rule, "replacement_rule"),
                       seed=inv.seed, resolution=inv.resolution, keep_aspect=inv.keep_aspect, schedule=inv.schedule)


def one_value(items: list, flag: str) -> float:
    """The single value of a tau flag (a PIE-Bench run edits every case with one setting)."""
    if len(items) != 1:
        raise UsageError(f"{flag} {items}: pie_bench.py takes one value per tau (run once per setting)")
    return items[0]


def manifest(settings: PieSettings, args: argparse.Namespace, n_cases: int, processes: int) -> dict:
    """The run manifest: model and weights fingerprint, library versions, seed and every setting."""
    from sdtoolkit.core.models import model_fingerprint
    from sdtoolkit.jobs.invert import versions

    return {"settings": settings.edit_identity(), "model_fingerprint": model_fingerprint(settings.model),
            "versions": versions(), "data_path": str(args.data_path), "inversion_dir": str(args.inversion_dir),
            "edit_category_list": args.edit_category_list, "from_case": args.from_case, "end_case": args.end_case,
            "cases_selected": n_cases, "processes": processes, "device": args.device, "dtype": args.dtype,
            "command": sys.argv}


def run_summary(results: list[CaseResult], tag: str, total: int, seconds: float) -> str:
    """The end-of-run summary, then the failed and the redone cases, each named."""
    lines = [summary([r.status for r in results], total, "cases", tag, seconds)]
    failed = [(r.key, r.message) for r in results if r.status == "failed"]
    if failed:
        lines += [f"{tag}failed cases:"] + table(failed)
    redone = [(r.key, r.redone) for r in results if r.redone]
    if redone:
        lines += [f"{tag}redone cases (the earlier output could not be reused):"] + table(redone)
    return "\n".join(lines)


def main(argv: list[str] | None = None, after_case: Callable[[CaseResult], bool] | None = None) -> int:
    """Run the cases; ``after_case`` (the table's runner: its time budget) sees every case's result and returns
    True to stop before the next case (the cases left are not run and are counted in the summary)."""
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    types = None if args.edit_category_list is None else check_editing_types(args.edit_category_list)
    bench = load_benchmark(args.data_path)
    cases = select_cases(bench.cases, types, args.from_case, args.end_case)
    unreadable = bench.failures  # cases that could not be read: failed, named, counted
    args.inversion_dir = Path(args.inversion_dir or Path(args.output_path) / "inversions")
    check_writable_dir(method_dir(args.output_path, settings.method), "--output_path")
    check_writable_dir(args.inversion_dir, "--inversion_dir")
    if not cases and not unreadable:
        raise UsageError(f"--data_path {args.data_path}: no case matches --edit_category_list {args.edit_category_list} "
                         f"and the range [{args.from_case}, {args.end_case})")

    from sdtoolkit.core.io import write_json
    from sdtoolkit.core.models import load_models

    part = shard(args.device)
    mine, tag = part.mine(cases), part.tag
    results = [CaseResult(f.key, "failed", f.message) for f in unreadable] if part.is_main else []
    start, not_run = time.perf_counter(), 0
    if mine:
        models = load_models(settings.model, part.device, args.dtype, **cli.load_kwargs(args))
        checks.check_multiple(args.resolution, models.family.size_multiple)  # the size step, known once loaded
        if part.is_main:
            write_json(method_dir(args.output_path, settings.method) / MANIFEST_FILE,
                       manifest(settings, args, len(cases), part.count))
        bar = tqdm(mine, desc=f"{tag}{method_folder_name(settings.method)} ({settings.track})", unit="case", position=part.index)
        for k, case in enumerate(bar):
            if k and after_case is not None and after_case(results[-1]):
                not_run = len(mine) - k
                break
            try:
                results.append(run_case(models, case, settings, Path(args.data_path), Path(args.output_path),
                                        args.inversion_dir, args.overwrite))
            except (UsageError, CaseError) as err:  # bad input of this case: named, counted, the run goes on
                results.append(CaseResult(case.key, "failed", str(err).splitlines()[0]))
            except Exception as err:  # a broken case fails alone
                results.append(CaseResult(case.key, "failed", f"{type(err).__name__}: {err}".splitlines()[0]))
    print(run_summary(results, tag, len(mine) + (len(unreadable) if part.is_main else 0),
                      time.perf_counter() - start), flush=True)
    if not_run:
        print(f"{tag}stopped between cases: {not_run} case(s) not run (the time budget is spent)", flush=True)
    if results and all(r.status == "failed" for r in results):
        return 2
    return 1 if any(r.status == "failed" for r in results) else 0


def console() -> int:
    """Console-script entry point: :func:`main` with the CLI error convention (exit 2, one line)."""
    return cli.run_main(main)


if __name__ == "__main__":
    sys.exit(console())
