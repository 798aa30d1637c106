"""The shared sampler: guided DDIM sampling from an inversion, with an optional attention controller."""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

from sdtoolkit.core.attention import AttentionController, AttnCall, Branch, style_processors
from sdtoolkit.core.ddim import DDIMSchedule
from sdtoolkit.core.errors import NonFiniteError
from sdtoolkit.core.models import SDModels
from sdtoolkit.core.progress import ProgressBar

__all__ = ["NonFiniteError", "check_finite", "latent_mse", "sample"]


def non_finite(what: str, step: int) -> NonFiniteError:
    """The error naming the step where ``what`` stopped being finite."""
    return NonFiniteError(f"{what} is not finite at sampling step {step}: try --dtype fp32, or a smaller learning "
                          "rate / fewer inner steps")


def check_finite(value: torch.Tensor, what: str, step: int) -> None:
    """Stop with a message naming the step when ``value`` holds NaN or inf."""
    if not torch.isfinite(value).all():
        raise non_finite(what, step)


class FiniteWatch:
    """Per-step "is it finite" flags kept on the device and read once by :meth:`check` (no host sync per step);
    the error names the first step whose value was not finite, as :func:`check_finite` would have."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.steps: list[int] = []
        self.flags: list[torch.Tensor] = []

    def add(self, value: torch.Tensor, step: int) -> None:
        self.steps.append(step)
        self.flags.append(torch.isfinite(value).all())

    def check(self) -> None:
        if not self.flags:
            return
        ok = torch.stack(self.flags).cpu().tolist()
        if not all(ok):
            raise non_finite(self.what, self.steps[ok.index(False)])


def sample(
    models: SDModels,
    schedule: DDIMSchedule,
    inversion,
    texts: torch.Tensor,
    mapped: Callable[[int], list[bool]] | None = None,
    guidance_scale: float = 7.5,
    controller: AttentionController | None = None,
    progress: bool = False,
    desc: str = "sampling",
    explicit: bool = False,
    pooled: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample from z_T for a batch of prompts (B, L, D) with classifier-free guidance; returns z_0 (B, 4, h, w).

    ``inversion`` is a :class:`sdtoolkit.methods.inversions.Inversion` (z_T, per-step uncond embedding,
    conditional text, value-path input); ``texts[0]`` is the source prompt. The unconditional and conditional passes are separate UNet calls, so controllers see
    which branch runs. ``mapped(i)`` says per batch element whether the value path reads the learned input
    (default: all). The controller may blend latents after each step through ``step_callback(z, i)``.
    The inversion owns the loop's ends and its step (``start``, ``first_step``, ``step``, ``blend``, ``finish``):
    plain guided DDIM by default; DDPM noise maps, EDICT's coupled pair, a per-step correction of the source
    branch or proximal guidance for the methods that need them (docs/method.md §9).
    ``explicit`` materialises attention probabilities in every layer (the reference's cost, used by
    benchmarks/bench.py; results equal up to float noise). ``pooled`` (B, P): SDXL's pooled embeddings of ``texts``;
    the unconditional branch's come from ``inversion.uncond_pooled``.
    """
    batch = texts.shape[0]
    z = inversion.start(batch)
    watch = FiniteWatch("the sampled latent")
    with torch.no_grad(), style_processors(models.unet):
        for i in ProgressBar(range(inversion.first_step, schedule.num_steps), desc=desc, disable=not progress, leave=False):
            use = mapped(i) if mapped is not None else [True] * batch
            predict = partial(_predict, models, schedule.timesteps[i], inversion, i, texts, use, controller, explicit,
                              pooled)
            z = inversion.step(schedule, i, z, predict, guidance_scale)
            if controller is not None:
                z = inversion.blend(z, lambda x, i=i: controller.step_callback(x, i))
            watch.add(z, i)
    watch.check()
    return inversion.finish(z)


Predict = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""The UNet at one sampling step: latents (B, 4, h, w) → (unconditional output, conditional output)."""


def _predict(models: SDModels, t: int, inversion, i: int, texts: torch.Tensor, use: list[bool],
             controller: AttentionController | None, explicit: bool, pooled: torch.Tensor | None,
             z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The unconditional and the conditional pass of step i at latents ``z`` (two UNet calls, the controller told
    the step and the branch)."""
    batch = texts.shape[0]
    uncond_call = AttnCall(i, Branch.UNCOND, controller=controller, explicit=explicit)
    eps_u = models.predict(z, t, inversion.uncond(i, batch), uncond_call, inversion.uncond_pooled(batch))
    value = inversion.value_states(i, texts, use)
    cond_call = AttnCall(i, Branch.COND, value_states=value, controller=controller, explicit=explicit)
    eps_c = models.predict(z, t, inversion.cond_texts(i, texts), cond_call, pooled)
    return eps_u, eps_c


def latent_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error between two latents."""
    return F.mse_loss(a.float(), b.float()).item()
