"""Reproduce PIE-Bench's published table in one command: every method at its published setting, measured beside
the published numbers (the CLI; the table's logic lives in :mod:`sdtoolkit.evaluation.pie_table`).

    python benchmarks/pie_table.py --data_path PIE-Bench_v1 --output_path runs/pie
    accelerate launch benchmarks/pie_table.py --data_path PIE-Bench_v1 --output_path runs/pie   # cases split over GPUs

Runs :mod:`sdtoolkit.cli.pie_bench` once per method (resumable: finished cases are skipped) at the method's
published setting (T = 50, its own inner steps and guidance — EDICT's 3 —, the reference schedule, the mask-free
track), scores every output with the benchmark's metrics (:mod:`sdtoolkit.evaluation.pie_metrics`) and writes
``{output_path}/table.md`` and ``table.csv``: per method and editing type, measured | published | difference, UNet
passes and seconds per image, and each row's setting, track, weights fingerprint, library versions and seed. A
setting flag moves the methods it applies to off the published setting, and the table says so.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from sdtoolkit.cli import flags as cli
from sdtoolkit.cli import pie_bench
from sdtoolkit.cli.runs import shard
from sdtoolkit.core.constants import SD_VERSIONS
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.io import atomic_write
from sdtoolkit.core.paths import check_writable_dir
from sdtoolkit.core.settings import InversionMethod
from sdtoolkit.evaluation.pie_metrics import CLIP_MODEL, DINO_MODEL, BackboneSettings, PieScorer, score_cases, summarise
from sdtoolkit.evaluation.pie_table import (NOT_COMPARABLE, TABLE_METHODS, MethodRun, build_table, describe_changes,
                                            load_published, markdown, pass_seconds, planned_passes, run_setting,
                                            setting_changes, versions_text)
from sdtoolkit.jobs.pie import CASES_DIR, MANIFEST_FILE, CaseResult
from sdtoolkit.jobs.pie_data import check_editing_types, load_benchmark, method_dir, select_cases

TABLE_MD, TABLE_CSV, SCORES_CSV = "table.md", "table.csv", "pie_metrics.csv"
SETTING_FLAGS = ("num_ddim_steps", "num_inner_steps", "num_epoch", "guidance_scale", "schedule")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser(__doc__)
    p.add_argument("--data_path", required=True, type=Path, help="PIE-Bench folder (mapping_file.json, annotation_images/)")
    p.add_argument("--output_path", required=True, type=Path,
                   help="the methods' outputs ({method}+p2p/), pie_metrics.csv, table.md and table.csv go here")
    p.add_argument("--methods", nargs="+", default=[m.value for m in TABLE_METHODS],
                   choices=[m.value for m in InversionMethod], help="methods to run and tabulate")
    p.add_argument("--model", default="sd_1_4",
                   help=f"{', '.join(SD_VERSIONS)}, a hub id, a local SD folder, 'toy' or 'tiny' (PIE-Bench: sd_1_4)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (under accelerate: each process's GPU)")
    p.add_argument("--dtype", default="auto", help="auto (= fp32), fp32, bf16, fp16")
    p.add_argument("--edit_category_list", nargs="+", default=None, help="editing type ids 0-9 (default: all)")
    cli.add_flags(p, "--from_case", "--end_case", defaults={"from_case": 0})
    cli.add_flags(p, *(f"--{name}" for name in SETTING_FLAGS), defaults=dict.fromkeys(SETTING_FLAGS),
                  helps={name: "override the published setting (the rows it changes are marked)" for name in SETTING_FLAGS})
    p.add_argument("--use_annotation_mask", action="store_true",
                   help="mask-allowed track (the published table is mask-free; the rows are marked)")
    cli.add_flags(p, "--seed")
    p.add_argument("--max_hours", type=float, default=None,
                   help="stop between cases once this many hours have passed; what is done is scored")
    p.add_argument("--dino_model", default=DINO_MODEL, help="DINO ViT-B/8 of the structure distance: hub id or folder")
    p.add_argument("--clip_model", default=CLIP_MODEL, help="CLIP ViT-L/14 of the CLIP scores: hub id or folder")
    p.add_argument("--offline_random_weights", action="store_true",
                   help="FOR TESTS ONLY: random-weight metric backbones; the table is marked not comparable")
    p.add_argument("--random_size", choices=("full", "tiny"), default="full",
                   help="architecture of the random backbones (only with --offline_random_weights)")
    p.add_argument("--quiet", action="store_true", help="no progress bar while scoring")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse conflicting flags (one line each)."""
    if args.random_size != "full" and not args.offline_random_weights:
        raise UsageError("--random_size only applies with --offline_random_weights")
    if args.offline_random_weights and (args.dino_model != DINO_MODEL or args.clip_model != CLIP_MODEL):
        raise UsageError("--offline_random_weights conflicts with --dino_model / --clip_model: random weights "
                         "replace the named networks")
    if args.max_hours is not None and not args.max_hours > 0:
        raise UsageError(f"--max_hours {args.max_hours} must be > 0")
    if args.end_case is not None and args.end_case <= args.from_case:
        raise UsageError(f"--from_case {args.from_case} and --end_case {args.end_case} select no case")


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """The setting flags given on the command line (None: not given)."""
    out = {name: getattr(args, name) for name in SETTING_FLAGS}
    out["track"] = "mask-allowed" if args.use_annotation_mask else None
    return out


