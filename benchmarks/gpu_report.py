"""The table of ``gpu_check.sh``: reads its scratch folder (bench JSONs, the CLI's sidecars and wall times) and
appends a dated section with the card and the git commit to ``--results`` (benchmarks/RESULTS.md by default).

    python benchmarks/gpu_report.py WORK --results benchmarks/RESULTS.md --fast_passes 250 --direct_passes 250
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path


def commit() -> str:
    """The checkout's short commit, with ``+changes`` when the tracked files differ from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], capture_output=True).returncode != 0
    return (head or "unknown") + ("+changes" if dirty else "")


def fmt(value, spec: str = ".1f", none: str = "n/a") -> str:
    return none if value is None else format(value, spec)


def bench_rows(work: Path, fast_passes: int, direct_schedule: str, direct_passes: int) -> tuple[list[str], dict]:
    """One table row per bench run (precision × compile); the profile of the run that made one."""
    rows, profile, device = [], None, None
    for path in sorted(work.glob("bench-*.json")):
        label = path.stem.removeprefix("bench-").replace("-compile-", ", compile ")
        data = json.loads(path.read_text())
        device = data["device"]
        b = data["settings"]["(b) default"]
        ms = b["ms_per_train_iter"]
        train = {name: t["full_training_s"] for name, t in b["by_schedule"].items()}
        direct_s = direct_passes * ms / 1000 + b["step_passes_s"]
        edit = b["by_inversion"]
        rows.append(f"| {label} | {ms:.1f} | {fmt(train.get('reference'))} | {fmt(train.get('fast'))} | "
                    f"{direct_s:.1f} | {fmt(edit.get('stylediffusion'), '.2f')} | "
                    f"{fmt(edit.get('stylediffusion_direct'), '.2f')} | {fmt(b['compile_s_first_iteration'])} | "
                    f"{fmt(b['train_peak_gib'], '.2f')} / {fmt(b['edit_peak_gib'], '.2f')} | "
                    f"{data['sweep_rows_ratio_k8_k1']:.3f} |")
        profile = profile or b.get("profile")
    for path in sorted(work.glob("bench-*.log")):
        if not path.with_suffix(".json").exists():
            label = path.stem.removeprefix("bench-").replace("-compile-", ", compile ")
            last = (path.read_text(errors="replace").strip().splitlines() or ["(no output)"])[-1][:120]
            rows.append(f"| {label} | did not finish: {last} |" + " |" * 8)
    return rows, {"profile": profile, "device": device}


def profile_lines(profile: dict | None) -> list[str]:
    if not profile:
        return ["(a) profile: none (the profiled bench run did not finish)."]
    out = []
    for region, prof in profile.items():
        idle = "n/a (CPU)" if prof["idle_share"] is None else f"{100 * prof['idle_share']:.0f} %"
        top = "; ".join(f"`{k['name'][:60]}` {k['ms']:.2f} ms ×{k['calls']}" for k in prof["top"][:6])
        out.append(f"- one {region.replace('_', ' ')}: {prof['wall_ms']:.1f} ms wall, device idle {idle}; top: {top}")
    return out


def cli_lines(work: Path, status: int) -> list[str]:
    """The CLI's wall times and its sidecars' own seconds (training ``elapsed_seconds``, per-combination ``seconds``)."""
    walls = {}
    if (work / "cli.txt").exists():
        walls = {k: int(v) / 1000 for k, v in (line.split() for line in (work / "cli.txt").read_text().splitlines())}
    learned = [json.loads(p.read_text()) for p in (work / "learned").rglob("*.json")] if (work / "learned").is_dir() else []
    edits = [json.loads(p.read_text()) for p in (work / "edits").rglob("edited_img-*.json")] \
        if (work / "edits").is_dir() else []
    train_s = learned[0].get("elapsed_seconds") if learned else None
    passes = sum(learned[0].get("iterations_per_step", [])) if learned else None
    per_combination = [e["seconds"] for e in edits]
    out = [f"| `stylediffusion.py --is_train True --schedule fast` | {fmt(train_s)} s training"
           f"{f' ({passes} passes)' if passes else ''}, {fmt(walls.get('train_wall_ms'))} s whole process |",
           f"| `stylediffusion.py --is_train ''`, 4 combinations (one shared sweep) | "
           f"{', '.join(f'{s:.2f}' for s in per_combination) or 'n/a'} s per combination, "
           f"{fmt(walls.get('edit_wall_ms'))} s whole process |"]
    if status:
        out.append(f"| (the CLI run stopped with exit status {status}; see cli.log of the run) | |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", type=Path, help="gpu_check.sh's scratch folder")
    p.add_argument("--results", type=Path, default=Path("benchmarks/RESULTS.md"), help="the file appended to")
    p.add_argument("--fast_passes", type=int, required=True)
    p.add_argument("--direct_schedule", required=True)
    p.add_argument("--direct_passes", type=int, required=True)
    p.add_argument("--cli_status", type=int, default=0)
    p.add_argument("--seconds", type=int, default=None, help="the whole check's wall time")
    p.add_argument("--dry_run", action="store_true")
    args = p.parse_args(argv)
    rows, info = bench_rows(args.work, args.fast_passes, args.direct_schedule, args.direct_passes)
    import torch  # the versions of the run

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    kind = "dry run, tiny model on the CPU" if args.dry_run else "full-size SD 1.4 architecture, random weights"
    lines = [
        "", f"## GPU check {when}: {info['device'] or 'no bench result'} ({kind})", "",
        f"`bash benchmarks/gpu_check.sh{' --dry-run' if args.dry_run else ''}`, commit {commit()}, torch "
        f"{torch.__version__}{f', {args.seconds} s in all' if args.seconds is not None else ''}. Training seconds "
        f"are one iteration's time × the passes (reference: 1,015 at T = 30, N = 100; fast: {args.fast_passes}; "
        f"stylediffusion_direct's cheapest setting, `--schedule {args.direct_schedule}`: {args.direct_passes}) plus "
        "the per-step passes; edits are one combination of 30 steps; the sweep column is UNet rows per combination "
        "of K = 8 over K = 1.", "",
        "| precision, compile | ms / training iteration | training s, reference | training s, fast | "
        "training s, direct cheapest | s / edit, stylediffusion | s / edit, direct | compile s | peak GiB train / edit "
        "| sweep rows K=8 / K=1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *rows, "",
        "(a) profile (fp32, uncompiled):", *profile_lines(info["profile"]), "",
        "(c) the CLI end to end on a random SD folder (benchmarks/make_random_sd.py):", "",
        "| command | result |", "|---|---|", *cli_lines(args.work, args.cli_status), ""]
    with open(args.results, "a", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
