"""Guidance limited to an interval of noise levels: on the exact mixture, on hf_ddm's and diffusers'
schedulers, the steps it guides are those whose sigma (read from the scheduler's own tables) lies in the
interval; all levels is plain guidance, no level the conditional model; the folder's default is saved,
loaded and used; bad intervals are refused naming the argument."""

import json
import math

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from hf_ddm.guidance import check_guidance_interval, interval_config
from hf_ddm.pipelines import ClassifierGuidedPipeline, PixelDiffusionPipeline
from hf_ddm.schedulers.sde import SDEScheduler
from hf_ddm.schedulers.vp import VPScheduler
from test_pipelines import N, OracleUNet, _oracle_pipe, _weights, tiny_unet


def _ddim_sigma(sched, t):
    abar = sched.alphas_cumprod[int(t)].double()
    return float(((1 - abar) / abar).sqrt())


def _euler_sigma(sched, t):
    # Euler's own table: the sigma it steps from at timestep t (its timesteps are fractional).
    i = int((sched.timesteps == t).nonzero()[0])
    return float(sched.sigmas[i])


# Each scheduler with the sigma its *own* tables give a timestep: the interval must agree with them.
SCHEDULERS = {
    "vp-cosine": (lambda: VPScheduler(beta_schedule="squaredcos_cap_v2", sampler="ddim", clip_sample=False), _ddim_sigma),
    "diffusers-ddim": (lambda: DDIMScheduler(timestep_spacing="trailing", clip_sample=False), _ddim_sigma),
    "diffusers-dpm++-cosine": (lambda: DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2"), _ddim_sigma),
    "diffusers-euler": (lambda: EulerDiscreteScheduler(timestep_spacing="trailing"), _euler_sigma),
}


def _run(pipe, seed=0, steps=20, **kw):
    return pipe(batch_size=N, class_labels=1, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(seed), **kw).images


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_the_guided_steps_are_those_inside_the_interval(name, monkeypatch):
    make, sigma_of = SCHEDULERS[name]
    pipe = _oracle_pipe(PixelDiffusionPipeline, make(), conditional=True)
    pipe.scheduler.set_timesteps(20)
    sigmas = [sigma_of(pipe.scheduler, t) for t in pipe.scheduler.timesteps]
    ordered = sorted(sigmas)  # ends between two steps' levels: tables differ in float rounding
    low, high = math.sqrt(ordered[4] * ordered[5]), math.sqrt(ordered[14] * ordered[15])
    guided = []
    call = OracleUNet.__call__

    def spy(self, x, t, **kw):
        guided.append(x.shape[0] == 2 * N)  # both branches in one batch: a guided step
        return call(self, x, t, **kw)

    monkeypatch.setattr(OracleUNet, "__call__", spy)
    _run(pipe, guidance_scale=3.0, guidance_interval=(low, high))
    expected = [low <= s <= high for s in sigmas]
    assert sum(expected) == 10 and guided == expected, (name, sigmas, guided)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_level_is_plain_guidance_and_no_level_the_conditional(name):
    pipe = _oracle_pipe(PixelDiffusionPipeline, SCHEDULERS[name][0](), conditional=True)
    plain = _run(pipe, guidance_scale=0.0)
    torch.testing.assert_close(_run(pipe, guidance_scale=0.0, guidance_interval=(0, None)), plain)
    torch.testing.assert_close(_run(pipe, guidance_scale=0.0, guidance_interval=(0, math.inf)), plain)
    conditional = _run(pipe, guidance_scale=1.0)
    torch.testing.assert_close(_run(pipe, guidance_scale=0.0, guidance_interval=(1e6, None)), conditional)
    # Guidance switched off only at the highest levels: w = 0 (the marginal, weight 0.3 on class 1) keeps
    # the class the conditional chose there, so more samples land in it than in the marginal.
    assert abs(float(_weights(plain)[1]) - 0.3) < 0.09
    high_conditional = _run(pipe, guidance_scale=0.0, guidance_interval=(0, 1.0))
    assert float(_weights(high_conditional)[1]) > 0.9


def test_classifier_guidance_outside_the_interval_is_scale_one():
    pipe = _oracle_pipe(ClassifierGuidedPipeline, SDEScheduler(sde="vp", solver="multistep", prediction_type="epsilon"))
    at_one = _run(pipe, guidance_scale=1.0)
    torch.testing.assert_close(_run(pipe, guidance_scale=8.0, guidance_interval=(1e6, None)), at_one)
    torch.testing.assert_close(_run(pipe, guidance_scale=8.0, guidance_interval=(0, None)), _run(pipe, guidance_scale=8.0))
    assert _weights(at_one)[1] > 0.95


def test_default_guidance_interval_is_saved_loaded_and_used(tmp_path):
    unet = tiny_unet(in_channels=1, out_channels=1, num_class_embeds=3)
    pipe = PixelDiffusionPipeline(unet, VPScheduler(num_train_timesteps=20), default_guidance_scale=4.0,
                                  default_guidance_interval=(0.5, float("inf")))
    pipe.save_pretrained(tmp_path)
    # JSON without Infinity: no upper end is null.
    assert json.loads((tmp_path / "model_index.json").read_text())["default_guidance_interval"] == [0.5, None]
    loaded = PixelDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)

    def run(p, **kw):
        return p(class_labels=[0, 2], num_inference_steps=4, output_type="pt",
                 generator=torch.Generator().manual_seed(0), **kw).images

    torch.testing.assert_close(run(loaded), run(loaded, guidance_interval=(0.5, None)))
    assert not torch.allclose(run(loaded), run(loaded, guidance_interval=(0, None)))
    plain = PixelDiffusionPipeline(unet, VPScheduler(num_train_timesteps=20), default_guidance_scale=4.0)
    plain.set_progress_bar_config(disable=True)
    torch.testing.assert_close(run(plain), run(plain, guidance_interval=(0, None)))
    with pytest.raises(ValueError, match="default_guidance_interval"):
        PixelDiffusionPipeline(unet, VPScheduler(num_train_timesteps=20), default_guidance_interval=(2, 1))
    with pytest.raises(ValueError, match="guidance_interval"):
        run(loaded, guidance_interval=5.0)


@pytest.mark.parametrize("bad", [(1, 1), (2, 1), (-1, 2), (math.inf, None), ("a", 2), (1,), 5, "0,5", (True, 3),
                                 (math.nan, 2), (0, math.nan)])
def test_bad_intervals_are_refused_naming_the_argument(bad):
    with pytest.raises(ValueError, match="guidance_interval"):
        check_guidance_interval(bad)


def test_interval_config_round_trips():
    for interval in [(0.0, math.inf), (0.3, 5.0)]:
        assert check_guidance_interval(interval_config(interval)) == interval
    assert interval_config(None) is None and check_guidance_interval(None) is None
