"""Tiny randomly initialised stand-ins for the shipped checkpoints (Fashion-MNIST shape: 32x32, 1
channel, 10 classes). They exist so the Space runs before trained weights are dropped into
``space/models/<name>/``; their images are structured noise, and the UI says so.

Each is built with a fixed seed, written with ``save_pretrained`` to a cache folder and then loaded by
the registry's loader (``from_pretrained`` of the hf_ddm class model_index.json names) -- the same
path a real checkpoint takes. Class names travel in the pipeline config (``class_names=``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch

from .registry import DEFAULT_PROMPT_TEMPLATE, FASHION_MNIST_CLASSES

# Bump when a builder changes, so stale caches are rebuilt.
DEMO_VERSION = 2
SIZE, CHANNELS, NUM_CLASSES = 32, 1, 10
MARKER = "hf_ddm_space_demo.json"


def _unet(**kw):
    from hf_ddm.models import UNet

    cfg = dict(sample_size=SIZE, in_channels=CHANNELS, out_channels=CHANNELS, block_out_channels=(16, 32),
               layers_per_block=1, attention_levels=(), mid_block_attention=False, attention_head_dim=16,
               norm_num_groups=8)
    cfg.update(kw)
    return UNet(**cfg)


def _vae():
    from hf_ddm.models import VAE

    # 32x32x1 -> 8x8x4 latents.
    return VAE(in_channels=CHANNELS, out_channels=CHANNELS, latent_channels=4, block_out_channels=(16, 16, 32),
               layers_per_block=1, mid_block_attention=False, norm_num_groups=8, sample_size=SIZE,
               scaling_factor=1.0)


def _vp_scheduler():
    from hf_ddm.schedulers.vp import VPScheduler

    return VPScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")


def build_pipeline(name: str):
    """The untrained demo pipeline for registry entry ``name``."""
    from hf_ddm.models import NoisyClassifier
    from hf_ddm.pipelines import ClassifierGuidedPipeline, LatentDiffusionPipeline, PixelDiffusionPipeline
    from hf_ddm.schedulers.sde import SDEScheduler
    from hf_ddm.text import build_text_encoder, build_tokenizer

    torch.manual_seed(0)
    if name == "ddpm":
        return PixelDiffusionPipeline(_unet(), _vp_scheduler())
    if name == "ldm_class":
        unet = _unet(sample_size=8, in_channels=4, out_channels=4, num_class_embeds=NUM_CLASSES)
        return LatentDiffusionPipeline(unet, _vae(), _vp_scheduler(), class_names=FASHION_MNIST_CLASSES)
    if name == "ldm_text":
        prompts = [DEFAULT_PROMPT_TEMPLATE.format(c) for c in FASHION_MNIST_CLASSES]
        tokenizer = build_tokenizer(prompts + [""], max_length=16)
        text_encoder = build_text_encoder(tokenizer, hidden_size=32, layers=1, heads=2)
        unet = _unet(sample_size=8, in_channels=4, out_channels=4, mid_block_attention=True, cross_attention_dim=32)
        return LatentDiffusionPipeline(unet, _vae(), _vp_scheduler(), text_encoder=text_encoder, tokenizer=tokenizer,
                                       class_names=FASHION_MNIST_CLASSES)
    if name == "guided":
        classifier = NoisyClassifier(num_classes=NUM_CLASSES, sample_size=SIZE, in_channels=CHANNELS,
                                     block_out_channels=(16, 32), layers_per_block=1, attention_levels=(),
                                     mid_block_attention=False, attention_head_dim=16, norm_num_groups=8)
        return ClassifierGuidedPipeline(_unet(), classifier, _vp_scheduler(), class_names=FASHION_MNIST_CLASSES)
    if name == "sde":
        return PixelDiffusionPipeline(_unet(), SDEScheduler(sde="ve", solver="pc", sigma_max=50.0))
    raise KeyError(f"no demo model for {name!r}")


def build_demo_folder(name: str, cache_dir: str) -> str:
    """``cache_dir/<name>-v<version>``: built once (atomically: other processes may race), then reused."""
    target = os.path.join(cache_dir, f"{name}-v{DEMO_VERSION}")
    if os.path.exists(os.path.join(target, MARKER)):
        return target
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir)
    try:
        pipe = build_pipeline(name)
        pipe.save_pretrained(tmp, portable=False)  # a private cache the app loads with the installed classes
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({"demo": True, "version": DEMO_VERSION, "weights": "random (untrained)"}, f)
        try:
            os.rename(tmp, target)
        except OSError:  # someone else finished first
            if not os.path.exists(os.path.join(target, MARKER)):
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return target


__all__ = ["build_pipeline", "build_demo_folder", "DEMO_VERSION"]
