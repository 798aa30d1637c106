"""Train a tiny Stable-Diffusion-shaped model on toy scenes, on a CPU, and save it as a diffusers folder.

Two stages, each resumable from safetensors + JSON checkpoints:

    python -m toyworld.train_toy --stage vae  --minutes 12  --out toy_model
    python -m toyworld.train_toy --stage unet --minutes 100 --out toy_model

The VAE stage writes ``{out}/vae``; the UNet stage trains the UNet and the CLIP text encoder jointly
(classifier-free-guidance dropout of captions) and writes the full pipeline folder (``model_index.json``,
``vae/``, ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``image_encoder/``,
``TRAINING.json``) at every checkpoint, so an interrupted run still leaves a usable model.
Training scenes come from seeds below ``HELDOUT_SEED_START``; higher seeds are for evaluation only.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from sdtoolkit.core.constants import CLIP_MEAN, CLIP_STD
from sdtoolkit.core.ddim import SCHEDULER_CONFIG  # SD's DDIM/DDPM settings (docs/method.md §1), also the training noise schedule
from sdtoolkit.core.io import atomic_write, write_json
from sdtoolkit.core.tokenizer import CLIP_TOKENIZER_DIR, load_clip_tokenizer
from toyworld.scenes import HELDOUT_SEED_START, caption, render, scene_from_seed

@dataclass(frozen=True)
class ModelSizes:
    """Widths and depths of the four networks."""

    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_groups: int = 8
    unet_channels: tuple[int, ...] = (40, 80)
    unet_heads: int = 5
    unet_groups: int = 8
    unet_layers_per_block: int = 1
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 128
    vision_layers: int = 2
    vision_intermediate: int = 128


SIZES: dict[str, ModelSizes] = {
    "small": ModelSizes(),
    "tiny": ModelSizes(
        vae_channels=(8, 8, 8),
        vae_groups=4,
        unet_channels=(16, 16),
        unet_heads=2,
        unet_groups=4,
        text_hidden=16,
        text_layers=1,
        text_heads=2,
        text_intermediate=16,
        vision_layers=1,
        vision_intermediate=16,
    ),
}
"""Model presets: ``small`` for real training, ``tiny`` for smoke tests."""

STAGE_CODES: dict[str, int] = {"vae": 1, "unet": 2, "pool": 3, "export": 4}


# ----------------------------------------------------------------------------------------- builders


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global RNG seeded, restoring its previous state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_vae(sizes: ModelSizes, image_size: int, seed: int):
    """AutoencoderKL: RGB ``image_size`` → 4 latent channels at 1/4 resolution (3 blocks)."""
    from diffusers import AutoencoderKL

    n = len(sizes.vae_channels)
    with seeded(seed):
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=sizes.vae_channels,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=sizes.vae_groups,
            sample_size=image_size,
            mid_block_add_attention=False,
        )


def build_unet(sizes: ModelSizes, latent_size: int, seed: int):
    """UNet2DConditionModel with cross-attention in every down and up block."""
    from diffusers import UNet2DConditionModel

    n = len(sizes.unet_channels)
    with seeded(seed):
        return UNet2DConditionModel(
            sample_size=latent_size,
            in_channels=4,
            out_channels=4,
            block_out_channels=sizes.unet_channels,
            down_block_types=("CrossAttnDownBlock2D",) * n,
            up_block_types=("CrossAttnUpBlock2D",) * n,
            layers_per_block=sizes.unet_layers_per_block,
            attention_head_dim=sizes.unet_heads,
            cross_attention_dim=sizes.text_hidden,
            norm_num_groups=sizes.unet_groups,
        )


def build_text_encoder(sizes: ModelSizes, seed: int, token_init_std: float, position_init_std: float):
    """A small CLIPTextModel (vocab 49408, 77 positions) with widened token/position embedding init."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=sizes.text_hidden,
        intermediate_size=sizes.text_intermediate,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=sizes.text_hidden,
    )
    with seeded(seed):
        model = CLIPTextModel(config)
        emb = getattr(model, "text_model", model).embeddings  # transformers 4 nests it
        with torch.no_grad():
            emb.token_embedding.weight.normal_(0.0, token_init_std)
            emb.position_embedding.weight.normal_(0.0, position_init_std)
    return model


