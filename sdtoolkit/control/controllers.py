"""Prompt-to-prompt attention control on diffusers attention processors (with StyleDiffusion's P2Plus).

Controllers implement ``wants_probs(layer, call)`` / ``on_probs(probs, layer, call)`` (see
``sdtoolkit.core.attention``) and ``step_callback(z, step)``. The sampling loop passes the step index and the
branch (unconditional / conditional) with every UNet call; batch element 0 is the source prompt and
element 1… the targets. Public helpers keep prompt-to-prompt's names and meaning.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from sdtoolkit.control import aligners as seq_aligner
from sdtoolkit.core.attention import AttnCall, Branch, LayerInfo, map_layers
from sdtoolkit.core.settings import EditType
from sdtoolkit.core.words import find_word_tokens, get_time_words_attention_alpha, get_word_inds, prompt_tokens

__all__ = [
    "AttentionStore",
    "LocalBlend",
    "MaskBlend",
    "P2PController",
    "Recording",
    "SweepController",
    "get_equalizer",
    "get_time_words_attention_alpha",
    "get_word_inds",
    "show_cross_attention",
    "text_under_image",
]

class AttentionStore:
    """Sums the conditional branch's cross-attention maps (head-averaged) of the map layers over steps.

    ``upper_heads``: average only heads h//2 … h−1, as the reference's mask script does (it inverts a batch of
    one and its store slices ``attn[h // 2:]``, meant to drop an unconditional half that is not there).
    """

    def __init__(self, layers: Sequence[LayerInfo], upper_heads: bool = False) -> None:
        self.layers = frozenset(l.name for l in map_layers(list(layers)))
        self.sums: dict[str, torch.Tensor] = {}
        self.steps: set[int] = set()
        self.upper_heads = upper_heads
        self.grid: tuple[int, int] | None = None  # the maps' (h, w) query grid; None: square

    def wants_probs(self, layer: LayerInfo, call: AttnCall) -> bool:
        return call.branch == Branch.COND and layer.name in self.layers

    def on_probs(self, probs: torch.Tensor, layer: LayerInfo, call: AttnCall) -> torch.Tensor:
        self.store(probs, layer, call)
        return probs

    def store(self, probs: torch.Tensor, layer: LayerInfo, call: AttnCall) -> None:
        """Add this call's maps (B, h, Q, K) → head mean (B, Q, K); remember the layer's (h, w) query grid."""
        heads = probs[:, probs.shape[1] // 2:] if self.upper_heads else probs
        mean = heads.detach().float().mean(dim=1)
        self.sums[layer.name] = self.sums[layer.name] + mean if layer.name in self.sums else mean
        self.steps.add(call.step)
        self.grid = layer.grid(call.latent_hw) if call.latent_hw is not None else None

    def step_callback(self, z: torch.Tensor, step: int) -> torch.Tensor:
        return z

    def maps(self) -> torch.Tensor:
        """Summed maps of all map layers as (B, layers, h, w, K), (h, w) the maps' query grid (1/32 of the image)."""
        if not self.sums:
            raise RuntimeError("no cross-attention was stored: the controller was not passed to the UNet")
        stacked = torch.stack([self.sums[n] for n in sorted(self.sums)], dim=1)  # (B, n_layers, Q, K)
        side = int(round(stacked.shape[2] ** 0.5))
        h, w = self.grid or (side, side)
        return stacked.reshape(stacked.shape[0], stacked.shape[1], h, w, stacked.shape[3])  # Q = h·w

    def average(self) -> torch.Tensor:
        """Per-token maps averaged over layers and stored steps: (B, h, w, K)."""
        return self.maps().mean(dim=1) / max(len(self.steps), 1)


@dataclass
class LocalBlend:
    """Keep the target equal to the source outside the blend words' attention mask.

    Mask from the map layers' cross-attention of the words (source words on prompt 0, target words on
    prompt 1), max-pool 3×3, resized to the latent, normalised by its max, thresholded; the union of the
    prompts' masks is applied from ``start_step`` on: x_tgt ← x_src + mask · (x_tgt − x_src).
    """

    word_alphas: torch.Tensor  # (B, K): 1 at the blend words' tokens
    start_step: int
    threshold: float = 0.3

    def mask(self, store: AttentionStore, latent_hw: tuple[int, int]) -> torch.Tensor:
        """Blend mask (1, 1, h, w) of 0/1 floats from the stored maps."""
        maps = store.maps()  # (B, n_layers, mh, mw, K)
        self.word_alphas = self.word_alphas.to(maps.device)  # moved once, not copied at every step
        alphas = self.word_alphas[:, None, None, None, :]
        maps = (maps * alphas).sum(-1).mean(1, keepdim=True)  # (B, 1, mh, mw)
        maps = F.max_pool2d(maps, kernel_size=3, stride=1, padding=1)
        maps = F.interpolate(maps, size=latent_hw)
        maps = maps / maps.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        masks = maps.gt(self.threshold)
        return masks.any(dim=0, keepdim=True).float()

    def __call__(self, z: torch.Tensor, step: int, store: AttentionStore) -> torch.Tensor:
        if step < self.start_step:
            return z
        mask = self.mask(store, tuple(z.shape[2:]))
        return z[:1] + mask * (z - z[:1])


def latent_mask(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(1, 1, h, w) 0/1 floats: a latent cell is inside when any pixel of an (H, W) image mask under it is
    (area resize, then > 0), so an object's edge is never cut off by the 8× coarser latent grid."""
    image = mask.detach().float()[None, None]  # (H, W) -> (1, 1, H, W)
    return F.interpolate(image, size=latent_hw, mode="area").gt(0).float()


@dataclass
class MaskBlend(LocalBlend):
    """LocalBlend with a fixed user mask (1 = may change) instead of the words' attention mask.

    The blend is LocalBlend's, x_tgt ← x_src + mask · (x_tgt − x_src) from ``start_step`` on; only where the
    mask comes from differs (``stylediffusion.py --blend_mask``, ``pie_bench.py --use_annotation_mask``).
    """

    user_mask: torch.Tensor | None = None  # (H, W) at image or latent resolution, values in [0, 1]

    def __post_init__(self) -> None:
        if self.user_mask is None or self.user_mask.ndim != 2:
            raise ValueError(f"MaskBlend needs an (H, W) user_mask, got {None if self.user_mask is None else tuple(self.user_mask.shape)}")

    @classmethod
    def from_mask(cls, mask: torch.Tensor, start_step: int, batch: int = 2) -> "MaskBlend":
        """A blend that uses ``mask`` at every step from ``start_step`` (no blend words)."""
        return cls(word_alphas=torch.zeros(batch, 1), start_step=start_step, user_mask=mask)

    def mask(self, store: AttentionStore | None, latent_hw: tuple[int, int]) -> torch.Tensor:
        """The user mask at the latent's size (:func:`latent_mask`); ``store`` is not read."""
        return latent_mask(self.user_mask, latent_hw)


def get_equalizer(text: str, words: Sequence[str], values: Sequence[float], tokenizer) -> torch.Tensor:
    """(1, 77) ones with ``values`` at the tokens of ``words`` (each must be in ``text``)."""
    if len(words) != len(values):
        raise ValueError(f"eq_params has {len(words)} words {list(words)} but {len(values)} values {list(values)}")
    equalizer = torch.ones(1, tokenizer.model_max_length)
    for word, value in zip(words, values):
        equalizer[:, find_word_tokens(text, word, tokenizer)] = float(value)
    return equalizer


class P2PController:
    """Replacement / Refinement / Reweight, LocalBlend, self-attention injection (tau_s) and P2Plus
    unconditional self-attention injection (tau_u) for a batch [source, target…]."""

    def __init__(
        self,
        prompts: Sequence[str],
        tokenizer,
        num_steps: int,
        layers: Sequence[LayerInfo],
        latent_size: int,
        edit_type: EditType | str = EditType.REPLACEMENT,
        tau_c: float | tuple | dict = 0.8,
        tau_s: float = 0.4,
        tau_u: float = 0.0,
        equalizer: torch.Tensor | None = None,
        local_blend: LocalBlend | None = None,
    ) -> None:
        if edit_type not in (EditType.REPLACEMENT, EditType.REFINEMENT):
            raise ValueError(f"edit_type {edit_type!r} is not one of Replacement, Refinement")
        for name, frac in (("tau_s", tau_s), ("tau_u", tau_u)):
            if not 0.0 <= float(frac) <= 1.0:
                raise ValueError(f"{name} = {frac} is outside [0, 1]")
        self.batch = len(prompts)
        self.edit_type = EditType(edit_type)
        max_len = tokenizer.model_max_length
        if self.edit_type is EditType.REPLACEMENT:
            self.mapper = seq_aligner.get_replacement_mapper(prompts, tokenizer, max_len)  # (B-1, K, K)
            self.alphas = None
        else:
            mapper, alphas = seq_aligner.get_refinement_mapper(prompts, tokenizer, max_len)
            self.mapper = mapper  # (B-1, K)
            self.alphas = alphas.reshape(alphas.shape[0], 1, 1, alphas.shape[1])  # (B-1, 1, 1, K)
        self.cross_alpha = get_time_words_attention_alpha(prompts, num_steps, tau_c, tokenizer, max_len)
        # per step: does any word of any target still take the source's cross-attention (a Python bool, read
        # without a device sync and without a graph break under torch.compile)
        self.cross_steps = tuple(bool(a.any()) for a in self.cross_alpha)
        self.n_s = int(num_steps * float(tau_s))  # steps with conditional self-attention injected
        self.n_u = int(num_steps * float(tau_u))  # steps with unconditional self-attention injected (P2Plus)
        self.equalizer = equalizer
        self.local_blend = local_blend
        self.max_self_resolution = latent_size // 2
        self.store = AttentionStore(layers)
        self._placed: dict[tuple[torch.device, torch.dtype], dict[str, torch.Tensor | None]] = {}

    def placed(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor | None]:
        """The mapper, Refinement alphas, per-step cross alphas and equalizer on ``device`` in ``dtype``, copied
        there once (a host-to-device copy per layer call would stall the GPU at every attention layer)."""
        key = (device, dtype)
        if key not in self._placed:
            mapper = self.mapper.to(device)
            self._placed[key] = {
                "mapper": mapper if self.edit_type is EditType.REFINEMENT else mapper.to(dtype),
                "alphas": None if self.alphas is None else self.alphas.to(device, dtype),
                "cross_alpha": self.cross_alpha.to(device, dtype),
                "equalizer": None if self.equalizer is None else self.equalizer.to(device, dtype)[:, None, None, :],
            }
        return self._placed[key]

    def _self_layer(self, layer: LayerInfo) -> bool:
        return not layer.is_cross and layer.resolution <= self.max_self_resolution

    def cross_active(self, step: int) -> bool:
        return self.cross_steps[min(step, len(self.cross_steps) - 1)]

    def wants_probs(self, layer: LayerInfo, call: AttnCall) -> bool:
        if call.branch == Branch.UNCOND:
            return call.step < self.n_u and self._self_layer(layer)
        if layer.is_cross:
            return self.cross_active(call.step) or (self.local_blend is not None and self.store.wants_probs(layer, call))
        return call.step < self.n_s and self._self_layer(layer)

    def replace_cross_attention(self, base: torch.Tensor, replace: torch.Tensor) -> torch.Tensor:
        """Target maps from the source's: base (h, Q, K), replace (B-1, h, Q, K) → (B-1, h, Q, K)."""
        on = self.placed(base.device, base.dtype)
        if self.edit_type is EditType.REPLACEMENT:
            out = torch.einsum("hpw,bwn->bhpn", base, on["mapper"])
        else:
            mapped = base[:, :, on["mapper"]].permute(2, 0, 1, 3)  # (B-1, h, Q, K)
            out = mapped * on["alphas"] + replace * (1 - on["alphas"])
        if on["equalizer"] is not None:
            out = out * on["equalizer"]
        return out

    def on_probs(self, probs: torch.Tensor, layer: LayerInfo, call: AttnCall) -> torch.Tensor:
        out = self.edit_probs(probs, layer, call)
        if call.branch == Branch.COND and self.store.wants_probs(layer, call):
            # the maps LocalBlend averages are the edited ones (source maps through the aligner, times the
            # equalizer, during tau_c), as the reference and prompt-to-prompt store the tensor they then edit in place
            self.store.store(out, layer, call)
        return out

    def edit_probs(self, probs: torch.Tensor, layer: LayerInfo, call: AttnCall) -> torch.Tensor:
        """Attention probabilities (B, h, Q, K) after the edit of this layer and step."""
        base, replace = probs[0], probs[1:]  # (h, Q, K), (B-1, h, Q, K)
        if layer.is_cross:
            if not self.cross_active(call.step):
                return probs
            alpha = self.placed(probs.device, probs.dtype)["cross_alpha"][call.step]  # (B-1, 1, 1, K)
            new = self.replace_cross_attention(base, replace) * alpha + (1 - alpha) * replace
        else:  # self-attention, called only at the steps wants_probs selects (tau_s / tau_u)
            new = base.unsqueeze(0).expand_as(replace)
        return torch.cat([probs[:1], new.to(probs.dtype)], dim=0)

    def step_callback(self, z: torch.Tensor, step: int) -> torch.Tensor:
        if self.local_blend is None:
            return z
        return self.local_blend(z, step, self.store)


class Recording:
    """A controller that also stores the conditional branch's cross-attention maps as they leave ``inner`` (the
    edited maps, as LocalBlend reads them), for :func:`show_cross_attention` of every prompt of the batch."""

    def __init__(self, inner: P2PController, layers: Sequence[LayerInfo]) -> None:
        self.inner = inner
        self.store = AttentionStore(layers)

    def wants_probs(self, layer: LayerInfo, call: AttnCall) -> bool:
        return self.inner.wants_probs(layer, call) or self.store.wants_probs(layer, call)

    def on_probs(self, probs: torch.Tensor, layer: LayerInfo, call: AttnCall) -> torch.Tensor:
        edited = self.inner.on_probs(probs, layer, call) if self.inner.wants_probs(layer, call) else probs
        if self.store.wants_probs(layer, call):
            self.store.store(edited, layer, call)
        return edited

    def step_callback(self, z: torch.Tensor, step: int) -> torch.Tensor:
        return self.inner.step_callback(z, step)


class SweepController:
    """K controllers, each made for its own pair [source, target_k], on one batch [source, target_1 … target_K].

    A sweep samples the source once for all its tau combinations (docs/backbones.md, "Speed: sweeps share the
    source"): the controllers change only target rows, so the source row is the same computation in every
    combination. Controller k sees the rows [0, k] of each call, exactly the batch of its own separate edit,
    and keeps its own state (attention store, LocalBlend mask); its returned target row replaces row k. A
    controller that does not want a layer's probabilities leaves its row as computed."""

    def __init__(self, controllers: Sequence) -> None:
        self.controllers = list(controllers)

    def wants_probs(self, layer: LayerInfo, call: AttnCall) -> bool:
        return any(c.wants_probs(layer, call) for c in self.controllers)

    def on_probs(self, probs: torch.Tensor, layer: LayerInfo, call: AttnCall) -> torch.Tensor:
        """probs (1 + K, h, Q, K') → the same with each target row edited by its own controller."""
        rows = [probs[:1]]
        for k, controller in enumerate(self.controllers, start=1):
            if controller.wants_probs(layer, call):
                rows.append(controller.on_probs(torch.cat([probs[:1], probs[k:k + 1]]), layer, call)[1:])
            else:
                rows.append(probs[k:k + 1])
        return torch.cat(rows)

    def step_callback(self, z: torch.Tensor, step: int) -> torch.Tensor:
        """Latents (1 + K, 4, h, w): each controller blends its own pair [source, target_k]."""
        rows = [z[:1]] + [c.step_callback(torch.cat([z[:1], z[k:k + 1]]), step)[1:]
                          for k, c in enumerate(self.controllers, start=1)]
        return torch.cat(rows)


def blend_word_alphas(prompts: Sequence[str], words: Sequence[Sequence[str]], tokenizer) -> torch.Tensor:
    """(B, K) with 1 at the tokens of ``words[b]`` in ``prompts[b]``; every word must be present."""
    alphas = torch.zeros(len(prompts), tokenizer.model_max_length)
    for b, (prompt, group) in enumerate(zip(prompts, words)):
        for word in group:
            alphas[b, find_word_tokens(prompt, word, tokenizer)] = 1.0
    return alphas


def text_under_image(image: np.ndarray, text: str, text_color: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Image (H, W, 3) uint8 with ``text`` written in a white band below it."""
    h, w, c = image.shape
    offset = max(12, int(h * 0.2))
    out = np.full((h + offset, w, c), 255, dtype=np.uint8)
    out[:h] = image
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default()
    box = draw.textbbox((0, 0), text, font=font)
    draw.text(((w - (box[2] - box[0])) // 2, h + (offset - (box[3] - box[1])) // 2), text, fill=text_color, font=font)
    return np.asarray(pil)


def show_cross_attention(store: AttentionStore, prompt: str, tokenizer, size: int = 256, batch_index: int = 0) -> Image.Image:
    """One image of the per-token cross-attention maps of ``prompt`` (token text under each map); each tile is
    ``size`` pixels high and has the maps' (the image's) aspect."""
    avg = store.average()[batch_index]  # (mh, mw, K)
    tile_wh = (round(size * avg.shape[1] / avg.shape[0]), size)
    tokens = prompt_tokens(prompt, tokenizer)
    tiles = []
    for k, token in enumerate(tokens):
        amap = avg[:, :, k]
        amap = (amap / amap.max().clamp_min(1e-12) * 255).byte().cpu().numpy()
        tile = np.asarray(Image.fromarray(amap).resize(tile_wh, Image.Resampling.BICUBIC).convert("RGB"))
        tiles.append(text_under_image(tile, token.strip() or "·"))
    return Image.fromarray(np.concatenate(tiles, axis=1))
