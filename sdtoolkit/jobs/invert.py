"""Invert/train one image and keep the result on disk (safetensors + JSON sidecar); load it back for editing."""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from sdtoolkit.core.checks import check_image, check_prompt
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.images import fit_image, load_image, pil_to_tensor, sha256_file, sha256_image
from sdtoolkit.core.io import result_lock
from sdtoolkit.core.mapping import UnreadableResult, load_learned, read_sidecar, save_learned, sidecar_path
from sdtoolkit.core.models import SDModels, model_fingerprint
from sdtoolkit.core.settings import InvertConfig
from sdtoolkit.methods.inversions import DDIMInversion, Inversion, ddim_inversion, method_class
from sdtoolkit.methods.sampler import latent_mse, sample
from sdtoolkit.methods.training import TrainLog

MATCH_KEYS = (
    "inversion", "prompt", "image_sha256", "model", "num_ddim_steps", "guidance_scale", "num_inner_steps",
    "num_epoch", "w_attnloss", "is_1word", "crop", "attn_pairing", "model_fingerprint", "resolution", "keep_aspect",
    "seed", "steps_offset", "prediction_type", "image_encoder", "dtype", "schedule",
)
"""Every setting a saved result must match to be reused by training (``--is_train`` reruns)."""
EDIT_KEYS = (
    "inversion", "prompt", "image_sha256", "model", "model_fingerprint", "num_ddim_steps", "is_1word",
    "resolution", "keep_aspect", "steps_offset", "prediction_type", "image_encoder",
)
"""What a saved result must match to be used for editing: dtype and seed may differ (fp32-trained networks
edit in bf16); a result made with another prompt, schedule or image encoder is refused."""
ADDED_KEYS = {"resolution": None, "keep_aspect": False, "schedule": "reference"}
"""Identity keys newer than some saved sidecars, with the value those sidecars were made with (results older
than ``steps_offset`` are refused: their timesteps differ)."""


def _damaged(exc: UnreadableResult, cfg: InvertConfig) -> UsageError:
    return UsageError(f"{exc}; retrain with: {cfg.train_command()} --overwrite")


def existing_result(cfg: InvertConfig, image_sha256: str, overwrite: bool, run: dict) -> Path | None:
    """The saved result when one matching ``cfg`` (and ``run``, :meth:`SDModels.run_identity`) exists (None
    when there is none, or ``overwrite``); a UsageError naming the differences when one exists for other
    settings, or when it cannot be read."""
    path = cfg.path()
    side = sidecar_path(path)
    if overwrite or not (path.is_file() and side.is_file()):
        return None
    try:
        old = read_sidecar(path)
    except UnreadableResult as exc:
        raise _damaged(exc, cfg) from None
    new = cfg.identity(image_sha256, model_fingerprint(cfg.model), run)
    diff = {k: (old.get(k, ADDED_KEYS.get(k)), new[k]) for k in MATCH_KEYS if old.get(k, ADDED_KEYS.get(k)) != new[k]}
    if diff:
        details = "; ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise UsageError(
            f"{path} exists but was made for other settings ({details}); use another --index, or --overwrite to replace it"
        )
    return path


@dataclass
class SourceImage:
    """One input image, loaded and encoded once."""

    path: str  # the file, or a label for an image given in memory
    sha256: str  # of the file's bytes, or of the in-memory image (:func:`sha256_image`)
    pil: Image.Image
    x: torch.Tensor  # (1, 3, H, W) in [-1, 1]
    z0: torch.Tensor  # (1, 4, H/f, W/f) fp32


IN_MEMORY = "<in-memory image>"
"""The ``image_path`` recorded for an image given as a PIL image or an array."""


