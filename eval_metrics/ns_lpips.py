"""Entry point with the reference's script name; the logic lives in :mod:`sdtoolkit.evaluation.ns_lpips`."""
import sys

from sdtoolkit.evaluation.ns_lpips import main

if __name__ == "__main__":
    sys.exit(main())
