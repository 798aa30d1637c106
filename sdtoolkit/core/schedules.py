"""How the per-step optimisation of an inversion spends its iterations: the published schedule and ours.

Pure functions of the step index (docs/method.md §3 and §3a). :func:`step_plan` says, for sampling step i,
the most inner iterations, the learning rate (and its warm-up), when to stop; ``sdtoolkit.methods.training.optimise_step`` runs a plan and reads the loss on the host only once
per ``window`` iterations.

* ``reference``: the published one. StyleDiffusion: n_i = ⌈N·e^(−0.1 i)⌉ iterations; null-text and
  text-embedding inversion: N every step; Adam anew each step with lr 0.01·(1 − i/100); stop after the
  first iteration whose loss is below 1e-5 + i·2e-5 (exactly: a stop found later in the window rewinds the
  parameters to that iteration).
* ``fast`` (our schedule, measured in docs/backbones.md, "Speed: schedules"): the same caps and learning rate, with
  four changes (the plateau replaces the absolute threshold). (1) M_0 starts as the identity on the text
  (:func:`starts_from_text`). (2) From step 1 on the learning rate warms up linearly over the first
  ``warmup`` iterations: M_i starts as a copy of the trained M_{i−1}, and a fresh Adam's first update moves
  every weight by ≈ lr, which on the toy model raises the loss several-fold and costs the reference 20–30
  iterations per step to recover. (3) The step stops when the loss stops improving: once the best loss of the
  last ``window`` iterations is not ``plateau`` (relatively) below the best before it (windows of 5 at
  step 0, of 2 after). (4) From step 1 on every step's cap is at least :data:`FAST_FLOOR` iterations. The
  constants were tuned on the seed-0 toy scenes and are reported on held-out ones; tests/test_schedules.py pins
  each of them.
* ``light`` (ours, for ``stylediffusion_direct``, whose reconstruction is exact whatever M_t learned): M_0 from
  the text as in fast, then the published caps ⌈N·e^(−0.1 i)⌉ at the published learning rate, no stop; meant
  for a small N (docs/backbones.md, "StyleDiffusion + direct correction: the fewest passes").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from sdtoolkit.core.settings import Schedule

FAST_WINDOW_FIRST = 5
"""Iterations between two looks at the loss at step 0 of the fast schedule (M_0 starts from the default init)."""
FAST_WINDOW = 2
"""Iterations between two looks at the loss from step 1 on in the fast schedule (the plateau test compares windows)."""
FAST_WARMUP = 2
"""Iterations over which the fast schedule's learning rate ramps up (lr/2, lr) from step 1 on."""
FAST_FLOOR = 5
"""From step 1 on the fast schedule's cap is at least this many iterations: the published cap falls to 1–4 for the
last twenty steps of T = 50, which set the final reconstruction (3 → 5 halved the latent MSE on the tuning scenes)."""
FAST_PLATEAU = 0.05
"""The fast schedule stops step i when its last window's best loss is less than 5 % below the best before."""
REFERENCE_WINDOW = 10
"""Iterations between host reads of the loss in the reference schedule (a stop found inside a window rewinds)."""


def inner_steps(num_inner_steps: int, i: int) -> int:
    """StyleDiffusion's iterations at sampling step i: ⌈num_inner_steps · exp(−0.1 i)⌉ (the reference)."""
    return math.ceil(num_inner_steps * math.exp(-0.1 * i))


def learning_rate(i: int) -> float:
    """Adam learning rate at sampling step i: 0.01 · (1 − i/100) (the reference)."""
    return 0.01 * (1.0 - i / 100.0)


def early_stop_threshold(i: int) -> float:
    """Stop optimising step i once the loss is below 1e-5 + i · 2e-5 (the reference, from null-text inversion)."""
    return 1e-5 + i * 2e-5


@dataclass(frozen=True)
class StepPlan:
    """How sampling step i is optimised."""

    iterations: int  # the most inner iterations
    lr: float
    stop_below: float | None  # stop after the first iteration whose loss is below this (None: never)
    plateau: float | None  # stop when a window's best loss improves on the best before by less than this fraction
    window: int  # iterations between host reads of the loss
    warmup: int = 0  # the learning rate ramps linearly to lr over this many iterations (0: lr from the start)

    def lr_at(self, j: int) -> float:
        """Learning rate of inner iteration j: lr · min(1, (j + 1) / warmup)."""
        return self.lr * min(1.0, (j + 1) / self.warmup) if self.warmup else self.lr

    def stops(self, losses: list[float], start: int) -> int | None:
        """Iterations to keep given the losses of iterations 0 … len−1, of which ``start`` … were not yet
        looked at: the iteration count at the first stop, or None to go on. Pure; pinned in tests/test_schedules.py."""
        if self.stop_below is not None:
            for j in range(start, len(losses)):
                if losses[j] < self.stop_below:
                    return j + 1
        if self.plateau is not None and len(losses) >= 2 * self.window and len(losses) % self.window == 0:
            now = min(losses[-self.window:])
            before = min(losses[:-self.window])
            if now > (1.0 - self.plateau) * before:
                return len(losses)
        return None


def starts_from_text(schedule: Schedule) -> bool:
    """Whether StyleDiffusion's M_0 starts as the identity on the text (c̃ = c) instead of the default init: the
    fast and light schedules' start, which puts step 0's first loss ≈ 10× lower on the toy model (docs/method.md §3a)."""
    return Schedule(schedule) is not Schedule.REFERENCE


def step_plan(schedule: Schedule, num_inner_steps: int, i: int, decaying: bool = True,
              early_stop: bool = True) -> StepPlan:
    """The plan of sampling step i. ``decaying``: StyleDiffusion's n_i = ⌈N·e^(−0.1 i)⌉ cap (null-text and
    text-embedding inversion: N at every step). ``early_stop`` off: the reference schedule runs every iteration."""
    cap = inner_steps(num_inner_steps, i) if decaying else num_inner_steps
    if Schedule(schedule) is Schedule.REFERENCE:
        return StepPlan(cap, learning_rate(i), early_stop_threshold(i) if early_stop else None, None, REFERENCE_WINDOW)
    if Schedule(schedule) is Schedule.LIGHT:
        return StepPlan(cap, learning_rate(i), None, None, cap)
    if i == 0:
        return StepPlan(cap, learning_rate(i), None, FAST_PLATEAU, FAST_WINDOW_FIRST)
    return StepPlan(max(cap, FAST_FLOOR), learning_rate(i), None, FAST_PLATEAU, FAST_WINDOW, FAST_WARMUP)
