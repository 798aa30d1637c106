"""The Python API: load a model once, invert an image, edit it, sweep taus, edit generated images, score.

    import sdtoolkit as sd
    model = sd.load("toy")                                   # hub id, folder, sd_1_4…, toy, tiny
    inv = model.invert("photo.png", "a red circle on a green background", method="npi")
    out = model.edit(inv, "a blue circle on a green background", blend=("red", "blue"))
    out.edited.save("edited.png")

Everything stays in memory (PIL images, tensors, dicts) until ``save()`` is called. Values are natural Python:
words as tuples or dicts, taus as numbers (tau_c also per word). Bad input raises the
:class:`sdtoolkit.core.errors.UsageError` the CLIs print, before any network runs, naming the keyword the caller
passed (:data:`API_NAMES`: ``blend`` where the CLI says ``--blend_word``). Built on ``sdtoolkit.jobs``
(the CLIs' jobs): the same inversion, sampler and controllers, so the same seed gives the CLIs' images.
"""
from __future__ import annotations

import functools
import itertools
import os
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from sdtoolkit.control.controllers import Recording, show_cross_attention
from sdtoolkit.core import checks, values
from sdtoolkit.core.constants import SD_VERSIONS
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.io import save_image
from sdtoolkit.core.images import as_pil, binary_mask, fit_image, image_grid, load_mask, tensor_to_pil
from sdtoolkit.core.mapping import UnreadableResult, load_learned, save_learned
from sdtoolkit.core.naming import SETTINGS, front_door
from sdtoolkit.core.models import SDModels, load_models, resolve_device
from sdtoolkit.core.progress import BarState, ProgressBar, listening
from sdtoolkit.core.settings import TAU_NAMES, EditConfig, EditType, InversionMethod, InvertConfig, Schedule, Taus, \
    to_enum
from sdtoolkit.jobs.edit import build_controller, sweep_chunks, sweep_latents
from sdtoolkit.jobs.invert import IN_MEMORY, SourceImage, fit, load_inversion, load_source, measure
from sdtoolkit.jobs.p2plus import Generator
from sdtoolkit.jobs.pie import ReplacementRule, choose_edit_type
from sdtoolkit.methods.inversions import Inversion

__all__ = ["BarState", "Edited", "Inverted", "Model", "load", "ns_lpips", "pie_scores", "METHODS", "SCHEDULES",
           "P2PLUS_TAUS", "RECOMMENDED_TAUS", "UsageError", "image_grid", "API_NAMES", "front_door", "method_defaults"]

METHODS = tuple(m.value for m in InversionMethod)
"""The registered inversion methods (``method=`` of :meth:`Model.invert`)."""

SCHEDULES = tuple(s.value for s in Schedule)
"""The inner-iteration schedules (``schedule=`` of :meth:`Model.invert`; docs/backbones.md "Speed: schedules")."""

Progress = bool | Callable[[BarState], None] | None
"""``progress=``: True prints the CLIs' tqdm bars, False none, a callable receives every bar's state instead
(:class:`BarState`: description, count, total, postfix with step / iterations / loss); None: the model's."""

CLI_ONLY = ("sd_version", "model_dir", "outdir", "replacement_rule")
"""The settings of :data:`sdtoolkit.core.naming.SETTINGS` that only the CLIs take (no API keyword)."""
API_NAMES: Mapping[str, str] = {**{setting: setting for setting in SETTINGS if setting not in CLI_ONLY},
                                "image_path": "image", "inversion": "method", "blend_word": "blend",
                                "eq_params": "reweight", "blend_mask": "mask"}
"""What the API's errors call each setting: canonical name (the CLI flag's, :data:`sdtoolkit.core.naming.SETTINGS`)
→ the keyword that sets it, bare (``blend``, ``num_inner_steps``). Every public function and method enters
:func:`front_door` with it. A caller with names of its own (an app's control labels) wraps its calls in
``front_door({...})``, a partial mapping if it likes: its names win, the settings it leaves out keep these."""


def _front_door(fn):
    """Run ``fn`` with the API's names for the settings (:data:`API_NAMES`)."""

    @functools.wraps(fn)
    def named(*args, **kwargs):
        with front_door(API_NAMES):
            return fn(*args, **kwargs)

    return named


