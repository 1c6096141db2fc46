"""The noise-process core. Every scheduler, loss and likelihood composes one of these.

A process is fully described by its marginal ``x_t = a(t) x0 + s(t) eps`` plus its prior. Everything
else -- the SDE drift f and diffusion g, the exact transition between two times, the Gaussian
posterior q(x_{t'} | x_t, x0) -- is derived from (a, s) once, here, so no solver re-derives it.

Time conventions (the *process time* ``t``; schedulers map it to the model's timestep input):

* discrete processes (``DiscreteVP``, ``DiscreteVE``): integer index ``t`` in ``0 .. N-1``; ``t = -1``
  is the clean data (a = 1, s = 0), so a step to "before the first index" needs no special case.
* continuous processes (``ContinuousVP``, ``SubVP``, ``ContinuousVE``): real ``t`` in ``[0, 1]``.

All processes here have linear drift, f(x, t) = f(t) x, which is what makes (a, s) a complete
description: f = d log a / dt and g^2 = d s^2/dt - 2 f s^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "score")

TensorLike = Union[torch.Tensor, float, int]


def append_dims(coef: TensorLike, x: torch.Tensor) -> torch.Tensor:
    """Reshape a scalar or per-sample coefficient (B,) so it broadcasts against ``x`` of any rank."""
    if not torch.is_tensor(coef):
        # Python numbers take x's dtype directly: a float32 detour would cost float64 callers precision.
        coef = torch.tensor(coef, device=x.device, dtype=x.dtype if x.is_floating_point() else None)
    coef = coef.to(x.device)
    if coef.is_floating_point() and coef.dtype != x.dtype and x.is_floating_point():
        coef = coef.to(x.dtype)
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return prediction_type


def to_x0_eps(model_output, sample, a, s, prediction_type: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) implied by a model output of the given type at marginal coefficients (a, s).

    The four parameterisations are one point (x0, eps) on the line x = a x0 + s eps; converting
    through this pair is the only place the conversions are written.
    """
    a, s = append_dims(a, sample), append_dims(s, sample)
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (sample - s * eps) / a
    elif prediction_type == "sample":
        x0 = model_output
        eps = (sample - a * x0) / s
    elif prediction_type == "v_prediction":
        # v = a eps - s x0 (Salimans & Ho); general for a^2 + s^2 != 1 (VE, sub-VP).
        norm = a * a + s * s
        x0 = (a * sample - s * model_output) / norm
        eps = (s * sample + a * model_output) / norm
    elif prediction_type == "score":
        eps = -s * model_output
        x0 = (sample - s * eps) / a  # s * (s * score): s^2 alone overflows float16 for VE (sigma_max 1348)
    else:
        check_prediction_type(prediction_type)
    return x0, eps


