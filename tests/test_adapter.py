"""The model adapter against the exact mixture oracle: x0 / eps / score of a model on diffusers' linear and
cosine schedules and on the VP SDE, epsilon and v-prediction, with the noise level computed here
independently (from ``alphas_cumprod`` / the SDE's closed form); the process view of every kind of
scheduler; the model call; classifier guidance through the adapter."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from hf_ddm.adapter import ModelAdapter, call_model, noise_level, process_view
from hf_ddm.guidance import classifier_guidance
from hf_ddm.mixture import GaussianMixture
from hf_ddm.processes import DiscreteScheduleVP, DiscreteVE, DiscreteVP
from hf_ddm.schedulers.sde import SDEScheduler
from hf_ddm.schedulers.ve import VEScheduler
from hf_ddm.schedulers.vp import VPScheduler

MIX = GaussianMixture([[-1.0, 0.5], [1.0, -0.5], [0.2, 1.5]], [0.3, 0.2, 0.25], [0.5, 0.3, 0.2])
N = 64


def _ddpm_level(ddpm, timesteps):
    """(a, s) of diffusers' own x_t = sqrt(ac) x0 + sqrt(1 - ac) eps, read straight from the scheduler."""
    ac = ddpm.alphas_cumprod.double()[timesteps]
    return ac.sqrt(), (1 - ac).sqrt()


def _vp_sde_level(t):
    """score_sde's VP SDE (beta 0.1 -> 20) in closed form: log a = -t^2 (20 - 0.1) / 4 - 0.1 t / 2."""
    log_a = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    return log_a.exp(), (1 - (2 * log_a).exp()).sqrt()


def _noisy(a, s, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, _ = MIX.sample(N, generator=g)
    return a[:, None] * x0 + s[:, None] * torch.randn(x0.shape, generator=g, dtype=torch.float64)


CASES = [(schedule, kind) for schedule in ("linear", "squaredcos_cap_v2") for kind in ("epsilon", "v_prediction")]


@pytest.mark.parametrize("schedule,kind", CASES)
@pytest.mark.parametrize("form", ["diffusers", "config", "hf_ddm VPScheduler", "hf_ddm SDEScheduler"])
def test_conversions_on_a_diffusers_schedule_are_the_oracles(schedule, kind, form):
    ddpm = DDPMScheduler(beta_schedule=schedule, prediction_type=kind)
    scheduler = {"diffusers": ddpm, "config": ddpm.config, "hf_ddm VPScheduler": VPScheduler.from_config(ddpm.config),
                 "hf_ddm SDEScheduler": SDEScheduler.from_config(ddpm.config)}[form]
    # Not the last train timestep: a = 5e-5 there, and x0 = (x - s eps) / a magnifies VPScheduler's float32
    # tables past any tolerance (the exact reading there: test_the_cosine_schedules_last_timestep_is_read_exactly).
    timesteps = torch.randint(0, 999, (N,), generator=torch.Generator().manual_seed(1))
    a, s = _ddpm_level(ddpm, timesteps)

    def network(x, t):  # the exact network of this model, built without the adapter
        aa, ss = _ddpm_level(ddpm, t)
        return MIX.prediction(x, aa, ss, kind)

    adapter = ModelAdapter(network, scheduler)
    assert adapter.prediction_type == kind
    x = _noisy(a, s)
    x0, eps = adapter.denoise(x, timesteps)
    # VPScheduler keeps diffusers' float32 tables of (a, s); x0 divides by a (0.006 near t = 999).
    tol = 2e-5 if form == "hf_ddm VPScheduler" else 1e-6
    torch.testing.assert_close(x0, MIX.denoiser(x, a, s), rtol=tol, atol=tol)
    torch.testing.assert_close(eps, MIX.epsilon(x, a, s), rtol=tol, atol=tol)
    torch.testing.assert_close(adapter.score(x, timesteps), MIX.score(x, a, s), rtol=tol, atol=tol)
    # Any parameterisation into any other: v from the model's output equals the oracle's v.
    out = adapter.output(x, timesteps)
    torch.testing.assert_close(adapter.convert(out, x, timesteps, "v_prediction"),
                               MIX.prediction(x, a, s, "v_prediction"), rtol=tol, atol=tol)
    # One timestep for the whole batch is broadcast.
    a9, s9 = _ddpm_level(ddpm, torch.tensor([900]))
    x9 = _noisy(a9.expand(N), s9.expand(N), seed=2)
    torch.testing.assert_close(adapter.denoise(x9, 900)[0], MIX.denoiser(x9, a9, s9), rtol=tol, atol=tol)


def test_the_cosine_schedules_last_timestep_is_read_exactly():
    # Its alphas_cumprod ends at 2.4e-9: a true noise level, not the zero of a zero-SNR schedule.
    ddpm = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    a, _ = noise_level(ddpm, torch.tensor([999]), torch.zeros(1, dtype=torch.float64))
    torch.testing.assert_close(a**2, ddpm.alphas_cumprod.double()[[999]], rtol=1e-3, atol=0)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "score"])
