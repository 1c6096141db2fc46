"""Sampling in float16 and bfloat16 stays finite and on the data, VE (sigma_max 1348) included: s^2 and the Langevin
corrector's norms overflow or underflow float16 unless computed with care."""

import pytest
import torch

from hf_ddm.mixture import GaussianMixture
from hf_ddm.schedulers import SDEScheduler, VEScheduler, VPScheduler

MIX = GaussianMixture([[-1.0, -0.5], [1.0, -0.5], [0.0, 1.0]], 0.1, [0.5, 0.3, 0.2])


@pytest.mark.parametrize("make", [
    lambda: VEScheduler(),
    lambda: VEScheduler(predictor="reverse_diffusion"),
    lambda: SDEScheduler(sde="ve", solver="pc"),
    lambda: SDEScheduler(sde="ve", sigma_max=1348.0, solver="multistep"),
    lambda: SDEScheduler.from_config(VPScheduler(beta_schedule="squaredcos_cap_v2").config, solver="ode_heun"),
    lambda: SDEScheduler(sde="ve", sigma_max=1348.0, solver="ipndm"),
    lambda: SDEScheduler.from_config(VPScheduler(beta_schedule="squaredcos_cap_v2").config, solver="ipndm"),
    lambda: VPScheduler(sampler="ddim"),
    lambda: VPScheduler(beta_schedule="scaled_linear"),
], ids=["ve-ancestral", "ve-reverse_diffusion", "sde-ve-pc", "sde-ve1348-multistep", "cosine-heun",
        "sde-ve1348-ipndm", "cosine-ipndm", "vp-ddim",
        "vp-scaled_linear-ddpm"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_sampling_is_finite_and_on_the_data(make, dtype):
    sched = make()
    sched.set_timesteps(20)
    model = MIX.model(sched.marginal, sched.config.prediction_type)
    x = (torch.randn(512, 2, generator=torch.Generator().manual_seed(0)) * sched.init_noise_sigma).to(dtype)
    g = torch.Generator().manual_seed(1)
    for t in sched.timesteps:
        x = sched.step(model(x.double(), t).to(dtype), t, x, generator=g).prev_sample
    assert x.dtype == dtype and torch.isfinite(x).all()
    assert x.float().abs().max() < 3.0  # the mixture lies within about 1.5 of the origin
    weights = MIX.component_weights(x.double())
    assert (weights - MIX.weights).abs().max() < 0.1
