"""Behaviours users rely on that had no test: --attn_pairing reference, --crop, --dtype bf16 on CPU, CLI
--overwrite / "already trained", resuming a CSV run, the sidecar's image and step checks, atomic writes that fail
part-way, the NaN guard on latents and the 1-word refusal."""
from __future__ import annotations

import copy
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdtoolkit.cli import flags as cli
from sdtoolkit.cli import stylediffusion, stylediffusion_csv
from sdtoolkit.core import checks, io, mapping
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.images import load_image
from sdtoolkit.core.models import load_models
from sdtoolkit.core.settings import AttnPairing, EditConfig, InvertConfig
from sdtoolkit.jobs.edit import run_edit
from sdtoolkit.jobs.invert import invert, load_inversion, load_source
from sdtoolkit.methods.inversions import DDIMInversion, ddim_inversion
from sdtoolkit.methods.sampler import NonFiniteError, sample

REPO = Path(__file__).resolve().parent.parent
CAT = str(REPO / "example_images" / "cat.jpg")
COFFEE = str(REPO / "example_images" / "coffee.jpg")
SMALL = dict(num_ddim_steps=4, num_inner_steps=1)
SMALL_FLAGS = ["--model", "tiny", "--num_ddim_steps", "4", "--num_inner_steps", "1", "--device", "cpu"]


def _cfg(tmp_path, **kw) -> InvertConfig:
    args = dict(prompt="a cat", image_path=CAT, index=1, model="tiny", model_dir=str(tmp_path / "models"), **SMALL)
    args.update(kw)
    return InvertConfig(**args)


@pytest.fixture
def use_tiny(tiny, monkeypatch):
    """CLIs in process load the session's tiny model instead of building another."""
    import sdtoolkit.core.models as models

    real = models.load_models
    monkeypatch.setattr(models, "load_models", lambda m, *a, **k: tiny if m == "tiny" else real(m, *a, **k))


