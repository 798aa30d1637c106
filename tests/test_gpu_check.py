"""benchmarks/gpu_check.sh --dry-run: the GPU check's whole flow (profile, bench matrix, CLI end to end on a random SD
folder, the appended table) on the tiny model on the CPU, so the script cannot rot between GPU loans."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_gpu_check_dry_run_appends_its_table_to_the_given_results_file(tmp_path):
    tracked = Path(REPO, "benchmarks", "RESULTS.md")
    before = tracked.read_bytes()
    results = tmp_path / "RESULTS.md"
    results.write_text("# a copy\n", encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RESULTS_FILE": str(results), "WORK": str(tmp_path / "work"),
           "PYTHON": sys.executable}
    proc = subprocess.run(["bash", os.path.join("benchmarks", "gpu_check.sh"), "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = results.read_text(encoding="utf-8")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert text.startswith("# a copy\n") and "## GPU check " in text and "dry run, tiny model on the CPU" in text
    assert f"commit {head}" in text
    row = next(line for line in text.splitlines() if line.startswith("| fp32, compile off |"))
    assert "n/a |" not in row.split("|", 3)[2]  # ms per training iteration measured
    assert "| 0.562 |" in row  # UNet rows per combination, K = 8 over K = 1: (1 + 8) / 8 / 2
    assert "one training iteration:" in text and "one edit step:" in text  # (a) the profile
    sweep = next(line for line in text.splitlines() if "4 combinations (one shared sweep)" in line)
    assert len(re.findall(r"\d+\.\d\d", sweep.split("|")[2])) == 4  # (c) each combination's sidecar seconds
    assert tracked.read_bytes() == before
