"""Write a diffusers SD pipeline folder with random weights (+ ``image_encoder/``), loadable by ``--model FOLDER``,
so the CLIs can be timed end to end on a GPU without downloading weights (timing does not depend on the weights'
values). Default: the full-size SD 1.4 architecture (``bench.py``'s :func:`sd14_random`: UNet, VAE, CLIP ViT-L/14
text encoder, CLIP ViT-B/16 image encoder; ~4.6 GB in fp32); ``--tiny``: the tiny model (for ``gpu_check.sh
--dry-run``).

    python benchmarks/make_random_sd.py /tmp/random-sd --device cuda
"""
from __future__ import annotations

import argparse
import sys

import torch

from bench import sd14_random
from sdtoolkit.core.models import load_models, resolve_device, save_pipeline_folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the folder to write (a diffusers StableDiffusionPipeline layout)")
    p.add_argument("--tiny", action="store_true", help="the tiny random model instead of the full-size one")
    p.add_argument("--device", default="auto", help="where the random weights are initialised")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    models = load_models("tiny", "cpu", "fp32") if args.tiny else sd14_random(device, torch.float32)
    print(f"wrote {save_pipeline_folder(models, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
