#!/usr/bin/env python
"""The GPU suite: hf_ddm against diffusers on one GPU, printed as one Markdown report (issue 16).

    python3 benchmarks/gpu_suite.py --budget-seconds 540 --json out.json \\
        --train-stage ddpm --train-seconds 240 --train-out out/ddpm     # one GPU, about 4 min + training
    python benchmarks/gpu_suite.py --dry-run                             # the same code, tiny, on the CPU (CI)

Sections, in this order (each prints its table as soon as it is measured; a failing one prints its error
and the next one runs):

1. U-Net forward: hf_ddm ``UNet`` vs the matched diffusers ``UNet2DModel`` of benchmarks/bench_models.py
   (3x32x32, widths 64,128,256), fp32 / bf16 / bf16 + ``torch.compile``, batches 64 and 256: median ms of
   interleaved repeats, the median per-repeat ratio, the first call's seconds (compilation), peak memory.
2. Pipelines at 50 steps, bf16: ``PixelDiffusionPipeline`` vs ``diffusers.DDPMPipeline`` (DDPMScheduler in
   both), with the matched U-Nets and with one shared U-Net (the loops' overhead alone): images/s.
3. Training images/s, bf16, without and with compile: train_ddpm's loop vs the diffusers-style loop of
   benchmarks/bench_training.py (train_unconditional.py's), and train_ldm's loop (cached latents) vs the
   diffusers-style latent loop (train_text_to_image.py's, encoding every batch); peak memory of each.
4. Optional ``--train-stage ddpm`` (benchmarks/gpu_train_stage.py): the pixel Fashion-MNIST DDPM of
   train/fashion_mnist_recipe.sh, widened for a GPU, trained by train/train_ddpm.py for ``--train-seconds`` of
   wall clock (``--max_train_seconds``), EMA weights saved as a pipeline folder; ``--train-out`` receives that
   folder as a tar split into parts of at most 15 MiB (``cat ddpm_pipeline.tar.part-* | tar -x``), a grid of
   64 samples and train_summary.json.

hf_ddm need not be installed: run from the repository root with it on PYTHONPATH; the ``hf_ddm.pipelines``
subpackage (the top-level ``pipelines/`` folder, mapped by setuptools when installed) is mapped here.
``--budget-seconds`` bounds the whole run: benchmark sections that would eat into the training time are
skipped (and say so), and the training is shortened to what is left.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


from gpu_train_stage import synthetic_idx, train_stage  # noqa: E402  (benchmarks/ is on sys.path now)


def ensure_hf_ddm_pipelines() -> None:
    """Make ``hf_ddm.pipelines`` importable from a plain checkout (no ``pip install``)."""
    import hf_ddm

    try:
        import hf_ddm.pipelines  # noqa: F401  (installed, or already mapped)
        return
    except ImportError:
        pass
    folder = REPO / "pipelines"
    spec = importlib.util.spec_from_file_location("hf_ddm.pipelines", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["hf_ddm.pipelines"] = module
    spec.loader.exec_module(module)
    hf_ddm.pipelines = module


# ---- sizes ----------------------------------------------------------------------------------------------
# Full: what one H200 runs in about 4 minutes (compilation dominates). Dry: the same code paths on 2 CPU
# cores in well under a minute; compile uses the "eager" backend there (dynamo traces, no code generation).
FULL = SimpleNamespace(
    fwd_widths=(64, 128, 256), fwd_groups=32, fwd_batches=(64, 256), fwd_repeats=20, fwd_warmup=3,
    pipe_batch=256, pipe_steps=50, pipe_repeats=3,
    train_resolution=32, train_batch=240, train_steps=60, train_warmup=5, workers=4,
    ddpm_unet=dict(channels="64,128,128", layers=1, attention="2", norm_groups=32),
    ldm_unet=dict(channels="64,128", layers=2, attention="1", norm_groups=32), vae_widths=(32, 64, 64),
    compile_backend="inductor", sample_count=64, sample_steps=100,
)
DRY = SimpleNamespace(
    fwd_widths=(32, 32, 32), fwd_groups=8, fwd_batches=(2,), fwd_repeats=2, fwd_warmup=1,
    pipe_batch=2, pipe_steps=2, pipe_repeats=1,
    train_resolution=16, train_batch=4, train_steps=2, train_warmup=1, workers=0,
    ddpm_unet=dict(channels="16,32", layers=1, attention="1", norm_groups=8),
    ldm_unet=dict(channels="16,32", layers=1, attention="1", norm_groups=8), vae_widths=(16, 16),
    compile_backend="eager", sample_count=4, sample_steps=2,
)


class Report:
    """Markdown to stdout as it is measured; the same rows to --json at the end."""

    def __init__(self):
        self.sections, self.current, self.errors = {}, None, []

    def _header(self, name: str, title: str):
        header = self.sections[name]["header"]
        print(f"\n### {title}\n")
        if self.sections[name]["note"] and title == name:
            print(self.sections[name]["note"] + "\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header), flush=True)
        self.current = name

    def table(self, name: str, header: list, note: str = ""):
        self.sections[name] = {"header": header, "rows": [], "note": note}
        self._header(name, name)
        return name

    def row(self, name: str, cells: list):
        if self.current != name:  # another table was printed in between: repeat the header
            self._header(name, f"{name} (continued)")
        print("| " + " | ".join(_fmt(c) for c in cells) + " |", flush=True)
        self.sections[name]["rows"].append(cells)

    def guarded_row(self, name: str, prefix: list, fn):
        """A row ``prefix + fn()``; an exception in ``fn`` becomes an error row (traceback on stderr) and the
        suite goes on: one failing case must not cost the others their GPU minutes."""
        try:
            rest = list(fn())
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            self.errors.append(f"{name} / {prefix}: {type(e).__name__}: {e}")
            rest = [f"error: {type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"]
        width = len(self.sections[name]["header"])
        self.row(name, list(prefix) + rest + [None] * (width - len(prefix) - len(rest)))

    def line(self, text: str):
        print(text, flush=True)
        self.current = None


def _fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_mib(device, fn):
    """(result of fn(), peak GPU memory allocated during it in MiB; None off CUDA)."""
    import torch

    if device.type != "cuda":
        return fn(), None
    _sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    _sync(device)
    return out, torch.cuda.max_memory_allocated(device) / 2**20


def _first_call_seconds(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


# ---- 1 + 2: U-Net forward and pipelines --------------------------------------------------------------------
def inference_sections(S, device, report, over_budget):
    """Eager forward rows and the pipelines now; returns the compiled forward rows to run at the end."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler

    import bench_models as bm
    from hf_ddm.pipelines import PixelDiffusionPipeline

    ours = bm.build("unet_ours", S.fwd_widths, S.fwd_groups).eval().to(device)
    theirs = bm.build("unet_theirs", S.fwd_widths, S.fwd_groups).eval().to(device)
    pa, pb = bm.n_params(ours), bm.n_params(theirs)
    fwd = report.table(
        "U-Net forward: hf_ddm UNet vs matched diffusers UNet2DModel",
        ["precision", "batch", "ours ms", "diffusers ms", "ratio ours/diffusers (median per repeat)", "ours img/s",
         "diffusers img/s", "first call s ours / diffusers", "peak MiB ours", "peak MiB diffusers"],
        f"3x32x32 inputs, widths {','.join(map(str, S.fwd_widths))}, 2 res blocks per level, attention at levels 1, 2 "
        f"and the middle; parameters ours {pa:,} vs diffusers {pb:,}; {S.fwd_repeats} interleaved repeats after "
        f"{S.fwd_warmup} warm-up calls; no_grad; bf16 = weights and inputs in bfloat16 (``.to(torch.bfloat16)``); "
        "compile = ``module.compile(dynamic=False)`` (torch.compile), first call = compilation.")

    def forward_rows(label, dtype):
        for batch in S.fwd_batches:
            if over_budget():
                report.row(fwd, [label, batch, "skipped (time budget)"] + [None] * 7)
                continue
            report.guarded_row(fwd, [label, batch], lambda: measure(batch, dtype))

    @torch.no_grad()
    def measure(batch, dtype):
        fa = bm.calls("unet", ours, batch, device, dtype)
        fb = bm.calls("unet", theirs, batch, device, dtype)
        first_a, first_b = _first_call_seconds(fa, device), _first_call_seconds(fb, device)
        t_a, t_b, ratio = bm.time_pair(fa, fb, S.fwd_repeats, S.fwd_warmup, device)
        mem_a, mem_b = _peak_mib(device, fa)[1], _peak_mib(device, fb)[1]
        return [1e3 * t_a, 1e3 * t_b, ratio, batch / t_a, batch / t_b, f"{first_a:.2f} / {first_b:.2f}", mem_a, mem_b]

    forward_rows("fp32", torch.float32)
    ours.to(torch.bfloat16)
    theirs.to(torch.bfloat16)
    forward_rows("bf16", torch.bfloat16)

    if over_budget():
        report.line("\n(pipelines skipped: time budget)")
    else:
        pipeline_section(S, device, report, ours, theirs, DDPMPipeline, DDPMScheduler, PixelDiffusionPipeline)

    def compiled_rows():  # run last: four compilations, the least important rows when time is short
        for m in (ours, theirs):
            m.to(torch.bfloat16).compile(backend=S.compile_backend, dynamic=False)
        forward_rows(f"bf16 + compile ({S.compile_backend})", torch.bfloat16)

    return compiled_rows


