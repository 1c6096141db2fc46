"""Reading a diffusers scheduler config: which keys describe the *model* (its noise schedule, its
parameterisation -- these must be honoured exactly), which describe only diffusers' *sampler* (its
grid, its solver -- replaced by the hf_ddm sampler the user picked), and which cannot be honoured
(a ``ValueError`` naming the key, never a silent drop).

Checked against the default configs of DDPM, DDIM, PNDM, Euler, EulerAncestral, Heun, LMS,
DPMSolverMultistep, UniPC and DEIS.
"""

from __future__ import annotations

import os
from typing import Any, Dict

# What the model was trained with: carried into the hf_ddm scheduler.
MODEL_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "rescale_betas_zero_snr",
    "prediction_type",
    # x0 processing at sampling time: honoured by every hf_ddm solver.
    "clip_sample",
    "clip_sample_range",
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
)

# diffusers' own sampler settings: the time grid and the solver of the scheduler being replaced.
# hf_ddm's sampler has its own (``time_grid``, ``solver``), so these have nothing to act on.
SAMPLER_KEYS = (
    "timestep_spacing",
    "steps_offset",
    "set_alpha_to_one",
    "skip_prk_steps",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "sigma_min",
    "sigma_max",
    "interpolation_type",
    "algorithm_type",
    "solver_type",
    "lower_order_final",
    "euler_at_final",
    "final_sigmas_type",
    "lambda_min_clipped",
    "use_lu_lambdas",
    "disable_corrector",
    "solver_p",
    "predict_x0",
    "flow_shift",
    "time_shift_type",
    # hf_ddm's own VPScheduler: its DDPM / DDIM choice is a sampler setting too.
    "sampler",
    "eta",
)

# Sampler keys whose non-default values would change what the model sees or predicts.
_ONLY_AT = {
    "variance_type": (None, "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"),
    "timestep_type": ("discrete",),
    "use_flow_sigmas": (False,),
    "use_dynamic_shifting": (False,),
    "shift_terminal": (None,),
}
_WHY = {
    "variance_type": "the model predicts its variance in extra output channels; use VPScheduler, which reads them",
    "timestep_type": "the model takes continuous sigma-based timesteps, not train-timestep indices",
    "use_flow_sigmas": "flow-matching models are not VP diffusion models",
    "use_dynamic_shifting": "flow-matching models are not VP diffusion models",
    "shift_terminal": "flow-matching models are not VP diffusion models",
}

VP_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def load_config_dict(cls, config) -> Dict[str, Any]:
    """A config as a plain dict: a mapping, a FrozenDict, or -- as diffusers' schedulers accept -- the
    path of a saved scheduler folder or json file."""
    if config is None:
        return {}
    if isinstance(config, (str, os.PathLike)):
        return dict(cls.load_config(os.fspath(config)))
    return dict(config)


def is_vp_schedule_config(config: Dict[str, Any]) -> bool:
    """A diffusers discrete-VP scheduler config: one that names a beta schedule."""
    return any(k in config for k in ("beta_schedule", "trained_betas", "beta_start"))


def vp_schedule_kwargs(config: Dict[str, Any]) -> Dict[str, Any]:
    """The SDEScheduler keyword arguments that reproduce the model side of a diffusers VP config.

    Raises ValueError naming the first key that cannot be honoured."""
    out: Dict[str, Any] = {}
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key in MODEL_KEYS:
            out[key] = value
        elif key in _ONLY_AT:
            if value not in _ONLY_AT[key]:
                raise ValueError(f"{key}={value!r} cannot be honoured by SDEScheduler: {_WHY[key]}")
        elif key == "solver_order":
            if value not in (1, 2, 3):
                raise ValueError(f"solver_order={value!r}: SDEScheduler's multistep solver has orders 1-3")
            out[key] = value
        elif key not in SAMPLER_KEYS:
            raise ValueError(
                f"config key {key!r} (= {value!r}) is unknown to SDEScheduler.from_config; it may change the "
                "model's noise schedule, so it is not dropped silently. Remove it from the config if it only "
                "concerns diffusers' own sampler."
            )
    if out.get("prediction_type", "epsilon") not in VP_PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type={out['prediction_type']!r} cannot be honoured: a diffusers VP model predicts one of "
            f"{VP_PREDICTION_TYPES}"
        )
    if out.get("beta_schedule") is None and out.get("trained_betas") is None:
        out["beta_schedule"] = "linear"  # diffusers' default for every VP scheduler
    return out


__all__ = ["MODEL_KEYS", "SAMPLER_KEYS", "load_config_dict", "is_vp_schedule_config", "vp_schedule_kwargs"]
