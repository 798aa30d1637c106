"""Inversion methods behind one interface and a registry: StyleDiffusion, null-text, text-embedding, negative-prompt,
DDIM, and PIE-Bench's other rows (Direct Inversion, edit-friendly DDPM, EDICT, ProxEdit on NPI, StyleDiffusion with
direct correction; docs/method.md §9).

Every method starts from the same DDIM inversion (:func:`ddim_inversion`) and yields an :class:`Inversion`:
the noise latent z_T plus what the sampler needs at step i — the unconditional embedding, the conditional
text embeddings and the value-path input of the conditional branch. Sampling and editing are shared (``sdtoolkit.methods.sampler.sample``), so
P2Plus editing works after any of them. A method that samples otherwise (DDPM noise maps, EDICT's coupled pair, a
per-step correction, proximal guidance) overrides the sampler's hooks :meth:`Inversion.start`, :meth:`Inversion.step`,
:meth:`Inversion.blend` and :meth:`Inversion.finish`. A new method is one :class:`Inversion` subclass decorated with
:func:`register` (and its name in ``sdtoolkit.core.settings.InversionMethod``).
"""
from __future__ import annotations

from abc import ABC
from typing import Callable, ClassVar

import torch

from sdtoolkit.core.attention import AttentionController, AttnCall, Branch, MapRecorder, map_layers, style_processors
from sdtoolkit.core.ddim import (DDIMSchedule, ddpm_step, edict_mix, edict_unmix, edit_friendly_latents, guided_eps,
                                 inversion_step, noise_map, proximal_delta, proximal_edit_mask, sample_step,
                                 undo_sample_step)
from sdtoolkit.core.mapping import MappingNetworks, mapping_from_tensors
from sdtoolkit.core.models import SDModels
from sdtoolkit.core.progress import ProgressBar
from sdtoolkit.core.settings import InversionMethod, TrainSettings
from sdtoolkit.methods.sampler import Predict, check_finite
from sdtoolkit.methods.training import InversionTrace, TrainLog, train_embeddings, train_mapping

REGISTRY: dict[InversionMethod, type[Inversion]] = {}


def register(cls: type[Inversion]) -> type[Inversion]:
    """Class decorator: make ``cls`` the implementation of ``cls.name``."""
    REGISTRY[cls.name] = cls
    return cls


def method_class(name: InversionMethod | str) -> type[Inversion]:
    """The registered class of an inversion method."""
    return REGISTRY[InversionMethod(name)]


@torch.no_grad()
def ddim_inversion(
    models: SDModels,
    z0: torch.Tensor,
    text: torch.Tensor,
    schedule: DDIMSchedule,
    record: frozenset[str] = frozenset(),
    progress: bool = False,
    controller: AttentionController | None = None,
    pooled: torch.Tensor | None = None,
) -> InversionTrace:
    """Run T DDIM steps forwards (guidance 1, conditional branch, docs/method.md §2), keeping latents and the maps
    of ``record`` (or, instead, passing ``controller`` to every UNet call, e.g. an attention store).
    ``pooled``: SDXL's pooled embedding of the prompt (kept in the trace for training)."""
    num = schedule.num_steps
    latents = [z0.float()]
    maps: list[dict[str, torch.Tensor]] = [{} for _ in range(num)]
    z = z0.float()
    with style_processors(models.unet):
        for i in ProgressBar(reversed(range(num)), total=num, desc="DDIM inversion", disable=not progress, leave=False):
            recorder = MapRecorder(record) if record else controller
            eps = models.predict(z, schedule.timesteps[i], text, AttnCall(step=i, branch=Branch.COND, controller=recorder),
                             pooled)
            if record:
                maps[i] = {k: v.detach() for k, v in recorder.maps.items()}
            z = inversion_step(schedule, i, z, eps)
            check_finite(z, "the inversion latent", i)
            latents.append(z)
    return InversionTrace(latents, maps, pooled)


