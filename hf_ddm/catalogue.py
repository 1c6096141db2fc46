"""The sampler catalogue, in one place: every sampler hf_ddm offers, by name, and which of them make sense
for a model -- decided by the process the model was trained with (the scheduler saved in its folder),
never by the model's name. Read by the Space, ``benchmarks/eval_quality.py`` (``--scheduler NAME``) and
``benchmarks/bench_samplers.py``.

* ``SAMPLERS``: name -> ``SamplerSpec`` (scheduler class, config overrides, model calls per step);
  ``make_scheduler(name, config)`` builds one from a model's scheduler config.
* ``catalogue(scheduler)``: label -> ``Sampler`` for one model, ordered for a UI:

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
from typing import Callable, Dict, List

from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from .schedulers.diffusers_configs import MODEL_KEYS
from .schedulers.sde import SOLVERS, SDEScheduler
from .schedulers.ve import VEScheduler
from .schedulers.vp import VPScheduler

AS_SAVED = "as saved (the model's own scheduler)"


@dataclass(frozen=True)
class SamplerSpec:
    """A named sampler: ``module.cls.from_config(model_config, **overrides)``."""

    module: str
    cls: str
    overrides: Dict[str, object] = field(default_factory=dict)
    nfe_per_step: int = 1  # model evaluations per requested step (Heun, predictor-corrector: 2)

    def make(self, config):
        scheduler_cls = getattr(importlib.import_module(self.module), self.cls)
        config = {k: v for k, v in dict(config).items() if k not in ("sampler", "eta", "solver", "predictor")}
        return scheduler_cls.from_config(config, **self.overrides)


_HF = "hf_ddm.schedulers"
SAMPLERS: Dict[str, SamplerSpec] = {
    "vp-ddpm": SamplerSpec(f"{_HF}.vp", "VPScheduler", {"sampler": "ddpm"}),
    "vp-ddim": SamplerSpec(f"{_HF}.vp", "VPScheduler", {"sampler": "ddim"}),
    "ve-ancestral": SamplerSpec(f"{_HF}.ve", "VEScheduler", {"predictor": "ancestral"}),
    "ve-reverse_diffusion": SamplerSpec(f"{_HF}.ve", "VEScheduler", {"predictor": "reverse_diffusion"}),
    **{f"sde-{s}": SamplerSpec(f"{_HF}.sde", "SDEScheduler", {"solver": s},
                               nfe_per_step={"ode_heun": 2, "pc": 2}.get(s, 1)) for s in SOLVERS},
    "sde-multistep3": SamplerSpec(f"{_HF}.sde", "SDEScheduler", {"solver": "multistep", "solver_order": 3}),
    "ddpm": SamplerSpec("diffusers", "DDPMScheduler"),
    "ddim": SamplerSpec("diffusers", "DDIMScheduler"),
    "dpm++": SamplerSpec("diffusers", "DPMSolverMultistepScheduler"),
    "dpm++-karras": SamplerSpec("diffusers", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "euler": SamplerSpec("diffusers", "EulerDiscreteScheduler"),
    "euler-a": SamplerSpec("diffusers", "EulerAncestralDiscreteScheduler"),
    "heun": SamplerSpec("diffusers", "HeunDiscreteScheduler", nfe_per_step=2),
    "unipc": SamplerSpec("diffusers", "UniPCMultistepScheduler"),
}


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


UNIFORM_2M = "ODE: DPM-Solver++(2M), steps uniform in t (hf_ddm)"


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


def _sde_solvers(base_kwargs: dict) -> Dict[str, Sampler]:
    base_kwargs = {k: v for k, v in base_kwargs.items() if not k.startswith("_")}

    def make(**kw):
        return lambda: SDEScheduler(**{**base_kwargs, **kw})

    return {
        "SDE: Euler-Maruyama (reverse SDE)": Sampler("", make(solver="euler_maruyama")),
        "SDE: reverse diffusion": Sampler("", make(solver="reverse_diffusion")),
        "SDE: ancestral": Sampler("", make(solver="ancestral")),
        "SDE: predictor-corrector (reverse diffusion + 1 Langevin)": Sampler(
            "", make(solver="pc", correct_steps=1), nfe_per_step=2
        ),
        "ODE: probability-flow Euler": Sampler("", make(solver="ode_euler")),
        "ODE: probability-flow Heun (2 NFE/step)": Sampler("", make(solver="ode_heun"), nfe_per_step=2),
        "ODE: multistep DPM-Solver++(2M) (hf_ddm)": Sampler("", make(solver="multistep", solver_order=2)),
        "ODE: multistep DPM-Solver++(3M) (hf_ddm)": Sampler("", make(solver="multistep", solver_order=3)),
    }


def _diffusers_multistep(discrete_config: dict) -> Dict[str, Sampler]:
    return {
        "DPM-Solver++(2M) (diffusers)": Sampler(
            "", lambda: DPMSolverMultistepScheduler.from_config(discrete_config, algorithm_type="dpmsolver++")
        ),
        "UniPC (diffusers)": Sampler("", lambda: UniPCMultistepScheduler.from_config(discrete_config)),
    }


def catalogue(scheduler) -> Dict[str, Sampler]:
    """Label -> Sampler for a model whose saved scheduler is ``scheduler`` (ordered for the UI)."""
    base_config = dict(scheduler.config)
    out: Dict[str, Sampler] = {
        AS_SAVED: Sampler(AS_SAVED, lambda: type(scheduler).from_config(base_config),
                          nfe_per_step=int(getattr(scheduler, "order", 1) or 1))
    }
    family = process_family(scheduler)
    if family == "vp":
        cfg = vp_cfg = schedule_config(base_config)
        out["DDPM ancestral (VPScheduler)"] = Sampler("", lambda: VPScheduler.from_config(vp_cfg, sampler="ddpm"))
        out["DDIM, eta=0 (VPScheduler)"] = Sampler(
            "", lambda: VPScheduler.from_config(vp_cfg, sampler="ddim", eta=0.0))
        out["DDIM, eta=1 (VPScheduler)"] = Sampler(
            "", lambda: VPScheduler.from_config(vp_cfg, sampler="ddim", eta=1.0))
        out.update(_diffusers_multistep(cfg))
        # Every SDE / ODE solver on exactly this discrete schedule, whatever its betas.
        sde_cfg = dict(SDEScheduler.from_config(cfg).config)
        out.update(_sde_solvers(sde_cfg))
        # A trained discrete-time model at few steps: steps evenly spaced in train time, no extra final
        # denoising call (the DPM-Solver authors' advice for guided sampling; diffusers' linspace grid).
        # Shipped ldm_class, CFG 3, 6 steps: mean |x - x_100 steps| 0.028 vs 0.18 on the log-SNR grid;
        # 10 steps 0.011 vs 0.022; 20 steps 0.005 vs 0.006 (benchmarks/results/samplers.md).
        out[UNIFORM_2M] = Sampler("", lambda: SDEScheduler.from_config(
            sde_cfg, solver="multistep", solver_order=2, time_grid="uniform", denoise_final=False))
    elif family == "ve":
        cfg = {k: v for k, v in base_config.items() if not k.startswith("_")}

        def ve(predictor, correct):
            return lambda: VEScheduler.from_config({**cfg, "predictor": predictor, "correct_steps": correct})

        out["SMLD ancestral (VEScheduler)"] = Sampler("", ve("ancestral", 0))
        out["reverse diffusion (VEScheduler)"] = Sampler("", ve("reverse_diffusion", 0))
        out["PC: ancestral + Langevin corrector (VEScheduler)"] = Sampler("", ve("ancestral", 1), nfe_per_step=2)
        out["PC: reverse diffusion + Langevin corrector (VEScheduler)"] = Sampler(
            "", ve("reverse_diffusion", 1), nfe_per_step=2)
    elif family.startswith("sde:"):
        kwargs = {k: v for k, v in base_config.items() if not k.startswith("_")}
        for k in ("solver", "correct_steps", "solver_order"):
            kwargs.pop(k, None)
        out.update(_sde_solvers(kwargs))
        if family == "sde:vp" and kwargs.get("prediction_type", "epsilon") in ("epsilon", "sample", "v_prediction"):
            # The VP SDE's discrete counterpart: T steps of beta_i = beta(t_i) / T; timesteps i ~ t * T.
            T = int(round(float(kwargs.get("timestep_scale", 1000.0))))
            discrete = dict(
                num_train_timesteps=T, beta_schedule="linear", beta_start=float(kwargs.get("beta_min", 0.1)) / T,
                beta_end=float(kwargs.get("beta_max", 20.0)) / T, prediction_type=kwargs.get("prediction_type", "epsilon"),
            )
            out.update(_diffusers_multistep(discrete))
    return {label: Sampler(label, s.make, s.nfe_per_step) for label, s in out.items()}


def labels(scheduler) -> List[str]:
    return list(catalogue(scheduler))


__all__ = ["AS_SAVED", "UNIFORM_2M", "schedule_config", "SAMPLERS", "SamplerSpec", "Sampler", "make_scheduler", "catalogue", "labels", "process_family"]
