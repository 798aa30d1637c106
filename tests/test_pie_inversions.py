"""PIE-Bench's other inversions (docs/method.md §9) pinned exactly with a stub noise predictor: Direct Inversion's and
EDICT's source reconstruction equal the input latent, edit-friendly DDPM noise maps reproduce every inverted level,
the target branch of each is recomputed by hand; the pure pieces against diffusers and their own inverses; and each
method through ``stylediffusion.py`` (invert + edit) on the tiny model."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

from sdtoolkit.cli import flags as cli
from sdtoolkit.cli import stylediffusion
from sdtoolkit.core.attention import AttnCall, Branch
from sdtoolkit.core.ddim import (SCHEDULER_CONFIG, ddpm_mean, ddpm_sigma, ddpm_step, edict_mix, edict_unmix,
                                 make_schedule, proximal_delta, proximal_edit_mask, sample_step, undo_sample_step)
from sdtoolkit.core.mapping import MappingNetworks, sidecar_path
from sdtoolkit.core.settings import InversionMethod, TrainSettings
from sdtoolkit.methods.inversions import (DDIMInversion, DirectInversion, EdictInversion, EditFriendlyInversion,
                                          ProxNPIInversion, StyleDiffusionDirectInversion, StyleDiffusionInversion,
                                          ddim_inversion, method_class)
from sdtoolkit.jobs.pie_data import encode_mask
from sdtoolkit.methods.sampler import sample

SOURCE = "a cat sitting on a rug"
TARGET = "a tiger sitting on a rug"
REPO = Path(__file__).resolve().parent.parent
CAT = str(REPO / "example_images" / "cat.jpg")


def stub_eps(z: torch.Tensor, t: int, text: torch.Tensor) -> torch.Tensor:
    """A cheap deterministic eps of the latent, the timestep and the text (per batch element)."""
    return 0.1 * z + 1e-3 * t + text.float()[:, :4, :4].sum(dim=(1, 2)).view(-1, 1, 1, 1)


def stubbed(models, seen: list | None = None):
    """A copy of ``models`` whose noise prediction is :func:`stub_eps`; ``seen`` collects (step, branch, z)."""
    m = copy.copy(models)

    def eps(z, t, text, call: AttnCall, pooled=None):
        if seen is not None:
            seen.append((call.step, call.branch, z.detach().clone()))
        return stub_eps(z, t, text)

    m.eps = m.predict = eps
    return m


@pytest.fixture(scope="module")
def texts(tiny) -> dict[str, torch.Tensor]:
    return {"src": tiny.encode_text([SOURCE]).float(), "tgt": tiny.encode_text([TARGET]).float(),
            "null": tiny.encode_text([""]).float()}


def _z0(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def _fit(cls, tiny, texts, num: int, seed: int = 0, settings: TrainSettings = TrainSettings()):
    model = stubbed(tiny)
    schedule = make_schedule(num)
    trace = ddim_inversion(model, _z0(seed), texts["src"], schedule)
    inv, _ = cls.fit(model, trace, texts["src"], texts["null"], None, schedule, settings, progress=False)
    return model, schedule, trace, inv


def _pair(texts) -> torch.Tensor:
    return torch.cat([texts["src"], texts["tgt"]])


# ---------------------------------------------------------------------------------------------------------------
# Direct Inversion and StyleDiffusion + direct correction


def test_direct_inversion_source_branch_walks_the_inversion_path_and_ends_on_the_input_latent(tiny, texts):
    """Ju et al. 2023 (docs/method.md §9.1): the source latent after step i is the inversion latent of that level, so the source
    branch's UNet calls see z*_t and its result is z_0; the target branch is plain DDIM sampling (not corrected)."""
    num = 10
    _, schedule, trace, inv = _fit(DirectInversion, tiny, texts, num)
    seen: list = []
    z = sample(stubbed(tiny, seen), schedule, inv, _pair(texts), guidance_scale=7.5)
    torch.testing.assert_close(z[:1], trace.latents[0], rtol=0, atol=1e-6)
    for step, branch, latent in seen:
        torch.testing.assert_close(latent[0], trace.latents[num - step][0], rtol=0, atol=1e-6)
    plain = sample(stubbed(tiny), schedule, DDIMInversion(trace.latents[-1], texts["null"]), _pair(texts),
                   guidance_scale=7.5)
    assert (plain[0] - trace.latents[0][0]).abs().max() > 1e-2  # uncorrected, guidance 7.5 drifts
    # the target row is computed by hand: guided DDIM from z_T with the source row on the inversion path
    tgt, src = trace.latents[-1], trace.latents[-1]
    for i in range(num):
        t = schedule.timesteps[i]
        e_u, e_c = stub_eps(tgt, t, texts["null"]), stub_eps(tgt, t, texts["tgt"])
        tgt = sample_step(schedule, i, tgt, e_u + 7.5 * (e_c - e_u))
    torch.testing.assert_close(z[1:], tgt, rtol=1e-5, atol=1e-5)


