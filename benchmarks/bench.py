"""Speed and memory of StyleDiffusion training and P2Plus editing, side by side in one run.

Settings:
  (a) reference cost — fp32, explicit attention probabilities in every layer, and the CLIP image encoder
      re-run (with trainable parameters) inside every cross-attention call, as the reference scripts do;
  (b) default — the toolkit's precision policy (bf16/fp16 networks on GPU, fp32 on CPU), probabilities
      only in the layers that need them (SDPA elsewhere), image features computed once.
Measures ms per training iteration (fixed count, early stop off), seconds for a full training (T = 30,
100-step schedule: 1,015 iterations plus the per-step passes, extrapolated), seconds per edit combination
(T steps, batch 2, P2Plus with local blend) and peak GPU memory. Prints a table with ratios, writes JSON.

    python benchmarks/bench.py                        # full-size SD 1.4 architecture, random weights
    python benchmarks/bench.py --model CompVis/stable-diffusion-v1-4
    python benchmarks/bench.py --tiny --device cpu    # smoke test, under a minute
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path


import torch
from tqdm.auto import tqdm
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

from sdtoolkit.core.attention import AttnCall, Branch, MapRecorder, StyleAttnProcessor, map_layers, style_processors, unet_layers
from sdtoolkit.core.constants import CLIP_MEAN, CLIP_STD
from sdtoolkit.core.schedules import inner_steps, step_plan
from sdtoolkit.core.settings import EditConfig, Schedule, Taus, TrainSettings
from sdtoolkit.jobs.edit import build_controller
from sdtoolkit.methods.inversions import StyleDiffusionInversion
from sdtoolkit.methods.sampler import sample
from sdtoolkit.methods.training import optimise_step, stylediffusion_loss
from sdtoolkit.core.io import write_json
from sdtoolkit.core.mapping import MappingNetworks
from sdtoolkit.core.models import SDModels, compile_repeated_blocks, load_models, resolve_device, resolve_dtype
from sdtoolkit.core.tokenizer import load_clip_tokenizer


def sd14_random(device: torch.device, dtype: torch.dtype) -> SDModels:
    """The SD 1.4 architecture (UNet, VAE, CLIP ViT-L/14 text) and CLIP ViT-B/16 vision, random weights."""
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                        layers_per_block=2, sample_size=512,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"))
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                              num_attention_heads=12, image_size=224, patch_size=16))
    for net in (unet, vae, text, vision):
        net.requires_grad_(False).eval().to(device)
        if dtype != torch.float32:
            net.to(dtype=dtype)
    return SDModels(vae, unet, text, load_clip_tokenizer(), vision, "sd14-random", device, dtype)


def get_models(args: argparse.Namespace, dtype: torch.dtype) -> SDModels:
    device = resolve_device(args.device)
    if args.tiny:
        return load_models("tiny", str(device), {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype])
    if args.model:
        return load_models(args.model, str(device), {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype])
    return sd14_random(device, dtype)


class ReferenceCostProcessor(StyleAttnProcessor):
    """The reference's cost: every conditional cross-attention call re-encodes the image with CLIP (its
    parameters trainable) and runs M_t on the result; probabilities are always materialised."""

    def __init__(self, layer, models: SDModels, mapping: MappingNetworks, pixels: torch.Tensor) -> None:
        super().__init__(layer)
        self.models, self.mapping, self.pixels = models, mapping, pixels

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, call=None):
        if call is not None:
            value = call.value_states
            if encoder_hidden_states is not None and call.branch == Branch.COND and value is not None:
                enc = self.models.image_encoder
                feats = enc.post_layernorm(enc(pixel_values=self.pixels).last_hidden_state).float()
                value = self.mapping.value_input(call.step, feats, encoder_hidden_states.float())
            call = AttnCall(call.step, call.branch, value, call.controller, explicit=True)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, call)


@contextmanager
def reference_processors(models: SDModels, mapping: MappingNetworks, pixels: torch.Tensor):
    previous = dict(models.unet.attn_processors)
    models.unet.set_attn_processor({l.name: ReferenceCostProcessor(l, models, mapping, pixels)
                                    for l in unet_layers(models.unet)})
    try:
        yield
    finally:
        models.unet.set_attn_processor(previous)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def measure_overhead(models: SDModels, iters: int, rounds: int, steps: int) -> dict:
    """The loop around the UNet against the UNet alone, timed alternately in ``rounds`` rounds (medians).

    Training: ``iters`` iterations of ``optimise_step`` (the loss with M_0, Adam, the windowed loss reads) vs
    ``iters`` bare forward+backward passes of the same UNet with the same processors and map recorder (the
    value input a leaf that needs a gradient). Editing: one P2Plus combination sampled over ``steps`` steps
    (batch [source, target], controller, local blend) vs the same UNet calls alone (uncond + cond per step,
    batch 2, same processors and a fresh controller). Returns ms per iteration / step and the ratios."""
    dev = models.device
    schedule = models.schedule(steps)
    size = models.image_size
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z0 = models.encode_latent(x)
    prompt, tgt = "a photo of a cat on a mat", "a photo of a dog on a mat"
    text = models.encode_text([prompt]).float()
    null = models.encode_null()
    features = models.image_features(x)
    mapping = MappingNetworks(steps, features.shape[1], models.max_length, features.shape[2], models.text_width).to(dev)
    names = frozenset(l.name for l in map_layers(models.layers()))
    t0 = schedule.timesteps[0]
    with torch.no_grad(), style_processors(models.unet):
        rec = MapRecorder(names)
        models.predict(z0, t0, text, AttnCall(0, Branch.COND, controller=rec))
        gt = {k: v.detach() for k, v in rec.maps.items()}
        eps_u = models.predict(z0, t0, null, AttnCall(0, Branch.UNCOND))
    params = list(mapping.nets[0].parameters())
    plan = step_plan(Schedule.REFERENCE, iters, 0, decaying=False, early_stop=False)
    settings = TrainSettings()
    bar = tqdm(disable=True)

    def train_loop() -> float:
        optimizer = torch.optim.Adam(params, lr=plan.lr)
        step_loss = lambda: stylediffusion_loss(models, schedule, mapping, 0, z0, eps_u, z0, gt, text,  # noqa: E731
                                                features, settings, names)
        sync(dev)
        start = time.perf_counter()
        optimise_step(step_loss, optimizer, params, plan, 0, bar, steps, "the training loss")
        sync(dev)
        return (time.perf_counter() - start) / iters

    value = text.clone().requires_grad_(True)

    def train_bare() -> float:
        sync(dev)
        start = time.perf_counter()
        for _ in range(iters):
            out = models.predict(z0, t0, text, AttnCall(0, Branch.COND, value_states=value, controller=MapRecorder(names)))
            out.sum().backward()
        sync(dev)
        return (time.perf_counter() - start) / iters

    edit = EditConfig(target=tgt, blend_word=(("cat",), ("dog",)), eq_params=(("dog",), (2.0,)))
    taus = Taus(0.5, 0.6, 0.6, 0.5)
    inv = StyleDiffusionInversion(z0, null, mapping, features)
    texts = torch.cat([text, models.encode_text([tgt]).float()])
    mapped = lambda i: [True, taus.value_mapped(i, steps)]  # noqa: E731

    def edit_loop() -> float:
        controller = build_controller(models, prompt, edit, steps, taus)
        sync(dev)
        start = time.perf_counter()
        sample(models, schedule, inv, texts, mapped, 7.5, controller)
        sync(dev)
        return (time.perf_counter() - start) / steps

    values = [inv.value_states(i, texts, mapped(i)) for i in range(steps)]
    nulls = null.expand(2, -1, -1)
    z2 = z0.expand(2, -1, -1, -1).clone()

    def edit_bare() -> float:
        controller = build_controller(models, prompt, edit, steps, taus)
        sync(dev)
        start = time.perf_counter()
        with torch.no_grad(), style_processors(models.unet):
            for i in range(steps):
                t = schedule.timesteps[i]
                models.predict(z2, t, nulls, AttnCall(i, Branch.UNCOND, controller=controller))
                models.predict(z2, t, texts, AttnCall(i, Branch.COND, value_states=values[i], controller=controller))
        sync(dev)
        return (time.perf_counter() - start) / steps

    times: dict[str, list[float]] = {"train_loop": [], "train_bare": [], "edit_loop": [], "edit_bare": []}
    with style_processors(models.unet):
        train_loop(), train_bare()  # warm-up
    edit_loop(), edit_bare()
    for _ in range(rounds):
        with style_processors(models.unet):
            times["train_loop"].append(train_loop())
            times["train_bare"].append(train_bare())
        times["edit_loop"].append(edit_loop())
        times["edit_bare"].append(edit_bare())
    ms = {k: 1000 * _median(v) for k, v in times.items()}
    return {
        "ms_train_iteration": ms["train_loop"], "ms_bare_forward_backward": ms["train_bare"],
        "ms_edit_step": ms["edit_loop"], "ms_bare_edit_forward": ms["edit_bare"],
        "overhead_train": ms["train_loop"] / ms["train_bare"], "overhead_edit": ms["edit_loop"] / ms["edit_bare"],
        "iters": iters, "rounds": rounds, "edit_steps": steps,
    }


def unet_passes(steps: int, combinations: int) -> dict:
    """UNet calls of editing: per step one unconditional and one conditional call, batch [source, target]; a
    sweep of K combinations reuses the inversion, image features, text embeddings and each M_t's scale and
    shift (computed once), and samples each combination."""
    return {"edit_combination_unet_calls": 2 * steps, "edit_combination_batch": 2,
            "sweep_unet_calls": 2 * steps * combinations, "sweep_combinations": combinations}


def measure(models: SDModels, reference: bool, iters: int, warmup: int, steps: int, compile_unet: bool) -> dict:
    """Time training iterations and one edit combination for one setting."""
    dev = models.device
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    compile_s = None
    if compile_unet:
        compile_repeated_blocks(models.unet)
    schedule = models.schedule(steps)
    size = models.image_size
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z0 = models.encode_latent(x)
    text = models.encode_text(["a photo of a cat on a mat"]).float()
    null = models.encode_text([""]).float()
    features = models.image_features(x)
    mapping = MappingNetworks(steps, features.shape[1], models.max_length).to(dev)
    names = frozenset(l.name for l in map_layers(models.layers()))
    with torch.no_grad(), style_processors(models.unet):
        rec = MapRecorder(names)
        models.predict(z0, schedule.timesteps[0], text, AttnCall(0, Branch.COND, controller=rec))
        gt = {k: v.detach() for k, v in rec.maps.items()}
        eps_u = models.predict(z0, schedule.timesteps[0], null, AttnCall(0, Branch.UNCOND))
    params = list(mapping.nets[0].parameters())
    plan = step_plan(Schedule.REFERENCE, 1, 0, decaying=False, early_stop=False)
    optimizer = torch.optim.Adam(params, lr=plan.lr)
    if reference:
        models.image_encoder.requires_grad_(True)
        pixels = ((x / 2 + 0.5 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
                  / torch.tensor(CLIP_STD).view(1, 3, 1, 1))
        pixels = torch.nn.functional.interpolate(pixels, size=(models.image_encoder.config.image_size,) * 2,
                                                 mode="bicubic").to(dev, models.dtype)
        ctx = reference_processors(models, mapping, pixels)
    else:
        ctx = style_processors(models.unet)
    times = []
    bar = tqdm(disable=True)
    with ctx:
        for k in range(warmup + iters):
            sync(dev)
            start = time.perf_counter()
            step_loss = lambda: stylediffusion_loss(models, schedule, mapping, 0, z0, eps_u, z0, gt, text,  # noqa: E731
                                                    features, TrainSettings(), names)
            optimise_step(step_loss, optimizer, params, plan, 0, bar, steps, "the training loss")
            sync(dev)
            if k >= warmup:
                times.append(time.perf_counter() - start)
            elif k == 0 and compile_unet:
                compile_s = time.perf_counter() - start
    models.image_encoder.requires_grad_(False)
    ms_iter = 1000 * sorted(times)[len(times) // 2]
    train_peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    tgt = "a photo of a dog on a mat"
    edit = EditConfig(target=tgt, blend_word=(("cat",), ("dog",)), eq_params=(("dog",), (2.0,)))
    inv = StyleDiffusionInversion(z0, null, mapping, features)
    texts = torch.cat([text, models.encode_text([tgt]).float()])

    edit_times = []
    for _ in range(2):
        controller = build_controller(models, "a photo of a cat on a mat", edit, steps, Taus(0.5, 0.6, 0.6, 0.5))
        n_v = int(0.5 * steps)
        sync(dev)
        start = time.perf_counter()
        sample(models, schedule, inv, texts, lambda i: [True, i < n_v], 7.5, controller, explicit=reference)
        sync(dev)
        edit_times.append(time.perf_counter() - start)
    edit_peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    total_iters = sum(inner_steps(100, i) for i in range(30))
    step_passes_s = 30 * 3 * (min(edit_times) / steps / 2)  # uncond + advance (cond), per step, batch-1 estimate
    return {
        "ms_per_train_iter": ms_iter,
        "full_training_s_extrapolated": total_iters * ms_iter / 1000 + step_passes_s,
        "s_per_edit_combination": min(edit_times) * 30 / steps,
        "edit_steps_timed": steps,
        "train_peak_gib": train_peak,
        "edit_peak_gib": edit_peak,
        "compile_s_first_iteration": compile_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="the tiny random model (smoke test)")
    p.add_argument("--model", default=None, help="load real weights (hub id or local folder) instead of random")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="precision of setting (b)")
    p.add_argument("--iters", type=int, default=10, help="timed training iterations per setting")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--edit_steps", type=int, default=30, help="sampling steps of the timed edit (scaled to 30)")
    p.add_argument("--compile", action="store_true",
                   help="also compile the UNet's repeated blocks (regional compilation) in setting (b)")
    p.add_argument("--overhead_rounds", type=int, default=3, help="alternating rounds of the overhead timing")
    p.add_argument("--sweep", type=int, default=4, help="tau combinations K of the counted sweep")
    p.add_argument("--out", "--json", dest="out", default="benchmarks/results.json", help="where the JSON goes")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    rows = {}
    for name, reference, dtype in (("(a) reference cost", True, torch.float32),
                                   ("(b) default", False, resolve_dtype(args.dtype))):
        models = get_models(args, dtype)
        torch.manual_seed(0)
        rows[name] = {"dtype": str(dtype).replace("torch.", ""),
                      **measure(models, reference, args.iters, args.warmup, args.edit_steps,
                                args.compile and not reference)}
        del models
        if device.type == "cuda":
            torch.cuda.empty_cache()
    models = get_models(args, resolve_dtype(args.dtype))
    torch.manual_seed(0)
    overhead = measure_overhead(models, args.iters, args.overhead_rounds, args.edit_steps)
    passes = unet_passes(args.edit_steps, args.sweep)
    del models
    a, b = rows["(a) reference cost"], rows["(b) default"]
    ratios = {
        "train_iter_speedup": a["ms_per_train_iter"] / b["ms_per_train_iter"],
        "edit_speedup": a["s_per_edit_combination"] / b["s_per_edit_combination"],
    }
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"device: {card}; model: {'tiny' if args.tiny else args.model or 'SD 1.4 architecture, random weights'}")
    header = f"{'setting':<20} {'dtype':<9} {'ms/iter':>9} {'train s':>9} {'edit s':>8} {'train GiB':>10} {'edit GiB':>9}"
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        gib = lambda v: f"{v:.2f}" if v is not None else "n/a"
        print(f"{name:<20} {r['dtype']:<9} {r['ms_per_train_iter']:>9.1f} {r['full_training_s_extrapolated']:>9.1f} "
              f"{r['s_per_edit_combination']:>8.2f} {gib(r['train_peak_gib']):>10} {gib(r['edit_peak_gib']):>9}")
    print(f"speed-up (a)/(b): training iteration {ratios['train_iter_speedup']:.2f}x, edit {ratios['edit_speedup']:.2f}x")
    if b["compile_s_first_iteration"] is not None:
        print(f"compile (regional, first training iteration of (b)): {b['compile_s_first_iteration']:.1f} s")
    o = overhead
    print(f"overhead (b): training iteration {o['ms_train_iteration']:.2f} ms vs bare forward+backward "
          f"{o['ms_bare_forward_backward']:.2f} ms = {o['overhead_train']:.3f}x (target <= 1.15); edit step "
          f"{o['ms_edit_step']:.2f} ms vs bare forwards {o['ms_bare_edit_forward']:.2f} ms = {o['overhead_edit']:.3f}x "
          "(target <= 1.25)")
    print(f"UNet calls: one edit combination {passes['edit_combination_unet_calls']} (batch 2); a sweep of "
          f"{args.sweep} combinations {passes['sweep_unet_calls']} (inversion, features, embeddings, M_t once)")
    write_json(args.out, {"device": card, "tiny": args.tiny, "model": args.model, "settings": rows, "ratios": ratios,
                          "overhead": overhead, "overhead_train": overhead["overhead_train"],
                          "overhead_edit": overhead["overhead_edit"], "unet_passes": passes,
                          "torch": torch.__version__})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
