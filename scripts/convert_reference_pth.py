"""Entry point: convert a reference-trained .pth; the CLI lives in :mod:`sdtoolkit.cli.convert_reference`."""
import sys

from sdtoolkit.cli.convert_reference import console

if __name__ == "__main__":
    sys.exit(console())
