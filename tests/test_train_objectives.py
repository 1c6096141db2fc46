"""Training objectives (hf_ddm.training.objectives): the weights against their formulas on every process,
the timestep laws, noise offset, and one short training run per option."""

from __future__ import annotations

import math

import pytest
import torch

from hf_ddm.schedulers import SDEScheduler, VEScheduler, VPScheduler
from hf_ddm.training.objectives import (Objective, denoising_loss, loss_weight, noised, timesteps_at_sigma,
                                        x0_error_factor)
from test_train_common import FAST, TINY_UNET, idx_data, run_script  # noqa: F401

PREDICTIONS = ["epsilon", "sample", "v_prediction", "score"]


SCHEDULERS = {
    "vp": lambda p: VPScheduler(num_train_timesteps=100, prediction_type=p),
    "vp-zero-snr": lambda p: VPScheduler(num_train_timesteps=100, prediction_type=p, rescale_betas_zero_snr=True),
    "ve": lambda p: VEScheduler(num_train_timesteps=100, prediction_type=p),
    "sde-vp": lambda p: SDEScheduler(sde="vp", prediction_type=p),
    "sde-subvp": lambda p: SDEScheduler(sde="subvp", prediction_type=p),
    "sde-ve": lambda p: SDEScheduler(sde="ve", prediction_type=p),
}


def schedulers(prediction_type):
    """Every process that accepts ``prediction_type``."""
    out = {}
    for name, make in SCHEDULERS.items():
        try:
            out[name] = make(prediction_type)
        except ValueError:
            pass
    assert out
    return out


