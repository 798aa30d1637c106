"""NS-LPIPS: LPIPS between input and edited image on the non-selected (background) region (docs/method.md §7).

For each case of an editing CSV the input image ``{input_path}/{case} {prompt}.png``, the edited image
``{edited_path}/{case} {target}.png`` and the background mask ``{mask_path}/{case} {prompt}.png``
(8-bit grayscale, 255 = fully non-selected background, any size) are loaded; the images are resized to
256×256 (bicubic), the mask too (bilinear) and scaled to [0, 1]. Both images are multiplied by the soft
mask and compared with LPIPS-AlexNet. NS-LPIPS is the mean over the scored cases; lower is better.

Modes:

* ``reference`` reproduces the published script: inputs ``{case} {prompt}.jpg``; images and the mask
  (as RGB) resized to 256×256 with PIL's bilinear filter (torchvision's ``Resize`` on PIL images), the mask
  made gray from the resized RGB tensor (0.2989 R + 0.587 G + 0.114 B); the masked images, in [0, 1], go to
  LPIPS as they are although LPIPS expects [-1, 1]. The published script thresholds the mask at 0.5 and then
  uses the soft mask anyway, so the threshold has no effect; here the soft mask is used directly.
* ``corrected`` (default): inputs ``{case} {prompt}.png`` (what the CSV driver writes), images resized
  bicubically, the mask made 8-bit gray and resized bilinearly; the images are masked in [0, 1] and only
  then mapped to [-1, 1] (x -> 2x - 1), the range LPIPS expects. Masking before the transform gives every
  masked-out pixel the same value (-1) in both images, so only the non-selected region decides the score.

Unlike the published script, files missing for a case are listed and counted (the run fails unless
``--allow_missing``), never skipped silently, and ``--end_case`` is exclusive (as the reference).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import lpips
import numpy as np
import torch
from PIL import Image

from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.images import to_rgb
from sdtoolkit.core.io import case_filename
from sdtoolkit.jobs.cases import read_cases

REPO_ROOT = Path(__file__).resolve().parents[2]  # defaults live here, wherever the script is run from
IMAGE_SIZE = 256
MODES = ("reference", "corrected")
REQUIRED_COLUMNS = ("case_number", "prompt", "target")
RESULT_COLUMNS = ("case_number", "prompt", "target", "ns_lpips")
RANDOM_WEIGHTS_SEED = 0


@dataclass(frozen=True)
class Case:
    """One row of the editing CSV."""

    case_number: int
    prompt: str
    target: str


@dataclass(frozen=True)
class CaseFiles:
    """The three files NS-LPIPS reads for one case."""

    input: Path
    edited: Path
    mask: Path

    def missing(self) -> list[tuple[str, Path]]:
        """(kind, path) of every file that does not exist."""
        named = (("input image", self.input), ("edited image", self.edited), ("background mask", self.mask))
        return [(kind, path) for kind, path in named if not path.is_file()]


def editing_cases(csv_path: Path, from_case: int | None, end_case: int | None) -> list[Case]:
    """The selected cases of an editing CSV (read by :func:`sdtoolkit.jobs.cases.read_cases`); empty texts refused."""
    cases = []
    for _, row in read_cases(str(csv_path), REQUIRED_COLUMNS, from_case, end_case).iterrows():
        case_number = int(row["case_number"])
        if not row["prompt"].strip() or not row["target"].strip():
            raise UsageError(f"{csv_path} (case {case_number}): empty prompt or target")
        cases.append(Case(case_number, row["prompt"], row["target"]))
    return cases


def case_files(case: Case, input_dir: Path, edited_dir: Path, mask_dir: Path, mode: str = "corrected") -> CaseFiles:
    """The input, edited and mask file of a case, named by sdtoolkit.core.io.case_filename (the input ``.jpg``
    in reference mode, as the published script reads it)."""
    return CaseFiles(
        input=input_dir / case_filename(case.case_number, case.prompt, ".jpg" if mode == "reference" else ".png"),
        edited=edited_dir / case_filename(case.case_number, case.target),
        mask=mask_dir / case_filename(case.case_number, case.prompt),
    )


def _open_rgb(path: Path | Image.Image) -> Image.Image:
    """Open an image of any mode (a file, or a PIL image in memory) as 8-bit RGB (sdtoolkit.images.to_rgb);
    UsageError if unreadable."""
    if isinstance(path, Image.Image):
        return to_rgb(path)
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except (OSError, Image.DecompressionBombError) as err:
        raise UsageError(f"{path}: not a readable image ({err})") from err


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """An 8-bit L or RGB PIL image as a float (C, H, W) tensor in [0, 1]."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array)
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


