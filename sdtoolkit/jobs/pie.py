"""Run one inversion + P2Plus edit per PIE-Bench case and write PnPInversion's 4-panel outputs (resumable).

For each case (:mod:`sdtoolkit.jobs.pie_data`): invert the source image with the chosen method (the result is
kept under the inversion folder, so another editing setting re-edits without re-inverting), edit it from the
original to the editing prompt (brackets removed) and write one image of four panels at the source's size —
instruction text | source | reconstruction | edited — to ``{output_path}/{method}+p2p/annotation_images/{image_path}``,
the layout PnPInversion's runner writes and its evaluator reads (it crops the right-most square). A JSON
sidecar per case (``{method}+p2p/cases/{key}.json``) records the settings it was made with, its seconds and its
UNet forward passes (:func:`sdtoolkit.core.models.count_unet`); a case whose image decodes and whose sidecar matches is skipped, a
truncated or unreadable one is redone (and says so).

Defaults are the settings of PIE-Bench's StyleDiffusion + P2P row (docs/method.md §4): T = 50, 100 inner
steps, 1 epoch, guidance 7.5, tau_v .5 / tau_c .6 / tau_s .6 / tau_u 0, no blend word, no reweighting.
Edit type: Replacement when the two prompts have the same number of words (what Replacement needs), else
Refinement; ``ReplacementRule.CHAR_LENGTH`` reproduces the published runner, which chose Replacement when
the two prompts had the same number of *characters* (a case whose word counts then differ fails, as there).
"""
from __future__ import annotations

import enum
import json
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from sdtoolkit.core.checks import check_output_names, invert_config, validate_edit
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.images import decodes, tensor_to_pil
from sdtoolkit.core.io import result_lock, save_image, write_json
from sdtoolkit.core.paths import contained
from sdtoolkit.core.models import SDModels, UNetCalls, count_unet
from sdtoolkit.core.settings import EditConfig, EditType, InversionMethod, InvertConfig, Schedule, Taus
from sdtoolkit.core.words import word_spans
from sdtoolkit.jobs.edit import edit_latents
from sdtoolkit.jobs.invert import invert, load_inversion, load_source
from sdtoolkit.jobs.pie_data import IMAGES_DIR, CaseError, PieCase, method_dir

CASES_DIR = "cases"
MANIFEST_FILE = "manifest.json"


class ReplacementRule(enum.StrEnum):
    """When a case is edited with Replacement (else Refinement)."""

    WORDS = "words"  # same number of words: what Replacement's token mapping needs
    CHAR_LENGTH = "char_length"  # same number of characters: the published runner's test


class Track(enum.StrEnum):
    """The benchmark's two tracks: no user mask (as published) or the annotation mask as LocalBlend's mask."""

    MASK_FREE = "mask-free"
    MASK_ALLOWED = "mask-allowed"


@dataclass(frozen=True, kw_only=True)
class PieSettings:
    """Every setting of a PIE-Bench run (defaults: the published StyleDiffusion + P2P row)."""

    model: str
    method: InversionMethod = InversionMethod.STYLEDIFFUSION
    num_ddim_steps: int = 50
    num_inner_steps: int = 100
    num_epoch: int = 1
    guidance_scale: float = 7.5
    taus: Taus = field(default_factory=lambda: Taus(0.5, 0.6, 0.6, 0.0))
    use_annotation_mask: bool = False
    blend_from_brackets: bool = False
    replacement_rule: ReplacementRule = ReplacementRule.WORDS
    seed: int = 0
    resolution: int | None = None  # None: the model's default size (512² for SD 1.x, PIE-Bench's size)
    keep_aspect: bool = False
    schedule: Schedule = Schedule.REFERENCE

    @property
    def track(self) -> Track:
        return Track.MASK_ALLOWED if self.use_annotation_mask else Track.MASK_FREE

    def edit_identity(self) -> dict:
        """What an output image depends on besides its case: a saved output is reused only when this matches."""
        out = asdict(self)
        out["taus"] = self.taus.as_dict()
        out["track"] = self.track.value
        return out

    def invert_config(self, case: PieCase, data_path: Path, inversion_dir: Path) -> InvertConfig:
        """The inversion of ``case`` (source prompt without brackets), saved under ``inversion_dir``."""
        return invert_config(
            prompt=case.source_prompt, image_path=str(case.source_file(data_path)), index=case.key, model=self.model,
            inversion=self.method, num_ddim_steps=self.num_ddim_steps, guidance_scale=self.guidance_scale,
            num_inner_steps=self.num_inner_steps, num_epoch=self.num_epoch, seed=self.seed,
            model_dir=str(inversion_dir), resolution=self.resolution, keep_aspect=self.keep_aspect,
            schedule=self.schedule,
        )