def pipeline_section(S, device, report, ours_unet, theirs_unet, DDPMPipeline, DDPMScheduler, PixelDiffusionPipeline):
    import torch

    # fp16, not bf16: diffusers' DDPMPipeline converts its output with .numpy(), which has no bfloat16
    # (TypeError: Got unsupported ScalarType BFloat16); hf_ddm's pipelines return float32 images in any dtype.
    name = report.table(
        f"Pipelines, {S.pipe_steps} steps, fp16", ["U-Nets", "hf_ddm img/s", "diffusers img/s",
                                                    "time ratio hf_ddm/diffusers", "peak MiB hf_ddm",
                                                    "peak MiB diffusers"],
        f"batch {S.pipe_batch}, DDPMScheduler in both, output_type='np'; hf_ddm PixelDiffusionPipeline vs "
        f"diffusers DDPMPipeline, whole pipelines moved with ``.to(device, torch.float16)`` (fp16: DDPMPipeline "
        f"fails in bf16, numpy has no bfloat16); median of {S.pipe_repeats} interleaved calls after one warm-up "
        "call each.")
    sched = DDPMScheduler(num_train_timesteps=1000)

    def call(pipe):
        return lambda: pipe(batch_size=S.pipe_batch, num_inference_steps=S.pipe_steps,
                            generator=torch.Generator().manual_seed(0), output_type="np")

    def measure(unet_a, unet_b):
        a = PixelDiffusionPipeline(unet_a, DDPMScheduler.from_config(sched.config)).to(device, torch.float16)
        b = DDPMPipeline(unet=unet_b, scheduler=DDPMScheduler.from_config(sched.config)).to(device, torch.float16)
        for pipe in (a, b):
            pipe.set_progress_bar_config(disable=True)
        ca, cb = call(a), call(b)
        ca(), cb()  # warm-up
        ta, tb = [], []
        for r in range(S.pipe_repeats):
            for fn, acc in ((ca, ta), (cb, tb)) if r % 2 == 0 else ((cb, tb), (ca, ta)):
                acc.append(_first_call_seconds(fn, device))
        mta, mtb = statistics.median(ta), statistics.median(tb)
        return [S.pipe_batch / mta, S.pipe_batch / mtb, mta / mtb, _peak_mib(device, ca)[1], _peak_mib(device, cb)[1]]

    for label, unet_a, unet_b in (("matched (hf_ddm UNet vs UNet2DModel)", ours_unet, theirs_unet),
                                  ("one shared hf_ddm UNet (loop overhead)", ours_unet, ours_unet)):
        report.guarded_row(name, [label], lambda: measure(unet_a, unet_b))


