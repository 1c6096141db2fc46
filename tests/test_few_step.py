"""Optimized time steps (hf_ddm.few_step) and SDEScheduler's custom steps, on the exact mixture oracle."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, HeunDiscreteScheduler

from hf_ddm import optimize_steps
from hf_ddm.few_step import as_config
from hf_ddm.mixture import GaussianMixture
from hf_ddm.schedulers import SDEScheduler

LINEAR = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
COSINE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
MIX = GaussianMixture([[-1.0, -0.5], [1.0, -0.5], [0.0, 1.0]], 0.05, [0.5, 0.3, 0.2])
STEPS = [999, 850, 600, 400, 250, 120, 40]
# Small enough for a test (~1 s each), large enough that the DP has room: 24 candidates, 3 teacher substeps.
FAST = dict(candidates=24, teacher_substeps=3, sample_shape=(128, 2))


def run(sched, noise, **set_kw):
    """The plain diffusers loop on the exact model of ``sched``'s schedule."""
    sched.set_timesteps(**set_kw)
    model, x = MIX.model(sched), noise.clone()
    for t in sched.timesteps:
        x = sched.step(model(sched.scale_model_input(x, t), t), t, x).prev_sample
    return x


def noise(seed, n=1000):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def error(x, ref):
    return float((x - ref).pow(2).mean(1).sqrt().mean())


@pytest.fixture(scope="module")
def optimized():
    sched = SDEScheduler.from_config(LINEAR, solver="multistep", solver_order=2, time_grid="log_snr")
    return sched, optimize_steps(MIX.model(sched), sched, [4, 5], seed=0, **FAST)


# --- custom steps: diffusers' meaning -------------------------------------------------------------------


def test_custom_timesteps_match_diffusers_dpmsolver():
    """timesteps=: the N step starts, the last step into the clean estimate -- what DPMSolverMultistepScheduler
    does with the same list; on integer timesteps both are the same DPM-Solver++(2M), so the samples agree."""
    ours = SDEScheduler.from_config(LINEAR, solver="multistep", solver_order=2)
    theirs = DPMSolverMultistepScheduler(**LINEAR)
    x0 = noise(0)
    a, b = run(ours, x0, timesteps=STEPS), run(theirs, x0, timesteps=STEPS)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist() == STEPS
    assert (a - b).abs().max() < 1e-4
    # The same steps as diffusers' noise levels (sigmas=, N + 1 of them, 0 = the clean end): the same run.
    c = run(ours, x0, sigmas=theirs.sigmas.double().tolist())
    assert (c - a).abs().max() < 1e-4


def test_custom_timesteps_repeat_for_multi_call_solvers_as_diffusers_heun():
    ours = SDEScheduler.from_config(LINEAR, solver="ode_heun")
    theirs = HeunDiscreteScheduler(**LINEAR)
    ours.set_timesteps(timesteps=STEPS)
    theirs.set_timesteps(timesteps=STEPS)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    assert ours.num_model_evaluations == 2 * len(STEPS) - 1  # no corrector into the clean data


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_inference_steps=5, timesteps=STEPS), "exactly one"),
    (dict(), "exactly one"),
    (dict(timesteps=[999, 500, 600]), "decreasing"),
    (dict(timesteps=[1500, 500]), "lie in"),
    (dict(sigmas=[100.0, 1.0, 2.0]), "decreasing"),
    (dict(sigmas=[1e6, 1.0, 0.0]), "noise levels"),
])
def test_custom_steps_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SDEScheduler.from_config(LINEAR).set_timesteps(**kwargs)


def test_custom_timesteps_without_final_denoise_end_at_sampling_eps():
    sched = SDEScheduler(sde="vp", denoise_final=False)
    sched.set_timesteps(timesteps=[1000.0, 500.0, 100.0])
    assert sched.num_model_evaluations == 3
    with pytest.raises(ValueError, match="sampling_eps"):
        sched.set_timesteps(timesteps=[1000.0, 500.0, 1.0])  # 1.0 = sampling_eps 1e-3 * 1000: no step left


# --- optimize_steps ---------------------------------------------------------------------------------------


def test_optimized_never_worse_than_its_start_on_the_calibration_objective(optimized):
    """Recomputed here, independently: the calibration noise (seed 0, the batch optimize_steps drew), a
    400-step reference, each grid run through the scheduler's own timesteps=."""
    sched, results = optimized
    x0 = torch.randn(FAST["sample_shape"], generator=torch.Generator().manual_seed(0)).double()
    fine = SDEScheduler.from_config(LINEAR, solver="multistep", solver_order=3, time_grid="log_snr")
    ref = run(fine, x0, num_inference_steps=400)
    for n, r in results.items():
        assert len(r.timesteps) == n and len(r.sigmas) == n + 1 and r.sigmas[-1] == 0
        assert r.error <= r.start_error and r.error <= r.dp_error
        start, opt = error(run(sched, x0, num_inference_steps=n), ref), error(run(sched, x0, timesteps=r.timesteps), ref)
        assert start == pytest.approx(r.start_error, rel=0.05)
        assert opt == pytest.approx(r.error, rel=0.05)
        assert opt < 0.5 * start  # measured: 0.10x at 4 steps, 0.18x at 5 (0.18x, 0.26x with the start fixed at the top)


