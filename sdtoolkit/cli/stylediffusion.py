"""StyleDiffusion on one image: train the mapping networks (``--is_train True``) or edit with them (``--is_train ''``).

Flags mirror the reference scripts; ``--model`` takes a hub id, a local diffusers SD folder, ``tiny``
(random weights, outputs are noise) or ``toy`` (the shipped toy model).
"""
from __future__ import annotations

import argparse
import sys

from sdtoolkit.cli import flags as cli
from sdtoolkit.core import checks, values
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.settings import EditConfig, EditType, InvertConfig


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser(__doc__)
    cli.add_flags(p.add_argument_group("what to do"), "--is_train", "--inversion")
    cli.add_flags(p.add_argument_group("input"), "--index", "--prompt", "--image_path", "--crop", "--is_1word")
    cli.add_model_flags(p.add_argument_group("model"))
    cli.add_flags(p.add_argument_group("training"), "--num_ddim_steps", "--guidance_scale", "--num_inner_steps",
                  "--num_epoch", "--schedule", "--w_attnloss", "--attn_pairing", "--seed", "--model_dir", "--overwrite")
    g = p.add_argument_group("editing")
    # the reference stylediffusion.py's defaults; its README recommends .5/.6/.6/0 (docs/cli.md "Flags")
    cli.add_flags(g, "--target", *cli.TAU_FLAGS, "--blend_word", "--eq_params")
    g.add_argument("--blend_mask", default=None, metavar="PATH",
                   help="mask image (white = may change, cropped/resized as the input) used instead of the blend "
                        "words' attention mask by LocalBlend")
    cli.add_flags(g, "--edit_type", "--outdir")
    g.add_argument("--baselines", action="store_true",
                   help="add a grid row: DDIM inversion, DDIM with word swap, DDIM + P2P, null-text + P2P "
                        "(null-text is trained first when not saved)")
    return p


def configs(args: argparse.Namespace) -> tuple[InvertConfig, EditConfig]:
    """InvertConfig and EditConfig from parsed arguments (checked)."""
    model = checks.model_id(args.model, args.sd_version)
    edit_type = EditType(args.edit_type)
    if not args.is_train:
        checks.check_target_given(args.target, edit_type)
    if args.baselines and (args.is_train or edit_type is EditType.STORE_ATTN):
        raise UsageError("--baselines adds a row to edit grids: use it with --is_train '' and --edit_type "
                         "Replacement or Refinement")
    inv = cli.invert_config(args, model)
    edit = EditConfig(
        target=args.target, edit_type=edit_type, **values.tau_lists(lambda name: getattr(args, name)),
        blend_word=values.blend_words(args.blend_word),
        eq_params=values.eq_params(args.eq_params), outdir=args.outdir, blend_mask=args.blend_mask,
        baselines=args.baselines,
    )
    if args.blend_mask is not None:
        checks.check_image(args.blend_mask, setting="blend_mask")
    checks.check_output_names(inv, None if args.is_train else edit)
    return inv, edit


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    inv_cfg, edit_cfg = configs(args)
    checks.check_image(inv_cfg.image_path, inv_cfg.crop)
    checks.check_size(inv_cfg.resolution, inv_cfg.keep_aspect, inv_cfg.image_path, inv_cfg.crop)
    checks.check_outputs(inv_cfg, None if args.is_train else edit_cfg, args.is_train)
    from sdtoolkit.core.images import sha256_file
    from sdtoolkit.core.models import load_models
    from sdtoolkit.jobs.edit import run_edit
    from sdtoolkit.jobs.invert import existing_result, invert

    models = load_models(inv_cfg.model, args.device, args.dtype, **cli.load_kwargs(args))
    checks.check_multiple(args.resolution, models.family.size_multiple)  # the size step, known once loaded
    run = models.run_identity(inv_cfg.num_ddim_steps)
    if args.is_train and existing_result(inv_cfg, sha256_file(inv_cfg.image_path), args.overwrite, run):
        print(f"already trained: {inv_cfg.path()} (matching sidecar); use --overwrite to retrain")
        return 0
    if args.is_train:
        result = invert(models, inv_cfg, overwrite=args.overwrite)
        rec = result.sidecar["reconstruction"]
        print(f"saved {result.path} and {result.path.with_suffix('.json')}")
        print(f"latent MSE to z_0 with guidance {inv_cfg.guidance_scale}: plain DDIM {rec['ddim_cfg_latent_mse']:.4g}, "
              f"{inv_cfg.inversion} {rec['trained_latent_mse']:.4g}; {result.sidecar['elapsed_seconds']:.1f} s")
        if result.sidecar["worse_than_ddim"]:
            print(f"WARNING: the trained {inv_cfg.inversion} reconstructs worse than plain DDIM inversion (marked "
                  "worse_than_ddim in the sidecar); train with more --num_inner_steps")
        return 0
    files = run_edit(models, inv_cfg, edit_cfg)
    print(f"wrote {len(files)} files under {files[0].parent if files else edit_cfg.outdir}")
    return 0


def console() -> int:
    """Console-script entry point: :func:`main` with the CLI error convention (exit 2, one line)."""
    return cli.run_main(main)


if __name__ == "__main__":
    sys.exit(console())
