"""VEScheduler: predictor-corrector in the standard loop, exact-model sampling on the mixture oracle,
agreement with diffusers' ScoreSdeVeScheduler, config swapping, input checks, training helpers."""

import math

import pytest
import torch
from diffusers import ScoreSdeVeScheduler

from hf_ddm.mixture import GaussianMixture, sliced_wasserstein
from hf_ddm.schedulers.ve import VEScheduler


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many tiny tensor ops: intra-op threads only slow them down on a shared 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


MIX2 = GaussianMixture([[-1.5, 0.0], [1.5, 1.0], [0.5, -1.5]], [0.5, 0.05, 0.15], [0.5, 0.3, 0.2])
N_POINTS = 3000
# sigma_max = 50 >> the data's extent (~2), so N(0, sigma_max^2) is the prior up to a negligible error.
SMALL = dict(num_train_timesteps=1000, sigma_min=0.01, sigma_max=50.0)


def true_samples(seed, n=N_POINTS):
    return MIX2.sample(n, torch.Generator().manual_seed(seed))[0]


def sample_loop(scheduler, num_steps, n=N_POINTS, seed=0, dtype=torch.float64):
    """The standard loop (x = randn * init_noise_sigma; scale_model_input; model; step)."""
    scheduler.set_timesteps(num_steps)
    model = MIX2.model(scheduler.marginal, scheduler.config.prediction_type)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=dtype) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x, generator=g).prev_sample
    assert model.calls == len(scheduler.timesteps)  # the reported NFE is the calls made
    return x


def std_error(x):
    return float(((MIX2.within_component_std(x) - MIX2.stds) / MIX2.stds).abs().max())


@pytest.fixture(scope="module")
def floors():
    sw = [sliced_wasserstein(true_samples(10 + 2 * k), true_samples(11 + 2 * k)) for k in range(3)]
    se = [std_error(true_samples(20 + k)) for k in range(3)]
    return {"sw": sum(sw) / len(sw), "std": max(se), "ref": true_samples(99)}


def isolated_spread_ancestral(scheduler, sigma):
    """Std after the ancestral chain for an isolated component N(mu, sigma^2) (cf. test_sched_vp):
    with V = sigma^2 + s^2, x0_hat - mu = (sigma^2 / V) d, the posterior mean is
    (s'^2 d + (s^2 - s'^2) x0_hat) / s^2 and its variance (s^2 - s'^2) s'^2 / s^2."""
    levels = scheduler.timesteps[:: 1 + scheduler.config.correct_steps].long()
    prev = torch.cat([levels[1:], torch.tensor([-1])])
    var = scheduler.init_noise_sigma**2
    for t, tp in zip(levels, prev):
        s, s_p = float(scheduler.marginal(t)[1]), float(scheduler.marginal(tp)[1])
        k = sigma**2 / (sigma**2 + s * s)
        gain = (s_p**2 + (s * s - s_p**2) * k) / (s * s)
        var = gain**2 * var + (s * s - s_p**2) * s_p**2 / (s * s)
    return math.sqrt(var)


def check_matches_mixture(x, floors, spread_allowance, expected_std=None):
    assert sliced_wasserstein(x, floors["ref"]) < 3 * floors["sw"]
    w = MIX2.component_weights(x)
    se = (MIX2.weights * (1 - MIX2.weights) / len(x)).sqrt()
    assert ((w - MIX2.weights).abs() < 4 * se + 1e-3).all(), w
    expected = MIX2.stds if expected_std is None else expected_std
    got = MIX2.within_component_std(x)
    assert ((got - expected) / expected).abs().max() < 3 * floors["std"] + spread_allowance, (got, expected)


# ------------------------------------------------------------------------------------------------
# The loop contract: repeated timesteps, order, NFE
# ------------------------------------------------------------------------------------------------


def test_timesteps_repeat_for_correctors():
    s = VEScheduler(num_train_timesteps=100, sigma_max=50.0, correct_steps=2)
    assert s.order == 3 and len(s) == 100 and s.init_noise_sigma == pytest.approx(50.0)
    s.set_timesteps(10)
    assert len(s.timesteps) == 30 and s.timesteps.dtype == torch.int64
    assert s.timesteps[:6].tolist() == [99, 99, 99, 88, 88, 88] and s.timesteps[-1] == 0
    assert torch.allclose(s.sigmas, s.marginal(s.timesteps)[1])
    s0 = VEScheduler(num_train_timesteps=100, correct_steps=0)
    s0.set_timesteps(timesteps=[90, 50, 3])
    assert s0.order == 1 and s0.timesteps.tolist() == [90, 50, 3]
    assert s0.init_noise_sigma == pytest.approx(float(s0.marginal(90)[1]))
    x = torch.randn(2, 3)
    assert s0.scale_model_input(x, 90) is x
    assert VEScheduler._compatibles == ["ScoreSdeVeScheduler"]


