"""StyleDiffusion training on the tiny model: quality, saved files and sidecar, reruns, NaN guard, image loading."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from PIL import Image

from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.images import load_image
from sdtoolkit.methods.inversions import method_class
from sdtoolkit.methods.sampler import NonFiniteError, check_finite, latent_mse, sample
from sdtoolkit.core.settings import InvertConfig
from sdtoolkit.jobs.invert import invert, load_source
from sdtoolkit.core.mapping import MappingNetworks, load_learned, mapping_from_tensors, save_learned, sidecar_path

SIDECAR_KEYS = {
    "prompt", "image_path", "image_sha256", "model", "num_ddim_steps", "guidance_scale", "num_inner_steps",
    "num_epoch", "w_attnloss", "is_1word", "versions", "elapsed_seconds", "reconstruction",
}


def _sidecar(cfg: InvertConfig) -> dict:
    return json.loads(sidecar_path(cfg.path()).read_text(encoding="utf-8"))


def test_training_beats_plain_ddim_with_guidance(trained):
    rec = _sidecar(trained)["reconstruction"]
    assert rec["ddim_cfg_latent_mse"] > 0
    assert rec["trained_latent_mse"] <= 0.5 * rec["ddim_cfg_latent_mse"]


def test_sidecar_records_the_run(trained):
    side = _sidecar(trained)
    assert SIDECAR_KEYS <= set(side)
    assert side["prompt"] == "a cat sitting on a rug"
    assert side["image_path"] == trained.image_path
    assert len(side["image_sha256"]) == 64
    assert (side["model"], side["num_ddim_steps"], side["num_inner_steps"], side["num_epoch"]) == ("tiny", 30, 10, 1)
    assert side["guidance_scale"] == 7.5
    assert side["w_attnloss"] is True and side["is_1word"] is False
    assert {"torch", "diffusers", "transformers", "python"} <= set(side["versions"])
    assert side["elapsed_seconds"] > 0
    assert {"ddim_cfg_latent_mse", "trained_latent_mse"} <= set(side["reconstruction"])
    iters = side["iterations_per_step"]
    assert len(iters) == 30 and iters[0] <= 10 and all(1 <= n for n in iters)


def test_files_use_the_reference_layout(trained):
    root = Path(trained.model_dir)
    weights = root / "model_learnv" / "model-inner10-epoch1-learnv-[7].safetensors"
    assert trained.path() == weights
    assert weights.is_file()
    assert weights.with_suffix(".json").is_file()
    assert sorted(p.name for p in (root / "model_learnv").iterdir()) == [
        "model-inner10-epoch1-learnv-[7].json", "model-inner10-epoch1-learnv-[7].safetensors"]
    tensors, _ = load_learned(weights)
    assert tensors["z_T"].shape == (1, 4, 32, 32)
    assert tensors["features"].shape == (1, 197, 32)
    assert tensors["nets.29.net.0.weight"].shape == (154, 197, 1)
    assert "nets.30.net.0.weight" not in tensors


def test_mapping_save_load_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(3)
    nets = MappingNetworks(4, num_image_tokens=197, max_length=77)
    with torch.no_grad():
        for p in nets.parameters():  # make the BatchNorm affine parameters non-trivial too
            p.add_(torch.randn_like(p) * 0.1)
    features = torch.randn(1, 197, 32)
    text = torch.randn(2, 77, 32)
    path = save_learned(tmp_path / "m.safetensors", nets.state_dict(), {"note": "x"})
    tensors, side = load_learned(path)
    assert side == {"note": "x"}
    again = mapping_from_tensors(tensors, 4)
    for i in range(4):
        s0, b0 = nets.nets[i](features)
        s1, b1 = again.nets[i](features)
        assert torch.equal(s0, s1) and torch.equal(b0, b1)
        assert torch.equal(nets.value_input(i, features, text), again.value_input(i, features, text))
    with pytest.raises(UsageError):
        mapping_from_tensors({"z_T": torch.zeros(1)}, 4)


def test_saved_mapping_reproduces_the_training_reconstruction(tiny, trained):
    """Editing after loading computes exactly what training computed (same reconstruction error)."""
    tensors, side = load_learned(trained.path())
    text, null = tiny.encode_text([trained.prompt]).float(), tiny.encode_text([""]).float()
    inv = method_class("stylediffusion").from_tensors(tensors, null, text, 30)
    source = load_source(tiny, trained.image_path)
    z = sample(tiny, tiny.schedule(30), inv, text, guidance_scale=7.5)
    assert latent_mse(z, source.z0) == pytest.approx(side["reconstruction"]["trained_latent_mse"], rel=1e-5)


def test_rerun_with_same_settings_is_already_trained(tiny, trained):
    before = trained.path().stat().st_mtime_ns
    result = invert(tiny, trained, progress=False)
    assert not result.trained
    assert result.path == trained.path()
    assert trained.path().stat().st_mtime_ns == before


def test_rerun_with_other_prompt_refuses_then_overwrite_retrains(tiny, trained, tmp_path):
    other = dataclasses.replace(trained, prompt="a dog lying on a sofa")
    with pytest.raises(UsageError) as info:
        invert(tiny, other, progress=False)
    message = str(info.value)
    assert "a cat sitting on a rug" in message and "a dog lying on a sofa" in message
    assert "--overwrite" in message

    copy = tmp_path / "copy"
    shutil.copytree(trained.model_dir, copy)
    other = dataclasses.replace(trained, prompt="a dog lying on a sofa", model_dir=str(copy), num_ddim_steps=3,
                                num_inner_steps=10)
    assert other.path().name == trained.path().name  # same file name, other settings
    with pytest.raises(UsageError):
        invert(tiny, other, progress=False)
    result = invert(tiny, other, overwrite=True, progress=False)
    assert result.trained
    side = _sidecar(other)
    assert side["prompt"] == "a dog lying on a sofa" and side["num_ddim_steps"] == 3
    assert load_learned(other.path())[0]["nets.2.net.0.weight"].shape == (154, 197, 1)
    assert "nets.3.net.0.weight" not in load_learned(other.path())[0]
    assert not invert(tiny, other, progress=False).trained
    assert _sidecar(trained)["prompt"] == "a cat sitting on a rug"  # the original is untouched


def test_check_finite_names_the_step():
    check_finite(torch.ones(3), "the latent", 0)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(NonFiniteError, match="step 4"):
            check_finite(torch.tensor([1.0, bad]), "the latent", 4)


def test_training_stops_on_nan_with_the_step(tiny, tmp_path, monkeypatch):
    inner = tiny.unet.forward

    def forward(*args, **kwargs):
        out = inner(*args, **kwargs)
        call = (kwargs.get("cross_attention_kwargs") or {}).get("call")
        if call is not None and call.value_states is not None and call.step >= 2:
            return UNet2DConditionOutput(sample=out.sample * float("nan"))
        return out

    monkeypatch.setattr(tiny.unet, "forward", forward)
    cfg = InvertConfig(prompt="a cat", image_path=trained_image(), model="tiny", index=1, num_ddim_steps=10, num_inner_steps=2,
                       model_dir=str(tmp_path))
    with pytest.raises(NonFiniteError, match="training loss is not finite at sampling step 2"):
        invert(tiny, cfg, progress=False)
    assert not cfg.path().exists() and not sidecar_path(cfg.path()).exists()


def trained_image() -> str:
    return str(Path(__file__).resolve().parent.parent / "example_images" / "cat.jpg")


def _check_loaded(path: Path, size: int = 64) -> np.ndarray:
    image = load_image(path, size)
    assert image.mode == "RGB"
    assert image.size == (size, size)
    return np.asarray(image)


def test_images_of_any_mode_and_shape_load_as_square_rgb(tiny, tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.tile(np.arange(0, 250, 5, dtype=np.uint8), (30, 1)), mode="L").save(gray)
    arr = _check_loaded(gray)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()

    rgba = tmp_path / "rgba.png"
    pixels = np.zeros((40, 40, 4), dtype=np.uint8)
    pixels[..., 0] = 200  # red, but fully transparent: composited on white
    Image.fromarray(pixels, mode="RGBA").save(rgba)
    assert (_check_loaded(rgba) == 255).all()

    deep = tmp_path / "deep16.png"
    ramp = (np.linspace(0, 65535, 60)[None, :].repeat(60, 0)).astype(np.uint16)
    Image.fromarray(ramp).save(deep)
    assert Image.open(deep).mode == "I;16"
    arr = _check_loaded(deep)
    assert arr[:, :3].max() < 30 and arr[:, -3:].min() > 225  # the full 16-bit range maps to 0…255

    wide = tmp_path / "wide.jpg"
    pixels = np.zeros((40, 120, 3), dtype=np.uint8)
    pixels[:, :40] = (255, 0, 0)
    pixels[:, 40:80] = (0, 255, 0)
    pixels[:, 80:] = (0, 0, 255)
    Image.fromarray(pixels).save(wide, quality=95)
    arr = _check_loaded(wide).astype(int)
    assert arr[8:-8, 8:-8, 1].min() > 200 and arr[8:-8, 8:-8, [0, 2]].max() < 60  # the centred square

    tall = tmp_path / "tall.png"
    Image.fromarray(np.zeros((90, 30, 3), dtype=np.uint8)).save(tall)
    _check_loaded(tall, 32)

    source = load_source(tiny, str(gray))
    assert source.x.shape == (1, 3, 64, 64) and source.z0.shape == (1, 4, 32, 32)


def test_non_image_and_missing_files_are_usage_errors(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    with pytest.raises(UsageError, match="not a readable image"):
        load_image(text, 64)
    with pytest.raises(UsageError, match="does not exist"):
        load_image(tmp_path / "missing.jpg", 64)
    with pytest.raises(UsageError):
        load_image(tmp_path, 64)  # a folder


def test_results_made_with_other_weights_are_refused(tiny, trained, tmp_path):
    """A saved result whose weights fingerprint differs is neither reused nor used for editing."""
    from sdtoolkit.core.settings import EditConfig
    from sdtoolkit.jobs.edit import run_edit
    from sdtoolkit.jobs.invert import existing_result

    folder = tmp_path / "copy"
    shutil.copytree(trained.folder(), folder / trained.folder().name)
    cfg = dataclasses.replace(trained, model_dir=str(folder))
    side = sidecar_path(cfg.path())
    data = json.loads(side.read_text())
    data["model_fingerprint"] = "other-weights"
    side.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="model_fingerprint"):
        existing_result(cfg, data["image_sha256"], overwrite=False, run=tiny.run_identity(cfg.num_ddim_steps))
    with pytest.raises(UsageError, match="model_fingerprint"):
        run_edit(tiny, cfg, EditConfig(target="a dog sitting on a rug", outdir=str(tmp_path / "out")), progress=False)
