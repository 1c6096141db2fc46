"""Pick and load the checkpoint a run resumes from.

``--resume_from_checkpoint latest`` tries the complete checkpoints newest first: one that fails its
manifest (a truncated, missing, altered or extra file) or whose files do not load is skipped with a
warning naming it, renamed to ``<name>.damaged`` (kept, never deleted), and the previous one is tried.
An explicit path is never replaced by another: if it is damaged, the run stops with the reason.
Nothing on this path unpickles arbitrary objects (see ``checkpoint`` and ``own_state``).
"""

from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple

from . import checkpoint as ckpt
from .own_state import EMA_FILE, restore_state

logger = logging.getLogger("hf_ddm.training")


def _broadcast(accelerator, value):
    """The main process's ``value`` on every process (verifying once, deciding the same everywhere)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _load(accelerator, path: str, lr_scheduler, ema, model) -> dict:
    accelerator.load_state(path)  # models (safetensors), optimizer/RNG/scaler (torch.load, weights_only=True)
    state = ckpt.read_state(path)
    tensors = ckpt.load_tensor_file(path, EMA_FILE) if ema is not None else None
    restore_state(state, tensors, lr_scheduler, ema, model)
    if ema is not None:
        ema.to(accelerator.device)
    return state


def resume(accelerator, resume_from: Optional[str], output_dir: str, lr_scheduler, ema,
           model) -> Optional[Tuple[str, dict]]:
    """Collective. (checkpoint path, its training state) after loading it into the prepared objects,
    ``lr_scheduler`` and ``ema``; None when there is nothing to resume from."""
    from .args import ConfigError

    candidates = ckpt.resume_candidates(resume_from, output_dir)
    if resume_from == "latest" and not candidates:
        logger.info("--resume_from_checkpoint latest: no complete checkpoint in %s, starting a new run", output_dir)
    explicit = resume_from != "latest"
    damaged: List[Tuple[str, str]] = []
    chosen = None
    for path in candidates:
        problem = _broadcast(accelerator, ckpt.verify(path) if accelerator.is_main_process else None)
        if problem is None:
            try:
                state = _load(accelerator, path, lr_scheduler, ema, model)
            except Exception as e:  # noqa: BLE001 -- any file that does not load makes the checkpoint unusable
                problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if not ckpt._all_ok(accelerator, problem is None):
                problem = problem or "it does not load on another process"
        if problem is None:
            chosen = (path, state)
            break
        if explicit:
            raise ConfigError(f"--resume_from_checkpoint {path}: the checkpoint is damaged: {problem}")
        damaged.append((path, problem))
        logger.warning("checkpoint %s is damaged (%s); trying the previous one", path, problem)

    if damaged and chosen is None:  # nothing renamed: a second attempt must fail the same way, not start afresh
        names = "; ".join(f"{os.path.basename(p)}: {why}" for p, why in damaged)
        raise ckpt.CheckpointError(f"--resume_from_checkpoint latest: no usable checkpoint in {output_dir} ({names}). "
                                   "Remove the damaged folders or drop --resume_from_checkpoint to start a new run.")
    if damaged:
        # Renamed, not deleted: kept for inspection, and out of the way of pruning and of the save of the
        # same step that this run will make again.
        if accelerator.is_main_process:
            for path, problem in damaged:
                kept = ckpt.set_aside(path)
                logger.warning("the damaged checkpoint %s is kept as %s (%s); nothing was deleted", path, kept, problem)
        accelerator.wait_for_everyone()
        logger.warning("resuming from %s instead of the damaged %s", chosen[0],
                       ", ".join(os.path.basename(p) for p, _ in damaged))
    return chosen


__all__ = ["resume"]
