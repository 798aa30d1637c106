"""PIE-Bench's metrics, as its published evaluator (PnPInversion, Ju et al. 2023) computes them.

For each case the edited image is the right-most square panel of the method's output (PnPInversion's
runners save instruction | source | reconstruction | edited side by side; a square output is used as it
is) and is compared with the case's source image under ``annotation_images/``. ``mask`` is the case's
decoded edit mask (1 = edited, border set to 1; :func:`sdtoolkit.jobs.pie_data.decode_mask`):

* ``structure_distance``: MSE between the cosine self-similarity matrices (all tokens, CLS included) of
  the last-layer attention keys of DINO ViT-B/8, for the source and the edited image. Each image is
  resized so that its shorter side is 224 (longer side at most 480; bilinear, no antialiasing) and
  ImageNet-normalised. The published evaluator feeds pixel values in 0..255 (not 0..1) to that
  normalisation; we do the same so that the numbers compare with the published table (DINO_PIXEL_SCALE).
* ``psnr_unedit_part``, ``lpips_unedit_part``, ``mse_unedit_part``, ``ssim_unedit_part``: both images in
  [0, 1] multiplied by (1 - mask), then PSNR (data range 1), LPIPS (SqueezeNet, inputs mapped to
  [-1, 1]), MSE over all pixels and channels, SSIM (Gaussian 11×11, sigma 1.5, data range 1). Undefined
  (NaN) when the mask covers the whole image.
* ``clip_similarity_source_image``: CLIP score (100 · max(cos, 0), CLIP ViT-L/14) of the source image
  with the source prompt; ``clip_similarity_target_image``: of the edited image with the target prompt;
  ``clip_similarity_target_image_edit_part``: of the edited image × mask (in uint8) with the target
  prompt.

PSNR, MSE, SSIM and the CLIP score come from torchmetrics, LPIPS from the lpips package (the same
network and weights as torchmetrics' LPIPS, with a public switch for random backbone weights).
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import lpips
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError
from torchmetrics.functional import mean_squared_error
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.multimodal import CLIPScore
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer, ViTConfig, ViTModel

from sdtoolkit.jobs.pie_data import EDITING_TYPES, IMAGES_DIR, PieCase, method_dir, method_folder_name
from sdtoolkit.core.images import to_rgb
from sdtoolkit.core.paths import contained
from sdtoolkit.core.tokenizer import CLIP_TOKENIZER_DIR

METRICS: tuple[str, ...] = (
    "structure_distance",
    "psnr_unedit_part",
    "lpips_unedit_part",
    "mse_unedit_part",
    "ssim_unedit_part",
    "clip_similarity_source_image",
    "clip_similarity_target_image",
    "clip_similarity_target_image_edit_part",
)
"""The published evaluator's default metrics, in its column order."""
TABLE_UNITS: dict[str, tuple[str, float]] = {
    "structure_distance": ("Structure distance x10^3", 1e3),
    "psnr_unedit_part": ("PSNR", 1.0),
    "lpips_unedit_part": ("LPIPS x10^3", 1e3),
    "mse_unedit_part": ("MSE x10^4", 1e4),
    "ssim_unedit_part": ("SSIM x10^2", 1e2),
    "clip_similarity_target_image": ("CLIP whole", 1.0),
    "clip_similarity_target_image_edit_part": ("CLIP edited", 1.0),
}
"""PIE-Bench's table columns: the metric's label and the factor it is shown multiplied by."""
DINO_MODEL = "facebook/dino-vitb8"
CLIP_MODEL = "openai/clip-vit-large-patch14"
DINO_SHORT_SIDE, DINO_MAX_SIDE = 224, 480
DINO_PIXEL_SCALE = 255.0
"""Pixel values given to DINO's ImageNet normalisation range over 0..DINO_PIXEL_SCALE (published evaluator)."""
DINO_ANTIALIAS = False
"""The published evaluator resizes tensors with torchvision's ``Resize``, which did not antialias tensors
before torchvision 0.17 (2024), the releases of the benchmark's time; we resize the same way."""
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RANDOM_WEIGHTS_SEED = 0

# Architectures for --offline_random_weights: "full" is the real one of the named checkpoint, "tiny" is for tests.
DINO_CONFIGS: dict[str, dict] = {
    "full": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 image_size=224, patch_size=8, qkv_bias=True, layer_norm_eps=1e-6),
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 image_size=224, patch_size=8, qkv_bias=True, layer_norm_eps=1e-6),
}
CLIP_CONFIGS: dict[str, dict] = {
    "full": dict(
        text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         max_position_embeddings=77, vocab_size=49408),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14),
        projection_dim=768),
    "tiny": dict(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, vocab_size=49408),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32),
        projection_dim=16),
}