def from_x0_eps(x0, eps, a, s, prediction_type: str) -> torch.Tensor:
    """The quantity of ``prediction_type`` for the point (x0, eps): the regression target in training."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    a, s = append_dims(a, x0), append_dims(s, x0)
    if prediction_type == "v_prediction":
        return a * eps - s * x0
    if prediction_type == "score":
        return -eps / s
    check_prediction_type(prediction_type)


def convert(model_output, sample, a, s, from_type: str, to_type: str) -> torch.Tensor:
    """Convert a model output between epsilon / sample (x0) / v_prediction / score."""
    if from_type == to_type:
        return model_output
    x0, eps = to_x0_eps(model_output, sample, a, s, from_type)
    return from_x0_eps(x0, eps, a, s, to_type)


@dataclass(frozen=True)
class Point:
    """One point of a sampling grid as the update rules see it: the marginal (a, s) at process time
    ``t``, and -- for the rules that integrate the SDE itself (Euler-Maruyama) -- the drift coefficient
    ``f`` and squared diffusion ``g2`` there. ``t=None``, a = 1, s = 0 is the clean data."""

    a: float
    s: float
    t: Optional[float] = None
    f: float = 0.0
    g2: float = 0.0

    @property
    def clean(self) -> bool:
        return self.s == 0.0

    @property
    def log_snr(self) -> float:
        return math.inf if self.s == 0.0 else math.log(self.a / self.s)


CLEAN = Point(1.0, 0.0)


class NoiseProcess:
    """Base class: subclasses define ``marginal`` (and ``prior_std``); the rest is derived."""

    continuous: bool = True
    prior_std: float = 1.0
    t_min: float = 0.0
    t_max: float = 1.0

    # --- to be defined by subclasses -------------------------------------------------------------
    def marginal(self, t: TensorLike) -> Tuple[torch.Tensor, torch.Tensor]:
        """(a(t), s(t)) as tensors of t's shape."""
        raise NotImplementedError

    # --- derived ----------------------------------------------------------------------------------
    def point(self, t) -> Point:
        """The grid point at process time ``t`` (a Python number), with f and g^2 for SDE rules."""
        tt = torch.as_tensor(t, dtype=torch.float64) if self.continuous else torch.as_tensor(t)
        a, s = self.marginal(tt)
        f, g2 = (self._derivatives(tt) if self.continuous else (self.drift_coef(tt), self.diffusion(tt) ** 2))
        return Point(float(a), float(s), float(t), float(f), float(g2))

    def alpha(self, t):
        return self.marginal(t)[0]

    def sigma(self, t):
        return self.marginal(t)[1]

    def log_snr(self, t) -> torch.Tensor:
        """lambda(t) = log(a/s): the half log signal-to-noise ratio that exponential integrators step in."""
        a, s = self.marginal(t)
        return torch.log(a) - torch.log(s)

    def transition(self, t_from, t_to) -> Tuple[torch.Tensor, torch.Tensor]:
        """(r, G^2) with x_{t_to} | x_{t_from} ~ N(r x_{t_from}, G^2 I), t_to > t_from, exactly.

        Exact for every Gaussian process with linear drift, so no discretisation ever produces a
        'beta' above 1 however coarse the grid is.
        """
        a_from, s_from = self.marginal(t_from)
        a_to, s_to = self.marginal(t_to)
        r = a_to / a_from
        var = (s_to * s_to - r * r * s_from * s_from).clamp_min(0.0)
        return r, var

    def posterior_coefficients(self, t, t_prev) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(coef_xt, coef_x0, var) with q(x_{t_prev} | x_t, x0) = N(coef_xt x_t + coef_x0 x0, var I).

        coef_xt = r s'^2 / s_t^2, coef_x0 = G^2 a' / s_t^2, var = G^2 s'^2 / s_t^2, with (r, G^2) the
        transition t_prev -> t and (a', s') the marginal at t_prev. For VP this is DDPM's
        (mu~_t, beta~_t); for VE it is SMLD's ancestral step. t_prev = -1 (discrete) is clean data.
        """
        a_prev, s_prev = self.marginal(t_prev)
        _, s_t = self.marginal(t)
        r, g2 = self.transition(t_prev, t)
        s_t2 = s_t * s_t
        return r * s_prev * s_prev / s_t2, g2 * a_prev / s_t2, g2 * s_prev * s_prev / s_t2

    def posterior(self, x_t, x0, t, t_prev) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t_prev} | x_t, x0) for t_prev < t (see ``posterior_coefficients``)."""
        coef_xt, coef_x0, var = self.posterior_coefficients(t, t_prev)
        return append_dims(coef_xt, x_t) * x_t + append_dims(coef_x0, x0) * x0, var

    def drift_coef(self, t) -> torch.Tensor:
        """f(t) with drift f(x, t) = f(t) x.  Continuous: d log a/dt; discrete: r_t - 1 per step."""
        if not self.continuous:
            r, _ = self.transition(torch.as_tensor(t) - 1, t)
            return r - 1.0
        return self._derivatives(t)[0]

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        return append_dims(self.drift_coef(t), x) * x

    def diffusion(self, t) -> torch.Tensor:
        """g(t). Continuous: sqrt(d s^2/dt - 2 f s^2); discrete: the per-step noise std G_t."""
        if not self.continuous:
            _, g2 = self.transition(torch.as_tensor(t) - 1, t)
            return g2.sqrt()
        return self._derivatives(t)[1].clamp_min(0.0).sqrt()

    def _derivatives(self, t):
        """(f, g^2) from (a, s). Subclasses with closed forms override; this is the generic fallback."""
        t = torch.as_tensor(t, dtype=torch.float64)
        h = 1e-5
        a1, s1 = self.marginal(t - h)
        a2, s2 = self.marginal(t + h)
        f = (torch.log(a2) - torch.log(a1)) / (2 * h)
        _, s = self.marginal(t)
        g2 = (s2 * s2 - s1 * s1) / (2 * h) - 2 * f * s * s
        return f, g2

    def prior_sample(self, shape: Sequence[int], generator=None, device=None, dtype=torch.float32):
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(tuple(shape), generator=generator, device=device, dtype=dtype) * self.prior_std

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I), summed over all but the batch dimension."""
        d = z[0].numel()
        sq = z.flatten(1).pow(2).sum(1)
        return -0.5 * d * math.log(2 * math.pi * self.prior_std**2) - 0.5 * sq / self.prior_std**2

    def time_at_log_snr(self, log_snr: torch.Tensor, iters: int = 64) -> torch.Tensor:
        """Inverse of ``log_snr`` on [t_min, t_max] by bisection (log_snr decreases in t)."""
        if not self.continuous:
            raise ValueError("time_at_log_snr needs a continuous process")
        target = torch.as_tensor(log_snr, dtype=torch.float64)
        lo = torch.full_like(target, self.t_min)
        hi = torch.full_like(target, self.t_max)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > target
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)


# ------------------------------------------------------------------------------------------------
# Discrete processes: tables indexed by integer t, with index -1 meaning clean data.
# ------------------------------------------------------------------------------------------------


class _Tabulated(NoiseProcess):
    continuous = False

    def __init__(self, a: torch.Tensor, s: torch.Tensor):
        one = torch.ones(1, dtype=a.dtype)
        zero = torch.zeros(1, dtype=s.dtype)
        # Position 0 is t = -1 (clean data); position i + 1 is t = i.
        self._a = torch.cat([one, a])
        self._s = torch.cat([zero, s])
        self.num_steps = len(a)
        self.t_min, self.t_max = 0, self.num_steps - 1

    def marginal(self, t):
        t = torch.as_tensor(t)
        if t.is_floating_point():
            if not torch.equal(t, t.round()):
                raise ValueError(f"a discrete process takes integer timesteps, got {t}")
            t = t.long()
        if (t < -1).any() or (t >= self.num_steps).any():
            raise ValueError(f"timestep out of range [-1, {self.num_steps - 1}]: {t}")
        idx = (t + 1).cpu()
        return self._a[idx].to(t.device), self._s[idx].to(t.device)


def make_betas(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
    trained_betas=None,
    rescale_betas_zero_snr: bool = False,
) -> torch.Tensor:
    """Discrete VP betas, computed exactly as diffusers' DDPM/DDIM schedulers compute them."""
    from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar, rescale_zero_terminal_snr

    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
    else:
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
        if beta_schedule in ("linear", "scaled_linear"):
            if not 0 < beta_start < beta_end < 1:
                raise ValueError(
                    f"need 0 < beta_start < beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
                )
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
        elif beta_schedule in ("squaredcos_cap_v2", "cosine"):
            betas = betas_for_alpha_bar(num_train_timesteps)
        else:
            raise ValueError(
                f"beta_schedule must be 'linear', 'scaled_linear' or 'squaredcos_cap_v2' (alias 'cosine'), "
                f"got {beta_schedule!r}"
            )
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    if betas.ndim != 1 or len(betas) == 0 or not ((betas > 0) & (betas <= 1)).all():
        raise ValueError("betas (trained_betas or the schedule's) must be a non-empty 1-D sequence with every "
                         "value in (0, 1] (NaN is not)")
    # Only the last step may destroy the signal (zero terminal SNR); earlier, alphas_cumprod = 0 (beta = 1
    # or a float32 underflow) makes every later step a division by zero.
    alphas_cumprod = torch.cumprod(1.0 - betas, 0)
    if len(betas) > 1 and not (alphas_cumprod[:-1] > 0).all():
        k = int((alphas_cumprod[:-1] <= 0).nonzero()[0])
        raise ValueError(
            f"betas: alphas_cumprod = prod(1 - beta) reaches 0 at train timestep {k} of {len(betas)} (float32); "
            "only the last may be 0 (zero terminal SNR). Lower beta_end / the trained betas, or use fewer steps."
        )
    return betas


