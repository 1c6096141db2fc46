"""hf_ddm models vs their diffusers counterparts: forward latency and peak memory.

    python benchmarks/bench_models.py                      # CPU (and CUDA if present), batches 1,16,64
    python benchmarks/bench_models.py --batches 1,16 --repeats 30 --json out.json

U-Net: our ``UNet`` vs ``diffusers.UNet2DModel`` of matched width (64,128,256), depth (2 res blocks
per level), attention (levels 1 and 2 + middle, 32 channels per head) and scale-shift time
conditioning; parameter counts are printed and must agree within 5%. VAE: our ``VAE`` vs
``diffusers.AutoencoderKL`` with the same levels, encode and decode throughput.

Methodology (the machine is shared and noisy):
- both models live in one process and are timed interleaved, alternating which goes first each
  repetition (A B, B A, ...), after warming both up; we report medians and the *median of per-repetition
  ratios* ours/theirs, which cancels slow drifts of the machine's load;
- glibc malloc is told not to use mmap for big blocks nor to trim the heap (``MALLOC_MMAP_THRESHOLD_``,
  ``MALLOC_TRIM_THRESHOLD_``); otherwise every large activation is a fresh mmap and page faults
  dominate CPU timings. The script re-executes itself with these set;
- a fixed ``torch.set_num_threads`` (``--threads``, default: all cores);
- inference mode, float32.

Peak memory: CUDA uses ``torch.cuda.max_memory_allocated`` (extra over the weights and input). CPU
memory cannot be read from the torch allocator (it is plain malloc), so on CPU each (model, batch) runs
one forward in a fresh subprocess with glibc's *default* malloc settings (large blocks mmapped and
returned on free, so RSS follows live memory); we reset the kernel's peak-RSS mark (VmHWM, via
/proc/self/clear_refs) just before the forward and report VmHWM minus the RSS before it: the
forward's activation high-water mark plus allocator slack. Linux only; ``--no-memory`` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**34), "MALLOC_TRIM_THRESHOLD_": str(2**34)}
# Only when run as a script: benchmarks/gpu_suite.py imports the builders and timers below.
_NEEDS_MALLOC_ENV = any(os.environ.get(k) != v for k, v in _MALLOC_ENV.items())
if __name__ == "__main__" and "--_mem-child" not in sys.argv and _NEEDS_MALLOC_ENV:
    os.environ.update(_MALLOC_ENV)
    os.execv(sys.executable, [sys.executable] + sys.argv)  # glibc reads these only at start-up

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from diffusers import AutoencoderKL, UNet2DModel  # noqa: E402

from hf_ddm.models import VAE, UNet  # noqa: E402

WIDTHS = (64, 128, 256)


def build(name: str, widths=WIDTHS, norm_num_groups: int = 32):
    """A matched model by name; ``widths``/``norm_num_groups`` shrink the U-Nets (gpu_suite --dry-run)."""
    torch.manual_seed(0)
    if name == "unet_ours":
        return UNet(sample_size=32, block_out_channels=widths, layers_per_block=2, attention_levels=(1, 2),
                    mid_block_attention=True, attention_head_dim=32, norm_num_groups=norm_num_groups)
    if name == "unet_theirs":
        return UNet2DModel(sample_size=32, block_out_channels=widths, layers_per_block=2,
                           down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                           attention_head_dim=32, norm_num_groups=norm_num_groups,
                           resnet_time_scale_shift="scale_shift")
    if name == "vae_ours":
        return VAE(block_out_channels=WIDTHS, layers_per_block=2, latent_channels=4, norm_num_groups=32)
    if name == "vae_theirs":
        return AutoencoderKL(block_out_channels=WIDTHS, layers_per_block=2, latent_channels=4, norm_num_groups=32,
                             down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
    raise KeyError(name)


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def calls(kind: str, model, batch: int, device, dtype=torch.float32):
    """The timed closure: U-Net forward, VAE encode (mode) or VAE decode; inputs in ``dtype``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device, dtype)
    if kind == "unet":
        t = torch.randint(0, 1000, (batch,), generator=g).to(device)
        return lambda: model(x, t).sample
    if kind == "encode":
        return lambda: model.encode(x).latent_dist.mode()
    z = torch.randn(batch, 4, 8, 8, generator=g).to(device, dtype)
    return lambda: model.decode(z).sample


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_pair(fa, fb, repeats: int, warmup: int, device):
    ta, tb = [], []
    for _ in range(warmup):
        fa(), fb()
    sync(device)
    for i in range(repeats):
        order = ((fa, ta), (fb, tb)) if i % 2 == 0 else ((fb, tb), (fa, ta))
        for f, acc in order:
            sync(device)
            s = time.perf_counter()
            f()
            sync(device)
            acc.append(time.perf_counter() - s)
    ratio = statistics.median(a / b for a, b in zip(ta, tb))
    return statistics.median(ta), statistics.median(tb), ratio