def test_stylediffusion_direct_keeps_the_value_path_and_corrects_only_the_source(tiny, texts):
    """Our extension: M_i on the value path of both branches (target while tau_v), the source exact."""
    num = 4
    schedule = make_schedule(num)
    trace = ddim_inversion(stubbed(tiny), _z0(1), texts["src"], schedule)
    torch.manual_seed(3)
    mapping = MappingNetworks(num, 5, tiny.max_length)
    features = torch.randn(1, 5, texts["src"].shape[-1])
    plain = StyleDiffusionInversion(trace.latents[-1], texts["null"], mapping, features)
    direct = StyleDiffusionDirectInversion(trace.latents[-1], texts["null"], mapping, features)
    direct.latents = torch.cat(trace.latents)
    values: list = []

    def recording(models):
        m = copy.copy(models)

        def eps(z, t, text, call, pooled=None):
            values.append(call.value_states)
            return stub_eps(z, t, text) + (0.0 if call.value_states is None else 0.01 * call.value_states.mean())

        m.eps = m.predict = eps
        return m

    z = sample(recording(tiny), schedule, direct, _pair(texts), lambda i: [True, i < 2], guidance_scale=7.5)
    with_mapping = [v for v in values if v is not None]
    assert len(with_mapping) == num
    torch.testing.assert_close(z[:1], trace.latents[0], rtol=0, atol=1e-6)
    values.clear()
    ref = sample(recording(tiny), schedule, plain, _pair(texts), lambda i: [True, i < 2], guidance_scale=7.5)
    assert not torch.allclose(ref[:1], trace.latents[0], atol=1e-4)  # the random M_i do not reconstruct alone


def test_direct_inversion_sidecar_keeps_the_inversion_latents(tiny, texts):
    _, _, trace, inv = _fit(DirectInversion, tiny, texts, 5)
    saved = inv.tensors()
    assert saved["inversion_latents"].shape == (6, 4, 8, 8)
    back = DirectInversion.from_tensors(saved, texts["null"], texts["src"], 5)
    assert torch.equal(back.latents, torch.cat(trace.latents))
    with pytest.raises(RuntimeError, match="inversion_latents has 6 rows, expected 8"):
        DirectInversion.from_tensors(saved, texts["null"], texts["src"], 7)


# ---------------------------------------------------------------------------------------------------------------
# Edit-friendly DDPM inversion


def test_ddpm_step_equals_diffusers_ddim_step_with_eta_1_and_the_given_noise():
    """DDIM eq. 12 with sigma_t(eta = 1): ``DDIMScheduler.step(eta=1, variance_noise=noise)``."""
    num = 10
    schedule = make_schedule(num)
    ref = DDIMScheduler(**SCHEDULER_CONFIG)
    ref.set_timesteps(num)
    gen = torch.Generator().manual_seed(5)
    z, out, noise = (torch.randn(1, 4, 8, 8, generator=gen) for _ in range(3))
    for i in (0, 4, num - 1):
        want = ref.step(out, schedule.timesteps[i], z, eta=1.0, variance_noise=noise).prev_sample
        torch.testing.assert_close(ddpm_step(schedule, i, z, out, noise), want, rtol=1e-5, atol=1e-5)


def test_ddpm_mean_and_sigma_by_hand():
    schedule = make_schedule(10)
    a_t, a_p = schedule.alpha_t[3], schedule.alpha_prev[3]
    sigma = math.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
    assert ddpm_sigma(schedule, 3) == pytest.approx(sigma, rel=1e-12)
    z, eps = torch.full((1, 1), 0.7), torch.full((1, 1), -0.2)
    x0 = (0.7 - math.sqrt(1 - a_t) * -0.2) / math.sqrt(a_t)
    want = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p - sigma**2) * -0.2
    assert float(ddpm_mean(schedule, 3, z, eps)) == pytest.approx(want, rel=1e-5)


