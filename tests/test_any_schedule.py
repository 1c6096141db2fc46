"""Every SDEScheduler solver on every diffusers VP schedule a user may bring, checked on the exact
Gaussian-mixture oracle; what a diffusers config may and may not carry; bounded error at small N."""

import math

import numpy as np
import pytest
import torch
import diffusers
from diffusers import DDPMScheduler

from hf_ddm.mixture import GaussianMixture, sliced_wasserstein
from hf_ddm.processes import DiscreteScheduleVP
from hf_ddm.schedulers.sde import SOLVERS, SDEScheduler
from hf_ddm.schedulers.ve import VEScheduler
from test_sched_sde import MEANS, N_SAMPLES, STEPS, WEIGHTS, run, std_err

DIFFUSERS_VP = ["DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
                "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
                "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler"]
BETA_SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2"]


def _sigmoid_betas(n=1000):
    """A schedule no preset gives: betas from a sigmoid, as some Hub models ship in ``trained_betas``."""
    x = np.linspace(-6, 6, n)
    return (1e-4 + (0.02 - 1e-4) / (1 + np.exp(-x))).tolist()


# name -> diffusers config keys of the schedule the "model" was trained with
SCHEDULES = {
    "linear": dict(beta_schedule="linear"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
    "trained_betas": dict(trained_betas=_sigmoid_betas()),
    "zero_snr": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True),
}


@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("name", DIFFUSERS_VP)
def test_from_config_of_every_diffusers_vp_scheduler_is_its_exact_schedule(name, schedule):
    cls = getattr(diffusers, name)
    theirs = cls(beta_schedule=schedule, prediction_type="v_prediction")
    ours = SDEScheduler.from_config(theirs.config)
    assert ours.is_discrete_schedule and ours.config.prediction_type == "v_prediction"
    n = theirs.config.num_train_timesteps
    a, s = ours.marginal(torch.arange(n, dtype=torch.float64))  # the model's own integer timesteps
    torch.testing.assert_close(a**2, theirs.alphas_cumprod.double(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(a**2 + s**2, torch.ones(n, dtype=torch.float64))
    assert ours.timestep_scale == n - 1  # the model is called at its train timestep


@pytest.fixture(scope="module")
def narrow():
    mix = GaussianMixture(MEANS, 0.05, WEIGHTS)
    ref = mix.sample(N_SAMPLES, torch.Generator().manual_seed(100))[0]
    others = [mix.sample(N_SAMPLES, torch.Generator().manual_seed(101 + k))[0] for k in range(3)]
    return mix, ref, max(sliced_wasserstein(o, ref) for o in others), max(std_err(mix, o, ref) for o in others)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_reproduces_the_data_on_every_schedule(narrow, solver, schedule, prediction_type):
    """The band is the one tests/test_sched_sde.py measures on the linear schedule, at the same steps."""
    mix, ref, floor_sw, floor_std = narrow
    config = DDPMScheduler(**SCHEDULES[schedule], prediction_type=prediction_type, clip_sample=False).config
    # hf_ddm's default grid, named: a diffusers config's own default is its timestep_spacing (img2img strength)
    sched = SDEScheduler.from_config(config, solver=solver, solver_order=3, time_grid="log_snr")
    x, calls = run(sched, mix, STEPS[solver])
    assert calls == sched.num_model_evaluations
    assert torch.isfinite(x).all()
    assert sliced_wasserstein(x, ref) < 1.5 * floor_sw + 0.02
    assert std_err(mix, x, ref) < 2.0 * floor_std + 0.05


def test_the_schedule_matters_sampling_a_cosine_model_on_the_linear_sde_collapses_modes(narrow):
    """What hf_ddm 0.1.0 did with a cosine config: score_sde's linear VP SDE, model called at t * 999."""
    mix, ref, floor_sw, floor_std = narrow
    cosine = SDEScheduler.from_config(DDPMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False).config,
                                      time_grid="log_snr")
    wrong = SDEScheduler(sde="vp", timestep_scale=999.0, solver="multistep")
    wrong.set_timesteps(30)
    model = mix.model(cosine.marginal, "epsilon")  # the network knows only its own (cosine) schedule
    x = torch.randn(N_SAMPLES, 2, generator=torch.Generator().manual_seed(0))
    for t in wrong.timesteps:
        x = wrong.step(model(x, t), t, x).prev_sample
    assert std_err(mix, x, ref) > 0.5  # the modes come out at about a third of their width
    right, _ = run(cosine, mix, 30)
    assert std_err(mix, right, ref) < 2.0 * floor_std + 0.05


def test_interpolated_process_is_exact_at_the_knots_and_invertible():
    p = DiscreteScheduleVP.from_schedule(beta_schedule="squaredcos_cap_v2")
    t = torch.rand(200, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(p.time_at_log_snr(p.log_snr(t)), t)
    # f and g^2 are the derivatives of the marginal: d log a/dt and d s^2/dt - 2 f s^2.
    h = 1e-7
    tt = torch.tensor(0.4321, dtype=torch.float64)
    f, g2 = p._derivatives(tt)
    (a1, s1), (a2, s2) = p.marginal(tt - h), p.marginal(tt + h)
    assert float(f) == pytest.approx(float((a2.log() - a1.log()) / (2 * h)), rel=1e-5)
    assert float(g2) == pytest.approx(float((s2**2 - s1**2) / (2 * h) - 2 * f * p.marginal(tt)[1] ** 2), rel=1e-5)


# --- what a config may carry ------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [
    ("variance_type", "learned_range"),
    ("timestep_type", "continuous"),
    ("use_flow_sigmas", True),
    ("prediction_type", "flow_prediction"),
    ("made_up_schedule_knob", 3),
    ("beta_schedule", "exp_whatever"),
])
def test_config_keys_that_cannot_be_honoured_raise_naming_the_key(key, value):
    config = {**DDPMScheduler().config, key: value}
    with pytest.raises(ValueError, match=key):
        SDEScheduler.from_config(config)


