"""Every sampler update rule of hf_ddm, each written once, in terms of the process.

One signature (k-diffusion's idea: the same shape for every sampler, so schedulers only pick one)::

    mean, std = rule(x, x0, eps, cur, nxt, **options)
    x_next = with_noise(mean, std, noise)

``x`` is the sample at grid point ``cur``; ``(x0, eps)`` the model's estimate there, one point on the
line x = a x0 + s eps (``processes.to_x0_eps``); ``cur`` / ``nxt`` are ``processes.Point`` (marginal
(a, s) at the two grid times, f and g^2 for the SDE rules; ``CLEAN`` is the data). A rule returns the
mean of the next sample and the std of the Gaussian noise to add (a float, 0 for deterministic rules,
or a tensor). Nothing here knows which process or which scheduler it serves: VP, sub-VP, VE and the
discrete diffusers schedules all reduce to (a, s) and their derivatives. Rules that need more than one
model call (Heun) or a history (multistep) are small classes with the same ``__call__``.

Schedulers own the grid, the model-output conversion and the noise draw; the formulas live here.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple, Union

import torch
from diffusers.utils.torch_utils import randn_tensor

from .processes import CLEAN, Point, append_dims

Std = Union[float, torch.Tensor]


def noise_like(sample: torch.Tensor, generator=None) -> torch.Tensor:
    """Standard normal noise shaped like ``sample``; ``generator`` may be a list (one per batch item)."""
    return randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)


def with_noise(mean: torch.Tensor, std: Std, noise: Optional[torch.Tensor]) -> torch.Tensor:
    """mean + std * noise; a zero std (or no noise) returns the mean itself."""
    if noise is None or (isinstance(std, float) and std == 0.0):
        return mean
    if isinstance(std, float):
        return mean + std * noise
    return mean + append_dims(std, mean) * noise


def transition(cur: Point, nxt: Point) -> Tuple[float, float]:
    """(r, G^2) of the exact forward transition nxt -> cur: x_cur = r x_nxt + G z."""
    r = cur.a / nxt.a
    return r, max(cur.s * cur.s - r * r * nxt.s * nxt.s, 0.0)


def posterior_variance(cur: Point, nxt: Point) -> float:
    """Variance of q(x_nxt | x_cur, x0): DDPM's beta~, SMLD's ancestral variance."""
    _, g2 = transition(cur, nxt)
    return g2 * nxt.s * nxt.s / (cur.s * cur.s)


# ------------------------------------------------------------------------------------------------
# Single-evaluation rules
# ------------------------------------------------------------------------------------------------


def ancestral(x, x0, eps, cur: Point, nxt: Point, variance: Union[str, torch.Tensor] = "small"):
    """A draw from the posterior q(x_nxt | x_cur, x0_hat): DDPM's sampler (for VP), SMLD's ancestral step
    (for VE), for any process. ``variance``: "small" (the posterior's, DDPM fixed_small), "large" (the
    transition's, DDPM fixed_large / beta) or a tensor of variances (a learned variance). Whether the
    step into the clean data draws noise is the scheduler's policy (hf_ddm's: never, DDPM Algorithm 2)."""
    r, g2 = transition(cur, nxt)
    s2 = cur.s * cur.s
    mean = torch.add(x * (r * nxt.s * nxt.s / s2), x0, alpha=g2 * nxt.a / s2)
    if isinstance(variance, torch.Tensor):
        return mean, variance.sqrt()
    if variance == "small":
        return mean, max(g2 * nxt.s * nxt.s / s2, 1e-20) ** 0.5
    if variance == "large":
        return mean, g2**0.5
    raise ValueError(f"variance must be 'small', 'large' or a tensor, got {variance!r}")


def ddim(x, x0, eps, cur: Point, nxt: Point, eta: float = 0.0):
    """DDIM(eta): x' = a' x0 + sqrt(s'^2 - sigma^2) eps + sigma z, sigma = eta * posterior std.

    eta = 0 is the probability-flow ODE's first-order exponential integrator (= DPM-Solver++(1),
    = Euler on d(x/a)/d sigma); eta = 1 has DDPM's posterior variance."""
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    sigma = eta * posterior_variance(cur, nxt) ** 0.5 if eta else 0.0
    dir_var = nxt.s * nxt.s - sigma * sigma
    if dir_var < 0:
        if dir_var < -1e-6:
            raise ValueError(f"eta={eta} is too large here: the DDIM noise variance exceeds s'^2 = {nxt.s**2:.4g}")
        dir_var = 0.0
    return torch.add(x0 * nxt.a, eps, alpha=dir_var**0.5), sigma


