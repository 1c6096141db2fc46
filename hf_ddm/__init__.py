"""hf_ddm: diffusion models that plug into Hugging Face diffusers."""

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
from .mixture import GaussianMixture, sliced_wasserstein

__version__ = "0.1.0"
