"""Copy a trained pipeline folder into the Space as a shipped checkpoint: fp16 weights (the Space loads
them as float32), the training model card extended with hardware, wall time, the recipe command and the
evaluation results, and the last validation grid.

    python train/ship_checkpoint.py RUN_DIR space/models/NAME --command "bash train/fashion_mnist_recipe.sh ..." \
        [--eval results.json ...] [--extra_runs VAE_RUN_DIR ...] [--component_card vae=VAE_RUN_DIR] \
        [--component_eval vae=eval_vae.json]

``--component_card`` gives a component its own model card (the card its training run wrote, with the
usage line pointing at the subfolder, plus its own ``--component_eval`` results), so e.g. the VAE inside an
LDM folder is documented where it lies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil

import torch
from diffusers import DiffusionPipeline

import hf_ddm.pipelines as pipelines


METRIC_KEYS = ("scheduler", "steps", "guidance_scale", "num_samples", "fd", "fd_inf", "precision", "recall", "density",
               "coverage", "class_accuracy", "bits_per_dim", "reference_version", "mse_per_pixel", "psnr_db",
               "kl_nats_per_image", "fd_reconstructions_vs_test")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("dest")
    p.add_argument("--command", required=True, help="the command that trained it (goes into the card)")
    p.add_argument("--eval", nargs="*", default=[], help="eval_quality / eval_vae JSON files")
    p.add_argument("--extra_runs", nargs="*", default=[], help="runs of other stages (their train_summary.json)")
    p.add_argument("--component_card", nargs="*", default=[], metavar="NAME=RUN_DIR",
                   help="write RUN_DIR's model card into the component subfolder NAME")
    p.add_argument("--component_eval", nargs="*", default=[], metavar="NAME=JSON",
                   help="evaluation results listed in component NAME's card")
    args = p.parse_args(argv)

    index = DiffusionPipeline.load_config(args.run_dir)
    cls = getattr(pipelines, index["_class_name"][1])
    pipe = cls.from_pretrained(args.run_dir)
    if os.path.isdir(args.dest):
        shutil.rmtree(args.dest)
    pipe.to(torch.float16).save_pretrained(args.dest)

    card_path = os.path.join(args.run_dir, "README.md")
    card = open(card_path).read() if os.path.exists(card_path) else f"# {os.path.basename(args.dest)}\n"
    card = card.replace(args.run_dir.rstrip("/"), os.path.basename(args.dest.rstrip("/")))
    lines = ["", "## How this checkpoint was made", "", f"- command: `{args.command}`",
             f"- hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU "
             f"(torch {torch.__version__})", "- weights stored as float16 (the Space and `dtype=torch.float32` "
             "loading upcast them)", "- images: Fashion-MNIST 28x28 padded with the background to 32x32"]
    for run in [args.run_dir, *args.extra_runs]:
        summary = os.path.join(run, "train_summary.json")
        if os.path.exists(summary):
            s = json.load(open(summary))
            lines.append(f"- {s.get('task', os.path.basename(run))}: {s.get('global_step')} steps, "
                         f"{s.get('train_seconds_this_run', 0) / 60:.1f} min of training")
    lines += eval_lines(args.eval)
    own = os.path.join(args.run_dir, "train_summary.json")
    grid = json.load(open(own)).get("sample_grid") if os.path.exists(own) else None
    if grid and os.path.exists(os.path.join(args.run_dir, grid)):
        os.makedirs(os.path.join(args.dest, "samples"), exist_ok=True)
        shutil.copyfile(os.path.join(args.run_dir, grid), os.path.join(args.dest, grid))
    with open(os.path.join(args.dest, "README.md"), "w") as f:
        f.write(card.rstrip() + "\n" + "\n".join(lines) + "\n")
    write_component_cards(args)
    print("shipped", args.dest)


def eval_lines(paths):
    if not paths:
        return []
    lines = ["", "## Evaluation", ""]
    for path in paths:
        res = json.load(open(path))
        keep = {k: res[k] for k in METRIC_KEYS if res.get(k) is not None}
        lines.append(f"- `{os.path.basename(path)}`: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in keep.items()))
        if res.get("command"):
            lines.append(f"  (`{res['command']}`)")
    return lines


def _pairs(items, flag):
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{flag} expects NAME=VALUE, got {item!r}")
        out.setdefault(name, []).append(value)
    return out


def write_component_cards(args):
    evals = _pairs(args.component_eval, "--component_eval")
    dest_name = os.path.basename(args.dest.rstrip("/"))
    for name, (run,) in _pairs(args.component_card, "--component_card").items():
        folder = os.path.join(args.dest, name)
        if not os.path.isdir(folder):
            raise SystemExit(f"--component_card {name}=...: {args.dest} has no component folder {name!r}")
        card = open(os.path.join(run, "README.md")).read()
        card = card.replace(f'"{run.rstrip("/")}"', f'"{dest_name}", subfolder="{name}"')
        card = card.replace(run.rstrip("/"), f"{dest_name}/{name}")
        summary = os.path.join(run, "train_summary.json")
        grid = json.load(open(summary)).get("sample_grid") if os.path.exists(summary) else None
        if grid and os.path.exists(os.path.join(run, grid)):
            os.makedirs(os.path.join(folder, "samples"), exist_ok=True)
            shutil.copyfile(os.path.join(run, grid), os.path.join(folder, grid))
        with open(os.path.join(folder, "README.md"), "w") as f:
            f.write(card.rstrip() + "\n" + "\n".join(eval_lines(evals.get(name, []))) + "\n")


if __name__ == "__main__":
    main()
