"""Pixel-space diffusion: a U-Net and any scheduler; unconditional, or class-conditional with
classifier-free guidance. hf_ddm's counterpart of diffusers' DDPMPipeline.

This file is also the custom-pipeline code a saved folder carries (model_index.json names it), so it
imports only hf_ddm, absolutely.
"""

from typing import Callable, List, Optional, Tuple, Union

import torch

from hf_ddm.adapter import call_model
from hf_ddm.pipeline_utils import HfDdmPipeline


class PixelDiffusionPipeline(HfDdmPipeline):
    """Components: ``unet`` (hf_ddm ``UNet`` or diffusers ``UNet2DModel``), ``scheduler`` (any)."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler, class_names: Optional[List[str]] = None,
                 default_guidance_scale: Optional[float] = None, default_guidance_interval=None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_class_names(class_names)
        self.register_default_guidance_scale(default_guidance_scale)
        self.register_default_guidance_interval(default_guidance_interval)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: Optional[int] = None,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        num_inference_steps: int = 50,
        class_labels: Optional[Union[int, List[int], torch.Tensor]] = None,
        guidance_scale: Optional[float] = None,
        eta: Optional[float] = None,
        timesteps: Optional[List[int]] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: Optional[List[str]] = None,
        guidance_interval: Optional[Tuple[float, Optional[float]]] = None,
    ):
        """Sample ``batch_size`` images (default: one per class label, or 1). ``class_labels`` (class models) with ``guidance_scale`` w:
        w = 1 samples the conditional, w > 1 applies classifier-free guidance, w = 0 the unconditional.
        ``guidance_scale=None`` uses the folder's ``default_guidance_scale`` (model_index.json: the one its
        card recommends), 1.0 where it has none. ``guidance_interval=(low, high)``: guidance only at noise
        levels sigma = s / a in [low, high], the conditional branch alone elsewhere; None: the folder's
        ``default_guidance_interval``; ``(0, None)``: every level."""
        if batch_size is None:
            batch_size = self.class_ids(class_labels).numel() if class_labels is not None else 1
        self.check_common(batch_size, num_inference_steps, output_type, generator)
        guidance_scale = self.guidance_scale_or_default(guidance_scale)
        guidance_interval = self.guidance_interval_or_default(guidance_interval)
        labels = self.check_class_labels(class_labels, batch_size)
        latents = self.prepare_latents(self.input_shape(batch_size), self.unet.dtype, generator, latents)

        def unet(x, t, **kwargs):
            return call_model(self.unet, x, t, **kwargs)

        if labels is None:
            model_fn = unet
        else:
            null = torch.full_like(labels, self.unet.config.num_class_embeds)
            model_fn = self.guided_model_fn(unet, {"class_labels": labels}, {"class_labels": null}, guidance_scale,
                                            guidance_interval, self.scheduler)
        images = self.denoise(
            latents, model_fn, num_inference_steps, generator, eta, timesteps,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )
        self.maybe_free_model_hooks()
        return self.to_output(images, output_type, return_dict)
