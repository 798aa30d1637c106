"""PIE-Bench metrics of the outputs of one or more methods (entry point; see sdtoolkit.evaluation.pie_metrics).

    python eval_metrics/pie_metrics.py --data_path PIE-Bench --output_path output --methods stylediffusion nulltext
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdtoolkit.evaluation.pie_metrics import main

if __name__ == "__main__":
    sys.exit(main())
