"""Flag definitions shared by the CLIs, strict parsing of the reference's flag syntax, the error convention (exit 2)."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from sdtoolkit.core.constants import SD_VERSIONS
from sdtoolkit.core.errors import EXPECTED, one_line
from sdtoolkit.core.settings import Schedule

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


def add_schedule_flag(group) -> None:
    """``--schedule``: how the per-step optimisation spends its iterations (docs/method.md §3a)."""
    group.add_argument("--schedule", choices=[s.value for s in Schedule], default=Schedule.REFERENCE.value,
                       help="'reference': the published inner-iteration schedule; 'fast': learning-rate warm-up and a "
                       "stop on the loss's plateau (2.8x fewer UNet passes on the toy model, README 'Speed: schedules')")


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


def add_attention_flags(group, tau_c: str, tau_s: str, tau_u: str) -> None:
    """The prompt-to-prompt / P2Plus flags shared by the editing CLIs (argparse parser or group); the defaults
    are each CLI's reference script's (README "Differences from the reference scripts")."""
    group.add_argument("--tau_c", default=tau_c, help="cross-attention replacement fractions")
    group.add_argument("--tau_s", default=tau_s, help="conditional self-attention replacement fractions")
    group.add_argument("--tau_u", default=tau_u, help="unconditional self-attention replacement fractions (P2Plus)")
    group.add_argument("--blend_word", default=None, help="local blend words, e.g. \"[('dog',), ('tiger',)]\"")
    group.add_argument("--eq_params", default=None, help="reweighting, e.g. \"[('tiger',), (2,)]\"")


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run ``main``; an expected error (:data:`sdtoolkit.core.errors.EXPECTED`: bad input, the file system's
    refusals, numbers out of range, memory, non-finite values) becomes one line on stderr, ``[prog: ]error: …``,
    and exit status 2; anything else keeps its traceback."""
    try:
        return main(argv)
    except EXPECTED as exc:
        print(f"{prog + ': ' if prog else ''}error: {one_line(exc)}", file=sys.stderr)
        return 2
