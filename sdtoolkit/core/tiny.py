"""Tiny randomly initialised SD 1.x-, SD 2.x- and SDXL-shaped pipelines for smoke runs and tests (outputs are noise).

Built from configs the way diffusers' own pipeline tests build their tiny components: ``tiny`` (SD 1.x shape,
text width 32, epsilon), ``tiny-sd2`` (SD 2.x shape: linear projections, text width 64 ≠ the image encoder's 32,
v-prediction) and ``tiny-sdxl`` (two text encoders of widths 32 and 48, pooled embedding and time ids as added
conditions).
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModel

from sdtoolkit.core.tokenizer import load_clip_tokenizer

TINY_VERSION = 3
"""Bumped whenever the tiny architecture or initialisation changes (results made with another are refused)."""
TINY_MODELS = ("tiny", "tiny-sd2", "tiny-sdxl")
TINY_WIDTH = 32
TINY_SD2_WIDTH = 64
TINY_SDXL_WIDTHS = (32, 48)
TINY_HEADS = (2, 4)
"""Attention heads per UNet level (diffusers reads SD 1.x's ``attention_head_dim`` as the head count): heads of
width 16 at both levels. Eight heads of width 4 made CPU attention ~5× slower per FLOP for no extra coverage."""
TIME_ID_WIDTH = 8
"""SDXL's addition_time_embed_dim for the tiny SDXL model (diffusers' SDXL pipeline tests use 8)."""
TINY_LATENT_SCALE = 4.0
"""The random VAE's latent means have std ≈ 0.25; this scaling gives z_0 a std near 1, as SD's 0.18215 does."""
OUTPUT_SCALE = 0.3
"""A fresh UNet is no denoiser (eps std ≈ 0.3 everywhere); scaling its output layer makes guidance-1
DDIM inversion reconstruct closely while guidance 7.5 does not, the situation StyleDiffusion targets."""
V_OUTPUT_SCALE = 3.0
"""The same for tiny-sd2: a v-prediction output enters the noise estimate multiplied by √ᾱ_t, so it is scaled up
instead (guidance-1 / guidance-7.5 reconstruction then close to tiny's at T = 10)."""


def _text_config(width: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=width,
    )


def build_tiny_models(seed: int = 0, kind: str = "tiny") -> dict:
    """UNet (32×32 latents, cross-attention at 32×32 and 16×16 in the down and up blocks, like SD's levels),
    VAE (×2), text encoder(s) and a width-32 image encoder; ``kind`` one of :data:`TINY_MODELS`.
    Also returns ``scheduler_config`` (None: the reference's; tiny-sd2: v-prediction)."""
    if kind not in TINY_MODELS:
        raise ValueError(f"tiny model {kind!r} is not one of {', '.join(TINY_MODELS)}")
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        widths = {"tiny": (TINY_WIDTH,), "tiny-sd2": (TINY_SD2_WIDTH,), "tiny-sdxl": TINY_SDXL_WIDTHS}[kind]
        extra = {}
        if kind == "tiny-sd2":
            extra = {"use_linear_projection": True}
        elif kind == "tiny-sdxl":
            extra = {"use_linear_projection": True, "addition_embed_type": "text_time",
                     "addition_time_embed_dim": TIME_ID_WIDTH,
                     "projection_class_embeddings_input_dim": 6 * TIME_ID_WIDTH + widths[-1]}
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=sum(widths),
            attention_head_dim=TINY_HEADS,
            norm_num_groups=32,
            **extra,
        )
        with torch.no_grad():
            scale = V_OUTPUT_SCALE if kind == "tiny-sd2" else OUTPUT_SCALE
            unet.conv_out.weight.mul_(scale)
            unet.conv_out.bias.mul_(scale)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(32, 64),
            latent_channels=4,
            norm_num_groups=32,
            sample_size=64,
            scaling_factor=TINY_LATENT_SCALE,
        )
        text_encoder = CLIPTextModel(_text_config(widths[0]))
        image_encoder = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=TINY_WIDTH, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            image_size=224, patch_size=16, projection_dim=TINY_WIDTH,
        ))
        parts = {
            "unet": unet,
            "vae": vae,
            "text_encoder": text_encoder,
            "tokenizer": load_clip_tokenizer(),
            "image_encoder": image_encoder,
            "scheduler_config": {"prediction_type": "v_prediction"} if kind == "tiny-sd2" else None,
        }
        if kind == "tiny-sdxl":
            parts["text_encoder_2"] = CLIPTextModelWithProjection(_text_config(widths[1]))
            parts["tokenizer_2"] = load_clip_tokenizer()
    finally:
        torch.random.set_rng_state(gen_state)
    return parts
