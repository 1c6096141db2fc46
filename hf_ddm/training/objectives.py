"""The denoising objective, written once for every process through the scheduler's shared helpers.

A training objective is three choices, each a small function of the scheduler's marginal (a, s) at the
model's timesteps (x_t = a x0 + s eps, sigma = s / a, SNR = a^2 / s^2):

- how timesteps are drawn (``TIMESTEP_SAMPLERS``): ``uniform`` (the scheduler's own: uniform over the
  train grid or over [t_min, 1]) or ``lognormal`` (EDM: ln sigma ~ N(P_mean, P_std^2), mapped to the
  nearest train timestep of a discrete process, or through ``process.time_at_log_snr`` of a continuous one);
- how each sample's squared error is weighted (``LOSS_WEIGHTINGS``): ``scheduler`` (its own
  ``training_loss_weight``: DDPM's L_simple for epsilon, plain MSE for x0 and v, s^2 for score), ``min_snr``
  (Hang et al. 2023, ``--snr_gamma`` as in diffusers' example scripts), ``edm`` (Karras et al. 2022's
  lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2);
- the noise (``--noise_offset``: eps + offset * N(0, 1) per sample and channel, as diffusers' examples).

Weightings are defined in x0-space, as the papers define them: loss = w_x0 ||x0_hat - x0||^2. A network
that predicts something else (epsilon, v, score) is trained on its own target with w_x0 times
``x0_error_factor`` = ||dx0||^2 / ||d prediction||^2, which is what makes the weighting the same whatever
the prediction type. A new weighting is one function ``(a, s, prediction_type, objective) -> weight``
added to ``LOSS_WEIGHTINGS``; a new timestep law one function added to ``TIMESTEP_SAMPLERS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

# EDM's training defaults (Karras et al. 2022, Table 1): ln sigma ~ N(-1.2, 1.2^2), sigma_data = 0.5.
EDM_P_MEAN, EDM_P_STD, EDM_SIGMA_DATA = -1.2, 1.2, 0.5


@dataclass(frozen=True)
class Objective:
    """How a denoising network is trained. The defaults are the scheduler's own objective, unchanged."""

    loss_weighting: str = "scheduler"  # scheduler | min_snr | edm
    snr_gamma: Optional[float] = None  # min_snr's gamma (diffusers: --snr_gamma, 5.0 recommended)
    sigma_data: float = EDM_SIGMA_DATA  # edm's sigma_data
    timestep_sampling: str = "uniform"  # uniform | lognormal
    lognormal_mean: float = EDM_P_MEAN
    lognormal_std: float = EDM_P_STD
    noise_offset: float = 0.0

    @classmethod
    def from_args(cls, args) -> "Objective":
        """From the flags of ``args.add_objective_args`` (absent flags: the defaults). ``--snr_gamma``
        alone selects min_snr, as in diffusers' scripts."""
        def get(name, default):
            value = getattr(args, name, None)
            return default if value is None else value

        gamma = get("snr_gamma", None)
        weighting = get("loss_weighting", None) or ("min_snr" if gamma is not None else "scheduler")
        return cls(loss_weighting=weighting, snr_gamma=gamma, sigma_data=get("edm_sigma_data", EDM_SIGMA_DATA),
                   timestep_sampling=get("timestep_sampling", "uniform"),
                   lognormal_mean=get("lognormal_mean", EDM_P_MEAN), lognormal_std=get("lognormal_std", EDM_P_STD),
                   noise_offset=get("noise_offset", 0.0))

    def errors(self) -> list:
        """What is wrong with this combination, one message per problem, naming the flags."""
        errors = []
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            errors.append(f"--loss_weighting must be one of {sorted(LOSS_WEIGHTINGS)} (got {self.loss_weighting!r})")
        if self.loss_weighting == "min_snr" and (self.snr_gamma is None or not self.snr_gamma > 0):
            errors.append(f"min-SNR weighting needs --snr_gamma > 0 (got {self.snr_gamma}); diffusers recommends 5.0")
        if self.snr_gamma is not None and self.loss_weighting != "min_snr":
            errors.append(f"--snr_gamma is min-SNR weighting; it cannot combine with --loss_weighting "
                          f"{self.loss_weighting}")
        if not (math.isfinite(self.sigma_data) and self.sigma_data > 0):
            errors.append(f"--edm_sigma_data must be > 0 (got {self.sigma_data})")
        if self.timestep_sampling not in TIMESTEP_SAMPLERS:
            errors.append(f"--timestep_sampling must be one of {sorted(TIMESTEP_SAMPLERS)} "
                          f"(got {self.timestep_sampling!r})")
        if not (math.isfinite(self.lognormal_std) and self.lognormal_std > 0) or not math.isfinite(self.lognormal_mean):
            errors.append(f"--lognormal_std must be > 0 and --lognormal_mean finite (got {self.lognormal_mean}, "
                          f"{self.lognormal_std})")
        if not (math.isfinite(self.noise_offset) and self.noise_offset >= 0):
            errors.append(f"--noise_offset must be >= 0 (got {self.noise_offset})")
        return errors

    @property
    def is_default(self) -> bool:
        return self == Objective()

    def describe(self) -> str:
        """One line for cards and logs."""
        parts = {"scheduler": "the scheduler's own loss weighting", "min_snr": f"min-SNR-{self.snr_gamma} weighting",
                 "edm": f"EDM lambda(sigma) weighting (sigma_data {self.sigma_data})"}
        out = [parts.get(self.loss_weighting, self.loss_weighting)]
        if self.timestep_sampling == "lognormal":
            out.append(f"log-normal noise levels (ln sigma ~ N({self.lognormal_mean}, {self.lognormal_std}^2))")
        else:
            out.append("uniform timesteps")
        if self.noise_offset:
            out.append(f"noise offset {self.noise_offset}")
        return ", ".join(out)


