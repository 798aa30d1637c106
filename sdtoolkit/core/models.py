"""Loading a Stable Diffusion 1.x / 2.x / XL pipeline (hub id, local folder, ``tiny*`` or ``toy``) plus the CLIP image encoder.

Everything the method needs from the networks goes through :class:`SDModels`: text and image encoding
(once per prompt / image), VAE encode/decode and the UNet output (in the model's prediction type) with an
:class:`AttnCall`. The facts that differ between backbones are in ``models.family`` (:mod:`sdtoolkit.core.family`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModel

from sdtoolkit.core.attention import AttnCall, Branch, LayerInfo, unet_layers
from sdtoolkit.core.ddim import DDIMSchedule, schedule_from_config
from sdtoolkit.core.constants import CLIP_MEAN, CLIP_STD, SD_VERSIONS
from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.naming import name
from sdtoolkit.core.family import ModelFamily, describe
from sdtoolkit.core.images import clip_pixels

DEFAULT_IMAGE_ENCODER = "openai/clip-vit-base-patch16"
TOY_MODEL_DIR = Path(__file__).resolve().parents[2] / "toy_model"
PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer")


def resolve_device(device: str | None) -> torch.device:
    """``auto``/None → cuda when available, else cpu."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"{name('device')} {device!r} is not a torch device (try cpu, cuda, cuda:1)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{name('device')} {device!r}: CUDA is not available here; use {name('device')} cpu")
    return resolved


def resolve_dtype(dtype: str | None) -> torch.dtype:
    """Precision of the networks: fp32 everywhere by default, as the reference (bf16 and fp16 measured to lose
    0.3-0.4 dB of reconstruction on the trained toy model: docs/backbones.md "Precision"); ``bf16`` / ``fp16``
    on request."""
    names = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype in (None, "auto"):
        return torch.float32
    if dtype not in names:
        raise UsageError(f"{name('dtype')} {dtype!r} is not one of auto, {', '.join(names)}")
    return names[dtype]


