"""Paths built from data or names: kept inside their root, file names the file system accepts, output locations
that can be written — all checked before anything is read, written or loaded.

A small pure function (``Path.resolve`` + ``is_relative_to``) rather than a library: the light safe-join helpers
(werkzeug's ``safe_join``) come with a web framework and return None instead of naming the problem.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePath

from sdtoolkit.core.errors import UsageError

NAME_MAX_BYTES = 255
"""The longest file or folder name (UTF-8 bytes) that ext4, XFS, APFS and NTFS accept."""


def check_name(name: str, what: str) -> str:
    """``name`` as one file or folder name: no path separator, NUL, ``.``/``..``, at most 255 UTF-8 bytes;
    a UsageError naming ``what`` otherwise."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise UsageError(f"{what} {name!r} cannot be a file name: it is empty, '.' or '..', or holds '/', '\\' or NUL")
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > NAME_MAX_BYTES:
        raise UsageError(f"{what} makes the file name {name[:40]!r}… of {size} bytes, over the {NAME_MAX_BYTES} bytes "
                         "file systems allow; shorten it")
    return name


def contained(root: str | os.PathLike, relative: str | os.PathLike, what: str) -> Path:
    """``root / relative``, refused (UsageError naming ``what``) when ``relative`` is absolute or the joined path,
    with its ``..`` parts and symbolic links resolved, lies outside ``root``. Every component is checked with
    :func:`check_name`."""
    rel = PurePath(relative)
    if rel.is_absolute() or str(relative).startswith(("/", "\\")) or rel.drive:
        raise UsageError(f"{what} {str(relative)!r} is absolute; it must be a path inside {str(root)!r}")
    for part in rel.parts:
        if part != "..":
            check_name(part, what)
    base = Path(root).resolve()
    joined = (Path(root) / rel).resolve()
    if not joined.is_relative_to(base):
        raise UsageError(f"{what} {str(relative)!r} leads outside {str(root)!r} (to {str(joined)!r}); paths from data "
                         "must stay inside their folder")
    return Path(root) / rel


def _probe(folder: Path) -> None:
    """Create and remove a temporary file in the existing ``folder`` (the only check a read-only mount or an
    ACL cannot fool, even for root)."""
    fd, tmp = tempfile.mkstemp(prefix=".sdtoolkit-probe-", dir=folder)
    os.close(fd)
    os.unlink(tmp)


def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Refuse (UsageError naming ``what`` and the path) an output folder that exists as something other than a
    folder, or that cannot be created or written: nothing is created here."""
    path = Path(path)
    try:
        check_name_lengths(path, what)
        existing = path
        while not existing.exists():
            if existing.is_symlink():
                raise UsageError(f"{what} {str(path)!r}: {str(existing)!r} is a dangling symbolic link")
            existing = existing.parent
        if not existing.is_dir():
            where = "is" if existing == path else f"cannot be created: {str(existing)!r} is"
            raise UsageError(f"{what} {str(path)!r} {where} a file, not a folder")
        _probe(existing)
    except OSError as exc:
        raise UsageError(f"{what} {str(path)!r} cannot be written ({exc.strerror or exc})") from None
    return path


def check_writable_file(path: str | os.PathLike, what: str) -> Path:
    """Refuse an output file that is a folder, or whose folder cannot be created or written."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {str(path)!r} is a folder, not a file")
    check_writable_dir(path.parent, what)
    return path


def check_name_lengths(path: str | os.PathLike, what: str) -> None:
    """Every component of ``path`` within the 255-byte name limit (a UsageError naming ``what`` otherwise)."""
    for part in Path(path).parts:
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX_BYTES:
            check_name(part, what)
