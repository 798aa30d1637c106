"""What each browser session keeps between clicks: its inversions, bounded, least recently used dropped first."""
from __future__ import annotations

import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Kept", "Sessions", "folder_name"]


@dataclass
class Kept:
    """One inversion of a session: the API's ``Inverted``, its label in the page and its folder of files (the
    bundle a user downloads: source image, safetensors + sidecar, edits)."""

    label: str
    inverted: Any  # sdtoolkit.api.Inverted
    folder: Path


class Sessions:
    """Per-session inversions, at most ``per_session`` each and ``max_sessions`` sessions in all; the least
    recently used is dropped first (its folder deleted), so a long-running app's memory and disk stay flat.
    Thread-safe: the app's worker threads share one instance."""

    def __init__(self, root: Path, per_session: int = 3, max_sessions: int = 16) -> None:
        if per_session < 1 or max_sessions < 1:
            raise ValueError(f"per_session {per_session} and max_sessions {max_sessions} must be >= 1")
        self.root = Path(root)
        self.per_session = per_session
        self.max_sessions = max_sessions
        self._kept: OrderedDict[str, OrderedDict[str, Kept]] = OrderedDict()
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def folder(self, session: str) -> Path:
        """A new folder for the session's next inversion (``{root}/{session}/inversion-{n}``)."""
        with self._lock:
            n = self._counts[session] = self._counts.get(session, 0) + 1
        return self.root / folder_name(session) / f"inversion-{n}"

    def add(self, session: str, kept: Kept) -> list[str]:
        """Keep ``kept`` as the session's newest; returns the messages of what was dropped to stay in bounds."""
        dropped = []
        with self._lock:
            mine = self._kept.setdefault(session, OrderedDict())
            self._kept.move_to_end(session)
            mine[kept.label] = kept
            while len(mine) > self.per_session:
                label, old = mine.popitem(last=False)
                dropped.append(f"{label} was dropped: the app keeps the {self.per_session} most recently used "
                               "inversions of a session (download one to keep it)")
                shutil.rmtree(old.folder, ignore_errors=True)
            while len(self._kept) > self.max_sessions:
                gone, old_kept = self._kept.popitem(last=False)
                self._counts.pop(gone, None)
                for old in old_kept.values():
                    shutil.rmtree(old.folder, ignore_errors=True)
        return dropped

    def get(self, session: str, label: str | None) -> Kept | None:
        """The session's inversion ``label`` (its newest when None), marked as used; None when there is none."""
        with self._lock:
            mine = self._kept.get(session)
            if not mine:
                return None
            label = next(reversed(mine)) if label is None else label
            if label not in mine:
                return None
            mine.move_to_end(label)
            self._kept.move_to_end(session)
            return mine[label]

    def labels(self, session: str) -> list[str]:
        """The session's inversions, newest first."""
        with self._lock:
            return list(reversed(self._kept.get(session, {})))

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._kept.values())


def folder_name(session: str) -> str:
    """A session id as one folder name (Gradio's are hex; anything else is reduced to letters and digits)."""
    return "".join(c for c in session if c.isalnum())[:64] or "anonymous"
