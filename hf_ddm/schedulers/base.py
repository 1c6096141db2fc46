"""What every hf_ddm scheduler shares: the process it wraps, the mapping between the model's timestep
input and process time, the training helpers, and the input checks.

A scheduler class = ``SchedulerMixin`` + ``ConfigMixin`` + this mixin + a solver. Subclasses set
``self.process`` and implement ``timestep_to_t`` / ``t_to_timestep``; everything here is written in
terms of those, so one training loop serves every process:

    t = scheduler.sample_training_timesteps(batch_size)
    noisy = scheduler.add_noise(x0, noise, t)
    loss = scheduler.training_loss(model(noisy, t).sample, x0, noise, t)

And the policies every scheduler's ``step`` follows, written here once: where a step's noise comes from
(``noise_source``: ``variance_noise`` or a draw from ``generator``, never both), that an update into the
clean data adds none (``next_sample``), and which ``eta`` a solver may be given (``step_eta``). Argument
checks live in ``hf_ddm.limits``, solver dispatch in ``hf_ddm.solver_registry``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from diffusers.utils import BaseOutput

from ..limits import check_eta, check_x0_processing
from ..processes import NoiseProcess, Point, append_dims, from_x0_eps, to_x0_eps
from ..solvers import noise_like, with_noise


@dataclass
class SchedulerOutput(BaseOutput):
    """Output of ``step``: the next sample, and the model's current estimate of the clean sample."""

    prev_sample: torch.Tensor
    pred_original_sample: Optional[torch.Tensor] = None


def integer_timesteps(timesteps) -> torch.Tensor:
    """Model timesteps of a discrete scheduler are grid indices: int64, integer-valued floats accepted."""
    t = torch.as_tensor(timesteps)
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError(f"timesteps of a discrete scheduler must be integers, got {t}")
        t = t.long()
    return t


