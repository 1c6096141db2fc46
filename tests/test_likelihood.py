"""Likelihoods against the closed-form log-density of the exact mixture, on hf_ddm's continuous SDEs and
on diffusers' discrete VP schedules; conventions; a tiny diffusers UNet2DModel; bad inputs."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from hf_ddm.adapter import process_view
from hf_ddm.likelihood import bits_per_dim, ddpm_bound, ode_log_likelihood, rk45
from hf_ddm.mixture import GaussianMixture
from hf_ddm.schedulers.sde import SDEScheduler
from hf_ddm.schedulers.ve import VEScheduler
from hf_ddm.schedulers.vp import VPScheduler

MIX = GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], [0.3, 0.2], [0.6, 0.4])
# A "pixel" mixture inside [-1, 1], quantised to 8 bits: its exact discrete NLL is log p(x) + D log(2/255)
# to within the density's variation over a bin (stds >> 2/255).
PIX = GaussianMixture([[-0.5, 0.3], [0.4, -0.2]], [0.1, 0.15])
BIN = 2 / 255


def _exact_at_start(mix, sched, x):
    a, s = sched.process.marginal(torch.tensor(sched.training_t_min, dtype=torch.float64))
    return mix.log_prob(x, a, s)


def _pixels(n, seed):
    x, _ = PIX.sample(n, generator=torch.Generator().manual_seed(seed))
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


@pytest.mark.parametrize("sde,kind", [("vp", "epsilon"), ("subvp", "score"), ("ve", "sample")])
@pytest.mark.parametrize("method", ["rk4", "rk45"])
def test_ode_likelihood_matches_closed_form(sde, kind, method):
    sched = SDEScheduler(sde=sde, prediction_type=kind, sigma_max=50.0)
    x, _ = MIX.sample(64, generator=torch.Generator().manual_seed(0))
    kw = {"num_steps": 60} if method == "rk4" else {}
    out = ode_log_likelihood(MIX.model(sched.marginal, kind), sched, x, convention="continuous", **kw)
    # Within 0.03 nats per point (2 dimensions); most of what is left is p_1 ~ N(0, sigma_max^2 I).
    assert (out.log_likelihood - _exact_at_start(MIX, sched, x)).abs().max() < 0.03
    assert out.convention == "continuous" and method in out.method
    if method == "rk4":
        assert out.num_model_evaluations == 4 * 60
    else:  # 2 calls to choose the first step, then 6 per step (FSAL): far fewer than RK4's 240
        assert out.num_model_evaluations % 6 == 2 and out.num_model_evaluations < 150


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_ode_likelihood_on_a_diffusers_schedule_matches_the_exact_density(beta_schedule, kind):
    # The diffusers scheduler itself is passed; the ODE runs on its exact continuous-time view and calls
    # the model at its train timestep (the oracle reads (a, s) back from that timestep).
    ddpm = DDPMScheduler(beta_schedule=beta_schedule, prediction_type=kind)
    sched = process_view(ddpm, need="continuous")
    x, _ = MIX.sample(64, generator=torch.Generator().manual_seed(0))
    model = MIX.model(ddpm)  # the oracle of this scheduler's model: its prediction type, its timesteps
    out = ode_log_likelihood(model, ddpm, x, convention="continuous")
    exact = _exact_at_start(MIX, sched, x)  # t_start = 0: train timestep 0, s = sqrt(beta_0) > 0
    # nats/dim; on the linear schedule most of it is p_1 != N(0, I) (alphas_cumprod[-1] = 4e-5).
    assert (out.log_likelihood - exact).abs().mean() / 2 < 1e-3
    # The solver's own error: with the exact log p_1 in place of N(0, I) at the path's end.
    a1, s1 = sched.process.marginal(torch.tensor(1.0, dtype=torch.float64))
    solver_err = (out.delta_logp + MIX.log_prob(out.latent, a1, s1) - exact).abs().mean() / 2
    assert solver_err < 1e-4 and model.calls == out.num_model_evaluations < 150
    # Integrating in process time t instead meets the kinks of the piecewise-linear log-SNR at every
    # train timestep: more calls for a larger error (why "auto" picks vp_time here).
    in_t = ode_log_likelihood(MIX.model(ddpm), ddpm, x, convention="continuous", variable="t")
    assert in_t.num_model_evaluations > out.num_model_evaluations
    assert (in_t.log_likelihood - exact).abs().mean() / 2 > solver_err


def test_rk45_is_scipys_dormand_prince():
    # Same tableau and step-size control as scipy's solve_ivp(method="RK45") (what score_sde calls):
    # the same number of evaluations and the same answer on a nonlinear system.
    from scipy.integrate import solve_ivp

    def f(u, y):
        return torch.stack([y[1], -torch.sin(y[0]) * (1 + 0.5 * math.cos(u))])

    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    calls = []
    ours = rk45(lambda u, y: calls.append(u) or f(u, y), y0, 0.0, 7.0, 1e-6, 1e-8)
    ref = solve_ivp(lambda u, y: f(u, torch.from_numpy(y)).numpy(), (0.0, 7.0), y0.numpy(), method="RK45",
                    rtol=1e-6, atol=1e-8)
    assert len(calls) == ref.nfev
    assert np.allclose(ours.numpy(), ref.y[:, -1], rtol=0, atol=1e-12)
    # Backwards in time too (u1 < u0).
    back = rk45(f, ours, 7.0, 0.0, 1e-8, 1e-10)
    assert torch.allclose(back, y0, atol=1e-6)


def test_vp_time_is_t_on_the_vp_sde():
    # On score_sde's own VP SDE the vp_time variable is t itself: identical steps and result.
    sched = SDEScheduler(sde="vp")
    x, _ = MIX.sample(16, generator=torch.Generator().manual_seed(3))
    model = MIX.model(sched.marginal, "epsilon")
    a = ode_log_likelihood(model, sched, x, convention="continuous", variable="t")
    b = ode_log_likelihood(model, sched, x, convention="continuous", variable="vp_time")
    assert a.num_model_evaluations == b.num_model_evaluations
    assert torch.allclose(a.log_likelihood, b.log_likelihood, atol=1e-8)


def test_hutchinson_estimate_is_unbiased():
    sched = SDEScheduler(sde="vp", prediction_type="epsilon")
    x, _ = MIX.sample(256, generator=torch.Generator().manual_seed(1))
    model = MIX.model(sched.marginal, "epsilon")
    hutch = ode_log_likelihood(model, sched, x, num_steps=20, exact_trace=False, num_probes=2,
                               generator=torch.Generator().manual_seed(2), convention="continuous")
    exact = ode_log_likelihood(model, sched, x, num_steps=20, exact_trace=True, convention="continuous")
    err = hutch.log_likelihood - exact.log_likelihood
    # Individual estimates are noisy; their mean error is within 4 standard errors of zero.
    assert err.std() > 0
    assert err.mean().abs() < 4 * err.std() / len(err) ** 0.5


def test_ddpm_bound_upper_bounds_the_exact_nll():
    # Data N(0, I) keeps the exact reverse step Gaussian, so the fixed_large bound is nearly tight;
    # on the mixture it must still lie above the exact NLL on average.
    g = torch.Generator().manual_seed(0)
    sched = VPScheduler(num_train_timesteps=100, beta_end=0.2, clip_sample=False, variance_type="fixed_large")
    x, _ = MIX.sample(3000, generator=g)
    out = ddpm_bound(MIX.model(sched.marginal, "epsilon"), sched, x, generator=g, convention="continuous")
    bound, exact = (-out.log_likelihood).mean(), (-MIX.log_prob(x)).mean()
    sem = (-out.log_likelihood).std() / len(x) ** 0.5
    assert bound > exact - 3 * sem
    assert bound < exact + 1.5  # and not vacuous
    normal = GaussianMixture([[0.0, 0.0]], [1.0])
    x, _ = normal.sample(3000, generator=g)
    out = ddpm_bound(normal.model(sched.marginal, "epsilon"), sched, x, generator=g, decoder="gaussian")
    gap = float((-out.log_likelihood).mean() - (-normal.log_prob(x)).mean())
    assert -3 * float((-out.log_likelihood).std()) / 3000**0.5 < gap < 0.1
    assert out.convention == "continuous"  # the legacy decoder="gaussian" is that convention


def test_both_functions_agree_under_each_convention():
    """8-bit data, a diffusers cosine schedule: the ODE (dequantised) matches the exact discrete NLL and
    the bound (discrete decoder) lies above it by a small gap -- the same units, comparable numbers."""
    ddpm = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="fixed_large")
    x = _pixels(128, seed=1)
    exact_bpd = float(-(PIX.log_prob(x) + 2 * math.log(BIN)).mean() / (2 * math.log(2)))
    assert exact_bpd > 5  # a real 8-bit number, not a continuous density's
    ode = ode_log_likelihood(PIX.model(ddpm), ddpm, x,
                             generator=torch.Generator().manual_seed(0))
    bound = ddpm_bound(PIX.model(ddpm), ddpm.config, x,
                       generator=torch.Generator().manual_seed(0))
    assert ode.convention == bound.convention == "discrete"
    assert abs(float(ode.bits_per_dim.mean()) - exact_bpd) < 0.02
    assert exact_bpd - 0.02 < float(bound.bits_per_dim.mean()) < exact_bpd + 0.2
    assert torch.allclose(ode.bits_per_dim, -ode.log_likelihood / (2 * math.log(2)))
    # Continuous convention on the same data: 8 - log2(255/2) ~ 7 bits/dim lower, from both functions.
    ode_c = ode_log_likelihood(PIX.model(ddpm), ddpm, x, convention="continuous")
    bound_c = ddpm_bound(PIX.model(ddpm), ddpm, x, convention="continuous",
                         generator=torch.Generator().manual_seed(0))
    exact_c = float(-PIX.log_prob(x).mean() / (2 * math.log(2)))
    assert abs(float(ode_c.bits_per_dim.mean()) - exact_c) < 1e-3
    assert exact_c - 0.02 < float(bound_c.bits_per_dim.mean()) < exact_c + 0.2
    # "dequantized": the caller's own dequantisation, the same number as "discrete" up to the draw.
    xd = x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype) - 0.5) * BIN
    ode_d = ode_log_likelihood(PIX.model(ddpm), ddpm, xd, convention="dequantized")
    assert abs(float(ode_d.bits_per_dim.mean()) - exact_bpd) < 0.02


def test_legacy_data_range_means_a_convention():
    sched = SDEScheduler(sde="vp")
    x = _pixels(8, seed=2)
    xd = x + 0.3 * BIN
    model = MIX.model(sched.marginal, "epsilon")
    cont = ode_log_likelihood(model, sched, xd, num_steps=5, data_range=None)
    deq = ode_log_likelihood(model, sched, xd, num_steps=5, data_range=2.0)
    assert cont.convention == "continuous" and deq.convention == "dequantized"
    # The old default's offset, log2(127.5) bits/dim, now named by the convention.
    assert torch.allclose(deq.bits_per_dim - cont.bits_per_dim, torch.full((8,), math.log2(127.5), dtype=torch.float64))
    assert torch.allclose(cont.bits_per_dim, bits_per_dim(-cont.log_likelihood, 2, data_range=None))


def test_off_grid_data_warns_under_the_discrete_convention():
    x, _ = MIX.sample(8, generator=torch.Generator().manual_seed(0))
    x = x.clamp(-0.99, 0.99)  # in range, off the 8-bit grid
    sched = SDEScheduler(sde="vp")
    with pytest.warns(UserWarning, match="off"):
        out = ode_log_likelihood(MIX.model(sched.marginal, "epsilon"), sched, x, num_steps=2)
    assert out.convention == "discrete"
    vp = VPScheduler(num_train_timesteps=10, clip_sample=False)
    with pytest.warns(UserWarning, match="off"):
        ddpm_bound(MIX.model(vp.marginal, "epsilon"), vp, x)
    with pytest.warns(UserWarning, match="exactly on the grid"):
        ode_log_likelihood(MIX.model(sched.marginal, "epsilon"), sched, _pixels(4, 0), num_steps=2,
                           convention="dequantized")


def _tiny_unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, attention_head_dim=None)


def test_diffusers_unet2d_with_its_ddpm_scheduler():
    # A diffusers UNet2DModel (its forward returns UNet2DOutput) with its DDPMScheduler or config.
    unet = _tiny_unet().eval()
    pixels = torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(0)).float() / 127.5 - 1
    ddpm = DDPMScheduler(num_train_timesteps=20, beta_schedule="squaredcos_cap_v2")
    ode = ode_log_likelihood(unet, ddpm.config, pixels, num_steps=2, exact_trace=False,
                             generator=torch.Generator().manual_seed(1))
    assert ode.log_likelihood.shape == ode.bits_per_dim.shape == (3,) and ode.latent.shape == pixels.shape
    assert torch.isfinite(ode.bits_per_dim).all() and ode.num_model_evaluations == 8
    bound = ddpm_bound(unet, ddpm, pixels, generator=torch.Generator().manual_seed(0))
    # Discrete decoder: bin probabilities <= 1 and KLs >= 0, so bits/dim > 0 whatever the network.
    assert bound.bits_per_dim.shape == (3,) and (bound.bits_per_dim > 0).all()
    assert bound.num_model_evaluations == 20 and bound.convention == "discrete"


def test_bound_on_the_same_schedule_from_three_schedulers():
    # VPScheduler, diffusers' DDPMScheduler and SDEScheduler on that discrete schedule: one train grid.
    x = _pixels(16, seed=3)
    outs = []
    for sched in (VPScheduler(num_train_timesteps=30, beta_schedule="squaredcos_cap_v2", clip_sample=False),
                  DDPMScheduler(num_train_timesteps=30, beta_schedule="squaredcos_cap_v2"),
                  SDEScheduler(num_train_timesteps=30, beta_schedule="squaredcos_cap_v2")):
        outs.append(ddpm_bound(PIX.model(sched), sched, x, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(outs[0].log_likelihood, outs[1].log_likelihood)
    assert torch.allclose(outs[0].log_likelihood, outs[2].log_likelihood, atol=1e-5)


def test_likelihood_bad_input():
    x = torch.zeros(2, 2)
    sched = SDEScheduler()
    model = MIX.model(sched.marginal, "epsilon")
    ode = lambda **kw: ode_log_likelihood(model, sched, x, convention="continuous", **kw)  # noqa: E731
    for bad in (0.0, -0.1, float("nan"), 1.0, 2.0, "soon"):
        with pytest.raises(ValueError, match="t_start"):
            ode(t_start=bad)
    for kw, name in [({"num_probes": 0}, "num_probes"), ({"num_steps": 0}, "num_steps"), ({"rtol": 0.0}, "rtol"),
                     ({"atol": float("nan")}, "atol"), ({"method": "euler"}, "method"), ({"variable": "s"}, "variable"),
                     ({"method": "rk45", "num_steps": 10}, "num_steps"), ({"bits": 0}, "bits")]:
        with pytest.raises(ValueError, match=name):
            ode(**kw)
    with pytest.raises(ValueError, match="convention"):
        ode_log_likelihood(model, sched, x, convention="8-bit")
    with pytest.raises(ValueError, match="contradicts"):
        ode_log_likelihood(model, sched, x, convention="discrete", data_range=None)
    with pytest.raises(ValueError, match="sample"):
        ode_log_likelihood(model, sched, torch.zeros(2))
    # 8-bit conventions: data far outside [-1, 1] is refused by both functions, naming the convention.
    far = torch.full((2, 2), 3.0)
    with pytest.raises(ValueError, match="convention='discrete'"):
        ode_log_likelihood(model, sched, far)
    with pytest.raises(ValueError, match="convention='discrete'"):
        ddpm_bound(lambda x, t: x, VPScheduler(num_train_timesteps=10), far)
    with pytest.raises(ValueError, match="convention='dequantized'"):
        ode_log_likelihood(model, sched, far, convention="dequantized")
    # Schedulers without a continuous-time VP view / without a discrete VP grid.
    with pytest.raises(ValueError, match="scheduler"):
        ode_log_likelihood(lambda x, t: x, VEScheduler(), x, convention="continuous")
    with pytest.raises(ValueError, match="scheduler"):
        ode_log_likelihood(lambda x, t: x, {"sigma_min": 0.01}, x, convention="continuous")
    with pytest.raises(ValueError, match="discrete VP"):
        ddpm_bound(lambda x, t: x, SDEScheduler(), x)
    with pytest.raises(ValueError, match="variance"):
        ddpm_bound(lambda x, t: x, VPScheduler(), x, variance="learned")
    with pytest.raises(ValueError, match="contradicts"):
        ddpm_bound(lambda x, t: x, VPScheduler(), x, decoder="discrete", convention="continuous")


def test_t_start_zero_is_the_first_train_timestep_on_a_discrete_schedule():
    # There s(0) = sqrt(beta_0) > 0, so t_start = 0 (the default) is a valid start, unlike on the VP SDE.
    ddpm = DDPMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2")
    x, _ = MIX.sample(8, generator=torch.Generator().manual_seed(0))
    out = ode_log_likelihood(MIX.model(ddpm), ddpm, x, t_start=0.0, convention="continuous")
    assert "t=0" in out.method and torch.isfinite(out.log_likelihood).all()
