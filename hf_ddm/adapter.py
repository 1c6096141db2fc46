"""The model adapter: a network + the process it was trained on + its prediction type + its timestep map
gives x0 / eps / score at (x, timestep) (k-diffusion's ``external.py`` idea). Everyone who converts a
model output goes through here -- classifier guidance, both likelihoods, the pipelines' step callbacks
(``pred_original_sample``), the Space's trajectory view, the exact mixture oracle the tests and
benchmarks use -- so no caller rebuilds (a, s), reads a prediction type or unwraps ``.sample`` itself.

Three pieces, each written once:

* ``process_view(scheduler, need)``: the hf_ddm scheduler that says what noise the model's input
  carries, built from anything -- an hf_ddm scheduler (itself), any diffusers VP scheduler or its config
  (the exact discrete schedule: ``SDEScheduler.from_config``, log-SNR linear between train timesteps),
  a saved config. ``need`` asks for a continuous-time process (the probability-flow ODE) or the discrete
  train grid (DDPM's bound).
* ``call_model(model, x, timestep)``: any network -- an hf_ddm ``UNet``, a diffusers ``UNet2DModel``,
  a plain callable, the mixture oracle -- as ``tensor in x's dtype`` (``.sample`` unwrapped).
* ``ModelAdapter(model, scheduler)``: the two together plus the prediction type; converts outputs.
  ``model`` may be None where only conversions are needed (guidance, step callbacks).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from .processes import DiscreteScheduleVP, DiscreteVP, check_prediction_type, convert, to_x0_eps

# What a caller can ask ``process_view`` for: any process, a continuous-time one, the discrete VP grid.
NEEDS = (None, "continuous", "discrete")
_WANTS = {  # need -> (who needs it, what it accepts)
    "continuous": ("the probability-flow ODE (ode_log_likelihood)", "a continuous-time process or a VP schedule"),
    "discrete": ("DDPM's bound (ddpm_bound)",
                 "a discrete VP schedule (VPScheduler, a diffusers VP scheduler, or SDEScheduler on a beta_schedule)"),
}
# The grid of an SDEScheduler view of a diffusers VP schedule: hf_ddm's own default (the view is read for its
# process; where a solver runs on it -- optimize_steps -- it is hf_ddm's sampler), not the checkpoint's spacing
# that ``SDEScheduler.from_config`` gives a user swapping schedulers.
VIEW_GRID = "log_snr"
# The schedule keys a discrete-VP hf_ddm scheduler takes from an SDEScheduler on a beta schedule.
_VP_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "trained_betas", "rescale_betas_zero_snr", "prediction_type")


def _read_config(config, need):
    """An hf_ddm scheduler for a scheduler config that is not one (a diffusers scheduler's, a dict, a path)."""
    from .schedulers.diffusers_configs import is_vp_schedule_config, load_config_dict
    from .schedulers.sde import SDEScheduler
    from .schedulers.ve import VEScheduler
    from .schedulers.vp import VPScheduler

    try:
        cfg = load_config_dict(SDEScheduler, config)
    except (TypeError, ValueError, OSError) as err:
        raise ValueError(f"scheduler: expected a scheduler or a scheduler config, got {type(config).__name__}") from err
    name = cfg.get("_class_name")  # absent from an in-memory config: then its own keys tell
    own = {c.__name__: c for c in (SDEScheduler, VEScheduler, VPScheduler)}.get(name)
    if own is None and name is None:
        own = SDEScheduler if "sde" in cfg else VEScheduler if "predictor" in cfg else None
    try:
        if own is not None:  # an hf_ddm scheduler's config: its own class reads it
            return own.from_config(cfg)
        if is_vp_schedule_config(cfg):
            if need == "discrete":
                # VPScheduler keeps the config's variance_type: the bound's default reverse variance.
                return VPScheduler.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
            return SDEScheduler.from_config(cfg, time_grid=VIEW_GRID)
        # score_sde's schedulers, named or (in memory) by their keys, as SDEScheduler.from_config tells them.
        if name in ("ScoreSdeVeScheduler", "ScoreSdeVpScheduler") or (name is None and ("sigma_max" in cfg or "beta_min" in cfg)):
            return SDEScheduler.from_config(cfg)
    except (TypeError, ValueError) as err:
        raise ValueError(f"scheduler: cannot read the noise process of this {name or 'scheduler'} config ({err})") from err
    # Anything else would silently become SDEScheduler's defaults: refuse it.
    raise ValueError(
        f"scheduler: cannot read a noise process from {name or type(config).__name__}; pass an hf_ddm scheduler, a "
        "diffusers VP scheduler (one with a beta schedule) or its config, or a ScoreSdeVe/VpScheduler config"
    )


def process_view(scheduler, need: Optional[str] = None):
    """The hf_ddm scheduler (``process``, ``marginal(timestep)``, ``t_to_timestep``, ``config.prediction_type``)
    describing the model input of ``scheduler``: an hf_ddm scheduler, a diffusers scheduler, or a config.

    ``need=None``: any process -- an hf_ddm scheduler as it is, a diffusers VP scheduler as
    ``SDEScheduler.from_config`` (exactly its discrete schedule, the model called at its train timestep).
    ``need="continuous"``: a continuous-time process; a discrete VP schedule (``VPScheduler``, diffusers) is
    read as that ``SDEScheduler``. ``need="discrete"``: the discrete VP train grid; an ``SDEScheduler`` on a
    beta schedule or a diffusers config becomes ``VPScheduler`` on the same schedule.
    A diffusers scheduler's view is built once and kept on it (its config never changes in place)."""
    if need not in NEEDS:
        raise ValueError(f"need must be one of {NEEDS}, got {need!r}")
    if getattr(scheduler, "process", None) is None:
        config = getattr(scheduler, "config", None)
        cache = getattr(scheduler, "_hf_ddm_views", None) if config is not None else None
        if cache is not None and cache[0] is config and need in cache[1]:
            return cache[1][need]
        view = _read_config(scheduler if config is None else config, need)
        view = process_view(view, need)
        if config is not None:
            if cache is None or cache[0] is not config:
                cache = (config, {})
                try:
                    scheduler._hf_ddm_views = cache
                except AttributeError:  # an object that takes no attributes: rebuild next time
                    pass
            cache[1][need] = view
        return view
    process = scheduler.process
    if need is None or (need == "continuous" and process.continuous) or (need == "discrete" and isinstance(process, DiscreteVP)):
        return scheduler
    from .schedulers.sde import SDEScheduler
    from .schedulers.vp import VPScheduler

    if need == "continuous" and isinstance(process, DiscreteVP):
        return process_view(SDEScheduler.from_config(dict(scheduler.config), time_grid=VIEW_GRID), need)
    if need == "discrete" and isinstance(process, DiscreteScheduleVP):
        cfg = scheduler.config
        return VPScheduler(beta_schedule=cfg.beta_schedule or "linear", clip_sample=False, **{k: cfg[k] for k in _VP_KEYS})
    who, what = _WANTS[need]
    hint = " -- use SDEScheduler(sde='ve')" if need == "continuous" else ""
    raise ValueError(f"scheduler: {who} needs {what}; {type(scheduler).__name__} runs {type(process).__name__}{hint}")


def noise_level(scheduler, timestep, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(a, s) of the model input x = a x0 + s eps at the model timestep(s) ``timestep``, on ``like``'s
    device and dtype, for any scheduler ``process_view`` reads."""
    # Process tables live on the CPU; a timestep on the GPU would index them across devices.
    a, s = process_view(scheduler).marginal(torch.as_tensor(timestep).detach().cpu())
    return torch.as_tensor(a).to(like.device, like.dtype), torch.as_tensor(s).to(like.device, like.dtype)


def _module_dtype(model) -> Optional[torch.dtype]:
    if isinstance(model, torch.nn.Module):
        param = next(model.parameters(), None)
        return None if param is None else param.dtype
    return None


def call_model(model: Callable, x: torch.Tensor, timestep, **kwargs) -> torch.Tensor:
    """``model(x, timestep, **kwargs)`` as a tensor in ``x``'s dtype: one timestep is broadcast to the
    batch, a torch module runs in its own dtype, and ``.sample`` (diffusers' ``UNet2DOutput``, hf_ddm's
    UNet) or a tuple's first item is unwrapped."""
    t = torch.as_tensor(timestep, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    dtype = _module_dtype(model)
    if dtype is not None and t.is_floating_point():
        t = t.float()  # the time embedding's input; float16 would round train timesteps (999 -> 1000)
    out = model(x if dtype is None else x.to(dtype), t, **kwargs)
    if not torch.is_tensor(out):
        out = out.sample if hasattr(out, "sample") else out[0]
    return out.to(x.dtype)


class ModelAdapter:
    """x0 / eps / score of a network on its own process, at model timesteps.

    ``scheduler`` is anything ``process_view`` reads (``need`` as there); ``prediction_type`` defaults to
    the scheduler's. ``model`` is any callable ``model(x, timestep, **kwargs)``, or None when only model
    outputs computed elsewhere are converted."""

    def __init__(self, model: Optional[Callable], scheduler, prediction_type: Optional[str] = None, *,
                 need: Optional[str] = None):
        self.model = model
        self.scheduler = process_view(scheduler, need)
        self.process = self.scheduler.process
        # The one place a model's prediction type is read (every view is an hf_ddm scheduler).
        self.prediction_type = check_prediction_type(prediction_type or self.scheduler.config.prediction_type)

    def output(self, x: torch.Tensor, timestep, **kwargs) -> torch.Tensor:
        """The network's raw output at model timestep(s) ``timestep`` (a batch of them or one)."""
        if self.model is None:
            raise TypeError("this ModelAdapter has no model (model=None): it only converts given outputs")
        return call_model(self.model, x, timestep, **kwargs)

    def noise_level(self, timestep, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return noise_level(self.scheduler, timestep, like)

    def convert(self, output: torch.Tensor, x: torch.Tensor, timestep, to_type: Optional[str] = None,
                from_type: Optional[str] = None) -> torch.Tensor:
        """``output`` at input ``x`` (the model's input, at model timestep ``timestep``) rewritten from
        ``from_type`` to ``to_type`` (epsilon / sample / v_prediction / score); either defaults to the
        model's prediction type."""
        a, s = self.noise_level(timestep, x)
        return convert(output, x, a, s, from_type or self.prediction_type, to_type or self.prediction_type)

    def denoise(self, x: torch.Tensor, timestep, output: Optional[torch.Tensor] = None, **kwargs):
        """(x0_hat, eps_hat) at ``timestep``; ``output`` reuses a model output already computed."""
        out = self.output(x, timestep, **kwargs) if output is None else output
        a, s = self.noise_level(timestep, x)
        return to_x0_eps(out, x, a, s, self.prediction_type)

    def score(self, x: torch.Tensor, timestep, **kwargs) -> torch.Tensor:
        return self.convert(self.output(x, timestep, **kwargs), x, timestep, "score")

    def timestep(self, t) -> torch.Tensor:
        """Process time -> the model's timestep input (the scheduler's map, shared with training)."""
        return self.scheduler.t_to_timestep(t)


__all__ = ["ModelAdapter", "NEEDS", "call_model", "noise_level", "process_view"]
