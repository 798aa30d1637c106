"""Inversion methods behind one interface: StyleDiffusion, null-text, negative-prompt and plain DDIM.

Every method starts from the same DDIM inversion (:func:`ddim_inversion`) and yields an
:class:`Inversion`: the noise latent z_T plus what the sampler needs at step i — the unconditional
embedding and the value-path input of the conditional branch. Sampling and editing are shared
(:func:`sample`), so P2Plus editing works after any of them.
"""
from __future__ import annotations

from abc import ABC
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .attention import AttnCall, Branch, MapRecorder, map_layers, style_processors
from .ddim import (
    DDIMSchedule,
    early_stop_threshold,
    guided_eps,
    inner_steps,
    inversion_step,
    learning_rate,
    sample_step,
)
from .constants import METHODS
from .mapping import MappingNetworks, mapping_from_tensors
from .models import SDModels



class NonFiniteError(RuntimeError):
    """A loss or latent became NaN/inf."""


def check_finite(value: torch.Tensor, what: str, step: int) -> None:
    """Stop with a message naming the step when ``value`` holds NaN or inf."""
    if not torch.isfinite(value).all():
        raise NonFiniteError(
            f"{what} is not finite at sampling step {step}: try --dtype fp32, or a smaller learning rate / "
            "fewer inner steps"
        )


@dataclass
class InversionTrace:
    """DDIM inversion of one image: ``latents[k]`` after k inversion steps (z_0 … z_T) and, per sampling
    step i, the recorded conditional cross-attention maps at timestep ``timesteps[i]`` (B, h, Q, 77)."""

    latents: list[torch.Tensor]
    maps: list[dict[str, torch.Tensor]]


@torch.no_grad()
def ddim_inversion(
    models: SDModels,
    z0: torch.Tensor,
    text: torch.Tensor,
    schedule: DDIMSchedule,
    record: frozenset[str] = frozenset(),
    progress: bool = False,
    controller=None,
) -> InversionTrace:
    """Run T DDIM steps forwards (guidance 1, conditional branch), keeping latents and the maps of ``record``
    (or, instead, passing ``controller`` to every UNet call, e.g. an attention store)."""
    num = schedule.num_steps
    latents = [z0.float()]
    maps: list[dict[str, torch.Tensor]] = [{} for _ in range(num)]
    z = z0.float()
    with style_processors(models.unet):
        for i in tqdm(reversed(range(num)), total=num, desc="DDIM inversion", disable=not progress, leave=False):
            recorder = MapRecorder(record) if record else controller
            eps = models.eps(z, schedule.timesteps[i], text, AttnCall(step=i, branch=Branch.COND, controller=recorder))
            if record:
                maps[i] = {k: v.detach() for k, v in recorder.maps.items()}
            z = inversion_step(schedule, i, z, eps)
            check_finite(z, "the inversion latent", i)
            latents.append(z)
    return InversionTrace(latents, maps)


class Inversion(ABC):
    """What a method learned: z_T plus the per-step unconditional embedding and value-path input."""

    method: str

    def __init__(self, z_T: torch.Tensor, null: torch.Tensor) -> None:
        self.z_T = z_T.float()
        self.null = null  # (1, L, D) embedding of ""

    def uncond(self, i: int, batch: int) -> torch.Tensor:
        """Unconditional embedding (B, L, D) at sampling step i."""
        return self.null.expand(batch, -1, -1)

    def value_states(self, i: int, texts: torch.Tensor, mapped: list[bool]) -> torch.Tensor | None:
        """Input of to_v in cross-attention (B, L, D) for the conditional branch, or None for the text."""
        return None

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything needed to edit later, for safetensors."""
        return {"z_T": self.z_T}


class DDIMInversion(Inversion):
    """Plain DDIM inversion; guidance applies only at sampling time."""

    method = "ddim"


class NegativePromptInversion(Inversion):
    """Negative-prompt inversion (Miyake et al. 2023): the source prompt's embedding replaces the null one."""

    method = "npi"

    def __init__(self, z_T: torch.Tensor, null: torch.Tensor, source_text: torch.Tensor) -> None:
        super().__init__(z_T, null)
        self.source_text = source_text

    def uncond(self, i: int, batch: int) -> torch.Tensor:
        return self.source_text.expand(batch, -1, -1)


