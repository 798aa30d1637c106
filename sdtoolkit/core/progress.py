"""Progress bars: every long loop of the toolkit shows one :class:`ProgressBar` (a tqdm bar), and a caller may listen.

The CLIs print the bars in the terminal as tqdm always did. A caller that shows progress elsewhere (the
browser app) wraps the work in :func:`listening` with a callback: for that call, in that thread or task only,
every bar reports its state (:class:`BarState`) to the callback instead of printing. One mechanism, two
views: the page shows the same bars, counts and postfix (sampling step, iterations, the current loss) as
the terminal.
"""
from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tqdm.auto import tqdm

__all__ = ["BarState", "ProgressBar", "listening"]


@dataclass(frozen=True)
class BarState:
    """What a bar shows: ``desc`` (e.g. "training M_t"), ``n`` of ``total`` done, tqdm's ``postfix`` text
    (e.g. "step=3/30, it=42, loss=1.2e-03"), ``closed`` once the loop ended."""

    desc: str
    n: float
    total: float | None
    postfix: str
    closed: bool = False

    def text(self) -> str:
        """One line, as the terminal bar reads: ``training M_t 42/120 (step=3/30, it=42, loss=1.2e-03)``."""
        count = f"{self.n:g}/{self.total:g}" if self.total else f"{self.n:g}"
        return f"{self.desc} {count}" + (f" ({self.postfix})" if self.postfix else "")


class _Quiet:
    """Where a listened bar prints: nowhere."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


Listener = Callable[[BarState], None]
_LISTENER: contextvars.ContextVar[Listener | None] = contextvars.ContextVar("sdtoolkit_progress", default=None)


@contextmanager
def listening(callback: Listener) -> Iterator[None]:
    """Within the block (this thread / task only) every :class:`ProgressBar` reports to ``callback`` instead of the
    terminal; the previous listener is restored afterwards, also after an exception."""
    token = _LISTENER.set(callback)
    try:
        yield
    finally:
        _LISTENER.reset(token)


class ProgressBar(tqdm):
    """A tqdm bar that reports to the current :func:`listening` callback when there is one (then it prints
    nothing, even when ``disable`` asked the terminal to stay quiet); otherwise plain tqdm."""

    def __init__(self, *args, **kwargs) -> None:
        self._listener = _LISTENER.get()
        if self._listener is not None:
            kwargs.update(disable=False, file=_Quiet(), mininterval=0.0, miniters=1)
        super().__init__(*args, **kwargs)
        self._report()

    def _report(self, closed: bool = False) -> None:
        if self._listener is not None:
            state = self.format_dict
            self._listener(BarState(str(state.get("prefix") or ""), state["n"], state["total"],
                                    str(state.get("postfix") or ""), closed))

    def update(self, n: float = 1) -> bool | None:
        out = super().update(n)
        self._report()
        return out

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        super().set_postfix(ordered_dict, refresh, **kwargs)
        self._report()

    def close(self) -> None:
        if not self.disable:
            self._report(closed=True)
        super().close()
