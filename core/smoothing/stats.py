"""Confidence bounds shared by every certifier (pure, vectorized functions over counts).

Near ``p = 1`` a bound such as ``0.9999999999970043`` carries few significant digits of the distance to 1,
and a radius ``sigma * Phi^-1(p)`` amplifies that loss (an infinite radius once the bound rounds to 1).
:func:`clopper_pearson_lower_gap` therefore returns ``1 - lower bound`` computed directly, and radii are
computed from it with the normal's inverse survival function (:func:`gaussian_radius`).

Every bound errs outwards: it is moved by :data:`OUTWARD` (relative), far more than the error of scipy's Beta
quantiles (about 1e-16 relative, measured against 40-digit references), so rounding can only make a certificate
smaller, never larger. The radius computed from a moved gap is smaller by more than its own rounding error too.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, stats

#: The relative amount by which every bound is moved outwards (lower bounds down, upper bounds up).
OUTWARD = 1e-12


def _check(successes: ArrayLike, trials: ArrayLike, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        got = f"{np.asarray(successes)}/{np.asarray(trials)}"
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {got}")
    return k, n


def _out(x: np.ndarray) -> float | np.ndarray:
    return float(x) if x.ndim == 0 else x


def clopper_pearson_lower_gap(successes: ArrayLike, trials: ArrayLike, alpha: float) -> float | np.ndarray:
    """``1 - `` the one-sided Clopper-Pearson lower bound, computed without cancellation.

    The lower bound is the ``alpha`` quantile of ``Beta(k, n - k + 1)``, so its distance to 1 is the upper
    ``alpha`` quantile of ``Beta(n - k + 1, k)`` (1 when ``k = 0``).
    """
    k, n = _check(successes, trials, alpha)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = stats.beta.isf(alpha, n - k + 1, np.maximum(k, 1))
    return _out(np.where(k == 0, 1.0, np.minimum(gap * (1.0 + OUTWARD), 1.0)))


#: The randomized bound is solved at ``alpha (1 - RANDOMIZED_SLACK)``: far more than the relative error of scipy's
#: binomial distribution function (about 1e-13 here), so rounding can only make the bound smaller.
RANDOMIZED_SLACK = 1e-10
#: The smallest gap a randomized bound reports (a radius of about 7.9 sigma): with all draws hits and a uniform
#: below ``alpha`` the exact randomized bound is 1, an infinite radius; reporting less is conservative.
SMALLEST_GAP = 1e-15


def randomized_clopper_pearson_lower_gap(successes: int, trials: int, alpha: float, u: float) -> float:
    """``1 -`` the randomized one-sided Clopper-Pearson lower bound for ``successes`` in ``trials`` and a uniform
    ``u`` in (0, 1]: the ``L`` with ``P_L(X > k) + u P_L(X = k) = alpha`` for ``X ~ Bin(n, L)``. With ``u`` drawn
    uniformly, ``P(L > p) = alpha`` exactly (the randomized test is exact where Clopper-Pearson's is conservative),
    and ``L`` is at least the Clopper-Pearson bound (equal at ``u = 1``): a larger radius at the same ``n``, at
    the price of a certificate that depends on ``u`` as well as on the draws. Solved for the gap ``g = 1 - L``
    between the Clopper-Pearson gaps of ``k + 1`` and ``k`` successes (``misses ~ Bin(n, g)``), erring outwards."""
    k, n = int(successes), int(trials)
    _check(k, n, alpha)
    if not 0.0 < u <= 1.0:
        raise ValueError(f"u must be in (0, 1], got {u}")
    if k == 0:
        return 1.0
    level = alpha * (1.0 - RANDOMIZED_SLACK)  # solved at a slightly smaller level: the gap errs outwards
    if k == n:  # u (1 - g)^n = alpha
        gap = 1.0 - (level / u) ** (1.0 / n) if u > level else 0.0
    else:

        def excess(g: float) -> float:  # decreasing in g; zero at the bound
            return (1 - u) * stats.binom.cdf(n - k - 1, n, g) + u * stats.binom.cdf(n - k, n, g) - level

        low = float(clopper_pearson_lower_gap(k + 1, n, alpha)) / (1.0 + OUTWARD)  # u = 0
        high = min(float(clopper_pearson_lower_gap(k, n, level)), 1.0)  # u = 1
        gap = high if excess(high) >= 0 else optimize.brentq(excess, low, high, xtol=1e-300, rtol=1e-15)
    return float(min(max(gap * (1.0 + OUTWARD), SMALLEST_GAP), 1.0))


def clopper_pearson_lower(successes: ArrayLike, trials: ArrayLike, alpha: float) -> float | np.ndarray:
    """One-sided Clopper-Pearson lower bound: ``P(p < bound) <= alpha`` for ``successes ~ Bin(trials, p)``.

    The ``alpha`` quantile of ``Beta(k, n - k + 1)``, and 0 when ``k = 0`` (Clopper & Pearson, 1934;
    LOWERCONFBND of Algorithm 1 in Horvath22). Near 1 prefer
    :func:`clopper_pearson_lower_gap`.
    """
    k, n = _check(successes, trials, alpha)
    with np.errstate(invalid="ignore"):
        bound = stats.beta.ppf(alpha, k, n - k + 1)
    return _out(np.where(k == 0, 0.0, bound * (1.0 - OUTWARD)))


def clopper_pearson_upper(successes: ArrayLike, trials: ArrayLike, alpha: float) -> float | np.ndarray:
    """One-sided Clopper-Pearson upper bound: ``P(p > bound) <= alpha``; 1 when ``k = n``."""
    k, n = _check(successes, trials, alpha)
    with np.errstate(invalid="ignore"):
        bound = stats.beta.ppf(1.0 - alpha, k + 1, n - k)
    return _out(np.where(k == n, 1.0, np.minimum(bound * (1.0 + OUTWARD), 1.0)))


def clopper_pearson_upper_gap(successes: ArrayLike, trials: ArrayLike, alpha: float) -> float | np.ndarray:
    """``1 - `` the one-sided Clopper-Pearson upper bound, computed without cancellation: the ``alpha``
    quantile of ``Beta(n - k, k + 1)`` (0 when ``k = n``)."""
    k, n = _check(successes, trials, alpha)
    with np.errstate(invalid="ignore"):
        gap = stats.beta.ppf(alpha, np.maximum(n - k, 1), k + 1)
    return _out(np.where(k == n, 0.0, gap * (1.0 - OUTWARD)))


def clopper_pearson_interval(
    successes: ArrayLike, trials: ArrayLike, alpha: float
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Two-sided ``1 - alpha`` Clopper-Pearson interval (each side at ``alpha / 2``)."""
    return (
        clopper_pearson_lower(successes, trials, alpha / 2),
        clopper_pearson_upper(successes, trials, alpha / 2),
    )


def gaussian_radius(gap: ArrayLike, sigma: float) -> float | np.ndarray:
    """``sigma * Phi^-1(1 - gap)``, the L2 radius of a class with probability at least ``1 - gap``.

    Computed as ``sigma * Phi^-1`` of the upper tail (``norm.isf(gap)``), exact for tiny gaps; 0 when
    ``gap >= 1/2`` (no certificate). Cohen et al.'s Theorem 1 with ``p_B = 1 - p_A``.
    """
    q = np.asarray(gap, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        radius = np.where(q < 0.5, sigma * stats.norm.isf(np.clip(q, 0.0, 0.5)), 0.0)
    return _out(radius)
