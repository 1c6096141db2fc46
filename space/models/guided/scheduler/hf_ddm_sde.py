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
``eta``: DDIM's stochasticity; honoured by ``solver="ode_euler"`` (which is DDIM: eta = 0 the ODE,
eta = 1 DDPM's posterior variance); every other solver has its own fixed noise, so there ``eta``
must be 0 or None (``DDIMPipeline``'s default 0.0 passes) and anything else is a ``ValueError``.
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
samplers at 10-20 NFE, and close to "rho" for the ODE Euler sampler; see benchmarks/).

**Solvers** (``solver``):

* ``euler_maruyama``: reverse SDE dx = [f x - g^2 score] dt + g dw, first order in t, with the
  linear part in x integrated exactly (stable at any step length).
* ``reverse_diffusion``: Song's reverse-diffusion predictor built on the *exact* transition
  x_t = r x_t' + G z between grid points (``process.transition``):
  x_t' = (x_t + G^2 score) / r + G z. For VE (r = 1) this is SMLD's predictor; for VP it matches
  score_sde's (2 - sqrt(1 - beta)) x + beta score to first order in beta but never forms a
  "beta" > 1, and sub-VP uses its own transition instead of degrading to Euler-Maruyama. The mean is
  exactly the posterior mean of q(x_t' | x_t, x0_hat); only the noise differs from ``ancestral``.
* ``ancestral``: sample q(x_t' | x_t, x0_hat) (``process.posterior``), DDPM's sampler for any process.
* ``ode_euler`` / ``ode_heun``: the probability-flow ODE in EDM's process-independent form
  d(x/a)/d sigma = (x/a - x0_hat)/sigma, sigma = s/a, integrated with its linear part exact. Euler
  here equals DDIM and DPM-Solver++(1). Heun (``solvers.Heun``: trapezoid on x0_hat in lambda, EDM's
  Heun to second order but bounded at any step length) emits each timestep after the first twice
  (``order = 2``), like diffusers' HeunDiscreteScheduler; its last step into clean data is Euler.
* ``pc``: predictor-corrector: at each grid point ``correct_steps`` Langevin corrections
  (``solvers.langevin_step``, target ``snr``), then a reverse-diffusion predictor step. The corrector
  evaluations are extra entries of ``timesteps`` so the plain loop runs them. score_sde's VP step-size
  factor alpha_i = 1 - beta_i is generalised to the exact r^2 = (a_t / a_next)^2 of the transition to
  the next grid point (a_next = 1 for clean data): it is 1 - beta dt to first order, is exactly 1
  for VE (where score_sde uses 1), stays in (0, 1] on any grid (score_sde's goes negative when
  beta/N > 1), and works for sub-VP (score_sde's corrector crashes there).
* ``multistep``: DPM-Solver++(1/2/3M) in lambda with data prediction (``solvers.dpmpp_multistep_coefficients``),
  written only in (a, s) so VP, sub-VP and VE share it. Lower order at the first steps (no history),
  at the final steps (last step into clean data is first order; with N < 15 the last two steps are at
  most second order), as diffusers does for stability, and wherever the step ratios make the
  multistep weights large (``solvers.DPMSolverPP``).

Every update formula lives in ``hf_ddm.solvers``; this class owns the grid, the evaluation plan and
the model-output conversion.

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

from .hf_ddm_limits import check_int, check_step_count
from .hf_ddm_processes import CLEAN, ContinuousVP, DiscreteScheduleVP, Point, check_beta_range, check_prediction_type, check_sigma_range, make_continuous_process
from .hf_ddm_solvers import DPMSolverPP, Heun, ancestral, ddim, euler_maruyama, langevin, noise_like, reverse_diffusion, with_noise
from .hf_ddm_base import ProcessSchedulerMixin, SchedulerOutput, check_x0_processing
from .hf_ddm_diffusers_configs import is_vp_schedule_config, load_config_dict, vp_schedule_kwargs

SDES = ("vp", "subvp", "ve")
SOLVERS = ("euler_maruyama", "reverse_diffusion", "ancestral", "ode_euler", "ode_heun", "pc", "multistep")
TIME_GRIDS = ("uniform", "rho", "log_snr")
STOCHASTIC_SOLVERS = ("euler_maruyama", "reverse_diffusion", "ancestral", "pc")
_SINGLE_STEP_RULES = {
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "pc": reverse_diffusion,
    "ancestral": ancestral,
}
# A plan entry: (kind, i) -- what step() does at that position of ``timesteps``; i indexes the grid.
#   "step"    single-stage solver update from grid point i to i + 1 (model evaluated at t_i)
#   "heun1"   Heun's predictor from i to i + 1 (model at t_i)
#   "heun2"   Heun's corrector for the step i -> i + 1 (model at t_{i+1})
#   "correct" Langevin corrector at grid point i (model at t_i)


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
        time_grid, rho: see the module docstring.
        timestep_scale: model timestep = t * timestep_scale (None: 1000, or N - 1 for a discrete schedule).
        denoise_final: return x0_hat at the last update (True) or the sample at ``sampling_eps``.
        beta_schedule, beta_start, beta_end, trained_betas, rescale_betas_zero_snr: a diffusers discrete
            VP schedule (``sde="vp"`` only), as diffusers' schedulers read them.
        clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value:
            diffusers' x0 clipping / dynamic thresholding.
        log_snr_min: VP processes only, "log_snr" / "rho" grids: start the grid at this log-SNR when the
            process reaches below it (cosine, zero-SNR schedules); None starts at t = 1 always.
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
    ):
        if sde not in SDES and sde not in ("sub-vp", "sub_vp"):
            raise ValueError(f"sde must be one of {SDES}, got {sde!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if time_grid not in TIME_GRIDS:
            raise ValueError(f"time_grid must be one of {TIME_GRIDS}, got {time_grid!r}")
        check_prediction_type(prediction_type)
        check_x0_processing(clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value)
        discrete = beta_schedule is not None or trained_betas is not None
        if sde == "ve":
            check_sigma_range(sigma_min, sigma_max)
        elif not discrete:
            check_beta_range(beta_min, beta_max)
        if discrete and sde != "vp":
            raise ValueError(f"beta_schedule / trained_betas describe a discrete VP schedule: they need sde='vp', got sde={sde!r}")
        if not (isinstance(solver_order, int) and 1 <= solver_order <= 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order!r}")
        if isinstance(correct_steps, bool) or not isinstance(correct_steps, int) or correct_steps < 0:
            raise ValueError(f"correct_steps must be an integer >= 0, got {correct_steps!r}")
        self.snr = float(corrector_snr if corrector_snr is not None else snr)
        if solver == "pc" and correct_steps > 0 and not (self.snr > 0 and math.isfinite(self.snr)):
            raise ValueError(f"snr must be a finite number > 0 for the corrector, got {self.snr}")
        if not (rho > 0 and math.isfinite(rho)):
            raise ValueError(f"rho must be a finite number > 0, got {rho}")
        check_int("num_train_timesteps", num_train_timesteps, 1)
        check_int("correct_steps", correct_steps, 0, 1000)
        if log_snr_min is not None and not math.isfinite(log_snr_min):
            raise ValueError(f"log_snr_min must be a finite number or None, got {log_snr_min}")

        if discrete:
            if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
                raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
            if trained_betas is not None and len(trained_betas) != num_train_timesteps:
                raise ValueError(
                    f"trained_betas has {len(trained_betas)} entries but num_train_timesteps={num_train_timesteps}"
                )
            self.process = DiscreteScheduleVP.from_schedule(
                num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                beta_schedule=beta_schedule or "linear", trained_betas=trained_betas,
                rescale_betas_zero_snr=rescale_betas_zero_snr,
            )
            scale = float(num_train_timesteps - 1)
            if timestep_scale is not None and float(timestep_scale) != scale:
                raise ValueError(
                    f"timestep_scale={timestep_scale}: a discrete schedule's model takes its train timestep, "
                    f"so timestep_scale must be num_train_timesteps - 1 = {scale:g} (or None)"
                )
        else:
            self.process = make_continuous_process(sde, beta_min, beta_max, sigma_min, sigma_max)
            scale = 1000.0 if timestep_scale is None else float(timestep_scale)
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"timestep_scale must be > 0, got {timestep_scale}")
        self.timestep_scale = scale
        default_eps = 0.0 if discrete else (1e-5 if sde == "ve" else 1e-3)
        eps = default_eps if sampling_eps is None else sampling_eps
        if not 0 <= eps < 1:
            raise ValueError(f"sampling_eps must be in [0, 1), got {sampling_eps}")
        if eps == 0 and sde != "ve" and not discrete:
            raise ValueError("sampling_eps must be > 0 for VP / sub-VP (s(0) = 0: the score is singular)")
        self.sampling_eps = float(eps)
        if log_snr_min is not None and isinstance(self.process, (ContinuousVP, DiscreteScheduleVP)):
            top = float(self.process.log_snr(torch.tensor(max(eps, self.process.t_min), dtype=torch.float64)))
            if not log_snr_min < top:
                raise ValueError(f"log_snr_min={log_snr_min} must lie below the process's log-SNR at sampling_eps "
                                 f"({top:.3g}): the grid would start where sampling ends")
        self.init_noise_sigma = float(self.process.prior_std)
        self.order = {"ode_heun": 2, "pc": 1 + correct_steps}.get(solver, 1)

        self.num_inference_steps: Optional[int] = None
        self.timesteps: Optional[torch.Tensor] = None
        self._plan: List[Tuple[str, int]] = []
        self._step_index: Optional[int] = None
        self._begin_index: Optional[int] = None
        self._heun = Heun()
        self._multistep = DPMSolverPP(solver_order)

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
        if "sde" not in cfg:  # a foreign config; in-memory diffusers configs carry no _class_name
            # Its values (defaults included: sigma_max=1348 is what such a model was trained with)
            # describe the process, so carry them all rather than falling back to our defaults.
            cfg.pop("_use_default_values", None)
            if name == "ScoreSdeVeScheduler" or (name is None and "sigma_max" in cfg and "beta_min" not in cfg
                                                 and not is_vp_schedule_config(cfg)):
                kwargs = {"sde": "ve", "solver": "pc", "prediction_type": "score", "time_grid": "uniform", **kwargs}
            elif name == "ScoreSdeVpScheduler" or (name is None and "beta_min" in cfg and "sigma_max" not in cfg):
                kwargs = {"sde": "vp", "solver": "euler_maruyama", "prediction_type": "score", "time_grid": "uniform", **kwargs}
            elif is_vp_schedule_config(cfg):
                cfg = {"sde": "vp", **vp_schedule_kwargs(cfg)}
        return super().from_config(cfg, return_unused_kwargs=return_unused_kwargs, **kwargs)

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

    def _grid_points(self, n: int) -> List[Point]:
        denoise = bool(self.config.denoise_final)
        ts = self._time_grid(n if denoise else n + 1)
        return [self.process.point(t) for t in ts.tolist()] + ([CLEAN] if denoise else [])

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None):
        """Build the grid and the evaluation plan; ``timesteps`` lists one entry per model call."""
        n = as_step_count(num_inference_steps)
        self._points = points = self._grid_points(n)
        solver, plan = self.config.solver, []
        for i in range(n):
            if solver == "ode_heun":
                plan.append(("heun1", i))
                if not points[i + 1].clean:  # Heun corrector needs a model call at t_{i+1}; into clean: Euler
                    plan.append(("heun2", i))
            elif solver == "pc":
                plan += [("correct", i)] * self.config.correct_steps + [("step", i)]
            else:
                plan.append(("step", i))
        self._plan = plan
        t_eval = [points[i + 1].t if kind == "heun2" else points[i].t for kind, i in plan]
        self.timesteps = self.t_to_timestep(torch.tensor(t_eval, dtype=torch.float64)).float().to(device)
        self.num_inference_steps = n
        self._step_index, self._begin_index = None, None
        self._heun.reset()
        self._multistep.reset()

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
        kind, i = self._plan[k]
        return self._points[i + 1] if kind == "heun2" else self._points[i]

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
        k = hits[0]
        if self._step_index is not None:  # jumped: multistep history / Heun state no longer valid
            self._heun.reset()
            self._multistep.reset()
        return k

    def _check_eta(self, eta) -> float:
        eta = 0.0 if eta is None else float(eta)
        if not (eta >= 0 and math.isfinite(eta)):
            raise ValueError(f"eta must be a finite number >= 0, got {eta}")
        if eta > 0 and self.config.solver != "ode_euler":
            raise ValueError(
                f"eta={eta} cannot be honoured by solver={self.config.solver!r}: its noise is fixed by the solver. "
                "eta is DDIM's: use solver='ode_euler' (DDIM), or eta=0"
            )
        return eta

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[float, torch.Tensor],
        sample: torch.Tensor,
        generator=None,
        return_dict: bool = True,
        eta: Optional[float] = None,
        use_clipped_model_output: Optional[bool] = None,
        variance_noise: Optional[torch.Tensor] = None,
    ) -> Union[SchedulerOutput, Tuple]:
        """One model evaluation's update. Keywords as diffusers' stock pipelines pass them (see the
        module docstring for what ``eta`` and ``use_clipped_model_output`` mean here)."""
        self._check_step_inputs(model_output, sample)
        eta = self._check_eta(eta)
        if variance_noise is not None:
            if generator is not None:
                raise ValueError("pass either generator or variance_noise to step, not both")
            self._check_step_inputs(variance_noise, sample)
        k = self._locate(timestep)
        if k == 0:
            self._check_initial_noise(sample)
        kind, i = self._plan[k]
        cur, nxt = self._points[i], self._points[i + 1]
        here = nxt if kind == "heun2" else cur
        x0, eps = self.denoised(model_output, sample, here.a, here.s)

        def draw():
            return variance_noise if variance_noise is not None else noise_like(sample, generator)

        if kind == "correct":
            noise = draw()
            mean, std = langevin(sample, x0, eps, cur, snr=self.snr, scale=(cur.a / nxt.a) ** 2, noise=noise)
        elif kind == "heun1":
            mean, std = self._heun.predict(sample, x0, eps, cur, nxt)
        elif kind == "heun2":
            mean, std = self._heun.correct(sample, x0, eps, cur, nxt)
        elif self.config.solver == "multistep":
            final_steps = self.num_inference_steps < 15 and i >= self.num_inference_steps - 2
            mean, std = self._multistep(sample, x0, eps, cur, nxt, final_steps=final_steps)
        elif self.config.solver == "ode_euler":
            mean, std = ddim(sample, x0, eps, cur, nxt, eta=eta)
        else:
            mean, std = _SINGLE_STEP_RULES[self.config.solver](sample, x0, eps, cur, nxt)
        if kind == "correct":
            prev = with_noise(mean, std, noise)
        elif nxt.clean:  # the last update into clean data is noise-free (score_sde's noise removal)
            prev = mean
        else:
            prev = with_noise(mean, std, draw() if not (isinstance(std, float) and std == 0.0) else None)

        self._step_index = k + 1
        if not return_dict:
            return (prev, x0)
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0)


__all__ = ["SDEScheduler", "SDES", "SOLVERS", "TIME_GRIDS", "as_step_count"]
