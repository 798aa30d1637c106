"""Model-family facts in one place: text encoders and widths, added conditions, default size, size multiple, prediction type.

Everything that differs between SD 1.x, SD 2.x and SDXL (and the tiny/toy models shaped like them) is read
here from the loaded networks' configs and the folder's scheduler config; the rest of the toolkit asks
:class:`ModelFamily` instead of testing model names (docs/method.md §1).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdtoolkit.core.ddim import SCHEDULER_CONFIG, PredictionType


@dataclass(frozen=True)
class ModelFamily:
    """What the method needs to know about a Stable Diffusion backbone."""

    name: str  # "sd" (1.x / 2.x shape: one text encoder) or "sdxl" (two text encoders, added conditions)
    text_widths: tuple[int, ...]  # hidden width of each text encoder: (768,) SD 1.x, (1024,) SD 2.x, (768, 1280) SDXL
    added_conditions: bool  # SDXL: pooled text embedding + (original size, crop, target size) time ids
    default_resolution: int  # square side the UNet was configured for (512 SD 1.x / 2.1-base, 768 SD 2.1, 1024 SDXL)
    size_multiple: int  # image sides must be multiples of this: vae_scale_factor · 2**(down blocks − 1)
    vae_scale_factor: int
    prediction_type: PredictionType
    force_zeros_for_empty_prompt: bool = False  # SDXL's unconditional embedding is zeros (diffusers' default)

    @property
    def text_width(self) -> int:
        """Width of the prompt embedding the UNet cross-attends to (SDXL: both encoders' concatenated)."""
        return sum(self.text_widths)

    def as_dict(self) -> dict:
        return {"name": self.name, "text_width": self.text_width, "text_widths": list(self.text_widths),
                "added_conditions": self.added_conditions, "default_resolution": self.default_resolution,
                "size_multiple": self.size_multiple, "prediction_type": self.prediction_type.value}


def describe(unet_config: Mapping[str, Any], vae_config: Mapping[str, Any], text_widths: tuple[int, ...],
             scheduler_config: Mapping[str, Any] | None, force_zeros_for_empty_prompt: bool = True) -> ModelFamily:
    """The family of a loaded pipeline, from its UNet and VAE configs, its text encoders' widths and its scheduler
    config (None: the reference's). ValueError when the UNet's cross-attention width is not the text width."""
    vae_scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
    added = unet_config.get("addition_embed_type") == "text_time"
    cross = unet_config["cross_attention_dim"]
    cross = cross if isinstance(cross, int) else cross[0]
    if cross != sum(text_widths):
        raise ValueError(f"the UNet cross-attends to width {cross} but the text encoder(s) give {sum(text_widths)}")
    prediction = (scheduler_config or {}).get("prediction_type", SCHEDULER_CONFIG["prediction_type"])
    return ModelFamily(
        name="sdxl" if added else "sd",
        text_widths=tuple(text_widths),
        added_conditions=added,
        default_resolution=int(unet_config["sample_size"]) * vae_scale,
        size_multiple=vae_scale * 2 ** (len(unet_config["down_block_types"]) - 1),
        vae_scale_factor=vae_scale,
        prediction_type=PredictionType.parse(prediction),
        force_zeros_for_empty_prompt=added and force_zeros_for_empty_prompt,
    )
