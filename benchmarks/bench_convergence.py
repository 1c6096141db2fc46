#!/usr/bin/env python
"""Time to quality of the training objectives (``hf_ddm.training.objectives``), as a Markdown table.

The pixel U-Net, data, seed and optimiser of the shipped ``ddpm`` recipe (train/fashion_mnist_recipe.sh,
stage ddpm: Fashion-MNIST padded to 32x32, UNet 32,64,64 / 1 layer / attention at level 2, VP linear
1000 steps, batch 64, AdamW 2e-4, 500 warm-up steps, cosine over 20000 steps, EMA) is trained once per
objective for the same *CPU time* (``time.process_time`` of this process, evaluation excluded; pin the
threads with ``--threads`` so that CPU time means the same thing for every run). At ``--evals`` fixed
fractions of the budget the EMA weights sample ``--num-samples`` images through the saved pipeline
(``--sample-steps`` steps of its default sampler) and their FD to the Fashion-MNIST test set is measured
in the reference classifier's features (benchmarks/reference_classifier.py, as eval_quality.py does).
FD at small N is biased upward: compare rows at equal N only.

Time-to-FD ratio: the CPU time each objective needs to reach the FD the current objective reaches at the
end of its budget (log-FD interpolated linearly in time between evaluations), over the current
objective's time. Below 1: faster than today.

    python benchmarks/bench_convergence.py --minutes-per-run 20 --out benchmarks/results/convergence.md
    python benchmarks/bench_convergence.py --smoke          # ~1 minute: every variant, tiny budget and N

One objective against an absolute target (no baseline run, no ratio): save its final pipeline and measure
FD-inf with eval_quality.py:

    python benchmarks/bench_convergence.py --variants edm_v --minutes-per-run 59 --save-final runs/conv
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import eval_quality as eq  # noqa: E402
import quality_metrics as qm  # noqa: E402
import reference_classifier as rc  # noqa: E402

# train/fashion_mnist_recipe.sh, stage ddpm (COMMON + the stage's flags), minus checkpointing/resume/output.
RECIPE = ["--channels", "1", "--resolution", "32", "--image_fit", "pad", "--seed", "0",
          "--block_out_channels", "32,64,64", "--layers_per_block", "1", "--attention_levels", "2",
          "--norm_num_groups", "16", "--scheduler", "vp", "--train_batch_size", "64", "--max_train_steps", "20000",
          "--learning_rate", "2e-4", "--lr_warmup_steps", "500", "--use_ema"]

# name -> extra flags of train/train_ddpm.py. "current" is the shipped objective.
VARIANTS = {
    "current": [],
    "min_snr": ["--snr_gamma", "5"],
    "noise_offset": ["--noise_offset", "0.05"],
    "lognormal": ["--timestep_sampling", "lognormal"],
    "edm_v": ["--prediction_type", "v_prediction", "--loss_weighting", "edm", "--timestep_sampling", "lognormal"],
}


def log(msg: str) -> None:
    print(f"[bench_convergence {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", REPO / "train" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


class Evaluator:
    """FD of a pipeline's samples to the test set in the reference network's features."""

    def __init__(self, data_dir: str, num_samples: int, steps: int, batch_size: int, num_test: int):
        self.model = rc.load_reference()
        test, _ = eq.real_images("test", "pad", data_dir, n=num_test)
        self.test_feats, _ = eq.embed(self.model, test)
        self.num_samples, self.steps, self.batch_size = num_samples, steps, batch_size

    @torch.no_grad()
    def fd(self, pipe) -> float:
        pipe.set_progress_bar_config(disable=True)
        x, _, _ = eq.generate(pipe, self.num_samples, self.batch_size, self.steps, 1.0, 0, ("none", 0, None))
        feats, _ = eq.embed(self.model, x)
        return float(qm.frechet_distance_features(feats, self.test_feats))


def train_variant(name: str, flags, a, evaluator: Evaluator, out_dir: str) -> dict:
    """Train one objective for ``a.minutes_per_run`` CPU minutes; FD at the evaluation points."""
    from hf_ddm.training.ema import ema_weights
    from hf_ddm.training.loop import setup, train_step
    from hf_ddm.training.utils import step_seed

    mod = _load_script("train_ddpm")
    argv = ["--data_dir", a.data_dir, *RECIPE, *flags, "--output_dir", out_dir, "--report_to", "none",
            "--checkpointing_steps", "100000000", "--cpu"]
    if a.max_train_samples:
        argv += ["--max_train_samples", str(a.max_train_samples)]
    _reset_accelerate()
    args = mod.parse_args(mod.build_parser(), argv)
    task, dataset, _ = mod.prepare(args)
    run = setup(args, task, dataset)
    budget = a.minutes_per_run * 60.0
    marks = [budget * (k + 1) / a.evals for k in range(a.evals)]
    points, eval_cpu = [], 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()

    def evaluate():
        nonlocal eval_cpu
        c = time.process_time()
        train_cpu = c - cpu0 - eval_cpu
        unwrapped = run.unwrapped()
        unwrapped["unet"].eval()
        with ema_weights(run.ema, unwrapped["unet"]):
            fd = evaluator.fd(task.pipeline(unwrapped))
        unwrapped["unet"].train()
        eval_cpu += time.process_time() - c
        points.append({"cpu_s": train_cpu, "step": run.global_step, "fd": fd})
        log(f"{name}: step {run.global_step}, {train_cpu / 60:.2f} CPU min, FD {fd:.3f}")

    run.modules["unet"].train()
    for epoch in itertools.count():
        run.sampler.set_epoch(epoch)
        if hasattr(run.train_dataloader, "set_epoch"):
            run.train_dataloader.set_epoch(epoch)
        for batch in run.train_dataloader:
            train_step(run, batch, step_seed(args.seed, run.global_step, 0, 0), args.max_grad_norm)
            while marks and time.process_time() - cpu0 - eval_cpu >= marks[0]:
                marks.pop(0)
                evaluate()
            if not marks:
                break
        if not marks:
            break
    if a.save_final:
        # The EMA weights as a pipeline folder, so eval_quality.py can measure FD-inf at a larger N.
        unwrapped = run.unwrapped()
        with ema_weights(run.ema, unwrapped["unet"]):
            task.pipeline(unwrapped).save_pretrained(os.path.join(a.save_final, name))
    _reset_accelerate()
    return {"name": name, "flags": flags, "points": points, "steps": run.global_step,
            "wall_s": time.perf_counter() - wall0}


def time_to_fd(points, target: float) -> float:
    """First CPU time at which FD reaches ``target``: log FD linear in time between evaluations, from
    (0, the first FD) -- so a curve that starts below the target reaches it at its first point. inf: never."""
    prev_t, prev_fd = 0.0, None
    for p in points:
        if p["fd"] <= target:
            if prev_fd is None or prev_fd <= target:
                return p["cpu_s"]
            f = (math.log(prev_fd) - math.log(target)) / (math.log(prev_fd) - math.log(p["fd"]))
            return prev_t + f * (p["cpu_s"] - prev_t)
        prev_t, prev_fd = p["cpu_s"], p["fd"]
    return math.inf


def markdown(results, a) -> str:
    base = next((r for r in results if r["name"] == "current"), None)
    if base is None:  # no baseline run: FD at each point, no time-to-FD ratio
        n_eval = len(results[0]["points"])
        lines = [f"Budget: {a.minutes_per_run:g} CPU min per objective ({a.threads} thread(s)), N = {a.num_samples} "
                 f"samples ({a.sample_steps} steps of the saved sampler) against {a.num_test} test images.", "",
                 "| objective | flags | steps | " + " | ".join(f"FD @ eval {k + 1}" for k in range(n_eval)) + " |",
                 "|" + "---|" * (3 + n_eval)]
        for r in results:
            fds = " | ".join(f"{p['fd']:.3g} ({p['cpu_s'] / 60:.1f} min)" for p in r["points"])
            lines.append(f"| {r['name']} | `{' '.join(r['flags']) or '(shipped)'}` | {r['steps']} | {fds} |")
        return "\n".join(lines) + "\n"
    target = base["points"][-1]["fd"]
    t_base = time_to_fd(base["points"], target)
    n_eval = len(base["points"])
    lines = [f"Budget: {a.minutes_per_run:g} CPU min per objective ({a.threads} thread(s)), FD at {n_eval} points, "
             f"N = {a.num_samples} samples ({a.sample_steps} steps of the saved sampler) against {a.num_test} test "
             f"images, reference features.", ""]
    head = "| objective | flags | steps | " + " | ".join(f"FD @ {p['cpu_s'] / 60:.2f} min" for p in base["points"])
    lines += [head + f" | CPU time to FD {target:.3g} | ratio |",
              "|" + "---|" * (5 + n_eval)]
    for r in results:
        t = time_to_fd(r["points"], target)
        ratio = t / t_base if math.isfinite(t) and t_base > 0 else math.inf
        fds = " | ".join(f"{p['fd']:.3g}" for p in r["points"])
        t_txt = f"{t / 60:.2f} min" if math.isfinite(t) else "not reached"
        r_txt = f"{ratio:.2f}" if math.isfinite(ratio) else f"> {r['points'][-1]['cpu_s'] / max(t_base, 1e-9):.2f}"
        lines.append(f"| {r['name']} | `{' '.join(r['flags']) or '(shipped)'}` | {r['steps']} | {fds} | {t_txt} | {r_txt} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes-per-run", type=float, default=20.0, help="CPU minutes of training per objective.")
    p.add_argument("--evals", type=int, default=4, help="FD evaluations per run, at equal fractions of the budget.")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--num-test", type=int, default=10000, help="Test images the FD compares against.")
    p.add_argument("--batch-size", type=int, default=250, help="Sampling batch.")
    p.add_argument("--variants", type=str, default=",".join(VARIANTS), help=f"Comma-separated of {list(VARIANTS)}.")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", type=str, default=rc.DEFAULT_DATA_DIR)
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--smoke", action="store_true",
                   help="~1 minute: every variant for 3 CPU s, 2 evaluations of 32 samples x 3 steps, 500 test "
                        "images, 512 training images. Checks the machinery, measures nothing.")
    p.add_argument("--out", type=str, default=None, help="Also write the table (Markdown) here.")
    p.add_argument("--save-final", type=str, default=None,
                   help="Save each objective's final EMA pipeline to DIR/<objective> (for eval_quality.py).")
    a = p.parse_args(argv)
    if a.smoke:
        a.minutes_per_run, a.evals, a.num_samples, a.sample_steps = 0.05, 2, 32, 3
        a.num_test, a.batch_size, a.max_train_samples = 500, 32, a.max_train_samples or 512
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise SystemExit(f"--variants must name some of {list(VARIANTS)} (got {names}); without 'current' the "
                         "table has no time-to-FD ratio")
    torch.set_num_threads(a.threads)
    evaluator = Evaluator(a.data_dir, a.num_samples, a.sample_steps, a.batch_size, a.num_test)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            log(f"training {name} for {a.minutes_per_run:g} CPU min")
            results.append(train_variant(name, VARIANTS[name], a, evaluator, os.path.join(tmp, name)))
    table = markdown(results, a)
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
