"""Entry point with the reference's script name; the CLI lives in :mod:`sdtoolkit.cli.stylediffusion_csv`."""
import sys

from sdtoolkit.cli.stylediffusion_csv import console

if __name__ == "__main__":
    sys.exit(console())
