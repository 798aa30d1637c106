"""stylediffusion.py --baselines: a second grid row with the reference's comparison images (DDIM inversion, DDIM with
word swap, DDIM inversion + P2P, null-text + P2P); null-text is trained (and said so) when it is not saved."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdtoolkit.cli import flags as cli
from sdtoolkit.cli import stylediffusion
from sdtoolkit.jobs.edit import BASELINE_COLUMNS

REPO = Path(__file__).resolve().parent.parent
CAT = str(REPO / "example_images" / "cat.jpg")
COMMON = ["--index", "2", "--prompt", "a cat sitting on a rug", "--image_path", CAT, "--model", "tiny",
          "--num_ddim_steps", "4", "--inversion", "npi", "--model_dir", "m"]
EDIT = ["--is_train", "", "--target", "a dog sitting on a rug", "--tau_v", "[.5,]", "--tau_s", "[.6,]", "--tau_u", "[.5,]"]
STEM = "tau_v0.5-tau_c0.6-tau_s0.6-tau_u0.5"


@pytest.fixture
def run(tiny, tmp_path, monkeypatch, capsys):
    import sdtoolkit.core.models

    monkeypatch.setattr(sdtoolkit.core.models, "load_models", lambda model, *a, **k: tiny)
    monkeypatch.chdir(tmp_path)

    def go(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.run_main(stylediffusion.main, [*COMMON, *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return go


def test_baselines_add_a_row_of_four_and_train_nulltext_once(run, tmp_path):
    assert run()[0] == 0  # npi: nothing to learn, only z_T
    code, out, err = run(*EDIT, "--outdir", "plain")
    assert code == 0, err
    code, out, err = run(*EDIT, "--outdir", "with", "--baselines")
    assert code == 0, err
    nulltext = "m/model_nulltext/model-inner10-epoch1-nulltext-[2].safetensors"
    assert f"--baselines: trained null-text inversion {nulltext}" in out
    assert (tmp_path / nulltext).is_file()

    folder = "2 a dog sitting on a rug"
    plain = np.asarray(Image.open(tmp_path / "plain" / folder / f"grid_img-{STEM}.png"))
    grid = np.asarray(Image.open(tmp_path / "with" / folder / f"grid_img-{STEM}.png"))
    side = 64  # the tiny model's image size
    assert plain.shape == (side, 4 * side, 3) and grid.shape == (2 * side, 4 * side, 3)
    assert np.array_equal(grid[:side], plain)  # the first row is the usual grid
    meta = json.loads((tmp_path / "with" / folder / f"edited_img-{STEM}.json").read_text())
    assert meta["baselines"] == {"second_row": list(BASELINE_COLUMNS), "nulltext_file": nulltext,
                                 "nulltext_trained_now": True}

    code, out, err = run(*EDIT, "--outdir", "again", "--baselines")  # the saved null-text is reused
    assert code == 0 and "trained null-text" not in out
    again = np.asarray(Image.open(tmp_path / "again" / folder / f"grid_img-{STEM}.png"))
    assert np.array_equal(again, grid)


@pytest.mark.parametrize("extra", [["--is_train", "True"], [*EDIT, "--edit_type", "StoreAttn"]])
def test_baselines_outside_an_edit_grid_are_refused(run, extra):
    code, out, err = run(*extra, "--baselines")
    assert code == 2 and err.startswith("error: --baselines") and len(err.strip().splitlines()) == 1
