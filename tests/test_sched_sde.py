"""SDEScheduler on the exact Gaussian-mixture oracle, plus the pitfalls of score_sde it must avoid."""

import math

import pytest
import torch

from hf_ddm.mixture import GaussianMixture, sliced_wasserstein
from hf_ddm.schedulers.sde import SDES, SOLVERS, SDEScheduler

MEANS = [[-1.0, -0.5], [1.0, -0.5], [0.0, 1.0]]
WEIGHTS = [0.5, 0.3, 0.2]
N_SAMPLES = 1000
# Steps per solver that put its discretisation error below the noise floor (first-order SDE
# solvers need many steps; they are first order in h).
STEPS = {"euler_maruyama": 150, "reverse_diffusion": 150, "ancestral": 100, "ode_euler": 60, "ode_heun": 25,
         "pc": 100, "multistep": 30, "multistep_sde": 30, "ipndm": 30}


def run(sched, mix, steps, n=N_SAMPLES, seed=0, dtype=torch.float32, generator=None, prediction_type=None):
    """The standard diffusers loop on the exact model; returns (samples, model calls)."""
    sched.set_timesteps(steps)
    model = mix.model(sched.marginal, prediction_type or sched.config.prediction_type)
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype) * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.step(model(sched.scale_model_input(x, t), t), t, x, generator=g).prev_sample
    return x, model.calls


def std_err(mix, x, ref):
    return float((mix.within_component_std(x) / mix.within_component_std(ref) - 1).abs().max())


@pytest.fixture(scope="module", params=[0.05, 0.35], ids=["narrow", "broad"])
def target(request):
    """Mixture, reference set and noise floors (two independent true sets of the same size)."""
    mix = GaussianMixture(MEANS, request.param, WEIGHTS)
    ref = mix.sample(N_SAMPLES, torch.Generator().manual_seed(100))[0]
    others = [mix.sample(N_SAMPLES, torch.Generator().manual_seed(101 + k))[0] for k in range(3)]
    floor_sw = max(sliced_wasserstein(o, ref) for o in others)
    floor_std = max(std_err(mix, o, ref) for o in others)
    return mix, ref, floor_sw, floor_std


@pytest.mark.parametrize("sde", SDES)
@pytest.mark.parametrize("solver", SOLVERS)
def test_reproduces_mixture(target, sde, solver):
    mix, ref, floor_sw, floor_std = target
    sched = SDEScheduler(sde=sde, solver=solver, solver_order=3)
    x, calls = run(sched, mix, STEPS[solver])
    assert calls == len(sched.timesteps) == sched.num_model_evaluations
    assert torch.isfinite(x).all()
    sw, se = sliced_wasserstein(x, ref), std_err(mix, x, ref)
    assert sw < 1.5 * floor_sw + 0.02
    assert se < 2.0 * floor_std + 0.05
    w_err = (mix.component_weights(x) - mix.weights).abs().max()
    assert w_err < 5 * math.sqrt(0.25 / N_SAMPLES)  # 5 sigma of the multinomial noise floor


@pytest.mark.parametrize("solver", ["multistep", "ipndm", "ode_heun", "ancestral", "reverse_diffusion"])
def test_error_falls_with_steps(solver):
    mix = GaussianMixture(MEANS, 0.05, WEIGHTS)
    ref = mix.sample(N_SAMPLES, torch.Generator().manual_seed(100))[0]
    errs = [std_err(mix, run(SDEScheduler(sde="vp", solver=solver), mix, n)[0], ref) for n in (3, 8, 24)]
    assert errs[0] > errs[1] > errs[2] or errs[2] < 0.1 < errs[0], errs


def test_multistep_order1_is_ode_euler():
    """DDIM = Euler on the sigma-ODE = DPM-Solver++(1): the two code paths must agree."""
    mix = GaussianMixture(MEANS, 0.35, WEIGHTS)
    a, _ = run(SDEScheduler(solver="multistep", solver_order=1), mix, 8, n=64, dtype=torch.float64)
    b, _ = run(SDEScheduler(solver="ode_euler"), mix, 8, n=64, dtype=torch.float64)
    torch.testing.assert_close(a, b)