def test_optimized_steps_hold_on_fresh_noise(optimized):
    """Found on 128 calibration samples, they serve other samples: 1000 fresh draws (another seed)."""
    sched, results = optimized
    x0 = noise(7)
    ref = run(SDEScheduler.from_config(LINEAR, solver="multistep", solver_order=3, time_grid="log_snr"), x0,
              num_inference_steps=400)
    for n, r in results.items():
        assert error(run(sched, x0, timesteps=r.timesteps), ref) < 0.5 * error(run(sched, x0, num_inference_steps=n), ref)


def test_optimize_steps_is_deterministic(optimized):
    sched, results = optimized
    again = optimize_steps(MIX.model(sched), sched, [4, 5], seed=0, **FAST)
    for n, r in results.items():
        assert again[n].timesteps == r.timesteps and again[n].error == r.error and again[n].history == r.history


def test_optimized_steps_survive_save_and_load(optimized, tmp_path):
    """Written into the config (optimized_timesteps), saved, loaded: set_timesteps(N) runs them, for
    SDEScheduler and for a stock loop; other step counts keep the time grid; a config without them loads."""
    sched, results = optimized
    saved = SDEScheduler.from_config(sched.config, optimized_timesteps={5: results[5].timesteps, "4": results[4].timesteps})
    saved.save_config(tmp_path)
    loaded = SDEScheduler.from_pretrained(tmp_path)
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(saved.config)
    assert loaded.config.optimized_timesteps == as_config(results)
    x0 = noise(3, 200)
    for n, r in results.items():
        assert torch.equal(run(loaded, x0, num_inference_steps=n), run(sched, x0, timesteps=r.timesteps))
    loaded.set_timesteps(6)
    sched.set_timesteps(6)
    assert torch.equal(loaded.timesteps, sched.timesteps)
    assert SDEScheduler.from_config({k: v for k, v in saved.config.items() if k != "optimized_timesteps"}).config.optimized_timesteps is None
    with pytest.raises(ValueError, match="must list 5"):
        SDEScheduler.from_config(LINEAR, optimized_timesteps={"5": [999, 500]})


def test_optimize_steps_from_a_diffusers_config_and_other_solvers():
    """A diffusers config is SDEScheduler on its schedule; Heun is scored by its predictor and refined on
    the true objective; the cosine schedule starts where SDEScheduler's grid does."""
    theirs = DPMSolverMultistepScheduler(**COSINE)
    r = optimize_steps(MIX.model(theirs), theirs.config, 3, solver="ode_heun", refine_calls=100, **FAST)
    assert r.solver == "ode_heun" and r.error <= r.start_error and len(r.timesteps) == 3
    # The budget holds: teacher (<= 27 candidates x 3 substeps + 1) + one call per start candidate (<= 27) + the
    # start grid, two DP paths and the three time grids run once + two searches of 100 calls, each with one
    # run's overshoot.
    assert r.model_calls <= 27 * 3 + 1 + 27 + 6 * 3 + 2 * (100 + 3)


@pytest.mark.parametrize("config, solver, grid", [(LINEAR, dict(solver="multistep", solver_order=2), "uniform"),
                                                  (COSINE, dict(solver="ipndm"), "log_snr")], ids=["2M", "ipndm"])
def test_optimized_never_worse_than_any_time_grid(config, solver, grid):
    """Whatever grid the scheduler has, the result is no worse on the calibration objective than the best
    of log_snr / uniform / rho (up to their steps being snapped to the candidates), even without the search;
    on these (broad modes) the scheduler's own grid is 1.2-2.9x the best of them."""
    broad = GaussianMixture([[-1.0, -0.5], [1.0, -0.5], [0.0, 1.0]], 0.35, [0.5, 0.3, 0.2])
    x0 = torch.randn(FAST["sample_shape"], generator=torch.Generator().manual_seed(0)).double()

    def sample(sched, **set_kw):
        sched.set_timesteps(**set_kw)
        model, x = broad.model(sched), x0.clone()
        for t in sched.timesteps:
            x = sched.step(model(sched.scale_model_input(x, t), t), t, x).prev_sample
        return x

    ref = sample(SDEScheduler.from_config(config, solver="multistep", solver_order=3), num_inference_steps=400)
    sched = SDEScheduler.from_config(config, time_grid=grid, **solver)
    for n in (5, 8):
        r = optimize_steps(broad.model(sched), sched, n, seed=0, refine_calls=0, min_start=1, **FAST)
        grids = {g: error(sample(SDEScheduler.from_config(config, time_grid=g, **solver), num_inference_steps=n), ref)
                 for g in ("log_snr", "uniform", "rho")}
        assert r.error <= r.start_error and r.error <= 1.05 * min(grids.values()), (n, r.error, grids)


