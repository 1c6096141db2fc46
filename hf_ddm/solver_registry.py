"""The solver registry: every sampler hf_ddm's schedulers run, each defined once, with what the rest of
the package needs to know about it.

The update formulas live in ``hf_ddm.solvers``; a ``Solver`` here says, for one of them, what it is called
(its ``SDEScheduler(solver=...)`` name, its name in the discrete schedulers' configs, its labels), what it
costs (model calls per step), what it is (order, stochastic or not, the processes it runs on, the state it
keeps, the per-step options it takes, ``eta`` among them) and how a sampling loop drives it (its
``Stepper``). Everything that lists or picks solvers reads this table and nothing else: the schedulers'
dispatch (``SDEScheduler.solver``, ``VPScheduler.sampler``, ``VEScheduler.predictor``), ``hf_ddm.catalogue``
(so the Space's sampler menu and compare mode), ``benchmarks/bench_samplers.py``, the training scripts'
validation sampler (``--solver``) and the parametrised tests.

Adding a solver is its formula in ``hf_ddm.solvers``, one ``Solver(...)`` in ``SOLVERS`` below, and a row
in the tests' step table (``tests/test_sched_sde.py``'s ``STEPS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

from .processes import Point
from .solvers import IPNDM, DPMSolverPP, Heun, ancestral, ddim, euler_maruyama, langevin, reverse_diffusion

# The processes of hf_ddm's schedulers: every solver here is written in (a, s) and runs on all of them,
# continuous or on a diffusers discrete schedule.
ALL_PROCESSES = ("vp", "subvp", "ve")
# The schedulers a solver can name itself in (their config key for it).
SCHEDULER_KEYS = {"SDEScheduler": "solver", "VPScheduler": "sampler", "VEScheduler": "predictor"}


class StepContext(NamedTuple):
    """What a stepper may read besides the sample and the model's estimate at one model call."""

    step: int  # index of the grid step i -> i + 1
    num_steps: int  # grid steps of the run
    eta: float  # DDIM's eta (0 unless the solver takes it)
    noise: Callable  # draws the noise of this call (the scheduler's noise source)


# ------------------------------------------------------------------------------------------------
# Steppers: how the plain diffusers loop drives a solver. One model call = one *stage*; a grid step
# i -> i + 1 is one or more stages. A stepper is built per scheduler (it holds the run's state).
# ------------------------------------------------------------------------------------------------


class Stepper:
    """One stage per step, evaluated at the step's start: the single-evaluation rules."""

    AT_NEXT = frozenset()  # stages whose model call is at t_{i+1} (Heun's corrector)
    STAY = frozenset()  # stages that stay at t_i (Langevin correctors)

    def __init__(self, rule: Callable, options: Tuple[str, ...] = ()):
        self.rule, self.options = rule, options

    def stages(self, config, into_clean: bool) -> List[str]:
        return ["step"]

    def __call__(self, stage, x, x0, eps, cur: Point, nxt: Point, ctx: StepContext):
        """(mean, std, noise already drawn or None) of the sample after this stage."""
        kwargs = {"eta": ctx.eta} if "eta" in self.options else {}
        return (*self.rule(x, x0, eps, cur, nxt, **kwargs), None)

    def reset(self):
        pass


class HeunStepper(Stepper):
    """Predictor at t_i, corrector at t_{i+1}; into clean data the predictor alone (``Heun``)."""

    AT_NEXT = frozenset({"heun2"})

    def __init__(self):
        self.heun = Heun()

    def stages(self, config, into_clean):
        return ["heun1"] if into_clean else ["heun1", "heun2"]

    def __call__(self, stage, x, x0, eps, cur, nxt, ctx):
        update = self.heun.predict if stage == "heun1" else self.heun.correct
        return (*update(x, x0, eps, cur, nxt), None)

    def reset(self):
        self.heun.reset()