def reverse_diffusion(x, x0, eps, cur: Point, nxt: Point):
    """Song et al.'s reverse-diffusion predictor on the *exact* transition x_cur = r x_nxt + G z:
    x_nxt = (x + G^2 score) / r + G z. For VE (r = 1) SMLD's predictor; its mean is the posterior
    mean, so the step into clean data has mean x0_hat (and, as a formula, noise s: the scheduler
    decides whether to add it)."""
    r, g2 = transition(cur, nxt)
    # score = -eps / s
    return torch.add(x, eps, alpha=-g2 / cur.s) / r, g2**0.5


def euler_maruyama(x, x0, eps, cur: Point, nxt: Point):
    """Euler-Maruyama on the reverse SDE dx = [f x - g^2 score] dt + g dw, first order in t, with its
    linear part exact. With score = (a x0_hat - x)/s^2 the drift is k x - (g^2 a/s^2) x0_hat,
    k = f + g^2/s^2 > 0; freezing the coefficients at ``cur`` (Euler) but integrating x exactly gives

        x' = E x + (1 - E) (g^2 a / (s^2 k)) x0_hat + sqrt(g^2 (1 - E^2) / (2k)) z,   E = e^{k dt},

    which is plain Euler-Maruyama to first order in dt (E = 1 + k dt) but never amplifies x: plain
    EM's factor 1 + k dt is about -3 at 5 steps on VE (samples thousands of times the data scale).
    The step into clean data returns x0_hat (score_sde's noise removal)."""
    if nxt.clean:
        return x0, 0.0
    dt = nxt.t - cur.t
    k = cur.f + cur.g2 / (cur.s * cur.s)
    decay = math.exp(k * dt)
    mean = torch.add(x * decay, x0, alpha=-math.expm1(k * dt) * cur.g2 * cur.a / (cur.s * cur.s * k))
    return mean, (cur.g2 * -math.expm1(2 * k * dt) / (2 * k)) ** 0.5


def langevin(x, x0, eps, cur: Point, nxt: Point = None, snr: float = 0.16, scale: float = 1.0, noise=None):
    """One Langevin MCMC correction at ``cur``: x <- x + e score + sqrt(2 e) z, with step size
    e = 2 (snr |z| / |score|)^2 * scale from batch-mean norms (score_sde, diffusers' ScoreSdeVe
    ``step_correct``: they agree draw for draw). ``scale`` is score_sde's per-step alpha for VP-type
    processes (1 for VE). ``noise`` is the z that will be added (its norm sets the step). A zero score
    leaves x unchanged instead of dividing by zero."""
    score = eps / -cur.s
    # Norms in float32: in float16 a VE score (~1/sigma^2) underflows and its squared sum overflows.
    grad_norm = score.float().flatten(1).norm(dim=-1).mean()
    noise_norm = noise.float().flatten(1).norm(dim=-1).mean()
    step = torch.where(grad_norm > 0, 2.0 * (snr * noise_norm / grad_norm.clamp_min(1e-30)) ** 2, torch.zeros_like(grad_norm))
    step = step * scale
    return x + (step * score.float()).to(x.dtype), (2.0 * step).sqrt().to(x.dtype)


# ------------------------------------------------------------------------------------------------
# Rules with state: Heun (two evaluations per step) and the multistep exponential integrator.
# ------------------------------------------------------------------------------------------------


class Heun:
    """Heun's method (explicit trapezoid, 2nd order, two model calls per step) for the probability-flow
    ODE in its exponential-integrator form: with y = x/a, sigma = s/a = e^{-lambda}, the ODE
    dy/dsigma = (y - x0_hat)/sigma has the exact linear part y' = (sigma'/sigma) y + sigma' int x0_hat
    e^lambda dlambda, and only x0_hat is approximated -- constant (``predict``: = ``ddim``) and then
    linear in lambda between the two evaluations (``correct``). To second order this is EDM's Heun step;
    unlike EDM's form it stays bounded however long the step (EDM's corrector multiplies the error of
    the predicted point by (sigma' - sigma)/(2 sigma'), about -4 at 5 steps on a VP model). Into clean
    data the step is ``predict`` alone (sigma' = 0)."""

    def __init__(self):
        self._state = None

    def predict(self, x, x0, eps, cur: Point, nxt: Point):
        self._state = (x, x0)
        return ddim(x, x0, eps, cur, nxt)

    def correct(self, x, x0, eps, cur: Point, nxt: Point):
        """``x``, ``(x0, eps)`` at ``nxt`` (the predictor's result and the model there)."""
        if self._state is None:
            raise ValueError("Heun.correct needs a predict step first")
        x_cur, x0_cur = self._state
        self._state = None
        h = nxt.log_snr - cur.log_snr
        rho = math.exp(-h)
        phi = 1.0 + math.expm1(-h) / h  # 1 - (1 - e^{-h})/h: weight of the slope's change
        w0 = (1.0 - rho) - phi
        out = x_cur * (nxt.a * rho / cur.a)
        out.add_(x0_cur, alpha=nxt.a * w0).add_(x0, alpha=nxt.a * phi)
        return out, 0.0

    def reset(self):
        self._state = None