def method_defaults(method: str) -> dict[str, float | int]:
    """The settings :meth:`Model.invert` uses for ``method`` when they are not given: ``num_ddim_steps``,
    ``num_inner_steps``, ``guidance_scale`` (the published ones, docs/method.md §9)."""
    with front_door(API_NAMES):
        chosen = to_enum(InversionMethod, method, "inversion")
    return {"num_ddim_steps": chosen.default_ddim_steps, "num_inner_steps": chosen.default_inner_steps,
            "guidance_scale": chosen.default_guidance_scale}


ImageLike = str | os.PathLike | Image.Image | np.ndarray
"""An image: a file path, a PIL image or an array (H, W[, 3|4]) of uint8 or of floats in [0, 1]."""


@_front_door
def load(model: str = "sd_1_4", *, device: str = "auto", dtype: str = "auto", progress: Progress = True,
         image_encoder: str | None = None, compile: bool = False, vae_tiling: bool = False,
         vae_slicing: bool = False, gradient_checkpointing: bool = False) -> "Model":
    """Load a model once: a hub id, a local diffusers folder, ``sd_1_4`` / ``sd_1_5`` / ``sd_2_1_base`` /
    ``sd_2_1`` / ``sdxl``, ``toy`` (the shipped toy model) or ``tiny`` (random weights: noise).
    ``progress=False`` turns every progress bar off; a callable receives them (:data:`Progress`)."""
    model_id = SD_VERSIONS.get(model, model)
    models = load_models(model_id, device, dtype, image_encoder=image_encoder, compile_unet=compile,
                         vae_tiling=vae_tiling, vae_slicing=vae_slicing, gradient_checkpointing=gradient_checkpointing)
    return Model(models, model_id, progress)


