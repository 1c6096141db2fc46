"""Guidance as a rewrite of the model output, so it works with any scheduler (guided-diffusion's idea).

* classifier-free: out = out_uncond + w (out_cond - out_uncond), in whatever parameterisation the
  model predicts (the combination is linear, so it commutes with the conversions);
* classifier: eps_hat = eps - scale * s_t * grad_x log p(y | x_t), done in epsilon space and
  converted back to the model's prediction type.

The conversions are the model adapter's (``hf_ddm.adapter.ModelAdapter``): hf_ddm's schedulers and
diffusers' VP-type ones (DDPM, DDIM, Euler, Heun, DPM-Solver, UniPC ...), whose model input is the VP
sample on its exact discrete schedule.
"""

from __future__ import annotations

import math

import torch

from .adapter import ModelAdapter
from .processes import append_dims


def check_guidance_scale(guidance_scale: float, name: str = "guidance_scale") -> float:
    try:
        value = float(guidance_scale)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {guidance_scale!r}") from None
    if isinstance(guidance_scale, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {guidance_scale!r}")
    return value


def classifier_free(out_uncond: torch.Tensor, out_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """w = 0: unconditional; w = 1: conditional; w > 1: extrapolate past the conditional."""
    return out_uncond + guidance_scale * (out_cond - out_uncond)


def classifier_guidance(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    timestep,
    classifier,
    class_labels: torch.Tensor,
    guidance_scale: float,
    scheduler,
) -> torch.Tensor:
    """Rewrite ``model_output`` so it points at p(x_t | y) ∝ p(x_t) p(y | x_t)^scale."""
    if guidance_scale == 0:
        return model_output
    adapter = ModelAdapter(None, scheduler)
    t = torch.as_tensor(timestep, device=sample.device)
    if t.ndim == 0:
        t = t.expand(sample.shape[0])
    grad = classifier.grad_log_prob(sample, t, class_labels).to(sample.dtype)
    _, s = adapter.noise_level(timestep, sample)
    eps = adapter.convert(model_output, sample, timestep, "epsilon") - guidance_scale * append_dims(s, sample) * grad
    return adapter.convert(eps, sample, timestep, from_type="epsilon")


__all__ = ["check_guidance_scale", "classifier_free", "classifier_guidance"]