def test_a_free_first_step_helps_and_is_what_diffusers_runs(optimized):
    """The first step is chosen too (the noise taken as the sample there, as diffusers' leading spacing does),
    down to min_start x the top where a(t) <= max_start_signal: on this oracle the optimizer starts at 707
    (a = 0.08), and its calibration error is below that of the same search with the start fixed at the top
    (min_start=1, which never moves the start; measured 0.55x at 4 steps, 0.70x at 5), never above it. Still never worse than the start grid (the fixture's test
    recomputes that independently). diffusers' DPM-Solver++(2M) given the same (integer) steps starts from the
    noise at the first one too: the same samples."""
    sched, free = optimized
    fixed = optimize_steps(MIX.model(sched), sched, [4, 5], seed=0, min_start=1, **FAST)
    for n in (4, 5):
        assert fixed[n].timesteps[0] == 999 and fixed[n].start_timesteps[0] == 999
        assert 0.5 * 999 <= free[n].timesteps[0] < 900
        assert float(sched.marginal(torch.tensor(free[n].timesteps[0]))[0]) <= 0.1
        assert free[n].error <= free[n].start_error == pytest.approx(fixed[n].start_error)
        assert free[n].error <= fixed[n].error  # by construction: the free search starts from the fixed one's result
        assert free[n].error < 0.8 * fixed[n].error
    # The signal bound alone: a(t) <= 0.01 leaves only the top (a = 0.006) and the next candidate or so.
    low = optimize_steps(MIX.model(sched), sched, 4, seed=0, max_start_signal=0.01, **FAST)
    assert float(sched.marginal(torch.tensor(low.timesteps[0]))[0]) <= 0.01
    steps = [round(v) for v in free[5].timesteps]
    x0 = noise(5, 300)
    theirs = DPMSolverMultistepScheduler(**LINEAR)
    ours = SDEScheduler.from_config(LINEAR, solver="multistep", solver_order=2, denoise_final=True)
    assert (run(theirs, x0, timesteps=steps) - run(ours, x0, timesteps=steps)).abs().max() < 1e-4
    assert theirs.timesteps.tolist() == steps
    for bad in (0, 1.5, "0.5", True):
        with pytest.raises(ValueError, match="min_start"):
            optimize_steps(MIX.model(sched), sched, 4, sample_shape=(8, 2), min_start=bad)
    for bad in (-0.1, 1.5, None, False):
        with pytest.raises(ValueError, match="max_start_signal"):
            optimize_steps(MIX.model(sched), sched, 4, sample_shape=(8, 2), max_start_signal=bad)


def test_optimize_steps_refuses_stochastic_solvers():
    sched = SDEScheduler.from_config(LINEAR, solver="ancestral")
    with pytest.raises(ValueError, match="deterministic"):
        optimize_steps(MIX.model(sched), sched, 5, sample_shape=(8, 2))


def test_command_writes_steps_a_loaded_folder_runs(tmp_path, capsys):
    """python -m hf_ddm.few_step FOLDER: a class-conditional pixel folder (guided at its default scale) gets
    optimized_timesteps in its scheduler config; the pipeline loaded again runs them at num_inference_steps=N."""
    from hf_ddm.few_step import main
    from hf_ddm.models import UNet
    from hf_ddm.pipelines import PixelDiffusionPipeline

    torch.manual_seed(0)
    unet = UNet(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                attention_levels=(1,), norm_num_groups=8, attention_head_dim=8, num_class_embeds=3)
    pipe = PixelDiffusionPipeline(unet, SDEScheduler.from_config(LINEAR, time_grid="uniform", denoise_final=False))
    pipe.register_default_guidance_scale(2.0)
    pipe.save_pretrained(tmp_path / "pipe")
    assert main([str(tmp_path / "pipe"), "--nfe", "3", "--batch-size", "4", "--candidates", "12",
                 "--refine-calls", "30"]) == 0
    assert "guidance scale 2.0" in capsys.readouterr().out
    loaded = PixelDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    steps = loaded.scheduler.config.optimized_timesteps["3"]
    seen = []
    loaded(class_labels=[0, 1], num_inference_steps=3, output_type="pt",
           callback_on_step_end=lambda p, i, t, kw: seen.append(float(t)) or {})
    assert seen == pytest.approx(steps)


