"""Entry point with the reference's script name; the logic lives in :mod:`sdtoolkit.evaluation.storemask`."""
import sys

from sdtoolkit.cli.flags import run_main
from sdtoolkit.evaluation.storemask import main

if __name__ == "__main__":
    sys.exit(run_main(main))
