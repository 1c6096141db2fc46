"""Reading a diffusers scheduler config: which keys describe the *model* (its noise schedule, its
parameterisation -- these must be honoured exactly), which describe only diffusers' *sampler* (its
grid, its solver -- replaced by the hf_ddm sampler the user picked), and which cannot be honoured
(a ``ValueError`` naming the key, never a silent drop).

Checked against the default configs of DDPM, DDIM, PNDM, Euler, EulerAncestral, Heun, LMS,
DPMSolverMultistep, UniPC and DEIS.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Dict

import diffusers

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

# Configs of models that are not VP / VE diffusion models in hf_ddm's sense, told by a key they always carry.
# EDM's: the network is preconditioned (c_in, c_skip, c_out around sigma_data) and called with c_noise(sigma);
# flow matching's: x_t = (1 - t) x0 + t eps, a velocity model on another path (``use_dynamic_shifting`` and
# ``use_flow_sigmas`` are also keys of DPM-Solver++ / UniPC / DEIS configs: refused by ``_ONLY_AT`` when on).
_EDM_KEYS = ("sigma_data", "sigma_schedule")
_FLOW_KEYS = ("shift", "base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len",
              "invert_sigmas", "stochastic_sampling")


def refuse_other_parameterisations(config: Dict[str, Any], owner: str) -> None:
    """A ValueError naming the key when ``config`` is an EDM or a flow-matching scheduler's: such a model read
    as a VP / VE one would be sampled wrongly (diffusers itself only logs the unknown keys)."""
    name = str(config.get("_class_name") or "")
    edm = [k for k in _EDM_KEYS if k in config]
    if edm or name.startswith("EDM"):
        key = edm[0] if edm else "_class_name"
        raise ValueError(
            f"{owner}.from_config: {key}={config.get(key)!r} is an EDM scheduler's config (EDMEulerScheduler, "
            "EDMDPMSolverMultistepScheduler): the model is EDM-preconditioned (c_in, c_skip, c_out around sigma_data) "
            "and takes c_noise(sigma), which no hf_ddm scheduler reproduces. Sample it with the EDM scheduler it "
            "was saved with."
        )
    flow = [k for k in _FLOW_KEYS if k in config]
    if flow or name.startswith("FlowMatch") or config.get("use_flow_sigmas"):
        key = flow[0] if flow else ("use_flow_sigmas" if config.get("use_flow_sigmas") else "_class_name")
        raise ValueError(
            f"{owner}.from_config: {key}={config.get(key)!r} is a flow-matching scheduler's config "
            "(FlowMatchEulerDiscreteScheduler: SD3, Flux): the model predicts a velocity on x_t = (1 - t) x0 + t eps, "
            "not a VP / VE diffusion model. Sample it with the flow-matching scheduler it was saved with."
        )


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


def sampler_settings(config: Dict[str, Any]) -> Dict[str, Any]:
    """The keys of a diffusers config that only its own sampler reads (``SAMPLER_KEYS``, and the
    ``_ONLY_AT`` keys at the values hf_ddm honours): kept, unused, in the hf_ddm scheduler's config, so that
    ``X.from_config(scheduler.config)`` gives the checkpoint's own sampler back."""
    return {k: v for k, v in config.items() if k in SAMPLER_KEYS or k in _ONLY_AT}


def checkpoint_spacing(config: Dict[str, Any]) -> Dict[str, Any]:
    """``timestep_spacing`` and ``steps_offset`` of a diffusers config as its own scheduler reads them: a key
    the config lacks (checkpoints saved before diffusers had it, as SD 1.5's) takes the default of the class
    its ``_class_name`` names (PNDM, DDIM, DDPM: "leading"; Euler, DPM-Solver++, UniPC: "linspace"), else
    "leading" and 0."""
    defaults = {"timestep_spacing": "leading", "steps_offset": 0}
    cls = getattr(diffusers, str(config.get("_class_name") or ""), None)
    try:
        params = inspect.signature(cls.__init__).parameters if isinstance(cls, type) else {}
    except (TypeError, ValueError):
        params = {}
    for key in defaults:
        if key in params and params[key].default is not inspect.Parameter.empty:
            defaults[key] = params[key].default
    return {key: config[key] if config.get(key) is not None else default for key, default in defaults.items()}


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


__all__ = ["MODEL_KEYS", "SAMPLER_KEYS", "load_config_dict", "is_vp_schedule_config", "vp_schedule_kwargs",
           "refuse_other_parameterisations", "sampler_settings", "checkpoint_spacing"]
