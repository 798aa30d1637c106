"""Entry point with the reference's script name; the CLI lives in :mod:`sdtoolkit.cli.ns_lpips`."""
import sys

from sdtoolkit.cli.ns_lpips import console

if __name__ == "__main__":
    sys.exit(console())