def test_ipndm_is_adams_bashforth_in_sigma():
    """iPNDM's update is y' = y + dsigma * sum c_k eps_k in y = x/a, sigma = s/a: its first step is DDIM's,
    and on equal sigma steps AB4 integrates a slope that is cubic in sigma exactly."""
    from hf_ddm.processes import Point
    from hf_ddm.solvers import IPNDM, ddim

    g = torch.Generator().manual_seed(0)
    x, x0 = torch.randn(4, 2, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)

    def point(sigma, a=0.7):  # any a: the rule is written in y = x/a, sigma = s/a
        return Point(a, sigma * a)

    cur, nxt = point(2.0), point(1.5, 0.8)
    eps = (x - cur.a * x0) / cur.s
    torch.testing.assert_close(IPNDM()(x, x0, eps, cur, nxt)[0], ddim(x, x0, eps, cur, nxt)[0])

    coef = torch.randn(4, 4, 2, generator=g, dtype=torch.float64)  # slope(sigma) = sum_k coef_k sigma^k

    def slope(sig):
        return sum(coef[:, k] * sig**k for k in range(4))

    def integral(s0, s1):
        return sum(coef[:, k] * (s1 ** (k + 1) - s0 ** (k + 1)) / (k + 1) for k in range(4))

    sigmas = [3.0 - 0.25 * i for i in range(8)]
    solver, y = IPNDM(), torch.zeros(4, 2, dtype=torch.float64)
    for i in range(3):  # warm-up on the exact solution: the history fills with exact slopes
        solver(y, None, slope(sigmas[i]), point(sigmas[i]), point(sigmas[i + 1]))
        y = y + integral(sigmas[i], sigmas[i + 1])
    for i in range(3, 7):  # AB4 from here on: exact for a cubic slope
        cur, nxt = point(sigmas[i]), point(sigmas[i + 1], 0.5)
        x_next, std = solver(y * cur.a, None, slope(sigmas[i]), cur, nxt)
        y = y + integral(sigmas[i], sigmas[i + 1])
        assert std == 0.0
        torch.testing.assert_close(x_next / nxt.a, y)


@pytest.mark.parametrize("schedule", [dict(beta_start=1e-4, beta_end=0.02, beta_schedule="linear"),
                                      dict(beta_schedule="squaredcos_cap_v2")], ids=["linear", "cosine"])
def test_ipndm_beats_dpm_solver_at_few_steps_on_broad_modes(schedule):
    """What iPNDM is in the registry for (measured in benchmarks/bench_few_step.py): at 8-10 model calls on
    the log-SNR grid its error to a 200-step solution is well below DPM-Solver++(2M)'s, and never above it at 5."""
    mix = GaussianMixture(MEANS, 0.35, WEIGHTS)
    config = dict(num_train_timesteps=1000, **schedule)

    def sample(steps, **kw):
        return run(SDEScheduler.from_config(config, time_grid="log_snr", **kw), mix, steps, n=512,
                   dtype=torch.float64)[0]

    ref = sample(200, solver="multistep", solver_order=3)
    for steps, at_most in ((5, 1.0), (8, 0.85), (10, 0.65)):
        err = {name: float((sample(steps, **kw) - ref).pow(2).sum(1).sqrt().mean())
               for name, kw in (("ipndm", dict(solver="ipndm")), ("2M", dict(solver="multistep", solver_order=2)))}
        assert err["ipndm"] < at_most * err["2M"], (steps, err)


# --- pitfalls of score_sde ------------------------------------------------------------------------


def test_langevin_corrector_runs_on_subvp():
    sched = SDEScheduler(sde="subvp", solver="pc", correct_steps=2)
    sched.set_timesteps(5)
    assert len(sched.timesteps) == 15 and sched.order == 3
    pts = sched._points
    scales = [(pts[i].a / pts[i + 1].a) ** 2 for kind, i in sched._plan if kind == "correct"]
    assert all(0 < s <= 1 for s in scales)  # exact r^2: never negative, unlike 1 - beta(t)/N
    x, _ = run(sched, GaussianMixture(MEANS, 0.35, WEIGHTS), 5, n=64)
    assert torch.isfinite(x).all()


