"""Toy-world ground-truth scores of a toy PIE-Bench run: reconstruction, edit success and preservation per case.

A toy PIE-Bench folder (written by ``python -m toyworld.pie_bench``) holds ``toy_ground_truth.json``: per case
the edit kind (colour / shape / background), the source and target words, every object's mask in the
source and the edited scene (run-length pairs, no border rule) and the palette. From the runner's 4-panel
output (source | reconstruction | edited are panels 2-4) this module computes, images in [0, 1]:

* ``recon_psnr``: PSNR of the reconstruction panel against the source image;
* ``success``: colour edits: the mean RGB inside the edited object's target mask is nearer (Euclidean) the
  target colour than the source colour; background edits: the same for the mean RGB outside every object
  mask dilated by ``dilate`` px; shape edits: the object-coloured pixels near the object overlap the target
  shape's mask better (IoU) than the source shape's; ``exact`` (colour, background): the nearest palette
  colour of that mean is the target; ``colour_kept`` (shape): the object's colour is still its own;
* ``preserve_psnr``: PSNR of edited vs source outside the edited object's masks dilated by ``dilate`` px
  (object edits), or inside the object masks eroded by 1 px (background edits).

These are the scores of the former toy benchmark, now taken from the same run that the PIE-Bench metrics
score (``pie_metrics`` adds them when the folder has ground truth).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from sdtoolkit.core.paths import contained
from sdtoolkit.jobs.pie_data import PieCase, decode_mask

GROUND_TRUTH_FILE = "toy_ground_truth.json"
TOY_METRICS = ("recon_psnr", "success", "exact", "colour_kept", "preserve_psnr")


def has_ground_truth(data_path: Path) -> bool:
    return (Path(data_path) / GROUND_TRUTH_FILE).is_file()


def as_float(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float64 in [0, 1] from uint8."""
    return np.asarray(image, dtype=np.float64) / 255.0


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a disc of ``radius`` pixels (radius 0: unchanged)."""
    mask = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return mask.copy()
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    h, w = mask.shape
    padded, out = np.pad(mask, radius), np.zeros_like(mask)
    for dy, dx in zip(*np.nonzero(x * x + y * y <= radius * radius + 1e-9)):
        out |= padded[dy:dy + h, dx:dx + w]
    return out


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by a disc (outside the image counts as inside the mask)."""
    return ~dilate(~np.asarray(mask, dtype=bool), radius)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB of two uint8 images over ``mask`` (all pixels if None): 10·log10(1 / MSE), MSE over pixels
    and channels in [0, 1]; 100 for identical images (as the former toy table counted inf), NaN for an empty mask."""
    sq = ((as_float(a) - as_float(b)) ** 2).mean(axis=-1)  # (H, W, 3) -> (H, W)
    if mask is not None:
        if not np.asarray(mask).any():
            return math.nan
        sq = sq[np.asarray(mask, dtype=bool)]
    mse = float(sq.mean())
    return 100.0 if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def mean_colour(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean RGB (0-255) over ``mask``; NaNs when empty."""
    mask = np.asarray(mask, dtype=bool)
    return np.full(3, np.nan) if not mask.any() else np.asarray(image, dtype=np.float64)[mask].mean(axis=0)


def nearest(rgb: np.ndarray, palette: dict[str, list[int]]) -> str:
    """Name of the palette colour nearest (Euclidean) ``rgb``."""
    return min(palette, key=lambda name: float(np.linalg.norm(rgb - np.asarray(palette[name], dtype=np.float64))))


def colour_region(image: np.ndarray, colour: str, palette: dict[str, list[int]]) -> np.ndarray:
    """Pixels whose nearest palette colour is ``colour``."""
    names = list(palette)
    pal = np.asarray([palette[n] for n in names], dtype=np.float64)  # (P, 3)
    d = ((np.asarray(image, dtype=np.float64)[:, :, None, :] - pal[None, None]) ** 2).sum(-1)  # (H, W, P)
    return d.argmin(-1) == names.index(colour)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return math.nan if union == 0 else float((a & b).sum() / union)


