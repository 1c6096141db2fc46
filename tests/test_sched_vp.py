"""VPScheduler: exact-model sampling on the Gaussian-mixture oracle, agreement with diffusers'
DDPMScheduler / DDIMScheduler, config swapping, stock pipelines, input checks, training helpers."""

import math

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from hf_ddm.mixture import GaussianMixture, sliced_wasserstein
from hf_ddm.schedulers.vp import VPScheduler


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests run many tiny tensor ops; on a shared, loaded 2-core box intra-op threading makes
    them several times slower. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------

# Three well-separated modes in D=2: broad (0.5), narrow (0.05), medium (0.15); unequal weights.
MIX2 = GaussianMixture([[-1.5, 0.0], [1.5, 1.0], [0.5, -1.5]], [0.5, 0.05, 0.15], [0.5, 0.3, 0.2])
N_POINTS = 3000


def true_samples(seed, n=N_POINTS):
    return MIX2.sample(n, torch.Generator().manual_seed(seed))[0]


def sample_loop(scheduler, num_steps, mixture=MIX2, n=N_POINTS, seed=0, **step_kwargs):
    """The standard diffusers loop with the exact model; float64, one generator."""
    scheduler.set_timesteps(num_steps)
    model = mixture.model(scheduler.marginal, scheduler.config.prediction_type)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, mixture.dim, generator=g, dtype=torch.float64) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(out, t, x, generator=g, **step_kwargs).prev_sample
    assert model.calls == len(scheduler.timesteps)
    return x


def std_error(x, mixture=MIX2):
    """Largest relative error of the per-component spread: the most discretisation-sensitive
    statistic (the narrow mode shrinks first when steps are too coarse)."""
    return float(((mixture.within_component_std(x) - mixture.stds) / mixture.stds).abs().max())


@pytest.fixture(scope="module")
def floors():
    """Noise floors from independent true sample sets of the same size: SW between two true sets,
    and the spread statistic of a true set."""
    sw = [sliced_wasserstein(true_samples(10 + 2 * k), true_samples(11 + 2 * k)) for k in range(3)]
    se = [std_error(true_samples(20 + k)) for k in range(3)]
    return {"sw": sum(sw) / len(sw), "std": max(se), "ref": true_samples(99)}


def isolated_spread(scheduler, sigma):
    """Per-dimension std that this scheduler's whole chain produces from an isolated Gaussian
    component N(mu, sigma^2) given the exact model -- the discretisation error in closed form.

    For one Gaussian, x0_hat - mu = k d and eps_hat = d s / V with d = x - a mu, V = a^2 sigma^2 + s^2,
    k = a sigma^2 / V; each step maps d -> gain * d + std * z, so Var(d) follows a scalar recursion.
    Well-separated components behave like isolated ones once the noise is below their spacing,
    which is where a mode's spread is decided. (Written independently of the scheduler's code.)
    """
    cfg = scheduler.config
    t = scheduler.timesteps.cpu().long()
    prev = torch.cat([t[1:], torch.tensor([-1 if cfg.set_alpha_to_one else 0])])
    p = scheduler.process
    var = float(scheduler.init_noise_sigma) ** 2
    for i in range(len(t)):
        (a, s), (a_p, s_p) = [[float(v) for v in p.marginal(u)] for u in (t[i], prev[i])]
        big_v = a * a * sigma**2 + s * s
        k = a * sigma**2 / big_v
        r = a / a_p
        g2 = s * s - r * r * s_p * s_p  # variance of the forward transition prev -> t
        post_var = g2 * s_p * s_p / (s * s)  # DDPM's beta-tilde
        if cfg.sampler == "ddim":
            std2 = cfg.eta**2 * post_var
            gain = a_p * k + math.sqrt(s_p * s_p - std2) * s / big_v
        else:  # posterior mean (r s_p^2 x + g2 a_p x0_hat) / s^2
            gain = (r * s_p * s_p + g2 * a_p * k) / (s * s)
            std2 = 0.0 if int(prev[i]) == -1 else (g2 if cfg.variance_type == "fixed_large" else post_var)
        var = gain * gain * var + std2
    return math.sqrt(var)


