"""The one module of layers shared by the U-Net, the VAE and the noisy classifier.

Everything the three models have in common lives here exactly once:

- ``timestep_embedding`` / ``TimestepEmbedding``: sinusoidal features of integer or continuous
  timesteps (python number, 0-d tensor or one value per sample), followed by a small MLP.
- ``ResBlock``: GroupNorm -> SiLU -> conv, conditioned by scale-shift on the second norm.
- ``SelfAttention`` / ``CrossAttention``: GroupNorm'd multi-head attention on the pixels of a feature
  map, run by ``F.scaled_dot_product_attention`` (fused kernels on CPU and CUDA).
- ``Downsample`` / ``Upsample``.
- ``EncoderTrunk``: conv_in -> down levels -> middle block. The U-Net's down path, the classifier's
  body and the VAE encoder are all this trunk (the VAE's simply has no time embedding).
- ``DecoderTrunk``: middle block (optional) -> up levels, optionally eating the encoder's skips. The
  U-Net's up path (with skips) and the VAE decoder (without) are this trunk.

Gradient checkpointing follows diffusers' mechanism: ``ModelMixin.enable_gradient_checkpointing``
walks the modules, and every module with a ``gradient_checkpointing`` attribute gets it set plus a
``_gradient_checkpointing_func``. The trunks carry that attribute and checkpoint each block.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..limits import check_channels, check_int, check_positive_float, check_sample_size_config


# ---------------------------------------------------------------------------------------------------
# Timesteps
# ---------------------------------------------------------------------------------------------------


def broadcast_timesteps(timestep, batch_size: int, device: torch.device) -> torch.Tensor:
    """Turn an int/float, a 0-d tensor, a 1-element or a per-sample tensor into shape ``(batch_size,)``.

    The values are kept as float32: the embedding of an integer step and of the same float are equal,
    so discrete (DDPM's 0..999) and continuous (SDE's t or sigma) models share one code path.
    """
    t = torch.as_tensor(timestep, device=device)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, batch_size)):
        raise ValueError(
            f"`timestep` must be a number, a 0-d tensor or a 1-d tensor of length 1 or batch size "
            f"{batch_size}; got shape {tuple(t.shape)}."
        )
    return t.to(torch.float32).reshape(-1).expand(batch_size)


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, max_period: float = 10000.0, flip_sin_to_cos: bool = True,
    freq_shift: float = 0.0,
) -> torch.Tensor:
    """Sinusoidal features ``(B,) -> (B, dim)`` (Transformer / DDPM positional encoding).

    Frequencies are ``max_period ** (-i / (half - freq_shift))``; ``flip_sin_to_cos=True`` puts the
    cosines first. These are diffusers' ``Timesteps`` defaults for UNet2DModel (True, 0), so
    features line up with diffusers' models.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = timesteps.float()[:, None] * freqs[None]
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    if dim % 2:  # odd widths: pad one zero column
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of width ``in_dim`` -> Linear -> SiLU -> Linear, output width ``emb_dim``.

    ``scale`` multiplies the timesteps before the sinusoid: continuous-time models with t in [0, 1]
    want ~1000 so the low frequencies resolve t (score_sde uses 999·t).
    """

    def __init__(self, in_dim: int, emb_dim: int, scale: float = 1.0, flip_sin_to_cos: bool = True,
                 freq_shift: float = 0.0):
        super().__init__()
        self.in_dim, self.scale = in_dim, scale
        self.flip_sin_to_cos, self.freq_shift = flip_sin_to_cos, freq_shift
        self.linear_1 = nn.Linear(in_dim, emb_dim)
        self.linear_2 = nn.Linear(emb_dim, emb_dim)

    def forward(self, timestep, batch_size: int, device: torch.device) -> torch.Tensor:
        t = broadcast_timesteps(timestep, batch_size, device) * self.scale
        emb = timestep_embedding(t, self.in_dim, flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift)
        # Features are computed in float32 (sin of t ~ 1000 in fp16 is garbage), then cast to the weights.
        emb = emb.to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(emb)))


# ---------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """Pre-activation residual block; with ``emb_dim`` it is conditioned by FiLM (scale-shift).

    ``forward(x, emb)`` expects ``emb`` to be *already* passed through SiLU: the model applies it once
    instead of every block applying it again (diffusers does the latter).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int | None = None, groups: int = 32,
                 dropout: float = 0.0, eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch) if emb_dim is not None else None
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb_proj is not None:
            scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)
            h = torch.addcmul(shift, h, scale + 1)  # h * (1 + scale) + shift, one kernel
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Shared parts of self- and cross-attention: GroupNorm in front, heads, SDPA, out-proj, residual."""

    def __init__(self, channels: int, head_dim: int, groups: int, eps: float):
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"attention_head_dim={head_dim} must divide the channel count {channels}.")
        self.heads = channels // head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_out = nn.Linear(channels, channels)

    def _split(self, t: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, heads, L, d)
        b, l, c = t.shape
        return t.view(b, l, self.heads, c // self.heads).transpose(1, 2)

    def _finish(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        out = self.to_out(out.transpose(1, 2).reshape(b, h * w, c))  # (B, HW, C)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class SelfAttention(_Attention):
    """Multi-head self-attention over the H·W positions, one fused q/k/v projection."""

    def __init__(self, channels: int, head_dim: int, groups: int = 32, eps: float = 1e-5):
        super().__init__(channels, head_dim, groups, eps)
        self.to_qkv = nn.Linear(channels, 3 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).reshape(b, c, h * w).transpose(1, 2)  # (B, HW, C); a view in channels-last
        qkv = self.to_qkv(tokens).view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self._finish(x, out)


class CrossAttention(_Attention):
    """Pixels attend to a token sequence ``context`` (B, L, context_dim), e.g. a text encoder's output.

    ``mask`` (B, L): 1/True keeps a token, 0/False drops it (diffusers' ``encoder_attention_mask``).
    """

    def __init__(self, channels: int, context_dim: int, head_dim: int, groups: int = 32, eps: float = 1e-5):
        super().__init__(channels, head_dim, groups, eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(context_dim, 2 * channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self._split(self.to_q(self.norm(x).reshape(b, c, h * w).transpose(1, 2)))
        k, v = (self._split(t) for t in self.to_kv(context.to(q.dtype)).chunk(2, dim=-1))
        attn_mask = None if mask is None else mask.to(torch.bool)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self._finish(x, out)


class Downsample(nn.Module):
    """Strided 3x3 conv, halves H and W (requires even sizes; the models check this up front)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (no checkerboard artefacts of transposed convs)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# ---------------------------------------------------------------------------------------------------
# Trunks
# ---------------------------------------------------------------------------------------------------


class _Stage(nn.Module):
    """The blocks between two skip connections (a ResBlock and its attention, or a resampler).

    Each entry is one of ResBlock / SelfAttention / CrossAttention / Down- / Upsample; ``_Trunk._run``
    hands each the arguments it takes: (x, emb), (x, context, mask) or (x,).
    """

    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


def _attention_blocks(ch, use_attention, head_dim, context_dim, groups, eps):
    blocks = []
    if use_attention:
        blocks.append(SelfAttention(ch, head_dim, groups, eps))
        if context_dim is not None:
            blocks.append(CrossAttention(ch, context_dim, head_dim, groups, eps))
    return blocks


class _Trunk(nn.Module):
    """Runs stages of blocks, checkpointing each block when diffusers turned checkpointing on."""

    def __init__(self):
        super().__init__()
        # Both set by ModelMixin.enable_gradient_checkpointing (diffusers >= 0.32 mechanism).
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func = None

    def _run(self, stage: _Stage, x, emb, context, mask):
        ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        for block in stage.blocks:
            if isinstance(block, ResBlock):
                args = (x, emb)
            elif isinstance(block, CrossAttention):
                args = (x, context, mask)
            else:
                args = (x,)
            x = self._gradient_checkpointing_func(block, *args) if ckpt else block(*args)
        return x


def _mid_stage(ch, emb_dim, attention, head_dim, context_dim, groups, dropout, eps):
    blocks = [ResBlock(ch, ch, emb_dim, groups, dropout, eps)]
    blocks += _attention_blocks(ch, attention, head_dim, context_dim, groups, eps)
    blocks.append(ResBlock(ch, ch, emb_dim, groups, dropout, eps))
    return _Stage(blocks)


class EncoderTrunk(_Trunk):
    """conv_in -> for each level: ``layers_per_block`` x (ResBlock [+ attention]) [+ Downsample] -> mid.

    Returns the final feature map and the list of skip activations (what a U-Net's up path eats):
    the conv_in output, every block's output and every downsample's output (empty list when
    ``keep_skips=False``).
    Level i has ``block_out_channels[i]`` channels and is at resolution ``size / 2**i``.
    """

    def __init__(self, in_channels: int, block_out_channels: Sequence[int], layers_per_block: int,
                 attention_levels: Sequence[int] = (), mid_attention: bool = True, emb_dim: int | None = None,
                 head_dim: int = 32, context_dim: int | None = None, groups: int = 32, dropout: float = 0.0,
                 eps: float = 1e-5):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.levels = nn.ModuleList()
        self.skip_channels = [block_out_channels[0]]
        ch = block_out_channels[0]
        for i, out_ch in enumerate(block_out_channels):
            stages = []
            for _ in range(layers_per_block):
                blocks = [ResBlock(ch, out_ch, emb_dim, groups, dropout, eps)]
                blocks += _attention_blocks(out_ch, i in attention_levels, head_dim, context_dim, groups, eps)
                stages.append(_Stage(blocks))
                ch = out_ch
                self.skip_channels.append(ch)
            if i < len(block_out_channels) - 1:
                stages.append(_Stage([Downsample(ch)]))
                self.skip_channels.append(ch)
            self.levels.append(nn.ModuleList(stages))
        self.mid = _mid_stage(ch, emb_dim, mid_attention, head_dim, context_dim, groups, dropout, eps)
        self.out_channels = ch

    def forward(self, x, emb=None, context=None, mask=None, keep_skips: bool = True):
        # keep_skips=False (VAE, classifier) lets each activation be freed as soon as it is used.
        x = self.conv_in(fast_layout(x))
        skips = [x] if keep_skips else []
        for stages in self.levels:
            for stage in stages:
                x = self._run(stage, x, emb, context, mask)
                if keep_skips:
                    skips.append(x)
        x = self._run(self.mid, x, emb, context, mask)
        return x, skips


class DecoderTrunk(_Trunk):
    """[mid ->] for each level, deepest first: ``layers_per_block + 1`` x (ResBlock [+ attn]) [+ Upsample].

    With ``skip_channels`` (a U-Net) each ResBlock first concatenates the next skip activation popped
    from the encoder's list; without (a VAE decoder) it is a plain upsampling stack with its own mid.
    """

    def __init__(self, in_channels: int, block_out_channels: Sequence[int], layers_per_block: int,
                 attention_levels: Sequence[int] = (), mid: bool = False, mid_attention: bool = True,
                 skip_channels: Sequence[int] | None = None, emb_dim: int | None = None, head_dim: int = 32,
                 context_dim: int | None = None, groups: int = 32, dropout: float = 0.0, eps: float = 1e-5):
        super().__init__()
        skips = list(skip_channels) if skip_channels is not None else None
        self.mid = (_mid_stage(in_channels, emb_dim, mid_attention, head_dim, context_dim, groups, dropout, eps)
                    if mid else None)
        self.levels = nn.ModuleList()
        ch = in_channels
        for i in reversed(range(len(block_out_channels))):
            out_ch = block_out_channels[i]
            stages = []
            for _ in range(layers_per_block + 1):
                extra = skips.pop() if skips is not None else 0
                blocks = [ResBlock(ch + extra, out_ch, emb_dim, groups, dropout, eps)]
                blocks += _attention_blocks(out_ch, i in attention_levels, head_dim, context_dim, groups, eps)
                stages.append(_Stage(blocks))
                ch = out_ch
            if i > 0:
                stages.append(_Stage([Upsample(ch)]))
            self.levels.append(nn.ModuleList(stages))
        self.uses_skips = skips is not None
        self.out_channels = ch

    def forward(self, x, emb=None, context=None, mask=None, skips: list | None = None):
        if self.mid is not None:
            x = self._run(self.mid, x, emb, context, mask)
        for stages in self.levels:
            for stage in stages:
                if self.uses_skips and isinstance(stage.blocks[0], ResBlock):
                    x = torch.cat([x, skips.pop()], dim=1)
                x = self._run(stage, x, emb, context, mask)
        return x


class OutputHead(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv: the last layer of the U-Net and of both VAE halves."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, eps: float):
        super().__init__()
        self.norm = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.silu(self.norm(x)))


# ---------------------------------------------------------------------------------------------------
# Loading and config validation shared by the three models
# ---------------------------------------------------------------------------------------------------


class SafetensorsOnlyMixin:
    """Put first in a model's bases: ``from_pretrained`` only ever reads safetensors.

    diffusers' default (``use_safetensors=None``) silently falls back to a pickled
    ``diffusion_pytorch_model.bin`` when the safetensors file is absent. Weights of these models are
    always saved as safetensors, so a .bin in a folder is never ours: refuse it rather than unpickle.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        if kwargs.get("use_safetensors") is False:
            raise ValueError(
                f"{cls.__name__} loads safetensors weights only; `use_safetensors=False` (pickle) is not supported."
            )
        kwargs["use_safetensors"] = True
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except OSError as err:
            # diffusers' message for a damaged file is generic; name the file and what is wrong with it.
            _raise_if_bad_safetensors(pretrained_model_name_or_path, kwargs.get("subfolder"), err)
            raise


def _raise_if_bad_safetensors(folder, subfolder, err) -> None:
    from safetensors import safe_open

    path = os.path.join(str(folder), subfolder or "", "diffusion_pytorch_model.safetensors")
    if not os.path.isfile(path):
        return
    try:
        with safe_open(path, framework="pt") as f:  # checks the header and that the file holds all of it
            for key in f.keys():
                f.get_slice(key)
    except Exception as bad:  # safetensors raises its own SafetensorError
        raise OSError(f"{path} is not a valid safetensors file (corrupted or truncated?): {bad}") from err


# ---------------------------------------------------------------------------------------------------
# Config validation
# ---------------------------------------------------------------------------------------------------


def validate_trunk_config(block_out_channels, layers_per_block, norm_num_groups, attention_levels=(),
                          attention_head_dim=None, mid_attention=False, sample_size=None, norm_eps=None,
                          timestep_scale=None, **channels):
    """Raise a ValueError naming the offending argument; called from every model's ``__init__`` before
    any layer is built. ``channels``: further widths by config name (``in_channels=3``, ...); None = unused.
    Sizes are bounded by ``hf_ddm.limits``."""
    if isinstance(block_out_channels, (str, bytes)) or len(block_out_channels) == 0:
        raise ValueError(f"`block_out_channels` must be a non-empty list of positive ints, got {block_out_channels!r}.")
    for c in block_out_channels:
        check_channels("block_out_channels", c)
    for name, value in channels.items():
        if value is not None:
            check_channels(name, value)
    if sample_size is not None:
        check_sample_size_config(sample_size)
    check_int("layers_per_block", layers_per_block, 1, 64)
    check_int("norm_num_groups", norm_num_groups, 1)
    for name, value in (("norm_eps", norm_eps), ("timestep_scale", timestep_scale)):
        if value is not None:
            check_positive_float(name, value)
    if attention_levels or mid_attention:
        check_int("attention_head_dim", attention_head_dim, 1)
    for c in block_out_channels:
        if c % norm_num_groups:
            raise ValueError(
                f"every entry of `block_out_channels` must be divisible by `norm_num_groups`={norm_num_groups}; "
                f"got {c} in {tuple(block_out_channels)}."
            )
    for lvl in attention_levels:
        if not 0 <= lvl < len(block_out_channels):
            raise ValueError(
                f"`attention_levels` entry {lvl} is out of range: there are {len(block_out_channels)} levels "
                f"(indices 0..{len(block_out_channels) - 1})."
            )
    attention_channels = [block_out_channels[i] for i in attention_levels]
    if mid_attention:
        attention_channels.append(block_out_channels[-1])
    for c in attention_channels:
        if c % attention_head_dim:
            raise ValueError(
                f"`attention_head_dim`={attention_head_dim} must divide the channels of every attention level; "
                f"got {c}."
            )


def fast_layout(x: torch.Tensor) -> torch.Tensor:
    """Channels-last on CPU: oneDNN convolutions run natively in NHWC (no reorder per conv), GroupNorm
    has an NHWC kernel, and the attention blocks' (B, HW, C) token view becomes free. Measured ~8%
    faster on CPU for the U-Net (benchmarks/bench_models.py). Other devices are left as they come:
    CUDA GroupNorm is not faster in NHWC and we could not measure it here."""
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x


def check_sample_size(sample: torch.Tensor, num_levels: int, name: str = "sample", channels: int = None) -> None:
    """A model with ``num_levels`` levels halves H and W ``num_levels - 1`` times; skips must line up.
    ``channels``: the model's input channels, checked before a convolution fails on them."""
    if not torch.is_tensor(sample):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(sample).__name__}")
    if sample.ndim != 4:
        raise ValueError(f"`{name}` must be 4-D (batch, channels, height, width); got shape {tuple(sample.shape)}.")
    if channels is not None and sample.shape[1] != channels:
        raise ValueError(f"`{name}` has {sample.shape[1]} channels but this model takes in_channels={channels}; "
                         f"got shape {tuple(sample.shape)}.")
    factor = 2 ** (num_levels - 1)
    h, w = sample.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(
            f"`{name}` height and width must be divisible by 2**(len(block_out_channels) - 1) = {factor} "
            f"(the model downsamples {num_levels - 1} times); got {h}x{w}. Pad or crop the input, or use fewer levels."
        )
