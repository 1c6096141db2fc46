"""Size limits, checked before anything is allocated, and the integer checks that apply them.

A config asking for 10**9 channels or a 40000-pixel image, or a sampler asked for 10**7 steps, is
almost surely a typo; without a bound it goes straight to the allocator and fails minutes (or
gigabytes) later with an error that names nothing. The limits sit far above any model this package
ships or trains. They are read at call time, so a user who really means it raises them in place::

    import hf_ddm.limits
    hf_ddm.limits.MAX_SAMPLE_SIZE = 8192
"""

from __future__ import annotations

import math
import operator
from typing import Optional, Sequence

import torch

# Widest layer of any model (channels of one U-Net / VAE / classifier level, in or out).
MAX_CHANNELS = 16_384
# Height or width a model is configured for (its ``sample_size``).
MAX_SAMPLE_SIZE = 4_096
# Steps of one sampling grid (``set_timesteps``, ``num_inference_steps``).
MAX_INFERENCE_STEPS = 100_000
# Images of one pipeline call.
MAX_BATCH_SIZE = 65_536


def check_int(name: str, value, low: int = 1, high: Optional[int] = None, limit: Optional[str] = None) -> int:
    """``value`` as an int in [low, high]: Python / numpy integers and 0-d integer tensors pass; bools,
    floats and strings do not. ``limit`` names the module constant ``high`` comes from, for the message."""
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be an integer, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"`{name}` must be an integer, got {value!r}") from None
    if n < low:
        raise ValueError(f"`{name}` must be >= {low}, got {n}")
    if high is not None and n > high:
        hint = f" (hf_ddm.limits.{limit}; raise it there if you mean it)" if limit else ""
        raise ValueError(f"`{name}` must be <= {high}{hint}, got {n}")
    return n


def check_positive_float(name: str, value) -> float:
    """A finite number > 0 (NaN and inf are refused: comparisons with NaN are all False)."""
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}")
    return v


def check_channels(name: str, value) -> int:
    return check_int(name, value, 1, MAX_CHANNELS, "MAX_CHANNELS")


def check_sample_size_config(value, name: str = "sample_size") -> None:
    """A model's nominal ``sample_size``: one int or an (h, w) pair, each in [1, MAX_SAMPLE_SIZE]."""
    sizes: Sequence = [value] if not isinstance(value, (list, tuple)) else value
    if isinstance(value, (list, tuple)) and len(value) != 2:
        raise ValueError(f"`{name}` must be an int or an (height, width) pair, got {value!r}")
    for v in sizes:
        check_int(name, v, 1, MAX_SAMPLE_SIZE, "MAX_SAMPLE_SIZE")


def check_step_count(value, name: str = "num_inference_steps") -> int:
    return check_int(name, value, 1, MAX_INFERENCE_STEPS, "MAX_INFERENCE_STEPS")


def check_batch_size(value, name: str = "batch_size") -> int:
    return check_int(name, value, 1, MAX_BATCH_SIZE, "MAX_BATCH_SIZE")


# ------------------------------------------------------------------------------------------------
# Scheduler arguments: one rule per argument, whichever scheduler takes it.
# ------------------------------------------------------------------------------------------------

SDES = ("vp", "subvp", "ve")
SDE_ALIASES = ("sub-vp", "sub_vp")  # spellings of sub-VP that configs in the wild use
TIME_GRIDS = ("uniform", "rho", "log_snr", "spacing")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
MAX_CORRECT_STEPS = 1_000


def check_choice(name: str, value, choices: Sequence):
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_x0_processing(clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value):
    """The config checks of diffusers' x0 clipping / dynamic thresholding keys."""
    if clip_sample and not clip_sample_range > 0:
        raise ValueError(f"clip_sample_range must be > 0, got {clip_sample_range}")
    # diffusers' ranges: a quantile in [0, 1] (0: the threshold is 1, plain clipping), and any largest
    # threshold > 0 (below 1 it is the threshold itself: x0 clipped to it and rescaled to [-1, 1]).
    if thresholding and not 0 <= dynamic_thresholding_ratio <= 1:
        raise ValueError(f"dynamic_thresholding_ratio must be in [0, 1], got {dynamic_thresholding_ratio}")
    if thresholding and not (sample_max_value > 0 and math.isfinite(sample_max_value)):
        raise ValueError(f"sample_max_value must be a finite number > 0, got {sample_max_value}")


