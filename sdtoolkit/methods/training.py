"""Per-step optimisation shared by StyleDiffusion (mapping networks M_t) and null-text / text-embedding inversion.

All walk the DDIM inversion trace from z_T: at step i they optimise their step-i parameters with Adam
until one guided DDIM step from the current latent reaches the inversion latent of the next step
(:func:`optimise_step`, docs/method.md §3), then advance the current latent with the trained parameters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from sdtoolkit.core.attention import AttnCall, Branch, MapRecorder, map_layers, style_processors
from sdtoolkit.core.ddim import DDIMSchedule, guided_eps, sample_step
from sdtoolkit.core.mapping import MappingNetworks
from sdtoolkit.core.models import SDModels
from sdtoolkit.core.progress import ProgressBar
from sdtoolkit.core.schedules import StepPlan, starts_from_text, step_plan
from sdtoolkit.core.settings import AttnPairing, TrainSettings
from sdtoolkit.methods.sampler import NonFiniteError, check_finite


@dataclass
class InversionTrace:
    """DDIM inversion of one image: ``latents[k]`` after k inversion steps (z_0 … z_T) and, per sampling
    step i, the recorded conditional cross-attention maps at timestep ``timesteps[i]`` (B, h, Q, 77)."""

    latents: list[torch.Tensor]
    maps: list[dict[str, torch.Tensor]]
    pooled: torch.Tensor | None = None  # (1, P) SDXL's pooled embedding of the prompt, None for SD 1.x / 2.x


@dataclass
class TrainLog:
    """Per-step optimisation record: inner iterations run at each sampling step."""

    iterations: list[int] = field(default_factory=list)


def reference_pairing(i: int) -> int:
    """The reference's map index for training step i: one step noisier, the first step reusing its own."""
    return max(i - 1, 0)