class NullTextInversion(Inversion):
    """Null-text inversion (Mokady et al. 2023): one optimised unconditional embedding per step."""

    method = "nulltext"

    def __init__(self, z_T: torch.Tensor, null: torch.Tensor, per_step: torch.Tensor) -> None:
        super().__init__(z_T, null)
        self.per_step = per_step  # (T, 1, L, D)

    def uncond(self, i: int, batch: int) -> torch.Tensor:
        return self.per_step[i].expand(batch, -1, -1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"z_T": self.z_T, "null_text": self.per_step}


class StyleDiffusionInversion(Inversion):
    """StyleDiffusion: M_t(E(x)) modulates the value input of the conditional branch's cross-attention."""

    method = "stylediffusion"

    def __init__(self, z_T: torch.Tensor, null: torch.Tensor, mapping: MappingNetworks, features: torch.Tensor):
        super().__init__(z_T, null)
        self.mapping = mapping
        self.features = features  # (1, N, D), computed once per image
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def scale_shift(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, b) of M_i, each (1, L, D); computed once per step."""
        if i not in self._cache:
            with torch.no_grad():
                self._cache[i] = self.mapping.nets[i](self.features.float())
        return self._cache[i]

    def value_states(self, i: int, texts: torch.Tensor, mapped: list[bool]) -> torch.Tensor | None:
        scale, shift = self.scale_shift(i)
        out = texts.float().clone()
        for b, use in enumerate(mapped):
            if use:
                out[b] = texts[b].float() * scale[0] + shift[0]
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        state = {k: v for k, v in self.mapping.state_dict().items()}
        return {"z_T": self.z_T, "features": self.features, **state}


def inversion_from_tensors(
    method: str, tensors: dict[str, torch.Tensor], null: torch.Tensor, source_text: torch.Tensor, num_steps: int
) -> Inversion:
    """Rebuild a saved :class:`Inversion` (device of ``null``)."""
    dev = null.device
    z_T = tensors["z_T"].to(dev)
    if method == "stylediffusion":
        mapping = mapping_from_tensors(tensors, num_steps).to(dev)
        return StyleDiffusionInversion(z_T, null, mapping, tensors["features"].to(dev))
    if method == "nulltext":
        return NullTextInversion(z_T, null, tensors["null_text"].to(dev, null.dtype))
    if method == "npi":
        return NegativePromptInversion(z_T, null, source_text)
    if method == "ddim":
        return DDIMInversion(z_T, null)
    raise ValueError(f"unknown inversion method {method!r}; valid: {', '.join(METHODS)}")


def sample(
    models: SDModels,
    schedule: DDIMSchedule,
    inversion: Inversion,
    texts: torch.Tensor,
    mapped: Callable[[int], list[bool]] | None = None,
    guidance_scale: float = 7.5,
    controller=None,
    progress: bool = False,
    desc: str = "sampling",
    explicit: bool = False,
) -> torch.Tensor:
    """Sample from z_T for a batch of prompts (B, L, D) with classifier-free guidance; returns z_0 (B, 4, h, w).

    The unconditional and conditional passes are separate UNet calls, so controllers see which branch runs.
    ``mapped(i)`` says per batch element whether the value path reads the learned input (default: all).
    A controller may blend latents after each step through ``step_callback(z, i)``. ``explicit`` materialises
    attention probabilities in every layer (the reference's cost; results equal up to float noise).
    """
    batch = texts.shape[0]
    z = inversion.z_T.expand(batch, -1, -1, -1).clone()
    with torch.no_grad(), style_processors(models.unet):
        for i in tqdm(range(schedule.num_steps), desc=desc, disable=not progress, leave=False):
            t = schedule.timesteps[i]
            use = mapped(i) if mapped is not None else [True] * batch
            uncond_call = AttnCall(i, Branch.UNCOND, controller=controller, explicit=explicit)
            eps_u = models.eps(z, t, inversion.uncond(i, batch), uncond_call)
            value = inversion.value_states(i, texts, use)
            cond_call = AttnCall(i, Branch.COND, value_states=value, controller=controller, explicit=explicit)
            eps_c = models.eps(z, t, texts, cond_call)
            z = sample_step(schedule, i, z, guided_eps(eps_u, eps_c, guidance_scale))
            if controller is not None:
                z = controller.step_callback(z, i)
            check_finite(z, "the sampled latent", i)
    return z


def reference_pairing(i: int) -> int:
    """The reference's map index for training step i: one step noisier, the first step reusing its own."""
    return max(i - 1, 0)


@dataclass
class TrainLog:
    """Per-step optimisation record."""

    iterations: list[int] = field(default_factory=list)
    final_loss: list[float] = field(default_factory=list)


def training_iteration(
    models: SDModels,
    schedule: DDIMSchedule,
    mapping: MappingNetworks,
    optimizer: torch.optim.Optimizer,
    i: int,
    z: torch.Tensor,
    eps_u: torch.Tensor,
    target: torch.Tensor,
    gt_maps: dict[str, torch.Tensor],
    text: torch.Tensor,
    features: torch.Tensor,
    map_names: frozenset[str],
    guidance_scale: float,
) -> torch.Tensor:
    """One Adam step on M_i: loss = MSE(z̃_{t-1}, ẑ_{t-1}) + Σ_layers MSE(a, â) (maps of ``map_names``).

    The unconditional prediction ``eps_u`` is computed once per step by the caller; processors must be
    installed by the caller. Returns the (detached) loss.
    """
    recorder = MapRecorder(map_names) if map_names else None
    value = mapping.value_input(i, features, text)
    eps_c = models.eps(z, schedule.timesteps[i], text, AttnCall(i, Branch.COND, value_states=value, controller=recorder))
    z_prev = sample_step(schedule, i, z, guided_eps(eps_u, eps_c, guidance_scale))
    loss = F.mse_loss(z_prev, target)
    for name in map_names:
        loss = loss + F.mse_loss(recorder.maps[name].float(), gt_maps[name].float())
    check_finite(loss.detach(), "the training loss", i)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_stylediffusion(
    models: SDModels,
    trace: InversionTrace,
    text: torch.Tensor,
    null: torch.Tensor,
    features: torch.Tensor,
    schedule: DDIMSchedule,
    num_inner_steps: int = 100,
    num_epoch: int = 1,
    w_attnloss: bool = True,
    guidance_scale: float = 7.5,
    attn_pairing: str = "same",
    progress: bool = True,
    early_stop: bool = True,
) -> tuple[StyleDiffusionInversion, TrainLog]:
    """Train M_1 … M_T (SPEC §2): per step, Adam on M_i so that one guided DDIM step from the current
    latent reaches the inversion latent of the next step, with the cross-attention maps kept close to
    the inversion's; then advance the current latent with the trained M_i."""
    num = schedule.num_steps
    names = frozenset(l.name for l in map_layers(models.layers()))
    mapping = MappingNetworks(num, features.shape[1], models.max_length).to(models.device)
    text = text.float()
    log = TrainLog()
    total = num_epoch * sum(inner_steps(num_inner_steps, i) for i in range(num))
    bar = tqdm(total=total, desc="training M_t", disable=not progress)
    with style_processors(models.unet):
        for epoch in range(num_epoch):
            z = trace.latents[num]
            for i in range(num):
                t = schedule.timesteps[i]
                if epoch == 0:
                    mapping.init_from_previous(i)
                target = trace.latents[num - i - 1]
                gt = trace.maps[reference_pairing(i) if attn_pairing == "reference" else i]
                net = mapping.nets[i]
                optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate(i))
                with torch.no_grad():
                    eps_u = models.eps(z, t, null, AttnCall(i, Branch.UNCOND))
                n_inner = inner_steps(num_inner_steps, i)
                loss_value = float("nan")
                for j in range(n_inner):
                    loss = training_iteration(models, schedule, mapping, optimizer, i, z, eps_u, target, gt, text,
                                              features, names if w_attnloss else frozenset(), guidance_scale)
                    loss_value = loss.item()
                    bar.update(1)
                    bar.set_postfix(step=f"{i + 1}/{num}", it=j + 1, loss=f"{loss_value:.2e}")
                    if early_stop and loss_value < early_stop_threshold(i):
                        bar.update(n_inner - j - 1)
                        break
                log.iterations.append(j + 1)
                log.final_loss.append(loss_value)
                with torch.no_grad():
                    value = mapping.value_input(i, features, text)
                    eps_c = models.eps(z, t, text, AttnCall(i, Branch.COND, value_states=value))
                    z = sample_step(schedule, i, z, guided_eps(eps_u, eps_c, guidance_scale))
                check_finite(z, "the current latent", i)
    bar.close()
    mapping.eval()
    mapping.requires_grad_(False)
    return StyleDiffusionInversion(trace.latents[num], null, mapping, features), log


