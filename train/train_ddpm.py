#!/usr/bin/env python
"""Train a pixel-space diffusion U-Net (DDPM and friends) with Accelerate.

    accelerate launch train/train_ddpm.py --data_dir /usr/share/datasets/fashion-mnist --channels 1 \
        --resolution 32 --scheduler vp --prediction_type epsilon --output_dir ddpm-fmnist --use_ema

The process is a flag: ``--scheduler vp`` (DDPM), ``ve`` (SMLD), ``sde --sde vp|subvp|ve``; the loss is the
scheduler's own ``training_loss`` unless an objective flag says otherwise (``--snr_gamma``, ``--loss_weighting
edm``, ``--timestep_sampling lognormal``, ``--noise_offset``: ``hf_ddm.training.objectives``). The result is a ``PixelDiffusionPipeline`` folder (it carries its
pipeline code: ``DiffusionPipeline.from_pretrained(out, trust_remote_code=True)``); validation samples
through the same pipeline.
"""

import logging

from accelerate.utils import set_seed

from hf_ddm.models.unet import UNet
from hf_ddm.pipelines import PixelDiffusionPipeline
from hf_ddm.training import (TrainingTask, add_training_args, build_scheduler, check_spatial, copy_scheduler,
                             load_image_dataset, parse_args, random_flip, run_main, script_parser, train,
                             validation_images)
from hf_ddm.training.components import build_model, unet_kwargs_from_args
from hf_ddm.training.args import add_objective_args
from hf_ddm.training.objectives import DEFAULT, Objective, denoising_loss


class DDPMTask(TrainingTask):
    name = "ddpm"

    def __init__(self, unet, scheduler, flip: bool, objective: Objective = DEFAULT):
        super().__init__()
        self.modules = {"unet": unet}
        self.scheduler, self.flip, self.objective = scheduler, flip, objective
        self.base_model = None  # the Hub id of --pretrained_model_path, for the card

    def loss(self, modules, batch, generator):
        x0 = batch["pixel_values"]
        if self.flip:
            x0 = random_flip(x0, generator)
        unet = modules["unet"]
        return denoising_loss(self.scheduler, lambda x, t: unet(x, t).sample, x0, generator, self.objective), {}

    def pipeline(self, modules):
        return PixelDiffusionPipeline(unet=modules["unet"], scheduler=copy_scheduler(self.scheduler))

    def validate(self, modules, generator, args):
        return {"images": validation_images(self.pipeline(modules), generator, args,
                                            batch_size=args.num_validation_images)}

    def card_info(self):
        return {"tags": [f"scheduler-{type(self.scheduler).__name__}"], "pipeline_tag": "unconditional-image-generation",
                "call": "batch_size=4, ", "base_model": self.base_model,
                "description": "Pixel-space diffusion model (hf_ddm UNet) with its training scheduler" +
                               ("." if self.objective.is_default else f"; trained with {self.objective.describe()}.")}


def build_parser():
    p = script_parser(__doc__)
    add_objective_args(p)
    add_training_args(p, lr=1e-4, output_dir="ddpm-model")
    return p


def prepare(args):
    """(task, dataset, data info) for parsed ``args``: everything that can fail on bad input is checked here,
    before any training state exists. ``main`` trains them; benchmarks drive ``hf_ddm.training.loop``'s
    steps on them directly."""
    kwargs = unet_kwargs_from_args(args)
    channels = args.channels or kwargs.get("in_channels", 3)
    check_spatial(args.resolution, kwargs.get("block_out_channels", (64, 128, 256)))
    scheduler = build_scheduler(args)
    dataset, info = load_image_dataset(args, channels)
    set_seed(args.seed)
    kwargs.update(sample_size=args.resolution, in_channels=channels, out_channels=channels)
    unet = build_model(UNet, kwargs, args.pretrained_model_path, args)
    task = DDPMTask(unet, scheduler, args.random_flip, Objective.from_args(args))
    task.base_model = args.pretrained_model_path
    return task, dataset, info


def main(argv=None):
    args = parse_args(build_parser(), argv)
    task, dataset, info = prepare(args)
    return train(args, task, dataset, info)


if __name__ == "__main__":
    # Handlers are the entry point's business, not the library's (diffusers' examples do the same).
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    raise SystemExit(run_main(main))