def build_image_encoder(sizes: ModelSizes, seed: int):
    """A random CLIPVisionModel (224 px, patch 16 → 197 tokens) of the text encoder's width."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=sizes.text_hidden,
        intermediate_size=sizes.vision_intermediate,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.text_heads,
        image_size=224,
        patch_size=16,
        projection_dim=sizes.text_hidden,
        hidden_act="quick_gelu",
    )
    with seeded(seed):
        return CLIPVisionModel(config)


def build_image_processor():
    """CLIPImageProcessor: resize 224 bicubic, centre crop 224, CLIP mean/std."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": 224},
        resample=3,
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_convert_rgb=True,
    )


# --------------------------------------------------------------------------------------------- data


def train_seeds(seed: int, stage: str, step: int, count: int) -> np.ndarray:
    """``count`` training scene seeds for (run seed, stage, step): always below ``HELDOUT_SEED_START``."""
    rng = np.random.default_rng([seed, STAGE_CODES[stage], step])
    return rng.integers(0, HELDOUT_SEED_START, size=count)


def scene_images(seeds: np.ndarray, image_size: int) -> tuple[torch.Tensor, list[str]]:
    """Render scenes of ``seeds``: images (N, 3, H, W) in [-1, 1] and their captions."""
    images, captions = [], []
    for s in seeds:
        scene = scene_from_seed(int(s))
        img, _ = render(scene, image_size)
        images.append(np.asarray(img, dtype=np.float32))
        captions.append(caption(scene))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return x.contiguous(), captions


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """Token ids (N, 77), padded as in Stable Diffusion 1.x."""
    return tokenizer(
        captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids


# ------------------------------------------------------------------------------------ checkpoints


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state into safetensors-able tensors and JSON-able scalars."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{idx}.{key}"] = val.detach().clone().contiguous()
            else:
                scalars["state"].setdefault(str(idx), {})[key] = val
    return tensors, scalars


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], scalars: dict) -> None:
    """Inverse of ``optimizer_tensors``."""
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        if not name.startswith("opt."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = val
    for idx, st in scalars.get("state", {}).items():
        state.setdefault(int(idx), {}).update(st)
    optimizer.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})


