import math

import numpy as np
import pytest
from scipy import stats

from ensemblecert import clopper_pearson_interval, clopper_pearson_lower, clopper_pearson_upper


def test_closed_forms_at_the_edges():
    # k = n: the lower bound solves p^n = alpha; k = 0: the upper bound solves (1 - p)^n = alpha.
    assert clopper_pearson_lower(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100))
    assert clopper_pearson_upper(0, 100, 0.001) == pytest.approx(1 - 0.001 ** (1 / 100))
    assert clopper_pearson_lower(0, 10, 0.05) == 0.0
    assert clopper_pearson_upper(10, 10, 0.05) == 1.0


def test_matches_scipy_exact_interval():
    for k, n in [(3, 10), (57, 100), (9990, 10000)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.99, method="exact")
        low, high = clopper_pearson_interval(k, n, 0.01)
        assert low == pytest.approx(ci.low)
        assert high == pytest.approx(ci.high)


def test_bound_definition_holds():
    # The lower bound p_L is where P(Bin(n, p_L) >= k) = alpha.
    k, n, alpha = 730, 1000, 0.001
    p_low = clopper_pearson_lower(k, n, alpha)
    assert stats.binom.sf(k - 1, n, p_low) == pytest.approx(alpha, rel=1e-6)


def test_vectorised():
    low = clopper_pearson_lower(np.array([0, 5, 10]), 10, 0.05)
    assert low.shape == (3,) and low[0] == 0 and 0 < low[1] < low[2] < 1


def test_coverage_by_simulation():
    rng = np.random.default_rng(0)
    p, n, alpha = 0.8, 50, 0.1
    k = rng.binomial(n, p, size=20000)
    miss = np.mean(clopper_pearson_lower(k, n, alpha) > p)
    assert miss <= alpha  # conservative: at most alpha of bounds exceed the truth


@pytest.mark.parametrize("args", [(5, 0, 0.1), (11, 10, 0.1), (5, 10, 0.0), (5, 10, 1.0)])
def test_rejects_invalid_input(args):
    with pytest.raises(ValueError):
        clopper_pearson_lower(*args)


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (57, 100), (9990, 10000), (10**6, 10**6)])
def test_the_gap_is_one_minus_the_lower_bound(k, n):
    from ensemblecert import clopper_pearson_lower_gap

    gap = clopper_pearson_lower_gap(k, n, 0.01)
    assert gap == pytest.approx(1 - clopper_pearson_lower(k, n, 0.01), abs=1e-12)
    if 0 < k:
        # defining property, evaluated where it is exact: P(Bin(n, 1 - gap) >= k) = alpha
        assert stats.binom.sf(k - 1, n, 1 - gap) == pytest.approx(0.01, rel=1e-6)


def test_gaussian_radius_at_its_threshold():
    from ensemblecert import gaussian_radius

    assert gaussian_radius(0.5, 1.0) == 0.0
    assert gaussian_radius(0.7, 1.0) == 0.0
    assert gaussian_radius(np.nextafter(0.5, 0), 2.0) > 0.0
    assert gaussian_radius(stats.norm.sf(1.3), 0.5) == pytest.approx(0.65)
    assert gaussian_radius(1e-300, 1.0) == pytest.approx(stats.norm.isf(1e-300))  # finite far beyond float's 1 - p


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (57, 100), (9990, 10000), (10, 10)])
def test_the_upper_gap_is_one_minus_the_upper_bound(k, n):
    from ensemblecert import clopper_pearson_upper_gap

    assert clopper_pearson_upper_gap(k, n, 0.01) == pytest.approx(1 - clopper_pearson_upper(k, n, 0.01), abs=1e-12)
    # near 0 the gap keeps its digits: k = n - 1 gives 1 - upper = 1 - (1 - alpha)^(1/n) exactly
    n_big = 10**12
    exact = -math.expm1(math.log1p(-0.01) / n_big)
    assert clopper_pearson_upper_gap(n_big - 1, n_big, 0.01) == pytest.approx(exact, rel=1e-12)
