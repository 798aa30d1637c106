"""DDIM arithmetic as small pure functions (Song et al., "Denoising Diffusion Implicit Models", eq. 12, eta = 0).

Notation: ``alpha`` is the cumulative product ``alpha_bar_t`` of the noise schedule. The network's output
at a latent ``z`` of level ``alpha`` is read, according to its prediction type, as a noise estimate ``eps``
and a clean-latent estimate ``x0`` with ``z = sqrt(alpha) x0 + sqrt(1 - alpha) eps`` (:func:`split_prediction`):

    epsilon       output = eps:  x0 = (z - sqrt(1 - alpha) eps) / sqrt(alpha)
    sample        output = x0:   eps = (z - sqrt(alpha) x0) / sqrt(1 - alpha)
    v_prediction  output = v = sqrt(alpha) eps - sqrt(1 - alpha) x0 (Salimans & Ho 2022, "Progressive
                  distillation for fast sampling of diffusion models", §4):
                  x0 = sqrt(alpha) z - sqrt(1 - alpha) v,   eps = sqrt(alpha) v + sqrt(1 - alpha) z

A deterministic DDIM move to level ``alpha_to`` is then (eq. 12 with sigma = 0)

    z' = sqrt(alpha_to) x0 + sqrt(1 - alpha_to) eps

Sampling (denoising) moves from ``alpha_t`` to ``alpha_{t-1}``, as ``diffusers.DDIMScheduler.step`` with
eta = 0; inversion (noising) moves the other way, reading the output at the level it starts from, as the
reference's ``next_step`` (and ``diffusers.DDIMInverseScheduler.step``). The method document,
docs/method.md §1–§2, states the same in the paper's notation.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch


class PredictionType(str, Enum):
    """What the UNet outputs (a model folder's ``scheduler_config.json`` ``prediction_type``)."""

    EPSILON = "epsilon"
    V_PREDICTION = "v_prediction"
    SAMPLE = "sample"

    @classmethod
    def parse(cls, value: str | PredictionType) -> PredictionType:
        """The member named ``value``; ValueError naming the valid values otherwise."""
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ValueError(f"prediction_type {value!r} is not one of {valid}") from None


REFERENCE_STEPS_OFFSET = 1
"""The reference builds ``DDIMScheduler(...)`` with the default steps_offset 0, but ``StableDiffusionPipeline``
rewrites any steps_offset other than 1 to 1, so the reference runs timesteps 958, 925, …, 1 for T = 30."""

SCHEDULER_CONFIG: dict = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": REFERENCE_STEPS_OFFSET,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
"""The reference's DDIM scheduler as its pipeline runs it (docs/method.md §1): ``DDIMScheduler(beta_start=0.00085,
beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)`` with steps_offset
rewritten to 1. Written into the model folders this toolkit makes (tiny pipeline folder, toy model) and used by
:func:`schedule_from_config` where a folder ships no scheduler config."""

BETA_SCHEDULES = ("linear", "scaled_linear")


def ddim_transfer(
    z: torch.Tensor,
    model_output: torch.Tensor,
    alpha_from: float,
    alpha_to: float,
    prediction_type: PredictionType = PredictionType.EPSILON,
) -> torch.Tensor:
    """Move ``z`` from level ``alpha_from`` to ``alpha_to`` along the DDIM ODE (eq. 12, eta = 0), reading
    ``model_output`` at ``alpha_from``: ``z' = sqrt(alpha_to) x0 + sqrt(1 - alpha_to) eps``."""
    eps, x0 = split_prediction(model_output, z, alpha_from, prediction_type)
    return math.sqrt(alpha_to) * x0 + math.sqrt(1.0 - alpha_to) * eps


def split_prediction(
    model_output: torch.Tensor,
    z: torch.Tensor,
    alpha: float,
    prediction_type: PredictionType = PredictionType.EPSILON,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eps, x0)`` from the network's output at latent ``z`` of level ``alpha`` (module docstring; the
    conversions of ``DDIMScheduler.step``; v-prediction: Salimans & Ho 2022)."""
    a, s = math.sqrt(alpha), math.sqrt(1.0 - alpha)
    kind = PredictionType.parse(prediction_type)
    if kind is PredictionType.EPSILON:
        return model_output, (z - s * model_output) / a
    if kind is PredictionType.SAMPLE:
        return (z - a * model_output) / s, model_output
    return a * model_output + s * z, a * z - s * model_output


def betas_alphas_cumprod(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    beta_schedule: str = "scaled_linear",
) -> torch.Tensor:
    """``alpha_bar`` (num_train_timesteps,) of the "linear" (betas = linspace(b0, b1)) or "scaled_linear"
    (betas = linspace(sqrt(b0), sqrt(b1))**2, Stable Diffusion's) schedule, as diffusers computes them."""
    if beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    else:
        raise ValueError(f"beta_schedule {beta_schedule!r} is not one of {', '.join(BETA_SCHEDULES)}")
    return torch.cumprod(1.0 - betas, dim=0)


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """``alpha_bar`` of the "scaled_linear" schedule: betas = linspace(sqrt(b0), sqrt(b1))**2."""
    return betas_alphas_cumprod(num_train_timesteps, beta_start, beta_end, "scaled_linear")


@dataclass(frozen=True)
class DDIMSchedule:
    """The T sampling steps: ``timesteps[i]`` (descending), the levels each step moves between, and what
    the UNet outputs.

    Sampling step i moves from ``alpha_t[i]`` (timestep ``timesteps[i]``) to ``alpha_prev[i]``;
    inversion runs the same steps backwards (i = T-1 … 0), from ``alpha_prev[i]`` to ``alpha_t[i]``.
    """

    timesteps: tuple[int, ...]
    alpha_t: tuple[float, ...]
    alpha_prev: tuple[float, ...]
    prediction_type: PredictionType = PredictionType.EPSILON

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def steps_offset(self) -> int:
        """The smallest timestep: with "leading" spacing, the scheduler's steps_offset."""
        return self.timesteps[-1]

def make_schedule(
    num_steps: int,
    alphas_cumprod: torch.Tensor | None = None,
    steps_offset: int = REFERENCE_STEPS_OFFSET,
    prediction_type: PredictionType | str = PredictionType.EPSILON,
) -> DDIMSchedule:
    """DDIM "leading" spacing, ``timesteps = (T-1-i)·(N//T) + steps_offset``, with set_alpha_to_one off:
    a step whose previous timestep ``t - N//T`` is negative lands on ``alpha_bar_0`` (the reference's
    ``final_alpha_cumprod``), and so does inversion's first step start from it (the reference's
    ``next_step``: ``alphas_cumprod[t] if t >= 0 else final_alpha_cumprod``).

    ``alphas_cumprod`` defaults to Stable Diffusion's scaled-linear schedule; ``steps_offset`` to the
    reference's 1 (timesteps 958, …, 1 for T = 30).
    """
    if num_steps < 1:
        raise ValueError(f"num_ddim_steps must be >= 1, got {num_steps}")
    ac = scaled_linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.float()
    n_train = ac.shape[0]
    if num_steps > n_train:
        raise ValueError(f"num_ddim_steps must be <= {n_train}, got {num_steps}")
    ratio = n_train // num_steps
    if not 0 <= steps_offset < n_train - ratio * (num_steps - 1):
        raise ValueError(f"steps_offset must be in [0, {n_train - ratio * (num_steps - 1)}) for {num_steps} steps "
                         f"of {n_train} training timesteps, got {steps_offset}")
    timesteps = tuple(ratio * k + steps_offset for k in range(num_steps - 1, -1, -1))
    final = float(ac[0])
    alpha_t = tuple(float(ac[t]) for t in timesteps)
    alpha_prev = tuple(float(ac[t - ratio]) if t - ratio >= 0 else final for t in timesteps)
    return DDIMSchedule(timesteps, alpha_t, alpha_prev, PredictionType.parse(prediction_type))


def schedule_from_config(num_steps: int, config: Mapping[str, Any] | None = None) -> DDIMSchedule:
    """The schedule for a model folder's ``scheduler/scheduler_config.json`` (None: :data:`SCHEDULER_CONFIG`).

    Read from the folder (facts of how the UNet was trained): num_train_timesteps, beta_start, beta_end,
    beta_schedule, prediction_type, steps_offset. A steps_offset other than 1 becomes 1 with a warning, as
    ``StableDiffusionPipeline`` rewrites it (the reference relies on that). The sampler's own settings stay
    the reference's whatever the folder says: "leading" spacing, no clipping, set_alpha_to_one off.
    Schedules this toolkit cannot reproduce (trained_betas, rescale_betas_zero_snr, other beta schedules)
    raise ValueError naming the setting.
    """
    cfg = {**SCHEDULER_CONFIG, **(config or {})}
    if cfg.get("trained_betas") is not None:
        raise ValueError("scheduler config sets trained_betas: only the linear and scaled_linear beta schedules "
                         "are supported")
    if cfg.get("rescale_betas_zero_snr"):
        raise ValueError("scheduler config sets rescale_betas_zero_snr: zero-terminal-SNR schedules are not supported")
    steps_offset = int(cfg["steps_offset"])
    if steps_offset != REFERENCE_STEPS_OFFSET:
        warnings.warn(f"scheduler config has steps_offset {steps_offset}; using {REFERENCE_STEPS_OFFSET}, as "
                      "StableDiffusionPipeline does", stacklevel=2)
        steps_offset = REFERENCE_STEPS_OFFSET
    ac = betas_alphas_cumprod(int(cfg["num_train_timesteps"]), float(cfg["beta_start"]), float(cfg["beta_end"]),
                              str(cfg["beta_schedule"]))
    return make_schedule(num_steps, ac, steps_offset, PredictionType.parse(cfg["prediction_type"]))


def sample_step(schedule: DDIMSchedule, i: int, z: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
    """Sampling step i: z_t → z_{t-1}, the output read at ``alpha_t[i]`` in ``schedule.prediction_type``
    (equals ``DDIMScheduler.step(model_output, t, z, eta=0).prev_sample``)."""
    return ddim_transfer(z, model_output, schedule.alpha_t[i], schedule.alpha_prev[i], schedule.prediction_type)


def inversion_step(schedule: DDIMSchedule, i: int, z: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
    """Inversion through sampling step i: z_{t-1} → z_t, the output predicted at timestep ``timesteps[i]``.

    The reference's ``next_step`` generalised: the output is read at the level z starts from,
    ``alpha_prev[i]`` (``alpha_bar_0`` at the first inversion step), as ``DDIMInverseScheduler.step`` does.
    For epsilon and sample outputs this is the exact inverse of :func:`sample_step` with the same output;
    for v_prediction it is not (v read at two levels gives two eps), as in diffusers.
    """
    return ddim_transfer(z, model_output, schedule.alpha_prev[i], schedule.alpha_t[i], schedule.prediction_type)


def guided_eps(uncond: torch.Tensor, cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance ``u + w (c - u)`` (Ho & Salimans 2022) on the network's outputs in their own
    parameterisation (eps, v or x0), as diffusers' pipelines do. At a fixed latent and level the conversion
    to (eps, x0) is affine with weights summing to one, so guiding v or x0 equals guiding eps."""
    return uncond + guidance_scale * (cond - uncond)


# ---------------------------------------------------------------------------------------------------------------
# The other inversions of PIE-Bench's table (docs/method.md §9): exact inverses, DDPM noise maps, EDICT's mixing,
# proximal guidance.


def transfer_coefficients(alpha_from: float, alpha_to: float,
                          prediction_type: PredictionType = PredictionType.EPSILON) -> tuple[float, float]:
    """``(c_z, c_o)`` with ``ddim_transfer(z, o, alpha_from, alpha_to) = c_z z + c_o o``: the move is affine in the
    latent and the output for every prediction type (module docstring)."""
    c_z = float(ddim_transfer(1.0, 0.0, alpha_from, alpha_to, prediction_type))  # Python floats: double precision
    c_o = float(ddim_transfer(0.0, 1.0, alpha_from, alpha_to, prediction_type))
    return c_z, c_o


def undo_sample_step(schedule: DDIMSchedule, i: int, z_prev: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
    """The z_t that :func:`sample_step` moves to ``z_prev`` with this output: ``(z_prev - c_o o) / c_z`` (exact for
    every prediction type; EDICT's inversion inverts its DDIM steps this way, docs/method.md §9.3)."""
    c_z, c_o = transfer_coefficients(schedule.alpha_t[i], schedule.alpha_prev[i], schedule.prediction_type)
    return (z_prev - c_o * model_output) / c_z


def edict_mix(x: torch.Tensor, y: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """EDICT's mixing layers after a denoising step (Wallace et al. 2023, docs/method.md §9.3): ``x' = p x + (1 - p) y``, then
    ``y' = p y + (1 - p) x'``."""
    x_new = p * x + (1.0 - p) * y
    return x_new, p * y + (1.0 - p) * x_new


def edict_unmix(x: torch.Tensor, y: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact inverse of :func:`edict_mix` (EDICT's inversion): ``y = (y' - (1 - p) x') / p``, then ``x = (x' - (1 - p) y) / p``."""
    y_old = (y - (1.0 - p) * x) / p
    return (x - (1.0 - p) * y_old) / p, y_old


def ddpm_sigma(schedule: DDIMSchedule, i: int, eta: float = 1.0) -> float:
    """sigma of sampling step i (DDIM eq. 16): ``eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))``;
    eta = 1 is DDPM's posterior standard deviation, as edit-friendly DDPM inversion uses it."""
    a_t, a_prev = schedule.alpha_t[i], schedule.alpha_prev[i]
    return eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))


def ddpm_mean(schedule: DDIMSchedule, i: int, z: torch.Tensor, model_output: torch.Tensor,
              eta: float = 1.0) -> torch.Tensor:
    """mu_t of sampling step i (DDIM eq. 12 without the noise term):
    ``sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps``, the output read at ``alpha_t[i]``."""
    eps, x0 = split_prediction(model_output, z, schedule.alpha_t[i], schedule.prediction_type)
    a_prev = schedule.alpha_prev[i]
    sigma = ddpm_sigma(schedule, i, eta)
    return math.sqrt(a_prev) * x0 + math.sqrt(max(1.0 - a_prev - sigma**2, 0.0)) * eps


def ddpm_step(schedule: DDIMSchedule, i: int, z: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor,
              eta: float = 1.0) -> torch.Tensor:
    """Stochastic sampling step i with a given noise map: ``mu_t + sigma_t noise`` (DDIM eq. 12; the DDPM sampler of
    edit-friendly inversion, docs/method.md §9.2)."""
    return ddpm_mean(schedule, i, z, model_output, eta) + ddpm_sigma(schedule, i, eta) * noise


def noise_map(schedule: DDIMSchedule, i: int, z: torch.Tensor, z_prev: torch.Tensor, model_output: torch.Tensor,
              eta: float = 1.0) -> torch.Tensor:
    """The edit-friendly noise map of step i (Huberman-Spiegelglas et al. 2023, docs/method.md §9.2):
    ``(z_prev - mu_t(z)) / sigma_t``, so that :func:`ddpm_step` from ``z`` lands on ``z_prev``."""
    return (z_prev - ddpm_mean(schedule, i, z, model_output, eta)) / ddpm_sigma(schedule, i, eta)


def edit_friendly_latents(schedule: DDIMSchedule, z0: torch.Tensor, noises: torch.Tensor) -> torch.Tensor:
    """The independently noised latents of edit-friendly inversion (docs/method.md §9.2): row k (k = 1 … T) is
    ``sqrt(a) z0 + sqrt(1 - a) noises[k-1]`` at the level ``alpha_t[T-k]``; row 0 is z0. ``noises``: (T, *z0.shape[1:])
    standard normal. Returns (T+1, *z0.shape[1:]), ordered as DDIM inversion's latents (z0 first, z_T last)."""
    num = schedule.num_steps
    rows = [z0[0].float()]
    for k in range(1, num + 1):
        a = schedule.alpha_t[num - k]
        rows.append(math.sqrt(a) * z0[0].float() + math.sqrt(1.0 - a) * noises[k - 1].float())
    return torch.stack(rows)


def proximal_delta(delta: torch.Tensor, quantile: float) -> tuple[torch.Tensor, float]:
    """ProxEdit's proximal step on the guidance difference ``delta = eps_c - eps_u`` (Han et al. 2023, docs/method.md §9.4; the
    'l0' variant as PIE-Bench's runner runs it): threshold ``tau`` = the ``quantile`` of ``|delta|`` over the whole
    batch; returns ``(delta - clamp(delta, -tau, tau), tau)``: entries within tau become 0, the others shrink by tau."""
    tau = float(delta.float().abs().quantile(quantile))
    return delta - delta.clamp(-tau, tau), tau


def proximal_edit_mask(delta: torch.Tensor, tau: float, radius: int = 1) -> torch.Tensor:
    """Where the proximal guidance edits: ``|delta| > tau`` (delta after :func:`proximal_delta`), dilated by a
    (2 radius + 1)² max-pool per channel, as the published runner; 1 = edited, 0 = reconstructed from inversion."""
    mask = (delta.abs() > tau).float()
    if radius > 0:
        mask = torch.nn.functional.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)
    return mask
