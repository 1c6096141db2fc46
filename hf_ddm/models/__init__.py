"""hf_ddm models: diffusers ``ModelMixin`` classes sharing the layers in ``layers.py``.

Module paths (``hf_ddm.models.unet.UNet`` ...) are written into saved pipelines' model_index.json:
they are public API, keep them stable.
"""

from .classifier import NoisyClassifier, NoisyClassifierOutput
from .unet import UNet, UNetOutput
from .vae import VAE, VAELossOutput

__all__ = ["UNet", "UNetOutput", "VAE", "VAELossOutput", "NoisyClassifier", "NoisyClassifierOutput"]
