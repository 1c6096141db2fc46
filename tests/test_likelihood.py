"""Likelihoods against the closed-form log-density of the exact mixture."""

import pytest
import torch

from hf_ddm.likelihood import bits_per_dim, ddpm_bound, ode_log_likelihood
from hf_ddm.mixture import GaussianMixture
from hf_ddm.schedulers.sde import SDEScheduler
from hf_ddm.schedulers.vp import VPScheduler

MIX = GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], [0.3, 0.2], [0.6, 0.4])


@pytest.mark.parametrize("sde,kind", [("vp", "epsilon"), ("subvp", "score"), ("ve", "sample")])
def test_ode_likelihood_matches_closed_form(sde, kind):
    sched = SDEScheduler(sde=sde, prediction_type=kind, sigma_max=50.0)
    x, _ = MIX.sample(64, generator=torch.Generator().manual_seed(0))
    out = ode_log_likelihood(MIX.model(sched.marginal, kind), sched, x, num_steps=60)
    a, s = sched.process.marginal(torch.tensor(sched.sampling_eps, dtype=torch.float64))
    exact = MIX.log_prob(x, a, s)
    # RK4 with 60 steps on the exact model: within 0.03 nats per point (2 dimensions).
    assert (out.log_likelihood - exact).abs().max() < 0.03
    assert out.num_model_evaluations == 4 * 60


def test_hutchinson_estimate_is_unbiased():
    sched = SDEScheduler(sde="vp", prediction_type="epsilon")
    x, _ = MIX.sample(256, generator=torch.Generator().manual_seed(1))
    model = MIX.model(sched.marginal, "epsilon")
    hutch = ode_log_likelihood(model, sched, x, num_steps=20, exact_trace=False, num_probes=2,
                               generator=torch.Generator().manual_seed(2))
    exact = ode_log_likelihood(model, sched, x, num_steps=20, exact_trace=True)
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
    out = ddpm_bound(MIX.model(sched.marginal, "epsilon"), sched, x, generator=g, decoder="gaussian")
    bound, exact = (-out.log_likelihood).mean(), (-MIX.log_prob(x)).mean()
    sem = (-out.log_likelihood).std() / len(x) ** 0.5
    assert bound > exact - 3 * sem
    assert bound < exact + 1.5  # and not vacuous
    normal = GaussianMixture([[0.0, 0.0]], [1.0])
    x, _ = normal.sample(3000, generator=g)
    out = ddpm_bound(normal.model(sched.marginal, "epsilon"), sched, x, generator=g, decoder="gaussian")
    gap = float((-out.log_likelihood).mean() - (-normal.log_prob(x)).mean())
    assert -3 * float((-out.log_likelihood).std()) / 3000**0.5 < gap < 0.1


def test_bits_per_dim_and_discrete_decoder():
    nll = torch.tensor([2 * 784 * 0.6931471805599453])  # 2 bits/dim in nats over 784 dims
    assert torch.allclose(bits_per_dim(nll, 784, data_range=None), torch.tensor([2.0]))
    # 8-bit data: the discretised decoder gives bin probabilities (<= 1), so bits/dim >= 0.
    sched = VPScheduler(num_train_timesteps=50, beta_end=0.3, clip_sample=False)
    pixels = torch.randint(0, 256, (4, 1, 2, 2)).float() / 127.5 - 1
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    out = ddpm_bound(model, sched, pixels, generator=torch.Generator().manual_seed(0))
    assert (out.bits_per_dim > 0).all() and torch.isfinite(out.bits_per_dim).all()


def test_likelihood_bad_input():
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="continuous"):
        ode_log_likelihood(lambda x, t: x, VPScheduler(), x)
    with pytest.raises(ValueError, match="discrete VP"):
        ddpm_bound(lambda x, t: x, SDEScheduler(), x)
    with pytest.raises(ValueError, match="variance"):
        ddpm_bound(lambda x, t: x, VPScheduler(), x, variance="learned")
