"""The benchmark script runs on the tiny model and reports both settings with their ratios."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def test_bench_tiny_cpu_prints_table_and_ratios(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "bench.py"), "--tiny", "--device", "cpu", "--iters", "2",
         "--warmup", "1", "--edit_steps", "3", "--overhead_rounds", "1", "--json", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(a) reference cost" in proc.stdout and "(b) default" in proc.stdout
    assert "speed-up (a)/(b)" in proc.stdout
    data = json.loads(out.read_text())
    for setting in data["settings"].values():
        assert setting["ms_per_train_iter"] > 0 and setting["s_per_edit_combination"] > 0
    assert data["ratios"]["train_iter_speedup"] > 0
    assert data["overhead_train"] > 0 and data["overhead_edit"] > 0  # loop / bare UNet, timed side by side
    assert "overhead (b): training iteration" in proc.stdout
    # UNet rows (batch elements) per combination, counted: [source, target] through both branches at 3 steps for
    # one combination; the source once for 8 targets in a sweep of 8 (issue 28's target: K = 8 <= 0.6x K = 1)
    assert data["sweep_rows_per_combination_k1"] == 2 * 2 * 3
    assert data["sweep_rows_per_combination_k8"] == (1 + 8) * 2 * 3 / 8
    assert data["sweep_rows_per_combination_k8"] <= 0.6 * data["sweep_rows_per_combination_k1"]
