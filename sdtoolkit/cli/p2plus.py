"""P2Plus editing of *generated* images: sample a prompt from seeds and edit it with a target prompt.

No inversion is needed: the source is a fresh DDIM sample from the seed's noise; the target branch gets
prompt-to-prompt attention control plus P2Plus unconditional self-attention injection (tau_u).
Output: ``{outdir}/{seed} {target}/edited_img-tau_c…-tau_s…-tau_u….png`` and ``grid_img-….png``
(source | edited), plus a JSON sidecar per combination.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import asdict
from pathlib import Path

from sdtoolkit.cli import flags as cli
from sdtoolkit.core import checks, values
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.paths import check_name, check_writable_dir
from sdtoolkit.core.settings import TAU_NAMES, EditConfig, EditType


ATTENTION_TAUS = tuple(name for name in TAU_NAMES if name != "tau_v")
"""The taus of a generated edit: all but tau_v (nothing is inverted)."""


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser(__doc__)
    cli.add_flags(p, "--prompt", "--target", required=True)
    # --seed here is a list (the reference p2plus.py's): one generated image per seed
    p.add_argument("--seed", default="[2720,]", help="seeds, e.g. [0,1,2] or 0,1 (default: the reference's)")
    cli.add_flags(p, *(f"--{name}" for name in ATTENTION_TAUS), "--blend_word", "--eq_params",
                  defaults={"tau_c": "[.8,]", "tau_s": "[.4,]", "tau_u": "[.5,]"})  # the reference p2plus.py's
    cli.add_flags(p, "--edit_type", choices=[EditType.REPLACEMENT.value, EditType.REFINEMENT.value])
    cli.add_model_flags(p, compile_flag=False, image_encoder=False, training=False)
    cli.add_flags(p, "--num_ddim_steps", "--guidance_scale", "--outdir",
                  defaults={"num_ddim_steps": 50, "guidance_scale": 7.5, "outdir": "stylediffusion-results/p2plus"},
                  helps={"num_ddim_steps": "DDIM steps T", "guidance_scale": "classifier-free guidance",
                         "outdir": "edits go to {outdir}/{seed} {target}/"})
    return p


def seeds(text: str) -> list[int]:
    """Parse ``[0,1]``, ``0,1`` or ``3`` into integer seeds."""
    import ast

    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        raise UsageError(f"--seed {text!r} is not a list of integers such as [0,1,2]") from None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in items):
        raise UsageError(f"--seed {text!r} must be non-negative integers such as [0,1,2]")
    for seed in items:
        checks.check_seed(seed)
    return items


def folder_name(seed: int, target: str) -> str:
    """``{seed} {target}``, a path separator in the target replaced by ``_``."""
    return f"{seed} {target}".replace("/", "_")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = checks.model_id(args.model, args.sd_version)
    seed_list = seeds(args.seed)
    if args.keep_aspect:
        raise UsageError("--keep_aspect needs an input image; p2plus generates from noise: give --resolution")
    checks.check_steps(args.num_ddim_steps)
    checks.check_finite(args.guidance_scale, "guidance_scale")
    checks.check_size(args.resolution, False)
    for seed in seed_list:
        check_name(folder_name(seed, args.target), "--seed and --target (the output folder's name)")
    check_writable_dir(args.outdir, "--outdir")

    edit = EditConfig(
        target=args.target, edit_type=args.edit_type, tau_v=[0.0],  # nothing inverted: no learned value input
        **values.tau_lists(lambda name: getattr(args, name), ATTENTION_TAUS),
        blend_word=values.blend_words(args.blend_word), eq_params=values.eq_params(args.eq_params), outdir=args.outdir,
    )
    from tqdm.auto import tqdm

    from sdtoolkit.core.images import image_grid
    from sdtoolkit.core.io import save_image, write_json
    from sdtoolkit.core.models import load_models
    from sdtoolkit.jobs.invert import versions
    from sdtoolkit.jobs.p2plus import Generator

    models = load_models(model, args.device, args.dtype, **cli.load_kwargs(args))
    checks.validate_edit(args.prompt, edit, models.tokenizer)
    generator = Generator(models, args.prompt, edit, args.num_ddim_steps, args.guidance_scale, args.resolution)
    jobs = list(itertools.product(seed_list, edit.combinations()))
    for seed, taus in tqdm(jobs, desc="seed × tau combinations"):
        source, edited = generator.edit_seed(seed, taus)
        folder = Path(args.outdir) / folder_name(seed, args.target)
        stem = taus.stem().split("-", 1)[1]  # without tau_v: generated images have no inversion
        save_image(folder / f"edited_img-{stem}.png", edited)
        save_image(folder / f"grid_img-{stem}.png", image_grid([source, edited]))
        write_json(folder / f"edited_img-{stem}.json", {"prompt": args.prompt, "seed": seed, "model": models.model_id,
                   "num_ddim_steps": args.num_ddim_steps, "guidance_scale": args.guidance_scale, "edit": asdict(edit),
                   "tau": taus.attention(), "versions": versions()})
    print(f"wrote {len(jobs)} edits under {args.outdir}")
    return 0


def console() -> int:
    """Console-script entry point: :func:`main` with the CLI error convention (exit 2, one line)."""
    return cli.run_main(main)


if __name__ == "__main__":
    sys.exit(console())
