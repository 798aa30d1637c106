"""Run configurations: what determines an inversion (and its file names) and an edit request.

Light to import (no torch), so the CLIs can validate flags before loading anything heavy.
"""
from __future__ import annotations

import itertools
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class InvertConfig:
    """Everything that determines what an inversion learns (and where it is saved)."""

    prompt: str
    image_path: str
    index: int | str = 0
    model: str = "tiny"
    inversion: str = "stylediffusion"
    num_ddim_steps: int = 30
    guidance_scale: float = 7.5
    num_inner_steps: int = 100
    num_epoch: int = 1
    w_attnloss: bool = True
    is_1word: bool = False
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    attn_pairing: str = "same"
    seed: int = 0
    model_dir: str = "."

    def folder(self) -> Path:
        """``model_learnv`` (+ ``_1word``, ``_woattnloss``) as the reference; ``model_{method}`` for baselines."""
        name = "model_learnv" if self.inversion == "stylediffusion" else f"model_{self.inversion}"
        name += "_1word" if self.is_1word else ""
        name += "_woattnloss" if self.inversion == "stylediffusion" and not self.w_attnloss else ""
        return Path(self.model_dir) / name

    def path(self) -> Path:
        tag = "learnv" if self.inversion == "stylediffusion" else self.inversion
        return self.folder() / f"model-inner{self.num_inner_steps}-epoch{self.num_epoch}-{tag}-[{self.index}].safetensors"

    def identity(self, image_sha256: str, model_fingerprint: str) -> dict:
        """What a saved result must match to be reused: image, weights and every setting that changes it."""
        return {
            "inversion": self.inversion, "prompt": self.prompt, "image_sha256": image_sha256, "model": self.model,
            "model_fingerprint": model_fingerprint,
            "num_ddim_steps": self.num_ddim_steps, "guidance_scale": self.guidance_scale,
            "num_inner_steps": self.num_inner_steps, "num_epoch": self.num_epoch, "w_attnloss": self.w_attnloss,
            "is_1word": self.is_1word, "crop": list(self.crop), "attn_pairing": self.attn_pairing,
        }

    def train_command(self) -> str:
        args = ["python", "stylediffusion.py", "--is_train", "True", "--index", str(self.index), "--prompt", self.prompt,
                "--image_path", self.image_path, "--model", self.model, "--num_inner_steps", str(self.num_inner_steps),
                "--num_ddim_steps", str(self.num_ddim_steps)]
        if self.is_1word:
            args += ["--is_1word", "1"]
        if not self.w_attnloss:
            args += ["--w_attnloss", "False"]
        if self.inversion != "stylediffusion":
            args += ["--inversion", self.inversion]
        # settings that change the file name or what is learned: without them the printed command trains
        # another file (or into another folder) than the one the edit looks for
        if self.num_epoch != 1:
            args += ["--num_epoch", str(self.num_epoch)]
        if self.guidance_scale != 7.5:
            args += ["--guidance_scale", str(self.guidance_scale)]
        if any(self.crop):
            args += ["--crop", *(str(c) for c in self.crop)]
        if self.attn_pairing != "same":
            args += ["--attn_pairing", self.attn_pairing]
        if self.seed != 0:
            args += ["--seed", str(self.seed)]
        if str(self.model_dir) != ".":
            args += ["--model_dir", str(self.model_dir)]
        return shlex.join(args)


@dataclass
class EditConfig:
    """One editing request; every combination of the tau lists is run."""

    target: str | None
    edit_type: str = "Replacement"
    tau_v: list[float] = field(default_factory=lambda: [0.5])
    tau_c: list[float] = field(default_factory=lambda: [0.6])
    tau_s: list[float] = field(default_factory=lambda: [0.6])
    tau_u: list[float] = field(default_factory=lambda: [0.0])
    blend_word: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    eq_params: tuple[tuple[str, ...], tuple[float, ...]] | None = None
    outdir: str = "stylediffusion-results/Others"

    def combinations(self) -> list[tuple[float, float, float, float]]:
        return list(itertools.product(self.tau_v, self.tau_c, self.tau_s, self.tau_u))
