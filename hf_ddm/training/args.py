"""Command-line arguments shared by the training scripts, as argparse groups.

Names follow diffusers' example scripts (``--train_batch_size``, ``--lr_scheduler``, ``--use_ema`` ...), so
a diffusers user's command line carries over. Each script adds its own model group and calls
``parse_args(parser, argv)``, which runs the cross-argument checks that can be done without data or
models; data/model checks live next to the code that loads them and also run before training.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence


class ConfigError(ValueError):
    """A bad argument combination or input, detected before training starts."""


def _int_list(text: str):
    text = text.strip()
    if text in ("", "none", "[]", "()"):
        return ()
    return tuple(int(v) for v in text.replace("(", "").replace(")", "").replace("[", "").replace("]", "").split(",") if v.strip())


def add_data_args(parser: argparse.ArgumentParser, *, image_size_default: int = 32) -> argparse._ArgumentGroup:
    g = parser.add_argument_group("data")
    g.add_argument("--dataset_name", type=str, default=None,
                   help="A datasets Hub name, or a local folder written by `Dataset.save_to_disk`.")
    g.add_argument("--dataset_config_name", type=str, default=None)
    g.add_argument("--data_dir", "--train_data_dir", dest="data_dir", type=str, default=None,
                   help="Local data: a folder of Fashion-MNIST/MNIST IDX files (train-images-idx3-ubyte[.gz] ...) or an "
                        "image folder (datasets' `imagefolder`, class sub-folders become labels).")
    g.add_argument("--split", type=str, default="train")
    g.add_argument("--image_column", type=str, default=None, help="Default: 'image', 'img' or the first Image feature.")
    g.add_argument("--label_column", type=str, default=None, help="Default: 'label' / 'labels' when present.")
    g.add_argument("--resolution", type=int, default=image_size_default, help="Images are brought to this size (see --image_fit).")
    g.add_argument("--image_fit", type=str, default="resize", choices=["resize", "pad"],
                   help="resize: shorter side to --resolution, center crop; pad: keep pixels, pad with the "
                        "background (-1) or center-crop (Fashion-MNIST 28 -> 32 as the reference network sees it).")
    g.add_argument("--channels", type=int, default=None, choices=[1, 3],
                   help="1 = grayscale, 3 = RGB (default: the model's in_channels, or 3).")
    g.add_argument("--random_flip", action="store_true", help="Random horizontal flips (seeded, per step).")
    g.add_argument("--center_crop", action="store_true",
                   help="Accepted for diffusers' example scripts: crops are always centred here (--image_fit resize); "
                        "random crops would make a resumed run see other pixels than an uninterrupted one.")
    g.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N examples.")
    g.add_argument("--dataloader_num_workers", type=int, default=0)
    g.add_argument("--cache_dir", type=str, default=None, help="datasets cache dir.")
    return g


def add_process_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    g = parser.add_argument_group("noise process / scheduler")
    g.add_argument("--scheduler", type=str, default="vp", choices=["vp", "ve", "sde"],
                   help="vp: discrete VP (DDPM); ve: discrete VE (SMLD); sde: continuous SDE (see --sde).")
    g.add_argument("--sde", type=str, default="vp", choices=["vp", "subvp", "ve"], help="Process of --scheduler sde.")
    g.add_argument("--solver", type=str, default=None, help="Sampler of the scheduler used for validation (scheduler default).")
    g.add_argument("--prediction_type", type=str, default="epsilon",
                   choices=["epsilon", "sample", "v_prediction", "score"])
    g.add_argument("--num_train_timesteps", "--ddpm_num_steps", dest="num_train_timesteps", type=int, default=1000,
                   help="Discrete schedulers only (--ddpm_num_steps: diffusers' train_unconditional.py name).")
    g.add_argument("--beta_schedule", "--ddpm_beta_schedule", dest="beta_schedule", type=str, default=None,
                   help="VP only: linear | squaredcos_cap_v2 | scaled_linear (scheduler default when unset).")
    g.add_argument("--scheduler_config", type=str, default=None,
                   help="A saved scheduler folder/json to use instead of the flags above (its class must match --scheduler).")
    return g


def add_objective_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """How the denoising network is trained (``hf_ddm.training.objectives``); defaults: the scheduler's own loss."""
    from .objectives import EDM_P_MEAN, EDM_P_STD, EDM_SIGMA_DATA

    g = parser.add_argument_group("training objective (time to quality)")
    g.add_argument("--snr_gamma", type=float, default=None,
                   help="Min-SNR-gamma loss weighting (Hang et al. 2023; diffusers' examples' flag, 5.0 recommended): "
                        "weight min(SNR, gamma) in x0-space, converted to the prediction type.")
    g.add_argument("--loss_weighting", type=str, default=None, choices=["scheduler", "min_snr", "edm"],
                   help="scheduler: its own loss (default); min_snr: needs --snr_gamma (which alone selects it); "
                        "edm: EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 in x0-space.")
    g.add_argument("--edm_sigma_data", type=float, default=EDM_SIGMA_DATA, help="sigma_data of --loss_weighting edm.")
    g.add_argument("--timestep_sampling", type=str, default="uniform", choices=["uniform", "lognormal"],
                   help="uniform: the scheduler's own draw; lognormal: EDM's ln(s/a) ~ N(--lognormal_mean, "
                        "--lognormal_std^2), at the nearest train timestep (discrete) or the exact time (continuous).")
    g.add_argument("--lognormal_mean", type=float, default=EDM_P_MEAN, help="EDM's P_mean.")
    g.add_argument("--lognormal_std", type=float, default=EDM_P_STD, help="EDM's P_std.")
    g.add_argument("--noise_offset", type=float, default=0.0,
                   help="Add offset * N(0, 1) per sample and channel to the noise (diffusers' examples; e.g. 0.05).")
    return g