class OutputError(ValueError):
    """An output image that cannot be scored (unreadable, or its edited panel does not match the source)."""


# ----------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------

def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (any mode converted by sdtoolkit.core.images.to_rgb)."""
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(to_rgb(image))
    except (UnidentifiedImageError, OSError) as err:
        raise OutputError(f"{path} is not a readable image ({err})") from err


def edited_panel(output: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The edited image of an output: its bottom-right (H, W) = ``size`` panel when the output is not square.

    PnPInversion's evaluator crops the right-most 512×512 of a non-square output; ``size`` is the source
    image's (512×512 on PIE-Bench). A square output must already have the source's size.
    """
    height, width = size
    out_h, out_w = output.shape[:2]
    if out_h != out_w:
        if out_h < height or out_w < width:
            raise OutputError(f"output is {out_w}x{out_h}, smaller than the {width}x{height} source")
        output = output[out_h - height:, out_w - width:]
    if output.shape[:2] != (height, width):
        raise OutputError(f"edited image is {output.shape[1]}x{output.shape[0]}, the source is {width}x{height}")
    return output


def unedited_part(image: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1]: an (H, W, 3) uint8 image × (1 - mask) (mask (H, W), 1 = edited)."""
    keep = (1.0 - np.asarray(mask, dtype=np.float32))[:, :, None]  # (H, W) -> (H, W, 1)
    array = image.astype(np.float32) / 255.0 * keep
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()  # (H, W, 3) -> (1, 3, H, W)


def edited_part_uint8(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8(image × mask), as the published evaluator prepares the edited part for CLIP."""
    return np.uint8(image * np.asarray(mask)[:, :, None])


def cosine_self_similarity(tokens: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(T, T) cosine similarities of the rows of a (T, C) matrix; norms' products clamped at ``eps``."""
    norms = tokens.norm(dim=-1, keepdim=True)  # (T, 1)
    return (tokens @ tokens.T) / torch.clamp(norms @ norms.T, min=eps)


def dino_input(image: np.ndarray) -> torch.Tensor:
    """(1, 3, h, w): an (H, W, 3) uint8 image in 0..255, resized (shorter side 224, longer <= 480,
    bilinear, not antialiased: DINO_ANTIALIAS) and ImageNet-normalised as the published evaluator does (on
    0..255 values)."""
    x = torch.from_numpy(image.astype(np.float32) * (DINO_PIXEL_SCALE / 255.0)).permute(2, 0, 1)  # (3, H, W)
    x = TF.resize(x, [DINO_SHORT_SIDE], max_size=DINO_MAX_SIDE, antialias=DINO_ANTIALIAS)
    return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD).unsqueeze(0)


# ----------------------------------------------------------------------------------------------------------
# Backbones
# ----------------------------------------------------------------------------------------------------------

class ProjectedCLIP(torch.nn.Module):
    """A transformers CLIPModel whose get_image/text_features return the projected embedding tensors.

    torchmetrics' CLIPScore expects tensors from these methods; transformers 5 returns output objects
    whose ``pooler_output`` holds the projection.
    """

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, D) projected image embeddings."""
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, D) projected text embeddings."""
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


@dataclass(frozen=True)
class BackboneSettings:
    """Where the metric networks come from: hub ids or local folders, or random weights of a named size."""

    dino: str = DINO_MODEL
    clip: str = CLIP_MODEL
    random_weights: bool = False
    random_size: str = "full"  # "full" (the named checkpoints' architecture) or "tiny" (tests)

    def describe(self) -> str:
        """One line for reports."""
        if self.random_weights:
            return (f"RANDOM backbone weights ({self.random_size} architectures, fixed seed): scores only compare "
                    "runs made with the same setting, never with the published table")
        return f"DINO {self.dino}, CLIP {self.clip}, LPIPS SqueezeNet (ImageNet weights via torchvision)"


