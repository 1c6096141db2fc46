"""``VEScheduler``: the discrete variance-exploding process (SMLD / NCSN) with a predictor-corrector
sampler that runs inside the standard diffusers loop.

The process is ``DiscreteVE`` with ``num_train_timesteps`` geometric noise levels from
``sigma_min`` (index 0) to ``sigma_max`` (index N-1); x_i | x0 ~ N(x0, sigma_i^2 I). The config
accepts ScoreSdeVeScheduler's keys (``num_train_timesteps, snr, sigma_min, sigma_max,
sampling_eps, correct_steps``; ``sampling_eps`` is kept only so configs swap, a discrete process
does not use it) plus ``predictor`` and ``prediction_type``.

Predictors (one model evaluation, from level i to the next scheduled level i' < i, or to the clean
data after the last level):

* ``"ancestral"`` -- DESIGN.md's SMLD ancestral step: a draw from the posterior
  q(x_{i'} | x_i, x0 = D(x_i)), computed by ``process.posterior``.
* ``"reverse_diffusion"`` -- ScoreSdeVeScheduler.step_pred's update
  x + (s_i^2 - s_{i'}^2) score + sqrt(s_i^2 - s_{i'}^2) z.

Both have the same mean; reverse diffusion adds more noise (it is the Euler-Maruyama step of the
reverse SDE). The last predictor step (to the clean data) returns its mean, noise-free, as
score_sde's ``denoise=True`` and diffusers' ScoreSdeVePipeline (which returns ``prev_sample_mean``)
do.

Corrector: ``correct_steps`` annealed-Langevin steps (``solvers.langevin_step`` at target ``snr``)
per level, run by the ordinary loop: ``set_timesteps`` emits every level ``1 + correct_steps`` times
(as diffusers' Heun scheduler repeats timesteps), and ``step`` keeps a counter (``step_index``).
The order matches score_sde's ``pc_sampler`` and ScoreSdeVePipeline: at each level the correctors
come FIRST, then the predictor moves to the next level. So for every level the loop calls the model
``1 + correct_steps`` times at that level's timestep; ``order`` = 1 + correct_steps and
``len(timesteps)`` = the number of model calls (the NFE).

``from_config``: a ScoreSdeVeScheduler config (``_class_name``, or exactly its keys) without a
``predictor`` key gives ``predictor="reverse_diffusion"`` -- the sampler the swapped-from scheduler
ran; otherwise the default is ``"ancestral"``.

Pipelines
    Needs a loop that honours ``init_noise_sigma`` (the prior std sigma_max is far from 1) and the
    repeated timesteps: hf_ddm's pipelines, or the standard loop
    ``x = randn * init_noise_sigma; for t in timesteps: x = step(model(scale_model_input(x, t), t), t, x)``.
    Stock ``DDPMPipeline`` ignores ``init_noise_sigma`` and so cannot drive it.
    ``step_pred`` / ``step_correct`` keep ScoreSdeVeScheduler's signatures, update formulas and
    outputs for hand-written PC loops (see their docstrings for the one difference: timesteps).

Model timestep convention
    The model receives the integer noise-level index i in 0 .. num_train_timesteps - 1 (sigma_i =
    ``scheduler.sigmas_train[i]``; ``self.sigmas`` holds sigma for each entry of ``timesteps``).
    ``timestep_to_t`` / ``t_to_timestep`` are the identity (int64), shared with training
    (``sample_training_timesteps``, ``add_noise``, ``training_target``).
"""

from __future__ import annotations

from typing import List, Optional, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_sde_ve import SdeVeOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..limits import check_scheduler_args
from ..processes import CLEAN, DiscreteVE, Point, convert
from ..solver_registry import for_config, names_in
from ..solvers import langevin, with_noise
from .base import NoiseSource, ProcessSchedulerMixin, SchedulerOutput, integer_timesteps
from .diffusers_configs import is_vp_schedule_config, load_config_dict, refuse_other_parameterisations
from .vp import check_custom_timesteps, lookup_step_index, spaced_timesteps

PREDICTORS = names_in("VEScheduler")  # ("reverse_diffusion", "ancestral")
_SDE_VE_KEYS = {"num_train_timesteps", "snr", "sigma_min", "sigma_max", "sampling_eps", "correct_steps"}


def _is_score_sde_ve_config(config: dict) -> bool:
    name = config.get("_class_name")
    if name is not None:
        return name == "ScoreSdeVeScheduler"
    return {k for k in config if not k.startswith("_")} == _SDE_VE_KEYS


