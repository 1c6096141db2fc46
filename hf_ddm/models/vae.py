"""KL-regularised autoencoder: the first stage of latent diffusion.

Same call shapes as diffusers' ``AutoencoderKL`` (``encode(x).latent_dist``, ``decode(z).sample``,
``forward(sample, sample_posterior, return_dict, generator)``, ``config.scaling_factor``,
``config.latent_channels``, ``config.block_out_channels``), and it returns diffusers' own
``AutoencoderKLOutput`` / ``DecoderOutput`` / ``DiagonalGaussianDistribution``, so code written for one
runs with the other. ``loss`` is the negative ELBO (DESIGN.md §3) that training scripts use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

# The diffusers loader looks up ``ModelMixin`` by name in this module: keep these imports here.
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook

from ..limits import check_positive_float
from .layers import (
    DecoderTrunk,
    EncoderTrunk,
    OutputHead,
    SafetensorsOnlyMixin,
    check_sample_size,
    fast_layout,
    validate_trunk_config,
)


@dataclass
class VAELossOutput(BaseOutput):
    """Negative ELBO and its parts, each averaged over the batch of per-sample sums (nats).

    ``loss = reconstruction_loss + kl_weight * kl_loss``; with ``kl_weight=1`` and the Gaussian decoder
    it is exactly −ELBO per sample.
    """

    loss: torch.Tensor
    reconstruction_loss: torch.Tensor
    kl_loss: torch.Tensor
    reconstruction: torch.Tensor
    posterior: DiagonalGaussianDistribution


class VAE(SafetensorsOnlyMixin, ModelMixin, ConfigMixin):
    r"""Encoder q(z|x) = N(μ, diag σ²) and decoder x̂ = D(z).

    Args:
        in_channels / out_channels: image channels.
        latent_channels: channels of z.
        block_out_channels: channels per level; the latent is ``2 ** (len - 1)`` times smaller than the
            image in each spatial dimension (the number of down levels is ``len - 1``).
        layers_per_block: residual blocks per encoder level (decoder levels have one more).
        attention_levels: levels with self-attention (default none; the middle blocks always have it
            when ``mid_block_attention``).
        attention_head_dim: channels per head (default: one head over the widest level, as in LDM).
        norm_num_groups / norm_eps: GroupNorm settings.
        sample_size: nominal image size (for pipelines; other multiples of the down factor work).
        scaling_factor: c in DESIGN.md §3: latent diffusion trains on ``z * c`` and decodes ``z / c``.
            Set it after training to 1 / std(z) (the LDM recipe).
        shift_factor: optional mean subtracted before scaling (diffusers' SD3/Flux convention); None = 0.
        use_quant_conv / use_post_quant_conv: the 1x1 convs around the latent of LDM's AutoencoderKL.
        force_upcast: read by diffusers pipelines (run the VAE in float32 when the rest is fp16).
    """

    _supports_gradient_checkpointing = True
    # Everything that maps x to q(z|x): what a decoder-only fine-tune freezes, so the latent space (and every
    # latent model trained on it) stays valid.
    ENCODER_PARTS = ("encoder", "encoder_out", "quant_conv")

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        latent_channels: int = 4,
        block_out_channels: Sequence[int] = (64, 128, 256),
        layers_per_block: int = 1,
        attention_levels: Sequence[int] = (),
        mid_block_attention: bool = True,
        attention_head_dim: int | None = None,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        force_upcast: bool = False,
    ):
        super().__init__()
        attention_levels = tuple(attention_levels)
        if isinstance(block_out_channels, (str, bytes)) or len(block_out_channels) == 0:
            raise ValueError("`block_out_channels` must be a non-empty list of positive ints.")
        head_dim = attention_head_dim or block_out_channels[-1]  # default: one head, as in LDM's VAE
        validate_trunk_config(block_out_channels, layers_per_block, norm_num_groups, attention_levels, head_dim,
                              mid_block_attention, sample_size=sample_size, norm_eps=norm_eps,  in_channels=in_channels,
                              out_channels=out_channels, latent_channels=latent_channels)
        check_positive_float("scaling_factor", scaling_factor)

        common = dict(head_dim=head_dim, groups=norm_num_groups, eps=norm_eps)  # no time embedding
        self.encoder = EncoderTrunk(in_channels, block_out_channels, layers_per_block, attention_levels,
                                    mid_block_attention, **common)
        self.encoder_out = OutputHead(self.encoder.out_channels, 2 * latent_channels, norm_num_groups, norm_eps)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        self.decoder_in = nn.Conv2d(latent_channels, block_out_channels[-1], 3, padding=1)
        self.decoder = DecoderTrunk(block_out_channels[-1], block_out_channels, layers_per_block, attention_levels,
                                    mid=True, mid_attention=mid_block_attention, **common)
        self.decoder_out = OutputHead(self.decoder.out_channels, out_channels, norm_num_groups, norm_eps)

    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Image -> posterior q(z|x) (``.latent_dist``: ``sample(generator)``, ``mode()``, ``kl()``, ``nll(z)``)."""
        check_sample_size(x, len(self.config.block_out_channels), "x", channels=self.config.in_channels)
        h, _ = self.encoder(x, keep_skips=False)
        moments = self.encoder_out(h).contiguous()
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        posterior = DiagonalGaussianDistribution(moments)
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    @apply_forward_hook
    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None) -> DecoderOutput | tuple:
        """Latent (unscaled: divide by ``scaling_factor`` first) -> image. ``generator`` unused (API parity)."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        dec = self.decoder_out(self.decoder(self.decoder_in(fast_layout(z)))).contiguous()
        if not return_dict:
            return (dec,)
        return DecoderOutput(sample=dec)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None) -> DecoderOutput | tuple:
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)

    def loss(self, sample: torch.Tensor, kl_weight: float = 1.0, sample_posterior: bool = True,
             generator: torch.Generator | None = None, reconstruction: str = "gaussian",
             decoder_std: float = 1.0) -> VAELossOutput:
        r"""β-weighted negative ELBO: ``E_q[-log p(x|z)] + kl_weight · KL(q(z|x) ‖ N(0, I))``.

        ``reconstruction="gaussian"``: p(x|z) = N(x̂, decoder_std² I), the exact negative log-likelihood
        ``½ Σ (x − x̂)²/σ² + ½ D log(2πσ²)``. ``"l1"``: Laplace decoder with scale ``decoder_std``,
        ``Σ |x − x̂|/b + D log(2b)`` (LDM's reconstruction term). One z sample per image (the
        reparameterised Monte-Carlo estimate) unless ``sample_posterior=False`` (z = μ).
        Sums run over the pixels of each sample; results are averaged over the batch.
        """
        check_positive_float("decoder_std", decoder_std)
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        recon = self.decode(z).sample
        x, r = sample.float(), recon.float()
        dims = tuple(range(1, x.ndim))
        d = math.prod(x.shape[1:])
        if reconstruction == "gaussian":
            var = decoder_std ** 2
            rec = 0.5 * ((x - r) ** 2).sum(dims) / var + 0.5 * d * math.log(2 * math.pi * var)
        elif reconstruction == "l1":
            rec = (x - r).abs().sum(dims) / decoder_std + d * math.log(2 * decoder_std)
        else:
            raise ValueError(f"`reconstruction` must be 'gaussian' or 'l1', got {reconstruction!r}.")
        kl = posterior.kl().float()
        rec, kl = rec.mean(), kl.mean()
        return VAELossOutput(loss=rec + kl_weight * kl, reconstruction_loss=rec, kl_loss=kl, reconstruction=recon,
                             posterior=posterior)
