"""PIE-Bench runner end to end on the tiny random model: outputs, resume, bad cases, user masks, then the metrics."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sdtoolkit.cli.pie_bench import main
from sdtoolkit.core.models import load_models
from sdtoolkit.core.settings import EditConfig, InversionMethod, InvertConfig, Taus
from sdtoolkit.core.words import word_spans
from sdtoolkit.jobs.edit import edit_latents
from sdtoolkit.jobs.invert import invert, load_inversion, load_source
from sdtoolkit.jobs.pie import ReplacementRule, choose_edit_type
from sdtoolkit.jobs.pie_data import encode_mask
from sdtoolkit.cli.pie_metrics import console as metrics_main

SIZE = 64  # the tiny model's image size
FAST = ["--model", "tiny", "--device", "cpu", "--num_ddim_steps", "3", "--num_inner_steps", "1"]


def _mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[16:40, 20:44] = True
    return mask


def write_folder(root, cases: dict[str, dict]) -> None:
    """A PIE-Bench folder: mapping_file.json and a random image per case (unless the case says image=False)."""
    mapping = {}
    for k, (key, case) in enumerate(cases.items()):
        path = f"0_random/{key}.png"
        if case.pop("image", True):
            img = np.random.default_rng(k).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            (root / "annotation_images" / "0_random").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "annotation_images" / path)
        mapping[key] = {"image_path": path, "original_prompt": "a [cat] sitting on a mat",
                        "editing_prompt": "a [dog] sitting on a mat", "editing_instruction": "Turn the cat into a dog",
                        "editing_type_id": "1", "blended_word": "cat dog", "mask": encode_mask(_mask()), **case}
    root.mkdir(parents=True, exist_ok=True)
    (root / "mapping_file.json").write_text(json.dumps(mapping))


@pytest.fixture
def two_cases(tmp_path):
    data = tmp_path / "data"
    write_folder(data, {"000000000001": {}, "000000000002": {"editing_prompt": "a [small black] dog sitting on a mat",
                                                             "editing_type_id": "0"}})
    return data


def test_runner_writes_four_panels_manifest_and_resumes_without_redoing_anything(two_cases, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--data_path", str(two_cases), "--output_path", str(out), *FAST]) == 0
    folder = out / "stylediffusion+p2p"
    images = sorted((folder / "annotation_images" / "0_random").glob("*.png"))
    assert [p.name for p in images] == ["000000000001.png", "000000000002.png"]
    with Image.open(images[0]) as im:
        assert im.size == (4 * SIZE, SIZE)  # instruction | source | reconstruction | edited
        panels = np.asarray(im)
    with Image.open(two_cases / "annotation_images" / "0_random" / "000000000001.png") as src:
        assert (panels[:, SIZE:2 * SIZE] == np.asarray(src)).all()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["settings"]["track"] == "mask-free" and manifest["model_fingerprint"].startswith("tiny")
    assert {"torch", "diffusers", "transformers"} <= set(manifest["versions"]) and manifest["settings"]["seed"] == 0
    sides = {p.stem: json.loads(p.read_text()) for p in (folder / "cases").glob("*.json")}
    assert sides["000000000001"]["edit_type"] == "Replacement" and sides["000000000002"]["edit_type"] == "Refinement"
    assert sides["000000000001"]["target_prompt"] == "a dog sitting on a mat"  # brackets removed
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"}
    capsys.readouterr()
    assert main(["--data_path", str(two_cases), "--output_path", str(out), *FAST]) == 0
    assert "0 done, 2 skipped, 0 failed" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten
    # a second editing setting reuses the inversions: nothing is inverted again
    out2 = tmp_path / "out2"
    assert main(["--data_path", str(two_cases), "--output_path", str(out2), "--inversion_dir", str(out / "inversions"),
                 "--tau_c", "0.4", *FAST]) == 0
    assert not any(json.loads(p.read_text())["inverted_now"] for p in (out2 / "stylediffusion+p2p" / "cases").glob("*.json"))
    # the metrics read the outputs (random tiny backbones, offline)
    csv = tmp_path / "m.csv"
    assert metrics_main(["--data_path", str(two_cases), "--output_path", str(out), "--methods", "stylediffusion",
                         "--result_path", str(csv), "--offline_random_weights", "--random_size", "tiny",
                         "--device", "cpu", "--quiet"]) == 0
    table = pd.read_csv(csv)
    assert len(table) == 2 and table["stylediffusion+p2p|psnr_unedit_part"].notna().all()


def test_bad_cases_fail_alone_named_and_counted(tmp_path, capsys):
    data = tmp_path / "data"
    write_folder(data, {
        "000000000001": {},
        "000000000002": {"image": False},  # missing image
        "000000000003": {"mask": [5, -3]},  # malformed mask
        "000000000004": {"original_prompt": "a cat sitting on a mat"},  # no bracketed word to blend on
    })
    code = main(["--data_path", str(data), "--output_path", str(tmp_path / "o"), "--blend_from_brackets", *FAST])
    out = capsys.readouterr().out
    assert code == 1 and "1 done, 0 skipped, 3 failed" in out
    assert "000000000002" in out and "does not exist" in out
    assert "000000000003" in out and "malformed mask" in out
    assert "case 000000000004: the original prompt 'a cat sitting on a mat' has no [bracketed] word" in out


def test_folder_without_mapping_file_and_nothing_runnable_exit_2(tmp_path, capsys):
    from sdtoolkit.cli.pie_bench import console
    import sys

    sys_argv = sys.argv
    try:
        sys.argv = ["pie_bench.py", "--data_path", str(tmp_path), "--output_path", str(tmp_path / "o"), *FAST]
        assert console() == 2
    finally:
        sys.argv = sys_argv
    assert "mapping_file.json" in capsys.readouterr().err
    data = tmp_path / "data"
    write_folder(data, {"000000000001": {"image": False}})
    assert main(["--data_path", str(data), "--output_path", str(tmp_path / "o"), *FAST]) == 2


def test_replacement_rules(tmp_path):
    tok = load_models("tiny", "cpu").tokenizer
    assert choose_edit_type("a cat", "a dog", ReplacementRule.WORDS, tok).value == "Replacement"
    assert choose_edit_type("a cat", "a big dog", ReplacementRule.WORDS, tok).value == "Refinement"
    # the published runner compares characters: same word count, other length -> Refinement
    assert choose_edit_type("a cat", "a tiger", ReplacementRule.CHAR_LENGTH, tok).value == "Refinement"
    assert choose_edit_type("a cat", "a dog", ReplacementRule.CHAR_LENGTH, tok).value == "Replacement"
    assert len(word_spans("a cat", tok)) == 2


def test_user_blend_mask_changes_the_edit_only_inside_the_mask(tmp_path):
    """With a user mask the edited latent equals the reconstruction outside the mask's latent cells, and differs inside."""
    models = load_models("tiny", "cpu")
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(image)
    cfg = InvertConfig(prompt="a cat sitting on a mat", image_path=str(image), model="tiny", num_ddim_steps=3,
                       num_inner_steps=1, inversion=InversionMethod.NULLTEXT, model_dir=str(tmp_path))
    invert(models, cfg, progress=False)
    source = load_source(models, str(image))
    null = models.encode_text([""]).float()
    texts = models.encode_text([cfg.prompt, "a dog sitting on a mat"]).float()
    inv, _ = load_inversion(models, cfg, source, texts[:1], null)
    edit = EditConfig(target="a dog sitting on a mat")
    taus = Taus(0.5, 0.6, 0.6, 0.0)
    mask = torch.from_numpy(_mask().astype(np.float32))
    z = edit_latents(models, inv, cfg.prompt, edit, taus, texts, 3, blend_mask=mask)
    cells = torch.nn.functional.interpolate(mask[None, None], size=z.shape[2:], mode="area")[0, 0] > 0
    diff = (z[1] - z[0]).abs().sum(0)  # (h, w)
    assert diff[~cells].max() == 0 and diff[cells].max() > 0
    # the stylediffusion.py flag loads a mask image the same way
    mask_png = tmp_path / "mask.png"
    Image.fromarray(_mask().astype(np.uint8) * 255).save(mask_png)
    from sdtoolkit.core.images import load_mask

    assert torch.equal(load_mask(mask_png, SIZE), mask)


def test_use_annotation_mask_keeps_the_edit_inside_the_annotation(two_cases, tmp_path):
    out = tmp_path / "o"
    assert main(["--data_path", str(two_cases), "--output_path", str(out), "--use_annotation_mask", "--end_case", "1",
                 *FAST]) == 0
    side = json.loads((out / "stylediffusion+p2p" / "cases" / "000000000001.json").read_text())
    assert side["settings"]["track"] == "mask-allowed"