def test_edit_friendly_noise_maps_reproduce_every_inverted_level_and_the_input_latent(tiny, texts):
    """Huberman-Spiegelglas et al. 2023 (docs/method.md §9.2): x_t = sqrt(a) z_0 + sqrt(1 - a) n_t (independent n_t); the map
    z_t = (x_{t-1} - mu_t(x_t)) / sigma_t makes DDPM sampling from x at step ``skip`` pass through every x_t to z_0."""
    num = 10
    torch.manual_seed(7)
    model, schedule, trace, inv = _fit(EditFriendlyInversion, tiny, texts, num)
    skip = EditFriendlyInversion.skip(num)
    assert skip == 2 and inv.first_step == 2 and inv.noise_maps.shape == (num - skip, 4, 8, 8)
    torch.manual_seed(7)
    noises = torch.randn(num, 4, 8, 8)  # the same draws as the fit (seeded identically)
    xs = [trace.latents[0][0]] + [math.sqrt(schedule.alpha_t[num - k]) * trace.latents[0][0]
                                  + math.sqrt(1 - schedule.alpha_t[num - k]) * noises[k - 1] for k in range(1, num + 1)]
    torch.testing.assert_close(inv.x_start[0], xs[num - skip], rtol=1e-6, atol=1e-6)
    seen: list = []
    z = sample(stubbed(tiny, seen), schedule, inv, texts["src"], guidance_scale=7.5)
    torch.testing.assert_close(z[0], trace.latents[0][0], rtol=1e-5, atol=1e-5)
    assert [s for s, b, _ in seen] == [i for i in range(skip, num) for _ in (0, 1)]
    for step, _, latent in seen:
        torch.testing.assert_close(latent[0], xs[num - step], rtol=1e-5, atol=1e-5)


