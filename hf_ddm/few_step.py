"""Time steps optimized for one model: few-step sampling that looks like many steps.

    from hf_ddm import optimize_steps
    found = optimize_steps(unet, pipe.scheduler, [4, 5, 6, 8, 10], sample_shape=(16, 3, 32, 32))
    pipe.scheduler = SDEScheduler.from_config(pipe.scheduler.config, optimized_timesteps=as_config(found))
    pipe(num_inference_steps=5)                          # runs found[5].timesteps
    DPMSolverMultistepScheduler.from_config(cfg).set_timesteps(timesteps=found[5].timesteps)  # diffusers too

**What is minimised.** The calibration objective of a list of N steps is the mean over a calibration batch
(noise drawn from ``seed``) of the per-sample RMS distance between the N-step sample of the scheduler's
solver -- run by the scheduler itself, ``set_timesteps(timesteps=...)`` -- and a fine-step reference from
the same noise (the teacher: DPM-Solver++(3M) on ~``candidates * teacher_substeps`` steps).

**How.** GITS (Chen et al. 2024, "On the trajectory regularity of ODE-based diffusion sampling"): the
probability-flow ODE's trajectories are regular enough that a step that is accurate on the teacher's
trajectory of a few calibration samples is accurate for the model's other samples. So

1. the teacher is run once through ``candidates`` candidate times (log-SNR spaced, plus the scheduler's
   own N-step grid; integers on a diffusers train schedule, so diffusers' ``timesteps=`` takes the result),
   keeping the sample and the model's output at each: ~``candidates * teacher_substeps`` model calls,
   shared by every N asked for;
2. every jump i -> j between candidates is scored by the local error of the solver's own update (the
   registry's stepper, so the formula is the one the scheduler runs) started on the teacher's trajectory at
   i and compared with the teacher at j. A multistep solver's update also depends on the point before i
   (its history), so its jumps are scored per (previous, i, j): the DP state is the last jump, not the last
   point. Solvers with more than one model call per step (Heun) are scored with their first-order
   predictor (DDIM), which needs no model call off the trajectory. This costs no model calls (but one per
   start candidate, below);
3. dynamic programming gives the N-jump path from a start candidate to the end with the least summed local
   error;
4. the path of least *local* error need not give the least *end-to-end* error (errors propagate), so the
   start grid and the DP's path are both run end to end, the better kept, and then refined by coordinate
   search on the end-to-end objective (move one step to the neighbouring candidate, keep it if the
   objective drops; ``refine_calls`` model calls at most); then again with the first step free (below).
   The result is never worse than the scheduler's own grid on the calibration objective, nor than the
   same search with the start fixed at the top.

**The first step.** The first time is a decision variable: the start noise ``x ~ N(0, I) * init_noise_sigma``
is taken as the sample at the first chosen time, anywhere from the top down to ``min_start`` (0.5) x the top
where the data's share of the marginal x_t = a(t) x0 + s(t) eps is still at most ``max_start_signal``
(a(t) <= 0.1) -- what diffusers' ``leading`` spacing does (830 of 1000 at 5 steps, 800 at 4), and why it
wins at 4-5 steps on some models: at the top the marginal is the noise to within a few percent, so the first hundred-odd
timesteps move the sample little and a step spent there is mostly wasted. Starting lower is not free: the
noise is not the ODE's sample there (the skipped part of the trajectory and the signal the marginal still
carries, a(t) x0, are lost), and that error is part of what is scored. Both stages choose it: in the DP, each
start candidate above the bound is a start node whose first jump is scored from the noise itself (one model
call per candidate: the model's output on the noise there; the next jump of a multistep solver carries that
output as its history), so the local cost includes the start's own mismatch; the coordinate search then moves
the start like any other step, on the true end-to-end objective, starting from the better of the DP's free
path and the fixed-start search's result (so never worse than the fixed start). The DP alone would trust the
surrogate for the one decision where the trajectory assumption (the run is on the teacher's path) fails by
construction; the search alone would only creep down from the top one candidate at a time. The bounds keep
the start in the high-noise region where taking noise for the sample is a small error (and keep the search
cheap); ``min_start=1`` (or ``max_start_signal=0``) gives the fixed start at the top. Why the signal bound:
the calibration objective is the mean distance to the reference, and a start that drops a(t) x0 can lower it
while shifting the distribution: on the exact oracle's narrow modes, starts at a(t) = 0.15 (scaled_linear,
t = 853) lowered the error to the reference 0.0215 -> 0.0126 at 5 steps but raised the within-mode std error
0.06 -> 0.18 and the sliced Wasserstein distance 0.112 -> 0.139. At a(t) <= 0.1 the linear schedule may start
as low as t ~ 670 (diffusers' leading 830 / 800 have a = 0.03 / 0.04), cosine and scaled_linear only near
the top, and a VE process (a = 1) never moves its start.

Why not LD3 (fitting the steps by gradient descent through the sampler)? It needs gradients through the
model (memory, a GPU for real models) and minutes of training; the DP needs only forward calls -- a few
hundred -- and gives the global optimum of its surrogate; the refinement closes most of the rest on the
true objective. Stochastic solvers are refused: their error to a deterministic reference is not a property
of the steps.

``python -m hf_ddm.few_step FOLDER --nfe 4 5 6 8 10 [--min-start 0.5]`` writes the result into a saved pipeline
folder's scheduler config (``optimized_timesteps``), which ``SDEScheduler.set_timesteps(N)`` then runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .adapter import call_model, process_view
from .limits import check_int, check_step_count
from .processes import CLEAN
from .solver_registry import StepContext, get

# The teacher: the most accurate deterministic solver of the registry at many steps.
TEACHER = dict(solver="multistep", solver_order=3)


@dataclass
class OptimizedSteps:
    """One step count's result. ``timesteps``: the N model timesteps for ``set_timesteps(timesteps=...)``
    (hf_ddm's SDEScheduler, diffusers' DPMSolverMultistep / UniPC / Euler / DDPM ...); ``sigmas``: the same
    steps as N + 1 noise levels s/a (the last 0: the clean estimate) for diffusers' ``sigmas=``."""

    num_inference_steps: int
    timesteps: List[float]
    sigmas: List[float]
    solver: str
    error: float  # calibration objective of ``timesteps``
    start_timesteps: List[float]  # the scheduler's own grid for N (what set_timesteps(N) ran before)
    start_error: float  # ... and its calibration objective
    dp_error: float  # the better DP path's calibration objective (before refinement; free start or from the top)
    model_calls: int  # calibration cost of this N: the teacher's calls (shared by all N of one call) + its own
    seconds: float  # CPU seconds (process time, all threads) of the same: teacher and scoring + its own search
    history: List[Tuple[int, float]] = field(default_factory=list)  # (model calls so far, best error)