class PredictorCorrectorStepper(Stepper):
    """``correct_steps`` Langevin corrections at t_i (score_sde's order: correctors first), then the
    reverse-diffusion predictor. The corrector's step size depends on the noise it adds, so it draws it."""

    STAY = frozenset({"correct"})

    def __init__(self, snr: float):
        self.snr = snr

    def stages(self, config, into_clean):
        return ["correct"] * config.correct_steps + ["step"]

    def __call__(self, stage, x, x0, eps, cur, nxt, ctx):
        if stage == "step":
            return (*reverse_diffusion(x, x0, eps, cur, nxt), None)
        z = ctx.noise()
        # score_sde's VP step-size factor alpha = 1 - beta, generalised to the exact r^2 of the transition.
        return (*langevin(x, x0, eps, cur, snr=self.snr, scale=(cur.a / nxt.a) ** 2, noise=z), z)


class MultistepStepper(Stepper):
    """DPM-Solver++(kM) (``DPMSolverPP``); the last two steps of a short run (< 15 steps) at most
    second order (diffusers' ``lower_order_final``)."""

    def __init__(self, order: int, stochastic: bool = False):
        self.multistep = DPMSolverPP(order, stochastic=stochastic)

    def __call__(self, stage, x, x0, eps, cur, nxt, ctx):
        final_steps = ctx.num_steps < 15 and ctx.step >= ctx.num_steps - 2
        return (*self.multistep(x, x0, eps, cur, nxt, final_steps=final_steps), None)

    def reset(self):
        self.multistep.reset()


class IPNDMStepper(Stepper):
    """iPNDM (``IPNDM``), up to fourth order, lower order while its history fills."""

    def __init__(self):
        self.ipndm = IPNDM(4)

    def __call__(self, stage, x, x0, eps, cur, nxt, ctx):
        return (*self.ipndm(x, x0, eps, cur, nxt), None)

    def reset(self):
        self.ipndm.reset()


