"""hf_ddm: diffusion models that plug into Hugging Face diffusers.

Pipelines live in ``hf_ddm.pipelines`` (imported on demand: they pull in the whole stack).
"""

from .few_step import OptimizedSteps, optimize_steps
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

__version__ = "0.1.0"  # the one version source: pyproject.toml reads it (dynamic version)
