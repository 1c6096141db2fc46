#!/usr/bin/env python
"""Train a latent diffusion U-Net on a frozen VAE with Accelerate.

    accelerate launch train/train_ldm.py --vae_path vae-fmnist --data_dir /usr/share/datasets/fashion-mnist \
        --channels 1 --resolution 32 --conditioning class --cond_drop_prob 0.1 --output_dir ldm-fmnist

``--conditioning none | class | text``: unconditional; class-conditional (null class = ``num_classes``,
dropped with ``--cond_drop_prob`` for classifier-free guidance); text-conditional with a small
``CLIPTextModel`` trained jointly and a word-level tokenizer built from prompts ``--prompt_template``
filled with the class names (nothing is downloaded). The dataset is encoded once by the frozen VAE and
the posteriors cached in ``--latent_cache_dir`` keyed by VAE + data (``--no_latent_cache`` encodes every
step instead). The result is a ``LatentDiffusionPipeline`` folder whose config carries the dataset's
``class_names`` (the prompt template is in the model card); validation samples through the same pipeline,
with classifier-free guidance ``--guidance_scale``.
"""

import logging
import os

import torch
from accelerate.utils import set_seed
from transformers import CLIPTextModel, PreTrainedTokenizerFast

from hf_ddm.models.unet import UNet
from hf_ddm.pipelines import LatentDiffusionPipeline
from hf_ddm.text import build_text_encoder, build_tokenizer
from hf_ddm.training import (ConfigError, TrainingTask, add_latent_args, add_training_args, build_scheduler,
                             copy_scheduler, load_frozen_vae, load_image_dataset, make_accelerator, parse_args,
                             run_main, script_parser, train, validation_images)
from hf_ddm.training.captions import CaptionBank, dataset_captions, with_index
from hf_ddm.training.components import build_model, latent_geometry, resolve_pretrained, unet_kwargs_from_args
from hf_ddm.training.latents import latent_training_data, latents_from_batch
from hf_ddm.training.args import add_objective_args
from hf_ddm.training.objectives import Objective, denoising_loss, drop_labels