def check_matches_mixture(x, floors, scheduler):
    # Sliced W2 within 3x the two-sample noise floor (no allowance: at this size SW is dominated by
    # sampling noise, the samplers' discretisation error is far below it).
    assert sliced_wasserstein(x, floors["ref"]) < 3 * floors["sw"]
    # Mixture weights within 4 binomial standard errors.
    w = MIX2.component_weights(x)
    se = (MIX2.weights * (1 - MIX2.weights) / len(x)).sqrt()
    assert ((w - MIX2.weights).abs() < 4 * se + 1e-3).all(), (w, MIX2.weights)
    # Per-mode spread: the data's std plus the discretisation error predicted in closed form
    # (isolated_spread), within 3x the noise floor + 3% for what the isolated-mode prediction
    # neglects (modes overlapping at high noise).
    expected = torch.tensor([isolated_spread(scheduler, float(sd)) for sd in MIX2.stds], dtype=torch.float64)
    got = MIX2.within_component_std(x)
    assert ((got - expected) / expected).abs().max() < 3 * floors["std"] + 0.03, (got, expected)
    return expected


# Exact model for agreement tests: a mixture in D = 3*2*2 (image-shaped batches) whose means lie
# outside [-1, 1], so clipping and thresholding really act on x0.
MIX12 = GaussianMixture(
    torch.tensor([[1.2, -0.8, 0.3] * 4, [-1.1, 0.9, -0.2] * 4], dtype=torch.float64), [0.1, 0.2]
)


def image_model(scheduler, prediction_type):
    exact = MIX12.model(scheduler.marginal, prediction_type)
    return lambda x, t: exact(x.flatten(1).double(), t).reshape(x.shape).to(x.dtype)


def compare_loops(ours, theirs, num_steps, step_kwargs=None, learned=False, final_noise_free=False):
    """Run the whole loop with both schedulers from the same noise and identically seeded generators;
    return (max abs difference, scale)."""
    step_kwargs = step_kwargs or {}
    ours.set_timesteps(num_steps)
    theirs.set_timesteps(num_steps)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    model = image_model(ours, ours.config.prediction_type)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    y = x.clone()
    for i, t in enumerate(theirs.timesteps):
        mx, my = model(x, t), model(y, t)
        if learned:  # a variance channel in [-1, 1] for learned_range
            mx = torch.cat([mx, torch.tanh(x)], 1)
            my = torch.cat([my, torch.tanh(y)], 1)
        last = i == len(theirs.timesteps) - 1
        if last and final_noise_free:
            # diffusers adds sqrt(beta) noise on the step to clean data when t > 0 (fixed_large);
            # we return the mean: subtract exactly the noise diffusers drew.
            z = torch.randn(x.shape, generator=torch.Generator().set_state(g1.get_state()))
            beta = 1 - theirs.alphas_cumprod[t]
            x = theirs.step(mx, t, x, generator=g1, **step_kwargs).prev_sample - beta.sqrt() * z
        else:
            x = theirs.step(mx, t, x, generator=g1, **step_kwargs).prev_sample
        y = ours.step(my, t, y, generator=g2, **step_kwargs).prev_sample
    return float((x - y).abs().max()), float(x.abs().max())


# ------------------------------------------------------------------------------------------------
# Schedule: betas and timesteps identical to diffusers'
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps_offset", [0, 1])
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_schedule_identical_to_diffusers(spacing, steps_offset, beta_schedule):
    for ref_cls in (DDPMScheduler, DDIMScheduler):
        ref = ref_cls(timestep_spacing=spacing, steps_offset=steps_offset, beta_schedule=beta_schedule)
        ours = VPScheduler.from_config(ref.config)
        assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
        for n in (1, 7, 50, 999):
            ref.set_timesteps(n)
            ours.set_timesteps(n)
            assert ours.timesteps.dtype == torch.int64
            assert torch.equal(ours.timesteps, ref.timesteps), (ref_cls, n)


def test_basic_contract():
    s = VPScheduler()
    assert len(s) == 1000 and s.order == 1 and s.init_noise_sigma == 1.0
    x = torch.randn(2, 3)
    assert s.scale_model_input(x, 5) is x
    assert torch.equal(s.timestep_to_t(torch.tensor([3.0, 7.0])), torch.tensor([3, 7]))
    assert "DDPMScheduler" in s._compatibles and "DDIMScheduler" in s._compatibles
    names = {c.__name__ for c in s.compatibles}
    assert {"DDPMScheduler", "DDIMScheduler"} <= names  # only diffusers-namespace names count


# ------------------------------------------------------------------------------------------------
# Agreement with diffusers over whole sampling loops
# ------------------------------------------------------------------------------------------------

