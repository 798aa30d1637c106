"""Entry point with the reference's script name; the CLI lives in :mod:`sdtoolkit.cli.stylediffusion_csv`."""
import sys

from sdtoolkit.cli.flags import run_main
from sdtoolkit.cli.stylediffusion_csv import main

if __name__ == "__main__":
    sys.exit(run_main(main))
