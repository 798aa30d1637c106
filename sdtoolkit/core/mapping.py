"""StyleDiffusion's per-step mapping networks M_t as one module, saved as safetensors + JSON sidecar."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.io import atomic_write, write_json


class StepMapper(nn.Module):
    """M_t: image tokens (1, N, D_img) → scale s (1, L, D) and shift b (1, L, D), D the text width.

    Conv1d(N→2L, k=1) → Conv1d(2L→2L) → BatchNorm1d(2L) → LeakyReLU → Conv1d(2L→2L). BatchNorm always
    uses the statistics of its input (no running statistics), as the reference does in training *and*
    editing, so editing computes exactly what training computed. When the image encoder's width D_img differs
    from the text width D (e.g. CLIP ViT-B/16's 768 for SD 2.x's 1024), a learned Linear(D_img → D) on the
    tokens comes first: our extension of the method (docs/method.md §3); equal widths add nothing.
    """

    def __init__(self, num_image_tokens: int = 197, max_length: int = 77, image_width: int | None = None,
                 text_width: int | None = None) -> None:
        super().__init__()
        width = 2 * max_length
        self.max_length = max_length
        self.proj = nn.Linear(image_width, text_width) if image_width != text_width else None
        self.net = nn.Sequential(
            nn.Conv1d(num_image_tokens, width, kernel_size=1),
            nn.Conv1d(width, width, kernel_size=1),
            nn.BatchNorm1d(width, track_running_stats=False),
            nn.LeakyReLU(),
            nn.Conv1d(width, width, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.proj is not None:
            features = self.proj(features)  # (1, N, D_img) → (1, N, D)
        out = self.net(features)  # (1, 2L, D)
        return out[:, : self.max_length], out[:, self.max_length :]


class MappingNetworks(nn.Module):
    """M_1 … M_T as an ``nn.ModuleList`` indexed by sampling step i (0 = noisiest)."""

    def __init__(self, num_steps: int, num_image_tokens: int = 197, max_length: int = 77,
                 image_width: int | None = None, text_width: int | None = None) -> None:
        super().__init__()
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.nets = nn.ModuleList(StepMapper(num_image_tokens, max_length, image_width, text_width)
                                  for _ in range(num_steps))

    @property
    def bridge(self) -> str:
        """How image-token width meets text width, recorded in the sidecar: "none" or "projection D_img->D"."""
        proj = self.nets[0].proj
        return "none" if proj is None else f"projection {proj.in_features}->{proj.out_features}"

    def start_from_text(self) -> None:
        """Make M_0 output s = 1 and b = 0 for every input (its last layer's weight 0, bias 1 on the scale rows), so
        c̃ = c before training: the fast schedule's start (docs/method.md §3a); the reference keeps the default init."""
        last = self.nets[0].net[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
            last.bias[: self.max_length] = 1.0

    def init_from_previous(self, i: int) -> None:
        """M_i starts as a copy of M_{i-1} (M_0 keeps its default initialisation)."""
        if i > 0:
            self.nets[i].load_state_dict(copy.deepcopy(self.nets[i - 1].state_dict()))

    def value_input(self, i: int, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """c̃_t = c ⊙ s + b for text embeddings c (B, L, D) of the branch's prompt; fp32."""
        scale, shift = self.nets[i](features.float())
        return text.float() * scale + shift


def sidecar_path(weights_path: str | os.PathLike) -> Path:
    """The JSON sidecar beside a ``.safetensors`` file (same stem)."""
    return Path(weights_path).with_suffix(".json")


def save_learned(path: str | os.PathLike, tensors: dict[str, torch.Tensor], sidecar: dict) -> Path:
    """Save learned tensors (safetensors) and the sidecar (JSON), both atomically; the sidecar last."""
    path = Path(path)
    flat = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata={"format": "pt"}))
    write_json(sidecar_path(path), sidecar)
    if read_sidecar(path) != json.loads(json.dumps(sidecar, default=str)):  # never report a save that did not survive
        raise UsageError(f"{sidecar_path(path)} was replaced by another writer while this result was saved; "
                         "nothing of this run is kept there")
    return path


class UnreadableResult(ValueError):
    """A saved result (weights or sidecar) that exists but cannot be read: truncated, corrupted, not JSON."""


def read_sidecar(path: str | os.PathLike) -> dict:
    """The JSON sidecar of ``path`` (a dict); :class:`UnreadableResult` naming the file when it does not parse."""
    side = sidecar_path(path)
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnreadableResult(f"{side} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UnreadableResult(f"{side} holds {type(data).__name__}, not a JSON object")
    return data


def load_learned(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Load what :func:`save_learned` wrote (never unpickles); :class:`UnreadableResult` for a damaged file."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file() or not side.is_file():
        raise FileNotFoundError(str(path if not path.is_file() else side))
    sidecar = read_sidecar(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UnreadableResult(f"{path} is truncated or corrupted ({exc})") from None
    return tensors, sidecar


def mapping_from_tensors(tensors: dict[str, torch.Tensor], num_steps: int) -> MappingNetworks:
    """Rebuild :class:`MappingNetworks` from saved tensors (keys ``nets.{i}.net.*``)."""
    weight = tensors.get("nets.0.net.0.weight")
    if weight is None:
        raise UsageError("the file holds no mapping networks (no 'nets.0.net.0.weight' tensor)")
    proj = tensors.get("nets.0.proj.weight")  # (D, D_img) when the widths were bridged
    widths = (proj.shape[1], proj.shape[0]) if proj is not None else (None, None)
    nets = MappingNetworks(num_steps, num_image_tokens=weight.shape[1], max_length=weight.shape[0] // 2,
                           image_width=widths[0], text_width=widths[1])
    state = {k: v for k, v in tensors.items() if k.startswith("nets.")}
    nets.load_state_dict(state, strict=True)
    return nets