class DiscreteVP(_Tabulated):
    """DDPM's process: alphas_cumprod = prod(1 - beta)."""

    def __init__(self, betas: torch.Tensor):
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        super().__init__(self.alphas_cumprod.sqrt(), (1.0 - self.alphas_cumprod).sqrt())
        self.prior_std = 1.0

    @classmethod
    def from_schedule(cls, **kwargs) -> "DiscreteVP":
        return cls(make_betas(**kwargs))


class DiscreteScheduleVP(NoiseProcess):
    """The continuous-time view of a discrete VP schedule (any diffusers betas): what lets every SDE /
    ODE solver and the ODE likelihood run on exactly the schedule a diffusers model was trained with.

    Process time t in [0, 1] is the train timestep tau = t (N - 1) rescaled; the model is called at tau
    (a float). At integer tau the marginal is exactly diffusers' (sqrt(alphas_cumprod), sqrt(1 -
    alphas_cumprod)); between them the log-SNR lambda = log(a/s) is linear in tau -- k-diffusion's
    choice (``DiscreteSchedule`` interpolates log-sigma, the same thing). lambda is the variable the
    solvers step in, so a piecewise-linear lambda keeps every grid exact at the knots and monotone in
    between; a ~ sigmoid(2 lambda)^1/2, s ~ sigmoid(-2 lambda)^1/2 keep a^2 + s^2 = 1 (VP) everywhere.

    Zero terminal SNR (``rescale_betas_zero_snr``: alphas_cumprod[-1] = 0, lambda = -inf) is clamped
    to alphas_cumprod = 2^-24 at the last timestep, as diffusers' DDIM / Euler schedulers do; values above 0
    (the cosine schedule ends at 2.4e-9) are kept as they are.
    """

    continuous = True

    def __init__(self, alphas_cumprod: torch.Tensor):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if ac.numel() < 2:
            raise ValueError("a discrete schedule needs at least 2 train timesteps")
        if not torch.isfinite(ac).all() or (ac > 1).any() or (ac < 0).any() or (ac[1:] > ac[:-1]).any():
            raise ValueError("alphas_cumprod must be finite, in [0, 1] and non-increasing")
        if (ac == 0).any():
            # Only an exact zero (zero terminal SNR) is replaced: by 2^-24, as diffusers' DDIM / Euler do, or
            # below the last positive value where that is smaller. A small positive value (the cosine
            # schedule's last, 2.4e-9) is the model's true noise level and is kept.
            floor = min(2.0**-24, 0.5 * float(ac[ac > 0].min()))
            ac = torch.where(ac > 0, ac, torch.full_like(ac, floor))
        self.alphas_cumprod = ac
        self.num_train_timesteps = ac.numel()
        self._lam = 0.5 * (torch.log(ac) - torch.log1p(-ac))
        self.prior_std = 1.0
        self.t_min, self.t_max = 0.0, 1.0

    @classmethod
    def from_schedule(cls, **kwargs) -> "DiscreteScheduleVP":
        """From diffusers' schedule keys (``make_betas``'s arguments)."""
        # float32 cumprod, as diffusers computes alphas_cumprod: the very values the model was trained on.
        return cls(torch.cumprod(1.0 - make_betas(**kwargs), 0))

    def _segment(self, t, below: bool = False):
        tau = _as_float(t).to(torch.float64) * (self.num_train_timesteps - 1)
        # ``below``: at a knot take the segment under it (samplers move towards t = 0).
        i = (torch.ceil(tau) - 1 if below else torch.floor(tau)).clamp(0, self.num_train_timesteps - 2).long()
        return tau, i

    def log_snr(self, t) -> torch.Tensor:
        tau, i = self._segment(t)
        lo, hi = self._lam[i], self._lam[i + 1]
        return lo + (tau - i) * (hi - lo)

    def marginal(self, t):
        lam = self.log_snr(t)
        return torch.sigmoid(2 * lam).sqrt(), torch.sigmoid(-2 * lam).sqrt()

    def _derivatives(self, t):
        # With lambda' = d lambda/dt (piecewise constant): f = d log a/dt = s^2 lambda',
        # g^2 = d s^2/dt - 2 f s^2 = -2 s^2 lambda' (> 0, lambda decreases).
        _, i = self._segment(t, below=True)
        dlam = (self._lam[i + 1] - self._lam[i]) * (self.num_train_timesteps - 1)
        s2 = torch.sigmoid(-2 * self.log_snr(t))
        return s2 * dlam, -2.0 * s2 * dlam

    def time_at_log_snr(self, log_snr: torch.Tensor, iters: int = 0) -> torch.Tensor:
        """Exact inverse of the piecewise-linear lambda (``iters`` is ignored: no bisection needed)."""
        target = torch.as_tensor(log_snr, dtype=torch.float64)
        lam = self._lam
        neg = -lam  # increasing in tau
        j = torch.searchsorted(neg, -target).clamp(1, self.num_train_timesteps - 1)
        lo, hi = lam[j - 1], lam[j]
        w = ((target - lo) / (hi - lo)).clamp(0, 1)
        return ((j - 1) + w) / (self.num_train_timesteps - 1)