def test_reverse_diffusion_subvp_uses_exact_transition_not_euler_maruyama():
    sched = SDEScheduler(sde="subvp", solver="reverse_diffusion")
    sched.set_timesteps(4)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t, t1 = torch.tensor(sched._points[0].t, dtype=torch.float64), torch.tensor(sched._points[1].t, dtype=torch.float64)
    out = sched.step(eps, sched.timesteps[0], x, generator=torch.Generator().manual_seed(2)).prev_sample
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r, g2 = sched.process.transition(t1, t)
    score = -eps / sched.process.sigma(t)
    torch.testing.assert_close(out, (x + g2 * score) / r + g2.sqrt() * z)
    em_mean = x + (sched.process.drift(x, t) - sched.process.diffusion(t) ** 2 * score) * (t1 - t)
    em = em_mean + sched.process.diffusion(t) * (t - t1).sqrt() * z
    assert (out - em).abs().max() > 0.1


@pytest.mark.parametrize("solver", ["reverse_diffusion", "pc", "ancestral", "euler_maruyama", "multistep"])
def test_coarse_vp_grid_has_no_nan(solver):
    # score_sde discretises beta_i = beta(t)/N: with N = 3, beta_max/N > 1 and sqrt(1 - beta) is NaN.
    x, _ = run(SDEScheduler(sde="vp", solver=solver, time_grid="uniform"), GaussianMixture(MEANS, 0.35, WEIGHTS), 3, n=64)
    assert torch.isfinite(x).all()


def test_no_step_below_sampling_eps_and_final_denoise():
    mix = GaussianMixture(MEANS, 0.05, WEIGHTS)
    sched = SDEScheduler(sde="vp", solver="ancestral", sampling_eps=1e-3)
    sched.set_timesteps(10)
    assert float(sched.timesteps.min()) == pytest.approx(1e-3 * 1000, rel=1e-4)
    assert float(sched.timesteps.max()) == pytest.approx(1000.0)
    model = mix.model(sched.marginal)
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    for t in sched.timesteps:
        out = sched.step(model(x, t), t, x, generator=torch.Generator().manual_seed(1))
        x = out.prev_sample
    torch.testing.assert_close(x, out.pred_original_sample)  # last update = x0_hat, no extra step


def test_denoise_final_false_keeps_sampling_eps_noise():
    mix = GaussianMixture(MEANS, 0.05, WEIGHTS)
    sched = SDEScheduler(sde="vp", solver="multistep", denoise_final=False, sampling_eps=2e-3)
    x, calls = run(sched, mix, 30, n=4000)
    assert calls == 30
    a, s = sched.process.marginal(torch.tensor(2e-3, dtype=torch.float64))
    expected = float(torch.sqrt(a * a * 0.05**2 + s * s) / a)  # std of x_eps / a around the mean
    got = float(mix.within_component_std(x / a).mean())
    assert got == pytest.approx(expected, rel=0.08)


@pytest.mark.parametrize("solver,steps,nfe", [("ode_heun", 6, 11), ("pc", 6, 12), ("multistep", 6, 6), ("ancestral", 1, 1)])
def test_reported_nfe_equals_model_calls(solver, steps, nfe):
    sched = SDEScheduler(solver=solver)
    x, calls = run(sched, GaussianMixture(MEANS, 0.35, WEIGHTS), steps, n=16)
    assert calls == nfe == len(sched.timesteps) == sched.num_model_evaluations


# --- configuration, reproducibility, parameterisations --------------------------------------------


