"""Reconstruction quality of a first-stage training run against its training time: every complete
checkpoint of RUN not measured yet is evaluated with eval_vae.py's measure (posterior mean decoded, FD in
the reference network's features) and added to OUT.json / OUT.md. Run it again while the run goes on
(checkpoints are pruned, so measure them as they appear):

    python benchmarks/vae_curve.py RUN benchmarks/results/vae8_curve [--num_samples 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checkpoint_curve  # noqa: E402
import eval_vae  # noqa: E402

from hf_ddm.models.vae import VAE  # noqa: E402
from hf_ddm.training.checkpoint import load_model  # noqa: E402
from hf_ddm.training.hub import recorded_command  # noqa: E402


def table(rows: list) -> str:
    lines = ["| step | training wall time (h) | PSNR dB | KL nats/image | FD(recon, test) |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["step"]):
        lines.append(f"| {r['step']:,} | {r['train_hours']:.2f} | {r['psnr_db']:.2f} | {r['kl_nats_per_image']:.1f} "
                     f"| {r['fd_reconstructions_vs_test']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="the training run's output_dir (holds checkpoint-N and model_config.json)")
    p.add_argument("out", help="path stem of the results: OUT.json, OUT.md")
    p.add_argument("--num_samples", type=int, default=10000)
    p.add_argument("--title", default=None, help="heading of OUT.md (default: the run folder's name)")
    p.add_argument("--note", default=None, help="a paragraph under the table (what the run changed at which step, "
                                                 "which step ships); kept in OUT.json for later runs")
    args = p.parse_args(argv)
    previous = checkpoint_curve.saved(args.out)
    rows, note = previous.get("rows", []), args.note or previous.get("note")

    def save():
        with open(args.out + ".json", "w") as f:
            json.dump({"num_samples": args.num_samples, "rows": sorted(rows, key=lambda r: r["step"]), "note": note},
                      f, indent=2)

    checkpoint_curve.measure_new(args.run, rows, lambda path: load_model(VAE, path),
                                 lambda vae: eval_vae.measure(vae, args.num_samples), save)
    save()
    name = args.title or os.path.basename(os.path.normpath(args.run))
    with open(args.out + ".md", "w") as f:
        f.write(f"# First stage `{name}`: reconstruction against training time\n\n"
                f"`{recorded_command('python benchmarks/vae_curve.py RUN', [args.out, '--num_samples', args.num_samples])}` "
                "while the run goes on (RUN = the recipe stage's output folder). The first "
                f"{args.num_samples:,} Fashion-MNIST test images, posterior mean decoded; FD in the reference "
                "network's features. Wall time is the run's own training time on the shared 2-core CPU (one "
                "thread), slowed by whatever else ran.\n\n" + table(rows) + "\n" + (f"\n{note}\n" if note else ""))
    print(table(rows))


if __name__ == "__main__":
    main()
