"""Likelihood benchmark: probability-flow-ODE log-likelihood error vs model calls on the exact mixture.

For a 2-D Gaussian mixture every noised marginal's log-density is known in closed form, so the ODE
likelihood's error is measured exactly: |log p_ode(x) - log p_{t_start}(x)| in nats/dim, averaged over
the points. Two errors per row: "total" is what ``ode_log_likelihood`` returns (its prior is N(0, I), which
p_1 only approximates), "solver" replaces that prior by the exact log p_1 at the path's end, leaving the
integration error alone. Rows: fixed-step RK4 at several step counts and adaptive RK45 at several
tolerances, in process time t and in the default variable; score_sde's own call (scipy ``solve_ivp``,
RK45 in t, rtol = atol = 1e-5) as the reference. Problems: score_sde's VP SDE (beta 0.1..20, t_start
1e-3) and diffusers' DDPMScheduler on the cosine and linear schedules (t_start 0: train timestep 0).

    python benchmarks/bench_likelihood.py            # writes benchmarks/results/likelihood.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from diffusers import DDPMScheduler

from hf_ddm.adapter import process_view
from hf_ddm.likelihood import ode_log_likelihood
from hf_ddm.mixture import GaussianMixture
from hf_ddm.schedulers.sde import SDEScheduler
from hf_ddm.training.hub import recorded_command

MIX = GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], [0.3, 0.2], [0.6, 0.4])
PROBLEMS = {
    "VP SDE (beta 0.1..20)": lambda: SDEScheduler(sde="vp"),
    "DDPM cosine (squaredcos_cap_v2)": lambda: DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
    "DDPM linear": lambda: DDPMScheduler(beta_schedule="linear"),
}


def errors(mix, sched, x, logp, delta, latent):
    """(total, solver) mean absolute errors in nats/dim."""
    proc = sched.process
    a, s = proc.marginal(torch.tensor(sched.training_t_min, dtype=torch.float64))
    exact = mix.log_prob(x, a, s)
    a1, s1 = proc.marginal(torch.tensor(1.0, dtype=torch.float64))
    dim = x[0].numel()
    total = float((logp - exact).abs().mean()) / dim
    solver = float((delta + mix.log_prob(latent, a1, s1) - exact).abs().mean()) / dim
    return total, solver


def score_sde_reference(mix, sched, x, rtol=1e-5, atol=1e-5):
    """score_sde's likelihood integration: scipy solve_ivp(RK45) on the t-form ODE, the whole batch and its
    log-density in one state vector, exact trace. Returns (calls, logp, delta, latent)."""
    from scipy.integrate import solve_ivp

    proc, (n, d) = sched.process, x.shape

    def f(t, y):
        xx = torch.from_numpy(y[: n * d]).reshape(n, d).requires_grad_(True)
        p = proc.point(t)
        a, s = proc.marginal(torch.tensor(t, dtype=torch.float64))
        drift = p.f * xx - 0.5 * p.g2 * mix.score(xx, a, s)
        div = sum(torch.autograd.grad(drift[:, i].sum(), xx, retain_graph=True)[0][:, i] for i in range(d))
        return np.concatenate([drift.detach().numpy().ravel(), div.numpy()])

    y0 = np.concatenate([x.numpy().ravel(), np.zeros(n)])
    sol = solve_ivp(f, (sched.training_t_min, 1.0), y0, rtol=rtol, atol=atol, method="RK45")
    y = torch.from_numpy(sol.y[:, -1])
    latent, delta = y[: n * d].reshape(n, d), y[n * d:]
    return sol.nfev, proc.prior_logp(latent) + delta, delta, latent


def run(num_points: int, seed: int):
    x, _ = MIX.sample(num_points, generator=torch.Generator().manual_seed(seed))
    configs = [("RK4", "t", {"num_steps": k}, f"{k} steps") for k in (10, 25, 50, 100)]
    configs += [("RK4", "auto", {"num_steps": k}, f"{k} steps") for k in (10, 25, 50, 100)]
    configs += [("RK45", "t", {"rtol": tol, "atol": tol}, f"tol {tol:g}") for tol in (1e-3, 1e-4, 1e-5)]
    configs += [("RK45", "auto", {"rtol": tol, "atol": tol}, f"tol {tol:g}") for tol in (1e-3, 1e-4, 1e-5, 1e-6)]
    tables = {}
    for name, make in PROBLEMS.items():
        user_sched = make()
        sched = process_view(user_sched, need="continuous")  # what ode_log_likelihood integrates on
        rows = []
        try:
            calls, logp, delta, latent = score_sde_reference(MIX, sched, x)
            rows.append(("score_sde: scipy solve_ivp RK45", "t", "tol 1e-05", calls, *errors(MIX, sched, x, logp, delta, latent)))
        except ImportError:
            rows.append(("score_sde: scipy solve_ivp RK45", "t", "tol 1e-05", None, float("nan"), float("nan")))
        for method, variable, kw, setting in configs:
            model = MIX.model(user_sched)  # the exact network of that scheduler's model
            out = ode_log_likelihood(model, user_sched, x, convention="continuous", variable=variable, **kw)
            used = out.method.split(" in ")[1].split(" ")[0]
            label = f"{variable} ({used})" if variable == "auto" else variable
            rows.append((f"hf_ddm {method}", label, setting, out.num_model_evaluations,
                         *errors(MIX, sched, x, out.log_likelihood, out.delta_logp, out.latent)))
        tables[name] = rows
    return tables


def markdown(tables, num_points, seed, seconds, command) -> str:
    lines = [f"`{command}`", "",
             f"## ODE likelihood: error vs model calls ({num_points} points of a 2-D, 2-component mixture "
             f"(stds 0.3, 0.2), seed {seed}, exact trace; {seconds:.0f} s)", "",
             "Error: mean |log p_ode(x) - log p_{t_start}(x)| over the points, nats/dim, against the mixture's exact "
             "noised log-density. *total*: what `ode_log_likelihood(..., convention=\"continuous\")` returns (its "
             "prior N(0, I) only approximates p_1); *solver*: the same path with the exact log p_1 at its end -- the "
             "integration error alone. Model calls: network evaluations, each on the whole batch.", ""]
    for name, rows in tables.items():
        lines += [f"### {name}", "", "| solver | variable | setting | model calls | total error | solver error |",
                  "|---|---|---|---|---|---|"]
        for solver, variable, setting, calls, total, solv in rows:
            lines.append(f"| {solver} | {variable} | {setting} | {'—' if calls is None else calls} | "
                         f"{total:.2e} | {solv:.2e} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num_points", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "likelihood.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    tables = run(args.num_points, args.seed)
    command = recorded_command("python benchmarks/bench_likelihood.py", argv if argv is not None else sys.argv[1:])
    md = markdown(tables, args.num_points, args.seed, time.time() - start, command)
    print(md)
    with open(args.out, "w") as fh:
        fh.write(md + "\n")


if __name__ == "__main__":
    main()
