"""PIE-Bench metrics of the outputs of one or more methods (entry point; the logic lives in :mod:`sdtoolkit.evaluation.pie_metrics`).

    python eval_metrics/pie_metrics.py --data_path PIE-Bench --output_path output --methods stylediffusion nulltext
"""
import sys

from sdtoolkit.evaluation.pie_metrics import main

if __name__ == "__main__":
    sys.exit(main())
