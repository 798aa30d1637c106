"""SDXL's added conditions and SD 2.x's v-prediction pinned against diffusers' own pipelines on the same tiny
weights (issue 22): the time ids (original size, crop (0, 0), target size) as
``StableDiffusionXLPipeline._get_add_time_ids``, the pooled and prompt embeddings as its ``encode_prompt``, and a
seeded generation with our sampler equal to ``StableDiffusionXLPipeline`` / ``StableDiffusionPipeline`` with a
DDIM scheduler, the same initial latents and guidance 7.5 (``output_type="latent"``, guidance_rescale 0)."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

from sdtoolkit.core.attention import AttnCall, Branch, style_processors
from sdtoolkit.core.ddim import SCHEDULER_CONFIG, PredictionType
from sdtoolkit.core.models import load_models
from sdtoolkit.methods.inversions import DDIMInversion
from sdtoolkit.methods.sampler import sample

PROMPT = "a cat sitting on a rug"
T = 3
W = 7.5


@pytest.fixture(scope="module")
def sdxl():
    return load_models("tiny-sdxl", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def sd2():
    return load_models("tiny-sd2", device="cpu", dtype="fp32")


def _scheduler(models) -> DDIMScheduler:
    """diffusers' DDIM scheduler with the model's config (the reference's: steps_offset 1, leading spacing)."""
    return DDIMScheduler.from_config({**SCHEDULER_CONFIG, **(models.scheduler_config or {})})


@pytest.fixture(scope="module")
def xl_pipe(sdxl) -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline(vae=sdxl.vae, text_encoder=sdxl.text_encoder, text_encoder_2=sdxl.text_encoder_2,
                                     tokenizer=sdxl.tokenizer, tokenizer_2=sdxl.tokenizer_2, unet=sdxl.unet,
                                     scheduler=_scheduler(sdxl), force_zeros_for_empty_prompt=True,
                                     add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("latent_hw", [(32, 32), (32, 48)])
def test_sdxl_time_ids_are_original_size_crop_target_size_as_diffusers(sdxl, xl_pipe, latent_hw):
    """SDXL micro-conditioning: (original h, w, crop top, left = 0, 0, target h, w) of the image our latents decode
    to, as StableDiffusionXLPipeline._get_add_time_ids builds them (non-square: h before w)."""
    h, w = (2 * s for s in latent_hw)  # the tiny VAE's scale factor is 2
    z = torch.zeros(2, 4, *latent_hw)
    pooled = sdxl.encode_pooled([PROMPT, PROMPT])
    ours = sdxl.added_conditions(z, pooled, AttnCall(0, Branch.COND))
    want = xl_pipe._get_add_time_ids((h, w), (0, 0), (h, w), dtype=torch.float32,
                                     text_encoder_projection_dim=int(sdxl.text_encoder_2.config.projection_dim))
    assert torch.equal(ours["time_ids"], want.expand(2, -1))
    assert ours["time_ids"][0].tolist() == [h, w, 0, 0, h, w]
    uncond = sdxl.added_conditions(z, None, AttnCall(0, Branch.UNCOND))
    assert torch.equal(uncond["time_ids"], ours["time_ids"])  # the negative branch gets the same ids


def test_sdxl_prompt_and_pooled_embeddings_as_diffusers_encode_prompt(sdxl, xl_pipe):
    """encode_text = both encoders' penultimate hidden states concatenated, encode_pooled = text_encoder_2's
    projected pooled output; the unconditional ones are zeros (force_zeros_for_empty_prompt)."""
    embeds, neg, pooled, neg_pooled = xl_pipe.encode_prompt(PROMPT, device=torch.device("cpu"),
                                                            do_classifier_free_guidance=True)
    torch.testing.assert_close(sdxl.encode_text([PROMPT]).float(), embeds, rtol=0, atol=0)
    torch.testing.assert_close(sdxl.encode_pooled([PROMPT]), pooled, rtol=0, atol=0)
    torch.testing.assert_close(sdxl.encode_null(), neg, rtol=0, atol=0)
    z = torch.zeros(1, 4, 32, 32)
    uncond = sdxl.added_conditions(z, None, AttnCall(0, Branch.UNCOND))
    torch.testing.assert_close(uncond["text_embeds"], neg_pooled, rtol=0, atol=0)


def test_sdxl_pooled_embedding_reaches_the_unet(sdxl):
    """The conditional branch's added condition is the prompt's pooled embedding, and it changes the UNet output."""
    pooled = sdxl.encode_pooled([PROMPT])
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    call = AttnCall(0, Branch.COND)
    assert torch.equal(sdxl.added_conditions(z, pooled, call)["text_embeds"], pooled)
    text = sdxl.encode_text([PROMPT])
    with style_processors(sdxl.unet):
        with_pooled = sdxl.predict(z, 501, text, call, pooled)
        zero_pooled = sdxl.predict(z, 501, text, call, torch.zeros_like(pooled))
    assert (with_pooled - zero_pooled).abs().max() > 1e-3


def test_sdxl_generation_equals_diffusers_pipeline(sdxl, xl_pipe):
    """Our guided DDIM sampler from z_T (null / zero unconditional embedding, the prompt's pooled embedding, our
    time ids) = StableDiffusionXLPipeline with the same weights, DDIM scheduler, latents and guidance."""
    z_T = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    want = xl_pipe(prompt=PROMPT, latents=z_T.clone(), num_inference_steps=T, guidance_scale=W, height=64, width=64,
                   output_type="latent", guidance_rescale=0.0).images
    ours = sample(sdxl, sdxl.schedule(T), DDIMInversion(z_T, sdxl.encode_null()), sdxl.encode_text([PROMPT]).float(),
                  guidance_scale=W, pooled=sdxl.encode_pooled([PROMPT]))
    assert (want - z_T).abs().max() > 0.1  # sampling moved the latent
    torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-4)


def test_sd2_v_prediction_generation_equals_diffusers_pipeline(sd2):
    """tiny-sd2 (v-prediction): our sampler = StableDiffusionPipeline with DDIMScheduler(prediction_type
    v_prediction), the same weights, latents and guidance (the UNet output read as v, Salimans & Ho 2022)."""
    assert sd2.schedule(T).prediction_type is PredictionType.V_PREDICTION
    pipe = StableDiffusionPipeline(vae=sd2.vae, text_encoder=sd2.text_encoder, tokenizer=sd2.tokenizer, unet=sd2.unet,
                                   scheduler=_scheduler(sd2), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    z_T = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    want = pipe(prompt=PROMPT, latents=z_T.clone(), num_inference_steps=T, guidance_scale=W, height=64, width=64,
                output_type="latent", guidance_rescale=0.0).images
    ours = sample(sd2, sd2.schedule(T), DDIMInversion(z_T, sd2.encode_null()), sd2.encode_text([PROMPT]).float(),
                  guidance_scale=W)
    assert (want - z_T).abs().max() > 0.1
    torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-4)
