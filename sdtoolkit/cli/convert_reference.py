"""Convert a mapping-network ``.pth`` file trained by the reference scripts into model_learnv/…-[N].safetensors + sidecar.

The usual editing command (``stylediffusion.py --is_train '' --index N --prompt P --image_path IMG …``) then
uses it. The file is read with ``torch.load(weights_only=True)`` and an allow-list of the reference's torch.nn
classes; anything else (another pickle, other shapes, another step count) stops with exit status 2 and
nothing written.
"""
from __future__ import annotations

import argparse
import sys

from sdtoolkit.cli import flags as cli
from sdtoolkit.core import checks
from sdtoolkit.core.paths import check_writable_dir


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser(__doc__)
    p.add_argument("pth", help="the reference's model-inner…-learnv-[N].pth")
    cli.add_flags(p, "--prompt", "--image_path", "--index", "--is_1word", "--crop", "--num_ddim_steps",
                  "--num_inner_steps", "--num_epoch", "--w_attnloss", "--guidance_scale", "--model_dir", "--overwrite",
                  defaults={"num_ddim_steps": 30, "num_inner_steps": 100, "guidance_scale": 7.5},
                  helps={"prompt": "the source prompt the networks were trained for",
                         "image_path": "the image they were trained on",
                         "crop": "the crop offsets used in training",
                         "num_ddim_steps": "sampling steps (= networks in the file)",
                         "num_inner_steps": "as trained (part of the file name)",
                         "num_epoch": "as trained (part of the file name)",
                         "w_attnloss": "False: trained without the attention loss"})
    # the reference trained at 512², square: no size flags; nothing is trained here: no --gradient_checkpointing
    cli.add_model_flags(p, compile_flag=False, size=False, training=False)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = cli.invert_config(args, checks.model_id(args.model, args.sd_version))
    checks.check_image(cfg.image_path)
    checks.check_output_names(cfg)
    check_writable_dir(cfg.folder(), "--model_dir")
    from sdtoolkit.core.models import load_models
    from sdtoolkit.jobs.convert import convert_reference, read_reference

    steps = read_reference(args.pth, cfg.num_ddim_steps)  # refuse a wrong file before loading the model
    models = load_models(cfg.model, args.device, args.dtype, **cli.load_kwargs(args))
    result = convert_reference(models, cfg, args.pth, steps, overwrite=args.overwrite)
    if not result.trained:
        print(f"already converted: {result.path} (matching sidecar); use --overwrite to redo it")
        return 0
    rec = result.sidecar["reconstruction"]
    print(f"saved {result.path} and {result.path.with_suffix('.json')}")
    print(f"latent MSE to z_0 with guidance {cfg.guidance_scale}: plain DDIM {rec['ddim_cfg_latent_mse']:.4g}, "
          f"reference networks {rec['trained_latent_mse']:.4g}")
    edit = cfg.train_command().replace("--is_train True", "--is_train ''", 1)
    print(f"edit with: {edit} --target …")
    return 0


def console() -> int:
    """Console-script entry point: :func:`main` with the CLI error convention (exit 2, one line)."""
    return cli.run_main(main)


if __name__ == "__main__":
    sys.exit(console())
