"""A tiny randomly initialised SD-shaped pipeline for smoke runs and tests (its outputs are noise)."""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

from sdtoolkit.core.tokenizer import load_clip_tokenizer

TINY_VERSION = 2
"""Bumped whenever the tiny architecture or initialisation changes (results made with another are refused)."""
TINY_WIDTH = 32
TINY_LATENT_SCALE = 4.0
"""The random VAE's latent means have std ≈ 0.25; this scaling gives z_0 a std near 1, as SD's 0.18215 does."""
OUTPUT_SCALE = 0.3
"""A fresh UNet is no denoiser (eps std ≈ 0.3 everywhere); scaling its output layer makes guidance-1
DDIM inversion reconstruct closely while guidance 7.5 does not, the situation StyleDiffusion targets."""


def build_tiny_models(seed: int = 0) -> dict:
    """UNet (32×32 latents, cross-attention at 32×32 and 16×16 in the down and up blocks, like SD's levels),
    VAE (×2), text and image encoders of width 32."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TINY_WIDTH,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        with torch.no_grad():
            unet.conv_out.weight.mul_(OUTPUT_SCALE)
            unet.conv_out.bias.mul_(OUTPUT_SCALE)
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
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=TINY_WIDTH, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
            pad_token_id=49407, projection_dim=TINY_WIDTH,
        ))
        image_encoder = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=TINY_WIDTH, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            image_size=224, patch_size=16, projection_dim=TINY_WIDTH,
        ))
    finally:
        torch.random.set_rng_state(gen_state)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": load_clip_tokenizer(),
        "image_encoder": image_encoder,
    }