class Inversion(ABC):
    """What a method learned: z_T plus the per-step unconditional embedding and value-path input."""

    name: ClassVar[InversionMethod]
    shares_source: ClassVar[bool] = True
    """Whether the source row of a sampling is independent of the target rows beside it, so that a sweep samples
    the source once for all its combinations (``sdtoolkit.jobs.edit.sweep_latents``); a method whose step mixes
    the rows of the batch says False and each combination is sampled as its own [source, target] batch."""

    def __init__(self, z_T: torch.Tensor, null: torch.Tensor) -> None:
        self.z_T = z_T.float()  # the DDIM-inverted z_T (also what --baselines and the sidecar's DDIM figure start from)
        self.null = null  # (1, L, D) embedding of ""
        self.first_step = 0  # the first sampling step (edit-friendly DDPM and EDICT skip the noisiest ones)

    @classmethod
    def recorded_maps(cls, models: SDModels, settings: TrainSettings) -> frozenset[str]:
        """Layers whose cross-attention maps the DDIM inversion must record for :meth:`fit` (default: none)."""
        return frozenset()

    @classmethod
    def fit(cls, models: SDModels, trace: InversionTrace, text: torch.Tensor, null: torch.Tensor, x: torch.Tensor,
            schedule: DDIMSchedule, settings: TrainSettings, progress: bool = True) -> tuple[Inversion, TrainLog | None]:
        """Learn this method's inversion of image ``x`` (1, 3, S, S) from its DDIM inversion ``trace``."""
        raise NotImplementedError

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], null: torch.Tensor, source_text: torch.Tensor,
                     num_steps: int) -> Inversion:
        """Rebuild a saved inversion (on the device of ``null``)."""
        raise NotImplementedError

    def uncond(self, i: int, batch: int) -> torch.Tensor:
        """Unconditional embedding (B, L, D) at sampling step i."""
        return self.null.expand(batch, -1, -1)

    def cond_texts(self, i: int, texts: torch.Tensor) -> torch.Tensor:
        """Conditional text embeddings (B, L, D) at sampling step i; ``texts[0]`` is the source prompt's."""
        return texts

    def uncond_pooled(self, batch: int) -> torch.Tensor | None:
        """SDXL's pooled embedding (B, P) of the unconditional branch; None: zeros (force_zeros_for_empty_prompt)."""
        return None

    def value_states(self, i: int, texts: torch.Tensor, mapped: list[bool]) -> torch.Tensor | None:
        """Input of to_v in cross-attention (B, L, D) for the conditional branch, or None for the text."""
        return None

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything needed to edit later, for safetensors."""
        return {"z_T": self.z_T}

    def method_settings(self) -> dict:
        """The method's own published constants, recorded in the sidecar (none by default)."""
        return {}

    # The sampler's hooks (``sdtoolkit.methods.sampler.sample``): plain guided DDIM from z_T unless overridden.

    def start(self, batch: int) -> torch.Tensor:
        """The sampler's state at :attr:`first_step` for ``batch`` prompts: z_T (B, 4, h, w)."""
        return self.z_T.expand(batch, -1, -1, -1).clone()

    def step(self, schedule: DDIMSchedule, i: int, z: torch.Tensor, predict: Predict,
             guidance_scale: float) -> torch.Tensor:
        """Sampling step i of the state ``z``; ``predict(z)`` runs the unconditional and the conditional pass."""
        eps_u, eps_c = predict(z)
        return sample_step(schedule, i, z, guided_eps(eps_u, eps_c, guidance_scale))

    def blend(self, z: torch.Tensor, callback: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Apply the controller's latent callback (LocalBlend) to the state after a step."""
        return callback(z)

    def finish(self, z: torch.Tensor) -> torch.Tensor:
        """The latents z_0 (B, 4, h, w) from the final state."""
        return z


@register
class DDIMInversion(Inversion):
    """Plain DDIM inversion; guidance applies only at sampling time."""

    name = InversionMethod.DDIM

    @classmethod
    def fit(cls, models, trace, text, null, x, schedule, settings, progress=True):
        return cls(trace.latents[-1], null), None

    @classmethod
    def from_tensors(cls, tensors, null, source_text, num_steps):
        return cls(tensors["z_T"].to(null.device), null)


@register
class NegativePromptInversion(Inversion):
    """Negative-prompt inversion (Miyake et al. 2023): the source prompt's embedding replaces the null one."""

    name = InversionMethod.NPI

    def __init__(self, z_T: torch.Tensor, null: torch.Tensor, source_text: torch.Tensor,
                 source_pooled: torch.Tensor | None = None) -> None:
        super().__init__(z_T, null)
        self.source_text = source_text
        self.source_pooled = source_pooled  # (1, P) SDXL

    @classmethod
    def fit(cls, models, trace, text, null, x, schedule, settings, progress=True):
        return cls(trace.latents[-1], null, text, trace.pooled), None

    @classmethod
    def from_tensors(cls, tensors, null, source_text, num_steps):
        pooled = tensors.get("source_pooled")
        return cls(tensors["z_T"].to(null.device), null, source_text, None if pooled is None else pooled.to(null.device))

    def uncond(self, i: int, batch: int) -> torch.Tensor:
        return self.source_text.expand(batch, -1, -1)

    def uncond_pooled(self, batch: int) -> torch.Tensor | None:
        return None if self.source_pooled is None else self.source_pooled.expand(batch, -1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"z_T": self.z_T} | ({"source_pooled": self.source_pooled} if self.source_pooled is not None else {})


class PerStepEmbeddingInversion(Inversion):
    """One optimised prompt embedding per step on one branch (``branch``), saved under ``tensor_key``."""

    branch: Branch
    tensor_key: str

    def __init__(self, z_T: torch.Tensor, null: torch.Tensor, per_step: torch.Tensor) -> None:
        super().__init__(z_T, null)
        self.per_step = per_step  # (T, 1, L, D)

    @classmethod
    def fit(cls, models, trace, text, null, x, schedule, settings, progress=True):
        per_step, log = train_embeddings(models, trace, text, null, schedule, settings, cls.branch, progress)
        return cls(trace.latents[schedule.num_steps], null, per_step), log

    @classmethod
    def from_tensors(cls, tensors, null, source_text, num_steps):
        return cls(tensors["z_T"].to(null.device), null, tensors[cls.tensor_key].to(null.device, null.dtype))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"z_T": self.z_T, self.tensor_key: self.per_step}


