"""Sample quality of a saved hf_ddm pipeline on Fashion-MNIST, measured with the pinned reference
network (``benchmarks/reference_classifier.py``).

    python benchmarks/eval_quality.py PIPELINE_DIR --scheduler vp-ddim --steps 50 --num_samples 10000 \\
        --nll_samples 500 --floor --json out.json
    python benchmarks/eval_quality.py --floor --num_samples 10000        # the floor alone

Metrics (all against the Fashion-MNIST *test* set, 10000 images):

* ``fd``: Fréchet distance of the reference network's 128-d penultimate features ("FID" with a
  Fashion-MNIST network instead of Inception; not comparable with Inception FIDs). FD is biased
  upward at small N: compare runs at equal ``num_samples``, and with the floor at the same N.
* ``fd_inf``: FD extrapolated to N = infinity (Chong & Forsyth 2020, ``quality_metrics.
  frechet_distance_extrapolated``): FD on subsets of N/4 (at least 256) to N samples, a line in 1/N
  taken to 0. Comparable across N, but noisier than ``fd`` at small N; only for N > 256. The floor's
  ``fd_inf`` (~0.04) is the real train/test difference, without the shared small-N bias that makes
  equal-N ratios look better than they are.
* ``precision`` / ``recall``: k-NN manifold precision and recall (Kynkäänniemi et al. 2019, k = 3),
  in the same features, the N generated samples against the N first test images (N <= 10000).
* ``density`` / ``coverage`` (Naeem et al. 2020, same k-NN balls). Precision (and density) are
  inflated by real outliers with large balls: read them together with FD, recall and coverage.
  Sanity scale (reference v1, "pad", N = 10000; FD / precision / recall / density / coverage):
    train subset (the floor)      0.107 / 0.848 / 0.834 / 1.012 / 0.877
    train + N(0, 0.05^2) noise    1.79  / 0.756 / 0.762 / 0.790 / 0.685
    train + N(0, 0.2^2) noise     19.2  / 0.408 / 0.263 / 0.295 / 0.150
    train, 3x3 box blur           17.2  / 0.735 / 0.088 / 0.667 / 0.246
    pure N(0, 1) noise images     72.5  / 0.810 / 0.000 / 0.691 / 0.011
* ``class_accuracy`` (conditional pipelines: class-conditional U-Nets, text models prompted with
  the class names, classifier-guided): fraction of samples the reference network assigns to the
  requested class; classes are cycled evenly (sample i asks for class i mod 10).
* ``bits_per_dim`` on the first ``--nll_samples`` test images, with the pipeline's *saved* scheduler
  (the process the model was trained on), not the sampling scheduler: DDPM's variational bound
  (``hf_ddm.likelihood.ddpm_bound``, discrete decoder, an upper bound on the 8-bit NLL) for discrete
  VP models; the probability-flow ODE likelihood (``ode_log_likelihood`` from t = ``--likelihood_t_start``,
  Hutchinson trace) of uniformly dequantised images, also an upper bound in expectation, for continuous SDE models; class-conditional models are evaluated at
  the true test label (log p(x | y)). Skipped (with the reason in ``bits_per_dim_note``) for latent
  models -- the diffusion density is over VAE latents, and the decoder is not a normalised density
  over pixels, so no image bits/dim follows -- and for schedulers without a likelihood routine.
* ``speckled_fraction``: fraction of samples with salt-and-pepper speckle, at least 3 pixels more than
  0.5 from the median of a flat 3x3 neighbourhood (``quality_metrics.impulse_pixels``): 1.6% of the test
  images, about 19% of the epsilon-trained `sde` model's probability-flow ODE samples.
* ``--floor``: the same metrics for real training images (a fixed random subset of the same N)
  against the test set: the best a perfect generator can score at this N.

Samples are quantised to 8 bits (as saved images would be) before the reference network sees them.
``--data_transform``: how 28x28 Fashion-MNIST becomes the 32x32 test set: "pad" (2 px of -1, the
reference network's own input convention) or "resize" (bilinear 28 -> 32, what
``hf_ddm.training.data`` does with IDX files). Use the one the model was trained with.

Seeds: batch b draws from ``torch.Generator().manual_seed(seed * 100003 + b)``, so results depend on
(seed, batch_size, num_samples) and nothing else.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from typing import Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality_metrics as qm  # noqa: E402
import reference_classifier as rc  # noqa: E402

# The library's sampler catalogue by name; anything else: "module:Class" or a diffusers class name.
from hf_ddm.catalogue import SAMPLERS  # noqa: E402
from hf_ddm.training.hub import recorded_arg, recorded_command  # noqa: E402

SCHEDULERS = {name: (spec.module, spec.cls, dict(spec.overrides)) for name, spec in SAMPLERS.items()}


def log(msg: str):
    print(f"[eval_quality {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ real data
def real_images(split: str, transform: str, data_dir: str, n: Optional[int] = None, seed: Optional[int] = None):
    """Fashion-MNIST ``split`` as float (N, 1, 32, 32) in [-1, 1] on the 8-bit grid, and labels.
    ``seed``: a fixed random subset of ``n``; otherwise the first ``n``."""
    images, labels = rc.load_fashion_mnist(split, data_dir)
    if n is not None and n < len(images):
        idx = np.random.default_rng(seed).permutation(len(images))[:n] if seed is not None else np.arange(n)
        images, labels = images[idx], labels[idx]
    x = torch.from_numpy(np.array(images, copy=True))[:, None]
    if transform == "pad":
        x = rc.to_reference_input(x)
    elif transform == "resize":
        from hf_ddm.training.data import _to_model_range

        x = quantize(_to_model_range(x, 32, 1))
    else:
        raise ValueError(f"data_transform must be 'pad' or 'resize', got {transform!r}")
    return x, torch.from_numpy(labels)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> the nearest of the 256 8-bit levels, still in [-1, 1]."""
    return torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