def output_file(output_path: Path, method: str, case: PieCase) -> Path:
    return contained(method_dir(output_path, method) / IMAGES_DIR, case.image_path, "image_path")


def sidecar_file(output_path: Path, method: str, case: PieCase) -> Path:
    return method_dir(output_path, method) / CASES_DIR / f"{case.key}.json"


def choose_edit_type(source: str, target: str, rule: ReplacementRule, tokenizer) -> EditType:
    """Replacement or Refinement for two bracket-free prompts under ``rule``."""
    if rule is ReplacementRule.CHAR_LENGTH:
        same = len(source) == len(target)
    else:
        same = len(word_spans(source, tokenizer)) == len(word_spans(target, tokenizer))
    return EditType.REPLACEMENT if same else EditType.REFINEMENT


def case_edit(case: PieCase, settings: PieSettings, tokenizer) -> EditConfig:
    """The P2Plus edit of a case: target = editing prompt without brackets; blend words only with
    ``blend_from_brackets`` (the bracketed words); CaseError naming the case for a word not in its prompt."""
    blend = case.bracket_blend_words() if settings.blend_from_brackets else None
    t = settings.taus
    edit = EditConfig(target=case.target_prompt,
                      edit_type=choose_edit_type(case.source_prompt, case.target_prompt, settings.replacement_rule,
                                                 tokenizer),
                      blend_word=blend, **{name: [value] for name, value in t.as_dict().items()})
    try:
        validate_edit(case.source_prompt, edit, tokenizer)
    except UsageError as err:
        raise CaseError(f"case {case.key}: {err}") from None
    return edit


def annotation_mask(case: PieCase) -> torch.Tensor:
    """The case's edit mask (H, W) as 0/1 floats (1 = may change); CaseError unless the image is square."""
    mask = case.mask()
    if mask.shape[0] != mask.shape[1]:
        raise CaseError(f"case {case.key}: the annotation mask is {mask.shape[1]}x{mask.shape[0]}; "
                        "--use_annotation_mask needs square images (the model's input is a square crop)")
    return torch.from_numpy(np.asarray(mask, dtype=np.float32))


