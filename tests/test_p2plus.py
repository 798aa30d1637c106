"""p2plus.py edits generated images: one folder per seed, files named by the tau values (defaults tau_c .8,
tau_s .4: the reference p2plus.py's)."""
from __future__ import annotations

import pytest

from sdtoolkit.cli import p2plus
from sdtoolkit.cli import flags as cli


def test_p2plus_writes_an_edit_per_seed_and_combination(tmp_path):
    argv = ["--model", "tiny", "--device", "cpu", "--prompt", "a photo of a dog", "--target", "a photo of a tiger",
            "--seed", "[0,1]", "--tau_u", "0.0,0.5", "--num_ddim_steps", "3", "--outdir", str(tmp_path),
            "--blend_word", "[('dog',), ('tiger',)]"]
    assert cli.run_main(p2plus.main, argv) == 0
    for seed in (0, 1):
        names = sorted(p.name for p in (tmp_path / f"{seed} a photo of a tiger").glob("*.png"))
        assert names == ["edited_img-tau_c0.8-tau_s0.4-tau_u0.0.png", "edited_img-tau_c0.8-tau_s0.4-tau_u0.5.png",
                         "grid_img-tau_c0.8-tau_s0.4-tau_u0.0.png", "grid_img-tau_c0.8-tau_s0.4-tau_u0.5.png"]


@pytest.mark.parametrize("seed", ["[-1]", "x", "[0.5]"])
def test_bad_seeds_are_usage_errors(seed, capsys):
    argv = ["--model", "tiny", "--prompt", "a dog", "--target", "a cat", "--seed", seed]
    assert cli.run_main(p2plus.main, argv) == 2
    assert "--seed" in capsys.readouterr().err
