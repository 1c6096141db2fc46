"""The sampler catalogue: which schedulers make sense for a model, decided by the process the model was
trained with (the scheduler saved in its folder), never by the model's name.

* discrete VP (``VPScheduler`` / diffusers DDPM-DDIM configs): DDPM ancestral, DDIM (eta 0 and 1),
  diffusers' DPM-Solver++ and UniPC, and -- for the linear beta schedule, whose continuous limit is the
  VP SDE with beta(t) = T * beta_start ... T * beta_end (score_sde's reading of DDPM models) -- every
  ``SDEScheduler`` solver with ``timestep_scale = T - 1``.
* discrete VE (``VEScheduler``): SMLD ancestral and reverse diffusion, each with or without a Langevin
  corrector.
* continuous SDE (``SDEScheduler``): every solver on the model's own process; for the VP SDE also
  diffusers' DPM-Solver++ and UniPC on the equivalent discrete schedule.

Every catalogue starts with "as saved": the model folder's own scheduler, untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List

from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from hf_ddm.schedulers.sde import SDEScheduler
from hf_ddm.schedulers.ve import VEScheduler
from hf_ddm.schedulers.vp import VPScheduler

AS_SAVED = "as saved (the model's own scheduler)"


@dataclass(frozen=True)
class Sampler:
    label: str
    make: Callable[[], object]  # a fresh scheduler (schedulers hold per-run state: never share one)
    nfe_per_step: int = 1  # model evaluations per requested step (Heun, predictor-corrector: 2)


def process_family(scheduler) -> str:
    """'vp', 've', 'sde:<vp|subvp|ve>' or 'other' for a loaded scheduler."""
    if isinstance(scheduler, SDEScheduler):
        sde = scheduler.config.sde
        return "sde:" + ("subvp" if sde in ("sub-vp", "sub_vp") else sde)
    if isinstance(scheduler, VEScheduler):
        return "ve"
    if isinstance(scheduler, VPScheduler) or hasattr(scheduler, "alphas_cumprod"):
        return "vp"
    return "other"


def _vp_discrete_config(config) -> dict:
    """A DDPMScheduler-style config (what VPScheduler and diffusers' multistep solvers read)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_") and k not in ("sampler", "eta")}


def _sde_solvers(base_kwargs: dict) -> Dict[str, Sampler]:
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
        cfg = _vp_discrete_config(base_config)
        vp_cfg = dict(cfg)
        vp_cfg.pop("sampler", None)
        vp_cfg.pop("eta", None)
        out["DDPM ancestral (VPScheduler)"] = Sampler("", lambda: VPScheduler.from_config(vp_cfg, sampler="ddpm"))
        out["DDIM, eta=0 (VPScheduler)"] = Sampler(
            "", lambda: VPScheduler.from_config(vp_cfg, sampler="ddim", eta=0.0))
        out["DDIM, eta=1 (VPScheduler)"] = Sampler(
            "", lambda: VPScheduler.from_config(vp_cfg, sampler="ddim", eta=1.0))
        out.update(_diffusers_multistep(cfg))
        T = int(cfg.get("num_train_timesteps", 1000))
        prediction = cfg.get("prediction_type", "epsilon")
        if cfg.get("beta_schedule", "linear") == "linear" and cfg.get("trained_betas") is None \
                and prediction in ("epsilon", "sample", "v_prediction"):
            out.update(_sde_solvers(dict(
                sde="vp", beta_min=float(cfg.get("beta_start", 1e-4)) * T, beta_max=float(cfg.get("beta_end", 0.02)) * T,
                num_train_timesteps=T, timestep_scale=float(T - 1), prediction_type=prediction,
            )))
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


__all__ = ["AS_SAVED", "Sampler", "catalogue", "labels", "process_family"]