def as_config(results: Mapping[int, OptimizedSteps]) -> Dict[str, List[float]]:
    """``{N: OptimizedSteps}`` as the value of SDEScheduler's ``optimized_timesteps`` config key."""
    return {str(n): list(r.timesteps) for n, r in sorted(results.items())}


class _Counted:
    """The model as a tensor-returning callable with fixed keyword arguments, counting its calls."""

    def __init__(self, model, kwargs):
        self.model, self.kwargs, self.calls = model, dict(kwargs or {}), 0

    def __call__(self, x, timestep):
        self.calls += 1
        return call_model(self.model, x, timestep, **self.kwargs)


def _sample(scheduler, model: _Counted, noise: torch.Tensor, timesteps) -> torch.Tensor:
    """The plain diffusers loop over ``timesteps`` (the steps' starts), driven by the scheduler."""
    scheduler.set_timesteps(timesteps=timesteps)
    x = noise
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    return x


def _error(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-sample RMS distance (B,), in float64."""
    return (x.double() - ref.double()).flatten(1).pow(2).mean(1).sqrt()


def _scheduler(scheduler, solver, overrides):
    from .schedulers.sde import SDEScheduler

    # Any scheduler or config the adapter reads; a diffusers VP one becomes SDEScheduler on its exact schedule.
    base = scheduler if isinstance(scheduler, SDEScheduler) else process_view(scheduler, "continuous")
    if not isinstance(base, SDEScheduler):
        raise ValueError(f"scheduler: optimize_steps runs SDEScheduler's solvers; {type(base).__name__} is not one")
    if solver is not None:
        overrides = {**overrides, "solver": solver}
    return SDEScheduler.from_config(dict(base.config), **overrides)


def _candidates(sched, n_candidates: int, starts: Sequence[Sequence[float]]) -> torch.Tensor:
    """Candidate step starts (model timesteps, decreasing): a log-SNR grid from where the scheduler starts
    down to sampling_eps -- integers on a diffusers train schedule, what diffusers' ``timesteps=`` takes --
    merged with the scheduler's own grids as they are (so each is a path of the DP and of the search)."""
    from .schedulers.sde import SDEScheduler

    grid = SDEScheduler.from_config(dict(sched.config), time_grid="log_snr", denoise_final=True,
                                    optimized_timesteps=None, **{"solver": "ode_euler"})
    grid.set_timesteps(n_candidates)
    ts = grid.timesteps.double()
    if sched.is_discrete_schedule:
        ts = ts.round()
    return torch.unique(torch.cat([ts] + [torch.as_tensor(s, dtype=torch.float64) for s in starts])).flip(0)


def _grid_starts(sched, n: int) -> torch.Tensor:
    """The model timesteps where the N steps of ``sched.set_timesteps(n)`` start (its grid points but the end)."""
    sched.set_timesteps(n)
    return sched.t_to_timestep(torch.tensor([p.t for p in sched._points[:-1]], dtype=torch.float64))


def _seed_grids(sched, counts: Sequence[int], cand: torch.Tensor, end: int) -> Dict[int, List[List[int]]]:
    """Per N, the N-step grids of every ``time_grid`` (log_snr, uniform, rho) on the scheduler's process as
    paths over the candidates (each step snapped to the nearest candidate, the end appended): more starting
    points for the search, which is local -- the best fixed grid differs between models (uniform on the
    shipped ldm_class, log_snr on the oracle)."""
    from .schedulers.sde import SDEScheduler

    seeds = {n: [] for n in counts}
    for grid in ("log_snr", "uniform", "rho"):
        try:
            other = SDEScheduler.from_config(dict(sched.config), time_grid=grid, optimized_timesteps=None)
        except ValueError:  # a grid this process does not offer
            continue
        for n in counts:
            path = [int((cand - t).abs().argmin()) for t in _grid_starts(other, n).tolist()]
            if all(a < b for a, b in zip(path, path[1:])) and path[-1] < end and path not in seeds[n]:
                seeds[n].append(path + [end])
    return seeds


def optimize_steps(
    model: Callable,
    scheduler,
    num_inference_steps: Union[int, Sequence[int]],
    *,
    sample_shape: Sequence[int],
    solver: Optional[str] = None,
    model_kwargs: Optional[Mapping] = None,
    seed: int = 0,
    candidates: int = 40,
    teacher_substeps: int = 5,
    refine_calls: Optional[int] = None,
    min_start: float = 0.5,
    max_start_signal: float = 0.1,
    decode: Optional[Callable] = None,
    dtype: torch.dtype = torch.float32,
    device: Union[str, torch.device, None] = None,
    **scheduler_overrides,
) -> Union[OptimizedSteps, Dict[int, OptimizedSteps]]:
    """The N time steps that bring ``scheduler``'s solver closest to a fine-step solution on a calibration
    batch, for ``model`` (see the module docstring for the method and the objective).

    Args:
        model: any ``model(x, timestep, **model_kwargs)`` -> tensor or an output with ``.sample`` (an hf_ddm
            or diffusers U-Net, the mixture oracle, a function applying classifier-free guidance).
        scheduler: an SDEScheduler (its solver, grid and options), or any diffusers VP scheduler / config
            (then SDEScheduler on exactly its schedule, with SDEScheduler's defaults: the log_snr grid, not the
            config's ``timestep_spacing`` that ``SDEScheduler.from_config`` gives it).
        num_inference_steps: N, or several (one teacher run serves them all; then a dict N -> result).
        sample_shape: the calibration batch's shape, batch first (e.g. (16, 3, 32, 32)).
        solver: a solver of ``hf_ddm.solver_registry`` (None: the scheduler's); deterministic ones only.
        model_kwargs: passed to every model call (class labels, text embeddings: the conditioning and
            guidance the steps are optimized for).
        seed: the calibration noise's seed; the same seed gives the same steps.
        candidates: size of the log-SNR candidate grid the steps are chosen from.
        teacher_substeps: teacher steps per candidate interval (teacher calls ~ candidates * substeps).
        refine_calls: model calls each of the two end-to-end searches (start fixed, then free) may spend per N
            (None: 40 N^2, i.e. about two sweeps over the N steps; 0: none, the best of the DP's paths and the
            start grid).
        min_start: how low the first step may start, as a fraction of the scheduler's first time (its top):
            the start noise ``x ~ N(0, I) * init_noise_sigma`` is taken as the sample at the first chosen
            time, as diffusers' ``leading`` spacing does (first step 830 of 1000 at 5 steps). 1: always the
            top (the steps of hf_ddm <= 0.1.x). See "The first step" in the module docstring.
        max_start_signal: ... and only where the marginal's data coefficient a(t) (x_t = a x0 + s eps) is at
            most this: the noise stands for the sample only where the data's share of it is small. 0: the top.
        decode: what the error is measured on, as a function of the final sample: a latent model's decoder to
            images as its pipeline outputs them (``write_folder`` passes the pipeline's ``output_images``), so
            the steps minimise the error one sees rather than the latent error the decoder may hide. None:
            the sample itself. It applies to the end-to-end objective (the search and the choice between
            paths: one decoder call per run); the DP still scores its jumps on the samples themselves, a
            surrogate either way (decoding each of its ~candidates^3 / 6 jumps cost 30 CPU minutes on the
            shipped ldm_class, and its steps were not better on fresh noise: better at 10 steps, worse at 6).
        scheduler_overrides: SDEScheduler config keys to change first (``time_grid``, ``denoise_final``,
            ``solver_order`` ...).
    """
    counts = [num_inference_steps] if isinstance(num_inference_steps, (int, np.integer)) else list(num_inference_steps)
    counts = [check_step_count(n) for n in counts]
    check_int("candidates", candidates, 3)
    check_int("teacher_substeps", teacher_substeps, 1)
    if isinstance(min_start, bool) or not isinstance(min_start, (int, float)) or not 0 < min_start <= 1:
        raise ValueError(f"min_start must be a number in (0, 1] (a fraction of the first time), got {min_start!r}")
    if (isinstance(max_start_signal, bool) or not isinstance(max_start_signal, (int, float))
            or not 0 <= max_start_signal <= 1):
        raise ValueError(f"max_start_signal must be a number in [0, 1] (the marginal's a(t)), got {max_start_signal!r}")
    if decode is not None and not callable(decode):
        raise TypeError(f"decode must be a function of the final sample (or None), got {type(decode).__name__}")
    start_clock = time.process_time()
    sched = _scheduler(scheduler, solver, scheduler_overrides)
    spec = sched.solver
    if spec.stochastic:
        raise ValueError(f"solver {spec.name!r} draws noise at every step: the steps are optimized for a "
                         "deterministic solver (ode_euler, ode_heun, multistep)")
    counted = _Counted(model, model_kwargs)
    shape = tuple(sample_shape)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)
    noise = noise * sched.init_noise_sigma

    # The start grids: what set_timesteps(N) runs now (a saved optimized list included).
    starts = {}
    for n in counts:
        starts[n] = _grid_starts(sched, n)
    cand = _candidates(sched, candidates, list(starts.values()))

    # 1. The teacher through every candidate: its sample and the model's (x0, eps) at each.
    from .schedulers.sde import SDEScheduler

    teacher = SDEScheduler.from_config(dict(sched.config), optimized_timesteps=None, **TEACHER)
    t_c = teacher.timestep_to_t(cand)
    lam = teacher.process.log_snr(t_c)
    fine = [float(t_c[0])]
    for k in range(len(cand) - 1):  # substeps evenly in log-SNR inside each candidate interval
        inner = torch.linspace(float(lam[k]), float(lam[k + 1]), teacher_substeps + 1, dtype=torch.float64)[1:-1]
        fine += teacher.process.time_at_log_snr(inner).tolist() + [float(t_c[k + 1])]
    denoise = bool(sched.config.denoise_final)
    end = max(sched.sampling_eps, sched.process.t_min)
    if not denoise and fine[-1] <= end + 1e-12:
        fine, n_eval = fine[:-1], len(cand) - 1  # the last candidate is where the steps end: not a start
    else:
        n_eval = len(cand)
    fine_ts = teacher.t_to_timestep(torch.tensor(fine, dtype=torch.float64))
    teacher.set_timesteps(timesteps=fine_ts)
    xs, x0s, epss = [], [], []
    x = noise
    for k, t in enumerate(teacher.timesteps):
        out = counted(x, t)
        if k % teacher_substeps == 0 and len(xs) < n_eval:
            a, s = teacher.marginal(t)
            x0, eps = sched.denoised(out, x, float(a), float(s))  # the scheduler's own x0 processing
            xs.append(x), x0s.append(x0), epss.append(eps)
        x = teacher.step(out, t, x).prev_sample
    reference = x
    view = decode if decode is not None else (lambda v: v)
    points = [sched.process.point(float(t)) for t in t_c[:n_eval]] + [CLEAN if denoise else sched.process.point(end)]
    xs.append(reference)
    reference_view = view(reference)
    n_nodes = len(points)  # evaluated candidates 0..T-1, the end T
    seeds = _seed_grids(sched, counts, cand, n_nodes - 1)
    # The candidate starts: the top (the teacher's own start) and every candidate down to min_start x the top
    # with a(t) <= max_start_signal (not the last evaluated one: a step must follow). From candidate i the run
    # starts at the noise itself, not at the teacher's sample there: one model call each gives its (x0, eps).
    signal = teacher.process.marginal(t_c)[0]
    n_starts = 1 + sum(1 for k in range(1, n_eval - 1) if float(t_c[k]) >= min_start * float(t_c[0]) - 1e-12
                       and float(signal[k]) <= max_start_signal)
    index = {float(v): k for k, v in enumerate(cand.tolist())}
    n_starts = max([n_starts] + [index[float(v[0])] + 1 for v in starts.values()])  # a saved grid's own start too
    starts_x0, starts_eps = [x0s[0]], [epss[0]]
    for k in range(1, n_starts):
        a, s = teacher.marginal(cand[k])
        x0, eps = sched.denoised(counted(noise, cand[k]), noise, float(a), float(s))
        starts_x0.append(x0), starts_eps.append(eps)
    teacher_calls = counted.calls

    # 2. Local errors of every jump on the teacher's trajectory (no model calls).
    scorer = spec if spec.calls_per_step == 1 else get("ode_euler")
    stepper = scorer.make_stepper(sched.config)
    ctx = StepContext(1, 10**6, 0.0, None)  # mid-run: no lowered final order, no noise
    with_history = scorer.state in ("x0 history", "eps history")  # scored with the one previous point it keeps

    def node(i, start=False):
        """(x, x0, eps) at candidate i: the teacher's, or the noise taken as the sample there (a run's start)."""
        return (noise, starts_x0[i], starts_eps[i]) if start else (xs[i], x0s[i], epss[i])

    def local(i, j, p=None, start=False):
        """Error at j of the jump i -> j (after p -> i); ``start``: the run starts at i (p, or else i)."""
        stepper.reset()
        if p is not None:  # the history the update would carry: the previous start's x0
            stepper("step", *node(p, start), points[p], points[i], ctx)
        mean = stepper("step", *node(i, start and p is None), points[i], points[j], ctx)[0]
        return float(_error(mean, xs[j]).mean())

    # first[i, j]: the run's first jump, from the noise at start candidate i (the teacher's sample at i = 0).
    first = np.full((n_nodes, n_nodes), np.inf)
    for i in range(n_starts):
        for j in range(i + 1, n_nodes):
            first[i, j] = local(i, j, start=True)
    plain = first if with_history else np.full((n_nodes, n_nodes), np.inf)  # no history: any jump on the teacher
    if not with_history:
        for i in range(n_nodes - 1):
            for j in range(i + 1, n_nodes):
                plain[i, j] = local(i, j)
    later = np.full((n_nodes, n_nodes, n_nodes), np.inf)  # later[p, i, j]: a jump after p -> i, on the teacher
    for p in range(n_nodes - 2):
        for i in range(p + 1, n_nodes - 1):
            for j in range(i + 1, n_nodes):
                later[p, i, j] = local(i, j, p) if with_history else plain[i, j]
    second = later.copy()  # second[p, i, j]: the run's second jump, its history the start's x0 at p
    if with_history:
        for p in range(1, n_starts):
            for i in range(p + 1, n_nodes - 1):
                for j in range(i + 1, n_nodes):
                    second[p, i, j] = local(i, j, p, start=True)

    def dp_path(n, top=False):
        """A start candidate (``top``: the top) -> end T in n jumps, least summed local error; states are the
        last jump (p, i)."""
        T = n_nodes - 1
        cost = first.copy()
        if top:
            cost[1:] = np.inf
        if n == 1:
            return [int(cost[:, T].argmin()), T]
        back = []
        for step in range(n - 1):
            total = cost[:, :, None] + (second if step == 0 else later)  # [p, i, j]
            arg = total.argmin(0)  # best p for each (i, j)
            cost = np.take_along_axis(total, arg[None], 0)[0]
            back.append(arg)
        if not np.isfinite(cost[:, T]).any():
            raise ValueError(f"{n} steps need at least {n + 1} candidate times; raise `candidates`")
        i, j = int(cost[:, T].argmin()), T
        path = [j, i]
        for arg in reversed(back):
            i, j = int(arg[i, j]), i
            path.append(i)
        return path[::-1]

    # 3-4. The DP's path, the start grid, and refinement, on the end-to-end objective.
    shared_seconds = time.process_time() - start_clock  # teacher + scoring: charged in full to every N
    results = {}
    for n in counts:
        clock, calls0 = time.process_time(), counted.calls
        history = []

        def objective(path):
            ts = cand[path[:-1]]
            return float(_error(view(_sample(sched, counted, noise, ts)), reference_view).mean())

        start_path = [index[float(v)] for v in starts[n].tolist()]
        start_path.append(n_nodes - 1)
        start_err = objective(start_path)
        budget = 40 * n * n if refine_calls is None else int(refine_calls)
        spent = lambda: counted.calls - calls0  # noqa: E731

        def search(best, best_err, free):
            """Coordinate search on the end-to-end objective, ``budget`` model calls at most; ``free``: the
            first step moves too (among the start candidates), else it stays where it is."""
            stop = spent() + budget
            for stride in (2, 1):
                improved = True
                while improved and spent() < stop:
                    improved = False
                    for m in range(0 if free else 1, n):  # every step's start but the end's
                        for d in (-stride, stride):
                            k = best[m] + d
                            low = best[m - 1] if m else -1
                            if not low < k < best[m + 1] or (m == 0 and k >= n_starts) or spent() >= stop:
                                continue
                            trial = best[:m] + [k] + best[m + 1:]
                            err = objective(trial)
                            if err < best_err:
                                best, best_err, improved = trial, err, True
                                history.append((spent(), best_err))
                                break
            return best, best_err

        # First the fixed start (hf_ddm <= 0.1.x's search, exactly): the better of the start grid and the DP's
        # path from the top, refined with the start held. Then the free start: the better of that result and
        # the DP's path from any start candidate, refined with the first step free too. The second search
        # starts from the first's result, so the free start is never worse than the fixed one (on this
        # objective, at twice the search budget); a local search from the free DP path alone can end worse.
        path = dp_path(n, top=True)
        dp_err = objective(path)
        best, best_err = (path, dp_err) if dp_err < start_err else (start_path, start_err)
        for seed_path in seeds[n]:  # the other time grids, as near as the candidates come
            if seed_path != start_path and seed_path != path:
                err = objective(seed_path)
                if err < best_err:
                    best, best_err = seed_path, err
        history.append((spent(), best_err))
        best, best_err = search(best, best_err, free=False)
        if n_starts > 1:
            path = dp_path(n)
            if path[0] != 0:
                err = objective(path)
                dp_err = min(dp_err, err)
                if err < best_err:
                    best, best_err = path, err
                    history.append((spent(), best_err))
            best, best_err = search(best, best_err, free=True)
        ts = cand[best[:-1]]
        sched.set_timesteps(timesteps=ts)
        sig = [p.s / p.a for p in sched._points]
        results[n] = OptimizedSteps(
            num_inference_steps=n, timesteps=ts.tolist(), sigmas=sig, solver=spec.name, error=best_err,
            start_timesteps=cand[start_path[:-1]].tolist(), start_error=start_err, dp_error=dp_err,
            model_calls=teacher_calls + spent(),
            seconds=shared_seconds + time.process_time() - clock, history=history)
    return results[counts[0]] if isinstance(num_inference_steps, (int, np.integer)) else results



