"""``VPScheduler``: the discrete variance-preserving process (DDPM / DDIM) in diffusers' API.

The process is ``DiscreteVP`` with betas computed exactly as diffusers computes them, so
``VPScheduler.from_config(DDPMScheduler().config)`` has diffusers' ``alphas_cumprod`` and timesteps.
The config keys are exactly DDPMScheduler's, plus DDIM's ``set_alpha_to_one``, plus ``sampler``
(``"ddpm"``: ancestral sampling from the posterior q(x_{t'} | x_t, x0); ``"ddim"``: DDIM with
``eta``) and ``eta``.

Pipelines
    Works unchanged in stock ``diffusers.DDPMPipeline`` (which ignores ``init_noise_sigma`` = 1 and
    ``scale_model_input``, both trivial here) and in any loop of the standard form
    ``set_timesteps -> for t in timesteps: step(model(x, t), t, x)``. ``step`` also takes DDIM's
    ``eta``, ``use_clipped_model_output`` and ``variance_noise`` keywords, so it runs in
    ``DDIMPipeline``'s loop; note that ``DDIMPipeline.__init__`` converts whatever scheduler it is
    given into a ``DDIMScheduler``, so assign ``pipe.scheduler = VPScheduler(...)`` after building it.
    ``eta`` only affects ``sampler="ddim"``; the step's ``eta`` argument overrides ``config.eta``.

Model timestep convention
    The model receives integer indices into the training grid (0 .. num_train_timesteps - 1),
    exactly diffusers' DDPM/DDIM timesteps; ``timestep_to_t`` / ``t_to_timestep`` are the identity
    (as int64), and the training helpers use the same map.

Where this deliberately differs from diffusers (documented, tested)
    * The step to clean data (the last timestep, t' = -1) is noise-free for every ``variance_type``
      (DDPM's Algorithm 2: z = 0 at the last step). diffusers adds noise whenever the last
      *timestep value* is > 0, which for ``fixed_large`` with ``"trailing"`` spacing or
      ``steps_offset > 0`` adds noise of std sqrt(1 - alphas_cumprod[t]) to the final sample.
      Noise is still *drawn* whenever diffusers draws it (timestep > 0), so generator streams
      stay aligned with DDPMScheduler.
    * The step from t goes to the next timestep in ``self.timesteps`` (or to the clean data after
      the last one). diffusers' DDIM steps to ``t - num_train_timesteps // num_inference_steps``,
      which is the same for ``"leading"`` spacing and for ``"trailing"`` when num_inference_steps
      divides num_train_timesteps, but not for ``"linspace"``, where diffusers' DDIM lands between
      the timesteps it then evaluates the model at.
    * ``fixed_large_log`` is treated as ``fixed_large`` (diffusers takes the square root of a log
      variance there, which is NaN); ``fixed_small_log`` equals ``fixed_small``.

``from_config``: a config whose ``_class_name`` is ``DDIMScheduler`` (or ``DDIMParallelScheduler``)
and that has no ``sampler`` key gives ``sampler="ddim"``; every other config (DDPMScheduler's, or
any other diffusers beta-schedule scheduler's) gives the ``"ddpm"`` default. An explicit
``sampler=`` keyword always wins.
"""

from __future__ import annotations

import math
from typing import List, Optional, Union

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin

from ..limits import TIMESTEP_SPACINGS, VARIANCE_TYPES, check_choice, check_scheduler_args  # noqa: F401 (0.1.0 names)
from ..processes import CLEAN, DiscreteVP, Point
from ..solver_registry import for_config, names_in
from ..solvers import posterior_variance, transition
from .diffusers_configs import load_config_dict, refuse_other_parameterisations
from .base import NoiseSource, ProcessSchedulerMixin, SchedulerOutput, bind_step_args

SAMPLERS = names_in("VPScheduler")  # ("ddpm", "ddim"): the registry's ancestral and ode_euler
VP_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
_DDIM_CONFIG_CLASSES = ("DDIMScheduler", "DDIMParallelScheduler")


# ------------------------------------------------------------------------------------------------
# Helpers shared by the discrete schedulers (VP here, VE in ve.py).
# ------------------------------------------------------------------------------------------------