class LDMTask(TrainingTask):
    name = "ldm"

    def __init__(self, unet, vae, scheduler, args, class_names, text_encoder=None, tokenizer=None, captions=None):
        super().__init__()
        self.modules = {"unet": unet}
        if text_encoder is not None:
            self.modules["text_encoder"] = text_encoder
        self.frozen = {"vae": vae}
        self.vae, self.scheduler, self.args, self.class_names = vae, scheduler, args, class_names
        self.tokenizer, self.mode, self.captions = tokenizer, args.conditioning, captions
        if tokenizer is not None:  # token ids of every caption; the last row is the empty (null) caption
            self.ids, self.mask = captions.tokenized(tokenizer)
        self.epoch = 0

    def begin_step(self, global_step, epoch):
        self.epoch = epoch  # captions are drawn per example per epoch

    def _condition(self, modules, labels):
        """UNet kwargs for (possibly null) class labels, or for text mode (possibly null) caption indices."""
        if self.mode == "class":
            return {"class_labels": labels}
        if self.mode == "text":
            ids, mask = self.ids.to(labels.device)[labels], self.mask.to(labels.device)[labels]
            hidden = modules["text_encoder"](ids, attention_mask=mask).last_hidden_state
            return {"encoder_hidden_states": hidden, "encoder_attention_mask": mask}
        return {}

    def loss(self, modules, batch, generator):
        z0 = latents_from_batch(batch, self.vae, generator, self.args.random_flip, self.args.sample_posterior)
        cond = {}
        if self.mode == "class":
            labels = drop_labels(batch["class_labels"].to(z0.device), self.args.cond_drop_prob, len(self.class_names),
                                 generator)
            cond = self._condition(modules, labels)
        elif self.mode == "text":
            caps = self.captions.draw(batch["index"], batch.get("class_labels"), self.args.seed, self.epoch)
            caps = drop_labels(caps.to(z0.device), self.args.cond_drop_prob, self.captions.null_index, generator)
            cond = self._condition(modules, caps)
        unet = modules["unet"]
        return denoising_loss(self.scheduler, lambda x, t: unet(x, t, **cond).sample, z0, generator,
                              Objective.from_args(self.args)), {}

    def pipeline(self, modules):
        return LatentDiffusionPipeline(unet=modules["unet"], vae=self.vae, scheduler=copy_scheduler(self.scheduler),
                                       text_encoder=modules.get("text_encoder"), tokenizer=self.tokenizer,
                                       class_names=self.class_names,
                                       # the scale its validation grids were made with: what a call uses by default
                                       default_guidance_scale=None if self.mode == "none" else self.args.guidance_scale)

    def validate(self, modules, generator, args):
        n = args.num_validation_images
        if self.mode == "none":
            cond = {"batch_size": n}
        else:  # the classes in turn, with classifier-free guidance
            cond = {"guidance_scale": args.guidance_scale}
            if self.mode == "class":
                cond["class_labels"] = torch.arange(n) % len(self.class_names)
            else:
                prompts = self.validation_prompts()
                cond["prompt"] = [prompts[i % len(prompts)] for i in range(n)]
        return {"images": validation_images(self.pipeline(modules), generator, args, **cond)}

    def validation_prompts(self):
        """--validation_prompts; by default the canonical prompt of each class, or the dataset's first captions."""
        if self.args.validation_prompts:
            return list(self.args.validation_prompts)
        if self.class_names and not self.captions.per_example:
            return [self.args.prompt_template.format(c) for c in self.class_names]
        return self.captions.texts[: max(1, min(self.args.num_validation_images, len(self.captions) - 1))]

    def card_info(self):
        details = {"conditioning": self.mode, "vae": self.args.vae_path,
                   "classifier-free guidance drop": self.args.cond_drop_prob}
        if self.mode != "none" and self.class_names:
            details["class names (`pipe.config.class_names`)"] = ", ".join(self.class_names)
        if self.mode == "text":
            details["prompt template"] = f"`{self.args.prompt_template}`"
            examples = "; ".join(f"`{c}`" for c in self.captions.texts[:4])
            details["training captions"] = (f"{self.captions.source}: {len(self.captions) - 1} distinct, one drawn "
                                            f"per example per epoch (e.g. {examples})")
        if self.mode == "text":  # the Hub's task names; a class-conditional generator has none of its own
            tag, call = "text-to-image", f'prompt="{self.validation_prompts()[0]}", ' \
                                         f"guidance_scale={self.args.guidance_scale}, "
        elif self.mode == "class":
            tag, call = "unconditional-image-generation", \
                f'class_labels=["{self.class_names[0]}"], guidance_scale={self.args.guidance_scale}, '
        else:
            tag, call = "unconditional-image-generation", "batch_size=4, "
        tags = ["latent-diffusion", f"conditioning-{self.mode}"] + (["class-conditional"] if self.mode == "class" else [])
        return {"tags": tags, "details": details, "pipeline_tag": tag, "call": call,
                "base_model": [self.args.vae_path, self.args.pretrained_model_path],
                "description": "Latent diffusion U-Net on a frozen hf_ddm VAE."}


def build_parser():
    p = script_parser(__doc__)
    add_objective_args(p)
    g = p.add_argument_group("latent diffusion")
    add_latent_args(g, required=True)
    g.add_argument("--conditioning", type=str, default=None, choices=["none", "class", "text"],
                   help="Default: class when --num_classes is given, else none.")
    g.add_argument("--num_classes", type=int, default=None, help="Default: the dataset's number of classes.")
    g.add_argument("--cond_drop_prob", type=float, default=0.1,
                   help="P(condition -> null) for classifier-free guidance; 1 trains the null branch alone (an "
                        "unconditional model continued from a conditional one, for classifier guidance).")
    g.add_argument("--guidance_scale", type=float, default=3.0, help="CFG scale of the validation samples.")
    g.add_argument("--prompt_template", type=str, default="a photo of a {}",
                   help="The canonical prompt of a class (validation, model card; first of its captions).")
    g.add_argument("--caption_style", type=str, default="varied", choices=["varied", "template"],
                   help="Text captions from class names: several phrasings (templates x synonyms) or "
                        "--prompt_template only.")
    g.add_argument("--caption_column", type=str, default=None,
                   help="Text column of the dataset (a string or a list of strings per example) to condition on "
                        "instead of the class names; implies --conditioning text.")
    g.add_argument("--validation_prompts", type=str, nargs="+", default=None,
                   help="Prompts of the validation grid (cycled); default: each class's canonical prompt, or the "
                        "dataset's first captions.")
    g.add_argument("--text_hidden_size", type=int, default=64)
    g.add_argument("--text_layers", type=int, default=2)
    g.add_argument("--text_heads", type=int, default=4)
    g.add_argument("--text_max_length", type=int, default=16)
    g.add_argument("--no_sample_posterior", dest="sample_posterior", action="store_false",
                   help="Train on the posterior mean instead of a sample of q(z|x).")
    add_training_args(p, lr=1e-4, output_dir="ldm-model")
    return p


