"""Run settings as frozen dataclasses and enums: what an inversion learns (and its file names), an edit request.

Light to import (no torch), so the CLIs can check flags before loading anything heavy. One name per
concept from flag to function: ``tau_v``/``tau_c``/``tau_s``/``tau_u``, ``num_inner_steps``, ``inversion``.
"""
from __future__ import annotations

import enum
import itertools
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.naming import name


class InversionMethod(enum.StrEnum):
    """The inversion methods (their behaviour: ``sdtoolkit.methods.inversions.REGISTRY``)."""

    STYLEDIFFUSION = "stylediffusion"
    NULLTEXT = "nulltext"
    NPI = "npi"
    DDIM = "ddim"
    TEXTINV = "textinv"
    DIRECT = "directinversion"
    EDIT_FRIENDLY = "editfriendly"
    EDICT = "edict"
    PROXNPI = "proxnpi"
    STYLEDIFFUSION_DIRECT = "stylediffusion_direct"

    @property
    def tag(self) -> str:
        """File-name tag: the reference's ``learnv`` for StyleDiffusion, else the method's name."""
        return "learnv" if self is InversionMethod.STYLEDIFFUSION else self.value

    @property
    def default_ddim_steps(self) -> int:
        """T when ``--num_ddim_steps`` is not given: 30 as the reference's stylediffusion.py (and StyleDiffusion with
        direct correction); 50 for null-text, as the reference's null-text script, and for PIE-Bench's other rows, as
        their published runners (docs/method.md §9)."""
        return 30 if self in (InversionMethod.STYLEDIFFUSION, InversionMethod.STYLEDIFFUSION_DIRECT,
                              InversionMethod.NPI, InversionMethod.DDIM, InversionMethod.TEXTINV) else 50

    @property
    def default_guidance_scale(self) -> float:
        """Guidance w when ``--guidance_scale`` is not given: 7.5 as the reference; 3 for EDICT, its published
        setting (docs/method.md §9.3)."""
        return 3.0 if self is InversionMethod.EDICT else 7.5

    @property
    def optimises(self) -> bool:
        """Whether the method optimises per step (StyleDiffusion's mapping networks, null-text, text-embedding
        inversion), so that ``--num_inner_steps``, ``--num_epoch`` and ``--schedule`` change what it learns."""
        return self in (InversionMethod.STYLEDIFFUSION, InversionMethod.STYLEDIFFUSION_DIRECT, InversionMethod.NULLTEXT,
                        InversionMethod.TEXTINV)

    @property
    def default_inner_steps(self) -> int:
        """Inner iterations of step 0 when ``--num_inner_steps`` is not given (null-text: its paper's 10; text-embedding
        inversion: the reference's 10)."""
        return 10 if self in (InversionMethod.NULLTEXT, InversionMethod.TEXTINV) else 100


class EditType(enum.StrEnum):
    """Prompt-to-prompt edit kinds; ``StoreAttn`` reconstructs only and shows the cross-attention maps."""

    REPLACEMENT = "Replacement"
    REFINEMENT = "Refinement"
    STORE_ATTN = "StoreAttn"


class Schedule(enum.StrEnum):
    """How the per-step optimisation spends its iterations (``sdtoolkit.core.schedules``, docs/method.md §3a):
    the published schedule, or ours (warm-started Adam, stop on the loss's plateau)."""

    REFERENCE = "reference"
    FAST = "fast"
    LIGHT = "light"


class AttnPairing(enum.StrEnum):
    """Which inversion maps the attention loss of step i compares with: step i, or the reference's i - 1."""

    SAME = "same"
    REFERENCE = "reference"


def to_enum(kind: type[enum.StrEnum], value: str, setting: str) -> enum.StrEnum:
    """``value`` of ``setting`` as a member of ``kind``; a UsageError naming the setting (as the front door names
    it, :func:`sdtoolkit.core.naming.name`) and the valid values otherwise."""
    try:
        return kind(value)
    except ValueError:
        raise UsageError(f"{name(setting)} {value!r} is not one of {', '.join(m.value for m in kind)}") from None


