#!/usr/bin/env python
"""Train the KL-regularised VAE (the first stage of latent diffusion) with Accelerate.

    accelerate launch train/train_vae.py --data_dir /usr/share/datasets/fashion-mnist --channels 1 \
        --resolution 32 --block_out_channels 32,64 --latent_channels 4 --output_dir vae-fmnist \
        --kl_weight 1e-6 --disc_weight 0.5 --disc_start 2000

Loss: ``VAE.loss`` = reconstruction NLL + ``--kl_weight`` * KL(q(z|x) || N(0, I)) (DESIGN.md §3), both summed
over each image and averaged over the batch, as in CompVis' ``LPIPSWithDiscriminator``; ``--kl_weight 1`` is
the ELBO, the LDM recipe's 1e-6 (the default) a nearly free latent that the KL only keeps from drifting.
With ``--disc_weight > 0`` a PatchGAN discriminator (``hf_ddm.training.adversarial``) joins at optimizer step
``--disc_start``: each step it takes one hinge-loss step of its own optimizer on the batch and its
reconstructions, and the VAE's loss gains ``disc_weight * w * (-D(x_hat))`` with taming-transformers'
adaptive weight w (||grad rec|| / ||grad adv|| at the decoder's last layer; ``--no_adaptive_disc_weight``:
w = 1). The discriminator and its optimizer are prepared by Accelerate, so checkpoints hold them (as
safetensors + the optimizer's tensors, nothing pickled) and a resumed run continues exactly.
At the end ``scaling_factor`` is set to 1 / std(z) over the data (the LDM recipe) and the model is saved
with ``save_pretrained`` to ``--output_dir`` (pass that folder to train_ldm.py / train_classifier.py as
--vae_path).
"""

import logging
import math
import os

import torch
from accelerate.utils import set_seed
from torch import nn

from hf_ddm.models.vae import VAE
from hf_ddm.training import (ConfigError, TrainingTask, add_training_args, check_spatial, load_image_dataset,
                             make_accelerator, parse_args, random_flip, run_main, script_parser, train)
from hf_ddm.training.adversarial import (PatchDiscriminator, adaptive_weight, generator_loss, hinge_d_loss,
                                         set_requires_grad)
from hf_ddm.training.args import _int_list
from hf_ddm.training.checkpoint import MODEL_CONFIG_FILE
from hf_ddm.training.hub import model_usage
from hf_ddm.training.components import build_model, read_model_config
from hf_ddm.training.data import collate
from hf_ddm.training.utils import to_unit_range


def freeze_encoder(vae: VAE) -> None:
    for name in VAE.ENCODER_PARTS:
        part = getattr(vae, name)
        if part is not None:
            part.requires_grad_(False)


class VAEWithLoss(nn.Module):
    """forward = the VAE's loss, so data-parallel wrappers see (and synchronise) the whole computation."""

    def __init__(self, vae, kl_weight, reconstruction, decoder_std):
        super().__init__()
        self.vae, self.kl_weight, self.reconstruction, self.decoder_std = vae, kl_weight, reconstruction, decoder_std

    def forward(self, x, generator=None):
        out = self.vae.loss(x, kl_weight=self.kl_weight, generator=generator, reconstruction=self.reconstruction,
                            decoder_std=self.decoder_std)
        # a plain dict: under mixed precision Accelerate rebuilds the output as type(out)({...}), which a
        # dataclass with several required fields (VAELossOutput) cannot take
        return {k: out[k] for k in ("loss", "reconstruction_loss", "kl_loss", "reconstruction")}


