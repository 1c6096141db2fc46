"""Build what a script trains from its flags: the scheduler (the process), the networks, the frozen VAE.

No per-process code lives here or in the scripts: a scheduler is picked by name and everything the
loop needs from it goes through the shared helpers of ``hf_ddm.schedulers.base.ProcessSchedulerMixin``
(``sample_training_timesteps`` / ``add_noise`` / ``training_loss``) and the diffusers sampling
contract (``set_timesteps`` / ``scale_model_input`` / ``step``).
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Optional, Tuple

import torch

from ..schedulers.sde import SDEScheduler
from ..schedulers.ve import VEScheduler
from ..schedulers.vp import VPScheduler
from ..solver_registry import resolve
from .args import ConfigError

SCHEDULERS = {"vp": VPScheduler, "ve": VEScheduler, "sde": SDEScheduler}


def scheduler_class(name: str):
    if name not in SCHEDULERS:
        raise ConfigError(f"--scheduler {name!r}: choose one of {list(SCHEDULERS)}")
    return SCHEDULERS[name]


def validation_solver(cls, solver: str) -> dict:
    """The config entry that makes ``cls`` sample with ``--solver``: a solver of the registry by its name
    (``ode_euler``) or by the scheduler's own name for it (VPScheduler's ``ddim``), set under the key that
    scheduler reads (``solver``, ``sampler`` or ``predictor``); a solver that does not run there is a
    ConfigError naming the ones that do."""
    try:
        key, value = resolve(cls.__name__, solver)
    except ValueError as e:
        raise ConfigError(f"--solver {solver!r}: {e}") from e
    return {key: value}


def _accepted_kwargs(cls, kwargs: dict) -> dict:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def build_scheduler(args, latent: bool = False):
    """The training/validation scheduler named by ``--scheduler`` (+ ``--sde``, ``--prediction_type`` ...).
    ``latent=True``: the model works on VAE latents, which are not confined to [-1, 1], so x0 clipping
    (diffusers' DDPM default ``clip_sample=True``) is switched off."""
    cls = scheduler_class(args.scheduler)
    if getattr(args, "scheduler_config", None):
        path = args.scheduler_config
        if not os.path.exists(path):
            raise ConfigError(f"--scheduler_config {path!r} does not exist")
        try:
            if os.path.isdir(path):
                config = cls.load_config(path)
            else:
                with open(path) as f:
                    config = json.load(f)
        except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError; diffusers' bad folder an OSError
            raise ConfigError(f"--scheduler_config {path!r} is not a scheduler config: a saved scheduler folder or "
                              f"its scheduler_config.json, a JSON object ({type(e).__name__}: {e})") from e
        if not isinstance(config, dict):
            raise ConfigError(f"--scheduler_config {path!r} must hold a JSON object of scheduler keys, got "
                              f"{type(config).__name__}")
        try:
            return cls.from_config(config)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"--scheduler_config {path!r} cannot build {cls.__name__}: {e}") from e
    wanted = {"prediction_type": args.prediction_type, "num_train_timesteps": args.num_train_timesteps}
    if args.scheduler == "sde":
        wanted["sde"] = args.sde
    if getattr(args, "solver", None):
        wanted.update(validation_solver(cls, args.solver))
    if getattr(args, "beta_schedule", None):
        wanted["beta_schedule"] = args.beta_schedule
    if latent:
        wanted["clip_sample"] = False
    kwargs = _accepted_kwargs(cls, wanted)
    try:
        sched = cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"cannot build {cls.__name__} with {kwargs}: {e}") from e
    if getattr(sched.config, "prediction_type", args.prediction_type) != args.prediction_type:
        raise ConfigError(f"{cls.__name__} does not take --prediction_type {args.prediction_type}")
    for helper in ("sample_training_timesteps", "add_noise", "training_loss"):
        if not hasattr(sched, helper):
            raise ConfigError(f"{cls.__name__} lacks the shared training helper `{helper}`")
    return sched


def copy_scheduler(scheduler):
    """A fresh scheduler with the same config (sampling mutates timesteps and solver state)."""
    return scheduler.__class__.from_config(scheduler.config)


def read_model_config(path: str) -> dict:
    p = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(p):
        raise ConfigError(f"model config {path!r} not found")
    with open(p) as f:
        cfg = json.load(f)
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def unet_kwargs_from_args(args) -> dict:
    if getattr(args, "model_config", None):
        return read_model_config(args.model_config)
    return dict(block_out_channels=tuple(args.block_out_channels), layers_per_block=args.layers_per_block,
                attention_levels=tuple(args.attention_levels), mid_block_attention=not args.no_mid_block_attention,
                attention_head_dim=args.attention_head_dim, norm_num_groups=args.norm_num_groups, dropout=args.dropout)


def check_spatial(size: int, block_out_channels, what: str = "--resolution") -> None:
    """The networks halve H, W len(block_out_channels)-1 times; refuse sizes they cannot take."""
    factor = 2 ** (len(block_out_channels) - 1)
    if size % factor:
        raise ConfigError(f"{what} {size} is not divisible by 2**(len(block_out_channels)-1) = {factor}: the model "
                          f"with block_out_channels={list(block_out_channels)} cannot take it. Change {what} or the "
                          "number of levels.")


