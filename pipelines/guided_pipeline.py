"""Classifier-guided sampling: a noise-aware classifier steers an unconditional model toward
``class_labels`` (Dhariwal & Nichol). Pixel space, or latent space when a ``vae`` is given; any
scheduler, any prediction type (the guidance rewrites the model output in epsilon space).

Also the custom-pipeline code a saved folder carries: imports only hf_ddm, absolutely.
"""

from typing import Callable, List, Optional, Tuple, Union

import torch

from hf_ddm.adapter import call_model
from hf_ddm.guidance import classifier_guidance, guidance_active
from hf_ddm.pipeline_utils import HfDdmPipeline


class ClassifierGuidedPipeline(HfDdmPipeline):
    """Components: ``unet`` (unconditional), ``classifier`` (``NoisyClassifier`` trained on the same
    noise process and timesteps), ``scheduler``, optional ``vae`` (latent space)."""

    _optional_components = ["vae"]
    model_cpu_offload_seq = "classifier->unet->vae"

    def __init__(self, unet, classifier, scheduler, vae=None, class_names: Optional[List[str]] = None,
                 default_guidance_scale: Optional[float] = None, default_guidance_interval=None):
        super().__init__()
        if classifier.config.in_channels != unet.config.in_channels:
            raise ValueError(
                f"classifier in_channels ({classifier.config.in_channels}) must equal unet in_channels "
                f"({unet.config.in_channels}): both see the same noisy samples"
            )
        if vae is not None and vae.config.latent_channels != unet.config.in_channels:
            raise ValueError(
                f"vae latent_channels ({vae.config.latent_channels}) must equal unet in_channels ({unet.config.in_channels})"
            )
        self.register_modules(unet=unet, classifier=classifier, scheduler=scheduler, vae=vae)
        self.register_class_names(class_names)
        self.register_default_guidance_scale(default_guidance_scale)
        self.register_default_guidance_interval(default_guidance_interval)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Union[int, List[int], torch.Tensor],
        batch_size: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        num_inference_steps: int = 50,
        eta: Optional[float] = None,
        timesteps: Optional[List[int]] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: Optional[List[str]] = None,
        guidance_interval: Optional[Tuple[float, Optional[float]]] = None,
    ):
        """``guidance_scale`` s: 0 leaves the unconditional model as it is, 1 samples p(x | y) exactly
        for an exact classifier, s > 1 sharpens toward the class.
        ``guidance_scale=None`` uses the folder's ``default_guidance_scale`` (model_index.json: the one its
        card recommends), 1.0 where it has none. ``guidance_interval=(low, high)``: scale s only at noise
        levels sigma (noise over signal) in [low, high], 1 elsewhere; None: the folder's
        ``default_guidance_interval``; ``(0, None)``: every level."""
        batch_size = self.class_ids(class_labels).numel() if batch_size is None else batch_size
        self.check_common(batch_size, num_inference_steps, output_type, generator)
        guidance_scale = self.guidance_scale_or_default(guidance_scale)
        guidance_interval = self.guidance_interval_or_default(guidance_interval)
        labels = self.check_class_labels(class_labels, batch_size, self.classifier.config.num_classes)

        latents = self.prepare_latents(self.input_shape(batch_size), self.unet.dtype, generator, latents)

        def model_fn(x, t):
            out = call_model(self.unet, x, t)
            scale = guidance_scale if guidance_active(self.scheduler, t, guidance_interval) else 1.0
            return classifier_guidance(out, x, t, self.classifier, labels, scale, self.scheduler)

        latents = self.denoise(
            latents, model_fn, num_inference_steps, generator, eta, timesteps,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )
        if self.vae is not None and output_type != "latent":
            images = self.decode_latents(self.vae, latents)
        else:
            images = latents
        self.maybe_free_model_hooks()
        return self.to_output(images, output_type, return_dict)
