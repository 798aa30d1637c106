"""The two jobs behind the CLIs — invert/train one image, edit it — shared by the single-image and CSV drivers."""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

import ptp_utils
from .errors import UsageError
from .images import image_grid, load_image, pil_to_tensor, sha256_file, tensor_to_pil
from .inversion import (
    METHODS,
    DDIMInversion,
    Inversion,
    NegativePromptInversion,
    ddim_inversion,
    inversion_from_tensors,
    latent_mse,
    sample,
    train_nulltext,
    train_stylediffusion,
)
from .attention import map_layers
from .config import EditConfig, InvertConfig
from .layout import save_image, write_json
from .mapping import load_learned, save_learned, sidecar_path
from .models import SDModels, model_fingerprint
from .words import find_word_tokens, prompt_tokens, word_spans

MATCH_KEYS = (
    "inversion", "prompt", "image_sha256", "model", "num_ddim_steps", "guidance_scale", "num_inner_steps",
    "num_epoch", "w_attnloss", "is_1word", "crop", "attn_pairing", "model_fingerprint",
)


def check_prompt(prompt: str, tokenizer, is_1word: bool = False, what: str = "--prompt") -> None:
    """Refuse empty prompts, prompts over the tokenizer's 77 tokens (no silent truncation) and, in 1-word
    mode, prompts of more than one word."""
    if not prompt or not prompt.strip():
        raise UsageError(f"{what} is empty; give the text that describes the image")
    n = len(tokenizer(prompt).input_ids)
    if n > tokenizer.model_max_length:
        raise UsageError(
            f"{what} has {n} tokens (with start/end), more than the text encoder's {tokenizer.model_max_length}; "
            "shorten it (the toolkit refuses rather than silently truncating)"
        )
    if is_1word and len(prompt.split()) != 1:
        raise UsageError(f"{what} {prompt!r} has {len(prompt.split())} words but --is_1word 1 wants exactly one (e.g. 'dog')")


def existing_status(cfg: InvertConfig, image_sha256: str, overwrite: bool) -> str | None:
    """'already trained' when a matching result exists; None when there is none (or overwrite)."""
    path = cfg.path()
    side = sidecar_path(path)
    if overwrite or not (path.is_file() and side.is_file()):
        return None
    old = json.loads(side.read_text(encoding="utf-8"))
    new = cfg.identity(image_sha256, model_fingerprint(cfg.model))
    diff = {k: (old.get(k), new[k]) for k in MATCH_KEYS if old.get(k) != new[k]}
    if diff:
        details = "; ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise UsageError(
            f"{path} exists but was made for other settings ({details}); use another --index, or --overwrite to replace it"
        )
    return "already trained"


@dataclass
class SourceImage:
    """One input image, loaded and encoded once."""

    path: str
    sha256: str
    pil: "object"
    x: torch.Tensor  # (1, 3, S, S) in [-1, 1]
    z0: torch.Tensor  # (1, 4, h, w) fp32


def check_input_file(image_path: str) -> None:
    """Fail early (before loading models) on a missing image."""
    if not Path(image_path).is_file():
        raise UsageError(f"image {image_path!r} does not exist (or is not a file)")


def load_source(models: SDModels, image_path: str, crop: tuple[int, int, int, int] = (0, 0, 0, 0)) -> SourceImage:
    pil = load_image(image_path, models.image_size, *crop)
    x = pil_to_tensor(pil)
    return SourceImage(str(image_path), sha256_file(image_path), pil, x, models.encode_latent(x))


def versions() -> dict:
    import diffusers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__}


@dataclass
class InvertResult:
    path: Path
    status: str  # "trained" | "already trained"
    sidecar: dict = field(default_factory=dict)