class VAETask(TrainingTask):
    name = "vae"

    def __init__(self, vae, args, dataset, discriminator=None, disc_optimizer=None, accelerator=None):
        super().__init__()
        self.modules = {"vae": VAEWithLoss(vae, args.kl_weight, args.reconstruction, args.decoder_std)}
        self.flip, self.dataset, self.args = args.random_flip, dataset, args
        # prepared by Accelerate before the loop's own prepare: checkpointed and resumed with the VAE
        self.disc, self.disc_optimizer, self.accelerator = discriminator, disc_optimizer, accelerator
        self.global_step = 0

    def begin_step(self, global_step, epoch):
        self.global_step = global_step

    def loss(self, modules, batch, generator):
        x = batch["pixel_values"]
        if self.flip:
            x = random_flip(x, generator)
        out = modules["vae"](x, generator)
        logs = {"reconstruction": out["reconstruction_loss"].item(), "kl": out["kl_loss"].item()}
        loss = out["loss"]
        if self.disc is not None and self.global_step >= self.args.disc_start:
            g_loss, d_logs = self._adversarial(modules, x, out)
            loss = loss + g_loss
            logs.update(d_logs)
        return loss, logs

    def _adversarial(self, modules, x, out):
        """One discriminator step, then the generator's adversarial term through the updated discriminator."""
        recon, n = out["reconstruction"], x.shape[0]
        # (1) the discriminator: real and (detached) reconstructed in one forward, one DDP reduction
        logits = self.disc(torch.cat([x, recon.detach()]))
        d_loss = hinge_d_loss(logits[:n], logits[n:])
        self.accelerator.backward(d_loss)
        self.disc_optimizer.step()  # under gradient accumulation Accelerate steps/zeroes on the last micro-batch
        self.disc_optimizer.zero_grad(set_to_none=True)
        # (2) the decoder's term; the discriminator's weights take no gradient from it (and are not modified
        # after this forward, so the VAE's backward in the loop finds them unchanged)
        disc = self.accelerator.unwrap_model(self.disc)
        set_requires_grad(disc, False)
        try:
            g_loss = generator_loss(disc(recon))
        finally:
            set_requires_grad(disc, True)
        weight = torch.tensor(1.0)
        if self.args.adaptive_disc_weight:
            last = self.accelerator.unwrap_model(modules["vae"]).vae.decoder_out.conv.weight
            weight = adaptive_weight(out["reconstruction_loss"], g_loss, last)
        weight = self.args.disc_weight * weight.to(g_loss.device)
        return weight * g_loss, {"d_loss": d_loss.item(), "g_loss": g_loss.item(), "d_weight": weight.item(),
                                 "logits_real": logits[:n].float().mean().item(),
                                 "logits_fake": logits[n:].float().mean().item()}

    def _fixed_batch(self, n, device):
        return collate([self.dataset[i] for i in range(min(n, len(self.dataset)))])["pixel_values"].to(device)

    @torch.no_grad()
    def validate(self, modules, generator, args):
        vae = modules["vae"].vae
        x = self._fixed_batch(args.num_validation_images, vae.device)
        recon = vae(x).sample.clamp(-1, 1)
        mse = (recon - x).pow(2).flatten(1).mean(1)
        psnr = (10 * torch.log10(4.0 / mse.clamp_min(1e-10))).mean().item()  # data range [-1, 1]
        kl = vae.encode(x).latent_dist.kl().mean().item()
        grid = torch.stack([x, recon], 1).flatten(0, 1)  # original, reconstruction, ...
        return {"images": to_unit_range(grid),
                "scalars": {"reconstruction_mse": mse.mean().item(), "psnr_db": psnr, "kl": kl}}

    @torch.no_grad()
    def save(self, modules, output_dir):
        vae = modules["vae"].vae
        # a frozen encoder keeps the latent space, so its scale stays what the latent models were trained on
        if self.args.compute_scaling_factor and not self.args.train_decoder_only:
            g = torch.Generator().manual_seed(self.args.seed)
            x = self._fixed_batch(self.args.scaling_factor_samples, vae.device)
            zs = [vae.encode(x[i: i + 64]).latent_dist.sample(generator=g) for i in range(0, x.shape[0], 64)]
            std = torch.cat(zs).float().std().item()
            vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
        vae.save_pretrained(output_dir, safe_serialization=True)

    def card_info(self):
        a = self.args
        adversarial = (f"PatchGAN hinge loss, weight {a.disc_weight}{' x adaptive' if a.adaptive_disc_weight else ''}"
                       f", from step {a.disc_start}" if a.disc_weight else "none")
        if a.disc_weight and a.stop_at_step is not None and a.stop_at_step <= a.disc_start:
            adversarial = f"none (the run stopped at step {a.stop_at_step}, before its start at step {a.disc_start})"
        details = {"reconstruction NLL": f"{a.reconstruction}, decoder scale {a.decoder_std}", "KL weight": a.kl_weight,
                   "adversarial term": adversarial}
        if a.stop_at_step is not None:
            details["schedule"] = (f"{a.lr_scheduler} learning rate over {a.max_train_steps} steps, stopped at step "
                                   f"{a.stop_at_step}")
        if a.train_decoder_only:
            details["trained parts"] = ("decoder only (encoder and scaling_factor frozen: latents and the latent "
                                        "models trained on them are unchanged)")
        return {"tags": ["vae", "autoencoder", "latent-diffusion"], "base_model": self.args.pretrained_model_path,
                "details": details,
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
    g.add_argument("--kl_weight", type=float, default=1e-6,
                   help="Weight of KL(q(z|x) || N(0, I)) in nats per image against the reconstruction NLL in nats per "
                        "image: 1 = the ELBO (soft reconstructions, a KL of ~200 nats on Fashion-MNIST); the default "
                        "1e-6 is CompVis' KL-f autoencoders' weight (their NLL is the per-image L1 sum, i.e. "
                        "--reconstruction l1 --decoder_std 1; the Gaussian NLL with std 0.1 pulls harder still).")
    g.add_argument("--reconstruction", type=str, default="gaussian", choices=["gaussian", "l1"])
    g.add_argument("--decoder_std", type=float, default=0.1, help="Scale of the Gaussian/Laplace decoder p(x|z).")
    d = p.add_argument_group("adversarial term (PatchGAN, hinge loss)")
    d.add_argument("--disc_weight", type=float, default=0.0,
                   help="Weight of the adversarial term (0 = no discriminator; CompVis use 0.5 with the adaptive "
                        "weight).")
    d.add_argument("--disc_start", type=int, default=0,
                   help="Optimizer step at which the discriminator and the adversarial term start (warm-up on "
                        "reconstruction + KL alone before it).")
    d.add_argument("--disc_learning_rate", type=float, default=None, help="Default: --learning_rate (constant).")
    d.add_argument("--disc_channels", type=int, default=64, help="Channels of the discriminator's first conv.")
    d.add_argument("--disc_layers", type=int, default=None,
                   help="Stride-2 layers of the PatchGAN (default: 2 for 32 px, 3 from 64 px, 1 below 32 px).")
    d.add_argument("--no_adaptive_disc_weight", dest="adaptive_disc_weight", action="store_false",
                   help="Use --disc_weight as is instead of scaling it by ||grad rec|| / ||grad adv||.")
    g.add_argument("--no_compute_scaling_factor", dest="compute_scaling_factor", action="store_false",
                   help="Keep the configured scaling_factor instead of 1/std(z).")
    g.add_argument("--scaling_factor_samples", type=int, default=512)
    g.add_argument("--train_decoder_only", action="store_true",
                   help="Fine-tune the decoder of --pretrained_model_path with the encoder (and scaling_factor) "
                        "frozen, as Stability's ft-MSE/ft-EMA VAEs: the latent space does not move, so latent "
                        "models already trained on it decode sharper without retraining.")
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
    vae = build_model(VAE, kwargs, args.pretrained_model_path, args)
    # Checkpoints hold bare tensors; this makes every checkpoint-N of the run loadable on its own
    # (benchmarks/eval_vae.py RUN/checkpoint-N) while the run is still going.
    os.makedirs(args.output_dir, exist_ok=True)
    vae.to_json_file(os.path.join(args.output_dir, MODEL_CONFIG_FILE))
    if args.train_decoder_only:
        if not args.pretrained_model_path:
            raise ConfigError("--train_decoder_only fine-tunes a trained VAE: give its --pretrained_model_path")
        freeze_encoder(vae)
    if args.disc_weight < 0 or args.disc_start < 0 or args.kl_weight < 0:
        raise ConfigError("--disc_weight, --disc_start and --kl_weight must be >= 0")
    if args.disc_weight == 0:
        return train(args, VAETask(vae, args, dataset), dataset, info)
    accelerator = make_accelerator(args)
    layers = args.disc_layers or max(1, min(3, int(math.log2(args.resolution)) - 3))
    if args.resolution // 2 ** (layers + 1) < 2:
        raise ConfigError(f"--disc_layers {layers} is too deep for --resolution {args.resolution}")
    disc = PatchDiscriminator(channels, args.disc_channels, layers)
    disc_opt = torch.optim.Adam(disc.parameters(), lr=args.disc_learning_rate or args.learning_rate, betas=(0.5, 0.9))
    # Prepared here, before the loop prepares the VAE: Accelerate's save_state/load_state then carry both
    # (model.safetensors, optimizer.bin = the discriminator's; model_1 / optimizer_1 = the VAE's).
    disc, disc_opt = accelerator.prepare(disc, disc_opt)
    task = VAETask(vae, args, dataset, disc, disc_opt, accelerator)
    return train(args, task, dataset, info, accelerator=accelerator)


if __name__ == "__main__":
    # Handlers are the entry point's business, not the library's (diffusers' examples do the same).
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    raise SystemExit(run_main(main))
