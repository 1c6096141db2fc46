"""Sampler accuracy vs NFE on the exact Gaussian-mixture model, and per-step cost vs diffusers.

    python benchmarks/bench_samplers.py            # full tables (NFE 5, 10, 20, 50, 100), three schedules
    python benchmarks/bench_samplers.py --quick    # NFE 10, 20, fewer samples / repetitions
    python benchmarks/bench_samplers.py --schedules cosine --no-timing
    python benchmarks/bench_samplers.py --json out.json

Accuracy: every sampler gets the *exact* network output of a 2-D Gaussian mixture (hf_ddm.mixture),
so the only error is the sampler's. Two mixtures: "narrow" (component std 0.05, mean separation ~2)
and "broad" (std 0.35). Metrics against a reference set of true samples of the same size:
sliced 2-Wasserstein distance (SW) and the mean relative error of the within-component std
(std err); "floor" is the same metric for a second, independent true sample set (the noise floor).
All samplers start from the same noise draws. NFE is the number of model calls actually made.

Schedules: the model is one trained on a discrete diffusers VP schedule -- "linear" (1e-4..0.02, T =
1000; DDPM), "scaled_linear" (0.00085..0.012; Stable Diffusion) or "cosine" (squaredcos_cap_v2;
improved DDPM). diffusers' schedulers run on that schedule from its config; hf_ddm's run on it through
``SDEScheduler.from_config(<the DDPM config>)`` (exact at the train timesteps, log-SNR linear between)
and ``VPScheduler``. On the linear schedule the table also keeps the continuous VP / sub-VP / VE SDE
rows (each on its own exact oracle: a sampler comparison, not the same model). diffusers' oracle sees the model input the way each scheduler presents it: DDIM at alphas_cumprod[timestep];
Euler / Heun / DPM-Solver++ / UniPC at sigma = scheduler.sigmas[step_index] (Karras or not), i.e.
a = 1/sqrt(1 + sigma^2), s = sigma a on the (scaled, for Euler/Heun) model input.

Step cost: the same 16x3x64x64 tensors through ours and diffusers' equivalent, interleaved in one
process, after warm-up; median over repetitions of the per-step time ratio (ours / diffusers).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time

if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None or os.environ.get("MALLOC_TRIM_THRESHOLD_") is None:
    # Large malloc thresholds keep glibc from returning / re-mapping big tensors each step, which
    # otherwise dominates CPU step timings with page-fault noise. Re-exec with them set.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="10000000000", MALLOC_TRIM_THRESHOLD_="10000000000")
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

import torch  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402

diffusers_logging.set_verbosity_error()

from hf_ddm.catalogue import SAMPLERS  # noqa: E402
from hf_ddm.mixture import GaussianMixture, sliced_wasserstein  # noqa: E402
from hf_ddm.schedulers.sde import STOCHASTIC_SOLVERS, SDEScheduler  # noqa: E402
from hf_ddm.schedulers.ve import VEScheduler  # noqa: E402
from hf_ddm.schedulers.vp import VPScheduler  # noqa: E402

MEANS = [[-1.0, -0.5], [1.0, -0.5], [0.0, 1.0]]
WEIGHTS = [0.5, 0.3, 0.2]
MIXTURES = {"narrow": 0.05, "broad": 0.35}
SCHEDULES = {
    "linear": dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"),
    "scaled_linear": dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
    "cosine": dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"),
}
VP_DISCRETE = SCHEDULES["linear"]


# ------------------------------------------------------------------------------------------------
# Samplers: name -> (factory(nfe) -> (scheduler, num_inference_steps), oracle kind, grid note, library).
# hf_ddm's rows are the catalogue's entries (hf_ddm.catalogue.SAMPLERS, built from the solver registry):
# a solver registered there is benchmarked here without an edit.
# ------------------------------------------------------------------------------------------------


def steps_within(make, nfe: int) -> int:
    """The most steps whose sampling loop makes at most ``nfe`` model calls (at least 1): read from the
    scheduler itself (Heun's last step into clean data saves a call, correctors add some)."""
    def calls(n):
        sched = make()
        sched.set_timesteps(n)
        return len(sched.timesteps)

    n = 1
    while calls(n + 1) <= nfe:
        n += 1
    return n


def _row(make, grid_note):
    def factory(nfe):
        return make(), steps_within(make, nfe)

    return factory, "own", grid_note, "hf_ddm"


def _ours(vp=VP_DISCRETE, continuous=True):
    """Every hf_ddm entry of the catalogue: SDEScheduler's on the model's own discrete schedule (read from
    its diffusers config, as a user would) and -- ``continuous`` -- on the VP / sub-VP / VE SDEs; the ODE
    solvers also on EDM's rho grid; VPScheduler's and VEScheduler's on their own processes."""
    config = {**vp, "prediction_type": "epsilon", "clip_sample": False}
    out = {}
    for name, spec in SAMPLERS.items():
        if spec.cls == "SDEScheduler":
            stochastic = spec.overrides["solver"] in STOCHASTIC_SOLVERS
            grids = [spec.overrides.get("time_grid", "log_snr")] + ([] if stochastic or "time_grid" in spec.overrides
                                                                    else ["rho"])
            for grid in grids:
                tag = "" if grid == grids[0] else f" {grid}"
                kw = {**spec.overrides, "time_grid": grid}
                out[f"sde-vp(schedule) {name}{tag}"] = _row(lambda kw=kw: SDEScheduler.from_config(config, **kw), grid)
                for sde in (("vp", "subvp", "ve") if continuous and "sde:vp" in spec.families else ()):
                    out[f"sde-{sde} {name}{tag}"] = _row(lambda kw=kw, sde=sde: SDEScheduler(sde=sde, **kw), grid)
        elif spec.cls == "VPScheduler":
            for spacing in ("trailing", "leading"):
                out[f"VPScheduler {name} ({spacing})"] = _row(
                    lambda spec=spec, spacing=spacing: VPScheduler(**vp, **spec.overrides, clip_sample=False,
                                                                   timestep_spacing=spacing), f"discrete, {spacing}")
        elif spec.cls == "VEScheduler" and continuous:
            out[f"VEScheduler {name}"] = _row(lambda spec=spec: VEScheduler(sigma_max=50.0, **spec.overrides),
                                              "discrete geometric sigmas")
    return out


def _diffusers(vp=VP_DISCRETE):
    VP_DISCRETE = vp  # noqa: N806  the schedule every diffusers scheduler below is built on
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        HeunDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    out = {}
    one = lambda nfe: nfe  # noqa: E731
    heun = lambda nfe: max(1, (nfe + 1) // 2)  # noqa: E731
    for spacing in ("leading", "trailing"):
        out[f"diffusers DDIM ({spacing})"] = (
            lambda nfe, spacing=spacing: (DDIMScheduler(**VP_DISCRETE, clip_sample=False, timestep_spacing=spacing), nfe),
            "ddim", spacing, "diffusers")
    for karras in (False, True):
        tag = "karras" if karras else "linspace"
        out[f"diffusers Euler ({tag})"] = (
            lambda nfe, k=karras: (EulerDiscreteScheduler(**VP_DISCRETE, use_karras_sigmas=k), one(nfe)), "sigma", tag, "diffusers")
        out[f"diffusers Heun ({tag})"] = (
            lambda nfe, k=karras: (HeunDiscreteScheduler(**VP_DISCRETE, use_karras_sigmas=k), heun(nfe)), "sigma", tag, "diffusers")
        out[f"diffusers DPM++2M ({tag})"] = (
            lambda nfe, k=karras: (DPMSolverMultistepScheduler(**VP_DISCRETE, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=k), one(nfe)),
            "sigma", tag, "diffusers")
        out[f"diffusers UniPC ({tag})"] = (
            lambda nfe, k=karras: (UniPCMultistepScheduler(**VP_DISCRETE, use_karras_sigmas=k), one(nfe)), "sigma", tag, "diffusers")
    return out


def _oracle(mix, sched, kind):
    if kind in ("own", "ddim"):  # the model adapter reads the scheduler: its noise level per timestep, its prediction type
        return mix.model(sched)

    # Sigma-based diffusers schedulers may pass a rounded timestep (DPM-Solver, UniPC with Karras sigmas): the
    # oracle answers at the sigma the sample is really at, so their grid's own rounding does not count against them.
    def marginal(t):  # the sigma this scheduler is at right now, whatever timestep it passes
        idx = sched.step_index if sched.step_index is not None else (sched.begin_index or 0)
        sigma = sched.sigmas[idx].double()
        a = 1.0 / torch.sqrt(1.0 + sigma * sigma)
        return a.expand(t.shape), (sigma * a).expand(t.shape)

    return mix.model(marginal, "epsilon")


def sample(sched, model, steps, n, seed):
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float32) * sched.init_noise_sigma
    takes_gen = "generator" in inspect.signature(sched.step).parameters
    for t in sched.timesteps:
        out = model(sched.scale_model_input(x, t), t)
        kw = {"generator": g} if takes_gen else {}
        x = sched.step(out, t, x, **kw).prev_sample
    return x.double()


def std_err(mix, x, ref):
    return float((mix.within_component_std(x) / mix.within_component_std(ref) - 1).abs().mean())


def accuracy(nfes, n, samplers, vp=VP_DISCRETE):
    results = {}
    for mname, std in MIXTURES.items():
        mix = GaussianMixture(MEANS, std, WEIGHTS)
        ref = mix.sample(n, torch.Generator().manual_seed(1))[0]
        other = mix.sample(n, torch.Generator().manual_seed(2))[0]
        floor = {"sw": sliced_wasserstein(other, ref), "std_err": std_err(mix, other, ref)}
        rows = {}
        for name, (factory, kind, grid, lib) in samplers.items():
            row = {}
            for nfe in nfes:
                sched, steps = factory(nfe)
                model = _oracle(mix, sched, kind)
                try:
                    x = sample(sched, model, steps, n, seed=0)
                except (IndexError, RuntimeError, ValueError, AssertionError) as exc:  # crashes on this schedule
                    print(f"note: {name} at NFE {nfe} failed: {type(exc).__name__}: {exc}")
                    x = torch.full((1,), float("nan"))
                ok = bool(torch.isfinite(x).all())
                row[nfe] = {
                    "nfe": model.calls,
                    "sw": sliced_wasserstein(x, ref) if ok else float("nan"),
                    "std_err": std_err(mix, x, ref) if ok else float("nan"),
                }
            rows[name] = {"lib": lib, "grid": grid, "by_nfe": row}
        results[mname] = {"floor": floor, "rows": rows}
    return results


# ------------------------------------------------------------------------------------------------
# Step cost
# ------------------------------------------------------------------------------------------------


def step_pairs():
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    pairs = {
        "multistep 2M vs DPMSolverMultistepScheduler": (
            lambda: SDEScheduler(sde="vp", solver="multistep", solver_order=2),
            lambda: DPMSolverMultistepScheduler(**VP_DISCRETE, algorithm_type="dpmsolver++", solver_order=2)),
        "ode_euler vs EulerDiscreteScheduler": (
            lambda: SDEScheduler(sde="vp", solver="ode_euler"),
            lambda: EulerDiscreteScheduler(**VP_DISCRETE)),
    }
    pairs["VPScheduler ddim vs DDIMScheduler"] = (
        lambda: VPScheduler(**VP_DISCRETE, sampler="ddim", clip_sample=False),
        lambda: DDIMScheduler(**VP_DISCRETE, clip_sample=False))
    return pairs


def _loop_time(sched, steps, x, eps):
    sched.set_timesteps(steps)
    t0 = time.perf_counter()
    for t in sched.timesteps:
        sched.scale_model_input(x, t)  # part of every loop iteration (diffusers' Euler warns without it)
        x = sched.step(eps, t, x).prev_sample
    return (time.perf_counter() - t0) / len(sched.timesteps)


def step_cost(reps, steps=20, shape=(16, 3, 64, 64)):
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    eps = torch.randn(shape, generator=g)
    out = {}
    for name, (make_a, make_b) in step_pairs().items():
        a, b = make_a(), make_b()
        for _ in range(3):  # warm-up
            _loop_time(a, steps, x, eps), _loop_time(b, steps, x, eps)
        ta, tb, ratio = [], [], []
        for _ in range(reps):  # interleaved A, B
            da, db = _loop_time(a, steps, x, eps), _loop_time(b, steps, x, eps)
            ta.append(da), tb.append(db), ratio.append(da / db)
        out[name] = {"ours_us": 1e6 * statistics.median(ta), "diffusers_us": 1e6 * statistics.median(tb),
                     "ratio": statistics.median(ratio)}
    return out


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------


def best_ratios(results, nfes):
    """(mixture, NFE, metric) -> (best hf_ddm, best diffusers, ratio) over samplers within the NFE."""
    out = {}
    for mname, res in results.items():
        for k in nfes:
            for metric in ("sw", "std_err"):
                best = {}
                for lib in ("hf_ddm", "diffusers"):
                    cand = [(row["by_nfe"][k][metric], name) for name, row in res["rows"].items()
                            if row["lib"] == lib and row["by_nfe"][k]["nfe"] <= k and row["by_nfe"][k][metric] == row["by_nfe"][k][metric]]
                    best[lib] = min(cand) if cand else (float("nan"), "-")
                ratio = best["hf_ddm"][0] / best["diffusers"][0] if best["diffusers"][0] else float("nan")
                out[(mname, k, metric)] = (best["hf_ddm"], best["diffusers"], ratio)
    return out


def markdown(results, costs, nfes, schedule="linear"):
    lines = []
    for mname, res in results.items():
        fl = res["floor"]
        lines.append(f"\n### {schedule} schedule, {mname} modes (component std {MIXTURES[mname]}): SW / std err  "
                     f"(noise floor: SW {fl['sw']:.4f}, std err {fl['std_err']:.3f})\n")
        lines.append("| sampler | grid | " + " | ".join(f"NFE {k}" for k in nfes) + " |")
        lines.append("|---|---|" + "---|" * len(nfes))
        for name, row in res["rows"].items():
            cells = []
            for k in nfes:
                r = row["by_nfe"][k]
                nfe_note = "" if r["nfe"] == k else f" ({r['nfe']})"
                cells.append(f"{r['sw']:.4f} / {r['std_err']:.3f}{nfe_note}")
            lines.append(f"| {name} | {row['grid']} | " + " | ".join(cells) + " |")
        lines.append("\n(actual NFE in parentheses where it differs from the column)\n")
        lines.append("Best at equal NFE (metric of the best sampler of each library, ratio hf_ddm / diffusers; < 1 is better):\n")
        lines.append("| NFE | metric | best hf_ddm | best diffusers | ratio |")
        lines.append("|---|---|---|---|---|")
        ratios = best_ratios({mname: res}, nfes)
        for k in nfes:
            for metric in ("sw", "std_err"):
                ours, theirs, ratio = ratios[(mname, k, metric)]
                best = {"hf_ddm": ours, "diffusers": theirs}
                lines.append(f"| {k} | {metric} | {best['hf_ddm'][0]:.4f} ({best['hf_ddm'][1]}) | "
                             f"{best['diffusers'][0]:.4f} ({best['diffusers'][1]}) | {ratio:.2f} |")
    if costs:
        lines.append("\n### Per-step time, 16x3x64x64 float32, 1 thread (median, interleaved)\n")
        lines.append("| pair | ours (us/step) | diffusers (us/step) | ratio |")
        lines.append("|---|---|---|---|")
        for name, c in costs.items():
            lines.append(f"| {name} | {c['ours_us']:.0f} | {c['diffusers_us']:.0f} | {c['ratio']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="NFE 10 and 20, 2000 samples, fewer repetitions")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--schedules", default=",".join(SCHEDULES), help=f"comma-separated, of {list(SCHEDULES)}")
    args = p.parse_args(argv)
    schedules = [s for s in args.schedules.split(",") if s]
    for s in schedules:
        if s not in SCHEDULES:
            p.error(f"--schedules: unknown schedule {s!r}; choose from {list(SCHEDULES)}")
    nfes = [10, 20] if args.quick else [5, 10, 20, 50, 100]
    n = args.samples or (2000 if args.quick else 4000)
    t0 = time.time()
    results = {}
    for s in schedules:
        vp = SCHEDULES[s]
        samplers = {**_ours(vp, continuous=(s == "linear")), **_diffusers(vp)}
        results[s] = accuracy(nfes, n, samplers, vp)
    costs = {} if args.no_timing else step_cost(reps=7 if args.quick else 25)
    print(f"\n## Sampler benchmark ({n} samples, exact mixture model; {time.time() - t0:.0f} s)")
    print("\n### Best of each library at equal NFE, per schedule (ratio hf_ddm / diffusers; < 1 is better)\n")
    print("| schedule | modes | NFE | metric | best hf_ddm | best diffusers | ratio |")
    print("|---|---|---|---|---|---|---|")
    for s in schedules:
        for (mname, k, metric), (ours, theirs, ratio) in best_ratios(results[s], nfes).items():
            if k in (10, 20):
                print(f"| {s} | {mname} | {k} | {metric} | {ours[0]:.4f} ({ours[1]}) | {theirs[0]:.4f} ({theirs[1]}) | {ratio:.2f} |")
    for s in schedules:
        print(markdown(results[s], {}, nfes, schedule=s))
    if costs:
        print(markdown({}, costs, nfes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"nfes": nfes, "samples": n, "accuracy": results, "step_cost": costs}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
