"""Fault injection for the training tests, from outside the product code.

In process (``install(...)`` under pytest's ``monkeypatch``) or as a wrapper around a training script in
a subprocess, for faults that need a real process death:

    python tests/faults.py --kill_in_loss 5 --kill_in_checkpoint 4 -- train/train_ddpm.py --data_dir ...

``kill_in_loss N``: SIGKILL inside the N-th loss evaluation of this process (a micro-step; with no
gradient accumulation, optimizer step ``first_step + N``), i.e. in the middle of a training step.
``kill_in_checkpoint S``: SIGKILL while checkpoint-S is being written (after ``accelerator.save_state``
wrote models, optimizer and RNG into the temporary folder, before hf_ddm's files and the rename).
``nan_in_loss N``: the N-th loss evaluation returns NaN.

The hooks wrap ``hf_ddm.training.train`` (the scripts look it up when they are loaded) and
``accelerate.Accelerator.save_state``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import runpy
import signal
import sys
from typing import Optional


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(setattr_=setattr, kill_in_loss: Optional[int] = None, kill_in_checkpoint: Optional[int] = None,
            nan_in_loss: Optional[int] = None) -> None:
    """Install the faults; ``setattr_`` is ``monkeypatch.setattr`` in tests (undone after the test)."""
    import accelerate

    import hf_ddm.training as training

    real_train = training.train

    def train(args, task, *a, **kw):
        real_loss, calls = task.loss, itertools.count(1)

        def loss(modules, batch, generator):
            n = next(calls)
            if n == kill_in_loss:
                _die()
            value, logs = real_loss(modules, batch, generator)
            if n == nan_in_loss:
                value = value * float("nan")
            return value, logs

        task.loss = loss
        return real_train(args, task, *a, **kw)

    setattr_(training, "train", train)
    if kill_in_checkpoint is not None:
        real_save = accelerate.Accelerator.save_state

        def save_state(self, output_dir=None, *a, **kw):
            result = real_save(self, output_dir, *a, **kw)
            if os.path.basename(str(output_dir).rstrip("/")) == f".tmp-checkpoint-{kill_in_checkpoint}":
                _die()
            return result

        setattr_(accelerate.Accelerator, "save_state", save_state)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--")
    p = argparse.ArgumentParser()
    for name in ("kill_in_loss", "kill_in_checkpoint", "nan_in_loss"):
        p.add_argument(f"--{name}", type=int, default=None)
    faults = p.parse_args(argv[:split])
    script, script_args = argv[split + 1], argv[split + 2:]
    install(**vars(faults))
    sys.argv = [script, *script_args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