def check_eta(eta, solver=None, owner: str = "this scheduler") -> float:
    """DDIM's ``eta`` as a float: finite and >= 0, and > 0 only for a solver that takes it (every other
    solver's noise is fixed by its formula: an eta it would ignore is refused, not dropped)."""
    try:
        value = float(eta)
    except (TypeError, ValueError):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    if value > 0 and solver is not None and not solver.takes_eta:
        from .solver_registry import SOLVERS

        takers = [s.name for s in SOLVERS.values() if s.takes_eta]
        raise ValueError(f"eta={eta} cannot be honoured by {owner}'s solver {solver.name!r}: its noise is fixed by "
                         f"the solver. eta is DDIM's: use solver {takers} (VPScheduler: sampler='ddim'), or eta=0")
    return value


def check_scheduler_args(scheduler: str, discrete: bool = True, **args) -> None:
    """The constructor arguments of hf_ddm's schedulers (``scheduler``: the class name), checked in one
    place: an argument has one meaning and one range in whichever scheduler takes it. ``discrete``: the
    process has a finite train grid (VP / VE schedulers, a diffusers schedule in SDEScheduler). Checks that
    need the built process (``log_snr_min`` against its log-SNR) stay with it."""
    from .processes import check_beta_range, check_prediction_type, check_sigma_range

    from .solver_registry import SCHEDULER_KEYS, for_config

    get = args.get
    if "sde" in args:
        check_choice("sde", args["sde"], SDES + SDE_ALIASES)
    key = SCHEDULER_KEYS[scheduler]
    solver = for_config(scheduler, args[key]) if key in args else None
    for name, choices in (("time_grid", TIME_GRIDS), ("variance_type", VARIANCE_TYPES),
                          ("timestep_spacing", TIMESTEP_SPACINGS)):
        if name in args:
            check_choice(name, args[name], choices)
    if "prediction_type" in args:
        check_prediction_type(args["prediction_type"])
        if scheduler == "VPScheduler" and args["prediction_type"] == "score":
            raise ValueError("prediction_type='score' is not supported by VPScheduler: discrete VP models predict "
                             "epsilon, sample or v_prediction; use the SDE scheduler for score models")
    if "num_train_timesteps" in args:
        check_int("num_train_timesteps", args["num_train_timesteps"], 2 if discrete else 1)
    if get("trained_betas") is not None and len(args["trained_betas"]) != args["num_train_timesteps"]:
        raise ValueError(f"trained_betas has {len(args['trained_betas'])} entries but "
                         f"num_train_timesteps={args['num_train_timesteps']}")
    if "solver_order" in args and not (isinstance(args["solver_order"], int) and 1 <= args["solver_order"] <= 3):
        raise ValueError(f"solver_order must be 1, 2 or 3, got {args['solver_order']!r}")
    # The Langevin corrector's target signal-to-noise ratio: checked whatever the solver, so that a config
    # does not carry a value that would break the moment a corrector runs.
    for name in ("snr", "corrector_snr"):
        if get(name) is not None:
            check_positive_float(name, args[name])
    if "correct_steps" in args:
        check_int("correct_steps", args["correct_steps"], 0, MAX_CORRECT_STEPS, "MAX_CORRECT_STEPS")
        if solver is not None and solver.correctors and args["correct_steps"] == 0:
            raise ValueError(f"correct_steps must be >= 1 for solver={solver.name!r} (its Langevin corrections per "
                             "step); with none it is solver='reverse_diffusion'")
    for name in ("beta_start", "beta_end"):
        if name in args:
            value = args[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    if "eta" in args:
        check_eta(args["eta"], solver, scheduler)
    if "rho" in args:
        check_positive_float("rho", args["rho"])
    if get("log_snr_min") is not None and not math.isfinite(args["log_snr_min"]):
        raise ValueError(f"log_snr_min must be a finite number or None, got {args['log_snr_min']}")
    if "clip_sample" in args:
        check_x0_processing(args["clip_sample"], args["clip_sample_range"], args["thresholding"],
                            args["dynamic_thresholding_ratio"], args["sample_max_value"])
    if scheduler == "SDEScheduler":
        _check_sde_time(args, discrete)
    if scheduler == "VEScheduler" or get("sde") == "ve":
        check_sigma_range(args["sigma_min"], args["sigma_max"])
    elif "beta_min" in args and not discrete:
        check_beta_range(args["beta_min"], args["beta_max"])


def _check_sde_time(args: dict, discrete: bool) -> None:
    """SDEScheduler's process-time arguments: a diffusers schedule is a discrete VP one whose model takes its
    train timestep; a continuous process needs a positive scale, and (VP / sub-VP) a start above t = 0."""
    sde, scale, eps = args["sde"], args["timestep_scale"], args["sampling_eps"]
    if discrete and sde != "vp":
        raise ValueError(f"beta_schedule / trained_betas describe a discrete VP schedule: they need sde='vp', got sde={sde!r}")
    if discrete and scale is not None and float(scale) != args["num_train_timesteps"] - 1:
        raise ValueError(f"timestep_scale={scale}: a discrete schedule's model takes its train timestep, so "
                         f"timestep_scale must be num_train_timesteps - 1 = {args['num_train_timesteps'] - 1} (or None)")
    if scale is not None and not (float(scale) > 0 and math.isfinite(float(scale))):
        raise ValueError(f"timestep_scale must be > 0, got {scale}")
    if eps is not None and not 0 <= eps < 1:
        raise ValueError(f"sampling_eps must be in [0, 1), got {eps}")
    if eps == 0 and sde != "ve" and not discrete:
        raise ValueError("sampling_eps must be > 0 for VP / sub-VP (s(0) = 0: the score is singular)")


def as_class_ids(class_labels, num_ids=None, name: str = "class_labels", null_id=None) -> torch.Tensor:
    """``class_labels`` as a long tensor of ids in [0, num_ids): integer tensors / ints / lists pass,
    integral floats are converted, fractional or non-finite floats and bools are refused (a float label
    would otherwise be truncated silently, an id out of range die as an IndexError inside nn.Embedding).
    ``null_id``: an extra id in range that means "no class" (classifier-free guidance), for the message.
    The value checks are skipped while torch.compile traces (they read the tensor)."""
    ids = torch.as_tensor(class_labels)
    if ids.dtype == torch.bool or ids.is_complex():
        raise ValueError(f"`{name}` must hold integer class ids, got dtype {ids.dtype}")
    checking = not torch.compiler.is_compiling()
    if ids.is_floating_point():
        if checking and not torch.equal(ids, ids.round()):
            raise ValueError(f"`{name}` must hold integer class ids, got non-integer values {ids.flatten()[:8].tolist()}")
        ids = ids.long()
    elif ids.dtype != torch.long:
        ids = ids.long()
    if checking and num_ids is not None and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_ids):
        null = f" ({null_id} is the null class)" if null_id is not None else ""
        raise ValueError(f"`{name}` must be in [0, {num_ids - 1}]{null}, got {ids.flatten()[:8].tolist()}")
    return ids


