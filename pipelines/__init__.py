"""hf_ddm's DiffusionPipeline classes (installed as ``hf_ddm.pipelines``; each file doubles as Hub
custom-pipeline code)."""

from .guided_pipeline import ClassifierGuidedPipeline
from .latent_pipeline import LatentDiffusionPipeline
from .pixel_pipeline import PixelDiffusionPipeline

__all__ = ["PixelDiffusionPipeline", "LatentDiffusionPipeline", "ClassifierGuidedPipeline"]