class DPMSolverPP:
    """DPM-Solver++(1/2/3M): exponential integrator in lambda = log(a/s) with data prediction, written
    only in (a, s), so every process shares it. Order 1 is ``ddim`` with eta = 0.

    ``stochastic=True``: SDE-DPM-Solver++(1/2M) (Lu et al. 2022, diffusers' ``sde-dpmsolver++``), the same
    integrator for the reverse SDE: the integrating factor is e^{-2h} instead of e^{-h} and the step adds
    noise of std s' sqrt(1 - e^{-2h}). Its order 1 is the posterior draw ``ancestral``; it is at most
    second order (a higher ``order`` runs 2M), the variant Lu et al. analyse.

    Order is lowered (i) at the start (no history), (ii) into clean data (h = inf: first order),
    (iii) on the last two steps of short runs (< 15 steps; diffusers' ``lower_order_final``) and
    (iv) wherever the step ratios make the multistep weights large: the order whose weights amplify
    most, sum |c_j| / |sum c_j|, above ``max_amplification`` is dropped (on a uniform-in-t grid the
    last steps shrink fast in lambda, and 3M's weights there reach (11, -21, 11))."""

    def __init__(self, order: int = 2, max_amplification: float = 4.0, stochastic: bool = False):
        if order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {order!r}")
        self.order = min(order, 2) if stochastic else order
        self.max_amplification, self.stochastic = max_amplification, stochastic
        self.reset()

    def reset(self):
        self._history: List[Tuple[torch.Tensor, float]] = []  # (x0_hat, lambda), most recent first

    def weights(self, cur: Point, nxt: Point, lambdas_prev: List[float], final_steps: bool = False):
        """(order used, c_x, [c_0, c_1, ...]) for a step with the given previous lambdas."""
        order = min(self.order, len(lambdas_prev) + 1)
        if nxt.clean:
            order = 1
        elif final_steps:
            order = min(order, 2)
        lam, lam1 = cur.log_snr, nxt.log_snr
        h = math.inf if nxt.clean else lam1 - lam
        history = [lam] + list(lambdas_prev)
        h_prev = [history[j] - history[j + 1] for j in range(len(history) - 1)]
        while True:
            c_x, c_m = dpmpp_multistep_coefficients(nxt.s / cur.s, nxt.a, h, h_prev[: order - 1], order,
                                                    self.stochastic)
            amp = sum(abs(c) for c in c_m) / max(abs(sum(c_m)), 1e-30)
            if order == 1 or amp <= self.max_amplification:
                return order, c_x, c_m
            order -= 1

    def __call__(self, x, x0, eps, cur: Point, nxt: Point, final_steps: bool = False):
        lambdas_prev = [lam for _, lam in self._history]
        order, c_x, c_m = self.weights(cur, nxt, lambdas_prev, final_steps)
        history = [x0] + [m for m, _ in self._history]
        self._history = ([(x0, cur.log_snr)] + self._history)[: self.order - 1]
        if order == 1:
            return ancestral(x, x0, eps, cur, nxt) if self.stochastic else ddim(x, x0, eps, cur, nxt)
        out = history[0] * c_m[0]
        out.add_(x, alpha=c_x)
        for coef, m in zip(c_m[1:], history[1:]):
            out.add_(m, alpha=coef)
        h = nxt.log_snr - cur.log_snr
        return out, (nxt.s * (-math.expm1(-2.0 * h)) ** 0.5 if self.stochastic else 0.0)