@torch.no_grad()
def embed(model, x: torch.Tensor, batch_size: int = 500):
    """(features float64 numpy (N, 128), logits (N, 10))."""
    feats, logits = [], []
    for i in range(0, x.shape[0], batch_size):
        f = model.features(x[i: i + batch_size].float())
        feats.append(f)
        logits.append(model.head(f))
    return torch.cat(feats).double().numpy(), torch.cat(logits)


def compare(feats, logits, test_feats, labels=None, k: int = 3) -> dict:
    """FD, precision/recall (against as many test points as samples, up to all), class accuracy."""
    n = feats.shape[0]
    out = {"num_samples": n, "fd": qm.frechet_distance_features(feats, test_feats)}
    try:
        ext = qm.frechet_distance_extrapolated(feats, test_feats)
        out.update(fd_inf=ext["fd_inf"], fd_inf_slope=ext["slope"])
    except ValueError:  # too few samples to extrapolate from (the rule lives in quality_metrics)
        pass
    out.update(qm.manifold_metrics(test_feats[: min(n, len(test_feats))], feats, k=k))
    pred = logits.argmax(1)
    out["class_histogram"] = torch.bincount(pred, minlength=10).tolist()
    if labels is not None:
        out["class_accuracy"] = float((pred == labels.to(pred)).float().mean())
    return out


# ---------------------------------------------------------------------------------------- pipelines
def make_scheduler(name: str, base_config, kwargs: dict):
    if name in (None, "", "default"):
        return None
    if name in SCHEDULERS:
        module, cls_name, over = SCHEDULERS[name]
    elif ":" in name:
        module, cls_name = name.rsplit(":", 1)
        over = {}
    else:
        module, cls_name, over = "diffusers", name, {}
    cls = getattr(importlib.import_module(module), cls_name, None)
    if cls is None:
        raise SystemExit(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}, or module:Class, "
                         "or a diffusers scheduler class name")
    # A named scheduler runs its own grid: the folder's optimized steps are what the default rows measure.
    base = {k: v for k, v in dict(base_config).items() if k != "optimized_timesteps"}
    return cls.from_config(base, **{**over, **kwargs})


