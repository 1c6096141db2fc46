"""Atomic, verifiable checkpoints on top of ``accelerator.save_state``.

A checkpoint is written to ``<output_dir>/.tmp-checkpoint-<step>`` and becomes ``checkpoint-<step>`` by a
single ``os.replace`` once every process has written its part and the files are fsynced, so a run
killed at any moment leaves either the complete checkpoint or none under the final name. The last
file written inside is ``training_state.json``: the step counters, hf_ddm's own state (LR schedule, EMA
scalars) and a manifest with the size and sha256 of every other file, so resume can tell a damaged
checkpoint from a complete one before it loads anything. Tensors hf_ddm adds (the EMA weights) are
safetensors files; nothing hf_ddm writes or reads is a pickle, and the files Accelerate writes (optimizer,
RNG, scaler) are read by Accelerate with ``torch.load(weights_only=True)``, which cannot run code.
Old checkpoints beyond ``--checkpoints_total_limit`` are renamed out of the way before deletion, so a
kill during pruning never leaves a half-deleted folder under a ``checkpoint-*`` name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from typing import Dict, List, Optional, Tuple

STATE_FILE = "training_state.json"
MODEL_CONFIG_FILE = "model_config.json"  # written by a training script into its output_dir, beside checkpoint-N
MANIFEST_KEY = "files"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-checkpoint-"
_DEL_PREFIX = ".del-checkpoint-"
DAMAGED_SUFFIX = ".damaged"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or no usable one could be read; the message names the folder."""


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


# ---- manifest ---------------------------------------------------------------------------------------


def _files(path: str) -> List[str]:
    """Relative paths of the regular files under ``path`` except the state file, sorted."""
    out = []
    for root, _dirs, files in os.walk(path):
        for fn in files:
            rel = os.path.relpath(os.path.join(root, fn), path)
            if rel != STATE_FILE:
                out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def manifest(path: str) -> Dict[str, dict]:
    """{relative path: {"size", "sha256"}} of every file of a checkpoint folder but the state file."""
    return {rel: {"size": os.path.getsize(os.path.join(path, rel)), "sha256": _sha256(os.path.join(path, rel))}
            for rel in _files(path)}


def verify(path: str) -> Optional[str]:
    """None if ``path`` is a complete, undamaged checkpoint; else what is wrong with it (one line)."""
    try:
        state = read_state(path)
    except (OSError, ValueError) as e:
        return f"{STATE_FILE} is unreadable ({e})"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return f"{STATE_FILE} holds no global_step"
    expected = state.get(MANIFEST_KEY)
    if not isinstance(expected, dict):
        return f"{STATE_FILE} has no file manifest (written by an older hf_ddm, or edited)"
    present = set(_files(path))
    missing = sorted(set(expected) - present)
    if missing:
        return f"missing {', '.join(missing)}"
    extra = sorted(present - set(expected))
    if extra:  # e.g. a planted custom_checkpoint_0.pkl, which accelerate.load_state would unpickle
        return f"files that the checkpoint did not write: {', '.join(extra)}"
    for rel, meta in sorted(expected.items()):
        full = os.path.join(path, rel)
        if not isinstance(meta, dict) or os.path.getsize(full) != meta.get("size"):
            return f"{rel} has the wrong size (truncated?)"
        if _sha256(full) != meta.get("sha256"):
            return f"{rel} fails its sha256 checksum"
    return None


def _fit(tensors: dict, expected: dict):
    """``tensors`` renamed to ``expected``'s keys when they are the same set of shapes under one common prefix
    (a training task's wrapper module, e.g. ``vae.``, or none); None when they are not."""
    some = next(iter(expected), "")
    for prefix in sorted({k[: len(k) - len(some)] for k in tensors if k.endswith(some)}, key=len):
        fitted = {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}
        if len(fitted) == len(tensors) and fitted.keys() == expected.keys() and all(
                t.shape == expected[k].shape for k, t in fitted.items()):
            return fitted
    return None


def load_model(cls, path: str, config: Optional[str] = None, weights: str = "model"):
    """The ``cls`` model a training checkpoint holds, built from ``config`` (a config JSON; default: the run's
    ``model_config.json`` beside the checkpoint) -- for evaluating a run while it is still going. The
    checkpoint is verified first (a damaged or planted file is refused, nothing pickled is read); among
    its ``model*.safetensors`` (Accelerate numbers them in prepare order) the one whose tensors fit ``cls``
    exactly, under one common prefix (a training task's wrapper module, e.g. ``vae.``), is loaded.
    ``weights="ema"``: the EMA weights (``ema.safetensors``) instead, what a finished run would save."""
    from safetensors.torch import load_file

    problem = verify(path)
    if problem:
        raise CheckpointError(f"{path}: not a usable checkpoint: {problem}")
    config = config or os.path.join(os.path.dirname(os.path.abspath(path)), MODEL_CONFIG_FILE)
    if not os.path.isfile(config):
        raise CheckpointError(f"{path}: no model config: pass one ({MODEL_CONFIG_FILE} of the run is missing)")
    if hasattr(cls, "config_class"):  # a transformers model (the text encoder of a text LDM)
        model = cls(cls.config_class.from_json_file(config))
    else:
        model = cls.from_config(cls.load_config(config))
    expected = model.state_dict()
    for name in sorted(f for f in os.listdir(path) if re.fullmatch(rf"{re.escape(weights)}(_\d+)?\.safetensors", f)):
        fitted = _fit(load_file(os.path.join(path, name)), expected)
        if fitted is not None:
            model.load_state_dict(fitted)
            return model.eval()
    raise CheckpointError(f"{path}: no {weights}*.safetensors holds a {cls.__name__} of the configuration {config}")


