"""hf_ddm.solver_registry: what each solver's definition says is what the schedulers do with it."""

import pytest
import torch

from hf_ddm.mixture import GaussianMixture
from hf_ddm.solver_registry import NAMES, SCHEDULER_KEYS, SOLVERS, for_config, names_in
from hf_ddm.schedulers.sde import SDEScheduler
from hf_ddm.schedulers.ve import VEScheduler
from hf_ddm.schedulers.vp import VPScheduler

MIX = GaussianMixture([[-1.0, -0.5], [1.0, -0.5], [0.0, 1.0]], 0.35, [0.5, 0.3, 0.2])
SCHEDULERS = {"SDEScheduler": SDEScheduler, "VPScheduler": VPScheduler, "VEScheduler": VEScheduler}


def sample(sched, seed, steps=4, eta=None):
    sched.set_timesteps(steps)
    model = MIX.model(sched.marginal, sched.config.prediction_type)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sched.init_noise_sigma
    g = torch.Generator().manual_seed(seed)
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x, generator=g, **({} if eta is None else {"eta": eta})).prev_sample
    return x, model.calls


@pytest.mark.parametrize("name", NAMES)
def test_model_calls_per_step_are_what_the_loop_makes(name):
    solver = SOLVERS[name]
    sched = SDEScheduler(solver=name, correct_steps=2)
    steps = 5
    _, calls = sample(sched, 0, steps)
    assert sched.order == solver.model_calls(sched.config)
    # every step makes `order` calls; the last one, into clean data, may save its second (Heun's corrector)
    assert (steps - 1) * sched.order < calls <= steps * sched.order


@pytest.mark.parametrize("name", NAMES)
def test_stochastic_means_the_noise_draw_changes_the_sample(name):
    a, _ = sample(SDEScheduler(solver=name), seed=1)
    b, _ = sample(SDEScheduler(solver=name), seed=2)
    assert (not torch.equal(a, b)) == SOLVERS[name].stochastic


@pytest.mark.parametrize("name", NAMES)
def test_eta_reaches_the_solvers_that_take_it_and_is_refused_by_the_others(name):
    if not SOLVERS[name].takes_eta:
        with pytest.raises(ValueError, match=f"eta=0.5 cannot be honoured.*{name}"):
            sample(SDEScheduler(solver=name), 0, eta=0.5)
        return
    a, _ = sample(SDEScheduler(solver=name), 1, eta=0.5)
    b, _ = sample(SDEScheduler(solver=name), 2, eta=0.5)
    assert not torch.equal(a, b)  # eta > 0 makes a deterministic solver draw noise


@pytest.mark.parametrize("scheduler", list(SCHEDULER_KEYS))
def test_each_scheduler_accepts_exactly_the_solvers_that_name_themselves_in_it(scheduler):
    key = SCHEDULER_KEYS[scheduler]
    for value in names_in(scheduler):
        sched = SCHEDULERS[scheduler](**{key: value})
        assert sched.solver is for_config(scheduler, value)
        assert sched.solver.processes  # every registered solver names the processes it runs on
    with pytest.raises(ValueError, match=f"{key} must be one of"):
        SCHEDULERS[scheduler](**{key: "no_such_solver"})


def test_the_discrete_schedulers_run_only_one_call_formulas():
    for scheduler in ("VPScheduler", "VEScheduler"):
        for value in names_in(scheduler):
            solver = for_config(scheduler, value)
            assert solver.rule is not None and solver.calls_per_step == 1 and not solver.correctors


def test_few_step_solvers_are_the_deterministic_one_call_history_solvers():
    """What the few-step benchmarks calibrate steps for comes from the table: every entry runs in an
    SDEScheduler with one model call per step and no noise, keeps a history (so beats DDIM at a handful of
    calls on the oracle), and the multistep solver appears at each order its variants name."""
    from hf_ddm.solver_registry import few_step_solvers

    found = few_step_solvers()
    assert {kw["solver"] for kw in found.values()} == {
        n for n, s in SOLVERS.items() if not s.stochastic and s.calls_per_step == 1 and s.state.endswith("history")}
    assert {"2M", "3M"} <= found.keys() and "ode_euler" not in {kw["solver"] for kw in found.values()}
    ref, _ = sample(SDEScheduler(solver="ode_euler"), 0, steps=200)
    ddim, _ = sample(SDEScheduler(solver="ode_euler"), 0, steps=5)
    for label, kw in found.items():
        x, calls = sample(SDEScheduler(**kw), 0, steps=5)
        y, _ = sample(SDEScheduler(**kw), 1, steps=5)
        assert calls == 5 and torch.equal(x, y), label
        assert (x - ref).norm() < 0.7 * (ddim - ref).norm(), label
