"""Sample quality of a latent U-Net training run against its training time: every complete checkpoint of RUN
not measured yet goes into a copy of the pipeline BASE (its U-Net replaced by the checkpoint's EMA weights,
what the finished run would save, and a text pipeline's text encoder by the checkpoint's, trained with it), is
sampled as eval_quality.py samples and measured in the reference
features; rows go to OUT.json / OUT.md. Run it again while the run goes on (checkpoints are pruned, so
measure them as they appear). ``--base_step N``: BASE is the run's starting point (a continued run) at step N,
measured once as the first row, and checkpoint steps are counted from it.

    python benchmarks/ldm_curve.py RUN BASE benchmarks/results/ldm_class_more_curve --base_step 6000 \\
        --steps 25 --guidance_scale 3 --num_samples 1000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checkpoint_curve  # noqa: E402
import eval_quality  # noqa: E402

from hf_ddm.guidance import check_guidance_interval, describe_interval, interval_config  # noqa: E402
from hf_ddm.models import UNet  # noqa: E402
from hf_ddm.training.checkpoint import load_model  # noqa: E402
from hf_ddm.training.hub import recorded_command  # noqa: E402

KEYS = ("fd", "fd_inf", "precision", "recall", "class_accuracy")


def table(rows: list) -> str:
    lines = ["| step | training wall time of this run (h) | FD | FD∞ | precision | recall | class accuracy |",
             "|---|---|---|---|---|---|---|"]
    def num(v):  # FD∞ needs N >= 512 (subsets from 256); an unconditional model has no class accuracy
        return "—" if v is None else f"{v:.3f}"

    for r in sorted(rows, key=lambda r: r["step"]):
        lines.append(f"| {r['step']:,} | {r['train_hours']:.2f} | " + " | ".join(num(r.get(k)) for k in KEYS) + " |")
    return "\n".join(lines)


def measure(base: str, models: dict, sampling: list) -> dict:
    """eval_quality on a copy of ``base`` holding ``models`` (component name -> model; none: ``base`` itself)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = base
        if models:
            folder = os.path.join(tmp, "pipe")
            shutil.copytree(base, folder, ignore=shutil.ignore_patterns("checkpoint-*", "logs", "samples"))
            for name, model in models.items():
                shutil.rmtree(os.path.join(folder, name))
                model.save_pretrained(os.path.join(folder, name))
        res = eval_quality.main([folder, *sampling])
    return {k: res.get(k) for k in KEYS}


def checkpoint_models(base: str):
    """A function of a checkpoint path -> the components it replaces in ``base``: the U-Net's EMA weights, and
    the text encoder's weights where ``base`` has one."""
    def load(path: str) -> dict:
        models = {"unet": load_model(UNet, path, config=os.path.join(base, "unet", "config.json"), weights="ema")}
        if os.path.isdir(os.path.join(base, "text_encoder")):
            from transformers import CLIPTextModel

            models["text_encoder"] = load_model(CLIPTextModel, path,
                                                config=os.path.join(base, "text_encoder", "config.json"))
        return models
    return load


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="the training run's output_dir (holds checkpoint-N)")
    p.add_argument("base", help="a saved pipeline folder of the same U-Net architecture (the run's starting "
                                "point for a continued run)")
    p.add_argument("out", help="path stem of the results: OUT.json, OUT.md")
    p.add_argument("--base_step", type=int, default=None,
                   help="BASE is the run's start at this step: measured as a row, checkpoint steps counted from it")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance_scale", type=float, default=3.0)
    p.add_argument("--guidance_interval", nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="guide only at sigma in [LOW, HIGH] (0 inf: every level); default: BASE's saved interval")
    p.add_argument("--num_samples", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=250)
    p.add_argument("--test_samples", type=int, default=10000, help="test images the samples are compared with")
    p.add_argument("--title", default=None, help="heading of OUT.md (default: the run folder's name)")
    p.add_argument("--note", default=None, help="a paragraph under the table (e.g. what a larger N measured); kept "
                                                 "in OUT.json for later runs")
    args = p.parse_args(argv)
    sampling = ["--steps", str(args.steps), "--guidance_scale", f"{args.guidance_scale:g}", "--num_samples",
                str(args.num_samples), "--batch_size", str(args.batch_size), "--test_samples", str(args.test_samples),
                "--threads", "1", *(["--guidance_interval", *args.guidance_interval] if args.guidance_interval else [])]
    interval = (None if args.guidance_interval is None
                else check_guidance_interval([float(v) for v in args.guidance_interval], "--guidance_interval"))
    previous = checkpoint_curve.saved(args.out)
    rows, note = previous.get("rows", []), args.note or previous.get("note")

    def save():
        with open(args.out + ".json", "w") as f:
            json.dump({"num_samples": args.num_samples, "steps": args.steps, "guidance_scale": args.guidance_scale,
                       "guidance_interval": interval_config(interval), "rows": sorted(rows, key=lambda r: r["step"]),
                       "note": note}, f, indent=2)

    if args.base_step is not None and args.base_step not in {r["step"] for r in rows}:
        rows.append({"step": args.base_step, "train_hours": 0.0, **measure(args.base, {}, sampling)})
        save()
    checkpoint_curve.measure_new(args.run, rows, checkpoint_models(args.base),
                                 lambda models: measure(args.base, models, sampling), save, offset=args.base_step or 0)
    save()
    name = args.title or os.path.basename(os.path.normpath(args.run))
    given = list(sys.argv[1:] if argv is None else argv)
    if "--note" in given:  # the note is printed under the table, not in the command
        del given[given.index("--note"):given.index("--note") + 2]
    command = recorded_command("python benchmarks/ldm_curve.py", given)
    where = ("the base folder's saved guidance interval" if interval is None else
             describe_interval(interval) or "every noise level")
    with open(args.out + ".md", "w") as f:
        f.write(f"# Latent U-Net `{name}`: sample quality against training time\n\n`{command}` while the run "
                f"goes on. {args.num_samples:,} samples from each checkpoint's EMA U-Net in the base pipeline "
                f"(its saved scheduler, {args.steps} steps, guidance {args.guidance_scale:g} at {where}; classes "
                f"cycled, named by the prompts of a text pipeline), FD "
                f"and FD∞ against {args.test_samples:,} test images in the reference network's features. Wall "
                "time is the run's own training time on the shared 2-core CPU (one thread).\n\n" + table(rows) + "\n"
                + (f"\n{note}\n" if note else ""))
    print(table(rows))


if __name__ == "__main__":
    main()
