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

**Time.** Process time t in [0, 1]; the model is called with ``timestep = t * timestep_scale``
(default 1000; score_sde's DDPM-compatible VP models use 999), the same map the training helpers use
(``timestep_to_t`` / ``t_to_timestep``).

**Grid.** ``num_inference_steps`` = N solver steps between grid points t_0 = 1 > ... > t_N. With
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

* ``euler_maruyama``: reverse SDE dx = [f x - g^2 score] dt + g dw, first order in t.
* ``reverse_diffusion``: Song's reverse-diffusion predictor built on the *exact* transition
  x_t = r x_t' + G z between grid points (``process.transition``):
  x_t' = (x_t + G^2 score) / r + G z. For VE (r = 1) this is SMLD's predictor; for VP it matches
  score_sde's (2 - sqrt(1 - beta)) x + beta score to first order in beta but never forms a
  "beta" > 1, and sub-VP uses its own transition instead of degrading to Euler-Maruyama. The mean is
  exactly the posterior mean of q(x_t' | x_t, x0_hat); only the noise differs from ``ancestral``.
* ``ancestral``: sample q(x_t' | x_t, x0_hat) (``process.posterior``), DDPM's sampler for any process.
* ``ode_euler`` / ``ode_heun``: the probability-flow ODE in EDM's process-independent form
  d(x/a)/d sigma = (x/a - x0_hat)/sigma, sigma = s/a. Euler here equals DDIM and DPM-Solver++(1).
  Heun emits each timestep after the first twice (``order = 2``), like diffusers'
  HeunDiscreteScheduler; its last step into clean data is Euler (EDM).
* ``pc``: predictor-corrector: at each grid point ``correct_steps`` Langevin corrections
  (``solvers.langevin_step``, target ``snr``), then a reverse-diffusion predictor step. The corrector
  evaluations are extra entries of ``timesteps`` so the plain loop runs them. score_sde's VP step-size
  factor alpha_i = 1 - beta_i is generalised to the exact r^2 = (a_t / a_next)^2 of the transition to
  the next grid point (a_next = 1 for clean data): it is 1 - beta dt to first order, is exactly 1
  for VE (where score_sde uses 1), stays in (0, 1] on any grid (score_sde's goes negative when
  beta/N > 1), and works for sub-VP (score_sde's corrector crashes there).
* ``multistep``: DPM-Solver++(1/2/3M) in lambda with data prediction (``solvers.dpmpp_multistep_coefficients``),
  written only in (a, s) so VP, sub-VP and VE share it. Lower order at the first steps (no history)
  and at the final steps (last step into clean data is first order; with N < 15 the last two steps
  are at most second order), as diffusers does for stability.

NFE: ``len(scheduler.timesteps)`` after ``set_timesteps`` equals the number of model calls of the
loop, also reported as ``num_model_evaluations``.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .hf_ddm_processes import check_prediction_type, make_continuous_process
from .hf_ddm_solvers import dpmpp_multistep_coefficients, langevin_step, noise_like
from .hf_ddm_base import ProcessSchedulerMixin, SchedulerOutput

SDES = ("vp", "subvp", "ve")
SOLVERS = ("euler_maruyama", "reverse_diffusion", "ancestral", "ode_euler", "ode_heun", "pc", "multistep")
TIME_GRIDS = ("uniform", "rho", "log_snr")

# A plan entry: (kind, i) -- what step() does at that position of ``timesteps``; i indexes the grid.
#   "step"    single-stage solver update from grid point i to i + 1 (model evaluated at t_i)
#   "heun1"   Heun's Euler predictor from i to i + 1 (model at t_i)
#   "heun2"   Heun's corrector for the step i -> i + 1 (model at t_{i+1})
#   "correct" Langevin corrector at grid point i (model at t_i)


class SDEScheduler(SchedulerMixin, ConfigMixin, ProcessSchedulerMixin):
    """Continuous VP / sub-VP / VE scheduler with reverse-SDE, ODE, PC and multistep samplers.

    Args:
        sde: "vp", "subvp" or "ve".
        beta_min, beta_max: linear beta(t) of VP / sub-VP (score_sde's 0.1, 20).
        sigma_min, sigma_max: geometric sigma(t) of VE (score_sde's CIFAR-10 0.01, 50).
        num_train_timesteps: accepted for config compatibility (ScoreSde*Scheduler); ``len(scheduler)``.
        solver: see the module docstring.
        snr: Langevin corrector target signal-to-noise ratio (``corrector_snr`` is an alias that wins
            when given).
        correct_steps: Langevin steps per grid point for ``solver="pc"``.
        solver_order: 1..3 for ``solver="multistep"``.
        prediction_type: "epsilon", "sample", "v_prediction" or "score".
        sampling_eps: the smallest process time visited (None: 1e-3 for VP/sub-VP, 1e-5 for VE).
        time_grid, rho: see the module docstring.
        timestep_scale: model timestep = t * timestep_scale.
        denoise_final: return x0_hat at the last update (True) or the sample at ``sampling_eps``.
    """

    _compatibles = ["ScoreSdeVeScheduler", "ScoreSdeVpScheduler"]
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
        timestep_scale: float = 1000.0,
        denoise_final: bool = True,
    ):
        if sde not in SDES and sde not in ("sub-vp", "sub_vp"):
            raise ValueError(f"sde must be one of {SDES}, got {sde!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if time_grid not in TIME_GRIDS:
            raise ValueError(f"time_grid must be one of {TIME_GRIDS}, got {time_grid!r}")
        check_prediction_type(prediction_type)
        if sde == "ve":
            if not 0 < sigma_min < sigma_max:
                raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        elif not 0 < beta_min <= beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        if not (isinstance(solver_order, int) and 1 <= solver_order <= 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order!r}")
        if not (isinstance(correct_steps, int) and correct_steps >= 0):
            raise ValueError(f"correct_steps must be a non-negative integer, got {correct_steps!r}")
        if solver == "pc" and correct_steps < 1:
            raise ValueError("correct_steps must be >= 1 for solver='pc'")
        self.snr = float(corrector_snr if corrector_snr is not None else snr)
        if self.snr <= 0:
            raise ValueError(f"snr / corrector_snr must be > 0, got {self.snr}")
        if not timestep_scale > 0:
            raise ValueError(f"timestep_scale must be > 0, got {timestep_scale}")
        if not rho > 0:
            raise ValueError(f"rho must be > 0, got {rho}")

        self.process = make_continuous_process(sde, beta_min, beta_max, sigma_min, sigma_max)
        eps = sampling_eps if sampling_eps is not None else (1e-5 if sde == "ve" else 1e-3)
        if not 0 <= eps < 1:
            raise ValueError(f"sampling_eps must be in [0, 1), got {sampling_eps}")
        if eps == 0 and sde != "ve":
            raise ValueError("sampling_eps must be > 0 for VP / sub-VP (s(0) = 0: the score is singular)")
        self.sampling_eps = float(eps)
        self.init_noise_sigma = float(self.process.prior_std)
        self.order = {"ode_heun": 2, "pc": 1 + correct_steps}.get(solver, 1)

        self.num_inference_steps: Optional[int] = None
        self.timesteps: Optional[torch.Tensor] = None
        self._plan: List[Tuple[str, int]] = []
        self._step_index: Optional[int] = None
        self._begin_index: Optional[int] = None

    # --- config compatibility -------------------------------------------------------------------
    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As ConfigMixin.from_config; a ScoreSdeVeScheduler config becomes sde="ve" with its PC
        sampler on a score model (keys snr, sigma_min/max, sampling_eps, correct_steps carried over)."""
        cfg = dict(config or {})
        name = cfg.get("_class_name")
        if "sde" not in cfg:  # a foreign config; in-memory diffusers configs carry no _class_name
            # Its values (defaults included: sigma_max=1348 is what such a model was trained with)
            # describe the process, so carry them all rather than falling back to our defaults.
            cfg.pop("_use_default_values", None)
            config = cfg
            if name == "ScoreSdeVeScheduler" or (name is None and "sigma_max" in cfg and "beta_min" not in cfg):
                kwargs = {"sde": "ve", "solver": "pc", "prediction_type": "score", "time_grid": "uniform", **kwargs}
            elif name == "ScoreSdeVpScheduler" or (name is None and "beta_min" in cfg and "sigma_max" not in cfg):
                kwargs = {"sde": "vp", "solver": "euler_maruyama", "prediction_type": "score", "time_grid": "uniform", **kwargs}
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def __len__(self):
        return self.config.num_train_timesteps

    # --- timestep <-> process time ----------------------------------------------------------------
    def timestep_to_t(self, timesteps) -> torch.Tensor:
        return torch.as_tensor(timesteps, dtype=torch.float64) / self.config.timestep_scale

    def t_to_timestep(self, t) -> torch.Tensor:
        return torch.as_tensor(t, dtype=torch.float64) * self.config.timestep_scale

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

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None):
        """Build the grid and the evaluation plan; ``timesteps`` lists one entry per model call."""
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        n = num_inference_steps
        denoise = bool(self.config.denoise_final)
        ts = self._time_grid(n if denoise else n + 1)
        a, s = self.process.marginal(ts)
        # Grid point n (the end of the last step) is clean data when denoising: a = 1, s = 0.
        self._t = ts.tolist() + ([None] if denoise else [])
        self._a = a.tolist() + ([1.0] if denoise else [])
        self._s = s.tolist() + ([0.0] if denoise else [])

        solver, plan = self.config.solver, []
        for i in range(n):
            if solver == "ode_heun":
                plan.append(("heun1", i))
                if self._s[i + 1] > 0:  # Heun corrector needs a model call at t_{i+1}; into clean: Euler
                    plan.append(("heun2", i))
            elif solver == "pc":
                plan += [("correct", i)] * self.config.correct_steps + [("step", i)]
            else:
                plan.append(("step", i))
        self._plan = plan
        self._coef = [self._precompute(kind, i) for kind, i in plan]
        t_eval = [self._t[i + 1] if kind == "heun2" else self._t[i] for kind, i in plan]
        self.timesteps = self.t_to_timestep(torch.tensor(t_eval, dtype=torch.float64)).float().to(device)
        self.num_inference_steps = n
        self._step_index, self._begin_index = None, None
        self._x0_history: List[torch.Tensor] = []
        self._heun_state = None

    @property
    def num_model_evaluations(self) -> int:
        """Model calls of one sampling loop (= len(timesteps)); requires set_timesteps."""
        if self.timesteps is None:
            raise ValueError("call set_timesteps before num_model_evaluations")
        return len(self.timesteps)

    @property
    def sigmas(self) -> torch.Tensor:
        """sigma = s/a at each evaluation (diagnostics / parity with diffusers' k-schedulers)."""
        return torch.tensor([self._s_eval(k) / self._a_eval(k) for k in range(len(self._plan))])

    def _a_eval(self, k):
        kind, i = self._plan[k]
        return self._a[i + 1] if kind == "heun2" else self._a[i]

    def _s_eval(self, k):
        kind, i = self._plan[k]
        return self._s[i + 1] if kind == "heun2" else self._s[i]

    def _precompute(self, kind: str, i: int) -> dict:
        """Python-float coefficients of plan entry (kind, i): step() is then a few tensor ops."""
        a, s, a1, s1 = self._a[i], self._s[i], self._a[i + 1], self._s[i + 1]
        solver = self.config.solver
        c = {}
        if kind == "correct":
            c["scale"] = (a / a1) ** 2  # exact r^2 of the transition to the next grid point
        elif kind in ("heun1", "heun2"):
            c["sig"], c["sig1"] = s / a, s1 / a1
        elif solver == "ode_euler":
            # Euler on d(x/a)/d sigma = (x/a - x0_hat)/sigma is x' = (s'/s) x + a'(1 - e^{-h}) x0_hat:
            # the first-order exponential-integrator coefficients (written once, in solvers).
            h = math.inf if s1 == 0 else math.log(a1 / s1) - math.log(a / s)
            c["cx"], c["cm"] = dpmpp_multistep_coefficients(s1 / s, a1, h, (), 1)
        elif solver == "euler_maruyama":
            t = torch.tensor(self._t[i], dtype=torch.float64)
            c["f"] = float(self.process.drift_coef(t))
            c["g"] = float(self.process.diffusion(t))
            c["dt"] = self._t[i + 1] - self._t[i] if s1 > 0 else None
        elif solver in ("reverse_diffusion", "pc"):
            if s1 > 0:
                r, g2 = self.process.transition(torch.tensor(self._t[i + 1], dtype=torch.float64), torch.tensor(self._t[i], dtype=torch.float64))
                c["r"], c["g2"] = float(r), float(g2)
        elif solver == "multistep":
            n = len(self._a) - 1  # number of steps
            order = min(self.config.solver_order, i + 1)
            if s1 == 0:
                order = 1
            elif n < 15 and i >= n - 2:
                order = min(order, 2)
            lam = lambda k: math.log(self._a[k] / self._s[k])  # noqa: E731
            h = math.inf if s1 == 0 else lam(i + 1) - lam(i)
            h_prev = [lam(i - j) - lam(i - j - 1) for j in range(order - 1)]
            c["cx"], c["cm"] = dpmpp_multistep_coefficients(s1 / s, a1, h, h_prev, order)
        return c

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
        tol = 1e-5 * self.config.timestep_scale
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
            self._x0_history, self._heun_state = [], None
        return k

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[float, torch.Tensor],
        sample: torch.Tensor,
        generator=None,
        return_dict: bool = True,
    ) -> Union[SchedulerOutput, Tuple]:
        self._check_step_inputs(model_output, sample)
        k = self._locate(timestep)
        kind, i = self._plan[k]
        c = self._coef[k]
        a, s = self._a_eval(k), self._s_eval(k)
        x0, eps = self._to_x0_eps(model_output, sample, a, s)

        if kind == "correct":
            prev, _ = langevin_step(sample, -eps / s, self.snr, generator=generator, scale=c["scale"])
        elif kind == "heun1":
            d = (sample / a - x0) / c["sig"]
            y_next = sample / a + (c["sig1"] - c["sig"]) * d
            self._heun_state = (sample / a, d)
            prev = y_next * self._a[i + 1]
        elif kind == "heun2":
            y, d = self._heun_state  # y = x_i / a_i and its derivative, from heun1
            d2 = (sample / a - x0) / c["sig1"]  # this evaluation sits at grid point i + 1
            prev = (y + (c["sig1"] - c["sig"]) * 0.5 * (d + d2)) * self._a[i + 1]
            self._heun_state = None
        else:
            prev = self._single_step(i, c, sample, x0, eps, s, generator)

        self._step_index = k + 1
        if not return_dict:
            return (prev, x0)
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def _single_step(self, i, c, x, x0, eps, s, generator):
        solver = self.config.solver
        a1, s1 = self._a[i + 1], self._s[i + 1]
        if solver in ("multistep", "ode_euler"):
            if solver == "multistep":
                self._x0_history = ([x0] + self._x0_history)[: self.config.solver_order]
            history = self._x0_history if solver == "multistep" else [x0]
            out = history[0] * c["cm"][0]
            if c["cx"] != 0:
                out.add_(x, alpha=c["cx"])
            for coef, m in zip(c["cm"][1:], history[1:]):
                out.add_(m, alpha=coef)
            return out
        if s1 == 0:  # last update into clean data: x0_hat (score_sde's noise removal, no extra step)
            return x0
        if solver == "euler_maruyama":
            score = -eps / s
            dt = c["dt"]
            mean = x + (c["f"] * x - c["g"] ** 2 * score) * dt
            return mean + c["g"] * math.sqrt(-dt) * noise_like(x, generator)
        if solver in ("reverse_diffusion", "pc"):
            score = -eps / s
            mean = (x + c["g2"] * score) / c["r"]
            return mean + math.sqrt(c["g2"]) * noise_like(x, generator)
        if solver == "ancestral":
            t = torch.tensor(self._t[i], dtype=torch.float64)
            t1 = torch.tensor(self._t[i + 1], dtype=torch.float64)
            mean, var = self.process.posterior(x, x0, t, t1)
            return mean + float(var) ** 0.5 * noise_like(x, generator)
        raise AssertionError(solver)


__all__ = ["SDEScheduler", "SDES", "SOLVERS", "TIME_GRIDS"]
