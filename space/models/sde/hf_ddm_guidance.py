"""Guidance as a rewrite of the model output, so it works with any scheduler (guided-diffusion's idea).

* classifier-free: out = out_uncond + w (out_cond - out_uncond), in whatever parameterisation the
  model predicts (the combination is linear, so it commutes with the conversions);
* classifier: eps_hat = eps - scale * s_t * grad_x log p(y | x_t), done in epsilon space and
  converted back to the model's prediction type.

``scheduler_marginal`` finds (a_t, s_t) of the model input for hf_ddm's schedulers and for diffusers'
VP-type ones (DDPM, DDIM, Euler, Heun, DPM-Solver, UniPC ...), whose model input is the VP sample.
"""

from __future__ import annotations

import math

import torch

from .hf_ddm_processes import convert


def check_guidance_scale(guidance_scale: float, name: str = "guidance_scale") -> float:
    value = float(guidance_scale)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {guidance_scale!r}")
    return value


def classifier_free(out_uncond: torch.Tensor, out_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """w = 0: unconditional; w = 1: conditional; w > 1: extrapolate past the conditional."""
    return out_uncond + guidance_scale * (out_cond - out_uncond)


def scheduler_marginal(scheduler, timestep, like: torch.Tensor):
    """(a, s) of the model input at ``timestep`` for hf_ddm and diffusers VP-type schedulers."""
    t = torch.as_tensor(timestep)
    if hasattr(scheduler, "marginal"):
        a, s = scheduler.marginal(t)
    elif hasattr(scheduler, "alphas_cumprod"):
        table = scheduler.alphas_cumprod.to(torch.float64)
        tf = t.to(torch.float64).clamp(0, len(table) - 1)
        lo = tf.floor().long()
        hi = (lo + 1).clamp(max=len(table) - 1)
        # Linear interpolation in sigma = sqrt((1 - abar)/abar), as diffusers' Euler/Heun do.
        sig = ((1 - table) / table).sqrt()
        sigma = sig[lo] + (tf - lo) * (sig[hi] - sig[lo])
        a = 1.0 / (1.0 + sigma * sigma).sqrt()
        s = sigma * a
    else:
        raise ValueError(f"cannot find the noise level of scheduler {type(scheduler).__name__} at timestep {timestep}")
    a = torch.as_tensor(a).to(like.device, like.dtype)
    s = torch.as_tensor(s).to(like.device, like.dtype)
    return a, s


def prediction_type_of(scheduler) -> str:
    return getattr(scheduler.config, "prediction_type", "epsilon")


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
    a, s = scheduler_marginal(scheduler, timestep, sample)
    kind = prediction_type_of(scheduler)
    t = torch.as_tensor(timestep, device=sample.device)
    if t.ndim == 0:
        t = t.expand(sample.shape[0])
    grad = classifier.grad_log_prob(sample, t, class_labels).to(sample.dtype)
    eps = convert(model_output, sample, a, s, kind, "epsilon")
    s_b = s.reshape(s.shape + (1,) * (sample.ndim - s.ndim))
    eps = eps - guidance_scale * s_b * grad
    return convert(eps, sample, a, s, "epsilon", kind)


__all__ = ["check_guidance_scale", "classifier_free", "classifier_guidance", "scheduler_marginal"]
