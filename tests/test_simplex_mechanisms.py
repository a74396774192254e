"""The mechanisms of "It's Simplex!" (Cullen24) as pure functions of (E0, E1, sigma), against independent references.

References are written separately from the implementation: closed forms in mpmath at 50 digits, and brute-force
searches over each mechanism's free parameter with scipy's plain normal functions.
"""

import math

import mpmath
import numpy as np
import pytest
from scipy import optimize, stats

from ensemblecert.plugins.simplex.mechanisms import (
    DP_EPSILON_CAP,
    MECHANISMS,
    cohen,
    cohen_two_sided,
    dp,
    dp_at,
    gaussian_delta,
    lecuyer,
    li,
    li_at,
    li_limit,
)

mpmath.mp.dps = 50

CASES = [  # (E0, E1): across the simplex, near ties, E0 -> 1, E1 -> 0, E1 = 0
    (0.9, 0.05),
    (0.6, 0.3),
    (0.7, 0.29),
    (0.4, 0.3),
    (0.35, 0.34),
    (0.5 + 1e-5, 0.5),
    (0.30001, 0.3),
    (0.999999, 1e-7),
    (0.99, 0.0),
    (0.2, 0.01),
    (0.55, 0.45),
    (0.95, 0.049),
]


def mp_li(omega, e0, e1):
    E0, E1, W = mpmath.mpf(e0), mpmath.mpf(e1), mpmath.mpf(omega)
    p = 1 - W
    mean = ((E0**p + E1**p) / 2) ** (1 / p) if E1 > 0 else mpmath.mpf(0)
    bracket = 1 - E0 - E1 + 2 * mean
    return float(mpmath.sqrt(-2 / W * mpmath.log(bracket))) if bracket < 1 else 0.0


@pytest.mark.parametrize("e0, e1", CASES)
def test_cohen_forms_against_mpmath(e0, e1):
    phi_inv = lambda p: mpmath.sqrt(2) * mpmath.erfinv(2 * mpmath.mpf(p) - 1)  # noqa: E731
    expected = float(phi_inv(e0)) if e0 > 0.5 else 0.0
    assert float(cohen(e0, e1, 1.0)) == pytest.approx(expected, rel=1e-12, abs=1e-300)
    two = float((phi_inv(e0) - phi_inv(e1)) / 2) if e1 > 0 and e0 > e1 else (math.inf if e0 > e1 else 0.0)
    assert float(cohen_two_sided(e0, e1, 1.0)) == pytest.approx(two, rel=1e-10)


@pytest.mark.parametrize("e0, e1", CASES)
def test_li_against_a_brute_force_supremum(e0, e1):
    omegas = 1 + np.logspace(-12, 4, 161)
    brute = max([mp_li(w, e0, e1) for w in omegas] + [float(li_limit(e0, e1, 1.0))])
    found = float(li(e0, e1, 1.0))
    assert found >= brute * (1 - 1e-9)  # the search finds at least what a 161-point scan finds
    assert found <= brute * (1 + 1e-3) + 1e-15  # and not more than the scan's resolution allows
    for w in (1 + 1e-9, 1.5, 30.0):  # the evaluation itself, where it is ill-conditioned and where it overflows
        assert float(li_at(w, e0, e1, 1.0)) == pytest.approx(mp_li(w, e0, e1), rel=1e-9, abs=1e-300)


def test_li_limit_closed_form():
    for e0, e1 in CASES:
        closed = math.sqrt(max(-2 * math.log(1 - (math.sqrt(e0) - math.sqrt(e1)) ** 2), 0.0)) if e0 > e1 else 0.0
        assert float(li_limit(e0, e1, 2.0)) == pytest.approx(2.0 * closed, rel=1e-6, abs=1e-12)
    # near a tie the direct formula cancels; the limit keeps its digits
    assert float(li_limit(0.5 + 1e-5, 0.5, 1.0)) == pytest.approx(mp_li(1 + 1e-14, 0.5 + 1e-5, 0.5), rel=1e-7)


def lecuyer_reference(eps, e0, e1):
    margin = e0 - math.exp(2 * eps) * e1
    if margin <= 0:
        return 0.0
    return eps / math.sqrt(2 * math.log(1.25 * (1 + math.exp(eps)) / margin))


