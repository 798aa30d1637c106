"""What the app's buttons do, without the page: invert, edit, sweep, edit a generated image — each one call of
the Python API (:mod:`sdtoolkit.api`) on the session's kept inversions, with the files a user downloads.

Every value arrives as the page holds it (text, numbers, word lists) and is turned into the API's keywords
here; bad values raise :class:`sdtoolkit.UsageError` naming the app's control (:data:`CONTROLS`).
"""
from __future__ import annotations

import json
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from PIL import Image

import sdtoolkit as sd
from sdtoolkit.api import Progress
from sdtoolkit.app.sessions import Kept, Sessions

__all__ = ["Actions", "CONTROLS", "EditView", "GeneratedView", "InvertView", "IMAGE_SUFFIXES", "words_of"]

CONTROLS: dict[str, str] = {
    "prompt": "Source prompt", "image_path": "Image", "inversion": "Inversion method", "schedule": "Schedule",
    "num_inner_steps": "Inner steps", "num_ddim_steps": "Steps T", "guidance_scale": "Guidance",
    "seed": "Seed", "resolution": "Resolution", "keep_aspect": "Keep aspect", "target": "Target prompt",
    "edit_type": "Edit type", "tau_v": "tau_v", "tau_c": "tau_c", "tau_s": "tau_s", "tau_u": "tau_u",
    "blend_word": "Blend words", "eq_params": "Reweight", "index": "Inversion",
}
"""The app's control for each setting (the names its messages use), by the setting's canonical name."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""Image files the app offers from its examples folder and keeps an upload's suffix for."""



def words_of(prompt: str | None) -> list[str]:
    """The words of a prompt as the blend and reweight pickers offer them (punctuation at the ends stripped,
    each word once, in order)."""
    out: list[str] = []
    for word in (prompt or "").split():
        word = word.strip(".,;:!?\"'()[]")
        if word and word not in out:
            out.append(word)
    return out


def tau_list(text: str | float, control: str) -> list[float]:
    """A sweep's values from the page's text ``0.4, 0.6`` (or one number)."""
    if isinstance(text, (int, float)):
        return [float(text)]
    items = [t for t in re.split(r"[,\s]+", str(text).strip().strip("[]")) if t]
    if not items:
        raise sd.UsageError(f"{control} is empty: give values in [0, 1] such as 0.4, 0.6")
    try:
        return [float(t) for t in items]
    except ValueError:
        raise sd.UsageError(f"{control} {text!r}: give numbers in [0, 1] separated by commas, such as 0.4, 0.6") from None


@dataclass
class InvertView:
    """What the page shows after Invert."""

    label: str  # the inversion's name in the session ("inversion-1")
    panels: Image.Image  # input | VAE reconstruction | reconstruction
    figures: dict[str, float | int]  # latent MSE (plain DDIM, this inversion), UNet passes, seconds
    bundle: Path  # the zip to download: source image, safetensors + sidecar
    messages: list[str]  # what was dropped to keep the session in bounds


@dataclass
class EditView:
    """What the page shows after Edit."""

    edited: Sequence  # sdtoolkit.api.Edited (one for Edit, several for Sweep)
    command: str  # the CLI line that makes the (first) edit from the downloaded bundle
    files: list[Path]  # edited PNG + JSON sidecar (+ grid) of each edit


@dataclass
class GeneratedView:
    """What the page shows after a generated edit (P2Plus on a seed)."""

    edited: "sd.Edited"
    files: list[Path]