def _cli(main, argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.run_main(main, argv)
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------------- attn_pairing, crop


def test_attn_pairing_reference_flag_reaches_training_identity_and_command(tmp_path):
    args = stylediffusion.build_parser().parse_args(["--prompt", "a cat", "--image_path", CAT, "--model", "tiny",
                                                     "--attn_pairing", "reference"])
    cfg, _ = stylediffusion.configs(args)
    assert cfg.attn_pairing is AttnPairing.REFERENCE
    assert cfg.train_settings().attn_pairing is AttnPairing.REFERENCE
    assert "--attn_pairing reference" in cfg.train_command()
    assert stylediffusion.configs(stylediffusion.build_parser().parse_args(
        ["--prompt", "a cat", "--image_path", CAT, "--model", "tiny"]))[0].attn_pairing is AttnPairing.SAME


def _halves(path: Path) -> str:
    """120×80 image: left 40 px red, the rest blue."""
    a = np.zeros((80, 120, 3), dtype=np.uint8)
    a[:, :40] = (255, 0, 0)
    a[:, 40:] = (0, 0, 255)
    Image.fromarray(a).save(path)
    return str(path)


def test_crop_cuts_each_side_before_the_centre_square(tmp_path):
    path = _halves(tmp_path / "halves.png")
    red = np.asarray(load_image(path, 32, 0, 80, 0, 0))  # keep x 0..39 → 40×80 → centre 40×40: red
    assert (red == (255, 0, 0)).all()
    blue = np.asarray(load_image(path, 32, 40, 0, 0, 0))
    assert (blue == (0, 0, 255)).all()
    plain = np.asarray(load_image(path, 32))  # x 20..99: a quarter red
    assert 0.2 < (plain[..., 0] > 128).mean() < 0.3
    with pytest.raises(UsageError, match="do not fit"):
        load_image(path, 32, 60, 60, 0, 0)


def test_crop_flag_reaches_the_source_image_and_the_saved_identity(tiny, tmp_path):
    path = _halves(tmp_path / "halves.png")
    args = stylediffusion.build_parser().parse_args(["--prompt", "a cat", "--image_path", path, "--model", "tiny",
                                                     "--crop", "0", "80", "0", "0", "--num_ddim_steps", "4",
                                                     "--num_inner_steps", "1", "--model_dir", str(tmp_path / "m")])
    cfg, _ = stylediffusion.configs(args)
    assert cfg.crop == (0, 80, 0, 0) and "--crop 0 80 0 0" in cfg.train_command()
    source = load_source(tiny, cfg.image_path, cfg.crop)
    assert (np.asarray(source.pil) == (255, 0, 0)).all()
    invert(tiny, cfg, progress=False)
    with pytest.raises(UsageError, match="crop: saved \\[0, 80, 0, 0\\] vs now \\[0, 0, 0, 0\\]"):
        invert(tiny, replace(cfg, crop=(0, 0, 0, 0)), progress=False)  # same file name, other crop: refused


# ---------------------------------------------------------------------------------------------------- bf16


def test_bf16_on_cpu_trains_and_edits(tmp_path):
    models = load_models("tiny", device="cpu", dtype="bf16")
    assert models.unet.dtype == torch.bfloat16 and models.text_encoder.dtype == torch.bfloat16
    cfg = _cfg(tmp_path, num_ddim_steps=2)  # bf16 runs ~13x slower than fp32 on CPUs without native bf16
    result = invert(models, cfg, progress=False)
    assert result.sidecar["dtype"] == "bfloat16"
    rec = result.sidecar["reconstruction"]
    assert np.isfinite(rec["trained_latent_mse"]) and np.isfinite(rec["ddim_cfg_latent_mse"])
    files = run_edit(models, cfg, EditConfig(target="a dog", outdir=str(tmp_path / "out")), progress=False)
    edited = np.asarray(Image.open(files[0]))
    assert edited.shape == (models.image_size, models.image_size, 3) and edited.std() > 0


# --------------------------------------------------------------------------------- CLI overwrite / already trained


def test_cli_rerun_is_already_trained_other_settings_refused_overwrite_retrains(tmp_path, capsys, use_tiny):
    base = ["--is_train", "True", "--prompt", "a cat", "--image_path", CAT, "--index", "3",
            "--model_dir", str(tmp_path), *SMALL_FLAGS]
    rc, out, _ = _cli(stylediffusion.main, base, capsys)
    weights = tmp_path / "model_learnv" / "model-inner1-epoch1-learnv-[3].safetensors"
    assert rc == 0 and f"saved {weights}" in out
    first = weights.read_bytes()
    stamp = weights.stat().st_mtime_ns

    rc, out, _ = _cli(stylediffusion.main, base, capsys)
    assert rc == 0 and out.startswith("already trained:") and str(weights) in out
    assert weights.stat().st_mtime_ns == stamp

    other = base + ["--guidance_scale", "5"]
    rc, out, err = _cli(stylediffusion.main, other, capsys)
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc == 2 and len(lines) == 1 and "guidance_scale: saved 7.5 vs now 5.0" in lines[0] and "--overwrite" in lines[0]
    assert weights.read_bytes() == first

    rc, out, _ = _cli(stylediffusion.main, other + ["--overwrite"], capsys)
    assert rc == 0 and f"saved {weights}" in out
    assert json.loads(weights.with_suffix(".json").read_text())["guidance_scale"] == 5.0
    assert weights.read_bytes() != first


# ------------------------------------------------------------------------------------------ resuming a CSV run


def _csv(path: Path, rows: list[tuple[str, str, str]], edit: bool) -> str:
    import csv

    header = ["case_number", "prompt", "image_path"]
    extra = {"target": "a dog", "blend_word": "", "eq_params": "", "tau_v": "[.5,]", "tau_c": "[.6,]",
             "tau_s": "[.6,]", "tau_u": "[.0,]", "edit_type": "Replacement"}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header + (list(extra) if edit else []))
        for row in rows:
            w.writerow(list(row) + (list(extra.values()) if edit else []))
    return str(path)


def test_csv_run_resumes_where_it_stopped(tmp_path, capsys, use_tiny):
    rows = [("1", "a cat", CAT), ("2", "a cup", COFFEE)]
    common = ["--model_dir", str(tmp_path / "models"), *SMALL_FLAGS]
    train = ["--is_train", "True", "--prompts_path", _csv(tmp_path / "p.csv", rows, False), *common]
    rc, out, _ = _cli(stylediffusion_csv.main, train, capsys)
    assert rc == 0 and "summary: 2 done, 0 skipped, 0 failed of 2 rows" in out
    folder = tmp_path / "models" / "model_learnv"
    one, two = (folder / f"model-inner1-epoch1-learnv-[{i}].safetensors" for i in (1, 2))
    stamp = one.stat().st_mtime_ns
    two.with_suffix(".json").unlink()  # row 2 interrupted between its two files: not complete
    rc, out, _ = _cli(stylediffusion_csv.main, train, capsys)
    assert rc == 0 and "summary: 1 done, 1 skipped, 0 failed of 2 rows" in out
    assert one.stat().st_mtime_ns == stamp and two.with_suffix(".json").is_file()

    outdir = tmp_path / "out"
    edit = ["--is_train", "", "--prompts_path", _csv(tmp_path / "e.csv", rows, True), "--save_path", str(outdir), *common]
    rc, out, _ = _cli(stylediffusion_csv.main, edit, capsys)
    assert rc == 0 and "summary: 2 done, 0 skipped, 0 failed of 2 rows" in out
    edited = sorted(outdir.rglob("edited_img-*.png"))
    assert len(edited) == 2
    kept = {p: p.stat().st_mtime_ns for p in edited}
    edited[1].unlink()  # row 2's edit interrupted
    rc, out, _ = _cli(stylediffusion_csv.main, edit, capsys)
    assert rc == 0 and "summary: 1 done, 1 skipped, 0 failed of 2 rows" in out and "already edited" in out
    assert edited[1].is_file() and edited[0].stat().st_mtime_ns == kept[edited[0]]


