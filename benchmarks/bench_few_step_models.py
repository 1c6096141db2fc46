"""Few-step sampling on the shipped models (issue 25, item 4): hf_ddm's optimized steps vs hf_ddm's best fixed
grid vs diffusers' best multistep scheduler, at NFE 4, 5, 6, 8, 10 -- error of the final decoded images to a
200-step solution from the same starting noise. The exact-oracle half is ``bench_few_step.py``.

    python benchmarks/bench_few_step_models.py                      # space/models/{ldm_class,ddpm,sde}
    python benchmarks/bench_few_step_models.py --root DIR           # folders elsewhere (same sub-folder names)
    python benchmarks/bench_few_step_models.py --quick              # ldm_class, NFE 5 and 10, batch 8
    python benchmarks/bench_few_step_models.py --out benchmarks/results/few_step_models.md --json out.json
    python benchmarks/bench_few_step_models.py --models ddpm --json ddpm.json   # one model per run, then
    python benchmarks/bench_few_step_models.py --merge ldm_class.json ddpm.json sde.json --out table.md

Each model is its saved pipeline folder, loaded in float32; its model function is the one the calibration
used (``hf_ddm.few_step.pipeline_model``: unconditional, or classes 0, 1, ... cycled over the batch with
classifier-free guidance at the folder's ``default_guidance_scale``). Every sampler runs the plain diffusers
loop (``scale_model_input`` / model / ``step``) from the same noise: seed ``--seed`` (1000; the calibration of
``python -m hf_ddm.few_step`` used seed 0, batch 16), batch ``--batch`` (32). A latent model's result is
decoded through its VAE. **Error**: mean over pixels and images of |x - x_ref|, images in [-1, 1] clamped as
the pipeline's output is (the RMS is in the JSON). The reference: SDEScheduler's DPM-Solver++(3M) on the
folder's own process, 200 log-SNR-spaced steps; its own error is estimated by its distance to 100 steps. A second
table gives the calibration's own objective on the evaluation noise (mean per-sample RMS distance of the final
latents, before decoding) and the folder's grid without its optimized steps: whether the steps carry over to
new noise, apart from how latent error shows in decoded pixels.

Rows (each "best" is the best *on the evaluation batch itself*, which favours them, not the optimized row):
* (a) hf_ddm optimized: the folder's scheduler as saved, ``set_timesteps(N)``, i.e. its ``optimized_timesteps``
  for N (n/a where the folder has none for N).
* (b) hf_ddm best fixed grid: SDEScheduler multistep order 2 / 3 and iPNDM x time_grid log_snr / uniform x
  denoise_final on / off, on the folder's process (its optimized steps switched off).
* (c) diffusers best: DPMSolverMultistep (2M, 3M; dpmsolver++), UniPC (bh2, order 2, 3) and DEIS (order 2, 3),
  each with timestep_spacing leading / trailing / linspace, with and without Karras sigmas, built by
  ``from_config`` of the model's discrete schedule (``hf_ddm.catalogue``: ``schedule_config`` for a discrete
  VP model, the VP SDE's discrete counterpart for a continuous VP SDE; none for a sub-VP or VE SDE).
  Configurations whose steps coincide with one already run (Karras ignores the spacing) are run once.
* (d) diffusers' DPMSolverMultistep (the folder's solver order) given the optimized steps through
  ``timesteps=`` (rounded to integers, as diffusers' train schedule indexes them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Dict, Optional

import torch

from hf_ddm.solver_registry import few_step_solvers
from hf_ddm.training.hub import public_path, recorded_arg, recorded_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["ldm_class", "ddpm", "sde"]
NFES = [4, 5, 6, 8, 10]
DIFFUSERS = [("DPM++{o}M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
             ("UniPC-{o}", "UniPCMultistepScheduler", {}),
             ("DEIS-{o}", "DEISMultistepScheduler", {})]
SPACINGS = ["leading", "trailing", "linspace"]


def load(folder: str):
    """The saved pipeline in float32 (as ``hf_ddm.few_step.write_folder`` loads it for calibration)."""
    from hf_ddm import pipelines

    with open(os.path.join(folder, "model_index.json")) as f:
        name = json.load(f)["_class_name"]
    cls = getattr(pipelines, name[-1] if isinstance(name, list) else name)
    pipe = cls.from_pretrained(folder, dtype=torch.float32)
    pipe.unet.eval().requires_grad_(False)
    if getattr(pipe, "vae", None) is not None:
        pipe.vae.eval().requires_grad_(False)
    return pipe


def diffusers_config(scheduler) -> Optional[dict]:
    """The diffusers (DDPMScheduler-style) config of the model's process; None where it has none."""
    from hf_ddm.catalogue import _model_configs, process_family

    return _model_configs(process_family(scheduler), dict(scheduler.config)).get("diffusers")