def load_source(models: SDModels, image: str | os.PathLike | Image.Image,
                crop: tuple[int, int, int, int] = (0, 0, 0, 0), resolution: int | None = None,
                keep_aspect: bool = False) -> SourceImage:
    """Load (a path, or a PIL image in memory), crop, size (``resolution``², default the model's, or short side
    ``resolution`` with ``keep_aspect``, long side rounded to the model's size multiple) and encode the input
    image once."""
    size, multiple = resolution or models.image_size, models.family.size_multiple
    if isinstance(image, Image.Image):
        pil = fit_image(image, size, *crop, keep_aspect=keep_aspect, multiple=multiple)
        path, digest = IN_MEMORY, sha256_image(image)
    else:
        pil = load_image(image, size, *crop, keep_aspect=keep_aspect, multiple=multiple)
        path, digest = str(image), sha256_file(image)
    x = pil_to_tensor(pil)
    return SourceImage(path, digest, pil, x, models.encode_latent(x))


def versions() -> dict:
    """Library versions recorded in every sidecar."""
    import diffusers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__}


@dataclass
class InvertResult:
    path: Path
    trained: bool  # False: a matching result already existed and was kept
    sidecar: dict = field(default_factory=dict)


def invert(models: SDModels, cfg: InvertConfig, overwrite: bool = False, progress: bool = True) -> InvertResult:
    """Invert one image with ``cfg.inversion`` and save what was learned (safetensors + JSON sidecar)."""
    check_prompt(cfg.prompt, models.tokenizer, cfg.is_1word)
    check_image(cfg.image_path, cfg.crop)
    with result_lock(cfg.path()):  # one writer per result: a second process stops here, naming the lock
        return _invert(models, cfg, overwrite, progress)


def _invert(models: SDModels, cfg: InvertConfig, overwrite: bool, progress: bool) -> InvertResult:
    run = models.run_identity(cfg.num_ddim_steps)
    if existing_result(cfg, sha256_file(cfg.image_path), overwrite, run):
        return InvertResult(cfg.path(), trained=False)
    source = load_source(models, cfg.image_path, cfg.crop, cfg.resolution, cfg.keep_aspect)
    fitted = fit(models, cfg, source, progress)
    return save_inversion(models, cfg, source, fitted.inversion, fitted.log, fitted.seconds, text=fitted.text)


@dataclass
class Fitted:
    """What an inversion learned, in memory."""

    inversion: Inversion
    log: TrainLog | None
    seconds: float
    text: torch.Tensor  # the source prompt's embedding (1, L, D), encoded once


def fit(models: SDModels, cfg: InvertConfig, source: SourceImage, progress: bool = True) -> Fitted:
    """Invert ``source`` with ``cfg.inversion`` (seeded with ``cfg.seed``): DDIM inversion, then the method's fit."""
    method = method_class(cfg.inversion)
    settings = cfg.train_settings()
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    schedule = models.schedule(cfg.num_ddim_steps)
    text = models.encode_text([cfg.prompt]).float()
    pooled = models.encode_pooled([cfg.prompt])
    null = models.encode_null()
    trace = ddim_inversion(models, source.z0, text, schedule, method.recorded_maps(models, settings), progress=progress,
                           pooled=pooled)
    inv, log = method.fit(models, trace, text, null, source.x, schedule, settings, progress)
    return Fitted(inv, log, time.perf_counter() - start, text)


def save_inversion(models: SDModels, cfg: InvertConfig, source: SourceImage, inv: Inversion, log: TrainLog | None,
                   elapsed: float, extra: dict | None = None, text: torch.Tensor | None = None) -> InvertResult:
    """Measure the reconstruction of ``inv`` (:func:`measure`) and save it at ``cfg.path()``: safetensors + its
    sidecar. ``text``: the prompt's embedding when the caller has it (encoded once)."""
    sidecar, _ = measure(models, cfg, source, inv, log, elapsed, extra, text)
    path = save_learned(cfg.path(), inv.tensors(), sidecar)
    return InvertResult(path, True, sidecar)


