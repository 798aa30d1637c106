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

``--schedule`` picks the inner-iteration plan of the timed training iterations (the fast schedule reads the loss
every 2 iterations, the reference every 10) and the training passes the full training is extrapolated to;
``--inversion stylediffusion_direct`` times the edit with the direct correction of the source branch. Also counts
the UNet rows (batch elements through the UNet) per combination of a sweep of 1 and of 8 combinations
(``sweep_rows_per_combination_k1`` / ``_k8``; a sweep samples the source once per chunk), ``--sweep_timing`` times
a sweep of ``--sweep`` combinations shared against one sampling per combination, and ``--profile`` writes a
``torch.profiler`` summary (top kernels, device idle share) of one training iteration and one edit step.
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
from sdtoolkit.core.schedules import step_plan
from sdtoolkit.core.settings import EditConfig, InversionMethod, Schedule, Taus, TrainSettings
from sdtoolkit.jobs.edit import build_controller, edit_latents, sweep_chunks, sweep_latents
from sdtoolkit.methods.inversions import StyleDiffusionDirectInversion, StyleDiffusionInversion
from sdtoolkit.methods.sampler import sample
from sdtoolkit.methods.training import optimise_step, stylediffusion_loss
from sdtoolkit.core.io import write_json
from sdtoolkit.core.mapping import MappingNetworks
from sdtoolkit.core.models import SDModels, compile_repeated_blocks, count_unet, load_models, resolve_device, \
    resolve_dtype
from sdtoolkit.core.tokenizer import load_clip_tokenizer


def sd14_random(device: torch.device, dtype: torch.dtype) -> SDModels:
    """The SD 1.4 architecture (UNet, VAE, CLIP ViT-L/14 text) and CLIP ViT-B/16 vision, random weights."""
    with torch.device(device):  # built where it runs (a GPU initialises the random weights far faster than the host)
        return _sd14_random(device, dtype)


def _sd14_random(device: torch.device, dtype: torch.dtype) -> SDModels:
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


EDIT_METHODS = {InversionMethod.STYLEDIFFUSION: StyleDiffusionInversion,
                InversionMethod.STYLEDIFFUSION_DIRECT: StyleDiffusionDirectInversion}
"""The inversions whose edit the benchmark times (the direct one adds the source branch's per-step correction)."""


def edit_inversion(method: InversionMethod, z0: torch.Tensor, null: torch.Tensor, mapping: MappingNetworks,
                   features: torch.Tensor, steps: int) -> StyleDiffusionInversion:
    """The timed edit's inversion from z_0 (the direct method's inversion latents: z_0 at every level)."""
    inv = EDIT_METHODS[method](z0, null, mapping, features)
    if method is InversionMethod.STYLEDIFFUSION_DIRECT:
        inv.latents = z0.expand(steps + 1, -1, -1, -1).clone()  # (T+1, 4, h, w)
    return inv


def sweep_combinations(k: int) -> list[Taus]:
    """K distinct tau combinations (tau_v, tau_c, tau_u vary) for the counted and timed sweeps."""
    return [Taus(0.2 + 0.6 * j / max(k - 1, 1), 0.3 + 0.5 * ((j * 3) % k) / max(k - 1, 1), 0.6, 0.5 * (j % 2))
            for j in range(k)]


def sweep(models: SDModels, inv, prompt: str, edit: EditConfig, combos: list[Taus], texts: torch.Tensor,
          steps: int, shared: bool) -> None:
    """A sweep as ``run_edit`` samples it (``shared``: the source once per chunk) or one sampling per combination."""
    if shared:
        for chunk in sweep_chunks(combos, inv):
            sweep_latents(models, inv, prompt, edit, chunk, texts, steps)
    else:
        for taus in combos:
            edit_latents(models, inv, prompt, edit, taus, texts, steps)


