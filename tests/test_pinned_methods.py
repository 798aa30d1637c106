"""What each inversion optimises and feeds, pinned exactly (issue 22): StyleDiffusion's loss terms and the
gradient its attention-map term adds, which embedding null-text / text-embedding inversion optimise and which
branch reads it, what NPI and DDIM inversion feed the sampler. Stub noise predictors record every call; values
are recomputed by hand (``scripts/mutation_check.py`` plants the bugs these catch)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

from sdtoolkit.core.attention import AttnCall, Branch, MapRecorder, map_layers, style_processors
from sdtoolkit.core.ddim import make_schedule
from sdtoolkit.core.mapping import MappingNetworks
from sdtoolkit.core.settings import TrainSettings
from sdtoolkit.methods import training
from sdtoolkit.methods.inversions import (DDIMInversion, NegativePromptInversion, NullTextInversion,
                                          StyleDiffusionInversion, TextEmbeddingInversion, ddim_inversion,
                                          method_class)
from sdtoolkit.methods.sampler import sample

SOURCE = "a cat sitting on a rug"
TARGET = "a tiger sitting on a rug"
W = 7.5


def _ddim(z: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float) -> torch.Tensor:
    """One DDIM move (eq. 12, eta 0, epsilon output) written out by hand."""
    x0 = (z - (1 - a_from) ** 0.5 * eps) / a_from**0.5
    return a_to**0.5 * x0 + (1 - a_to) ** 0.5 * eps


def stub_eps(z: torch.Tensor, t: int, text: torch.Tensor) -> torch.Tensor:
    """Deterministic, differentiable in the text: 0.1 z + 1e-3 t + Σ text[:, :4, :4] per batch element."""
    return 0.1 * z + 1e-3 * t + text.float()[:, :4, :4].sum(dim=(1, 2)).view(-1, 1, 1, 1)


@dataclass
class Call:
    step: int
    t: int
    branch: Branch
    text: torch.Tensor  # detached copy
    text_obj: torch.Tensor  # the tensor itself (identity: which tensor the branch reads)
    requires_grad: bool
    value_is_text: bool  # no separate value-path input: keys and values both read ``text``
    pooled: torch.Tensor | None


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)

    def of(self, branch: Branch) -> list[Call]:
        return [c for c in self.calls if c.branch is branch]


def stubbed(models, rec: Recorder):
    m = copy.copy(models)

    def predict(z, t, text, call: AttnCall, pooled=None):
        rec.calls.append(Call(call.step, int(t), call.branch, text.detach().clone(), text, text.requires_grad,
                              call.value_states is None, None if pooled is None else pooled.detach().clone()))
        return stub_eps(z, t, text)

    m.eps = m.predict = predict
    return m


@pytest.fixture(scope="module")
def texts(tiny) -> dict[str, torch.Tensor]:
    return {"src": tiny.encode_text([SOURCE]).float(), "tgt": tiny.encode_text([TARGET]).float(),
            "null": tiny.encode_text([""]).float()}


def _trace(num: int, seed: int = 0):
    """A hand-made inversion trace: latents z_0 … z_T (no maps)."""
    g = torch.Generator().manual_seed(seed)
    return training.InversionTrace([torch.randn(1, 4, 8, 8, generator=g) for _ in range(num + 1)], [{}] * num)


# ---------------------------------------------------------------------------------------------------------------
# StyleDiffusion: the attention-map term of the training loss


def make_sd_step(tiny, texts):
    """Step 1 of a 4-step schedule on the tiny UNet: trace with maps, features, freshly initialised M_t, and
    hand-made maps â for step 1 (all attention on the start token: far from the UNet's maps, so the map term is
    a visible part of the loss)."""
    schedule = make_schedule(4)
    names = StyleDiffusionInversion.recorded_maps(tiny, TrainSettings())
    z0 = torch.randn(1, 4, tiny.latent_size, tiny.latent_size, generator=torch.Generator().manual_seed(11))
    trace = ddim_inversion(tiny, z0, texts["src"], schedule, names)
    torch.manual_seed(12)
    features = torch.randn(1, 5, tiny.image_width)
    mapping = MappingNetworks(4, 5, tiny.max_length, tiny.image_width, tiny.text_width)
    start_token = {n: torch.zeros_like(m).index_fill_(-1, torch.tensor([0]), 1.0) for n, m in trace.maps[1].items()}
    return schedule, names, trace, features, mapping, start_token


@pytest.fixture(scope="module")
def sd_step(tiny, texts):
    return make_sd_step(tiny, texts)


def test_attention_loss_reads_the_down_and_up_cross_attention_maps_at_16x16_only(tiny, sd_step):
    """docs/method.md §2: the maps of the loss are the down/up cross-attention layers at 1/32 of the image (the
    tiny model's 16×16 level); not the mid block's 16×16, not the 32×32 ones, not self-attention."""
    _, names, trace, _, _, _ = sd_step
    want = {l.name for l in tiny.layers() if l.is_cross and l.place in ("down", "up") and l.resolution == 16}
    assert names == want == {f"{block}.attentions.{k}.transformer_blocks.0.attn2.processor"
                             for block, n in (("down_blocks.1", 2), ("up_blocks.0", 3)) for k in range(n)}
    assert {l.name for l in map_layers(tiny.layers())} == want
    assert not any(n.startswith("mid_block") for n in names)
    assert all(set(m) == want for m in trace.maps)
    assert all(m.shape[-2:] == (16 * 16, 77) for step in trace.maps for m in step.values())
    assert StyleDiffusionInversion.recorded_maps(tiny, TrainSettings(w_attnloss=False)) == frozenset()


def _loss(tiny, sd_step, texts, w_attnloss: bool, i: int = 1):
    schedule, names, trace, features, mapping, gt = sd_step
    settings = TrainSettings(w_attnloss=w_attnloss)
    z, target = trace.latents[3], trace.latents[2]
    with style_processors(tiny.unet):
        with torch.no_grad():
            eps_u = tiny.predict(z, schedule.timesteps[i], texts["null"], AttnCall(i, Branch.UNCOND))
        mapping.zero_grad(set_to_none=True)
        loss = training.stylediffusion_loss(tiny, schedule, mapping, i, z, eps_u, target, gt, texts["src"], features,
                                            settings, names)
        loss.backward()
    grads = {k: p.grad.clone() for k, p in mapping.nets[i].named_parameters()}
    return loss.detach(), grads, eps_u


def _by_hand(tiny, sd_step, texts, eps_u, i: int = 1):
    """MSE(z̃_{t-1}, ẑ_{t-1}) and [MSE(a, â) per map layer], recomputed from a recorded conditional call."""
    schedule, names, trace, features, mapping, gt = sd_step
    z, target = trace.latents[3], trace.latents[2]
    rec = MapRecorder(names)
    with style_processors(tiny.unet):
        value = mapping.value_input(i, features, texts["src"])
        eps_c = tiny.predict(z, schedule.timesteps[i], texts["src"], AttnCall(i, Branch.COND, value_states=value,
                                                                              controller=rec))
    z_prev = _ddim(z, eps_u + W * (eps_c - eps_u), schedule.alpha_t[i], schedule.alpha_prev[i])
    latent = ((z_prev - target) ** 2).mean()
    maps = [((rec.maps[n].float() - gt[n].float()) ** 2).mean() for n in sorted(names)]
    assert set(rec.maps) == names
    return latent, maps


def test_attention_loss_is_latent_mse_plus_the_sum_of_map_mses(tiny, sd_step, texts):
    """StyleDiffusion's loss (docs/method.md §3): MSE(z̃_{t-1}, ẑ_{t-1}) + Σ_{16×16 layers} MSE(a, â), â the
    inversion's maps of the paired step; without --w_attnloss only the latent term."""
    on, _, eps_u = _loss(tiny, sd_step, texts, True)
    off, _, _ = _loss(tiny, sd_step, texts, False)
    with torch.no_grad():
        latent, maps = _by_hand(tiny, sd_step, texts, eps_u)
    total_maps = sum(maps)
    assert min(maps) > 0.1 * latent / len(maps)  # every layer's term is a visible part of the sum
    torch.testing.assert_close(off, latent, rtol=1e-5, atol=0)
    torch.testing.assert_close(on, latent + total_maps, rtol=1e-5, atol=0)
    torch.testing.assert_close(on - off, total_maps, rtol=1e-3, atol=0)  # a layer's term missing or added shows


def test_attention_loss_adds_the_gradient_of_the_map_term_to_M_t(tiny, sd_step, texts):
    """∇_{M_t} of the loss with the attention term = ∇ of the latent MSE + ∇ of Σ MSE(a, â) (maps depend on M_t
    through the value path of the earlier layers); without it, the latent MSE's alone."""
    _, g_on, eps_u = _loss(tiny, sd_step, texts, True)
    _, g_off, _ = _loss(tiny, sd_step, texts, False)
    mapping = sd_step[4]
    mapping.zero_grad(set_to_none=True)
    latent, maps = _by_hand(tiny, sd_step, texts, eps_u)
    sum(maps).backward()
    g_maps = {k: p.grad.clone() for k, p in mapping.nets[1].named_parameters()}
    mapping.zero_grad(set_to_none=True)
    assert all(p.grad is None for k, p in mapping.nets[0].named_parameters())  # only M_i of step i
    moved = [k for k in g_on if g_off[k].abs().max() > 1e-6]  # the biases before BatchNorm get none
    assert moved == ["net.0.weight", "net.1.weight", "net.2.weight", "net.2.bias", "net.4.weight", "net.4.bias"]
    for k in moved:
        added = g_on[k] - g_off[k]
        assert added.abs().max() > 1e-4 * g_off[k].abs().max(), k
        torch.testing.assert_close(added, g_maps[k], rtol=0.02, atol=0.02 * float(g_maps[k].abs().max()))


# ---------------------------------------------------------------------------------------------------------------
# Null-text and text-embedding inversion: which tensor is optimised, which branch reads it, what is saved


def _train(tiny, branch: Branch, texts, num: int = 3, inner: int = 2, guidance: float = W):
    rec = Recorder()
    trace = _trace(num)
    settings = TrainSettings(num_inner_steps=inner, early_stop=False, guidance_scale=guidance)
    per_step, log = training.train_embeddings(stubbed(tiny, rec), trace, texts["src"], texts["null"],
                                              make_schedule(num), settings, branch, progress=False)
    return rec, trace, per_step, log


@pytest.mark.parametrize("method, learned_branch, start", [("nulltext", Branch.UNCOND, "null"),
                                                           ("textinv", Branch.COND, "src")])
def test_embedding_inversion_optimises_one_branch_and_feeds_it_there_only(tiny, texts, method, learned_branch, start):
    """Null-text inversion (Mokady et al.) optimises the UNCONDITIONAL embedding, starting from ""'s; text-embedding
    inversion the CONDITIONAL (source prompt's) one, keys and values. Per step: the other branch once, without
    gradient; each inner iteration the learned branch with the optimised tensor (requires_grad); one final call
    of the learned branch with the saved tensor to advance the latent."""
    cls = method_class(method)
    assert cls.branch is learned_branch
    num, inner = 3, 2
    rec, trace, per_step, log = _train(tiny, cls.branch, texts, num, inner)
    other = Branch.COND if learned_branch is Branch.UNCOND else Branch.UNCOND
    fixed = texts["src"] if learned_branch is Branch.UNCOND else texts["null"]
    schedule = make_schedule(num)
    expected = []
    for i in range(num):
        expected += [(i, schedule.timesteps[i], other)] + [(i, schedule.timesteps[i], learned_branch)] * (inner + 1)
    assert [(c.step, c.t, c.branch) for c in rec.calls] == expected
    assert log.iterations == [inner] * num
    for c in rec.of(other):
        assert not c.requires_grad and torch.equal(c.text, fixed) and c.value_is_text
    learned = rec.of(learned_branch)
    for i in range(num):
        step = learned[i * (inner + 1):(i + 1) * (inner + 1)]
        assert [c.requires_grad for c in step] == [True] * inner + [False]
        assert len({id(c.text_obj) for c in step[:inner]}) == 1  # one optimised leaf per step
        assert all(c.value_is_text for c in step)  # keys AND values read the learned embedding
        torch.testing.assert_close(step[-1].text, per_step[i], rtol=0, atol=0)  # what is saved is what was used
        start_of_step = texts[start] if i == 0 else per_step[i - 1]
        torch.testing.assert_close(step[0].text, start_of_step, rtol=0, atol=0)  # each step starts from the last
    assert per_step.shape == (num, 1, *texts["null"].shape[1:])
    assert not torch.equal(per_step[0], texts[start])
    assert cls.tensor_key == {"nulltext": "null_text", "textinv": "cond_text"}[method]
    inv = cls(trace.latents[-1], texts["null"], per_step)
    assert set(inv.tensors()) == {"z_T", cls.tensor_key} and torch.equal(inv.tensors()[cls.tensor_key], per_step)


@pytest.mark.parametrize("branch", [Branch.UNCOND, Branch.COND])
def test_embedding_inversion_first_adam_step_follows_the_guided_loss_gradient(tiny, texts, branch):
    """One inner iteration at step 0: loss = MSE(DDIM(z_T, u + w (c - u)), z_{T-1}) with the learned embedding in
    u (null-text) or c (text-embedding). The stub reads text[:, :4, :4], so Adam's first step moves exactly those
    16 entries by lr = 0.01 against the sign of the hand-computed gradient ((1 - w) · ∂L/∂ε for u, w · ∂L/∂ε for c)
    and nothing else."""
    num = 2
    rec, trace, per_step, _ = _train(tiny, branch, texts, num, inner=1)
    schedule = make_schedule(num)
    start = texts["null"] if branch is Branch.UNCOND else texts["src"]
    fixed = texts["src"] if branch is Branch.UNCOND else texts["null"]
    learned = start.clone().requires_grad_(True)
    t, z = schedule.timesteps[0], trace.latents[num]
    e_l, e_f = stub_eps(z, t, learned), stub_eps(z, t, fixed)
    u, c = (e_l, e_f) if branch is Branch.UNCOND else (e_f, e_l)
    loss = F.mse_loss(_ddim(z, u + W * (c - u), schedule.alpha_t[0], schedule.alpha_prev[0]), trace.latents[num - 1])
    (grad,) = torch.autograd.grad(loss, learned)
    assert (grad[0, :4, :4].abs() > 1e-4).all() and (grad[0, 4:] == 0).all() and (grad[0, :, 4:] == 0).all()
    moved = per_step[0] - start
    torch.testing.assert_close(moved[0, :4, :4], -0.01 * grad[0, :4, :4].sign(), rtol=1e-4, atol=1e-7)
    assert (moved[0, 4:] == 0).all() and (moved[0, :, 4:] == 0).all()


def test_guidance_scale_of_embedding_inversion_enters_its_loss(tiny, texts):
    """--guidance_scale changes what null-text inversion fits: at w = 1 the unconditional branch drops out of the
    guided estimate, so the null embedding gets no gradient and stays where it started."""
    _, _, per_step, _ = _train(tiny, Branch.UNCOND, texts, num=2, inner=2, guidance=1.0)
    assert torch.equal(per_step[0], texts["null"]) and torch.equal(per_step[1], texts["null"])
    _, _, moved, _ = _train(tiny, Branch.UNCOND, texts, num=2, inner=2, guidance=W)
    assert not torch.equal(moved[0], texts["null"])


def _sampled(tiny, inv, prompts, pooled=None):
    rec = Recorder()
    sample(stubbed(tiny, rec), make_schedule(3), inv, prompts, guidance_scale=W, pooled=pooled)
    return rec


def test_sampling_feeds_null_text_to_the_unconditional_branch_and_textinv_to_the_conditional_source(tiny, texts):
    """Null-text: step i's uncond branch reads null_text[i] for both prompts, the cond branch the prompts as they
    are. Text-embedding inversion: the cond branch reads cond_text[i] for the source (keys and values: no separate
    value input) and the target's own embedding; the uncond branch reads ""'s embedding."""
    prompts = torch.cat([texts["src"], texts["tgt"]])
    per_step = torch.randn(3, 1, *texts["null"].shape[1:], generator=torch.Generator().manual_seed(21))
    rec = _sampled(tiny, NullTextInversion(torch.zeros(1, 4, 8, 8), texts["null"], per_step), prompts)
    for i, (u, c) in enumerate(zip(rec.of(Branch.UNCOND), rec.of(Branch.COND))):
        assert torch.equal(u.text, per_step[i].expand(2, -1, -1)) and torch.equal(c.text, prompts)
    rec = _sampled(tiny, TextEmbeddingInversion(torch.zeros(1, 4, 8, 8), texts["null"], per_step), prompts)
    for i, (u, c) in enumerate(zip(rec.of(Branch.UNCOND), rec.of(Branch.COND))):
        assert torch.equal(u.text, texts["null"].expand(2, -1, -1))
        assert torch.equal(c.text[0], per_step[i][0]) and torch.equal(c.text[1], prompts[1]) and c.value_is_text


def test_npi_feeds_the_source_prompt_and_its_pooled_embedding_to_the_unconditional_branch(tiny, texts):
    """Negative-prompt inversion (Miyake et al.): nothing optimised; the unconditional branch reads the source
    prompt's embedding (and SDXL's pooled embedding of it), the conditional branch the prompts."""
    prompts = torch.cat([texts["src"], texts["tgt"]])
    pooled_src, pooled = torch.randn(1, 6), torch.randn(2, 6)
    trace = _trace(3)
    inv, log = NegativePromptInversion.fit(tiny, trace, texts["src"], texts["null"], None, make_schedule(3),
                                           TrainSettings())
    assert log is None and inv.z_T is not None and torch.equal(inv.z_T, trace.latents[-1])
    assert set(inv.tensors()) == {"z_T"}
    inv = NegativePromptInversion(trace.latents[-1], texts["null"], texts["src"], pooled_src)
    rec = _sampled(tiny, inv, prompts, pooled)
    for u, c in zip(rec.of(Branch.UNCOND), rec.of(Branch.COND)):
        assert torch.equal(u.text, texts["src"].expand(2, -1, -1)) and torch.equal(u.pooled, pooled_src.expand(2, -1))
        assert torch.equal(c.text, prompts) and torch.equal(c.pooled, pooled)
    assert torch.equal(inv.tensors()["source_pooled"], pooled_src)


def test_ddim_inversion_optimises_nothing_and_feeds_the_null_embedding(tiny, texts):
    prompts = torch.cat([texts["src"], texts["tgt"]])
    trace = _trace(3)
    inv, log = DDIMInversion.fit(tiny, trace, texts["src"], texts["null"], None, make_schedule(3), TrainSettings())
    assert log is None and torch.equal(inv.z_T, trace.latents[-1]) and set(inv.tensors()) == {"z_T"}
    rec = _sampled(tiny, inv, prompts)
    for u, c in zip(rec.of(Branch.UNCOND), rec.of(Branch.COND)):
        assert torch.equal(u.text, texts["null"].expand(2, -1, -1)) and u.pooled is None
        assert torch.equal(c.text, prompts) and c.value_is_text


# ---------------------------------------------------------------------------------------------------------------
# StyleDiffusion training: what has a gradient, which branch reads it


def test_stylediffusion_training_optimises_M_t_only_through_the_conditional_value_path(tiny, texts, sd_step):
    """Per step: eps_u once without gradient (null text, no value input); each inner iteration the conditional
    branch with keys from the prompt (no gradient) and values from M_i(E(x)) ⊙ c + b (with gradient); the
    prompt, null and image features never get a gradient; M_i is left frozen after training."""
    schedule, names, trace, features, _, _ = sd_step
    seen = []
    real = tiny.predict

    def predict(z, t, text, call, pooled=None):
        v = call.value_states
        seen.append((call.step, call.branch, text.requires_grad, None if v is None else v.requires_grad,
                     call.controller is not None))
        return real(z, t, text, call, pooled)

    m = copy.copy(tiny)
    m.eps = m.predict = predict
    settings = TrainSettings(num_inner_steps=1, early_stop=False)
    mapping, _ = training.train_mapping(m, trace, texts["src"], texts["null"], features, schedule, settings,
                                        progress=False)
    assert [s[0] for s in seen] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for i in range(4):
        step = [s for s in seen if s[0] == i]
        assert step[0] == (i, Branch.UNCOND, False, None, False)
        assert step[1] == (i, Branch.COND, False, True, True)  # the inner iteration: maps recorded, gradient
        assert step[2] == (i, Branch.COND, False, False, False)  # advancing the latent
    assert not any(p.requires_grad for p in mapping.parameters())
    assert not texts["src"].requires_grad and not features.requires_grad


def _kv_grad(tiny, text: torch.Tensor, value: torch.Tensor | None) -> dict[str, tuple[bool, bool]]:
    """Per cross-attention layer: whether the inputs of to_k and to_v carry a gradient in one conditional call."""
    seen: dict[str, list[bool]] = {}
    hooks = []
    for name, module in tiny.unet.named_modules():
        if name.endswith("attn2.to_k") or name.endswith("attn2.to_v"):
            hooks.append(module.register_forward_pre_hook(
                lambda mod, args, name=name: seen.setdefault(name.rsplit(".", 1)[0], []).append(args[0].requires_grad)))
    try:
        with style_processors(tiny.unet):
            tiny.predict(torch.zeros(1, 4, tiny.latent_size, tiny.latent_size), 501, text,
                         AttnCall(0, Branch.COND, value_states=value))
    finally:
        for h in hooks:
            h.remove()
    return {k: tuple(v) for k, v in seen.items()}


def test_textinv_trains_keys_and_values_stylediffusion_values_only(tiny, texts, sd_step):
    """In every cross-attention layer of the UNet: text-embedding inversion's learned embedding reaches to_k and to_v
    (keys and values); StyleDiffusion's M_t reaches to_v only, the keys read the fixed prompt (docs/method.md §3)."""
    learned = texts["src"].clone().requires_grad_(True)
    both = _kv_grad(tiny, learned, None)
    assert len(both) == sum(l.is_cross for l in tiny.layers()) and set(both.values()) == {(True, True)}
    features, mapping = sd_step[3], sd_step[4]
    values_only = _kv_grad(tiny, texts["src"], mapping.value_input(0, features, texts["src"]))
    assert set(values_only) == set(both) and set(values_only.values()) == {(False, True)}
