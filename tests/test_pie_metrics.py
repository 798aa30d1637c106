"""PIE-Bench metrics: the metric functions on hand-worked images and the CLI end to end on a two-case folder,
with small random DINO / CLIP / LPIPS backbones built from configs (the real code path, offline)."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sdtoolkit.jobs.pie_data import encode_mask, load_benchmark
from sdtoolkit.cli.pie_metrics import console
from sdtoolkit.evaluation.pie_metrics import (METRICS, BackboneSettings, OutputError, PieScorer, column, dino_input,
                                              edited_panel, last_layer_keys)

SIZE = 32
TINY = ["--offline_random_weights", "--random_size", "tiny", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def scorer() -> PieScorer:
    return PieScorer(BackboneSettings(random_weights=True, random_size="tiny"), torch.device("cpu"))


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def test_edited_panel_is_the_bottom_right_square_of_a_four_panel_output():
    panels = [np.full((SIZE, SIZE, 3), v, dtype=np.uint8) for v in (255, 1, 2, 3)]
    out = np.concatenate(panels, axis=1)  # instruction | source | reconstruction | edited
    assert (edited_panel(out, (SIZE, SIZE)) == 3).all()
    assert edited_panel(panels[0], (SIZE, SIZE)) is panels[0]
    with pytest.raises(OutputError, match="edited image is 16x16, the source is 32x32"):
        edited_panel(np.zeros((16, 16, 3), np.uint8), (SIZE, SIZE))


def test_preservation_metrics_on_the_unedited_part_hand_worked(scorer):
    """Both images × (1 - mask): with a zero source and an edited image of 0.2 outside a mask of a quarter of the
    pixels, MSE = 0.2² · 3/4 over all pixels and channels (the evaluator's definition), PSNR = 10 log10(1 / MSE)."""
    source = np.zeros((SIZE, SIZE, 3), np.uint8)
    edited = np.full((SIZE, SIZE, 3), 51, np.uint8)  # 51 / 255 = 0.2
    mask = np.zeros((SIZE, SIZE))
    mask[:, : SIZE // 4] = 1
    scores = scorer.preservation(source, edited, mask)
    mse = 0.2 ** 2 * 0.75
    assert scores["mse_unedit_part"] == pytest.approx(mse, rel=1e-5)
    assert scores["psnr_unedit_part"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)
    same = scorer.preservation(edited, edited, mask)
    assert same["ssim_unedit_part"] == pytest.approx(1.0, abs=1e-6) and same["lpips_unedit_part"] == pytest.approx(0, abs=1e-6)
    assert all(math.isnan(v) for v in scorer.preservation(source, edited, np.ones((SIZE, SIZE))).values())


def test_structure_distance_uses_last_layer_keys_and_removes_its_hook(scorer):
    a, b = _image(1), _image(2)
    sim = scorer.dino_self_similarity(a)
    tokens = 1 + (224 // 8) ** 2  # CLS + 28×28 patches after the resize to 224
    assert sim.shape == (tokens, tokens)
    assert torch.allclose(sim.diagonal(), torch.ones(tokens), atol=1e-5)
    layer = scorer.dino.layers[-1]
    assert not layer.attention.k_proj._forward_hooks
    # the keys are the last layer's key projection of its layer-normed input
    with torch.no_grad(), last_layer_keys(scorer.dino) as keys:
        hidden = scorer.dino(dino_input(a), interpolate_pos_encoding=True, output_hidden_states=True).hidden_states
    assert torch.allclose(keys[0], layer.attention.k_proj(layer.layernorm_before(hidden[-2])), atol=1e-5)
    source = scorer.source_features(_case(), a)
    assert scorer.score(_case(), source, a)["structure_distance"] == 0.0
    assert scorer.score(_case(), source, b)["structure_distance"] > 0.0


def _case():
    from sdtoolkit.jobs.pie_data import PieCase

    return PieCase(key="k", index=0, image_path="x.png", original_prompt="a [cat]", editing_prompt="a [dog]",
                   editing_instruction="", editing_type_id="1", blended_word=(), mask_pairs=(40, 10),
                   image_size=(SIZE, SIZE))


def _write_folder(tmp_path):
    """Two cases (a half mask, an all-ones mask); stylediffusion outputs both, nulltext only the first."""
    data, out = tmp_path / "pie", tmp_path / "out"
    masks = {"000000000001": np.zeros((SIZE, SIZE)), "800000000002": np.ones((SIZE, SIZE))}
    masks["000000000001"][8:20, 4:24] = 1
    mapping = {}
    for seed, (key, mask) in enumerate(masks.items()):
        rel = f"{key[0]}_type/{key}.jpg"
        source = _image(seed)
        (data / "annotation_images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(source).save(data / "annotation_images" / rel)
        mapping[key] = {"image_path": rel, "original_prompt": "a [red] circle", "editing_prompt": "a [blue] circle",
                        "editing_instruction": "make it blue", "editing_type_id": key[0], "blended_word": "red blue",
                        "mask": encode_mask(mask)}
        edited = np.clip(source.astype(int) + 20, 0, 255).astype(np.uint8)
        panel = np.concatenate([np.full_like(source, 255), source, source, edited], axis=1)
        for method in ("stylediffusion", "nulltext") if seed == 0 else ("stylediffusion",):
            path = out / f"{method}+p2p" / "annotation_images" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(panel).save(path)
    (data / "mapping_file.json").write_text(json.dumps(mapping))
    return data, out


def test_cli_end_to_end_csv_nan_and_counts(tmp_path, capsys):
    data, out = _write_folder(tmp_path)
    result = tmp_path / "r.csv"
    code = console(["--data_path", str(data), "--output_path", str(out), "--methods", "stylediffusion", "nulltext",
                 "--result_path", str(result), *TINY])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = pd.read_csv(result, dtype={"file_id": str, "editing_type_id": str})
    expected = ["file_id", "editing_type_id"] + [f"{m}+p2p|{x}" for m in ("stylediffusion", "nulltext") for x in METRICS]
    assert list(table.columns) == expected
    assert list(table["file_id"]) == ["000000000001", "800000000002"]
    sd = table.set_index("file_id")
    # all-ones mask: no unedited part -> NaN; the CLIP and structure metrics stay defined
    assert math.isnan(sd.loc["800000000002", column("stylediffusion", "psnr_unedit_part")])
    assert math.isfinite(sd.loc["800000000002", column("stylediffusion", "structure_distance")])
    assert math.isfinite(sd.loc["000000000001", column("stylediffusion", "psnr_unedit_part")])
    # nulltext's second output is missing: NaN, listed and counted
    assert math.isnan(sd.loc["800000000002", column("nulltext", "clip_similarity_target_image")])
    assert "missing output (nulltext):" in captured.err and "800000000002.jpg" in captured.err
    assert "nulltext (nulltext+p2p): 1 of 2 cases scored, 1 missing output" in captured.out
    assert "stylediffusion (stylediffusion+p2p): 2 of 2 cases scored, 0 missing output" in captured.out
    summary = pd.read_csv(tmp_path / "r_summary.csv")
    row = summary[(summary["method"] == "stylediffusion") & (summary["editing_type"] == "all")].iloc[0]
    assert row["cases"] == 2 and row["n PSNR"] == 1 and row["n CLIP whole"] == 2
    psnr = sd.loc["000000000001", column("stylediffusion", "psnr_unedit_part")]
    assert row["PSNR"] == pytest.approx(psnr)
    assert row["Structure distance x10^3"] == pytest.approx(
        1e3 * sd[column("stylediffusion", "structure_distance")].mean())
    assert f"{psnr:.2f} [1]" in captured.out  # every mean says over how many cases it was taken


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    data, out = _write_folder(tmp_path)
    cases = [
        (["--data_path", str(tmp_path), "--output_path", str(out)], "no mapping_file.json"),
        (["--data_path", str(data), "--output_path", str(out), "--methods", "ddim"], "no output folder"),
        (["--data_path", str(data), "--output_path", str(out), "--edit_category_list", "11"], "'11' is not an editing type"),
        (["--data_path", str(data), "--output_path", str(out), "--edit_category_list", "5"], "selects none"),
        (["--data_path", str(data), "--output_path", str(out), "--no_such_flag"], "unrecognized arguments"),
    ]
    for argv, message in cases:
        assert _exit_code([*argv, *TINY]) == 2
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err


def _exit_code(argv: list[str]) -> int:
    """main's return value, or the status of the SystemExit that argparse raises."""
    try:
        return console(argv)
    except SystemExit as exit_:
        return int(exit_.code)


def test_cli_reports_bad_cases_and_goes_on(tmp_path, capsys):
    data, out = _write_folder(tmp_path)
    mapping = json.loads((data / "mapping_file.json").read_text())
    mapping["800000000002"]["mask"] = [1, 2, 3]
    (data / "mapping_file.json").write_text(json.dumps(mapping))
    code = console(["--data_path", str(data), "--output_path", str(out), *TINY])
    captured = capsys.readouterr()
    assert code == 0
    assert "failed case: case 800000000002: malformed mask" in captured.err
    assert "1 case(s) of the mapping file failed to read" in captured.out
    assert len(load_benchmark(data).cases) == 1
