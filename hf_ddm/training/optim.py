"""The optimizer: AdamW, with the fastest kernel torch has for the parameters' device.

torch defaults to its per-tensor Python loop on the CPU (and to ``foreach`` on CUDA); the fused kernel
does the same update in one pass per step. The update is the same AdamW either way (same hyper-parameters,
same math); only floating-point summation order differs, so a run resumes bit-identically as long as it
keeps its ``--optimizer_impl``.
"""

from __future__ import annotations

from typing import Iterable

import torch

IMPLS = ("auto", "fused", "foreach", "for-loop")


def _fused_ok(params) -> bool:
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # older torch: CUDA only
        devices = {"cuda"}
    return all(p.is_floating_point() and p.device.type in devices for p in params)


def make_optimizer(params: Iterable[torch.nn.Parameter], args, lr: float) -> torch.optim.AdamW:
    """AdamW from the shared ``--adam_*`` flags; ``--optimizer_impl`` picks the kernel (``auto``: fused where
    the parameters' device supports it, else foreach)."""
    params = list(params)
    impl = getattr(args, "optimizer_impl", "auto") or "auto"
    if impl not in IMPLS:
        raise ValueError(f"--optimizer_impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = "fused" if _fused_ok(params) else "foreach"
    kwargs = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    return torch.optim.AdamW(params, lr=lr, betas=(args.adam_beta1, args.adam_beta2),
                             weight_decay=args.adam_weight_decay, eps=args.adam_epsilon, **kwargs)


__all__ = ["make_optimizer", "IMPLS"]