def test_edit_friendly_target_branch_samples_through_the_same_noise_maps_at_its_own_guidance(tiny, texts):
    """Editing: the source row at the published source guidance 1 (exact), the target row at the run's 7.5, both
    with the source's noise maps (recomputed by hand)."""
    num = 10
    torch.manual_seed(8)
    _, schedule, trace, inv = _fit(EditFriendlyInversion, tiny, texts, num)
    z = sample(stubbed(tiny), schedule, inv, _pair(texts), guidance_scale=7.5)
    torch.testing.assert_close(z[:1], trace.latents[0], rtol=1e-5, atol=1e-5)
    tgt = inv.x_start
    for i in range(inv.first_step, num):
        t = schedule.timesteps[i]
        e_u, e_c = stub_eps(tgt, t, texts["null"]), stub_eps(tgt, t, texts["tgt"])
        out = e_u + 7.5 * (e_c - e_u)
        tgt = ddpm_mean(schedule, i, tgt, out) + ddpm_sigma(schedule, i) * inv.noise_maps[i - inv.first_step]
    torch.testing.assert_close(z[1:], tgt, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# EDICT


def test_edict_mixing_layers_are_exact_inverses():
    gen = torch.Generator().manual_seed(9)
    x, y = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64)
    mx, my = edict_mix(x, y, 0.93)
    torch.testing.assert_close(mx, 0.93 * x + 0.07 * y)
    torch.testing.assert_close(my, 0.93 * y + 0.07 * mx)
    ux, uy = edict_unmix(mx, my, 0.93)
    torch.testing.assert_close(ux, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(uy, y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_undo_sample_step_inverts_sample_step_for_every_prediction_type(prediction_type):
    schedule = make_schedule(10, prediction_type=prediction_type)
    gen = torch.Generator().manual_seed(10)
    z, out = torch.randn(2, 1, 4, 8, 8, generator=gen, dtype=torch.float64)
    for i in (0, 5, 9):
        torch.testing.assert_close(undo_sample_step(schedule, i, sample_step(schedule, i, z, out), out), z,
                                   rtol=0, atol=1e-9)


def test_edict_inversion_reconstructs_the_input_latent_from_the_pair(tiny, texts):
    """Wallace et al. 2023: sampling the inverted pair with the source prompt at the inversion's guidance gives back
    z_0 in both sequences; the noisiest T - int(0.8 T) steps are skipped; 4 UNet passes per step."""
    num = 10
    settings = TrainSettings(guidance_scale=3.0)
    model, schedule, trace, inv = _fit(EdictInversion, tiny, texts, num, settings=settings)
    assert inv.first_step == 2 and inv.pair.shape == (2, 4, 8, 8)
    seen: list = []
    z = sample(stubbed(tiny, seen), schedule, inv, texts["src"], guidance_scale=3.0)
    torch.testing.assert_close(z, trace.latents[0], rtol=0, atol=1e-5)
    assert len(seen) == 4 * (num - 2)


def test_edict_sampling_step_by_hand_leapfrog_order_and_mixing(tiny, texts):
    """Step k = i - first_step: k even updates x from eps(y) then y from eps(x'); k odd the other way round; then
    the mixing layers with p = 0.93. The target row at the run's guidance, the source row at the inversion's."""
    num = 10
    _, schedule, _, inv = _fit(EdictInversion, tiny, texts, num, settings=TrainSettings(guidance_scale=3.0))
    prompts = _pair(texts)
    z = sample(stubbed(tiny), schedule, inv, prompts, guidance_scale=5.0)
    scales = torch.tensor([3.0, 5.0]).view(2, 1, 1, 1)

    def eps(v, i):
        t = schedule.timesteps[i]
        e_u, e_c = stub_eps(v, t, texts["null"].expand(2, -1, -1)), stub_eps(v, t, prompts)
        return e_u + scales * (e_c - e_u)

    x, y = inv.pair[:1].expand(2, -1, -1, -1), inv.pair[1:].expand(2, -1, -1, -1)
    for i in range(inv.first_step, num):
        if (i - inv.first_step) % 2 == 0:
            x = sample_step(schedule, i, x, eps(y, i))
            y = sample_step(schedule, i, y, eps(x, i))
        else:
            y = sample_step(schedule, i, y, eps(x, i))
            x = sample_step(schedule, i, x, eps(y, i))
        x = 0.93 * x + 0.07 * y
        y = 0.93 * y + 0.07 * x
    torch.testing.assert_close(z, x, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# ProxEdit on NPI


def test_proximal_delta_and_edit_mask_on_a_hand_example():
    """Quantile .75 of |delta| over the batch; delta - clamp(delta, -tau, tau); mask |delta'| > tau, dilated 3x3."""
    delta = torch.zeros(1, 1, 5, 5)
    delta[0, 0, 2, 2], delta[0, 0, 0, 0], delta[0, 0, 4, 4] = 3.0, -0.5, 1.2
    shrunk, tau = proximal_delta(delta, 0.75)
    assert tau == 0.0  # 22 of 25 entries are 0
    shrunk, tau = proximal_delta(delta, 0.9)
    assert tau == pytest.approx(0.6 * 0.5, rel=1e-6)  # sorted |delta|: 22 zeros, .5, 1.2, 3; position .9 · 24 = 21.6
    want = torch.zeros(1, 1, 5, 5)
    want[0, 0, 2, 2], want[0, 0, 0, 0], want[0, 0, 4, 4] = 2.7, -0.2, 0.9
    torch.testing.assert_close(shrunk, want)
    mask = proximal_edit_mask(shrunk, tau, 1)
    expected = torch.zeros(1, 1, 5, 5)
    expected[0, 0, 1:4, 1:4] = expected[0, 0, 3:5, 3:5] = 1.0  # 2.7 and 0.9 exceed tau, -0.2 does not
    assert torch.equal(mask, expected)


def test_proxnpi_step_thresholds_the_guidance_and_pulls_to_the_inversion_below_t_400(tiny, texts):
    num = 10
    _, schedule, trace, inv = _fit(ProxNPIInversion, tiny, texts, num)
    prompts = _pair(texts)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    model = stubbed(tiny)
    for i in (1, num - 2):  # t = 901 (no pull) and t = 101 (pull)
        t = schedule.timesteps[i]

        def predict(v):
            return stub_eps(v, t, texts["src"].expand(2, -1, -1)), stub_eps(v, t, prompts)

        got = inv.step(schedule, i, z, predict, 7.5)
        e_u, e_c = predict(z)
        delta = e_c - e_u
        assert torch.equal(delta[0], torch.zeros_like(delta[0]))  # NPI: the source's guidance difference is 0
        tau = float(delta.abs().quantile(0.75))
        shrunk = delta - delta.clamp(-tau, tau)
        want = sample_step(schedule, i, z, e_u + 7.5 * shrunk)
        if t < 400:
            keep = 1 - torch.nn.functional.max_pool2d((shrunk.abs() > tau).float(), 3, 1, 1)
            want = want - (want - trace.latents[num - 1 - i]) * keep
            assert keep[0].min() == 1.0  # the source row is pulled entirely onto the inversion latent
            torch.testing.assert_close(got[0], trace.latents[num - 1 - i][0], rtol=0, atol=1e-6)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert model is not None


# ---------------------------------------------------------------------------------------------------------------
# Registry and defaults


def test_registry_and_published_defaults():
    for method in (InversionMethod.DIRECT, InversionMethod.EDIT_FRIENDLY, InversionMethod.EDICT,
                   InversionMethod.PROXNPI, InversionMethod.STYLEDIFFUSION_DIRECT):
        assert method_class(method).name is method
    assert InversionMethod.DIRECT.default_ddim_steps == 50 and InversionMethod.EDICT.default_ddim_steps == 50
    assert InversionMethod.STYLEDIFFUSION_DIRECT.default_ddim_steps == 30
    assert EditFriendlyInversion.skip(50) == 12 and EditFriendlyInversion.source_guidance == 1.0
    assert EdictInversion.skip(50) == 10 and EdictInversion.mix == 0.93
    assert (ProxNPIInversion.quantile, ProxNPIInversion.recon_t, ProxNPIInversion.recon_lr) == (0.75, 400, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# End to end: stylediffusion.py --inversion X (invert, then edit) on the tiny model


@pytest.mark.parametrize("method", ["directinversion", "editfriendly", "edict", "proxnpi", "stylediffusion_direct"])
def test_cli_inverts_and_edits_with_each_method(tiny, tmp_path, monkeypatch, method):
    import sdtoolkit.core.models

    monkeypatch.setattr(sdtoolkit.core.models, "load_models", lambda model, *a, **k: tiny)
    monkeypatch.chdir(tmp_path)
    common = ["--index", "3", "--prompt", SOURCE, "--image_path", CAT, "--model", "tiny", "--num_ddim_steps", "5",
              "--num_inner_steps", "2", "--inversion", method, "--model_dir", "m"]
    assert cli.run_main(stylediffusion.main, [*common, "--is_train", "True"]) == 0
    learned = tmp_path / "m" / f"model_{method}" / f"model-inner2-epoch1-{method}-[3].safetensors"
    side = json.loads(sidecar_path(learned).read_text())
    assert side["inversion"] == method and side["num_ddim_steps"] == 5
    if method in ("directinversion", "editfriendly", "edict", "stylediffusion_direct"):  # exact source reconstruction
        assert side["reconstruction"]["trained_latent_mse"] < 1e-8, side["reconstruction"]
    edit = ["--is_train", "", "--target", TARGET, "--tau_v", "[.5,]", "--tau_c", "[.6,]", "--tau_s", "[.6,]",
            "--tau_u", "[.5,]", "--blend_word", "[('cat',), ('tiger',)]", "--outdir", "edits"]
    assert cli.run_main(stylediffusion.main, [*common, *edit]) == 0
    folder = tmp_path / "edits" / f"3 {TARGET}"
    assert (folder / "edited_img-tau_v0.5-tau_c0.6-tau_s0.6-tau_u0.5.png").is_file()


@pytest.mark.parametrize("method", ["directinversion", "editfriendly", "edict", "proxnpi", "stylediffusion_direct"])
def test_pie_bench_runs_each_method_with_its_published_guidance(tmp_path, method):
    """``pie_bench.py --method X`` writes the 4-panel output; EDICT runs at its published guidance 3 by default."""
    from sdtoolkit.cli.pie_bench import main

    data = tmp_path / "data"
    (data / "annotation_images" / "0_random").mkdir(parents=True)
    pixels = torch.randint(0, 256, (64, 64, 3), generator=torch.Generator().manual_seed(12), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(data / "annotation_images" / "0_random" / "000000000001.png")
    mask = np.zeros((64, 64), bool)
    mask[16:40, 20:44] = True
    (data / "mapping_file.json").write_text(json.dumps({"000000000001": {
        "image_path": "0_random/000000000001.png", "original_prompt": "a [cat] sitting on a mat",
        "editing_prompt": "a [dog] sitting on a mat", "editing_instruction": "Turn the cat into a dog",
        "editing_type_id": "1", "blended_word": "cat dog", "mask": encode_mask(mask)}}))
    out = tmp_path / "out"
    assert main(["--data_path", str(data), "--output_path", str(out), "--method", method, "--model", "tiny",
                 "--device", "cpu", "--num_ddim_steps", "5", "--num_inner_steps", "1"]) == 0
    folder = out / f"{method}+p2p"
    assert (folder / "annotation_images" / "0_random" / "000000000001.png").is_file()
    side = json.loads((folder / "cases" / "000000000001.json").read_text())
    assert side["settings"]["method"] == method
    assert side["settings"]["guidance_scale"] == (3.0 if method == "edict" else 7.5)
