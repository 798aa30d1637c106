"""P2Plus editing on the trained tiny model (T = 30 as trained): what each control does to the sampling."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from sdtoolkit.jobs import edit as jobs
import torch.nn.functional as F

from sdtoolkit.core.attention import AttnCall, Branch, LayerInfo, map_layers
from sdtoolkit.core.settings import EditConfig, Taus
from sdtoolkit.jobs.edit import build_controller, edit_latents
from sdtoolkit.jobs.invert import load_inversion, load_source
from sdtoolkit.core.words import find_word_tokens

T = 30
TARGET = "a tiger sitting on a rug"


@dataclass
class Setup:
    models: object
    cfg: object
    inv: object
    src_text: torch.Tensor
    tgt_text: torch.Tensor


@pytest.fixture(scope="module")
def setup(tiny, trained) -> Setup:
    assert trained.num_ddim_steps == T
    source = load_source(tiny, trained.image_path)
    null = tiny.encode_text([""]).float()
    src_text = tiny.encode_text([trained.prompt]).float()
    inv, _ = load_inversion(tiny, trained, source, src_text, null)
    return Setup(tiny, trained, inv, src_text, tiny.encode_text([TARGET]).float())


@dataclass
class Capture:
    """What a wrapped controller saw and returned during one edit."""

    uncond_self: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    cond_cross: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    mapped: dict[int, list[bool]] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    blend: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]] = field(default_factory=list)
    uncond_self_layers: set[str] = field(default_factory=set)


def _wrap(controller, capture: Capture, observe_uncond: bool = False) -> None:
    """Record the probabilities the controller returns; with ``observe_uncond`` also materialise the unconditional
    self-attention where the controller itself would not (to see the untouched maps)."""
    wants, on_probs = controller.wants_probs, controller.on_probs

    def wants_probs(layer: LayerInfo, call: AttnCall) -> bool:
        return wants(layer, call) or (observe_uncond and call.branch == Branch.UNCOND and not layer.is_cross)

    def on(probs: torch.Tensor, layer: LayerInfo, call: AttnCall) -> torch.Tensor:
        out = on_probs(probs, layer, call) if wants(layer, call) else probs
        if call.branch == Branch.UNCOND and not layer.is_cross:
            capture.uncond_self[(call.step, layer.name)] = out.detach().clone()
            capture.uncond_self_layers.add(layer.name)
        if call.branch == Branch.COND and layer.is_cross:
            capture.cond_cross[(call.step, layer.name)] = out.detach().clone()
        return out

    controller.wants_probs, controller.on_probs = wants_probs, on

    if controller.local_blend is not None:
        blend = controller.local_blend
        mask_fn, step_callback = blend.mask, controller.step_callback
        last: dict[str, torch.Tensor] = {}

        def mask(store, hw):
            last["mask"] = mask_fn(store, hw)
            return last["mask"]

        def callback(z: torch.Tensor, step: int) -> torch.Tensor:
            last.clear()
            before = z.clone()
            after = step_callback(z, step)
            capture.blend.append((step, before, after.clone(), last.get("mask")))
            return after

        blend.mask, controller.step_callback = mask, callback


def _run(setup: Setup, edit: EditConfig, taus: Taus, target_text: torch.Tensor, observe_uncond=False, threshold=None):
    capture = Capture()
    controller = build_controller(setup.models, setup.cfg.prompt, edit, T, taus)
    if threshold is not None:
        controller.local_blend.threshold = threshold
    _wrap(controller, capture, observe_uncond)
    value_states = setup.inv.value_states

    def recording(i, texts, mapped):
        capture.mapped[i] = list(mapped)
        out = value_states(i, texts, mapped)
        capture.values[i] = out.detach().clone()
        return out

    setup.inv.value_states = recording
    try:
        texts = torch.cat([setup.src_text, target_text])
        z = edit_latents(setup.models, setup.inv, setup.cfg.prompt, edit, taus, texts, T, 7.5, controller)
    finally:
        del setup.inv.value_states
    return z, capture


@pytest.fixture(scope="module")
def p2plus_run(setup):
    """Replacement cat → tiger with tau_v .5, tau_c .6, tau_s .6, tau_u 1."""
    edit = EditConfig(target=TARGET)
    return _run(setup, edit, Taus(0.5, 0.6, 0.6, 1.0), setup.tgt_text)


@pytest.fixture(scope="module")
def blend_run(setup):
    """Replacement cat → tiger with a local blend, tau_u 0 (unconditional self-attention observed, not edited).

    The random tiny model's attention is nearly uniform (normalised maps ≥ 0.87), so the reference threshold 0.3
    selects everything; 0.95 gives a partial mask and makes the outside-the-mask check meaningful.
    """
    edit = EditConfig(target=TARGET, blend_word=(("cat",), ("tiger",)))
    return _run(setup, edit, Taus(0.5, 0.6, 0.6, 0.0), setup.tgt_text, observe_uncond=True, threshold=0.95)


def test_identical_prompts_with_full_injection_reproduce_the_reconstruction(setup):
    edit = EditConfig(target=setup.cfg.prompt, tau_v=[1.0], tau_c=[1.0], tau_s=[1.0], tau_u=[1.0])
    texts = torch.cat([setup.src_text, setup.src_text])
    z = edit_latents(setup.models, setup.inv, setup.cfg.prompt, edit, Taus(1.0, 1.0, 1.0, 1.0), texts, T, 7.5)
    images = setup.models.decode_latent(z)  # (2, 3, H, W) in [0, 1]
    assert images.shape[0] == 2
    assert (images[0] - images[1]).abs().max().item() <= 1e-5


def test_local_blend_keeps_the_source_outside_the_mask(blend_run):
    _, capture = blend_run
    start = int(0.2 * T)
    steps = [step for step, *_ in capture.blend]
    assert steps == list(range(T))
    partial = 0
    for step, before, after, mask in capture.blend:
        if step < start:
            assert mask is None and torch.equal(after, before)  # no blending before 20 % of the steps
            continue
        assert mask is not None and mask.shape == (1, 1, 32, 32)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        outside = mask[0, 0] == 0
        assert torch.equal(after[0], before[0])  # the source is never changed
        assert torch.equal(after[1][:, outside], after[0][:, outside])
        # inside: the target's own latent (x_src + 1 · (x_tgt − x_src), equal up to rounding)
        torch.testing.assert_close(after[1][:, ~outside], before[1][:, ~outside], atol=1e-6, rtol=0)
        if 0 < mask.mean() < 1:
            partial += 1
            assert (before[1][:, outside] - before[0][:, outside]).abs().max() > 0  # blending did something
    assert partial >= (T - start) // 2


def test_tau_u_one_gives_target_the_source_unconditional_self_attention(p2plus_run, setup):
    _, capture = p2plus_run
    layers = setup.models.layers()
    expected = {l.name for l in layers if not l.is_cross and l.resolution <= setup.models.latent_size // 2}
    assert expected and capture.uncond_self_layers == expected
    assert {step for step, _ in capture.uncond_self} == set(range(T))
    for probs in capture.uncond_self.values():
        assert probs.shape[0] == 2
        assert torch.equal(probs[1], probs[0])


def test_tau_u_zero_leaves_target_unconditional_self_attention_alone(blend_run):
    _, capture = blend_run
    assert capture.uncond_self  # observed (materialised by the test's wrapper only)
    diffs = {step: max((p[1] - p[0]).abs().max().item() for (s, _), p in capture.uncond_self.items() if s == step)
             for step in range(T)}
    assert diffs[0] == 0.0  # both branches start from the same z_T
    assert all(diffs[step] > 1e-6 for step in range(1, T))


def test_replacement_cross_attention_follows_the_source_during_tau_c(p2plus_run, setup):
    _, capture = p2plus_run
    tok = setup.models.tokenizer
    cat = find_word_tokens(setup.cfg.prompt, "cat", tok)
    tiger = find_word_tokens(TARGET, "tiger", tok)
    assert cat == tiger == [2]
    unchanged = [0] + [p for p in range(1, 7) if p not in cat]  # BOS and "a … sitting on a rug"
    n_c = int(0.6 * (T + 1))  # prompt-to-prompt's rows: steps 0 … 17
    assert {step for step, _ in capture.cond_cross} == set(range(n_c))
    cross_layers = {l.name for l in setup.models.layers() if l.is_cross}
    assert {name for _, name in capture.cond_cross} == cross_layers
    for (step, name), probs in capture.cond_cross.items():
        src, tgt = probs[0], probs[1]
        assert torch.equal(tgt[..., unchanged], src[..., unchanged]), (step, name)
        assert torch.equal(tgt[..., tiger], src[..., cat]), (step, name)


def test_tau_v_switches_the_target_value_path(p2plus_run, setup):
    _, capture = p2plus_run
    n_v = int(0.5 * T)
    assert capture.mapped == {i: [True, i < n_v] for i in range(T)}
    for i, values in capture.values.items():
        scale, shift = setup.inv.scale_shift(i)
        torch.testing.assert_close(values[0], setup.src_text[0] * scale[0] + shift[0], atol=0, rtol=0)
        if i < n_v:
            torch.testing.assert_close(values[1], setup.tgt_text[0] * scale[0] + shift[0], atol=0, rtol=0)
        else:
            assert torch.equal(values[1], setup.tgt_text[0])


@pytest.mark.parametrize("tau_v, mapped_steps", [(0.0, 0), (0.2, 6), (0.5, 15), (0.55, 17), (0.6, 18), (0.8, 24),
                                                 (1.0, 30)])
def test_tau_v_maps_steps_below_T_tau_v_as_the_reference(monkeypatch, setup, tau_v, mapped_steps):
    """Reference behaviour: the value input is mapped while ``i < T·tau_v`` (float), so .55 × 30 → 17 steps."""
    seen = {}

    def fake_sample(models, schedule, inv, texts, mapped, guidance_scale, controller, **kwargs):
        seen.update({i: mapped(i) for i in range(schedule.num_steps)})
        return texts

    monkeypatch.setattr(jobs, "sample", fake_sample)
    edit = EditConfig(target=TARGET)
    texts = torch.cat([setup.src_text, setup.tgt_text])
    edit_latents(setup.models, setup.inv, setup.cfg.prompt, edit, Taus(tau_v, 0.6, 0.6, 0.0), texts, T, 7.5)
    assert seen == {i: [True, i < mapped_steps] for i in range(T)}


def test_local_blend_mask_is_built_from_the_edited_maps(setup):
    """Reference / prompt-to-prompt behaviour: the attention store keeps the tensor the edit then overwrites in
    place, so with cross-attention replacement active (tau_c = 1) the target's maps that LocalBlend averages are
    the source's maps through the aligner, times the equalizer — not the target's own maps."""
    edit = EditConfig(target=TARGET, blend_word=(("cat",), ("tiger",)), eq_params=(("tiger",), (2.0,)))
    _, capture = _run(setup, edit, Taus(0.5, 1.0, 0.6, 0.0), setup.tgt_text, threshold=0.95)
    tok = setup.models.tokenizer
    names = sorted(l.name for l in map_layers(setup.models.layers()))
    cat, tiger = find_word_tokens(setup.cfg.prompt, "cat", tok), find_word_tokens(TARGET, "tiger", tok)
    sums: dict[str, torch.Tensor] = {}
    checked = 0
    for step, _, _, mask in capture.blend:
        for name in names:
            edited = capture.cond_cross[(step, name)]  # (2, h, Q, K) as the controller returned them
            torch.testing.assert_close(edited[1][..., tiger], 2.0 * edited[0][..., cat])  # aligner × equalizer
            sums[name] = sums.get(name, 0) + edited.float().mean(dim=1)
        if mask is None:
            continue
        maps = torch.stack([sums[n] for n in names], dim=1).mean(dim=1)  # (2, Q, K): mean over layers
        words = torch.stack([maps[0][:, cat].sum(-1), maps[1][:, tiger].sum(-1)])  # (2, Q)
        res = int(words.shape[1] ** 0.5)
        words = F.max_pool2d(words.reshape(2, 1, res, res), 3, 1, 1)
        words = F.interpolate(words, size=mask.shape[2:])
        words = words / words.amax(dim=(2, 3), keepdim=True)
        expected = words.gt(0.95).any(dim=0, keepdim=True).float()
        assert torch.equal(mask, expected), step
        checked += 1
    assert checked == T - int(0.2 * T)


@pytest.mark.parametrize("tau, cross_steps, self_steps", [(0.5, 15, 15), (0.55, 17, 16), (0.6, 18, 18), (0.8, 24, 24),
                                                          (1.0, 30, 30), (0.2, 6, 6)])
def test_tau_c_tau_s_tau_u_step_counts_as_the_reference(setup, tau, cross_steps, self_steps):
    """Reference behaviour (as prompt-to-prompt): cross-attention is replaced at steps i < int(tau_c·(T+1))
    (``get_time_words_attention_alpha`` has T+1 rows), conditional / unconditional self-attention at steps
    i < int(T·tau_s) / int(T·tau_u). Unlike tau_v (float ``i < T·tau_v``): .55 gives 17 cross, 16 self steps."""
    edit = EditConfig(target=TARGET)
    controller = build_controller(setup.models, setup.cfg.prompt, edit, T, Taus(0.5, tau, tau, tau))
    assert [i for i in range(T) if controller.cross_active(i)] == list(range(cross_steps))
    layers = setup.models.layers()
    self_layer = next(l for l in layers if not l.is_cross and l.resolution <= setup.models.latent_size // 2)
    for branch in (Branch.COND, Branch.UNCOND):
        assert [i for i in range(T) if controller.wants_probs(self_layer, AttnCall(i, branch))] == list(range(self_steps))