def test_config_round_trip(tmp_path):
    sched = SDEScheduler(sde="ve", solver="pc", snr=0.2, correct_steps=2, time_grid="rho", timestep_scale=999.0)
    sched.save_config(tmp_path)
    again = SDEScheduler.from_pretrained(tmp_path)
    strip = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    assert strip(again.config) == strip(sched.config)
    again.set_timesteps(7), sched.set_timesteps(7)
    torch.testing.assert_close(again.timesteps, sched.timesteps)


def test_from_score_sde_ve_config():
    from diffusers import ScoreSdeVeScheduler

    sched = SDEScheduler.from_config(ScoreSdeVeScheduler().config)
    assert sched.config.sde == "ve" and sched.config.solver == "pc" and sched.config.prediction_type == "score"
    assert (sched.config.sigma_min, sched.config.sigma_max, sched.snr) == (0.01, 1348.0, 0.15)
    assert sched.sampling_eps == 1e-5 and sched.config.correct_steps == 1
    assert sched.init_noise_sigma == 1348.0
    x, _ = run(sched, GaussianMixture(MEANS, 0.35, WEIGHTS), 10, n=32)
    assert torch.isfinite(x).all()
    # and back: our config feeds diffusers' scheduler
    assert ScoreSdeVeScheduler.from_config(sched.config).config.sigma_max == 1348.0


def test_generator_list_reproducible():
    mix = GaussianMixture(MEANS, 0.35, WEIGHTS)
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(4)]  # noqa: E731
    a, _ = run(SDEScheduler(solver="ancestral"), mix, 6, n=4, generator=gens())
    b, _ = run(SDEScheduler(solver="ancestral"), mix, 6, n=4, generator=gens())
    torch.testing.assert_close(a, b)
    # item 0 depends only on its own generator
    c, _ = run(SDEScheduler(solver="ancestral"), mix, 6, n=1, generator=gens()[:1])
    torch.testing.assert_close(a[:1], c)


@pytest.mark.parametrize("solver", ["multistep", "ode_heun", "ancestral", "pc", "euler_maruyama"])
@pytest.mark.parametrize("sde", ["vp", "ve"])
def test_prediction_types_give_same_trajectory(solver, sde):
    mix = GaussianMixture(MEANS, 0.35, WEIGHTS)
    outs = []
    for pt in ("epsilon", "sample", "v_prediction", "score"):
        sched = SDEScheduler(sde=sde, solver=solver, prediction_type=pt)
        outs.append(run(sched, mix, 6, n=32, dtype=torch.float64)[0])
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-4, atol=1e-4)


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"sde": "vpp"}, "sde"),
        ({"solver": "rk45"}, "solver"),
        ({"prediction_type": "noise"}, "prediction_type"),
        ({"time_grid": "karras"}, "time_grid"),
        ({"sde": "ve", "sigma_min": 5.0, "sigma_max": 1.0}, "sigma_min"),
        ({"sde": "vp", "beta_min": 30.0}, "beta_min"),
        ({"solver_order": 4}, "solver_order"),
        ({"solver_order": 0}, "solver_order"),
    ],
)
def test_bad_config(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SDEScheduler(**kwargs)


def test_bad_step_inputs():
    sched = SDEScheduler()
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="set_timesteps"):
        sched.step(x, 1000.0, x)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="num_inference_steps"):
            sched.set_timesteps(bad)
    sched.set_timesteps(5)
    with pytest.raises(ValueError, match="timestep"):
        sched.step(x, 123.456, x)
    with pytest.raises(ValueError, match="model_output"):
        sched.step(torch.zeros(2, 3), sched.timesteps[0], x)


def test_diffusers_loop_contract():
    sched = SDEScheduler(sde="ve")
    assert sched.init_noise_sigma == sched.process.prior_std == 50.0
    sched.set_timesteps(4)
    x = torch.randn(2, 2) * sched.init_noise_sigma  # the contract: the loop scales its start
    assert sched.scale_model_input(x, sched.timesteps[0]) is x
    t = sched.timestep_to_t(sched.timesteps)
    torch.testing.assert_close(sched.t_to_timestep(t).float(), sched.timesteps)
    out = sched.step(torch.zeros_like(x), sched.timesteps[0], x, return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == x.shape
