"""The browser app's functions (sdtoolkit.app.actions / sessions) on the toy model, without a browser: invert then
edit "red circle" → "blue circle" in the toy world's ground truth, the shown command line remakes the same PNG
from the downloaded bundle, bad input is one line naming the app's control, sessions stay bounded."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

import sdtoolkit as sd
from sdtoolkit.app.actions import CONTROLS, Actions, tau_list, words_of
from sdtoolkit.app.sessions import Kept, Sessions

from conftest import REPO

IMAGE = os.path.join(REPO, "example_images", "toy_red_circle.png")
SOURCE = "a red circle on a green background"
TARGET = "a blue circle on a green background"
FAST = dict(num_ddim_steps=10, num_inner_steps=5)  # seconds on a CPU; the toy edit already succeeds


@pytest.fixture(scope="module")
def toy():
    return sd.load("toy", device="cpu", dtype="fp32", progress=False)


@pytest.fixture(scope="module")
def app(toy, tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    return Actions(toy, Sessions(root / "sessions", per_session=2), os.path.join(REPO, "example_images"))


@pytest.fixture(scope="module")
def inverted(app):
    events = []
    view = app.invert("alice", app.image_file(None, "toy_red_circle.png"), SOURCE, progress=events.append, **FAST)
    return view, events


def _rgb(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.float64)


def toy_edit_holds(source: np.ndarray, edited: np.ndarray) -> None:
    """The toy ground truth of this edit (tests/test_toy_edit.py's thresholds): the disc turns blue, the
    background stays green."""
    disc = (source[..., 0] > 150) & (source[..., 1] < 100)
    inside = edited[disc].mean(0)
    assert inside[2] > 150 and inside[0] < 80, inside
    ring = np.zeros_like(disc)
    ys, xs = np.nonzero(disc)
    ring[max(ys.min() - 4, 0):ys.max() + 5, max(xs.min() - 4, 0):xs.max() + 5] = True
    outside = edited[~ring].mean(0)
    assert outside[1] > outside[0] + 60 and outside[1] > outside[2] + 60, outside


def test_invert_shows_panels_figures_and_a_bundle_with_progress_from_the_clis_bars(inverted):
    view, events = inverted
    assert view.label == "inversion-1"
    assert view.panels.size == (3 * 64, 64)
    assert view.figures["trained_latent_mse"] < view.figures["ddim_cfg_latent_mse"]
    assert view.figures["unet_passes_training"] >= 10 and view.figures["seconds"] > 0
    names = zipfile.ZipFile(view.bundle).namelist()
    assert "inversion-1/source.png" in names
    assert any(n.startswith("inversion-1/model_learnv/") and n.endswith(".safetensors") for n in names)
    assert any(n.endswith(".json") for n in names)
    bars = {e.desc for e in events}
    assert {"DDIM inversion", "training M_t"} <= bars
    training = [e for e in events if e.desc == "training M_t" and e.postfix]
    assert training and "loss=" in training[-1].postfix and "step=" in training[-1].postfix
    assert training[-1].text().startswith("training M_t ")


def test_edit_makes_the_blue_circle_and_its_command_remakes_the_same_png(app, inverted, tmp_path):
    view, _ = inverted
    out = app.edit("alice", view.label, TARGET, taus=dict(tau_v=.5, tau_c=.6, tau_s=.6, tau_u=0),
                   blend=(["red"], ["blue"]))
    edited = out.edited[0]
    toy_edit_holds(_rgb(edited.source), _rgb(edited.edited))
    assert edited.blend_mask is not None and edited.blend_overlay.size == edited.edited.size
    assert edited.attention is not None and edited.source_attention is not None
    png = next(p for p in out.files if p.suffix == ".png")
    assert png.read_bytes()  # the download
    with zipfile.ZipFile(view.bundle) as archive:
        archive.extractall(tmp_path)
    args = shlex.split(out.command)
    assert args[:4] == ["python", "stylediffusion.py", "--is_train", ""]
    run = subprocess.run([sys.executable, os.path.join(REPO, "stylediffusion.py"), *args[2:]], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    made = list((tmp_path / "stylediffusion-results" / "app").glob("*/edited_img-*.png"))
    assert len(made) == 1 and made[0].name == png.name
    assert made[0].read_bytes() == png.read_bytes()


def test_sweep_gives_every_combination_labelled_by_its_taus(app, inverted):
    view, _ = inverted
    out = app.edit("alice", view.label, TARGET, taus={"tau_v": [.5], "tau_c": tau_list("0.2, 0.8", "tau_c"),
                                                     "tau_s": [.6], "tau_u": [0.0]}, sweep=True)
    assert [e.taus.tau_c for e in out.edited] == [0.2, 0.8]
    assert len([p for p in out.files if p.suffix == ".png"]) == 2
    assert not np.array_equal(_rgb(out.edited[0].edited), _rgb(out.edited[1].edited))


@pytest.mark.parametrize("kwargs, words", [
    (dict(target="a blue circle on a green background", blend=(["horse"], ["blue"])), ["Blend words", "'horse'"]),
    (dict(target="a blue circle", edit_type="Replacement"), ["Replacement", "Edit type"]),
    (dict(target=" ".join(["blue"] * 80)), ["Target prompt", "77"]),
    (dict(target="a blue circle on a green background", reweight={"tiger": 2.0}), ["Reweight", "'tiger'"]),
    (dict(target=""), ["Target prompt", "empty"]),
])
def test_bad_edits_name_the_apps_control_in_one_line(app, inverted, kwargs, words):
    view, _ = inverted
    taus = dict(tau_v=.5, tau_c=.6, tau_s=.6, tau_u=0)
    with pytest.raises(sd.UsageError) as err:
        app.edit("alice", view.label, taus=taus, **kwargs)
    text = str(err.value)
    assert all(w in text for w in words), text
    assert "--" not in text and "\n" not in text


def test_an_edit_before_an_inversion_and_bad_images_are_refused(app, tmp_path):
    with pytest.raises(sd.UsageError, match="click Invert first"):
        app.edit("bob", None, TARGET, taus=dict(tau_v=.5, tau_c=.6, tau_s=.6, tau_u=0))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(sd.UsageError, match="not a readable image") as err:
        app.invert("bob", text, SOURCE, **FAST)
    assert "--" not in str(err.value)
    long = tmp_path / "long.png"
    Image.new("RGB", (500, 100), (0, 128, 0)).save(long)
    with pytest.raises(sd.UsageError, match="Keep aspect"):
        app.invert("bob", long, SOURCE, keep_aspect=True, **FAST)
    with pytest.raises(sd.UsageError, match="Image: 'nope.png' is not one of the examples"):
        app.image_file(None, "nope.png")
    assert app.sessions.labels("bob") == []  # nothing kept from a refused run
    assert not any((app.sessions.root / "bob").glob("inversion-*"))


def test_sessions_keep_the_most_recently_used_inversions_and_say_what_they_drop(tmp_path):
    sessions = Sessions(tmp_path, per_session=2, max_sessions=2)
    for label in ("a", "b"):
        folder = sessions.folder("s1")
        folder.mkdir(parents=True)
        assert sessions.add("s1", Kept(label, None, folder)) == []
    assert sessions.get("s1", "a").label == "a"  # a is now the most recently used
    folder = sessions.folder("s1")
    folder.mkdir(parents=True)
    dropped = sessions.add("s1", Kept("c", None, folder))
    assert len(dropped) == 1 and dropped[0].startswith("b was dropped") and "2 most recently used" in dropped[0]
    assert sessions.labels("s1") == ["c", "a"] and not (tmp_path / "s1" / "inversion-2").exists()
    for session in ("s2", "s3"):
        folder = sessions.folder(session)
        folder.mkdir(parents=True)
        sessions.add(session, Kept("x", None, folder))
    assert sessions.labels("s1") == [] and len(sessions) == 2  # the least recently used session went
    assert not (tmp_path / "s1").exists() or not any((tmp_path / "s1").iterdir())


def test_words_pickers_and_tau_lists():
    assert words_of("a cat, sitting on a 'rug'.") == ["a", "cat", "sitting", "on", "rug"]
    assert tau_list("0.2, 0.6", "tau_c") == [0.2, 0.6] and tau_list(0.3, "tau_c") == [0.3]
    with pytest.raises(sd.UsageError, match="tau_c values 'x'"):
        tau_list("x", "tau_c values")
    assert set(CONTROLS) <= set(sd.API_NAMES)


def test_generated_tab_edits_the_seeds_image_as_p2plus(app, tmp_path):
    view = app.generated(SOURCE, TARGET, seed=3, taus=dict(tau_c=.8, tau_s=.4, tau_u=.5), blend=(["red"], ["blue"]),
                         num_ddim_steps=5, out=tmp_path)
    assert view.edited.seed == 3 and view.edited.grid.size == (2 * 64, 64)
    assert view.edited.attention is not None
    assert sorted(p.name.split("-", 1)[0] for p in view.files) == ["edited_img", "grid_img"]
    assert all(p.is_file() and p.parent.parent == tmp_path for p in view.files)
    with pytest.raises(sd.UsageError, match="^Seed -1 is not an integer"):
        app.generated(SOURCE, TARGET, seed=-1, taus={}, num_ddim_steps=5, out=tmp_path)
