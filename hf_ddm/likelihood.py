"""Likelihoods: the probability-flow-ODE log-likelihood (any VP / sub-VP / VE process, including the
discrete schedule of any diffusers VP model) and DDPM's variational bound (discrete VP), in nats per
sample and bits per dimension.

Both take ``model(x, timestep)`` -- a plain callable returning a tensor, or a diffusers / hf_ddm
network whose output has ``.sample`` -- in the scheduler's prediction type, and a scheduler: an hf_ddm
scheduler, or a diffusers VP scheduler (``DDPMScheduler`` etc.) or its config. The model adapter
(``hf_ddm.adapter``) reads the two: the process each integrates on (``process_view``, need="continuous"
for the ODE, "discrete" for the bound), the call, and the conversion of the output. So they serve trained
networks and the exact mixture oracle alike.

**Conventions.** Every result carries ``convention``, one of:

* ``"continuous"``: the density of ``sample`` as given (nats/dim, bits/dim of a continuous density;
  can be negative). ``ddpm_bound`` uses a Gaussian decoder.
* ``"discrete"`` (default): ``sample`` is 8-bit data (``bits``) on the grid {-1 + 2k/255} of [-1, 1]
  and the result is a log-*probability* of that discrete data (bits/dim >= 0, the number image papers
  report). ``ode_log_likelihood`` dequantises uniformly inside each bin (one draw) and adds the bin
  volume, D log(2/255); ``ddpm_bound`` uses Ho et al.'s discretised Gaussian decoder. Both are upper
  bounds on the discrete NLL (the first in expectation), comparable with each other. Off-grid data
  gives a warning; data outside [-1, 1] by more than half a bin is an error.
* ``"dequantized"``: 8-bit data the caller already dequantised (x + U(-1/255, 1/255)): the continuous
  density plus the bin volume, as ``"discrete"`` but without a second dequantisation.

``log_likelihood`` and ``bits_per_dim`` always state the same number in the convention's units:
``bits_per_dim = -log_likelihood / (D ln 2)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .adapter import ModelAdapter
from .processes import DiscreteScheduleVP, append_dims

CONVENTIONS = ("continuous", "discrete", "dequantized")
ODE_METHODS = ("rk45", "rk4")
ODE_VARIABLES = ("auto", "vp_time", "log_snr", "t")
_UNSET = object()  # tells "argument not passed" from an explicit None (legacy ``data_range=None``)


@dataclass
class LikelihoodOutput:
    """Per-sample log-likelihood and bits/dim under ``convention`` (see the module docstring).

    ``log_likelihood = prior_logp + delta_logp + D log(bin width)`` -- the last term only for the 8-bit
    conventions of the ODE (the bound's discrete decoder already gives bin probabilities).
    ``num_model_evaluations`` counts network calls (each on the whole batch); ``method`` names the
    estimator and its settings; ``latent`` is the ODE's end point x_1 (``ode_log_likelihood`` only).
    """

    log_likelihood: torch.Tensor
    bits_per_dim: torch.Tensor
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    num_model_evaluations: int
    convention: str = "continuous"
    method: str = ""
    latent: Optional[torch.Tensor] = None

    @property
    def nats_per_dim(self) -> torch.Tensor:
        return self.bits_per_dim * math.log(2.0)


def bits_per_dim(nll: torch.Tensor, dim: int, data_range: Optional[float] = 2.0, bits: int = 8) -> torch.Tensor:
    """nats/sample -> bits/dim. With ``data_range`` (the width of the data interval, 2 for [-1, 1]) the
    density is referred to 2**bits uniform bins per dimension, the convention for 8-bit images
    (uniformly dequantised data); ``data_range=None`` reports the continuous density."""
    bpd = nll / (dim * math.log(2.0))
    if data_range is not None:
        bpd = bpd + math.log2((2**bits - 1) / data_range)
    return bpd


# ------------------------------------------------------------------------------------------------
# Inputs: model, scheduler, data under a convention
# ------------------------------------------------------------------------------------------------


def _check_sample(sample) -> torch.Tensor:
    if not torch.is_tensor(sample) or not sample.is_floating_point() or sample.ndim < 2 or sample.shape[0] == 0:
        raise ValueError("sample must be a floating-point tensor (batch, ...) with at least one item")
    if not torch.isfinite(sample).all():
        raise ValueError("sample has non-finite values")
    return sample


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an integer in [1, 16], got {bits!r}")
    return bits


def _check_convention(convention: str, x: torch.Tensor, bits: int, half_range: float = 1.0) -> float:
    """Validate ``x`` under ``convention``; returns the bin width (0 for the continuous density).

    8-bit data live on {-1 + k w}, w = 2/(2**bits - 1): far outside [-1, 1] is an error (no decoder
    or bin volume means anything there); off the grid under "discrete", or exactly on it under
    "dequantized", is a warning -- the numbers come out but are not what the convention promises."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if convention == "continuous":
        return 0.0
    width = 2 * half_range / (2**bits - 1)
    tol = 1e-3 * width  # float32 rounding of k/127.5 - 1 is ~1e-7: far inside
    lo, hi = float(x.min()), float(x.max())
    if lo < -half_range - 0.5 * width - tol or hi > half_range + 0.5 * width + tol:
        raise ValueError(
            f"sample spans [{lo:.4g}, {hi:.4g}]: convention={convention!r} needs {bits}-bit data scaled to "
            f"[{-half_range:g}, {half_range:g}] (within half a bin); use convention='continuous' for other data"
        )
    k = (x.double() + half_range) / width
    on_grid = bool(((k - k.round()).abs() <= 1e-3).all())
    if convention == "discrete" and not on_grid:
        warnings.warn(
            f"convention='discrete' expects {bits}-bit data on the grid -1 + 2k/{2**bits - 1}, but sample is off "
            "it: its bits/dim are not those of discrete data. Pass convention='continuous' for the density of "
            "this data, or 'dequantized' if you dequantised 8-bit data yourself.",
            UserWarning,
            stacklevel=3,
        )
    if convention == "dequantized" and on_grid:
        warnings.warn(
            "convention='dequantized' expects 8-bit data already dequantised inside its bins, but sample is "
            "exactly on the grid; pass convention='discrete' to have it dequantised here.",
            UserWarning,
            stacklevel=3,
        )
    return width


def _resolve_ode_convention(convention, data_range, bits) -> tuple:
    """(convention, half_range). ``data_range`` is the legacy argument: None meant the continuous
    density, a number the dequantised-data offset for data of that width."""
    if data_range is _UNSET:
        return ("discrete" if convention is None else convention), 1.0
    legacy = "continuous" if data_range is None else "dequantized"
    if convention is not None and convention != legacy:
        raise ValueError(f"convention={convention!r} contradicts data_range={data_range!r} (which means {legacy!r})")
    if data_range is not None and not (data_range > 0 and math.isfinite(data_range)):
        raise ValueError(f"data_range must be a positive number or None, got {data_range!r}")
    return legacy, (1.0 if data_range is None else 0.5 * float(data_range))


# ------------------------------------------------------------------------------------------------
# ODE solvers on a state y of shape (B, D + 1): the flattened x and the accumulated log-density
# ------------------------------------------------------------------------------------------------

# Dormand-Prince 5(4), the tableau of scipy's RK45 (and score_sde's solve_ivp call).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
# 5th- minus 4th-order weights over the 7 stages (the 7th is f at the new point: first-same-as-last).
_DP_E = (-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40)


def _rms(v: torch.Tensor) -> float:
    return float(v.pow(2).mean().sqrt())


def rk45(fun: Callable, y: torch.Tensor, u0: float, u1: float, rtol: float, atol: float, max_steps: int = 10_000):
    """Adaptive Dormand-Prince 5(4) from u0 to u1 with scipy ``solve_ivp(method="RK45")``'s step-size
    control (initial step, RMS error norm over the whole state, safety 0.9, factors in [0.2, 10]).
    One step costs 6 evaluations of ``fun(u, y)`` (the 7th is reused by the next step)."""
    direction = 1.0 if u1 >= u0 else -1.0
    span = abs(u1 - u0)
    u, f = u0, fun(u0, y)
    # Hairer's initial step (scipy's select_initial_step), one extra evaluation.
    scale = atol + y.abs() * rtol
    d0, d1 = _rms(y / scale), _rms(f / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    f1 = fun(u + direction * h0, y + direction * h0 * f)
    d2 = _rms((f1 - f) / scale) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** 0.2
    h_abs = min(100 * h0, h1, span)
    for _ in range(max_steps):
        if direction * (u1 - u) <= 0:
            return y
        rejected = False
        while True:
            h = direction * h_abs
            u_new = u + h
            if direction * (u_new - u1) > 0:
                u_new, h = u1, u1 - u
                h_abs = abs(h)
            k = [f]
            for c, a in zip(_DP_C[1:], _DP_A[1:]):
                k.append(fun(u + c * h, y + h * sum(ai * ki for ai, ki in zip(a, k))))
            y_new = y + h * sum(b * ki for b, ki in zip(_DP_B, k))
            f_new = fun(u_new, y_new)
            err = h * sum(e * ki for e, ki in zip(_DP_E, k + [f_new]))
            err_norm = _rms(err / (atol + torch.maximum(y.abs(), y_new.abs()) * rtol))
            if err_norm < 1:
                factor = 10.0 if err_norm == 0 else min(10.0, 0.9 * err_norm**-0.2)
                h_abs *= min(1.0, factor) if rejected else factor
                break
            h_abs *= max(0.2, 0.9 * err_norm**-0.2)
            rejected = True
            if h_abs < 1e-12 * max(1.0, abs(u)):
                raise RuntimeError(f"rk45: step size underflow at u={u:.6g} (the ODE is not resolvable here)")
        u, y, f = u_new, y_new, f_new
    raise RuntimeError(f"rk45: more than {max_steps} steps (rtol/atol too small?)")


def rk4(fun: Callable, y: torch.Tensor, us) -> torch.Tensor:
    """Classic fixed-step RK4 on the grid ``us`` (4 evaluations per step)."""
    for u, u_next in zip(us[:-1], us[1:]):
        h = u_next - u
        k1 = fun(u, y)
        k2 = fun(u + 0.5 * h, y + 0.5 * h * k1)
        k3 = fun(u + 0.5 * h, y + 0.5 * h * k2)
        k4 = fun(u_next, y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


# ------------------------------------------------------------------------------------------------
# The probability-flow ODE likelihood
# ------------------------------------------------------------------------------------------------

# Integration variables u = u(lambda), as (u of lambda, lambda of u, d lambda / du). "vp_time" is the time
# of score_sde's VP SDE (beta 0.1 -> 20) that has the same log-SNR: B(u) = 0.1 u + 9.95 u^2 = log(1 +
# e^{-2 lambda}). On that SDE it *is* t (so RK45 there is score_sde's solve_ivp exactly); on any other
# schedule it is the same smooth function of lambda -- u ~ 10 sigma^2 near the data, where lambda would
# spend steps on scales with nothing left to resolve, and no kinks where a discrete schedule's
# piecewise-linear lambda(t) makes the t-form drift jump at every train timestep.
_B0, _B1 = 0.1, 9.95


def _vp_time(lam):
    big_b = torch.nn.functional.softplus(-2.0 * lam)
    return 2.0 * big_b / (_B0 + torch.sqrt(_B0 * _B0 + 4.0 * _B1 * big_b))  # the quadratic's root, cancellation-free


def _lam_of_vp_time(u):
    return -0.5 * torch.log(torch.expm1(_B0 * u + _B1 * u * u))


def _dlam_dvp_time(u):
    return -0.5 * (_B0 + 2.0 * _B1 * u) / -torch.expm1(-(_B0 * u + _B1 * u * u))


_VARIABLES = {
    "vp_time": (_vp_time, _lam_of_vp_time, _dlam_dvp_time),
    "log_snr": (lambda lam: lam, lambda u: u, lambda u: torch.ones_like(u)),
}


def _check_positive_int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _check_tolerance(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < 1):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def _check_t_start(t_start, process) -> float:
    try:
        t0 = float(t_start)
    except (TypeError, ValueError) as err:
        raise ValueError(f"t_start must be a number, got {t_start!r}") from err
    if not (math.isfinite(t0) and process.t_min <= t0 < process.t_max):
        raise ValueError(f"t_start must be in [{process.t_min:g}, {process.t_max:g}) (process time), got {t_start!r}")
    if float(process.marginal(torch.tensor(t0, dtype=torch.float64))[1]) <= 0:
        raise ValueError(
            f"t_start={t0:g}: the marginal there has no noise (s = 0), where the score is singular; pass "
            "t_start > 0 (the scheduler's sampling_eps, 1e-3 for VP, is the default)"
        )
    return t0


def ode_log_likelihood(
    model: Callable,
    scheduler,
    sample: torch.Tensor,
    num_steps: Optional[int] = None,
    t_start: Optional[float] = None,
    exact_trace: Optional[bool] = None,
    num_probes: int = 1,
    generator: Optional[torch.Generator] = None,
    data_range=_UNSET,
    *,
    convention: Optional[str] = None,
    method: Optional[str] = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    variable: str = "auto",
    bits: int = 8,
) -> LikelihoodOutput:
    """log p(x) by the probability-flow ODE: log p_{t_start}(x) = log p_1(x_1) + int div f~(x_t, t) dt,
    f~ = f(t) x - 1/2 g(t)^2 score(x, t), integrated from ``t_start`` to 1.

    Args:
        model: ``model(x, timestep)`` in the scheduler's prediction type (tensor or ``.sample`` output).
        scheduler: an hf_ddm ``SDEScheduler`` (any process), or a diffusers VP scheduler (``DDPMScheduler``,
            ``DDIMScheduler``, ...), its config, or a ``VPScheduler``: converted by
            ``SDEScheduler.from_config`` to the exact continuous-time view of that discrete schedule.
        sample: data (batch, ...).
        num_steps: fixed-step RK4 steps (4 model calls each); passing it selects ``method="rk4"``.
        t_start: where the likelihood is taken (the density of the marginal there, which is what the
            exact oracle's ``log_prob(x, a, s)`` gives); default the scheduler's ``sampling_eps`` (VP 1e-3,
            VE 1e-5, 0 = the first train timestep for a discrete schedule). Must be in [0, 1) with noise
            (s > 0) at t_start.
        exact_trace / num_probes / generator: the divergence is exact (one backward pass per dimension;
            default for dimension <= 64) or Hutchinson's estimate with ``num_probes`` Rademacher probes,
            fixed along the path. ``generator`` also draws the dequantisation noise.
        convention: "discrete" (default), "continuous" or "dequantized" -- see the module docstring.
        data_range: legacy; ``None`` means convention="continuous", a number "dequantized".
        method: "rk45" (adaptive Dormand-Prince with ``rtol`` / ``atol``, scipy's control: default) or
            "rk4" (fixed steps, ``num_steps``, default 100).
        variable: what the ODE is integrated in. "auto" (default): "vp_time" on a discrete schedule
            (any diffusers VP model), else "t". "t": process time -- score_sde's choice, and on its
            closed-form SDEs the best measured (RK45 there is score_sde's solve_ivp call exactly). "vp_time":
            the time of score_sde's VP SDE (beta 0.1 -> 20) at the same log-SNR: a smooth function of
            lambda, so a discrete schedule's piecewise-linear lambda(t) puts no kinks in the drift (in "t"
            it jumps at every train timestep, and RK45 needs 3-8x the model calls for a larger error on
            the cosine and linear DDPM schedules); on the VP SDE itself it equals t. "log_snr": lambda.
        bits: the bit depth of the 8-bit conventions (2**bits levels on [-1, 1]).

    Returns a ``LikelihoodOutput`` with ``convention``, ``method`` and ``num_model_evaluations``.
    """
    adapter = ModelAdapter(model, scheduler, need="continuous")
    sched, process = adapter.scheduler, adapter.process
    convention, half_range = _resolve_ode_convention(convention, data_range, _check_bits(bits))
    if method is None:
        method = "rk45" if num_steps is None else "rk4"
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {ODE_METHODS}, got {method!r}")
    if method == "rk45" and num_steps is not None:
        raise ValueError("num_steps is the fixed step count of method='rk4'; rk45 chooses its steps from rtol/atol")
    num_steps = _check_positive_int("num_steps", 100 if num_steps is None else num_steps)
    num_probes = _check_positive_int("num_probes", num_probes)
    rtol, atol = _check_tolerance("rtol", rtol), _check_tolerance("atol", atol)
    if variable not in ODE_VARIABLES:
        raise ValueError(f"variable must be one of {ODE_VARIABLES}, got {variable!r}")
    if variable == "auto":
        variable = "vp_time" if isinstance(process, DiscreteScheduleVP) else "t"
    t0 = _check_t_start(sched.training_t_min if t_start is None else t_start, process)
    sample = _check_sample(sample)
    width = _check_convention(convention, sample, bits, half_range)

    # float64 state whatever the model's dtype: the adaptive control's tolerances are near float32's eps.
    x = sample.detach().to(torch.float64)
    if convention == "discrete":  # uniform dequantisation inside each bin (Jensen: an upper bound in expectation)
        x = x + (torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x.device) - 0.5) * width
    shape, n, dim = x.shape, x.shape[0], x[0].numel()
    exact = dim <= 64 if exact_trace is None else bool(exact_trace)
    probes = None
    if not exact:
        probes = torch.randint(0, 2, (num_probes, *shape), generator=generator).to(x) * 2 - 1
    evals = 0

    def coefficients(u):
        """(t, c_x, c_score): dx/du = c_x x + c_score score(x, t) at the integration variable u."""
        if variable == "t":
            t = torch.tensor(u, dtype=torch.float64)
            p = process.point(t)
            return t, p.f, -0.5 * p.g2
        # dx/dlambda = (f x - g^2/2 score) dt/dlambda with dlambda/dt = -g^2 / (2 s^2).
        lam_of_u, dlam_du = _VARIABLES[variable][1:]
        u = torch.tensor(u, dtype=torch.float64)
        t = process.time_at_log_snr(lam_of_u(u)).clamp(t0, process.t_max)
        p = process.point(t)
        j = float(dlam_du(u))
        return t, -2.0 * p.s**2 * p.f / p.g2 * j, p.s**2 * j

    def fun(u, y):
        nonlocal evals
        t, c_x, c_score = coefficients(u)
        timestep = adapter.timestep(t).expand(n)
        with torch.enable_grad():
            xr = y[:, :dim].reshape(shape).detach().requires_grad_(True)
            score = adapter.convert(adapter.output(xr, timestep), xr, timestep, "score")
            drift = c_x * xr + c_score * score
            evals += 1
            div = torch.zeros(n, dtype=x.dtype, device=x.device)
            if exact:
                flat = drift.flatten(1)
                for i in range(dim):
                    (gi,) = torch.autograd.grad(flat[:, i].sum(), xr, retain_graph=i < dim - 1)
                    div = div + gi.flatten(1)[:, i]
            else:
                for j, v in enumerate(probes):
                    (vjp,) = torch.autograd.grad(drift, xr, grad_outputs=v, retain_graph=j < len(probes) - 1)
                    div = div + (vjp * v).flatten(1).sum(1)
                div = div / len(probes)
        return torch.cat([drift.detach().flatten(1), div.detach()[:, None]], 1)

    if variable == "t":
        u0, u1 = t0, float(process.t_max)
    else:
        lam = process.log_snr(torch.tensor([t0, float(process.t_max)], dtype=torch.float64))
        u0, u1 = (float(v) for v in _VARIABLES[variable][0](lam))
    y = torch.cat([x.flatten(1), torch.zeros(n, 1, dtype=x.dtype, device=x.device)], 1)
    if method == "rk45":
        y = rk45(fun, y, u0, u1, rtol, atol)
        how = f"rk45 in {variable} (rtol={rtol:g}, atol={atol:g})"
    else:
        y = rk4(fun, y, torch.linspace(u0, u1, num_steps + 1, dtype=torch.float64).tolist())
        how = f"rk4 in {variable} ({num_steps} steps)"
    delta = y[:, dim]
    latent = y[:, :dim].reshape(shape)
    prior = process.prior_logp(latent)
    logp = prior + delta
    if width:
        logp = logp + dim * math.log(width)  # density -> probability of the bin
    trace = "exact trace" if exact else f"Hutchinson ({num_probes} probes)"
    desc = f"probability-flow ODE from t={t0:g}, {how}, {trace}"
    if convention == "discrete":
        desc += ", one uniform dequantisation draw"
    return LikelihoodOutput(logp, -logp / (dim * math.log(2.0)), prior, delta, evals, convention, desc, latent)


# ------------------------------------------------------------------------------------------------
# DDPM's variational bound
# ------------------------------------------------------------------------------------------------


def _normal_kl(mean1, var1, mean2, var2):
    """KL(N(mean1, var1) || N(mean2, var2)) elementwise."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def _discretized_gaussian_log_likelihood(x, mean, log_scale, bin_width: float):
    """log P(x in its bin) for data on a grid of ``bin_width`` in [-1, 1] (Ho et al.'s decoder)."""
    from torch.distributions import Normal

    half = 0.5 * bin_width
    std = log_scale.exp()
    dist = Normal(mean, std)
    cdf_plus = torch.where(x > 1 - 1e-3, torch.ones_like(x), dist.cdf(x + half))
    cdf_min = torch.where(x < -1 + 1e-3, torch.zeros_like(x), dist.cdf(x - half))
    return torch.log((cdf_plus - cdf_min).clamp_min(1e-12))


def ddpm_bound(
    model: Callable,
    scheduler,
    sample: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    variance: Optional[str] = None,
    decoder: Optional[str] = None,
    bits: int = 8,
    batch_timesteps: int = 0,
    *,
    convention: Optional[str] = None,
) -> LikelihoodOutput:
    """DDPM's variational bound L = L_T + sum_{t>=2} KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) + L_0,
    one Monte-Carlo draw of x_t per timestep, every timestep of the train grid (T model evaluations).
    Returns -L as ``log_likelihood`` (a lower bound on log p).

    Args:
        scheduler: hf_ddm's ``VPScheduler``, a diffusers VP scheduler (``DDPMScheduler`` with a linear or
            cosine schedule, ...) or its config (``VPScheduler.from_config``), or an ``SDEScheduler`` on a
            discrete ``beta_schedule`` (its train grid).
        variance: of p(x_{t-1} | x_t): the scheduler's ``variance_type`` by default. "fixed_large"
            (beta_t) gives the tighter bound; "fixed_small" (beta~_t) is loose at low noise (Ho et al.).
        convention: "discrete" (default): L_0 is the discretised Gaussian of 2**bits bins on [-1, 1]
            (8-bit images; warns on off-grid data); "continuous": a Gaussian decoder, the bound on the
            continuous NLL (comparable with ``ode_log_likelihood(convention="continuous")``);
            "dequantized": the Gaussian decoder on data the caller dequantised, plus the bin volume.
        decoder: legacy; "discrete" means convention="discrete", "gaussian" "continuous".
        batch_timesteps: unused, kept so old calls still bind.
    """
    if decoder is not None:
        if decoder not in ("discrete", "gaussian"):
            raise ValueError(f"decoder must be 'discrete' or 'gaussian', got {decoder!r}")
        if convention is None:
            convention = "discrete" if decoder == "discrete" else "continuous"
        elif (decoder == "discrete") != (convention == "discrete"):
            raise ValueError(f"decoder={decoder!r} contradicts convention={convention!r}")
    convention = convention or "discrete"
    adapter = ModelAdapter(model, scheduler, need="discrete")
    sched, process = adapter.scheduler, adapter.process
    variance = variance or getattr(sched.config, "variance_type", "fixed_small")
    if variance not in ("fixed_small", "fixed_large"):
        raise ValueError(f"variance must be 'fixed_small' or 'fixed_large', got {variance!r}")
    sample = _check_sample(sample)
    width = _check_convention(convention, sample, _check_bits(bits))
    x0 = sample.detach().to(torch.float64)
    n, dim = x0.shape[0], x0[0].numel()
    num_t = process.num_steps
    total = torch.zeros(n, dtype=torch.float64, device=x0.device)
    for t in range(num_t - 1, -1, -1):
        tt = torch.full((n,), t, dtype=torch.long)
        a, s = process.marginal(tt)
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(x0.device)
        xt = append_dims(a, x0) * x0 + append_dims(s, x0) * eps
        timestep = adapter.timestep(tt)
        with torch.no_grad():
            out = adapter.output(xt.to(sample.dtype), timestep).to(torch.float64)
        x0_hat = adapter.convert(out, xt, timestep, "sample")
        mean_p, var_q = process.posterior(xt, x0_hat, tt, tt - 1)
        if t == 0:
            beta1 = process.transition(tt - 1, tt)[1]
            var_dec = append_dims(beta1, x0).expand_as(x0)
            if convention == "discrete":
                ll = _discretized_gaussian_log_likelihood(x0, mean_p, 0.5 * torch.log(var_dec), width)
            else:
                ll = -0.5 * (torch.log(2 * math.pi * var_dec) + (x0 - mean_p) ** 2 / var_dec)
            total += -ll.flatten(1).sum(1)
        else:
            mean_q, _ = process.posterior(xt, x0, tt, tt - 1)
            var_p = var_q if variance == "fixed_small" else process.transition(tt - 1, tt)[1]
            kl = _normal_kl(mean_q, append_dims(var_q, x0), mean_p, append_dims(var_p, x0))
            total += kl.flatten(1).sum(1)
    # L_T: KL(q(x_T | x0) || N(0, I)).
    a_T, s_T = process.marginal(torch.full((n,), num_t - 1))
    prior_kl = _normal_kl(append_dims(a_T, x0) * x0, append_dims(s_T**2, x0), torch.zeros_like(x0), torch.ones_like(x0))
    prior_term = prior_kl.flatten(1).sum(1)
    total += prior_term
    logp = -total
    if convention == "dequantized":
        logp = logp + dim * math.log(width)
    desc = f"DDPM variational bound ({num_t} timesteps, one draw each, {variance} reverse variance, "
    desc += "discretised Gaussian decoder)" if convention == "discrete" else "Gaussian decoder)"
    return LikelihoodOutput(logp, -logp / (dim * math.log(2.0)), -prior_term, -(total - prior_term), num_t,
                            convention, desc)


__all__ = [
    "CONVENTIONS",
    "LikelihoodOutput",
    "bits_per_dim",
    "ddpm_bound",
    "ode_log_likelihood",
    "rk4",
    "rk45",
]