def test_clip_sample_is_honoured_not_dropped():
    sched = SDEScheduler.from_config(DDPMScheduler(clip_sample=True, clip_sample_range=0.5).config, solver="ode_euler")
    sched.set_timesteps(4)
    x = torch.full((2, 3), 0.1)
    out = sched.step(torch.full((2, 3), -50.0), sched.timesteps[-1], x)  # a wild epsilon at the last step
    assert out.pred_original_sample.abs().max() <= 0.5 + 1e-6
    assert out.prev_sample.abs().max() <= 0.5 + 1e-6  # the last step returns the clipped x0


def test_ve_from_a_vp_config_is_a_clear_error():
    with pytest.raises(ValueError, match="VP"):
        VEScheduler.from_config(DDPMScheduler().config)
    with pytest.raises(ValueError, match="VP"):
        VEScheduler.from_config(SDEScheduler().config)


def test_from_config_takes_a_saved_folder_and_numpy_integers(tmp_path):
    DDPMScheduler(beta_schedule="squaredcos_cap_v2").save_config(tmp_path / "ddpm")
    SDEScheduler(sde="subvp", solver="pc").save_config(tmp_path / "sde")
    from_ddpm = SDEScheduler.from_config(str(tmp_path / "ddpm"))
    assert from_ddpm.is_discrete_schedule and from_ddpm.config.beta_schedule == "squaredcos_cap_v2"
    own = SDEScheduler.from_config(tmp_path / "sde")
    assert own.config.sde == "subvp" and own.config.solver == "pc"
    for cls in (SDEScheduler, VEScheduler):
        sched = cls()
        sched.set_timesteps(np.int64(5))
        assert sched.num_inference_steps == 5
    with pytest.raises(ValueError, match="num_inference_steps"):
        SDEScheduler().set_timesteps(5.0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        SDEScheduler().set_timesteps(10**7)


def test_ve_with_one_step_starts_from_the_prior():
    sched = VEScheduler(sigma_max=50.0)
    sched.set_timesteps(1)
    assert int(sched.timesteps[0]) == sched.config.num_train_timesteps - 1
    assert sched.init_noise_sigma == pytest.approx(50.0)


# --- small step counts ----------------------------------------------------------------------------

# Sliced-Wasserstein bound by N, 1.5x the worst measured over these processes, solvers and both mode
# widths (at N=3 the SDE solvers on VE keep noise of the size of the first step: about 10x the data).
SMALL_N_SW = {3: 15.0, 5: 1.6, 10: 0.5}


@pytest.mark.parametrize("n", sorted(SMALL_N_SW))
@pytest.mark.parametrize("process", ["vp", "subvp", "ve", "cosine"])
def test_every_solver_is_bounded_at_small_step_counts(process, n):
    kw = dict(sde="vp", beta_schedule="squaredcos_cap_v2") if process == "cosine" else dict(sde=process)
    for width in (0.05, 0.35):
        mix = GaussianMixture(MEANS, width, WEIGHTS)
        ref = mix.sample(N_SAMPLES, torch.Generator().manual_seed(100))[0]
        for solver in SOLVERS:
            x, _ = run(SDEScheduler(solver=solver, solver_order=3, **kw), mix, n)
            assert torch.isfinite(x).all(), (solver, width)
            assert sliced_wasserstein(x, ref) < SMALL_N_SW[n], (solver, width)


@pytest.mark.parametrize("sde", ["vp", "subvp", "ve"])
def test_third_order_multistep_does_not_get_worse_with_more_steps_on_a_uniform_grid(sde):
    """0.1.0: sub-VP within-mode std error 246% / 429% / 37% at 10 / 20 / 50 steps (weights ~(11, -21, 11))."""
    mix = GaussianMixture(MEANS, 0.05, WEIGHTS)
    ref = mix.sample(N_SAMPLES, torch.Generator().manual_seed(100))[0]
    errs = [std_err(mix, run(SDEScheduler(sde=sde, solver="multistep", solver_order=3, time_grid="uniform"), mix, n)[0], ref)
            for n in (10, 20, 50)]
    assert errs[1] <= errs[0] + 0.25 and errs[2] <= errs[1] + 0.25
    assert errs[2] < 0.5
    assert math.isfinite(sum(errs))


def test_cosine_grid_starts_where_the_sample_stops_being_pure_noise(narrow):
    """log_snr_min: a cosine schedule reaches log-SNR -9 at its last timestep; a grid from there spends a third of
    its steps on pure noise (3M at 10 steps: within-mode std error 1.27). Linear-beta schedules are unchanged."""
    mix, ref, floor_sw, floor_std = narrow
    cosine = DDPMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False).config
    sched = SDEScheduler.from_config(cosine, solver="multistep", solver_order=3, time_grid="log_snr")
    sched.set_timesteps(10)
    assert float(sched.process.log_snr(sched.timestep_to_t(sched.timesteps[0]))) == pytest.approx(-5.1, abs=1e-4)  # float32 timesteps
    x, _ = run(sched, mix, 10)
    assert std_err(mix, x, ref) < 0.3
    unclipped = SDEScheduler.from_config(cosine, solver="multistep", solver_order=3, log_snr_min=None, time_grid="log_snr")
    assert std_err(mix, run(unclipped, mix, 10)[0], ref) > 2 * std_err(mix, x, ref)
    linear = SDEScheduler.from_config(DDPMScheduler().config, solver="multistep", time_grid="log_snr")
    linear.set_timesteps(10)
    assert float(linear.timesteps[0]) == pytest.approx(999.0)
