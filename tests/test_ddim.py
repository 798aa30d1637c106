"""DDIM arithmetic: agreement with the reference's timesteps and next_step, with diffusers' DDIMScheduler and
DDIMInverseScheduler for every prediction type, hand-worked values, and the training schedule numbers."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionPipeline

from sdtoolkit.core.ddim import (
    SCHEDULER_CONFIG,
    PredictionType,
    betas_alphas_cumprod,
    guided_eps,
    inversion_step,
    make_schedule,
    sample_step,
    schedule_from_config,
    split_prediction,
)
from sdtoolkit.core.schedules import early_stop_threshold, inner_steps, learning_rate
from sdtoolkit.core.tiny import build_tiny_models

REFERENCE_SCHEDULER_ARGS = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
)
"""The reference's ``DDIMScheduler(...)`` arguments (steps_offset left at diffusers' default 0)."""
PREDICTION_TYPES = [p.value for p in PredictionType]


def _tensors(seed: int, shape=(2, 4, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _scheduler(num_steps: int, prediction_type: str = "epsilon", inverse: bool = False):
    cls = DDIMInverseScheduler if inverse else DDIMScheduler
    scheduler = cls.from_config({**REFERENCE_SCHEDULER_ARGS, "steps_offset": 1, "prediction_type": prediction_type})
    scheduler.set_timesteps(num_steps)
    return scheduler


@pytest.fixture(scope="module")
def reference_pipeline_scheduler() -> tuple[int, DDIMScheduler]:
    """The reference's scheduler after ``StableDiffusionPipeline`` took it (tiny random components, offline),
    with the steps_offset it had before."""
    parts = build_tiny_models()
    scheduler = DDIMScheduler(**REFERENCE_SCHEDULER_ARGS)
    offset_before = scheduler.config.steps_offset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers' "steps_offset should be 1" deprecation
        pipe = StableDiffusionPipeline(
            vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], unet=parts["unet"],
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    return offset_before, pipe.scheduler


def test_stable_diffusion_pipeline_rewrites_reference_scheduler_to_steps_offset_1(reference_pipeline_scheduler):
    """Reference behaviour: the scheduler it builds has steps_offset 0, the pipeline runs it with 1."""
    offset_before, scheduler = reference_pipeline_scheduler
    assert offset_before == 0
    assert scheduler.config.steps_offset == 1


@pytest.mark.parametrize("num_steps", [30, 50])
def test_schedule_timesteps_equal_reference_pipeline(reference_pipeline_scheduler, num_steps):
    _, scheduler = reference_pipeline_scheduler
    scheduler.set_timesteps(num_steps)
    assert list(make_schedule(num_steps).timesteps) == scheduler.timesteps.tolist()


def test_reference_timesteps_hand_values():
    """Reference behaviour: T = 30 runs 958, 925, …, 1 (ratio 33, offset 1); T = 50 runs 981, 961, …, 1."""
    t30 = make_schedule(30).timesteps
    assert t30[:3] == (958, 925, 892) and t30[-1] == 1 and len(set(t30)) == 30
    t50 = make_schedule(50).timesteps
    assert t50[:2] == (981, 961) and t50[-1] == 1
    assert make_schedule(30, steps_offset=0).timesteps[-1] == 0  # the explicit parameter still reaches 0


@pytest.mark.parametrize("num_steps", [10, 30, 50])
def test_schedule_matches_diffusers_with_reference_settings(num_steps):
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    scheduler.set_timesteps(num_steps)
    schedule = make_schedule(num_steps)
    assert list(schedule.timesteps) == scheduler.timesteps.tolist() == list(_scheduler(num_steps).timesteps.tolist())
    assert schedule.num_steps == num_steps
    # set_alpha_to_one off: the last step lands on alpha_bar_0 (the reference's final_alpha_cumprod), not 1
    assert schedule.alpha_prev[-1] == pytest.approx(float(scheduler.final_alpha_cumprod))
    assert schedule.alpha_prev[-1] == pytest.approx(float(scheduler.alphas_cumprod[0]))
    assert schedule.alpha_prev[-1] < 1.0


def test_final_levels_hand_worked():
    """T = 30: the last sampling step (t = 1) goes alpha_bar_1 → alpha_bar_0, inversion's first the other way.

    beta_0 = 0.00085; beta_1 = (sqrt(0.00085) + (sqrt(0.012) - sqrt(0.00085)) / 999)^2 = 0.000854701;
    alpha_bar_0 = 0.99915, alpha_bar_1 = 0.99915 · (1 - 0.000854701) = 0.99829603.
    """
    s = make_schedule(30)
    assert s.alpha_prev[-1] == pytest.approx(0.99915, abs=1e-7)
    assert s.alpha_t[-1] == pytest.approx(0.99829603, abs=1e-7)
    assert s.alpha_prev[0] == pytest.approx(float(betas_alphas_cumprod()[925]))
    # eps = 0 makes a move a rescaling by sqrt(alpha_to / alpha_from): the first inversion step is no no-op
    z = torch.ones(1, 4, 2, 2)
    first = inversion_step(s, 29, z, torch.zeros_like(z))
    torch.testing.assert_close(first, torch.full_like(z, math.sqrt(1 - 0.000854701)), atol=1e-7, rtol=0)


def _reference_next_step(scheduler: DDIMScheduler, model_output, timestep: int, sample):
    """The reference's ``next_step`` (inversion), transcribed."""
    timestep, next_timestep = min(
        timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps, 999), timestep
    alpha_prod_t = scheduler.alphas_cumprod[timestep] if timestep >= 0 else scheduler.final_alpha_cumprod
    alpha_prod_t_next = scheduler.alphas_cumprod[next_timestep]
    beta_prod_t = 1 - alpha_prod_t
    next_original_sample = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
    next_sample_direction = (1 - alpha_prod_t_next) ** 0.5 * model_output
    return alpha_prod_t_next**0.5 * next_original_sample + next_sample_direction


