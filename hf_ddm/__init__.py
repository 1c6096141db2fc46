"""hf_ddm: diffusion models that plug into Hugging Face diffusers.

Pipelines live in ``hf_ddm.pipelines`` (imported on demand: they pull in the whole stack).
"""

from .mixture import GaussianMixture, sliced_wasserstein
from .models import VAE, NoisyClassifier, UNet
from .processes import (
    PREDICTION_TYPES,
    ContinuousVE,
    ContinuousVP,
    DiscreteVE,
    DiscreteVP,
    NoiseProcess,
    SubVP,
    convert,
)
from .schedulers import SDEScheduler, VEScheduler, VPScheduler



def __getattr__(name):
    # Imported on first use, not here: `python -m hf_ddm.few_step` must find its module not yet imported
    # (runpy warns otherwise), and `import hf_ddm` stays light.
    if name in ("optimize_steps", "OptimizedSteps"):
        from . import few_step

        return getattr(few_step, name)
    raise AttributeError(f"module 'hf_ddm' has no attribute {name!r}")


__version__ = "0.1.0"  # the one version source: pyproject.toml reads it (dynamic version)
