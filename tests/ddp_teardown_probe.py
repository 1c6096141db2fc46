"""A torchrun entry for the 2-process test: runs a training script and reports, when ``end_training`` returns,
how many DDP wrappers are still alive and whether the process group is gone.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_teardown_probe.py train/train_ddpm.py --data_dir ...

A wrapper alive at that point holds the gloo group past ``destroy_process_group``; the group is then freed
from the wrapper's deallocation with the GIL held, which deadlocked a 2-process run at exit under load.
"""

from __future__ import annotations

import gc
import os
import runpy
import sys


def install() -> None:
    import accelerate
    import torch

    real_end = accelerate.Accelerator.end_training

    def end_training(self):
        real_end(self)
        gc.collect()
        live = sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
        print(f"rank {os.environ.get('RANK')} after end_training: {live} live DDP wrappers, process group "
              f"initialized: {torch.distributed.is_initialized()}", flush=True)

    accelerate.Accelerator.end_training = end_training


if __name__ == "__main__":
    install()
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
