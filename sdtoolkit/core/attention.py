"""Attention hooks as diffusers attention processors.

Every attention layer of the UNet gets a :class:`StyleAttnProcessor` named by its layer path. Per-call
state (step index, branch, value-path input, controller) is *passed* with each UNet call through
``cross_attention_kwargs={"call": AttnCall(...)}``; processors keep no counters and read no globals.

Attention probabilities are materialised only where a controller asks for them (``wants_probs``);
every other layer runs ``scaled_dot_product_attention``.
"""
from __future__ import annotations

import enum
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import torch
import torch.nn.functional as F


class Branch(str, enum.Enum):
    """Which classifier-free-guidance branch a UNet call computes."""

    UNCOND = "uncond"
    COND = "cond"


@dataclass(frozen=True)
class LayerInfo:
    """Static description of one attention layer."""

    name: str  # processor key, e.g. "up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"
    place: str  # "down" | "mid" | "up"
    is_cross: bool
    resolution: int  # side of the query grid at the model's default (square) size
    level: int = 0  # times the latent is halved before this layer
    scale: int = 8  # pixels per query position: vae_scale_factor · 2**level

    def grid(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """Query grid (h, w) of this layer for latents of size ``latent_hw`` (stride-2 convs round up)."""
        h, w = latent_hw
        for _ in range(self.level):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w


class AttentionController(Protocol):
    """What an attention controller implements (the editing controllers: ``sdtoolkit.control.controllers``)."""

    def wants_probs(self, layer: LayerInfo, call: "AttnCall") -> bool:
        """Whether this layer must materialise its probabilities for this call."""

    def on_probs(self, probs: torch.Tensor, layer: LayerInfo, call: "AttnCall") -> torch.Tensor:
        """Observe and possibly edit probabilities of shape (batch, heads, queries, keys)."""

    def step_callback(self, z: torch.Tensor, step: int) -> torch.Tensor:
        """Called by the sampler after sampling step ``step`` with the latents (B, 4, h, w); returns them (or blended)."""


@dataclass
class AttnCall:
    """State of one UNet call, passed to every processor."""

    step: int
    branch: Branch
    value_states: torch.Tensor | None = None  # (B, 77, D): input of to_v in cross-attention, None = text
    controller: AttentionController | None = None
    explicit: bool = False  # materialise probabilities in every layer (reference-cost setting)
    latent_hw: tuple[int, int] | None = None  # (h, w) of the latents of this call, set by SDModels.eps


def layer_info(name: str, latent_size: int, num_down_blocks: int, vae_scale_factor: int = 8) -> LayerInfo:
    """Describe layer ``name`` of a UNet2DConditionModel whose default latent side is ``latent_size``.

    Down block i works at latent/2**i, the mid block at latent/2**(n-1), up block i at latent/2**(n-1-i).
    """
    parts = name.split(".")
    if parts[0] == "down_blocks":
        place, level = "down", int(parts[1])
    elif parts[0] == "up_blocks":
        place, level = "up", num_down_blocks - 1 - int(parts[1])
    elif parts[0] == "mid_block":
        place, level = "mid", num_down_blocks - 1
    else:
        raise ValueError(f"unexpected attention layer name {name!r}")
    return LayerInfo(name=name, place=place, is_cross=".attn2." in name, resolution=max(1, latent_size // 2**level),
                     level=level, scale=vae_scale_factor * 2**level)


def unet_layers(unet: torch.nn.Module, vae_scale_factor: int = 8) -> list[LayerInfo]:
    """All attention layers of ``unet`` in processor order."""
    cfg = unet.config
    return [layer_info(n, cfg.sample_size, len(cfg.down_block_types), vae_scale_factor) for n in unet.attn_processors]


MAP_SCALE = 32
"""The maps of the attention loss, LocalBlend, StoreAttn and storemask are those at 1/32 of the image size
(16×16 at 512², 24×16 at 768×512, 32×32 at 1024²; docs/method.md §2)."""


def _map_candidates(layers: list[LayerInfo]) -> list[LayerInfo]:
    cand = [l for l in layers if l.is_cross and l.place in ("down", "up")]
    if not cand:
        raise ValueError("the UNet has no cross-attention layers in its down/up blocks")
    return cand


def map_level(layers: list[LayerInfo]) -> int:
    """UNet level of the maps: the down/up cross-attention level whose scale is nearest 1/:data:`MAP_SCALE` of the
    image (in octaves; ties go to the coarser level). Level 2 for SD 1.x/2.x and SDXL; for tiny and toy models,
    whose pixels per latent differ, it is their coarsest cross-attention level."""
    cand = _map_candidates(layers)
    return min({l.level: abs(math.log2(l.scale / MAP_SCALE)) for l in cand}.items(), key=lambda kv: (kv[1], -kv[0]))[0]


def map_resolution(layers: list[LayerInfo]) -> int:
    """Side of the maps at the model's default square size (16 for SD at 512 px, 32 for SDXL at 1024 px)."""
    level = map_level(layers)
    return next(l.resolution for l in _map_candidates(layers) if l.level == level)


def map_layers(layers: list[LayerInfo]) -> list[LayerInfo]:
    """The down/up cross-attention layers at :func:`map_level` (docs/method.md §2)."""
    level = map_level(layers)
    return [l for l in _map_candidates(layers) if l.level == level]


class StyleAttnProcessor:
    """Attention with an optional value-path input and controller access to the probabilities."""

    def __init__(self, layer: LayerInfo) -> None:
        self.layer = layer

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        call: AttnCall | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)  # (B, HW, C)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        value_input = context
        if is_cross and call is not None and call.value_states is not None:
            value_input = call.value_states.to(context.dtype)

        heads = attn.heads
        query = attn.to_q(hidden_states)
        key = attn.to_k(context)
        value = attn.to_v(value_input)
        head_dim = key.shape[-1] // heads
        query = query.view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, h, Q, d)
        key = key.view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, h, K, d)
        value = value.view(value.shape[0], -1, heads, head_dim).transpose(1, 2)  # (B, h, K, d)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
            mask = mask.view(batch, heads, -1, mask.shape[-1])

        controller = call.controller if call is not None else None
        wants = controller is not None and controller.wants_probs(self.layer, call)
        if wants or (call is not None and call.explicit):
            scores = torch.matmul(query, key.transpose(-1, -2)) * attn.scale  # (B, h, Q, K)
            if mask is not None:
                scores = scores + mask
            probs = scores.softmax(dim=-1)
            if wants:
                probs = controller.on_probs(probs, self.layer, call)
            hidden_states = torch.matmul(probs.to(value.dtype), value)  # (B, h, Q, d)
        else:
            hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def style_processors(unet: torch.nn.Module) -> Iterator[list[LayerInfo]]:
    """Install a :class:`StyleAttnProcessor` on every attention layer; restore the previous ones on exit."""
    previous = dict(unet.attn_processors)
    layers = unet_layers(unet)
    unet.set_attn_processor({l.name: StyleAttnProcessor(l) for l in layers})
    try:
        yield layers
    finally:
        unet.set_attn_processor(previous)


@dataclass
class MapRecorder:
    """Controller that records the probabilities of chosen layers (with gradient) for one call."""

    layers: frozenset[str]
    branch: Branch = Branch.COND
    maps: dict[str, torch.Tensor] = field(default_factory=dict)

    def wants_probs(self, layer: LayerInfo, call: AttnCall) -> bool:
        return call.branch == self.branch and layer.name in self.layers

    def on_probs(self, probs: torch.Tensor, layer: LayerInfo, call: AttnCall) -> torch.Tensor:
        self.maps[layer.name] = probs
        return probs

    def step_callback(self, z: torch.Tensor, step: int) -> torch.Tensor:
        """Records only: the latents pass unchanged."""
        return z
