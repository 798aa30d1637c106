"""Measure how well a toy model follows its captions (colours, background, placement) on held-out scenes.

For N held-out scene seeds (>= ``HELDOUT_SEED_START``) the caption is sampled with DDIM (30 steps,
guidance 7.5) and checked against the ground truth of the caption's scene (objects at the caption's
positions):

* object colour (the headline test): the mean RGB inside the object's ground-truth mask is nearer to
  the caption's colour than to any other palette colour; a scene passes when all its objects do;
* shape-agnostic object colour: the mean RGB of a small disc at the object's centre (inside every
  shape), and the most frequent non-background palette colour in the object's square neighbourhood;
* background colour: the mean RGB outside the (dilated) object masks;
* placement: IoU between the pixels nearest to the object's colour and its ground-truth mask.

The same checks on the ground-truth renders and on their VAE reconstructions are reported as references.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from sdtoolkit.core.io import save_image, write_json
from toyworld.scenes import HELDOUT_SEED_START, PALETTE, Scene, caption, nearest_colour, render, scene_from_seed

PALETTE_ARRAY = np.asarray(list(PALETTE.values()), dtype=np.float64)
PALETTE_NAMES = list(PALETTE)


def nearest_index_map(image: np.ndarray) -> np.ndarray:
    """Index (into ``PALETTE_NAMES``) of the nearest palette colour of every pixel of an (H, W, 3) image."""
    d = ((image[:, :, None, :].astype(np.float64) - PALETTE_ARRAY[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r+1)² square."""
    out = mask.copy()
    h, w = mask.shape
    padded = np.pad(mask, r)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def _disc(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean disc of radius ``r`` pixels at (cx, cy) pixels (pixel centres at +0.5)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r


def colour_checks(image: np.ndarray, scene: Scene) -> dict[str, Any]:
    """All caption checks of one generated (H, W, 3) uint8 image against ``scene``'s ground truth."""
    size = image.shape[0]
    _, masks = render(scene, size)
    img = image.astype(np.float64)
    idx = nearest_index_map(image)
    bg_i = PALETTE_NAMES.index(scene.background)
    objects = []
    for obj, mask in zip(scene.objects, masks):
        cx, cy, r = obj.centre[0] * size, obj.centre[1] * size, obj.radius * size
        core = _disc(mask.shape, cx, cy, max(1.0, 0.4 * r))
        box = np.zeros_like(mask)
        half = int(math.ceil(1.3 * r))
        box[max(0, int(cy) - half) : int(cy) + half + 1, max(0, int(cx) - half) : int(cx) + half + 1] = True
        box_idx = idx[box]
        fg = box_idx[box_idx != bg_i]
        majority = PALETTE_NAMES[int(np.bincount(fg, minlength=len(PALETTE_NAMES)).argmax())] if fg.size else None
        obj_i = PALETTE_NAMES.index(obj.colour)
        pred = idx == obj_i
        inter, union = np.logical_and(pred, mask).sum(), np.logical_or(pred, mask).sum()
        mask_colour = nearest_colour(img[mask].mean(0))
        core_colour = nearest_colour(img[core].mean(0))
        objects.append({
            "shape": obj.shape,
            "colour": obj.colour,
            "mask_colour": mask_colour,
            "core_colour": core_colour,
            "majority_colour": majority,
            "mask_ok": mask_colour == obj.colour,
            "core_ok": core_colour == obj.colour,
            "majority_ok": majority == obj.colour,
            "iou": float(inter / union) if union else 0.0,
        })
    outside = ~_dilate(np.any(np.stack(masks), 0), 2)
    bg_colour = nearest_colour(img[outside].mean(0))
    return {
        "objects": objects,
        "background": scene.background,
        "background_colour": bg_colour,
        "background_ok": bg_colour == scene.background,
        "colour_ok": all(o["mask_ok"] for o in objects),
        "core_ok": all(o["core_ok"] for o in objects),
        "majority_ok": all(o["majority_ok"] for o in objects),
    }


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Shares of passing scenes / objects, overall and by number of objects."""

    def block(recs: list[dict[str, Any]]) -> dict[str, Any]:
        objs = [o for r in recs for o in r["objects"]]
        share = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
        return {
            "scenes": len(recs),
            "colour_ok": share([r["colour_ok"] for r in recs]),
            "object_colour_ok": share([o["mask_ok"] for o in objs]),
            "core_colour_ok": share([r["core_ok"] for r in recs]),
            "majority_colour_ok": share([r["majority_ok"] for r in recs]),
            "background_ok": share([r["background_ok"] for r in recs]),
            "all_ok": share([r["colour_ok"] and r["background_ok"] for r in recs]),
            "mean_iou": share([o["iou"] for o in objs]),
        }

    out = {"all": block(records)}
    for n in sorted({len(r["objects"]) for r in records}):
        out[f"{n}_objects"] = block([r for r in records if len(r["objects"]) == n])
    return out


def load_models(folder: str) -> dict[str, Any]:
    """VAE, UNet, text encoder, tokenizer and DDIM scheduler of a pipeline folder, in eval mode."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    return {
        "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae").eval(),
        "unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval(),
        "text_encoder": CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval(),
        "tokenizer": CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        "scheduler": DDIMScheduler.from_pretrained(folder, subfolder="scheduler"),
    }


