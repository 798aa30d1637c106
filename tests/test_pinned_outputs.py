"""Every output panel and file that a metric reads, pinned by content (issue 22): PIE-Bench's 4-panel image
(instruction | source | reconstruction | edited: PnPInversion's evaluator and ours score the right-most panel),
the edit run's grid_img panels and edited_img, the CSV driver's flat input/ and edited/ copies (NS-LPIPS reads
them) and storemask's foreground / background masks.

The edit's sampling is replaced by a stub whose decoded reconstruction and edited images are two distinct known
images, so a swapped or misplaced panel shows as a pixel mismatch (short runs on the tiny model, DDIM inversion).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdtoolkit.cli import pie_bench, stylediffusion_csv
from sdtoolkit.core.images import load_image, tensor_to_pil
from sdtoolkit.core.io import case_filename
from sdtoolkit.core.models import SDModels
from sdtoolkit.core.settings import EditConfig, InvertConfig
from sdtoolkit.cli import storemask as storemask_cli
from sdtoolkit.evaluation import ns_lpips, pie_metrics, storemask
from sdtoolkit.jobs import edit as edit_job
from sdtoolkit.jobs import pie
from sdtoolkit.jobs.invert import invert, load_source
from sdtoolkit.jobs.pie_data import encode_mask, load_benchmark

REPO = Path(__file__).resolve().parent.parent
CAT = REPO / "example_images" / "cat.jpg"
SIZE = 64  # the tiny model's image size
SENTINEL = 123.0
SOURCE, TARGET = "a cat sitting on a mat", "a dog sitting on a mat"


def known_images() -> torch.Tensor:
    """Two distinct (3, 64, 64) images in [0, 1]: [0] the reconstruction (a horizontal ramp), [1] the edit (random)."""
    ramp = torch.linspace(0, 1, SIZE).view(1, 1, SIZE).expand(3, SIZE, SIZE)
    noise = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    return torch.stack([ramp, noise])


@pytest.fixture
def stub_edit(monkeypatch):
    """``edit_latents`` (PIE-Bench) and ``sweep_latents`` (the edit job, one combination here) → a sentinel latent;
    decoding the sentinel gives :func:`known_images` (everything else is decoded by the tiny VAE). Returns the list
    of (prompt, target, texts) the stub was called with."""
    calls = []

    def fake_edit_latents(models, inv, prompt, edit, taus, texts, *args, **kwargs):
        calls.append((prompt, edit.target, texts.detach().clone()))
        return torch.full((2, 4, SIZE // 2, SIZE // 2), SENTINEL)

    def fake_sweep_latents(models, inv, prompt, edit, combinations, texts, *args, **kwargs):
        assert len(combinations) == 1
        return fake_edit_latents(models, inv, prompt, edit, combinations[0], texts)

    real_decode = SDModels.decode_latent

    def decode(self, z):
        if bool((z == SENTINEL).all()):
            return known_images()
        return real_decode(self, z)

    monkeypatch.setattr(pie, "edit_latents", fake_edit_latents)
    monkeypatch.setattr(edit_job, "sweep_latents", fake_sweep_latents)
    monkeypatch.setattr(SDModels, "decode_latent", decode)
    return calls


def _pixels(image: torch.Tensor) -> np.ndarray:
    return np.asarray(tensor_to_pil(image))


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_pie_bench_four_panels_are_instruction_source_reconstruction_edited_by_content(tmp_path, tiny, stub_edit):
    """PnPInversion's runner layout: instruction text | source | reconstruction | edited; the metrics' crop of
    the right-most source-sized panel is the edited image, and the third panel the reconstruction."""
    data = tmp_path / "data"
    (data / "annotation_images" / "0_random").mkdir(parents=True)
    source = np.random.default_rng(3).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(source).save(data / "annotation_images" / "0_random" / "000000000001.png")
    mask = np.zeros((SIZE, SIZE), bool)
    mask[10:30, 10:30] = True
    (data / "mapping_file.json").write_text(json.dumps({"000000000001": {
        "image_path": "0_random/000000000001.png", "original_prompt": "a [cat] sitting on a mat",
        "editing_prompt": "a [dog] sitting on a mat", "editing_instruction": "Turn the cat into a dog",
        "editing_type_id": "1", "blended_word": "cat dog", "mask": encode_mask(mask)}}))
    out = tmp_path / "out"
    assert pie_bench.main(["--data_path", str(data), "--output_path", str(out), "--model", "tiny", "--device", "cpu",
                           "--method", "ddim", "--num_ddim_steps", "2"]) == 0
    (prompt, target, texts), = stub_edit
    assert (prompt, target) == (SOURCE, TARGET)
    torch.testing.assert_close(texts, tiny.encode_text([SOURCE, TARGET]).float(), rtol=0, atol=0)  # [source, edit]
    panels = _read(out / "ddim+p2p" / "annotation_images" / "0_random" / "000000000001.png")
    assert panels.shape == (SIZE, 4 * SIZE, 3)
    rec, edited = (_pixels(x) for x in known_images())
    blocks = [panels[:, k * SIZE:(k + 1) * SIZE] for k in range(4)]
    assert (blocks[0] == np.asarray(pie.text_panel("Turn the cat into a dog", (SIZE, SIZE)))).all()
    assert (blocks[1] == source).all()
    assert (blocks[2] == rec).all()
    assert (blocks[3] == edited).all()
    assert not (rec == edited).all()
    case, = load_benchmark(data).cases
    assert (pie_metrics.edited_panel(panels, case.image_size) == edited).all()  # what the metrics score


@pytest.fixture
def ddim_inverted(tmp_path, tiny) -> InvertConfig:
    cfg = InvertConfig(prompt=SOURCE, image_path=str(CAT), index=5, model="tiny", inversion="ddim", num_ddim_steps=2,
                       model_dir=str(tmp_path / "models"))
    invert(tiny, cfg, progress=False)
    return cfg


def test_edit_run_grid_panels_and_edited_img_by_content(tmp_path, tiny, ddim_inverted, stub_edit):
    """grid_img: source (model input) | VAE reconstruction of the source | reconstruction | edited; edited_img: the
    edited image alone (the reference's layout, docs/method.md §6)."""
    cfg = ddim_inverted
    files = edit_job.run_edit(tiny, cfg, EditConfig(target=TARGET, outdir=str(tmp_path / "e")), progress=False)
    edited_file, grid_file = files
    assert edited_file.name.startswith("edited_img-") and grid_file.name.startswith("grid_img-")
    rec, edited = (_pixels(x) for x in known_images())
    assert (_read(edited_file) == edited).all()
    grid = _read(grid_file)
    assert grid.shape == (SIZE, 4 * SIZE, 3)
    source = load_source(tiny, str(CAT))
    vae_rec = _pixels(tiny.decode_latent(source.z0)[0])
    for k, want in enumerate([np.asarray(source.pil), vae_rec, rec, edited]):
        assert (grid[:, k * SIZE:(k + 1) * SIZE] == want).all(), k


def test_csv_driver_flat_copies_are_the_model_input_and_the_edited_image(tmp_path, tiny, stub_edit, capsys):
    """stylediffusion_csv's ``input/{case} {prompt}.png`` is the model's input crop and ``edited/{case} {target}.png``
    the edited image (what NS-LPIPS compares); NS-LPIPS reads them back as those images."""
    rows = [{"case_number": "4", "prompt": SOURCE, "image_path": str(CAT), "target": TARGET, "blend_word": "",
             "eq_params": "", "tau_v": "[.5,]", "tau_c": "[.6,]", "tau_s": "[.6,]", "tau_u": "[.0,]",
             "edit_type": "Replacement"}]
    path = tmp_path / "cases.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    common = ["--prompts_path", str(path), "--model", "tiny", "--device", "cpu", "--inversion", "ddim",
              "--num_ddim_steps", "2", "--model_dir", str(tmp_path / "m"), "--save_path", str(tmp_path / "r")]
    assert stylediffusion_csv.main(["--is_train", "True", *common]) == 0
    assert stylediffusion_csv.main(["--is_train", "", *common]) == 0
    base = tmp_path / "r" / "cases"
    rec, edited = (_pixels(x) for x in known_images())
    assert (_read(base / "edited" / case_filename(4, TARGET)) == edited).all()
    assert (_read(base / "input" / case_filename(4, SOURCE)) == np.asarray(load_image(CAT, SIZE))).all()
    files = ns_lpips.case_files(ns_lpips.Case("4", SOURCE, TARGET), base / "input", base / "edited", base / "bg")
    torch.testing.assert_close(ns_lpips.load_rgb(files.edited), ns_lpips.load_rgb(base / "edited" /
                                                                                 case_filename(4, TARGET)))
    assert files.input == base / "input" / case_filename(4, SOURCE)


