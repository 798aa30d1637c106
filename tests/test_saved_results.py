"""Saved results are used only for what made them: identity (seed, image encoder, dtype, schedule), the trained
prompt, damaged files (exit 2, one line with the retrain command), a worse-than-DDIM training marked; the CLIs'
defaults are the reference scripts'."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from sdtoolkit.cli import flags as cli
from sdtoolkit.cli import p2plus as p2plus_cli
from sdtoolkit.cli import stylediffusion as sd_cli
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.mapping import sidecar_path
from sdtoolkit.core.settings import EditConfig
from sdtoolkit.jobs import invert as invert_job
from sdtoolkit.jobs.edit import run_edit
from sdtoolkit.jobs.invert import existing_result, worse_than_ddim


@pytest.fixture()
def copy(trained, tmp_path):
    """The session's trained result copied into its own model_dir (safe to damage)."""
    shutil.copytree(trained.folder(), tmp_path / trained.folder().name)
    return dataclasses.replace(trained, model_dir=str(tmp_path))


def _argv(cfg, *extra: str) -> list[str]:
    return ["--model", "tiny", "--device", "cpu", "--index", str(cfg.index), "--prompt", cfg.prompt, "--image_path",
            cfg.image_path, "--num_inner_steps", str(cfg.num_inner_steps), "--model_dir", cfg.model_dir, *extra]


def _edit_argv(cfg, prompt: str | None = None) -> list[str]:
    argv = _argv(cfg, "--is_train", "", "--target", "a tiger sitting on a rug", "--outdir", cfg.model_dir + "/out")
    if prompt is not None:
        argv[argv.index("--prompt") + 1] = prompt
    return argv


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("key, value", [("seed", 1), ("dtype", "bfloat16"), ("image_encoder", "openai/clip-vit-large-patch14"),
                                        ("steps_offset", 0), ("prediction_type", "v_prediction")])
def test_rerun_with_another_setting_is_not_already_trained(tiny, copy, key, value):
    """A rerun whose seed, image encoder, dtype or schedule differs from the saved result's is refused, naming it."""
    sha = json.loads(sidecar_path(copy.path()).read_text())["image_sha256"]
    run = tiny.run_identity(copy.num_ddim_steps)
    assert existing_result(copy, sha, False, run) == copy.path()
    cfg, run = (dataclasses.replace(copy, seed=value), run) if key == "seed" else (copy, {**run, key: value})
    with pytest.raises(UsageError, match=f"{key}: saved"):
        existing_result(cfg, sha, False, run)


def test_result_of_the_old_schedule_is_refused_for_editing(tiny, copy):
    """Results trained with steps_offset 0 (before the fix) lack the key or hold 0: editing refuses them."""
    side = sidecar_path(copy.path())
    data = json.loads(side.read_text())
    assert data["steps_offset"] == 1 and data["prediction_type"] == "epsilon"
    del data["steps_offset"]
    side.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="steps_offset: file None vs now 1"):
        run_edit(tiny, copy, EditConfig(target="a dog sitting on a rug", outdir=copy.model_dir), progress=False)


def test_editing_with_another_prompt_names_both(copy, capsys):
    assert cli.run_main(sd_cli.main, _edit_argv(copy, prompt="a dog sitting on a rug")) == 2
    line = _one_error_line(capsys)
    assert "'a cat sitting on a rug'" in line and "'a dog sitting on a rug'" in line


def test_truncated_safetensors_exit_2_with_the_retrain_command(copy, capsys):
    path = copy.path()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert cli.run_main(sd_cli.main, _edit_argv(copy)) == 2
    line = _one_error_line(capsys)
    assert str(path) in line and "truncated or corrupted" in line
    assert "retrain with: python stylediffusion.py --is_train True" in line and line.endswith("--overwrite")


@pytest.mark.parametrize("train", [False, True])
def test_unparsable_sidecar_exit_2_with_the_retrain_command(copy, capsys, train):
    side = sidecar_path(copy.path())
    side.write_text('{"prompt": "a cat', encoding="utf-8")
    argv = _argv(copy, "--is_train", "True") if train else _edit_argv(copy)
    assert cli.run_main(sd_cli.main, argv) == 2
    line = _one_error_line(capsys)
    assert str(side) in line and "not valid JSON" in line and "retrain with:" in line


def test_sidecar_marks_whether_training_beat_plain_ddim(trained):
    data = json.loads(sidecar_path(trained.path()).read_text())
    rec = data["reconstruction"]
    assert data["worse_than_ddim"] is (rec["trained_latent_mse"] > rec["ddim_cfg_latent_mse"])
    assert worse_than_ddim({"trained_latent_mse": 0.62, "ddim_cfg_latent_mse": 0.26})
    assert not worse_than_ddim({"trained_latent_mse": 0.01, "ddim_cfg_latent_mse": 0.26})


def test_cli_warns_when_training_is_worse_than_ddim(copy, monkeypatch, capsys):
    sidecar = {"reconstruction": {"ddim_cfg_latent_mse": 0.26, "trained_latent_mse": 0.62}, "worse_than_ddim": True,
               "elapsed_seconds": 1.0}
    monkeypatch.setattr(invert_job, "invert", lambda models, cfg, overwrite=False: invert_job.InvertResult(
        cfg.path(), True, sidecar))
    assert cli.run_main(sd_cli.main, _argv(copy, "--is_train", "True", "--num_inner_steps", "2")) == 0
    out = capsys.readouterr().out
    assert "WARNING" in out and "worse than plain DDIM" in out and "worse_than_ddim" in out


def test_cli_defaults_are_the_reference_scripts():
    """stylediffusion.py: tau_v .6 / tau_c .6 / tau_s .8 / tau_u .5, T = 30 (null-text: 50, as the reference's
    null-text script); p2plus.py: tau_c .8 / tau_s .4 / tau_u .5, seed 2720, T = 50."""
    args = sd_cli.build_parser().parse_args(["--prompt", "a cat", "--image_path", "x.jpg"])
    assert (args.tau_v, args.tau_c, args.tau_s, args.tau_u) == ("[.6,]", "[.6,]", "[.8,]", "[.5,]")
    inv, _ = sd_cli.configs(args)
    assert inv.num_ddim_steps == 30
    nulltext, _ = sd_cli.configs(sd_cli.build_parser().parse_args(
        ["--prompt", "a cat", "--image_path", "x.jpg", "--inversion", "nulltext"]))
    assert nulltext.num_ddim_steps == 50 and nulltext.num_inner_steps == 10
    p2 = p2plus_cli.build_parser().parse_args(["--prompt", "a", "--target", "b"])
    assert (p2.tau_c, p2.tau_s, p2.tau_u, p2.seed, p2.num_ddim_steps) == ("[.8,]", "[.4,]", "[.5,]", "[2720,]", 50)


def test_default_precision_is_fp32_as_the_reference():
    """docs/backbones.md "Precision": bf16 and fp16 measured to reconstruct 0.3-0.4 dB worse on the trained toy
    PIE-Bench, so ``--dtype auto`` is fp32 on every device."""
    import torch

    from sdtoolkit.core.models import resolve_dtype

    assert resolve_dtype("auto") is torch.float32 and resolve_dtype(None) is torch.float32
    assert resolve_dtype("bf16") is torch.bfloat16
