"""The first stage measured on the Fashion-MNIST test set: reconstruction error (of the posterior
mean), KL(q(z|x) || N(0, I)), and the Fréchet distance of the reconstructions in the reference
network's features (the ceiling any latent diffusion model on this VAE can reach).

    python benchmarks/eval_vae.py VAE_FOLDER [--num_samples 10000] [--json out.json]
    python benchmarks/eval_vae.py RUN/checkpoint-N ...   # a training run's checkpoint, while it runs
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eval_quality as eq  # noqa: E402
import quality_metrics as qm  # noqa: E402
import reference_classifier as rc  # noqa: E402

from hf_ddm.models import VAE  # noqa: E402
from hf_ddm.training.checkpoint import STATE_FILE, load_model  # noqa: E402


@torch.no_grad()
def evaluate(vae: VAE, x: torch.Tensor, batch_size: int = 500) -> dict:
    recon, kl = [], []
    for i in range(0, len(x), batch_size):
        xb = x[i: i + batch_size]
        post = vae.encode(xb).latent_dist
        recon.append(vae.decode(post.mode()).sample.clamp(-1, 1))
        kl.append(post.kl())
    recon, kl = torch.cat(recon), torch.cat(kl)
    mse = (recon - x).pow(2).flatten(1).mean(1)
    return {
        "num_samples": len(x),
        "mse_per_pixel": float(mse.mean()),
        "psnr_db": float((10 * torch.log10(4.0 / mse)).mean()),  # data range [-1, 1] -> peak-to-peak 2
        "kl_nats_per_image": float(kl.mean()),
        "recon": recon,
    }


def measure(vae: VAE, num_samples: int = 10000, data_dir: str = rc.DEFAULT_DATA_DIR) -> dict:
    """``evaluate`` on the first ``num_samples`` test images, and the reconstructions' FD to them in the
    reference network's features."""
    x, _ = eq.real_images("test", "pad", data_dir, n=num_samples)
    res = evaluate(vae, x)
    ref = rc.load_reference()
    f_rec, _ = eq.embed(ref, eq.quantize(res.pop("recon")))
    f_test, _ = eq.embed(ref, x)
    res["fd_reconstructions_vs_test"] = qm.frechet_distance_features(f_rec, f_test)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("vae")
    p.add_argument("--num_samples", type=int, default=10000)
    p.add_argument("--data_dir", default=rc.DEFAULT_DATA_DIR)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    is_checkpoint = os.path.isfile(os.path.join(args.vae, STATE_FILE))
    vae = load_model(VAE, args.vae) if is_checkpoint else VAE.from_pretrained(args.vae).eval()
    res = measure(vae, args.num_samples, args.data_dir)
    print("| test images | MSE/pixel ([-1,1]) | PSNR dB | KL nats/image | FD(recon, test) |\n|---|---|---|---|---|")
    print(f"| {res['num_samples']} | {res['mse_per_pixel']:.4f} | {res['psnr_db']:.2f} | {res['kl_nats_per_image']:.1f} "
          f"| {res['fd_reconstructions_vs_test']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