@pytest.mark.parametrize("e0, e1", CASES)
def test_lecuyer_against_a_scan_over_epsilon(e0, e1):
    top = min(1.0, 0.5 * math.log(e0 / e1)) if e1 > 0 and e0 > e1 else (1.0 if e0 > e1 else 0.0)
    brute = max([0.0] + [lecuyer_reference(eps, e0, e1) for eps in np.linspace(0, top, 4001)[1:]])
    found = float(lecuyer(e0, e1, 1.0))
    assert found >= brute * (1 - 1e-9) and found <= brute * (1 + 1e-4) + 1e-15


def dp_reference(eps, e0, e1):
    """Eq. 18 at one epsilon, written independently: brentq on Eq. 16 with scipy's plain normal cdf."""
    budget = (e0 - math.exp(2 * eps) * e1) / (1 + math.exp(eps))
    if budget <= 0:
        return 0.0

    def excess(L):
        return stats.norm.cdf(L / 2 - eps / L) - math.exp(eps) * stats.norm.cdf(-L / 2 - eps / L) - budget

    high = 1.0
    while excess(high) <= 0:
        high *= 2
    return optimize.brentq(excess, 1e-12, high, xtol=1e-14)


@pytest.mark.parametrize("e0, e1", [c for c in CASES if c[1] > 0 and c[0] - c[1] > 1e-3])
def test_dp_against_a_scan_over_epsilon(e0, e1):
    top = 0.5 * math.log(e0 / e1)
    brute = max(dp_reference(eps, e0, e1) for eps in np.linspace(0, top, 401)[:-1])
    found = float(dp(e0, e1, 1.0))
    assert found >= brute * (1 - 1e-7) and found <= brute * (1 + 1e-3)


def test_dp_at_epsilon_zero_has_a_closed_form():
    # eps = 0: 2 Phi(L / 2 sigma) - 1 <= (E0 - E1) / 2
    for e0, e1 in [(0.9, 0.05), (0.6, 0.3), (0.4, 0.39)]:
        expected = 2 * 0.5 * stats.norm.ppf((1 + (e0 - e1) / 2) / 2)
        assert float(dp_at(0.0, e0, e1, 0.5)) == pytest.approx(expected, rel=1e-12)


def test_dp_returns_only_feasible_radii():
    for e0, e1 in [c for c in CASES if c[0] > c[1]]:
        radius = float(dp(e0, e1, 1.0))
        top = 0.5 * math.log(e0 / e1) if e1 > 0 else DP_EPSILON_CAP
        eps = np.linspace(0, min(top, DP_EPSILON_CAP), 20001)
        eps = eps if e1 == 0 else eps[:-1]  # the cap itself is allowed when E1 = 0
        budget = (e0 - np.exp(2 * eps) * e1) / (1 + np.exp(eps))
        # some epsilon on a fine grid admits a radius just below the one returned
        assert np.any(gaussian_delta(radius * (1 - 1e-6), eps, 1.0) <= budget), (e0, e1)


def test_dp_with_e1_zero_is_finite_and_feasible():
    radius = float(dp(0.99, 0.0, 1.0))
    assert math.isfinite(radius) and radius > float(dp(0.99, 1e-7, 1.0))
    assert gaussian_delta(radius, DP_EPSILON_CAP, 1.0) <= 0.99 / (1 + math.exp(DP_EPSILON_CAP)) * (1 + 1e-9)


def simplex_grid(steps=40):
    e0, e1 = np.meshgrid(np.linspace(0.0, 1.0, steps + 1), np.linspace(0.0, 1.0, steps + 1))
    inside = e0 + e1 <= 1.0 + 1e-12
    return e0[inside], e1[inside]


def test_properties_over_the_simplex():
    e0, e1 = simplex_grid()
    ceiling = cohen_two_sided(e0, e1, 1.0)
    radii = {name: f(e0, e1, 1.0) for name, f in MECHANISMS.items()}
    for name, r in radii.items():
        assert np.all(r >= 0), name
        assert np.all(r <= ceiling * (1 + 1e-9) + 1e-12), name  # no sound mechanism beats Neyman-Pearson
        assert np.all(r[e0 <= e1] == 0), name
    assert np.all(radii["dp"] >= radii["lecuyer"] * (1 - 1e-9))


@pytest.mark.parametrize("sigma", [0.12, 0.5, 4.0])
def test_every_radius_is_linear_in_sigma(sigma):
    e0, e1 = simplex_grid(12)
    for name, f in MECHANISMS.items():
        assert np.allclose(f(e0, e1, sigma), sigma * f(e0, e1, 1.0), rtol=1e-7, atol=1e-12), name


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="must lie in"):
        dp(1.2, 0.1, 1.0)