def score_case(truth: dict, source: np.ndarray, reconstruction: np.ndarray, edited: np.ndarray,
               dilate_px: int = 3, shape_window: int = 4) -> dict[str, float]:
    """The toy scores of one case from its ground truth entry and three (H, W, 3) uint8 images."""
    shape = source.shape[:2]
    src = [decode_mask(m, shape, border=False).astype(bool) for m in truth["source_masks"]]
    tgt = [decode_mask(m, shape, border=False).astype(bool) for m in truth["target_masks"]]
    palette, kind = truth["palette"], truth["kind"]
    s_word, t_word = truth["source_word"], truth["target_word"]
    objects = np.logical_or.reduce(src + tgt)
    out = dict.fromkeys(TOY_METRICS, math.nan)
    out["recon_psnr"] = psnr(reconstruction, source)
    if kind in ("colour", "background"):
        region = tgt[0] if kind == "colour" else ~dilate(objects, dilate_px)
        mean = mean_colour(edited, region)
        d_src = np.linalg.norm(mean - np.asarray(palette[s_word], dtype=np.float64))
        d_tgt = np.linalg.norm(mean - np.asarray(palette[t_word], dtype=np.float64))
        out["success"] = float(d_tgt < d_src)
        out["exact"] = float(nearest(mean, palette) == t_word)
    elif kind == "shape":
        colour = truth["target_scene"]["objects"][0]["colour"]
        region = colour_region(edited, colour, palette) & dilate(src[0] | tgt[0], shape_window)
        i_tgt, i_src = iou(region, tgt[0]), iou(region, src[0])
        out["success"] = float(np.isfinite(i_tgt) and np.isfinite(i_src) and i_tgt > i_src)
        out["colour_kept"] = float(nearest(mean_colour(edited, tgt[0]), palette) == colour)
    else:
        raise ValueError(f"unknown edit kind {kind!r}")
    keep = erode(np.logical_or.reduce(src), 1) if kind == "background" else ~dilate(src[0] | tgt[0], dilate_px)
    out["preserve_psnr"] = psnr(edited, source, keep)
    return out


def panels(output: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(reconstruction, edited) of a 4-panel output: its last two (H, W) = ``size`` panels."""
    height, width = size
    if output.shape[0] != height or output.shape[1] < 2 * width:
        raise ValueError(f"output is {output.shape[1]}x{output.shape[0]}, not panels of {width}x{height}")
    return output[:, -2 * width:-width], output[:, -width:]


def score_outputs(data_path: Path, output_dirs: dict[str, Path], cases: Sequence[PieCase], read_rgb) -> pd.DataFrame:
    """One row per method × case with the toy scores (NaN when the output is missing or unreadable)."""
    truth = json.loads((Path(data_path) / GROUND_TRUTH_FILE).read_text(encoding="utf-8"))
    rows = []
    for case in cases:
        if case.key not in truth:
            continue
        source = read_rgb(case.source_file(data_path))
        for method, folder in output_dirs.items():
            row = {"method": method, "file_id": case.key, "kind": truth[case.key]["kind"],
                   **dict.fromkeys(TOY_METRICS, math.nan)}
            path = contained(folder, case.image_path, "image_path")
            if path.is_file():
                try:
                    reconstruction, edited = panels(read_rgb(path), case.image_size)
                    row.update(score_case(truth[case.key], source, reconstruction, edited))
                except (ValueError, OSError):
                    pass  # pie_metrics reports unreadable and mis-sized outputs
            rows.append(row)
    return pd.DataFrame(rows, columns=["method", "file_id", "kind", *TOY_METRICS])


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Means per method × kind and per method (success, exact, colour_kept as rates), with case counts."""
    parts = [table.assign(kind="all"), table]
    both = pd.concat(parts)
    grouped = both.groupby(["method", "kind"], sort=False)[list(TOY_METRICS)].mean()
    grouped["n"] = both.groupby(["method", "kind"], sort=False).size()
    methods = list(dict.fromkeys(table["method"]))
    kinds = ["all", *dict.fromkeys(table["kind"])]
    grouped = grouped.reset_index()
    order = grouped["method"].map(methods.index) * len(kinds) + grouped["kind"].map(kinds.index)
    return grouped.iloc[order.argsort(kind="stable")].reset_index(drop=True)


def markdown(summary: pd.DataFrame) -> str:
    """The summary as a markdown table (rates in %, PSNR in dB; blank where a score does not apply)."""
    heads = ["method", "kind", "n", "recon PSNR", "success", "exact", "colour kept", "preserve PSNR"]
    lines = ["| " + " | ".join(heads) + " |", "|---|---|" + "---:|" * (len(heads) - 2)]
    for _, row in summary.iterrows():
        cells = [str(row["method"]), str(row["kind"]), str(int(row["n"]))]
        for key in TOY_METRICS:
            value = row[key]
            cells.append("" if pd.isna(value) else f"{100 * value:.0f} %" if key in ("success", "exact", "colour_kept")
                         else f"{value:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
