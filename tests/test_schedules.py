"""The inner-iteration schedules (docs/method.md §3, §3a) and the windowed optimisation loop that runs them."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from tqdm.auto import tqdm

from sdtoolkit.core.schedules import (
    FAST_FLOOR,
    FAST_PLATEAU,
    FAST_WARMUP,
    FAST_WINDOW,
    FAST_WINDOW_FIRST,
    StepPlan,
    early_stop_threshold,
    inner_steps,
    learning_rate,
    step_plan,
)
from sdtoolkit.core.mapping import MappingNetworks
from sdtoolkit.core.models import load_models
from sdtoolkit.core.settings import InvertConfig, Schedule
from sdtoolkit.jobs.invert import invert
from sdtoolkit.methods import training
from sdtoolkit.methods.sampler import NonFiniteError
from sdtoolkit.methods.training import optimise_step
from conftest import CAT

TOY_IMAGE = str(Path(__file__).resolve().parent.parent / "example_images" / "toy_red_circle.png")
PLATEAU_PIN, WINDOW_FIRST_PIN, WINDOW_PIN, WARMUP_PIN, FLOOR_PIN = 0.05, 5, 2, 2, 5
PIN_ITERATIONS = [12, 8, 4, 4, 4, 6, 6, 6, 6, 5]
PIN_MSE = 1.0469e-2


@pytest.fixture(scope="module")
def toy_models():
    return load_models("toy", device="cpu", dtype="fp32")


def test_reference_plan_is_the_published_schedule():
    """The reference's n_i = ceil(100 e^(-0.1 i)) (StyleDiffusion) / N every step (null-text), lr 0.01(1 - i/100),
    early stop under 1e-5 + i 2e-5, Adam anew each step."""
    for i in (0, 1, 29, 49):
        plan = step_plan(Schedule.REFERENCE, 100, i)
        assert plan.iterations == inner_steps(100, i)
        assert plan.lr == learning_rate(i)
        assert plan.stop_below == early_stop_threshold(i)
        assert plan.plateau is None and plan.warmup == 0
    assert step_plan(Schedule.REFERENCE, 10, 29, decaying=False).iterations == 10
    assert step_plan(Schedule.REFERENCE, 100, 3, early_stop=False).stop_below is None
    assert sum(step_plan(Schedule.REFERENCE, 100, i).iterations for i in range(50)) == 1071


def test_fast_plan_keeps_the_caps_and_adds_warmup_and_plateau():
    plan = step_plan(Schedule.FAST, 100, 4)
    assert plan.iterations == inner_steps(100, 4) and plan.lr == learning_rate(4)
    assert plan.warmup == FAST_WARMUP and plan.plateau == FAST_PLATEAU and plan.window == FAST_WINDOW
    assert plan.stop_below is None
    assert [plan.lr_at(j) / plan.lr for j in range(FAST_WARMUP + 1)] == pytest.approx(
        [(j + 1) / FAST_WARMUP for j in range(FAST_WARMUP)] + [1.0])
    first = step_plan(Schedule.FAST, 100, 0)  # step 0 starts from the text, no copy of a trained M: no warm-up
    assert first.warmup == 0 and first.window == FAST_WINDOW_FIRST


def test_fast_plan_pins_the_shipped_constants():
    """The constants chosen on the seed-0 toy scenes and reported on held-out ones (docs/backbones.md "Speed:
    schedules"), as literals: changing any of them must be a deliberate, re-measured change."""
    assert step_plan(Schedule.FAST, 100, 0) == StepPlan(100, 0.01, None, PLATEAU_PIN, WINDOW_FIRST_PIN, 0)
    assert step_plan(Schedule.FAST, 100, 45) == StepPlan(FLOOR_PIN, learning_rate(45), None, PLATEAU_PIN, WINDOW_PIN,
                                                         WARMUP_PIN)


def test_fast_schedule_on_one_toy_case_pins_iterations_and_latent_mse(toy_models, tmp_path):
    """The fast schedule's outcome on one fixed toy case (example_images/toy_red_circle.png, T = 10, N = 12):
    the iterations of every step exactly and the sidecar's latent MSE within 2 % (measured on this repository's
    CPU; a change of the plateau, the windows, the warm-up, the floor or M_0's start moves one or both)."""
    cfg = InvertConfig(prompt="a red circle on a green background", image_path=TOY_IMAGE, model="toy", index=1,
                       num_ddim_steps=10, num_inner_steps=12, schedule=Schedule.FAST, model_dir=str(tmp_path))
    sidecar = invert(toy_models, cfg, progress=False).sidecar
    assert sidecar["iterations_per_step"] == PIN_ITERATIONS
    assert sidecar["reconstruction"]["trained_latent_mse"] == pytest.approx(PIN_MSE, rel=0.02)


def test_fast_plan_runs_at_least_the_floor_from_step_1():
    """The published cap is 1-2 for steps 40-49 of T = 50; the fast schedule runs FAST_FLOOR there."""
    assert [step_plan(Schedule.REFERENCE, 100, i).iterations for i in (40, 47, 49)] == [2, 1, 1]
    assert [step_plan(Schedule.FAST, 100, i).iterations for i in (40, 47, 49)] == [FAST_FLOOR] * 3
    assert step_plan(Schedule.FAST, 100, 25).iterations == inner_steps(100, 25) > FAST_FLOOR
    assert step_plan(Schedule.FAST, 2, 0).iterations == 2  # step 0 keeps its cap


def test_light_plan_runs_the_published_caps_without_a_stop():
    """--schedule light (for stylediffusion_direct, docs/backbones.md): every step runs ⌈N·e^(−0.1 i)⌉ iterations at the
    published learning rate, no stop, no warm-up, no floor; N = 2 at T = 50 is 57 passes per image."""
    plans = [step_plan(Schedule.LIGHT, 2, i) for i in range(50)]
    assert [p.iterations for p in plans[:8]] == [2] * 7 + [1]
    assert sum(p.iterations for p in plans) == 57
    assert all(p.stop_below is None and p.plateau is None and p.warmup == 0 for p in plans)
    assert plans[5].lr == learning_rate(5) and plans[5].window == plans[5].iterations  # one host read per step


def test_stops_first_iteration_under_the_threshold():
    plan = StepPlan(20, 0.01, stop_below=0.5, plateau=None, window=5)
    losses = [1.0, 0.9, 0.8, 0.4, 0.3]
    assert plan.stops(losses, 0) == 4  # iteration 4 (1-based) is the first under 0.5
    assert plan.stops([1.0] * 5, 0) is None


def test_plateau_compares_the_best_of_the_last_window_with_the_best_before():
    plan = StepPlan(100, 0.01, stop_below=None, plateau=0.05, window=2)
    assert plan.stops([1.0, 0.9], 0) is None  # one window: nothing to compare
    assert plan.stops([1.0, 0.9, 0.8, 0.85], 2) is None  # 0.8 < 0.95 * 0.9
    assert plan.stops([1.0, 0.9, 0.8, 0.89], 2) is None  # the window's best counts, not its last loss
    assert plan.stops([1.0, 0.9, 0.88, 0.86], 2) == 4  # 0.86 > 0.95 * 0.9: plateau
    assert plan.stops([1.0, 0.9, 0.88], 2) is None  # only at window ends


def _quadratic_run(plan: StepPlan, target: torch.Tensor) -> tuple[torch.Tensor, int]:
    torch.manual_seed(0)
    w = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([w], lr=plan.lr)
    n = optimise_step(lambda: ((w - target) ** 2).mean(), opt, [w], plan, 0, tqdm(disable=True), 1, "the loss")
    return w.detach().clone(), n


def test_windowed_reference_stop_rewinds_to_the_per_iteration_result():
    """Reading the loss every 10 iterations gives the parameters and count of checking after every iteration."""
    target = torch.tensor([0.3, -0.2, 0.1])
    per_iter = StepPlan(100, 0.01, stop_below=2e-3, plateau=None, window=1)
    w1, n1 = _quadratic_run(per_iter, target)
    w10, n10 = _quadratic_run(dataclasses.replace(per_iter, window=10), target)
    assert 1 < n1 < 100 and n1 % 10 != 0  # the stop falls inside a window
    assert n10 == n1
    assert torch.equal(w10, w1)


def test_warmup_sets_the_learning_rate_of_each_iteration():
    plan = StepPlan(6, 0.02, stop_below=None, plateau=None, window=3, warmup=4)
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w], lr=plan.lr)
    seen = []
    optimise_step(lambda: (seen.append(opt.param_groups[0]["lr"]), (w - 1).pow(2).sum())[1], opt, [w], plan, 1,
                  tqdm(disable=True), 2, "the loss")
    assert seen == pytest.approx([0.005, 0.01, 0.015, 0.02, 0.02, 0.02])


