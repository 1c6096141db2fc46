#!/usr/bin/env python
"""The measured sections of a shipped latent folder's card, written from the JSONs that
``benchmarks/quality_matrix.sh`` leaves (run after its lanes and ``ship_checkpoint.py --refresh FOLDER --eval``):

- "Recommended sampler": the saved scheduler as its config says, the headline row (the largest N at the folder's
  ``default_guidance_scale`` and ``default_guidance_interval``), guidance at every level beside it when the folder
  guides in an interval, the scale sweeps at the next N and DDIM at the default scale;
- "Few-step schedules" (when the scheduler saves ``optimized_timesteps``): the steps and their measured FD∞.

    python train/card_sections.py space/models/ldm_class space/models/guided [--results DIR] [--note TEXT]

Rows are the JSONs named ``NAME_sdeuniform25_*`` (the saved sampler), ``NAME_ddim25_*`` and ``NAME_opt*`` for
the folder NAME; the scale each row used and its N come from the JSON, not its name.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ship_checkpoint import replace_section  # noqa: E402

from hf_ddm.guidance import describe_interval  # noqa: E402

SOLVERS = {"multistep": "DPM-Solver++(2M)", "multistep3": "DPM-Solver++(3M)", "ode_heun": "probability-flow Heun",
           "euler_maruyama": "Euler–Maruyama"}
GRIDS = {"uniform": "steps uniform in train time", "logsnr": "steps uniform in log-SNR", "karras": "Karras' steps"}


def rows(results: str, pattern: str) -> list:
    out = []
    for path in sorted(glob.glob(os.path.join(results, pattern))):
        with open(path) as f:
            row = json.load(f)
        out.append(dict(row, file=os.path.basename(path)))
    return out


def joined(rows_: list, key: str, spec: str) -> str:
    return " / ".join(format(r[key], spec) for r in rows_)


def sampler_phrase(config: dict) -> str:
    solver = SOLVERS.get(config.get("solver"), f"solver `{config.get('solver')}`")
    grid = GRIDS.get(config.get("time_grid"), f"time grid `{config.get('time_grid')}`")
    final = "a final denoising call" if config.get("denoise_final") else "no final denoising call"
    return f"`{config['_class_name']}` {solver} on this model's own schedule, {grid}, {final}"


def every_level(interval):
    """A recorded interval, None for guidance at every level (nothing recorded, or [0, None])."""
    return list(interval) if describe_interval(interval) else None


def recommended(folder: str, results: str) -> str:
    name = os.path.basename(folder.rstrip("/"))
    with open(os.path.join(folder, "model_index.json")) as f:
        index = json.load(f)
    scale = index.get("default_guidance_scale")
    interval = every_level(index.get("default_guidance_interval"))
    with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as f:
        config = json.load(f)
    # a classifier's scale is s, classifier-free guidance's w; a text model is scored on its prompts
    letter = "s" if index.get("classifier") else "w"
    accuracy = "prompt accuracy" if (index.get("text_encoder") or [None])[0] else "class accuracy"
    saved = rows(results, f"{name}_sdeuniform25_*.json")
    if scale is None or not saved:
        raise SystemExit(f"{name}: no default_guidance_scale or no {name}_sdeuniform25_*.json in {results}")
    ours = [r for r in saved if every_level(r.get("guidance_interval")) == interval]
    plain = [r for r in saved if every_level(r.get("guidance_interval")) is None]
    at_scale = [r for r in ours if r["guidance_scale"] == scale]
    where = "" if interval is None else f" guiding only at {describe_interval(interval)}"
    if not at_scale:
        raise SystemExit(f"{name}: no {name}_sdeuniform25_* row at its default_guidance_scale {scale:g}{where}")
    head = max(at_scale, key=lambda r: r["num_samples"])
    text = (f"The saved scheduler is {sampler_phrase(config)}, with `default_guidance_scale` {scale:g}")
    if interval is not None:
        text += (f" applied only at noise levels {describe_interval(interval)} (`default_guidance_interval`; scale 1, the "
                 "plain conditional model, elsewhere)")
    text += (f": FD∞ {head['fd_inf']:.2f} and {accuracy} {head['class_accuracy']:.3f} at {head['steps']} steps, N = "
             f"{head['num_samples']:,} (`{head['file']}`).")
    if interval is not None:
        same = [r for r in plain if r["guidance_scale"] == scale and r["num_samples"] == head["num_samples"]]
        if same:
            text += (f" Guided at every level instead: FD∞ {same[0]['fd_inf']:.2f}, {accuracy} "
                     f"{same[0]['class_accuracy']:.3f} (`{same[0]['file']}`).")
    smaller = [r for r in ours if r["num_samples"] < head["num_samples"]]
    if smaller:
        n = max(r["num_samples"] for r in smaller)
        text += sweep_sentence([r for r in smaller if r["num_samples"] == n], n, letter, accuracy, where)
    if interval is not None:
        below = [r for r in plain if r["num_samples"] < head["num_samples"]]
        if below:
            n = max(r["num_samples"] for r in below)
            text += sweep_sentence([r for r in below if r["num_samples"] == n], n, letter, accuracy, " at every level")
    n = max((r["num_samples"] for r in saved if r["num_samples"] < head["num_samples"]), default=None)
    ddim = [r for r in rows(results, f"{name}_ddim25_*.json") if r["num_samples"] == n and r["guidance_scale"] == scale
            and every_level(r.get("guidance_interval")) is None]
    if ddim:
        level = "" if interval is None else ", every level"
        text += (f" DDIM (`VPScheduler`, 25 steps) at {letter} = {scale:g}{level}: FD∞ {ddim[0]['fd_inf']:.2f}, "
                 f"{accuracy} {ddim[0]['class_accuracy']:.3f}.")
    return text


def sweep_sentence(sweep: list, n: int, letter: str, accuracy: str, where: str) -> str:
    sweep = sorted(sweep, key=lambda r: r["guidance_scale"])
    return (f" At N = {n:,}, {letter} = {joined(sweep, 'guidance_scale', 'g')}{where} give FD∞ "
            f"{joined(sweep, 'fd_inf', '.2f')} and {accuracy} {joined(sweep, 'class_accuracy', '.3f')}.")


def few_step(folder: str, results: str) -> str | None:
    name = os.path.basename(folder.rstrip("/"))
    with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as f:
        steps = json.load(f).get("optimized_timesteps")
    if not steps:
        return None
    counts = sorted(steps, key=int)
    lines = [f"- {n} steps: " + ", ".join(f"{t:g}" for t in steps[n]) for n in counts]
    measured = sorted(rows(results, f"{name}_opt*.json"), key=lambda r: r["steps"])
    text = (f"The saved sampler runs time steps optimized for this model at {', '.join(counts)} steps "
            "(`optimized_timesteps` in `scheduler/scheduler_config.json`; any other step count uses its grid), "
            "found on a calibration batch (16 samples, seed 0) against a fine-step solution, with the error on the "
            f"decoded images, by `python -m hf_ddm.few_step {name_path(folder)} --nfe {' '.join(counts)}`:\n\n"
            + "\n".join(lines))
    if measured:
        text += ("\n\n" + "; ".join(f"FD∞ {r['fd_inf']:.2f} at {r['steps']} steps" for r in measured)
                 + f" (N = {measured[0]['num_samples']:,}, w = {measured[0]['guidance_scale']:g}"
                 + ("" if every_level(measured[0].get("guidance_interval")) is None
                    else f" at {describe_interval(measured[0]['guidance_interval'])}") + "). "
                 "`benchmarks/results/few_step_models.md` measures them against diffusers' schedulers.")
    return text


def name_path(folder: str) -> str:
    """The folder as the repository names it (space/models/NAME), never a machine path."""
    return f"space/models/{os.path.basename(folder.rstrip('/'))}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+")
    p.add_argument("--results", default="benchmarks/results/quality")
    p.add_argument("--note", action="append", default=[],
                   help="NAME=TEXT: a paragraph after folder NAME's recommended sampler (repeatable)")
    args = p.parse_args(argv)
    notes = dict(n.split("=", 1) for n in args.note)
    for folder in args.folders:
        name = os.path.basename(folder.rstrip("/"))
        card = os.path.join(folder, "README.md")
        with open(card) as f:
            text = f.read()
        body = recommended(folder, args.results) + (f"\n\n{notes[name]}" if name in notes else "")
        text = replace_section(text, "Recommended sampler", body, missing_at_end=True)
        steps = few_step(folder, args.results)
        if steps:
            text = replace_section(text, "Few-step schedules", steps, missing_at_end=True)
        with open(card, "w") as f:
            f.write(text.rstrip() + "\n")
        print("sections written:", card)


if __name__ == "__main__":
    main()
