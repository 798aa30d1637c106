"""DDIM arithmetic: agreement with diffusers' DDIMScheduler, exact inversion round trips, training schedule numbers."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from sdtoolkit.core.ddim import (
    SCHEDULER_CONFIG,
    early_stop_threshold,
    guided_eps,
    inner_steps,
    inversion_step,
    learning_rate,
    make_schedule,
    sample_step,
)


def _tensors(seed: int, shape=(2, 4, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize("num_steps", [10, 30, 50])
def test_schedule_timesteps_match_diffusers(num_steps):
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    scheduler.set_timesteps(num_steps)
    schedule = make_schedule(num_steps)
    assert list(schedule.timesteps) == scheduler.timesteps.tolist()
    assert schedule.num_steps == num_steps
    # set_alpha_to_one off: the last step lands on alpha_bar_0, not 1
    assert schedule.alpha_prev[-1] == pytest.approx(float(scheduler.alphas_cumprod[0]))
    assert schedule.alpha_prev[-1] < 1.0


@pytest.mark.parametrize("num_steps", [10, 30, 50])
def test_sample_step_equals_diffusers_ddim_step(num_steps):
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    scheduler.set_timesteps(num_steps)
    schedule = make_schedule(num_steps)
    checked = 0
    for i, t in enumerate(scheduler.timesteps):
        z, eps = _tensors(1000 * num_steps + i)
        expected = scheduler.step(eps, t, z, eta=0.0).prev_sample
        got = sample_step(schedule, i, z, eps)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        checked += 1
    assert checked == num_steps


def test_sample_step_chain_matches_diffusers_over_a_trajectory():
    """A whole T=30 trajectory with a fixed eps field stays on diffusers' trajectory."""
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    scheduler.set_timesteps(30)
    schedule = make_schedule(30)
    z_ours, eps = _tensors(7)
    z_ref = z_ours.clone()
    for i, t in enumerate(scheduler.timesteps):
        e = eps * (1 + 0.01 * i)
        z_ref = scheduler.step(e, t, z_ref, eta=0.0).prev_sample
        z_ours = sample_step(schedule, i, z_ours, e)
    torch.testing.assert_close(z_ours, z_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("num_steps", [10, 30, 50])
def test_inversion_step_inverts_sample_step(num_steps):
    schedule = make_schedule(num_steps)
    for i in range(num_steps):
        z_prev, eps = _tensors(i)
        z_t = inversion_step(schedule, i, z_prev, eps)
        if schedule.timesteps[i] > 0:  # the last step (t = 0) goes alpha_bar_0 → alpha_bar_0: a no-op
            assert not torch.allclose(z_t, z_prev)
        else:
            torch.testing.assert_close(z_t, z_prev)
        torch.testing.assert_close(sample_step(schedule, i, z_t, eps), z_prev, atol=1e-4, rtol=1e-4)
        z_t2, _ = _tensors(i + 100)
        torch.testing.assert_close(inversion_step(schedule, i, sample_step(schedule, i, z_t2, eps), eps), z_t2,
                                   atol=1e-4, rtol=1e-4)


def test_inversion_goes_to_noisier_level():
    """With eps = 0 a move is a pure rescaling by sqrt(alpha_to / alpha_from)."""
    schedule = make_schedule(30)
    z = torch.ones(1, 4, 2, 2)
    eps = torch.zeros_like(z)
    for i in range(30):
        up = inversion_step(schedule, i, z, eps)
        expected = math.sqrt(schedule.alpha_t[i] / schedule.alpha_prev[i])
        torch.testing.assert_close(up, torch.full_like(z, expected))
        assert expected < 1.0 or schedule.timesteps[i] == 0


def test_guided_eps():
    u, c = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
    torch.testing.assert_close(guided_eps(u, c, 1.0), c)
    torch.testing.assert_close(guided_eps(u, c, 0.0), u)
    torch.testing.assert_close(guided_eps(u, c, 7.5), torch.tensor([16.0, 13.0]))


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


def test_make_schedule_rejects_bad_step_counts():
    with pytest.raises(ValueError):
        make_schedule(0)
    with pytest.raises(ValueError):
        make_schedule(1001)
