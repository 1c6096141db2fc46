"""The denoising objective, written once for every process through the scheduler's shared helpers."""

from __future__ import annotations

from typing import Callable, Tuple

import torch


def noised(scheduler, x0: torch.Tensor, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, noise, timesteps) for a batch: timesteps and noise drawn from ``generator`` (CPU)."""
    t = scheduler.sample_training_timesteps(x0.shape[0], generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
    return scheduler.add_noise(x0, noise, t), noise, t


def denoising_loss(scheduler, model_fn: Callable, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """E ||target - model(x_t, t)||^2 weighted as the scheduler defines (``training_loss``)."""
    x_t, noise, t = noised(scheduler, x0, generator)
    return scheduler.training_loss(model_fn(x_t, t), x0, noise, t)


def drop_labels(labels: torch.Tensor, p: float, null_index: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by ``null_index`` with probability ``p`` (classifier-free guidance training)."""
    if p <= 0:
        return labels
    mask = (torch.rand(labels.shape[0], generator=generator) < p).to(labels.device)
    return torch.where(mask, torch.full_like(labels, null_index), labels)


__all__ = ["noised", "denoising_loss", "drop_labels"]