@register
class NullTextInversion(PerStepEmbeddingInversion):
    """Null-text inversion (Mokady et al. 2023): one optimised unconditional embedding per step."""

    name = InversionMethod.NULLTEXT
    branch = Branch.UNCOND
    tensor_key = "null_text"

    def uncond(self, i: int, batch: int) -> torch.Tensor:
        return self.per_step[i].expand(batch, -1, -1)


@register
class TextEmbeddingInversion(PerStepEmbeddingInversion):
    """Text-embedding inversion (the reference's baseline beside null-text, docs/method.md §5): one optimised
    source-prompt embedding per step, keys and values of the conditional branch; the target keeps its own."""

    name = InversionMethod.TEXTINV
    branch = Branch.COND
    tensor_key = "cond_text"

    def cond_texts(self, i: int, texts: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.per_step[i].to(texts.dtype), texts[1:]])


@register
class StyleDiffusionInversion(Inversion):
    """StyleDiffusion: M_t(E(x)) modulates the value input of the conditional branch's cross-attention."""

    name = InversionMethod.STYLEDIFFUSION

    def __init__(self, z_T: torch.Tensor, null: torch.Tensor, mapping: MappingNetworks, features: torch.Tensor):
        super().__init__(z_T, null)
        self.mapping = mapping
        self.features = features  # (1, N, D), computed once per image
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def recorded_maps(cls, models: SDModels, settings: TrainSettings) -> frozenset[str]:
        if not settings.w_attnloss:
            return frozenset()
        return frozenset(l.name for l in map_layers(models.layers()))

    @classmethod
    def fit(cls, models, trace, text, null, x, schedule, settings, progress=True):
        features = models.image_features(x)
        mapping, log = train_mapping(models, trace, text, null, features, schedule, settings, progress)
        return cls(trace.latents[schedule.num_steps], null, mapping, features), log

    @classmethod
    def from_tensors(cls, tensors, null, source_text, num_steps):
        dev = null.device
        mapping = mapping_from_tensors(tensors, num_steps).to(dev)
        return cls(tensors["z_T"].to(dev), null, mapping, tensors["features"].to(dev))

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


# ---------------------------------------------------------------------------------------------------------------
# PIE-Bench's other rows (docs/method.md §9)


def stacked_latents(tensors: dict[str, torch.Tensor], key: str, rows: int, device: torch.device) -> torch.Tensor:
    """``tensors[key]`` with its expected number of rows (RuntimeError otherwise: a file of another step count)."""
    value = tensors[key]
    if value.shape[0] != rows:
        raise RuntimeError(f"{key} has {value.shape[0]} rows, expected {rows}")
    return value.to(device)