def add_training_args(parser: argparse.ArgumentParser, *, lr: float = 1e-4, batch_size: int = 16,
                      output_dir: str = "output") -> None:
    g = parser.add_argument_group("training")
    g.add_argument("--output_dir", type=str, default=output_dir)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--train_batch_size", type=int, default=batch_size, help="Per process.")
    g.add_argument("--num_epochs", "--num_train_epochs", dest="num_epochs", type=int, default=10)
    g.add_argument("--max_train_steps", type=int, default=None, help="Optimizer steps; overrides --num_epochs.")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--gradient_checkpointing", action="store_true")
    g.add_argument("--learning_rate", type=float, default=lr)
    g.add_argument("--scale_lr", action="store_true", help="lr *= accumulation * batch size * processes.")
    g.add_argument("--lr_scheduler", type=str, default="cosine",
                   choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"])
    g.add_argument("--lr_warmup_steps", type=int, default=500)
    g.add_argument("--adam_beta1", type=float, default=0.9)
    g.add_argument("--adam_beta2", type=float, default=0.999)
    g.add_argument("--adam_weight_decay", type=float, default=0.0)
    g.add_argument("--adam_epsilon", type=float, default=1e-8)
    g.add_argument("--optimizer_impl", type=str, default="auto", choices=["auto", "fused", "foreach", "for-loop"],
                   help="AdamW kernel; auto = fused where the device supports it (CPU, CUDA), else foreach.")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="0 disables clipping.")
    g.add_argument("--use_ema", action="store_true")
    g.add_argument("--ema_max_decay", type=float, default=0.9999)
    g.add_argument("--ema_inv_gamma", type=float, default=1.0)
    g.add_argument("--ema_power", type=float, default=3 / 4)
    g.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                   help="Default: the accelerate config's value.")
    g.add_argument("--allow_tf32", action="store_true")
    g.add_argument("--cpu", action="store_true", help="Force CPU (gloo when launched with several processes).")
    g.add_argument("--ddp_timeout", type=float, default=1800,
                   help="Seconds a collective of a multi-process run may wait for the other processes before it "
                        "fails (transformers' Trainer's ddp_timeout; torch's default, 30 min, here too).")
    add_performance_args(parser)

    c = parser.add_argument_group("checkpointing")
    c.add_argument("--checkpointing_steps", type=int, default=500)
    c.add_argument("--checkpoints_total_limit", type=int, default=None)
    c.add_argument("--resume_from_checkpoint", type=str, default=None,
                   help="'latest' (the newest complete checkpoint in --output_dir; starts fresh if none) or a path.")

    v = parser.add_argument_group("validation and logging")
    v.add_argument("--validation_steps", type=int, default=None, help="Validate every N steps (and at the end).")
    v.add_argument("--num_validation_images", "--eval_batch_size", dest="num_validation_images", type=int, default=16,
                   help="Images per validation grid (--eval_batch_size: diffusers' train_unconditional.py name).")
    v.add_argument("--num_inference_steps", type=int, default=50, help="Sampler steps for validation grids.")
    v.add_argument("--report_to", type=str, default="tensorboard", help="tensorboard | wandb | all | none")
    v.add_argument("--logging_dir", type=str, default="logs", help="Relative to --output_dir.")
    v.add_argument("--tracker_project_name", type=str, default=None)
    v.add_argument("--logging_steps", type=int, default=10)

    h = parser.add_argument_group("hub")
    h.add_argument("--push_to_hub", action="store_true")
    h.add_argument("--hub_model_id", type=str, default=None)
    h.add_argument("--hub_token", type=str, default=None)
    h.add_argument("--hub_private_repo", action="store_true")
    h.add_argument("--hub_upload_checkpoints", action="store_true",
                   help="With --push_to_hub: also upload each checkpoint-<step>/ folder when it is written.")

    # Flags of diffusers' example scripts that cannot apply here: accepted by the parser so that the refusal
    # (in parse_args) says why, instead of argparse's "unrecognized arguments".
    n = parser.add_argument_group("diffusers example flags refused here")
    n.add_argument("--enable_xformers_memory_efficient_attention", action="store_true",
                   help="Refused: hf_ddm's attention is torch's scaled_dot_product_attention, which already picks "
                        "a memory-efficient kernel.")
    n.add_argument("--use_8bit_adam", action="store_true",
                   help="Refused: 8-bit Adam (bitsandbytes) needs CUDA and is not wired into hf_ddm's optimizer.")


