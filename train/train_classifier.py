#!/usr/bin/env python
"""Train a noise-aware classifier p(y | x_t) for classifier guidance, on the same process as the diffusion
model it will guide, in pixel space or (with ``--vae_path``) in the latent space of a frozen VAE.

    accelerate launch train/train_classifier.py --data_dir /usr/share/datasets/fashion-mnist --channels 1 \
        --resolution 32 --scheduler vp --output_dir classifier-fmnist

Inputs are x_t = a_t x0 + s_t eps from the scheduler's own ``add_noise`` at timesteps from its
``sample_training_timesteps``; the loss is cross-entropy. Saved: ``classifier/`` and ``scheduler/``
(combine with a U-Net in ``ClassifierGuidedPipeline``).
"""

import logging
import os

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed

from hf_ddm.models.classifier import NoisyClassifier
from hf_ddm.training import (ConfigError, TrainingTask, add_latent_args, add_training_args, build_scheduler,
                             check_spatial, load_frozen_vae, load_image_dataset, make_accelerator, parse_args,
                             random_flip, run_main, script_parser, train)
from hf_ddm.training.hub import model_usage
from hf_ddm.training.components import build_model, latent_geometry, unet_kwargs_from_args
from hf_ddm.training.data import collate
from hf_ddm.training.latents import latent_training_data, latents_from_batch
from hf_ddm.training.objectives import noised


class ClassifierTask(TrainingTask):
    name = "classifier"

    def __init__(self, classifier, scheduler, args, vae=None, eval_dataset=None, collate_fn=collate):
        super().__init__()
        self.modules = {"classifier": classifier}
        self.frozen = {"vae": vae} if vae is not None else {}
        self.scheduler, self.args, self.vae = scheduler, args, vae
        self.eval_dataset, self.collate_fn = eval_dataset, collate_fn

    def _inputs(self, batch, generator):
        if self.vae is not None:
            return latents_from_batch(batch, self.vae, generator, self.args.random_flip, True)
        x = batch["pixel_values"]
        return random_flip(x, generator) if self.args.random_flip else x

    def loss(self, modules, batch, generator):
        x0 = self._inputs(batch, generator)
        x_t, _, t = noised(self.scheduler, x0, generator)
        logits = modules["classifier"](x_t, t).logits
        labels = batch["class_labels"].to(logits.device)
        loss = F.cross_entropy(logits.float(), labels)
        return loss, {"train_accuracy": (logits.argmax(-1) == labels).float().mean().item()}

    @torch.no_grad()
    def validate(self, modules, generator, args):
        """Accuracy on the first examples at random noise levels and at the lowest noise level."""
        clf = modules["classifier"]
        n = min(256, len(self.eval_dataset))
        batch = self.collate_fn([self.eval_dataset[i] for i in range(n)])
        batch = {k: v.to(clf.device) for k, v in batch.items()}
        x0 = self._inputs(batch, generator)
        x_t, _, t = noised(self.scheduler, x0, generator)
        acc = (clf(x_t, t).logits.argmax(-1) == batch["class_labels"]).float().mean().item()
        t0 = torch.zeros_like(t) if not t.is_floating_point() else self.scheduler.t_to_timestep(
            torch.full(t.shape, self.scheduler.training_t_min, dtype=torch.float64)).to(t)
        x_low = self.scheduler.add_noise(x0, torch.randn(x0.shape, generator=generator).to(x0), t0)
        acc_low = (clf(x_low, t0).logits.argmax(-1) == batch["class_labels"]).float().mean().item()
        return {"scalars": {"accuracy": acc, "accuracy_low_noise": acc_low}}

    def save(self, modules, output_dir):
        modules["classifier"].save_pretrained(os.path.join(output_dir, "classifier"), safe_serialization=True)
        self.scheduler.save_pretrained(os.path.join(output_dir, "scheduler"))

    def card_info(self):
        space = "latent" if self.vae is not None else "pixel"
        return {"tags": ["classifier-guidance", f"{space}-space"],
                "details": {"space": space, "vae": self.args.vae_path},
                "pipeline_tag": "image-classification", "base_model": self.args.pretrained_model_path,
                "usage": model_usage("{repo}", "hf_ddm.models.classifier", "NoisyClassifier", "classifier")
                + "\n\nWith an unconditional U-Net on the same process it guides `hf_ddm.pipelines.ClassifierGuidedPipeline`.",
                "description": "Noise-aware classifier p(y | x_t) (hf_ddm NoisyClassifier) for classifier guidance."}


def build_parser():
    p = script_parser(__doc__)
    g = p.add_argument_group("classifier")
    g.add_argument("--num_classes", type=int, default=None, help="Default: the dataset's number of classes.")
    add_latent_args(g, required=False)
    add_training_args(p, lr=3e-4, output_dir="classifier-model")
    return p


def main(argv=None):
    args = parse_args(build_parser(), argv)
    kwargs = unet_kwargs_from_args(args)
    for k in ("out_channels", "num_class_embeds", "cross_attention_dim"):
        kwargs.pop(k, None)
    vae = load_frozen_vae(args.vae_path) if args.vae_path else None
    if vae is not None:
        channels, size = latent_geometry(args, vae, kwargs.get("block_out_channels", (64, 128, 256)))
        in_ch = vae.config.latent_channels
    else:
        channels = args.channels or kwargs.get("in_channels", 3)
        size, in_ch = args.resolution, channels
        check_spatial(size, kwargs.get("block_out_channels", (64, 128, 256)))
    scheduler = build_scheduler(args, latent=bool(args.vae_path))
    dataset, info = load_image_dataset(args, channels)
    if info.class_names is None:
        raise ConfigError("the classifier needs class labels and the dataset has none (use --label_column)")
    num_classes = args.num_classes or info.num_classes

    accelerator = make_accelerator(args)
    collate_fn = collate
    if vae is not None:
        dataset, collate_fn = latent_training_data(args, vae, dataset, info, accelerator)
    set_seed(args.seed)
    kwargs.update(sample_size=size, in_channels=in_ch, num_classes=num_classes)
    kwargs.pop("pretrained_model_path", None)
    classifier = build_model(NoisyClassifier, kwargs, args.pretrained_model_path, args)
    task = ClassifierTask(classifier, scheduler, args, vae, dataset, collate_fn)
    return train(args, task, dataset, info, accelerator=accelerator, collate_fn=collate_fn)


if __name__ == "__main__":
    # Handlers are the entry point's business, not the library's (diffusers' examples do the same).
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    raise SystemExit(run_main(main))