def test_conversions_on_the_vp_sde_are_the_oracles(kind):
    sched = SDEScheduler(sde="vp", prediction_type=kind)  # model timestep = 1000 t
    t = torch.rand(N, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.999 + 1e-3
    a, s = _vp_sde_level(t)
    adapter = ModelAdapter(lambda x, ts: MIX.prediction(x, *_vp_sde_level(ts / 1000), kind), sched)
    x = _noisy(a, s)
    timesteps = adapter.timestep(t)
    torch.testing.assert_close(timesteps, 1000 * t)
    x0, eps = adapter.denoise(x, timesteps)
    torch.testing.assert_close(x0, MIX.denoiser(x, a, s), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(eps, MIX.epsilon(x, a, s), rtol=1e-6, atol=1e-6)


def test_between_train_timesteps_the_log_snr_is_linear():
    # diffusers' Euler-type schedulers call the model at fractional timesteps, interpolating log-sigma
    # (= -log-SNR) linearly; the adapter's noise level does the same, so it matches their sigma.
    ddpm = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    like = torch.zeros(3, dtype=torch.float64)
    a, s = noise_level(ddpm, torch.tensor([400.0, 400.5, 401.0]), like)
    lam = torch.log(a / s)
    assert abs(float(lam[1] - (lam[0] + lam[2]) / 2)) < 1e-12
    torch.testing.assert_close(a**2 + s**2, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(a[[0, 2]] ** 2, ddpm.alphas_cumprod.double()[[400, 401]])


def test_process_view_of_anything():
    ddpm = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", variance_type="fixed_large")
    # hf_ddm schedulers are their own view; a diffusers scheduler's is built once and kept.
    own = SDEScheduler(sde="subvp")
    assert process_view(own) is own
    view = process_view(ddpm)
    assert isinstance(view, SDEScheduler) and isinstance(view.process, DiscreteScheduleVP)
    assert view.config.prediction_type == "v_prediction" and process_view(ddpm) is view
    # The ODE's continuous view and the bound's discrete grid, from each form of the same schedule.
    timesteps = torch.tensor([0, 17, 500, 999])
    for source in (ddpm, ddpm.config, VPScheduler.from_config(ddpm.config), SDEScheduler.from_config(ddpm.config)):
        cont, disc = process_view(source, "continuous"), process_view(source, "discrete")
        assert cont.process.continuous and isinstance(disc.process, DiscreteVP)
        assert disc.config.prediction_type == cont.config.prediction_type == "v_prediction"
        for v in (cont, disc):
            torch.testing.assert_close(v.marginal(timesteps)[0].double() ** 2, ddpm.alphas_cumprod.double()[timesteps])
    # diffusers' config keeps its variance type on the discrete view (the bound's default reverse variance).
    assert process_view(ddpm, "discrete").config.variance_type == "fixed_large"
    # An hf_ddm config is read by its own class, not taken for SDEScheduler's defaults or the VE SDE.
    ve = process_view(dict(VEScheduler(sigma_max=30.0).config))
    assert isinstance(ve, VEScheduler) and isinstance(ve.process, DiscreteVE)
    # A DDIM config reads the same schedule.
    ddim = process_view(DDIMScheduler(beta_schedule="squaredcos_cap_v2"))
    torch.testing.assert_close(ddim.marginal(timesteps)[1], view.marginal(timesteps)[1])


def test_process_view_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="need"):
        process_view(SDEScheduler(), need="ode")
    with pytest.raises(ValueError, match="continuous-time process or a VP schedule"):
        process_view(VEScheduler(), "continuous")
    with pytest.raises(ValueError, match="discrete VP schedule"):
        process_view(SDEScheduler(sde="ve"), "discrete")
    for bad in ({"sigma_min": 0.01}, {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}, 42):
        with pytest.raises(ValueError, match="scheduler"):
            process_view(bad)
    # A config key that would change what the model predicts is refused, not dropped.
    with pytest.raises(ValueError, match="variance_type"):
        process_view({**DDPMScheduler(variance_type="learned_range").config}, "continuous")
    with pytest.raises(TypeError, match="no model"):
        ModelAdapter(None, SDEScheduler()).output(torch.zeros(1, 2), 10)


class _Recorder(torch.nn.Module):
    """A bfloat16 network returning a diffusers-style output, recording what it was called with."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones((), dtype=torch.bfloat16))
        self.seen = None

    def forward(self, x, t):
        self.seen = (x.dtype, t.dtype, tuple(t.shape))
        return type("Out", (), {"sample": x * self.w})()


def test_call_model_unwraps_and_runs_the_network_in_its_dtype():
    x = torch.randn(3, 2, dtype=torch.float64)
    net = _Recorder()
    out = call_model(net, x, torch.tensor(999.0, dtype=torch.float64))
    # x in the network's dtype, the timestep float32 (bfloat16 would round 999 to 1000), broadcast to the batch.
    assert net.seen == (torch.bfloat16, torch.float32, (3,))
    assert out.dtype == torch.float64 and torch.allclose(out, x, atol=1e-2)
    assert torch.equal(call_model(lambda x, t: (x + t[:, None],), x, 2), x + 2)  # a tuple: its first item
    assert torch.equal(call_model(lambda x, t: x * 2, x, torch.arange(3)), x * 2)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_classifier_guidance_at_scale_one_is_the_exact_conditional(kind):
    # guidance rewrites the output through the adapter; with the exact classifier at scale 1 it must give
    # the exact class-conditional output in the model's own parameterisation.
    ddpm = DDPMScheduler(beta_schedule="linear", prediction_type=kind)
    t = 600
    a, s = _ddpm_level(ddpm, torch.tensor([t]))
    x = _noisy(a.expand(N), s.expand(N), seed=4)
    labels = torch.full((N,), 2)

    class Classifier:
        @staticmethod
        def grad_log_prob(x, timesteps, y):
            assert timesteps.shape == (N,)
            return MIX.score(x, a, s, y) - MIX.score(x, a, s)

    out = classifier_guidance(MIX.prediction(x, a, s, kind), x, torch.tensor(t), Classifier, labels, 1.0, ddpm)
    torch.testing.assert_close(out, MIX.prediction(x, a, s, kind, labels), rtol=1e-6, atol=1e-6)
    # Scale 3 moves eps by 3 s grad log p(y | x): three times scale 1's move, whatever the parameterisation.
    eps = ModelAdapter(None, ddpm).convert
    base = eps(MIX.prediction(x, a, s, kind), x, t, "epsilon")
    move1 = eps(out, x, t, "epsilon") - base
    out3 = classifier_guidance(MIX.prediction(x, a, s, kind), x, t, Classifier, labels, 3.0, ddpm)
    torch.testing.assert_close(eps(out3, x, t, "epsilon") - base, 3 * move1, rtol=1e-6, atol=1e-6)
    assert math.isfinite(float(move1.abs().max())) and float(move1.abs().max()) > 0.1