def conditioning(pipe, pipe_dir: str):
    """(kind, num_classes, prompts-or-None): kind in none / class / text / guided."""
    name = type(pipe).__name__
    if name == "ClassifierGuidedPipeline":
        return "guided", int(pipe.classifier.config.num_classes), None
    if getattr(pipe, "text_encoder", None) is not None:
        names, template = rc.CLASS_NAMES, "a photo of a {}"
        path = os.path.join(pipe_dir, "class_names.json")
        if os.path.isfile(path):
            with open(path) as f:
                meta = json.load(f)
            names, template = meta.get("class_names", names), meta.get("prompt_template", template)
        return "text", len(names), [template.format(c) for c in names]
    k = getattr(pipe.unet.config, "num_class_embeds", None)
    if k:
        return "class", int(k), None
    return "none", 0, None


@torch.no_grad()
def generate(pipe, num_samples, batch_size, steps, guidance_scale, seed, cond, eta=None, guidance_interval=None):
    """Samples as float (N, 1, 32, 32) in [-1, 1] (8-bit quantised), requested labels (or None), NFE."""
    kind, k, prompts = cond
    out, labels_all, nfe, t0 = [], [], None, time.time()
    num_batches = math.ceil(num_samples / batch_size)
    for b in range(num_batches):
        lo, hi = b * batch_size, min(num_samples, (b + 1) * batch_size)
        kw = dict(batch_size=hi - lo, num_inference_steps=steps, output_type="pt",
                  generator=torch.Generator().manual_seed(seed * 100003 + b))
        if eta is not None:
            kw["eta"] = eta
        labels = None
        if kind != "none":
            labels = torch.arange(lo, hi) % min(k, 10)
            labels_all.append(labels)
            kw["guidance_scale"] = guidance_scale
            if guidance_interval is not None:
                kw["guidance_interval"] = guidance_interval
            if kind == "text":
                kw["prompt"] = [prompts[i] for i in labels.tolist()]
            else:
                kw["class_labels"] = labels
        images = pipe(**kw).images  # [0, 1] NCHW
        if not torch.is_tensor(images):
            images = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2)
        images = images.float().cpu()
        if images.shape[1] == 3:  # a colour model: luma, as PIL's convert("L")
            images = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = quantize(images * 2 - 1)
        out.append(rc.pad_to_32(x))
        nfe = getattr(pipe, "num_model_evaluations", None)
        el = time.time() - t0
        log(f"generated {hi}/{num_samples} ({el:.0f}s, ETA {el / (b + 1) * (num_batches - b - 1):.0f}s)")
    return torch.cat(out), (torch.cat(labels_all) if labels_all else None), nfe


def bits_per_dim(pipe, scheduler, cond, x, y, batch_size, seed, ode_steps, probes, t_start=1e-5):
    """(mean bits/dim, std error, method, note) on test images x (labels y)."""
    if getattr(pipe, "vae", None) is not None:
        return None, None, None, ("skipped: latent model -- its diffusion density is over VAE latents and the "
                                  "decoder is not a normalised density over pixels, so no image bits/dim follows")
    process = getattr(scheduler, "process", None)
    if process is None:
        return None, None, None, f"skipped: {type(scheduler).__name__} has no hf_ddm noise process (no likelihood routine)"
    from hf_ddm.likelihood import ddpm_bound, ode_log_likelihood
    from hf_ddm.processes import DiscreteVP

    kind = cond[0]
    unet = pipe.unet
    if process.continuous:
        method = (f"ode_log_likelihood (probability-flow ODE from t={t_start:g}, RK4 {ode_steps} steps, Hutchinson "
                  f"{probes} probe(s)) of uniformly dequantised test images (one draw per image inside its 8-bit "
                  "bin): an upper bound on the discrete bits/dim in expectation, like ddpm_bound")
    elif isinstance(process, DiscreteVP):
        method = "ddpm_bound (variational bound, discrete 8-bit decoder; an upper bound)"
    else:
        return None, None, None, f"skipped: no likelihood routine for {type(process).__name__}"
    if kind == "text":
        return None, None, None, "skipped: text-conditional pixel model (no likelihood routine wired)"
    vals, t0 = [], time.time()
    for i in range(0, x.shape[0], batch_size):
        xb = x[i: i + batch_size]
        labels = y[i: i + batch_size] if kind == "class" else None

        def model(xt, t, labels=labels):
            kw = {"class_labels": labels} if labels is not None else {}
            return unet(xt.to(unet.dtype), t, **kw).sample

        g = torch.Generator().manual_seed(seed + i)
        if process.continuous:
            # Uniform dequantisation: E_u log p(x + u) + log(bin volume) <= log P(x) (Jensen), so a continuous
            # density at the grid points themselves (which can be arbitrarily large) is never reported.
            xq = xb + (torch.rand(xb.shape, generator=g, dtype=xb.dtype) - 0.5) * (2.0 / 255)
            res = ode_log_likelihood(model, scheduler, xq, method="rk4", num_steps=ode_steps, num_probes=probes,
                                     generator=g, t_start=t_start, convention="dequantized")
        else:
            res = ddpm_bound(model, scheduler, xb, generator=g)
        vals.append(res.bits_per_dim.double())
        log(f"bits/dim {i + xb.shape[0]}/{x.shape[0]} ({time.time() - t0:.0f}s): running mean "
            f"{torch.cat(vals).mean():.4f}")
    v = torch.cat(vals)
    se = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    note = "class-conditional: log p(x | true label)" if kind == "class" else ""
    return float(v.mean()), se, method, note


