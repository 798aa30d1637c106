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
from sdtoolkit.core.settings import InvertConfig


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser(__doc__)
    p.add_argument("pth", help="the reference's model-inner…-learnv-[N].pth")
    p.add_argument("--prompt", required=True, help="the source prompt the networks were trained for")
    p.add_argument("--image_path", required=True, help="the image they were trained on")
    p.add_argument("--index", default="0", help="case index used in file names")
    p.add_argument("--is_1word", type=cli.str2bool, default=False, help="1-word mode (writes model_learnv_1word/)")
    p.add_argument("--crop", type=int, nargs=4, default=(0, 0, 0, 0), metavar=("LEFT", "RIGHT", "TOP", "BOTTOM"),
                   help="the crop offsets used in training")
    p.add_argument("--num_ddim_steps", type=int, default=30, help="sampling steps (= networks in the file)")
    p.add_argument("--num_inner_steps", type=int, default=100, help="as trained (part of the file name)")
    p.add_argument("--num_epoch", type=int, default=1, help="as trained (part of the file name)")
    p.add_argument("--w_attnloss", type=cli.str2bool, default=True, help="False: trained without the attention loss")
    p.add_argument("--guidance_scale", type=float, default=7.5)
    p.add_argument("--model_dir", default=".", help="folder that holds model_learnv/ etc.")
    p.add_argument("--overwrite", action="store_true", help="replace a result made for other settings")
    # the reference trained at 512², square: no size flags; nothing is trained here: no --gradient_checkpointing
    cli.add_model_flags(p, compile_flag=False, size=False, training=False)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    checks.check_counts(args.num_inner_steps, args.num_epoch, args.num_ddim_steps)
    cfg = InvertConfig(
        prompt=args.prompt, image_path=args.image_path, index=args.index, model=checks.model_id(args.model, args.sd_version),
        num_ddim_steps=args.num_ddim_steps, guidance_scale=args.guidance_scale, num_inner_steps=args.num_inner_steps,
        num_epoch=args.num_epoch, w_attnloss=args.w_attnloss, is_1word=args.is_1word, crop=tuple(args.crop),
        model_dir=args.model_dir,
    )
    checks.check_image(cfg.image_path)
    checks.check_finite(cfg.guidance_scale, "--guidance_scale")
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
