"""The sampler catalogue, in one place: every sampler hf_ddm offers, by name and by label, and which of
them make sense for a model -- decided by the process the model was trained with (the scheduler saved in its
folder), never by the model's name. Read by the Space (its sampler menu and compare mode),
``benchmarks/eval_quality.py`` (``--scheduler NAME``) and ``benchmarks/bench_samplers.py``.

* ``SAMPLERS``: name -> ``SamplerSpec`` -- one table. Its hf_ddm entries are the variants of
  ``hf_ddm.solver_registry`` (a solver added there appears here, in the Space and in the benchmark without
  an edit); diffusers' schedulers follow. ``make_scheduler(name, config)`` builds one from a model's
  scheduler config.
* ``catalogue(scheduler)``: label -> ``Sampler`` for one model, the entries of ``SAMPLERS`` that have a
  label and serve the model's process family, in table order:

  - discrete VP (``VPScheduler`` / any diffusers DDPM-DDIM-... config, any beta schedule): DDPM
    ancestral, DDIM (eta 0 and 1), diffusers' DPM-Solver++ and UniPC, and every ``SDEScheduler``
    solver on the model's own discrete schedule (``SDEScheduler.from_config``);
  - discrete VE (``VEScheduler``): SMLD ancestral and reverse diffusion, each with or without a
    Langevin corrector;
  - continuous SDE (``SDEScheduler``): every solver on the model's own process; for the VP SDE also
    diffusers' DPM-Solver++ and UniPC on the equivalent discrete schedule.

  Every catalogue starts with "as saved": the model folder's own scheduler, untouched.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from .solver_registry import SCHEDULER_KEYS, SOLVERS
from .schedulers.diffusers_configs import MODEL_KEYS
from .schedulers.sde import SDEScheduler
from .schedulers.ve import VEScheduler
from .schedulers.vp import VPScheduler

AS_SAVED = "as saved (the model's own scheduler)"
# Process families (``process_family``) each scheduler class can serve. diffusers' VP schedulers run a
# VP SDE on its discrete counterpart, but only for models that predict what they read (not a score).
FAMILIES = {
    "VPScheduler": ("vp",),
    "VEScheduler": ("ve",),
    "SDEScheduler": ("vp", "sde:vp", "sde:subvp", "sde:ve"),
    "diffusers": ("vp", "sde:vp"),
}
# Config keys that pick a sampler rather than describe the model: a sampler built from a model's config
# drops them and sets its own.
SAMPLER_CHOICE_KEYS = ("sampler", "eta", "solver", "predictor",
                       # steps optimized for the saved solver (hf_ddm.few_step): "as saved" runs them, no other sampler
                       "optimized_timesteps")


@dataclass(frozen=True)
class SamplerSpec:
    """A named sampler: ``module.cls.from_config(model_config, **overrides)``. ``label``: its name in the
    Space (None: by name only); ``families``: the process families it is offered for."""

    module: str
    cls: str
    overrides: Dict[str, object] = field(default_factory=dict)
    nfe_per_step: int = 1  # model evaluations per requested step (Heun, predictor-corrector: 2)
    label: Optional[str] = None
    families: Tuple[str, ...] = ()

    def make(self, config):
        scheduler_cls = getattr(importlib.import_module(self.module), self.cls)
        config = {k: v for k, v in dict(config).items() if k not in SAMPLER_CHOICE_KEYS}
        return scheduler_cls.from_config(config, **self.overrides)


_MODULES = {"SDEScheduler": "hf_ddm.schedulers.sde", "VPScheduler": "hf_ddm.schedulers.vp",
            "VEScheduler": "hf_ddm.schedulers.ve"}


def _registry_specs() -> Dict[str, SamplerSpec]:
    """Every variant of every registered solver, hf_ddm's discrete schedulers first (the Space's order)."""
    out = {}
    for scheduler in ("VPScheduler", "VEScheduler", "SDEScheduler"):
        for solver in SOLVERS.values():
            for v in solver.variants:
                if v.scheduler != scheduler:
                    continue
                overrides = {SCHEDULER_KEYS[scheduler]: solver.config_name(scheduler), **v.overrides}
                # VEScheduler's correct_steps are Langevin calls of its own; in SDEScheduler only ``pc`` has them.
                correctors = solver.correctors or scheduler == "VEScheduler"
                nfe = solver.calls_per_step + (int(overrides.get("correct_steps", 1)) if correctors else 0)
                out[v.name] = SamplerSpec(_MODULES[scheduler], scheduler, overrides, nfe, v.label,
                                          v.families or FAMILIES[scheduler])
    return out


def _diffusers(cls: str, overrides=None, nfe: int = 1, label: Optional[str] = None) -> SamplerSpec:
    return SamplerSpec("diffusers", cls, dict(overrides or {}), nfe, label, FAMILIES["diffusers"] if label else ())


_REGISTRY = _registry_specs()
_VP_AND_VE = {k: v for k, v in _REGISTRY.items() if v.cls != "SDEScheduler"}
SAMPLERS: Dict[str, SamplerSpec] = {
    **_VP_AND_VE,
    "dpm++": _diffusers("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"},
                        label="DPM-Solver++(2M) (diffusers)"),
    "unipc": _diffusers("UniPCMultistepScheduler", label="UniPC (diffusers)"),
    **{k: v for k, v in _REGISTRY.items() if v.cls == "SDEScheduler"},
    "ddpm": _diffusers("DDPMScheduler"),
    "ddim": _diffusers("DDIMScheduler"),
    "dpm++-karras": _diffusers("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "euler": _diffusers("EulerDiscreteScheduler"),
    "euler-a": _diffusers("EulerAncestralDiscreteScheduler"),
    "heun": _diffusers("HeunDiscreteScheduler", nfe=2),
}
UNIFORM_2M = SAMPLERS["sde-multistep-uniform"].label


def make_scheduler(name: str, config):
    """The scheduler named ``name`` (a key of ``SAMPLERS``) for a model whose scheduler config is ``config``."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name].make(config)