def sample(sched, model, noise, **set_kw):
    """The plain diffusers loop; (final latents, model calls)."""
    sched.set_timesteps(**set_kw)
    x, calls = noise * sched.init_noise_sigma, 0
    for t in sched.timesteps:
        x = sched.step(model(sched.scale_model_input(x, t), t), t, x).prev_sample
        calls += 1
    return x, calls


def decoded(pipe, latents) -> torch.Tensor:
    """What the pipeline outputs, in [-1, 1] (float64)."""
    return pipe.output_images(latents).double()


def errors(x, ref) -> dict:
    d = x - ref
    return {"mae": float(d.abs().mean()), "rms": float(d.pow(2).mean().sqrt())}


def grid_name(solver: str, grid, denoise) -> str:
    return f"{solver} {grid}{'' if denoise else ' no-denoise'}"


def fixed_grids(config) -> Dict[str, dict]:
    """Every few-step solver of the registry on each fixed grid, with and without the final denoise."""
    return {grid_name(label, grid, denoise): dict(kw, time_grid=grid, denoise_final=denoise)
            for label, kw in few_step_solvers().items()
            for grid in ("log_snr", "uniform") for denoise in (True, False)}


def diffusers_schedulers(base) -> Dict[str, object]:
    """name -> a fresh-scheduler factory, every multistep solver x order x spacing x Karras."""
    import diffusers

    out = {}
    for label, cls_name, extra in DIFFUSERS:
        cls = getattr(diffusers, cls_name)
        for order in (2, 3):
            for karras in (False, True):
                for spacing in SPACINGS:
                    name = f"{label.format(o=order)} ({spacing}{', karras' if karras else ''})"
                    kw = dict(extra, solver_order=order, timestep_spacing=spacing, use_karras_sigmas=karras)
                    out[name] = lambda cls=cls, kw=kw: cls.from_config(base, **kw)
    return out


