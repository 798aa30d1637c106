"""Inner-iteration schedules side by side: UNet forward+backward passes and reconstruction per image.

For each distinct source image of a PIE-Bench folder (the toy PIE-Bench: ``python -m toyworld.pie_bench``),
trains StyleDiffusion's mapping networks with every ``--schedule`` in one run (same DDIM inversion, same
seed) and reports the training passes, the latent MSE to z_0 and the PSNR of the decoded reconstruction
against the input (sampling back with guidance 7.5 through the trained M_t). Writes JSON with ``--json``.

    python -m toyworld.pie_bench --out /tmp/toy_pie/data --n 4
    python benchmarks/schedules.py --model toy --data_path /tmp/toy_pie/data --images 1 --json sched.json
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F

from sdtoolkit.core.io import write_json
from sdtoolkit.core.models import load_models
from sdtoolkit.core.settings import Schedule, TrainSettings
from sdtoolkit.jobs.invert import load_source
from sdtoolkit.jobs.pie_data import load_benchmark
from sdtoolkit.methods.inversions import StyleDiffusionInversion, ddim_inversion
from sdtoolkit.methods.sampler import sample


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of images in [0, 1]."""
    return 10 * math.log10(1.0 / F.mse_loss(a.float(), b.float()).item())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy")
    p.add_argument("--data_path", required=True, help="a PIE-Bench folder (mapping_file.json + annotation_images/)")
    p.add_argument("--images", type=int, default=1, help="distinct source images to train (first ones)")
    p.add_argument("--num_ddim_steps", type=int, default=50)
    p.add_argument("--num_inner_steps", type=int, default=100)
    p.add_argument("--schedules", nargs="+", default=[Schedule.REFERENCE.value, Schedule.FAST.value],
                   choices=[s.value for s in Schedule], help="light is for stylediffusion_direct, at a small --num_inner_steps")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)
    models = load_models(args.model, args.device, "fp32")
    schedule = models.schedule(args.num_ddim_steps)
    seen: dict[str, str] = {}
    for case in load_benchmark(args.data_path).cases:
        path = str(case.source_file(args.data_path))
        if case.source_prompt not in seen and len(seen) < args.images:
            seen[case.source_prompt] = path
    rows = []
    for prompt, path in seen.items():
        source = load_source(models, path)
        text = models.encode_text([prompt]).float()
        null = models.encode_null()
        recorded = StyleDiffusionInversion.recorded_maps(models, TrainSettings())
        trace = ddim_inversion(models, source.z0, text, schedule, recorded)
        for name in args.schedules:
            settings = TrainSettings(num_inner_steps=args.num_inner_steps, schedule=Schedule(name))
            torch.manual_seed(0)
            start = time.perf_counter()
            inv, log = StyleDiffusionInversion.fit(models, trace, text, null, source.x, schedule, settings, False)
            seconds = time.perf_counter() - start
            z = sample(models, schedule, inv, text)
            rows.append({"image": path, "prompt": prompt, "schedule": name, "passes": sum(log.iterations),
                         "iterations_per_step": log.iterations, "train_seconds": round(seconds, 1),
                         "latent_mse": F.mse_loss(z, source.z0).item(),
                         "psnr_db": psnr(models.decode_latent(z), source.x / 2 + 0.5)})
            r = rows[-1]
            print(f"{prompt[:48]:<48} {name:<9} passes {r['passes']:>5}  latent MSE {r['latent_mse']:.2e}  "
                  f"PSNR {r['psnr_db']:.2f} dB  ({seconds:.0f} s)", flush=True)
    if args.json:
        write_json(args.json, {"model": args.model, "num_ddim_steps": args.num_ddim_steps,
                               "num_inner_steps": args.num_inner_steps, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