def load_rgb(path: Path) -> torch.Tensor:
    """An image as RGB (3, 256, 256) in [0, 1], resized bicubically."""
    image = _open_rgb(path)
    return _to_tensor(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC))


def load_mask(path: Path) -> torch.Tensor:
    """A background mask of any mode, made 8-bit gray, as (1, 256, 256) in [0, 1] (255 -> 1), resized bilinearly."""
    image = _open_rgb(path).convert("L")
    return _to_tensor(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))


def load_rgb_reference(path: Path) -> torch.Tensor:
    """Reference mode: RGB (3, 256, 256) in [0, 1], resized with PIL's bilinear filter."""
    return _to_tensor(_open_rgb(path).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))


def load_mask_reference(path: Path) -> torch.Tensor:
    """Reference mode: the mask read as RGB, resized bilinearly (PIL), then gray on the tensor with
    torchvision's weights 0.2989, 0.587, 0.114: (1, 256, 256) in [0, 1]."""
    rgb = load_rgb_reference(path)
    weights = torch.tensor([0.2989, 0.587, 0.114]).view(3, 1, 1)
    return (rgb * weights).sum(dim=0, keepdim=True)


def load_case_images(
    input_file: Path | Image.Image, edited_file: Path | Image.Image, mask_file: Path | Image.Image,
    mode: str = "corrected",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input (3, 256, 256), edited (3, 256, 256) and background mask (1, 256, 256), all in [0, 1] (files or PIL
    images)."""
    if mode == "reference":
        return load_rgb_reference(input_file), load_rgb_reference(edited_file), load_mask_reference(mask_file)
    return load_rgb(input_file), load_rgb(edited_file), load_mask(mask_file)


def ns_lpips(
    loss_fn: torch.nn.Module, input_img: torch.Tensor, edited_img: torch.Tensor, bg_mask: torch.Tensor, mode: str
) -> float:
    """LPIPS of the background-masked input and edited image of one case.

    Images are (3, H, W) or (1, 3, H, W) in [0, 1]; the mask is (H, W), (1, H, W) or (1, 1, H, W) in
    [0, 1] with 1 = non-selected background. ``reference``: masked [0, 1] images go to LPIPS as they are;
    ``corrected``: they are masked in [0, 1], then mapped to [-1, 1].
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if input_img.shape != edited_img.shape:
        raise ValueError(f"input {tuple(input_img.shape)} and edited {tuple(edited_img.shape)} differ in shape")
    if bg_mask.shape[-2:] != input_img.shape[-2:]:
        raise ValueError(f"mask {tuple(bg_mask.shape)} and images {tuple(input_img.shape)} differ in size")
    device = next(loss_fn.parameters()).device
    source, edited = (img.reshape(1, 3, *img.shape[-2:]).to(device) for img in (input_img, edited_img))
    mask = bg_mask.reshape(1, 1, *bg_mask.shape[-2:]).to(device)
    source_bg, edited_bg = source * mask, edited * mask
    if mode == "corrected":
        source_bg, edited_bg = source_bg * 2 - 1, edited_bg * 2 - 1
    with torch.no_grad():
        return float(loss_fn(source_bg, edited_bg).mean().item())


def build_lpips(net: str, random_weights: bool, device: torch.device) -> torch.nn.Module:
    """LPIPS with its shipped linear-layer weights, in eval mode on ``device``.

    The backbone is torchvision's ImageNet network (downloaded on first use) unless ``random_weights``,
    which draws it at random from a fixed seed without touching the global RNG (tests only).
    """
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.filterwarnings("ignore", message=r"The parameter 'pretrained' is deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"Arguments other than a weight enum", category=UserWarning)
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = lpips.LPIPS(net=net, pnet_rand=random_weights, verbose=False)
    return model.to(device).eval()
