"""Toy-world benchmark: the toy model's geometry, the pure scoring functions and a smoke run."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from eval_metrics import toy_bench as tb
from sdtoolkit.core.attention import map_layers, map_resolution
from toyworld.scenes import PALETTE, render


# ---------------------------------------------------------------------------------------------- the toy model

def test_toy_model_geometry_and_map_layers():
    if not tb.REPO_ROOT.joinpath("toy_model", "unet").is_dir():
        pytest.skip("toy_model/ is not here")
    from sdtoolkit.core.models import load_models

    models = load_models("toy", device="cpu", dtype="fp32")
    assert models.model_id == "toy"
    assert models.image_size == 64 and models.latent_size == 16
    layers = models.layers()
    cross = [l for l in layers if l.is_cross and l.place in ("down", "up")]
    coarsest = min(l.resolution for l in cross)
    maps = map_layers(layers)
    assert maps and all(l.is_cross and l.place in ("down", "up") for l in maps)
    assert {l.resolution for l in maps} == {coarsest} == {map_resolution(layers)}
    # derived from the latent: cross-attention sits at 16×16 and 8×8, so the "16×16 maps" of SD are 8×8 here
    assert {l.resolution for l in cross} == {16, 8} and coarsest == models.latent_size // 2
    assert len(maps) == sum(1 for l in cross if l.resolution == coarsest)


# ---------------------------------------------------------------------------------------------- pure scoring

def _solid(rgb, size=16):
    return np.tile(np.asarray(rgb, dtype=np.uint8), (size, size, 1))


def test_psnr_identical_infinite_and_masked():
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    assert tb.psnr(img, img) == math.inf
    other = img.copy()
    other[:8] = 255 - other[:8]
    top = np.zeros((16, 16), bool)
    top[:8] = True
    assert tb.psnr(img, other, ~top) == math.inf  # only the bottom half is compared, and it is unchanged
    assert tb.psnr(img, other, top) < 20
    assert math.isnan(tb.psnr(img, other, np.zeros((16, 16), bool)))
    # known value: every pixel off by 0.1 → 20 dB
    a, b = np.zeros((4, 4, 3)), np.full((4, 4, 3), 0.1)
    assert tb.psnr(a, b) == pytest.approx(20.0)


def test_colour_success_true_and_false():
    mask = np.ones((16, 16), bool)
    assert tb.colour_success(_solid(PALETTE["blue"]), mask, "red", "blue")
    assert not tb.colour_success(_solid(PALETTE["red"]), mask, "red", "blue")
    # a muddy mix nearer red than blue fails; nearer blue passes
    assert not tb.colour_success(_solid((180, 40, 60)), mask, "red", "blue")
    assert tb.colour_success(_solid((60, 70, 190)), mask, "red", "blue")
    # only the masked pixels count
    img = _solid(PALETTE["red"])
    img[:4, :4] = PALETTE["blue"]
    corner = np.zeros((16, 16), bool)
    corner[:4, :4] = True
    assert tb.colour_success(img, corner, "red", "blue") and not tb.colour_success(img, ~corner, "red", "blue")


def test_dilate_erode_and_preservation_mask():
    m = np.zeros((11, 11), bool)
    m[5, 5] = True
    d1 = tb.dilate(m, 1)
    assert d1.sum() == 5 and d1[4, 5] and d1[5, 4] and not d1[4, 4]  # disc of radius 1 = plus sign
    d2 = tb.dilate(m, 2)
    assert d2.sum() == 13  # radius-2 disc: 13 pixels
    assert (tb.dilate(m, 0) == m).all()
    assert (tb.erode(tb.dilate(m, 2), 2) == m).all()
    # object edit: preserve everything outside the edited object's dilated mask (the other object included)
    obj = np.zeros((20, 20), bool)
    obj[5:10, 5:10] = True
    other = np.zeros((20, 20), bool)
    other[12:16, 12:16] = True
    keep = tb.preservation_mask("colour", [obj, other], [obj, other], dilate_px=2)
    assert not keep[obj].any() and not keep[4, 7] and not keep[3, 7] and keep[2, 7]
    assert keep[other].all()
    # shape edit: both the source and the target shape are excluded
    new = np.zeros((20, 20), bool)
    new[4:11, 7:8] = True
    keep = tb.preservation_mask("shape", [obj, other], [new, other], dilate_px=1)
    assert not keep[obj].any() and not keep[new].any() and not keep[3, 7] and keep[2, 7]
    # background edit: inside the objects (eroded by one pixel)
    keep = tb.preservation_mask("background", [obj, other], [obj, other], dilate_px=3)
    assert keep[7, 7] and not keep[5, 5] and keep[13, 13] and not keep[0, 0] and keep.sum() == 9 + 4


def test_shape_scores_on_hand_made_shapes():
    size = 32
    yy, xx = np.mgrid[:size, :size]
    circle = (xx - 16) ** 2 + (yy - 16) ** 2 <= 8 ** 2
    square = (abs(xx - 16) <= 6) & (abs(yy - 16) <= 6)
    img = _solid(PALETTE["white"], size)
    img[square] = PALETTE["red"]
    i_tgt, i_src, ok = tb.shape_scores(img, "red", circle, square)
    assert ok and i_tgt == pytest.approx(1.0) and i_src < 1.0
    i_tgt, i_src, ok = tb.shape_scores(img, "red", square, circle)  # the source shape was kept: failure
    assert not ok and i_src == pytest.approx(1.0)
    empty = _solid(PALETTE["white"], size)  # the object vanished: failure, not an error
    assert tb.shape_scores(empty, "red", circle, square)[2] is False


def test_score_edit_on_ground_truth_scenes(tmp_path):
    """On the renders themselves: the edited scene's ground truth passes every test, the source fails,
    and the preservation region is unchanged (inf PSNR, or > 45 dB inside antialiased objects)."""
    for k in range(12):
        scene = tb.make_scene(k, tb.scene_seed(0, k), 64, tmp_path, "word", "none")
        assert scene.path.is_file() and {c.kind for c in scene.edits} == {"colour", "shape", "background"}
        for case in scene.edits:
            args = (scene.scene, case.scene, scene.masks, case.masks, case.source_word, case.target_word)
            assert tb.score_edit(case.kind, case.image, *args)["success"] is True, (k, case.kind)
            assert tb.score_edit(case.kind, scene.image, *args)["success"] is False, (k, case.kind)
            if case.kind != "shape":
                assert tb.score_edit(case.kind, case.image, *args)["exact"] is True
                assert tb.score_edit(case.kind, scene.image, *args)["exact"] is False
            else:
                assert tb.score_edit(case.kind, case.image, *args)["colour_kept"] is True
            keep = tb.preservation_mask(case.kind, scene.masks, case.masks)
            assert tb.psnr(case.image, scene.image, keep) > 45
            assert case.target_prompt.split().count(case.target_word) == 1
            if case.kind == "background":
                assert case.blend is None
            else:
                assert case.blend == ((case.source_word,), (case.target_word,))


def test_blend_words_choices():
    assert tb.blend_words("colour", "red", "blue", "word", "none") == (("red",), ("blue",))
    assert tb.blend_words("shape", "star", "circle", "none", "none") is None
    assert tb.blend_words("background", "white", "red", "word", "background") == (("background",), ("background",))
    assert tb.blend_words("background", "white", "red", "word", "word") == (("white",), ("red",))
    assert tb.blend_words("background", "white", "red", "word", "both") == (("white", "background"), ("red", "background"))


def test_scene_seeds_are_held_out():
    from toyworld.scenes import HELDOUT_SEED_START

    assert tb.scene_seed(0, 0) == HELDOUT_SEED_START and tb.scene_seed(2, 3) == HELDOUT_SEED_START + 20_003


def test_masked_lpips_zero_for_identical_region():
    import torch

    loss_fn, backbone = tb.build_bench_lpips("random", torch.device("cpu"))
    assert backbone == "random"
    img = np.asarray(render(tb.scene_from_seed(tb.scene_seed(0, 0)), 64)[0])
    other = img.copy()
    other[:, :20] = 0
    keep = np.zeros((64, 64), bool)
    keep[:, 32:] = True
    assert tb.masked_lpips(loss_fn, img, other, keep) == pytest.approx(0.0, abs=1e-6)
    assert tb.masked_lpips(loss_fn, img, other, ~keep) > 0


# ---------------------------------------------------------------------------------------------- smoke run

def test_smoke_run_tiny(tmp_path, capsys):
    out = tmp_path / "bench"
    rc = tb.main(["--model", "tiny", "--n", "1", "--steps", "4", "--inner", "1", "--methods", "ddim,npi",
                  "--out", str(out), "--device", "cpu", "--no_progress"])
    assert rc == 0
    table = pd.read_csv(out / tb.CSV_NAME)
    assert len(table) == 1 * 2 * 3
    assert set(table["method"]) == {"ddim", "npi"} and set(table["kind"]) == {"colour", "shape", "background"}
    assert (table["scene_seed"] == tb.scene_seed(0, 0)).all()
    for col in ("recon_psnr", "vae_psnr", "preserve_psnr", "preserve_lpips"):
        assert table[col].notna().all(), col
    assert set(table["lpips_backbone"]) <= {"imagenet", "random"}
    md = (out / tb.MD_NAME).read_text()
    assert "| method | kind |" in md and md.count("| ddim |") == 3 and md.count("| npi |") == 3
    assert "| method | kind |" in capsys.readouterr().out
    assert len(list((out / "images").glob("*.png"))) == 2
    assert not list(out.glob(".*"))  # no temp files of the atomic writes left behind