CLIP_MODES = {
    "none": dict(clip_sample=False),
    "clip": dict(clip_sample=True),
    "threshold": dict(thresholding=True, sample_max_value=1.1, dynamic_thresholding_ratio=0.9),
}


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("clip", list(CLIP_MODES))
def test_ddpm_matches_diffusers(variance_type, prediction_type, spacing, clip):
    kw = dict(variance_type=variance_type, prediction_type=prediction_type, timestep_spacing=spacing, **CLIP_MODES[clip])
    theirs = DDPMScheduler(**kw)
    ours = VPScheduler.from_config(theirs.config)
    assert ours.config.sampler == "ddpm"
    # Documented difference: the step to clean data is noise-free; diffusers adds beta-noise there
    # for fixed_large when the last timestep is > 0 ("trailing").
    final_noise_free = variance_type == "fixed_large" and spacing == "trailing"
    diff, scale = compare_loops(ours, theirs, 25, final_noise_free=final_noise_free)
    assert diff <= 1e-5 * max(1.0, scale), diff


def test_ddpm_learned_range_and_custom_timesteps_match_diffusers():
    kw = dict(variance_type="learned_range", clip_sample=False)
    diff, scale = compare_loops(VPScheduler(**kw), DDPMScheduler(**kw), 25, learned=True)
    assert diff <= 1e-5 * max(1.0, scale)
    custom = [990, 700, 500, 321, 100, 42, 7, 0]
    ours, theirs = VPScheduler(clip_sample=False), DDPMScheduler(clip_sample=False)
    ours.set_timesteps(timesteps=custom)
    theirs.set_timesteps(timesteps=custom)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    model = image_model(ours, "epsilon")
    x = torch.randn(3, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for t in custom:
        x = theirs.step(model(x, t), t, x, generator=g1).prev_sample
        y = ours.step(model(y, t), t, y, generator=g2).prev_sample
    assert torch.allclose(x, y, atol=1e-5)


@pytest.mark.parametrize(
    "eta,spacing,steps_offset,prediction_type,set_alpha_to_one",
    [
        (0.0, "leading", 0, "epsilon", True),
        (1.0, "leading", 0, "epsilon", True),
        (0.5, "leading", 1, "epsilon", False),
        (0.0, "leading", 1, "v_prediction", True),
        (1.0, "trailing", 0, "v_prediction", False),
        (0.0, "trailing", 0, "sample", True),
        (1.0, "trailing", 0, "epsilon", True),
        (0.0, "leading", 0, "v_prediction", False),
    ],
)
def test_ddim_matches_diffusers(eta, spacing, steps_offset, prediction_type, set_alpha_to_one):
    theirs = DDIMScheduler(
        timestep_spacing=spacing, steps_offset=steps_offset, prediction_type=prediction_type,
        set_alpha_to_one=set_alpha_to_one, clip_sample=True,
    )
    ours = VPScheduler.from_config(theirs.config)
    assert ours.config.sampler == "ddim"
    for use_clipped in (False, True):
        diff, scale = compare_loops(ours, theirs, 20, dict(eta=eta, use_clipped_model_output=use_clipped))
        assert diff <= 1e-5 * max(1.0, scale), (use_clipped, diff)


def test_ddim_eta_from_config_and_variance_noise():
    """config.eta is used when step gets no eta; variance_noise replaces the draw."""
    a = VPScheduler(sampler="ddim", eta=1.0, clip_sample=False)
    b = DDIMScheduler(clip_sample=False)
    a.set_timesteps(10)
    b.set_timesteps(10)
    x = torch.randn(2, 3, 2, 2)
    e = torch.randn_like(x)
    z = torch.randn_like(x)
    t = a.timesteps[3]
    ours = a.step(e, t, x, variance_noise=z).prev_sample
    ref = b.step(e, t, x, eta=1.0, variance_noise=z).prev_sample
    assert torch.allclose(ours, ref, atol=1e-6)
    assert not torch.allclose(ours, a.step(e, t, x, eta=0.0).prev_sample)


def test_generator_list_matches_diffusers_and_is_per_item():
    ours, theirs = VPScheduler(clip_sample=False), DDPMScheduler(clip_sample=False)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x = torch.randn(3, 3, 2, 2)
    e = torch.randn_like(x)
    t = ours.timesteps[2]
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]  # noqa: E731
    out = ours.step(e, t, x, generator=gens()).prev_sample
    assert torch.allclose(out, theirs.step(e, t, x, generator=gens()).prev_sample, atol=1e-6)
    alone = ours.step(e[1:2], t, x[1:2], generator=[torch.Generator().manual_seed(2)]).prev_sample
    assert torch.allclose(out[1:2], alone, atol=1e-6)


