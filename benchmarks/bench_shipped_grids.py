"""Time grids on the shipped (trained, discrete-time) models: how far a few-step DPM-Solver++(2M) sample
lands from the model's own 100-step solution, per grid, next to diffusers' DPM-Solver++(2M).

The mixture oracle (bench_samplers.py) is exact at every noise level; a trained model is not, and the
log-SNR grid spends its few steps where a guided latent model errs most. Same seed, same starting noise,
mean |x - x_ref| over the decoded images in [0, 1].

    python benchmarks/bench_shipped_grids.py [--models ldm_class ddpm] [--steps 6 10 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "space"))

from diffusers import DPMSolverMultistepScheduler  # noqa: E402

from hf_ddm.catalogue import schedule_config  # noqa: E402
from hf_ddm.schedulers import SDEScheduler  # noqa: E402
from hf_ddm_space.registry import load_pipeline  # noqa: E402

# Every grid key explicit: a shipped folder may save an SDEScheduler that already sets them.
GRIDS = {
    "log-SNR grid + final denoise (SDEScheduler default)": dict(time_grid="log_snr", denoise_final=True),
    "log-SNR grid": dict(time_grid="log_snr", denoise_final=False),
    "uniform in t (the Space's default)": dict(time_grid="uniform", denoise_final=False),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["ldm_class", "ddpm"])
    p.add_argument("--steps", nargs="+", type=int, default=[6, 10, 20])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print("| model | steps | " + " | ".join(GRIDS) + " | diffusers DPM-Solver++(2M) |")
    print("|---|---|" + "---|" * (len(GRIDS) + 1))
    for name in args.models:
        pipe = load_pipeline(os.path.join(ROOT, "space", "models", name)).to(dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        base = schedule_config(pipe.scheduler.config)  # the model's diffusers schedule, whatever solver it saved
        conditional = getattr(pipe.unet.config, "num_class_embeds", None)
        kwargs = dict(class_labels=[0, 1, 2, 3], guidance_scale=3.0) if conditional else dict(batch_size=4)

        def sample(scheduler, steps):
            pipe.scheduler = scheduler
            return pipe(num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt",
                        **kwargs).images

        ref = sample(SDEScheduler.from_config(base, solver="multistep", **GRIDS["uniform in t (the Space's default)"]),
                     100)
        for steps in args.steps:
            cells = [(sample(SDEScheduler.from_config(base, solver="multistep", **kw), steps) - ref).abs().mean()
                     for kw in GRIDS.values()]
            cells.append((sample(DPMSolverMultistepScheduler.from_config(base), steps) - ref).abs().mean())
            print(f"| {name} | {steps} | " + " | ".join(f"{float(c):.4f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