# --------------------------------------------------------------------------------------- the sidecar's checks


def test_editing_refuses_a_result_for_another_image_or_step_count(tiny, tmp_path):
    image = tmp_path / "photo.jpg"
    image.write_bytes(Path(CAT).read_bytes())
    cfg = _cfg(tmp_path, image_path=str(image))
    invert(tiny, cfg, progress=False)
    null, text = tiny.encode_text([""]).float(), tiny.encode_text([cfg.prompt]).float()
    load_inversion(tiny, cfg, load_source(tiny, cfg.image_path), text, null)  # matches: loads

    with pytest.raises(UsageError, match="num_ddim_steps: file 4 vs now 6.*retrain with: python stylediffusion.py"):
        load_inversion(tiny, replace(cfg, num_ddim_steps=6), load_source(tiny, cfg.image_path), text, null)

    image.write_bytes(Path(COFFEE).read_bytes())  # same path, other picture
    with pytest.raises(UsageError, match="image_sha256: file '[0-9a-f]{64}' vs now '[0-9a-f]{64}'"):
        load_inversion(tiny, cfg, load_source(tiny, cfg.image_path), text, null)


# ------------------------------------------------------------------------------------------------ atomic writes


def test_atomic_write_failing_part_way_leaves_the_old_file_and_no_temporaries(tmp_path):
    path = tmp_path / "out" / "result.json"
    io.write_json(path, {"old": 1})

    def half(tmp: str) -> None:
        Path(tmp).write_text('{"new": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.atomic_write(path, half)
    assert json.loads(path.read_text()) == {"old": 1}
    assert sorted(os.listdir(path.parent)) == ["result.json"]
    with pytest.raises(OSError):
        io.atomic_write(tmp_path / "new.png", half)
    assert not (tmp_path / "new.png").exists() and sorted(os.listdir(tmp_path)) == ["out"]


def test_interrupted_save_leaves_no_result_that_counts_as_trained(tiny, tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)

    def fail(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(mapping, "write_json", fail)  # weights written, sidecar fails
    with pytest.raises(OSError):
        invert(tiny, cfg, progress=False)
    assert not mapping.sidecar_path(cfg.path()).exists()
    assert [p.name for p in cfg.path().parent.iterdir() if p.name.startswith(".")] == []
    monkeypatch.undo()
    assert invert(tiny, cfg, progress=False).trained  # the half result is not taken as "already trained"


# ---------------------------------------------------------------------------------------------------- NaN guard


def _nan_after(models, step: int):
    m = copy.copy(models)

    def eps(z, t, text, call, pooled=None):
        out = 0.1 * z
        return out * float("nan") if call.step == step else out

    m.eps = m.predict = eps
    return m


def test_sampling_stops_at_the_first_non_finite_latent(tiny):
    null = tiny.encode_text([""]).float()
    schedule = tiny.schedule(6)
    with pytest.raises(NonFiniteError, match="the sampled latent is not finite at sampling step 3"):
        sample(_nan_after(tiny, 3), schedule, DDIMInversion(torch.zeros(1, 4, 8, 8), null), null)


def test_inversion_stops_at_the_first_non_finite_latent(tiny):
    null = tiny.encode_text([""]).float()
    with pytest.raises(NonFiniteError, match="the inversion latent is not finite at sampling step 4"):
        ddim_inversion(_nan_after(tiny, 4), torch.zeros(1, 4, 8, 8), null, tiny.schedule(6))


# ----------------------------------------------------------------------------------------------- 1-word refusal


@pytest.mark.parametrize("flag, value", [("--prompt", "a dog"), ("--target", "big tiger")])
def test_one_word_mode_refuses_more_than_one_word(tmp_path, capsys, use_tiny, flag, value):
    args = {"--prompt": "dog", "--target": "tiger"}
    args[flag] = value
    argv = ["--is_train", "", "--is_1word", "1", "--prompt", args["--prompt"], "--target", args["--target"],
            "--image_path", CAT, "--model_dir", str(tmp_path), "--outdir", str(tmp_path / "out"), *SMALL_FLAGS]
    rc, _, err = _cli(stylediffusion.main, argv, capsys)
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc == 2 and len(lines) == 1, err
    assert f"{flag} {value!r} has 2 words but --is_1word 1 wants exactly one" in lines[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match="2 words"):
        checks.check_prompt(value, use_tiny_tokenizer(), is_1word=True)
    checks.check_prompt("dog", use_tiny_tokenizer(), is_1word=True)


def use_tiny_tokenizer():
    from sdtoolkit.core.tokenizer import load_clip_tokenizer

    return load_clip_tokenizer()