def test_return_tuple_and_pred_original_sample():
    s = VPScheduler(clip_sample=False)
    s.set_timesteps(10)
    x, e = torch.randn(2, 4), torch.randn(2, 4)
    t = s.timesteps[0]
    prev, x0 = s.step(e, t, x, generator=torch.Generator().manual_seed(0), return_dict=False)
    a, sig = s.marginal(t)
    assert torch.allclose(x0, (x - sig * e) / a, atol=1e-6)
    assert prev.shape == x.shape


# ------------------------------------------------------------------------------------------------
# Exact model on the mixture oracle
# ------------------------------------------------------------------------------------------------


def test_ddpm_full_chain_samples_the_mixture(floors):
    s = VPScheduler(clip_sample=False)
    expected = check_matches_mixture(sample_loop(s, 1000), floors, s)
    # The full chain is nearly exact: the only visible bias is the noise-free last step returning
    # E[x0 | x_0], which narrows the 0.05-wide mode by a few percent.
    assert ((expected - MIX2.stds) / MIX2.stds).abs().max() < 0.08


def test_ddpm_fixed_large_and_v_prediction_sample_the_mixture(floors):
    s = VPScheduler(clip_sample=False, variance_type="fixed_large", prediction_type="v_prediction")
    check_matches_mixture(sample_loop(s, 1000), floors, s)


def test_ddim_error_falls_with_steps(floors):
    ddim = VPScheduler(clip_sample=False, sampler="ddim", timestep_spacing="trailing")
    coarse = sample_loop(ddim, 10)
    fine = sample_loop(ddim, 100)  # same initial noise: the deterministic map converges
    check_matches_mixture(fine, floors, ddim)
    assert std_error(coarse) > std_error(fine) + 3 * floors["std"]
    assert sliced_wasserstein(coarse, floors["ref"]) > sliced_wasserstein(fine, floors["ref"])
    # ... and so does the closed-form narrow-mode error.
    errs = []
    for n in (10, 100, 1000):
        ddim.set_timesteps(n)
        errs.append(abs(isolated_spread(ddim, 0.05) - 0.05))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.2 * errs[1]  # ~first order in the step


def test_ddim_eta_one_samples_the_mixture(floors):
    s = VPScheduler(clip_sample=False, sampler="ddim", eta=1.0)
    check_matches_mixture(sample_loop(s, 200), floors, s)


# ------------------------------------------------------------------------------------------------
# Config round trip and swapping
# ------------------------------------------------------------------------------------------------


