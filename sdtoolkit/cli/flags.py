"""Flag definitions shared by the CLIs, strict parsing of the reference's flag syntax, the error convention (exit 2)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Callable, NoReturn

from sdtoolkit.core import checks
from sdtoolkit.core.constants import SD_VERSIONS
from sdtoolkit.core.errors import EXPECTED, one_line
from sdtoolkit.core.settings import TAU_NAMES, AttnPairing, EditType, InversionMethod, InvertConfig, Schedule

class ArgumentParser(argparse.ArgumentParser):
    """argparse with the toolkit's error convention: a bad flag prints ONE line, ``prog: error: …``, and exits 2
    (argparse's default prints the whole usage block first). ``--help`` is unchanged."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser(description: str | None, **kwargs) -> ArgumentParser:
    """The CLIs' parser: :class:`ArgumentParser` with ArgumentDefaultsHelpFormatter."""
    return ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kwargs)


TRUE = {"true", "1", "yes", "y", "on"}
FALSE = {"false", "0", "no", "n", "off", ""}


def str2bool(text: str) -> bool:
    """``True``/``1``/``yes`` → True; ``''``/``False``/``0``/``no`` → False (the reference's ``--is_train ''``).

    An argparse type: its ArgumentTypeError message reaches the user (argparse replaces other errors' messages)."""
    key = str(text).strip().lower()
    if key in TRUE:
        return True
    if key in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: use True/False, 1/0, yes/no or '' (false)")


FLAGS: dict[str, dict] = {
    "--is_train": dict(type=str2bool, default=True, help="True: invert/train; '' or False: edit"),
    "--inversion": dict(choices=[m.value for m in InversionMethod], default=InversionMethod.STYLEDIFFUSION.value,
                        help="inversion method"),
    "--index": dict(default="0", help="case index used in file names"),
    "--prompt": dict(required=True, help="source prompt describing the image"),
    "--image_path": dict(required=True, help="input image (any size, mode or bit depth)"),
    "--crop": dict(type=int, nargs=4, default=(0, 0, 0, 0), metavar=("LEFT", "RIGHT", "TOP", "BOTTOM"),
                   help="pixels cut from each side before the centred square crop"),
    "--is_1word": dict(type=str2bool, default=False, help="1-word mode (prompt 'dog', target 'tiger')"),
    "--num_ddim_steps": dict(type=int, default=None,
                             help="DDIM steps T (default: 30; 50 for --inversion nulltext, as the reference's scripts, "
                                  "and for directinversion, editfriendly, edict, proxnpi, as their published runners)"),
    "--guidance_scale": dict(type=float, default=None,
                             help="classifier-free guidance (default: 7.5; 3 for EDICT, as published)"),
    "--num_inner_steps": dict(type=int, default=None,
                              help="inner iterations of step 0 (default 100 for stylediffusion, 10 for nulltext and "
                                   "textinv)"),
    "--num_epoch": dict(type=int, default=1, help="epochs of the per-step optimisation"),
    "--schedule": dict(choices=[s.value for s in Schedule], default=Schedule.REFERENCE.value,
                       help="'reference': the published inner-iteration schedule; 'fast': M_0 started from the text, "
                       "learning-rate warm-up, a stop on the loss's plateau, a floor of iterations on the last steps (3.7x "
                       "fewer UNet passes than reference, lower latent MSE, on held-out toy scenes; docs/backbones.md "
                       "'Speed: schedules'); 'light': M_0 "
                       "started from the text, the published caps at --num_inner_steps, no stop: for stylediffusion_direct, "
                       "whose reconstruction is exact anyway (--num_inner_steps 2: 57 passes at T = 50)"),
    "--w_attnloss": dict(type=str2bool, default=True, help="add the cross-attention loss"),
    "--attn_pairing": dict(choices=[m.value for m in AttnPairing], default=AttnPairing.SAME.value,
                           help="'reference' pairs step i with the maps one step noisier (the reference's shift)"),
    "--seed": dict(type=int, default=0, help="seed of the inversion (and of the edit's sampling)"),
    "--model_dir": dict(default=".", help="folder that holds model_learnv/ etc."),
    "--overwrite": dict(action="store_true", help="replace a result made with other settings"),
    "--from_case": dict(type=int, default=None, help="first case_number (inclusive)"),
    "--end_case": dict(type=int, default=None, help="stop before this case_number (exclusive, as the reference)"),
    "--target": dict(default=None, help="target prompt"),
    "--tau_v": dict(default="[.6,]", help="fractions of steps with M_t on the target's value path"),
    "--tau_c": dict(default="[.6,]", help="cross-attention replacement fractions"),
    "--tau_s": dict(default="[.8,]", help="conditional self-attention replacement fractions"),
    "--tau_u": dict(default="[.5,]", help="unconditional self-attention replacement fractions (P2Plus)"),
    "--blend_word": dict(default=None, help="local blend words, e.g. \"[('dog',), ('tiger',)]\""),
    "--eq_params": dict(default=None, help="reweighting, e.g. \"[('tiger',), (2,)]\""),
    "--edit_type": dict(default=EditType.REPLACEMENT.value, choices=[m.value for m in EditType], help="edit kind"),
    "--outdir": dict(default="stylediffusion-results/Others", help="edits go to {outdir}/{index} {target}/"),
}
"""Every flag shared by two or more CLIs, defined once (a CLI may change its default or help, e.g. the taus'
defaults are each reference script's); each flag's name is the setting's name from flag to function."""


