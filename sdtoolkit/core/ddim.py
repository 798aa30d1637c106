"""DDIM arithmetic as small pure functions (Song et al., "Denoising Diffusion Implicit Models", eq. 12, eta = 0).

Notation: ``alpha`` is the cumulative product ``alpha_bar_t`` of the noise schedule. A deterministic DDIM
move of a latent ``z`` at level ``alpha_from`` to level ``alpha_to`` with noise prediction ``eps`` is

    x0_hat = (z - sqrt(1 - alpha_from) * eps) / sqrt(alpha_from)
    z'     = sqrt(alpha_to) * x0_hat + sqrt(1 - alpha_to) * eps

Sampling (denoising) moves from ``alpha_t`` to ``alpha_{t-1}``; inversion (noising) moves the other way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULER_CONFIG: dict = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 0,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
"""Stable Diffusion 1.x's scheduler settings as diffusers writes them (docs/method.md §1): written into the model
folders this toolkit makes (tiny pipeline folder, toy model) and the diffusers reference of the tests. Sampling and
inversion use :func:`make_schedule`, never the scheduler a model folder ships."""


def ddim_transfer(z: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """Move ``z`` from noise level ``alpha_from`` to ``alpha_to`` along the DDIM ODE (eta = 0)."""
    x0 = (z - math.sqrt(1.0 - alpha_from) * eps) / math.sqrt(alpha_from)
    return math.sqrt(alpha_to) * x0 + math.sqrt(1.0 - alpha_to) * eps


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """``alpha_bar`` of the "scaled_linear" schedule: betas = linspace(sqrt(b0), sqrt(b1))**2."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


@dataclass(frozen=True)
class DDIMSchedule:
    """The T sampling steps: ``timesteps[i]`` (descending) and the levels each step moves between.

    Sampling step i moves from ``alpha_t[i]`` (timestep ``timesteps[i]``) to ``alpha_prev[i]``;
    inversion runs the same steps backwards (i = T-1 … 0), from ``alpha_prev[i]`` to ``alpha_t[i]``.
    """

    timesteps: tuple[int, ...]
    alpha_t: tuple[float, ...]
    alpha_prev: tuple[float, ...]

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def make_schedule(num_steps: int, alphas_cumprod: torch.Tensor | None = None) -> DDIMSchedule:
    """DDIM "leading" spacing with steps_offset 0 and set_alpha_to_one off (final level = alpha_bar_0)."""
    if num_steps < 1:
        raise ValueError(f"num_ddim_steps must be >= 1, got {num_steps}")
    ac = scaled_linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.float()
    n_train = ac.shape[0]
    if num_steps > n_train:
        raise ValueError(f"num_ddim_steps must be <= {n_train}, got {num_steps}")
    ratio = n_train // num_steps
    timesteps = tuple(int(t) for t in range(ratio * (num_steps - 1), -1, -ratio))
    final = float(ac[0])
    alpha_t = tuple(float(ac[t]) for t in timesteps)
    alpha_prev = tuple(float(ac[t - ratio]) if t - ratio >= 0 else final for t in timesteps)
    return DDIMSchedule(timesteps, alpha_t, alpha_prev)


def sample_step(schedule: DDIMSchedule, i: int, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Sampling step i: z_t → z_{t-1} (equals ``DDIMScheduler.step(eps, t, z, eta=0)``)."""
    return ddim_transfer(z, eps, schedule.alpha_t[i], schedule.alpha_prev[i])


def inversion_step(schedule: DDIMSchedule, i: int, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Inversion through sampling step i: z_{t-1} → z_t, with eps predicted at timestep ``timesteps[i]``."""
    return ddim_transfer(z, eps, schedule.alpha_prev[i], schedule.alpha_t[i])


def guided_eps(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance: eps_u + w (eps_c - eps_u)."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def inner_steps(num_inner_steps: int, i: int) -> int:
    """Optimisation iterations at sampling step i: ceil(num_inner_steps · exp(-0.1 i))."""
    return math.ceil(num_inner_steps * math.exp(-0.1 * i))


def learning_rate(i: int) -> float:
    """Adam learning rate at sampling step i: 0.01 · (1 - i/100)."""
    return 0.01 * (1.0 - i / 100.0)


def early_stop_threshold(i: int) -> float:
    """Stop optimising step i once the loss is below 1e-5 + i · 2e-5."""
    return 1e-5 + i * 2e-5
