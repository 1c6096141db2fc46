"""The exact Gaussian-mixture oracle that every sampler test leans on must itself be exact."""

import pytest
import torch

from hf_ddm.mixture import GaussianMixture, sliced_wasserstein


@pytest.fixture
def mix():
    return GaussianMixture([[-2.0, 0.0], [2.0, 1.0], [0.0, 3.0]], [0.3, 0.1, 0.5], [0.5, 0.3, 0.2])


@pytest.mark.parametrize("a,s", [(1.0, 1e-3), (0.8, 0.6), (0.05, 1.0), (1.0, 5.0)])
def test_score_is_gradient_of_log_prob(mix, a, s):
    x = (torch.randn(16, 2, dtype=torch.float64) * 2).requires_grad_()
    (grad,) = torch.autograd.grad(mix.log_prob(x, a, s).sum(), x)
    torch.testing.assert_close(mix.score(x.detach(), a, s), grad)
    labels = torch.randint(0, 3, (16,))
    (grad_c,) = torch.autograd.grad(mix.log_prob(x, a, s, class_labels=labels).sum(), x)
    torch.testing.assert_close(mix.score(x.detach(), a, s, labels), grad_c)


def test_tweedie_and_posterior(mix):
    x, a, s = torch.randn(32, 2, dtype=torch.float64), 0.7, 0.7
    torch.testing.assert_close(mix.denoiser(x, a, s), (x + s * s * mix.score(x, a, s)) / a)
    post = mix.posterior(x, a, s)
    torch.testing.assert_close(post.sum(1), torch.ones(32, dtype=torch.float64))
    torch.testing.assert_close(mix.epsilon(x, a, s), -s * mix.score(x, a, s))


def test_noised_samples_follow_the_closed_form_marginal(mix):
    g = torch.Generator().manual_seed(0)
    x0, labels = mix.sample(20000, generator=g)
    assert torch.allclose(torch.bincount(labels).double() / 20000, mix.weights, atol=0.02)
    a, s = 0.6, 0.8
    xt = a * x0 + s * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    # Mean log-density of the samples equals minus the entropy estimate from the closed form.
    lp = mix.log_prob(xt, a, s)
    # Compare with a fresh draw from the same marginal: their mean log-likelihoods agree.
    x1, _ = mix.sample(20000, generator=g)
    xt1 = a * x1 + s * torch.randn(x1.shape, generator=g, dtype=torch.float64)
    assert abs(float(lp.mean() - mix.log_prob(xt1, a, s).mean())) < 0.05
    # And the log-density integrates to one on a grid.
    grid = torch.stack(torch.meshgrid(torch.linspace(-8, 8, 401), torch.linspace(-6, 9, 401), indexing="ij"), -1)
    dens = mix.log_prob(grid.reshape(-1, 2).double(), a, s).exp().sum() * (16 / 400) * (15 / 400)
    assert abs(float(dens) - 1.0) < 1e-3


def test_sliced_wasserstein_separates_distributions(mix):
    g = torch.Generator().manual_seed(1)
    x, _ = mix.sample(4000, generator=g)
    y, _ = mix.sample(4000, generator=g)
    floor = sliced_wasserstein(x, y)
    # Sliced W2 between multimodal sets is dominated by sampling noise in the mode masses, so
    # the floor is ~0.14 here; a shift of 0.5 must stand far above it, and more points lower it.
    assert sliced_wasserstein(x, y + 0.5) > 2.5 * floor
    x2, _ = mix.sample(40000, generator=g)
    y2, _ = mix.sample(40000, generator=g)
    assert sliced_wasserstein(x2, y2) < floor
    w = mix.component_weights(x)
    assert torch.allclose(w, mix.weights, atol=0.03)
    std = mix.within_component_std(x)
    assert torch.allclose(std, mix.stds, rtol=0.15)


def test_bad_mixture_arguments():
    with pytest.raises(ValueError, match="means"):
        GaussianMixture([0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([[0.0], [1.0]], [1.0], [0.7, 0.7])
