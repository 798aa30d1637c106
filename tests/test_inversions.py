"""The four inversion methods behind one interface: reconstruction figures and a shared edit."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from sdtoolkit.core.settings import EditConfig
from sdtoolkit.jobs.edit import run_edit
from sdtoolkit.jobs.invert import invert
from sdtoolkit.core.mapping import sidecar_path


@pytest.fixture(scope="module")
def inverted(tiny, trained):
    """Sidecars of all four methods on the same image, prompt and steps (StyleDiffusion from `trained`)."""
    out = {"stylediffusion": (trained, json.loads(sidecar_path(trained.path()).read_text()))}
    for method in ("nulltext", "npi", "ddim"):
        cfg = replace(trained, inversion=method)
        result = invert(tiny, cfg, progress=False)
        out[method] = (cfg, result.sidecar)
    return out


def test_each_sidecar_names_its_method_and_reconstruction(inverted):
    for method, (cfg, side) in inverted.items():
        assert side["inversion"] == method
        assert set(side["reconstruction"]) == {"ddim_cfg_latent_mse", "trained_latent_mse"}
        assert cfg.path().is_file()
    assert inverted["nulltext"][0].path().parent.name == "model_nulltext"


def test_reconstruction_ordering_matches_the_literature(inverted):
    rec = {m: s["reconstruction"] for m, (_, s) in inverted.items()}
    plain = rec["ddim"]["ddim_cfg_latent_mse"]
    assert rec["ddim"]["trained_latent_mse"] == pytest.approx(plain)
    assert rec["nulltext"]["trained_latent_mse"] < 0.75 * plain
    assert rec["nulltext"]["trained_latent_mse"] > rec["stylediffusion"]["trained_latent_mse"]
    assert rec["npi"]["trained_latent_mse"] <= 0.2 * plain


def test_the_same_edit_runs_after_every_inversion(tiny, inverted, tmp_path):
    edit = EditConfig(target="a dog sitting on a rug", tau_v=[0.5], tau_c=[0.6], tau_s=[0.6], tau_u=[0.5],
                      blend_word=(("cat",), ("dog",)), outdir=str(tmp_path))
    for method, (cfg, _) in inverted.items():
        files = run_edit(tiny, cfg, replace(edit, outdir=str(tmp_path / method)), progress=False)
        names = sorted(p.name for p in files)
        assert names == ["edited_img-tau_v0.5-tau_c0.6-tau_s0.6-tau_u0.5.png",
                         "grid_img-tau_v0.5-tau_c0.6-tau_s0.6-tau_u0.5.png"], method