def spaced_timesteps(num_train_timesteps: int, num_inference_steps, spacing: str = "linspace", steps_offset: int = 0):
    """diffusers' three timestep spacings (DDPMScheduler/DDIMScheduler.set_timesteps), descending int64."""
    check_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise ValueError(f"num_inference_steps must be an integer, got {num_inference_steps!r}")
    n, big_t = int(num_inference_steps), int(num_train_timesteps)
    if not 1 <= n <= big_t:
        raise ValueError(
            f"num_inference_steps must be between 1 and num_train_timesteps={big_t}, got {num_inference_steps}"
        )
    if spacing == "linspace":
        ts = np.linspace(0, big_t - 1, n).round()[::-1].copy().astype(np.int64)
    elif spacing == "leading":
        ratio = big_t // n
        ts = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64) + int(steps_offset)
    else:  # trailing
        ts = np.round(np.arange(big_t, 0, -big_t / n)).astype(np.int64) - 1
    if ts.max() >= big_t or ts.min() < 0:
        raise ValueError(
            f"steps_offset={steps_offset} pushes the timesteps {ts.tolist()} outside [0, {big_t - 1}]"
        )
    return ts


def check_custom_timesteps(timesteps, num_train_timesteps: int) -> np.ndarray:
    """A user-given ``timesteps=`` list: non-empty, integer, strictly descending, inside the grid."""
    ts = torch.as_tensor(timesteps)
    if ts.ndim != 1 or ts.numel() == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence, got {timesteps!r}")
    if ts.is_floating_point() and not torch.equal(ts, ts.round()):
        raise ValueError(f"timesteps must be integers, got {timesteps!r}")
    ts = ts.long().cpu().numpy()
    if (np.diff(ts) >= 0).any():
        raise ValueError(f"timesteps must be strictly descending, got {ts.tolist()}")
    if ts[0] >= num_train_timesteps or ts[-1] < 0:
        raise ValueError(f"timesteps must lie in [0, num_train_timesteps - 1 = {num_train_timesteps - 1}], got {ts.tolist()}")
    return ts


def lookup_step_index(index: Optional[dict], timestep) -> int:
    """Position of ``timestep`` in the schedule; clear errors for no schedule / an unknown timestep."""
    if index is None:
        raise ValueError("set_timesteps(...) must be called before step(...)")
    t = torch.as_tensor(timestep)
    if t.numel() != 1:
        raise ValueError(f"timestep must be a single value, got shape {tuple(t.shape)}")
    v = t.item()
    if not math.isfinite(v):
        raise ValueError(f"timestep must be a finite number, got {v}")
    if float(v) != int(v) or int(v) not in index:
        raise ValueError(f"timestep {v} is not in the schedule set by set_timesteps: {sorted(index, reverse=True)}")
    return index[int(v)]


def _is_ddim_config(config: dict) -> bool:
    """A DDIMScheduler config: named so in ``_class_name`` (saved configs), or -- in-memory
    ``DDIMScheduler().config`` carries no class name -- exactly DDIMScheduler's init keys."""
    name = config.get("_class_name")
    if name is not None:
        return name in _DDIM_CONFIG_CLASSES
    from diffusers import DDIMScheduler

    keys = {k for k in config if not k.startswith("_")}
    return keys == set(DDIMScheduler._get_init_keys(DDIMScheduler)) - {"self", "kwargs"}


# ------------------------------------------------------------------------------------------------


