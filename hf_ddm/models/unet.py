"""Time-conditioned U-Net (DDPM / ADM style) as a diffusers model.

Drop-in for diffusers' ``UNet2DModel`` where pipelines are concerned: ``unet(sample, t).sample``,
``unet.config.sample_size`` / ``in_channels``, so stock ``DDPMPipeline`` and friends run it.
Adds, behind config switches: a class embedding with a null class for classifier-free guidance, and
cross-attention to a token sequence (text-conditional latent diffusion).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# The diffusers loader looks up ``ModelMixin`` by name in this module: keep these imports here.
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from ..limits import as_class_ids, check_batch_of, check_context, check_int
from .layers import (
    DecoderTrunk,
    EncoderTrunk,
    OutputHead,
    SafetensorsOnlyMixin,
    TimestepEmbedding,
    check_sample_size,
    validate_trunk_config,
)


@dataclass
class UNetOutput(BaseOutput):
    """``sample``: the network output (ε, x0, v or score, per how it was trained), shape of the input."""

    sample: torch.Tensor


class UNet(SafetensorsOnlyMixin, ModelMixin, ConfigMixin):
    r"""U-Net ε/x0/v-predictor with sinusoidal time embedding.

    Args:
        sample_size: height/width the model is meant for (int or (h, w)); pipelines read it. Inputs of
            other sizes work as long as H and W are divisible by ``2 ** (len(block_out_channels) - 1)``;
            other sizes raise a ValueError (we do not pad silently).
        in_channels / out_channels: image (or latent) channels in and out.
        block_out_channels: channels per resolution level; level i runs at ``size / 2**i``.
        layers_per_block: residual blocks per level on the way down (the way up has one more).
        attention_levels: indices of levels that get self-attention (e.g. ``(1,)`` = the 16x16 level
            of a 32x32 model). The middle block has attention when ``mid_block_attention``.
        attention_head_dim: channels per attention head.
        dropout: dropout inside residual blocks.
        norm_num_groups / norm_eps: GroupNorm settings; every width must be divisible by the groups.
        num_class_embeds: number of classes for a class-conditional model. The embedding has one more
            row, index ``num_class_embeds``, the *null class* used for classifier-free guidance;
            ``class_labels=None`` on such a model means "all null".
        cross_attention_dim: width of ``encoder_hidden_states`` tokens; enables cross-attention at
            every attention level and the middle block.
        time_embedding_dim: width of the time embedding (default ``4 * block_out_channels[0]``).
        timestep_scale: multiplies the timestep before the sinusoid (1 for DDPM's integer steps;
            ~1000 for continuous t in [0, 1]).
        flip_sin_to_cos / freq_shift: sinusoid convention (diffusers UNet2DModel defaults).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int | Sequence[int] = 32,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: Sequence[int] = (64, 128, 256),
        layers_per_block: int = 2,
        attention_levels: Sequence[int] = (1,),
        mid_block_attention: bool = True,
        attention_head_dim: int = 32,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        num_class_embeds: int | None = None,
        cross_attention_dim: int | None = None,
        time_embedding_dim: int | None = None,
        timestep_scale: float = 1.0,
        flip_sin_to_cos: bool = True,
        freq_shift: float = 0.0,
    ):
        super().__init__()
        attention_levels = tuple(attention_levels)
        validate_trunk_config(block_out_channels, layers_per_block, norm_num_groups, attention_levels,
                              attention_head_dim, mid_block_attention, sample_size=sample_size, norm_eps=norm_eps, timestep_scale=timestep_scale, 
                              in_channels=in_channels, out_channels=out_channels,
                              cross_attention_dim=cross_attention_dim, time_embedding_dim=time_embedding_dim)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout}.")
        if num_class_embeds is not None:
            check_int("num_class_embeds", num_class_embeds, 1, 1_000_000)
        if cross_attention_dim is not None and not (attention_levels or mid_block_attention):
            raise ValueError("`cross_attention_dim` is set but no level has attention: set `attention_levels` "
                             "or `mid_block_attention=True`.")

        emb_dim = time_embedding_dim or 4 * block_out_channels[0]
        self.time_embedding = TimestepEmbedding(block_out_channels[0], emb_dim, timestep_scale, flip_sin_to_cos,
                                                freq_shift)
        # +1 row: the null class for classifier-free guidance lives at index num_class_embeds.
        self.class_embedding = nn.Embedding(num_class_embeds + 1, emb_dim) if num_class_embeds else None

        common = dict(emb_dim=emb_dim, head_dim=attention_head_dim, context_dim=cross_attention_dim,
                      groups=norm_num_groups, dropout=dropout, eps=norm_eps)
        self.encoder = EncoderTrunk(in_channels, block_out_channels, layers_per_block, attention_levels,
                                    mid_block_attention, **common)
        self.decoder = DecoderTrunk(self.encoder.out_channels, block_out_channels, layers_per_block,
                                    attention_levels, skip_channels=self.encoder.skip_channels, **common)
        self.out = OutputHead(self.decoder.out_channels, out_channels, norm_num_groups, norm_eps)

    def embed(self, timestep, class_labels: torch.Tensor | None, batch_size: int, device) -> torch.Tensor:
        """Time (+ class) embedding, already through the SiLU the residual blocks apply to it."""
        ids = None
        if self.class_embedding is not None:
            if class_labels is None:
                class_labels = torch.full((batch_size,), self.config.num_class_embeds, device=device)
            n = self.config.num_class_embeds
            ids = as_class_ids(class_labels, n + 1, null_id=n).reshape(-1)
            check_batch_of("class_labels", ids, batch_size)  # one per sample, or one for all
        elif class_labels is not None:
            raise ValueError("`class_labels` were given but this UNet has no class embedding "
                             "(`num_class_embeds` is None).")
        emb = self.time_embedding(timestep, batch_size, device)
        if ids is not None:
            emb = emb + self.class_embedding(ids.to(device=device).expand(batch_size))
        return F.silu(emb)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        return_dict: bool = True,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> UNetOutput | tuple:
        r"""
        Args:
            sample: (B, in_channels, H, W) noisy input.
            timestep: number, 0-d tensor (broadcast to the batch) or (B,) tensor; int or float.
            class_labels: (B,) long tensor, or None (= the null class on a class-conditional model).
            encoder_hidden_states: (B, L, cross_attention_dim) tokens; required iff cross-attention is on.
            encoder_attention_mask: (B, L), 1 = attend to the token, 0 = ignore it (padding).
            return_dict: return ``UNetOutput`` (else a 1-tuple).
        """
        check_sample_size(sample, len(self.config.block_out_channels), channels=self.config.in_channels)
        if self.config.cross_attention_dim is not None and encoder_hidden_states is None:
            raise ValueError("this UNet has cross-attention (`cross_attention_dim` is set): pass "
                             "`encoder_hidden_states` of shape (batch, tokens, cross_attention_dim).")
        if self.config.cross_attention_dim is None and encoder_hidden_states is not None:
            raise ValueError("`encoder_hidden_states` were given but this UNet has no cross-attention "
                             "(`cross_attention_dim` is None).")
        b = sample.shape[0]
        if encoder_hidden_states is not None:
            check_context(encoder_hidden_states, b, self.config.cross_attention_dim, encoder_attention_mask)
        emb = self.embed(timestep, class_labels, b, sample.device)
        ctx, mask = encoder_hidden_states, encoder_attention_mask
        h, skips = self.encoder(sample, emb, ctx, mask)
        h = self.decoder(h, emb, ctx, mask, skips=skips)
        out = self.out(h).contiguous()  # back to the caller's (NCHW) layout
        if not return_dict:
            return (out,)
        return UNetOutput(sample=out)