@dataclass
class SDModels:
    """The frozen networks of a Stable Diffusion 1.x / 2.x / XL pipeline and the image encoder of StyleDiffusion."""

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    image_encoder: CLIPVisionModel
    model_id: str
    device: torch.device
    dtype: torch.dtype
    family: ModelFamily | None = None  # None: described from the networks' configs
    scheduler_config: dict | None = None  # the folder's scheduler config (None: the reference's)
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL
    tokenizer_2: CLIPTokenizer | None = None  # SDXL
    image_encoder_id: str = "tiny"  # where the image encoder came from (part of a saved result's identity)

    def __post_init__(self) -> None:
        if self.family is None:
            encoders = [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]
            self.family = describe(self.unet.config, self.vae.config, tuple(e.config.hidden_size for e in encoders),
                                   self.scheduler_config)

    @property
    def vae_scale_factor(self) -> int:
        return self.family.vae_scale_factor

    @property
    def latent_size(self) -> int:
        """Side of the default square latent."""
        return int(self.unet.config.sample_size)

    @property
    def image_size(self) -> int:
        """Side of the default square input image (512 SD 1.x, 768 SD 2.1, 1024 SDXL)."""
        return self.family.default_resolution

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    @property
    def text_width(self) -> int:
        """Width D of the prompt embedding (B, 77, D) the UNet cross-attends to."""
        return self.family.text_width

    @property
    def image_width(self) -> int:
        """Width of the image encoder's tokens E(x)."""
        return int(self.image_encoder.config.hidden_size)

    def layers(self) -> list[LayerInfo]:
        return unet_layers(self.unet, self.vae_scale_factor)

    def schedule(self, num_steps: int) -> DDIMSchedule:
        """The reference's DDIM schedule (steps_offset 1, docs/method.md §1) with the model folder's noise schedule
        and prediction type."""
        return schedule_from_config(num_steps, self.scheduler_config)

    def _ids(self, tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
        return tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                         return_tensors="pt").input_ids.to(self.device)

    def run_identity(self, num_steps: int) -> dict:
        """What of these networks changes a saved result besides the weights: the schedule's steps_offset and
        prediction type, the image encoder and the precision."""
        schedule = self.schedule(num_steps)
        return {"steps_offset": schedule.steps_offset, "prediction_type": schedule.prediction_type.value,
                "image_encoder": self.image_encoder_id, "dtype": str(self.dtype).replace("torch.", "")}

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings (B, 77, D) in the network dtype. SDXL: both encoders' penultimate hidden states
        concatenated (D = 768 + 1280), as diffusers' StableDiffusionXLPipeline.encode_prompt."""
        if self.text_encoder_2 is None:
            return self.text_encoder(self._ids(self.tokenizer, prompts))[0]
        parts = []
        for tok, enc in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            parts.append(enc(self._ids(tok, prompts), output_hidden_states=True).hidden_states[-2])
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def encode_pooled(self, prompts: list[str]) -> torch.Tensor | None:
        """SDXL's pooled prompt embedding (B, P) from text_encoder_2, fp32; None for models without added conditions."""
        if not self.family.added_conditions:
            return None
        return self.text_encoder_2(self._ids(self.tokenizer_2, prompts)).text_embeds.float()

    @torch.no_grad()
    def encode_null(self) -> torch.Tensor:
        """The unconditional embedding (1, 77, D), fp32: the empty prompt's, or zeros where the pipeline forces
        zeros for an empty prompt (SDXL's force_zeros_for_empty_prompt, diffusers' default)."""
        if self.family.force_zeros_for_empty_prompt:
            return torch.zeros(1, self.max_length, self.text_width, device=self.device)
        return self.encode_text([""]).float()

    def added_conditions(self, z: torch.Tensor, pooled: torch.Tensor | None, call: AttnCall) -> dict | None:
        """SDXL's added_cond_kwargs for latents z (B, 4, h, w): the pooled embedding (zeros for the unconditional
        branch when none is given, as with force_zeros_for_empty_prompt) and time ids (original size, crop
        (0, 0), target size) = the image size; None for SD 1.x / 2.x."""
        if not self.family.added_conditions:
            return None
        batch = z.shape[0]
        if pooled is None:
            if call.branch == Branch.COND:
                raise ValueError("SDXL's conditional branch needs the prompt's pooled embedding (encode_pooled)")
            pooled = torch.zeros(batch, int(self.text_encoder_2.config.projection_dim), device=self.device)
        h, w = (s * self.vae_scale_factor for s in z.shape[-2:])
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], device=self.device).expand(batch, -1)
        return {"text_embeds": pooled.expand(batch, -1).to(self.dtype), "time_ids": time_ids.to(self.dtype)}

    @torch.no_grad()
    def encode_latent(self, image: torch.Tensor) -> torch.Tensor:
        """z_0 = scaling_factor · mean(E_vae(x)) for x (1, 3, H, W) in [-1, 1]; fp32."""
        dist = self.vae.encode(image.to(self.device, self.dtype)).latent_dist
        return dist.mean.float() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], fp32."""
        x = self.vae.decode((z / self.vae.config.scaling_factor).to(self.dtype)).sample
        return (x.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """E(x): all tokens after the final layer norm, (1, 197, D), for x in [-1, 1]; fp32. The encoder's
        input is made as the reference makes it (:func:`clip_pixels`)."""
        x = clip_pixels(image, int(self.image_encoder.config.image_size), CLIP_MEAN, CLIP_STD)
        out = self.image_encoder(pixel_values=x.to(self.device, self.dtype)).last_hidden_state
        return getattr(self.image_encoder, "vision_model", self.image_encoder).post_layernorm(out).float()

    def predict(self, z: torch.Tensor, t: int, text: torch.Tensor, call: AttnCall,
                pooled: torch.Tensor | None = None) -> torch.Tensor:
        """UNet output (fp32; eps, v or x0 per ``family.prediction_type``) for latents z (B, 4, h, w) at timestep t
        with per-call state; ``pooled`` (B, P): SDXL's pooled prompt embedding of the branch's prompts."""
        call = dataclasses.replace(call, latent_hw=(int(z.shape[-2]), int(z.shape[-1])))
        out = self.unet(z.to(self.dtype), t, encoder_hidden_states=text.to(self.dtype),
                        cross_attention_kwargs={"call": call},
                        added_cond_kwargs=self.added_conditions(z, pooled, call)).sample
        return out.float()


def model_fingerprint(model: str) -> str:
    """A cheap identity of the weights behind ``model``, so results made with other weights are not reused.

    Local folders (and ``toy``): SHA-256 over every weights file's path, size and first/last MiB;
    ``tiny*``: its architecture version; hub ids: the id (the hub's revision is not checked).
    """
    from sdtoolkit.core.tiny import TINY_MODELS, TINY_VERSION

    if model in TINY_MODELS:
        return f"{model}-v{TINY_VERSION}"
    model = SD_VERSIONS.get(model, model)
    path = TOY_MODEL_DIR if model == "toy" else Path(model)
    if not path.is_dir():
        return f"hub:{model}"
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path)}:{size}".encode())
        with open(file, "rb") as f:
            digest.update(f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]


def _check_pipeline_folder(path: Path) -> None:
    missing = [p for p in PIPELINE_PARTS if not (path / p).is_dir()]
    if missing:
        found = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        raise UsageError(
            f"{name('model')} {str(path)!r} is not a Stable Diffusion pipeline folder: missing {', '.join(m + '/' for m in missing)}"
            f" (found: {', '.join(found) or 'nothing'}). A diffusers SD folder has model_index.json, unet/, vae/,"
            " text_encoder/, tokenizer/ (as written by StableDiffusionPipeline.save_pretrained or"
            " `hf download CompVis/stable-diffusion-v1-4 --local-dir DIR`)."
        )


def _load(cls, source: str, subfolder: str | None, what: str, **kwargs):
    try:
        if subfolder is None:
            return cls.from_pretrained(source, **kwargs)
        return cls.from_pretrained(source, subfolder=subfolder, **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise UsageError(
            f"could not load the {what} from {source!r}{' (HF_HUB_OFFLINE is set)' if offline else ''}: the weights are "
            "neither reachable (no network?) nor in the Hugging Face cache. On a machine with network run "
            f"`hf download {source} --local-dir ./weights/{source.split('/')[-1]}` and pass that folder with "
            f"{name('model')} ./weights/{source.split('/')[-1]}. ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from exc


def _scheduler_config(source: str, is_local: bool) -> dict | None:
    """The folder's / hub repo's scheduler config (prediction type, noise schedule), None when it has none."""
    if is_local:
        path = Path(source) / "scheduler" / "scheduler_config.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise UsageError(f"{path} is not valid JSON ({exc})") from None
    from diffusers import DDIMScheduler

    try:
        return dict(DDIMScheduler.load_config(source, subfolder="scheduler"))
    except (OSError, ValueError):
        return None


REPEATED_BLOCKS = ("FeedForward", "ResnetBlock2D")
"""The UNet's repeated blocks that read no per-call state, compiled one by one by :func:`compile_repeated_blocks`:
the transformer blocks' feed-forward (GEGLU) and the ResNet blocks (GroupNorm, SiLU, convolutions)."""


def compile_repeated_blocks(unet: torch.nn.Module, **kwargs) -> int:
    """Regional compilation (PyTorch's recipe, as diffusers' ``compile_repeated_blocks`` does for models that name
    their blocks): ``torch.compile`` each of the UNet's :data:`REPEATED_BLOCKS` instead of the whole model, so
    blocks of one shape share a graph and compiling takes seconds. The attention layers stay eager: their
    processors take per-call, per-layer decisions (which maps to record or edit at this step and branch), and a
    compiled region around them is specialised per layer, step window and branch (tens of graphs on the tiny
    model, each traced anew). ``kwargs`` go to ``torch.compile`` (e.g. ``backend``, ``fullgraph``); the cache
    limit is raised because blocks of several widths, with and without gradient, each add a graph. Returns the
    number of blocks compiled."""
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    blocks = [m for m in unet.modules() if type(m).__name__ in REPEATED_BLOCKS]
    for block in blocks:
        block.compile(**kwargs)
    return len(blocks)


def load_models(
    model: str,
    device: str | None = "auto",
    dtype: str | None = "auto",
    image_encoder: str | None = None,
    compile_unet: bool = False,
    vae_tiling: bool = False,
    vae_slicing: bool = False,
    gradient_checkpointing: bool = False,
) -> SDModels:
    """Load ``model``: ``tiny`` / ``tiny-sd2`` / ``tiny-sdxl`` (random, in process), ``toy`` (shipped), a local
    folder or a hub id (SD 1.x, 2.x or XL; SDXL when the folder has ``text_encoder_2/``).

    The image encoder comes from ``image_encoder`` if given, else the pipeline folder's ``image_encoder/``,
    else ``openai/clip-vit-base-patch16``; its width may differ from the text width (the mapping networks then
    learn a projection, docs/method.md §3). ``compile_unet`` compiles the UNet's repeated blocks
    (:func:`compile_repeated_blocks`);
    ``vae_tiling`` / ``vae_slicing`` / ``gradient_checkpointing`` (UNet, during training) lower peak memory.
    """
    from sdtoolkit.core.tiny import TINY_MODELS

    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    if model in SD_VERSIONS:
        model = SD_VERSIONS[model]
    if model in TINY_MODELS:
        from sdtoolkit.core.tiny import build_tiny_models

        parts = build_tiny_models(kind=model)
        scheduler_config = parts.pop("scheduler_config")
        model_id = model
        force_zeros = True
        enc_source = model
    else:
        source = str(TOY_MODEL_DIR) if model == "toy" else model
        if model == "toy" and not TOY_MODEL_DIR.is_dir():
            raise UsageError(f"{name('model')} toy: the shipped toy model folder {TOY_MODEL_DIR} is missing")
        path = Path(source)
        is_local = path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1
        if is_local:
            if not path.is_dir():
                raise UsageError(
                    f"{name('model')} {source!r}: no such folder, and not a hub id of the form owner/name "
                    f"(known aliases: {', '.join(TINY_MODELS)}, toy, {', '.join(SD_VERSIONS)})"
                )
            _check_pipeline_folder(path)
        parts = {
            "unet": _load(UNet2DConditionModel, source, "unet", "UNet"),
            "vae": _load(AutoencoderKL, source, "vae", "VAE"),
            "text_encoder": _load(CLIPTextModel, source, "text_encoder", "text encoder"),
            "tokenizer": _load(CLIPTokenizer, source, "tokenizer", "tokenizer"),
        }
        if parts["unet"].config.get("addition_embed_type") == "text_time":
            parts["text_encoder_2"] = _load(CLIPTextModelWithProjection, source, "text_encoder_2", "second text encoder")
            parts["tokenizer_2"] = _load(CLIPTokenizer, source, "tokenizer_2", "second tokenizer")
        enc_source = image_encoder
        if enc_source is None:
            enc_source = str(path / "image_encoder") if is_local and (path / "image_encoder").is_dir() else DEFAULT_IMAGE_ENCODER
        parts["image_encoder"] = _load(CLIPVisionModel, enc_source, None, "image encoder")
        model_id = "toy" if model == "toy" else source
        scheduler_config = _scheduler_config(source, is_local)
        index = path / "model_index.json"
        force_zeros = json.loads(index.read_text()).get("force_zeros_for_empty_prompt", True) if is_local and index.is_file() else True
    encoders = [parts["text_encoder"]] + ([parts["text_encoder_2"]] if "text_encoder_2" in parts else [])
    try:
        family = describe(parts["unet"].config, parts["vae"].config, tuple(e.config.hidden_size for e in encoders),
                          scheduler_config, force_zeros)
    except ValueError as exc:
        raise UsageError(f"{name('model')} {model!r}: {exc}") from None
    for key in ("unet", "vae", "text_encoder", "text_encoder_2", "image_encoder"):
        net = parts.get(key)
        if net is None:
            continue
        net.requires_grad_(False)
        net.eval()
        net.to(dev)
        if dt != torch.float32:
            net.to(dtype=dt)
    if vae_tiling:
        parts["vae"].enable_tiling()
    if vae_slicing:
        parts["vae"].enable_slicing()
    if gradient_checkpointing:
        parts["unet"].enable_gradient_checkpointing()
    if compile_unet:
        compile_repeated_blocks(parts["unet"])
    return SDModels(model_id=model_id, device=dev, dtype=dt, family=family, scheduler_config=scheduler_config,
                    image_encoder_id=enc_source, **parts)


def save_pipeline_folder(models: SDModels, path: str | os.PathLike) -> Path:
    """Write ``models`` as a diffusers SD pipeline folder (+ ``image_encoder/``) loadable by :func:`load_models`."""
    path = Path(path)
    names = ["unet", "vae", "text_encoder", "tokenizer", "image_encoder"]
    names += ["text_encoder_2", "tokenizer_2"] if models.text_encoder_2 is not None else []
    for name in names:
        getattr(models, name).save_pretrained(path / name)
    from sdtoolkit.core.ddim import SCHEDULER_CONFIG

    (path / "scheduler").mkdir(parents=True, exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "DDIMScheduler", **SCHEDULER_CONFIG, **(models.scheduler_config or {})}, indent=2))
    index = {
        "_class_name": "StableDiffusionXLPipeline" if models.text_encoder_2 is not None else "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    if models.text_encoder_2 is not None:
        index.update({"text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                      "tokenizer_2": ["transformers", "CLIPTokenizer"], "force_zeros_for_empty_prompt": True})
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path


@dataclass
class UNetCalls:
    """The UNet's forward calls (a batched call counts once; a training iteration's backward is not a call) and the
    batch rows they carried, counted while :func:`count_unet` is open."""

    calls: int = 0
    rows: int = 0


@contextmanager
def count_unet(unet: torch.nn.Module) -> Iterator[UNetCalls]:
    """Count ``unet``'s forward calls and rows inside the block (a forward pre-hook, removed on exit): the PIE-Bench
    runner's UNet passes per case, the benchmark's rows per sweep combination."""
    counted = UNetCalls()

    def count(module: torch.nn.Module, args: tuple) -> None:
        counted.calls += 1
        counted.rows += int(args[0].shape[0])  # the latent batch (B, 4, h, w)

    handle = unet.register_forward_pre_hook(count)
    try:
        yield counted
    finally:
        handle.remove()
