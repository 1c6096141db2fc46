"""Training utilities shared by the scripts in ``train/``: argument groups, data, the loop, checkpoints,
EMA, hub upload. Scripts are thin: build the networks, pick the process by flag, call ``train``; they
sample and save through the hf_ddm pipelines (``TrainingTask.pipeline``)."""

from .args import (ConfigError, add_data_args, add_latent_args, add_process_args, add_training_args, add_unet_args,
                   parse_args, script_parser)
from .checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, save_checkpoint
from .components import build_scheduler, check_spatial, copy_scheduler, load_frozen_vae, validation_images
from .data import DataInfo, collate, load_image_dataset, random_flip
from .loop import NonFiniteLossError, TrainingTask, TrainResult, make_accelerator, run_main, train
from .utils import save_grid

__all__ = [
    "ConfigError", "CheckpointError", "add_data_args", "add_latent_args", "add_process_args", "add_training_args",
    "add_unet_args",
    "parse_args", "script_parser", "latest_checkpoint", "list_checkpoints", "save_checkpoint", "build_scheduler",
    "check_spatial", "copy_scheduler", "load_frozen_vae", "validation_images", "DataInfo", "collate",
    "load_image_dataset", "random_flip", "NonFiniteLossError", "TrainingTask", "TrainResult", "make_accelerator",
    "run_main", "train", "save_grid",
]
