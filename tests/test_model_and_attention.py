"""Attention processors on a real diffusers UNet (the tiny model), model loading, and where encoders run."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from sdtoolkit.core.attention import AttnCall, Branch, MapRecorder, StyleAttnProcessor, map_layers, style_processors
from sdtoolkit.core.errors import UsageError
from sdtoolkit.methods.inversions import DDIMInversion, ddim_inversion
from sdtoolkit.methods.sampler import latent_mse, sample
from sdtoolkit.core.settings import EditConfig, InvertConfig
from sdtoolkit.jobs.edit import run_edit
from sdtoolkit.jobs.invert import invert, load_source
from sdtoolkit.core.models import TOY_MODEL_DIR, load_models, save_pipeline_folder

CAT = str(Path(__file__).resolve().parent.parent / "example_images" / "cat.jpg")

PROMPT = "a cat sitting on a rug"


def _inputs(tiny, seed: int = 0, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 4, tiny.latent_size, tiny.latent_size, generator=g)
    text = tiny.encode_text([PROMPT, "a tiger sitting on a rug"][:batch] + [""] * max(0, batch - 2))
    return z, 501, text


@torch.no_grad()
def _plain_unet(tiny, z, t, text):
    """UNet output with whatever processors are installed, without any call state."""
    return tiny.unet(z, t, encoder_hidden_states=text).sample


def test_processors_installed_on_every_layer_and_restored(tiny):
    z, t, text = _inputs(tiny)
    before = dict(tiny.unet.attn_processors)
    out_before = _plain_unet(tiny, z, t, text)
    with style_processors(tiny.unet) as layers:
        installed = tiny.unet.attn_processors
        assert len(layers) == len(before) == len(installed) == 22
        assert [l.name for l in layers] == list(installed)
        assert all(isinstance(p, StyleAttnProcessor) for p in installed.values())
        assert all(installed[l.name].layer == l for l in layers)
    after = tiny.unet.attn_processors
    assert list(after) == list(before)
    assert all(after[k] is before[k] for k in before)  # the very same processor objects
    assert torch.equal(_plain_unet(tiny, z, t, text), out_before)


def test_processors_restored_after_an_exception(tiny):
    before = dict(tiny.unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with style_processors(tiny.unet):
            raise RuntimeError("boom")
    assert all(tiny.unet.attn_processors[k] is v for k, v in before.items())


@pytest.mark.parametrize("default", [AttnProcessor2_0, AttnProcessor])
def test_style_processor_matches_diffusers_default(tiny, default):
    z, t, text = _inputs(tiny, seed=1)
    previous = dict(tiny.unet.attn_processors)
    try:
        tiny.unet.set_attn_processor(default())
        ref = _plain_unet(tiny, z, t, text)
    finally:
        tiny.unet.set_attn_processor(previous)
    with style_processors(tiny.unet):
        ours = tiny.predict(z, t, text, AttnCall(step=0, branch=Branch.COND))
        ours_no_call = _plain_unet(tiny, z, t, text)  # processors also work without call state
    assert ref.abs().max() > 0.01
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_no_call, ref, atol=1e-5, rtol=0)


def test_fused_and_explicit_attention_agree(tiny):
    z, t, text = _inputs(tiny, seed=2)
    with style_processors(tiny.unet):
        fused = tiny.predict(z, t, text, AttnCall(3, Branch.COND))
        explicit = tiny.predict(z, t, text, AttnCall(3, Branch.COND, explicit=True))
        # a controller that only observes also leaves the output unchanged
        recorder = MapRecorder(frozenset(l.name for l in map_layers(tiny.layers())))
        observed = tiny.predict(z, t, text, AttnCall(3, Branch.COND, controller=recorder))
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=0)
    torch.testing.assert_close(observed, fused, atol=1e-5, rtol=0)
    assert set(recorder.maps) == {l.name for l in map_layers(tiny.layers())}
    for probs in recorder.maps.values():
        assert probs.shape == (2, probs.shape[1], 16 * 16, 77)
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))


def test_value_path_identity_modulation_is_exact(tiny):
    z, t, text = _inputs(tiny, seed=3)
    scale, shift = torch.ones_like(text), torch.zeros_like(text)
    with style_processors(tiny.unet):
        plain = tiny.predict(z, t, text, AttnCall(0, Branch.COND))
        same = tiny.predict(z, t, text, AttnCall(0, Branch.COND, value_states=text * scale + shift))
        other = tiny.predict(z, t, text, AttnCall(0, Branch.COND, value_states=text * 2.0 + 0.5))
    assert torch.equal(same, plain)
    assert (other - plain).abs().max() > 1e-3  # the value path does reach the output


def test_value_path_changes_values_not_keys(tiny):
    """Cross-attention probabilities read the text (keys) only: a different value input leaves them unchanged."""
    z, t, text = _inputs(tiny, seed=4)
    names = frozenset(l.name for l in tiny.layers() if l.is_cross)
    a, b = MapRecorder(names), MapRecorder(names)
    with style_processors(tiny.unet):
        tiny.predict(z, t, text, AttnCall(0, Branch.COND, controller=a))
        tiny.predict(z, t, text, AttnCall(0, Branch.COND, value_states=text * 3.0 - 1.0, controller=b))
    first = next(l.name for l in tiny.layers() if l.is_cross)  # sees the same hidden states in both calls
    assert first.startswith("down_blocks.0.")
    assert not torch.allclose(a.maps[sorted(names)[-1]], b.maps[sorted(names)[-1]])  # later layers do change
    torch.testing.assert_close(a.maps[first], b.maps[first], atol=1e-6, rtol=0)


def test_tiny_map_layers_are_the_16x16_down_up_cross_attention(tiny):
    layers = tiny.layers()
    maps = map_layers(layers)
    assert len(maps) == 5
    assert all(l.is_cross and l.resolution == 16 and l.place in ("down", "up") for l in maps)
    assert [l.place for l in maps].count("down") == 2 and [l.place for l in maps].count("up") == 3
    # the mid block's cross-attention is also 16×16 here but is not a map layer
    mid = [l for l in layers if l.place == "mid" and l.is_cross]
    assert mid and all(l not in maps for l in mid)


def test_tiny_model_guidance_one_inverts_guidance_seven_does_not(tiny):
    """The situation StyleDiffusion targets: DDIM inversion reconstructs at w = 1 but not at w = 7.5."""
    source = load_source(tiny, CAT)
    z0 = source.z0
    text, null = tiny.encode_text([PROMPT]), tiny.encode_text([""])
    schedule = tiny.schedule(30)
    trace = ddim_inversion(tiny, z0, text, schedule)
    assert len(trace.latents) == 31
    inv = DDIMInversion(trace.latents[-1], null)
    err1 = latent_mse(sample(tiny, schedule, inv, text, guidance_scale=1.0), z0) / z0.var().item()
    err75 = latent_mse(sample(tiny, schedule, inv, text, guidance_scale=7.5), z0) / z0.var().item()
    assert err1 < 0.15
    assert err75 > 5 * err1


def test_saved_pipeline_folder_loads_with_same_unet_output(tiny, tiny_folder):
    folder = Path(tiny_folder)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "image_encoder", "scheduler"):
        assert (folder / part).is_dir(), part
    assert (folder / "model_index.json").is_file()
    loaded = load_models(tiny_folder, device="cpu", dtype="fp32")
    z, t, _ = _inputs(tiny, seed=5)
    text = tiny.encode_text([PROMPT, ""])
    assert torch.equal(loaded.encode_text([PROMPT, ""]), text)
    with style_processors(tiny.unet):
        ref = tiny.predict(z, t, text, AttnCall(0, Branch.COND))
    with style_processors(loaded.unet):
        out = loaded.predict(z, t, text, AttnCall(0, Branch.COND))
    assert torch.equal(out, ref)
    x = load_source(tiny, CAT).x
    assert torch.equal(loaded.image_features(x), tiny.image_features(x))


def test_folder_without_unet_is_refused(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(UsageError, match="not a Stable Diffusion pipeline") as info:
        load_models(str(tmp_path), device="cpu", dtype="fp32")
    assert "unet/" in str(info.value)


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(UsageError, match="no such folder"):
        load_models(str(tmp_path / "nope"), device="cpu", dtype="fp32")


def test_unreachable_hub_id_explains_local_folder(monkeypatch):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(UsageError) as info:
        load_models("no-such-owner-sdtk/no-such-model-sdtk", device="cpu", dtype="fp32")
    message = str(info.value)
    assert "--model" in message
    assert "folder" in message
    assert "HF_HUB_OFFLINE" in message
    assert "\n" not in message  # one readable line for the CLI


class _Counter:
    """Wraps a module's bound forward on the instance and counts calls."""

    def __init__(self, monkeypatch, module, on_call=None):
        self.calls = 0
        inner = module.forward
        on_call = on_call or (lambda: None)

        def forward(*args, **kwargs):
            self.calls += 1
            on_call()
            return inner(*args, **kwargs)

        monkeypatch.setattr(module, "forward", forward)