def geometric_sigmas(sigma_min: float, sigma_max: float, n: int) -> torch.Tensor:
    check_sigma_range(sigma_min, sigma_max)
    return torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), n, dtype=torch.float64)).float()


# Noise levels whose squares are float32 normals (the variances the solvers form): beyond them VE
# sampling overflows to inf / NaN in float32, or underflows to a zero variance.
SIGMA_RANGE = (1e-18, 1e18)
# alpha(1)^2 = exp(-(beta_min + beta_max) / 2) must stay a float32 normal (> 1.2e-38 = exp(-87.3)).
MAX_BETA_SUM = 174.0


def check_sigma_range(sigma_min: float, sigma_max: float):
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    low, high = SIGMA_RANGE
    if not (low <= sigma_min and sigma_max <= high):
        raise ValueError(
            f"sigma_min and sigma_max must lie in [{low:g}, {high:g}] (their squares must be float32 numbers), "
            f"got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )


def check_beta_range(beta_min: float, beta_max: float):
    if not 0 < beta_min <= beta_max:
        raise ValueError(f"need 0 < beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}")
    if not beta_min + beta_max <= MAX_BETA_SUM:
        raise ValueError(
            f"need beta_min + beta_max <= {MAX_BETA_SUM:g}: the VP marginal alpha(1)^2 = exp(-(beta_min + beta_max)/2) "
            f"underflows float32 beyond it; got beta_min={beta_min}, beta_max={beta_max}"
        )


class DiscreteVE(_Tabulated):
    """SMLD / NCSN: x_t | x0 ~ N(x0, sigma_t^2) with geometric sigma levels (index 0 = sigma_min)."""

    def __init__(self, sigmas: torch.Tensor):
        sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
        if sigmas.ndim != 1 or (sigmas[1:] <= sigmas[:-1]).any() or (sigmas <= 0).any():
            raise ValueError("sigmas must be positive and strictly increasing")
        self.sigmas = sigmas
        super().__init__(torch.ones_like(sigmas), sigmas)
        self.prior_std = float(sigmas[-1])

    @classmethod
    def geometric(cls, sigma_min: float = 0.01, sigma_max: float = 1348.0, num_train_timesteps: int = 2000):
        return cls(geometric_sigmas(sigma_min, sigma_max, num_train_timesteps))


# ------------------------------------------------------------------------------------------------
# Continuous processes on t in [0, 1], closed forms.
# ------------------------------------------------------------------------------------------------


def _as_float(t) -> torch.Tensor:
    t = torch.as_tensor(t)
    return t if t.is_floating_point() else t.to(torch.float64)


class ContinuousVP(NoiseProcess):
    """dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw, beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        check_beta_range(beta_min, beta_max)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.prior_std = 1.0

    def beta(self, t):
        return self.beta_min + _as_float(t) * (self.beta_max - self.beta_min)

    def integral_beta(self, t):
        t = _as_float(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def marginal(self, t):
        big_b = self.integral_beta(t)
        # -expm1 keeps s accurate near t = 0, where 1 - exp(-B) would cancel.
        return torch.exp(-0.5 * big_b), torch.sqrt(-torch.expm1(-big_b))

    def _derivatives(self, t):
        beta = self.beta(t)
        return -0.5 * beta, beta


class SubVP(ContinuousVP):
    """Song et al.'s sub-VP SDE: VP drift, g^2 = beta(t) (1 - exp(-2 int beta)); s = 1 - a^2."""

    def marginal(self, t):
        big_b = self.integral_beta(t)
        return torch.exp(-0.5 * big_b), -torch.expm1(-big_b)

    def _derivatives(self, t):
        beta = self.beta(t)
        return -0.5 * beta, beta * -torch.expm1(-2.0 * self.integral_beta(t))


class ContinuousVE(NoiseProcess):
    """dx = sqrt(d sigma^2/dt) dw, sigma(t) = sigma_min (sigma_max/sigma_min)^t; a = 1, s = sigma(t).

    As in score_sde, s(0) = sigma_min: the process starts from the data blurred by sigma_min, which
    keeps (a, s) and (f, g) exactly consistent.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        check_sigma_range(sigma_min, sigma_max)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.prior_std = self.sigma_max

    def marginal(self, t):
        t = _as_float(t)
        s = self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        return torch.ones_like(s), s

    def _derivatives(self, t):
        s = self.marginal(t)[1]
        return torch.zeros_like(s), 2.0 * s * s * math.log(self.sigma_max / self.sigma_min)

    def time_at_sigma(self, sigma):
        sigma = _as_float(sigma)
        return torch.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


def make_continuous_process(
    sde: str, beta_min: float = 0.1, beta_max: float = 20.0, sigma_min: float = 0.01, sigma_max: float = 50.0
) -> NoiseProcess:
    """The continuous process named by an ``sde`` config value: 'vp', 'subvp' or 've'."""
    if sde == "vp":
        return ContinuousVP(beta_min, beta_max)
    if sde in ("subvp", "sub-vp", "sub_vp"):
        return SubVP(beta_min, beta_max)
    if sde == "ve":
        return ContinuousVE(sigma_min, sigma_max)
    raise ValueError(f"sde must be 'vp', 'subvp' or 've', got {sde!r}")


__all__ = [
    "PREDICTION_TYPES",
    "append_dims",
    "check_prediction_type",
    "to_x0_eps",
    "from_x0_eps",
    "convert",
    "NoiseProcess",
    "Point",
    "CLEAN",
    "DiscreteVP",
    "DiscreteScheduleVP",
    "DiscreteVE",
    "ContinuousVP",
    "SubVP",
    "ContinuousVE",
    "make_betas",
    "geometric_sigmas",
    "check_sigma_range",
    "check_beta_range",
    "make_continuous_process",
]
