#!/usr/bin/env python
"""Collect ``eval_quality.py --json`` results into the README's quality table (rows in the order given).

    python benchmarks/quality_table.py benchmarks/results/quality/*.json > benchmarks/results/quality.md

Floor-only results (``eval_quality.py --floor`` without a pipeline) are not rows: they give each row the
floor FD at the row's own N (FD is biased upward at small N, so only equal-N ratios mean anything), and
the floor's FD∞ (extrapolated to N = infinity, from the largest floor N) for the rows that have FD∞. A row
that guided only in an interval of noise levels shows it beside its scale ("3 (σ ≤ 5)"). The command of
every row is listed under the table.
"""

from __future__ import annotations

import json
import os
import sys

from hf_ddm.guidance import describe_interval

HEAD = ("| model | sampler | NFE | w / scale | N | FD | floor FD | FD / floor | FD∞ | FD∞ / floor FD∞ | precision "
        "| recall | class acc | speckled | bits/dim |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _f(v, fmt=".3f"):
    return "—" if v is None else format(v, fmt)


def interval_phrase(interval) -> str:
    """A recorded guidance interval beside the scale; every level (none recorded) shows nothing."""
    words = describe_interval(interval)
    return f" ({words})" if words else ""


def row(res: dict, floors: dict, floor_inf) -> str:
    floor = floors.get(res["num_samples"])
    ratio = None if floor is None else res["fd"] / floor
    fd_inf = res.get("fd_inf")
    ratio_inf = None if fd_inf is None or floor_inf is None else fd_inf / floor_inf
    bpd = res.get("bits_per_dim")
    bpd_s = "—" if bpd is None else f"{bpd:.2f} ± {res['bits_per_dim_se']:.2f}"
    w = res.get("guidance_scale")
    w_s = "—" if res.get("conditioning") == "none" else _f(w, "g") + interval_phrase(res.get("guidance_interval"))
    name = os.path.basename(os.path.normpath(res["pipeline"]))
    sampler = res["scheduler"]
    # time_grid is an SDEScheduler argument; a VPScheduler built from a folder that saves an SDEScheduler
    # carries the key in its config without using it
    config = res.get("scheduler_config") or {}
    if res.get("scheduler_class") == "SDEScheduler" and str(res["steps"]) in (config.get("optimized_timesteps") or {}):
        sampler += " (optimized steps)"  # set_timesteps(N) runs the folder's steps for N (hf_ddm.few_step)
    elif res.get("scheduler_class") == "SDEScheduler" and config.get("time_grid") == "uniform":
        sampler += " (uniform t)"  # the Space's VP default; otherwise the scheduler's own grid
    return (f"| {name} | {sampler} {res['steps']} | {_f(res.get('nfe'), 'd')} | {w_s} | {res['num_samples']} | "
            f"{res['fd']:.3f} | {_f(floor)} | {_f(ratio, '.1f')} | {_f(fd_inf)} | {_f(ratio_inf, '.0f')} | {res['precision']:.3f} | {res['recall']:.3f} | "
            f"{_f(res.get('class_accuracy'))} | {_f(res.get('speckled_fraction'), '.1%')} | {bpd_s} |")


def table(paths) -> str:
    results = []
    for path in paths:
        with open(path) as f:
            results.append((path, json.load(f)))
    floors = {r["floor"]["num_samples"]: r["floor"]["fd"] for _, r in results if r.get("floor")}
    # FD∞ does not depend on N: take the floor's from its largest N (the least noisy estimate).
    with_inf = [r["floor"] for _, r in results if r.get("floor", {}).get("fd_inf") is not None]
    floor_inf = max(with_inf, key=lambda fl: fl["num_samples"])["fd_inf"] if with_inf else None
    rows = [row(r, floors, floor_inf) for _, r in results if r.get("pipeline")]
    speckle = [r["floor"] for _, r in results if r.get("floor", {}).get("speckled_fraction") is not None]
    note = ([f"speckled: samples with salt-and-pepper speckle (eval_quality.py); real training images: "
             f"{max(speckle, key=lambda fl: fl['num_samples'])['speckled_fraction']:.1%}.", ""] if speckle else [])
    commands = [f"- `{os.path.basename(p)}`: `{r.get('command', '(command not recorded)')}`" for p, r in results]
    return "\n".join([HEAD, *rows, "", *note, "Commands:", "", *commands])


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: quality_table.py RESULT.json [...]")
    print(table(sys.argv[1:]))
