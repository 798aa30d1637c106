"""The Python API (sdtoolkit.load / Model.invert / edit / sweep / edit_generated / scores): the same images as the
CLIs for the same settings, everything in memory until save(), natural Python values, the CLIs' errors; and the
README's first Python example, run as written in a scratch folder."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sdtoolkit as sd
from sdtoolkit.api import Model
from sdtoolkit.cli import flags as cli
from sdtoolkit.cli import p2plus, stylediffusion

REPO = Path(__file__).resolve().parent.parent
CAT = str(REPO / "example_images" / "cat.jpg")
PROMPT, TARGET = "a cat sitting on a rug", "a dog sitting on a rug"


@pytest.fixture(scope="module")
def model(tiny) -> Model:
    return Model(tiny, "tiny", progress=False)


@pytest.fixture(scope="module")
def npi(model) -> sd.Inverted:
    return model.invert(CAT, PROMPT, method="npi", num_ddim_steps=4)


def pixels(image) -> np.ndarray:
    return np.asarray(Image.open(image) if isinstance(image, (str, Path)) else image).astype(int)


def test_edit_equals_the_cli_edit_of_the_same_saved_inversion(model, trained, tmp_path):
    """The API's Replacement edit (blend words, reweighting) of the CLI-trained inversion is the CLI's edited_img."""
    argv = ["--is_train", "", "--index", str(trained.index), "--prompt", trained.prompt, "--image_path", CAT,
            "--model", "tiny", "--device", "cpu", "--num_inner_steps", "10", "--model_dir", trained.model_dir,
            "--target", "a dog sitting on a rug", "--tau_v", ".5", "--tau_c", ".6", "--tau_s", ".6", "--tau_u", "0",
            "--blend_word", "[('cat',), ('dog',)]", "--eq_params", "[('dog',), (2,)]", "--outdir", str(tmp_path)]
    assert cli.run_main(stylediffusion.main, argv) == 0
    inv = model.load_inversion(trained.path())
    out = model.edit(inv, TARGET, blend={"cat": "dog"}, reweight={"dog": 2})
    folder = tmp_path / f"{trained.index} {TARGET}"
    np.testing.assert_array_equal(pixels(out.edited), pixels(folder / f"edited_img-{out.taus.stem()}.png"))
    np.testing.assert_array_equal(pixels(out.grid), pixels(folder / f"grid_img-{out.taus.stem()}.png"))


def test_invert_keeps_everything_in_memory_and_saves_on_request(model, npi, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    again = model.invert(Image.open(CAT), PROMPT, method="npi", num_ddim_steps=4)  # PIL in, same latents
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert npi.config.num_ddim_steps == 4 and npi.config.guidance_scale == 7.5
    assert set(npi.figures) == {"ddim_cfg_latent_mse", "trained_latent_mse"}
    assert npi.reconstruction.size == npi.source.pil.size == (64, 64)
    np.testing.assert_array_equal(pixels(again.reconstruction), pixels(npi.reconstruction))
    path = npi.save()  # the CLI's layout under the current folder
    assert path == Path("model_npi") / "model-inner100-epoch1-npi-[0].safetensors" and path.with_suffix(".json").is_file()
    loaded = model.load_inversion(path)
    a = model.edit(npi, TARGET, tau_u=0.5)
    b = model.edit(loaded, TARGET, tau_u=0.5)
    np.testing.assert_array_equal(pixels(a.edited), pixels(b.edited))


def test_array_input_and_in_memory_inversions_need_their_image_to_load(model, tmp_path):
    array = np.asarray(Image.open(CAT).convert("RGB"))
    inv = model.invert(array, PROMPT, method="ddim", num_ddim_steps=3)
    path = inv.save(tmp_path / "inv.safetensors")
    with pytest.raises(sd.UsageError, match="in-memory image: pass it as image="):
        model.load_inversion(path)
    assert model.load_inversion(path, image=array).config.prompt == PROMPT


def test_sweep_runs_every_combination_in_the_cli_order_and_returns_attention_maps(model, npi):
    outs = model.sweep(npi, TARGET, tau_v=[0.2, 0.6], tau_u=[0, 0.5], attention_maps=True)
    assert [o.taus.stem() for o in outs] == [
        "tau_v0.2-tau_c0.6-tau_s0.6-tau_u0.0", "tau_v0.2-tau_c0.6-tau_s0.6-tau_u0.5",
        "tau_v0.6-tau_c0.6-tau_s0.6-tau_u0.0", "tau_v0.6-tau_c0.6-tau_s0.6-tau_u0.5"]
    tokens = len(model.models.tokenizer(TARGET).input_ids)
    assert outs[0].attention.size[0] == tokens * 256 and outs[0].source_attention is not None
    assert outs[0].grid.size == (4 * 64, 64)
    # recording the maps does not change the edit (up to float noise of the explicit attention path)
    plain = model.edit(npi, TARGET, tau_v=0.2)
    assert np.abs(pixels(plain.edited) - pixels(outs[0].edited)).max() <= 2


def test_per_word_tau_c_user_mask_and_refinement(model, npi, tmp_path):
    short = model.edit(npi, TARGET, tau_c={"dog": 0.0, "default_": 1.0})
    full = model.edit(npi, TARGET, tau_c=1.0)
    assert (pixels(short.edited) != pixels(full.edited)).any()
    assert short.taus.stem() == "tau_v0.5-tau_cdog0.0_default_1.0-tau_s0.6-tau_u0.0"
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255
    masked = model.edit(npi, "a small dog sitting on a rug", edit_type="Refinement", mask=mask)
    free = model.edit(npi, "a small dog sitting on a rug", edit_type="Refinement")
    source = pixels(masked.reconstruction)
    # outside the mask (right half, away from the VAE's reach across the edge) the target stays nearer the source
    assert np.abs(pixels(masked.edited) - source)[:, 48:].mean() < np.abs(pixels(free.edited) - source)[:, 48:].mean()


@pytest.mark.parametrize("kwargs, message", [
    ({"blend": ("cat", "tiger")}, "blend target word 'tiger' is not in"),
    ({"tau_s": 1.5}, "tau_s 1.5: 1.5 is outside [0, 1]"),
    ({"tau_c": {"tiger": 0.3}}, "tau_c word 'tiger' is not in"),
    ({"reweight": {"dog": "x"}}, "is not a tuple of numbers"),
    ({"edit_type": "Swap"}, "edit_type 'Swap' is not one of Replacement, Refinement, StoreAttn"),
])
def test_bad_edit_values_raise_the_clis_errors(model, npi, kwargs, message):
    """The CLIs' messages, naming the API's keywords (tests/test_naming.py: every common mistake)."""
    with pytest.raises(sd.UsageError, match=re.escape(message)) as raised:
        model.edit(npi, TARGET, **kwargs)
    assert "--" not in str(raised.value)


def test_bad_inversion_values_raise_before_any_network_runs(model):
    with pytest.raises(sd.UsageError, match="method 'nope' is not one of stylediffusion"):
        model.invert(CAT, PROMPT, method="nope")
    with pytest.raises(sd.UsageError, match="and num_ddim_steps must be >= 1"):
        model.invert(CAT, PROMPT, method="npi", num_ddim_steps=0)
    with pytest.raises(sd.UsageError, match="does not exist"):
        model.invert("missing.png", PROMPT)
    with pytest.raises(sd.UsageError, match="an image array must be"):
        model.invert(np.zeros((4, 4, 2)), PROMPT)


def test_edit_generated_equals_p2plus(model, tmp_path):
    argv = ["--model", "tiny", "--device", "cpu", "--prompt", PROMPT, "--target", TARGET, "--seed", "[3]",
            "--num_ddim_steps", "3", "--outdir", str(tmp_path), "--blend_word", "[('cat',), ('dog',)]"]
    assert cli.run_main(p2plus.main, argv) == 0
    out = model.edit_generated(PROMPT, TARGET, seed=3, num_ddim_steps=3, blend=("cat", "dog"))
    folder = tmp_path / f"3 {TARGET}"
    np.testing.assert_array_equal(pixels(out.edited), pixels(folder / "edited_img-tau_c0.8-tau_s0.4-tau_u0.5.png"))
    np.testing.assert_array_equal(pixels(out.grid), pixels(folder / "grid_img-tau_c0.8-tau_s0.4-tau_u0.5.png"))


def test_scores(model, npi):
    mask = model.attention_mask(CAT, PROMPT, "cat", num_ddim_steps=3)
    assert mask.mode == "L" and mask.size == (256, 256)
    background = Image.fromarray(255 - np.asarray(mask))
    same = sd.ns_lpips(npi.source.pil, npi.source.pil, background, random_weights=True)
    other = sd.ns_lpips(npi.source.pil, npi.reconstruction, background, random_weights=True)
    assert same == 0.0 and other > 0.0
    half = np.zeros((64, 64), np.uint8)
    half[:, :32] = 255  # the edited half
    scores = sd.pie_scores(npi.source.pil, npi.reconstruction, half, PROMPT, TARGET, random_weights=True,
                           random_size="tiny")
    assert scores["psnr_unedit_part"] > 0 and "clip_similarity_target_image" in scores


def readme_first_python_example() -> str:
    section = (REPO / "README.md").read_text(encoding="utf-8").split("## Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_first_python_example_saves_edited_png_in_a_scratch_folder(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", readme_first_python_example()], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Image.open(tmp_path / "edited.png").size == (64, 64)


def test_progress_callbacks_get_the_clis_bars_with_step_iterations_and_loss(model):
    """One progress mechanism: the bars the CLI prints (tqdm) reach a callable, with the training bar's postfix."""
    events: list[sd.BarState] = []
    model.invert(CAT, PROMPT, num_ddim_steps=3, num_inner_steps=2, progress=events.append)
    training = [e for e in events if e.desc == "training M_t"]
    assert {e.desc for e in events} >= {"DDIM inversion", "training M_t", "sampling"}
    assert training[-1].closed and training[-1].n == training[-1].total
    assert re.search(r"it=\d+, loss=[0-9.e+-]+, step=3/3", training[-2].postfix), training[-2].postfix
    assert training[-2].text().startswith(f"training M_t {training[-2].n:g}/{training[-2].total:g} (")


def test_edit_type_rule_blend_mask_and_command(model, npi):
    assert model.edit_type_for(PROMPT, TARGET) == "Replacement"
    assert model.edit_type_for(PROMPT, "a big dog sitting on a rug") == "Refinement"
    out = model.edit(npi, TARGET, blend=("cat", "dog"))
    assert out.blend_mask.size == out.edited.size and out.blend_mask.mode == "L"
    assert set(np.unique(np.asarray(out.blend_mask))) <= {0, 255}
    assert out.blend_overlay.size == out.edited.size
    assert model.edit(npi, TARGET).blend_mask is None
    command = out.command(model_dir="bundle", image_path="bundle/cat.jpg")
    assert "--is_train '' --index 0" in command and "--inversion npi" in command
    assert "--model_dir bundle" in command and "--blend_word \"[('cat',), ('dog',)]\"" in command
    assert sd.method_defaults("edict") == {"num_ddim_steps": 50, "num_inner_steps": 100, "guidance_scale": 3.0}
    with pytest.raises(sd.UsageError, match="^method 'nope' is not one of stylediffusion"):
        sd.method_defaults("nope")
