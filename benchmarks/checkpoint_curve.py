"""What the training-curve scripts (vae_curve.py, ldm_curve.py) share: each complete checkpoint of a run that
is still training is measured once, as it appears (the run prunes old ones), and its row kept in OUT.json so
that the next call measures only the new ones."""

from __future__ import annotations

import json
import os
import sys
from typing import Callable, List

from hf_ddm.training.checkpoint import CheckpointError, list_checkpoints, read_state


def saved(out: str) -> dict:
    """OUT.json as a previous call left it ({} before the first)."""
    if not os.path.isfile(out + ".json"):
        return {}
    with open(out + ".json") as f:
        return json.load(f)


def measure_new(run: str, rows: List[dict], load: Callable, measure: Callable[..., dict], save: Callable[[], None],
                offset: int = 0) -> None:
    """Append a row (step + ``offset``, the run's training hours at it, ``measure(load(path))``) to ``rows`` for
    every checkpoint of ``run`` not in them, calling ``save()`` after each: a killed sweep keeps what it measured.
    A checkpoint pruned before ``load`` has it in memory is skipped with a message; errors while measuring are not
    swallowed."""
    done = {r["step"] for r in rows}
    for step, path in list_checkpoints(run):
        if offset + step in done:
            continue
        try:
            hours = read_state(path).get("train_seconds", 0.0) / 3600
            model = load(path)
        except (OSError, CheckpointError) as e:
            print(f"checkpoint-{step} went before it was read ({e}); skipped", file=sys.stderr)
            continue
        rows.append({"step": offset + step, "train_hours": hours, **measure(model)})
        save()
