"""Noise-aware classifier p_φ(y | x_t) for classifier guidance.

The body is the U-Net's encoder half (``EncoderTrunk`` from ``layers.py``, same time embedding), the
head pools it to logits. Train it on x_t noised by the same process as the diffusion model; guidance
then rewrites the model output with ``grad_log_prob`` (DESIGN.md §3):
ε̂ = ε_θ − s · s_t · ∇_x log p_φ(y | x_t).
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

from ..limits import as_class_ids, check_int
from .layers import (
    EncoderTrunk,
    SafetensorsOnlyMixin,
    TimestepEmbedding,
    check_sample_size,
    validate_trunk_config,
)


@dataclass
class NoisyClassifierOutput(BaseOutput):
    """``logits``: (B, num_classes), unnormalised log p(y | x_t)."""

    logits: torch.Tensor


class NoisyClassifier(SafetensorsOnlyMixin, ModelMixin, ConfigMixin):
    r"""Time-conditioned classifier on noisy inputs.

    Args mirror ``UNet`` (``block_out_channels``, ``layers_per_block``, ``attention_levels``,
    ``attention_head_dim``, ``dropout``, ``norm_num_groups``, ``timestep_scale`` ...) plus
    ``num_classes``. The head is GroupNorm -> SiLU -> global mean pool -> Linear (guided-diffusion's
    "adaptive" pooling; its attention pooling is not implemented).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        num_classes: int = 10,
        sample_size: int | Sequence[int] = 32,
        in_channels: int = 3,
        block_out_channels: Sequence[int] = (64, 128, 256),
        layers_per_block: int = 2,
        attention_levels: Sequence[int] = (1,),
        mid_block_attention: bool = True,
        attention_head_dim: int = 32,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        time_embedding_dim: int | None = None,
        timestep_scale: float = 1.0,
        flip_sin_to_cos: bool = True,
        freq_shift: float = 0.0,
    ):
        super().__init__()
        check_int("num_classes", num_classes, 2, 1_000_000)
        attention_levels = tuple(attention_levels)
        validate_trunk_config(block_out_channels, layers_per_block, norm_num_groups, attention_levels,
                              attention_head_dim, mid_block_attention, sample_size=sample_size, norm_eps=norm_eps, timestep_scale=timestep_scale, 
                              in_channels=in_channels, time_embedding_dim=time_embedding_dim)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout}.")
        emb_dim = time_embedding_dim or 4 * block_out_channels[0]
        self.time_embedding = TimestepEmbedding(block_out_channels[0], emb_dim, timestep_scale, flip_sin_to_cos,
                                                freq_shift)
        self.encoder = EncoderTrunk(in_channels, block_out_channels, layers_per_block, attention_levels,
                                    mid_block_attention, emb_dim=emb_dim, head_dim=attention_head_dim,
                                    groups=norm_num_groups, dropout=dropout, eps=norm_eps)
        self.norm_out = nn.GroupNorm(norm_num_groups, self.encoder.out_channels, eps=norm_eps)
        self.head = nn.Linear(self.encoder.out_channels, num_classes)

    def forward(self, sample: torch.Tensor, timestep, return_dict: bool = True) -> NoisyClassifierOutput | tuple:
        check_sample_size(sample, len(self.config.block_out_channels), channels=self.config.in_channels)
        emb = F.silu(self.time_embedding(timestep, sample.shape[0], sample.device))
        h, _ = self.encoder(sample, emb, keep_skips=False)
        logits = self.head(F.silu(self.norm_out(h)).mean(dim=(2, 3)))
        if not return_dict:
            return (logits,)
        return NoisyClassifierOutput(logits=logits)

    def grad_log_prob(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor) -> torch.Tensor:
        """∇_x Σ_i log p_φ(y_i | x_i, t): per-sample gradients (samples are independent), shape of ``sample``.

        Safe to call from ``torch.no_grad()`` sampling loops: grad mode is switched on locally and only
        the input gets a gradient (parameters' ``.grad`` are left untouched). Returned in float32-or-input
        dtype of ``sample``; log_softmax runs in float32 for fp16/bf16 models.
        """
        with torch.enable_grad():
            x = sample.detach().requires_grad_(True)
            logits = self(x, timestep).logits
            log_probs = F.log_softmax(logits.float(), dim=-1)
            labels = as_class_ids(class_labels, self.config.num_classes).to(x.device).reshape(-1).expand(x.shape[0])
            picked = log_probs.gather(1, labels[:, None]).sum()
            (grad,) = torch.autograd.grad(picked, x)
        return grad
