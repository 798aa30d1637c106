"""Foreground / background masks for NS-LPIPS from cross-attention during DDIM inversion (docs/method.md §7).

For each case of an editing CSV: invert ``{input_path}/{case} {prompt}.png`` with its prompt over 50 DDIM
steps, average the cross-attention maps at 1/32 of the image size (16×16 at 512², 24×16 at 768×512) of the blend
word's *source* word(s) over the down/up layers, heads and steps, normalise by its max and resize to 256×256
(non-square images: short side 256, the image's aspect). The foreground mask is
that map, the background (non-selected) mask is 1 − map; both are written as 8-bit grayscale PNGs named
``{case} {prompt}.png`` (255 = 1.0). Missing inputs are listed and counted, never skipped silently.

``--mode corrected`` (default): all heads; every token of every source blend word; the soft map resized
bilinearly; background = 1 − map (gray PNG); inputs ``{case} {prompt}.png``.
``--mode reference`` reproduces the published mask script: heads h//2 … h−1 only (its batch-of-one store
slices ``attn[h // 2:]``); only the first source blend word, at token ``prompt.split(' ').index(word) + 1``
(right only when every earlier word is one token); the map scaled to 255 · map / max, truncated to uint8,
resized to 256 with PIL's bicubic filter, background = 255 − foreground (RGB PNG); inputs
``{case} {prompt}.jpg``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
MASK_SIZE = 256
MODES = ("corrected", "reference")
INPUT_EXT = {"corrected": ".png", "reference": ".jpg"}


def mask_size(map_hw: tuple[int, int]) -> tuple[int, int]:
    """Mask (h, w): MASK_SIZE² for square images (the reference), else short side MASK_SIZE with the maps' aspect."""
    h, w = map_hw
    return (MASK_SIZE, round(MASK_SIZE * w / h)) if h <= w else (round(MASK_SIZE * h / w), MASK_SIZE)


def inversion_maps(models, image_path: Path | Image.Image, prompt: str, num_steps: int, upper_heads: bool,
                   resolution: int | None = None, keep_aspect: bool = False) -> torch.Tensor:
    """Per-token cross-attention (mh, mw, K) of the conditional branch during DDIM inversion of the image,
    averaged over the map layers, heads (or heads h//2 … h−1 with ``upper_heads``) and steps. ``image_path``: a
    file, or a PIL image in memory."""
    from sdtoolkit.control.controllers import AttentionStore
    from sdtoolkit.core.images import fit_image, load_image, pil_to_tensor
    from sdtoolkit.methods.inversions import ddim_inversion

    size, multiple = resolution or models.image_size, models.family.size_multiple
    pil = fit_image(image_path, size, keep_aspect=keep_aspect, multiple=multiple) if isinstance(image_path, Image.Image) \
        else load_image(image_path, size, keep_aspect=keep_aspect, multiple=multiple)
    x = pil_to_tensor(pil)
    store = AttentionStore(models.layers(), upper_heads=upper_heads)
    ddim_inversion(models, models.encode_latent(x), models.encode_text([prompt]), models.schedule(num_steps),
                   controller=store, pooled=models.encode_pooled([prompt]))
    return store.average()[0]


def attention_mask(models, image_path: Path | Image.Image, prompt: str, words: tuple[str, ...], num_steps: int = 50,
                   resolution: int | None = None, keep_aspect: bool = False) -> torch.Tensor:
    """Corrected mode: soft foreground mask (h, w) in [0, 1] of ``words`` in ``prompt`` (:func:`mask_size`)."""
    from sdtoolkit.core.words import find_word_tokens

    tokens = sorted({t for w in words for t in find_word_tokens(prompt, w, models.tokenizer)})
    maps = inversion_maps(models, image_path, prompt, num_steps, False, resolution, keep_aspect)
    amap = maps[:, :, tokens].sum(-1)  # (mh, mw)
    amap = amap / amap.max().clamp_min(1e-12)
    size = mask_size(tuple(amap.shape))
    return F.interpolate(amap[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)


def reference_token(prompt: str, words: tuple[str, ...]) -> int:
    """The token the reference's mask script reads: the first blend word's index among the prompt's
    space-separated words, plus one (for the start token)."""
    parts = prompt.split(" ")
    if not words or words[0] not in parts:
        raise ValueError(f"--mode reference: blend word {words[0] if words else ''!r} is not one of the prompt's "
                         f"space-separated words {parts}")
    return parts.index(words[0]) + 1


def reference_masks(amap: torch.Tensor) -> tuple[Image.Image, Image.Image]:
    """Reference mode: foreground and background (RGB, MASK_SIZE²) from one token's map (r, r):
    uint8(255 · map / max) (truncated), PIL bicubic resize, background = 255 − foreground."""
    scaled = (255 * amap / amap.max()).float().cpu().numpy()
    rgb = np.repeat(scaled[:, :, None], 3, axis=2).astype(np.uint8)
    fg = np.asarray(Image.fromarray(rgb).resize((MASK_SIZE, MASK_SIZE), Image.Resampling.BICUBIC))
    return Image.fromarray(fg), Image.fromarray(255 - fg)


def to_png(mask: torch.Tensor) -> Image.Image:
    return Image.fromarray((mask.cpu().numpy() * 255 + 0.5).astype(np.uint8), mode="L")
