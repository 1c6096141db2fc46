"""The exact Gaussian-mixture oracle (DESIGN.md section 4).

For data drawn from a mixture of isotropic Gaussians, every noised marginal under
x_t = a x0 + s eps is again a mixture in closed form: component k becomes
N(a mu_k, (a^2 std_k^2 + s^2) I). So the exact score, epsilon, denoiser E[x0 | x_t], class
posterior p(k | x_t) (classes = components) and log-density are all known. Samplers, guidance and
likelihoods are checked against this without any training, and samplers can be compared at equal
numbers of model evaluations.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .processes import append_dims, from_x0_eps


class GaussianMixture:
    """K isotropic Gaussian components in R^D: weights (K,), means (K, D), stds (K,)."""

    def __init__(self, means, stds, weights=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(self.means.shape)}")
        k = self.means.shape[0]
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        if (self.stds < 0).any():
            raise ValueError("stds must be non-negative")
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or (w < 0).any() or abs(float(w.sum()) - 1.0) > 1e-6:
            raise ValueError("weights must be K non-negative numbers summing to 1")
        self.weights = w

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: Optional[torch.Generator] = None, class_labels=None):
        """(x, labels): n points (float64) and the component each came from."""
        if class_labels is None:
            labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        else:
            labels = torch.as_tensor(class_labels, dtype=torch.long).expand(n)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[labels] + self.stds[labels, None] * noise, labels

    # --- closed forms at marginal coefficients (a, s) ----------------------------------------------
    def _component_terms(self, x: torch.Tensor, a, s):
        """Per-component variance (B, K) and log N(x; a mu_k, var_k I) (B, K), in float64."""
        x = x.to(torch.float64).flatten(1)
        a = torch.as_tensor(a, dtype=torch.float64).reshape(-1, 1)
        s = torch.as_tensor(s, dtype=torch.float64).reshape(-1, 1)
        var = a * a * self.stds[None] ** 2 + s * s  # (B or 1, K)
        diff2 = (x[:, None, :] - a[..., None] * self.means[None]).pow(2).sum(-1)  # (B, K)
        logn = -0.5 * diff2 / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return var, logn

    def log_prob(self, x: torch.Tensor, a=1.0, s=0.0, class_labels=None) -> torch.Tensor:
        """log p_t(x) of the noised marginal (or of one component if class_labels is given)."""
        _, logn = self._component_terms(x, a, s)
        if class_labels is not None:
            return logn.gather(1, torch.as_tensor(class_labels).reshape(-1, 1).expand(len(logn), 1)).squeeze(1)
        return torch.logsumexp(logn + self.weights.log()[None], dim=1)

    def posterior(self, x: torch.Tensor, a, s) -> torch.Tensor:
        """p(k | x_t): the exact class posterior, (B, K)."""
        _, logn = self._component_terms(x, a, s)
        return torch.softmax(logn + self.weights.log()[None], dim=1)

    def _resp(self, x, a, s, class_labels):
        var, logn = self._component_terms(x, a, s)
        if class_labels is None:
            resp = torch.softmax(logn + self.weights.log()[None], dim=1)
        else:
            labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1).expand(x.shape[0])
            resp = torch.nn.functional.one_hot(labels, self.num_components).to(torch.float64)
        return var, resp

    def score(self, x: torch.Tensor, a, s, class_labels=None) -> torch.Tensor:
        """grad_x log p_t(x) (or of p_t(x | y) given class_labels), same shape and dtype as x."""
        var, resp = self._resp(x, a, s, class_labels)
        flat = x.to(torch.float64).flatten(1)
        a_ = torch.as_tensor(a, dtype=torch.float64).reshape(-1, 1, 1)
        comp = -(flat[:, None, :] - a_ * self.means[None]) / var[..., None]  # (B, K, D)
        return (resp[..., None] * comp).sum(1).reshape(x.shape).to(x.dtype)

    def denoiser(self, x: torch.Tensor, a, s, class_labels=None) -> torch.Tensor:
        """E[x0 | x_t] (optionally given the class), same shape and dtype as x."""
        var, resp = self._resp(x, a, s, class_labels)
        flat = x.to(torch.float64).flatten(1)
        a_ = torch.as_tensor(a, dtype=torch.float64).reshape(-1, 1, 1)
        gain = (a_ * self.stds[None, :, None] ** 2) / var[..., None]  # (B, K, 1)
        comp = self.means[None] + gain * (flat[:, None, :] - a_ * self.means[None])
        return (resp[..., None] * comp).sum(1).reshape(x.shape).to(x.dtype)

    def epsilon(self, x: torch.Tensor, a, s, class_labels=None) -> torch.Tensor:
        return (-append_dims(torch.as_tensor(s, dtype=torch.float64), x) * self.score(x, a, s, class_labels)).to(x.dtype)

    def prediction(self, x, a, s, prediction_type: str = "epsilon", class_labels=None) -> torch.Tensor:
        """The exact network output of the given parameterisation."""
        if prediction_type == "score":
            return self.score(x, a, s, class_labels)
        x0 = self.denoiser(x, a, s, class_labels)
        eps = (x - append_dims(a, x) * x0) / append_dims(s, x)
        return from_x0_eps(x0, eps, a, s, prediction_type).to(x.dtype)

    def model(
        self,
        scheduler,
        prediction_type: Optional[str] = None,
        class_labels=None,
    ) -> "ExactModel":
        """The exact network ``model(x, timestep) -> output`` of ``scheduler``'s model: anything the model
        adapter reads (an hf_ddm or diffusers VP scheduler, a config), its noise level at each timestep
        and its prediction type (unless ``prediction_type`` is given) taken from there. Or a function
        ``marginal(timestep) -> (a, s)`` (then ``prediction_type`` defaults to "epsilon"), for a model
        input the adapter cannot describe. ``calls`` counts evaluations (NFE)."""
        if callable(scheduler):
            return ExactModel(self, scheduler, prediction_type or "epsilon", class_labels)
        from .adapter import ModelAdapter

        adapter = ModelAdapter(None, scheduler, prediction_type)
        return ExactModel(self, adapter.scheduler.marginal, adapter.prediction_type, class_labels)

    # --- distances between sample sets ----------------------------------------------------------------
    def component_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Fraction of points whose most likely (noise-free) component is k, (K,)."""
        k = self.posterior(x, 1.0, 0.0).argmax(1)
        return torch.bincount(k, minlength=self.num_components).double() / len(x)

    def within_component_std(self, x: torch.Tensor) -> torch.Tensor:
        """Per-component RMS distance (per dimension) of points to their assigned component mean, (K,)."""
        flat = x.to(torch.float64).flatten(1)
        k = self.posterior(flat, 1.0, 0.0).argmax(1)
        out = torch.full((self.num_components,), float("nan"), dtype=torch.float64)
        for j in range(self.num_components):
            sel = flat[k == j]
            if len(sel):
                out[j] = (sel - self.means[j]).pow(2).mean().sqrt()
        return out


class ExactModel:
    """The mixture's exact network output as a function of (x_t, timestep)."""

    def __init__(self, mixture: GaussianMixture, marginal, prediction_type: str, class_labels=None):
        self.mixture, self.marginal, self.prediction_type = mixture, marginal, prediction_type
        self.class_labels = class_labels
        self.calls = 0

    def __call__(self, x: torch.Tensor, timestep, class_labels=None) -> torch.Tensor:
        self.calls += 1
        t = torch.as_tensor(timestep, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        a, s = self.marginal(t)
        labels = self.class_labels if class_labels is None else class_labels
        return self.mixture.prediction(x, a, s, self.prediction_type, labels)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size point sets (float64, exact 1-D sorts)."""
    x, y = x.to(torch.float64).flatten(1), y.to(torch.float64).flatten(1)
    if x.shape != y.shape:
        n = min(len(x), len(y))
        x, y = x[:n], y[:n]
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], num_projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ dirs, dim=0)
    py, _ = torch.sort(y @ dirs, dim=0)
    return float((px - py).pow(2).mean().sqrt())


__all__ = ["GaussianMixture", "ExactModel", "sliced_wasserstein"]