def add_performance_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """GPU speed flags (all off by default, so a CPU run is unchanged) and the wall-clock budget.
    ``--mixed_precision``, ``--allow_tf32`` and ``--dataloader_num_workers`` live in their own groups."""
    g = parser.add_argument_group("performance")
    g.add_argument("--channels_last", action="store_true",
                   help="Networks and 4-D batches in channels_last memory format (faster convolutions on GPUs).")
    g.add_argument("--torch_compile", action="store_true",
                   help="torch.compile the trained networks in place (nn.Module.compile): the forward and backward "
                        "of the training step are compiled; weights, checkpoints and saved folders are unchanged.")
    g.add_argument("--torch_compile_backend", type=str, default="inductor",
                   help="torch.compile backend of --torch_compile (inductor; eager/aot_eager for debugging).")
    g.add_argument("--torch_compile_mode", type=str, default=None,
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    g.add_argument("--dataloader_pin_memory", action=argparse.BooleanOptionalAction, default=None,
                   help="Page-locked batches with non-blocking copies to the GPU (default: on when training on CUDA).")
    g.add_argument("--max_train_seconds", type=float, default=None,
                   help="Stop after this many seconds of training (checked after each optimizer step; set-up and "
                        "the final save are not counted), then save as at the end of a run.")
    g.add_argument("--stop_at_step", type=int, default=None,
                   help="End the run at this optimizer step and save as at the end of a run, with the LR schedule "
                        "(and a discriminator's start) still those of --max_train_steps: an earlier point of a "
                        "longer run, e.g. the step a measured curve picked. A run resumed at it saves its "
                        "checkpoint's weights without training; one resumed past it is refused.")
    return g


def _check_performance_args(args, errors: list) -> None:
    if getattr(args, "max_train_seconds", None) is not None and not args.max_train_seconds > 0:
        errors.append("--max_train_seconds must be > 0")
    if getattr(args, "ddp_timeout", 1800) is not None and not args.ddp_timeout > 0:
        errors.append(f"--ddp_timeout must be > 0 seconds (got {args.ddp_timeout})")
    if getattr(args, "stop_at_step", None) is not None and args.stop_at_step < 1:
        errors.append(f"--stop_at_step must be >= 1 (got {args.stop_at_step})")
    if getattr(args, "dataloader_num_workers", 0) < 0:
        errors.append("--dataloader_num_workers must be >= 0")
    if getattr(args, "torch_compile_mode", None) and not getattr(args, "torch_compile", False):
        errors.append("--torch_compile_mode needs --torch_compile")


def add_unet_args(parser: argparse.ArgumentParser, *, prefix: str = "", channels=(64, 128, 256), layers: int = 2,
                  attention=(1,)) -> None:
    """U-Net size flags (``--block_out_channels 64,128,256 --layers_per_block 2 --attention_levels 1``)."""
    g = parser.add_argument_group("model")
    g.add_argument("--model_config", type=str, default=None,
                   help="JSON config (or a model folder) for the network; overrides the size flags.")
    g.add_argument("--block_out_channels", type=_int_list, default=tuple(channels))
    g.add_argument("--layers_per_block", type=int, default=layers)
    g.add_argument("--attention_levels", type=_int_list, default=tuple(attention))
    g.add_argument("--no_mid_block_attention", action="store_true")
    g.add_argument("--attention_head_dim", type=int, default=32)
    g.add_argument("--norm_num_groups", type=int, default=32)
    g.add_argument("--dropout", type=float, default=0.0)
    g.add_argument("--pretrained_model_path", type=str, default=None,
                   help="Start from these weights (a saved model folder) instead of a fresh init.")


def add_latent_args(group, *, required: bool) -> None:
    """The frozen-VAE flags of latent training (train_ldm, latent train_classifier): ``--vae_path`` and the cache."""
    group.add_argument("--vae_path", type=str, required=required, default=None,
                       help="A folder saved by train_vae.py (or a pipeline's vae/)" +
                            ("." if required else "; train in this frozen VAE's latent space."))
    group.add_argument("--latent_cache_dir", type=str, default=None, help="Default: <output_dir>/latent_cache.")
    group.add_argument("--no_latent_cache", action="store_true", help="Encode with the VAE at every step instead.")


def script_parser(doc: str, *, diffusion: bool = True, **unet_kwargs) -> argparse.ArgumentParser:
    """A training script's parser with the data group and, for the scripts that train on a noise process
    (``diffusion``), the process and U-Net groups. The script adds its own group, then ``add_training_args``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    if diffusion:
        add_process_args(p)
        add_unet_args(p, **unet_kwargs)
    return p


def _training_value_errors(args) -> list:
    """Values that would train silently wrong (or not at all) rather than fail: each message names its flag."""
    import math

    errors = []
    if args.num_epochs < 1 and args.max_train_steps is None:
        errors.append(f"--num_epochs must be >= 1 (got {args.num_epochs}), or give --max_train_steps")
    if getattr(args, "max_train_samples", None) is not None and args.max_train_samples < 1:
        errors.append(f"--max_train_samples must be >= 1 (got {args.max_train_samples})")
    if not math.isfinite(args.learning_rate) or args.learning_rate <= 0:
        errors.append(f"--learning_rate must be a positive number (got {args.learning_rate})")
    if not math.isfinite(args.max_grad_norm) or args.max_grad_norm < 0:
        errors.append(f"--max_grad_norm must be >= 0, 0 disabling clipping (got {args.max_grad_norm})")
    if args.lr_warmup_steps < 0:
        errors.append(f"--lr_warmup_steps must be >= 0 (got {args.lr_warmup_steps})")
    if not 0.0 <= args.ema_max_decay <= 1.0:
        errors.append(f"--ema_max_decay must be in [0, 1] (got {args.ema_max_decay})")
    for flag in ("ema_inv_gamma", "ema_power"):
        value = getattr(args, flag)
        if not math.isfinite(value) or value <= 0:
            errors.append(f"--{flag} must be a positive number (got {value})")
    return errors


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    env_local_rank = int(os.environ.get("LOCAL_RANK", -1))
    args.local_rank = env_local_rank
    if args.report_to in (None, "", "none"):
        args.report_to = None
    errors = []
    if args.gradient_accumulation_steps < 1:
        errors.append("--gradient_accumulation_steps must be >= 1")
    if args.train_batch_size < 1:
        errors.append("--train_batch_size must be >= 1")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        errors.append("--max_train_steps must be >= 1")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        errors.append("--checkpoints_total_limit must be >= 1")
    if args.checkpointing_steps is not None and args.checkpointing_steps < 1:
        errors.append("--checkpointing_steps must be >= 1")
    if getattr(args, "resolution", 1) < 1:
        errors.append("--resolution must be positive")
    errors += _training_value_errors(args)
    if hasattr(args, "loss_weighting"):  # scripts with add_objective_args
        from .objectives import Objective

        errors += Objective.from_args(args).errors()
    if args.push_to_hub and not args.hub_model_id:
        errors.append("--push_to_hub needs --hub_model_id")
    if getattr(args, "enable_xformers_memory_efficient_attention", False):
        errors.append("--enable_xformers_memory_efficient_attention cannot apply: hf_ddm's attention already uses "
                      "torch's scaled_dot_product_attention (memory-efficient kernels included); drop the flag")
    if getattr(args, "use_8bit_adam", False):
        import torch

        why = ("this machine has no CUDA device, and bitsandbytes' 8-bit Adam runs only on CUDA"
               if not torch.cuda.is_available() else "hf_ddm's optimizer is torch's AdamW; 8-bit Adam is not wired in")
        errors.append(f"--use_8bit_adam cannot apply: {why}; drop the flag (--optimizer_impl picks the AdamW kernel)")
    if getattr(args, "hub_upload_checkpoints", False) and not args.push_to_hub:
        errors.append("--hub_upload_checkpoints needs --push_to_hub and --hub_model_id")
    _check_performance_args(args, errors)
    if errors:
        parser.error("; ".join(errors))
    if args.push_to_hub and int(os.environ.get("RANK", "0")) == 0:
        # Before any data or model is loaded (diffusers' examples create the repo first): offline, without a
        # token or with a wrong id the run stops now, not after training. One process (RANK 0) talks to the Hub.
        from .hub import check_hub_access

        args._hub_repo_id = check_hub_access(args)
    return args


__all__ = ["ConfigError", "add_data_args", "add_process_args", "add_objective_args", "add_training_args",
           "add_unet_args", "add_latent_args", "add_performance_args", "script_parser", "parse_args"]