# ----------------------------------------------------------------------------------------------- main
def markdown(res: dict) -> str:
    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    head = ("| pipeline | scheduler | steps | NFE | w | N | FD | FD∞ | precision | recall | density | coverage "
            "| class acc | bits/dim |")
    sep = "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    rows = []
    if res.get("pipeline"):
        bpd = res.get("bits_per_dim")
        bpd_s = "—" if bpd is None else f"{bpd:.3f} ± {res['bits_per_dim_se']:.3f} (n={res['nll_samples']})"
        rows.append(f"| {os.path.basename(os.path.normpath(res['pipeline']))} | {res['scheduler']} | {res['steps']} | "
                    f"{f(res.get('nfe'), 'd')} | {res['guidance_scale']} | {res['num_samples']} | {res['fd']:.3f} | "
                    f"{f(res.get('fd_inf'), '.3f')} | "
                    f"{res['precision']:.3f} | {res['recall']:.3f} | {res['density']:.3f} | {res['coverage']:.3f} | "
                    f"{f(res.get('class_accuracy'), '.3f')} | {bpd_s} |")
    if res.get("floor"):
        fl = res["floor"]
        rows.append(f"| floor: train subset vs test | — | — | — | — | {fl['num_samples']} | {fl['fd']:.3f} | "
                    f"{f(fl.get('fd_inf'), '.3f')} | {fl['precision']:.3f} | {fl['recall']:.3f} | {fl['density']:.3f} | {fl['coverage']:.3f} | "
                    f"{fl['class_accuracy']:.3f} | — |")
    return "\n".join([head, sep, *rows])


