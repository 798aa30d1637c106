"""User-facing errors: the CLIs print them as one line and exit with status 2 (:func:`one_line`)."""
from __future__ import annotations

from sdtoolkit.core.naming import name


class UsageError(ValueError):
    """Bad input from the user (a flag, a file, a CSV row); the message says what would be valid."""


class NonFiniteError(RuntimeError):
    """A loss or latent became NaN/inf."""


EXPECTED = (UsageError, OSError, ValueError, OverflowError, MemoryError, NonFiniteError)
"""What a CLI reports as one line and exit status 2 rather than a traceback: bad input, the file system's
refusals (permission, not a folder, name too long, disk full), numbers out of range, memory, non-finite values.
Anything else is a bug and keeps its traceback."""


def one_line(exc: BaseException) -> str:
    """The one line a CLI prints for an :data:`EXPECTED` error: its message, naming the path for the file
    system's errors."""
    if isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror or exc}"
    elif isinstance(exc, MemoryError):
        text = (f"out of memory ({exc or 'MemoryError'}); try a smaller {name('resolution')}, {name('dtype')} bf16, "
                f"{name('vae_tiling')}")
    elif isinstance(exc, UsageError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__