@dataclass(frozen=True)
class Sampler:
    label: str
    make: Callable[[], object]  # a fresh scheduler (schedulers hold per-run state: never share one)
    nfe_per_step: int = 1  # model evaluations per requested step (Heun, predictor-corrector: 2)


def process_family(scheduler) -> str:
    """'vp', 've', 'sde:<vp|subvp|ve>' or 'other' for a loaded scheduler."""
    if isinstance(scheduler, SDEScheduler) and scheduler.is_discrete_schedule:
        return "vp"  # a diffusers schedule run by an hf_ddm solver: every discrete-VP sampler applies
    if isinstance(scheduler, SDEScheduler):
        sde = scheduler.config.sde
        return "sde:" + ("subvp" if sde in ("sub-vp", "sub_vp") else sde)
    if isinstance(scheduler, VEScheduler):
        return "ve"
    if isinstance(scheduler, VPScheduler) or hasattr(scheduler, "alphas_cumprod"):
        return "vp"
    return "other"


def schedule_config(config) -> dict:
    """A DDPMScheduler-style config (what VPScheduler and diffusers' multistep solvers read); from a
    discrete-schedule SDEScheduler's config, its schedule (model) keys only."""
    config = dict(config)
    if "solver" in config:
        if config.get("beta_schedule") is None and config.get("trained_betas") is None:
            # a continuous SDE has no discrete schedule: its keys would silently become a linear-beta VP
            raise ValueError(f"schedule_config: a continuous {config.get('sde')!r} SDEScheduler config has no "
                             "discrete schedule; keep its own config and change only the solver")
        return {k: v for k, v in config.items() if k in MODEL_KEYS and k != "timestep_spacing"}
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in ("sampler", "eta")}


def _model_configs(family: str, base_config: dict) -> Dict[str, Optional[dict]]:
    """The config each scheduler class reads a model from, by class ("diffusers": any diffusers scheduler);
    None where the class cannot serve this model."""
    base = {k: v for k, v in base_config.items() if not k.startswith("_")}
    if family == "vp":
        discrete = schedule_config(base_config)
        # Every SDE / ODE solver on exactly this discrete schedule, whatever its betas.
        # hf_ddm's own grid (the registry's variants change it where they name one), not the checkpoint's spacing.
        on_schedule = {k: v for k, v in SDEScheduler.from_config(discrete, time_grid="log_snr").config.items()
                       if not k.startswith("_")}
        return {"VPScheduler": discrete, "diffusers": discrete, "SDEScheduler": on_schedule}
    if family == "ve":
        return {"VEScheduler": base}
    if family.startswith("sde:"):
        configs = {"SDEScheduler": {k: v for k, v in base.items()
                                    if k not in ("solver", "correct_steps", "solver_order", "optimized_timesteps")}}
        if family == "sde:vp" and base.get("prediction_type", "epsilon") in ("epsilon", "sample", "v_prediction"):
            # The VP SDE's discrete counterpart: T steps of beta_i = beta(t_i) / T; timesteps i ~ t * T.
            T = int(round(float(base.get("timestep_scale") or 1000.0)))
            configs["diffusers"] = dict(
                num_train_timesteps=T, beta_schedule="linear", beta_start=float(base.get("beta_min", 0.1)) / T,
                beta_end=float(base.get("beta_max", 20.0)) / T, prediction_type=base.get("prediction_type", "epsilon"),
            )
        return configs
    return {}


