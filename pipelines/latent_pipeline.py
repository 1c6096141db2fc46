"""Latent diffusion (Rombach et al.): a U-Net denoises the latents of a KL-VAE; unconditional,
class-conditional, or text-conditional through a transformers text encoder, with classifier-free
guidance. The U-Net works on z * scaling_factor; images are ``vae.decode(z / scaling_factor)``.

Also the custom-pipeline code a saved folder carries: imports only hf_ddm, absolutely.
"""

from typing import Callable, List, Optional, Tuple, Union

import torch

from hf_ddm.adapter import call_model
from hf_ddm.pipeline_utils import HfDdmPipeline
from hf_ddm.text import prompt_list, tokenize


class LatentDiffusionPipeline(HfDdmPipeline):
    """Components: ``unet``, ``vae`` (hf_ddm ``VAE`` or diffusers ``AutoencoderKL``), ``scheduler``,
    and for text conditioning ``text_encoder`` (e.g. ``CLIPTextModel``) with its ``tokenizer``."""

    _optional_components = ["text_encoder", "tokenizer"]
    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, unet, vae, scheduler, text_encoder=None, tokenizer=None, class_names: Optional[List[str]] = None,
                 default_guidance_scale: Optional[float] = None, default_guidance_interval=None):
        super().__init__()
        if vae.config.latent_channels != unet.config.in_channels:
            raise ValueError(
                f"vae latent_channels ({vae.config.latent_channels}) must equal unet in_channels ({unet.config.in_channels})"
            )
        if (text_encoder is None) != (tokenizer is None):
            raise ValueError("text_encoder and tokenizer must be given together")
        if text_encoder is not None:
            cross = getattr(unet.config, "cross_attention_dim", None)
            if cross != text_encoder.config.hidden_size:
                raise ValueError(
                    f"unet cross_attention_dim ({cross}) must equal the text encoder's hidden_size "
                    f"({text_encoder.config.hidden_size})"
                )
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
        self.register_class_names(class_names)
        self.register_default_guidance_scale(default_guidance_scale)
        self.register_default_guidance_interval(default_guidance_interval)

    def encode_prompt(self, prompts: List[str]):
        """Token embeddings and attention mask for a list of prompts (one padded batch)."""
        ids, mask = tokenize(self.tokenizer, prompts)
        device = self._execution_device
        mask = mask.to(device)
        hidden = self.text_encoder(ids.to(device), attention_mask=mask).last_hidden_state
        return hidden.to(self.unet.dtype), mask

    @torch.no_grad()
    def __call__(
        self,
        prompt: Optional[Union[str, List[str]]] = None,
        class_labels: Optional[Union[int, List[int], torch.Tensor]] = None,
        batch_size: Optional[int] = None,
        negative_prompt: Optional[Union[str, List[str]]] = None,
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
        """``prompt`` (text models) or ``class_labels`` (class models) with classifier-free
        ``guidance_scale`` w (1: conditional, 0: unconditional, > 1: guided); neither: unconditional.
        ``guidance_scale=None`` uses the folder's ``default_guidance_scale`` (model_index.json: the one its
        card recommends), 1.0 where it has none.
        ``negative_prompt`` replaces the empty prompt of the unconditional branch.
        ``guidance_interval=(low, high)`` guides only at noise levels sigma = s / a in [low, high] and runs
        the conditional branch alone elsewhere (``hf_ddm.guidance``); None uses the folder's
        ``default_guidance_interval``, ``(0, None)`` guides at every level."""
        if prompt is not None and class_labels is not None:
            raise ValueError("pass either prompt or class_labels, not both")
        if prompt is not None and self.text_encoder is None:
            raise ValueError("prompt was given but this pipeline has no text_encoder (it is not text-conditional)")
        prompts = prompt_list(prompt) if prompt is not None else None
        if batch_size is None:
            batch_size = len(prompts) if prompts is not None else (
                self.class_ids(class_labels).numel() if class_labels is not None else 1
            )
        self.check_common(batch_size, num_inference_steps, output_type, generator)
        guidance_scale = self.guidance_scale_or_default(guidance_scale)
        guidance_interval = self.guidance_interval_or_default(guidance_interval)

        def unet(x, t, **kwargs):
            return call_model(self.unet, x, t, **kwargs)

        if prompts is not None:
            if len(prompts) == 1:
                prompts = prompts * batch_size
            if len(prompts) != batch_size:
                raise ValueError(f"got {len(prompts)} prompts for batch_size {batch_size}")
            negative = negative_prompt if negative_prompt is not None else ""
            negatives = [negative] * batch_size if isinstance(negative, str) else prompt_list(negative, "negative_prompt")
            if len(negatives) != batch_size:
                raise ValueError(f"got {len(negatives)} negative prompts for batch_size {batch_size}")
            hidden, mask = self.encode_prompt(negatives + prompts)
            cond = {"encoder_hidden_states": hidden[batch_size:], "encoder_attention_mask": mask[batch_size:]}
            uncond = {"encoder_hidden_states": hidden[:batch_size], "encoder_attention_mask": mask[:batch_size]}
            model_fn = self.guided_model_fn(unet, cond, uncond, guidance_scale, guidance_interval, self.scheduler)
        else:
            labels = self.check_class_labels(class_labels, batch_size)
            if labels is None:
                model_fn = unet
                if getattr(self.unet.config, "num_class_embeds", None) or self.text_encoder is not None:
                    # A conditional model asked for no condition samples its unconditional branch.
                    model_fn = self._unconditional_fn(unet, batch_size)
            else:
                null = torch.full_like(labels, self.unet.config.num_class_embeds)
                model_fn = self.guided_model_fn(unet, {"class_labels": labels}, {"class_labels": null}, guidance_scale,
                                                guidance_interval, self.scheduler)

        latents = self.prepare_latents(self.input_shape(batch_size), self.unet.dtype, generator, latents)
        latents = self.denoise(
            latents, model_fn, num_inference_steps, generator, eta, timesteps,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )
        if output_type == "latent":
            images = latents
        else:
            images = self.decode_latents(self.vae, latents)
        self.maybe_free_model_hooks()
        return self.to_output(images, output_type, return_dict)

    def _unconditional_fn(self, unet, batch_size):
        if self.text_encoder is not None:
            hidden, mask = self.encode_prompt([""] * batch_size)
            return lambda x, t: unet(x, t, encoder_hidden_states=hidden, encoder_attention_mask=mask)
        return unet  # class models: class_labels=None is the null class
