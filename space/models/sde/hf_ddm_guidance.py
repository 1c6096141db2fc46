"""Guidance as a rewrite of the model output, so it works with any scheduler (guided-diffusion's idea).

* classifier-free: out = out_uncond + w (out_cond - out_uncond), in whatever parameterisation the
  model predicts (the combination is linear, so it commutes with the conversions);
* classifier: eps_hat = eps - scale * s_t * grad_x log p(y | x_t), done in epsilon space and
  converted back to the model's prediction type.

(a_t, s_t) of the model input come from the model adapter (``hf_ddm.adapter.noise_level``), for hf_ddm's
schedulers and for diffusers' VP-type ones (DDPM, DDIM, Euler, Heun, DPM-Solver, UniPC ...), whose model
input is the VP sample on its exact discrete schedule.
"""

from __future__ import annotations

import math

import torch

from .hf_ddm_adapter import noise_level, prediction_type_of
from .hf_ddm_processes import convert


def check_guidance_scale(guidance_scale: float, name: str = "guidance_scale") -> float:
    value = float(guidance_scale)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {guidance_scale!r}")
    return value


def classifier_free(out_uncond: torch.Tensor, out_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """w = 0: unconditional; w = 1: conditional; w > 1: extrapolate past the conditional."""
    return out_uncond + guidance_scale * (out_cond - out_uncond)


# The noise level of any scheduler's model input, and its prediction type: the model adapter's.
scheduler_marginal = noise_level


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


__all__ = ["check_guidance_scale", "classifier_free", "classifier_guidance", "scheduler_marginal", "prediction_type_of"]

# hf_ddm portable bundle: for a local folder diffusers copies only the modules a custom-code file
# imports directly, so this file names every bundled module it needs. Never executed.
if False:  # pragma: no cover
    from .hf_ddm_limits import __name__ as _bundled_hf_ddm_limits  # noqa: F401
    from .hf_ddm_base import __name__ as _bundled_hf_ddm_base  # noqa: F401
    from .hf_ddm_diffusers_configs import __name__ as _bundled_hf_ddm_diffusers_configs  # noqa: F401
    from .hf_ddm_sde import __name__ as _bundled_hf_ddm_sde  # noqa: F401
    from .hf_ddm_solvers import __name__ as _bundled_hf_ddm_solvers  # noqa: F401
