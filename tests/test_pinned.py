"""Behaviour pinned exactly: the UNet calls of inversion, sampling and training, LocalBlend's mask, the P2Plus
injection windows, reweighting, Refinement and per-word tau_c (each test can fail on one small planted bug;
``scripts/mutation_check.py`` plants them)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from sdtoolkit.control.controllers import AttentionStore, LocalBlend, P2PController, get_equalizer
from sdtoolkit.core.attention import AttnCall, Branch, LayerInfo
from sdtoolkit.core.ddim import make_schedule
from sdtoolkit.core.mapping import MappingNetworks
from sdtoolkit.core.settings import AttnPairing, EditConfig, EditType, Taus, TrainSettings
from sdtoolkit.core.words import find_word_tokens
from sdtoolkit.jobs.edit import build_controller
from sdtoolkit.methods import training
from sdtoolkit.methods.inversions import (DDIMInversion, NullTextInversion, StyleDiffusionInversion,
                                          ddim_inversion)
from sdtoolkit.methods.sampler import sample

T = 30
SOURCE = "a cat sitting on a rug"
TARGET = "a tiger sitting on a rug"


# ---------------------------------------------------------------------------------------------------------------
# A stub noise predictor that records every call


@dataclass
class Recorder:
    """Every UNet call: (step, timestep, branch), the text and the value-path input it got."""

    calls: list[tuple[int, int, Branch]] = field(default_factory=list)
    texts: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor | None] = field(default_factory=list)


def stub_eps(z: torch.Tensor, t: int, text: torch.Tensor) -> torch.Tensor:
    """A cheap deterministic eps that depends on the latent, the timestep and the text (per batch element; the
    first tokens' first features: a layer-normed embedding's mean is ~0 for every prompt)."""
    return 0.1 * z + 1e-3 * t + text.float()[:, :4, :4].sum(dim=(1, 2)).view(-1, 1, 1, 1)


def stubbed(models, recorder: Recorder):
    """A copy of ``models`` whose ``eps`` is :func:`stub_eps`, recording each call."""
    m = copy.copy(models)

    def eps(z, t, text, call: AttnCall, pooled=None):
        recorder.calls.append((call.step, int(t), call.branch))
        recorder.texts.append(text.detach().clone())
        recorder.values.append(None if call.value_states is None else call.value_states.detach().clone())
        return stub_eps(z, t, text)

    m.eps = m.predict = eps  # the noise prediction under both of its names (eps, predict)
    return m


def _ddim(z: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float) -> torch.Tensor:
    """One DDIM move written out by hand (eq. 12, eta 0) — independent of sdtoolkit.core.ddim."""
    x0 = (z - (1 - a_from) ** 0.5 * eps) / a_from**0.5
    return a_to**0.5 * x0 + (1 - a_to) ** 0.5 * eps


@pytest.fixture(scope="module")
def texts(tiny) -> dict[str, torch.Tensor]:
    return {"src": tiny.encode_text([SOURCE]).float(), "tgt": tiny.encode_text([TARGET]).float(),
            "null": tiny.encode_text([""]).float()}


def test_ddim_inversion_calls_the_unet_at_each_steps_timestep_in_reverse_order(tiny, texts):
    """Reference ddim_loop: for i = T-1 … 0, eps(z, timesteps[i], source prompt), then next_step."""
    rec = Recorder()
    schedule = make_schedule(T)
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    trace = ddim_inversion(stubbed(tiny, rec), z0, texts["src"], schedule)
    assert rec.calls == [(i, schedule.timesteps[i], Branch.COND) for i in reversed(range(T))]
    assert all(torch.equal(t, texts["src"]) for t in rec.texts)
    z = z0
    for k, i in enumerate(reversed(range(T))):
        z = _ddim(z, stub_eps(z, schedule.timesteps[i], texts["src"]), schedule.alpha_prev[i], schedule.alpha_t[i])
        torch.testing.assert_close(trace.latents[k + 1], z, rtol=1e-5, atol=1e-5)
    assert len(trace.latents) == T + 1


def test_sampling_calls_uncond_then_cond_per_step_and_guides_with_plus_w(tiny, texts):
    """Sampling step i: eps_u at timesteps[i] (null text), eps_c at timesteps[i] (prompts), eps_u + 7.5 (eps_c - eps_u)."""
    rec = Recorder()
    schedule = make_schedule(T)
    z_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    prompts = torch.cat([texts["src"], texts["tgt"]])
    z = sample(stubbed(tiny, rec), schedule, DDIMInversion(z_T, texts["null"]), prompts, guidance_scale=7.5)
    gap = stub_eps(z_T, 0, prompts) - stub_eps(z_T, 0, texts["null"].expand(2, -1, -1))
    assert gap.abs().min() > 0.05  # the branches differ: the guidance formula is visible in z
    expected = []
    for i in range(T):
        expected += [(i, schedule.timesteps[i], Branch.UNCOND), (i, schedule.timesteps[i], Branch.COND)]
    assert rec.calls == expected
    want = z_T.expand(2, -1, -1, -1)
    null2 = texts["null"].expand(2, -1, -1)
    for i in range(T):
        t = schedule.timesteps[i]
        e_u, e_c = stub_eps(want, t, null2), stub_eps(want, t, prompts)
        want = _ddim(want, e_u + 7.5 * (e_c - e_u), schedule.alpha_t[i], schedule.alpha_prev[i])
    torch.testing.assert_close(z, want, rtol=1e-5, atol=1e-5)


def test_null_text_sampling_reads_step_is_own_embedding(tiny, texts):
    rec = Recorder()
    schedule = make_schedule(5)
    per_step = torch.randn(5, 1, *texts["null"].shape[1:], generator=torch.Generator().manual_seed(2))
    inv = NullTextInversion(torch.zeros(1, 4, 8, 8), texts["null"], per_step)
    sample(stubbed(tiny, rec), schedule, inv, texts["src"], guidance_scale=7.5)
    uncond = [text for (step, _, branch), text in zip(rec.calls, rec.texts) if branch is Branch.UNCOND]
    assert len(uncond) == 5
    for i, text in enumerate(uncond):
        assert torch.equal(text, per_step[i]), i


def test_stylediffusion_sampling_feeds_M_i_of_step_i_to_the_value_path(tiny, texts):
    """Step i's conditional branch reads M_i(E(x)) applied to the prompt embedding (scale · text + shift)."""
    rec = Recorder()
    num = 4
    torch.manual_seed(3)
    mapping = MappingNetworks(num, 5, tiny.max_length)  # each M_i randomly initialised: distinct per step
    features = torch.randn(1, 5, texts["src"].shape[-1])
    inv = StyleDiffusionInversion(torch.zeros(1, 4, 8, 8), texts["null"], mapping, features)
    prompts = torch.cat([texts["src"], texts["tgt"]])
    sample(stubbed(tiny, rec), make_schedule(num), inv, prompts, lambda i: [True, i < 2], guidance_scale=7.5)
    cond = [v for (step, _, branch), v in zip(rec.calls, rec.values) if branch is Branch.COND]
    for i, value in enumerate(cond):
        with torch.no_grad():
            scale, shift = mapping.nets[i](features)
        torch.testing.assert_close(value[0], prompts[0] * scale[0] + shift[0], rtol=0, atol=0)
        if i < 2:
            torch.testing.assert_close(value[1], prompts[1] * scale[0] + shift[0], rtol=0, atol=0)
        else:
            assert torch.equal(value[1], prompts[1])