def test_config_round_trip(tmp_path):
    s = VPScheduler(sampler="ddim", eta=0.3, beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", clip_sample=False)
    s.save_pretrained(tmp_path)
    t = VPScheduler.from_pretrained(tmp_path)
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(t.config) == public(s.config)
    assert torch.equal(t.alphas_cumprod, s.alphas_cumprod)
    assert VPScheduler.from_config(s.config).config.sampler == "ddim"


def test_from_config_swaps(tmp_path):
    # diffusers -> ours
    assert VPScheduler.from_config(DDPMScheduler().config).config.sampler == "ddpm"
    assert VPScheduler.from_config(DDIMScheduler().config).config.sampler == "ddim"
    assert VPScheduler.from_config(DDIMScheduler().config, sampler="ddpm").config.sampler == "ddpm"
    DDIMScheduler(set_alpha_to_one=False).save_pretrained(tmp_path)
    loaded = VPScheduler.from_pretrained(tmp_path)  # _class_name in the saved config
    assert loaded.config.sampler == "ddim" and loaded.config.set_alpha_to_one is False
    # ours -> diffusers
    ours = VPScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction", timestep_spacing="trailing")
    for cls in (DDPMScheduler, DDIMScheduler):
        d = cls.from_config(ours.config)
        assert d.config.prediction_type == "v_prediction" and d.config.timestep_spacing == "trailing"
        assert torch.equal(d.alphas_cumprod, ours.alphas_cumprod)


# ------------------------------------------------------------------------------------------------
# Stock diffusers pipelines
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


def test_stock_ddpm_pipeline(tiny_unet, tmp_path):
    kw = dict(num_train_timesteps=100)
    run = lambda pipe: pipe(  # noqa: E731
        batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=10, output_type="np"
    ).images
    ref = run(DDPMPipeline(tiny_unet, DDPMScheduler(**kw)))
    pipe = DDPMPipeline(tiny_unet, VPScheduler(**kw))
    pipe.set_progress_bar_config(disable=True)
    assert abs(run(pipe) - ref).max() < 1e-5
    pipe.save_pretrained(tmp_path)
    from diffusers import DiffusionPipeline

    assert type(DiffusionPipeline.from_pretrained(tmp_path).scheduler) is VPScheduler


def test_stock_ddim_pipeline(tiny_unet):
    pipe = DDIMPipeline(tiny_unet, DDIMScheduler(num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)
    run = lambda: pipe(  # noqa: E731
        batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=10, eta=1.0,
        use_clipped_model_output=True, output_type="np",
    ).images
    ref = run()
    pipe.scheduler = VPScheduler.from_config(pipe.scheduler.config)  # DDIMPipeline.__init__ would convert it
    assert pipe.scheduler.config.sampler == "ddim"
    assert abs(run() - ref).max() < 1e-5


# ------------------------------------------------------------------------------------------------
# Bad input: clear ValueErrors naming the argument
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(beta_start=0.02, beta_end=0.0001), "beta_start"),
        (dict(beta_schedule="quadratic"), "beta_schedule"),
        (dict(prediction_type="x0"), "prediction_type"),
        (dict(prediction_type="score"), "prediction_type"),
        (dict(sampler="euler"), "sampler"),
        (dict(variance_type="fixed_medium"), "variance_type"),
        (dict(timestep_spacing="random"), "timestep_spacing"),
        (dict(eta=-0.1), "eta"),
        (dict(trained_betas=[0.1, 0.2], num_train_timesteps=3), "trained_betas"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VPScheduler(**kwargs)


def test_bad_step_inputs():
    s = VPScheduler()
    x = torch.randn(2, 3, 4, 4)
    # Before set_timesteps it steps on the train grid, as DDPMScheduler (test_scheduler_contract); a NaN
    # timestep is named.
    with pytest.raises(ValueError, match="timestep must be a finite number"):
        s.step(x, float("nan"), x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(1001)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="steps_offset"):
        VPScheduler(steps_offset=1).set_timesteps(1000)
    with pytest.raises(ValueError, match="descending"):
        s.set_timesteps(timesteps=[10, 20])
    with pytest.raises(ValueError, match="timesteps"):
        s.set_timesteps(timesteps=[1000, 5])
    with pytest.raises(ValueError, match="exactly one"):
        s.set_timesteps(10, timesteps=[5, 1])
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="not in the schedule"):
        s.step(x, 501, x)
    with pytest.raises(ValueError, match="shape"):
        s.step(x[:, :2], s.timesteps[0], x)
    with pytest.raises(ValueError, match="generator or variance_noise"):
        s.step(x, s.timesteps[0], x, generator=torch.Generator(), variance_noise=x)
    d = VPScheduler(sampler="ddim")
    d.set_timesteps(10)
    with pytest.raises(ValueError, match="eta"):
        d.step(x, d.timesteps[0], x, eta=-1.0)
    with pytest.raises(ValueError, match="eta"):
        d.step(x, d.timesteps[0], x, eta=5.0)


# ------------------------------------------------------------------------------------------------
# Training helpers
# ------------------------------------------------------------------------------------------------


def test_training_helpers_match_diffusers():
    ours, theirs = VPScheduler(), DDPMScheduler()
    x0 = torch.randn(6, 3, 4, 4)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    assert torch.allclose(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), atol=1e-6)
    v = theirs.get_velocity(x0, noise, t)
    assert torch.allclose(ours.get_velocity(x0, noise, t), v, atol=1e-6)
    for pt, target in (("epsilon", noise), ("sample", x0), ("v_prediction", v)):
        s = VPScheduler(prediction_type=pt)
        assert torch.allclose(s.training_target(x0, noise, t), target, atol=1e-6)
        assert float(s.training_loss(target, x0, noise, t)) < 1e-10
    ts = ours.sample_training_timesteps(1000, generator=torch.Generator().manual_seed(0))
    assert ts.dtype == torch.int64 and int(ts.min()) >= 0 and int(ts.max()) <= 999