def guidance_interval_used(pipe, interval):
    """The interval a conditional run guides in, as model_index.json stores it (None: every level):
    ``interval`` (``--guidance_interval``), else the folder's default; a pipeline without intervals takes none."""
    if not hasattr(pipe, "guidance_interval_or_default"):
        if interval is not None:
            raise SystemExit(f"--guidance_interval: {type(pipe).__name__} has no guidance interval")
        return None
    from hf_ddm.guidance import interval_config

    return interval_config(pipe.guidance_interval_or_default(interval))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pipeline", nargs="?", help="saved pipeline folder (DiffusionPipeline.from_pretrained)")
    p.add_argument("--scheduler", default="default",
                   help=f"sampler: default (the saved one), {', '.join(SCHEDULERS)}, module:Class, or a diffusers class")
    p.add_argument("--scheduler_kwargs", default="{}", help="JSON config overrides for the scheduler")
    p.add_argument("--steps", type=int, default=50, help="num_inference_steps")
    p.add_argument("--guidance_scale", type=float, default=1.0)
    p.add_argument("--guidance_interval", nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="guide only at noise levels sigma in [LOW, HIGH] (HIGH inf: no upper end; 0 inf: every "
                        "level); default: the folder's default_guidance_interval")
    p.add_argument("--eta", type=float, default=None)
    p.add_argument("--num_samples", type=int, default=10000)
    p.add_argument("--batch_size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=3, help="k of the k-NN manifolds")
    p.add_argument("--nll_samples", type=int, default=0, help="test images for bits/dim (0: skip)")
    p.add_argument("--nll_batch_size", type=int, default=50)
    p.add_argument("--ode_steps", type=int, default=100, help="RK4 steps of the ODE likelihood")
    p.add_argument("--hutchinson_probes", type=int, default=1)
    p.add_argument("--likelihood_t_start", type=float, default=1e-5,
                   help="where the ODE likelihood starts (score_sde's 1e-5); continuous models only")
    p.add_argument("--floor", action="store_true", help="also the train-subset-vs-test floor at the same N")
    p.add_argument("--data_transform", choices=("pad", "resize"), default="pad")
    p.add_argument("--data_dir", default=rc.DEFAULT_DATA_DIR)
    p.add_argument("--test_samples", type=int, default=10000,
                   help="first N test images as the reference set (default all 10000; fewer only for smoke tests)")
    p.add_argument("--reference_dir", default=rc.REFERENCE_DIR)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--grid", default=None, help="also save the first 100 samples as a 10-column PNG grid "
                   "(conditional models: column j is class j)")
    p.add_argument("--features", default=None, help="also save the samples' reference features and logits "
                   "here (.npz), to recompute metrics without sampling again")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.pipeline is None and not args.floor:
        p.error("give a pipeline folder, or --floor for the floor alone")
    if args.num_samples < 2 * args.k + 2:
        p.error(f"--num_samples must be at least {2 * args.k + 2}")
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()

    ref = rc.load_reference(args.reference_dir)
    log(f"reference network {ref.version} (sha256 {ref.sha256[:16]}), data_transform={args.data_transform}")
    x_test, y_test = real_images("test", args.data_transform, args.data_dir, n=args.test_samples)
    test_feats, _ = embed(ref, x_test)
    log(f"test set: {len(x_test)} images embedded")
    if args.num_samples < 10000:
        log(f"NOTE: {args.num_samples} samples (< 10000): FD is biased upward; compare only at equal N")

    given = sys.argv[1:] if argv is None else argv
    res = {"command": recorded_command("python benchmarks/eval_quality.py", given),
           "reference_version": ref.version, "reference_sha256": ref.sha256, "data_transform": args.data_transform,
           "k": args.k, "seed": args.seed, "batch_size": args.batch_size, "test_set_size": len(x_test)}
    if args.pipeline is not None:
        from diffusers import DiffusionPipeline

        # diffusers resolves a saved component's library ("hf_ddm.models.unet") only if it is already
        # imported; `import hf_ddm` alone does not import these (diffusers never imports them for you).
        for mod in ("hf_ddm.models", "hf_ddm.schedulers.vp", "hf_ddm.schedulers.ve", "hf_ddm.schedulers.sde"):
            importlib.import_module(mod)

        # An hf_ddm folder loads as the installed class it names (as the Space does), so the evaluation runs
        # this checkout's code, not the copy the portable folder carries; anything else through diffusers.
        from hf_ddm import pipelines as hf_pipelines

        name = DiffusionPipeline.load_config(args.pipeline).get("_class_name")
        installed = getattr(hf_pipelines, name[1] if isinstance(name, (list, tuple)) else str(name), None)
        if isinstance(installed, type) and issubclass(installed, DiffusionPipeline):
            pipe = installed.from_pretrained(args.pipeline).to(args.device)
        else:
            pipe = DiffusionPipeline.from_pretrained(args.pipeline, trust_remote_code=True).to(args.device)
        pipe.set_progress_bar_config(disable=True)
        train_scheduler = pipe.scheduler
        new = make_scheduler(args.scheduler, pipe.scheduler.config, json.loads(args.scheduler_kwargs))
        if new is not None:
            pipe.scheduler = new
        cond = conditioning(pipe, args.pipeline)
        log(f"pipeline {type(pipe).__name__} from {args.pipeline}; scheduler {type(pipe.scheduler).__name__} "
            f"({args.scheduler}); conditioning {cond[0]}{f' ({cond[1]} classes, cycled)' if cond[1] else ''}")
        pipeline = recorded_arg(args.pipeline)
        if cond[0] == "none" and args.guidance_interval is not None:
            raise SystemExit(f"--guidance_interval: {args.pipeline} samples unconditionally, nothing is guided")
        res.update(pipeline=pipeline, pipeline_class=type(pipe).__name__, conditioning=cond[0],
                   scheduler=args.scheduler, scheduler_class=type(pipe.scheduler).__name__,
                   scheduler_config={k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")},
                   steps=args.steps, guidance_scale=args.guidance_scale, eta=args.eta,
                   guidance_interval=(None if cond[0] == "none"
                                      else guidance_interval_used(pipe, args.guidance_interval)))
        samples, labels, nfe = generate(pipe, args.num_samples, args.batch_size, args.steps, args.guidance_scale,
                                        args.seed, cond, args.eta, args.guidance_interval)
        if args.grid:
            from hf_ddm.training.utils import save_grid

            save_grid((samples[:100] + 1) / 2, args.grid, nrow=10)
            res["grid"] = recorded_arg(args.grid)
            log(f"wrote {args.grid}")
        feats, logits = embed(ref, samples)
        if not np.isfinite(feats).all():
            raise SystemExit("the samples gave non-finite features (NaN/inf images?)")
        res.update(compare(feats, logits, test_feats, labels, args.k), nfe=nfe,
                   speckled_fraction=qm.speckled_fraction(samples))
        if args.features:
            np.savez_compressed(args.features, features=feats, logits=logits.numpy(),
                                labels=np.array([]) if labels is None else labels.numpy())
            res["features"] = recorded_arg(args.features)
        res.setdefault("class_accuracy", None)
        res["sampling_seconds"] = round(time.time() - t_start, 1)
        if args.nll_samples > 0:
            n = min(args.nll_samples, len(x_test))
            bpd, se, method, note = bits_per_dim(pipe, train_scheduler, cond, x_test[:n], y_test[:n],
                                                 args.nll_batch_size, args.seed, args.ode_steps, args.hutchinson_probes,
                                                 args.likelihood_t_start)
            res.update(bits_per_dim=bpd, bits_per_dim_se=se, bits_per_dim_method=method, bits_per_dim_note=note,
                       nll_samples=n if bpd is not None else 0)
            log(f"bits/dim: {note}" if bpd is None else f"bits/dim {bpd:.4f} ± {se:.4f} on {n} test images, {method}")
        else:
            res.update(bits_per_dim=None, bits_per_dim_se=None, bits_per_dim_method=None,
                       bits_per_dim_note="not requested (--nll_samples 0)", nll_samples=0)
        log(f"FD {res['fd']:.4f}  FD_inf {res.get('fd_inf', float('nan')):.4f}  precision {res['precision']:.4f}  recall {res['recall']:.4f}  "
            f"density {res['density']:.4f}  coverage {res['coverage']:.4f}  "
            f"class accuracy {res['class_accuracy']}  (N={res['num_samples']}, NFE={nfe})")
    if args.floor:
        n = min(args.num_samples, 60000)
        x_tr, y_tr = real_images("train", args.data_transform, args.data_dir, n=n, seed=0)
        f_tr, l_tr = embed(ref, x_tr)
        fl = compare(f_tr, l_tr, test_feats, y_tr, args.k)
        fl["speckled_fraction"] = qm.speckled_fraction(x_tr)
        fl["subset"] = f"train, fixed random subset (numpy seed 0) of {n}"
        res["floor"] = fl
        log(f"floor (train {n} vs test {len(x_test)}): FD {fl['fd']:.4f}  FD_inf {fl.get('fd_inf', float('nan')):.4f}  precision {fl['precision']:.4f}  "
            f"recall {fl['recall']:.4f}  density {fl['density']:.4f}  coverage {fl['coverage']:.4f}  reference accuracy {fl['class_accuracy']:.4f}")
    res["seconds"] = round(time.time() - t_start, 1)
    print(markdown(res))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        log(f"wrote {args.json}")
    return res


if __name__ == "__main__":
    main()
