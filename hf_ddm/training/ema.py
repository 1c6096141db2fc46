"""EMA of the trained network: diffusers' ``EMAModel`` (warm-up decay ``1 - (1 + step/inv_gamma)^-power``;
``foreach`` kernels, one call per step instead of one per tensor),
plus a context manager that swaps the averaged weights in for validation and the final save."""

from __future__ import annotations

import contextlib
from typing import Optional

from diffusers.training_utils import EMAModel


def make_ema(model, args) -> Optional[EMAModel]:
    if not getattr(args, "use_ema", False):
        return None
    return EMAModel(model.parameters(), decay=args.ema_max_decay, use_ema_warmup=True, inv_gamma=args.ema_inv_gamma,
                    power=args.ema_power, foreach=True, model_cls=type(model), model_config=getattr(model, "config", None))


@contextlib.contextmanager
def ema_weights(ema: Optional[EMAModel], model):
    """Inside the block ``model`` holds the EMA weights; the trained weights are restored after."""
    if ema is None:
        yield model
        return
    params = list(model.parameters())
    ema.store(params)
    ema.copy_to(params)
    try:
        yield model
    finally:
        ema.restore(params)


__all__ = ["EMAModel", "make_ema", "ema_weights"]
