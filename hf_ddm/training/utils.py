"""Small helpers: image grids, checksums, per-step seeds."""

from __future__ import annotations

import hashlib
import math
import os
from typing import Dict, Optional

import numpy as np
import torch


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Model range [-1, 1] -> [0, 1] (clamped)."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def make_grid(images: torch.Tensor, nrow: Optional[int] = None, padding: int = 1) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> uint8 (H', W', 3) grid."""
    images = images.detach().float().cpu().clamp(0, 1)
    n, c, h, w = images.shape
    if c == 1:
        images = images.expand(-1, 3, -1, -1)
    elif c != 3:
        images = images[:, :3] if c > 3 else torch.cat([images, images[:, :1].expand(-1, 3 - c, -1, -1)], 1)
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    grid = torch.ones(3, ncol * (h + padding) + padding, nrow * (w + padding) + padding)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top: top + h, left: left + w] = images[i]
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_grid(images: torch.Tensor, path: str, nrow: Optional[int] = None) -> str:
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    Image.fromarray(make_grid(images, nrow)).save(tmp)
    os.replace(tmp, path)
    return path


def step_seed(*parts: int) -> int:
    """A 63-bit seed that is a hash of integer parts (seed, step, micro-step, rank ...)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint32)
               .astype(np.uint64).dot(np.array([1 << 31, 1], dtype=np.uint64)) & ((1 << 63) - 1))


def module_checksum(modules: Dict[str, torch.nn.Module]) -> str:
    """sha256 over parameters and buffers, in name order (identical weights <=> identical digest)."""
    h = hashlib.sha256()
    for mname in sorted(modules):
        for name, t in sorted(modules[mname].state_dict().items()):
            h.update(f"{mname}.{name}".encode())
            # reshape(-1): the bytes in logical order, whatever the memory format (channels_last included)
            h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


__all__ = ["to_unit_range", "make_grid", "save_grid", "step_seed", "module_checksum"]