def test_encoders_run_once_and_never_inside_the_denoising_loop(tiny, tmp_path, monkeypatch):
    text_calls: list[int] = []  # text-encoder count seen at each UNet call
    text = _Counter(monkeypatch, tiny.text_encoder)
    image = _Counter(monkeypatch, tiny.image_encoder)
    unet = _Counter(monkeypatch, tiny.unet, on_call=lambda: text_calls.append(text.calls))

    cfg = InvertConfig(prompt=PROMPT, image_path=CAT, model="tiny", index=3, num_ddim_steps=5, num_inner_steps=1,
                       model_dir=str(tmp_path / "models"))
    result = invert(tiny, cfg, progress=False)
    assert result.trained
    assert image.calls == 1  # E(x) once per image, not per attention call or step
    assert text.calls == 2  # prompt and ""
    assert unet.calls >= 5 * 4  # inversion, training and the two reconstruction checks
    assert set(text_calls) == {2}  # all text encoding happened before the first UNet call

    text.calls = image.calls = unet.calls = 0
    text_calls.clear()
    edit = EditConfig(target="a tiger sitting on a rug", outdir=str(tmp_path / "out"))
    files = run_edit(tiny, cfg, edit, progress=False)
    assert len(files) == 2
    assert text.calls == 3  # "", prompt, target
    assert image.calls == 0  # features are saved with the mapping networks
    assert unet.calls == 2 * 5  # one unconditional and one conditional pass per step
    assert set(text_calls) == {3}


