"""stylediffusion.py as users run it: the reference README commands, output layout, flag parsing, bad input.

The four README commands (train/edit, full sentence and 1 word) run as real subprocesses. Starting a
fresh interpreter costs ~10 s here (torch + diffusers imports), so the remaining runs execute the script
in-process with ``runpy`` (its ``__main__`` block, so ``sys.exit`` and the error convention are exercised as in
a process) and reuse the session's tiny model instead of building it again.
"""
from __future__ import annotations

import dataclasses
import os
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sdtoolkit.core.settings import InvertConfig
from sdtoolkit.jobs.invert import missing_result

REPO = Path(__file__).resolve().parent.parent
SCRIPT = str(REPO / "stylediffusion.py")
CAT = str(REPO / "example_images" / "cat.jpg")
OUTDIR = Path("stylediffusion-results") / "Others"

PROMPT = "black and white dog playing red ball on black carpet"
TARGET = "black and white tiger playing red ball on black carpet"
README_IMAGE = "./example_images/black and white dog playing red ball on black carpet.jpg"

# The reference README's commands, verbatim (backslash continuations joined).
README_TRAIN = f"""--is_train True --index 1 --prompt "{PROMPT}" --image_path "{README_IMAGE}" """
README_TRAIN_1WORD = f"""--is_train True --is_1word 1 --index 1 --prompt "dog" --image_path "{README_IMAGE}" """
README_EDIT = (f"""--is_train '' --index 1 --prompt "{PROMPT}" --image_path "{README_IMAGE}" --target "{TARGET}" """
               """--tau_v [.6,] --tau_c [.6,] --tau_s [.8,] --tau_u [.5,] """
               """--blend_word "[('dog',), ('tiger',)]" --eq_params "[('tiger',), (2,)]" --edit_type Replacement""")
README_EDIT_1WORD = (f"""--is_train '' --is_1word 1 --index 1 --prompt "dog" --image_path "{README_IMAGE}" """
                     """--target "tiger" --tau_v [.6,] --tau_c [.6,] --tau_s [.8,] --tau_u [.5,] """
                     """--blend_word "[('dog',), ('tiger',)]" --eq_params "[('tiger',), (2,)]" --edit_type Replacement""")
STEM = "tau_v0.6-tau_c0.6-tau_s0.8-tau_u0.5"


def _args(readme: str, model_dir: Path | str) -> list[str]:
    """A README command line with the tiny model, a small run and the repository's cat photo."""
    args = shlex.split(readme)
    args[args.index("--image_path") + 1] = CAT
    return args + ["--model", "tiny", "--num_inner_steps", "3", "--num_ddim_steps", "10", "--model_dir", str(model_dir)]