def pretrained_text_encoder(path, captions):
    """The text encoder and tokenizer of a text-conditional pipeline --pretrained_model_path continues from
    (its U-Net was trained on their embeddings: a fresh encoder would throw that away); (None, None) when the
    folder has none. A tokenizer that lacks words of the training captions is refused (they would be unknown)."""
    folder = resolve_pretrained(path, "--pretrained_model_path")
    if not folder or not all(os.path.isdir(os.path.join(folder, sub)) for sub in ("text_encoder", "tokenizer")):
        return None, None
    tokenizer = PreTrainedTokenizerFast.from_pretrained(os.path.join(folder, "tokenizer"))
    missing = sorted(set(build_tokenizer(captions.texts).get_vocab()) - set(tokenizer.get_vocab()))
    if missing:
        raise ConfigError(f"--pretrained_model_path {path!r}: its tokenizer lacks words of the training captions "
                          f"({', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''})")
    return CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")), tokenizer


def main(argv=None):
    args = parse_args(build_parser(), argv)
    if args.conditioning is None:
        args.conditioning = "text" if args.caption_column else "class" if args.num_classes else "none"
    if args.conditioning != "text" and (args.caption_column or args.validation_prompts):
        raise ConfigError("--caption_column and --validation_prompts need --conditioning text")
    if not 0.0 <= args.cond_drop_prob <= 1.0:
        raise ConfigError(f"--cond_drop_prob must be in [0, 1], got {args.cond_drop_prob}")
    vae = load_frozen_vae(args.vae_path)
    kwargs = unet_kwargs_from_args(args)
    channels, latent_size = latent_geometry(args, vae, kwargs.get("block_out_channels", (64, 128, 256)))
    if args.conditioning == "text" and not kwargs.get("attention_levels") and kwargs.get("mid_block_attention") is False:
        raise ConfigError("--conditioning text needs attention (--attention_levels or the mid-block attention)")
    scheduler = build_scheduler(args, latent=True)
    dataset, info = load_image_dataset(args, channels)
    class_names = None
    if args.conditioning == "text" and args.caption_column:
        class_names = info.class_names  # kept in the pipeline's config when the data has them; not conditioned on
    elif args.conditioning != "none":
        if info.class_names is None:
            raise ConfigError(f"--conditioning {args.conditioning} needs class labels, and the dataset has none")
        class_names = info.class_names[: args.num_classes] if args.num_classes else info.class_names
        if args.num_classes and args.num_classes > len(info.class_names):
            class_names = info.class_names + [str(i) for i in range(len(info.class_names), args.num_classes)]

    captions = None
    if args.conditioning == "text":
        try:
            captions = (CaptionBank.from_texts(dataset_captions(dataset, args.caption_column), args.caption_column)
                        if args.caption_column else
                        CaptionBank.from_class_names(class_names, args.prompt_template, args.caption_style == "varied"))
        except ValueError as e:
            raise ConfigError(str(e)) from e

    accelerator = make_accelerator(args)
    dataset_for_training, collate_fn = latent_training_data(args, vae, dataset, info, accelerator)
    if captions is not None:  # batches carry example indices: captions are drawn per (example, epoch)
        dataset_for_training, collate_fn = with_index(dataset_for_training, collate_fn)

    set_seed(args.seed)
    text_encoder = tokenizer = None
    kwargs.update(sample_size=latent_size, in_channels=vae.config.latent_channels,
                  out_channels=vae.config.latent_channels)
    if args.conditioning == "class":
        kwargs["num_class_embeds"] = len(class_names)
    elif args.conditioning == "text":
        text_encoder, tokenizer = pretrained_text_encoder(args.pretrained_model_path, captions)
        if text_encoder is not None:  # the flags that would have built one record the loaded one
            c = text_encoder.config
            args.text_hidden_size, args.text_layers, args.text_heads = (c.hidden_size, c.num_hidden_layers,
                                                                        c.num_attention_heads)
            args.text_max_length = tokenizer.model_max_length
        else:
            tokenizer = build_tokenizer(captions.texts, args.text_max_length)
            text_encoder = build_text_encoder(tokenizer, args.text_hidden_size, args.text_layers, args.text_heads)
        kwargs["cross_attention_dim"] = text_encoder.config.hidden_size
    unet = build_model(UNet, kwargs, args.pretrained_model_path, args)
    task = LDMTask(unet, vae, scheduler, args, class_names, text_encoder, tokenizer, captions)
    return train(args, task, dataset_for_training, info, accelerator=accelerator, collate_fn=collate_fn)


if __name__ == "__main__":
    # Handlers are the entry point's business, not the library's (diffusers' examples do the same).
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    raise SystemExit(run_main(main))