def save_checkpoint(ckpt_dir: Path, stage: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write ``{stage}.safetensors`` then ``{stage}.json`` atomically; the JSON names the step it belongs to."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    step = str(meta["step"])
    atomic_write(ckpt_dir / f"{stage}.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"step": step}))
    write_json(ckpt_dir / f"{stage}.json", meta)


def load_checkpoint(ckpt_dir: Path, stage: str) -> tuple[dict[str, torch.Tensor], dict] | None:
    """Read a checkpoint written by ``save_checkpoint`` (None when there is none)."""
    meta_path, tensor_path = ckpt_dir / f"{stage}.json", ckpt_dir / f"{stage}.safetensors"
    if not meta_path.exists() or not tensor_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    from safetensors import safe_open

    with safe_open(str(tensor_path), framework="pt") as f:
        if (f.metadata() or {}).get("step") != str(meta["step"]):
            raise RuntimeError(f"checkpoint {tensor_path} does not match {meta_path}")
    return load_file(str(tensor_path)), meta


def prefixed(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict of ``module`` with ``prefix.`` before each key (shared storage broken by cloning)."""
    return {f"{prefix}.{k}": v.detach().clone() for k, v in module.state_dict().items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` under ``prefix.``, with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def replace_dir(target: Path, write: Any) -> None:
    """Call ``write(tmp_dir)`` then swap ``tmp_dir`` into ``target`` (old copy removed afterwards)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.new"
    old = target.parent / f".{target.name}.old"
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    tmp.mkdir()
    write(tmp)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old)


def file_digest(path: Path) -> str:
    """SHA-256 of a file (to tie caches to the weights they came from)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------- training


def lr_at(step: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up, then constant."""
    return base_lr * min(1.0, (step + 1) / max(1, warmup))


def machine_info() -> dict[str, Any]:
    """Where the run happened."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }


class Budget:
    """Stop after ``steps`` total steps or ``minutes`` of wall time in this process, whichever first."""

    def __init__(self, minutes: float | None, steps: int | None) -> None:
        self.deadline = None if minutes is None else time.monotonic() + 60.0 * minutes
        self.steps = steps

    def done(self, step: int) -> bool:
        if self.steps is not None and step >= self.steps:
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline


def vae_loss(vae: Any, x: torch.Tensor, kl_weight: float, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """Reconstruction (MSE + L1) plus a small KL term, per element."""
    posterior = vae.encode(x).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
    recon = vae.decode(z).sample
    mse = F.mse_loss(recon, x)
    l1 = F.l1_loss(recon, x)
    kl = posterior.kl().mean() / z[0].numel()
    loss = mse + l1 + kl_weight * kl
    return loss, {"loss": loss.item(), "mse": mse.item(), "l1": l1.item(), "kl": kl.item()}


@torch.no_grad()
def latent_std(vae: Any, seed: int, image_size: int, count: int = 512) -> float:
    """Std of the VAE's posterior means over ``count`` training scenes (for ``scaling_factor``)."""
    seeds = train_seeds(seed, "export", 0, count)
    zs = []
    for i in range(0, count, 64):
        x, _ = scene_images(seeds[i : i + 64], image_size)
        zs.append(vae.encode(x).latent_dist.mean)
    return float(torch.cat(zs).std())


def run_vae_stage(args: argparse.Namespace) -> dict:
    """Train the VAE; write ``{out}/vae`` with a data-fitted ``scaling_factor``."""
    sizes = SIZES[args.size]
    ckpt_dir, out = Path(args.ckpt_dir), Path(args.out)
    vae = build_vae(sizes, args.image_size, args.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    step, elapsed, history, last = 0, 0.0, [], None
    if args.resume and (ck := load_checkpoint(ckpt_dir, "vae")) is not None:
        tensors, meta = ck
        vae.load_state_dict(unprefixed("model", tensors))
        restore_optimizer(opt, tensors, meta["optimizer"])
        step, elapsed, history, last = meta["step"], meta["elapsed_s"], meta["history"], meta.get("last")
        print(f"resumed VAE stage at step {step}", flush=True)
    budget = Budget(args.minutes, args.steps)
    started, last_save = time.monotonic(), time.monotonic()
    ema_loss = None

    def checkpoint() -> None:
        tensors, scalars = optimizer_tensors(opt)
        tensors.update(prefixed("model", vae))
        meta = {"stage": "vae", "step": step, "elapsed_s": elapsed + time.monotonic() - started,
                "history": history, "last": last, "optimizer": scalars, "args": vars(args)}
        save_checkpoint(ckpt_dir, "vae", tensors, meta)

    vae.train()
    bar = tqdm(total=args.steps, initial=step, desc="vae", dynamic_ncols=True, mininterval=10)
    while not budget.done(step):
        rng = np.random.default_rng([args.seed, STAGE_CODES["vae"], step, 1])
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        x, _ = scene_images(train_seeds(args.seed, "vae", step, args.vae_batch_size), args.image_size)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.vae_lr, args.warmup)
        loss, parts = vae_loss(vae, x, args.kl_weight, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        ema_loss = parts["loss"] if ema_loss is None else 0.98 * ema_loss + 0.02 * parts["loss"]
        bar.update(1)
        bar.set_postfix(loss=f"{ema_loss:.4f}", mse=f"{parts['mse']:.4f}")
        last = {"step": step, "loss_ema": ema_loss, **parts}
        if step % args.log_every == 0:
            history.append(last)
        if time.monotonic() - last_save >= 60.0 * args.save_minutes:
            checkpoint()
            last_save = time.monotonic()
    bar.close()
    checkpoint()
    vae.eval()
    std = latent_std(vae, args.seed, args.image_size, args.stats_count)
    vae.register_to_config(scaling_factor=1.0 / std)
    replace_dir(out / "vae", lambda tmp: vae.save_pretrained(tmp))
    summary = {"steps": step, "elapsed_s": elapsed + time.monotonic() - started, "latent_std": std,
               "scaling_factor": 1.0 / std, "final": last}
    write_json(out / "TRAINING_vae.json", {"command": command_line(), "seed": args.seed,
                                            "machine": machine_info(), "vae": summary})
    print(f"VAE done: {json.dumps(summary)}", flush=True)
    return summary


@torch.no_grad()
def build_latent_pool(args: argparse.Namespace, vae: Any, vae_file: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Encode ``--pool`` training scenes once (cached in the ckpt dir): means, stds, captions."""
    seeds = np.random.default_rng([args.seed, STAGE_CODES["pool"]]).permutation(HELDOUT_SEED_START)[: args.pool]
    cache = Path(args.ckpt_dir) / "unet_pool.safetensors"
    digest = file_digest(vae_file)
    if cache.exists():
        from safetensors import safe_open

        with safe_open(str(cache), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("vae") == digest and meta.get("n") == str(args.pool) and meta.get("seed") == str(args.seed):
            t = load_file(str(cache))
            caps = [caption(scene_from_seed(int(s))) for s in seeds]
            print(f"loaded latent pool of {len(caps)} scenes from {cache}", flush=True)
            return t["mean"].float(), t["std"].float(), caps
    means, stds, caps = [], [], []
    for i in tqdm(range(0, len(seeds), 64), desc="encode pool", dynamic_ncols=True, mininterval=10):
        x, c = scene_images(seeds[i : i + 64], args.image_size)
        dist = vae.encode(x).latent_dist
        means.append(dist.mean.half())
        stds.append(dist.std.half())
        caps.extend(c)
    mean, std = torch.cat(means), torch.cat(stds)
    atomic_write(cache, lambda tmp: save_file({"mean": mean, "std": std}, tmp,
                                              metadata={"vae": digest, "n": str(args.pool), "seed": str(args.seed)}))
    return mean.float(), std.float(), caps


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights for epsilon prediction: min(SNR, γ) / SNR (all ones when γ <= 0)."""
    if gamma <= 0:
        return torch.ones(t.shape[0])
    ac = alphas_cumprod[t]
    snr = ac / (1.0 - ac)
    return torch.clamp(snr, max=gamma) / snr


def ema_update(ema: dict[str, torch.Tensor], params: dict[str, torch.Tensor], decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·params, in place."""
    with torch.no_grad():
        for k, p in params.items():
            ema[k].mul_(decay).add_(p.detach(), alpha=1.0 - decay)


def run_unet_stage(args: argparse.Namespace) -> dict:
    """Train UNet + text encoder jointly on (cached) latents of training scenes; export the pipeline."""
    from diffusers import AutoencoderKL, DDPMScheduler

    sizes = SIZES[args.size]
    ckpt_dir, out = Path(args.ckpt_dir), Path(args.out)
    vae_dir = Path(args.vae) if args.vae else out / "vae"
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    scaling = float(vae.config.scaling_factor)
    latent_size = args.image_size // 2 ** (len(vae.config.block_out_channels) - 1)
    tokenizer = load_clip_tokenizer()
    unet = build_unet(sizes, latent_size, args.seed + 1)
    text_encoder = build_text_encoder(sizes, args.seed + 2, args.token_init_std, args.position_init_std)
    noise_sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    alphas_cumprod = noise_sched.alphas_cumprod.float()
    params = {f"unet.{k}": p for k, p in unet.named_parameters()}
    params.update({f"text.{k}": p for k, p in text_encoder.named_parameters()})
    opt = torch.optim.AdamW(list(params.values()), lr=args.lr, weight_decay=0.0)
    ema = {k: p.detach().clone() for k, p in params.items()}
    step, elapsed, history, last = 0, 0.0, [], None
    if args.resume and (ck := load_checkpoint(ckpt_dir, "unet")) is not None:
        tensors, meta = ck
        unet.load_state_dict(unprefixed("unet", tensors))
        text_encoder.load_state_dict(unprefixed("text", tensors))
        restore_optimizer(opt, tensors, meta["optimizer"])
        ema = {k: tensors[f"ema.{k}"] for k in params}
        step, elapsed, history, last = meta["step"], meta["elapsed_s"], meta["history"], meta.get("last")
        print(f"resumed UNet stage at step {step}", flush=True)
    pool_mean, pool_std, pool_caps = build_latent_pool(args, vae, vae_dir / "diffusion_pytorch_model.safetensors")
    pool_ids = tokenize(tokenizer, pool_caps)
    empty_ids = tokenize(tokenizer, [""])[0]
    budget = Budget(args.minutes, args.steps)
    started, last_save = time.monotonic(), time.monotonic()
    ema_loss = None

    def export() -> None:
        with torch.no_grad():
            backup = {k: p.detach().clone() for k, p in params.items()}
            for k, p in params.items():
                p.copy_(ema[k])
        summary = {"steps": step, "elapsed_s": elapsed + time.monotonic() - started,
                   "final": last, "ema_decay": args.ema}
        export_pipeline(out, vae_dir, unet, text_encoder, sizes, args, summary)
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(backup[k])

    def checkpoint() -> None:
        tensors, scalars = optimizer_tensors(opt)
        tensors.update(prefixed("unet", unet))
        tensors.update(prefixed("text", text_encoder))
        tensors.update({f"ema.{k}": v for k, v in ema.items()})
        meta = {"stage": "unet", "step": step, "elapsed_s": elapsed + time.monotonic() - started,
                "history": history, "last": last, "optimizer": scalars, "args": vars(args)}
        save_checkpoint(ckpt_dir, "unet", tensors, meta)
        export()

    unet.train()
    text_encoder.train()
    bar = tqdm(total=args.steps, initial=step, desc="unet", dynamic_ncols=True, mininterval=10)
    while not budget.done(step):
        rng = np.random.default_rng([args.seed, STAGE_CODES["unet"], step])
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        idx = torch.from_numpy(rng.integers(0, len(pool_caps), size=args.batch_size))
        ids = pool_ids[idx].clone()
        drop = torch.from_numpy(rng.random(args.batch_size) < args.uncond_prob)
        ids[drop] = empty_ids
        z0 = (pool_mean[idx] + pool_std[idx] * torch.randn(pool_mean[idx].shape, generator=gen)) * scaling
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, len(alphas_cumprod), (args.batch_size,), generator=gen)
        zt = noise_sched.add_noise(z0, noise, t)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr, args.warmup)
        cond = text_encoder(ids).last_hidden_state
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * min_snr_weights(alphas_cumprod, t, args.snr_gamma)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        step += 1
        ema_update(ema, params, min(args.ema, (1 + step) / (10 + step)))
        loss_value = loss.item()
        ema_loss = loss_value if ema_loss is None else 0.98 * ema_loss + 0.02 * loss_value
        bar.update(1)
        bar.set_postfix(loss=f"{ema_loss:.4f}")
        last = {"step": step, "loss_ema": ema_loss, "loss": loss_value, "mse": per_sample.mean().item(),
                "elapsed_s": elapsed + time.monotonic() - started}
        if step % args.log_every == 0:
            history.append(last)
        if time.monotonic() - last_save >= 60.0 * args.save_minutes:
            checkpoint()
            last_save = time.monotonic()
    bar.close()
    checkpoint()
    summary = {"steps": step, "elapsed_s": elapsed + time.monotonic() - started, "final": last}
    print(f"UNet done: {json.dumps(summary)}", flush=True)
    return summary


# ------------------------------------------------------------------------------------------ export


def model_index() -> dict[str, Any]:
    """``model_index.json`` in the shape of StableDiffusionPipeline's."""
    import diffusers

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": ["transformers", "CLIPVisionModel"],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def export_pipeline(out: Path, vae_dir: Path, unet: Any, text_encoder: Any, sizes: ModelSizes,
                    args: argparse.Namespace, unet_summary: dict) -> None:
    """Write every component of the pipeline folder (each swapped in whole) and ``TRAINING.json``."""
    from diffusers import DDIMScheduler

    out.mkdir(parents=True, exist_ok=True)
    if vae_dir.resolve() != (out / "vae").resolve():
        replace_dir(out / "vae", lambda tmp: shutil.copytree(vae_dir, tmp, dirs_exist_ok=True))
    replace_dir(out / "unet", lambda tmp: unet.save_pretrained(tmp))
    replace_dir(out / "text_encoder", lambda tmp: text_encoder.save_pretrained(tmp))

    def write_tokenizer(tmp: Path) -> None:
        for f in sorted(CLIP_TOKENIZER_DIR.iterdir()):
            if f.is_file():
                shutil.copy2(f, Path(tmp) / f.name)

    replace_dir(out / "tokenizer", write_tokenizer)
    replace_dir(out / "scheduler", lambda tmp: DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(tmp))

    def write_image_encoder(tmp: Path) -> None:
        build_image_encoder(sizes, args.seed + 3).save_pretrained(tmp)
        build_image_processor().save_pretrained(tmp)

    replace_dir(out / "image_encoder", write_image_encoder)
    write_json(out / "model_index.json", model_index())
    vae_info_path = out / "TRAINING_vae.json"
    vae_info = json.loads(vae_info_path.read_text()) if vae_info_path.exists() else {}
    total = sum(f.stat().st_size for f in out.rglob("*.safetensors"))
    write_json(out / "TRAINING.json", {
        "command": command_line(),
        "vae_command": vae_info.get("command"),
        "seed": args.seed,
        "size_preset": args.size,
        "heldout_seed_start": HELDOUT_SEED_START,
        "machine": machine_info(),
        "vae": vae_info.get("vae"),
        "unet": unet_summary,
        "weights_bytes": total,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    })


def command_line() -> str:
    """The command that started this process."""
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, "-m", "toyworld.train_toy", *sys.argv[1:]])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", choices=["vae", "unet"], required=True, help="what to train")
    p.add_argument("--out", default="toy_model", help="pipeline folder to write")
    p.add_argument("--ckpt_dir", default="toyworld/ckpt", help="resumable checkpoints (safetensors + JSON)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --ckpt_dir")
    p.add_argument("--minutes", type=float, default=None, help="wall-time budget of this process")
    p.add_argument("--steps", type=int, default=None, help="stop at this total step count")
    p.add_argument("--seed", type=int, default=0, help="run seed (model init, data order, noise)")
    p.add_argument("--size", choices=sorted(SIZES), default="small", help="model size preset")
    p.add_argument("--image_size", type=int, default=64, help="scene image side in pixels")
    p.add_argument("--batch_size", type=int, default=32, help="UNet stage batch size")
    p.add_argument("--vae_batch_size", type=int, default=16, help="VAE stage batch size")
    p.add_argument("--lr", type=float, default=5e-4, help="UNet + text encoder learning rate")
    p.add_argument("--vae_lr", type=float, default=1e-3, help="VAE learning rate")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    p.add_argument("--kl_weight", type=float, default=1e-4, help="VAE KL weight (per element)")
    p.add_argument("--uncond_prob", type=float, default=0.1, help="share of empty captions (CFG dropout)")
    p.add_argument("--snr_gamma", type=float, default=5.0, help="min-SNR loss weighting (0: plain MSE)")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the exported weights")
    p.add_argument("--token_init_std", type=float, default=0.5, help="text token embedding init std")
    p.add_argument("--position_init_std", type=float, default=0.1, help="text position embedding init std")
    p.add_argument("--pool", type=int, default=8192, help="training scenes encoded once for the UNet stage")
    p.add_argument("--stats_count", type=int, default=512, help="scenes used to fit the VAE scaling_factor")
    p.add_argument("--vae", default=None, help="VAE folder for the UNet stage (default {out}/vae)")
    p.add_argument("--save_minutes", type=float, default=5.0, help="checkpoint (and export) interval")
    p.add_argument("--log_every", type=int, default=25, help="history interval in steps")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.minutes is None and args.steps is None:
        p.error("give --minutes and/or --steps")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    Path(args.ckpt_dir).mkdir(parents=True, exist_ok=True)
    if args.stage == "vae":
        run_vae_stage(args)
    else:
        run_unet_stage(args)


if __name__ == "__main__":
    main()
