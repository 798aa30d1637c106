"""Inversion methods behind one interface and a registry: StyleDiffusion, null-text, text-embedding, negative-prompt, DDIM.

Every method starts from the same DDIM inversion (:func:`ddim_inversion`) and yields an :class:`Inversion`:
the noise latent z_T plus what the sampler needs at step i — the unconditional embedding, the conditional
text embeddings and the value-path input of the conditional branch. Sampling and editing are shared (``sdtoolkit.methods.sampler.sample``), so
P2Plus editing works after any of them. A new method is one :class:`Inversion` subclass decorated with
:func:`register` (and its name in ``sdtoolkit.core.settings.InversionMethod``).
"""
from __future__ import annotations

from abc import ABC
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from sdtoolkit.core.attention import AttentionController, AttnCall, Branch, MapRecorder, map_layers, style_processors
from sdtoolkit.core.ddim import DDIMSchedule, inversion_step
from sdtoolkit.core.mapping import MappingNetworks, mapping_from_tensors
from sdtoolkit.core.models import SDModels
from sdtoolkit.core.settings import InversionMethod, TrainSettings
from sdtoolkit.methods.sampler import check_finite
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
        for i in tqdm(reversed(range(num)), total=num, desc="DDIM inversion", disable=not progress, leave=False):
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

    def __init__(self, z_T: torch.Tensor, null: torch.Tensor) -> None:
        self.z_T = z_T.float()
        self.null = null  # (1, L, D) embedding of ""

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