def measure_sweep(models: SDModels, steps: int, k: int, timing: bool, rounds: int = 2) -> dict:
    """UNet rows per combination of a sweep of 1 and of 8 combinations (counted, not timed), and with ``timing``
    the seconds of a sweep of ``k`` combinations shared vs one sampling per combination (alternating, medians)."""
    size = models.image_size
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z0 = models.encode_latent(x)
    prompt, tgt = "a photo of a cat on a mat", "a photo of a dog on a mat"
    null = models.encode_null()
    features = models.image_features(x)
    mapping = MappingNetworks(steps, features.shape[1], models.max_length, features.shape[2],
                              models.text_width).to(models.device)
    inv = StyleDiffusionInversion(z0, null, mapping, features)
    texts = models.encode_text([prompt, tgt]).float()
    edit = EditConfig(target=tgt, blend_word=(("cat",), ("dog",)), eq_params=(("dog",), (2.0,)))
    out: dict = {}
    for n in (1, 8):
        with count_unet(models.unet) as counter:
            sweep(models, inv, prompt, edit, sweep_combinations(n), texts, steps, shared=True)
        out[f"sweep_rows_per_combination_k{n}"] = counter.rows / n
    out["sweep_rows_ratio_k8_k1"] = out["sweep_rows_per_combination_k8"] / out["sweep_rows_per_combination_k1"]
    out["sweep_steps"] = steps
    if timing:
        combos = sweep_combinations(k)
        times: dict[str, list[float]] = {"shared": [], "separate": []}
        for _ in range(rounds):
            for mode in times:
                sync(models.device)
                start = time.perf_counter()
                sweep(models, inv, prompt, edit, combos, texts, steps, shared=mode == "shared")
                sync(models.device)
                times[mode].append(time.perf_counter() - start)
        out |= {"sweep_timed_combinations": k, "sweep_s_shared": _median(times["shared"]),
                "sweep_s_separate": _median(times["separate"]),
                "sweep_speedup": _median(times["separate"]) / _median(times["shared"])}
    return out


def training_passes(schedule: Schedule, override: int | None) -> int:
    """Training iterations per image to extrapolate to (T = 30, N = 100): ``override`` when given, else the
    schedule's caps summed (the reference's 1,015, whose early stop random weights never trigger; the fast
    schedule stops on a loss plateau, so pass its measured count, docs/backbones.md)."""
    if override is not None:
        return override
    return sum(step_plan(schedule, 100, i).iterations for i in range(30))


