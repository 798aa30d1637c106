"""Toy-world editing benchmark: inversion + P2Plus edits on held-out synthetic scenes with exact ground truth.

For ``--n`` held-out scenes of :mod:`toyworld.scenes` (seeds ``1_000_000 + seed·10_000 + k``) and every
inversion method of ``--methods``, the scene is inverted through the toolkit (``InvertConfig`` +
``jobs.invert``, loaded back with ``jobs.load_inversion``) and edited three ways with
``jobs.build_controller`` / ``jobs.edit_latents`` (one inversion per scene and method, reused by the edits):

* ``colour``: the first object's colour word is replaced (``edit_scene(scene, "colour")``);
* ``shape``: the first object's shape word is replaced;
* ``background``: the background colour word is replaced.

The target prompt is the caption of the edited scene (the caption with the source word replaced by the
target word), edited with ``Replacement`` and the tau values of ``--tau_v/c/s/u``. Local blend:
object edits blend on the edited word, ``((source word,), (target word,))`` (``--object_blend``);
background edits use no local blend by default (``--background_blend none``). Why: a background edit
changes most of the image, so a blend mask could only protect the objects, and with the toy model the
max-normalised 8×8 cross-attention maps of every word are nearly flat (min/max > 0.3 everywhere), so at
the reference's threshold 0.3 (docs/method.md §4) the mask of ``"background"``, of the colour word or of both covers 93–100 % of
the latent and changes nothing measurable (checked on 4 scenes with thresholds 0.3, 0.6, 0.8; the
``blend area`` column reports the mask's coverage for every blended edit). ``--blend_threshold`` changes
the threshold of every blend.

Scores (images in [0, 1], at the model's image size; ground truth from the scene renderer):

* ``model_can`` (a reference, method-independent): the model's free sample of the target prompt, from a
  Gaussian z_T seeded by the scene (no inversion, no attention control), passes the edit's success
  test: when it does not, the model cannot draw the target and a failed edit says little about the
  editing method;
* ``recon_psnr``: PSNR of the decoded source branch of the edit batch against the input scene
  (``vae_psnr``: the VAE round trip of the input, the ceiling of any inversion);
* ``success`` per kind:
  - colour: the mean RGB inside the edited object's ground-truth mask is nearer (Euclidean) to the target
    colour than to the source colour;
  - background: the mean RGB outside all objects' masks, dilated by ``--dilate`` pixels, is nearer to
    the target background colour than to the source one;
  - ``exact`` (colour and background only, stricter): the nearest palette colour of that mean is the target;
  - shape: the object's region (pixels whose nearest palette colour is the object's colour, inside the
    union of the source and target shape masks dilated by ``--shape_window`` pixels) overlaps the target
    shape's mask better (IoU) than the source shape's mask (``iou_target`` > ``iou_source``);
* ``preserve_psnr`` / ``preserve_lpips``: edited image vs input outside the edited object's
  ground-truth mask(s) dilated by ``--dilate`` pixels (object edits; for shape edits the union of the
  source and target shape masks), and inside the object masks eroded by 1 pixel (background edits).
  LPIPS is the project's NS-LPIPS computation (``eval_metrics.ns_lpips``, corrected mode: images masked
  in [0, 1], mapped to [-1, 1], LPIPS-AlexNet at 256×256). Its backbone is torchvision's ImageNet
  AlexNet when its weights are in the torch hub cache, else random weights (a warning is printed and
  the ``lpips_backbone`` column says ``random``: such LPIPS values only compare runs with each other).

Outputs (``--out``, written atomically): ``toy_bench.csv`` (one row per scene × method × edit kind),
``toy_bench.md`` (means per method × kind, the settings and the runtime) and, unless ``--no_images``,
one grid per scene and method under ``images/`` (input | reconstruction | for each kind: ground truth of
the edit, edited image).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.settings import InversionMethod
from sdtoolkit.core.io import atomic_write, save_image
from toyworld.scenes import (EDIT_KINDS, HELDOUT_SEED_START, PALETTE, Scene, caption, edit_scene, nearest_colour, render,
                             scene_from_seed)

METHODS = tuple(m.value for m in InversionMethod)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "eval_metrics" / "toy_bench_results"
SEED_STRIDE = 10_000
DEFAULT_INNER = {"stylediffusion": 20, "nulltext": 10}
LPIPS_SIZE = 256
BLEND_CHOICES = ("none", "word", "background", "both")
CSV_NAME, MD_NAME = "toy_bench.csv", "toy_bench.md"


# ----------------------------------------------------------------------------------------------------------
# Pure scoring functions (numpy; images (H, W, 3) float in [0, 1] or uint8, masks (H, W) bool)
# ----------------------------------------------------------------------------------------------------------

def as_float(image: np.ndarray | Image.Image) -> np.ndarray:
    """(H, W, 3) float64 in [0, 1] from a PIL image, a uint8 array or a float array in [0, 1]."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    return arr.astype(np.float64)


