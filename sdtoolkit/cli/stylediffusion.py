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
from sdtoolkit.core.settings import AttnPairing, EditConfig, EditType, InversionMethod, InvertConfig


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser(__doc__)
    g = p.add_argument_group("what to do")
    g.add_argument("--is_train", type=cli.str2bool, default=True, help="True: invert/train; '' or False: edit")
    g.add_argument("--inversion", choices=[m.value for m in InversionMethod], default=InversionMethod.STYLEDIFFUSION.value,
                   help="inversion method")
    g = p.add_argument_group("input")
    g.add_argument("--index", default="0", help="case index used in file names")
    g.add_argument("--prompt", required=True, help="source prompt describing the image")
    g.add_argument("--image_path", required=True, help="input image (any size, mode or bit depth)")
    g.add_argument("--crop", type=int, nargs=4, default=(0, 0, 0, 0), metavar=("LEFT", "RIGHT", "TOP", "BOTTOM"),
                   help="pixels cut from each side before the centred square crop")
    g.add_argument("--is_1word", type=cli.str2bool, default=False, help="1-word mode (prompt 'dog', target 'tiger')")
    g = p.add_argument_group("model")
    cli.add_model_flags(g)
    g = p.add_argument_group("training")
    g.add_argument("--num_ddim_steps", type=int, default=None,
                   help="DDIM steps T (default: 30; 50 for --inversion nulltext, as the reference's scripts, and for "
                   "directinversion, editfriendly, edict, proxnpi, as their published runners)")
    g.add_argument("--guidance_scale", type=float, default=None,
                   help="classifier-free guidance (default: 7.5; 3 for EDICT, as published)")
    g.add_argument("--num_inner_steps", type=int, default=None,
                   help="inner iterations of step 0 (default 100 for stylediffusion, 10 for nulltext and textinv)")
    g.add_argument("--num_epoch", type=int, default=1)
    cli.add_schedule_flag(g)
    g.add_argument("--w_attnloss", type=cli.str2bool, default=True, help="add the cross-attention loss")
    g.add_argument("--attn_pairing", choices=[m.value for m in AttnPairing], default=AttnPairing.SAME.value,
                   help="'reference' pairs step i with the maps one step noisier (the reference's shift)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--model_dir", default=".", help="folder that holds model_learnv/ etc.")
    g.add_argument("--overwrite", action="store_true", help="replace a result trained with other settings")
    g = p.add_argument_group("editing")
    g.add_argument("--target", default=None, help="target prompt")
    # the reference stylediffusion.py's defaults; its README recommends .5/.6/.6/0 (README "Recommended settings")
    g.add_argument("--tau_v", default="[.6,]", help="fractions of steps with M_t on the target's value path")
    cli.add_attention_flags(g, tau_c="[.6,]", tau_s="[.8,]", tau_u="[.5,]")
    g.add_argument("--blend_mask", default=None, metavar="PATH",
                   help="mask image (white = may change, cropped/resized as the input) used instead of the blend "
                        "words' attention mask by LocalBlend")
    g.add_argument("--edit_type", default=EditType.REPLACEMENT.value, choices=[m.value for m in EditType])
    g.add_argument("--outdir", default="stylediffusion-results/Others")
    g.add_argument("--baselines", action="store_true",
                   help="add a grid row: DDIM inversion, DDIM with word swap, DDIM + P2P, null-text + P2P "
                        "(null-text is trained first when not saved)")
    return p


def configs(args: argparse.Namespace) -> tuple[InvertConfig, EditConfig]:
    """InvertConfig and EditConfig from parsed arguments (checked)."""
    model = checks.model_id(args.model, args.sd_version)
    inversion = InversionMethod(args.inversion)
    edit_type = EditType(args.edit_type)
    if not args.is_train:
        checks.check_target_given(args.target, edit_type)
    if args.baselines and (args.is_train or edit_type is EditType.STORE_ATTN):
        raise UsageError("--baselines adds a row to edit grids: use it with --is_train '' and --edit_type "
                         "Replacement or Refinement")
    inner = inversion.default_inner_steps if args.num_inner_steps is None else args.num_inner_steps
    steps = inversion.default_ddim_steps if args.num_ddim_steps is None else args.num_ddim_steps
    guidance = inversion.default_guidance_scale if args.guidance_scale is None else args.guidance_scale
    checks.check_counts(inner, args.num_epoch, steps)
    checks.check_finite(guidance, "--guidance_scale")
    checks.check_seed(args.seed)
    inv = InvertConfig(
        prompt=args.prompt, image_path=args.image_path, index=args.index, model=model, inversion=inversion,
        num_ddim_steps=steps, guidance_scale=guidance, num_inner_steps=inner,
        num_epoch=args.num_epoch, w_attnloss=args.w_attnloss, is_1word=args.is_1word, crop=tuple(args.crop),
        attn_pairing=args.attn_pairing, seed=args.seed, model_dir=args.model_dir, resolution=args.resolution,
        keep_aspect=args.keep_aspect, schedule=args.schedule,
    )
    edit = EditConfig(
        target=args.target, edit_type=edit_type, tau_v=values.fraction_list(args.tau_v, "--tau_v"),
        tau_c=values.fraction_list(args.tau_c, "--tau_c"), tau_s=values.fraction_list(args.tau_s, "--tau_s"),
        tau_u=values.fraction_list(args.tau_u, "--tau_u"), blend_word=values.blend_words(args.blend_word),
        eq_params=values.eq_params(args.eq_params), outdir=args.outdir, blend_mask=args.blend_mask,
        baselines=args.baselines,
    )
    if args.blend_mask is not None:
        checks.check_image(args.blend_mask)
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
