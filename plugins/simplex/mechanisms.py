"""Certification mechanisms of Cullen et al., "It's Simplex!" (Cullen24, Sections 2-4).

Each mechanism maps a lower bound ``E0`` on the top class's expectation, an upper bound ``E1`` on the
runner-up's and the noise scale ``sigma`` to a certified L2 radius. All are pure, vectorized over arrays of
``(E0, E1)`` and linear in ``sigma``; a radius of 0 means no certificate.

Where a mechanism is a supremum or maximum over a free parameter (Li's omega, Lecuyer's and the DP
mechanism's epsilon), every value returned is the mechanism's radius *at* a particular parameter value, each
of which is a valid certificate on its own; an imperfect search therefore only ever costs radius. The search
is a zooming grid (32 points, four levels: a resolution of 1/110,000 of the parameter's range), one vectorized
evaluation per level.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy import special, stats

from ensemblecert import gaussian_radius


def _pair(e0: ArrayLike, e1: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    e0, e1 = np.broadcast_arrays(np.asarray(e0, dtype=np.float64), np.asarray(e1, dtype=np.float64))
    if np.any((e0 < 0) | (e0 > 1) | (e1 < 0) | (e1 > 1)):
        raise ValueError("expectation bounds must lie in [0, 1]")
    return e0, e1


def _maximise(f, low: np.ndarray, high: np.ndarray, *, grid: int = 32, levels: int = 4) -> np.ndarray:
    """``max f(t)`` for ``t`` in ``[low, high]`` per element, by a zooming grid: ``grid`` points, then ``grid`` points
    within one step of the best, ``levels`` times (resolution ``(high - low) / (grid (grid / 2)^(levels - 1))``).

    ``f`` takes ``t`` shaped ``low.shape + (grid,)`` and returns the objective there (0 where infeasible), so each
    level is one vectorized evaluation.
    """
    fractions = np.linspace(0.0, 1.0, grid)
    best = np.full(low.shape, -np.inf)
    lo, hi = low, high
    for _ in range(levels):
        points = lo[..., None] + (hi - lo)[..., None] * fractions
        values = f(points)
        at = np.argmax(values, axis=-1)[..., None]
        best = np.maximum(best, np.take_along_axis(values, at, axis=-1)[..., 0])
        step = (hi - lo) / (grid - 1)
        centre = np.take_along_axis(points, at, axis=-1)[..., 0]
        lo, hi = np.maximum(centre - step, low), np.minimum(centre + step, high)
    return best


def cohen(e0: ArrayLike, e1: ArrayLike, sigma: float) -> np.ndarray:
    """Eq. 9: ``sigma PhiInv(E0)`` when ``E0 > 1/2``, else 0 (``E1`` unused)."""
    e0, _ = _pair(e0, e1)
    return np.asarray(gaussian_radius(1.0 - e0, sigma))  # 1 - E0 is exact for E0 >= 1/2


def cohen_two_sided(e0: ArrayLike, e1: ArrayLike, sigma: float) -> np.ndarray:
    """Cohen et al.'s bound with ``p_B = E1``: ``sigma / 2 (PhiInv(E0) - PhiInv(E1))`` when ``E0 > E1``, else 0.

    The Neyman-Pearson bound: with the same ``(E0, E1)`` no sound mechanism certifies more, so it is the
    ceiling the others are tested against.
    """
    e0, e1 = _pair(e0, e1)
    with np.errstate(invalid="ignore"):
        radius = sigma / 2 * (stats.norm.ppf(e0) - stats.norm.ppf(e1))
    return np.where(e0 > e1, np.nan_to_num(radius, nan=0.0, posinf=np.inf), 0.0)


def li_limit(e0: ArrayLike, e1: ArrayLike, sigma: float) -> np.ndarray:
    """Eq. 8 as ``omega -> 1``: ``sigma sqrt(-2 ln(1 - (sqrt(E0) - sqrt(E1))^2))``, without cancellation near ties."""
    e0, e1 = _pair(e0, e1)
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(e0 > e1, (e0 - e1) / (np.sqrt(e0) + np.sqrt(e1)), 0.0)
        return sigma * np.sqrt(np.maximum(-2.0 * np.log1p(-np.square(gap)), 0.0))


def _logcosh(x: np.ndarray) -> np.ndarray:
    """``log cosh x`` to full relative precision: ``log1p(2 sinh^2(x/2))`` near 0,
    ``|x| + log1p(e^{-2|x|}) - log 2`` beyond."""
    ax = np.abs(x)
    with np.errstate(over="ignore", invalid="ignore"):
        small = np.log1p(2.0 * np.square(np.sinh(np.minimum(ax, 1.0) / 2.0)))
        large = ax + np.log1p(np.exp(-2.0 * ax)) - math.log(2.0)
    return np.where(ax < 1.0, small, large)


def li_at(omega: ArrayLike, e0: ArrayLike, e1: ArrayLike, sigma: float) -> np.ndarray:
    """Eq. 8's radius at one ``omega > 1``, without overflow or cancellation; 0 where the bracket is not below 1.

    With ``p = 1 - omega``, ``h = (ln E0 - ln E1) / 2`` and ``A = (E0 + E1) / 2``, the power mean is
    ``M = A exp(logcosh(p h) / p - logcosh(h))``, so the bracket minus 1 is
    ``2 A expm1(logcosh(p h) / p - logcosh(h))``:
    both terms are computed to relative precision, for omega near 1, near ties and large omega alike.
    """
    omega, e0, e1 = np.broadcast_arrays(np.asarray(omega, np.float64), *_pair(e0, e1))
    p = 1.0 - omega  # < 0
    mean = (e0 + e1) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        h = (np.log(e0) - np.log(e1)) / 2.0
        excess = np.where(e1 > 0, 2.0 * mean * np.expm1(_logcosh(p * h) / p - _logcosh(h)), -e0)  # M = 0 when E1 = 0
        value = -2.0 / omega * np.log1p(excess)
    return np.where((e0 > e1) & (excess < 0), sigma * np.sqrt(np.maximum(value, 0.0)), 0.0)


def li(e0: ArrayLike, e1: ArrayLike, sigma: float) -> np.ndarray:
    """Eq. 8: ``sup_{omega > 1}`` of Li et al.'s Renyi-divergence radius (multinomial expectations only).

    The supremum is often the limit ``omega -> 1`` (:func:`li_limit`); otherwise it is searched over
    ``log(omega - 1)`` in ``[-25, 6]``. 0 unless ``E0 > E1``.
    """
    e0, e1 = _pair(e0, e1)
    low, high = np.full(e0.shape, -25.0), np.full(e0.shape, 6.0)
    searched = _maximise(lambda t: li_at(1.0 + np.exp(t), e0[..., None], e1[..., None], sigma), low, high)
    return np.maximum(searched, li_limit(e0, e1, sigma))


def lecuyer_at(epsilon: ArrayLike, e0: ArrayLike, e1: ArrayLike, sigma: float) -> np.ndarray:
    """Eq. 5's radius at one ``epsilon`` (sensitivity 1):
    ``sigma eps / sqrt(2 ln(1.25 (1 + e^eps) / (E0 - e^{2 eps} E1)))``, 0 where ``E0 <= e^{2 eps} E1``."""
    epsilon, e0, e1 = np.broadcast_arrays(np.asarray(epsilon, np.float64), *_pair(e0, e1))
    margin = e0 - np.exp(2.0 * epsilon) * e1
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(1.25) + np.log1p(np.exp(epsilon)) - np.log(margin)
        radius = sigma * epsilon / np.sqrt(2.0 * ratio)
    return np.where(margin > 0, radius, 0.0)


def lecuyer(e0: ArrayLike, e1: ArrayLike, sigma: float) -> np.ndarray:
    """Eq. 5: the maximum over ``epsilon`` in ``(0, 1]`` (and ``E0 > e^{2 eps} E1``) of :func:`lecuyer_at`; 0
    unless ``E0 > E1``."""
    e0, e1 = _pair(e0, e1)
    with np.errstate(divide="ignore"):
        top = np.minimum(1.0, np.where(e1 > 0, 0.5 * np.log(e0 / np.where(e1 > 0, e1, 1.0)), 1.0))
    top = np.where(e0 > e1, top, 0.0)
    found = _maximise(lambda eps: lecuyer_at(eps, e0[..., None], e1[..., None], sigma), np.zeros(e0.shape), top)
    return np.where(e0 > e1, found, 0.0)


def gaussian_delta(radius: ArrayLike, epsilon: ArrayLike, sigma: float) -> np.ndarray:
    """Eq. 16's left side, the analytic Gaussian mechanism's ``delta`` (Balle and Wang, 2018) for sensitivity
    ``radius``: ``Phi(L / 2 sigma - eps sigma / L) - e^eps Phi(-L / 2 sigma - eps sigma / L)``, increasing in ``L``."""
    radius, epsilon = np.broadcast_arrays(np.asarray(radius, np.float64), np.asarray(epsilon, np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        a, b = radius / (2.0 * sigma), epsilon * sigma / radius
        delta = special.ndtr(a - b) - np.exp(epsilon + special.log_ndtr(-a - b))
    return np.where(radius > 0, np.maximum(delta, 0.0), 0.0)


#: With ``E1 = 0`` the DP mechanism's constraints allow every radius; epsilon is searched up to here.
DP_EPSILON_CAP = 40.0
#: Absolute slack (per unit of ``1 + epsilon``) taken off the delta budget: more than the floating-point error of
#: the budget and of :func:`gaussian_delta` (a few 1e-16, growing with epsilon through ``e^eps``), so a radius the
#: bisection accepts is feasible in exact arithmetic too. Without it, near-ties (``E0 - E1 = 1e-9``) exceeded the
#: Neyman-Pearson ceiling by 2e-8 relative.
DP_SLACK = 1e-14


def dp_at(epsilon: ArrayLike, e0: ArrayLike, e1: ArrayLike, sigma: float, *, iterations: int = 52) -> np.ndarray:
    """Eq. 18 at one ``epsilon``: the largest ``L`` with ``gaussian_delta(L, eps) <= (E0 - e^{2 eps} E1) / (1 + e^eps)``
    (the smallest feasible delta, Eq. 16, in Eq. 18's second constraint), by bisection; always a feasible ``L``, with
    the budget reduced by :data:`DP_SLACK` so that rounding errs towards a smaller radius."""
    epsilon, e0, e1 = np.broadcast_arrays(np.asarray(epsilon, np.float64), *_pair(e0, e1))
    with np.errstate(over="ignore"):
        budget = (e0 - np.exp(2.0 * epsilon) * e1) / (1.0 + np.exp(epsilon)) - DP_SLACK * (1.0 + epsilon)
    feasible = budget > 0
    low = np.zeros(e0.shape)
    high = np.full(e0.shape, sigma)
    for _ in range(80):  # grow the bracket until the constraint fails (never more than a few doublings)
        grow = feasible & (gaussian_delta(high, epsilon, sigma) <= budget)
        if not grow.any():
            break
        low, high = np.where(grow, high, low), np.where(grow, 2.0 * high, high)
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        ok = gaussian_delta(mid, epsilon, sigma) <= budget
        low, high = np.where(ok, mid, low), np.where(ok, high, mid)
    return np.where(feasible, low, 0.0)


def dp(e0: ArrayLike, e1: ArrayLike, sigma: float) -> np.ndarray:
    """Eqs. 16-18, the improved differential-privacy mechanism: ``max`` over ``epsilon`` in
    ``[0, ln(E0 / E1) / 2)`` of :func:`dp_at`; 0 unless ``E0 > E1``.

    With ``E1 = 0`` the supremum is unbounded (every radius is feasible for a large enough epsilon); the search
    stops at ``epsilon = DP_EPSILON_CAP`` and returns the radius feasible there, which is a valid certificate
    and finite. Sound bounds never produce ``E1 = 0`` (an upper confidence bound is positive).
    """
    e0, e1 = _pair(e0, e1)
    with np.errstate(divide="ignore"):
        top = np.where(e1 > 0, 0.5 * np.log(e0 / np.where(e1 > 0, e1, 1.0)), DP_EPSILON_CAP)
    top = np.where(e0 > e1, np.minimum(top, DP_EPSILON_CAP), 0.0)
    found = _maximise(lambda eps: dp_at(eps, e0[..., None], e1[..., None], sigma), np.zeros(e0.shape), top)
    return np.where(e0 > e1, found, 0.0)


#: Mechanisms by name, each ``(E0, E1, sigma) -> radius``.
MECHANISMS = {"cohen": cohen, "cohen_two_sided": cohen_two_sided, "li": li, "lecuyer": lecuyer, "dp": dp}