def build_backbones(settings: BackboneSettings, device: torch.device) -> tuple[ViTModel, CLIPScore, torch.nn.Module]:
    """DINO ViT, a CLIPScore metric and LPIPS-SqueezeNet, in eval mode on ``device``.

    With ``random_weights`` every network is built from its config with seeded random weights, without
    touching the global RNG (offline tests); otherwise from the hub ids / folders of ``settings`` and
    torchvision's ImageNet SqueezeNet (OSError when they cannot be loaded).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        if settings.random_weights:
            dino = ViTModel(ViTConfig(**DINO_CONFIGS[settings.random_size]), add_pooling_layer=False)
            clip_model = CLIPModel(CLIPConfig(**CLIP_CONFIGS[settings.random_size]))
            processor = CLIPProcessor(image_processor=CLIPImageProcessor(),
                                      tokenizer=CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR))
        else:
            dino = ViTModel.from_pretrained(settings.dino, add_pooling_layer=False)
            clip_model = CLIPModel.from_pretrained(settings.clip)
            processor = CLIPProcessor.from_pretrained(settings.clip)
        with warnings.catch_warnings():  # lpips still calls torchvision with the deprecated `pretrained`
            warnings.filterwarnings("ignore", message=r"The parameter 'pretrained' is deprecated", category=UserWarning)
            warnings.filterwarnings("ignore", message=r"Arguments other than a weight enum", category=UserWarning)
            loss_fn = lpips.LPIPS(net="squeeze", pnet_rand=settings.random_weights, verbose=False)
    clip_score = CLIPScore(model_name_or_path=lambda: (ProjectedCLIP(clip_model.eval()), processor))
    return dino.to(device).eval(), clip_score.to(device), loss_fn.to(device).eval()


@contextmanager
def last_layer_keys(dino: ViTModel) -> Iterator[list[torch.Tensor]]:
    """Collect the key projection output (B, T, C) of DINO's last layer while the context is open.

    A forward hook on the last layer's ``attention.k_proj`` (transformers 5 ViT), removed on exit. The
    (B, T, C) keys are the heads' keys side by side, i.e. the published evaluator's keys concatenated
    over heads.
    """
    captured: list[torch.Tensor] = []
    handle = dino.layers[-1].attention.k_proj.register_forward_hook(
        lambda module, args, output: captured.append(output.detach()))
    try:
        yield captured
    finally:
        handle.remove()


# ----------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceFeatures:
    """What a case's source image gives every method's score (computed once per case)."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W), 1 = edited
    dino_self_similarity: torch.Tensor  # (T, T)
    clip_source: float


class PieScorer:
    """The benchmark's metrics with its networks loaded once."""

    def __init__(self, settings: BackboneSettings, device: torch.device) -> None:
        self.settings = settings
        self.device = device
        self.dino, self.clip, self.lpips = build_backbones(settings, device)

    @torch.no_grad()
    def dino_self_similarity(self, image: np.ndarray) -> torch.Tensor:
        """(T, T) cosine self-similarity of DINO's last-layer keys of an (H, W, 3) uint8 image."""
        with last_layer_keys(self.dino) as keys:
            self.dino(dino_input(image).to(self.device), interpolate_pos_encoding=True)
        return cosine_self_similarity(keys[0][0])  # (1, T, C) -> (T, C) -> (T, T)

    @torch.no_grad()
    def clip_score(self, image: np.ndarray, text: str) -> float:
        """CLIP score 100 · max(cos, 0) of an (H, W, 3) uint8 image and a text (torchmetrics CLIPScore)."""
        self.clip.reset()
        self.clip.update(torch.from_numpy(np.array(image)).permute(2, 0, 1).to(self.device), text)  # (H, W, 3) -> (3, H, W)
        return float(self.clip.compute())

    @torch.no_grad()
    def preservation(self, source: np.ndarray, edited: np.ndarray, mask: np.ndarray) -> dict[str, float]:
        """PSNR, LPIPS, MSE and SSIM of the unedited parts (both images × (1 - mask)); NaN for an all-ones mask."""
        names = ("psnr_unedit_part", "lpips_unedit_part", "mse_unedit_part", "ssim_unedit_part")
        if not (1.0 - np.asarray(mask)).sum():
            return dict.fromkeys(names, math.nan)
        a, b = unedited_part(source, mask).to(self.device), unedited_part(edited, mask).to(self.device)
        return {
            "psnr_unedit_part": float(peak_signal_noise_ratio(a, b, data_range=1.0)),
            "lpips_unedit_part": float(self.lpips(a * 2 - 1, b * 2 - 1).mean()),
            "mse_unedit_part": float(mean_squared_error(a, b)),
            "ssim_unedit_part": float(structural_similarity_index_measure(a, b, data_range=1.0)),
        }

    def source_features(self, case: PieCase, source: np.ndarray) -> SourceFeatures:
        """The method-independent part of a case's scores."""
        return SourceFeatures(image=source, mask=case.mask(), dino_self_similarity=self.dino_self_similarity(source),
                              clip_source=self.clip_score(source, case.source_prompt))

    def score(self, case: PieCase, source: SourceFeatures, edited: np.ndarray) -> dict[str, float]:
        """Every metric of METRICS for one edited (H, W, 3) uint8 image of ``case``."""
        structure = F.mse_loss(self.dino_self_similarity(edited), source.dino_self_similarity)
        edit_part = (self.clip_score(edited_part_uint8(edited, source.mask), case.target_prompt)
                     if np.asarray(source.mask).sum() else math.nan)
        scores = {
            "structure_distance": float(structure),
            **self.preservation(source.image, edited, source.mask),
            "clip_similarity_source_image": source.clip_source,
            "clip_similarity_target_image": self.clip_score(edited, case.target_prompt),
            "clip_similarity_target_image_edit_part": edit_part,
        }
        return {name: scores[name] for name in METRICS}