DEFAULT = Objective()


# ---- the x0-space weights, and their conversion to the network's prediction type ---------------------
def x0_error_factor(a: torch.Tensor, s: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """||x0_hat - x0||^2 / ||pred - target||^2 at fixed x_t, for x_t = a x0 + s eps:
    epsilon: x0 = (x_t - s eps) / a -> (s/a)^2; sample: 1; v = a eps - s x0: x0 = (a x_t - s v) / (a^2 + s^2)
    -> s^2 / (a^2 + s^2)^2 (= s^2 on VP); score = -eps / s -> s^4 / a^2."""
    a2, s2 = a * a, s * s
    if prediction_type == "epsilon":
        return s2 / a2
    if prediction_type == "sample":
        return torch.ones_like(a)
    if prediction_type == "v_prediction":
        return s2 / (a2 + s2) ** 2
    if prediction_type == "score":
        return s2 * s2 / a2
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def snr(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """a^2 / s^2 (diffusers' ``compute_snr``, for any process)."""
    return (a / s) ** 2


def scheduler_weight(a, s, prediction_type: str, objective: Objective) -> torch.Tensor:
    """The scheduler's own weighting (``training_loss_weight``): 1, or s^2 for score."""
    return s * s if prediction_type == "score" else torch.ones_like(a)


def min_snr_weight(a, s, prediction_type: str, objective: Objective) -> torch.Tensor:
    """min(SNR, gamma) in x0-space. Per prediction type: epsilon min(SNR, gamma) / SNR, v (VP)
    min(SNR, gamma) / (SNR + 1), sample min(SNR, gamma) -- diffusers' example scripts; score and non-VP v
    by the same conversion. Written as min(SNR f, gamma f) with SNR f in closed form, so a zero-SNR
    timestep (zero terminal SNR schedules) gets the finite limit (1 for epsilon), not 0 * inf."""
    gamma = float(objective.snr_gamma)
    a2, s2 = a * a, s * s
    snr_f = {"epsilon": torch.ones_like(a), "sample": a2 / s2, "v_prediction": a2 / (a2 + s2) ** 2,
             "score": s2}[prediction_type]
    return torch.minimum(snr_f, gamma * x0_error_factor(a, s, prediction_type))


def edm_weight(a, s, prediction_type: str, objective: Objective) -> torch.Tensor:
    """EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 in x0-space, sigma = s / a.
    For epsilon this is 1 + sigma^2 / sigma_data^2; for v on a VP process with sigma_data = 1 it is exactly
    1 (EDM's preconditioning of a VP process *is* v-prediction: c_skip = a^2, c_out = -s, c_in x/a = x)."""
    sd2 = objective.sigma_data ** 2
    sigma2 = (s / a) ** 2
    return (sigma2 + sd2) / (sigma2 * sd2) * x0_error_factor(a, s, prediction_type)


LOSS_WEIGHTINGS: Dict[str, Callable] = {"scheduler": scheduler_weight, "min_snr": min_snr_weight, "edm": edm_weight}


# ---- timestep laws ------------------------------------------------------------------------------------
def uniform_timesteps(scheduler, batch_size: int, generator: torch.Generator, objective: Objective):
    """The scheduler's own draw (uniform over its train grid / time interval)."""
    return scheduler.sample_training_timesteps(batch_size, generator=generator)


def timesteps_at_sigma(scheduler, sigma: torch.Tensor) -> torch.Tensor:
    """Model timesteps at noise levels ``sigma`` = s / a: the train timestep nearest in log sigma (discrete
    processes; clamped to the grid), or the exact time by ``process.time_at_log_snr`` (continuous; clamped to
    [training_t_min, t_max])."""
    process = scheduler.process
    log_sigma = torch.log(torch.as_tensor(sigma, dtype=torch.float64))
    if process.continuous:
        t = process.time_at_log_snr(-log_sigma).clamp(scheduler.training_t_min, process.t_max)
        return scheduler.t_to_timestep(t).float()
    grid = torch.arange(process.num_steps)
    a, s = scheduler.marginal(grid)
    table = (torch.log(s.double()) - torch.log(a.double()))  # increasing in t
    hi = torch.searchsorted(table, log_sigma).clamp(1, len(table) - 1)
    lo = hi - 1
    nearer_lo = (log_sigma - table[lo]).abs() <= (table[hi] - log_sigma).abs()
    return torch.where(nearer_lo, lo, hi).long()


def lognormal_timesteps(scheduler, batch_size: int, generator: torch.Generator, objective: Objective):
    """EDM's law: ln sigma ~ N(P_mean, P_std^2), then ``timesteps_at_sigma``."""
    z = torch.randn(batch_size, generator=generator, dtype=torch.float64)
    return timesteps_at_sigma(scheduler, torch.exp(objective.lognormal_mean + objective.lognormal_std * z))


TIMESTEP_SAMPLERS: Dict[str, Callable] = {"uniform": uniform_timesteps, "lognormal": lognormal_timesteps}


# ---- the loss -----------------------------------------------------------------------------------------
def noised(scheduler, x0: torch.Tensor, generator: torch.Generator,
           objective: Objective = DEFAULT) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, noise, timesteps) for a batch: timesteps and noise drawn from ``generator`` (CPU). With the
    default objective the draws are exactly those of earlier versions (same order, same generator)."""
    t = TIMESTEP_SAMPLERS[objective.timestep_sampling](scheduler, x0.shape[0], generator, objective).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
    if objective.noise_offset:
        offset = torch.randn((x0.shape[0], x0.shape[1]) + (1,) * (x0.ndim - 2), generator=generator)
        noise = noise + objective.noise_offset * offset
    noise = noise.to(x0.device, x0.dtype)
    return scheduler.add_noise(x0, noise, t), noise, t


def loss_weight(scheduler, timesteps, objective: Objective = DEFAULT) -> torch.Tensor:
    """Per-sample weight of the squared error on the scheduler's ``training_target`` (float64)."""
    a, s = scheduler.marginal(torch.as_tensor(timesteps))
    return LOSS_WEIGHTINGS[objective.loss_weighting](a.double(), s.double(), scheduler.config.prediction_type,
                                                     objective)


def denoising_loss(scheduler, model_fn: Callable, x0: torch.Tensor, generator: torch.Generator,
                   objective: Objective = DEFAULT) -> torch.Tensor:
    """Weighted E ||target - model(x_t, t)||^2. The default objective is the scheduler's own
    ``training_loss``, bit for bit; others weight the per-sample MSE by ``loss_weight``."""
    x_t, noise, t = noised(scheduler, x0, generator, objective)
    output = model_fn(x_t, t)
    if objective.loss_weighting == "scheduler":
        return scheduler.training_loss(output, x0, noise, t)
    target = scheduler.training_target(x0, noise, t)
    per_sample = (output.float() - target.float()).pow(2).flatten(1).mean(1)
    return (loss_weight(scheduler, t, objective).to(per_sample.device, per_sample.dtype) * per_sample).mean()


def drop_labels(labels: torch.Tensor, p: float, null_index: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by ``null_index`` with probability ``p`` (classifier-free guidance training)."""
    if p <= 0:
        return labels
    mask = (torch.rand(labels.shape[0], generator=generator) < p).to(labels.device)
    return torch.where(mask, torch.full_like(labels, null_index), labels)


__all__ = ["Objective", "noised", "denoising_loss", "drop_labels", "loss_weight", "x0_error_factor", "snr",
           "min_snr_weight", "edm_weight", "scheduler_weight", "timesteps_at_sigma", "lognormal_timesteps",
           "uniform_timesteps", "LOSS_WEIGHTINGS", "TIMESTEP_SAMPLERS"]