def runner_argv(args: argparse.Namespace, method: InversionMethod) -> list[str]:
    """The ``pie_bench.py`` flags of one method's run at its (published or overridden) setting."""
    setting = run_setting(method, overrides(args))
    model = ["--sd_version", args.model] if args.model in SD_VERSIONS else ["--model", args.model]
    argv = ["--data_path", str(args.data_path), "--output_path", str(args.output_path), "--method", method.value,
            *model, "--device", args.device, "--dtype", args.dtype, "--seed", str(args.seed),
            "--from_case", str(args.from_case)]
    argv += [x for name in SETTING_FLAGS for x in (f"--{name}", str(setting[name]))]
    if args.end_case is not None:
        argv += ["--end_case", str(args.end_case)]
    if args.edit_category_list:
        argv += ["--edit_category_list", *args.edit_category_list]
    if setting["track"] == "mask-allowed":
        argv.append("--use_annotation_mask")
    return argv


class Budget:
    """``--max_hours``: spent once that much time has passed since the command started; looked at between cases
    (after a case, and before a method other than the first), so a run stops cleanly with whole cases done."""

    def __init__(self, hours: float | None) -> None:
        self.seconds = None if hours is None else hours * 3600.0
        self.start = time.monotonic()

    def spent(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.start >= self.seconds


def print_plan(methods: Sequence[InversionMethod], args: argparse.Namespace, n_cases: int, card: str,
               processes: int) -> None:
    """Print the plan: cases, UNet passes per image and GPU-hours per method (from the measured per-pass times of
    ``card``, else announced to follow each method's first case)."""
    dtype = "fp32" if args.dtype == "auto" else args.dtype
    measured = pass_seconds(card, dtype)
    print(f"plan: {len(methods)} method(s) x {n_cases} case(s) on {card} ({dtype}, {processes} process(es)); "
          f"UNet passes per image = inversion + training iterations at their cap + editing (docs/method.md §9.6)")
    total = 0.0
    for method in methods:
        setting = run_setting(method, overrides(args))
        plan = planned_passes(method, setting["num_ddim_steps"], setting["num_inner_steps"], setting["num_epoch"],
                              setting["schedule"])
        hours = n_cases * measured.seconds(plan) / 3600 if measured else math.nan
        total += hours
        estimate = f"{hours:.2f} GPU-hours" if measured else f"{hours_unit(card)}: estimated from its first case"
        print(f"  {method.value:<22} {n_cases} cases, {plan.describe()} passes/image, {estimate}; "
              f"{describe_changes(setting_changes(method, overrides(args)))}")
    if measured:
        print(f"  total {total:.2f} GPU-hours ({total / processes:.2f} h on {processes} GPU(s)); per-pass times: "
              f"{measured.source}")
    else:
        print(f"  no per-pass time measured for {card} in {dtype} (benchmarks/RESULTS.md): each method's estimate "
              "follows its first case")


def hours_unit(card: str) -> str:
    """What the estimates count: GPU-hours, or CPU-hours on a CPU."""
    return "CPU-hours" if card == "cpu" else "GPU-hours"


def first_case_estimate(method: InversionMethod, n_cases: int, processes: int, budget: Budget,
                        unit: str) -> Callable[[CaseResult], bool]:
    """The runner's after-case callback: prints the estimate from the method's first case done, and stops the run
    between cases once the budget is spent."""
    told = []

    def after(result: CaseResult) -> bool:
        if not told and result.status == "done":
            told.append(True)
            print(f"\n{method.value}: first case {result.seconds:.1f} s -> about {result.seconds * n_cases / 3600:.2f} "
                  f"{unit} for {n_cases} cases ({result.seconds * n_cases / 3600 / processes:.2f} h on "
                  f"{processes} process(es))", flush=True)
        return budget.spent()

    return after


def method_run(args: argparse.Namespace, method: InversionMethod, keys: dict[str, str]) -> MethodRun:
    """What the manifest and the sidecars of the selected cases (key -> editing type) say about a method's run."""
    folder = method_dir(args.output_path, method.value)
    manifest_file = folder / MANIFEST_FILE
    manifest = json.loads(manifest_file.read_text(encoding="utf-8")) if manifest_file.is_file() else {}
    settings = manifest.get("settings", {})
    rows = []
    for key, type_id in keys.items():
        side = folder / CASES_DIR / f"{key}.json"
        saved = json.loads(side.read_text(encoding="utf-8")) if side.is_file() else {}
        rows.append({"key": key, "editing_type_id": type_id, "unet_passes": saved.get("unet_passes", math.nan),
                     "seconds": saved.get("seconds", math.nan)})
    return MethodRun(method=method.value, setting=describe_changes(setting_changes(method, overrides(args))),
                     track=settings.get("track", "not run"), weights=manifest.get("model_fingerprint", "not run"),
                     versions=versions_text(manifest.get("versions", {})), seed=settings.get("seed"),
                     cost=pd.DataFrame(rows, columns=["key", "editing_type_id", "unet_passes", "seconds"]))


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0 (table written, every case ran), 1 (some case failed or the metric networks are missing); bad
    input raises (:func:`console`: 2, one line)."""
    args = build_parser().parse_args(argv)
    check_args(args)
    types = None if args.edit_category_list is None else check_editing_types(args.edit_category_list)
    methods = [InversionMethod(m) for m in dict.fromkeys(args.methods)]
    sources, published = load_published()
    bench = load_benchmark(args.data_path)
    cases = select_cases(bench.cases, types, args.from_case, args.end_case)
    if not cases:
        raise UsageError(f"--data_path {args.data_path}: no usable case matches --edit_category_list "
                         f"{args.edit_category_list} and the range [{args.from_case}, {args.end_case})")
    check_writable_dir(args.output_path, "--output_path")
    for method in methods:  # every run's flags checked before anything runs
        pie_bench.settings_from(pie_bench.build_parser().parse_args(runner_argv(args, method)))

    import torch

    from sdtoolkit.core.models import resolve_device

    budget = Budget(args.max_hours)
    part = shard(args.device)
    device = resolve_device(part.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    backbones = BackboneSettings(dino=args.dino_model, clip=args.clip_model, random_weights=args.offline_random_weights,
                                 random_size=args.random_size)
    scorer = None
    if part.is_main:
        print_plan(methods, args, len(cases), card, part.count)
        try:  # the metric networks load before hours of editing, not after
            scorer = PieScorer(backbones, device)
        except OSError as err:
            print(f"pie_table: error: cannot load the metric networks ({err}); pass local folders with --dino_model / "
                  "--clip_model, or --offline_random_weights for a test run", file=sys.stderr)
            return 1
    statuses = []
    for method in methods:
        if statuses and budget.spent():  # checked between cases only: the first case always runs
            print(f"{method.value}: not started (--max_hours {args.max_hours} spent)", flush=True)
            continue
        after = first_case_estimate(method, len(cases), part.count, budget, hours_unit(card))
        statuses.append(pie_bench.main(runner_argv(args, method), after_case=after))
    from accelerate import PartialState

    PartialState(cpu=args.device == "cpu").wait_for_everyone()
    if not part.is_main:
        return 0

    names = [m.value for m in methods]
    scored = score_cases(scorer, args.data_path, args.output_path, names, cases, progress=not args.quiet)
    atomic_write(args.output_path / SCORES_CSV, lambda tmp: scored.table.to_csv(tmp, index=False, na_rep="nan"))
    keys = {case.key: case.editing_type_id for case in cases}
    runs = [method_run(args, method, keys) for method in methods]
    whole = len(cases) == len(bench.cases) and not bench.failures
    comparable = whole and not backbones.random_weights
    table = build_table(summarise(scored.table, names), runs, published, backbones.describe(), comparable)
    header = ["**PIE-Bench: measured beside the published table**", ""]
    if backbones.random_weights:
        header += [f"**{NOT_COMPARABLE}**: the metric backbones have random weights (offline run).", ""]
    elif not whole:
        header += [f"**{NOT_COMPARABLE}**: a selection of the benchmark's cases (the published means are over all).",
                   ""]
    header += [f"{len(cases)} case(s) of {args.data_path.name} (the published numbers are means over PIE-Bench's 700); "
               f"model {args.model}, seeds and versions per row; seconds per image on {card} ({part.count} "
               f"process(es)); metric backbones: {backbones.describe()}; missing outputs: "
               + ", ".join(f"{m} {len(p)}" for m, p in scored.missing.items()) + "."]
    atomic_write(args.output_path / TABLE_CSV, lambda tmp: table.to_csv(tmp, index=False, na_rep="nan"))
    text = markdown(table, header, sources)
    atomic_write(args.output_path / TABLE_MD, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    print(f"\n{text}\ntable: {args.output_path / TABLE_MD}, {args.output_path / TABLE_CSV}; per-case scores: "
          f"{args.output_path / SCORES_CSV}")
    return 1 if any(statuses) else 0


def console(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: :func:`main` with the CLI error convention (exit 2, one line)."""
    return cli.run_main(main, argv, prog="pie_table")


if __name__ == "__main__":
    sys.exit(console())
