"""Image loading (any mode, bit depth and aspect) and conversions."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from sdtoolkit.core.checks import check_multiple
from sdtoolkit.core.constants import MAX_ASPECT, MAX_SIDE
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.naming import name


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any PIL mode: grayscale, palette, RGBA (composited on white), 16-bit (I;16 / I)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def fit_size(width: int, height: int, resolution: int, keep_aspect: bool, multiple: int) -> tuple[int, int]:
    """Model input size (h, w): ``resolution``² (the reference), or with ``keep_aspect`` the short side at
    ``resolution`` and the long side scaled with it, rounded to a multiple of ``multiple`` (at least one)."""
    check_multiple(resolution, multiple)
    if not keep_aspect:
        return resolution, resolution
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise UsageError(f"{name('keep_aspect')}: a {width}x{height} image is more elongated than the bound of {MAX_ASPECT}:1")
    scale = resolution / min(width, height)
    long_side = max(multiple, round(max(width, height) * scale / multiple) * multiple)
    if long_side > MAX_SIDE:
        raise UsageError(f"{name('keep_aspect')} {name('resolution')} {resolution}: a {width}x{height} image would be "
                         f"{long_side} px long, over the bound of {MAX_SIDE}; lower {name('resolution')}")
    return (resolution, long_side) if height <= width else (long_side, resolution)


def decodes(path: str | os.PathLike) -> bool:
    """True when ``path`` is an image file that decodes completely (a truncated or corrupted file does not)."""
    try:
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False
    return True


def load_image(
    path: str | os.PathLike, size: int, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0,
    keep_aspect: bool = False, multiple: int = 1,
) -> Image.Image:
    """Open an image, cut the crop offsets, then centre-crop to a square and resize to ``size``×``size`` (RGB), or
    with ``keep_aspect`` resize the whole image to :func:`fit_size` (short side ``size``); PIL's bicubic filter,
    the default of the reference's ``Image.resize`` (docs/method.md §1)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"image {str(path)!r} does not exist (or is not a file)")
    check_multiple(size, multiple)
    try:
        with Image.open(path) as im:
            im.load()
            image = to_rgb(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"{str(path)!r} is not a readable image ({exc})") from exc
    return fit_image(image, size, left, right, top, bottom, keep_aspect, multiple)


def fit_image(
    image: Image.Image, size: int, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0,
    keep_aspect: bool = False, multiple: int = 1,
) -> Image.Image:
    """:func:`load_image` on an image already in memory (any PIL mode)."""
    check_multiple(size, multiple)
    image = to_rgb(image)
    w, h = image.size
    if left + right >= w or top + bottom >= h or min(left, right, top, bottom) < 0:
        raise UsageError(f"crop offsets left={left} right={right} top={top} bottom={bottom} do not fit a {w}×{h} image")
    image = image.crop((left, top, w - right, h - bottom))
    w, h = image.size
    if keep_aspect:
        out_h, out_w = fit_size(w, h, size, True, multiple)
        return image.resize((out_w, out_h), Image.Resampling.BICUBIC)
    side = min(w, h)
    x0, y0 = (w - side) // 2, (h - side) // 2
    image = image.crop((x0, y0, x0 + side, y0 + side))
    return image.resize((size, size), Image.Resampling.BICUBIC)


def load_mask(
    path: str | os.PathLike, size: int, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0,
    keep_aspect: bool = False, multiple: int = 1,
) -> torch.Tensor:
    """A mask image (white = 1) cropped and resized as :func:`load_image` does its image: (H, W) 0/1 float.

    A pixel is 1 when its grey level is at least half white; a mask with no 1 is refused (it would edit nothing).
    """
    return binary_mask(load_image(path, size, left, right, top, bottom, keep_aspect, multiple), repr(str(path)))


def binary_mask(image: Image.Image, name: str = "") -> torch.Tensor:
    """(H, W) 0/1 floats of a mask image already cropped and resized: 1 where its grey level is at least half
    white; a mask with no 1 is refused (it would edit nothing)."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    mask = torch.from_numpy((grey >= 128).astype(np.float32))
    if not mask.any():
        label = f"mask {name}" if name else "mask"
        raise UsageError(f"{label} has no white pixel: nothing could be edited (white = may change)")
    return mask


def as_pil(image) -> Image.Image:
    """A PIL image from a PIL image or an array (H, W) / (H, W, 3|4): uint8, or floats in [0, 1]."""
    if isinstance(image, Image.Image):
        return image
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or arr.size == 0:
        raise UsageError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), not {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.asarray(arr, dtype=np.float64)
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise UsageError("a float image array must hold values in [0, 1] (or give uint8 values 0-255)")
        arr = (arr * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(arr)


def sha256_image(image: Image.Image) -> str:
    """Hex SHA-256 of an in-memory image (mode, size and pixels): what identifies an image without a file."""
    h = hashlib.sha256(f"{image.mode} {image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB → (1, 3, H, W) float in [-1, 1]."""
    arr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
    return arr.permute(2, 0, 1).unsqueeze(0)  # (H, W, 3) → (1, 3, H, W)


def clip_pixels(image: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """The image encoder's input as the reference makes it (docs/method.md §1), for x (1, 3, H, W) in [-1, 1]:
    (x + 1) / 2, then CLIP's ``Resize(size, bicubic)`` and ``CenterCrop(size)`` applied to the tensor as the
    reference's torchvision 0.13.1 does (shorter side → size, longer ``int(size · long / short)``; bicubic,
    ``align_corners=False``, no antialiasing; crop offsets ``round((H − size) / 2)``), then CLIP's mean/std."""
    x = image.float() / 2 + 0.5  # Normalize(mean=-1, std=2): [-1, 1] → [0, 1], not clamped
    h, w = x.shape[-2:]
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)
    out_h, out_w = (size, new_long) if h <= w else (new_long, size)
    if (out_h, out_w) != (h, w):
        x = F.interpolate(x, size=(out_h, out_w), mode="bicubic", align_corners=False, antialias=False)
    top, left = int(round((out_h - size) / 2.0)), int(round((out_w - size) / 2.0))
    x = x[..., top:top + size, left:left + size]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) float in [0, 1] → PIL RGB."""
    x = x.detach().float().cpu().clamp(0, 1)
    if x.ndim == 4:
        x = x[0]
    return Image.fromarray((x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))


def image_grid(images: list[Image.Image], gap: int = 0, columns: int | None = None) -> Image.Image:
    """Images in rows of ``columns`` (default: one row), each resized to the first one's size."""
    w, h = images[0].size
    cols = columns or len(images)
    rows = -(-len(images) // cols)
    grid = Image.new("RGB", (cols * w + gap * (cols - 1), rows * h + gap * (rows - 1)), (255, 255, 255))
    for i, im in enumerate(images):
        grid.paste(im.resize((w, h)), ((i % cols) * (w + gap), (i // cols) * (h + gap)))
    return grid
