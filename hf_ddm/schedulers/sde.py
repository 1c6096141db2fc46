"""Continuous-time SDE scheduler: VP, sub-VP and VE processes with reverse-SDE, probability-flow ODE,
predictor-corrector and multistep exponential-integrator samplers, in diffusers' scheduler API.

    scheduler = SDEScheduler(sde="vp", solver="multistep", solver_order=3)
    scheduler.set_timesteps(20)
    x = torch.randn(shape) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:                       # len(timesteps) == model evaluations (NFE)
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample

Everything about the process -- marginal (a, s), drift f and diffusion g, exact transition, posterior,
log-SNR and its inverse -- comes from ``hf_ddm.processes``; this file owns the time grid and the
bookkeeping that lets multi-stage solvers (Heun, predictor-corrector) run in the plain loop above.

**Process.** ``sde="vp"`` with ``beta_schedule=None`` is score_sde's continuous VP SDE (linear
beta(t) from ``beta_min`` to ``beta_max``); ``sde="subvp"`` and ``sde="ve"`` likewise. ``sde="vp"``
with a ``beta_schedule`` ("linear", "scaled_linear", "squaredcos_cap_v2") or ``trained_betas`` is the
discrete schedule of a diffusers model, exactly (``processes.DiscreteScheduleVP``: diffusers'
alphas_cumprod at the integer train timesteps, log-SNR linear between them), with
``rescale_betas_zero_snr`` and ``num_train_timesteps`` as in diffusers. That is what
``SDEScheduler.from_config(<config of DDPM, DDIM, PNDM, Euler, EulerAncestral, Heun, LMS,
DPMSolverMultistep, UniPC, DEIS>)`` builds, so every solver below runs on the model's own schedule;
keys of such a config that only concern diffusers' sampler (spacing, Karras sigmas, solver type ...)
have nothing to act on, and keys that cannot be honoured raise ``ValueError``
(``diffusers_configs``). ``from_config`` also takes a saved folder or json path.

**Time.** Process time t in [0, 1]; the model is called with ``timestep = t * timestep_scale``
(default 1000 for the continuous SDEs; for a diffusers schedule it is N - 1, so the model sees its
train timestep -- a float between the integers, as k-diffusion's wrappers call it), the same map the
training helpers use (``timestep_to_t`` / ``t_to_timestep``).

**x0 processing.** ``clip_sample`` / ``thresholding`` (diffusers' keys and meaning) clip or
threshold every x0 estimate; each solver then uses the epsilon consistent with it.

**step keywords of stock pipelines.** ``generator`` and ``return_dict`` as diffusers.
``eta``: DDIM's stochasticity; honoured by the solvers whose registry entry takes it (``ode_euler``,
which is DDIM: eta = 0 the ODE, eta = 1 DDPM's posterior variance); every other solver has its own fixed
noise, so there ``eta`` must be 0 or None (``DDIMPipeline``'s default 0.0 passes) and anything else is a
``ValueError`` (``ProcessSchedulerMixin.step_eta``).
``use_clipped_model_output``: accepted and a no-op -- hf_ddm's solvers always use the epsilon
consistent with the clipped x0 (diffusers' ``True``). ``variance_noise``: the noise to add instead of
a draw (stochastic solvers).

**Grid.** ``num_inference_steps`` = N solver steps between grid points t_0 = 1 > ... > t_N (for a VP
process whose log-SNR at t = 1 lies below ``log_snr_min`` = -5.1 -- cosine and zero-SNR schedules -- the
"log_snr" / "rho" grids start at that log-SNR instead: on the exact oracle this cuts DPM-Solver++'s
within-mode std error on a cosine schedule at 10 steps from 0.61 to 0.12 (2M) and 1.27 to 0.08 (3M)). With
``denoise_final=True`` (default) the model is evaluated at N points from 1 down to ``sampling_eps``
and the last update returns the clean estimate x0_hat = E[x0 | x_{sampling_eps}] -- score_sde's
"noise removal", done as the final step itself rather than as an extra step below ``sampling_eps``
(which is what over-shrinks the distribution in score_sde). With ``denoise_final=False`` the grid
ends at ``sampling_eps`` and the sample keeps noise of std s(sampling_eps). The default is True: it
returns data, as DDPM/DDIM/EDM/DPM-Solver do, and at the default ``sampling_eps`` (s ~ 0.01) the
shrinkage of a mode of std sigma is only the factor sigma / sqrt(sigma^2 + s^2).
``time_grid``: "uniform" in t (score_sde), "rho" (EDM's rho-spacing of sigma = s/a, mapped to t
through the process's log-SNR inverse), "log_snr" (uniform in lambda = log(a/s); default -- on the
exact mixture benchmark it is the best grid for the multistep, reverse-diffusion and ancestral
samplers at 10-20 NFE, and close to "rho" for the ODE Euler sampler; see benchmarks/), "spacing"
(a discrete schedule's diffusers timesteps of its ``timestep_spacing``: the default of ``from_config`` on
a diffusers config, so that img2img's ``strength`` means what it means there -- see the class docstring).

**Solvers** (``solver``): every entry of ``hf_ddm.solver_registry.SOLVERS`` (its ``label`` says what
each is; the formulas and why they take the form they do are in ``hf_ddm.solvers``). Solvers with more
than one model call per step -- Heun's corrector at the next grid point, ``pc``'s ``correct_steps``
Langevin corrections before each predictor step -- emit one entry of ``timesteps`` per call, as diffusers'
HeunDiscreteScheduler repeats timesteps, so the plain loop above runs them; ``order`` is the model calls
per step. ``solver_order`` (1..3) is the multistep solvers' order, ``snr`` the corrector's target.

Every update formula lives in ``hf_ddm.solvers`` and every solver's plan of model calls in
``hf_ddm.solver_registry``; this class owns the grid and the model-output conversion.

**Small step counts.** Every solver returns bounded samples at any N >= 1: each update integrates
the linear part of its equation exactly (Euler-Maruyama and Heun included, see ``hf_ddm.solvers``),
and the multistep solver drops to a lower order where its weights would amplify; the error bands
measured on the exact mixture at N = 3, 5, 10 are in ``tests/test_small_steps.py``.

NFE: ``len(scheduler.timesteps)`` after ``set_timesteps`` equals the number of model calls of the
loop, also reported as ``num_model_evaluations``.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin

from ..limits import SDES, TIME_GRIDS, check_scheduler_args, check_step_count
from ..processes import CLEAN, ContinuousVP, DiscreteScheduleVP, Point, make_continuous_process
from ..solver_registry import NAMES, STOCHASTIC, StepContext, get
from .base import NoiseSource, ProcessSchedulerMixin, SchedulerOutput
from .vp import spaced_timesteps
from .diffusers_configs import (checkpoint_spacing, is_vp_schedule_config, load_config_dict,
                                refuse_other_parameterisations, sampler_settings, vp_schedule_kwargs)

# Public names of 0.1.0, now read from the registry.
SOLVERS = NAMES
STOCHASTIC_SOLVERS = STOCHASTIC
# A plan entry: (stage, i) -- the stepper's stage run at that position of ``timesteps``, for the grid step
# i -> i + 1 (``solver_registry.Stepper``: the model is called at t_i, or at t_{i+1} for its AT_NEXT stages).


# Keys only an SDEScheduler config has: a config holding one is ours, even where a round trip through a
# diffusers class dropped ``sde`` (diffusers leaves out keys that were at their defaults).
_OWN_KEYS = ("sde", "solver", "corrector_snr", "time_grid", "timestep_scale", "denoise_final", "log_snr_min",
             "optimized_timesteps")


def as_step_count(value, name: str = "num_inference_steps") -> int:
    """An integer step count in [1, hf_ddm.limits.MAX_INFERENCE_STEPS] (bools and floats refused)."""
    return check_step_count(value, name)


class SDEScheduler(SchedulerMixin, ConfigMixin, ProcessSchedulerMixin):
    """VP / sub-VP / VE scheduler (continuous, or any diffusers discrete VP schedule) with reverse-SDE,
    ODE, predictor-corrector and multistep samplers.

    Args:
        sde: "vp", "subvp" or "ve".
        beta_min, beta_max: linear beta(t) of the continuous VP / sub-VP (score_sde's 0.1, 20).
        sigma_min, sigma_max: geometric sigma(t) of VE (score_sde's CIFAR-10 0.01, 50).
        num_train_timesteps: ``len(scheduler)``; the N of a discrete schedule.
        solver: see the module docstring.
        snr: Langevin corrector target signal-to-noise ratio (``corrector_snr`` is an alias that wins
            when given).
        correct_steps: Langevin steps per grid point for ``solver="pc"``.
        solver_order: 1..3 for ``solver="multistep"``.
        prediction_type: "epsilon", "sample", "v_prediction" or "score".
        sampling_eps: the smallest process time visited (None: 1e-3 for VP/sub-VP, 1e-5 for VE, 0 --
            the first train timestep -- for a discrete schedule).
        time_grid, rho: see the module docstring; ``time_grid="spacing"`` (discrete schedules only) takes diffusers'
            DDIM/DDPM timesteps of the config's ``timestep_spacing`` ("leading" / "trailing" / "linspace") and
            ``steps_offset`` on the train grid, exactly -- see "img2img" below.
        timestep_scale: model timestep = t * timestep_scale (None: 1000, or N - 1 for a discrete schedule).
        denoise_final: return x0_hat at the last update (True) or the sample at ``sampling_eps``.
        beta_schedule, beta_start, beta_end, trained_betas, rescale_betas_zero_snr: a diffusers discrete
            VP schedule (``sde="vp"`` only), as diffusers' schedulers read them.
        clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value:
            diffusers' x0 clipping / dynamic thresholding.
        log_snr_min: VP processes only, "log_snr" / "rho" grids: start the grid at this log-SNR when the
            process reaches below it (cosine, zero-SNR schedules); None starts at t = 1 always.
        optimized_timesteps: ``{"5": [model timesteps], ...}``: per step count, the steps
            ``set_timesteps(5)`` runs instead of ``time_grid``'s (``hf_ddm.optimize_steps`` finds them for a
            model; ``python -m hf_ddm.few_step`` writes them into a saved folder). None: none.

    **img2img, and the grid of a diffusers config.** Stock img2img / inpaint pipelines take ``strength`` as a
    fraction of the scheduler's own grid: they run ``timesteps[t_start * order:]`` with
    ``t_start = N - int(N * strength)``. So that ``strength`` means what it means in diffusers,
    ``SDEScheduler.from_config(<a diffusers VP config>)`` without ``time_grid`` runs the config's own spacing
    (``time_grid="spacing"``: strength 0.3 at 10 steps starts at timestep 201 / 222 / 299 for leading (SD's
    steps_offset=1) / linspace / trailing, as DDIMScheduler does; a config without ``timestep_spacing`` takes
    its class's default, as diffusers does). Pass ``time_grid="log_snr"`` for hf_ddm's grid, which samples
    better at 5-20 steps but puts 10-step strength 0.3 near timestep 14 (the image barely changes). Configs
    saved by SDEScheduler carry their own ``time_grid`` and load as saved; SDEScheduler(...) built directly
    keeps "log_snr".
    """

    _compatibles = ["ScoreSdeVeScheduler", "ScoreSdeVpScheduler"] + [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        sde: str = "vp",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        num_train_timesteps: int = 1000,
        solver: str = "multistep",
        snr: float = 0.16,
        corrector_snr: Optional[float] = None,
        correct_steps: int = 1,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        sampling_eps: Optional[float] = None,
        time_grid: str = "log_snr",
        rho: float = 7.0,
        timestep_scale: Optional[float] = None,
        denoise_final: bool = True,
        beta_schedule: Optional[str] = None,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        trained_betas=None,
        rescale_betas_zero_snr: bool = False,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        log_snr_min: Optional[float] = -5.1,
        optimized_timesteps: Optional[dict] = None,
    ):
        discrete = beta_schedule is not None or trained_betas is not None
        self.snr = float(corrector_snr if corrector_snr is not None else snr)
        check_scheduler_args(
            "SDEScheduler", discrete, sde=sde, solver=solver, time_grid=time_grid, prediction_type=prediction_type,
            num_train_timesteps=num_train_timesteps, trained_betas=trained_betas, solver_order=solver_order,
            correct_steps=correct_steps, snr=snr, corrector_snr=corrector_snr, rho=rho, log_snr_min=log_snr_min, beta_min=beta_min,
            beta_max=beta_max, sigma_min=sigma_min, sigma_max=sigma_max, clip_sample=clip_sample,
            clip_sample_range=clip_sample_range, thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio, sample_max_value=sample_max_value,
            timestep_scale=timestep_scale, sampling_eps=sampling_eps,
            **({"beta_start": beta_start, "beta_end": beta_end} if discrete and trained_betas is None else {}),
        )
        if time_grid == "spacing" and not discrete:
            raise ValueError("time_grid='spacing' takes diffusers' timestep_spacing on a model's train timesteps: it "
                             "needs a discrete schedule (beta_schedule or trained_betas); a continuous process takes "
                             "'log_snr', 'uniform' or 'rho'")
        if discrete:
            self.process = DiscreteScheduleVP.from_schedule(
                num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                beta_schedule=beta_schedule or "linear", trained_betas=trained_betas,
                rescale_betas_zero_snr=rescale_betas_zero_snr,
            )
            scale = float(num_train_timesteps - 1)  # the model takes its train timestep
        else:
            self.process = make_continuous_process(sde, beta_min, beta_max, sigma_min, sigma_max)
            scale = 1000.0 if timestep_scale is None else float(timestep_scale)
        self.timestep_scale = scale
        default_eps = 0.0 if discrete else (1e-5 if sde == "ve" else 1e-3)
        eps = default_eps if sampling_eps is None else sampling_eps
        self.sampling_eps = float(eps)
        if log_snr_min is not None and isinstance(self.process, (ContinuousVP, DiscreteScheduleVP)):
            top = float(self.process.log_snr(torch.tensor(max(eps, self.process.t_min), dtype=torch.float64)))
            if not log_snr_min < top:
                raise ValueError(f"log_snr_min={log_snr_min} must lie below the process's log-SNR at sampling_eps "
                                 f"({top:.3g}): the grid would start where sampling ends")
        self.init_noise_sigma = float(self.process.prior_std)
        self._optimized = {}
        for n, ts in (optimized_timesteps or {}).items():
            # Checked here, at load, not at the first set_timesteps that asks for them.
            steps = [float(v) for v in torch.as_tensor(ts, dtype=torch.float64).flatten().tolist()]
            self._check_timesteps(steps)
            if len(steps) != check_step_count(int(n), "optimized_timesteps key"):
                raise ValueError(f"optimized_timesteps[{n!r}] must list {n} timesteps, got {len(steps)}")
            self._optimized[int(n)] = steps
        if optimized_timesteps:
            # JSON keys are strings: store them so whatever the caller passed, so that a config saved and
            # loaded again is the same config.
            self.register_to_config(optimized_timesteps={str(n): self._optimized[n] for n in sorted(self._optimized)})
        self.solver = get(solver)
        self.order = self.solver.model_calls(self.config)  # diffusers' `order`: model calls per step

        self.num_inference_steps: Optional[int] = None
        self.timesteps: Optional[torch.Tensor] = None
        self._plan: List[Tuple[str, int]] = []
        self._step_index: Optional[int] = None
        self._begin_index: Optional[int] = None
        self._stepper = self.solver.make_stepper(self.config)

    @property
    def is_discrete_schedule(self) -> bool:
        return isinstance(self.process, DiscreteScheduleVP)

    # --- config compatibility -------------------------------------------------------------------
    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As ConfigMixin.from_config (a dict, a FrozenDict or a saved folder / json path), plus:

        * a diffusers VP scheduler config (DDPM, DDIM, PNDM, Euler, ..., DEIS: it names a beta
          schedule) gives ``sde="vp"`` on exactly that discrete schedule with its prediction type
          and x0 clipping; unhonourable keys raise ``ValueError`` (``diffusers_configs``);
        * a ScoreSdeVeScheduler config becomes sde="ve" with its PC sampler on a score model (keys
          snr, sigma_min/max, sampling_eps, correct_steps carried over); ScoreSdeVpScheduler's
          becomes sde="vp" with Euler-Maruyama on a score model.
        """
        cfg = load_config_dict(cls, config)
        name = cfg.get("_class_name")
        own = name == cls.__name__ or any(k in cfg for k in _OWN_KEYS)
        if not own:  # a foreign config; in-memory diffusers configs carry no _class_name
            refuse_other_parameterisations(cfg, cls.__name__)
            # Its values (defaults included: sigma_max=1348 is what such a model was trained with)
            # describe the process, so carry them all rather than falling back to our defaults.
            cfg.pop("_use_default_values", None)
            if name == "ScoreSdeVeScheduler" or (name is None and "sigma_max" in cfg and "beta_min" not in cfg
                                                 and not is_vp_schedule_config(cfg)):
                kwargs = {"sde": "ve", "solver": "pc", "prediction_type": "score", "time_grid": "uniform", **kwargs}
            elif name == "ScoreSdeVpScheduler" or (name is None and "beta_min" in cfg and "sigma_max" not in cfg):
                kwargs = {"sde": "vp", "solver": "euler_maruyama", "prediction_type": "score", "time_grid": "uniform", **kwargs}
            elif is_vp_schedule_config(cfg):
                # The model's keys become ours; the checkpoint's sampler settings ride along, so that switching
                # back (``X.from_config(scheduler.config)``) gives the checkpoint's own sampler. Unless the caller
                # picks a grid, the steps are the checkpoint's own (its timestep_spacing): img2img's strength
                # then means what it means in diffusers (see the class docstring).
                settings = sampler_settings(cfg)
                if kwargs.get("time_grid") is None:
                    kwargs = {**kwargs, "time_grid": "spacing"}
                    settings.update(checkpoint_spacing(cfg))
                cfg = {"sde": "vp", **vp_schedule_kwargs(cfg), **settings, **({"_class_name": name} if name else {})}
        return super().from_config(cfg, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def unused_config_keys(self) -> List[str]:
        """The config keys this scheduler's process, solver and grid do not read (each at a value that changes
        nothing): left out of the saved scheduler_config.json, so the file says what the scheduler runs and a
        diffusers scheduler swapped in (``DPMSolverMultistepScheduler.from_config``) meets fewer keys it does
        not know. Loading fills them with their defaults, the same scheduler."""
        cfg = self.config
        unused = set()
        if self.is_discrete_schedule:
            unused |= {"sde", "beta_min", "beta_max", "sigma_min", "sigma_max", "timestep_scale"}
            if cfg.trained_betas is not None:
                unused |= {"beta_schedule", "beta_start", "beta_end"}
            else:
                unused.add("trained_betas")
                if cfg.beta_schedule == "squaredcos_cap_v2":
                    unused |= {"beta_start", "beta_end"}
        else:
            unused |= {"beta_schedule", "beta_start", "beta_end", "trained_betas", "rescale_betas_zero_snr"}
            unused |= {"beta_min", "beta_max"} if cfg.sde == "ve" else {"sigma_min", "sigma_max"}
        if not self.solver.correctors:
            unused |= {"snr", "corrector_snr", "correct_steps"}
        elif cfg.corrector_snr is None:
            unused.add("corrector_snr")
        if self.solver.state != "x0 history":
            unused.add("solver_order")
        if cfg.time_grid != "rho":
            unused.add("rho")
        if cfg.time_grid in ("uniform", "spacing") or cfg.sde == "ve":
            unused.add("log_snr_min")
        if not cfg.clip_sample:
            unused.add("clip_sample_range")
        if not cfg.thresholding:
            unused |= {"dynamic_thresholding_ratio", "sample_max_value"}
        for key in ("sampling_eps", "timestep_scale", "optimized_timesteps"):
            if cfg.get(key) is None:
                unused.add(key)
        return sorted(k for k in unused if k in cfg)

    def to_json_string(self) -> str:
        """As ConfigMixin's, without ``unused_config_keys``."""
        full = self._internal_dict
        drop = set(self.unused_config_keys())
        self._internal_dict = {k: v for k, v in full.items() if k not in drop}
        try:
            return super().to_json_string()
        finally:
            self._internal_dict = full

    def __len__(self):
        return self.config.num_train_timesteps

    # --- timestep <-> process time ----------------------------------------------------------------
    def timestep_to_t(self, timesteps) -> torch.Tensor:
        return torch.as_tensor(timesteps, dtype=torch.float64) / self.timestep_scale

    def t_to_timestep(self, t) -> torch.Tensor:
        return torch.as_tensor(t, dtype=torch.float64) * self.timestep_scale

    @property
    def training_t_min(self) -> float:
        return self.sampling_eps

    # --- grid ---------------------------------------------------------------------------------------
    def _time_grid(self, n_points: int) -> torch.Tensor:
        """n_points process times from 1 down to sampling_eps (float64)."""
        t_hi, t_lo = self.process.t_max, max(self.sampling_eps, self.process.t_min)
        if self.config.time_grid == "spacing":
            # diffusers' DDIM/DDPM timesteps for n_points steps on the train grid, exactly (1 point included)
            return self._check_timesteps(spaced_timesteps(self.config.num_train_timesteps, n_points,
                                                          *self.checkpoint_spacing()))
        if n_points == 1:
            return torch.tensor([t_hi], dtype=torch.float64)
        grid = self.config.time_grid
        clip = self.config.log_snr_min
        if grid != "uniform" and clip is not None and isinstance(self.process, (ContinuousVP, DiscreteScheduleVP)):
            # A VP sample is N(0, 1) to within a = sigmoid(2 lambda)^1/2 < 0.006 below lambda = -5.1: start there
            # rather than spend a third of a cosine schedule's log-SNR grid on pure noise (diffusers'
            # lambda_min_clipped, recommended -5.1 for cosine). Linear-beta schedules end above it: unchanged.
            if float(self.process.log_snr(torch.tensor(t_hi, dtype=torch.float64))) < clip:
                t_hi = float(self.process.time_at_log_snr(torch.tensor(clip, dtype=torch.float64)))
        if grid == "uniform":
            ts = torch.linspace(t_hi, t_lo, n_points, dtype=torch.float64)
        else:
            lam_hi, lam_lo = (float(v) for v in self.process.log_snr(torch.tensor([t_lo, t_hi], dtype=torch.float64)))
            u = torch.linspace(0, 1, n_points, dtype=torch.float64)
            if grid == "log_snr":
                lam = lam_lo + u * (lam_hi - lam_lo)
            else:  # rho: EDM spacing of sigma = s/a = exp(-lambda)
                inv = 1.0 / self.config.rho
                s_max, s_min = math.exp(-lam_lo), math.exp(-lam_hi)
                sig = (s_max**inv + u * (s_min**inv - s_max**inv)) ** self.config.rho
                lam = -torch.log(sig)
            ts = self.process.time_at_log_snr(lam)
            ts[0], ts[-1] = t_hi, t_lo
        return ts

    def checkpoint_spacing(self) -> Tuple[str, int]:
        """(timestep_spacing, steps_offset) that ``time_grid="spacing"`` follows: the config's (a diffusers
        config's ride along), else diffusers' DDIM defaults ("leading", 0)."""
        cfg = self.config
        return cfg.get("timestep_spacing") or "leading", int(cfg.get("steps_offset") or 0)

    def _grid_points(self, n: int) -> List[Point]:
        denoise = bool(self.config.denoise_final)
        ts = self._time_grid(n if denoise else n + 1)
        if not denoise:
            ts[-1] = max(self.sampling_eps, self.process.t_min)  # a spacing grid's last point may lie above it
        return [self.process.point(t) for t in ts.tolist()] + ([CLEAN] if denoise else [])

    def _check_timesteps(self, timesteps) -> torch.Tensor:
        """Model timesteps given by a caller as process times (float64): strictly decreasing, within
        [sampling_eps, t_max]."""
        ts = self.timestep_to_t(torch.as_tensor(timesteps, dtype=torch.float64).flatten())
        lo, hi = max(self.sampling_eps, self.process.t_min), self.process.t_max
        tol = 1e-6
        if ts.numel() == 0 or not torch.isfinite(ts).all():
            raise ValueError(f"timesteps must be a non-empty list of finite numbers, got {list(timesteps)}")
        if (ts[1:] >= ts[:-1]).any():
            raise ValueError("timesteps must be strictly decreasing (one entry per step, as diffusers' "
                             f"set_timesteps(timesteps=...)), got {(ts * self.timestep_scale).tolist()}")
        if ts[0] > hi + tol or ts[-1] < lo - tol:
            raise ValueError(f"timesteps must lie in [{lo * self.timestep_scale:.6g}, {hi * self.timestep_scale:.6g}] "
                             f"(sampling_eps to t_max, in model timesteps), got {(ts * self.timestep_scale).tolist()}")
        return ts.clamp(lo, hi)

    def _points_at(self, timesteps=None, sigmas=None) -> List[Point]:
        """The grid of a caller's steps, with diffusers' meaning. ``timesteps``: the N model timesteps the
        steps start at; the last step ends where this scheduler's grids end (the clean estimate with
        ``denoise_final``, else ``sampling_eps``). ``sigmas``: N + 1 noise levels sigma = s/a, the last the
        end (0: the clean estimate)."""
        if timesteps is not None:
            ts = self._check_timesteps(timesteps)
            end = max(self.sampling_eps, self.process.t_min)
            if self.config.denoise_final:
                return [self.process.point(t) for t in ts.tolist()] + [CLEAN]
            if float(ts[-1]) <= end:
                raise ValueError(f"with denoise_final=False the steps end at sampling_eps "
                                 f"({end * self.timestep_scale:.6g}); the last timestep must lie above it")
            return [self.process.point(t) for t in ts.tolist() + [end]]
        sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
        if sig.numel() < 2 or not torch.isfinite(sig).all() or (sig[1:] >= sig[:-1]).any() or sig[-1] < 0:
            raise ValueError("sigmas must be N + 1 >= 2 finite, strictly decreasing noise levels s/a >= 0 (the last "
                             f"the end; 0 = the clean estimate), got {sig.tolist()}")
        clean = bool(sig[-1] == 0)
        noisy = sig[:-1] if clean else sig
        ts = self.process.time_at_log_snr(-torch.log(noisy))
        # time_at_log_snr clamps to the process's range: a sigma outside it would silently become another one.
        a, s = self.process.marginal(ts)
        if not torch.allclose(s / a, noisy, rtol=1e-4):
            raise ValueError(f"sigmas must lie within this process's noise levels "
                             f"[{float(s[-1] / a[-1]):.6g}, ...]; got {sig.tolist()}")
        return [self.process.point(t) for t in ts.tolist()] + ([CLEAN] if clean else [])

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: Union[str, torch.device, None] = None,
                      timesteps: Optional[List[float]] = None, sigmas: Optional[List[float]] = None):
        """Build the grid and the evaluation plan; ``timesteps`` lists one entry per model call.

        Exactly one of: ``num_inference_steps`` (the config's ``optimized_timesteps`` for that count when it
        has them, else ``time_grid``'s N steps), ``timesteps`` (the N model timesteps the steps start at,
        strictly decreasing, as diffusers' ``set_timesteps(timesteps=...)``; a solver with several model calls
        per step repeats them in ``self.timesteps``, as diffusers' Heun does) or ``sigmas`` (N + 1 noise levels
        s/a, the last 0 for the clean estimate, as diffusers' Euler ``set_timesteps(sigmas=...)``)."""
        given = [name for name, v in (("num_inference_steps", num_inference_steps), ("timesteps", timesteps),
                                      ("sigmas", sigmas)) if v is not None]
        if len(given) != 1:
            raise ValueError(f"pass exactly one of num_inference_steps, timesteps or sigmas to set_timesteps, got {given or 'none'}")
        if num_inference_steps is not None:
            n = as_step_count(num_inference_steps)
            if n in self._optimized:
                points = self._points_at(timesteps=self._optimized[n])
            else:
                points = self._grid_points(n)
        else:
            points = self._points_at(timesteps, sigmas)
            n = as_step_count(len(points) - 1, "len(timesteps)")
        self._points = points
        plan = [(stage, i) for i in range(n) for stage in self._stepper.stages(self.config, points[i + 1].clean)]
        self._plan = plan
        t_eval = [self._eval_point(k).t for k in range(len(plan))]
        self.timesteps = self.t_to_timestep(torch.tensor(t_eval, dtype=torch.float64)).float().to(device)
        self.num_inference_steps = n
        self._step_index, self._begin_index = None, None
        self._stepper.reset()

    @property
    def num_model_evaluations(self) -> int:
        """Model calls of one sampling loop (= len(timesteps)); requires set_timesteps."""
        if self.timesteps is None:
            raise ValueError("call set_timesteps before num_model_evaluations")
        return len(self.timesteps)

    @property
    def sigmas(self) -> torch.Tensor:
        """sigma = s/a at each evaluation (diagnostics / parity with diffusers' k-schedulers)."""
        return torch.tensor([p.s / p.a for p in (self._eval_point(k) for k in range(len(self._plan)))])

    def _eval_point(self, k) -> Point:
        stage, i = self._plan[k]
        return self._points[i + 1] if stage in self._stepper.AT_NEXT else self._points[i]

    # --- the diffusers loop -------------------------------------------------------------------------
    @property
    def step_index(self) -> Optional[int]:
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        self._begin_index = begin_index

    def _locate(self, timestep) -> int:
        if self.timesteps is None:
            raise ValueError("timestep: call set_timesteps before step")
        value = float(torch.as_tensor(timestep).flatten()[0])
        tol = 1e-5 * self.timestep_scale
        k = self._step_index
        if k is None and self._begin_index is not None:
            k = self._begin_index
        if k is not None and k < len(self._plan) and abs(float(self.timesteps[k]) - value) <= tol:
            return k
        hits = ((self.timesteps.cpu().double() - value).abs() <= tol).nonzero().flatten().tolist()
        if not hits:
            raise ValueError(f"timestep {value} is not in the schedule (scheduler.timesteps after set_timesteps)")
        # A repeated timestep (Heun's corrector at t_{i+1}, then the next step's predictor there; PC's
        # correctors and predictor at one t_i): a loop entering here (img2img's timesteps[t_start * order:]
        # without set_begin_index) begins a step, never a stage that continues one -- diffusers' Heun likewise
        # takes the second of two equal timesteps at the first step.
        k = next((h for h in hits if self._plan[h][0] not in self._stepper.AT_NEXT), hits[0])
        if self._step_index is not None:  # jumped: multistep history / Heun state no longer valid
            self._stepper.reset()
        return k

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[float, torch.Tensor],
        sample: torch.Tensor,
        generator=None,
        variance_noise: Optional[torch.Tensor] = None,
        return_dict: bool = True,
        *,
        eta: Optional[float] = None,
        use_clipped_model_output: Optional[bool] = None,
    ) -> Union[SchedulerOutput, Tuple]:
        """One model evaluation's update. Positional arguments as DPMSolverMultistepScheduler.step's
        (generator, variance_noise, return_dict); ``eta`` and ``use_clipped_model_output`` -- keywords only,
        as stock pipelines pass them -- see the module docstring."""
        self._check_step_inputs(model_output, sample, timestep)
        eta = self.step_eta(eta, self.solver)
        noise = NoiseSource(sample, generator, variance_noise)
        k = self._locate(timestep)
        if k == 0:
            self._check_initial_noise(sample)
        stage, i = self._plan[k]
        cur, nxt = self._points[i], self._points[i + 1]
        here = self._eval_point(k)
        x0, eps = self.denoised(model_output, sample, here.a, here.s)
        ctx = StepContext(i, self.num_inference_steps, eta, noise)
        mean, std, drawn = self._stepper(stage, sample, x0, eps, cur, nxt, ctx)
        prev = self.next_sample(mean, std, cur if stage in self._stepper.STAY else nxt, noise, drawn)

        self._step_index = k + 1
        if not return_dict:
            return (prev, x0)
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0)


__all__ = ["SDEScheduler", "SDES", "SOLVERS", "STOCHASTIC_SOLVERS", "TIME_GRIDS", "as_step_count"]