def test_step_index_counts_and_restarts():
    s = VEScheduler(**SMALL, correct_steps=1)
    model = MIX2.model(s.marginal, "score")
    s.set_timesteps(5)
    outs = []
    for _ in range(2):  # a second loop without set_timesteps restarts cleanly
        x = torch.zeros(4, 2)
        g = torch.Generator().manual_seed(0)
        for i, t in enumerate(s.timesteps):
            x = s.step(model(x, t), t, x, generator=g).prev_sample
            assert s.step_index == i + 1
        outs.append(x)
    assert torch.equal(outs[0], outs[1])


# ------------------------------------------------------------------------------------------------
# Exact model on the mixture oracle
# ------------------------------------------------------------------------------------------------


def test_ancestral_samples_the_mixture_and_error_falls(floors):
    s = VEScheduler(**SMALL, correct_steps=0)
    fine = sample_loop(s, 200)
    expected = torch.tensor([isolated_spread_ancestral(s, float(sd)) for sd in MIX2.stds])
    # The closed-form spread of the 200-step chain; 3% for mode overlap at high noise.
    check_matches_mixture(fine, floors, 0.03, expected_std=expected.double())
    coarse = sample_loop(s, 20)
    assert std_error(coarse) > std_error(fine) + 3 * floors["std"]
    assert sliced_wasserstein(coarse, floors["ref"]) > sliced_wasserstein(fine, floors["ref"])


def test_reverse_diffusion_pc_samples_the_mixture(floors):
    s = VEScheduler(**SMALL, correct_steps=1, predictor="reverse_diffusion")
    x = sample_loop(s, 200)
    # Reverse diffusion over-disperses by O(step) and the Langevin corrector with snr = 0.15 only
    # partly compensates: allowance 10% on the spread (measured ~4%).
    check_matches_mixture(x, floors, 0.10)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_prediction_types_agree_with_score(prediction_type):
    """The exact model in any parameterisation gives the same samples (same generator)."""
    ref = sample_loop(VEScheduler(**SMALL, correct_steps=1), 20, n=200)
    got = sample_loop(VEScheduler(**SMALL, correct_steps=1, prediction_type=prediction_type), 20, n=200)
    assert torch.allclose(got, ref, atol=1e-6)


def test_generator_list_is_per_item():
    s = VEScheduler(**SMALL, correct_steps=0)
    s.set_timesteps(10)
    x = torch.randn(3, 2) * 10
    score = -x / 100
    t = s.timesteps[3]
    out = s.step(score, t, x, generator=[torch.Generator().manual_seed(k) for k in (1, 2, 3)]).prev_sample
    s.set_timesteps(10)
    alone = s.step(score[2:], t, x[2:], generator=[torch.Generator().manual_seed(3)]).prev_sample
    assert torch.allclose(out[2:], alone)


# ------------------------------------------------------------------------------------------------
# Agreement with diffusers' ScoreSdeVeScheduler
# ------------------------------------------------------------------------------------------------
# ScoreSdeVeScheduler.step_pred takes a continuous t in (0, 1] and reads the level
# i = floor(t * (n - 1)) of its discrete_sigmas (n geometric levels set by set_sigmas(n)), stepping to
# level i - 1 (sigma 0 below level 0). With n = num_train_timesteps our levels are exactly its
# discrete_sigmas; we hand it t = (i + 0.5) / (n - 1), which floors to i robustly (its own
# linspace(1, eps, n) times can floor to i - 1 in float32), so both use the same sigma pair.

N_LEVELS = 40
SDE_CFG = dict(num_train_timesteps=N_LEVELS, sigma_min=0.01, sigma_max=20.0, snr=0.15)


def _diffusers_ve(correct_steps=1):
    d = ScoreSdeVeScheduler(**SDE_CFG, correct_steps=correct_steps)
    d.set_timesteps(N_LEVELS)
    d.set_sigmas(N_LEVELS)
    return d


def test_same_sigma_grid_as_diffusers():
    d = _diffusers_ve()
    s = VEScheduler.from_config(d.config)
    assert torch.allclose(s.sigmas_train, d.discrete_sigmas, rtol=1e-5)


def test_step_pred_and_step_correct_match_diffusers():
    d = _diffusers_ve()
    s = VEScheduler.from_config(d.config)
    assert s.config.predictor == "reverse_diffusion"
    s.set_timesteps(N_LEVELS)
    x = torch.randn(8, 3, 4, 4) * 5
    score = torch.randn_like(x)
    for i in (N_LEVELS - 1, 17, 0):
        t_cont = torch.tensor((i + 0.5) / (N_LEVELS - 1))
        ref = d.step_pred(score, t_cont, x, generator=torch.Generator().manual_seed(i))
        got = s.step_pred(score, i, x, generator=torch.Generator().manual_seed(i))
        assert torch.allclose(got.prev_sample, ref.prev_sample, rtol=1e-5, atol=1e-5)
        assert torch.allclose(got.prev_sample_mean, ref.prev_sample_mean, rtol=1e-5, atol=1e-5)
    ref = d.step_correct(score, x, generator=torch.Generator().manual_seed(7)).prev_sample
    got = s.step_correct(score, x, generator=torch.Generator().manual_seed(7)).prev_sample
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert s.step_correct(score, x, return_dict=False)[0].shape == x.shape