TAU_FLAGS = tuple(f"--{name}" for name in TAU_NAMES)
"""The editing fractions' flags (their definitions: :data:`FLAGS`)."""


def add_flags(group, *names: str, defaults: dict | None = None, helps: dict | None = None, **extra) -> None:
    """Add the :data:`FLAGS` ``names`` to an argparse parser or group; ``defaults`` / ``helps`` keyed by the
    setting's name (``{"num_ddim_steps": 50}``), ``extra`` keyword arguments for every flag (``required``)."""
    for name in names:
        kwargs = {**FLAGS[name], **extra}
        key = name.lstrip("-")
        if defaults and key in defaults:
            kwargs["default"] = defaults[key]
        if helps and key in helps:
            kwargs["help"] = helps[key]
        group.add_argument(name, **kwargs)


def add_model_flags(group, compile_flag: bool = True, image_encoder: bool = True, size: bool = True,
                    training: bool = True) -> None:
    """The model / device / dtype / image size / memory flags, defined once for every CLI that loads a model; a
    CLI leaves out the flags it would ignore (``size``, ``training``: --gradient_checkpointing), so argparse
    refuses them."""
    group.add_argument("--model", default=None, help="hub id, local SD 1.x/2.x/XL folder, 'tiny', 'tiny-sd2', "
                       "'tiny-sdxl' or 'toy' (default: --sd_version)")
    group.add_argument("--sd_version", default="sd_1_4", help=f"alias of --model: {', '.join(SD_VERSIONS)}")
    if image_encoder:
        group.add_argument("--image_encoder", default=None, help="CLIP vision model (default: folder's image_encoder/ "
                           "or openai/clip-vit-base-patch16); a width other than the text width is bridged by a "
                           "learned projection in M_t")
    if size:
        group.add_argument("--resolution", type=positive_int, default=None,
                           help="image side (square, the reference) or short side with --keep_aspect; default: the "
                           "model's (512 SD 1.x / 2.1-base, 768 SD 2.1, 1024 SDXL)")
        group.add_argument("--keep_aspect", action="store_true",
                           help="keep the image's aspect: short side --resolution, long side rounded to the model's "
                           "multiple (64 px for SD, 32 px for SDXL)")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    group.add_argument("--dtype", default="auto", help="auto (= fp32, as the reference), fp32, bf16, fp16")
    if compile_flag:
        group.add_argument("--compile", action="store_true",
                           help="compile the UNet's repeated blocks (regional torch.compile: seconds of compile time)")
    group.add_argument("--vae_tiling", action="store_true", help="decode/encode the VAE in tiles (less memory at 1024²)")
    group.add_argument("--vae_slicing", action="store_true", help="VAE one image of the batch at a time")
    if training:
        group.add_argument("--gradient_checkpointing", action="store_true",
                           help="recompute UNet activations in the training backward pass (less memory, slower)")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def load_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``load_models`` that :func:`add_model_flags` defines, from parsed arguments."""
    names = ("image_encoder", "compile", "vae_tiling", "vae_slicing", "gradient_checkpointing")
    out = {n: getattr(args, n) for n in names if hasattr(args, n)}
    if "compile" in out:
        out["compile_unet"] = out.pop("compile")
    return out


def invert_config(args: argparse.Namespace, model: str, **fields) -> InvertConfig:
    """The inversion settings from parsed flags: every flag named as the :class:`InvertConfig` field it sets is
    passed on (a CLI without ``--crop`` keeps the default), ``fields`` override; defaults and checks are
    :func:`sdtoolkit.core.checks.invert_config`'s (the API's too)."""
    names = [f.name for f in dataclasses.fields(InvertConfig) if f.name != "model"]
    given = {n: getattr(args, n) for n in names if hasattr(args, n)}
    if "crop" in given:
        given["crop"] = tuple(given["crop"])
    return checks.invert_config(model=model, **{**given, **fields})


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run ``main``; an expected error (:data:`sdtoolkit.core.errors.EXPECTED`: bad input, the file system's
    refusals, numbers out of range, memory, non-finite values) becomes one line on stderr, ``[prog: ]error: …``,
    and exit status 2; anything else keeps its traceback."""
    try:
        return main(argv)
    except EXPECTED as exc:
        print(f"{prog + ': ' if prog else ''}error: {one_line(exc)}", file=sys.stderr)
        return 2