# ------------------------------------------------------------------------------------------------
# The command: optimized steps into a saved pipeline folder
# ------------------------------------------------------------------------------------------------


def pipeline_model(pipe, batch_size: int, guidance_scale: Optional[float] = None):
    """(model_fn(x, t), sample shape) of an hf_ddm pipeline as its own loop calls it: an unconditional model
    as it is; a class-conditional one on classes 0, 1, ... (cycled over the batch) with classifier-free
    guidance at ``guidance_scale`` (None: the folder's ``default_guidance_scale``), in the folder's
    ``default_guidance_interval`` as its calls without arguments guide."""
    if getattr(pipe, "text_encoder", None) is not None:
        raise ValueError("text-conditional folders: call optimize_steps with a model that applies your prompts")
    shape = pipe.input_shape(batch_size)
    num_classes = getattr(pipe.unet.config, "num_class_embeds", None)

    def unet(x, t, **kwargs):
        return call_model(pipe.unet, x, t, **kwargs)

    if not num_classes:
        return unet, shape, None
    scale = pipe.guidance_scale_or_default(guidance_scale)
    labels = torch.arange(batch_size) % num_classes
    null = torch.full_like(labels, num_classes)  # the null class id the pipelines use
    guided = pipe.guided_model_fn(unet, {"class_labels": labels}, {"class_labels": null}, scale,
                                  pipe.guidance_interval_or_default(None), pipe.scheduler)
    # call_model hands over one timestep per sample; the guided batch is twice as long: pass the one value.
    return (lambda x, t: guided(x, torch.as_tensor(t).reshape(-1)[0])), shape, scale


