"""The adversarial half of an LDM first stage (Esser et al., taming-transformers' ``LPIPSWithDiscriminator``;
Rombach et al. use it for every KL autoencoder): a PatchGAN discriminator, the hinge losses and the
adaptive weight that balances the generator's adversarial term against the reconstruction term.

Training-only: the discriminator is never shipped, so it is a plain ``nn.Module`` (no public module path).
No perceptual (LPIPS) term: its weights cannot be downloaded here, and the reference classifier of
``benchmarks/`` is what quality is measured in, so it must not be trained on.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """Isola et al.'s PatchGAN as in taming-transformers' ``NLayerDiscriminator``: ``num_layers`` stride-2
    4x4 convs (BatchNorm + LeakyReLU 0.2), one stride-1 conv, and a 1-channel 4x4 conv of per-patch logits.
    For 32x32 images ``num_layers=2`` judges 6x6 overlapping patches of 22x22 pixels."""

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, base_channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = base_channels
        for n in range(1, num_layers + 1):
            prev, ch = ch, base_channels * min(2 ** n, 8)
            stride = 2 if n < num_layers else 1
            layers += [nn.Conv2d(prev, ch, 4, stride, 1, bias=False), nn.BatchNorm2d(ch), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """taming's ``weights_init``: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02), shift 0. Drawn from
        the global generator (``set_seed`` makes it reproducible)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss ½(E relu(1 − D(x)) + E relu(1 + D(x̂)))."""
    return 0.5 * (torch.relu(1.0 - logits_real.float()).mean() + torch.relu(1.0 + logits_fake.float()).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's (decoder's) hinge term −E D(x̂)."""
    return -logits_fake.float().mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """taming's ``calculate_adaptive_weight``: ‖∇_w rec‖ / (‖∇_w g‖ + 1e-4) at the decoder's last weight w,
    so that the adversarial gradient reaching the decoder is as large as the reconstruction's whatever the
    reconstruction loss's scale (Gaussian or Laplace NLL, any decoder std). A detached scalar."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = rec_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    return w.clamp(0.0, max_weight).detach()


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


__all__ = ["PatchDiscriminator", "hinge_d_loss", "generator_loss", "adaptive_weight", "set_requires_grad"]