@dataclass
class Inverted:
    """An inverted image in memory: what the method learned, the source, the reconstruction and its figures."""

    config: InvertConfig
    inversion: Inversion
    source: SourceImage
    sidecar: dict  # what the CLI's JSON sidecar holds (identity, backbone, reconstruction figures, ...)
    reconstruction: Image.Image | None = None  # sampled back with the learned inversion at the run's guidance
    vae_reconstruction: Image.Image | None = None  # the VAE's decoding of z_0 (the grid's second panel)

    @property
    def figures(self) -> dict[str, float]:
        """Latent MSE to z_0 of plain DDIM and of this inversion at the run's guidance (the sidecar's)."""
        return dict(self.sidecar.get("reconstruction", {}))

    @property
    def worse_than_ddim(self) -> bool:
        return bool(self.sidecar.get("worse_than_ddim", False))

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write safetensors + JSON sidecar at ``path`` (default: the CLI's ``model_{method}/…-[index].safetensors``
        under the current folder, which ``stylediffusion.py --is_train ''`` then edits). Returns the path."""
        target = Path(path) if path is not None else self.config.path()
        return save_learned(target, self.inversion.tensors(), self.sidecar)


@dataclass
class Edited:
    """One edit in memory: the edited image, the reconstruction beside it, the grid and attention maps."""

    edited: Image.Image
    reconstruction: Image.Image  # the source branch of the same sampling
    source: Image.Image  # the model's input (cropped, resized)
    taus: Taus
    vae_reconstruction: Image.Image | None = None
    attention: Image.Image | None = None  # per-token cross-attention maps of the target (attention_maps=True)
    source_attention: Image.Image | None = None  # the same for the source prompt
    seed: int | None = None  # generated edits (Model.edit_generated)
    settings: dict = field(default_factory=dict)
    blend_mask: Image.Image | None = None  # LocalBlend's mask at the last step (white = may change), image-sized
    config: EditConfig | None = None  # this edit (one tau combination); None for generated edits
    source_config: InvertConfig | None = None  # the inversion it edits

    @property
    def blend_overlay(self) -> Image.Image | None:
        """The edited image with LocalBlend's mask over it (the region that may change tinted red), or None when
        the edit had no blend words and no user mask."""
        if self.blend_mask is None:
            return None
        edited = self.edited.convert("RGB")
        tinted = Image.blend(edited, Image.new("RGB", edited.size, (255, 0, 0)), 0.45)
        return Image.composite(tinted, edited, self.blend_mask)

    def command(self, model_dir: str | os.PathLike | None = None, image_path: str | os.PathLike | None = None,
                outdir: str | os.PathLike | None = None) -> str:
        """The ``stylediffusion.py --is_train ''`` command that makes this image from the saved inversion
        (:meth:`Inverted.save`); ``model_dir`` / ``image_path`` / ``outdir`` where they are on the user's side
        (default: as inverted, the CLI's defaults). Its ``edited_img-….png`` is this :attr:`edited`, byte for byte."""
        if self.config is None or self.source_config is None:
            raise UsageError("a generated edit has no inversion to edit: its command is p2plus.py's")
        source = replace(self.source_config, **{k: str(v) for k, v in
                                                (("model_dir", model_dir), ("image_path", image_path)) if v is not None})
        edit = self.config if outdir is None else replace(self.config, outdir=str(outdir))
        return source.edit_command(edit)

    @property
    def grid(self) -> Image.Image:
        """input | VAE reconstruction | reconstruction | edited, as the CLI's ``grid_img`` (source | edited for a
        generated image)."""
        panels = [self.source, self.vae_reconstruction, self.reconstruction, self.edited]
        return image_grid([p for p in panels if p is not None] if self.seed is None else [self.source, self.edited])

    def save(self, folder: str | os.PathLike) -> list[Path]:
        """Write ``edited_img-{taus}.png`` and ``grid_img-{taus}.png`` (and the attention maps) into ``folder``."""
        stem = self.taus.stem() if self.seed is None else f"seed{self.seed}-" + self.taus.stem().split("-", 1)[1]
        out = [save_image(Path(folder) / f"edited_img-{stem}.png", self.edited),
               save_image(Path(folder) / f"grid_img-{stem}.png", self.grid)]
        if self.attention is not None:
            out.append(save_image(Path(folder) / f"cross_attention-{stem}.png", self.attention))
        return out


RECOMMENDED_TAUS = {name: items[0] for name, items in EditConfig(target=None).tau_lists().items()}
"""The library's default taus (the reference README's recommended .5 / .6 / .6 / 0)."""
P2PLUS_TAUS = {"tau_c": 0.8, "tau_s": 0.4, "tau_u": 0.5}
"""The reference p2plus.py's defaults (generated edits)."""


def _taus(given: dict, defaults: Mapping, names: Sequence[str] = TAU_NAMES) -> dict[str, list]:
    """The tau lists of an edit from numbers, lists, or per-word dicts (:data:`PER_WORD_TAUS`); ``given`` must
    name taus of ``names``, the others take ``defaults`` (else the library's)."""
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise UsageError(f"{', '.join(unknown)}: not a setting here; the taus are {', '.join(names)}")
    chosen = {**RECOMMENDED_TAUS, **defaults, **given}
    return values.tau_lists(chosen.__getitem__, names)


class Model:
    """A loaded model and the operations on it; :func:`load` makes one."""

    def __init__(self, models: SDModels, model_id: str, progress: Progress = True) -> None:
        self.models = models
        self.model_id = model_id
        self.progress = progress

    def __repr__(self) -> str:
        return f"Model({self.model_id!r}, device={str(self.models.device)!r})"

    # ---- inversion -------------------------------------------------------------------------------------------
    @_front_door
    def invert(self, image: ImageLike, prompt: str, method: str = "stylediffusion", *,
               num_ddim_steps: int | None = None, guidance_scale: float | None = None,
               num_inner_steps: int | None = None, num_epoch: int = 1, w_attnloss: bool = True,
               schedule: str = "reference", attn_pairing: str = "same", seed: int = 0,
               crop: tuple[int, int, int, int] = (0, 0, 0, 0), resolution: int | None = None,
               keep_aspect: bool = False, is_1word: bool = False, index: int | str = 0,
               progress: Progress = None) -> Inverted:
        """Invert ``image`` described by ``prompt`` with ``method`` (one of :data:`METHODS`); the step counts and
        guidance default to the method's (as the CLIs). Nothing is written (:meth:`Inverted.save`)."""
        path = str(image) if isinstance(image, (str, os.PathLike)) else IN_MEMORY
        cfg = checks.invert_config(
            prompt=prompt, image_path=path, model=self.model_id, inversion=method, num_ddim_steps=num_ddim_steps,
            guidance_scale=guidance_scale, num_inner_steps=num_inner_steps, num_epoch=num_epoch, seed=seed,
            index=index, w_attnloss=w_attnloss, is_1word=is_1word, crop=tuple(crop),
            attn_pairing=attn_pairing, resolution=resolution, keep_aspect=keep_aspect, schedule=schedule)
        if path != IN_MEMORY:
            checks.check_image(path, cfg.crop)
        checks.check_size(resolution, keep_aspect, path if path != IN_MEMORY else None, cfg.crop)
        checks.check_multiple(resolution, self.models.family.size_multiple)
        checks.check_prompt(prompt, self.models.tokenizer, is_1word)
        source = self._source(image, cfg)
        with self._reporting(progress) as show:
            fitted = fit(self.models, cfg, source, show)
            sidecar, latent = measure(self.models, cfg, source, fitted.inversion, fitted.log, fitted.seconds,
                                      text=fitted.text)
        return Inverted(cfg, fitted.inversion, source, sidecar, tensor_to_pil(self.models.decode_latent(latent)),
                        tensor_to_pil(self.models.decode_latent(source.z0)))

    @contextmanager
    def _reporting(self, progress: Progress) -> Iterator[bool]:
        """Within the block the bars go where ``progress`` says (:data:`Progress`); yields the terminal switch the
        jobs take."""
        chosen = self.progress if progress is None else progress
        with listening(chosen) if callable(chosen) else nullcontext():
            yield bool(chosen) and not callable(chosen)

    @_front_door
    def edit_type_for(self, source: str, target: str) -> str:
        """``"Replacement"`` when the two prompts have the same number of words, else ``"Refinement"`` (the
        PIE-Bench runner's rule, docs/pie-bench.md)."""
        return choose_edit_type(source, target, ReplacementRule.WORDS, self.models.tokenizer).value

    def _source(self, image: ImageLike, cfg: InvertConfig) -> SourceImage:
        image = image if isinstance(image, (str, os.PathLike)) else as_pil(image)
        return load_source(self.models, image, cfg.crop, cfg.resolution, cfg.keep_aspect)

    @_front_door
    def load_inversion(self, path: str | os.PathLike, image: ImageLike | None = None) -> Inverted:
        """An inversion saved by :meth:`Inverted.save` or a CLI (``model_*/….safetensors``); ``image``: the image it
        was made from (default: the ``image_path`` its sidecar names). Refused when the image, prompt, model or
        step count differ."""
        try:
            _, sidecar = load_learned(path)
        except FileNotFoundError:
            raise UsageError(f"no saved inversion at {path}") from None
        except UnreadableResult as exc:
            raise UsageError(str(exc)) from None
        fields = {k: sidecar[k] for k in ("prompt", "image_path", "index", "inversion", "num_ddim_steps",
                                          "guidance_scale", "num_inner_steps", "num_epoch", "w_attnloss", "is_1word",
                                          "attn_pairing", "seed", "resolution", "keep_aspect", "schedule")
                  if k in sidecar}
        cfg = InvertConfig(model=self.model_id, crop=tuple(sidecar.get("crop", (0, 0, 0, 0))), **fields)
        if image is None and cfg.image_path == IN_MEMORY:
            raise UsageError(f"{path} was made from an in-memory image: pass it as image=")
        source = self._source(cfg.image_path if image is None else image, cfg)
        text = self.models.encode_text([cfg.prompt]).float()
        inv, sidecar = load_inversion(self.models, cfg, source, text, self.models.encode_null(), Path(path))
        return Inverted(cfg, inv, source, sidecar, None, tensor_to_pil(self.models.decode_latent(source.z0)))

    # ---- editing ---------------------------------------------------------------------------------------------
    def _edit_config(self, prompt: str, target: str, edit_type, taus: dict, blend, reweight) -> EditConfig:
        edit = EditConfig(target=target, edit_type=edit_type, blend_word=values.blend_words(blend),
                          eq_params=values.eq_params(reweight), **taus)
        if edit.edit_type is EditType.STORE_ATTN:
            raise UsageError("edit_type StoreAttn: use attention_maps=True on an edit, or Inverted.reconstruction")
        return edit

    def _mask(self, mask: ImageLike | None, cfg: InvertConfig) -> torch.Tensor | None:
        if mask is None:
            return None
        size, multiple = cfg.resolution or self.models.image_size, self.models.family.size_multiple
        if isinstance(mask, (str, os.PathLike)):
            checks.check_image(str(mask), setting="blend_mask")
            return load_mask(mask, size, *cfg.crop, keep_aspect=cfg.keep_aspect, multiple=multiple)
        return binary_mask(fit_image(as_pil(mask), size, *cfg.crop, keep_aspect=cfg.keep_aspect, multiple=multiple))

    @_front_door
    def edit(self, inverted: Inverted, target: str, *, edit_type: str = "Replacement",
             blend: Sequence | Mapping | None = None, reweight: Mapping | Sequence | None = None,
             mask: ImageLike | None = None, attention_maps: bool = False, progress: Progress = None,
             **taus: float | Mapping) -> Edited:
        """Edit ``inverted`` into ``target`` with P2Plus and return the images.

        ``edit_type``: ``"Replacement"`` (same number of words) or ``"Refinement"`` (words inserted or removed);
        ``taus``: ``tau_v``, ``tau_c``, ``tau_s``, ``tau_u``, fractions of the steps (docs/method.md §4), the library's
        recommended .5 / .6 / .6 / 0 by default;
        ``tau_c`` also per word, ``{"tiger": 0.3, "default_": 0.6}``; ``blend``: LocalBlend's words, ``("cat",
        "tiger")``, ``(("cat",), ("big", "tiger"))`` or ``{"cat": "tiger"}``; ``reweight``: ``{"tiger": 2}``;
        ``mask``: a user mask (white = may change) instead of the blend words' attention mask;
        ``attention_maps``: also return the per-token cross-attention maps."""
        for name, value in taus.items():
            if isinstance(value, (list, tuple)) and len(value) != 1:
                raise UsageError(f"{name} {value!r}: edit takes one value per tau; use sweep for several")
        chosen = self.progress if progress is None else progress
        return self.sweep(inverted, target, edit_type=edit_type, blend=blend, reweight=reweight, mask=mask,
                          attention_maps=attention_maps, progress=chosen if callable(chosen) else False, **taus)[0]

    @_front_door
    def sweep(self, inverted: Inverted, target: str, *, edit_type: str = "Replacement",
              blend: Sequence | Mapping | None = None, reweight: Mapping | Sequence | None = None,
              mask: ImageLike | None = None, attention_maps: bool = False, progress: Progress = None,
              **taus: float | Sequence | Mapping) -> list[Edited]:
        """:meth:`edit` for every combination of the tau lists (``tau_v=[.2, .6]``, ...; tau_v outermost, as the
        CLI's file order); the source is sampled once per chunk of combinations, each combination getting its own
        edit's images (docs/backbones.md, "Speed: sweeps share the source")."""
        cfg, models = inverted.config, self.models
        edit = self._edit_config(cfg.prompt, target, edit_type, _taus(taus, {}), blend, reweight)
        checks.validate_edit(cfg.prompt, edit, models.tokenizer, cfg.is_1word)
        blend_mask = self._mask(mask, cfg)
        texts = torch.cat([models.encode_text([cfg.prompt]).float(), models.encode_text([target]).float()])
        pooled = models.encode_pooled([cfg.prompt, target])
        out = []
        with self._reporting(progress) as show:
            bar = ProgressBar(total=len(edit.combinations()), desc="tau combinations", disable=not show)
            for chunk in sweep_chunks(edit.combinations(), inverted.inversion):  # the source sampled once per chunk
                controllers = [build_controller(models, cfg.prompt, edit, cfg.num_ddim_steps, taus, blend_mask)
                               for taus in chunk]
                recorders = [Recording(c, models.layers()) for c in controllers] if attention_maps else controllers
                z = sweep_latents(models, inverted.inversion, cfg.prompt, edit, chunk, texts, cfg.num_ddim_steps,
                                  cfg.guidance_scale, controllers=recorders, pooled=pooled)
                images = models.decode_latent(z)  # (1 + K, 3, H, W): the source, then each combination's target
                for k, (taus, controller, recorder) in enumerate(zip(chunk, controllers, recorders), start=1):
                    maps = [show_cross_attention(recorder.store, p, models.tokenizer, batch_index=b)
                            for b, p in enumerate([cfg.prompt, target])] if attention_maps else [None, None]
                    out.append(Edited(tensor_to_pil(images[k]), tensor_to_pil(images[0]), inverted.source.pil, taus,
                                      inverted.vae_reconstruction, maps[1], maps[0], settings=_settings(edit, cfg),
                                      blend_mask=_blend_mask(controller, z.shape[2:], inverted.source.pil.size),
                                      config=edit.only(taus), source_config=cfg))
                bar.update(len(chunk))
            bar.close()
        return out

    @_front_door
    def edit_generated(self, prompt: str, target: str, seed: int | Sequence[int] = 2720, *,
                       edit_type: str = "Replacement", blend: Sequence | Mapping | None = None,
                       reweight: Mapping | Sequence | None = None, num_ddim_steps: int = 50,
                       guidance_scale: float = 7.5, resolution: int | None = None,
                       attention_maps: bool = False, progress: Progress = None,
                       **taus: float | Sequence | Mapping) -> Edited | list[Edited]:
        """P2Plus on a *generated* image (no inversion): sample ``prompt`` from the seed's noise and edit it into
        ``target`` (the defaults are p2plus.py's: tau_c .8, tau_s .4, tau_u .5; tau_v does not apply). A list of
        seeds, or of tau values, gives a list of edits."""
        seeds = [seed] if isinstance(seed, int) else list(seed)
        for s in seeds:
            checks.check_seed(s)
        checks.check_steps(num_ddim_steps)
        checks.check_finite(guidance_scale, "guidance_scale")
        checks.check_size(resolution, False)
        checks.check_multiple(resolution, self.models.family.size_multiple)
        names = [name for name in TAU_NAMES if name != "tau_v"]
        edit = self._edit_config(prompt, target, edit_type, {**_taus(taus, P2PLUS_TAUS, names), "tau_v": [0.0]},
                                 blend, reweight)
        checks.validate_edit(prompt, edit, self.models.tokenizer)
        generator = Generator(self.models, prompt, edit, num_ddim_steps, guidance_scale, resolution)
        out = []
        for s, taus in itertools.product(seeds, edit.combinations()):
            recorder = None
            if attention_maps:
                recorder = Recording(build_controller(self.models, prompt, edit, num_ddim_steps, taus),
                                     self.models.layers())
            with self._reporting(progress):
                source, edited = generator.edit_seed(s, taus, recorder)
            maps = [show_cross_attention(recorder.store, p, self.models.tokenizer, batch_index=b)
                    for b, p in enumerate([prompt, target])] if recorder else [None, None]
            out.append(Edited(edited, source, source, taus, None, maps[1], maps[0], seed=s,
                              settings={"prompt": prompt, "num_ddim_steps": num_ddim_steps,
                                        "guidance_scale": guidance_scale}))
        return out[0] if len(out) == 1 and isinstance(seed, int) else out

    # ---- scores ----------------------------------------------------------------------------------------------
    @_front_door
    def attention_mask(self, image: ImageLike, prompt: str, words: str | Sequence[str], num_ddim_steps: int = 50,
                       resolution: int | None = None, keep_aspect: bool = False) -> Image.Image:
        """storemask's foreground mask (corrected mode, docs/method.md §7): the cross-attention of ``words`` in
        ``prompt`` during a DDIM inversion of ``image``, as an 8-bit grey image (background = its complement)."""
        from sdtoolkit.evaluation.storemask import attention_mask, to_png

        checks.check_steps(num_ddim_steps)
        checks.check_prompt(prompt, self.models.tokenizer)
        words = (words,) if isinstance(words, str) else tuple(words)
        image = image if isinstance(image, (str, os.PathLike)) else as_pil(image)
        try:
            return to_png(attention_mask(self.models, image, prompt, words, num_ddim_steps, resolution, keep_aspect))
        except ValueError as exc:
            raise UsageError(str(exc)) from None


def _blend_mask(controller, latent_hw: tuple[int, int], size: tuple[int, int]) -> Image.Image | None:
    """LocalBlend's mask of the last sampling step (the blend words' attention, or the user mask) as an 8-bit
    image of ``size`` (W, H), white = may change; None without a blend."""
    blend = controller.local_blend
    if blend is None:
        return None
    mask = blend.mask(controller.store, tuple(latent_hw))  # (1, 1, h, w) of 0/1
    grey = (mask[0, 0].float().cpu().numpy() * 255).astype(np.uint8)
    return Image.fromarray(grey).resize(size, Image.Resampling.NEAREST)


def _settings(edit: EditConfig, cfg: InvertConfig) -> dict:
    """What an edit was made with (the CLI sidecar's ``edit`` and ``source`` entries; ``edit`` lists every tau of
    the sweep)."""
    return {"edit": asdict(edit), "source": asdict(cfg)}


def _pil(image: ImageLike) -> Image.Image:
    """A PIL image from a path (read now), a PIL image or an array."""
    if isinstance(image, (str, os.PathLike)):
        checks.check_image(str(image))
        with Image.open(image) as opened:
            opened.load()
            return opened.copy()
    return as_pil(image)


@_front_door
def ns_lpips(source: ImageLike, edited: ImageLike, background: ImageLike, mode: str = "corrected",
             net: str = "alex", random_weights: bool = False, device: str = "cpu") -> float:
    """NS-LPIPS of one edit, as ``ns_lpips.py`` scores a case: LPIPS of the source and the edited image inside the
    ``background`` mask (white = must not change; storemask's bgmask), all resized to 256², ``mode`` "corrected"
    or "reference" (docs/differences.md). ``random_weights``: an offline random backbone (tests only)."""
    from sdtoolkit.evaluation import ns_lpips as nsl  # lpips: imported when scoring

    if mode not in nsl.MODES:
        raise UsageError(f"mode {mode!r} is not one of {', '.join(nsl.MODES)}")
    images = nsl.load_case_images(_pil(source), _pil(edited), _pil(background), mode)
    return nsl.ns_lpips(nsl.build_lpips(net, random_weights, resolve_device(device)), *images, mode)


@dataclass
class _Case:
    """The parts of a PIE-Bench case its metrics read."""

    source_prompt: str
    target_prompt: str
    edit_mask: np.ndarray

    def mask(self) -> np.ndarray:
        return self.edit_mask


@_front_door
def pie_scores(source: ImageLike, edited: ImageLike, mask: ImageLike, source_prompt: str, target_prompt: str, *,
               random_weights: bool = False, random_size: str = "full", device: str = "cpu") -> dict[str, Any]:
    """PIE-Bench's metrics of one edit (structure distance, PSNR / LPIPS / MSE / SSIM outside ``mask``, white =
    edited, resized to the source's size) and the CLIP similarities, as ``pie_metrics`` computes them per case.
    ``random_weights``: offline random backbones (tests only)."""
    from sdtoolkit.evaluation.pie_metrics import BackboneSettings, PieScorer  # torchmetrics: imported when scoring

    src, out = (np.asarray(_pil(image).convert("RGB")) for image in (source, edited))
    grey = _pil(mask).convert("L").resize(src.shape[1::-1], Image.Resampling.NEAREST)
    edit_mask = (np.asarray(grey) >= 128).astype(np.float32)
    if src.shape != out.shape or edit_mask.shape != src.shape[:2]:
        raise UsageError(f"source {src.shape[:2]}, edited {out.shape[:2]} and mask {edit_mask.shape} differ in size")
    scorer = PieScorer(BackboneSettings(random_weights=random_weights, random_size=random_size),
                       resolve_device(device))
    case = _Case(source_prompt, target_prompt, edit_mask)
    return scorer.score(case, scorer.source_features(case, src), out)