def cuda_peak(fn, device) -> float:
    sync(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def _proc_status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_peak_child(model_name: str, kind: str, batch: int, threads: int) -> None:
    """Subprocess entry: print the peak-RSS growth (MiB) of one forward.

    Runs with glibc's default malloc settings (big blocks are mmapped and unmapped on free), so RSS
    tracks live memory; the kernel's high-water mark (VmHWM) is reset just before the forward by
    writing 5 to /proc/self/clear_refs.
    """
    torch.set_num_threads(threads)
    model = build(model_name).eval()
    with torch.inference_mode():
        fn = calls(kind, model, batch, torch.device("cpu"))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status_mib("VmRSS")
        fn()
        peak = _proc_status_mib("VmHWM")
    print(json.dumps({"peak_mib": max(peak - before, 0.0)}))


def cpu_peak(model_name: str, kind: str, batch: int, threads: int) -> float | None:
    env = {k: v for k, v in os.environ.items() if k not in _MALLOC_ENV}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_mem-child", model_name, kind, str(batch),
                          "--threads", str(threads)], capture_output=True, text=True, env=env)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
    except (IndexError, ValueError, KeyError):
        print(out.stderr[-2000:], file=sys.stderr)
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--devices", default=None, help="comma list; default cpu (+cuda when available)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-vae", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--_mem-child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._mem_child:
        name, kind, batch = args._mem_child
        return cpu_peak_child(name, kind, int(batch), args.threads)

    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    pairs = [("unet", "unet_ours", "unet_theirs", ["unet"])]
    if not args.no_vae:
        pairs.append(("vae", "vae_ours", "vae_theirs", ["encode", "decode"]))

    models = {n: build(n).eval() for _, a, b, _ in pairs for n in (a, b)}
    meta = {"torch": torch.__version__, "threads": args.threads, "repeats": args.repeats, "params": {}}
    for fam, a, b, _ in pairs:
        pa, pb = n_params(models[a]), n_params(models[b])
        meta["params"][fam] = {"ours": pa, "diffusers": pb}
        print(f"{fam}: parameters ours {pa:,} vs diffusers {pb:,} ({100 * (pa / pb - 1):+.3f}%)")
        assert abs(pa / pb - 1) < 0.05, f"{fam} models are not matched within 5%"

    rows = []
    for dev_name in devices:
        device = torch.device(dev_name)
        for m in models.values():
            m.to(device)
        for fam, a, b, kinds in pairs:
            for kind in kinds:
                for batch in batches:
                    with torch.inference_mode():
                        fa = calls(kind, models[a], batch, device)
                        fb = calls(kind, models[b], batch, device)
                        t_a, t_b, ratio = time_pair(fa, fb, args.repeats, args.warmup, device)
                        if args.no_memory:
                            mem_a = mem_b = None
                        elif device.type == "cuda":
                            mem_a, mem_b = cuda_peak(fa, device), cuda_peak(fb, device)
                        else:
                            mem_a, mem_b = (cpu_peak(a, kind, batch, args.threads),
                                            cpu_peak(b, kind, batch, args.threads))
                    row = dict(device=dev_name, model=kind, batch=batch, ours_ms=1e3 * t_a, diffusers_ms=1e3 * t_b,
                               ratio=ratio, ours_img_s=batch / t_a, diffusers_img_s=batch / t_b,
                               ours_peak_mib=mem_a, diffusers_peak_mib=mem_b)
                    rows.append(row)
                    print(f"  {dev_name} {kind} b={batch}: ours {row['ours_ms']:.1f} ms, diffusers "
                          f"{row['diffusers_ms']:.1f} ms, ratio {ratio:.3f}", file=sys.stderr, flush=True)

    fmt = lambda v: "n/a" if v is None else f"{v:.0f}"  # noqa: E731
    print(f"\ntorch {meta['torch']}, {args.threads} threads, {args.repeats} interleaved repeats, 32x32 inputs, fp32")
    print("| device | model | batch | ours ms | diffusers ms | ratio ours/diffusers (median) | ours img/s | "
          "diffusers img/s | ours peak MiB | diffusers peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['device']} | {r['model']} | {r['batch']} | {r['ours_ms']:.1f} | {r['diffusers_ms']:.1f} | "
              f"{r['ratio']:.3f} | {r['ours_img_s']:.1f} | {r['diffusers_img_s']:.1f} | "
              f"{fmt(r['ours_peak_mib'])} | {fmt(r['diffusers_peak_mib'])} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