def write_folder(folder: str, nfes: Sequence[int], batch_size: int = 16, guidance_scale: Optional[float] = None,
                 seed: int = 0, measure_on: str = "images",
                 **kwargs) -> Tuple[Dict[int, OptimizedSteps], Optional[float]]:
    """Optimize the steps of the saved pipeline ``folder`` for each N of ``nfes`` and write them into its
    scheduler config (``optimized_timesteps``; an SDEScheduler folder), merged with any already there.
    ``measure_on``: "images" (a latent folder's error on its decoded images, clamped as the pipeline
    outputs them) or "latents" (the sample the scheduler makes). Returns the results and the guidance
    scale they were found with (None: an unconditional model)."""
    if measure_on not in ("images", "latents"):
        raise ValueError(f"measure_on must be 'images' or 'latents', got {measure_on!r}")
    import json
    import os

    from . import pipelines
    from .schedulers.sde import SDEScheduler

    with open(os.path.join(folder, "model_index.json")) as f:
        name = json.load(f)["_class_name"]
    cls = getattr(pipelines, name[-1] if isinstance(name, list) else name, None)
    if cls is None:
        raise ValueError(f"{folder}: {name} is not an hf_ddm pipeline; call optimize_steps with its model instead")
    pipe = cls.from_pretrained(folder, dtype=torch.float32)  # shipped weights may be fp16: calibrate in float32
    if not isinstance(pipe.scheduler, SDEScheduler):
        raise ValueError(f"{folder}: its scheduler is {type(pipe.scheduler).__name__}; optimized steps are read by "
                         "SDEScheduler -- save the folder with SDEScheduler.from_config(pipe.scheduler.config) first")
    pipe.unet.eval().requires_grad_(False)
    model, shape, scale = pipeline_model(pipe, batch_size, guidance_scale)
    vae = getattr(pipe, "vae", None)
    if vae is not None and measure_on == "images":
        vae.eval().requires_grad_(False)
        kwargs["decode"] = pipe.output_images
    with torch.no_grad():
        found = optimize_steps(model, pipe.scheduler, list(nfes), sample_shape=shape, seed=seed, **kwargs)
    path = os.path.join(folder, "scheduler", "scheduler_config.json")
    with open(path) as f:
        config = json.load(f)
    solver = next(iter(found.values())).solver
    if solver != config.get("solver"):  # steps optimized for another solver: the folder runs that solver now,
        config["solver"] = solver  # and the steps saved for its old one no longer apply
        config.pop("optimized_timesteps", None)
    config["optimized_timesteps"] = {**(config.get("optimized_timesteps") or {}), **as_config(found)}
    SDEScheduler.from_config(config).save_config(os.path.dirname(path))  # as the scheduler saves itself
    return found, scale


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m hf_ddm.few_step",
                                description="Write optimized time steps into a saved pipeline folder's scheduler config.")
    p.add_argument("folder")
    p.add_argument("--nfe", nargs="+", type=int, default=[4, 5, 6, 8, 10], help="step counts to optimize")
    p.add_argument("--batch-size", type=int, default=16, help="calibration batch")
    p.add_argument("--guidance-scale", type=float, help="class-conditional folders (default: the folder's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--measure-on", choices=("images", "latents"), default="images",
                   help="a latent folder's error: on its decoded images (default) or on the latents")
    p.add_argument("--solver", help="optimize for this deterministic solver of the registry and make it the folder's "
                                    "(default: the folder's own); the steps are the solver's")
    p.add_argument("--candidates", type=int, default=40)
    p.add_argument("--refine-calls", type=int, help="per step count (default 40 N^2)")
    p.add_argument("--min-start", type=float, default=0.5,
                   help="the first step may start this low, as a fraction of the top time (1: always at the top)")
    p.add_argument("--max-start-signal", type=float, default=0.1,
                   help="... and only where the marginal's data coefficient a(t) is at most this")
    args = p.parse_args(argv)
    found, scale = write_folder(args.folder, args.nfe, args.batch_size, args.guidance_scale, args.seed,
                                measure_on=args.measure_on, solver=args.solver, candidates=args.candidates, refine_calls=args.refine_calls, min_start=args.min_start,
                                max_start_signal=args.max_start_signal)
    guided = f", guidance scale {scale}" if scale is not None else ""
    print(f"{args.folder}/scheduler/scheduler_config.json: optimized_timesteps for {sorted(found)}{guided}")
    for n, r in sorted(found.items()):
        print(f"  {n} steps: error {r.error:.4g} (its grid before: {r.start_error:.4g}), {r.model_calls} model calls, "
              f"{r.seconds:.0f} CPU s: {[round(v, 2) for v in r.timesteps]}")
    return 0


__all__ = ["OptimizedSteps", "as_config", "optimize_steps", "pipeline_model", "write_folder"]


if __name__ == "__main__":
    raise SystemExit(main())