def catalogue(scheduler) -> Dict[str, Sampler]:
    """Label -> Sampler for a model whose saved scheduler is ``scheduler`` (ordered for the UI)."""
    base_config = dict(scheduler.config)
    out: Dict[str, Sampler] = {
        AS_SAVED: Sampler(AS_SAVED, lambda: type(scheduler).from_config(base_config),
                          nfe_per_step=int(getattr(scheduler, "order", 1) or 1))
    }
    family = process_family(scheduler)
    configs = _model_configs(family, base_config)
    specs = list(SAMPLERS.values())
    if family.startswith("sde:"):  # a continuous model's own solvers first, diffusers' (on a counterpart) after
        specs.sort(key=lambda spec: spec.module == "diffusers")
    for spec in specs:
        config = configs.get("diffusers" if spec.module == "diffusers" else spec.cls)
        if spec.label is None or family not in spec.families or config is None:
            continue
        out[spec.label] = Sampler(spec.label, lambda spec=spec, config=config: spec.make(config), spec.nfe_per_step)
    return out


def labels(scheduler) -> List[str]:
    return list(catalogue(scheduler))


def solver_of(scheduler) -> Tuple[str, Optional[str]]:
    """(scheduler class, the solver it runs) -- the registry's config key of its class, or diffusers' own
    algorithm: what makes two samplers different algorithms rather than two grids of one."""
    config = dict(scheduler.config)
    key = SCHEDULER_KEYS.get(type(scheduler).__name__)
    return type(scheduler).__name__, str(config.get(key) if key else config.get("algorithm_type"))


def _public(config) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


# How a saved config's grid reads in a label (SDEScheduler's time_grid; diffusers' timestep_spacing).
GRID_WORDS = {"log_snr": "steps uniform in log-SNR", "uniform": "steps uniform in t", "rho": "EDM rho-spaced steps",
              "leading": "leading spacing", "trailing": "trailing spacing", "linspace": "linspace spacing"}


def describe_saved(scheduler, samplers: Optional[Dict[str, Sampler]] = None) -> str:
    """What "as saved" is for this model, in the catalogue's words: its solver's name (the label of the
    catalogue entry that is the same scheduler, else the registry's) and its time grid."""
    samplers = catalogue(scheduler) if samplers is None else samplers
    saved = _public(scheduler.config)
    name = None
    for label, sampler in samplers.items():
        made = sampler.make() if label != AS_SAVED else None
        if made is not None and type(made) is type(scheduler) and _public(made.config) == saved:
            name = label
            break
    cls, solver = solver_of(scheduler)
    if name is None and solver in SOLVERS:
        name = next((v.label for v in SOLVERS[solver].variants if v.label and v.scheduler == cls), solver)
    if name is None:
        name = cls if solver in (None, "None") else f"{cls} ({solver})"
    name = name.replace(" (hf_ddm)", "")
    grid = saved.get("time_grid") or saved.get("timestep_spacing")
    if grid == "spacing":  # SDEScheduler on the checkpoint's own diffusers spacing
        grid = saved.get("timestep_spacing") or "leading"
    if grid and "steps" not in name:
        name = f"{name}, {GRID_WORDS.get(grid, f'{grid} grid')}"
    if saved.get("optimized_timesteps"):
        name += f"; optimized steps for N = {', '.join(str(k) for k in saved['optimized_timesteps'])}"
    return name


__all__ = ["AS_SAVED", "UNIFORM_2M", "solver_of", "describe_saved", "schedule_config", "SAMPLERS", "SamplerSpec", "Sampler", "make_scheduler", "catalogue",
           "labels", "process_family"]