# ------------------------------------------------------------------------------------------------
# The registry
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One catalogue entry of a solver: ``scheduler`` ("SDEScheduler", "VPScheduler", "VEScheduler")
    with the solver and ``overrides``, under ``name`` (``hf_ddm.catalogue.SAMPLERS``, ``eval_quality
    --scheduler``) and ``label`` (the Space's menu). ``families``: the process families it is offered for
    (``hf_ddm.catalogue.process_family``; None: every family the scheduler class serves)."""

    name: str
    label: str
    scheduler: str = "SDEScheduler"
    overrides: Mapping[str, object] = field(default_factory=dict)
    families: Optional[Tuple[str, ...]] = None


@dataclass(frozen=True)
class Solver:
    name: str  # SDEScheduler(solver=name)
    label: str  # what it is, in a few words
    stochastic: bool  # draws noise at every step (an SDE sampler) or not (an ODE solver)
    order: int  # order of accuracy in the step size (the multistep solver: at most; solver_order picks)
    calls_per_step: int  # model calls of one grid step (the last step into clean data may need fewer)
    make_stepper: Callable  # config -> Stepper: how the diffusers loop drives it
    state: str = "none"  # what it keeps between model calls: "none", "predictor point", "x0 history"
    options: Tuple[str, ...] = ()  # per-step options its formula takes: "eta" (DDIM's), "variance" (DDPM's)
    correctors: bool = False  # each step is preceded by the config's ``correct_steps`` Langevin calls
    rule: Optional[Callable] = None  # the one-call formula (the discrete schedulers run only these)
    processes: Tuple[str, ...] = ALL_PROCESSES
    aliases: Mapping[str, str] = field(default_factory=dict)  # scheduler class -> its name in that config
    variants: Tuple[Variant, ...] = ()
    short: Optional[str] = None  # its name in benchmark tables (default: ``name``)

    @property
    def takes_eta(self) -> bool:
        return "eta" in self.options

    def config_name(self, scheduler: str) -> Optional[str]:
        """The value of ``scheduler``'s config key that selects this solver (None: it does not run there)."""
        if scheduler == "SDEScheduler":
            return self.name
        return self.aliases.get(scheduler)

    def model_calls(self, config) -> int:
        """Model calls per grid step under ``config`` (a mapping or a scheduler config)."""
        get = config.get if isinstance(config, Mapping) else (lambda k, d=None: getattr(config, k, d))
        return self.calls_per_step + (int(get("correct_steps", 1)) if self.correctors else 0)


def _single(rule, options=()):
    return lambda config: Stepper(rule, options)


SOLVERS: Dict[str, Solver] = {s.name: s for s in (
    Solver("euler_maruyama", "reverse-SDE Euler-Maruyama, linear part exact", stochastic=True, order=1,
           calls_per_step=1, rule=euler_maruyama, make_stepper=_single(euler_maruyama),
           variants=(Variant("sde-euler_maruyama", "SDE: Euler-Maruyama (reverse SDE)"),)),
    Solver("reverse_diffusion", "reverse-diffusion predictor on the exact transition", stochastic=True, order=1,
           calls_per_step=1, rule=reverse_diffusion, make_stepper=_single(reverse_diffusion),
           aliases={"VEScheduler": "reverse_diffusion"},
           variants=(Variant("sde-reverse_diffusion", "SDE: reverse diffusion"),
                     Variant("ve-reverse_diffusion", "reverse diffusion (VEScheduler)", "VEScheduler",
                             {"correct_steps": 0}),
                     Variant("ve-pc-reverse_diffusion", "PC: reverse diffusion + Langevin corrector (VEScheduler)",
                             "VEScheduler", {"correct_steps": 1}))),
    Solver("ancestral", "a draw from the posterior q(x' | x, x0_hat) (DDPM, SMLD ancestral)", stochastic=True,
           order=1, calls_per_step=1, options=("variance",), rule=ancestral,
           make_stepper=_single(ancestral), aliases={"VPScheduler": "ddpm", "VEScheduler": "ancestral"},
           variants=(Variant("sde-ancestral", "SDE: ancestral"),
                     Variant("vp-ddpm", "DDPM ancestral (VPScheduler)", "VPScheduler"),
                     Variant("ve-ancestral", "SMLD ancestral (VEScheduler)", "VEScheduler", {"correct_steps": 0}),
                     Variant("ve-pc-ancestral", "PC: ancestral + Langevin corrector (VEScheduler)", "VEScheduler",
                             {"correct_steps": 1}))),
    Solver("pc", "Langevin correctors, then the reverse-diffusion predictor", stochastic=True, order=1,
           calls_per_step=1, correctors=True, make_stepper=lambda config: PredictorCorrectorStepper(
               float(config.corrector_snr if config.corrector_snr is not None else config.snr)),
           variants=(Variant("sde-pc", "SDE: predictor-corrector (reverse diffusion + 1 Langevin)",
                             overrides={"correct_steps": 1}),)),
    Solver("ode_euler", "probability-flow ODE, exponential Euler (= DDIM, DPM-Solver++(1))", stochastic=False,
           order=1, calls_per_step=1, options=("eta",), rule=ddim,
           make_stepper=_single(ddim, ("eta",)), aliases={"VPScheduler": "ddim"},
           variants=(Variant("sde-ode_euler", "ODE: probability-flow Euler"),
                     Variant("vp-ddim", "DDIM, eta=0 (VPScheduler)", "VPScheduler", {"eta": 0.0}),
                     Variant("vp-ddim-eta1", "DDIM, eta=1 (VPScheduler)", "VPScheduler", {"eta": 1.0}))),
    Solver("ode_heun", "probability-flow ODE, Heun (trapezoid on x0_hat in log-SNR)", stochastic=False, order=2,
           calls_per_step=2, state="predictor point", make_stepper=lambda config: HeunStepper(),
           variants=(Variant("sde-ode_heun", "ODE: probability-flow Heun (2 NFE/step)"),)),
    Solver("multistep", "probability-flow ODE, DPM-Solver++(1/2/3M) in log-SNR", stochastic=False, order=3,
           calls_per_step=1, state="x0 history", make_stepper=lambda config: MultistepStepper(config.solver_order),
           variants=(Variant("sde-multistep", "ODE: multistep DPM-Solver++(2M) (hf_ddm)",
                             overrides={"solver_order": 2}),
                     Variant("sde-multistep3", "ODE: multistep DPM-Solver++(3M) (hf_ddm)",
                             overrides={"solver_order": 3}),
                     # A trained discrete-time model at few steps: steps evenly spaced in train time, no extra
                     # final denoising call (the DPM-Solver authors' advice for guided sampling; diffusers'
                     # linspace grid). Shipped ldm_class, CFG 3, 6 steps: mean |x - x_100 steps| 0.028 vs 0.18
                     # on the log-SNR grid; 10 steps 0.011 vs 0.022; 20 steps 0.005 vs 0.006
                     # (benchmarks/results/samplers.md).
                     Variant("sde-multistep-uniform", "ODE: DPM-Solver++(2M), steps uniform in t (hf_ddm)",
                             overrides={"solver_order": 2, "time_grid": "uniform", "denoise_final": False},
                             families=("vp",)))),
    Solver("ipndm", "probability-flow ODE, iPNDM (Adams-Bashforth on eps in sigma = s/a, fixed weights, order 4)",
           stochastic=False, order=4, calls_per_step=1, state="eps history", make_stepper=lambda config: IPNDMStepper(),
           short="iPNDM",
           variants=(Variant("sde-ipndm", "ODE: iPNDM (few-step multistep) (hf_ddm)"),)),
    Solver("multistep_sde", "reverse SDE, SDE-DPM-Solver++(2M) in log-SNR (diffusers' sde-dpmsolver++)",
           stochastic=True, order=2, calls_per_step=1, state="x0 history",
           make_stepper=lambda config: MultistepStepper(config.solver_order, stochastic=True),
           variants=(Variant("sde-multistep_sde", "SDE: multistep DPM-Solver++(2M) SDE (hf_ddm)",
                             overrides={"solver_order": 2}),)),
)}

NAMES: Tuple[str, ...] = tuple(SOLVERS)
STOCHASTIC: Tuple[str, ...] = tuple(n for n, s in SOLVERS.items() if s.stochastic)


def few_step_solvers() -> Dict[str, dict]:
    """The samplers few-step steps are calibrated for (``optimize_steps``' candidates in the benchmarks), as
    ``SDEScheduler`` keyword arguments by a short label: the deterministic solvers of one model call per step
    that keep a history of earlier calls -- what makes a solver accurate at a handful of calls -- the
    multistep one at each order its variants name ("2M", "3M", DPM-Solver++'s names)."""
    out = {}
    for s in SOLVERS.values():
        if s.stochastic or s.calls_per_step != 1 or not s.state.endswith("history"):
            continue
        orders = sorted({int(v.overrides["solver_order"]) for v in s.variants if "solver_order" in v.overrides})
        if orders:
            out.update({f"{o}M": dict(solver=s.name, solver_order=o) for o in orders})
        else:
            out[s.short or s.name] = dict(solver=s.name)
    return out


def get(name: str) -> Solver:
    """The solver ``SDEScheduler(solver=name)`` runs; a ValueError listing the others for an unknown name."""
    if name not in SOLVERS:
        raise ValueError(f"solver must be one of {NAMES}, got {name!r}")
    return SOLVERS[name]


def names_in(scheduler: str) -> Tuple[str, ...]:
    """The values ``scheduler``'s solver key (``SCHEDULER_KEYS``) accepts, in registry order."""
    return tuple(n for n in (s.config_name(scheduler) for s in SOLVERS.values()) if n is not None)


def for_config(scheduler: str, value: str) -> Solver:
    """The solver that ``scheduler``'s config names ``value`` (``VPScheduler``'s ``sampler="ddim"`` is
    ``ode_euler``); a ValueError naming the key and the choices otherwise."""
    for s in SOLVERS.values():
        if s.config_name(scheduler) == value:
            return s
    raise ValueError(f"{SCHEDULER_KEYS[scheduler]} must be one of {names_in(scheduler)}, got {value!r}")


def resolve(scheduler: str, name: str) -> Tuple[str, str]:
    """(config key, value) of ``scheduler`` for a solver given by its registry name or by that scheduler's
    own name for it (``--solver ddim`` and ``--solver ode_euler`` both give VPScheduler ``sampler="ddim"``);
    a ValueError when the solver does not run on ``scheduler``."""
    key = SCHEDULER_KEYS[scheduler]
    if name in names_in(scheduler):
        return key, name
    value = SOLVERS[name].config_name(scheduler) if name in SOLVERS else None
    if value is None:
        raise ValueError(f"solver {name!r} does not run on {scheduler}: its {key} is one of {names_in(scheduler)}")
    return key, value


__all__ = ["Solver", "Variant", "Stepper", "StepContext", "SOLVERS", "NAMES", "STOCHASTIC", "SCHEDULER_KEYS",
           "get", "names_in", "for_config", "resolve"]