def invert(models: SDModels, cfg: InvertConfig, overwrite: bool = False, progress: bool = True) -> InvertResult:
    """Invert one image with ``cfg.inversion`` and save what was learned (safetensors + JSON sidecar)."""
    if cfg.inversion not in METHODS:
        raise UsageError(f"--inversion {cfg.inversion!r} is not one of {', '.join(METHODS)}")
    check_prompt(cfg.prompt, models.tokenizer, cfg.is_1word)
    check_input_file(cfg.image_path)
    status = existing_status(cfg, sha256_file(cfg.image_path), overwrite)
    if status:
        return InvertResult(cfg.path(), status)
    source = load_source(models, cfg.image_path, cfg.crop)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    schedule = models.schedule(cfg.num_ddim_steps)
    text = models.encode_text([cfg.prompt]).float()
    null = models.encode_text([""]).float()
    record = frozenset(l.name for l in map_layers(models.layers())) if cfg.inversion == "stylediffusion" and cfg.w_attnloss else frozenset()
    trace = ddim_inversion(models, source.z0, text, schedule, record, progress=progress)
    z_T = trace.latents[-1]
    log = None
    if cfg.inversion == "stylediffusion":
        features = models.image_features(source.x)
        inv, log = train_stylediffusion(models, trace, text, null, features, schedule, cfg.num_inner_steps, cfg.num_epoch,
                                        cfg.w_attnloss, cfg.guidance_scale, cfg.attn_pairing, progress)
    elif cfg.inversion == "nulltext":
        inv, log = train_nulltext(models, trace, text, null, schedule, cfg.num_inner_steps, cfg.guidance_scale, progress)
    elif cfg.inversion == "npi":
        inv = NegativePromptInversion(z_T, null, text)
    else:
        inv = DDIMInversion(z_T, null)
    elapsed = time.perf_counter() - start
    plain = sample(models, schedule, DDIMInversion(z_T, null), text, guidance_scale=cfg.guidance_scale)
    learned = sample(models, schedule, inv, text, guidance_scale=cfg.guidance_scale)
    sidecar = {
        **cfg.identity(source.sha256, model_fingerprint(cfg.model)),
        "image_path": str(cfg.image_path),
        "index": cfg.index,
        "seed": cfg.seed,
        "dtype": str(models.dtype).replace("torch.", ""),
        "device": str(models.device),
        "versions": versions(),
        "elapsed_seconds": round(elapsed, 3),
        "iterations_per_step": log.iterations if log else [],
        "reconstruction": {"ddim_cfg_latent_mse": latent_mse(plain, source.z0),
                           "trained_latent_mse": latent_mse(learned, source.z0)},
    }
    path = save_learned(cfg.path(), inv.tensors(), sidecar)
    return InvertResult(path, "trained", sidecar)