def measure(models: SDModels, cfg: InvertConfig, source: SourceImage, inv: Inversion, log: TrainLog | None,
            elapsed: float, extra: dict | None = None, text: torch.Tensor | None = None) -> tuple[dict, torch.Tensor]:
    """The sidecar of ``inv`` (its identity, backbone, versions, timing, ``extra`` and the reconstruction beside
    plain DDIM at guidance ``cfg.guidance_scale``) and its reconstruction latent (1, 4, h, w)."""
    schedule = models.schedule(cfg.num_ddim_steps)
    text = models.encode_text([cfg.prompt]).float() if text is None else text
    pooled = models.encode_pooled([cfg.prompt])
    plain = sample(models, schedule, DDIMInversion(inv.z_T, inv.null), text, guidance_scale=cfg.guidance_scale,
                   pooled=pooled)
    learned = sample(models, schedule, inv, text, guidance_scale=cfg.guidance_scale, pooled=pooled)
    mapping = getattr(inv, "mapping", None)  # StyleDiffusion's M_t: its width bridge goes in the sidecar
    reconstruction = {"ddim_cfg_latent_mse": latent_mse(plain, source.z0),
                      "trained_latent_mse": latent_mse(learned, source.z0)}
    sidecar = {
        **cfg.identity(source.sha256, model_fingerprint(cfg.model), models.run_identity(cfg.num_ddim_steps)),
        "image_path": str(cfg.image_path),
        "index": cfg.index,
        "device": str(models.device),
        "versions": versions(),
        "elapsed_seconds": round(elapsed, 3),
        "iterations_per_step": log.iterations if log else [],
        "backbone": {**models.family.as_dict(), "image_size": list(source.x.shape[-2:]),
                     "image_encoder_width": models.image_width,
                     "width_bridge": mapping.bridge if mapping is not None else "none"},
        "reconstruction": reconstruction,
        "worse_than_ddim": worse_than_ddim(reconstruction),
        "method_settings": inv.method_settings(),
        **(extra or {}),
    }
    return sidecar, learned


def worse_than_ddim(reconstruction: dict) -> bool:
    """True when the learned inversion reconstructs worse (latent MSE to z_0 at the run's guidance) than plain
    DDIM inversion: e.g. too few ``--num_inner_steps``."""
    return reconstruction["trained_latent_mse"] > reconstruction["ddim_cfg_latent_mse"]


def missing_result(cfg: InvertConfig, path: Path) -> str:
    """The message for an edit whose result is not at ``path``: the results of the same image and index made with
    another ``--inversion`` or ``--schedule`` (and the flags that select them), then the command that trains this one."""
    found = [f"{other.path()} exists (edit it with {cfg.selecting_flags(other)})"
             for other in cfg.siblings() if other.path().is_file()]
    return (f"no trained result at {path}; " + "; ".join(found) + ("; or " if found else "")
            + f"train first with: {cfg.train_command()}")


def load_inversion(models: SDModels, cfg: InvertConfig, source: SourceImage, text: torch.Tensor,
                   null: torch.Tensor, path: Path | None = None) -> tuple[Inversion, dict]:
    """Load a saved inversion (at ``path``, default ``cfg.path()``) and check it was made for this prompt, image,
    model, schedule and step count."""
    path = cfg.path() if path is None else path
    try:
        tensors, sidecar = load_learned(path)
    except FileNotFoundError:
        raise UsageError(missing_result(cfg, path)) from None
    except UnreadableResult as exc:
        raise _damaged(exc, cfg) from None
    if sidecar.get("prompt") != cfg.prompt:
        raise UsageError(f"{path} was trained for --prompt {sidecar.get('prompt')!r}, not {cfg.prompt!r}: edit with "
                         f"the trained prompt, or train this one with another --index: {cfg.train_command()}")
    want = cfg.identity(source.sha256, model_fingerprint(cfg.model), models.run_identity(cfg.num_ddim_steps))
    diff = {k: (sidecar.get(k, ADDED_KEYS.get(k)), want[k]) for k in EDIT_KEYS
            if sidecar.get(k, ADDED_KEYS.get(k)) != want[k]}
    if diff:
        details = "; ".join(f"{k}: file {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise UsageError(f"{path} was made for another input ({details}); retrain with: {cfg.train_command()} "
                         "--overwrite")
    try:
        inv = method_class(cfg.inversion).from_tensors(tensors, null, text, cfg.num_ddim_steps)
    except (KeyError, RuntimeError) as exc:
        raise _damaged(UnreadableResult(f"{path} does not hold a {cfg.inversion} result for {cfg.num_ddim_steps} "
                                        f"steps ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"), cfg) from None
    return inv, sidecar