def threshold_sample(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding, with diffusers' ``_threshold_sample`` semantics: per sample,
    s = clamp(quantile(|x0|, ratio), 1, max_value); x0 <- clamp(x0, -s, s) / s."""
    dtype = x0.dtype
    flat = x0.reshape(x0.shape[0], -1)
    if dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)


def check_generator(generator, batch_size: int) -> None:
    """``generator``: None, a ``torch.Generator``, or a list of them, one per batch item (diffusers' rule)."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != batch_size:
            raise ValueError(f"generator: a list of generators needs one per batch item ({batch_size}), "
                             f"got {len(generator)}")
        return
    raise TypeError(f"generator must be a torch.Generator, a list of them (one per batch item) or None, "
                    f"got {type(generator).__name__}")


def bind_step_args(owner: str, names, args, given: dict) -> dict:
    """The positional arguments after ``sample`` of a ``step`` call, by the names of the diffusers class the
    scheduler stands in for (``names``), merged into ``given`` (the keywords); Python's errors otherwise."""
    if len(args) > len(names):
        raise TypeError(f"{owner}.step takes at most {3 + len(names)} positional arguments "
                        f"(model_output, timestep, sample, {', '.join(names)}), got {3 + len(args)}")
    out = dict(given)
    for name, value in zip(names, args):
        if out.get(name, _UNSET) is not _UNSET:
            raise TypeError(f"{owner}.step got multiple values for argument {name!r}")
        out[name] = value
    return out


_UNSET = object()


class NoiseSource:
    """The noise of one ``step`` call: ``variance_noise`` when the caller gives it (diffusers' keyword),
    else a draw from ``generator`` (a list: one per batch item). Drawn only when asked for, so a step that
    adds no noise leaves the generator where it was."""

    def __init__(self, sample: torch.Tensor, generator=None, variance_noise: Optional[torch.Tensor] = None):
        check_generator(generator, sample.shape[0] if sample.ndim else 1)
        if variance_noise is not None:
            if generator is not None:
                raise ValueError("pass either generator or variance_noise to step, not both")
            ProcessSchedulerMixin._check_step_inputs(variance_noise, sample)
        self.sample, self.generator, self.given = sample, generator, variance_noise

    def __call__(self) -> torch.Tensor:
        return self.given if self.given is not None else noise_like(self.sample, self.generator)


class ProcessSchedulerMixin:
    process: NoiseProcess

    # --- the model-timestep <-> process-time map (the same function in training and sampling) -------
    # Discrete processes: the model sees the grid index itself. Continuous schedulers override both.
    def timestep_to_t(self, timesteps) -> torch.Tensor:
        return integer_timesteps(timesteps)

    def t_to_timestep(self, t) -> torch.Tensor:
        return integer_timesteps(t)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """Identity: hf_ddm models see x_t itself (diffusers' Euler-style input scaling is not used)."""
        return sample

    def marginal(self, timesteps):
        """(a, s) of x_t = a x0 + s eps at the model's timestep input(s)."""
        return self.process.marginal(self.timestep_to_t(torch.as_tensor(timesteps)))

    @property
    def training_t_min(self) -> float:
        """Smallest process time drawn in training (continuous processes avoid t = 0)."""
        return float(getattr(self.config, "sampling_eps", 0.0) or 0.0)

    # --- training helpers -------------------------------------------------------------------------
    def sample_training_timesteps(self, batch_size: int, generator: Optional[torch.Generator] = None, device=None):
        """Model timesteps for a training batch: uniform over the train grid (discrete) or over
        [training_t_min, 1] (continuous). ``generator`` must live on the CPU."""
        if self.process.continuous:
            lo = self.training_t_min
            u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
            timesteps = self.t_to_timestep(lo + (self.process.t_max - lo) * u).float()
        else:
            timesteps = torch.randint(0, self.process.num_steps, (batch_size,), generator=generator)
        return timesteps.to(device) if device is not None else timesteps

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """x_t = a x0 + s eps (diffusers' name and signature)."""
        a, s = self._marginal_on(original_samples, timesteps)
        return append_dims(a, original_samples) * original_samples + append_dims(s, original_samples) * noise

    def training_target(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """What the network regresses onto for this scheduler's ``prediction_type``."""
        a, s = self._marginal_on(original_samples, timesteps)
        return from_x0_eps(original_samples, noise, a, s, self.config.prediction_type)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """v = a eps - s x0 (diffusers' name)."""
        a, s = self._marginal_on(sample, timesteps)
        return from_x0_eps(sample, noise, a, s, "v_prediction")

    def training_loss_weight(self, timesteps) -> torch.Tensor:
        """Per-sample weight that makes every parameterisation's MSE the epsilon loss of DDPM's
        L_simple, except x0 and v which keep their own (diffusers' convention). For score
        prediction this is s^2 (score_sde's weighting), since |s score + eps|^2 = s^2 |score - target|^2."""
        timesteps = torch.as_tensor(timesteps)
        if self.config.prediction_type == "score":
            return self.marginal(timesteps)[1] ** 2
        return torch.ones(timesteps.shape or (1,), dtype=torch.float32, device=timesteps.device)

    def training_loss(self, model_output, original_samples, noise, timesteps) -> torch.Tensor:
        """Weighted MSE between the model output and ``training_target``, averaged over the batch."""
        target = self.training_target(original_samples, noise, timesteps)
        per_sample = (model_output.float() - target.float()).pow(2).flatten(1).mean(1)
        weight = self.training_loss_weight(timesteps).to(per_sample.device, per_sample.dtype)
        return (weight * per_sample).mean()

    # --- helpers for step() -------------------------------------------------------------------------
    def _marginal_on(self, like: torch.Tensor, timesteps):
        timesteps = torch.as_tensor(timesteps, device=like.device)
        if timesteps.ndim > 1 or (timesteps.ndim == 1 and timesteps.numel() not in (1, like.shape[0])):
            raise ValueError(f"timesteps: one per sample ({like.shape[0]}) or one for the batch, got shape "
                             f"{tuple(timesteps.shape)}")
        a, s = self.marginal(timesteps)
        return a.to(like.device, like.dtype), s.to(like.device, like.dtype)

    def denoised(self, model_output, sample, a, s, clipped_eps: bool = True):
        """(x0_hat, eps_hat) from a model output, with the config's x0 clipping or dynamic thresholding
        (diffusers' ``clip_sample`` / ``thresholding`` keys, where the scheduler has them). With
        ``clipped_eps`` the returned eps is the one consistent with the processed x0 (what every
        solver written in (x, x0) does); without it the model's own eps (diffusers' DDIM default)."""
        x0, eps = to_x0_eps(model_output, sample, a, s, self.config.prediction_type)
        cfg = self.config
        if getattr(cfg, "thresholding", False):
            x0 = threshold_sample(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        elif getattr(cfg, "clip_sample", False):
            x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        else:
            return x0, eps
        if clipped_eps:
            eps = to_x0_eps(x0, sample, a, s, "sample")[1]
        return x0, eps

    # --- the step policies every scheduler shares ---------------------------------------------------
    @staticmethod
    def next_sample(mean: torch.Tensor, std, into: Point, noise: NoiseSource, drawn: Optional[torch.Tensor] = None):
        """The sample after an update of (mean, std): the mean alone where the update lands on the clean
        data -- DDPM's Algorithm 2 (z = 0 at the last step), score_sde's noise removal: noise there would
        be the last step's std added to the finished sample -- or where the update is deterministic; else
        mean + std * z, with z = ``drawn`` (noise a solver drew itself) or a draw from ``noise``."""
        if into.clean or (isinstance(std, float) and std == 0.0):
            return mean
        return with_noise(mean, std, drawn if drawn is not None else noise())

    def step_eta(self, eta, solver, default: float = 0.0) -> float:
        """The ``eta`` a step runs with: stock pipelines pass DDIM's ``eta`` to every scheduler
        (``DDIMPipeline``: 0.0), so None means ``default`` and 0 is always accepted; eta > 0 only reaches a
        solver that takes it, any other refuses it (its noise is fixed) rather than ignoring it."""
        return check_eta(default if eta is None else eta, solver, type(self).__name__)

    def _check_initial_noise(self, sample: torch.Tensor):
        """At the first step of a loop: was the starting noise scaled by ``init_noise_sigma``? Stock
        ``DDPMPipeline`` ignores it, and a VE process started from N(0, 1) instead of N(0, sigma_max^2)
        returns garbage without any error -- so refuse it here, where it can still be named."""
        sigma = float(self.init_noise_sigma)
        if sample.is_floating_point() and 8.0 * sigma > torch.finfo(sample.dtype).max:
            # N(0, sigma^2) noise reaches ~5 sigma: past the dtype's largest number it is inf from step 0.
            raise ValueError(
                f"sample: this scheduler starts from noise of std init_noise_sigma={sigma:.4g}, which {sample.dtype} "
                f"cannot hold (largest number {torch.finfo(sample.dtype).max:.4g}); sample in float32, or use a "
                f"sigma_max below {torch.finfo(sample.dtype).max / 8:.4g}."
            )
        spread = float(sample.detach().float().std()) if sample.numel() > 1 else 0.0
        # A sample without spread is no pipeline's noise (a hand-built start): only unscaled noise is refused.
        if sigma > 2.0 and 0.0 < spread < 0.25 * sigma:
            raise ValueError(
                f"sample: the first step got a sample of std {spread:.3g}, but this "
                f"scheduler starts from noise of std init_noise_sigma={sigma:.4g}. The pipeline's loop did not scale its "
                "initial noise by scheduler.init_noise_sigma (stock diffusers.DDPMPipeline does not); use a pipeline "
                "that does (hf_ddm's, DDIMPipeline, StableDiffusionPipeline) or a VP scheduler."
            )

    @staticmethod
    def _check_step_inputs(model_output: torch.Tensor, sample: torch.Tensor, timestep=None):
        for name, value in (("model_output", model_output), ("sample", sample)):
            if not torch.is_tensor(value):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if timestep is not None:
            t = torch.as_tensor(timestep)
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(f"timestep must be a finite number, got {timestep}")
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)} but sample has shape {tuple(sample.shape)}; "
                "they must match"
            )


__all__ = ["SchedulerOutput", "ProcessSchedulerMixin", "NoiseSource", "check_generator", "bind_step_args", "integer_timesteps", "threshold_sample",
           "check_x0_processing"]
