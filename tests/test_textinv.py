"""Text-embedding inversion (``--inversion textinv``): the reference's text_inv_w_p2plus.py behaviour — per step,
Adam on the source prompt's embedding — saved like the other methods and edited through the same path."""
from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdtoolkit.cli import flags as cli
from sdtoolkit.cli import stylediffusion, stylediffusion_csv
from sdtoolkit.core.schedules import learning_rate
from sdtoolkit.core.settings import InversionMethod, InvertConfig
from sdtoolkit.jobs.invert import invert
from sdtoolkit.methods.inversions import TextEmbeddingInversion, method_class

REPO = Path(__file__).resolve().parent.parent
CAT = str(REPO / "example_images" / "cat.jpg")
TOY = str(REPO / "example_images" / "toy_red_circle.png")
PROMPT = "a cat sitting on a rug"
RECON = re.compile(r"plain DDIM (\S+), textinv (\S+);")


@pytest.fixture(scope="module")
def textinv(tiny, tmp_path_factory) -> tuple[InvertConfig, dict]:
    """Text-embedding inversion of the cat photo on the tiny model (T = 6, 3 inner steps)."""
    cfg = InvertConfig(prompt=PROMPT, image_path=CAT, index=3, model="tiny", inversion="textinv", num_ddim_steps=6,
                       num_inner_steps=3, model_dir=str(tmp_path_factory.mktemp("textinv")))
    torch.manual_seed(0)
    return cfg, invert(tiny, cfg, progress=False).sidecar


def test_registry_has_textinv_with_the_reference_default_of_10_inner_steps():
    assert method_class("textinv") is TextEmbeddingInversion
    assert InversionMethod.TEXTINV.default_inner_steps == 10


def test_textinv_is_saved_like_the_other_methods(textinv, tiny):
    cfg, side = textinv
    assert cfg.path() == Path(cfg.model_dir) / "model_textinv" / "model-inner3-epoch1-textinv-[3].safetensors"
    assert side["inversion"] == "textinv" and cfg.path().with_suffix(".json").is_file()
    rec = side["reconstruction"]
    assert rec["trained_latent_mse"] < rec["ddim_cfg_latent_mse"]
    tensors = load_file(str(cfg.path()))
    assert set(tensors) == {"z_T", "cond_text"}
    assert tensors["cond_text"].shape == (6, 1, tiny.max_length, tiny.text_encoder.config.hidden_size)


def test_reference_schedule_constant_inner_steps_small_adam_moves_from_the_prompt(textinv, tiny):
    """The reference runs the same number of inner steps at every step (no StyleDiffusion decay; its early stop
    is not reached on random weights), starts step 0 from the prompt's embedding and each later step from the
    previous step's result, with Adam at lr 0.01·(1 − i/100): every element moves at most lr per iteration."""
    cfg, side = textinv
    assert side["iterations_per_step"] == [3] * 6
    per_step = load_file(str(cfg.path()))["cond_text"]
    start = tiny.encode_text([PROMPT]).float().cpu()
    for i in range(6):
        before = start if i == 0 else per_step[i - 1]
        moved = (per_step[i] - before).abs().max().item()
        assert 0 < moved <= 3 * learning_rate(i) * 1.001


def test_editing_replaces_only_the_source_prompt_like_the_reference():
    """text_inv_w_p2plus.py sets ``text_embeddings[0] = cond_embeddings[i]``: the source's conditional text
    (keys and values) is the learned one; the target keeps its prompt; the unconditional branch keeps ""."""
    null, per_step = torch.randn(1, 5, 4), torch.randn(3, 1, 5, 4)
    inv = TextEmbeddingInversion(torch.randn(1, 4, 2, 2), null, per_step)
    texts = torch.randn(2, 5, 4)
    for i in range(3):
        out = inv.cond_texts(i, texts)
        assert torch.equal(out[0], per_step[i, 0]) and torch.equal(out[1], texts[1])
        assert torch.equal(inv.uncond(i, 2), null.expand(2, -1, -1))
        assert inv.value_states(i, texts, [True, True]) is None
    back = TextEmbeddingInversion.from_tensors(inv.tensors(), null, texts[:1], 3)
    assert torch.equal(back.per_step, per_step) and torch.equal(back.z_T, inv.z_T)