def _timesteps(sched, n=16):
    return sched.sample_training_timesteps(n, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_x0_error_factor_is_what_converts_a_prediction_error_into_an_x0_error(prediction_type):
    from hf_ddm.processes import to_x0_eps

    torch.manual_seed(0)
    a, s = torch.tensor([0.9, 0.3, 1.0], dtype=torch.float64), torch.tensor([0.2, 0.95, 7.0], dtype=torch.float64)
    x_t, pred = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    delta = 1e-3 * torch.randn(3, 5, dtype=torch.float64)
    x0_a = to_x0_eps(pred, x_t, a[:, None], s[:, None], prediction_type)[0]
    x0_b = to_x0_eps(pred + delta, x_t, a[:, None], s[:, None], prediction_type)[0]
    ratio = (x0_b - x0_a).pow(2).sum(1) / delta.pow(2).sum(1)
    torch.testing.assert_close(ratio, x0_error_factor(a, s, prediction_type))


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_min_snr_weight_is_the_formula_on_every_process(prediction_type):
    for name, sched in schedulers(prediction_type).items():
        t = _timesteps(sched)
        a, s = (v.double() for v in sched.marginal(t))
        snr = (a / s) ** 2
        w = loss_weight(sched, t, Objective(loss_weighting="min_snr", snr_gamma=5.0))
        torch.testing.assert_close(w, torch.minimum(snr, torch.full_like(snr, 5.0)) *
                                   x0_error_factor(a, s, prediction_type), msg=name)
        if name.startswith("vp") and "zero" not in name:  # diffusers' example scripts, verbatim
            expected = {"epsilon": torch.minimum(snr, torch.full_like(snr, 5.0)) / snr,
                        "v_prediction": torch.minimum(snr, torch.full_like(snr, 5.0)) / (snr + 1),
                        "sample": torch.minimum(snr, torch.full_like(snr, 5.0))}.get(prediction_type)
            if expected is not None:
                torch.testing.assert_close(w, expected)


def test_min_snr_is_finite_at_zero_terminal_snr():
    sched = VPScheduler(num_train_timesteps=100, rescale_betas_zero_snr=True)
    w = loss_weight(sched, torch.tensor([99, 50]), Objective(loss_weighting="min_snr", snr_gamma=5.0))
    assert w[0].item() == 1.0 and torch.isfinite(w).all()


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_edm_weight_is_lambda_sigma_in_x0_space(prediction_type):
    for name, sched in schedulers(prediction_type).items():
        if "zero" in name:
            continue
        t = _timesteps(sched)
        a, s = (v.double() for v in sched.marginal(t))
        sigma = s / a
        lam = (sigma ** 2 + 0.5 ** 2) / (sigma * 0.5) ** 2
        w = loss_weight(sched, t, Objective(loss_weighting="edm"))
        torch.testing.assert_close(w, lam * x0_error_factor(a, s, prediction_type), msg=name)
    if prediction_type == "epsilon":
        sched = VPScheduler(num_train_timesteps=100)
        t = _timesteps(sched)
        a, s = sched.marginal(t)
        torch.testing.assert_close(loss_weight(sched, t, Objective(loss_weighting="edm")),
                                   1 + (s.double() / a.double()) ** 2 / 0.25)
    if prediction_type == "v_prediction":  # EDM's preconditioning of VP, sigma_data = 1, is v-prediction
        sched = VPScheduler(num_train_timesteps=100, prediction_type="v_prediction")
        w = loss_weight(sched, _timesteps(sched), Objective(loss_weighting="edm", sigma_data=1.0))
        torch.testing.assert_close(w, torch.ones_like(w))


def test_scheduler_weighting_is_the_schedulers_own_loss_bit_for_bit():
    for prediction_type in ("epsilon", "score"):
        for name, sched in schedulers(prediction_type).items():
            x0 = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
            model = lambda x, t: 0.5 * x  # noqa: E731
            got = denoising_loss(sched, model, x0, torch.Generator().manual_seed(3))
            g = torch.Generator().manual_seed(3)
            t = sched.sample_training_timesteps(4, generator=g)
            noise = torch.randn(x0.shape, generator=g)
            want = sched.training_loss(model(sched.add_noise(x0, noise, t), t), x0, noise, t)
            assert torch.equal(got, want), name


def test_lognormal_timesteps_follow_the_law_on_every_process():
    obj = Objective(timestep_sampling="lognormal")
    for name, sched in schedulers("epsilon").items():
        x0 = torch.zeros(4000, 1, 1, 1)
        _, _, t = noised(sched, x0, torch.Generator().manual_seed(0), obj)
        a, s = sched.marginal(t)
        log_sigma = torch.log(s.double() / a.double())
        lo_t = sched.sample_training_timesteps(1)  # dtype of the scheduler's own draw
        assert t.dtype == lo_t.dtype, name
        # the bulk of the law lies inside every process's range: median and spread as drawn
        assert abs(log_sigma.median().item() - (-1.2)) < 0.1, (name, log_sigma.median())
        inner = log_sigma[(log_sigma > -3) & (log_sigma < 0.5)]
        assert inner.numel() > 0.7 * 4000 * 0.8, name


def test_timesteps_at_sigma_is_nearest_on_discrete_and_exact_on_continuous():
    vp = VPScheduler(num_train_timesteps=100)
    a, s = vp.marginal(torch.arange(100))
    sig = (s / a).double()
    target = torch.sqrt(sig[40] * sig[41]) * 0.999  # nearer 40 in log sigma
    assert timesteps_at_sigma(vp, target.reshape(1)).item() == 40
    assert timesteps_at_sigma(vp, torch.tensor([1e-9, 1e9])).tolist() == [0, 99]  # clamped to the grid
    sde = SDEScheduler(sde="vp")
    t = timesteps_at_sigma(sde, torch.tensor([0.3, 2.0]))
    a, s = sde.marginal(t)
    torch.testing.assert_close((s / a).double(), torch.tensor([0.3, 2.0], dtype=torch.float64), rtol=1e-4, atol=0)


def test_noise_offset_is_per_sample_and_channel_and_zero_offset_draws_as_before():
    sched = VPScheduler(num_train_timesteps=100)
    x0 = torch.zeros(2, 3, 8, 8)
    _, plain, t0 = noised(sched, x0, torch.Generator().manual_seed(0))
    _, off, t1 = noised(sched, x0, torch.Generator().manual_seed(0), Objective(noise_offset=0.5))
    assert torch.equal(t0, t1)
    diff = off - plain
    assert diff.abs().max() > 0
    torch.testing.assert_close(diff, diff[..., :1, :1].expand_as(diff))  # constant over pixels


def test_objective_flag_errors():
    assert Objective(loss_weighting="min_snr").errors()
    assert Objective(loss_weighting="edm", snr_gamma=5.0).errors()
    assert Objective(noise_offset=-1).errors()
    assert not Objective(loss_weighting="min_snr", snr_gamma=5.0, timestep_sampling="lognormal").errors()


def test_objective_flags_parse_and_refuse(capsys):
    from test_train_flags import parse

    a = parse("train_ddpm", "--snr_gamma", "5")
    assert Objective.from_args(a) == Objective(loss_weighting="min_snr", snr_gamma=5.0)
    with pytest.raises(SystemExit):
        parse("train_ddpm", "--snr_gamma", "5", "--loss_weighting", "edm")
    assert "--snr_gamma" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [
    ["--snr_gamma", "5"],
    ["--loss_weighting", "edm", "--timestep_sampling", "lognormal", "--prediction_type", "v_prediction"],
    ["--noise_offset", "0.1"],
    ["--scheduler", "sde", "--sde", "subvp", "--loss_weighting", "edm", "--timestep_sampling", "lognormal"],
    ["--scheduler", "ve", "--prediction_type", "score", "--snr_gamma", "5", "--timestep_sampling", "lognormal"],
], ids=["min_snr", "edm-vp-v", "noise_offset", "edm-subvp", "min_snr-ve-score"])
def test_training_runs_with_each_option(idx_data, tmp_path, flags):
    out = tmp_path / "run"
    _, summary = run_script("train_ddpm", ["--data_dir", idx_data, "--channels", "1", "--resolution", "8",
                                           *TINY_UNET, *FAST, "--train_batch_size", "4", "--output_dir", out,
                                           "--max_train_steps", "2", "--checkpointing_steps", "100",
                                           "--num_train_timesteps", "50", *flags])
    assert summary["global_step"] == 2 and math.isfinite(summary["final_loss"])
    assert "trained with" in (out / "README.md").read_text()
