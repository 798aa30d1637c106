"""Runs over many cases (the CSV driver, the PIE-Bench runner): the split between processes and the end-of-run
summary, in one place."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

T = TypeVar("T")
STATUSES = ("done", "skipped", "failed")


@dataclass(frozen=True)
class Shard:
    """This process's share of a run: ``accelerate launch --num_processes N …`` gives each process every N-th case
    (no case done twice); a single process gets them all."""

    index: int
    count: int
    is_main: bool
    device: str  # the device to load the model on: --device, or this process's under accelerate

    @property
    def tag(self) -> str:
        """``[process i/N] `` before every line a process prints (empty for one process)."""
        return f"[process {self.index + 1}/{self.count}] " if self.count > 1 else ""

    def mine(self, items: Sequence[T]) -> list[T]:
        return list(items[self.index :: self.count])


def shard(device: str) -> Shard:
    """This process's :class:`Shard` (``device`` "cpu" keeps accelerate on the CPU)."""
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")
    if device == "auto" and state.num_processes > 1:
        device = str(state.device)
    return Shard(state.process_index, state.num_processes, state.is_main_process, device)


def summary(statuses: Sequence[str], total: int, noun: str, tag: str = "", seconds: float | None = None) -> str:
    """The summary line: ``{tag}summary: D done, S skipped, F failed of N {noun}[ in T s]`` (after a blank line)."""
    counts = {k: sum(s == k for s in statuses) for k in STATUSES}
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    return (f"\n{tag}summary: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed of "
            f"{total} {noun}{took}")


def table(rows: Sequence[tuple[str, str]], min_width: int = 0) -> list[str]:
    """``  {key}  {text}`` lines, the keys right-aligned to the longest (at least ``min_width``)."""
    width = max([min_width] + [len(key) for key, _ in rows])
    return [f"  {key:>{width}}  {text}" for key, text in rows]