# ----------------------------------------------------------------------------------------------------------
# A run over a PIE-Bench folder and the outputs of several methods
# ----------------------------------------------------------------------------------------------------------

def method_folder(output_path: Path, method: str) -> Path:
    """Where a method's outputs live, as PnPInversion lays them out: ``{output_path}/{method}+p2p/annotation_images``."""
    return method_dir(output_path, method) / IMAGES_DIR


def column(method: str, metric: str) -> str:
    """The per-case CSV column of a method's metric, as PnPInversion's evaluator names it (``key|metric``)."""
    return f"{method_folder_name(method)}|{metric}"


@dataclass(frozen=True)
class Problem:
    """A case (and method, if it concerns one output) that could not be scored, and why."""

    key: str
    method: str | None
    message: str


@dataclass(frozen=True)
class ScoreRun:
    """Per-case scores (one row per case, NaN where undefined or not scored) and what could not be scored."""

    table: pd.DataFrame
    missing: dict[str, list[Path]]  # method -> output files that do not exist
    problems: list[Problem]  # unreadable source images, unreadable or mis-sized outputs


def score_cases(scorer: PieScorer, data_path: Path, output_path: Path, methods: Sequence[str],
                cases: Sequence[PieCase], progress: bool = True) -> ScoreRun:
    """Score every method's output of every case; a missing or bad file leaves NaNs and is recorded."""
    rows, missing, problems = [], {m: [] for m in methods}, []
    for case in tqdm(cases, desc="PIE-Bench metrics", unit="case", disable=not progress):
        row: dict[str, object] = {"file_id": case.key, "editing_type_id": case.editing_type_id}
        row.update({column(m, metric): math.nan for m in methods for metric in METRICS})
        rows.append(row)
        try:
            source = scorer.source_features(case, read_rgb(case.source_file(data_path)))
        except OutputError as err:
            problems.append(Problem(case.key, None, f"source image: {err}"))
            continue
        for method in methods:
            path = contained(method_folder(output_path, method), case.image_path, "image_path")
            if not path.is_file():
                missing[method].append(path)
                continue
            try:
                edited = edited_panel(read_rgb(path), case.image_size)
            except OutputError as err:
                problems.append(Problem(case.key, method, f"{path}: {err}"))
                continue
            row.update({column(method, metric): value for metric, value in scorer.score(case, source, edited).items()})
    table = pd.DataFrame(rows, columns=["file_id", "editing_type_id"] + [column(m, x) for m in methods for x in METRICS])
    return ScoreRun(table=table, missing=missing, problems=problems)


def summarise(table: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Mean (in PIE-Bench's units, TABLE_UNITS) and count of non-NaN values per method × editing type × metric.

    One row per method and editing type present, plus an ``all`` row per method; ``cases`` counts the
    cases of the group, ``n <label>`` the cases the mean was taken over.
    """
    groups = [("all", table)] + [(f"{t} {EDITING_TYPES[t]}", part)
                                 for t, part in sorted(table.groupby("editing_type_id"), key=lambda kv: int(kv[0]))]
    rows = []
    for method in methods:
        for name, part in groups:
            row: dict[str, object] = {"method": method, "editing_type": name, "cases": len(part)}
            for metric, (label, scale) in TABLE_UNITS.items():
                values = pd.to_numeric(part[column(method, metric)], errors="coerce").dropna()
                row[label] = float(values.mean() * scale) if len(values) else math.nan
                row[f"n {label}"] = int(len(values))
            rows.append(row)
    return pd.DataFrame(rows)


def format_summary(summary: pd.DataFrame, method: str) -> str:
    """One method's table: each mean followed by [the number of cases it was taken over]."""
    part = summary[summary["method"] == method]
    shown = pd.DataFrame({"editing type": part["editing_type"], "cases": part["cases"]})
    for label, _ in TABLE_UNITS.values():
        shown[label] = [("nan" if math.isnan(v) else f"{v:.2f}") + f" [{n}]"
                        for v, n in zip(part[label], part[f"n {label}"])]
    return shown.to_string(index=False)
