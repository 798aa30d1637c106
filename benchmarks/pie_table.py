"""Reproduce PIE-Bench's published table (entry point; the logic lives in :mod:`sdtoolkit.cli.pie_table` and
:mod:`sdtoolkit.evaluation.pie_table`).

    python benchmarks/pie_table.py --data_path PIE-Bench_v1 --output_path runs/pie [--methods …] [--model sd_1_4]
"""
import sys

from sdtoolkit.cli.pie_table import console

if __name__ == "__main__":
    sys.exit(console())