def guided_output(models: SDModels, schedule: DDIMSchedule, i: int, z: torch.Tensor, text: torch.Tensor,
                  null: torch.Tensor, pooled: torch.Tensor | None, guidance_scale: float) -> torch.Tensor:
    """The guided output of step i at ``z`` (unconditional pass on ``null``, conditional on ``text``), as the
    sampler computes it for one prompt; for the inversions that evaluate the UNet themselves."""
    t = schedule.timesteps[i]
    eps_u = models.predict(z, t, null, AttnCall(step=i, branch=Branch.UNCOND), None)
    eps_c = models.predict(z, t, text, AttnCall(step=i, branch=Branch.COND), pooled)
    return guided_eps(eps_u, eps_c, guidance_scale)


def row_scales(batch: int, source: float, other: float, like: torch.Tensor) -> torch.Tensor:
    """Guidance scale per batch element (B, 1, 1, 1): ``source`` for the source prompt (row 0), ``other`` for the rest."""
    scales = torch.full((batch, 1, 1, 1), float(other), dtype=like.dtype, device=like.device)
    scales[0] = source
    return scales


class KeepsInversionLatents(Inversion):
    """Mixed into a method that also keeps the DDIM trace ẑ_0 … ẑ_T (``inversion_latents``, (T+1, 4, h, w))."""

    latents: torch.Tensor

    @classmethod
    def fit(cls, models, trace, text, null, x, schedule, settings, progress=True):
        inv, log = super().fit(models, trace, text, null, x, schedule, settings, progress)
        inv.latents = torch.cat(trace.latents)
        return inv, log

    @classmethod
    def from_tensors(cls, tensors, null, source_text, num_steps):
        inv = super().from_tensors(tensors, null, source_text, num_steps)
        inv.latents = stacked_latents(tensors, "inversion_latents", num_steps + 1, null.device)
        return inv

    def latent_after(self, schedule: DDIMSchedule, i: int, like: torch.Tensor) -> torch.Tensor:
        """The inversion latent at the level sampling step i moves to (``alpha_prev[i]``), (1, 4, h, w)."""
        return self.latents[schedule.num_steps - 1 - i][None].to(like.dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        return super().tensors() | {"inversion_latents": self.latents}


class DirectCorrection(KeepsInversionLatents):
    """Direct Inversion's per-step correction of the source branch (Ju et al. 2023, "PnP Inversion"; docs/method.md
    §9.1): after sampling step i the source latent gets the difference between the DDIM inversion latent of that
    level and itself, so the source branch walks the inversion path exactly; the target branch is not corrected."""

    def step(self, schedule, i, z, predict, guidance_scale):
        z = super().step(schedule, i, z, predict, guidance_scale)
        source = z[:1] + (self.latent_after(schedule, i, z) - z[:1])  # the published offset, where the source is
        return torch.cat([source, z[1:]])


@register
class DirectInversion(DirectCorrection, DDIMInversion):
    """Direct Inversion (Ju et al. 2023): DDIM inversion + the per-step correction of the source branch; no
    optimisation, exact source reconstruction."""

    name = InversionMethod.DIRECT


@register
class StyleDiffusionDirectInversion(DirectCorrection, StyleDiffusionInversion):
    """StyleDiffusion with direct correction (our extension, docs/method.md §9.5): the trained mapping networks on the
    value path, plus Direct Inversion's correction of the source branch's remaining reconstruction error."""

    name = InversionMethod.STYLEDIFFUSION_DIRECT


@register
class ProxNPIInversion(KeepsInversionLatents, NegativePromptInversion):
    """ProxEdit on negative-prompt inversion (Han et al. 2023, "Improving tuning-free real image editing with proximal
    guidance"): in editing, the guidance difference goes through a proximal (thresholding) step, and below
    timestep ``recon_t`` the latents outside the thresholded region are pulled to the DDIM inversion latents
    (the runner's "inversion guidance"). A lone source reconstruction is plain NPI, as the runner's."""

    name = InversionMethod.PROXNPI
    shares_source = False  # the proximal threshold is a quantile over the whole batch: the rows depend on each other
    quantile: ClassVar[float] = 0.75  # the published runner: prox "l0", quantile .75
    recon_t: ClassVar[int] = 400
    recon_lr: ClassVar[float] = 1.0
    dilate_radius: ClassVar[int] = 1

    def step(self, schedule, i, z, predict, guidance_scale):
        eps_u, eps_c = predict(z)
        if z.shape[0] < 2:  # reconstruction only: no target to guide
            return sample_step(schedule, i, z, guided_eps(eps_u, eps_c, guidance_scale))
        delta, tau = proximal_delta(eps_c - eps_u, self.quantile)
        z = sample_step(schedule, i, z, eps_u + guidance_scale * delta)
        if schedule.timesteps[i] < self.recon_t:
            keep = 1.0 - proximal_edit_mask(delta, tau, self.dilate_radius)
            z = z - self.recon_lr * (z - self.latent_after(schedule, i, z)) * keep
        return z

    def method_settings(self) -> dict:
        return {"prox": "l0", "quantile": self.quantile, "recon_t": self.recon_t, "recon_lr": self.recon_lr,
                "dilate_radius": self.dilate_radius}


@register
class EditFriendlyInversion(Inversion):
    """Edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2023): independently noised latents x_t of z_0, and
    per step the noise map z_t = (x_{t-1} - mu_t(x_t)) / sigma_t (eta = 1) of the source prompt at guidance
    ``source_guidance``; sampling through the same maps reproduces x_t … x_0 exactly. Editing samples [source, target]
    from x at step ``skip`` through the same maps, the source at ``source_guidance``, the target at the run's
    guidance, with the P2Plus controller in both passes of every step."""

    name = InversionMethod.EDIT_FRIENDLY
    skip_fraction: ClassVar[float] = 12 / 50  # the runner: SKIP = 12 of T = 50 steps
    source_guidance: ClassVar[float] = 1.0  # the runner's source_guidance_scale (inversion and source branch)
    eta: ClassVar[float] = 1.0

    def __init__(self, z_T: torch.Tensor, null: torch.Tensor, x_start: torch.Tensor, noise_maps: torch.Tensor,
                 num_steps: int) -> None:
        super().__init__(z_T, null)
        self.x_start = x_start.float()  # (1, 4, h, w): x at level alpha_t[skip]
        self.noise_maps = noise_maps.float()  # (T - skip, 4, h, w): row k is step skip + k
        self.first_step = num_steps - noise_maps.shape[0]

    @classmethod
    def skip(cls, num_steps: int) -> int:
        """Steps not sampled: round(0.24 T) (12 of 50 as published)."""
        return round(cls.skip_fraction * num_steps)

    @classmethod
    def fit(cls, models, trace, text, null, x, schedule, settings, progress=True):
        num, skip = schedule.num_steps, cls.skip(schedule.num_steps)
        z0 = trace.latents[0].float()
        noises = torch.randn((num, *z0.shape[1:]), device=z0.device)
        xs = edit_friendly_latents(schedule, z0, noises)  # (T+1, 4, h, w): row T - i is the level of step i
        maps = []
        with torch.no_grad(), style_processors(models.unet):
            for i in ProgressBar(range(skip, num), desc="edit-friendly inversion", disable=not progress, leave=False):
                z = xs[num - i][None]
                out = guided_output(models, schedule, i, z, text, null, trace.pooled, cls.source_guidance)
                maps.append(noise_map(schedule, i, z, xs[num - i - 1][None], out, cls.eta)[0])
                check_finite(maps[-1], "the noise map", i)
        return cls(trace.latents[-1], null, xs[num - skip][None], torch.stack(maps), num), None

    @classmethod
    def from_tensors(cls, tensors, null, source_text, num_steps):
        dev = null.device
        maps = stacked_latents(tensors, "noise_maps", num_steps - cls.skip(num_steps), dev)
        return cls(tensors["z_T"].to(dev), null, tensors["x_start"].to(dev), maps, num_steps)

    def start(self, batch: int) -> torch.Tensor:
        return self.x_start.expand(batch, -1, -1, -1).clone()

    def step(self, schedule, i, z, predict, guidance_scale):
        eps_u, eps_c = predict(z)
        out = guided_eps(eps_u, eps_c, row_scales(z.shape[0], self.source_guidance, guidance_scale, z))
        return ddpm_step(schedule, i, z, out, self.noise_maps[i - self.first_step].to(z.dtype), self.eta)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"z_T": self.z_T, "x_start": self.x_start, "noise_maps": self.noise_maps}

    def method_settings(self) -> dict:
        return {"skip": self.first_step, "eta": self.eta, "source_guidance": self.source_guidance}