# ---- writing ----------------------------------------------------------------------------------------


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


def _all_ok(accelerator, ok: bool) -> bool:
    """Collective: True when ``ok`` on every process. A process whose part failed still reaches this
    point, so the others learn of it here instead of waiting forever at a barrier."""
    if accelerator.num_processes == 1:
        return ok
    from accelerate.utils import gather_object

    return all(gather_object([ok]))


def _write_own_files(tmp: str, state: dict, tensor_files: Dict[str, dict]) -> None:
    """hf_ddm's own files (safetensors), then the state file with the manifest, written last."""
    from safetensors.torch import save_file

    for name, tensors in tensor_files.items():
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, os.path.join(tmp, name))
    state = dict(state, **{MANIFEST_KEY: manifest(tmp)})
    with open(os.path.join(tmp, STATE_FILE), "w") as f:
        json.dump(state, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    _fsync_tree(tmp)


def save_checkpoint(accelerator, output_dir: str, step: int, state: dict, total_limit: Optional[int] = None,
                    tensor_files: Optional[Dict[str, dict]] = None) -> str:
    """Collective: every process must call it. ``state`` must be JSON; ``tensor_files`` maps a file name
    to the tensors it holds. Returns the final checkpoint path; raises ``CheckpointError`` (on every
    process) when any part could not be written -- a full disk, a read-only folder -- after removing the
    partial folder; the checkpoints already complete are left as they are."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = os.path.join(output_dir, f"{_TMP_PREFIX}{step}")
    main = accelerator.is_main_process

    def create():
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)

    def finish():
        if main:
            _finish(output_dir, tmp, final, step, state, tensor_files or {})

    # save_state: models, optimizer, scaler, the RNG of every process -- and no registered custom
    # objects, which Accelerate pickles and unpickles with weights_only=False
    phases = [("create", create), ("write", lambda: accelerator.save_state(tmp)), ("finish", finish)]
    for what, phase in phases:
        error = None
        try:
            phase()
        except Exception as e:  # noqa: BLE001 -- OSError (ENOSPC, EROFS, EACCES) or torch's "unexpected pos"
            error = e
        if not _all_ok(accelerator, error is None):
            if main:
                shutil.rmtree(tmp, ignore_errors=True)  # frees the space the partial write took
            last = latest_checkpoint(output_dir)
            cause = f": {type(error).__name__}: {error}" if error is not None else " on another process"
            raise CheckpointError(
                f"could not {what} checkpoint-{step} in {output_dir}{cause}. Free space or fix the permissions of "
                f"{output_dir}; " + (f"the last complete checkpoint {last} is intact." if last else
                                     "no complete checkpoint exists yet.")) from error
    if main and total_limit is not None:
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def _finish(output_dir: str, tmp: str, final: str, step: int, state: dict, tensor_files: Dict[str, dict]) -> None:
    _write_own_files(tmp, state, tensor_files)
    if os.path.exists(final):  # re-saving a step (e.g. after a resume from an earlier checkpoint)
        trash = os.path.join(output_dir, f"{_DEL_PREFIX}{step}")
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(output_dir)


def prune_checkpoints(output_dir: str, total_limit: int) -> List[str]:
    ckpts = list_checkpoints(output_dir)
    removed = []
    for _step, path in ckpts[: max(0, len(ckpts) - total_limit)]:
        trash = os.path.join(output_dir, _DEL_PREFIX + os.path.basename(path).split("-", 1)[1])
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(path)
    return removed


def set_aside(path: str) -> str:
    """Rename a damaged checkpoint to ``<name>.damaged[.N]``: kept for inspection, never listed, pruned
    or overwritten by a later save of the same step."""
    target, n = path.rstrip("/") + DAMAGED_SUFFIX, 1
    while os.path.exists(target):
        target, n = f"{path.rstrip('/')}{DAMAGED_SUFFIX}.{n}", n + 1
    os.replace(path, target)
    return target


# ---- reading ----------------------------------------------------------------------------------------


def resume_candidates(resume_from: Optional[str], output_dir: str) -> List[str]:
    """The checkpoints to try, best first: for 'latest' every complete one, newest first (empty: start
    a new run); for a path just that one (it must exist and be complete)."""
    from .args import ConfigError

    if not resume_from:
        return []
    if resume_from == "latest":
        return [p for _s, p in reversed(list_checkpoints(output_dir))]
    path = resume_from if os.path.isabs(resume_from) or os.path.exists(resume_from) else os.path.join(output_dir, resume_from)
    if not os.path.isdir(path):
        raise ConfigError(f"--resume_from_checkpoint {resume_from!r}: no such checkpoint folder")
    if not is_complete(path):
        raise ConfigError(f"--resume_from_checkpoint {resume_from!r} is incomplete (no {STATE_FILE}); "
                          "it was interrupted while being written")
    return [path]


def resolve_resume(resume_from: Optional[str], output_dir: str) -> Optional[str]:
    """'latest' -> newest complete checkpoint or None; a path -> that path (must be complete)."""
    found = resume_candidates(resume_from, output_dir)
    return found[0] if found else None


def load_tensor_file(path: str, name: str) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(path, name))


__all__ = ["save_checkpoint", "list_checkpoints", "latest_checkpoint", "read_state", "clean_incomplete",
           "prune_checkpoints", "resolve_resume", "resume_candidates", "verify", "manifest", "set_aside",
           "load_tensor_file", "CheckpointError", "STATE_FILE"]
