"""Encode a dataset once with the frozen VAE and cache the posterior on disk.

The cache file holds, per example, the posterior mean and log-variance of q(z|x) (and of the flipped
image when training with ``--random_flip``: a flipped latent is not the latent of the flipped image)
plus the labels. Its name is a hash of the VAE (config + weights) and of the preprocessed data, so a
different VAE, resolution, channel count or subset never reads a stale cache. Written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
from torch.utils.data import Dataset

from .data import collate, dataset_fingerprint


def vae_fingerprint(vae) -> str:
    h = hashlib.sha256(json.dumps({k: v for k, v in dict(vae.config).items() if not k.startswith("_")},
                                  sort_keys=True, default=str).encode())
    for name, t in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(vae, dataset, info, flip: bool) -> str:
    h = hashlib.sha256()
    h.update(vae_fingerprint(vae).encode())
    h.update(dataset_fingerprint(dataset, info).encode())
    h.update(b"flip" if flip else b"noflip")
    return h.hexdigest()[:24]


@torch.no_grad()
def encode_dataset(vae, dataset, batch_size: int = 64, flip: bool = False, device=None, progress: bool = False) -> dict:
    """{'mean', 'logvar' (N, C, h, w) float32, ['mean_flip', 'logvar_flip'], ['class_labels']}. ``progress``: a
    tqdm bar with the rate and time left (the full Fashion-MNIST takes minutes on a CPU)."""
    from tqdm.auto import tqdm

    device = device or next(vae.parameters()).device
    bar = tqdm(total=len(dataset), desc="latent cache: encoding", unit="img", disable=not progress)
    out = {"mean": [], "logvar": []}
    if flip:
        out.update(mean_flip=[], logvar_flip=[])
    labels = []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        x = batch["pixel_values"].to(device, vae.dtype)
        views = [("", x)] + ([("_flip", x.flip(-1))] if flip else [])
        for suffix, v in views:
            post = vae.encode(v).latent_dist
            out["mean" + suffix].append(post.mean.float().cpu())
            out["logvar" + suffix].append(post.logvar.float().cpu())
        if "class_labels" in batch:
            labels.append(batch["class_labels"])
        bar.update(x.shape[0])
    bar.close()
    res = {k: torch.cat(v).contiguous() for k, v in out.items()}
    if labels:
        res["class_labels"] = torch.cat(labels)
    return res


def load_or_build_cache(vae, dataset, info, cache_dir: str, flip: bool, accelerator=None, batch_size: int = 64) -> tuple:
    """(tensors, path): read the cache for (VAE, data, flip) or encode and write it (main process first)."""
    from safetensors.torch import load_file, save_file

    key = cache_key(vae, dataset, info, flip)
    path = os.path.join(cache_dir, f"latents-{key}.safetensors")
    main = accelerator is None or accelerator.is_main_process
    ctx = accelerator.main_process_first() if accelerator is not None else _null()
    with ctx:
        if not os.path.isfile(path):
            if not main:  # the main process failed to write it; encode locally rather than hang
                return encode_dataset(vae, dataset, batch_size, flip), path
            os.makedirs(cache_dir, exist_ok=True)
            print(f"latent cache: encoding {len(dataset)} images once with the frozen VAE into {path} "
                  "(later runs on the same VAE and data read it)", flush=True)
            tensors = encode_dataset(vae, dataset, batch_size, flip, progress=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            save_file(tensors, tmp, metadata={"source": info.display, "flip": str(flip), "examples": str(len(dataset))})
            os.replace(tmp, path)
            return tensors, path
        return load_file(path), path


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class LatentDataset(Dataset):
    """Examples {'latent_mean', 'latent_logvar', ['class_labels'], ['flip_*']} from a cache dict."""

    def __init__(self, tensors: dict):
        self.t = tensors

    def __len__(self):
        return self.t["mean"].shape[0]

    def __getitem__(self, i):
        out = {"latent_mean": self.t["mean"][i], "latent_logvar": self.t["logvar"][i]}
        if "mean_flip" in self.t:
            out["latent_mean_flip"], out["latent_logvar_flip"] = self.t["mean_flip"][i], self.t["logvar_flip"][i]
        if "class_labels" in self.t:
            out["class_labels"] = self.t["class_labels"][i]
        return out


def collate_latents(examples):
    return {k: torch.stack([torch.as_tensor(e[k]) for e in examples]) for k in examples[0]}


def latent_training_data(args, vae, dataset, info, accelerator) -> tuple:
    """(dataset, collate_fn) a latent script trains on: the cached posteriors (``--latent_cache_dir``,
    default ``<output_dir>/latent_cache``), or with ``--no_latent_cache`` the pixels, encoded every step.
    Moves the frozen ``vae`` to the accelerator's device."""
    vae.to(accelerator.device)
    if args.no_latent_cache:
        return dataset, collate
    cache_dir = args.latent_cache_dir or os.path.join(args.output_dir, "latent_cache")
    tensors, path = load_or_build_cache(vae, dataset, info, cache_dir, args.random_flip, accelerator)
    accelerator.print(f"latent cache: {path}")
    return LatentDataset(tensors), collate_latents


def latents_from_batch(batch: dict, vae, generator: torch.Generator, flip: bool, sample_posterior: bool = True,
                       device=None) -> torch.Tensor:
    """Scaled latents z * c for a batch that is either cached posteriors or pixels (encoded now, frozen VAE)."""
    if "latent_mean" in batch:
        mean, logvar = batch["latent_mean"], batch["latent_logvar"]
        if flip and "latent_mean_flip" in batch:
            pick = (torch.rand(mean.shape[0], generator=generator) < 0.5).to(mean.device).view(-1, 1, 1, 1)
            mean = torch.where(pick, batch["latent_mean_flip"], mean)
            logvar = torch.where(pick, batch["latent_logvar_flip"], logvar)
    else:
        x = batch["pixel_values"]
        if flip:
            from .data import random_flip

            x = random_flip(x, generator)
        with torch.no_grad():
            post = vae.encode(x.to(device or x.device, vae.dtype)).latent_dist
        mean, logvar = post.mean.float(), post.logvar.float()
    z = mean
    if sample_posterior:
        noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device)
        z = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (z - shift) * vae.config.scaling_factor


__all__ = ["vae_fingerprint", "cache_key", "encode_dataset", "load_or_build_cache", "LatentDataset", "collate_latents",
           "latent_training_data", "latents_from_batch"]