def check_batch_of(name: str, value: torch.Tensor, batch_size: int) -> None:
    """A per-sample model input (``class_labels``, ``encoder_hidden_states``): one entry per sample of the batch,
    or one for all of it (broadcast), checked before it meets the sample inside the model."""
    n = int(value.shape[0]) if value.ndim else 1
    if n not in (1, batch_size):
        raise ValueError(f"`{name}` has a batch of {n} but the sample has {batch_size}: pass one per sample "
                         f"(or one for the whole batch); got shape {tuple(value.shape)}")


def check_context(encoder_hidden_states, batch_size: int, width: int, encoder_attention_mask=None) -> None:
    """Cross-attention tokens (batch, tokens, ``width``) -- ``width`` the model's cross_attention_dim -- and
    their (batch, tokens) mask, checked before the attention's matmul fails on them."""
    if not torch.is_tensor(encoder_hidden_states):
        raise TypeError(f"`encoder_hidden_states` must be a torch.Tensor (batch, tokens, cross_attention_dim), got "
                        f"{type(encoder_hidden_states).__name__}")
    shape = tuple(encoder_hidden_states.shape)
    if len(shape) != 3 or shape[-1] != width or shape[1] == 0:
        raise ValueError(f"`encoder_hidden_states` must have shape (batch, tokens, cross_attention_dim={width}), "
                         f"got {shape}")
    check_batch_of("encoder_hidden_states", encoder_hidden_states, batch_size)
    if encoder_attention_mask is not None:
        mask = tuple(torch.as_tensor(encoder_attention_mask).shape)
        if len(mask) != 2 or mask[1] != shape[1] or mask[0] not in (1, shape[0], batch_size):
            raise ValueError(f"`encoder_attention_mask` must have shape (batch, tokens) = ({shape[0]}, {shape[1]}) "
                             f"like encoder_hidden_states, got {mask}")


__all__ = ["MAX_CHANNELS", "MAX_SAMPLE_SIZE", "MAX_INFERENCE_STEPS", "MAX_BATCH_SIZE", "MAX_CORRECT_STEPS", "check_int",
           "check_positive_float", "check_channels", "check_sample_size_config", "check_step_count", "check_batch_size",
           "check_choice", "check_x0_processing", "check_eta", "check_scheduler_args", "as_class_ids", "check_batch_of",
           "check_context"]