class Actions:
    """The app's operations on one loaded model (``sd.load``) for many browser sessions (``session``: the
    page's session id), keeping each session's inversions in ``sessions``."""

    def __init__(self, model: "sd.Model", sessions: Sessions, examples: Path | None = None) -> None:
        self.model = model
        self.sessions = sessions
        self.examples = Path(examples) if examples is not None else None

    # ---- inputs --------------------------------------------------------------------------------------------
    def example_names(self) -> list[str]:
        """The example images offered in the page (file names in the examples folder)."""
        if self.examples is None or not self.examples.is_dir():
            return []
        return sorted(p.name for p in self.examples.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    def image_file(self, upload: str | None, example: str | None) -> Path:
        """The image to invert: the uploaded file, else the chosen example (one of :meth:`example_names`)."""
        if upload:
            return Path(upload)
        if example:
            if example not in self.example_names():
                raise sd.UsageError(f"{CONTROLS['image_path']}: {example!r} is not one of the examples "
                                    f"({', '.join(self.example_names())})")
            return self.examples / example
        raise sd.UsageError(f"{CONTROLS['image_path']}: upload an image or pick an example")

    # ---- invert --------------------------------------------------------------------------------------------
    def invert(self, session: str, image: Path, prompt: str, *, method: str = "stylediffusion",
               schedule: str = "reference", num_inner_steps: int | None = None, num_ddim_steps: int | None = None,
               guidance_scale: float | None = None, seed: int = 0, resolution: int | None = None,
               keep_aspect: bool = False, progress: Progress = None) -> InvertView:
        """Invert ``image`` (copied into the session's new bundle folder first, so the bundle holds the very
        bytes that were inverted) and keep the result; ``None`` step counts / guidance: the method's defaults."""
        folder = self.sessions.folder(session)
        folder.mkdir(parents=True, exist_ok=True)
        suffix = image.suffix.lower() if image.suffix.lower() in IMAGE_SUFFIXES else ".png"
        source = folder / f"source{suffix}"
        shutil.copyfile(image, source)
        try:
            with sd.front_door(CONTROLS):
                inv = self.model.invert(source, prompt, method, num_ddim_steps=num_ddim_steps,
                                        guidance_scale=guidance_scale, num_inner_steps=num_inner_steps,
                                        schedule=schedule, seed=int(seed), resolution=resolution,
                                        keep_aspect=keep_aspect, index=folder.name, progress=progress)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        inv.save(folder / inv.config.path())
        dropped = self.sessions.add(session, Kept(folder.name, inv, folder))
        bundle = _zip(folder, [source, *sorted((folder / inv.config.folder().name).iterdir())])
        sidecar = inv.sidecar
        figures = {**inv.figures, "unet_passes_training": int(sum(sidecar.get("iterations_per_step", []))),
                   "seconds": float(sidecar.get("elapsed_seconds", 0.0))}
        panels = sd.image_grid([inv.source.pil, inv.vae_reconstruction, inv.reconstruction])
        return InvertView(folder.name, panels, figures, bundle, dropped)

    def kept(self, session: str, label: str | None) -> Kept:
        """The session's inversion ``label`` (its newest when None); a message when there is none."""
        kept = self.sessions.get(session, label or None)
        if kept is None:
            have = self.sessions.labels(session)
            raise sd.UsageError(f"{CONTROLS['index']} {label!r} is no longer kept; pick one of {', '.join(have)}"
                                if have and label else "no inversion yet: click Invert first (Source tab)")
        return kept

    # ---- edit and sweep ------------------------------------------------------------------------------------
    def edit(self, session: str, label: str | None, target: str, *, edit_type: str | None = None,
             taus: Mapping[str, float | Sequence[float]], blend: tuple[Sequence[str], Sequence[str]] = ((), ()),
             reweight: Mapping[str, float] | None = None, tau_c_words: Mapping[str, float] | None = None,
             sweep: bool = False, progress: Progress = None) -> EditView:
        """Edit the kept inversion into ``target``: one edit, or every combination of the tau lists (``sweep``).
        ``edit_type`` None: Replacement when the prompts have the same number of words, else Refinement;
        ``blend``: (source words, target words), LocalBlend when both are given; ``tau_c_words``: per-word
        tau_c ({word: fraction}, the slider's tau_c for every other word)."""
        kept = self.kept(session, label)
        prompt = kept.inverted.config.prompt
        with sd.front_door(CONTROLS):
            if not (target or "").strip():
                raise sd.UsageError(f"{CONTROLS['target']} is empty: type the edited prompt, e.g. 'a photo of a tiger'")
            chosen = edit_type or self.model.edit_type_for(prompt, target)
            values = dict(taus)
            if tau_c_words:
                def per_word(c: float) -> dict:
                    return {**tau_c_words, "default_": float(c)}
                values["tau_c"] = [per_word(c) for c in values["tau_c"]] if sweep else per_word(values["tau_c"])
            words = _blend(blend)
            run = self.model.sweep if sweep else self.model.edit
            out = run(kept.inverted, target, edit_type=chosen, blend=words, reweight=reweight or None,
                      attention_maps=not sweep, progress=progress, **values)
        edits = list(out) if sweep else [out]
        files = []
        folder = kept.folder / "edits" / _slug(target)
        commands = [_command(edited, kept) for edited in edits]
        for edited, command in zip(edits, commands):
            files += edited.save(folder)[:1]
            files.append(_write_sidecar(folder, edited, kept, command))
        return EditView(edits, commands[0], files)

    # ---- generated images ----------------------------------------------------------------------------------
    def generated(self, prompt: str, target: str, *, seed: int, edit_type: str | None = None,
                  taus: Mapping[str, float], blend: tuple[Sequence[str], Sequence[str]] = ((), ()),
                  reweight: Mapping[str, float] | None = None, num_ddim_steps: int = 50,
                  guidance_scale: float = 7.5, out: Path, progress: Progress = None) -> GeneratedView:
        """P2Plus on the image ``prompt`` generates from ``seed`` (p2plus.py; no inversion); files under ``out``."""
        with sd.front_door(CONTROLS):
            if not (prompt or "").strip() or not (target or "").strip():
                raise sd.UsageError(f"{CONTROLS['prompt']} and {CONTROLS['target']} are both needed")
            chosen = edit_type or self.model.edit_type_for(prompt, target)
            edited = self.model.edit_generated(prompt, target, int(seed), edit_type=chosen, blend=_blend(blend),
                                               reweight=reweight or None, num_ddim_steps=int(num_ddim_steps),
                                               guidance_scale=float(guidance_scale), attention_maps=True,
                                               progress=progress, **{k: v for k, v in taus.items() if k != "tau_v"})
        return GeneratedView(edited, edited.save(Path(out) / _slug(target))[:2])


def _blend(blend: tuple[Sequence[str], Sequence[str]]) -> tuple | None:
    """LocalBlend's words from the two pickers; None when neither has a word, a message when only one has."""
    source, target = (tuple(words or ()) for words in blend)
    if not source and not target:
        return None
    if not source or not target:
        raise sd.UsageError(f"{CONTROLS['blend_word']}: pick words of both prompts (source {list(source)}, "
                            f"target {list(target)})")
    return source, target


def _command(edited: "sd.Edited", kept: Kept) -> str:
    """The CLI line that remakes ``edited`` in a checkout where the bundle of ``kept`` was unzipped."""
    source = Path(kept.inverted.config.image_path).name  # the copy in the bundle that was inverted
    return edited.command(model_dir=kept.folder.name, image_path=f"{kept.folder.name}/{source}",
                          outdir="stylediffusion-results/app")


def _slug(text: str) -> str:
    """A prompt as one short folder name."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:80] or "edit"


def _write_sidecar(folder: Path, edited: "sd.Edited", kept: Kept, command: str) -> Path:
    """``edited_img-{taus}.json`` beside the PNG: the settings, the taus and the command that remakes it."""
    path = folder / f"edited_img-{edited.taus.stem()}.json"
    data = {**edited.settings, "tau": edited.taus.as_dict(), "inversion": kept.label, "command": command}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)
    return path


def _zip(folder: Path, files: Sequence[Path]) -> Path:
    """``{folder}.zip`` next to nothing the app serves but its outputs: ``files`` under ``{folder.name}/``, as the
    edit command expects them (``--model_dir {folder.name}``)."""
    path = folder / f"{folder.name}.zip"
    tmp = path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            archive.write(file, Path(folder.name) / file.relative_to(folder))
    tmp.replace(path)
    return path