# ---- 3: training loops -------------------------------------------------------------------------------------
def training_section(S, device, report, over_budget, tmp: Path, cpu: bool):
    import torch

    import bench_training as bt
    from hf_ddm.models.vae import VAE

    n = S.train_batch * (S.train_steps + S.train_warmup + 1)  # one epoch: no epoch boundary inside the timing
    data = str(synthetic_idx(tmp / "bench_data", n, S.train_resolution))
    vae_dir = tmp / "bench_vae"
    torch.manual_seed(0)
    VAE(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=S.vae_widths, layers_per_block=1,
        norm_num_groups=min(S.vae_widths[0], 32), sample_size=S.train_resolution).save_pretrained(vae_dir)
    vae = VAE.from_pretrained(vae_dir)
    latent = S.train_resolution // 2 ** (len(S.vae_widths) - 1)
    name = report.table(
        "Training images/s, bf16", ["loop", "compile", "hf_ddm img/s", "diffusers-style img/s",
                                    "ratio hf_ddm/diffusers", "peak MiB hf_ddm", "peak MiB diffusers-style"],
        f"{S.train_resolution}x{S.train_resolution}x1 synthetic data, batch {S.train_batch}, {S.train_steps} timed "
        f"optimizer steps after {S.train_warmup} (compilation) steps, AdamW + EMA + clipping in both, "
        f"{S.workers} DataLoader workers in both, TF32 on. ddpm: U-Net {S.ddpm_unet['channels']} x"
        f"{S.ddpm_unet['layers']} vs diffusers' train_unconditional.py loop; ldm: U-Net {S.ldm_unet['channels']} x"
        f"{S.ldm_unet['layers']} on 4x{latent}x{latent} latents of a VAE {','.join(map(str, S.vae_widths))}, "
        "hf_ddm with its cached latents vs train_text_to_image.py's encoding of every batch. compile: hf_ddm "
        "``--torch_compile``, diffusers-style ``Accelerator(dynamo_backend=...)``.")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    quiet = contextlib.redirect_stdout(sys.stderr)  # the scripts' own prints stay out of the Markdown
    for compile_ in (False, True):
        for loop in ("ddpm", "ldm"):
            if over_budget():
                report.row(name, [loop, compile_, "skipped (time budget)"] + [None] * 4)
                continue
            unet = S.ddpm_unet if loop == "ddpm" else S.ldm_unet
            a = SimpleNamespace(resolution=S.train_resolution, batch_size=S.train_batch, steps=S.train_steps,
                                warmup=S.train_warmup, mixed_precision="bf16", cpu=cpu, workers=S.workers,
                                compile=compile_, compile_backend=S.compile_backend, allow_tf32=True, **unet)
            run = tmp / f"{loop}_{'c' if compile_ else 'e'}"

            def measure(a=a, loop=loop, run=run):
                with quiet:
                    if loop == "ddpm":
                        ours, mem_o = _peak_mib(device, lambda: bt.run_hf_ddm(a, data, str(run)))
                    else:
                        (ours, _), mem_o = _peak_mib(device, lambda: bt.run_ldm(a, data, str(vae_dir), str(run), True))
                    theirs, mem_t = _peak_mib(device, lambda: bt.run_diffusers_style(a, data,
                                                                                     vae if loop == "ldm" else None))
                shutil.rmtree(run, ignore_errors=True)
                return [ours, theirs, ours / theirs, mem_o, mem_t]

            report.guarded_row(name, [loop, "yes" if compile_ else "no"], measure)