@torch.no_grad()
def encode_text(models: dict[str, Any], prompts: list[str]) -> torch.Tensor:
    """Text embeddings (N, 77, D)."""
    ids = models["tokenizer"](prompts, padding="max_length", max_length=77, truncation=True,
                              return_tensors="pt").input_ids
    return models["text_encoder"](ids).last_hidden_state


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] → (N, H, W, 3) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def sample(models: dict[str, Any], prompts: list[str], steps: int, guidance: float, seed: int) -> np.ndarray:
    """DDIM samples (eta 0) with classifier-free guidance: (N, H, W, 3) uint8."""
    vae, unet, sched = models["vae"], models["unet"], models["scheduler"]
    cond = encode_text(models, prompts)
    uncond = encode_text(models, [""]).expand_as(cond)
    context = torch.cat([uncond, cond])
    size = unet.config.sample_size
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((len(prompts), unet.config.in_channels, size, size), generator=gen) * sched.init_noise_sigma
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        eps_u, eps_c = unet(torch.cat([z, z]), t, encoder_hidden_states=context).sample.chunk(2)
        z = sched.step(eps_u + guidance * (eps_c - eps_u), t, z).prev_sample
    return to_uint8(vae.decode(z / vae.config.scaling_factor).sample)


@torch.no_grad()
def vae_roundtrip(models: dict[str, Any], images: np.ndarray) -> np.ndarray:
    """VAE reconstruction (posterior mean) of (N, H, W, 3) uint8 images."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return to_uint8(models["vae"].decode(models["vae"].encode(x).latent_dist.mean).sample)


def grid(images: list[np.ndarray], cols: int = 8, scale: int = 2) -> Image.Image:
    """Tile images into a grid, upscaled by ``scale`` (nearest)."""
    h, w = images[0].shape[:2]
    rows = math.ceil(len(images) / cols)
    canvas = Image.new("RGB", (cols * w * scale, rows * h * scale), (128, 128, 128))
    for i, im in enumerate(images):
        tile = Image.fromarray(im).resize((w * scale, h * scale), Image.Resampling.NEAREST)
        canvas.paste(tile, ((i % cols) * w * scale, (i // cols) * h * scale))
    return canvas


def measure(models: dict[str, Any], n: int, steps: int, guidance: float, seed_start: int,
            batch_size: int, noise_seed: int) -> dict[str, Any]:
    """Sample and check ``n`` held-out scenes; returns summaries, per-scene records and the samples."""
    if seed_start < HELDOUT_SEED_START:
        raise ValueError(f"evaluation seeds must be >= {HELDOUT_SEED_START} (held out from training)")
    size = models["vae"].config.sample_size
    scenes = [scene_from_seed(seed_start + i) for i in range(n)]
    truth = np.stack([np.asarray(render(s, size)[0]) for s in scenes])
    recon = np.concatenate([vae_roundtrip(models, truth[i : i + 64]) for i in range(0, n, 64)])
    samples = []
    for b in tqdm(range(0, n, batch_size), desc="sample", dynamic_ncols=True):
        prompts = [caption(s) for s in scenes[b : b + batch_size]]
        samples.append(sample(models, prompts, steps, guidance, noise_seed + b))
    generated = np.concatenate(samples)
    records = []
    for i, s in enumerate(scenes):
        rec = colour_checks(generated[i], s)
        records.append({"seed": seed_start + i, "caption": caption(s), **rec})
    return {
        "summary": summarise(records),
        "reference_ground_truth": summarise([colour_checks(truth[i], s) for i, s in enumerate(scenes)]),
        "reference_vae_reconstruction": summarise([colour_checks(recon[i], s) for i, s in enumerate(scenes)]),
        "records": records,
        "images": {"truth": truth, "recon": recon, "generated": generated},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="toy_model", help="pipeline folder")
    p.add_argument("--n", type=int, default=200, help="number of held-out scenes")
    p.add_argument("--seed_start", type=int, default=HELDOUT_SEED_START, help="first held-out scene seed")
    p.add_argument("--steps", type=int, default=30, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--batch_size", type=int, default=25, help="captions sampled together")
    p.add_argument("--noise_seed", type=int, default=0, help="seed of the initial latents")
    p.add_argument("--json", default=None, help="output JSON (default {model}/measure.json)")
    p.add_argument("--grid", default=None, help="optional PNG: rows of truth / VAE recon / sample")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    result = measure(load_models(args.model), args.n, args.steps, args.guidance, args.seed_start,
                     args.batch_size, args.noise_seed)
    images = result.pop("images")
    report = {"model": args.model, "n": args.n, "steps": args.steps, "guidance": args.guidance,
              "seed_start": args.seed_start, "noise_seed": args.noise_seed,
              "elapsed_s": time.monotonic() - started, **result}
    out = Path(args.json) if args.json else Path(args.model) / "measure.json"
    write_json(out, report)
    if args.grid:
        k = min(16, args.n)
        tiles = [images[key][j] for row in range(0, k, 8) for key in ("truth", "recon", "generated")
                 for j in range(row, min(row + 8, k))]
        save_image(args.grid, grid(tiles))
    print(json.dumps({"summary": report["summary"], "reference_vae_reconstruction":
                      report["reference_vae_reconstruction"]["all"]}, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
