"""Entry point with the reference's script name; the CLI lives in :mod:`sdtoolkit.cli.p2plus`."""
import sys

from sdtoolkit.cli.p2plus import console

if __name__ == "__main__":
    sys.exit(console())