def resolve_pretrained(path: Optional[str], flag: str) -> Optional[str]:
    """A local folder as is; a Hub id (a model repo, or a pipeline repo whose component folder the caller
    picks) through the Hugging Face cache with ``snapshot_download``, which
    honours HF_HUB_OFFLINE and HF_HOME / HF_HUB_CACHE; only config and safetensors files are fetched.
    Anything else is a ConfigError naming ``flag``."""
    from ..pipeline_utils import is_hub_id

    if not path or os.path.isdir(path):
        return path
    if not is_hub_id(path):
        raise ConfigError(f"{flag} {path!r} is not a folder (nor a Hub model id)")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    except Exception as e:  # noqa: BLE001 - offline without a cached copy, unknown repo, no access
        raise ConfigError(f"{flag} {path!r}: not a local folder, and the Hub repo could not be fetched "
                          f"({type(e).__name__}: {e}). With HF_HUB_OFFLINE=1 it must be in the HF cache already.") from e


# flags that build a model; a model loaded from --pretrained_model_path has its own (record_architecture)
ARCHITECTURE_FLAGS = ("block_out_channels", "layers_per_block", "attention_levels", "attention_head_dim",
                      "norm_num_groups", "dropout", "latent_channels")


def record_architecture(args, config) -> None:
    """Set the architecture flags in ``args`` to a loaded model's ``config``: the card and the tracker then show
    the network that was trained, not defaults that built nothing."""
    for key in ARCHITECTURE_FLAGS:
        if hasattr(args, key) and key in config:
            value = config[key]
            setattr(args, key, list(value) if isinstance(value, (list, tuple)) else value)
    if hasattr(args, "no_mid_block_attention") and "mid_block_attention" in config:
        args.no_mid_block_attention = not config["mid_block_attention"]


def build_model(cls, kwargs: dict, pretrained: Optional[str] = None, args=None):
    """Instantiate ``cls(**kwargs)`` (or load ``pretrained``: a folder or a Hub id, its architecture then
    recorded in ``args``), turning config errors into ConfigError."""
    if pretrained:
        pretrained = resolve_pretrained(pretrained, "--pretrained_model_path")
        sub = os.path.join(pretrained, {"VAE": "vae", "NoisyClassifier": "classifier"}.get(cls.__name__, "unet"))
        if not os.path.isfile(os.path.join(pretrained, "config.json")) and os.path.isdir(sub):
            pretrained = sub  # a pipeline folder or repo: start from its component of this class
        try:
            model = cls.from_pretrained(pretrained)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"--pretrained_model_path {pretrained!r} is not a saved {cls.__name__}: {e}") from e
        if args is not None:
            record_architecture(args, model.config)
        return model
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"bad {cls.__name__} configuration: {e}") from e


def load_frozen_vae(path: Optional[str]):
    """Load the first stage for LDM/latent classifier training; clear error when it is not a VAE folder."""
    from ..models.vae import VAE

    if not path:
        raise ConfigError("--vae_path is required")
    path = resolve_pretrained(path, "--vae_path")
    cfg_file = os.path.join(path, "config.json")
    if os.path.isdir(os.path.join(path, "vae")) and not os.path.isfile(cfg_file):  # a pipeline folder
        path, cfg_file = os.path.join(path, "vae"), os.path.join(path, "vae", "config.json")
    if not os.path.isfile(cfg_file):
        raise ConfigError(f"--vae_path {path!r} is not a VAE folder (no config.json)")
    with open(cfg_file) as f:
        try:
            cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--vae_path {path!r}: config.json is not valid JSON ({e})") from e
    name = cfg.get("_class_name")
    if name == "AutoencoderKL":
        from diffusers import AutoencoderKL as cls
    elif name == "VAE":
        cls = VAE
    else:
        raise ConfigError(f"--vae_path {path!r} is not a VAE folder: its config.json describes {name!r} "
                          "(expected 'VAE' or 'AutoencoderKL')")
    try:
        vae = cls.from_pretrained(path)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"--vae_path {path!r}: could not load the VAE weights: {e}") from e
    vae.requires_grad_(False).eval()
    return vae


def vae_down_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_geometry(args, vae, block_out_channels) -> Tuple[int, int]:
    """(image channels, latent size) of training on ``vae``'s latents; refuses what the VAE or the network
    (``block_out_channels``) cannot take, before any training state exists."""
    channels = args.channels or vae.config.in_channels
    if channels != vae.config.in_channels:
        raise ConfigError(f"--channels {channels} but the VAE takes {vae.config.in_channels}-channel images")
    down = vae_down_factor(vae)
    check_spatial(args.resolution, vae.config.block_out_channels, "--resolution")
    size = args.resolution // down
    check_spatial(size, block_out_channels, f"latent size (--resolution {args.resolution} / VAE factor {down} =)")
    return channels, size


def validation_images(pipeline, generator: torch.Generator, args, **call_kwargs) -> torch.Tensor:
    """Validation samples drawn by the pipeline the run saves (its one denoising loop, its guidance):
    (N, C, H, W) in [0, 1]. Give the pipeline a ``copy_scheduler``: sampling mutates the scheduler."""
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(generator=generator, num_inference_steps=args.num_inference_steps, output_type="pt",
                    **call_kwargs).images


__all__ = ["resolve_pretrained", "build_scheduler", "copy_scheduler", "scheduler_class", "validation_solver", "unet_kwargs_from_args", "check_spatial",
           "build_model", "load_frozen_vae", "vae_down_factor", "latent_geometry", "validation_images",
           "read_model_config"]