def command(args: list[str]) -> str:
    """A shell command line from ``args``: Python literals with quotes are double-quoted as the reference's README
    writes them (``--blend_word "[('dog',), ('tiger',)]"``), everything else quoted by :func:`shlex.quote`."""
    def quote(arg: str) -> str:
        if "'" in arg and not any(c in arg for c in '"$`\\!'):
            return f'"{arg}"'
        return shlex.quote(arg)

    return " ".join(quote(a) for a in args)


def _tau_text(value: float | Mapping) -> str:
    """A tau in a file stem: ``0.6``; per word ``default_0.6_tiger0.3`` (a (start, end) pair as ``0.1:0.5``)."""
    if not isinstance(value, Mapping):
        return str(float(value))
    return "_".join(f"{word}{':'.join(str(float(x)) for x in v) if isinstance(v, tuple) else float(v)}"
                    for word, v in value.items())


@dataclass(frozen=True)
class Taus:
    """One combination of the editing fractions (docs/method.md §4): tau_v (learned value input on the target, the
    sampler's), tau_c (cross-attention; also per word, prompt-to-prompt's dict), tau_s (conditional
    self-attention), tau_u (unconditional self-attention, P2Plus). Each field's name is its flag's, its
    :class:`EditConfig` list's and its keyword of the attention controller (every one but tau_v): a new tau-like
    setting is a field here and in :class:`EditConfig`, its flag (``cli/flags.FLAGS``) and the code that uses it."""

    tau_v: float
    tau_c: float | Mapping[str, float | tuple[float, float]]
    tau_s: float
    tau_u: float

    def stem(self) -> str:
        """The reference's file stem, e.g. ``tau_v0.6-tau_c0.6-tau_s0.8-tau_u0.5``."""
        return "-".join(f"{name}{_tau_text(value)}" for name, value in self.as_dict().items())

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in TAU_NAMES}

    def attention(self) -> dict[str, float]:
        """The taus the attention controller reads (keywords of ``P2PController``): all but tau_v."""
        return {name: value for name, value in self.as_dict().items() if name != "tau_v"}

    def value_mapped(self, step: int, num_steps: int) -> bool:
        """The target's value input is the learned one at sampling step i while ``i < T·tau_v`` (a float
        comparison, as the reference: tau_v .55 with T = 30 maps 17 steps; docs/method.md §4)."""
        return step < num_steps * self.tau_v


TAU_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Taus))
"""The editing fractions, in the reference's order (file stems, sweeps)."""
PER_WORD_TAUS = ("tau_c",)
"""The taus that may be given per word (prompt-to-prompt's cross-attention dict)."""


@dataclass(frozen=True)
class TrainSettings:
    """What the per-step optimisation of StyleDiffusion and null-text inversion needs (docs/method.md §3)."""

    num_inner_steps: int = 100
    num_epoch: int = 1
    w_attnloss: bool = True
    guidance_scale: float = 7.5
    attn_pairing: AttnPairing = AttnPairing.SAME
    early_stop: bool = True
    schedule: Schedule = Schedule.REFERENCE