@register
class EdictInversion(Inversion):
    """EDICT (Wallace et al. 2023): two coupled latent sequences (x, y), each DDIM step of one predicted from the
    other, then the mixing layers with weight ``mix``; inverted exactly by running the same operations
    backwards (docs/method.md §9.3). The steps alternate which sequence goes first (the published "leapfrog" order); the
    noisiest ``1 - strength`` of the steps are not run (published strength .8). Editing samples the inverted pair
    with [source, target], the controller in every pass; the result is the x sequence."""

    name = InversionMethod.EDICT
    mix: ClassVar[float] = 0.93
    strength: ClassVar[float] = 0.8

    def __init__(self, z_T: torch.Tensor, null: torch.Tensor, pair: torch.Tensor, num_steps: int,
                 guidance_scale: float) -> None:
        super().__init__(z_T, null)
        self.pair = pair.float()  # (2, 4, h, w): x and y at level alpha_t[first_step]
        self.first_step = self.skip(num_steps)
        self.guidance_scale = guidance_scale  # of the inversion: the source branch's at sampling

    @classmethod
    def skip(cls, num_steps: int) -> int:
        """Steps not run: T - int(T · strength) (10 of 50 as published)."""
        return num_steps - int(num_steps * cls.strength)

    @classmethod
    def fit(cls, models, trace, text, null, x, schedule, settings, progress=True):
        num, skip = schedule.num_steps, cls.skip(schedule.num_steps)
        w = settings.guidance_scale

        def eps(i: int, z: torch.Tensor) -> torch.Tensor:
            return guided_output(models, schedule, i, z, text, null, trace.pooled, w)

        x_seq = y_seq = trace.latents[0].float()
        with torch.no_grad(), style_processors(models.unet):
            for i in ProgressBar(reversed(range(skip, num)), total=num - skip, desc="EDICT inversion", disable=not progress,
                          leave=False):
                x_seq, y_seq = edict_unmix(x_seq, y_seq, cls.mix)
                if (i - skip) % 2 == 0:  # sampling updated x first, then y
                    y_seq = undo_sample_step(schedule, i, y_seq, eps(i, x_seq))
                    x_seq = undo_sample_step(schedule, i, x_seq, eps(i, y_seq))
                else:
                    x_seq = undo_sample_step(schedule, i, x_seq, eps(i, y_seq))
                    y_seq = undo_sample_step(schedule, i, y_seq, eps(i, x_seq))
                check_finite(x_seq, "the EDICT inversion latent", i)
        return cls(trace.latents[-1], null, torch.cat([x_seq, y_seq]), num, w), None

    @classmethod
    def from_tensors(cls, tensors, null, source_text, num_steps):
        dev = null.device
        scale = tensors["guidance_scale"]
        return cls(tensors["z_T"].to(dev), null, stacked_latents(tensors, "edict_pair", 2, dev), num_steps,
                   float(scale))

    def start(self, batch: int) -> torch.Tensor:
        x_seq, y_seq = self.pair[:1], self.pair[1:]
        return torch.cat([x_seq.expand(batch, -1, -1, -1), y_seq.expand(batch, -1, -1, -1)]).clone()

    def step(self, schedule, i, z, predict, guidance_scale):
        x_seq, y_seq = z.chunk(2)
        scales = row_scales(x_seq.shape[0], self.guidance_scale, guidance_scale, z)

        def eps(v: torch.Tensor) -> torch.Tensor:
            eps_u, eps_c = predict(v)
            return guided_eps(eps_u, eps_c, scales)

        if (i - self.first_step) % 2 == 0:
            x_seq = sample_step(schedule, i, x_seq, eps(y_seq))
            y_seq = sample_step(schedule, i, y_seq, eps(x_seq))
        else:
            y_seq = sample_step(schedule, i, y_seq, eps(x_seq))
            x_seq = sample_step(schedule, i, x_seq, eps(y_seq))
        return torch.cat(edict_mix(x_seq, y_seq, self.mix))

    def blend(self, z, callback):
        x_seq, y_seq = z.chunk(2)
        return torch.cat([callback(x_seq), callback(y_seq)])

    def finish(self, z: torch.Tensor) -> torch.Tensor:
        return z.chunk(2)[0]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"z_T": self.z_T, "edict_pair": self.pair, "guidance_scale": torch.tensor(self.guidance_scale)}

    def method_settings(self) -> dict:
        return {"mix": self.mix, "strength": self.strength, "skip": self.first_step, "leapfrog": True,
                "guidance_scale": self.guidance_scale}
