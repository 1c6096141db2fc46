"""Guidance as a rewrite of the model output, so it works with any scheduler (guided-diffusion's idea).

* classifier-free: out = out_uncond + w (out_cond - out_uncond), in whatever parameterisation the
  model predicts (the combination is linear, so it commutes with the conversions);
* classifier: eps_hat = eps - scale * s_t * grad_x log p(y | x_t), done in epsilon space and
  converted back to the model's prediction type.

Either can be limited to an interval of noise levels (Kynkäänniemi et al. 2024, "Applying guidance in a
limited interval improves sample and distribution quality"): guidance at the highest noise levels pulls
every sample toward the class mode and costs diversity, at the lowest it does little; outside the
interval the scale is 1 (the conditional model: CFG's conditional branch alone, classifier guidance at
s = 1). Levels are sigma = s / a, the noise-to-signal ratio of x = a x0 + s eps (EDM's and k-diffusion's
sigma), so one interval means the same on every schedule and at every step count.

The conversions are the model adapter's (``hf_ddm.adapter.ModelAdapter``): hf_ddm's schedulers and
diffusers' VP-type ones (DDPM, DDIM, Euler, Heun, DPM-Solver, UniPC ...), whose model input is the VP
sample on its exact discrete schedule.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from .adapter import ModelAdapter, noise_level
from .processes import append_dims


def check_guidance_scale(guidance_scale: float, name: str = "guidance_scale") -> float:
    try:
        value = float(guidance_scale)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {guidance_scale!r}") from None
    if isinstance(guidance_scale, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {guidance_scale!r}")
    return value


def check_guidance_interval(interval, name: str = "guidance_interval") -> Optional[Tuple[float, float]]:
    """``(low, high)`` noise levels sigma between which guidance applies (both ends included); ``high`` None
    or inf: no upper end. ``None`` stays None (guidance at every level)."""
    if interval is None:
        return None
    if isinstance(interval, (str, bytes)) or not hasattr(interval, "__len__") or len(interval) != 2:
        raise ValueError(f"{name} must be a pair (low, high) of noise levels sigma, got {interval!r}")
    low, high = interval
    bounds = []
    for value, end in ((low, "low"), (high, "high")):
        if value is None and end == "high":
            bounds.append(math.inf)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or math.isnan(number) or number < 0 or (end == "low" and math.isinf(number)):
            raise ValueError(f"{name}: {end} must be a number >= 0{' or None' if end == 'high' else ''}, got {value!r}")
        bounds.append(number)
    if not bounds[0] < bounds[1]:
        raise ValueError(f"{name}: low must be below high, got {interval!r}")
    return bounds[0], bounds[1]


def interval_config(interval: Optional[Tuple[float, float]]) -> Optional[List[Optional[float]]]:
    """An interval as JSON stores it (model_index.json): no upper end is null, never Infinity."""
    if interval is None:
        return None
    return [interval[0], None if math.isinf(interval[1]) else interval[1]]


def describe_interval(interval) -> str:
    """An interval as cards, tables and the Space write it ("σ ≤ 5", "0.3 ≤ σ ≤ 5", "σ ≥ 0.3"); guidance at
    every level (None, or from 0 with no upper end, as saved or as checked) is ""."""
    interval = check_guidance_interval(interval)
    if interval is None or (interval[0] == 0 and math.isinf(interval[1])):
        return ""
    low, high = interval
    if math.isinf(high):
        return f"σ ≥ {low:g}"
    return f"σ ≤ {high:g}" if low == 0 else f"{low:g} ≤ σ ≤ {high:g}"


def guidance_active(scheduler, timestep, interval: Optional[Tuple[float, float]]) -> bool:
    """Whether guidance applies at model timestep ``timestep`` (one level for the whole batch)."""
    if interval is None:
        return True
    t = torch.as_tensor(timestep).reshape(-1)[:1]
    # float64 on the CPU whatever ``like`` is: an end placed at a step's own level stays on its side
    a, s = noise_level(scheduler, t, torch.zeros((), dtype=torch.float64))
    sigma = float(s / a) if float(a) > 0 else math.inf
    return interval[0] <= sigma <= interval[1]


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


__all__ = ["check_guidance_interval", "check_guidance_scale", "classifier_free", "classifier_guidance",
           "describe_interval", "guidance_active", "interval_config"]