@dataclass(frozen=True, kw_only=True)
class InvertConfig:
    """Everything that determines what an inversion learns (and where it is saved)."""

    prompt: str
    image_path: str
    index: int | str = 0
    model: str  # no default: a hub id, a folder, "toy" or "tiny" (noise) is always chosen by the caller
    inversion: InversionMethod = InversionMethod.STYLEDIFFUSION
    num_ddim_steps: int = 30
    guidance_scale: float = 7.5
    num_inner_steps: int = 100
    num_epoch: int = 1
    w_attnloss: bool = True
    is_1word: bool = False
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    attn_pairing: AttnPairing = AttnPairing.SAME
    seed: int = 0
    model_dir: str = "."
    resolution: int | None = None  # square side, or the short side with keep_aspect; None: the model's default
    keep_aspect: bool = False
    schedule: Schedule = Schedule.REFERENCE

    def __post_init__(self) -> None:
        object.__setattr__(self, "inversion", to_enum(InversionMethod, self.inversion, "inversion"))
        object.__setattr__(self, "attn_pairing", to_enum(AttnPairing, self.attn_pairing, "attn_pairing"))
        object.__setattr__(self, "schedule", to_enum(Schedule, self.schedule, "schedule"))

    def train_settings(self) -> TrainSettings:
        """The optimisation settings of this inversion."""
        return TrainSettings(self.num_inner_steps, self.num_epoch, self.w_attnloss, self.guidance_scale,
                             self.attn_pairing, schedule=self.schedule)

    def folder(self) -> Path:
        """``model_learnv`` (+ ``_1word``, ``_woattnloss``) as the reference; ``model_{method}`` for baselines."""
        sd = self.inversion is InversionMethod.STYLEDIFFUSION
        name = f"model_{self.inversion.tag}"
        name += "_1word" if self.is_1word else ""
        name += "_woattnloss" if sd and not self.w_attnloss else ""
        return Path(self.model_dir) / name

    def path(self) -> Path:
        """The reference's file name; a non-reference schedule adds its name (``…-learnv-fast-[1]``)."""
        tag = self.inversion.tag + ("" if self.schedule is Schedule.REFERENCE else f"-{self.schedule.value}")
        return self.folder() / f"model-inner{self.num_inner_steps}-epoch{self.num_epoch}-{tag}-[{self.index}].safetensors"

    def siblings(self) -> list[InvertConfig]:
        """This inversion with every other ``--inversion`` × ``--schedule``: the results an edit may have been
        meant for (a missing result names the ones that exist and the flags that select them)."""
        return [replace(self, inversion=method, schedule=schedule) for method in InversionMethod for schedule in Schedule
                if (method, schedule) != (self.inversion, self.schedule)]

    def selecting_flags(self, other: InvertConfig) -> str:
        """The ``--inversion`` / ``--schedule`` flags that turn this configuration into ``other``."""
        flags = [f"--inversion {other.inversion.value}"] if other.inversion is not self.inversion else []
        flags += [f"--schedule {other.schedule.value}"] if other.schedule is not self.schedule else []
        return " ".join(flags)

    def identity(self, image_sha256: str, model_fingerprint: str, run: Mapping[str, Any]) -> dict:
        """What a saved result must match to be reused: image, weights and every setting that changes it.

        ``run``: what the loaded networks add (steps_offset, prediction_type, image_encoder, dtype;
        ``SDModels.run_identity``)."""
        return {
            "inversion": self.inversion, "prompt": self.prompt, "image_sha256": image_sha256, "model": self.model,
            "model_fingerprint": model_fingerprint,
            "num_ddim_steps": self.num_ddim_steps, "guidance_scale": self.guidance_scale,
            "num_inner_steps": self.num_inner_steps, "num_epoch": self.num_epoch, "w_attnloss": self.w_attnloss,
            "is_1word": self.is_1word, "crop": list(self.crop), "attn_pairing": self.attn_pairing, "seed": self.seed,
            "resolution": self.resolution, "keep_aspect": self.keep_aspect, "schedule": self.schedule, **run,
        }

    def cli_args(self) -> list[str]:
        """The stylediffusion.py flags that select this inversion (without ``--is_train``): every setting that
        changes the file name or what is learned, so the command finds or makes this very file."""
        args = ["--index", str(self.index), "--prompt", self.prompt, "--image_path", self.image_path, "--model", self.model,
                "--num_inner_steps", str(self.num_inner_steps), "--num_ddim_steps", str(self.num_ddim_steps)]
        if self.is_1word:
            args += ["--is_1word", "1"]
        if not self.w_attnloss:
            args += ["--w_attnloss", "False"]
        if self.inversion is not InversionMethod.STYLEDIFFUSION:
            args += ["--inversion", self.inversion.value]
        if self.num_epoch != 1:
            args += ["--num_epoch", str(self.num_epoch)]
        if self.guidance_scale != 7.5:
            args += ["--guidance_scale", str(self.guidance_scale)]
        if any(self.crop):
            args += ["--crop", *(str(c) for c in self.crop)]
        if self.attn_pairing is not AttnPairing.SAME:
            args += ["--attn_pairing", self.attn_pairing.value]
        if self.seed != 0:
            args += ["--seed", str(self.seed)]
        if str(self.model_dir) != ".":
            args += ["--model_dir", str(self.model_dir)]
        if self.resolution is not None:
            args += ["--resolution", str(self.resolution)]
        if self.keep_aspect:
            args += ["--keep_aspect"]
        if self.schedule is not Schedule.REFERENCE:
            args += ["--schedule", self.schedule.value]
        return args

    def train_command(self) -> str:
        """The command that trains (or finds) this inversion."""
        return command(["python", "stylediffusion.py", "--is_train", "True", *self.cli_args()])

    def edit_command(self, edit: "EditConfig") -> str:
        """The command that edits this inversion with ``edit`` (every tau list, the blend words, the reweighting,
        the user mask and the output folder): the CLI run that gives the same images."""
        return command(["python", "stylediffusion.py", "--is_train", "", *self.cli_args(), *edit.cli_args()])


