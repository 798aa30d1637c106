"""PIE-Bench metrics of one or more methods' outputs (the CLI; the metrics live in :mod:`sdtoolkit.evaluation.pie_metrics`).

    python eval_metrics/pie_metrics.py --data_path PIE-Bench --output_path output --methods stylediffusion nulltext
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from sdtoolkit.cli import flags as cli
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.io import atomic_write
from sdtoolkit.core.models import resolve_device
from sdtoolkit.core.paths import check_name, check_writable_file
from sdtoolkit.evaluation import toy_scores
from sdtoolkit.evaluation.pie_metrics import (CLIP_MODEL, DINO_MODEL, EDITING_TYPES, METRICS, BackboneSettings,
                                             PieScorer, column, format_summary, method_folder, read_rgb, score_cases,
                                             summarise)
from sdtoolkit.jobs.pie_data import check_editing_types, load_benchmark, method_folder_name, select_cases


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = cli.ArgumentParser(
        prog="pie_metrics",
        description="PIE-Bench's metrics (structure distance, background PSNR / LPIPS / MSE / SSIM, CLIP "
                    "similarity) of the outputs of one or more methods, as the benchmark's evaluator defines them.",
        epilog="Outputs are read from {output_path}/{method}+p2p/annotation_images/{image_path}; a non-square "
               "output's bottom-right panel of the source's size is the edited image (PnPInversion's 4-panel "
               "layout). The per-case CSV has one column per method x metric ('{method}+p2p|{metric}', 'nan' where "
               "undefined or not scored); the tables show means in PIE-Bench's units, each followed by [the number "
               "of cases it was taken over].",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data_path", type=Path, required=True,
                        help="PIE-Bench folder (mapping_file.json and annotation_images/)")
    parser.add_argument("--output_path", type=Path, required=True, help="folder holding {method}+p2p/ output folders")
    parser.add_argument("--methods", nargs="+", default=["stylediffusion"],
                        help="method names: the output folders {method}+p2p to score")
    parser.add_argument("--result_path", type=Path, default=None,
                        help="per-case CSV; None: {output_path}/pie_metrics.csv. The summary goes beside it "
                             "as {stem}_summary.csv")
    parser.add_argument("--edit_category_list", nargs="+", default=list(EDITING_TYPES),
                        help="editing_type_id values to score (0-9)")
    parser.add_argument("--dino_model", default=DINO_MODEL, help="DINO ViT-B/8: hub id or local folder")
    parser.add_argument("--clip_model", default=CLIP_MODEL, help="CLIP ViT-L/14: hub id or local folder")
    parser.add_argument("--offline_random_weights", action="store_true",
                        help="FOR TESTS ONLY: build DINO, CLIP and the LPIPS backbone from their configs with random "
                             "weights (fixed seed), no download; the scores are not PIE-Bench's")
    parser.add_argument("--random_size", choices=("full", "tiny"), default="full",
                        help="architecture of the random backbones: the real ones, or tiny ones for tests "
                             "(only with --offline_random_weights)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """Check the input, score, write the CSVs and print the tables; return the exit status."""
    types = check_editing_types(args.edit_category_list)
    if args.random_size != "full" and not args.offline_random_weights:
        raise UsageError("--random_size only applies with --offline_random_weights")
    device = resolve_device(args.device)
    methods = list(dict.fromkeys(args.methods))
    for method in methods:
        check_name(method_folder_name(method), "--methods")
    for method in methods:
        if not method_folder(args.output_path, method).is_dir():
            raise UsageError(f"--methods {method}: no output folder {method_folder(args.output_path, method)}")
    bench = load_benchmark(args.data_path)
    for failure in bench.failures:
        print(f"failed case: {failure.message}", file=sys.stderr)
    if not bench.cases:
        raise UsageError(f"{args.data_path}: none of its {len(bench.failures)} cases is usable (listed above)")
    cases = select_cases(bench.cases, types)
    if not cases:
        raise UsageError(f"--edit_category_list {' '.join(types)} selects none of the {len(bench.cases)} usable cases")
    result_path = check_writable_file(args.result_path or args.output_path / "pie_metrics.csv", "--result_path")
    check_writable_file(result_path.with_name(f"{result_path.stem}_summary.csv"), "--result_path (its summary)")
    settings = BackboneSettings(dino=args.dino_model, clip=args.clip_model, random_weights=args.offline_random_weights,
                                random_size=args.random_size)
    try:
        scorer = PieScorer(settings, device)
    except OSError as err:
        print(f"pie_metrics: error: cannot load the metric networks ({err}); pass local folders with --dino_model / "
              "--clip_model, or --offline_random_weights for a test run", file=sys.stderr)
        return 1

    scored = score_cases(scorer, args.data_path, args.output_path, methods, cases, progress=not args.quiet)
    summary = summarise(scored.table, methods)
    atomic_write(result_path, lambda tmp: scored.table.to_csv(tmp, index=False, na_rep="nan"))
    summary_path = result_path.with_name(f"{result_path.stem}_summary.csv")
    atomic_write(summary_path, lambda tmp: summary.to_csv(tmp, index=False, na_rep="nan"))

    for method, paths in scored.missing.items():
        for path in paths:
            print(f"missing output ({method}): {path}", file=sys.stderr)
    for problem in scored.problems:
        who = f" ({problem.method})" if problem.method else ""
        print(f"not scored: case {problem.key}{who}: {problem.message}", file=sys.stderr)
    print(f"PIE-Bench metrics of {len(cases)} cases (editing types {' '.join(types)}); {settings.describe()}")
    if bench.failures:
        print(f"{len(bench.failures)} case(s) of the mapping file failed to read (listed above)")
    source_problems = sum(p.method is None for p in scored.problems)
    for method in methods:
        bad = sum(p.method == method for p in scored.problems)
        done = len(cases) - len(scored.missing[method]) - bad - source_problems
        print(f"\n{method} ({method_folder_name(method)}): {done} of {len(cases)} cases scored, {len(scored.missing[method])} "
              f"missing output, {bad + source_problems} unreadable (listed above)")
        print(format_summary(summary, method))
    print(f"\nmean [number of cases it was taken over]; NaN cases (metric undefined, output missing) are left out\n"
          f"per-case values: {result_path}\nsummary: {summary_path}")
    if toy_scores.has_ground_truth(args.data_path):
        toy = toy_scores.score_outputs(args.data_path, {m: method_folder(args.output_path, m) for m in methods}, cases,
                                       read_rgb)
        toy_path = result_path.with_name(f"{result_path.stem}_toy.csv")
        atomic_write(toy_path, lambda tmp: toy.to_csv(tmp, index=False, na_rep="nan"))
        print(f"\ntoy-world ground truth (sdtoolkit.evaluation.toy_scores), per-case values: {toy_path}\n"
              f"{toy_scores.markdown(toy_scores.summarise(toy))}")
    any_scored = scored.table[[column(m, METRICS[0]) for m in methods]].notna().to_numpy().any()
    return 0 if any_scored else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0 (scored), 1 (nothing scored, or networks unavailable); bad input raises (:func:`console`: 2)."""
    return run(parse_args(argv))


def console(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: :func:`main` with the CLI error convention (exit 2, one line)."""
    return cli.run_main(main, argv, prog="pie_metrics")


if __name__ == "__main__":
    sys.exit(console())
