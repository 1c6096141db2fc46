"""hf_ddm's own training state -- LR schedule and EMA -- as JSON plus safetensors.

Accelerate could checkpoint both as registered custom objects, but it pickles those and unpickles them
with ``weights_only=False``, so a planted file would run code on resume. Here the LR schedule is a few
numbers in ``training_state.json`` and the EMA is its scalars there plus its weights in
``ema.safetensors``, keyed by parameter name; restoring checks names and shapes against the model.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

EMA_FILE = "ema.safetensors"
# LambdaLR.state_dict() keys that hold numbers (its lr_lambdas are closures and saved as None)
_LR_KEYS = ("base_lrs", "last_epoch", "_step_count", "_is_initial", "_get_lr_called_within_step", "_last_lr")
_EMA_SCALARS = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma", "power")


def export_state(lr_scheduler, ema, model: torch.nn.Module) -> Tuple[dict, Dict[str, dict]]:
    """(JSON-able dict, {file name: tensors}) to checkpoint."""
    lr = lr_scheduler.state_dict()
    state = {"lr_scheduler": {k: lr[k] for k in _LR_KEYS if k in lr}}
    files = {}
    if ema is not None:
        full = ema.state_dict()
        state["ema"] = {k: full[k] for k in _EMA_SCALARS}
        names = [n for n, _p in model.named_parameters()]
        files[EMA_FILE] = dict(zip(names, full["shadow_params"], strict=True))
    return state, files


def restore_state(state: dict, tensors: Optional[Dict[str, torch.Tensor]], lr_scheduler, ema,
                  model: torch.nn.Module) -> None:
    """Inverse of ``export_state``; raises ``ValueError`` naming what does not fit."""
    lr = state.get("lr_scheduler")
    if not isinstance(lr, dict) or set(lr) - set(_LR_KEYS) or not isinstance(lr.get("last_epoch"), int):
        raise ValueError("training_state.json: lr_scheduler state is missing or malformed")
    if len(lr.get("base_lrs", [])) != len(lr_scheduler.base_lrs):
        raise ValueError("training_state.json: lr_scheduler has a different number of parameter groups")
    lr_scheduler.load_state_dict({**lr, "lr_lambdas": [None] * len(lr_scheduler.base_lrs)})  # keep its own lambdas
    if ema is None:
        return
    scalars = state.get("ema")
    if not isinstance(scalars, dict) or tensors is None:
        raise ValueError(f"no EMA state in the checkpoint (was it written without --use_ema?): {EMA_FILE}")
    shadow = []
    for name, p in model.named_parameters():
        t = tensors.get(name)
        if t is None or t.shape != p.shape:
            raise ValueError(f"{EMA_FILE}: parameter {name} is missing or has the wrong shape")
        shadow.append(t.to(dtype=p.dtype))
    if len(tensors) != len(shadow):
        raise ValueError(f"{EMA_FILE} holds parameters the model does not have")
    ema.load_state_dict({**{k: scalars[k] for k in _EMA_SCALARS if k in scalars}, "shadow_params": shadow})


__all__ = ["EMA_FILE", "export_state", "restore_state"]