def load_inversion(models: SDModels, cfg: InvertConfig, source: SourceImage, text: torch.Tensor,
                   null: torch.Tensor) -> tuple[Inversion, dict]:
    """Load a saved inversion and check it was made for this image, model and step count."""
    path = cfg.path()
    try:
        tensors, sidecar = load_learned(path)
    except FileNotFoundError:
        raise UsageError(f"no trained result at {path}; train first with: {cfg.train_command()}") from None
    want = {"image_sha256": source.sha256, "model": cfg.model, "model_fingerprint": model_fingerprint(cfg.model),
            "num_ddim_steps": cfg.num_ddim_steps}
    diff = {k: (sidecar.get(k), v) for k, v in want.items() if sidecar.get(k) != v}
    if diff:
        details = "; ".join(f"{k}: file {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise UsageError(f"{path} was made for another input ({details}); retrain with: {cfg.train_command()}")
    inv = inversion_from_tensors(cfg.inversion, tensors, null, text, cfg.num_ddim_steps)
    return inv, sidecar


def combo_stem(v: float, c: float, s: float, u: float) -> str:
    return f"tau_v{float(v)}-tau_c{float(c)}-tau_s{float(s)}-tau_u{float(u)}"


def edit_folder(cfg: InvertConfig, edit: EditConfig) -> Path:
    text = cfg.prompt if edit.edit_type == "StoreAttn" else edit.target
    return Path(edit.outdir) / f"{cfg.index} {text}".replace("/", "_")


def expected_files(cfg: InvertConfig, edit: EditConfig) -> list[Path]:
    """The files an edit run writes (SPEC §4)."""
    folder = edit_folder(cfg, edit)
    if edit.edit_type == "StoreAttn":
        return [folder / "grid_img.png", folder / "cross_attention.png"]
    out = []
    for combo in edit.combinations():
        stem = combo_stem(*combo)
        out += [folder / f"edited_img-{stem}.png", folder / f"grid_img-{stem}.png"]
    return out


def validate_edit(prompt: str, edit: EditConfig, tokenizer, is_1word: bool = False) -> None:
    """Check an edit request before any network runs (clear errors naming the bad value)."""
    if edit.edit_type not in ptp_utils.EDIT_TYPES:
        raise UsageError(f"--edit_type {edit.edit_type!r} is not one of {', '.join(ptp_utils.EDIT_TYPES)}")
    check_prompt(prompt, tokenizer, is_1word)
    for name in ("tau_v", "tau_c", "tau_s", "tau_u"):
        values = getattr(edit, name)
        if not values or any(not 0.0 <= float(v) <= 1.0 for v in values):
            raise UsageError(f"--{name} {values} must be a non-empty list of values in [0, 1]")
    if edit.edit_type == "StoreAttn":
        return
    if not edit.target:
        raise UsageError(f"--target is required for --edit_type {edit.edit_type} (the edited prompt, e.g. 'a tiger')")
    check_prompt(edit.target, tokenizer, is_1word, what="--target")
    if edit.edit_type == "Replacement":
        src, tgt = word_spans(prompt, tokenizer), word_spans(edit.target, tokenizer)
        if len(src) != len(tgt):
            raise UsageError(
                f"Replacement needs prompts with the same number of words: {prompt!r} has {len(src)}, "
                f"{edit.target!r} has {len(tgt)}; use --edit_type Refinement for inserted or removed words"
            )
    groups = []
    if edit.blend_word:
        groups += [(prompt, w, "--blend_word source") for w in edit.blend_word[0]]
        groups += [(edit.target, w, "--blend_word target") for w in edit.blend_word[1]]
    if edit.eq_params:
        groups += [(edit.target, w, "--eq_params") for w in edit.eq_params[0]]
    for prompt, word, what in groups:
        try:
            find_word_tokens(prompt, word, tokenizer)
        except ValueError:
            tokens = [t for t in prompt_tokens(prompt, tokenizer)[1:-1]]
            raise UsageError(f"{what} word {word!r} is not in {prompt!r}; its tokens are: {tokens}") from None


def build_controller(models: SDModels, prompt: str, edit: EditConfig, num_steps: int, tau_c: float, tau_s: float,
                     tau_u: float) -> ptp_utils.P2PController:
    """The P2Plus controller for [prompt, edit.target] with one tau combination."""
    prompts = [prompt, edit.target]
    tok = models.tokenizer
    equalizer = ptp_utils.get_equalizer(edit.target, *edit.eq_params, tok) if edit.eq_params else None
    blend = None
    if edit.blend_word:
        alphas = ptp_utils.blend_word_alphas(prompts, edit.blend_word, tok)
        blend = ptp_utils.LocalBlend(alphas, start_step=int(0.2 * num_steps))
    return ptp_utils.P2PController(
        prompts, tok, num_steps, models.layers(), models.latent_size, edit.edit_type,
        cross_replace_steps=tau_c, self_replace_steps=tau_s, uncond_self_replace_steps=tau_u,
        equalizer=equalizer, local_blend=blend,
    )


def edit_latents(models: SDModels, inv: Inversion, prompt: str, edit: EditConfig, combo: tuple[float, float, float, float],
                 texts: torch.Tensor, num_steps: int, guidance_scale: float = 7.5, controller=None) -> torch.Tensor:
    """Sample [source, target] with P2Plus for combo (tau_v, tau_c, tau_s, tau_u); the target's value path uses
    the learned input for steps < tau_v·T, the source's always. Returns latents (2, 4, h, w)."""
    tau_v, tau_c, tau_s, tau_u = combo
    if controller is None:
        controller = build_controller(models, prompt, edit, num_steps, tau_c, tau_s, tau_u)
    n_v = int(tau_v * num_steps)
    return sample(models, models.schedule(num_steps), inv, texts, lambda i: [True, i < n_v], guidance_scale, controller)


def run_edit(models: SDModels, cfg: InvertConfig, edit: EditConfig, progress: bool = True) -> list[Path]:
    """Edit one trained image for every tau combination; write edited images, grids and sidecars."""
    validate_edit(cfg.prompt, edit, models.tokenizer, cfg.is_1word)
    source = load_source(models, cfg.image_path, cfg.crop)
    null = models.encode_text([""]).float()
    src_text = models.encode_text([cfg.prompt]).float()
    inv, train_sidecar = load_inversion(models, cfg, source, src_text, null)
    folder = edit_folder(cfg, edit)
    vae_rec = tensor_to_pil(models.decode_latent(source.z0))
    written: list[Path] = []
    base = {"source": asdict(cfg), "edit": asdict(edit), "learned_file": str(cfg.path()),
            "learned_sidecar": str(sidecar_path(cfg.path())), "versions": versions()}
    if edit.edit_type == "StoreAttn":
        store = ptp_utils.AttentionStore(models.layers())
        z = sample(models, models.schedule(cfg.num_ddim_steps), inv, src_text, None, cfg.guidance_scale, store,
                   progress=progress, desc="reconstruction")
        rec = tensor_to_pil(models.decode_latent(z))
        written.append(save_image(folder / "grid_img.png", image_grid([source.pil, vae_rec, rec])))
        written.append(save_image(folder / "cross_attention.png",
                                  ptp_utils.show_cross_attention(store, cfg.prompt, models.tokenizer)))
        write_json(folder / "run.json", {**base, "files": [str(p) for p in written]})
        return written
    texts = torch.cat([src_text, models.encode_text([edit.target]).float()])
    combos = edit.combinations()
    for v, c, s, u in tqdm(combos, desc="tau combinations", disable=not progress):
        start = time.perf_counter()
        z = edit_latents(models, inv, cfg.prompt, edit, (v, c, s, u), texts, cfg.num_ddim_steps, cfg.guidance_scale)
        images = models.decode_latent(z)
        rec, edited = tensor_to_pil(images[0]), tensor_to_pil(images[1])
        stem = combo_stem(v, c, s, u)
        written.append(save_image(folder / f"edited_img-{stem}.png", edited))
        written.append(save_image(folder / f"grid_img-{stem}.png", image_grid([source.pil, vae_rec, rec, edited])))
        write_json(folder / f"edited_img-{stem}.json", {
            **base, "tau": {"tau_v": v, "tau_c": c, "tau_s": s, "tau_u": u},
            "seconds": round(time.perf_counter() - start, 3), "files": [str(p) for p in written[-2:]],
        })
    return written