def optimise_step(
    step_loss: Callable[[], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    params: list[torch.Tensor],
    plan: StepPlan,
    i: int,
    bar: ProgressBar,
    num_steps: int,
    what: str,
) -> int:
    """Adam on step i's ``params`` for up to ``plan.iterations`` iterations of ``step_loss``, stopping as
    ``plan.stops`` says (docs/method.md §3, §3a). The losses stay on the device and are read once per
    ``plan.window`` iterations (no host sync per iteration); a stop found inside a window restores the
    parameters of that iteration (kept in a ring of copies), so the result is the per-iteration rule's. A
    non-finite loss stops the run naming the step. Returns the iterations kept."""
    losses: list[torch.Tensor] = []
    values: list[float] = []
    rewind = plan.stop_below is not None and plan.window > 1
    detached = [p.detach() for p in params]
    ring = [[p.clone() for p in detached] for _ in range(plan.window)] if rewind else []
    for j in range(plan.iterations):
        if plan.warmup:
            for group in optimizer.param_groups:
                group["lr"] = plan.lr_at(j)
        loss = step_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        if rewind:
            torch._foreach_copy_(ring[j % plan.window], detached)
        if (j + 1) % plan.window and j + 1 < plan.iterations:
            continue
        start = len(values)
        values += torch.stack(losses[start:]).float().cpu().tolist()  # the one host read of this window
        bad = next((k for k in range(start, len(values)) if not math.isfinite(values[k])), None)
        if bad is not None:
            raise NonFiniteError(f"{what} is not finite at sampling step {i} (iteration {bad + 1}): try --dtype fp32, "
                                 "or a smaller learning rate / fewer inner steps")
        bar.update(len(values) - start)
        bar.set_postfix(step=f"{i + 1}/{num_steps}", it=len(values), loss=f"{values[-1]:.2e}", refresh=False)
        kept = plan.stops(values, start)
        if kept is not None:
            if rewind and kept < len(values):
                torch._foreach_copy_(detached, ring[(kept - 1) % plan.window])
            bar.update(plan.iterations - len(values))
            return kept
    return plan.iterations


def stylediffusion_loss(
    models: SDModels,
    schedule: DDIMSchedule,
    mapping: MappingNetworks,
    i: int,
    z: torch.Tensor,
    eps_u: torch.Tensor,
    target: torch.Tensor,
    gt_maps: dict[str, torch.Tensor],
    text: torch.Tensor,
    features: torch.Tensor,
    settings: TrainSettings,
    map_names: frozenset[str],
    pooled: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loss of M_i (docs/method.md §3): MSE(z̃_{t-1}, ẑ_{t-1}) + Σ_layers MSE(a, â) over ``map_names`` (none
    without the attention loss). ``eps_u`` is computed once per step by the caller; processors must be installed."""
    names = map_names if settings.w_attnloss else frozenset()
    recorder = MapRecorder(names) if names else None
    value = mapping.value_input(i, features, text)
    eps_c = models.predict(z, schedule.timesteps[i], text, AttnCall(i, Branch.COND, value_states=value, controller=recorder),
                       pooled)
    z_prev = sample_step(schedule, i, z, guided_eps(eps_u, eps_c, settings.guidance_scale))
    loss = F.mse_loss(z_prev, target)
    for name in names:
        loss = loss + F.mse_loss(recorder.maps[name].float(), gt_maps[name].float())
    return loss


def train_mapping(
    models: SDModels,
    trace: InversionTrace,
    text: torch.Tensor,
    null: torch.Tensor,
    features: torch.Tensor,
    schedule: DDIMSchedule,
    settings: TrainSettings,
    progress: bool = True,
) -> tuple[MappingNetworks, TrainLog]:
    """Train StyleDiffusion's M_1 … M_T (docs/method.md §3): per step, Adam on M_i so that one guided DDIM step
    from the current latent reaches the inversion latent of the next step, with the cross-attention maps kept
    close to the inversion's; then advance the current latent with the trained M_i."""
    num = schedule.num_steps
    names = frozenset(l.name for l in map_layers(models.layers()))
    mapping = MappingNetworks(num, features.shape[1], models.max_length, features.shape[2], models.text_width)
    if starts_from_text(settings.schedule):
        mapping.start_from_text()
    mapping = mapping.to(models.device)
    text = text.float()
    log = TrainLog()
    plans = [step_plan(settings.schedule, settings.num_inner_steps, i, True, settings.early_stop) for i in range(num)]
    bar = ProgressBar(total=settings.num_epoch * sum(p.iterations for p in plans), desc="training M_t", disable=not progress)
    with style_processors(models.unet):
        for epoch in range(settings.num_epoch):
            z = trace.latents[num]
            for i in range(num):
                t = schedule.timesteps[i]
                if epoch == 0:
                    mapping.init_from_previous(i)
                target = trace.latents[num - i - 1]
                gt = trace.maps[reference_pairing(i) if settings.attn_pairing is AttnPairing.REFERENCE else i]
                params = list(mapping.nets[i].parameters())
                optimizer = torch.optim.Adam(params, lr=plans[i].lr)
                with torch.no_grad():
                    eps_u = models.predict(z, t, null, AttnCall(i, Branch.UNCOND))
                step_loss = lambda: stylediffusion_loss(models, schedule, mapping, i, z, eps_u, target, gt, text,  # noqa: E731
                                                        features, settings, names, trace.pooled)
                log.iterations.append(optimise_step(step_loss, optimizer, params, plans[i], i, bar, num,
                                                    "the training loss"))
                with torch.no_grad():
                    value = mapping.value_input(i, features, text)
                    eps_c = models.predict(z, t, text, AttnCall(i, Branch.COND, value_states=value), trace.pooled)
                    z = sample_step(schedule, i, z, guided_eps(eps_u, eps_c, settings.guidance_scale))
                check_finite(z, "the current latent", i)
    bar.close()
    mapping.eval()
    mapping.requires_grad_(False)
    return mapping, log


def train_embeddings(
    models: SDModels,
    trace: InversionTrace,
    text: torch.Tensor,
    null: torch.Tensor,
    schedule: DDIMSchedule,
    settings: TrainSettings,
    branch: Branch,
    progress: bool = True,
) -> tuple[torch.Tensor, TrainLog]:
    """One optimised embedding per step for ``branch`` (docs/method.md §5): null-text inversion (UNCOND: the
    unconditional embedding, starting from ``null``) or text-embedding inversion (COND: the source prompt's
    embedding, starting from ``text``). Per step, Adam (lr 0.01·(1 − i/100)) for up to ``num_inner_steps``
    iterations, early stop at 1e-5 + i·2e-5; the other branch's prediction once per step; each step starts from
    the previous step's result. Returns the per-step embeddings (T, 1, L, D)."""
    num = schedule.num_steps
    other = Branch.COND if branch is Branch.UNCOND else Branch.UNCOND
    fixed, learned = (text, null) if branch is Branch.UNCOND else (null, text)
    learned = learned.detach().float().clone()
    per_step = []
    log = TrainLog()
    what = "null-text" if branch is Branch.UNCOND else "text-embedding"
    pooled = {Branch.COND: trace.pooled, Branch.UNCOND: None}  # SDXL: the prompt's pooled embedding / zeros
    plans = [step_plan(settings.schedule, settings.num_inner_steps, i, False, settings.early_stop) for i in range(num)]
    bar = ProgressBar(total=sum(p.iterations for p in plans), desc=f"{what} inversion", disable=not progress)

    def guided(eps_learned: torch.Tensor, eps_fixed: torch.Tensor) -> torch.Tensor:
        if branch is Branch.UNCOND:
            return guided_eps(eps_learned, eps_fixed, settings.guidance_scale)
        return guided_eps(eps_fixed, eps_learned, settings.guidance_scale)

    with style_processors(models.unet):
        z = trace.latents[num]
        for i in range(num):
            t = schedule.timesteps[i]
            target = trace.latents[num - i - 1]
            learned = learned.detach().requires_grad_(True)
            optimizer = torch.optim.Adam([learned], lr=plans[i].lr)
            with torch.no_grad():
                eps_fixed = models.predict(z, t, fixed, AttnCall(i, other), pooled[other])

            def step_loss() -> torch.Tensor:
                eps = models.predict(z, t, learned, AttnCall(i, branch), pooled[branch])
                return F.mse_loss(sample_step(schedule, i, z, guided(eps, eps_fixed)), target)

            log.iterations.append(optimise_step(step_loss, optimizer, [learned], plans[i], i, bar, num,
                                                f"the {what} loss"))
            learned = learned.detach()
            per_step.append(learned.clone())
            with torch.no_grad():
                eps = models.predict(z, t, learned, AttnCall(i, branch), pooled[branch])
                z = sample_step(schedule, i, z, guided(eps, eps_fixed))
            check_finite(z, "the current latent", i)
    bar.close()
    return torch.stack(per_step), log