# ---- main -------------------------------------------------------------------------------------------------
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="Tiny sizes on the CPU, compile backend 'eager' (CI).")
    p.add_argument("--sections", default="forward,training",
                   help="Comma list of forward (U-Net forward and pipelines) and training; empty for none.")
    p.add_argument("--budget-seconds", type=float, default=None,
                   help="Wall-clock bound of the whole run, training stage included.")
    p.add_argument("--train-stage", choices=["ddpm"], default=None)
    p.add_argument("--train-seconds", type=float, default=240.0)
    p.add_argument("--train-out", default=None, help="Folder for the tar parts, samples.png, train_summary.json.")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default .data/fashion-mnist, then "
                                                    "/usr/share/datasets/fashion-mnist).")
    p.add_argument("--work", default=None, help="Scratch folder (default: a new temporary one).")
    p.add_argument("--json", default=None, help="Also write every table here.")
    args = p.parse_args(argv)
    if args.train_stage and not args.train_out:
        p.error("--train-stage needs --train-out")
    if args.train_seconds <= 0:
        p.error("--train-seconds must be > 0")
    sections = {s for s in args.sections.split(",") if s}
    if sections - {"forward", "training"}:
        p.error(f"--sections: unknown {sorted(sections - {'forward', 'training'})}")
    t0 = time.perf_counter()

    import logging
    import warnings

    import torch

    ensure_hf_ddm_pipelines()
    import diffusers

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    diffusers.utils.logging.set_verbosity_error()
    # One dynamo cache entry per compiled module instance and shape: more than the default 8 here.
    torch._dynamo.config.cache_size_limit = 64
    S = DRY if args.dry_run else FULL
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    own_tmp = args.work is None
    tmp = Path(args.work or tempfile.mkdtemp(prefix="gpu_suite_"))
    tmp.mkdir(parents=True, exist_ok=True)
    args.work = str(tmp)
    # Time the training stage needs besides --train-seconds: data, compilation, the save, samples, the tar.
    overhead = 10.0 if args.dry_run else 90.0
    reserve = args.train_seconds + overhead if args.train_stage else 0.0

    def over_budget() -> bool:  # benchmark rows stop where the training stage's time starts
        return args.budget_seconds is not None and time.perf_counter() - t0 > args.budget_seconds - reserve

    report = Report()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    report.line(f"## hf_ddm GPU suite{' (dry run)' if args.dry_run else ''}\n\n{gpu}; torch {torch.__version__}, "
                f"diffusers {diffusers.__version__}, Python {platform.python_version()}"
                + (f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""))
    later = []  # the compiled forward rows, queued by the forward section

    def forward():
        later.append(("forward-compile", inference_sections(S, device, report, over_budget)))

    jobs = []
    if "forward" in sections:
        jobs.append(("forward", forward))
    if "training" in sections:
        jobs.append(("training", lambda: training_section(S, device, report, over_budget, tmp, device.type != "cuda")))
    failed = []
    while jobs or later:
        label, job = jobs.pop(0) if jobs else later.pop(0)
        started = time.perf_counter()
        try:
            job()
        except Exception:  # one broken section must not cost the others their (GPU) minutes
            traceback.print_exc()
            failed.append(label)
            report.line(f"\n**section {label} failed**: {traceback.format_exc().strip().splitlines()[-1]}")
        report.line(f"\n({label}: {time.perf_counter() - started:.0f} s)")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.train_stage:
        seconds = args.train_seconds
        if args.budget_seconds is not None:
            seconds = min(seconds, args.budget_seconds - (time.perf_counter() - t0) - overhead)
        if seconds < (1 if args.dry_run else 30):
            report.line(f"\n**training stage skipped**: {seconds:.0f} s left of --budget-seconds")
            failed.append("train-stage")
        else:
            try:
                deadline = time.perf_counter() + seconds + overhead
                train_stage(args, S, device, report, seconds, args.dry_run, deadline)
            except Exception:
                traceback.print_exc()
                failed.append("train-stage")
                report.line(f"\n**training stage failed**: {traceback.format_exc().strip().splitlines()[-1]}")
    failed += report.errors
    report.line(f"\nsuite wall time {time.perf_counter() - t0:.0f} s" + (f"; failed: {failed}" if failed else ""))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"device": gpu, "torch": torch.__version__, "diffusers": diffusers.__version__,
                       "dry_run": args.dry_run, "failed": failed, "sections": report.sections}, f, indent=2,
                      default=str)
    if own_tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