class Profiler:
    """``torch.profiler`` over one region at a time; :meth:`summary` gives the top kernels (CUDA: by self device
    time; CPU: ops by self CPU time) and the device's idle share of the region's wall time (1 − kernel time / wall;
    None on a CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.prof = torch.profiler.profile(activities=activities)
        self.wall = 0.0

    def start(self) -> None:
        sync(self.device)
        self.prof.start()
        self.began = time.perf_counter()

    def stop(self) -> None:
        sync(self.device)
        self.wall = time.perf_counter() - self.began
        self.prof.stop()

    def summary(self, top: int = 12) -> dict:
        events = self.prof.key_averages()
        if self.device.type == "cuda":
            kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
            ms = lambda e: e.self_device_time_total / 1000  # noqa: E731
            busy = sum(ms(e) for e in kernels)
            idle = max(0.0, 1.0 - busy / (1000 * self.wall))
        else:
            kernels, ms, idle = list(events), (lambda e: e.self_cpu_time_total / 1000), None
        ranked = sorted(kernels, key=ms, reverse=True)[:top]
        return {"wall_ms": 1000 * self.wall, "idle_share": idle,
                "top": [{"name": e.key[:90], "calls": e.count, "ms": round(ms(e), 3)} for e in ranked]}


class ProfileOneStep:
    """A controller wrapper that profiles sampling step ``step`` (from the end of step − 1 to the end of ``step``)."""

    def __init__(self, inner, profiler: Profiler, step: int) -> None:
        self.inner, self.profiler, self.step = inner, profiler, step

    def wants_probs(self, layer, call) -> bool:
        return self.inner.wants_probs(layer, call)

    def on_probs(self, probs, layer, call):
        return self.inner.on_probs(probs, layer, call)

    def step_callback(self, z: torch.Tensor, step: int) -> torch.Tensor:
        z = self.inner.step_callback(z, step)
        if step == self.step - 1:
            self.profiler.start()
        elif step == self.step:
            self.profiler.stop()
        return z


def measure(models: SDModels, reference: bool, iters: int, warmup: int, steps: int, compile_unet: bool,
            schedules: list[Schedule] = (Schedule.REFERENCE,),
            methods: list[InversionMethod] = (InversionMethod.STYLEDIFFUSION,),
            passes: dict[Schedule, int] | None = None, profile: bool = False) -> dict:
    """Time training iterations and one edit combination of each of ``methods`` for one setting; the full training
    is extrapolated to each of ``schedules``' :func:`training_passes` (an iteration costs the same in every
    schedule). The first schedule and method fill the flat keys (``full_training_s_extrapolated``,
    ``s_per_edit_combination``); ``by_schedule`` / ``by_inversion`` hold them all. ``profile``: also a
    :class:`Profiler` summary of one training iteration and one edit step (of the first method), after the timing."""
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
        if profile:
            train_profile = Profiler(dev)
            train_profile.start()
            optimise_step(step_loss, optimizer, params, plan, 0, bar, steps, "the training loss")
            train_profile.stop()
    models.image_encoder.requires_grad_(False)
    ms_iter = 1000 * sorted(times)[len(times) // 2]
    train_peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    tgt = "a photo of a dog on a mat"
    edit = EditConfig(target=tgt, blend_word=(("cat",), ("dog",)), eq_params=(("dog",), (2.0,)))
    texts = torch.cat([text, models.encode_text([tgt]).float()])
    by_inversion = {}
    for method in methods:
        inv = edit_inversion(method, z0, null, mapping, features, steps)
        edit_times = []
        for _ in range(2):
            controller = build_controller(models, "a photo of a cat on a mat", edit, steps, Taus(0.5, 0.6, 0.6, 0.5))
            n_v = int(0.5 * steps)
            sync(dev)
            start = time.perf_counter()
            sample(models, schedule, inv, texts, lambda i: [True, i < n_v], 7.5, controller, explicit=reference)
            sync(dev)
            edit_times.append(time.perf_counter() - start)
        by_inversion[method.value] = min(edit_times) * 30 / steps
    edit_peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    profiles = None
    if profile:
        edit_profile = Profiler(dev)
        controller = build_controller(models, "a photo of a cat on a mat", edit, steps, Taus(0.5, 0.6, 0.6, 0.5))
        inv = edit_inversion(methods[0], z0, null, mapping, features, steps)
        sample(models, schedule, inv, texts, lambda i: [True, i < steps // 2], 7.5,
               ProfileOneStep(controller, edit_profile, 1))
        profiles = {"training_iteration": train_profile.summary(), "edit_step": edit_profile.summary()}
    step_passes_s = 30 * 3 * (by_inversion[methods[0].value] / 30 / 2)  # uncond + advance (cond) per step, batch 1
    by_schedule = {}
    for name in schedules:
        total = training_passes(name, (passes or {}).get(name))
        by_schedule[name.value] = {"training_passes": total, "full_training_s": total * ms_iter / 1000 + step_passes_s}
    first = by_schedule[schedules[0].value]
    return {
        "ms_per_train_iter": ms_iter,
        "training_passes_extrapolated": first["training_passes"],
        "full_training_s_extrapolated": first["full_training_s"],
        "s_per_edit_combination": by_inversion[methods[0].value],
        "by_schedule": by_schedule,
        "step_passes_s": step_passes_s,  # the per-step passes besides the iterations (full training = passes · ms + this)
        "by_inversion": by_inversion,
        "edit_steps_timed": steps,
        "train_peak_gib": train_peak,
        "edit_peak_gib": edit_peak,
        "compile_s_first_iteration": compile_s,
        "profile": profiles,
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
    p.add_argument("--schedule", nargs="+", type=Schedule, default=[Schedule.REFERENCE],
                   choices=list(Schedule), help="schedules the full training is extrapolated to (first: the table's)")
    p.add_argument("--passes_per_image", nargs="*", default=[], metavar="SCHEDULE=N",
                   help="training passes per image of a schedule (default: its caps summed; the fast schedule's "
                        "plateau stop needs its measured count, docs/backbones.md)")
    p.add_argument("--inversion", nargs="+", type=InversionMethod, default=[InversionMethod.STYLEDIFFUSION],
                   choices=list(EDIT_METHODS), help="inversions whose edit combination is timed (first: the table's)")
    p.add_argument("--only_default", action="store_true",
                   help="time setting (b) only: no reference-cost setting, no ratios, no overhead rounds")
    p.add_argument("--sweep", type=int, default=8, help="tau combinations K of the timed sweep (--sweep_timing)")
    p.add_argument("--sweep_timing", action="store_true",
                   help="time a sweep of K combinations with the source shared vs sampled per combination")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler summary of one training iteration and one edit step of setting (b)")
    p.add_argument("--out", "--json", dest="out", default="benchmarks/results.json", help="where the JSON goes")
    args = p.parse_args(argv)
    if args.profile and args.edit_steps < 2:
        p.error("--profile profiles edit step 1: --edit_steps must be at least 2")
    try:
        passes = {Schedule(k): int(v) for k, v in (item.split("=", 1) for item in args.passes_per_image)}
    except ValueError:
        p.error(f"--passes_per_image {args.passes_per_image}: give SCHEDULE=N, SCHEDULE one of "
                f"{', '.join(s.value for s in Schedule)}")
    device = resolve_device(args.device)
    settings = [("(b) default", False, resolve_dtype(args.dtype))]
    if not args.only_default:
        settings.insert(0, ("(a) reference cost", True, torch.float32))
    rows = {}
    for name, reference, dtype in settings:
        models = get_models(args, dtype)
        torch.manual_seed(0)
        rows[name] = {"dtype": str(dtype).replace("torch.", ""),
                      **measure(models, reference, args.iters, args.warmup, args.edit_steps,
                                args.compile and not reference, args.schedule, args.inversion, passes,
                                args.profile and not reference)}
        if reference:
            del models
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.compile:  # the overhead and the sweep rows on an uncompiled UNet (no recompiles for new batch sizes)
        del models
        models = get_models(args, resolve_dtype(args.dtype))
    torch.manual_seed(0)
    overhead = None if args.only_default else measure_overhead(models, args.iters, args.overhead_rounds,
                                                               args.edit_steps)
    sweep_rows = measure_sweep(models, args.edit_steps, args.sweep, args.sweep_timing)
    del models
    b = rows["(b) default"]
    ratios = None
    if not args.only_default:
        a = rows["(a) reference cost"]
        ratios = {"train_iter_speedup": a["ms_per_train_iter"] / b["ms_per_train_iter"],
                  "edit_speedup": a["s_per_edit_combination"] / b["s_per_edit_combination"]}
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"device: {card}; model: {'tiny' if args.tiny else args.model or 'SD 1.4 architecture, random weights'}")
    header = f"{'setting':<20} {'dtype':<9} {'ms/iter':>9} {'train s':>9} {'edit s':>8} {'train GiB':>10} {'edit GiB':>9}"
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        gib = lambda v: f"{v:.2f}" if v is not None else "n/a"
        print(f"{name:<20} {r['dtype']:<9} {r['ms_per_train_iter']:>9.1f} {r['full_training_s_extrapolated']:>9.1f} "
              f"{r['s_per_edit_combination']:>8.2f} {gib(r['train_peak_gib']):>10} {gib(r['edit_peak_gib']):>9}")
    for schedule, t in b["by_schedule"].items():
        print(f"(b) schedule {schedule}: {t['training_passes']} training passes, {t['full_training_s']:.1f} s extrapolated")
    for method, sec in b["by_inversion"].items():
        print(f"(b) edit combination with {method}: {sec:.2f} s (30 steps)")
    if ratios:
        print(f"speed-up (a)/(b): training iteration {ratios['train_iter_speedup']:.2f}x, edit {ratios['edit_speedup']:.2f}x")
    if b["compile_s_first_iteration"] is not None:
        print(f"compile (regional, first training iteration of (b)): {b['compile_s_first_iteration']:.1f} s")
    if overhead:
        o = overhead
        print(f"overhead (b): training iteration {o['ms_train_iteration']:.2f} ms vs bare forward+backward "
              f"{o['ms_bare_forward_backward']:.2f} ms = {o['overhead_train']:.3f}x (target <= 1.15); edit step "
              f"{o['ms_edit_step']:.2f} ms vs bare forwards {o['ms_bare_edit_forward']:.2f} ms = "
              f"{o['overhead_edit']:.3f}x (target <= 1.25)")
    sw = sweep_rows
    print(f"UNet rows per combination of a sweep: K = 1 {sw['sweep_rows_per_combination_k1']:.1f}, K = 8 "
          f"{sw['sweep_rows_per_combination_k8']:.1f} ({sw['sweep_rows_ratio_k8_k1']:.3f}x; target <= 0.6x)")
    if args.sweep_timing:
        print(f"sweep of {sw['sweep_timed_combinations']} combinations ({args.edit_steps} steps): source shared "
              f"{sw['sweep_s_shared']:.2f} s vs per combination {sw['sweep_s_separate']:.2f} s "
              f"({sw['sweep_speedup']:.2f}x)")
    if b["profile"]:
        for region, prof in b["profile"].items():
            idle = "n/a" if prof["idle_share"] is None else f"{100 * prof['idle_share']:.0f} %"
            print(f"profile, one {region.replace('_', ' ')}: {prof['wall_ms']:.1f} ms, device idle {idle}; top: "
                  + "; ".join(f"{k['name'][:40]} {k['ms']:.2f} ms" for k in prof["top"][:5]))
    write_json(args.out, {"device": card, "tiny": args.tiny, "model": args.model, "settings": rows, "ratios": ratios,
                          "overhead": overhead, "overhead_train": overhead and overhead["overhead_train"],
                          "overhead_edit": overhead and overhead["overhead_edit"], **sweep_rows,
                          "torch": torch.__version__})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
