"""Few-step sampling on the exact Gaussian-mixture oracle: hf_ddm's optimized steps vs hf_ddm's best fixed grid
vs diffusers' best multistep scheduler, at NFE 4, 5, 6, 8, 10.

    python benchmarks/bench_few_step.py            # 3 schedules x narrow / broad modes, 2,000 evaluation samples
    python benchmarks/bench_few_step.py --quick    # linear + cosine, narrow modes, 2M only, 500 samples
    python benchmarks/bench_few_step.py --json out.json

The "model" is the exact mixture on a diffusers discrete schedule (linear = DDPM, scaled_linear = Stable
Diffusion, cosine = improved DDPM); every sampler runs on exactly that schedule. Error: mean over samples of the
RMS distance to a 200-step DPM-Solver++(3M) solution of the probability-flow ODE from the same noise (its own
distance to 800 steps is ~1e-5). Calibration (``hf_ddm.optimize_steps``, on 256 samples from seed 0) and
evaluation (seed 1) use different noise. Also, at NFE 5, the issue's targets against true samples of the
mixture: sliced Wasserstein distance (SW) and the mean error of the within-component std (std err).

Rows:
* hf_ddm optimized: ``optimize_steps`` for DPM-Solver++(2M) and (not --quick) (3M) and iPNDM; per NFE the one
  with the lowest *calibration* error (chosen without the evaluation set). Its cost: model calls and CPU seconds of the
  calibration (teacher shared by the five NFE, charged in full to each).
* hf_ddm best fixed grid: the best, *on the evaluation set itself*, of SDEScheduler's DPM-Solver++(2M/3M) and
  iPNDM on every time_grid (log_snr, rho, uniform) with and without the final denoising call, ode_euler (DDIM)
  and ode_heun.
* diffusers best: the best, on the evaluation set, of DPMSolverMultistep (2M, 3M), UniPC (bh2, order 2 and 3) and
  DEIS (order 2 and 3), each with leading / trailing / linspace spacing and Karras sigmas. As in
  bench_samplers.py, diffusers' oracle answers at the sigma the scheduler is at (its Karras timestep rounding
  does not count against it). Configurations that crash in this diffusers are skipped.
* diffusers DPM++(2M) on the optimized steps: DPMSolverMultistepScheduler.set_timesteps(timesteps=...) with
  the 2M optimized steps (cast to integers, as diffusers does): the steps serve diffusers' solvers too.
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch
from diffusers.utils import logging as diffusers_logging

from hf_ddm import optimize_steps
from hf_ddm.mixture import GaussianMixture, sliced_wasserstein
from hf_ddm.schedulers import SDEScheduler
from hf_ddm.solver_registry import few_step_solvers

diffusers_logging.set_verbosity_error()
warnings.filterwarnings("ignore")

MEANS = [[-1.0, -0.5], [1.0, -0.5], [0.0, 1.0]]
WEIGHTS = [0.5, 0.3, 0.2]
MIXTURES = {"narrow": 0.05, "broad": 0.35}
SCHEDULES = {
    "linear": dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"),
    "cosine": dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"),
    "scaled_linear": dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
}
NFES = [4, 5, 6, 8, 10]
# The solvers the optimized row may use (per NFE the one that calibrates best): the registry's few-step ones.
OPTIMIZED = few_step_solvers()


def run(sched, model, noise, **set_kw):
    """The plain diffusers loop; (samples, model calls)."""
    sched.set_timesteps(**set_kw)
    x, calls = noise.clone() * sched.init_noise_sigma, 0
    for t in sched.timesteps:
        x = sched.step(model(sched.scale_model_input(x, t), t), t, x).prev_sample
        calls += 1
    return x.double(), calls


def sigma_oracle(mix, sched):
    """The exact model at the sigma the diffusers scheduler is at (bench_samplers.py's choice)."""
    def marginal(t):
        idx = sched.step_index if sched.step_index is not None else (sched.begin_index or 0)
        sigma = sched.sigmas[idx].double()
        a = 1.0 / torch.sqrt(1.0 + sigma * sigma)
        return a.expand(t.shape), (sigma * a).expand(t.shape)

    return mix.model(marginal, "epsilon")


def ours_fixed(config):
    """name -> (factory, steps for an NFE budget)."""
    out = {}
    one = lambda nfe: nfe  # noqa: E731
    for label, kw in OPTIMIZED.items():
        for grid in ("log_snr", "rho", "uniform"):
            for denoise in (True, False):
                name = f"{label} {grid}{'' if denoise else ' no-denoise'}"
                out[name] = (lambda kw=kw, g=grid, d=denoise: SDEScheduler.from_config(
                    config, **kw, time_grid=g, denoise_final=d), one)
    out["ode_euler log_snr"] = (lambda: SDEScheduler.from_config(config, solver="ode_euler", time_grid="log_snr"), one)
    out["ode_heun log_snr"] = (lambda: SDEScheduler.from_config(config, solver="ode_heun", time_grid="log_snr"), lambda nfe: (nfe + 1) // 2)
    return out


def diffusers_rows(config):
    from diffusers import DEISMultistepScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    out = {}
    spacings = [("leading", {}), ("trailing", {}), ("linspace", {}), ("karras", {"use_karras_sigmas": True})]
    for label, spacing_kw in spacings:
        kw = dict(config, **spacing_kw) if spacing_kw else dict(config, timestep_spacing=label)
        for order in (2, 3):
            out[f"DPM++{order}M ({label})"] = lambda kw=kw, o=order: DPMSolverMultistepScheduler(
                **kw, solver_order=o, algorithm_type="dpmsolver++")
            out[f"UniPC-{order} ({label})"] = lambda kw=kw, o=order: UniPCMultistepScheduler(**kw, solver_order=o)
            out[f"DEIS-{order} ({label})"] = lambda kw=kw, o=order: DEISMultistepScheduler(**kw, solver_order=o)
    return out


def std_err(mix, x, ref):
    return float((mix.within_component_std(x) / mix.within_component_std(ref) - 1).abs().mean())


def measure(mix, x, ref, truth):
    return {"err": float((x - ref).pow(2).mean(1).sqrt().mean()), "sw": sliced_wasserstein(x, truth),
            "std_err": std_err(mix, x, truth)}


def one_case(schedule, mname, args):
    config = SCHEDULES[schedule]
    mix = GaussianMixture(MEANS, MIXTURES[mname], WEIGHTS)
    noise = torch.randn(args.samples, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    truth = mix.sample(args.samples, torch.Generator().manual_seed(2))[0]
    fine = SDEScheduler.from_config(config, solver="multistep", solver_order=3, time_grid="log_snr")
    ref, _ = run(fine, mix.model(fine), noise, num_inference_steps=200)
    case = {"floor_sw": sliced_wasserstein(mix.sample(args.samples, torch.Generator().manual_seed(3))[0], truth),
            "nfe": {}}

    # Calibration: seed 0, its own noise.
    found = {}
    for label in args.solvers:
        sched = SDEScheduler.from_config(config, **OPTIMIZED[label], time_grid="log_snr")
        found[label] = optimize_steps(mix.model(sched), sched, args.nfes, sample_shape=(args.calibration, 2), seed=0,
                                      dtype=torch.float64, min_start=args.min_start)
    fixed, theirs = ours_fixed(config), diffusers_rows(config)
    for nfe in args.nfes:
        row = {}
        label = min(args.solvers, key=lambda o: found[o][nfe].error)
        r = found[label][nfe]
        sched = SDEScheduler.from_config(config, **OPTIMIZED[label], time_grid="log_snr")
        x, calls = run(sched, mix.model(sched), noise, timesteps=r.timesteps)
        assert calls == nfe
        row["optimized"] = {"name": f"{label} optimized", **measure(mix, x, ref, truth), "timesteps": r.timesteps,
                            "calib_calls": r.model_calls, "calib_cpu_s": r.seconds, "calib_err": r.error,
                            "calib_start_err": r.start_error}
        start, _ = run(sched, mix.model(sched), noise, num_inference_steps=nfe)
        row["optimized"]["start_err"] = measure(mix, start, ref, truth)["err"]
        best = {}
        for name, (make, steps) in fixed.items():
            sched = make()
            x, calls = run(sched, mix.model(sched), noise, num_inference_steps=steps(nfe))
            assert calls <= nfe
            best[name] = measure(mix, x, ref, truth)
        row["fixed"] = best
        best = {}
        for name, make in theirs.items():
            sched = make()
            try:
                x, calls = run(sched, sigma_oracle(mix, sched), noise.float(), num_inference_steps=nfe)
            except (IndexError, RuntimeError, ValueError, AssertionError):
                continue
            if torch.isfinite(x).all():
                best[name] = measure(mix, x, ref, truth)
        row["diffusers"] = best
        if "2M" in found:
            from diffusers import DPMSolverMultistepScheduler

            sched = DPMSolverMultistepScheduler(**config, solver_order=2, algorithm_type="dpmsolver++")
            x, _ = run(sched, sigma_oracle(mix, sched), noise.float(), timesteps=[int(v) for v in found["2M"][nfe].timesteps])
            row["diffusers_on_optimized"] = measure(mix, x, ref, truth)
        case["nfe"][nfe] = row
    return case


def best_of(rows, metric):
    name = min(rows, key=lambda k: rows[k][metric])
    return name, rows[name][metric]


def tables(results, nfes):
    lines = ["| schedule | modes | NFE | hf_ddm optimized | hf_ddm best fixed grid | diffusers best | diffusers DPM++(2M) on "
             "the optimized steps | optimized / diffusers best | calibration: model calls, CPU s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (schedule, mname), case in results.items():
        for nfe in nfes:
            row = case["nfe"][nfe]
            opt = row["optimized"]
            fname, ferr = best_of(row["fixed"], "err")
            dname, derr = best_of(row["diffusers"], "err")
            on = row.get("diffusers_on_optimized", {}).get("err", float("nan"))
            lines.append(f"| {schedule} | {mname} | {nfe} | {opt['err']:.4f} ({opt['name']}) | {ferr:.4f} ({fname}) | "
                         f"{derr:.4f} ({dname}) | {on:.4f} | {opt['err'] / derr:.2f} | {opt['calib_calls']}, "
                         f"{opt['calib_cpu_s']:.1f} |")
    lines += ["", "At NFE 5 against true samples (each column: the best of its kind by that metric; the optimized "
              "row is one configuration):", "",
              "| schedule | modes | metric | hf_ddm optimized | hf_ddm best fixed grid | diffusers best | noise floor |",
              "|---|---|---|---|---|---|---|"]
    for (schedule, mname), case in results.items():
        if 5 not in case["nfe"]:
            continue
        row = case["nfe"][5]
        for metric in ("sw", "std_err"):
            fname, fval = best_of(row["fixed"], metric)
            dname, dval = best_of(row["diffusers"], metric)
            floor = f"{case['floor_sw']:.4f}" if metric == "sw" else ""
            lines.append(f"| {schedule} | {mname} | {metric} | {row['optimized'][metric]:.4f} | {fval:.4f} ({fname}) | "
                         f"{dval:.4f} ({dname}) | {floor} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="linear + cosine, narrow modes, 2M only, 500 samples")
    p.add_argument("--schedules", nargs="+", choices=list(SCHEDULES))
    p.add_argument("--modes", nargs="+", choices=list(MIXTURES))
    p.add_argument("--nfes", nargs="+", type=int, default=NFES)
    p.add_argument("--samples", type=int)
    p.add_argument("--calibration", type=int, default=256)
    p.add_argument("--min-start", type=float, default=0.5, help="optimize_steps' lowest first step (fraction of the top)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    args.schedules = args.schedules or (["linear", "cosine"] if args.quick else list(SCHEDULES))
    args.modes = args.modes or (["narrow"] if args.quick else list(MIXTURES))
    args.samples = args.samples or (500 if args.quick else 2000)
    args.solvers = ["2M"] if args.quick else list(OPTIMIZED)
    torch.set_num_threads(1)
    results = {}
    for schedule in args.schedules:
        for mname in args.modes:
            results[(schedule, mname)] = one_case(schedule, mname, args)
    print(tables(results, args.nfes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{s}/{m}": c for (s, m), c in results.items()}, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
