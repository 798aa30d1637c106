"""PIE-Bench metrics of the outputs of one or more methods (entry point; the CLI lives in :mod:`sdtoolkit.cli.pie_metrics`).

    python eval_metrics/pie_metrics.py --data_path PIE-Bench --output_path output --methods stylediffusion nulltext
"""
import sys

from sdtoolkit.cli.pie_metrics import console

if __name__ == "__main__":
    sys.exit(console())
