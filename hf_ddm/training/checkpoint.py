"""Atomic checkpoints on top of ``accelerator.save_state``.

A checkpoint is written to ``<output_dir>/.tmp-checkpoint-<step>`` and becomes ``checkpoint-<step>`` by a
single ``os.replace`` once every process has written its part and the files are fsynced, so a run
killed at any moment leaves either the complete checkpoint or none under the final name. The last
file written inside is ``training_state.json`` (global step, epoch, seed), which marks it complete.
Old checkpoints beyond ``--checkpoints_total_limit`` are renamed out of the way before deletion, so a
kill during pruning never leaves a half-deleted folder under a ``checkpoint-*`` name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import List, Optional, Tuple

STATE_FILE = "training_state.json"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-checkpoint-"
_DEL_PREFIX = ".del-checkpoint-"

# Testing hook: HF_DDM_FAULT="kill_during_checkpoint:<step>" SIGKILLs the process half-way through
# writing that step's checkpoint (after the model files, before the rename).
_FAULT_ENV = "HF_DDM_FAULT"


def list_checkpoints(output_dir: str) -> List[Tuple[int, str]]:
    """Complete checkpoints as (step, path), oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = _CKPT_RE.match(name)
        path = os.path.join(output_dir, name)
        if m and os.path.isfile(os.path.join(path, STATE_FILE)):
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str) -> Optional[str]:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1][1] if ckpts else None


def read_state(path: str) -> dict:
    with open(os.path.join(path, STATE_FILE)) as f:
        return json.load(f)


def is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, STATE_FILE))


def clean_incomplete(output_dir: str) -> List[str]:
    """Remove leftovers of interrupted saves/prunes (main process, before training)."""
    removed = []
    if not os.path.isdir(output_dir):
        return removed
    for name in os.listdir(output_dir):
        if name.startswith((_TMP_PREFIX, _DEL_PREFIX)):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
            removed.append(name)
    return removed


def _fsync_tree(path: str) -> None:
    for root, _dirs, files in os.walk(path):
        for fn in files:
            try:
                fd = os.open(os.path.join(root, fn), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(path)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _maybe_fault(step: int) -> None:
    spec = os.environ.get(_FAULT_ENV, "")
    if spec.startswith("kill_during_checkpoint:") and int(spec.split(":", 1)[1]) == step:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(accelerator, output_dir: str, step: int, state: dict, total_limit: Optional[int] = None) -> str:
    """Collective: every process must call it. Returns the final checkpoint path."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = os.path.join(output_dir, f"{_TMP_PREFIX}{step}")
    if accelerator.is_main_process:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)  # models, optimizer, scaler, RNG of every process, registered objects
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _maybe_fault(step)
        with open(os.path.join(tmp, STATE_FILE), "w") as f:
            json.dump(state, f, indent=2)
        _fsync_tree(tmp)
        if os.path.exists(final):  # re-saving a step (e.g. after a resume from an earlier checkpoint)
            trash = os.path.join(output_dir, f"{_DEL_PREFIX}{step}")
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(output_dir)
        if total_limit is not None:
            prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir: str, total_limit: int) -> List[str]:
    ckpts = list_checkpoints(output_dir)
    removed = []
    for _step, path in ckpts[: max(0, len(ckpts) - total_limit)]:
        trash = os.path.join(output_dir, _DEL_PREFIX + os.path.basename(path).split("-", 1)[1])
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(path)
    return removed


def resolve_resume(resume_from: Optional[str], output_dir: str) -> Optional[str]:
    """'latest' -> newest complete checkpoint or None; a path -> that path (must be complete)."""
    from .args import ConfigError

    if not resume_from:
        return None
    if resume_from == "latest":
        return latest_checkpoint(output_dir)
    path = resume_from if os.path.isabs(resume_from) or os.path.exists(resume_from) else os.path.join(output_dir, resume_from)
    if not os.path.isdir(path):
        raise ConfigError(f"--resume_from_checkpoint {resume_from!r}: no such checkpoint folder")
    if not is_complete(path):
        raise ConfigError(f"--resume_from_checkpoint {resume_from!r} is incomplete (no {STATE_FILE}); "
                          "it was interrupted while being written")
    return path


__all__ = ["save_checkpoint", "list_checkpoints", "latest_checkpoint", "read_state", "clean_incomplete",
           "prune_checkpoints", "resolve_resume", "STATE_FILE"]
