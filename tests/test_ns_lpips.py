"""NS-LPIPS: the metric on synthetic images (random-weight LPIPS, offline) and the command line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sdtoolkit.cli.ns_lpips import console as main
from sdtoolkit.evaluation.ns_lpips import build_lpips, load_case_images, ns_lpips
from sdtoolkit.core.io import case_filename

REPO_ROOT = Path(__file__).resolve().parent.parent
SIZE = 64  # ns_lpips takes any size; small images keep the tests fast (the loader's 256 is tested apart)
MODES = ("reference", "corrected")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub downloads in these tests."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def loss_fn() -> torch.nn.Module:
    """LPIPS-AlexNet with random backbone weights (fixed seed) and the shipped linear layers."""
    return build_lpips("alex", random_weights=True, device=torch.device("cpu"))


def random_image(seed: int) -> torch.Tensor:
    """A smooth-ish random RGB image (3, SIZE, SIZE) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, SIZE // 8, SIZE // 8, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]


def half_mask() -> torch.Tensor:
    """Background mask (1, SIZE, SIZE): left half background (1), right half selected foreground (0)."""
    mask = torch.zeros(1, SIZE, SIZE)
    mask[..., : SIZE // 2] = 1.0
    return mask


def paste(image: torch.Tensor, other: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``image`` with the pixels where ``region`` is 1 taken from ``other``."""
    return image * (1 - region) + other * region


@pytest.mark.parametrize("mode", MODES)
def test_identical_images_score_zero(loss_fn: torch.nn.Module, mode: str) -> None:
    image = random_image(0)
    assert ns_lpips(loss_fn, image, image.clone(), half_mask(), mode) == pytest.approx(0.0, abs=1e-7)
    assert ns_lpips(loss_fn, image, image.clone(), torch.ones(1, SIZE, SIZE), mode) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("mode", MODES)
def test_background_change_raises_score(loss_fn: torch.nn.Module, mode: str) -> None:
    image, mask = random_image(0), half_mask()
    slightly = paste(image, (image + 0.05).clamp(0, 1), mask)
    strongly = paste(image, random_image(1), mask)
    assert ns_lpips(loss_fn, image, slightly, mask, mode) > 1e-4
    assert ns_lpips(loss_fn, image, strongly, mask, mode) > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_foreground_change_is_ignored(loss_fn: torch.nn.Module, mode: str) -> None:
    image, mask = random_image(0), half_mask()
    edited = paste(image, random_image(2), 1 - mask)
    assert not torch.equal(edited, image)
    assert ns_lpips(loss_fn, image, edited, mask, mode) == pytest.approx(0.0, abs=1e-6)


def test_modes_feed_lpips_as_documented(loss_fn: torch.nn.Module) -> None:
    image, other, mask = random_image(0), random_image(3), half_mask()
    with torch.no_grad():
        reference = loss_fn((image * mask)[None], (other * mask)[None]).item()
        corrected = loss_fn((image * mask)[None] * 2 - 1, (other * mask)[None] * 2 - 1).item()
    assert ns_lpips(loss_fn, image, other, mask, "reference") == pytest.approx(reference, rel=1e-6)
    assert ns_lpips(loss_fn, image, other, mask, "corrected") == pytest.approx(corrected, rel=1e-6)
    with pytest.raises(ValueError):
        ns_lpips(loss_fn, image, other, mask, "other")


def test_load_case_images_resizes_and_scales(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    Image.fromarray(rng.integers(0, 256, (300, 310), dtype=np.uint8)).convert("RGB").save(tmp_path / "ed.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, :32] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    source, edited, bg = load_case_images(tmp_path / "in.png", tmp_path / "ed.png", tmp_path / "mask.png")
    assert source.shape == edited.shape == (3, 256, 256)
    assert bg.shape == (1, 256, 256)
    for tensor in (source, edited, bg):
        assert tensor.dtype == torch.float32 and tensor.min() >= 0 and tensor.max() <= 1
    assert bg[0, :, :100].min() == 1 and bg[0, :, 160:].max() == 0


def to_png(image: torch.Tensor, path: Path) -> None:
    """Save a (C, H, W) tensor in [0, 1] as an 8-bit PNG."""
    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(path)


CASES = ((3, "a photo of a cat", "a photo of a tiger"), (7, "a cup of coffee", "a cup of tea"))


@pytest.fixture()
def workspace(tmp_path: Path) -> dict[str, Path]:
    """An editing CSV with two cases and their input, edited (background changed) and mask files."""
    folders = {name: tmp_path / "results" / name for name in ("input", "ours", "bgmask")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for seed, (case, prompt, target) in enumerate(CASES):
        image = random_image(10 + seed)
        to_png(image, folders["input"] / case_filename(case, prompt))
        to_png(image, folders["input"] / case_filename(case, prompt, ".jpg"))  # what --mode reference reads
        to_png(paste(image, random_image(20 + seed), half_mask()), folders["ours"] / case_filename(case, target))
        to_png(half_mask(), folders["bgmask"] / case_filename(case, prompt))
    table = pd.DataFrame(
        {
            "case_number": [c[0] for c in CASES],
            "prompt": [c[1] for c in CASES],
            "image_path": "",
            "url": "",
            "target": [c[2] for c in CASES],
        }
    )
    table.to_csv(tmp_path / "editing.csv")
    return {"csv": tmp_path / "editing.csv", **folders, "root": tmp_path}


def cli_args(ws: dict[str, Path], *extra: str) -> list[str]:
    """Command-line arguments for the workspace."""
    return [
        "--prompts_path", str(ws["csv"]), "--input_path", str(ws["input"]), "--edited_path", str(ws["ours"]),
        "--mask_path", str(ws["bgmask"]), "--offline_random_weights", "--device", "cpu", *extra,
    ]


def test_cli_end_to_end_as_script(workspace: dict[str, Path]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    script = REPO_ROOT / "eval_metrics" / "ns_lpips.py"
    result = subprocess.run(
        [sys.executable, str(script), *cli_args(workspace, "--mode", "reference")],
        cwd=REPO_ROOT / "eval_metrics", env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "scored 2 of 2 cases" in result.stdout
    assert "mode: reference" in result.stdout
    out = workspace["root"] / "results" / "ns_lpips_reference.csv"
    table = pd.read_csv(out)
    assert list(table.columns) == ["case_number", "prompt", "target", "ns_lpips"]
    assert table["case_number"].tolist() == [3, 7]
    assert (table["ns_lpips"] > 0).all()


def test_cli_writes_csv_and_prints_count(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = workspace["root"] / "scores.csv"
    assert main(cli_args(workspace, "--out", str(out), "--from_case", "7", "--end_case", "8")) == 0
    stdout = capsys.readouterr().out
    assert "scored 1 of 1 cases" in stdout and "mode: corrected" in stdout
    table = pd.read_csv(out)
    assert table["case_number"].tolist() == [7] and table["target"].tolist() == ["a cup of tea"]


def test_missing_edited_file_fails_then_allow_missing_scores_rest(
    workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    gone = workspace["ours"] / case_filename(3, "a photo of a tiger")
    gone.unlink()
    out = workspace["root"] / "scores.csv"
    assert main(cli_args(workspace, "--out", str(out))) == 1
    captured = capsys.readouterr()
    assert str(gone) in captured.err
    assert "scored 0 of 2 cases" in captured.out
    assert not out.exists()

    assert main(cli_args(workspace, "--out", str(out), "--allow_missing")) == 0
    captured = capsys.readouterr()
    assert str(gone) in captured.err
    assert "scored 1 of 2 cases" in captured.out
    assert pd.read_csv(out)["case_number"].tolist() == [7]


def test_csv_missing_column_exits_2(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pd.read_csv(workspace["csv"], index_col=0).drop(columns="target").to_csv(workspace["csv"])
    assert main(cli_args(workspace)) == 2
    err = capsys.readouterr().err
    assert "target" in err and "case_number" in err and "Traceback" not in err


def test_empty_csv_and_empty_case_range_exit_2(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(cli_args(workspace, "--from_case", "100")) == 2
    assert "selects no case" in capsys.readouterr().err
    workspace["csv"].write_text("")
    assert main(cli_args(workspace)) == 2
    assert "empty" in capsys.readouterr().err


def test_reference_mode_loads_as_the_published_script(tmp_path: Path) -> None:
    """Reference behaviour: ``transforms.Resize((256, 256))`` + ``ToTensor()`` on PIL images (bilinear), the mask
    read as RGB and made gray on the tensor by ``transforms.Grayscale()``."""
    from torchvision import transforms

    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)).save(tmp_path / "in.jpg")
    Image.fromarray(rng.integers(0, 256, (300, 310, 3), dtype=np.uint8)).save(tmp_path / "ed.png")
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "mask.png")
    published = transforms.Compose([transforms.Resize((256, 256)), transforms.ToTensor()])

    def read(path: Path) -> torch.Tensor:
        return published(Image.open(path).convert("RGB"))

    source, edited, bg = load_case_images(tmp_path / "in.jpg", tmp_path / "ed.png", tmp_path / "mask.png", "reference")
    torch.testing.assert_close(source, read(tmp_path / "in.jpg"), atol=1e-6, rtol=0)
    torch.testing.assert_close(edited, read(tmp_path / "ed.png"), atol=1e-6, rtol=0)
    torch.testing.assert_close(bg, transforms.Grayscale()(read(tmp_path / "mask.png")), atol=1e-5, rtol=0)
    corrected = load_case_images(tmp_path / "in.jpg", tmp_path / "ed.png", tmp_path / "mask.png")
    assert (corrected[0] - source).abs().max() > 0.01  # the corrected mode resizes bicubically


def test_reference_mode_reads_jpg_inputs(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    jpg = workspace["input"] / case_filename(3, "a photo of a cat", ".jpg")
    jpg.unlink()
    assert main(cli_args(workspace, "--mode", "reference", "--allow_missing")) == 0
    captured = capsys.readouterr()
    assert str(jpg) in captured.err and "scored 1 of 2 cases" in captured.out
