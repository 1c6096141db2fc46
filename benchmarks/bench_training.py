#!/usr/bin/env python
"""Training throughput (images/s), printed as a Markdown table.

A. train_ddpm's loop (``hf_ddm.training.train`` through ``train/train_ddpm.py``'s task) against a loop
   written the way diffusers' ``examples/unconditional_image_generation/train_unconditional.py`` trains
   (Accelerator, shuffled DataLoader, ``torch.randn`` noise, ``torch.randint`` timesteps,
   ``DDPMScheduler.add_noise``, MSE, ``accelerator.backward``, clipping, AdamW + cosine, EMA, per-step
   ``loss.item()`` logging). Same U-Net (hf_ddm ``UNet``, same config), batch, precision; both use EMA and
   clipping. Each side uses its own defaults: the example's ``torch.optim.AdamW()`` and ``EMAModel()``
   (per-tensor loops on the CPU), hf_ddm's fused AdamW and foreach EMA (``--optimizer_impl auto``). The two are interleaved in one process (A, B, A, B, ...), warm-up steps excluded, repeated.
B. train_ldm with cached latents against encoding every batch with the frozen VAE (``--no_latent_cache``).

    python benchmarks/bench_training.py --threads 1 --cpu --steps 30 --repeats 9
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", REPO / "train" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _reset():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _throughput(step_times, warmup, images_per_step):
    t = step_times[warmup:]
    return (len(t) - 1) * images_per_step / (t[-1] - t[0])


# gpu_suite.py passes a namespace with more fields (attention levels, norm groups, compile, workers); the
# CPU command line of this file leaves them at these defaults.
def _opt(a, name, default):
    return getattr(a, name, None) if getattr(a, name, None) is not None else default


def unet_flags(a):
    return ["--block_out_channels", a.channels, "--layers_per_block", str(a.layers), "--attention_levels",
            _opt(a, "attention", "1"), "--norm_num_groups", str(_opt(a, "norm_groups", 8)), "--attention_head_dim", "32"]


def perf_flags(a):
    """hf_ddm's GPU flags: torch.compile of the training step, DataLoader workers, TF32."""
    flags = ["--dataloader_num_workers", str(_opt(a, "workers", 0))]
    if _opt(a, "compile", False):
        flags += ["--torch_compile", "--torch_compile_backend", _opt(a, "compile_backend", "inductor")]
    if _opt(a, "allow_tf32", False):
        flags.append("--allow_tf32")
    return flags


def unet_kwargs(a, resolution, channels):
    """The U-Net of ``unet_flags`` as UNet kwargs (the diffusers-style loops build it themselves)."""
    return dict(sample_size=resolution, in_channels=channels, out_channels=channels,
                block_out_channels=tuple(int(c) for c in a.channels.split(",")), layers_per_block=a.layers,
                attention_levels=tuple(int(v) for v in _opt(a, "attention", "1").split(",") if v),
                norm_num_groups=_opt(a, "norm_groups", 8), attention_head_dim=32)


def run_hf_ddm(a, data, out):
    mod = _load("train_ddpm")
    argv = ["--data_dir", data, "--channels", "1", "--resolution", str(a.resolution), *unet_flags(a),
            "--train_batch_size", str(a.batch_size), "--max_train_steps", str(a.steps + a.warmup),
            "--checkpointing_steps", "1000000", "--report_to", "none", "--lr_warmup_steps", "0", "--use_ema",
            "--output_dir", out, "--seed", "0", "--mixed_precision", a.mixed_precision, "--adam_beta1", "0.95",
            "--adam_weight_decay", "1e-6"] + perf_flags(a) + (["--cpu"] if a.cpu else [])
    _reset()
    args = mod.parse_args(mod.build_parser(), argv)
    from hf_ddm.training import build_scheduler, load_image_dataset
    from hf_ddm.training.components import build_model, unet_kwargs_from_args
    from hf_ddm.models.unet import UNet

    kwargs = unet_kwargs_from_args(args)
    kwargs.update(sample_size=args.resolution, in_channels=1, out_channels=1)
    ds, info = load_image_dataset(args, 1)
    task = mod.DDPMTask(UNet(**kwargs), build_scheduler(args), False)
    task.save = lambda modules, output_dir: None  # time the loop, not the final save
    from hf_ddm.training import train

    res = train(args, task, ds, info)
    _reset()
    return _throughput(res.step_times, a.warmup + 1, a.batch_size)


