#!/usr/bin/env python
"""Train the KL-regularised VAE (the first stage of latent diffusion) with Accelerate.

    accelerate launch train/train_vae.py --data_dir /usr/share/datasets/fashion-mnist --channels 1 \
        --resolution 32 --block_out_channels 32,64 --latent_channels 4 --output_dir vae-fmnist

Loss: ``VAE.loss`` = reconstruction NLL + ``--kl_weight`` * KL(q(z|x) || N(0, I)) (DESIGN.md §3). At the end
``scaling_factor`` is set to 1 / std(z) over the data (the LDM recipe) and the model is saved with
``save_pretrained`` to ``--output_dir`` (pass that folder to train_ldm.py / train_classifier.py as --vae_path).
"""

import logging
import torch
from accelerate.utils import set_seed
from torch import nn

from hf_ddm.models.vae import VAE
from hf_ddm.training import (TrainingTask, add_training_args, check_spatial, load_image_dataset, parse_args,
                             random_flip, run_main, script_parser, train)
from hf_ddm.training.args import _int_list
from hf_ddm.training.hub import model_usage
from hf_ddm.training.components import build_model, read_model_config
from hf_ddm.training.data import collate
from hf_ddm.training.utils import to_unit_range


class VAEWithLoss(nn.Module):
    """forward = the VAE's loss, so data-parallel wrappers see (and synchronise) the whole computation."""

    def __init__(self, vae, kl_weight, reconstruction, decoder_std):
        super().__init__()
        self.vae, self.kl_weight, self.reconstruction, self.decoder_std = vae, kl_weight, reconstruction, decoder_std

    def forward(self, x, generator=None):
        return self.vae.loss(x, kl_weight=self.kl_weight, generator=generator, reconstruction=self.reconstruction,
                             decoder_std=self.decoder_std)


class VAETask(TrainingTask):
    name = "vae"

    def __init__(self, vae, args, dataset):
        super().__init__()
        self.modules = {"vae": VAEWithLoss(vae, args.kl_weight, args.reconstruction, args.decoder_std)}
        self.flip, self.dataset, self.args = args.random_flip, dataset, args

    def loss(self, modules, batch, generator):
        x = batch["pixel_values"]
        if self.flip:
            x = random_flip(x, generator)
        out = modules["vae"](x, generator)
        return out.loss, {"reconstruction": out.reconstruction_loss.item(), "kl": out.kl_loss.item()}

    def _fixed_batch(self, n, device):
        return collate([self.dataset[i] for i in range(min(n, len(self.dataset)))])["pixel_values"].to(device)

    @torch.no_grad()
    def validate(self, modules, generator, args):
        vae = modules["vae"].vae
        x = self._fixed_batch(args.num_validation_images, vae.device)
        recon = vae(x).sample
        mse = (recon - x).pow(2).mean().item()
        kl = vae.encode(x).latent_dist.kl().mean().item()
        grid = torch.stack([x, recon.clamp(-1, 1)], 1).flatten(0, 1)  # original, reconstruction, ...
        return {"images": to_unit_range(grid), "scalars": {"reconstruction_mse": mse, "kl": kl}}

    @torch.no_grad()
    def save(self, modules, output_dir):
        vae = modules["vae"].vae
        if self.args.compute_scaling_factor:
            g = torch.Generator().manual_seed(self.args.seed)
            x = self._fixed_batch(self.args.scaling_factor_samples, vae.device)
            zs = [vae.encode(x[i: i + 64]).latent_dist.sample(generator=g) for i in range(0, x.shape[0], 64)]
            std = torch.cat(zs).float().std().item()
            vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
        vae.save_pretrained(output_dir, safe_serialization=True)

    def card_info(self):
        return {"tags": ["vae", "autoencoder", "latent-diffusion"], "base_model": self.args.pretrained_model_path,
                "usage": model_usage("{repo}", "hf_ddm.models.vae", "VAE"),
                "description": "KL-regularised autoencoder (hf_ddm VAE), the first stage of latent diffusion."}


def build_parser():
    p = script_parser(__doc__, diffusion=False)
    g = p.add_argument_group("model")
    g.add_argument("--model_config", type=str, default=None, help="JSON config / folder for the VAE.")
    g.add_argument("--block_out_channels", type=_int_list, default=(64, 128, 256))
    g.add_argument("--layers_per_block", type=int, default=1)
    g.add_argument("--latent_channels", type=int, default=4)
    g.add_argument("--attention_levels", type=_int_list, default=())
    g.add_argument("--no_mid_block_attention", action="store_true")
    g.add_argument("--norm_num_groups", type=int, default=32)
    g.add_argument("--pretrained_model_path", type=str, default=None)
    g.add_argument("--kl_weight", type=float, default=1.0, help="beta of the beta-ELBO (1 = the ELBO).")
    g.add_argument("--reconstruction", type=str, default="gaussian", choices=["gaussian", "l1"])
    g.add_argument("--decoder_std", type=float, default=0.1, help="Scale of the Gaussian/Laplace decoder p(x|z).")
    g.add_argument("--no_compute_scaling_factor", dest="compute_scaling_factor", action="store_false",
                   help="Keep the configured scaling_factor instead of 1/std(z).")
    g.add_argument("--scaling_factor_samples", type=int, default=512)
    add_training_args(p, lr=4.5e-6 * 16, output_dir="vae-model")
    return p


def main(argv=None):
    args = parse_args(build_parser(), argv)
    if args.model_config:
        kwargs = read_model_config(args.model_config)
    else:
        kwargs = dict(block_out_channels=tuple(args.block_out_channels), layers_per_block=args.layers_per_block,
                      latent_channels=args.latent_channels, attention_levels=tuple(args.attention_levels),
                      mid_block_attention=not args.no_mid_block_attention, norm_num_groups=args.norm_num_groups)
    channels = args.channels or kwargs.get("in_channels", 3)
    check_spatial(args.resolution, kwargs.get("block_out_channels", (64, 128, 256)))
    dataset, info = load_image_dataset(args, channels)
    set_seed(args.seed)
    kwargs.update(in_channels=channels, out_channels=channels, sample_size=args.resolution)
    vae = build_model(VAE, kwargs, args.pretrained_model_path)
    return train(args, VAETask(vae, args, dataset), dataset, info)


if __name__ == "__main__":
    # Handlers are the entry point's business, not the library's (diffusers' examples do the same).
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    raise SystemExit(run_main(main))
