"""Input preprocessing as the reference does it: the photo resized with PIL's default filter, the image encoder's
input resized as a tensor without antialiasing (torchvision 0.13.1's tensor Resize), on non-512 images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from sdtoolkit.core.constants import CLIP_MEAN, CLIP_STD
from sdtoolkit.core.images import clip_pixels, load_image, pil_to_tensor


def _photo(tmp_path, w: int, h: int) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path / f"photo_{w}x{h}.png"
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize("w, h", [(300, 200), (640, 480), (200, 333)])
def test_photo_resized_to_512_with_pils_default_as_the_reference(tmp_path, w, h):
    """Reference ``load_512``: centre square, then ``Image.fromarray(image).resize((512, 512))`` (default filter)."""
    path = _photo(tmp_path, w, h)
    arr = np.asarray(Image.open(path))[:, :, :3]
    side = min(w, h)
    if h < w:
        arr = arr[:, (w - h) // 2:(w - h) // 2 + h]
    elif w < h:
        arr = arr[(h - w) // 2:(h - w) // 2 + w]
    assert arr.shape[:2] == (side, side)
    expected = np.asarray(Image.fromarray(arr).resize((512, 512)))
    ours = np.asarray(load_image(path, 512))
    assert np.array_equal(ours, expected)
    lanczos = np.asarray(Image.fromarray(arr).resize((512, 512), Image.Resampling.LANCZOS))
    assert not np.array_equal(ours, lanczos)  # the filter matters on these images


@pytest.mark.parametrize("hw", [(512, 512), (64, 64), (300, 200), (200, 333)])
def test_clip_input_is_a_tensor_resize_without_antialias_as_torchvision_0_13(tmp_path, hw):
    """Reference: ``Normalize(-1, 2)`` + CLIP's ``Resize(224, BICUBIC)``, ``CenterCrop(224)`` + CLIP's Normalize on
    the [-1, 1] tensor; torchvision 0.13.1 resizes tensors without antialiasing (``antialias=False`` today)."""
    x = pil_to_tensor(Image.open(_photo(tmp_path, hw[1], hw[0])))
    reference = transforms.Compose([
        transforms.Normalize(mean=[-1.0] * 3, std=[2.0] * 3),
        transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC, antialias=False),
        transforms.CenterCrop(224),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])
    ours = clip_pixels(x, 224, CLIP_MEAN, CLIP_STD)
    assert ours.shape == (1, 3, 224, 224)
    torch.testing.assert_close(ours, reference(x), atol=1e-5, rtol=0)
    if max(hw) > 224:
        antialiased = transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True)
        smooth = transforms.CenterCrop(224)(antialiased(x / 2 + 0.5))
        assert (ours * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
                - smooth).abs().max() > 0.05  # today's torchvision default differs
