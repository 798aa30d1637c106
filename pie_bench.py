"""PIE-Bench runner (entry point; the logic lives in :mod:`sdtoolkit.cli.pie_bench` and :mod:`sdtoolkit.jobs.pie`)."""
import sys

from sdtoolkit.cli.pie_bench import console

if __name__ == "__main__":
    sys.exit(console())
