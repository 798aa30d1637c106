"""File layout shared by the scripts: safe case file names and atomic writes."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock, Timeout
from PIL import Image

from sdtoolkit.core.errors import UsageError


def safe_name(text: str) -> str:
    """Make a prompt usable as (part of) a file name: path separators and NULs become '_'."""
    return text.replace("/", "_").replace("\\", "_").replace("\0", "_").strip()


def case_filename(case: int | str, text: str, ext: str = ".png") -> str:
    """The reference's flat file name for a case: ``"{case} {text}.png"``."""
    return f"{case} {safe_name(text)}{ext}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it onto ``path``.

    Readers never see a half-written file: either the old file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_image(path: str | os.PathLike, image: Image.Image) -> Path:
    """Save a PIL image atomically (format from the suffix of ``path``)."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt))


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of a result: in the temp folder (one folder per user), named by a hash of the result's
    absolute path, so the result folders hold the reference's files only."""
    key = hashlib.sha256(str(Path(path).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return Path(tempfile.gettempdir()) / f"sdtoolkit-locks-{os.getuid()}" / f"{key}.lock"


@contextmanager
def result_lock(path: str | os.PathLike) -> Iterator[Path]:
    """One writer per result: hold an OS file lock (``filelock``) on :func:`lock_path` while the result is
    computed and written. A second process on this machine stops at once with a UsageError naming the result and
    the lock; the lock is freed when its holder ends, even when it is killed."""
    path = Path(path)
    lock_file = lock_path(path)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UsageError(f"{path} is being written by another process (it holds the lock {lock_file}); wait for it "
                         "to finish, or write to another --index / output folder") from None
    try:
        yield path
    finally:
        lock.release()