def test_decode_measures_the_error_on_what_the_pipeline_outputs(optimized):
    """decode= (a latent folder's VAE): the objective is the error of the decoded samples, recomputed here;
    on a map that squashes some directions (as a decoder may) the steps found differ from the plain ones."""
    sched, plain = optimized
    decode = lambda x: torch.stack([(4 * x[:, 0]).tanh(), 0.1 * x[:, 1]], 1)  # noqa: E731
    found = optimize_steps(MIX.model(sched), sched, [4, 5], seed=0, decode=decode, **FAST)
    x0 = torch.randn(FAST["sample_shape"], generator=torch.Generator().manual_seed(0)).double()
    ref = decode(run(SDEScheduler.from_config(LINEAR, solver="multistep", solver_order=3, time_grid="log_snr"), x0,
                     num_inference_steps=400))
    for n, r in found.items():
        assert r.error <= r.start_error
        assert error(decode(run(sched, x0, timesteps=r.timesteps)), ref) == pytest.approx(r.error, rel=0.05)
        assert error(decode(run(sched, x0, num_inference_steps=n)), ref) == pytest.approx(r.start_error, rel=0.05)
    assert any(found[n].timesteps != plain[n].timesteps for n in found)


def test_command_on_a_latent_folder_with_another_solver(tmp_path, capsys):
    """--solver ipndm: the folder runs iPNDM afterwards (its config without multistep's solver_order) and its
    old steps, optimized for the old solver, are dropped; --measure-on images (the default) is the decoded
    error: the folder's steps differ from --measure-on latents'."""
    import json
    import shutil

    from hf_ddm.few_step import main
    from hf_ddm.models import VAE, UNet
    from hf_ddm.pipelines import LatentDiffusionPipeline

    torch.manual_seed(0)
    unet = UNet(sample_size=4, in_channels=2, out_channels=2, block_out_channels=(8, 16), layers_per_block=1,
                attention_levels=(), norm_num_groups=4, attention_head_dim=8, mid_block_attention=False)
    vae = VAE(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 16), layers_per_block=1,
              norm_num_groups=4)
    old = {"6": [999.0, 800.0, 600.0, 400.0, 200.0, 100.0]}
    LatentDiffusionPipeline(unet=unet, vae=vae, scheduler=SDEScheduler.from_config(
        LINEAR, solver="multistep", solver_order=2, optimized_timesteps=old)).save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    args = ["--nfe", "3", "--batch-size", "4", "--candidates", "12", "--refine-calls", "30", "--solver", "ipndm"]
    assert main([str(tmp_path / "a"), *args]) == 0
    assert main([str(tmp_path / "b"), *args, "--measure-on", "latents"]) == 0
    configs = [json.loads((tmp_path / f / "scheduler" / "scheduler_config.json").read_text()) for f in "ab"]
    for cfg in configs:
        assert cfg["solver"] == "ipndm" and "solver_order" not in cfg and list(cfg["optimized_timesteps"]) == ["3"]
    assert configs[0]["optimized_timesteps"] != configs[1]["optimized_timesteps"]
    loaded = LatentDiffusionPipeline.from_pretrained(tmp_path / "a")
    assert loaded.scheduler.solver.name == "ipndm"
    loaded.scheduler.set_timesteps(3)
    assert loaded.scheduler.timesteps.tolist() == pytest.approx(configs[0]["optimized_timesteps"]["3"])
    with pytest.raises(ValueError, match="measure_on"):
        from hf_ddm.few_step import write_folder
        write_folder(str(tmp_path / "a"), [3], measure_on="pixels")


def test_a_folders_model_guides_in_its_saved_interval():
    """pipeline_model (what write_folder calibrates) is the model the folder's own calls run: with a
    default_guidance_interval, steps outside it are the conditional branch alone, steps inside are guided."""
    from hf_ddm.few_step import pipeline_model
    from hf_ddm.models import UNet
    from hf_ddm.pipelines import PixelDiffusionPipeline

    torch.manual_seed(0)
    unet = UNet(sample_size=4, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                attention_levels=(), norm_num_groups=4, attention_head_dim=8, mid_block_attention=False,
                num_class_embeds=3)
    pipe = PixelDiffusionPipeline(unet, SDEScheduler.from_config(LINEAR, solver="multistep"), default_guidance_scale=3.0,
                                  default_guidance_interval=(0, 1.0))
    model, shape, scale = pipeline_model(pipe, 4)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(4) % 3
    with torch.no_grad():
        for t, inside in ((torch.tensor(900.0), False), (torch.tensor(50.0), True)):  # sigma ~ 50 and ~ 0.18
            cond = unet(x, t.expand(4), class_labels=labels).sample
            null = unet(x, t.expand(4), class_labels=torch.full_like(labels, 3)).sample
            want = null + 3.0 * (cond - null) if inside else cond
            torch.testing.assert_close(model(x, t.expand(4)), want, atol=1e-5, rtol=1e-5)
    assert scale == 3.0