class VEScheduler(SchedulerMixin, ConfigMixin, ProcessSchedulerMixin):
    """Discrete VE (SMLD) scheduler: ancestral or reverse-diffusion predictor + Langevin corrector."""

    _compatibles = ["ScoreSdeVeScheduler"]
    order = 1  # per instance: 1 + correct_steps (model evaluations per noise level)

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 2000,
        snr: float = 0.15,
        sigma_min: float = 0.01,
        sigma_max: float = 1348.0,
        sampling_eps: float = 1e-5,
        correct_steps: int = 1,
        predictor: str = "ancestral",
        prediction_type: str = "score",
    ):
        check_scheduler_args(
            "VEScheduler", predictor=predictor, prediction_type=prediction_type, sigma_min=sigma_min,
            sigma_max=sigma_max, num_train_timesteps=num_train_timesteps, correct_steps=correct_steps, snr=snr,
        )
        self.solver = for_config("VEScheduler", predictor)

        self.process = DiscreteVE.geometric(sigma_min, sigma_max, num_train_timesteps)
        self.sigmas_train = self.process.sigmas
        self.order = 1 + correct_steps
        self.num_inference_steps = None
        self.timesteps = None
        self.sigmas = None
        self._levels = None
        self._index = None
        self._step_index = None

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As ConfigMixin.from_config (a dict or a saved folder / json path). A VP config (one naming a
        beta schedule) is refused: a VP model's outputs mean nothing on a VE process."""
        config = load_config_dict(cls, config)
        if "predictor" not in config and config.get("_class_name") != cls.__name__:
            refuse_other_parameterisations(config, cls.__name__)
        if is_vp_schedule_config(config) or config.get("sde", "ve") != "ve":
            raise ValueError(
                "VEScheduler.from_config got a VP scheduler config (it names a beta schedule or a VP sde): a model "
                "trained on a VP process cannot be sampled on the VE process. Use SDEScheduler.from_config(config) "
                "(every SDE / ODE solver on the model's own schedule) or VPScheduler.from_config(config)."
            )
        if (
            "predictor" not in kwargs
            and "predictor" not in config
            and _is_score_sde_ve_config(config)
        ):
            kwargs["predictor"] = "reverse_diffusion"
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @property
    def init_noise_sigma(self) -> float:
        """Std of the prior the loop starts from: sigma at the first scheduled level (sigma_max unless
        custom timesteps start lower)."""
        if self._levels is None:
            return float(self.process.prior_std)
        return self._coefs[0][0]

    @property
    def step_index(self) -> Optional[int]:
        """Position in ``timesteps`` of the next ``step`` call (None before the first)."""
        return self._step_index

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # --- schedule ------------------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None, timesteps: Optional[List[int]] = None):
        """``num_inference_steps`` noise levels evenly spaced in index (geometric in sigma, both ends
        included) or a custom descending ``timesteps`` list of levels; each level is repeated
        1 + correct_steps times in ``self.timesteps``."""
        cfg = self.config
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps to set_timesteps")
        if timesteps is not None:
            levels = check_custom_timesteps(timesteps, cfg.num_train_timesteps)
        elif num_inference_steps == 1:  # one level: start from the prior (sigma_max), not sigma_min
            levels = spaced_timesteps(cfg.num_train_timesteps, 1, "linspace") + cfg.num_train_timesteps - 1
        else:
            levels = spaced_timesteps(cfg.num_train_timesteps, num_inference_steps, "linspace")
        levels = torch.from_numpy(levels)
        self.num_inference_steps = len(levels)
        reps = 1 + cfg.correct_steps
        self.timesteps = levels.repeat_interleave(reps).to(device)
        self._timestep_list = levels.repeat_interleave(reps).tolist()  # host copy: no device sync per step

        t_prev = torch.cat([levels[1:], torch.tensor([-1])])
        _, s_t = self.process.marginal(levels)
        _, s_p = self.process.marginal(t_prev)
        self._levels = levels
        self._index = {int(v): j for j, v in enumerate(levels.tolist())}
        self._coefs = list(zip(s_t.tolist(), s_p.tolist()))
        self.sigmas = s_t.repeat_interleave(reps).to(device)
        self._step_index = None

    # --- the standard-loop step ---------------------------------------------------------------------------
    def _sync_step_index(self, timestep) -> int:
        if self._levels is None:
            raise ValueError("set_timesteps(...) must be called before step(...)")
        reps = 1 + self.config.correct_steps
        i = self._step_index
        value = torch.as_tensor(timestep)
        if value.numel() != 1:
            raise ValueError(f"timestep must be a single value, got shape {tuple(value.shape)}")
        if i is None or i >= len(self._timestep_list) or self._timestep_list[i] != value.item():
            # First call, or a loop that (re)starts at some level: go to the level's first entry.
            i = lookup_step_index(self._index, timestep) * reps
        return i

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[int, torch.Tensor],
        sample: torch.Tensor,
        generator=None,
        return_dict: bool = True,
        *,
        eta: Optional[float] = None,
        use_clipped_model_output: Optional[bool] = None,
    ):
        """Positional arguments as ScoreSdeVeScheduler.step_pred's (generator, return_dict). A corrector step (the first ``correct_steps`` calls at a level) or the predictor step (the
        last call at a level), decided by ``step_index``. The final predictor step returns the clean
        sample's estimate without noise. ``generator`` may be a list, one per batch item.

        ``eta`` and ``use_clipped_model_output`` are accepted for stock pipelines' loops: the noise of
        SMLD's predictor and corrector is fixed, so ``eta`` must be 0 or None (a ``ValueError``
        otherwise); VE has no x0 clipping, so ``use_clipped_model_output`` does nothing."""
        self.step_eta(eta, self.solver)
        self._check_step_inputs(model_output, sample, timestep)
        i = self._sync_step_index(timestep)
        if i == 0:
            self._check_initial_noise(sample)
        reps = 1 + self.config.correct_steps
        j, k = divmod(i, reps)
        if k < reps - 1:
            prev, x0 = self._correct(model_output, j, sample, generator)
        else:
            prev, _, x0 = self._predict(model_output, j, sample, generator, noise_at_end=False)
        self._step_index = i + 1
        if not return_dict:
            return (prev, x0)
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def _points(self, j):
        s_t, s_p = self._coefs[j]
        return Point(1.0, s_t), (Point(1.0, s_p) if s_p > 0 else CLEAN)

    def _correct(self, model_output, j, sample, generator):
        cur, _ = self._points(j)
        x0, eps = self.denoised(model_output, sample, 1.0, cur.s)
        z = NoiseSource(sample, generator)()  # the corrector's step size depends on its noise
        mean, std = langevin(sample, x0, eps, cur, snr=self.config.snr, noise=z)
        return self.next_sample(mean, std, cur, None, z), x0

    def _predict(self, model_output, j, sample, generator, noise_at_end: bool):
        """(sample at the next level, its mean, x0_hat). ``noise_at_end``: ScoreSdeVeScheduler.step_pred's
        contract -- noise at every level, the clean one included -- instead of the shared noise-free end."""
        cur, nxt = self._points(j)
        x0, eps = self.denoised(model_output, sample, 1.0, cur.s)
        mean, std = self.solver.rule(sample, x0, eps, cur, nxt)
        noise = NoiseSource(sample, generator)
        if noise_at_end:
            return with_noise(mean, std, noise()), mean, x0
        return self.next_sample(mean, std, nxt, noise), mean, x0

    # --- ScoreSdeVeScheduler-style methods ---------------------------------------------------------------
    def step_pred(
        self,
        model_output: torch.Tensor,
        timestep: Union[int, torch.Tensor],
        sample: torch.Tensor,
        generator=None,
        return_dict: bool = True,
    ):
        """ScoreSdeVeScheduler.step_pred: one predictor step (``config.predictor``) from level
        ``timestep`` to the next scheduled level, returning ``SdeVeOutput(prev_sample,
        prev_sample_mean)``; noise is added at every level, the last included (use
        ``prev_sample_mean`` at the end, as ScoreSdeVePipeline does). Unlike ScoreSdeVeScheduler,
        ``timestep`` is the integer level index of this scheduler's ``timesteps`` (the model's input),
        not a continuous time in (0, 1]. Does not move ``step_index``."""
        if self._levels is None:
            raise ValueError("set_timesteps(...) must be called before step_pred(...)")
        j = lookup_step_index(self._index, timestep)
        self._check_step_inputs(model_output, sample)
        prev, mean, _ = self._predict(model_output, j, sample, generator, noise_at_end=True)
        if not return_dict:
            return (prev, mean)
        return SdeVeOutput(prev_sample=prev, prev_sample_mean=mean)

    def step_correct(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        generator=None,
        return_dict: bool = True,
        timestep: Optional[Union[int, torch.Tensor]] = None,
    ):
        """ScoreSdeVeScheduler.step_correct: one annealed-Langevin step at target ``config.snr``.
        ``model_output`` is a score when ``prediction_type="score"``; for other prediction types pass
        ``timestep`` (the level) so it can be converted. Does not move ``step_index``."""
        if self._levels is None:
            raise ValueError("set_timesteps(...) must be called before step_correct(...)")
        self._check_step_inputs(model_output, sample)
        pt = self.config.prediction_type
        if pt == "score":
            score = model_output
        else:
            if timestep is None:
                raise ValueError(f"step_correct needs timestep= to convert a {pt!r} model output to a score")
            _, s = self._marginal_on(sample, integer_timesteps(timestep))
            score = convert(model_output, sample, 1.0, s, pt, "score")
        noise = NoiseSource(sample, generator)()
        s = 1.0  # any s: the rule reads the score back as eps / -s
        mean, std = langevin(sample, None, -s * score, Point(1.0, s), snr=self.config.snr, noise=noise)
        prev = with_noise(mean, std, noise)
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)


__all__ = ["VEScheduler"]