def _subprocess(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def _pngs(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.suffix == ".png"}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The user's working directory: trained models in ./models, outputs in the default outdir."""
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def trained_cli(work) -> Path:
    """The two README training commands, run as subprocesses."""
    for readme, folder in ((README_TRAIN, "model_learnv"), (README_TRAIN_1WORD, "model_learnv_1word")):
        proc = _subprocess(_args(readme, work / "models"), work)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        weights = work / "models" / folder / "model-inner3-epoch1-learnv-[1].safetensors"
        assert f"saved {weights}" in proc.stdout
        assert weights.is_file() and weights.with_suffix(".json").is_file()
    return work / "models"


@pytest.fixture
def inproc(tiny, monkeypatch, capsys):
    """Run the script's __main__ in this process (reusing the session tiny model); returns (code, out, err)."""
    import sdtoolkit.core.models

    real = sdtoolkit.core.models.load_models

    def load_models(model, *args, **kwargs):
        return tiny if model == "tiny" else real(model, *args, **kwargs)

    monkeypatch.setattr(sdtoolkit.core.models, "load_models", load_models)

    def run(args: list[str], cwd: Path):
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", [SCRIPT, *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            runpy.run_path(SCRIPT, run_name="__main__")
        out = capsys.readouterr()
        code = info.value.code
        return (0 if code is None else code), out.out, out.err

    return run


def test_readme_training_writes_the_reference_files(trained_cli):
    assert sorted(p.name for p in trained_cli.iterdir()) == ["model_learnv", "model_learnv_1word"]
    for folder in ("model_learnv", "model_learnv_1word"):
        assert sorted(p.name for p in (trained_cli / folder).iterdir()) == [
            "model-inner3-epoch1-learnv-[1].json", "model-inner3-epoch1-learnv-[1].safetensors"]


def test_readme_editing_full_sentence(trained_cli, work):
    proc = _subprocess(_args(README_EDIT, trained_cli), work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = work / OUTDIR / f"1 {TARGET}"
    assert _pngs(folder) == {f"edited_img-{STEM}.png", f"grid_img-{STEM}.png"}
    assert Image.open(folder / f"edited_img-{STEM}.png").size == (64, 64)
    assert Image.open(folder / f"grid_img-{STEM}.png").size == (4 * 64, 64)  # input | VAE | reconstruction | edited


def test_readme_editing_one_word(trained_cli, work):
    proc = _subprocess(_args(README_EDIT_1WORD, trained_cli), work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = work / OUTDIR / "1 tiger"
    assert _pngs(folder) == {f"edited_img-{STEM}.png", f"grid_img-{STEM}.png"}


def test_is_train_flag_parses_like_the_reference():
    from sdtoolkit.cli import stylediffusion

    parser = stylediffusion.build_parser()
    base = ["--prompt", "dog", "--image_path", CAT]
    assert parser.parse_args(base + ["--is_train", ""]).is_train is False
    assert parser.parse_args(base + ["--is_train", "False"]).is_train is False
    assert parser.parse_args(base + ["--is_train", "True"]).is_train is True
    assert parser.parse_args(base).is_train is True
    args = parser.parse_args(shlex.split(README_EDIT))
    inv, edit = stylediffusion.configs(args)
    assert (edit.tau_v, edit.tau_c, edit.tau_s, edit.tau_u) == ([0.6], [0.6], [0.8], [0.5])
    assert edit.blend_word == (("dog",), ("tiger",)) and edit.eq_params == (("tiger",), (2.0,))
    assert inv.model == "CompVis/stable-diffusion-v1-4" and inv.num_ddim_steps == 30 and inv.num_inner_steps == 100
    assert stylediffusion.configs(parser.parse_args(base + ["--tau_v", "0.2,0.6"]))[1].tau_v == [0.2, 0.6]


def test_tau_list_runs_every_combination(trained_cli, work, inproc):
    args = _args(README_EDIT, trained_cli)
    args[args.index("--tau_v") + 1] = "0.2,0.6"
    code, out, err = inproc(args + ["--outdir", "combos"], work)
    assert code == 0, err[-2000:]
    folder = work / "combos" / f"1 {TARGET}"
    stems = ["tau_v0.2-tau_c0.6-tau_s0.8-tau_u0.5", "tau_v0.6-tau_c0.6-tau_s0.8-tau_u0.5"]
    assert _pngs(folder) == {f"{kind}-{s}.png" for kind in ("edited_img", "grid_img") for s in stems}
    assert "wrote 4 files" in out


def test_store_attn_writes_grid_and_cross_attention(trained_cli, work, inproc):
    args = _args(README_EDIT, trained_cli)
    args[args.index("--edit_type") + 1] = "StoreAttn"
    code, _, err = inproc(args + ["--outdir", "attn"], work)
    assert code == 0, err[-2000:]
    folder = work / "attn" / f"1 {PROMPT}"
    assert _pngs(folder) == {"grid_img.png", "cross_attention.png"}
    assert Image.open(folder / "grid_img.png").size == (3 * 64, 64)  # input | VAE | reconstruction
    width, _ = Image.open(folder / "cross_attention.png").size
    assert width == 256 * (len(PROMPT.split()) + 2)  # one map per token, BOS and EOS included


def _assert_usage_error(code: int, err: str, *fragments: str) -> str:
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_missing_image_subprocess(work):
    proc = _subprocess(_args(README_TRAIN, work / "models-none") + ["--image_path", "nope.jpg"], work)
    line = _assert_usage_error(proc.returncode, proc.stderr, "nope.jpg", "does not exist")
    assert line.startswith("error:")
    assert not (work / "models-none").exists()


def test_editing_before_training_prints_the_training_command(work, inproc):
    model_dir = work / "untrained"
    code, _, err = inproc(_args(README_EDIT, model_dir), work)
    line = _assert_usage_error(code, err, "train first", "python stylediffusion.py --is_train True")
    command = shlex.split(line.split("train first with: ", 1)[1])
    for flag, value in (("--index", "1"), ("--prompt", PROMPT), ("--image_path", CAT), ("--model", "tiny"),
                        ("--num_inner_steps", "3"), ("--num_ddim_steps", "10"), ("--model_dir", str(model_dir))):
        assert command[command.index(flag) + 1] == value, (flag, command)


def test_editing_a_result_of_another_schedule_names_it_and_its_flag(work, inproc):
    """A result trained with --schedule fast, edited without the flag: the error names the fast file and the flag
    that selects it (not only "train first", which would train the same image again)."""
    model_dir = work / "fast-only"
    code, _, err = inproc(_args(README_TRAIN, model_dir) + ["--schedule", "fast"], work)
    assert code == 0, err[-2000:]
    code, _, err = inproc(_args(README_EDIT, model_dir), work)
    line = _assert_usage_error(code, err, "no trained result", "learnv-fast-[1].safetensors exists",
                               "(edit it with --schedule fast)", "train first with: ")
    assert "--inversion" not in line.split("train first with: ")[0]


def test_editing_a_result_of_another_inversion_names_it_and_its_flags(tmp_path):
    """The same for a result of another --inversion (and schedule): every existing sibling and its flags."""
    cfg = InvertConfig(prompt=PROMPT, image_path=CAT, model="tiny", index=1, model_dir=str(tmp_path))
    assert missing_result(cfg, cfg.path()) == f"no trained result at {cfg.path()}; train first with: {cfg.train_command()}"
    others = [dataclasses.replace(cfg, inversion="nulltext"),
              dataclasses.replace(cfg, inversion="stylediffusion_direct", schedule="fast")]
    for other in others:
        other.path().parent.mkdir(parents=True, exist_ok=True)
        other.path().touch()
    message = missing_result(cfg, cfg.path())
    assert f"{others[0].path()} exists (edit it with --inversion nulltext)" in message
    assert f"{others[1].path()} exists (edit it with --inversion stylediffusion_direct --schedule fast)" in message
    assert message.endswith(f"; or train first with: {cfg.train_command()}")


@pytest.fixture(scope="module")
def not_image(work) -> str:
    path = work / "notes.jpg"
    path.write_text("not an image")
    return str(path)


@pytest.fixture(scope="module")
def no_unet(work) -> str:
    path = work / "half-model"
    (path / "vae").mkdir(parents=True)
    (path / "model_index.json").write_text("{}")
    return str(path)


def _edit(**changes) -> list[str]:
    """The README editing command with the tiny model, ``changes`` applied (None removes a flag)."""
    args = shlex.split(README_EDIT)
    args[args.index("--image_path") + 1] = CAT
    small = {"model": "tiny", "num_ddim_steps": "10", "num_inner_steps": "3"}
    for flag, value in {**small, **changes}.items():
        flag = f"--{flag}"
        if value is None:
            if flag in args:
                i = args.index(flag)
                del args[i:i + 2]
        elif flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


BAD_INPUT = {
    "not an image": (lambda f: _edit(is_train="True", image_path=f["not_image"]), ["notes.jpg", "not a readable image"]),
    "empty prompt": (lambda f: _edit(is_train="True", prompt=""), ["--prompt is empty"]),
    "prompt over 77 tokens": (lambda f: _edit(is_train="True", prompt="dog " * 80), ["82 tokens", "77"]),
    "unknown sd_version": (lambda f: _edit(sd_version="sd_9_9", model=None), ["--sd_version 'sd_9_9'", "sd_1_4, sd_1_5"]),
    "model folder without unet": (lambda f: _edit(model=f["no_unet"]), ["not a Stable Diffusion pipeline", "unet/"]),
    "blend word not in prompt": (lambda f: _edit(blend_word="[('horse',), ('tiger',)]"),
                                 ["'horse'", "its tokens are", "'dog'", "'carpet'"]),
    "tau outside [0, 1]": (lambda f: _edit(tau_c="[.6, 1.5]"), ["--tau_c", "1.5 is outside [0, 1]"]),
    "unparseable list": (lambda f: _edit(tau_s="[.6,"), ["--tau_s", "'[.6,'", "not a Python literal list"]),
    "target missing": (lambda f: _edit(target=None), ["--target is required", "Replacement"]),
    "eq_params 2 words 1 value": (lambda f: _edit(eq_params="[('tiger', 'ball'), (2,)]"),
                                  ["--eq_params", "2 word(s)", "1 value(s)"]),
    "Replacement word counts differ": (lambda f: _edit(target="a tiger", blend_word=None, eq_params=None),
                                       ["same number of words", "Refinement"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_readable_line(case, work, inproc, not_image, no_unet):
    build, fragments = BAD_INPUT[case]
    args = build({"not_image": not_image, "no_unet": no_unet})
    args += ["--model_dir", str(work / "bad-models"), "--outdir", str(work / "bad-out")]
    code, _, err = inproc(args, work)
    line = _assert_usage_error(code, err, *fragments)
    assert line.startswith("error:")
    assert not (work / "bad-models").exists() and not (work / "bad-out").exists()


def test_a_bad_boolean_names_the_value_and_the_valid_spellings(capsys):
    """str2bool's own message reaches the user (argparse keeps ArgumentTypeError messages), exit status 2."""
    from sdtoolkit.cli import stylediffusion

    with pytest.raises(SystemExit) as info:
        stylediffusion.build_parser().parse_args(["--is_train", "maybe", "--prompt", "a cat", "--image_path", "x.png"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--is_train" in err and "'maybe' is not a boolean" in err and "True/False" in err
