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


__all__ = ["MAX_CHANNELS", "MAX_SAMPLE_SIZE", "MAX_INFERENCE_STEPS", "MAX_BATCH_SIZE", "check_int", "check_positive_float",
           "check_channels", "check_sample_size_config", "check_step_count", "check_batch_size", "as_class_ids"]