def one_model(folder: str, args) -> dict:
    from hf_ddm.few_step import _error, pipeline_model
    from hf_ddm.schedulers import SDEScheduler

    clock = time.process_time()
    pipe = load(folder)
    model, shape, scale = pipeline_model(pipe, args.batch)
    config = dict(pipe.scheduler.config)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float32)
    saved = {int(k): v for k, v in (config.get("optimized_timesteps") or {}).items()}
    plain = dict(config, optimized_timesteps=None)
    own = None  # the fixed grid the folder's scheduler runs without its optimized steps
    if config.get("solver") == "multistep" and config.get("time_grid") in ("log_snr", "uniform"):
        own = grid_name(f"{config['solver_order']}M", config["time_grid"], config["denoise_final"])
    case = {"folder": os.path.basename(os.path.normpath(folder)), "guidance_scale": scale, "batch": args.batch, "seed": args.seed, "own_grid": own,
            "optimized_steps": {n: saved.get(n) for n in args.nfes}, "nfe": {}}

    def run(sched, nfe=None, **set_kw):
        """(images, the error dict's latent part, model calls)."""
        x, calls = sample(sched, model, noise, **set_kw)
        assert nfe is None or calls <= nfe, (type(sched).__name__, calls, nfe)
        # The calibration's objective on this noise: mean per-sample RMS of the final latents.
        extra = {"latent_rms": float(_error(x, ref_latents).mean()), "calls": calls}
        return decoded(pipe, x), extra

    with torch.no_grad():
        def fine():
            return SDEScheduler.from_config(plain, solver="multistep", solver_order=3, time_grid="log_snr")

        ref_latents, _ = sample(fine(), model, noise, num_inference_steps=args.ref_steps)
        ref = decoded(pipe, ref_latents)
        case["reference"] = f"SDEScheduler DPM-Solver++(3M), {args.ref_steps} log-SNR steps"
        earlier = baselines(args, case)
        if earlier is not None:
            pass
        elif args.quick:  # the loop is deterministic: the reference run again lands on itself
            x, extra = run(fine(), num_inference_steps=args.ref_steps)
            case["reference_rerun"] = {**errors(x, ref), **extra}
        else:  # how far from converged the reference is: its distance to half as many steps
            x, extra = run(fine(), num_inference_steps=args.ref_steps // 2)
            case["reference_half"] = {**errors(x, ref), **extra}
        base = diffusers_config(pipe.scheduler)
        case["diffusers_config"] = base
        theirs = diffusers_schedulers(base) if base is not None else {}
        grids = fixed_grids(plain)
        for nfe in args.nfes:
            row = {"optimized": None, "fixed": {}, "diffusers": {}, "diffusers_on_optimized": None}
            if nfe in saved:
                x, extra = run(SDEScheduler.from_config(config), nfe, num_inference_steps=nfe)
                row["optimized"] = {**errors(x, ref), **extra}
            if earlier is not None:  # (b) and (c) as measured before, on the same model and noise
                row["fixed"], row["diffusers"] = earlier["nfe"][str(nfe)]["fixed"], earlier["nfe"][str(nfe)]["diffusers"]
                grids, theirs = {}, {}
            for name, kw in grids.items():
                x, extra = run(SDEScheduler.from_config(plain, **kw), nfe, num_inference_steps=nfe)
                row["fixed"][name] = {**errors(x, ref), **extra}
            seen = {}
            for name, make in theirs.items():
                sched = make()
                try:
                    sched.set_timesteps(nfe)
                    key = (name.split(" ")[0], tuple(sched.timesteps.tolist()), tuple(sched.sigmas.tolist()))
                    if key in seen:
                        row["diffusers"][name] = dict(row["diffusers"][seen[key]], same_as=seen[key])
                        continue
                    x, extra = run(sched, nfe, num_inference_steps=nfe)
                except (IndexError, RuntimeError, ValueError) as e:  # a configuration this diffusers refuses
                    row["diffusers"][name] = {"skipped": f"{type(e).__name__}: {e}"[:200]}
                    continue
                seen[key] = name
                row["diffusers"][name] = {**errors(x, ref), **extra} if torch.isfinite(x).all() else {"skipped": "NaN"}
            if base is not None and nfe in saved:
                from diffusers import DPMSolverMultistepScheduler

                sched = DPMSolverMultistepScheduler.from_config(base, solver_order=int(config.get("solver_order", 2)),
                                                                algorithm_type="dpmsolver++")
                x, extra = run(sched, nfe, timesteps=[int(round(v)) for v in saved[nfe]])
                row["diffusers_on_optimized"] = {**errors(x, ref), **extra}
            case["nfe"][nfe] = row
    case["cpu_s"] = time.process_time() - clock
    return case


def baselines(args, case: dict) -> Optional[dict]:
    """``--baselines-from``: the earlier run's case of this folder, whose (b) and (c) rows (and the
    reference's own error) are taken instead of sampled again -- only where they measured the same thing:
    same folder name, noise seed, batch, reference steps and guidance scale, every NFE present. The U-Net
    must be the same too (the caller's promise: re-measuring new optimized steps of an unchanged model)."""
    if not args.baselines_from:
        return None
    with open(args.baselines_from) as f:
        old = json.load(f).get(case["folder"])
    same = old is not None and all(old.get(k) == case[k] for k in ("batch", "seed", "guidance_scale"))
    same = same and old.get("reference") == case["reference"] and all(str(n) in old["nfe"] for n in args.nfes)
    if not same:
        raise SystemExit(f"--baselines-from {public_path(args.baselines_from)}: no run of {case['folder']} with the "
                         "same seed, batch, reference and guidance scale at every NFE asked for")
    case["baselines_from"] = recorded_arg(args.baselines_from)
    if "reference_half" in old:
        case["reference_half"] = old["reference_half"]
    return old


def best(rows: dict, metric: str = "mae"):
    ok = {k: v for k, v in rows.items() if metric in v}
    if not ok:
        return None, float("nan")
    name = min(ok, key=lambda k: (ok[k][metric], "same_as" in ok[k]))
    return name, ok[name][metric]


def table(results: dict, metric: str = "mae") -> str:
    f = lambda v: "n/a" if v is None or v != v else f"{v:.4f}"  # noqa: E731
    lines = ["| model | NFE | (a) hf_ddm optimized | (b) hf_ddm best fixed grid | (c) diffusers best | "
             "(d) diffusers DPM++ on the optimized steps | (a) / (c) | (a) / (b) |",
             "|---|---|---|---|---|---|---|---|"]
    for model, case in results.items():
        for nfe, row in case["nfe"].items():
            opt = row["optimized"][metric] if row["optimized"] else None
            fname, ferr = best(row["fixed"], metric)
            dname, derr = best(row["diffusers"], metric)
            on = row["diffusers_on_optimized"][metric] if row["diffusers_on_optimized"] else None
            ratio = lambda a, b: "n/a" if a is None or b != b else f"{a / b:.2f}"  # noqa: E731
            lines.append(f"| {model} | {nfe} | {f(opt)} | {f(ferr)} ({fname}) | "
                         + (f"{f(derr)} ({dname})" if dname else "n/a (no discrete counterpart)")
                         + f" | {f(on)} | {ratio(opt, derr)} | {ratio(opt, ferr)} |")
    lines += ["", "The calibration's own objective on the evaluation noise (mean per-sample RMS distance of the final "
              "latents -- pixels for a pixel model -- to the reference's; `python -m hf_ddm.few_step` minimised it "
              "on seed 0, batch 16):", "",
              "| model | NFE | (a) hf_ddm optimized | the folder's grid without them | (b) hf_ddm best fixed grid | "
              "(c) diffusers best | (d) diffusers DPM++ on the optimized steps |", "|---|---|---|---|---|---|---|"]
    for model, case in results.items():
        for nfe, row in case["nfe"].items():
            get = lambda r: r["latent_rms"] if r else None  # noqa: E731
            own = row["fixed"].get(case.get("own_grid") or "", None)
            fname, ferr = best(row["fixed"], "latent_rms")
            dname, derr = best(row["diffusers"], "latent_rms")
            lines.append(f"| {model} | {nfe} | {f(get(row['optimized']))} | "
                         + (f"{f(get(own))} ({case['own_grid']})" if own else "n/a")
                         + f" | {f(ferr)} ({fname}) | " + (f"{f(derr)} ({dname})" if dname else "n/a")
                         + f" | {f(get(row['diffusers_on_optimized']))} |")
    notes = [""]
    for model, case in results.items():
        ref = case["reference"]
        if "reference_rerun" in case:
            ref += f"; the reference run again: error {case['reference_rerun'][metric]:.4f}"
        if "reference_half" in case:
            ref += f"; its own error (its distance to half as many steps): {case['reference_half'][metric]:.4f}"
        guid = f", CFG {case['guidance_scale']:g}" if case["guidance_scale"] is not None else ""
        notes.append(f"* {model}{guid}: batch {case['batch']}, seed {case['seed']}; {ref}; "
                     f"{case['cpu_s']:.0f} CPU s." + ("" if case["diffusers_config"] is not None else
                                                      " No diffusers scheduler: not a VP process.")
                     + (f" (b), (c) and the reference's own error from `{case['baselines_from']}` (same model and "
                        "noise; only (a) and (d) sampled again)." if case.get("baselines_from") else "")
                     + ("" if any(k.startswith("iPNDM") for row in case["nfe"].values() for k in row["fixed"])
                        else " (b) without iPNDM's grids (measured before hf_ddm had it)."))
    return "\n".join(lines + notes)


HEADER = """Error of the final decoded images (mean |x - x_ref|, images in [-1, 1] clamped as the pipeline outputs
them) to a 200-step solution from the same noise; evaluation noise seed 1000, batch 32 (the optimized steps were
calibrated on seed 0, batch 16). (a) the folder's optimized steps, (b) hf_ddm's best fixed grid (SDEScheduler
multistep 2M / 3M and iPNDM x log_snr / uniform x final denoise on / off), (c) diffusers' best (DPMSolverMultistep 2M / 3M,
UniPC 2 / 3, DEIS 2 / 3 x leading / trailing / linspace x Karras sigmas or not), (d) diffusers'
DPMSolverMultistep on the optimized steps (``timesteps=``). (b) and (c) are each the best *on the evaluation
batch itself*. See the script's docstring."""


def write_markdown(path: str, results: dict) -> None:
    commands = list(dict.fromkeys(case.get("command", "") for case in results.values()))
    with open(path, "w") as f:
        f.write("# bench_few_step_models.py\n\n" + "\n".join(f"`{c}`  " for c in commands if c) + "\n\n"
                + HEADER + "\n\n" + table(results) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=os.path.join(ROOT, "space", "models"), help="folder holding the model folders")
    p.add_argument("--models", nargs="+", help=f"sub-folders of --root (default {' '.join(MODELS)})")
    p.add_argument("--nfes", nargs="+", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--seed", type=int, default=1000, help="evaluation noise (calibration: seed 0)")
    p.add_argument("--ref-steps", type=int, default=200)
    p.add_argument("--quick", action="store_true", help="one model, NFE 5 and 10, batch 8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="write the tables (markdown, the command on top) here")
    p.add_argument("--json", help="write the measurements (every configuration) here")
    p.add_argument("--baselines-from", metavar="JSON",
                   help="take (b), (c) from this earlier --json run of the same folders (same U-Net, seed, batch): "
                        "re-measure a folder's new optimized steps without sampling every other scheduler again")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="sample nothing: the tables of earlier --json runs (one model each, say) together")
    args = p.parse_args(argv)
    if args.merge:
        results = {}
        for path in args.merge:
            with open(path) as f:
                results.update(json.load(f))
    else:
        args.models = args.models or (MODELS[:1] if args.quick else MODELS)
        args.nfes = args.nfes or ([5, 10] if args.quick else NFES)
        args.batch = args.batch or (8 if args.quick else 32)
        torch.set_num_threads(args.threads)
        warnings.filterwarnings("ignore")
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
        command = recorded_command("OMP_NUM_THREADS=1 python benchmarks/bench_few_step_models.py",
                                   sys.argv[1:] if argv is None else argv)
        results = {}
        for name in args.models:
            results[name] = dict(one_model(os.path.join(args.root, name), args), command=command)
            print(f"{name}: {results[name]['cpu_s']:.0f} CPU s", file=sys.stderr, flush=True)
    print(table(results))
    if args.out:
        write_markdown(args.out, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
