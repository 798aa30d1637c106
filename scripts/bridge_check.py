"""Toy check that the learned width projection in M_t bridges an image encoder whose width differs from the text width.

StyleDiffusion is trained on held-out toy scenes twice: with the toy model's own image encoder (width 64 = the
text width, no bridge) and with a random CLIP vision encoder of the same shape but another width (the mapping
networks then learn a Linear(D_img → 64) per step, docs/method.md §3). Both encoders are random, as the toy's
is, so only the width differs. Prints the reconstruction PSNR (dB, guidance 7.5) of each run and of plain DDIM
inversion with guidance; the bridge passes when its mean PSNR is within 1 dB of the matched run's.

    python scripts/bridge_check.py --scenes 4 --num_ddim_steps 20 --num_inner_steps 20
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from sdtoolkit.core.models import TOY_MODEL_DIR, load_models
from sdtoolkit.core.settings import InvertConfig
from sdtoolkit.jobs.invert import invert, load_inversion, load_source
from sdtoolkit.methods.inversions import DDIMInversion
from sdtoolkit.methods.sampler import sample
from toyworld.scenes import HELDOUT_SEED_START, caption, render, scene_from_seed


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1]."""
    mse = torch.mean((a.float() - b.float()) ** 2).clamp_min(1e-12)
    return float(10 * torch.log10(1.0 / mse))


def other_width_encoder(width: int, folder: Path) -> str:
    """The toy image encoder's architecture at another width, random (seeded), saved to ``folder``."""
    config = CLIPVisionConfig.from_pretrained(TOY_MODEL_DIR / "image_encoder")
    config.hidden_size = width
    torch.manual_seed(3)
    CLIPVisionModel(config).save_pretrained(folder)
    return str(folder)


def run(image_encoder: str | None, scenes: list[tuple[str, str]], args: argparse.Namespace, work: Path) -> dict:
    models = load_models("toy", device="cpu", dtype="fp32", image_encoder=image_encoder)
    learned, plain = [], []
    for k, (path, prompt) in enumerate(scenes):
        cfg = InvertConfig(prompt=prompt, image_path=path, index=k, model="toy", num_ddim_steps=args.num_ddim_steps,
                           num_inner_steps=args.num_inner_steps, model_dir=str(work))
        invert(models, cfg, overwrite=True, progress=False)
        source = load_source(models, path)
        text = models.encode_text([prompt]).float()
        null = models.encode_null()
        inv, side = load_inversion(models, cfg, source, text, null)
        schedule = models.schedule(args.num_ddim_steps)
        x = (source.x / 2 + 0.5).clamp(0, 1)
        learned.append(psnr(models.decode_latent(sample(models, schedule, inv, text)), x))
        plain.append(psnr(models.decode_latent(sample(models, schedule, DDIMInversion(inv.z_T, null), text)), x))
    return {"image_encoder_width": models.image_width, "text_width": models.text_width,
            "width_bridge": side["backbone"]["width_bridge"], "psnr_stylediffusion": learned, "psnr_ddim_cfg": plain,
            "mean_stylediffusion": sum(learned) / len(learned), "mean_ddim_cfg": sum(plain) / len(plain)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scenes", type=int, default=4)
    p.add_argument("--width", type=int, default=96, help="width of the mismatched image encoder")
    p.add_argument("--num_ddim_steps", type=int, default=20)
    p.add_argument("--num_inner_steps", type=int, default=20)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scenes = []
        for k in range(args.scenes):
            scene = scene_from_seed(HELDOUT_SEED_START + k)
            image, _ = render(scene)
            image.save(tmp / f"scene{k}.png")
            scenes.append((str(tmp / f"scene{k}.png"), caption(scene)))
        matched = run(None, scenes, args, tmp / "matched")
        bridged = run(other_width_encoder(args.width, tmp / "encoder"), scenes, args, tmp / "bridged")
    gap = matched["mean_stylediffusion"] - bridged["mean_stylediffusion"]
    print(json.dumps({"matched": matched, "bridged": bridged, "gap_db": gap, "within_1db": gap <= 1.0}, indent=1))
    return 0 if gap <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