def train_nulltext(
    models: SDModels,
    trace: InversionTrace,
    text: torch.Tensor,
    null: torch.Tensor,
    schedule: DDIMSchedule,
    num_inner_steps: int = 10,
    guidance_scale: float = 7.5,
    progress: bool = True,
) -> tuple[NullTextInversion, TrainLog]:
    """Null-text inversion: per step, Adam (lr 0.01·(1 − i/100)) on the unconditional embedding for up to
    ``num_inner_steps`` iterations, early stop at 1e-5 + i·2e-5; the conditional prediction once per step."""
    num = schedule.num_steps
    uncond = null.detach().float().clone()
    per_step = []
    log = TrainLog()
    bar = tqdm(total=num * num_inner_steps, desc="null-text inversion", disable=not progress)
    with style_processors(models.unet):
        z = trace.latents[num]
        for i in range(num):
            t = schedule.timesteps[i]
            target = trace.latents[num - i - 1]
            uncond = uncond.detach().requires_grad_(True)
            optimizer = torch.optim.Adam([uncond], lr=learning_rate(i))
            with torch.no_grad():
                eps_c = models.eps(z, t, text, AttnCall(i, Branch.COND))
            loss_value = float("nan")
            for j in range(num_inner_steps):
                eps_u = models.eps(z, t, uncond, AttnCall(i, Branch.UNCOND))
                z_prev = sample_step(schedule, i, z, guided_eps(eps_u, eps_c, guidance_scale))
                loss = F.mse_loss(z_prev, target)
                check_finite(loss.detach(), "the null-text loss", i)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_value = loss.item()
                bar.update(1)
                bar.set_postfix(step=f"{i + 1}/{num}", it=j + 1, loss=f"{loss_value:.2e}")
                if loss_value < early_stop_threshold(i):
                    bar.update(num_inner_steps - j - 1)
                    break
            log.iterations.append(j + 1)
            log.final_loss.append(loss_value)
            uncond = uncond.detach()
            per_step.append(uncond.clone())
            with torch.no_grad():
                eps_u = models.eps(z, t, uncond, AttnCall(i, Branch.UNCOND))
                z = sample_step(schedule, i, z, guided_eps(eps_u, eps_c, guidance_scale))
            check_finite(z, "the current latent", i)
    bar.close()
    return NullTextInversion(trace.latents[num], null, torch.stack(per_step)), log


def latent_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error between two latents."""
    return F.mse_loss(a.float(), b.float()).item()