def test_storemask_writes_the_attention_mask_as_foreground_and_its_complement_as_background(tmp_path, tiny):
    """storemask (corrected mode): fgmask = round(255 · m), bgmask = round(255 · (1 − m)), m the blend word's
    normalised inversion attention map (:func:`storemask.attention_mask`); NS-LPIPS reads bgmask as 1 − m."""
    inputs = tmp_path / "input"
    inputs.mkdir()
    Image.open(CAT).convert("RGB").resize((SIZE, SIZE)).save(inputs / case_filename(2, SOURCE))
    path = tmp_path / "cases.csv"
    path.write_text(f'case_number,prompt,blend_word\n2,{SOURCE},"[(\'cat\',),(\'dog\',)]"\n')
    fg_dir, bg_dir = tmp_path / "fg", tmp_path / "bg"
    assert storemask_cli.main(["--prompts_path", str(path), "--input_path", str(inputs), "--fgmask_path", str(fg_dir),
                           "--bgmask_path", str(bg_dir), "--model", "tiny", "--device", "cpu",
                           "--num_ddim_steps", "2"]) == 0
    m = storemask.attention_mask(tiny, inputs / case_filename(2, SOURCE), SOURCE, ("cat",), num_steps=2).numpy()
    assert m.shape == (256, 256) and m.max() > 0.99 and m.max() - m.min() > 0.02  # a map, not a constant
    with Image.open(fg_dir / case_filename(2, SOURCE)) as fg, Image.open(bg_dir / case_filename(2, SOURCE)) as bg:
        assert fg.mode == bg.mode == "L"
        fg, bg = np.asarray(fg).astype(int), np.asarray(bg).astype(int)
    assert (fg == np.floor(m * 255 + 0.5)).all()
    assert (bg == np.floor((1 - m) * 255 + 0.5)).all()
    read = ns_lpips.load_mask(bg_dir / case_filename(2, SOURCE))[0].numpy()
    assert np.abs(read - (1 - m)).max() <= 1 / 255 + 1e-6
