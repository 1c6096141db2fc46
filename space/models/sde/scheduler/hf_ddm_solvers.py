"""Solver updates shared by more than one scheduler, written once in terms of tensors.

Schedulers own the time grid and the model-output conversion; the formulas of an update live here
(or, when they are a property of the process itself, such as the posterior, in ``processes``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from diffusers.utils.torch_utils import randn_tensor

from .hf_ddm_processes import append_dims


def noise_like(sample: torch.Tensor, generator=None) -> torch.Tensor:
    """Standard normal noise shaped like ``sample``; ``generator`` may be a list (one per batch item)."""
    return randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)


def langevin_step(
    sample: torch.Tensor,
    score: torch.Tensor,
    snr: float,
    generator=None,
    scale=1.0,
    noise: Optional[torch.Tensor] = None,
):
    """One Langevin MCMC correction x <- x + e * score + sqrt(2 e) z at target signal-to-noise ``snr``.

    The step size e = 2 (snr |z| / |score|)^2 * scale uses batch-mean norms, as score_sde and
    diffusers' ScoreSdeVeScheduler.step_correct do (so the two agree draw for draw). ``scale`` is
    score_sde's per-step alpha for VP-type processes (1 for VE). Returns (new sample, its mean).
    """
    if noise is None:
        noise = noise_like(sample, generator)
    grad_norm = score.flatten(1).norm(dim=-1).mean()
    noise_norm = noise.flatten(1).norm(dim=-1).mean()
    step = 2.0 * (snr * noise_norm / grad_norm) ** 2 * append_dims(scale, sample)
    mean = sample + step * score
    return mean + (2.0 * step).sqrt() * noise, mean


__all__ = ["noise_like", "langevin_step"]


# ------------------------------------------------------------------------------------------------
# Exponential integrator in log-SNR with data (x0) prediction: DPM-Solver++ (1S / 2M / 3M).
# ------------------------------------------------------------------------------------------------


def dpmpp_multistep_coefficients(s_ratio: float, a_next: float, h: float, h_prev=(), order: int = 1):
    """Coefficients (c_x, [c_0, c_1, ...]) of one DPM-Solver++ multistep update

        x_{t'} = c_x * x_t + sum_j c_j * x0_hat_j,

    where x0_hat_0 is the data prediction at the current point, x0_hat_1 the one a step before, etc.

    Written only in terms of the marginal (a, s) of *any* process: ``s_ratio = s'/s``, ``a_next = a'``,
    ``h = lambda' - lambda`` with lambda = log(a/s), and ``h_prev = (h_0, h_1)`` the previous log-SNR
    steps (most recent first). Order 1 is x' = (s'/s) x + a' (1 - e^{-h}) x0 (= DDIM); orders 2 and 3
    are DPM-Solver++(2M) (midpoint form) and (3M), exactly as Lu et al. / diffusers write them.
    A step to clean data (s' = 0, h = inf) must be order 1 and gives x' = a' x0_hat.
    """
    if not 1 <= order <= 3 or len(h_prev) < order - 1:
        raise ValueError(f"order must be in 1..3 with order-1 previous steps, got order={order}, h_prev={h_prev}")
    if math.isinf(h):
        if order != 1:
            raise ValueError("a step to clean data (h = inf) must be first order")
        return 0.0, [a_next]
    big_a = -math.expm1(-h)  # 1 - e^{-h}
    c_x = s_ratio
    if order == 1:
        return c_x, [a_next * big_a]
    r0 = h_prev[0] / h
    if order == 2:
        phi = a_next * big_a
        return c_x, [phi * (1.0 + 0.5 / r0), -phi * 0.5 / r0]
    r1 = h_prev[1] / h
    big_b = 1.0 - big_a / h  # (e^{-h} - 1)/h + 1
    big_c = (h - big_a) / (h * h) - 0.5  # (e^{-h} - 1 + h)/h^2 - 1/2
    k, q = r0 / (r0 + r1), 1.0 / (r0 + r1)
    # x' = c_x x + a'A D0 + a'B D1 - a'C D2, D1 = (1+k) D1_0 - k D1_1, D2 = q (D1_0 - D1_1),
    # D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1.
    w10 = a_next * (big_b * (1.0 + k) - big_c * q)  # weight of D1_0
    w11 = a_next * (-big_b * k + big_c * q)  # weight of D1_1
    return c_x, [a_next * big_a + w10 / r0, -w10 / r0 + w11 / r1, -w11 / r1]


__all__ += ["dpmpp_multistep_coefficients"]
