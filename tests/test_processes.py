"""The noise-process core: marginals, derived SDE coefficients, transitions, posteriors, conversions."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from hf_ddm.processes import (
    PREDICTION_TYPES,
    ContinuousVE,
    ContinuousVP,
    DiscreteVE,
    DiscreteVP,
    NoiseProcess,
    SubVP,
    convert,
    from_x0_eps,
    make_betas,
    make_continuous_process,
    to_x0_eps,
)

CONTINUOUS = [ContinuousVP(), SubVP(), ContinuousVE(0.01, 50.0)]
T = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=torch.float64)


@pytest.mark.parametrize("process", CONTINUOUS, ids=lambda p: type(p).__name__)
def test_closed_form_f_g_match_marginals(process):
    # f = d log a/dt, g^2 = d s^2/dt - 2 f s^2, checked against finite differences of (a, s).
    f, g2 = process._derivatives(T)
    f_fd, g2_fd = NoiseProcess._derivatives(process, T)
    torch.testing.assert_close(f, f_fd, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(g2, g2_fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("process", CONTINUOUS, ids=lambda p: type(p).__name__)
def test_transition_composes_to_marginal(process):
    # x_t = r x_u + G z with x_u = a_u x0 + s_u eps must give back (a_t, s_t).
    u, t = T[:-1], T[1:]
    r, g2 = process.transition(u, t)
    a_u, s_u = process.marginal(u)
    a_t, s_t = process.marginal(t)
    torch.testing.assert_close(r * a_u, a_t)
    torch.testing.assert_close(r * r * s_u * s_u + g2, s_t * s_t)


def test_vp_family_shapes():
    vp, sub = ContinuousVP(), SubVP()
    a, s = vp.marginal(T)
    torch.testing.assert_close(a * a + s * s, torch.ones_like(a))
    a2, s2 = sub.marginal(T)
    torch.testing.assert_close(a2, a)
    torch.testing.assert_close(s2, 1 - a * a)
    assert (s2 < s).all()  # sub-VP: strictly less noise than VP


def test_discrete_vp_matches_diffusers_tables():
    for schedule in ["linear", "scaled_linear", "squaredcos_cap_v2"]:
        ours = DiscreteVP.from_schedule(beta_schedule=schedule)
        ref = DDPMScheduler(beta_schedule=schedule)
        assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    vp = DiscreteVP.from_schedule()
    t = torch.tensor([0, 10, 999])
    torch.testing.assert_close(vp.diffusion(t) ** 2, vp.betas[t], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(vp.drift_coef(t), vp.alphas[t].sqrt() - 1, rtol=1e-4, atol=1e-7)
    a, s = vp.marginal(torch.tensor(-1))
    assert float(a) == 1.0 and float(s) == 0.0  # t = -1 is clean data


def test_posterior_is_ddpm_and_smld():
    vp = DiscreteVP.from_schedule()
    x_t, x0 = torch.randn(3, 4), torch.randn(3, 4)
    t, tp = torch.tensor(500), torch.tensor(499)
    mean, var = vp.posterior(x_t, x0, t, tp)
    ab, abp, beta = vp.alphas_cumprod[500], vp.alphas_cumprod[499], vp.betas[500]
    ref_mean = abp.sqrt() * beta / (1 - ab) * x0 + vp.alphas[500].sqrt() * (1 - abp) / (1 - ab) * x_t
    torch.testing.assert_close(mean, ref_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(var, (1 - abp) / (1 - ab) * beta, rtol=1e-4, atol=1e-9)
    # SMLD ancestral step (DESIGN.md): x_t (1 - g^2/G^2) + D g^2/G^2, var g^2 G_{t-1}^2 / G_t^2.
    ve = DiscreteVE.geometric(0.01, 50.0, 10)
    mean, var = ve.posterior(x_t, x0, torch.tensor(5), torch.tensor(4))
    G2, Gp2 = ve.sigmas[5] ** 2, ve.sigmas[4] ** 2
    g2 = G2 - Gp2
    torch.testing.assert_close(mean, x_t * (1 - g2 / G2) + x0 * g2 / G2)
    torch.testing.assert_close(var, g2 * Gp2 / G2)
    # From the first level the posterior collapses onto the denoiser.
    mean, var = ve.posterior(x_t, x0, torch.tensor(0), torch.tensor(-1))
    torch.testing.assert_close(mean, x0)
    assert float(var) == 0.0


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
@pytest.mark.parametrize("a,s", [(0.8, 0.6), (1.0, 3.0), (0.9, 0.19)])
def test_conversions_round_trip(kind, a, s):
    x0, eps = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    x = a * x0 + s * eps
    out = from_x0_eps(x0, eps, a, s, kind)
    x0_back, eps_back = to_x0_eps(out, x, a, s, kind)
    torch.testing.assert_close(x0_back, x0)
    torch.testing.assert_close(eps_back, eps)
    for other in PREDICTION_TYPES:
        torch.testing.assert_close(convert(out, x, a, s, kind, other), from_x0_eps(x0, eps, a, s, other))


def test_per_sample_coefficients_broadcast_any_rank():
    x0, eps = torch.randn(4, 2, 3, 5, 5), torch.randn(4, 2, 3, 5, 5)
    a, s = torch.rand(4) + 0.1, torch.rand(4) + 0.1
    x = a.view(4, 1, 1, 1, 1) * x0 + s.view(4, 1, 1, 1, 1) * eps
    torch.testing.assert_close(to_x0_eps(eps, x, a, s, "epsilon")[0], x0, rtol=1e-4, atol=1e-4)


def test_prior_logp_and_time_inverse():
    ve = ContinuousVE(0.01, 50.0)
    z = torch.randn(6, 3, 4) * 50
    ref = torch.distributions.Normal(0.0, 50.0).log_prob(z).flatten(1).sum(1)
    torch.testing.assert_close(ve.prior_logp(z), ref)
    for process in CONTINUOUS:
        lam = process.log_snr(T)
        torch.testing.assert_close(process.time_at_log_snr(lam), T, atol=1e-9, rtol=0)


def test_coarse_discretisation_never_exceeds_beta_one():
    # score_sde's VPSDE.discretize gives beta_i = beta(t)/N > 1 for small N; the exact transition cannot.
    vp = ContinuousVP()
    grid = torch.linspace(1e-3, 1.0, 3, dtype=torch.float64)
    r, g2 = vp.transition(grid[:-1], grid[1:])
    assert (g2 <= 1).all() and (g2 >= 0).all() and (r <= 1).all()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: make_betas(beta_start=0.02, beta_end=0.0001), "beta_start"),
        (lambda: make_betas(beta_schedule="quadratic"), "beta_schedule"),
        (lambda: ContinuousVE(1.0, 0.5), "sigma_min"),
        (lambda: ContinuousVP(20.0, 0.1), "beta_min"),
        (lambda: make_continuous_process("vpp"), "sde"),
        (lambda: to_x0_eps(torch.zeros(1), torch.zeros(1), 1.0, 1.0, "eps"), "prediction_type"),
        (lambda: DiscreteVP.from_schedule().marginal(torch.tensor(1000)), "timestep"),
    ],
)
def test_bad_input_names_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()