@pytest.mark.parametrize("num_steps", [30, 50])
def test_inversion_step_equals_reference_next_step(reference_pipeline_scheduler, num_steps):
    """Reference behaviour: inversion runs timesteps 1, …, and its first step starts from final_alpha_cumprod."""
    _, scheduler = reference_pipeline_scheduler
    scheduler.set_timesteps(num_steps)
    schedule = make_schedule(num_steps)
    for i in reversed(range(num_steps)):
        t = int(scheduler.timesteps[i])
        z, eps = _tensors(i)
        torch.testing.assert_close(inversion_step(schedule, i, z, eps), _reference_next_step(scheduler, eps, t, z),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("num_steps", [10, 30, 50])
def test_sample_step_equals_diffusers_ddim_step(prediction_type, num_steps):
    scheduler = _scheduler(num_steps, prediction_type)
    schedule = make_schedule(num_steps, prediction_type=prediction_type)
    assert schedule.prediction_type is PredictionType(prediction_type)
    checked = []
    for i, t in enumerate(scheduler.timesteps):
        z, out = _tensors(1000 * num_steps + i)
        expected = scheduler.step(out, t, z, eta=0.0).prev_sample
        torch.testing.assert_close(sample_step(schedule, i, z, out), expected, atol=1e-5, rtol=1e-5)
        checked.append(int(t))
    assert checked == list(schedule.timesteps) and checked[-1] == 1  # every step, the final one included


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("num_steps", [10, 30, 50])
def test_inversion_step_equals_diffusers_ddim_inverse_step(prediction_type, num_steps):
    scheduler = _scheduler(num_steps, prediction_type, inverse=True)
    schedule = make_schedule(num_steps, prediction_type=prediction_type)
    assert scheduler.timesteps.tolist() == list(reversed(schedule.timesteps))
    for k, t in enumerate(scheduler.timesteps):
        i = num_steps - 1 - k
        z, out = _tensors(7 * num_steps + k)
        expected = scheduler.step(out, t, z).prev_sample
        torch.testing.assert_close(inversion_step(schedule, i, z, out), expected, atol=1e-5, rtol=1e-5)


def test_sample_step_chain_matches_diffusers_over_a_trajectory():
    """A whole T=30 trajectory with a fixed eps field stays on diffusers' trajectory."""
    scheduler = _scheduler(30)
    schedule = make_schedule(30)
    z_ours, eps = _tensors(7)
    z_ref = z_ours.clone()
    for i, t in enumerate(scheduler.timesteps):
        e = eps * (1 + 0.01 * i)
        z_ref = scheduler.step(e, t, z_ref, eta=0.0).prev_sample
        z_ours = sample_step(schedule, i, z_ours, e)
    torch.testing.assert_close(z_ours, z_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize("num_steps", [10, 30, 50])
def test_inversion_step_inverts_sample_step(prediction_type, num_steps):
    schedule = make_schedule(num_steps, prediction_type=prediction_type)
    for i in range(num_steps):
        z_prev, out = _tensors(i)
        z_t = inversion_step(schedule, i, z_prev, out)
        assert not torch.allclose(z_t, z_prev)  # with steps_offset 1 no step is a no-op
        torch.testing.assert_close(sample_step(schedule, i, z_t, out), z_prev, atol=1e-4, rtol=1e-4)
        z_t2, _ = _tensors(i + 100)
        torch.testing.assert_close(inversion_step(schedule, i, sample_step(schedule, i, z_t2, out), out), z_t2,
                                   atol=1e-4, rtol=1e-4)


def test_split_prediction_hand_worked():
    """alpha = 0.64 (sqrt 0.8, sqrt(1 - alpha) 0.6), x0 = 1, eps = 2: z = 0.8 + 1.2 = 2, v = 0.8·2 - 0.6·1 = 1."""
    z = torch.tensor([2.0])
    for kind, out in (("epsilon", 2.0), ("sample", 1.0), ("v_prediction", 1.0)):
        eps, x0 = split_prediction(torch.tensor([out]), z, 0.64, PredictionType(kind))
        torch.testing.assert_close(eps, torch.tensor([2.0]))
        torch.testing.assert_close(x0, torch.tensor([1.0]))


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_split_prediction_recovers_eps_and_x0(prediction_type):
    x0, eps = _tensors(3)
    for alpha in (0.99915, 0.5, 0.0047):
        a, s = math.sqrt(alpha), math.sqrt(1 - alpha)
        z = a * x0 + s * eps
        out = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[prediction_type]
        got_eps, got_x0 = split_prediction(out, z, alpha, prediction_type)
        torch.testing.assert_close(got_eps, eps, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got_x0, x0, atol=1e-4, rtol=1e-4)


def test_guided_eps():
    u, c = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
    torch.testing.assert_close(guided_eps(u, c, 1.0), c)
    torch.testing.assert_close(guided_eps(u, c, 0.0), u)
    torch.testing.assert_close(guided_eps(u, c, 7.5), torch.tensor([16.0, 13.0]))


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_guidance_in_own_parameterisation_equals_guidance_on_eps(prediction_type):
    """diffusers guides the raw output; one guided step equals DDIMScheduler.step on it and equals guiding eps."""
    scheduler = _scheduler(30, prediction_type)
    schedule = make_schedule(30, prediction_type=prediction_type)
    eps_schedule = make_schedule(30)
    for i in (0, 15, 29):
        z, u = _tensors(i)
        _, c = _tensors(i + 50)
        guided = guided_eps(u, c, 7.5)
        got = sample_step(schedule, i, z, guided)
        torch.testing.assert_close(got, scheduler.step(guided, scheduler.timesteps[i], z).prev_sample,
                                   atol=1e-4, rtol=1e-4)
        eps_u = split_prediction(u, z, schedule.alpha_t[i], schedule.prediction_type)[0]
        eps_c = split_prediction(c, z, schedule.alpha_t[i], schedule.prediction_type)[0]
        torch.testing.assert_close(got, sample_step(eps_schedule, i, z, guided_eps(eps_u, eps_c, 7.5)),
                                   atol=1e-4, rtol=1e-4)


def test_schedule_from_config_defaults_to_reference():
    assert schedule_from_config(30) == make_schedule(30)
    assert schedule_from_config(30, {}) == make_schedule(30)


def test_schedule_from_config_reads_model_folder_settings():
    """An SD 2.1-style folder config (v-prediction, steps_offset 1, PNDM/DDIM extras) and a linear schedule."""
    sd21 = {"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
            "prediction_type": "v_prediction", "set_alpha_to_one": False, "skip_prk_steps": True,
            "steps_offset": 1, "trained_betas": None}
    s = schedule_from_config(50, sd21)
    assert s.prediction_type is PredictionType.V_PREDICTION
    assert s.timesteps == make_schedule(50).timesteps and s.alpha_t == make_schedule(50).alpha_t
    linear = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "num_train_timesteps": 500}
    s = schedule_from_config(25, linear)
    ref = DDIMScheduler.from_config({**linear, "steps_offset": 1, "set_alpha_to_one": False})
    ref.set_timesteps(25)
    assert list(s.timesteps) == ref.timesteps.tolist()
    assert s.alpha_t == pytest.approx([float(ref.alphas_cumprod[t]) for t in s.timesteps])


def test_schedule_from_config_steps_offset_0_becomes_1_as_in_the_pipeline():
    with pytest.warns(UserWarning, match="steps_offset 0"):
        s = schedule_from_config(30, {"steps_offset": 0})
    assert s.timesteps[-1] == 1


@pytest.mark.parametrize("config, bad", [
    ({"prediction_type": "flow"}, "flow"),
    ({"beta_schedule": "squaredcos_cap_v2"}, "squaredcos_cap_v2"),
    ({"trained_betas": [0.1] * 1000}, "trained_betas"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
])
def test_schedule_from_config_refuses_what_it_cannot_reproduce(config, bad):
    with pytest.raises(ValueError, match=bad):
        schedule_from_config(30, config)


def test_inner_steps_total_for_cli_default():
    assert sum(inner_steps(100, i) for i in range(30)) == 1015
    assert inner_steps(100, 0) == 100
    assert inner_steps(100, 1) == 91  # ceil(90.48)
    assert inner_steps(100, 29) == 6  # ceil(5.50)
    assert inner_steps(10, 29) == 1
    assert all(inner_steps(1, i) == 1 for i in range(50))


def test_learning_rate_and_early_stop_hand_values():
    assert learning_rate(0) == pytest.approx(0.01)
    assert learning_rate(10) == pytest.approx(0.009)
    assert learning_rate(29) == pytest.approx(0.0071)
    assert learning_rate(50) == pytest.approx(0.005)
    assert early_stop_threshold(0) == pytest.approx(1e-5)
    assert early_stop_threshold(1) == pytest.approx(3e-5)
    assert early_stop_threshold(10) == pytest.approx(2.1e-4)
    assert early_stop_threshold(29) == pytest.approx(5.9e-4)


def test_make_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_ddim_steps"):
        make_schedule(0)
    with pytest.raises(ValueError, match="num_ddim_steps"):
        make_schedule(1001)
    with pytest.raises(ValueError, match="steps_offset"):
        make_schedule(1000)  # offset 1 would need timestep 1000
    with pytest.raises(ValueError, match="steps_offset"):
        make_schedule(30, steps_offset=-1)
    with pytest.raises(ValueError, match="prediction_type 'v'"):
        make_schedule(30, prediction_type="v")