def disc(radius: int) -> np.ndarray:
    """Boolean disc structuring element of ``radius`` pixels ((2r+1)² square, |offset| <= r)."""
    r = int(radius)
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r + 1e-9


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of ``mask`` by a disc of ``radius`` pixels (radius 0: unchanged)."""
    mask = np.asarray(mask, dtype=bool)
    r = int(radius)
    if r <= 0:
        return mask.copy()
    h, w = mask.shape
    padded = np.pad(mask, r)
    out = np.zeros_like(mask)
    for dy, dx in zip(*np.nonzero(disc(r))):
        out |= padded[dy:dy + h, dx:dx + w]
    return out


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by a disc of ``radius`` pixels (outside the image counts as inside the mask)."""
    return ~dilate(~np.asarray(mask, dtype=bool), radius)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB of two images in [0, 1] over the pixels of ``mask`` (all pixels if None).

    ``inf`` for identical images; ``nan`` for an empty mask.
    """
    a, b = as_float(a), as_float(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    sq = (a - b) ** 2
    if sq.ndim == 3:
        sq = sq.mean(axis=-1)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != sq.shape:
            raise ValueError(f"mask {mask.shape} does not match images {a.shape}")
        if not mask.any():
            return float("nan")
        sq = sq[mask]
    mse = float(sq.mean())
    return float("inf") if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def mean_colour(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean RGB (0…255 scale) of ``image`` over ``mask``; NaNs for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.full(3, np.nan)
    return as_float(image)[mask].mean(axis=0) * 255.0


def colour_distances(image: np.ndarray, mask: np.ndarray, source: str, target: str) -> tuple[float, float]:
    """Euclidean RGB distances (0…255 scale) of the mean colour over ``mask`` to the source and target colours."""
    mean = mean_colour(image, mask)
    d_src = float(np.linalg.norm(mean - np.asarray(PALETTE[source], dtype=np.float64)))
    d_tgt = float(np.linalg.norm(mean - np.asarray(PALETTE[target], dtype=np.float64)))
    return d_src, d_tgt


def colour_success(image: np.ndarray, mask: np.ndarray, source: str, target: str) -> bool:
    """The mean colour over ``mask`` is strictly nearer the ``target`` palette colour than the ``source`` one."""
    d_src, d_tgt = colour_distances(image, mask, source, target)
    return bool(d_tgt < d_src)


def nearest_palette_index(image: np.ndarray) -> np.ndarray:
    """(H, W) index into ``PALETTE`` of each pixel's nearest colour."""
    pal = np.asarray(list(PALETTE.values()), dtype=np.float64)  # (P, 3)
    pix = as_float(image) * 255.0
    d = ((pix[:, :, None, :] - pal[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


def colour_region(image: np.ndarray, colour: str) -> np.ndarray:
    """Pixels whose nearest palette colour is ``colour``."""
    return nearest_palette_index(image) == list(PALETTE).index(colour)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (nan when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    union = (a | b).sum()
    return float("nan") if union == 0 else float((a & b).sum() / union)


def shape_scores(image: np.ndarray, colour: str, source_mask: np.ndarray, target_mask: np.ndarray,
                 window: int = 4) -> tuple[float, float, bool]:
    """(IoU with the target shape, IoU with the source shape, success = target IoU > source IoU).

    The object's region is the set of pixels whose nearest palette colour is the object's ``colour``,
    restricted to the union of both shape masks dilated by ``window`` pixels (so that nothing far from
    the object counts). The two masks share the object's centre and radius (``edit_scene`` keeps them).
    """
    region = colour_region(image, colour) & dilate(np.asarray(source_mask) | np.asarray(target_mask), window)
    i_tgt, i_src = iou(region, target_mask), iou(region, source_mask)
    ok = bool(np.isfinite(i_tgt) and np.isfinite(i_src) and i_tgt > i_src)
    return i_tgt, i_src, ok


def union(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Union of boolean masks (all False when there are none)."""
    out = np.zeros(shape, dtype=bool)
    for m in masks:
        out |= np.asarray(m, dtype=bool)
    return out


def edited_region(kind: str, source_masks: Sequence[np.ndarray], target_masks: Sequence[np.ndarray]) -> np.ndarray:
    """Ground-truth region the edit may change: the first object (both shapes for ``shape``), or the
    background (everything outside all objects) for ``background``."""
    shape = np.asarray(source_masks[0]).shape
    if kind == "colour":
        return np.asarray(target_masks[0], dtype=bool)
    if kind == "shape":
        return np.asarray(source_masks[0], dtype=bool) | np.asarray(target_masks[0], dtype=bool)
    if kind == "background":
        return ~union(list(source_masks) + list(target_masks), shape)
    raise ValueError(f"unknown edit kind {kind!r}; expected one of {EDIT_KINDS}")


def preservation_mask(kind: str, source_masks: Sequence[np.ndarray], target_masks: Sequence[np.ndarray],
                      dilate_px: int = 3) -> np.ndarray:
    """Where the edit must leave the image unchanged.

    Object edits (colour, shape): outside the edited object's mask(s), dilated by ``dilate_px`` pixels.
    Background edits: inside the object masks eroded by 1 pixel (their antialiased rims mix in the
    background colour and legitimately change).
    """
    shape = np.asarray(source_masks[0]).shape
    if kind in ("colour", "shape"):
        return ~dilate(edited_region(kind, source_masks, target_masks), dilate_px)
    if kind == "background":
        return erode(union(source_masks, shape), 1)
    raise ValueError(f"unknown edit kind {kind!r}; expected one of {EDIT_KINDS}")


def background_mask(masks: Sequence[np.ndarray], dilate_px: int = 3) -> np.ndarray:
    """Outside all object masks dilated by ``dilate_px`` (the pixels that show only the background)."""
    return ~dilate(union(masks, np.asarray(masks[0]).shape), dilate_px)


def score_edit(kind: str, edited: np.ndarray, source_scene: Scene, target_scene: Scene,
               source_masks: Sequence[np.ndarray], target_masks: Sequence[np.ndarray], source_word: str,
               target_word: str, dilate_px: int = 3, shape_window: int = 4) -> dict:
    """Edit-success scores of one edited image (no LPIPS, no PSNR)."""
    out = {"success": None, "exact": None, "dist_source": np.nan, "dist_target": np.nan, "iou_target": np.nan,
           "iou_source": np.nan, "colour_kept": None}
    if kind in ("colour", "background"):
        if kind == "colour":
            mask = np.asarray(target_masks[0], dtype=bool)
        else:
            mask = background_mask(list(source_masks) + list(target_masks), dilate_px)
        out["dist_source"], out["dist_target"] = colour_distances(edited, mask, source_word, target_word)
        out["success"] = bool(out["dist_target"] < out["dist_source"])
        out["exact"] = nearest_colour(mean_colour(edited, mask)) == target_word
    elif kind == "shape":
        colour = target_scene.objects[0].colour
        out["iou_target"], out["iou_source"], out["success"] = shape_scores(
            edited, colour, source_masks[0], target_masks[0], shape_window)
        # the object should keep its colour: mean colour inside the target shape nearest to it in the palette
        out["colour_kept"] = nearest_colour(mean_colour(edited, target_masks[0])) == colour
    else:
        raise ValueError(f"unknown edit kind {kind!r}; expected one of {EDIT_KINDS}")
    return out


# ----------------------------------------------------------------------------------------------------------
# LPIPS
# ----------------------------------------------------------------------------------------------------------

def alexnet_weights_cached() -> bool:
    """Whether torchvision's ImageNet AlexNet weights are in the torch hub cache (no download needed)."""
    try:
        from torchvision.models import AlexNet_Weights

        name = Path(AlexNet_Weights.IMAGENET1K_V1.url).name
    except Exception:  # pragma: no cover - very old torchvision
        name = "alexnet-owt-7be5be79.pth"
    return (Path(torch.hub.get_dir()) / "checkpoints" / name).is_file()


def build_bench_lpips(choice: str, device: torch.device) -> tuple[torch.nn.Module, str]:
    """LPIPS-AlexNet and the backbone used (``imagenet`` or ``random``) for ``--lpips_backbone``."""
    from sdtoolkit.evaluation.ns_lpips import build_lpips

    if choice == "auto":
        choice = "imagenet" if alexnet_weights_cached() else "random"
        if choice == "random":
            print("toy_bench: WARNING: torchvision's ImageNet AlexNet weights are not in the torch hub cache "
                  f"({torch.hub.get_dir()}/checkpoints) and there may be no network: LPIPS uses a RANDOM "
                  "AlexNet backbone (fixed seed; LPIPS' own linear weights). These preserve_lpips values only "
                  "compare the runs of this table with each other (column lpips_backbone = random).",
                  file=sys.stderr)
    return build_lpips("alex", choice == "random", device), choice


def masked_lpips(loss_fn: torch.nn.Module, a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """NS-LPIPS (corrected mode) of two images in [0, 1] on ``mask`` (1 = compared), at 256×256."""
    from sdtoolkit.evaluation.ns_lpips import ns_lpips

    if not np.asarray(mask).any():
        return float("nan")

    def up(x: np.ndarray, mode: str) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x)).float()
        t = t.permute(2, 0, 1)[None] if t.ndim == 3 else t[None, None]
        if t.shape[-1] == LPIPS_SIZE:
            return t
        kwargs = {"align_corners": False, "antialias": True} if mode == "bicubic" else {}
        return F.interpolate(t, size=(LPIPS_SIZE, LPIPS_SIZE), mode=mode, **kwargs).clamp(0, 1)

    return ns_lpips(loss_fn, up(as_float(a), "bicubic"), up(as_float(b), "bicubic"),
                    up(np.asarray(mask, dtype=np.float32), "nearest"), mode="corrected")


# ----------------------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------------------

@dataclass
class EditCase:
    """One caption edit of a scene with its ground truth."""

    kind: str
    scene: Scene
    source_word: str
    target_word: str
    target_prompt: str
    image: np.ndarray  # ground-truth render of the edited scene, (H, W, 3) uint8
    masks: list[np.ndarray]
    blend: tuple[tuple[str, ...], tuple[str, ...]] | None


@dataclass
class BenchScene:
    """One held-out scene, its input file and its three edits."""

    index: int
    seed: int
    scene: Scene
    prompt: str
    image: np.ndarray  # (H, W, 3) uint8
    masks: list[np.ndarray]
    path: Path
    edits: list[EditCase]
    free_ok: dict = None  # kind -> whether the model's free sample of the target prompt passes the test


def scene_seed(seed: int, k: int) -> int:
    """Seed of the k-th scene of run ``--seed seed``: held-out range, 10,000 scenes apart per run seed."""
    return HELDOUT_SEED_START + seed * SEED_STRIDE + k


def blend_words(kind: str, source_word: str, target_word: str, object_blend: str,
                background_blend: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The ``blend_word`` pair of an edit (None: no local blend).

    Object edits (``object_blend``): ``word`` blends on the edited word itself. Background edits
    (``background_blend``): ``word`` blends on the colour word, ``background`` on the word
    "background", ``both`` on both words.
    """
    if kind != "background":
        if object_blend not in ("word", "none"):
            raise UsageError(f"--object_blend {object_blend!r} is not one of word, none")
        return None if object_blend == "none" else ((source_word,), (target_word,))
    if background_blend == "none":
        return None
    if background_blend == "word":
        return (source_word,), (target_word,)
    if background_blend == "background":
        return ("background",), ("background",)
    if background_blend == "both":
        return (source_word, "background"), (target_word, "background")
    raise UsageError(f"--background_blend {background_blend!r} is not one of {', '.join(BLEND_CHOICES)}")


def make_scene(index: int, seed: int, size: int, folder: Path, object_blend: str, background_blend: str) -> BenchScene:
    """Render held-out scene ``seed`` at ``size`` px into ``folder`` and draw its three edits."""
    scene = scene_from_seed(seed)
    prompt = caption(scene)
    image, masks = render(scene, size)
    path = folder / f"scene-{seed}.png"
    save_image(path, image)
    rng = np.random.default_rng([seed, 1])  # the same edits for every method
    edits = []
    for kind in EDIT_KINDS:
        new, src, tgt = edit_scene(scene, kind, rng)
        target = caption(new)
        words = prompt.split()
        assert words.count(src) == 1 and target == " ".join(tgt if w == src else w for w in words), (prompt, target)
        new_image, new_masks = render(new, size)
        edits.append(EditCase(kind, new, src, tgt, target, np.asarray(new_image), new_masks,
                              blend_words(kind, src, tgt, object_blend, background_blend)))
    return BenchScene(index, seed, scene, prompt, np.asarray(image), masks, path, edits)


@torch.no_grad()
def free_check(models, scene: BenchScene, steps: int, guidance: float, dilate_px: int, shape_window: int) -> dict:
    """Whether the model can draw each edit's target at all: sample the target prompts from a Gaussian z_T
    (seeded by the scene) with plain DDIM + guidance, no inversion, and apply the edit's success test.

    A failed edit whose ``model_can`` is False says more about the model than about the editing method.
    """
    from sdtoolkit.methods.inversions import DDIMInversion
    from sdtoolkit.methods.sampler import sample

    gen = torch.Generator().manual_seed(scene.seed)
    z_T = torch.randn((1, 4, models.latent_size, models.latent_size), generator=gen).to(models.device)
    null = models.encode_text([""]).float()
    texts = models.encode_text([c.target_prompt for c in scene.edits]).float()
    images = models.decode_latent(sample(models, models.schedule(steps), DDIMInversion(z_T, null), texts,
                                         guidance_scale=guidance))
    out = {}
    for case, image in zip(scene.edits, images):
        s = score_edit(case.kind, to_uint8(image), scene.scene, case.scene, scene.masks, case.masks, case.source_word,
                       case.target_word, dilate_px, shape_window)
        out[case.kind] = s["success"]
    return out


def model_snapshot(model: str) -> str:
    """For ``--model toy``: the UNet training step recorded in ``toy_model/TRAINING.json``; else ''."""
    if model != "toy":
        return ""
    from sdtoolkit.core.models import TOY_MODEL_DIR

    try:
        info = json.loads((TOY_MODEL_DIR / "TRAINING.json").read_text(encoding="utf-8"))
        return f"unet step {info['unet']['steps']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] → (H, W, 3) uint8 (as the toolkit saves images)."""
    return (x.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def run_method(models, scene: BenchScene, method: str, args: argparse.Namespace, work: Path, loss_fn,
               backbone: str) -> tuple[list[dict], list[np.ndarray]]:
    """Invert ``scene`` with ``method`` once, run its three edits; return CSV rows and the grid tiles."""
    from sdtoolkit.core.checks import validate_edit
    from sdtoolkit.core.settings import EditConfig, InvertConfig, Taus
    from sdtoolkit.jobs.edit import build_controller, edit_latents
    from sdtoolkit.jobs.invert import invert, load_inversion, load_source

    inner = inner_steps_for(method, args)
    cfg = InvertConfig(prompt=scene.prompt, image_path=str(scene.path), index=scene.index, model=args.model,
                       inversion=method, num_ddim_steps=args.steps, guidance_scale=args.guidance,
                       num_inner_steps=inner, seed=scene.seed, model_dir=str(work))
    start = time.perf_counter()
    # overwrite: the saved identity names the model ("toy"), not its weights, which change while training
    invert(models, cfg, overwrite=True, progress=False)
    invert_s = time.perf_counter() - start
    source = load_source(models, cfg.image_path, cfg.crop)
    null = models.encode_text([""]).float()
    src_text = models.encode_text([cfg.prompt]).float()
    inv, _ = load_inversion(models, cfg, source, src_text, null)
    vae = to_uint8(models.decode_latent(source.z0)[0])
    taus = Taus(args.tau_v, args.tau_c, args.tau_s, args.tau_u)
    rows, tiles, recon = [], [], None
    for case in scene.edits:
        free = scene.free_ok.get(case.kind)
        edit = EditConfig(target=case.target_prompt, edit_type="Replacement", tau_v=[args.tau_v], tau_c=[args.tau_c],
                          tau_s=[args.tau_s], tau_u=[args.tau_u], blend_word=case.blend)
        validate_edit(cfg.prompt, edit, models.tokenizer)
        t0 = time.perf_counter()
        controller = build_controller(models, cfg.prompt, edit, args.steps, taus)
        if controller.local_blend is not None:
            controller.local_blend.threshold = args.blend_threshold
        texts = torch.cat([src_text, models.encode_text([edit.target]).float()])
        z = edit_latents(models, inv, cfg.prompt, edit, taus, texts, args.steps, args.guidance, controller)
        images = models.decode_latent(z)
        edit_s = time.perf_counter() - t0
        rec, edited = to_uint8(images[0]), to_uint8(images[1])
        blend_frac = np.nan
        if controller.local_blend is not None and controller.store.sums:
            blend_frac = float(controller.local_blend.mask(controller.store, tuple(z.shape[2:])).mean())
        recon = rec if recon is None else recon
        scores = score_edit(case.kind, edited, scene.scene, case.scene, scene.masks, case.masks, case.source_word,
                            case.target_word, args.dilate, args.shape_window)
        keep = preservation_mask(case.kind, scene.masks, case.masks, args.dilate)
        rows.append({
            "scene": scene.index, "scene_seed": scene.seed, "n_objects": len(scene.scene.objects),
            "method": method, "kind": case.kind, "prompt": scene.prompt, "target": case.target_prompt,
            "source_word": case.source_word, "target_word": case.target_word,
            "blend": "none" if case.blend is None else f"{list(case.blend[0])}->{list(case.blend[1])}",
            "recon_psnr": psnr(rec, scene.image), "vae_psnr": psnr(vae, scene.image),
            **scores,
            "model_can": free, "blend_frac": blend_frac,
            "preserve_psnr": psnr(edited, scene.image, keep),
            "preserve_lpips": masked_lpips(loss_fn, scene.image, edited, keep),
            "preserve_pixels": int(keep.sum()),
            "lpips_backbone": backbone,
            "steps": args.steps, "inner": inner if method in DEFAULT_INNER else 0,
            "tau_v": args.tau_v, "tau_c": args.tau_c, "tau_s": args.tau_s, "tau_u": args.tau_u,
            "invert_s": round(invert_s, 3), "edit_s": round(edit_s, 3),
        })
        tiles += [case.image, edited]
    return rows, [scene.image, recon] + tiles


def inner_steps_for(method: str, args: argparse.Namespace) -> int:
    """Inner iterations of ``method``: --nulltext_inner for null-text, --inner, else the method's default."""
    if method == "nulltext" and args.nulltext_inner is not None:
        return args.nulltext_inner
    if args.inner is not None:
        return args.inner
    return DEFAULT_INNER.get(method, 1)


def save_grid(path: Path, tiles: list[np.ndarray], scale: int = 2) -> None:
    """Tiles side by side (upscaled ×``scale``, nearest) with a 2-pixel white gap."""
    h, w = tiles[0].shape[:2]
    gap = 2
    out = np.full((h * scale, len(tiles) * (w * scale + gap) - gap, 3), 255, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        big = np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)
        out[:, k * (w * scale + gap):k * (w * scale + gap) + w * scale] = big
    save_image(path, Image.fromarray(out))


SUMMARY_COLUMNS = {
    "recon_psnr": "recon PSNR", "vae_psnr": "VAE PSNR", "success": "success", "exact": "exact", "dist_target": "d(target)", "dist_source": "d(source)",
    "iou_target": "IoU tgt", "iou_source": "IoU src", "colour_kept": "colour kept",
    "preserve_psnr": "preserve PSNR", "preserve_lpips": "preserve LPIPS", "model_can": "model can",
    "blend_frac": "blend area",
}


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Means per method × kind (success and colour_kept as rates; inf PSNRs count as 100 dB)."""
    df = table.copy()
    for col in ("recon_psnr", "preserve_psnr", "vae_psnr"):
        df[col] = pd.to_numeric(df[col], errors="coerce").replace([np.inf], 100.0)
    for col in ("success", "exact", "colour_kept", "model_can"):
        df[col] = df[col].map(lambda v: np.nan if v is None or (isinstance(v, float) and np.isnan(v)) else float(bool(v)))
    cols = list(SUMMARY_COLUMNS) + ["invert_s", "edit_s"]
    order = {m: k for k, m in enumerate(METHODS)}
    kinds = {k: j for j, k in enumerate(EDIT_KINDS)}
    grouped = df.groupby(["method", "kind"], sort=False)[cols].mean(numeric_only=False)
    grouped["n"] = df.groupby(["method", "kind"], sort=False).size()
    grouped = grouped.reset_index()
    grouped = grouped.sort_values(by=["method", "kind"], key=lambda s: s.map({**order, **kinds})).reset_index(drop=True)
    return grouped


def markdown_table(summary: pd.DataFrame) -> str:
    """The summary as a GitHub markdown table (blank cells where a score does not apply)."""
    heads = ["method", "kind", "n"] + list(SUMMARY_COLUMNS.values()) + ["invert s", "edit s"]
    keys = ["method", "kind", "n"] + list(SUMMARY_COLUMNS) + ["invert_s", "edit_s"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" if k in ("method", "kind") else "---:" for k in keys) + "|"]
    for _, row in summary.iterrows():
        cells = []
        for k in keys:
            v = row[k]
            if k in ("method", "kind"):
                cells.append(str(v))
            elif k == "n":
                cells.append(str(int(v)))
            elif v is None or (isinstance(v, float) and np.isnan(v)):
                cells.append("")
            elif k in ("success", "exact", "colour_kept", "model_can", "blend_frac"):
                cells.append(f"{100 * v:.0f} %")
            elif k in ("iou_target", "iou_source", "preserve_lpips"):
                cells.append(f"{v:.3f}")
            else:
                cells.append(f"{v:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(summary: pd.DataFrame, args: argparse.Namespace, backbone: str, snapshot: str, seconds: float,
           n_scenes: int, device: str = "cpu") -> str:
    """The markdown file: settings, table, legend."""
    inner = {m: inner_steps_for(m, args) for m in args.methods if m in DEFAULT_INNER}
    lines = [
        "# Toy-world editing benchmark",
        "",
        f"- model: `{args.model}`{f' ({snapshot})' if snapshot else ''}; {n_scenes} held-out scenes, seeds "
        f"{scene_seed(args.seed, 0)}…{scene_seed(args.seed, n_scenes - 1)}",
        f"- DDIM steps {args.steps}, guidance {args.guidance}, inner iterations {inner or '-'}",
        f"- Replacement, tau_v {args.tau_v}, tau_c {args.tau_c}, tau_s {args.tau_s}, tau_u {args.tau_u}; "
        f"local blend: object edits `{args.object_blend}`, background edits `{args.background_blend}`, "
        f"threshold {args.blend_threshold}",
        f"- preservation: outside the edited object's mask dilated by {args.dilate} px (object edits), inside "
        "the object masks eroded by 1 px (background edits)",
        f"- LPIPS backbone: {backbone}" + (" (random weights: compare rows of this table only)" if backbone == "random" else ""),
        f"- runtime {seconds:.0f} s on {device} "
        f"({torch.get_num_threads()} torch thread(s))",
        "",
        markdown_table(summary),
        "",
        "success: colour edits: mean colour in the object's mask nearer the target than the source colour; "
        "background: mean colour outside the dilated object masks nearer the target background colour; "
        "shape: IoU of the object-coloured region with the target shape > IoU with the source shape. exact: that "
        "mean colour's nearest palette colour is the target colour (stricter than success). "
        "d(target)/d(source): RGB distances (0-255) of that mean colour. colour kept: after a shape edit the "
        "object's mean colour is still nearest its own palette colour. model can: a free sample of the target "
        "prompt (Gaussian z_T, no inversion, no attention control) passes the same test, i.e. the model can "
        "draw the target at all. blend area: fraction of the latent the local-blend mask lets change. "
        "VAE PSNR: the VAE round trip of the input (ceiling of recon PSNR). PSNR in dB (inf counted as 100).",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="toy_bench",
        description="Reconstruction, edit success and preservation of StyleDiffusion and the baseline inversions "
                    "on held-out toy-world scenes with exact ground truth (see the module docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=20, help="number of held-out scenes")
    parser.add_argument("--seed", type=int, default=0,
                        help=f"scene seeds are {HELDOUT_SEED_START} + seed*{SEED_STRIDE} + k, k < n")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated inversion methods")
    parser.add_argument("--model", default="toy", help="toy (shipped toy_model/), tiny (random, tests) or a folder")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps T (inversion, training, editing)")
    parser.add_argument("--inner", type=int, default=None,
                        help=f"inner iterations of the trained inversions; None: {DEFAULT_INNER}")
    parser.add_argument("--nulltext_inner", type=int, default=None,
                        help="inner iterations of null-text inversion only (overrides --inner for it)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    parser.add_argument("--tau_v", type=float, default=0.5, help="fraction of steps with the mapped value input")
    parser.add_argument("--tau_c", type=float, default=0.6, help="cross-attention replacement fraction")
    parser.add_argument("--tau_s", type=float, default=0.6, help="self-attention replacement fraction")
    parser.add_argument("--tau_u", type=float, default=0.0, help="unconditional self-attention replacement (P2Plus)")
    parser.add_argument("--object_blend", choices=("word", "none"), default="word",
                        help="local blend of colour and shape edits: on the edited word, or none")
    parser.add_argument("--background_blend", choices=BLEND_CHOICES, default="none",
                        help="local blend of background edits: none, the colour word ('word'), the word "
                             "'background', or both")
    parser.add_argument("--blend_threshold", type=float, default=0.3,
                        help="local-blend threshold on the max-normalised attention mask (docs/method.md §4: 0.3)")
    parser.add_argument("--no_free_check", action="store_true",
                        help="skip the model_can check (free samples of the target prompts)")
    parser.add_argument("--dilate", type=int, default=3, help="pixels by which object masks are dilated")
    parser.add_argument("--shape_window", type=int, default=4,
                        help="pixels around the two shape masks in which the shape test looks")
    parser.add_argument("--lpips_backbone", choices=("auto", "imagenet", "random"), default="auto",
                        help="LPIPS AlexNet weights: auto = ImageNet if cached in the torch hub, else random")
    parser.add_argument("--device", default="auto", help="torch device (auto: cuda if available)")
    parser.add_argument("--dtype", default="fp32", help="network precision (fp32, bf16, fp16, auto)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the scene PNGs and inversion files; None: a temporary folder, removed")
    parser.add_argument("--no_images", action="store_true", help="do not write the per-scene grids")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        parser.error(f"--methods {','.join(bad) or '(empty)'}: choose from {', '.join(METHODS)}")
    if args.n < 1 or args.steps < 1:
        parser.error("--n and --steps must be >= 1")
    for name in ("inner", "nulltext_inner"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    for name in ("tau_v", "tau_c", "tau_s", "tau_u"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            parser.error(f"--{name} must be in [0, 1]")
    return args


def run(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Run the benchmark; write the CSV, the markdown and the grids; return (rows, summary, markdown)."""
    from sdtoolkit.core.models import load_models

    start = time.perf_counter()
    for _ in range(3):  # toy_model/ may be re-exported by a running training: load a consistent snapshot
        snapshot = model_snapshot(args.model)
        models = load_models(args.model, device=args.device, dtype=args.dtype)
        if model_snapshot(args.model) == snapshot:
            break
        time.sleep(5)
    loss_fn, backbone = build_bench_lpips(args.lpips_backbone, models.device)
    work_tmp = None
    if args.work is None:
        work_tmp = tempfile.mkdtemp(prefix="toy_bench-")
        work = Path(work_tmp)
    else:
        work = args.work
        work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    try:
        scenes = [make_scene(k, scene_seed(args.seed, k), models.image_size, work, args.object_blend,
                             args.background_blend) for k in range(args.n)]
        for scene in scenes:
            scene.free_ok = {} if args.no_free_check else free_check(models, scene, args.steps, args.guidance,
                                                                      args.dilate, args.shape_window)
        jobs = [(s, m) for s in scenes for m in args.methods]
        bar = tqdm(jobs, desc="toy bench", unit="inversion", disable=args.no_progress)
        for scene, method in bar:
            bar.set_postfix(scene=scene.index, method=method)
            new_rows, tiles = run_method(models, scene, method, args, work, loss_fn, backbone)
            rows += new_rows
            if not args.no_images:
                save_grid(args.out / "images" / f"scene{scene.index:03d}-{scene.seed}-{method}.png", tiles)
        bar.close()
    finally:
        if work_tmp is not None:
            shutil.rmtree(work_tmp, ignore_errors=True)
    table = pd.DataFrame(rows)
    summary = summarise(table)
    seconds = time.perf_counter() - start
    text = report(summary, args, backbone, snapshot, seconds, len(scenes), str(models.device))
    atomic_write(args.out / CSV_NAME, lambda tmp: table.to_csv(tmp, index=False))
    atomic_write(args.out / MD_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return table, summary, text


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        _, _, text = run(args)
    except UsageError as err:
        print(f"toy_bench: error: {err}", file=sys.stderr)
        return 2
    print(text)
    print(f"written: {args.out / CSV_NAME}, {args.out / MD_NAME}")
    return 0


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        sys.exit(main())
