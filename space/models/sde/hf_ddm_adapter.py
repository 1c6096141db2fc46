"""The model adapter: a network + the process it was trained on + its prediction type + its timestep map
gives x0 / eps / score at (x, timestep). Written once here (k-diffusion's ``external.py`` idea) and read by
guidance, the Space's trajectory view and the likelihoods, so no caller rebuilds (a, s) or converts a
parameterisation itself.

``ModelAdapter(model, scheduler)`` takes hf_ddm's schedulers as they are and any diffusers VP scheduler
(DDPM, DDIM, Euler, DPM-Solver, ...) or its config, which it reads as the exact discrete schedule
(``SDEScheduler.from_config``: the model's train timesteps, log-SNR linear between them). ``model`` is
any callable ``model(x, timestep, **kwargs)`` returning a tensor or an output with ``.sample`` -- an
hf_ddm ``UNet``, a diffusers ``UNet2DModel`` / ``UNet2DConditionModel``, the exact mixture oracle.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from .hf_ddm_processes import DiscreteScheduleVP, convert, to_x0_eps


def process_scheduler(scheduler):
    """An hf_ddm scheduler (it has ``process`` and ``marginal``) for ``scheduler``: itself, or for a
    diffusers VP scheduler / config, ``SDEScheduler`` on exactly its discrete schedule."""
    if hasattr(scheduler, "process") and hasattr(scheduler, "marginal"):
        return scheduler
    from .hf_ddm_sde import SDEScheduler

    config = getattr(scheduler, "config", scheduler)
    try:
        return SDEScheduler.from_config(dict(config))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"scheduler: cannot read the noise process of {type(scheduler).__name__} ({err}); pass an hf_ddm "
            "scheduler or a diffusers VP scheduler (one with a beta schedule)"
        ) from err


def noise_level(scheduler, timestep, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(a, s) of the model input x = a x0 + s eps at the model timestep(s) ``timestep``, on ``like``'s
    device and dtype. A diffusers scheduler is read through its ``alphas_cumprod`` (whatever else its
    config holds), as the same continuous-time view ``SDEScheduler`` uses."""
    t = torch.as_tensor(timestep)
    if hasattr(scheduler, "marginal"):
        a, s = scheduler.marginal(t)
    elif hasattr(scheduler, "alphas_cumprod"):
        process = getattr(scheduler, "_hf_ddm_process", None)
        if process is None:  # built once per scheduler object: its alphas_cumprod never changes
            process = DiscreteScheduleVP(scheduler.alphas_cumprod)
            scheduler._hf_ddm_process = process
        a, s = process.marginal(t.to(torch.float64) / (process.num_train_timesteps - 1))
    else:
        raise ValueError(f"scheduler: cannot find the noise level of {type(scheduler).__name__} at timestep {timestep}")
    return torch.as_tensor(a).to(like.device, like.dtype), torch.as_tensor(s).to(like.device, like.dtype)


def prediction_type_of(scheduler) -> str:
    return getattr(getattr(scheduler, "config", scheduler), "prediction_type", "epsilon")


class ModelAdapter:
    """x0 / eps / score of a network on its own process, at model timesteps."""

    def __init__(self, model: Callable, scheduler, prediction_type: Optional[str] = None):
        self.model = model
        self.scheduler = process_scheduler(scheduler)
        self.process = self.scheduler.process
        self.prediction_type = prediction_type or prediction_type_of(scheduler)

    def output(self, x: torch.Tensor, timestep, **kwargs) -> torch.Tensor:
        """The network's raw output at model timestep(s) ``timestep`` (a batch of them or one)."""
        t = torch.as_tensor(timestep, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        out = self.model(x, t, **kwargs)
        return getattr(out, "sample", out)

    def denoise(self, x: torch.Tensor, timestep, output: Optional[torch.Tensor] = None, **kwargs):
        """(x0_hat, eps_hat) at ``timestep``; ``output`` reuses a model output already computed."""
        out = self.output(x, timestep, **kwargs) if output is None else output
        a, s = noise_level(self.scheduler, timestep, x)
        return to_x0_eps(out, x, a, s, self.prediction_type)

    def convert(self, output: torch.Tensor, x: torch.Tensor, timestep, to_type: str) -> torch.Tensor:
        """A model output of this network rewritten as ``to_type`` (epsilon / sample / v_prediction / score)."""
        a, s = noise_level(self.scheduler, timestep, x)
        return convert(output, x, a, s, self.prediction_type, to_type)

    def score(self, x: torch.Tensor, timestep, **kwargs) -> torch.Tensor:
        return self.convert(self.output(x, timestep, **kwargs), x, timestep, "score")

    def t_to_timestep(self, t) -> torch.Tensor:
        """Process time -> the model's timestep input (the scheduler's map, shared with training)."""
        return self.scheduler.t_to_timestep(t)


__all__ = ["ModelAdapter", "process_scheduler", "noise_level", "prediction_type_of"]

# hf_ddm portable bundle: for a local folder diffusers copies only the modules a custom-code file
# imports directly, so this file names every bundled module it needs. Never executed.
if False:  # pragma: no cover
    from .hf_ddm_limits import __name__ as _bundled_hf_ddm_limits  # noqa: F401
    from .hf_ddm_base import __name__ as _bundled_hf_ddm_base  # noqa: F401
    from .hf_ddm_diffusers_configs import __name__ as _bundled_hf_ddm_diffusers_configs  # noqa: F401
    from .hf_ddm_solvers import __name__ as _bundled_hf_ddm_solvers  # noqa: F401