def test_stylediffusion_py_trains_reports_and_edits_on_the_tiny_model(tmp_path):
    """The script as users run it (a subprocess): train, the reconstruction line, then the edit files."""
    common = ["--inversion", "textinv", "--index", "1", "--prompt", PROMPT, "--image_path", CAT, "--model", "tiny",
              "--num_ddim_steps", "4", "--num_inner_steps", "2", "--model_dir", "m"]
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(REPO)}
    train = subprocess.run([sys.executable, str(REPO / "stylediffusion.py"), *common], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    assert "saved m/model_textinv/model-inner2-epoch1-textinv-[1].safetensors" in train.stdout
    plain, learned = map(float, RECON.search(train.stdout).groups())
    assert learned < plain
    edit = subprocess.run([sys.executable, str(REPO / "stylediffusion.py"), *common, "--is_train", "",
                           "--target", "a dog sitting on a rug", "--outdir", "out"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert edit.returncode == 0, edit.stderr[-2000:]
    folder = tmp_path / "out" / "1 a dog sitting on a rug"
    assert sorted(p.name for p in folder.glob("*.png")) == [
        "edited_img-tau_v0.6-tau_c0.6-tau_s0.8-tau_u0.5.png", "grid_img-tau_v0.6-tau_c0.6-tau_s0.8-tau_u0.5.png"]  # CLI defaults (the reference's)


def test_stylediffusion_py_trains_reports_and_edits_on_the_toy_model(tmp_path, monkeypatch, capsys):
    """The toy model (in process, same main): text-embedding inversion reconstructs better than plain DDIM."""
    monkeypatch.chdir(tmp_path)
    common = ["--inversion", "textinv", "--index", "toy", "--prompt", "a red circle on a green background",
              "--image_path", TOY, "--model", "toy", "--device", "cpu", "--num_ddim_steps", "10",
              "--num_inner_steps", "3", "--model_dir", "m"]
    assert cli.run_main(stylediffusion.main, common) == 0
    plain, learned = map(float, RECON.search(capsys.readouterr().out).groups())
    assert learned < 0.5 * plain
    assert cli.run_main(stylediffusion.main, [*common, "--is_train", "", "--target",
                                              "a blue circle on a green background", "--outdir", "out"]) == 0
    assert len(list((tmp_path / "out" / "toy a blue circle on a green background").glob("*.png"))) == 2


def test_stylediffusion_csv_py_trains_and_edits_with_textinv(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fields = ["case_number", "prompt", "image_path", "target", "blend_word", "eq_params", "tau_v", "tau_c", "tau_s",
              "tau_u", "edit_type"]
    with open(tmp_path / "cases.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerow({"case_number": 0, "prompt": PROMPT, "image_path": CAT, "target": "a dog sitting on a rug",
                         "blend_word": "[('cat',), ('dog',)]", "eq_params": "[('dog',), (2,)]", "tau_v": "[.5,]",
                         "tau_c": "[.6,]", "tau_s": "[.6,]", "tau_u": "[.0,]", "edit_type": "Replacement"})
    common = ["--prompts_path", str(tmp_path / "cases.csv"), "--inversion", "textinv", "--model", "tiny",
              "--num_inner_steps", "1", "--num_ddim_steps", "4", "--device", "cpu", "--model_dir", "m"]
    assert cli.run_main(stylediffusion_csv.main, ["--is_train", "True", *common]) == 0
    assert (tmp_path / "m" / "model_textinv" / "model-inner1-epoch1-textinv-[0].safetensors").is_file()
    assert cli.run_main(stylediffusion_csv.main, ["--is_train", "", "--save_path", "res", *common]) == 0
    assert "1 done, 0 skipped, 0 failed" in capsys.readouterr().out