def text_panel(text: str, size: tuple[int, int]) -> Image.Image:
    """A white (H, W) = ``size`` panel with ``text`` wrapped in black (the runner's instruction panel)."""
    height, width = size
    panel = Image.new("RGB", (width, height), "white")
    font = ImageFont.load_default(size=max(8, width // 24))
    chars = max(8, int(width / (font.size * 0.55)))
    ImageDraw.Draw(panel).multiline_text((width // 32, height // 32), "\n".join(textwrap.wrap(text, chars)),
                                         fill="black", font=font)
    return panel


def four_panels(case: PieCase, source: Image.Image, reconstruction: Image.Image, edited: Image.Image) -> Image.Image:
    """instruction | source | reconstruction | edited, each at the source image's size, side by side."""
    height, width = case.image_size
    panels = [text_panel(case.editing_instruction, (height, width)), source.convert("RGB")] + [
        image.resize((width, height), Image.Resampling.LANCZOS) for image in (reconstruction, edited)]
    out = Image.new("RGB", (4 * width, height))
    for k, panel in enumerate(panels):
        out.paste(panel, (k * width, 0))
    return out


@dataclass
class CaseResult:
    key: str
    status: str  # done / skipped / failed
    message: str
    seconds: float = 0.0
    inverted: bool = False
    redone: str = ""  # why an earlier output of the case was not reused (truncated image, unreadable sidecar)


def case_resume(case: PieCase, settings: PieSettings, output_path: Path, overwrite: bool) -> str | None:
    """None when the case's output decodes and its sidecar records these settings (the case is skipped); else
    why it is (re)done: "" when it was not written yet (or ``overwrite``), the reason when the output is truncated
    or its sidecar unreadable. A sound output made with other settings is a UsageError (never replaced)."""
    image, side = output_file(output_path, settings.method, case), sidecar_file(output_path, settings.method, case)
    if overwrite or not (image.exists() or side.exists()):
        return ""
    if not image.is_file() or not decodes(image):
        return f"{image} is missing or does not decode"
    try:
        saved = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"its sidecar {side} is missing or not JSON ({type(exc).__name__})"
    if not isinstance(saved, dict) or saved.get("key") != case.key:
        return f"its sidecar {side} is not this case's"
    if saved.get("settings") != json.loads(json.dumps(settings.edit_identity())):
        raise UsageError(f"case {case.key}: {image} was made with other settings; use another --output_path "
                         "(with --inversion_dir to reuse the inversions) or --overwrite")
    return None


def run_case(models: SDModels, case: PieCase, settings: PieSettings, data_path: Path, output_path: Path,
             inversion_dir: Path, overwrite: bool = False) -> CaseResult:
    """Invert (or reuse the saved inversion) and edit one case; write its 4-panel image and sidecar (one writer
    per output: a second process stops at the case's lock)."""
    check_output_names(settings.invert_config(case, data_path, inversion_dir), what=f"case key {case.key!r}")
    with result_lock(sidecar_file(output_path, settings.method, case)):
        redo = case_resume(case, settings, output_path, overwrite)
        if redo is None:
            return CaseResult(case.key, "skipped", "already done")
        result = _run_case(models, case, settings, data_path, output_path, inversion_dir)
    result.redone = redo
    return result


def _run_case(models: SDModels, case: PieCase, settings: PieSettings, data_path: Path, output_path: Path,
              inversion_dir: Path) -> CaseResult:
    with count_unet(models.unet) as counted:
        return _edit_case(models, case, settings, data_path, output_path, inversion_dir, counted)


def _edit_case(models: SDModels, case: PieCase, settings: PieSettings, data_path: Path, output_path: Path,
               inversion_dir: Path, counted: UNetCalls) -> CaseResult:
    start = time.perf_counter()
    edit = case_edit(case, settings, models.tokenizer)
    mask = annotation_mask(case) if settings.use_annotation_mask else None
    cfg = settings.invert_config(case, data_path, inversion_dir)
    inverted = invert(models, cfg, progress=False).trained
    source = load_source(models, cfg.image_path, cfg.crop, cfg.resolution, cfg.keep_aspect)
    null = models.encode_null()
    texts = models.encode_text([cfg.prompt, edit.target]).float()
    inv, _ = load_inversion(models, cfg, source, texts[:1], null)
    torch.manual_seed(settings.seed)
    z = edit_latents(models, inv, cfg.prompt, edit, settings.taus, texts, settings.num_ddim_steps,
                     settings.guidance_scale, blend_mask=mask, pooled=models.encode_pooled([cfg.prompt, edit.target]))
    images = models.decode_latent(z)
    with Image.open(cfg.image_path) as original:
        panels = four_panels(case, original.convert("RGB"), tensor_to_pil(images[0]), tensor_to_pil(images[1]))
    path = save_image(output_file(output_path, settings.method, case), panels)
    seconds = time.perf_counter() - start
    write_json(sidecar_file(output_path, settings.method, case), {
        "key": case.key, "image": str(path), "settings": settings.edit_identity(), "edit_type": edit.edit_type.value,
        "source_prompt": cfg.prompt, "target_prompt": edit.target,
        "blend_word": edit.blend_word, "inversion_file": str(cfg.path()), "inverted_now": inverted,
        "seconds": round(seconds, 3), "unet_passes": counted.calls,
    })
    return CaseResult(case.key, "done", str(path), seconds, inverted)
