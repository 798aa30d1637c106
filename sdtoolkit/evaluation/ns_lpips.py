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

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


import lpips
import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from sdtoolkit.cli import flags as cli
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.images import to_rgb
from sdtoolkit.core.io import atomic_write, case_filename
from sdtoolkit.core.models import resolve_device
from sdtoolkit.core.paths import check_writable_file
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = cli.ArgumentParser(
        prog="ns_lpips",
        description=(
            "NS-LPIPS (lower is better): LPIPS between input and edited image on the non-selected "
            "(background) region, both resized to 256x256 and multiplied by the soft background mask."
        ),
        epilog=(
            "Modes: 'reference' feeds the masked images in [0, 1] to LPIPS as the published script does "
            "(its 0.5 mask threshold has no effect there, the soft mask is used); 'corrected' masks the "
            "images in [0, 1] and then maps them to [-1, 1] as LPIPS expects, so masked-out pixels are -1 "
            "in both images. Output CSV: one row per scored case (case_number, prompt, target, ns_lpips); "
            "the mean over the scored cases is printed, not stored in the CSV."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--prompts_path", type=Path, default=REPO_ROOT / "data" / "stylediffusion_editing.csv",
                        help="editing CSV with columns case_number, prompt, target")
    parser.add_argument("--input_path", type=Path, default=REPO_ROOT / "results" / "input",
                        help="folder of input images '{case} {prompt}.png' ('.jpg' with --mode reference)")
    parser.add_argument("--edited_path", type=Path, default=REPO_ROOT / "results" / "ours",
                        help="folder of edited images '{case} {target}.png'")
    parser.add_argument("--mask_path", type=Path, default=REPO_ROOT / "results" / "bgmask",
                        help="folder of background masks '{case} {prompt}.png' (8-bit grayscale, 255 = "
                             "fully non-selected background, any size; other modes such as RGB are converted to gray)")
    parser.add_argument("--from_case", type=int, default=None, help="first case_number to score; None: from the first")
    parser.add_argument("--end_case", type=int, default=None,
                        help="stop before this case_number (exclusive, as the reference); None: to the last")
    parser.add_argument("--mode", choices=MODES, default="corrected",
                        help="'reference': published script's [0, 1] LPIPS input; 'corrected': [-1, 1] input")
    parser.add_argument("--out", type=Path, default=None,
                        help="per-case result CSV; None: {edited_path}/../ns_lpips_{mode}.csv")
    parser.add_argument("--allow_missing", action="store_true",
                        help="score the cases whose files all exist and exit 0 although others miss files")
    parser.add_argument("--net", choices=("alex", "vgg", "squeeze"), default="alex",
                        help="LPIPS backbone (NS-LPIPS as published uses alex)")
    parser.add_argument("--offline_random_weights", action="store_true",
                        help="FOR TESTS ONLY: random backbone weights (fixed seed) instead of the ImageNet "
                             "weights torchvision downloads; the scores are not NS-LPIPS")
    parser.add_argument("--model", choices=("tiny",), default=None,
                        help="'tiny': random LPIPS backbone weights, offline (as --model tiny elsewhere: smoke runs, "
                             "the scores are noise); same as --offline_random_weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device for LPIPS")
    args = parser.parse_args(argv)
    args.offline_random_weights = args.offline_random_weights or args.model == "tiny"
    return args


def run(args: argparse.Namespace) -> int:
    """Score the selected cases, write the per-case CSV, print the mean; return the exit status."""
    cases = editing_cases(args.prompts_path, args.from_case, args.end_case)
    for flag, folder in (("--input_path", args.input_path), ("--edited_path", args.edited_path),
                         ("--mask_path", args.mask_path)):
        if not folder.is_dir():
            raise UsageError(f"{flag} {folder}: no such folder")
    device = resolve_device(args.device)
    out = check_writable_file(args.out or args.edited_path.resolve().parent / f"ns_lpips_{args.mode}.csv", "--out")

    present, incomplete = [], 0
    for case in cases:
        files = case_files(case, args.input_path, args.edited_path, args.mask_path, args.mode)
        missing = files.missing()
        for kind, path in missing:
            print(f"missing {kind} (case {case.case_number}): {path}", file=sys.stderr)
        if missing:
            incomplete += 1
        else:
            present.append((case, files))
    if incomplete and not args.allow_missing:
        print(f"{incomplete} of {len(cases)} cases miss files (listed above); nothing scored. "
              f"Pass --allow_missing to score the other {len(present)}.", file=sys.stderr)
        print(f"scored 0 of {len(cases)} cases")
        return 1
    if not present:
        print(f"scored 0 of {len(cases)} cases: every selected case misses files (listed above)")
        return 1

    try:
        loss_fn = build_lpips(args.net, args.offline_random_weights, device)
    except (OSError, RuntimeError) as err:
        print(f"ns_lpips: error: cannot build LPIPS-{args.net}: the backbone's ImageNet weights could not "
              f"be loaded or downloaded by torchvision ({err}); it caches them under $TORCH_HOME/hub/checkpoints",
              file=sys.stderr)
        return 1

    rows = []
    for case, files in tqdm(present, desc="NS-LPIPS", unit="case"):
        value = ns_lpips(loss_fn, *load_case_images(files.input, files.edited, files.mask, args.mode), mode=args.mode)
        tqdm.write(f"case {case.case_number}: NS-LPIPS {value:.6f}  ({case.prompt!r} -> {case.target!r})")
        rows.append((case.case_number, case.prompt, case.target, value))
    table = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    atomic_write(out, lambda tmp: table.to_csv(tmp, index=False))

    weights = "RANDOM backbone weights, for tests only" if args.offline_random_weights else "ImageNet backbone"
    print(f"NS-LPIPS mean = {table['ns_lpips'].mean():.6f} (mode: {args.mode}; LPIPS-{args.net}, {weights})")
    skipped = f"; {incomplete} skipped for missing files (listed above)" if incomplete else ""
    print(f"scored {len(present)} of {len(cases)} cases{skipped}; per-case values written to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit status 0 (scored), 1 (missing files or LPIPS unavailable), 2 (bad input)."""
    return cli.run_main(lambda a: run(parse_args(a)), argv, prog="ns_lpips")


if __name__ == "__main__":
    sys.exit(main())