# ---------------------------------------------------------------------------------------------------------------
# Training: the calls of one step and the attention-map pairing


@pytest.fixture(scope="module")
def small_trace(tiny, texts):
    """DDIM inversion of a random latent over 4 steps, maps recorded."""
    schedule = make_schedule(4)
    z0 = torch.randn(1, 4, tiny.latent_size, tiny.latent_size, generator=torch.Generator().manual_seed(4))
    names = StyleDiffusionInversion.recorded_maps(tiny, TrainSettings())
    return schedule, ddim_inversion(tiny, z0, texts["src"], schedule, names)


def _recording(models, rec: Recorder):
    m = copy.copy(models)
    real = getattr(models, "predict", None) or models.eps

    def eps(z, t, text, call, pooled=None):
        rec.calls.append((call.step, int(t), call.branch))
        rec.values.append(None if call.value_states is None else call.value_states.detach().clone())
        return real(z, t, text, call, pooled)

    m.eps = m.predict = eps
    return m


@pytest.mark.parametrize("pairing", [AttnPairing.SAME, AttnPairing.REFERENCE])
def test_training_step_calls_and_map_pairing(tiny, texts, small_trace, monkeypatch, pairing):
    """Per step i: eps_u once (timesteps[i]), the inner iterations' eps_c, one eps_c with the trained M_i; the loss
    compares with the inversion maps of step i (same) or max(i-1, 0) (the reference's shifted list)."""
    schedule, trace = small_trace
    rec, seen = Recorder(), []
    loss = training.stylediffusion_loss

    def spy(models, schedule, mapping, i, z, eps_u, target, gt_maps, *args):
        seen.append((i, next(k for k, m in enumerate(trace.maps) if m is gt_maps),
                     next(k for k, l in enumerate(trace.latents) if l is target)))
        return loss(models, schedule, mapping, i, z, eps_u, target, gt_maps, *args)

    monkeypatch.setattr(training, "stylediffusion_loss", spy)
    settings = TrainSettings(num_inner_steps=2, early_stop=False, attn_pairing=pairing)
    features = tiny.image_features(torch.zeros(1, 3, tiny.image_size, tiny.image_size))
    mapping, log = training.train_mapping(_recording(tiny, rec), trace, texts["src"], texts["null"], features,
                                          schedule, settings, progress=False)
    assert log.iterations == [2, 2, 2, 2]
    expected = []
    for i, t in enumerate(schedule.timesteps):
        expected += [(i, t, Branch.UNCOND)] + [(i, t, Branch.COND)] * 3
    assert rec.calls == expected
    pair = (lambda i: max(i - 1, 0)) if pairing is AttnPairing.REFERENCE else (lambda i: i)
    assert [s[0] for s in seen] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [s[1] for s in seen] == [pair(i) for i in (0, 0, 1, 1, 2, 2, 3, 3)]
    assert [s[2] for s in seen] == [4 - i - 1 for i in (0, 0, 1, 1, 2, 2, 3, 3)]  # target z_{t-1} of the trace
    finals = [v for (step, _, b), v in zip(rec.calls, rec.values) if b is Branch.COND][2::3]
    for i, value in enumerate(finals):
        torch.testing.assert_close(value, mapping.value_input(i, features, texts["src"]), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# LocalBlend on a hand-made attention store

R = 8  # map side
SRC_TOKEN, TGT_TOKEN = 2, 3


def _layer(place: str) -> LayerInfo:
    return LayerInfo(f"{place}_blocks.1.attentions.0.transformer_blocks.0.attn2.processor", place, True, R)


def _hand_store() -> AttentionStore:
    """Prompt 0 (source word, token 2): peaks 1.0 at (1, 1), 0.4 at (6, 1), 0.2 at (3, 6); prompt 1 (target word,
    token 3): peak 1.0 at (5, 6). Every other token / pixel 0.01."""
    layers = [_layer("down"), _layer("up")]
    store = AttentionStore(layers)
    maps = torch.full((2, R, R, 77), 0.01)
    maps[0, 1, 1, SRC_TOKEN], maps[0, 6, 1, SRC_TOKEN], maps[0, 3, 6, SRC_TOKEN] = 1.0, 0.4, 0.2
    maps[1, 5, 6, TGT_TOKEN] = 1.0
    for l in layers:
        store.sums[l.name] = maps.reshape(2, R * R, 77).clone()
    store.steps.add(0)
    return store


def _block(mask: np.ndarray, r: int, c: int) -> None:
    mask[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = 1


def _expected_mask() -> torch.Tensor:
    """Union of the 3×3 blocks whose normalised peak is above 0.3 (the 0.2 peak is not), upsampled 8 → 16."""
    m = np.zeros((R, R), dtype=np.float32)
    for r, c in ((1, 1), (6, 1), (5, 6)):
        _block(m, r, c)
    return torch.from_numpy(np.kron(m, np.ones((2, 2), dtype=np.float32)))[None, None]


def _word_alphas() -> torch.Tensor:
    alphas = torch.zeros(2, 77)
    alphas[0, SRC_TOKEN] = alphas[1, TGT_TOKEN] = 1.0
    return alphas


def test_local_blend_mask_is_the_union_of_thresholded_3x3_blocks():
    """Reference LocalBlend: max-pool 3×3, resize, normalise by the max, > 0.3, union of the prompts' masks."""
    mask = LocalBlend(_word_alphas(), start_step=6).mask(_hand_store(), (16, 16))
    assert mask.shape == (1, 1, 16, 16)
    assert torch.equal(mask, _expected_mask()), mask[0, 0].int()


def test_local_blend_applies_from_the_start_step_on():
    blend = LocalBlend(_word_alphas(), start_step=6)
    store = _hand_store()
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    assert torch.equal(blend(z.clone(), 5, store), z)
    out = blend(z.clone(), 6, store)
    inside = _expected_mask()[0, 0].bool()
    assert torch.equal(out[0], z[0])
    assert torch.equal(out[1][:, ~inside], z[0][:, ~inside])
    torch.testing.assert_close(out[1][:, inside], z[1][:, inside], rtol=0, atol=1e-6)


def test_build_controller_blends_from_20_percent_with_threshold_0_3(tiny):
    edit = EditConfig(target=TARGET, blend_word=(("cat",), ("tiger",)))
    ctrl = build_controller(tiny, SOURCE, edit, T, Taus(0.5, 0.6, 0.6, 0.0))
    assert ctrl.local_blend.start_step == 6 and ctrl.local_blend.threshold == 0.3
    alphas = ctrl.local_blend.word_alphas
    assert alphas[0].nonzero().flatten().tolist() == [2] and alphas[1].nonzero().flatten().tolist() == [2]


# ---------------------------------------------------------------------------------------------------------------
# Injection windows, reweighting, Refinement, per-word tau_c (controller level, real layer list)


def _probs(shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).softmax(-1)


def _controller(tiny, **kwargs) -> P2PController:
    args = dict(tau_c=0.6, tau_s=0.6, tau_u=0.0)
    args.update(kwargs)
    return P2PController([SOURCE, kwargs.pop("target", TARGET)], tiny.tokenizer, T, tiny.layers(), tiny.latent_size,
                         **{k: v for k, v in args.items() if k != "target"})


@pytest.mark.parametrize("branch, kwargs, n", [(Branch.UNCOND, {"tau_u": 0.5}, 15), (Branch.COND, {"tau_s": 0.6}, 18),
                                               (Branch.UNCOND, {"tau_u": 0.0}, 0)])
def test_self_attention_is_replaced_in_the_first_int_tau_T_steps_only(tiny, branch, kwargs, n):
    """tau_u = .5 → unconditional self-attention of the target = the source's at steps 0 … 14 of 30, then its own
    (P2Plus); tau_s = .6 → conditional self-attention at steps 0 … 17. Layers with more than (latent/2)² queries
    are never replaced."""
    ctrl = _controller(tiny, **kwargs)
    selfs = [l for l in tiny.layers() if not l.is_cross]
    small = [l for l in selfs if l.resolution <= tiny.latent_size // 2]
    assert small and len(small) < len(selfs)
    for step in range(T):
        call = AttnCall(step, branch)
        for l in selfs:
            assert ctrl.wants_probs(l, call) == (l in small and step < n), (step, l.name)
        if step < n:
            probs = _probs((2, 2, small[0].resolution**2, small[0].resolution**2), step)
            out = ctrl.on_probs(probs, small[0], call)
            assert torch.equal(out[0], probs[0]) and torch.equal(out[1], probs[0])


def test_equalizer_scales_the_replaced_cross_attention_of_its_words(tiny):
    """Reweight (prompt-to-prompt AttentionReweight): target maps = mapped source maps × equalizer during tau_c."""
    edit = EditConfig(target=TARGET, eq_params=(("tiger",), (2.0,)))
    ctrl = build_controller(tiny, SOURCE, edit, T, Taus(0.5, 0.6, 0.6, 0.0))
    tok = tiny.tokenizer
    tiger = find_word_tokens(TARGET, "tiger", tok)
    assert tiger == [2]
    assert torch.equal(ctrl.equalizer, get_equalizer(TARGET, ("tiger",), (2.0,), tok))
    layer = next(l for l in tiny.layers() if l.is_cross)
    probs = _probs((2, 2, layer.resolution**2, 77), 7)
    out = ctrl.on_probs(probs, layer, AttnCall(0, Branch.COND))
    others = [k for k in range(77) if k != 2]
    torch.testing.assert_close(out[1][..., others], probs[0][..., others], rtol=0, atol=0)
    torch.testing.assert_close(out[1][..., 2], 2.0 * probs[0][..., 2], rtol=0, atol=0)
    late = ctrl.on_probs(probs, layer, AttnCall(25, Branch.COND))  # after tau_c: untouched
    assert torch.equal(late, probs)


def test_refinement_maps_aligned_tokens_and_keeps_inserted_words_own_maps(tiny):
    """Refinement (prompt-to-prompt AttentionRefine): target token k takes source token mapper[k] where alphas = 1;
    inserted words (alphas = 0) keep the target's own maps."""
    target = "a cat sitting on a red rug"
    ctrl = _controller(tiny, target=target, edit_type=EditType.REFINEMENT)
    mapper, alphas = ctrl.mapper[0], ctrl.alphas.flatten()
    red = find_word_tokens(target, "red", tiny.tokenizer)
    assert red == [6] and alphas[6] == 0 and alphas[:6].eq(1).all() and alphas[7:9].eq(1).all()
    assert mapper[:9].tolist() == [0, 1, 2, 3, 4, 5, -1, 6, 7]
    layer = next(l for l in tiny.layers() if l.is_cross)
    probs = _probs((2, 2, layer.resolution**2, 77), 8)
    out = ctrl.on_probs(probs, layer, AttnCall(3, Branch.COND))
    for k in range(77):
        if alphas[k] == 1:
            assert torch.equal(out[1][..., k], probs[0][..., mapper[k]]), k
        else:
            assert torch.equal(out[1][..., k], probs[1][..., k]), k


def test_tau_c_per_word_dict_as_in_prompt_to_prompt(tiny):
    """tau_c {"default_": .6, "tiger": .2}: rows int(f·(T+1)): "tiger" from the source at steps < 6, the other
    tokens at steps < 18; afterwards the target's own maps."""
    ctrl = _controller(tiny, tau_c={"default_": 0.6, "tiger": 0.2})
    layer = next(l for l in tiny.layers() if l.is_cross)
    probs = _probs((2, 2, layer.resolution**2, 77), 9)
    others = [k for k in range(77) if k != 2]
    for step in (0, 5, 6, 17, 18, 29):
        out = ctrl.on_probs(probs, layer, AttnCall(step, Branch.COND))
        tiger_from_source = step < 6
        others_from_source = step < 18
        assert torch.equal(out[1][..., 2], (probs[0] if tiger_from_source else probs[1])[..., 2]), step
        assert torch.equal(out[1][..., others], (probs[0] if others_from_source else probs[1])[..., others]), step


def test_replacement_reads_source_token_w_into_target_token_n_through_the_mapper(tiny):
    """Replacement (prompt-to-prompt AttentionReplace): target[..., n] = Σ_w source[..., w] · mapper[w, n]; with a
    multi-token target word ("tortoiseshell" = 4 tokens) the mapper is not symmetric, so its orientation matters."""
    source, target = "a cat on a mat", "a tortoiseshell on a mat"
    ctrl = P2PController([source, target], tiny.tokenizer, T, tiny.layers(), tiny.latent_size, tau_c=0.6)
    layer = next(l for l in tiny.layers() if l.is_cross)
    probs = _probs((2, 2, layer.resolution**2, 77), 10)
    out = ctrl.on_probs(probs, layer, AttnCall(0, Branch.COND))
    for n in (2, 3, 4, 5):  # each "tortoiseshell" token reads a quarter of "cat"'s map
        torch.testing.assert_close(out[1][..., n], 0.25 * probs[0][..., 2], rtol=1e-6, atol=1e-7)
    for n, w in ((6, 3), (7, 4), (8, 5), (9, 6), (1, 1), (0, 0)):
        torch.testing.assert_close(out[1][..., n], probs[0][..., w], rtol=1e-6, atol=1e-7)


def test_reference_timesteps_for_30_steps(tiny):
    """The reference's pipeline runs steps_offset 1: timesteps 958, 925, …, 1 for T = 30 (docs/method.md §1)."""
    assert tiny.schedule(T).timesteps == tuple(range(958, 0, -33))
    rec = Recorder()
    ddim_inversion(stubbed(tiny, rec), torch.zeros(1, 4, 8, 8), torch.zeros(1, 77, 8), tiny.schedule(T))
    assert [t for _, t, _ in rec.calls] == list(range(1, 959, 33))  # inversion: 1 first, 958 last


def test_local_blend_reads_the_edited_target_maps(tiny):
    """The reference's store keeps the tensor the edit then overwrites in place: during tau_c the target maps that
    LocalBlend averages are the edited ones (source maps through the mapper × equalizer), not the target's own."""
    edit = EditConfig(target=TARGET, blend_word=(("cat",), ("tiger",)), eq_params=(("tiger",), (2.0,)))
    ctrl = build_controller(tiny, SOURCE, edit, T, Taus(0.5, 0.6, 0.6, 0.0))
    layer = next(l for l in tiny.layers() if l.name in ctrl.store.layers)
    probs = _probs((2, 2, layer.resolution**2, 77), 11)
    out = ctrl.on_probs(probs, layer, AttnCall(0, Branch.COND))
    stored = ctrl.store.sums[layer.name]  # (2, Q, K): head means
    torch.testing.assert_close(stored, out.float().mean(dim=1), rtol=0, atol=0)
    torch.testing.assert_close(stored[1][..., 2], 2.0 * probs[0].mean(dim=0)[..., 2], rtol=1e-6, atol=1e-7)