class IPNDM:
    """iPNDM (Zhang & Chen 2023, DEIS's improved PNDM; Zhou et al. 2024 found it the strongest training-free
    solver at 4-10 model calls): Adams-Bashforth on the probability-flow ODE in y = x/a, sigma = s/a,
    dy/dsigma = eps_hat (the model's epsilon, exactly the ODE's slope in these variables), with the
    *fixed* coefficients of equal steps whatever the step sizes, and a lower-order warm start:

        y' = y + (sigma' - sigma) * sum_k c_k eps_{-k},   c = [1], [3, -1]/2, [23, -16, 5]/12, [55, -59, 37, -9]/24

    Ignoring the step ratios is what makes it stable at few, very unequal steps (variable-step Adams
    weights grow with the ratio; DPM-Solver++ has to drop its order there). Its first step is DDIM; into
    clean data (sigma' = 0) the step is y - sigma * (the extrapolated eps), not the bare x0_hat."""

    COEFFICIENTS = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))

    def __init__(self, order: int = 4):
        if order not in (1, 2, 3, 4):
            raise ValueError(f"iPNDM's order must be 1..4, got {order!r}")
        self.order = order
        self.reset()

    def reset(self):
        self._history: List[torch.Tensor] = []  # eps_hat, most recent first

    def __call__(self, x, x0, eps, cur: Point, nxt: Point):
        history = ([eps] + self._history)[: self.order]
        self._history = history[: self.order - 1]
        coefficients = self.COEFFICIENTS[len(history) - 1]
        slope = eps * coefficients[0]
        for coef, e in zip(coefficients[1:], history[1:]):
            slope.add_(e, alpha=coef)
        d_sigma = nxt.s / nxt.a - cur.s / cur.a
        # x' = a' (x/a + d_sigma * slope)
        return torch.add(x * (nxt.a / cur.a), slope, alpha=nxt.a * d_sigma), 0.0


def dpmpp_multistep_coefficients(s_ratio: float, a_next: float, h: float, h_prev=(), order: int = 1,
                                 stochastic: bool = False):
    """Coefficients (c_x, [c_0, c_1, ...]) of one DPM-Solver++ multistep update

        x_{t'} = c_x * x_t + sum_j c_j * x0_hat_j,

    where x0_hat_0 is the data prediction at the current point, x0_hat_1 the one a step before, etc.

    Written only in terms of the marginal (a, s) of *any* process: ``s_ratio = s'/s``, ``a_next = a'``,
    ``h = lambda' - lambda`` with lambda = log(a/s), and ``h_prev = (h_0, h_1)`` the previous log-SNR
    steps (most recent first). Order 1 is x' = (s'/s) x + a' (1 - e^{-h}) x0 (= DDIM); orders 2 and 3
    are DPM-Solver++(2M) (midpoint form) and (3M), exactly as Lu et al. / diffusers write them.
    A step to clean data (s' = 0, h = inf) must be order 1 and gives x' = a' x0_hat.
    ``stochastic``: SDE-DPM-Solver++ (orders 1, 2), the same weights with the integrating factor e^{-2h}:
    c_x = (s'/s) e^{-h}, 1 - e^{-h} -> 1 - e^{-2h} (the noise it adds is the caller's, ``DPMSolverPP``).
    """
    if not 1 <= order <= 3 or len(h_prev) < order - 1:
        raise ValueError(f"order must be in 1..3 with order-1 previous steps, got order={order}, h_prev={h_prev}")
    if math.isinf(h):
        if order != 1:
            raise ValueError("a step to clean data (h = inf) must be first order")
        return 0.0, [a_next]
    if stochastic and order > 2:
        raise ValueError("SDE-DPM-Solver++ is written here to order 2")
    big_a = -math.expm1(-2.0 * h) if stochastic else -math.expm1(-h)  # 1 - e^{-2h} (SDE), 1 - e^{-h} (ODE)
    c_x = s_ratio * math.exp(-h) if stochastic else s_ratio
    if order == 1:
        return c_x, [a_next * big_a]
    r0 = h_prev[0] / h
    if order == 2:
        phi = a_next * big_a
        return c_x, [phi * (1.0 + 0.5 / r0), -phi * 0.5 / r0]
    r1 = h_prev[1] / h
    big_b = 1.0 - big_a / h  # (e^{-h} - 1)/h + 1
    big_c = (h - big_a) / (h * h) - 0.5  # (e^{-h} - 1 + h)/h^2 - 1/2
    k, q = r0 / (r0 + r1), 1.0 / (r0 + r1)
    # x' = c_x x + a'A D0 + a'B D1 - a'C D2, D1 = (1+k) D1_0 - k D1_1, D2 = q (D1_0 - D1_1),
    # D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1.
    w10 = a_next * (big_b * (1.0 + k) - big_c * q)  # weight of D1_0
    w11 = a_next * (-big_b * k + big_c * q)  # weight of D1_1
    return c_x, [a_next * big_a + w10 / r0, -w10 / r0 + w11 / r1, -w11 / r1]


__all__ = [
    "noise_like",
    "with_noise",
    "transition",
    "posterior_variance",
    "ancestral",
    "ddim",
    "reverse_diffusion",
    "euler_maruyama",
    "langevin",
    "Heun",
    "DPMSolverPP",
    "IPNDM",
    "dpmpp_multistep_coefficients",
    "CLEAN",
]