def test_loader_schedule_runs_the_reference_timesteps_tiny_and_toy(tiny):
    """Reference behaviour: its pipeline runs steps_offset 1 (958 … 1 for T = 30), for every loaded model."""
    assert tiny.scheduler_config is None
    assert tiny.schedule(30).timesteps[0] == 958 and tiny.schedule(30).timesteps[-1] == 1
    toy = json.loads((TOY_MODEL_DIR / "scheduler" / "scheduler_config.json").read_text())
    assert toy["steps_offset"] == 1
    loaded = load_models("toy", device="cpu", dtype="fp32")
    assert loaded.scheduler_config["steps_offset"] == 1
    assert loaded.schedule(30).timesteps == tiny.schedule(30).timesteps
    assert loaded.run_identity(30)["steps_offset"] == 1


def test_loader_reads_the_folders_scheduler_config(tiny, tmp_path):
    """A folder's prediction type reaches the schedule; its steps_offset 0 becomes 1 as in the pipeline."""
    folder = save_pipeline_folder(tiny, tmp_path / "sd")
    cfg_file = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(steps_offset=0, prediction_type="v_prediction")
    cfg_file.write_text(json.dumps(cfg))
    loaded = load_models(str(folder), device="cpu", dtype="fp32")
    with pytest.warns(UserWarning, match="steps_offset 0"):
        schedule = loaded.schedule(50)
    assert schedule.timesteps[0] == 981 and schedule.timesteps[-1] == 1
    assert schedule.prediction_type.value == "v_prediction"
    cfg_file.write_text("{not json")
    with pytest.raises(UsageError, match="scheduler_config.json"):
        load_models(str(folder), device="cpu", dtype="fp32")
