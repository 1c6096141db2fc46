"""hf_ddm's schedulers. Their module paths (``hf_ddm.schedulers.vp`` ...) are what diffusers records in
a saved pipeline's model_index.json, so they are public and stable."""

from .base import ProcessSchedulerMixin, SchedulerOutput
from .sde import SDEScheduler
from .ve import VEScheduler
from .vp import VPScheduler

__all__ = ["VPScheduler", "VEScheduler", "SDEScheduler", "SchedulerOutput", "ProcessSchedulerMixin"]