@dataclass(frozen=True)
class EditConfig:
    """One editing request; every combination of the tau lists is run."""

    target: str | None
    edit_type: EditType = EditType.REPLACEMENT
    tau_v: list[float] = field(default_factory=lambda: [0.5])
    tau_c: list[float | dict] = field(default_factory=lambda: [0.6])  # a dict: per-word fractions (Taus.c)
    tau_s: list[float] = field(default_factory=lambda: [0.6])
    tau_u: list[float] = field(default_factory=lambda: [0.0])
    blend_word: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    eq_params: tuple[tuple[str, ...], tuple[float, ...]] | None = None
    outdir: str = "stylediffusion-results/Others"
    blend_mask: str | None = None  # mask image (white = may change); replaces the blend words' attention mask
    baselines: bool = False  # a second grid row with the reference's comparison images (docs/method.md §5)

    def __post_init__(self) -> None:
        object.__setattr__(self, "edit_type", to_enum(EditType, self.edit_type, "edit_type"))

    def tau_lists(self) -> dict[str, list]:
        return {name: getattr(self, name) for name in TAU_NAMES}

    def cli_args(self) -> list[str]:
        """The stylediffusion.py editing flags of this request (Python literals, as the flags parse them)."""
        args = ["--target", str(self.target), "--edit_type", self.edit_type.value]
        for name, items in self.tau_lists().items():
            args += [f"--{name}", repr([dict(v) if isinstance(v, Mapping) else v for v in items])]
        if self.blend_word:
            args += ["--blend_word", repr(list(self.blend_word))]
        if self.eq_params:
            args += ["--eq_params", repr(list(self.eq_params))]
        if self.blend_mask:
            args += ["--blend_mask", self.blend_mask]
        return [*args, "--outdir", self.outdir]

    def only(self, taus: Taus) -> "EditConfig":
        """This request for one combination of its taus."""
        return replace(self, **{name: [value] for name, value in taus.as_dict().items()})

    def combinations(self) -> list[Taus]:
        """Every combination of the tau lists, the first tau outermost (the reference's file order)."""
        return [Taus(*combo) for combo in itertools.product(*self.tau_lists().values())]

    def folder(self, index: int | str, prompt: str) -> Path:
        """``{outdir}/{index} {target}`` (the source prompt for StoreAttn), as the reference names it."""
        text = prompt if self.edit_type is EditType.STORE_ATTN else self.target
        return Path(self.outdir) / f"{index} {text}".replace("/", "_")
