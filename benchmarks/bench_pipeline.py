"""hf_ddm's PixelDiffusionPipeline against stock diffusers.DDPMPipeline on identical work.

Same U-Net weights, same scheduler (diffusers' DDPMScheduler in both; hf_ddm's VPScheduler in ours as
an extra row), batch 16, 50 steps. Reported: the median time of each, their ratio, and each pipeline's
overhead over the U-Net evaluations it makes, (pipeline time - time inside its U-Net calls) / pipeline
time, where the time inside the calls is clocked around each U-Net forward of that very run (a separate
bare loop of 50 forwards is also timed, but on a shared machine its difference to the pipeline is noise).

    python benchmarks/bench_pipeline.py [--batch 16] [--steps 50] [--repeats 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# glibc's allocator page-faults on the first large tensors and penalises whichever side runs first.
if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="4294967296", MALLOC_TRIM_THRESHOLD_="4294967296")
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import torch  # noqa: E402
from diffusers import DDPMPipeline, DDPMScheduler  # noqa: E402

from hf_ddm.models import UNet  # noqa: E402
from hf_ddm.pipelines import PixelDiffusionPipeline  # noqa: E402
from hf_ddm.schedulers import VPScheduler  # noqa: E402


def build_unet(size: int) -> UNet:
    torch.manual_seed(0)
    return UNet(sample_size=size, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
                layers_per_block=1, attention_levels=(2,), attention_head_dim=32, norm_num_groups=16).eval()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", type=str, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    unet = build_unet(args.size)
    sched = DDPMScheduler(num_train_timesteps=1000)
    ours = PixelDiffusionPipeline(unet, DDPMScheduler.from_config(sched.config))
    ours_vp = PixelDiffusionPipeline(unet, VPScheduler.from_config(sched.config))
    theirs = DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(sched.config))
    for pipe in (ours, ours_vp, theirs):
        pipe.set_progress_bar_config(disable=True)

    x = torch.randn(args.batch, 3, args.size, args.size)
    ts = DDPMScheduler.from_config(sched.config)
    ts.set_timesteps(args.steps)

    def bare():
        with torch.no_grad():
            for t in ts.timesteps:
                unet(x, t)

    inside = {"s": 0.0}
    forward = unet.forward

    def timed_forward(*a, **kw):
        t0 = time.perf_counter()
        try:
            return forward(*a, **kw)
        finally:
            inside["s"] += time.perf_counter() - t0

    unet.forward = timed_forward
    overhead = {}

    def run(pipe, name):
        def f():
            inside["s"] = 0.0
            t0 = time.perf_counter()
            pipe(batch_size=args.batch, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0),
                 output_type="np")
            total = time.perf_counter() - t0
            overhead.setdefault(name, []).append((total - inside["s"]) / total)
        return f

    cases = {"hf_ddm PixelDiffusionPipeline + DDPMScheduler": run(ours, "ours"),
             "hf_ddm PixelDiffusionPipeline + VPScheduler": run(ours_vp, "ours_vp"),
             "diffusers DDPMPipeline + DDPMScheduler": run(theirs, "theirs"),
             "bare U-Net loop": bare}
    times = {k: [] for k in cases}
    for f in cases.values():  # warm-up both sides
        f()
    overhead.clear()
    for r in range(args.repeats):
        order = list(cases) if r % 2 == 0 else list(reversed(cases))
        for k in order:
            t0 = time.perf_counter()
            cases[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    bare_t = med["bare U-Net loop"]
    theirs_t = med["diffusers DDPMPipeline + DDPMScheduler"]
    rows = []
    for k, key in zip(cases, ["ours", "ours_vp", "theirs"]):
        rows.append({"pipeline": k, "seconds": med[k], "ratio_vs_diffusers": med[k] / theirs_t,
                     "overhead_over_forwards": statistics.median(overhead[key])})
    print(f"batch {args.batch}, {args.steps} steps, {args.size}x{args.size}, {args.threads} threads, "
          f"median of {args.repeats} interleaved rounds; bare U-Net loop {bare_t:.3f} s\n")
    print("| pipeline | median s | time / diffusers | overhead over its U-Net calls |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['pipeline']} | {row['seconds']:.3f} | {row['ratio_vs_diffusers']:.3f} | "
              f"{100 * row['overhead_over_forwards']:.2f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "bare_seconds": bare_t, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