class VPScheduler(SchedulerMixin, ConfigMixin, ProcessSchedulerMixin):
    """Discrete VP scheduler: DDPM ancestral (``sampler="ddpm"``) or DDIM (``sampler="ddim"``)."""

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        set_alpha_to_one: bool = True,
        sampler: str = "ddpm",
        eta: float = 0.0,
    ):
        check_scheduler_args(
            "VPScheduler", sampler=sampler, variance_type=variance_type, timestep_spacing=timestep_spacing,
            prediction_type=prediction_type, eta=eta, num_train_timesteps=num_train_timesteps,
            trained_betas=trained_betas, clip_sample=clip_sample, clip_sample_range=clip_sample_range,
            thresholding=thresholding, dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            sample_max_value=sample_max_value,
            **({"beta_start": beta_start, "beta_end": beta_end} if trained_betas is None else {}),
        )
        self.solver = for_config("VPScheduler", sampler)

        self.process = DiscreteVP.from_schedule(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )
        # diffusers' attribute names, for code that reads them.
        self.betas = self.process.betas
        self.alphas = self.process.alphas
        self.alphas_cumprod = self.process.alphas_cumprod
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.custom_timesteps = False
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._index = None  # timestep value -> position in self.timesteps, once set_timesteps ran
        self._coefs = None

    # --- from_config: DDIM configs select the DDIM sampler -----------------------------------------
    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        if config is not None and not hasattr(config, "sampler"):  # not our own in-memory config
            cfg = load_config_dict(cls, config)
            if "sampler" not in cfg and cfg.get("_class_name") != cls.__name__:
                refuse_other_parameterisations(cfg, cls.__name__)
        if isinstance(config, dict) and "sampler" not in kwargs and "sampler" not in config and _is_ddim_config(config):
            kwargs["sampler"] = "ddim"
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # --- schedule -------------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None, timesteps: Optional[List[int]] = None):
        """diffusers' spacings (``config.timestep_spacing``, ``steps_offset``) or a custom descending
        ``timesteps`` list; exactly one of the two. Caches every step's coefficients."""
        cfg = self.config
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps to set_timesteps")
        if timesteps is not None:
            ts = check_custom_timesteps(timesteps, cfg.num_train_timesteps)
            self.custom_timesteps = True
        else:
            ts = spaced_timesteps(cfg.num_train_timesteps, num_inference_steps, cfg.timestep_spacing, cfg.steps_offset)
            self.custom_timesteps = False
        self.num_inference_steps = len(ts)
        self.timesteps = torch.from_numpy(ts).to(device)
        self._prepare(torch.from_numpy(ts))

    def _prepare(self, t: torch.Tensor):
        final = -1 if self.config.set_alpha_to_one else 0
        t_prev = torch.cat([t[1:], torch.tensor([final])])
        a_t, s_t = self.process.marginal(t)
        a_p, s_p = self.process.marginal(t_prev)
        if self.config.prediction_type == "epsilon" and (a_t == 0).any():
            t_zero = t[a_t == 0].tolist()
            raise ValueError(
                f"prediction_type='epsilon' on a zero-terminal-SNR schedule (rescale_betas_zero_snr=True): the "
                f"schedule visits timestep {t_zero[0]}, where alphas_cumprod = 0 and x0 = (x - s eps) / a is undefined "
                "(pure noise carries no information about x0 through eps). Zero-SNR models are trained with "
                "prediction_type='v_prediction' (or 'sample'); for an epsilon model use timestep_spacing='leading' "
                "(it stops below the last timestep) or custom timesteps that avoid it.")
        self._index = {int(v): i for i, v in enumerate(t.tolist())}
        self._prev = t_prev.tolist()
        self._points = [
            (Point(a, s), CLEAN if tp == -1 else Point(ap, sp))
            for a, s, ap, sp, tp in zip(a_t.tolist(), s_t.tolist(), a_p.tolist(), s_p.tolist(), self._prev)
        ]

    def previous_timestep(self, timestep) -> torch.Tensor:
        """The timestep the step from ``timestep`` lands on (-1: clean data; 0 with set_alpha_to_one=False)."""
        if self._index is None:
            self._prepare(self.timesteps.cpu())
        return torch.tensor(self._prev[lookup_step_index(self._index, timestep)])

    # --- step -------------------------------------------------------------------------------------------
    # The positional arguments after ``sample`` of the class each sampler stands in for: DDPMScheduler.step
    # (generator, return_dict) and DDIMScheduler.step (eta, use_clipped_model_output, generator,
    # variance_noise, return_dict), so ``step(m, t, x, 1.0)`` is eta = 1 under sampler="ddim" as in diffusers.
    STEP_POSITIONAL = {"ddpm": ("generator", "return_dict"),
                       "ddim": ("eta", "use_clipped_model_output", "generator", "variance_noise", "return_dict")}

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[int, torch.Tensor],
        sample: torch.Tensor,
        *args,
        generator=None,
        return_dict: Optional[bool] = None,
        eta: Optional[float] = None,
        use_clipped_model_output: Optional[bool] = None,
        variance_noise: Optional[torch.Tensor] = None,
    ):
        """One step from ``timestep`` to the next scheduled timestep (the clean data after the last).

        Positional arguments after ``sample`` are those of the diffusers class the sampler stands in for:
        ``DDPMScheduler.step``'s (generator, return_dict) for ``"ddpm"``, ``DDIMScheduler.step``'s (eta,
        use_clipped_model_output, generator, variance_noise, return_dict) for ``"ddim"``; every one is also
        a keyword. ``generator`` may be a list with one generator per batch item. ``eta`` (DDIM only)
        overrides ``config.eta``; ``use_clipped_model_output`` (DDIM) recomputes epsilon from the clipped
        x0; ``variance_noise`` replaces the drawn noise (not together with ``generator``). Before
        ``set_timesteps`` it steps on the full train grid (t -> t - 1), as DDPMScheduler does.
        """
        if args:
            kw = bind_step_args(type(self).__name__, self.STEP_POSITIONAL[self.config.sampler], args, {
                k: v for k, v in (("generator", generator), ("return_dict", return_dict), ("eta", eta),
                                  ("use_clipped_model_output", use_clipped_model_output),
                                  ("variance_noise", variance_noise)) if v is not None})
            generator, return_dict, eta = kw.get("generator"), kw.get("return_dict"), kw.get("eta")
            use_clipped_model_output, variance_noise = kw.get("use_clipped_model_output"), kw.get("variance_noise")
        return_dict = True if return_dict is None else return_dict
        if self._index is None:  # no set_timesteps yet: the init-time grid, every train timestep
            self._prepare(self.timesteps.cpu())
        i = lookup_step_index(self._index, timestep)
        cfg = self.config
        predicted_variance = None
        if (
            cfg.variance_type in ("learned", "learned_range")
            and model_output.ndim > 1
            and model_output.shape[1] == 2 * sample.shape[1]
        ):
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        self._check_step_inputs(model_output, sample)
        noise = NoiseSource(sample, generator, variance_noise)
        # None: config.eta (DDIM's); DDIMPipeline's default eta=0.0 passes the DDPM sampler too.
        eta = self.step_eta(eta, self.solver, default=cfg.eta if self.solver.takes_eta else 0.0)
        cur, nxt = self._points[i]
        x0, eps = self.denoised(model_output, sample, cur.a, cur.s, clipped_eps=bool(use_clipped_model_output))
        options = {"eta": eta} if self.solver.takes_eta else {}
        if "variance" in self.solver.options:
            options["variance"] = self._ddpm_variance(predicted_variance, cur, nxt)
        mean, std = self.solver.rule(sample, x0, eps, cur, nxt, **options)
        # diffusers' draw rule -- DDPM draws wherever timestep > 0 (the last step into clean data included,
        # where the noise is then not added), DDIM wherever it adds noise -- so a generator shared with
        # DDPMScheduler / DDIMScheduler stays aligned. No draw, no noise.
        noisy = self.solver.stochastic or isinstance(std, torch.Tensor) or std > 0
        drawn = noise() if noisy and (int(timestep) > 0 or variance_noise is not None) else None
        prev = self.next_sample(mean, std if drawn is not None else 0.0, nxt, noise, drawn)
        if not return_dict:
            return (prev, x0)
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def _ddpm_variance(self, predicted_variance, cur: Point, nxt: Point):
        """The ``variance`` argument of the ancestral rule for ``config.variance_type``."""
        vt = self.config.variance_type
        if vt in ("fixed_small", "fixed_small_log"):
            return "small"
        if vt in ("fixed_large", "fixed_large_log"):
            return "large"
        if predicted_variance is None:
            raise ValueError(
                f"variance_type={vt!r} needs a model output with twice the sample's channels (mean and variance)"
            )
        if vt == "learned":
            return predicted_variance
        # learned_range (improved DDPM): interpolate log-variance between beta~ and beta.
        frac = (predicted_variance + 1) / 2
        log_var = frac * np.log(transition(cur, nxt)[1]) + (1 - frac) * np.log(max(posterior_variance(cur, nxt), 1e-20))
        return torch.exp(log_var)

__all__ = ["VPScheduler", "spaced_timesteps", "check_custom_timesteps"]