def _data_args(data_dir, resolution):
    from hf_ddm.training import add_data_args

    p = argparse.ArgumentParser()
    add_data_args(p)
    return p.parse_args(["--data_dir", str(data_dir), "--resolution", str(resolution)])


def run_diffusers_style(a, data, vae=None):
    """The loop of diffusers' train_unconditional.py, minus its argument parsing/saving. With a frozen ``vae``
    it trains in its latent space, encoding every batch as diffusers' train_text_to_image.py does.
    ``a.compile`` compiles the U-Net the diffusers way, ``accelerate launch --dynamo_backend``."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from torch.utils.data import DataLoader

    from hf_ddm.models.unet import UNet
    from hf_ddm.training.data import collate

    from hf_ddm.training import load_image_dataset

    _reset()
    dynamo = _opt(a, "compile_backend", "inductor") if _opt(a, "compile", False) else "no"
    accelerator = Accelerator(mixed_precision=a.mixed_precision, cpu=a.cpu, dynamo_backend=dynamo)
    ds, _ = load_image_dataset(_data_args(data, a.resolution), 1)
    torch.manual_seed(0)
    if vae is None:
        model = UNet(**unet_kwargs(a, a.resolution, 1))
    else:
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        model = UNet(**unet_kwargs(a, a.resolution // factor, vae.config.latent_channels))
        # as train_text_to_image.py: the frozen VAE in the mixed-precision dtype, encoding outside autocast
        vae_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.mixed_precision, torch.float32)
        vae = vae.to(accelerator.device, vae_dtype).eval().requires_grad_(False)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75,
                   model_cls=UNet, model_config=model.config)
    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    dl = DataLoader(ds, batch_size=a.batch_size, shuffle=True, collate_fn=collate,
                    num_workers=_opt(a, "workers", 0))
    lr_sched = get_scheduler("cosine", optimizer=opt, num_warmup_steps=0, num_training_steps=a.steps + a.warmup)
    model, opt, dl, lr_sched = accelerator.prepare(model, opt, dl, lr_sched)
    ema.to(accelerator.device)
    times, step = [time.perf_counter()], 0
    while step < a.steps + a.warmup:
        for batch in dl:
            clean = batch["pixel_values"]
            if vae is not None:
                with torch.no_grad():
                    clean = vae.encode(clean.to(vae.dtype)).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn(clean.shape, dtype=clean.dtype, device=clean.device)
            t = torch.randint(0, sched.config.num_train_timesteps, (clean.shape[0],), device=clean.device).long()
            noisy = sched.add_noise(clean, noise, t)
            with accelerator.accumulate(model):
                pred = model(noisy, t).sample
                loss = F.mse_loss(pred.float(), noise.float())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                lr_sched.step()
                opt.zero_grad()
            if accelerator.sync_gradients:
                ema.step(model.parameters())
                step += 1
                times.append(time.perf_counter())
                _ = {"loss": loss.detach().item(), "lr": lr_sched.get_last_lr()[0], "step": step}
            if step >= a.steps + a.warmup:
                break
    _reset()
    return _throughput(times, a.warmup + 1, a.batch_size)


def run_ldm(a, data, vae_dir, out, cached: bool):
    mod = _load("train_ldm")
    argv = ["--vae_path", vae_dir, "--data_dir", data, "--resolution", str(a.resolution), *unet_flags(a),
            "--train_batch_size", str(a.batch_size), "--max_train_steps", str(a.steps + a.warmup),
            "--checkpointing_steps", "1000000", "--report_to", "none", "--lr_warmup_steps", "0",
            "--output_dir", out, "--mixed_precision", a.mixed_precision, "--use_ema"] + perf_flags(a)
    argv += ["--cpu"] if a.cpu else []
    if not cached:
        argv.append("--no_latent_cache")
    _reset()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the script's own lines (temporary paths) stay out of the results
        res = mod.main(argv)
    total = time.perf_counter() - t0
    _reset()
    return _throughput(res.step_times, a.warmup + 1, a.batch_size), total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--channels", type=str, default="32,64")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--mixed_precision", type=str, default="no")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip_ldm", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    import logging

    logging.disable(logging.WARNING)
    from test_train_common import write_idx

    tmp = Path(tempfile.mkdtemp(prefix="bench_training_"))
    data = str(write_idx(tmp / "data", n=a.examples, size=a.resolution))
    device = "cuda" if torch.cuda.is_available() and not a.cpu else "cpu"

    ours, theirs = [], []
    for r in range(a.repeats):  # interleaved A/B
        ours.append(run_hf_ddm(a, data, str(tmp / f"ddpm{r}")))
        theirs.append(run_diffusers_style(a, data))
    med_o, med_t = statistics.median(ours), statistics.median(theirs)
    print(f"\n### Training throughput ({device}, {a.resolution}x{a.resolution}x1, batch {a.batch_size}, "
          f"U-Net {a.channels} x{a.layers}, precision {a.mixed_precision}, {a.steps} timed steps after {a.warmup} "
          f"warm-up, {a.repeats} interleaved repeats)\n")
    print("| loop | images/s (median) | all repeats |")
    print("|---|---|---|")
    print(f"| hf_ddm train_ddpm loop | {med_o:.1f} | {', '.join(f'{v:.1f}' for v in ours)} |")
    print(f"| diffusers train_unconditional-style loop | {med_t:.1f} | {', '.join(f'{v:.1f}' for v in theirs)} |")
    pairs = [o / t for o, t in zip(ours, theirs)]
    print(f"| ratio hf_ddm / diffusers (of medians) | {med_o / med_t:.3f} | |")
    print(f"| ratio per interleaved pair (median) | {statistics.median(pairs):.3f} | "
          f"{', '.join(f'{v:.3f}' for v in pairs)}; hf_ddm faster in {sum(v > 1 for v in pairs)}/{len(pairs)} |")

    if not a.skip_ldm:
        from hf_ddm.models.vae import VAE

        vae_dir = tmp / "vae"
        VAE(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(32, 64), norm_num_groups=8,
            sample_size=a.resolution).save_pretrained(vae_dir)
        la = argparse.Namespace(**vars(a))
        la.resolution = a.resolution  # latent = resolution / 2
        cached, fresh, cached_total, fresh_total = [], [], [], []
        for r in range(a.repeats):
            v, t = run_ldm(la, data, str(vae_dir), str(tmp / f"ldm_c{r}"), True)
            cached.append(v)
            cached_total.append(t)
            v, t = run_ldm(la, data, str(vae_dir), str(tmp / f"ldm_f{r}"), False)
            fresh.append(v)
            fresh_total.append(t)
        print(f"\n### train_ldm: cached latents vs VAE encoding every step (VAE 32,64 -> 4x{a.resolution // 2}^2 "
              "latents)\n")
        print("| data path | images/s (median) | wall s incl. set-up and cache build (median) |")
        print("|---|---|---|")
        print(f"| cached latents | {statistics.median(cached):.1f} | {statistics.median(cached_total):.1f} |")
        print(f"| encode every step | {statistics.median(fresh):.1f} | {statistics.median(fresh_total):.1f} |")
        print(f"| ratio cached / encode | {statistics.median(cached) / statistics.median(fresh):.2f} | |")


if __name__ == "__main__":
    main()
