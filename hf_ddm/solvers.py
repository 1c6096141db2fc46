"""Solver updates shared by more than one scheduler, written once in terms of tensors.

Schedulers own the time grid and the model-output conversion; the formulas of an update live here
(or, when they are a property of the process itself, such as the posterior, in ``processes``).
"""

from __future__ import annotations

from typing import Optional

import torch
from diffusers.utils.torch_utils import randn_tensor

from .processes import append_dims


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