def test_pc_loop_matches_diffusers_pipeline_loop():
    """Our standard loop (corrector then predictor per level) vs ScoreSdeVePipeline's loop."""
    d = _diffusers_ve(correct_steps=1)
    s = VEScheduler.from_config(d.config)
    s.set_timesteps(N_LEVELS)
    model = MIX2.model(s.marginal, "score")
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(1)) * s.init_noise_sigma
    y = x.clone()
    for i in reversed(range(N_LEVELS)):
        sigma = d.discrete_sigmas[i]
        x = d.step_correct(MIX2.score(x, 1.0, sigma), x, generator=g1).prev_sample
        out = d.step_pred(MIX2.score(x, 1.0, sigma), torch.tensor((i + 0.5) / (N_LEVELS - 1)), x, generator=g1)
        x, x_mean = out.prev_sample, out.prev_sample_mean
    for t in s.timesteps:
        y = s.step(model(y, t), t, y, generator=g2).prev_sample
    assert torch.allclose(y, x_mean, atol=1e-4, rtol=1e-4)  # the pipeline returns prev_sample_mean


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------


def test_config_round_trip_and_swaps(tmp_path):
    s = VEScheduler(num_train_timesteps=500, sigma_max=80.0, correct_steps=2, predictor="ancestral", prediction_type="epsilon")
    s.save_pretrained(tmp_path / "ours")
    t = VEScheduler.from_pretrained(tmp_path / "ours")
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(t.config) == public(s.config)
    assert t.order == 3
    # diffusers -> ours: ScoreSdeVe configs run its sampler (reverse diffusion) unless told otherwise
    assert VEScheduler.from_config(ScoreSdeVeScheduler().config).config.predictor == "reverse_diffusion"
    assert VEScheduler.from_config(ScoreSdeVeScheduler().config, predictor="ancestral").config.predictor == "ancestral"
    ScoreSdeVeScheduler(sigma_max=90.0).save_pretrained(tmp_path / "theirs")
    loaded = VEScheduler.from_pretrained(tmp_path / "theirs")
    assert loaded.config.predictor == "reverse_diffusion" and loaded.config.sigma_max == 90.0
    assert VEScheduler.from_config(s.config).config.predictor == "ancestral"
    # ours -> diffusers
    d = ScoreSdeVeScheduler.from_config(s.config)
    assert d.config.sigma_max == 80.0 and d.config.correct_steps == 2 and d.config.num_train_timesteps == 500


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sigma_min=5.0, sigma_max=1.0), "sigma_min"),
        (dict(sigma_min=1.0, sigma_max=1.0), "sigma_min"),
        (dict(predictor="euler"), "predictor"),
        (dict(prediction_type="noise"), "prediction_type"),
        (dict(correct_steps=-1), "correct_steps"),
        (dict(snr=0.0), "snr"),
        (dict(num_train_timesteps=1), "num_train_timesteps"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VEScheduler(**kwargs)


def test_bad_step_inputs():
    s = VEScheduler(num_train_timesteps=100, prediction_type="epsilon")
    x = torch.randn(2, 3)
    for call in (lambda: s.step(x, 99, x), lambda: s.step_pred(x, 99, x), lambda: s.step_correct(x, x)):
        with pytest.raises(ValueError, match="set_timesteps"):
            call()
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(101)
    with pytest.raises(ValueError, match="descending"):
        s.set_timesteps(timesteps=[3, 50])
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="not in the schedule"):
        s.step(x, 98, x)
    with pytest.raises(ValueError, match="not in the schedule"):
        s.step_pred(x, 98, x)
    with pytest.raises(ValueError, match="shape"):
        s.step(x[:, :2], 99, x)
    with pytest.raises(ValueError, match="timestep"):
        s.step_correct(x, x)  # an epsilon output needs the level to become a score
    assert s.step_correct(x, x, timestep=99).prev_sample.shape == x.shape


# ------------------------------------------------------------------------------------------------
# Training helpers
# ------------------------------------------------------------------------------------------------


def test_training_helpers():
    d = ScoreSdeVeScheduler(num_train_timesteps=200, sigma_max=50.0)  # discrete_sigmas over 200 levels
    s = VEScheduler.from_config(d.config)
    x0 = torch.randn(5, 1, 4, 4)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 50, 198, 199])
    assert torch.allclose(s.add_noise(x0, noise, t), d.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5)
    sig = s.marginal(t)[1].reshape(-1, 1, 1, 1)
    assert torch.allclose(s.training_target(x0, noise, t), -noise / sig)  # score of x_t | x0
    assert torch.allclose(s.training_loss_weight(t), sig.flatten() ** 2)
    ts = s.sample_training_timesteps(500, generator=torch.Generator().manual_seed(0))
    assert ts.dtype == torch.int64 and int(ts.min()) >= 0 and int(ts.max()) <= 199
