"""Toy-world ground-truth scores (evaluation.toy_scores) on hand-made images and on the toy PIE-Bench's own ground
truth, and the toy model's geometry (what the former toy benchmark's tests checked)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from sdtoolkit.core.attention import map_layers, map_resolution
from sdtoolkit.core.models import TOY_MODEL_DIR
from sdtoolkit.evaluation import toy_scores as ts
from toyworld.pie_bench import GROUND_TRUTH_FILE, write_toy_pie_bench
from toyworld.scenes import HELDOUT_SEED_START


def test_toy_model_geometry_and_map_layers():
    if not (TOY_MODEL_DIR / "unet").is_dir():
        pytest.skip("toy_model/ is not here")
    from sdtoolkit.core.models import load_models

    models = load_models("toy", device="cpu", dtype="fp32")
    assert models.image_size == 64 and models.latent_size == 16
    layers = models.layers()
    cross = [l for l in layers if l.is_cross and l.place in ("down", "up")]
    maps = map_layers(layers)
    # cross-attention sits at 16×16 and 8×8, so the "16×16 maps" of SD are 8×8 here
    assert {l.resolution for l in cross} == {16, 8} and {l.resolution for l in maps} == {8} == {map_resolution(layers)}


def test_psnr_identical_masked_and_known_value():
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    assert ts.psnr(img, img) == 100.0  # identical: counted as 100 dB
    other = img.copy()
    other[:8] = 255 - other[:8]
    top = np.zeros((16, 16), bool)
    top[:8] = True
    assert ts.psnr(img, other, ~top) == 100.0 and ts.psnr(img, other, top) < 20
    assert math.isnan(ts.psnr(img, other, np.zeros((16, 16), bool)))
    a, b = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 51, np.uint8)  # 0.2 everywhere: 10 log10(1/0.04)
    assert ts.psnr(a, b) == pytest.approx(10 * math.log10(1 / 0.04))


def test_dilate_and_erode():
    m = np.zeros((9, 9), bool)
    m[4, 4] = True
    assert ts.dilate(m, 1).sum() == 5 and ts.dilate(m, 0).sum() == 1
    assert ts.erode(ts.dilate(m, 2), 2)[4, 4] and ts.erode(m, 1).sum() == 0


@pytest.fixture(scope="module")
def toy_bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_pie")
    write_toy_pie_bench(root, n=3)
    return root, json.loads((root / GROUND_TRUTH_FILE).read_text())


def _read(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_ground_truth_target_succeeds_and_the_source_fails(toy_bench):
    """The rendered target scene passes every edit's test with perfect preservation; the unedited source fails."""
    root, truth = toy_bench
    assert all(t["seed"] >= HELDOUT_SEED_START for t in truth.values())
    mapping = json.loads((root / "mapping_file.json").read_text())
    for key, t in truth.items():
        source = _read(root / "annotation_images" / mapping[key]["image_path"])
        target = _read(root / t["target_image"])
        good = ts.score_case(t, source, source, target)
        assert good["success"] == 1.0 and good["recon_psnr"] == 100.0, (key, t["kind"])
        assert good["preserve_psnr"] > 40, (key, t["kind"], good)
        assert ts.score_case(t, source, source, source)["success"] == 0.0, (key, t["kind"])
        if t["kind"] == "shape":
            assert good["colour_kept"] == 1.0 and math.isnan(good["exact"])
        else:
            assert good["exact"] == 1.0


def test_panels_and_summary(toy_bench):
    out = np.concatenate([np.full((8, 8, 3), v, np.uint8) for v in (255, 1, 2, 3)], axis=1)
    rec, edited = ts.panels(out, (8, 8))
    assert (rec == 2).all() and (edited == 3).all()
    with pytest.raises(ValueError):
        ts.panels(out[:4], (8, 8))
    import pandas as pd

    table = pd.DataFrame([{"method": "a", "file_id": "1", "kind": "colour", "recon_psnr": 30.0, "success": 1.0,
                           "exact": 0.0, "colour_kept": math.nan, "preserve_psnr": 20.0},
                          {"method": "a", "file_id": "2", "kind": "shape", "recon_psnr": 20.0, "success": 0.0,
                           "exact": math.nan, "colour_kept": 1.0, "preserve_psnr": 30.0}])
    summary = ts.summarise(table)
    assert list(summary["kind"]) == ["all", "colour", "shape"] and summary.loc[0, "recon_psnr"] == 25.0
    assert "| a | all | 2 | 25.0 | 50 % | 0 % | 100 % | 25.0 |" in ts.markdown(summary)
