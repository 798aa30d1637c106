"""Backbones beyond SD 1.x at 512² (issue 14): model facts, v-prediction, SD 2.x-/SDXL-shaped tiny models, any image size.

The tiny models are random (tiny-sd2: v-prediction, text width 64 ≠ the image encoder's 32, so the learned
width projection runs; tiny-sdxl: two text encoders, pooled embedding and time ids). Runs are short (T = 10).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from sdtoolkit.cli import stylediffusion as cli_sd
from sdtoolkit.control.controllers import AttentionStore
from sdtoolkit.core.attention import layer_info, map_layers
from sdtoolkit.core.constants import SD_VERSIONS
from sdtoolkit.core.ddim import PredictionType
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.images import fit_size
from sdtoolkit.core.mapping import MappingNetworks, load_learned, mapping_from_tensors, sidecar_path
from sdtoolkit.core.models import load_models, save_pipeline_folder
from sdtoolkit.core.settings import EditConfig, EditType, InvertConfig
from sdtoolkit.evaluation.storemask import attention_mask
from sdtoolkit.jobs.edit import run_edit
from sdtoolkit.jobs.invert import invert, load_source
from sdtoolkit.methods.inversions import DDIMInversion, ddim_inversion
from sdtoolkit.methods.sampler import latent_mse, sample

REPO = Path(__file__).resolve().parent.parent
CAT = str(REPO / "example_images" / "cat.jpg")
PROMPT = "a cat sitting on a rug"


@pytest.fixture(scope="module")
def sd2():
    return load_models("tiny-sd2", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def sdxl():
    return load_models("tiny-sdxl", device="cpu", dtype="fp32")


def test_hub_aliases_of_the_new_backbones():
    assert SD_VERSIONS["sd_2_1_base"] == "stabilityai/stable-diffusion-2-1-base"
    assert SD_VERSIONS["sd_2_1"] == "stabilityai/stable-diffusion-2-1"
    assert SD_VERSIONS["sdxl"] == "stabilityai/stable-diffusion-xl-base-1.0"


def test_family_facts_of_the_tiny_models(tiny, sd2, sdxl):
    assert (tiny.family.name, tiny.text_width, tiny.family.prediction_type) == ("sd", 32, PredictionType.EPSILON)
    assert (sd2.family.name, sd2.text_width, sd2.family.prediction_type) == ("sd", 64, PredictionType.V_PREDICTION)
    assert (sdxl.family.name, sdxl.family.text_widths, sdxl.family.added_conditions) == ("sdxl", (32, 48), True)
    assert sd2.schedule(10).prediction_type is PredictionType.V_PREDICTION
    assert tiny.family.default_resolution == sd2.family.default_resolution == 64 and tiny.family.size_multiple == 4
    assert sdxl.encode_text([PROMPT]).shape == (1, 77, 80)  # both encoders' hidden states concatenated
    assert sdxl.encode_pooled([PROMPT]).shape == (1, 48) and tiny.encode_pooled([PROMPT]) is None
    assert torch.equal(sdxl.encode_null(), torch.zeros(1, 77, 80))  # force_zeros_for_empty_prompt
    assert torch.equal(tiny.encode_null(), tiny.encode_text([""]).float())


def test_folders_report_their_prediction_type_and_encoders(tmp_path, sd2, sdxl):
    loaded = load_models(str(save_pipeline_folder(sd2, tmp_path / "sd2")), device="cpu", dtype="fp32")
    assert loaded.family.prediction_type is PredictionType.V_PREDICTION  # read from scheduler/scheduler_config.json
    assert loaded.schedule(10).prediction_type is PredictionType.V_PREDICTION
    xl = load_models(str(save_pipeline_folder(sdxl, tmp_path / "xl")), device="cpu", dtype="fp32")
    assert xl.text_encoder_2 is not None and xl.family.added_conditions
    assert torch.allclose(xl.encode_text([PROMPT]), sdxl.encode_text([PROMPT]))


def _round_trip(models) -> tuple[float, float]:
    """Latent MSE of DDIM inversion → sampling at guidance 1 and 7.5 (T = 10)."""
    source = load_source(models, CAT)
    schedule = models.schedule(10)
    text, pooled = models.encode_text([PROMPT]).float(), models.encode_pooled([PROMPT])
    z_T = ddim_inversion(models, source.z0, text, schedule, pooled=pooled).latents[-1]
    inv = DDIMInversion(z_T, models.encode_null())
    return tuple(latent_mse(sample(models, schedule, inv, text, guidance_scale=w, pooled=pooled), source.z0)
                 for w in (1.0, 7.5))


def test_v_prediction_round_trip_reconstructs_as_well_as_epsilon(tiny, sd2):
    eps_g1, eps_g75 = _round_trip(tiny)
    v_g1, v_g75 = _round_trip(sd2)
    assert v_g1 <= 1.25 * eps_g1
    assert v_g1 < 0.5 * v_g75 and eps_g1 < 0.5 * eps_g75  # guidance 7.5 hurts on both: what StyleDiffusion fixes


@pytest.mark.parametrize("kind", ["tiny-sd2", "tiny-sdxl"])
def test_stylediffusion_trains_edits_and_masks(kind, tmp_path, capsys, sd2, sdxl):
    models = {"tiny-sd2": sd2, "tiny-sdxl": sdxl}[kind]
    base = ["--index", "3", "--prompt", PROMPT, "--image_path", CAT, "--model", kind, "--num_ddim_steps", "10",
            "--num_inner_steps", "10", "--model_dir", str(tmp_path)]
    assert cli_sd.main(["--is_train", "True", *base]) == 0
    cfg = InvertConfig(prompt=PROMPT, image_path=CAT, index="3", model=kind, num_ddim_steps=10, num_inner_steps=10,
                       model_dir=str(tmp_path))
    side = json.loads(sidecar_path(cfg.path()).read_text())
    rec = side["reconstruction"]
    assert rec["trained_latent_mse"] <= 0.5 * rec["ddim_cfg_latent_mse"]
    bridge = f"projection 32->{models.text_width}"
    assert side["backbone"]["width_bridge"] == bridge and side["backbone"]["name"] == kind.split("-")[1].replace("2", "")
    out = tmp_path / "out"
    assert cli_sd.main(["--is_train", "", *base, "--target", "a dog sitting on a rug", "--outdir", str(out),
                        "--blend_word", "[('cat',), ('dog',)]"]) == 0
    assert len(list((out / "3 a dog sitting on a rug").glob("edited_img-*.png"))) == 1
    mask = attention_mask(models, Path(CAT), PROMPT, ("cat",), num_steps=3)
    assert mask.shape == (256, 256) and 0 <= float(mask.min()) and 0.9 < float(mask.max()) <= 1


def test_nulltext_and_npi_run_on_sdxl(tmp_path, sdxl):
    for method in ("nulltext", "npi"):
        cfg = InvertConfig(prompt=PROMPT, image_path=CAT, model="tiny-sdxl", inversion=method, num_ddim_steps=4,
                           num_inner_steps=2, model_dir=str(tmp_path))
        invert(sdxl, cfg, progress=False)
        run_edit(sdxl, cfg, EditConfig(target="a dog sitting on a rug", outdir=str(tmp_path / method)), progress=False)
    tensors, _ = load_learned(cfg.path())
    assert tensors["source_pooled"].shape == (1, 48)  # NPI's unconditional branch uses the source's pooled embedding


def test_fit_size_keeps_the_reference_square_and_rounds_the_long_side():
    assert fit_size(768, 512, 512, False, 64) == (512, 512)
    assert fit_size(768, 512, 512, True, 64) == (512, 768)
    assert fit_size(750, 1000, 512, True, 64) == (704, 512)  # 1000·512/750 = 682.7 → 11·64
    assert fit_size(768, 512, 1024, True, 32) == (1024, 1536)
    with pytest.raises(UsageError, match="multiple of 64"):
        fit_size(768, 512, 500, True, 64)


def _names(down: list[bool], up: list[bool]) -> list[str]:
    names = [f"down_blocks.{i}.attentions.0.transformer_blocks.0.attn{k}.processor"
             for i, has in enumerate(down) if has for k in (1, 2)]
    names += ["mid_block.attentions.0.transformer_blocks.0.attn2.processor"]
    return names + [f"up_blocks.{i}.attentions.0.transformer_blocks.0.attn{k}.processor"
                    for i, has in enumerate(up) if has for k in (1, 2)]


def test_maps_are_the_cross_attention_layers_at_one_32nd_of_the_image():
    sd = [layer_info(n, 64, 4, 8) for n in _names([True, True, True, False], [False, True, True, True])]
    maps = map_layers(sd)
    assert {l.place for l in maps} == {"down", "up"} and {l.resolution for l in maps} == {16}
    assert {maps[0].grid((64, 96))} == {(16, 24)} and maps[0].grid((64, 64)) == (16, 16)  # 512×768 and 512²
    xl = [layer_info(n, 128, 3, 8) for n in _names([False, True, True], [True, True, False])]
    assert {l.grid((128, 128)) for l in map_layers(xl)} == {(32, 32)}  # 1024²


def test_768x512_image_on_tiny_sd1(tiny, tmp_path):
    """A 768×512 photo at --resolution 64 --keep_aspect on the tiny model: image 64×96, latents 32×48, maps 16×24."""
    path = tmp_path / "wide.png"
    Image.open(CAT).convert("RGB").resize((768, 512)).save(path)
    cfg = InvertConfig(prompt=PROMPT, image_path=str(path), model="tiny", num_ddim_steps=6, num_inner_steps=3,
                       model_dir=str(tmp_path), resolution=64, keep_aspect=True)
    invert(tiny, cfg, progress=False)
    tensors, side = load_learned(cfg.path())
    assert tensors["z_T"].shape == (1, 4, 32, 48) and side["backbone"]["image_size"] == [64, 96]
    edit = EditConfig(target="a dog sitting on a rug", blend_word=(("cat",), ("dog",)), outdir=str(tmp_path / "e"))
    files = run_edit(tiny, cfg, edit, progress=False)
    assert Image.open(files[0]).size == (96, 64) and Image.open(files[1]).size == (4 * 96, 64)
    store_files = run_edit(tiny, cfg, EditConfig(target=None, edit_type=EditType.STORE_ATTN, outdir=str(tmp_path / "s")),
                           progress=False)
    assert Image.open(store_files[0]).size == (3 * 96, 64)
    tile_h = Image.open(store_files[1]).size[1]
    assert Image.open(store_files[1]).size[0] % 384 == 0 and tile_h > 256  # 256-high tiles, 384 wide, text band
    store = AttentionStore(tiny.layers())
    ddim_inversion(tiny, load_source(tiny, str(path), resolution=64, keep_aspect=True).z0,
                   tiny.encode_text([PROMPT]), tiny.schedule(3), controller=store)
    assert store.maps().shape[2:4] == (16, 24)
    mask = attention_mask(tiny, path, PROMPT, ("cat",), num_steps=3, resolution=64, keep_aspect=True)
    assert mask.shape == (256, 384)


def test_width_projection_round_trips_and_is_recorded():
    nets = MappingNetworks(3, num_image_tokens=197, max_length=77, image_width=32, text_width=64)
    assert nets.bridge == "projection 32->64"
    scale, shift = nets.nets[0](torch.randn(1, 197, 32))
    assert scale.shape == shift.shape == (1, 77, 64)
    again = mapping_from_tensors(dict(nets.state_dict()), 3)
    assert again.bridge == "projection 32->64"
    assert MappingNetworks(3, image_width=32, text_width=32).bridge == "none"