def test_non_finite_loss_stops_naming_the_step():
    plan = StepPlan(10, 0.01, stop_below=None, plateau=None, window=5)
    w = torch.zeros(1, requires_grad=True)
    with pytest.raises(NonFiniteError, match="step 3"):
        optimise_step(lambda: (w * float("nan")).sum(), torch.optim.Adam([w]), [w], plan, 3, tqdm(disable=True),
                      4, "the loss")


def test_fast_schedule_names_its_own_file_and_command():
    ref = InvertConfig(prompt="a cat", image_path="x.png", model="tiny", index=1)
    fast = dataclasses.replace(ref, schedule=Schedule.FAST)
    assert ref.path().name == "model-inner100-epoch1-learnv-[1].safetensors"
    assert fast.path().name == "model-inner100-epoch1-learnv-fast-[1].safetensors"
    assert "--schedule fast" in fast.train_command() and "--schedule" not in ref.train_command()
    with pytest.raises(Exception, match="--schedule"):
        InvertConfig(prompt="a", image_path="x", model="tiny", schedule="quick")


def test_start_from_text_makes_M0_the_identity_on_the_text():
    nets = MappingNetworks(3, num_image_tokens=5, max_length=4, image_width=8, text_width=8)
    nets.start_from_text()
    text, feats = torch.randn(2, 4, 8), torch.randn(1, 5, 8)
    assert torch.equal(nets.value_input(0, feats, text), text)
    assert not torch.equal(nets.value_input(1, feats, text), text)  # only M_0; M_i copies M_{i-1} when trained


@pytest.mark.parametrize("schedule", list(Schedule))
def test_training_starts_M0_from_the_text_except_in_the_reference_schedule(tiny, tmp_path, monkeypatch, schedule):
    """The reference keeps M_0's default init (docs/method.md §3); fast and light start it as c̃ = c (§3a)."""
    first = {}

    def record(step_loss, optimizer, params, plan, i, *rest):
        if i == 0:
            first["weight"], first["bias"] = params[-2].detach().clone(), params[-1].detach().clone()
        return 0

    monkeypatch.setattr(training, "optimise_step", record)
    cfg = InvertConfig(prompt="a cat", image_path=CAT, model="tiny", index=1, num_ddim_steps=2, num_inner_steps=1,
                       schedule=schedule, model_dir=str(tmp_path))
    invert(tiny, cfg, progress=False)
    length = tiny.max_length
    starts = bool(first["weight"].eq(0).all() and first["bias"][:length].eq(1).all() and first["bias"][length:].eq(0).all())
    assert starts is (schedule is not Schedule.REFERENCE)
