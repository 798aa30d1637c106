"""Entry point with the reference's script name; the CLI lives in :mod:`sdtoolkit.cli.storemask`."""
import sys

from sdtoolkit.cli.storemask import console

if __name__ == "__main__":
    sys.exit(console())
