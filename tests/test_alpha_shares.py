"""Deterministic checks that each bound is computed at its share of alpha, from given counts, against formulas
written here independently (scipy's Beta and normal quantiles, Hoeffding's width), and that bounds and radii err
outwards where floating point could push them inwards."""

import math

import mpmath as mp
import numpy as np
import pytest
import torch
from scipy import stats

from ensemblecert import ABSTAIN, Certificate, Tally, build_component, load_registry
from ensemblecert.plugins.certify_adp import CertifyAdp
from ensemblecert.plugins.confidence_sequences import confidence_sequence, log_mixture
from ensemblecert.plugins.noise import GaussianNoise
from ensemblecert.plugins.sequential import Sequential, Stop
from ensemblecert.plugins.simplex.mechanisms import dp
from ensemblecert.smoothing.results import ExampleResult, Outcome, summarize

REGISTRY = load_registry()
SIGMA = 0.5


class Scripted:
    """Answers each tally with the next scripted counts and mean softmax outputs (no sampling)."""

    def __init__(self, *draws):
        self.script = list(draws)
        self.noise = GaussianNoise(SIGMA)
        self.num_classes = len(draws[0][0])

    def tally(self, x, n, *, generator=None, softmax=False, members=False, sequence=False):
        counts, means = self.script.pop(0)
        counts = torch.tensor(counts)
        assert int(counts.sum()) == n
        prob_sums = torch.tensor(means, dtype=torch.float64) * n if means is not None else None
        order = torch.repeat_interleave(torch.arange(len(counts)), counts) if sequence else None  # class by class
        return Tally(n=n, counts=counts, evaluations=n, prob_sums=prob_sums, sequence=order)


def cp_lower(k, n, level):
    return stats.beta.ppf(level, k, n - k + 1)


def cp_upper(k, n, level):
    return stats.beta.ppf(1 - level, k + 1, n - k)


def certifier(**spec):
    return build_component("certifier", spec, REGISTRY)


def below(value, exact):
    """``value`` is a lower bound computed outwards: at most ``exact``, and within 1e-9 relative of it."""
    return exact * (1 - 1e-9) < value <= exact


def above(value, exact):
    """``value`` is an upper bound computed outwards: at least ``exact``, and within 1e-9 relative of it."""
    return exact <= value < exact * (1 + 1e-9)


SELECTION = ([2, 15, 3], [0.1, 0.8, 0.1])  # n0 = 20: class 1
ESTIMATION = ([130, 780, 90], [0.14, 0.76, 0.10])  # n = 1000


@pytest.mark.parametrize("name", ["cohen_two_sided", "dp", "lecuyer", "best"])
def test_multinomial_bounds_are_at_their_shares(name):
    alpha = 0.02
    cert = certifier(name=name, n0=20, n=1000, alpha=alpha).certify(Scripted(SELECTION, ESTIMATION), None)
    e0 = cp_lower(780, 1000, alpha / 2)  # E0 at alpha / 2
    e1 = max(cp_upper(130, 1000, alpha / 4), cp_upper(90, 1000, alpha / 4))  # E1: alpha / 2 over K - 1 = 2 classes
    assert below(cert.details["e0"], e0) and above(cert.details["e1"], e1)
    assert cert.prediction == 1
    if name == "cohen_two_sided":
        assert below(cert.radius, SIGMA / 2 * (stats.norm.ppf(e0) - stats.norm.ppf(e1)))


@pytest.mark.parametrize("name", ["cohen_two_sided", "cohen", "dp"])
def test_softmax_bounds_are_at_their_shares(name):
    alpha = 0.02
    cert = certifier(name=name, n0=20, n=1000, alpha=alpha, expectation="softmax").certify(
        Scripted(SELECTION, ESTIMATION), None
    )
    e0 = 0.76 - math.sqrt(math.log(2 / alpha) / 2000)  # Hoeffding at alpha / 2
    e1 = 0.14 + math.sqrt(math.log(4 / alpha) / 2000)  # at alpha / 4 for each of the two other classes
    assert below(cert.details["e0"], e0) and above(cert.details["e1"], e1)
    if name == "cohen":
        assert below(cert.radius, SIGMA * stats.norm.ppf(e0))


def test_best_shares_one_pair_of_bounds_among_its_members():
    cert = certifier(name="best", n0=20, n=1000, alpha=0.02).certify(Scripted(SELECTION, ESTIMATION), None)
    alone = certifier(name="dp", n0=20, n=1000, alpha=0.02).certify(Scripted(SELECTION, ESTIMATION), None)
    assert cert.details["r_dp"] == alone.radius  # no further split of alpha


def test_certify_bounds_at_alpha():
    cert = certifier(name="cohen", n0=20, n=1000, alpha=0.02).certify(
        Scripted(([2, 15, 3], None), ([130, 780, 90], None)), None
    )
    p_lower = cp_lower(780, 1000, 0.02)
    assert below(cert.details["p_lower"], p_lower)
    assert below(cert.radius, SIGMA * stats.norm.ppf(p_lower))


def test_certify_adp_bounds_each_stage_at_its_share_and_counts_the_selected_class():
    # the selection picks class 0; the stage's most frequent class is 1. Stage 1 of 3 tests the target at
    # alpha / 3 (lower) and beta / 2 (upper) on class 0's count.
    adp = CertifyAdp(radius=0.1, n0=10, stages=[1000, 2000, 4000], alpha=0.03, beta=0.02)
    cert = adp.certify(Scripted(([10, 0, 0], None), ([400, 600, 0], None)), None)
    assert cert.details["count"] == 400
    assert below(cert.details["p_lower"], cp_lower(400, 1000, 0.01))
    assert above(cert.details["p_upper"], cp_upper(400, 1000, 0.01))
    assert cert.prediction == ABSTAIN and cert.details["stage"] == 1  # class 0 at 0.4 cannot reach 0.1
    # stages 1 and 2 cannot decide; at stage 3 the most frequent class (1) would certify, the selected one abstains
    cert = adp.certify(
        Scripted(([10, 0, 0], None), ([560, 440, 0], None), ([1180, 820, 0], None), ([1700, 2300, 0], None)), None
    )
    assert [cert.details["count"], cert.details["stage"]] == [1700, 3]
    assert cert.prediction == ABSTAIN
    assert below(cert.details["p_lower"], cp_lower(1700, 4000, 0.01))
    cert = adp.certify(
        Scripted(([10, 0, 0], None), ([560, 440, 0], None), ([1180, 820, 0], None), ([2400, 1600, 0], None)), None
    )
    assert [cert.prediction, cert.radius, cert.details["count"]] == [0, 0.1, 2400]


def exact_sequence_bound(hits, draws, alpha, side):
    """The confidence sequence's end at 50 digits: where log M_t(p) = log(1 / alpha), by bisection."""
    mp.mp.dps = 50
    a = b = mp.mpf(1) / 2
    level = mp.log(1 / mp.mpf(alpha))

    def inside(p):
        return (
            mp.log(mp.beta(a + hits, b + draws - hits))
            - mp.log(mp.beta(a, b))
            - hits * mp.log(p)
            - (draws - hits) * mp.log(1 - p)
            - level
        )

    centre = mp.mpf(hits) / draws
    lo, hi = (mp.mpf(10) ** -30, centre) if side == "lower" else (centre, 1 - mp.mpf(10) ** -30)
    for _ in range(200):
        mid = (lo + hi) / 2
        if (inside(mid) < 0) == (side == "lower"):
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


@pytest.mark.parametrize(
    "hits, draws, alpha",
    [(3104, 117174, 0.00025947231939728744), (730, 1000, 0.01), (99_990, 100_000, 0.001), (5, 40, 0.2)],
)
def test_sequential_bounds_err_outwards(hits, draws, alpha):
    lower, upper = confidence_sequence(hits, draws, alpha)
    assert lower <= exact_sequence_bound(hits, draws, alpha, "lower")
    assert upper >= exact_sequence_bound(hits, draws, alpha, "upper")
    assert exact_sequence_bound(hits, draws, alpha, "lower") - lower < 1e-9  # and not by much


def test_sequential_certifies_from_alpha_and_stops_early_only_at_beta():
    # alpha and beta differ, so using one for the other shows
    seq = Sequential(n0=10, batch=1000, max_samples=1000, alpha=0.001, beta=0.3, tolerance=1e-6)  # to the cap
    cert = seq.certify(Scripted(([10, 0], None), ([930, 70], None)), None)
    lower_alpha = float(exact_sequence_bound(930, 1000, 0.001, "lower"))
    assert cert.details["p_lower"] == pytest.approx(lower_alpha, rel=1e-9)
    assert cert.details["p_upper"] == pytest.approx(float(exact_sequence_bound(930, 1000, 0.3, "upper")), rel=1e-9)
    assert cert.radius == pytest.approx(SIGMA * stats.norm.ppf(lower_alpha), rel=1e-8)
    # q = Phi(0.25 / 0.5) = 0.6915: 745 / 1000 leaves it inside the sequence at alpha = 0.001 but not at 0.3, so
    # the target is not certified yet (a certifier that tested the target at beta would stop here)
    q = stats.norm.cdf(0.5)
    assert math.log(1 / 0.3) < log_mixture(q, 745, 1000) < math.log(1 / 0.001)
    assert Sequential(radius=0.25, alpha=0.001, beta=0.3).decide(745, 1000, SIGMA) is None
    assert Sequential(radius=0.25, alpha=0.3, beta=0.001).decide(745, 1000, SIGMA) is Stop.TARGET


def miss_rate(bounds, *, p=0.8, paths=200, looks=40, batch=20, seed=0):
    """The share of simulated paths on which ``bounds(hits, draws)``'s lower end exceeds the true ``p`` at any look."""
    rng = np.random.default_rng(seed)
    hits = rng.binomial(batch, p, size=(paths, looks)).cumsum(axis=1)
    missed = 0
    for path in hits:
        missed += any(bounds(int(h), batch * (t + 1))[0] > p for t, h in enumerate(path))
    return missed / paths


class PeekingSequential(Sequential):
    """Wrong: a fixed-n Clopper-Pearson bound, looked at after every batch."""

    def bounds(self, hits, draws):
        return float(stats.beta.ppf(self.alpha, hits, draws - hits + 1)), 1.0


def test_anytime_validity_holds_for_the_sequence_and_fails_for_peeking():
    alpha = 0.1
    assert miss_rate(Sequential(alpha=alpha).bounds) <= alpha
    assert miss_rate(PeekingSequential(alpha=alpha).bounds) > 2 * alpha


def test_dp_never_exceeds_the_neyman_pearson_ceiling_at_near_ties():
    mp.mp.dps = 40
    for e1 in (0.01, 0.1, 0.3, 0.45):
        for gap in (1e-9, 1e-8, 1e-6, 1e-3):
            e0 = e1 + gap
            ceiling = (
                SIGMA / 2 * (mp.sqrt(2) * mp.erfinv(2 * mp.mpf(e0) - 1) - mp.sqrt(2) * mp.erfinv(2 * mp.mpf(e1) - 1))
            )
            radius = float(dp(e0, e1, SIGMA))
            assert 0 < radius <= ceiling, (e0, e1)
            assert radius > 0.99 * float(ceiling)  # dp is near the ceiling at ties: the slack costs little


@pytest.mark.parametrize("radius", [0.25, 0.0])
def test_certified_accuracy_counts_radii_equal_to_r(radius):
    # the radius is exactly r: certified at r (radius >= r), which `radius > r` would miss
    results = [
        ExampleResult(0, 1, {"m": Outcome(Certificate(1, radius, 10), 0.1)}),
        ExampleResult(1, 1, {"m": Outcome(Certificate(1, 0.1, 10), 0.1)}),
    ]
    summary = summarize(results, ["m"], [radius]).certifiers["m"]
    assert summary.certified_accuracy[radius] == (1.0 if radius == 0.0 else 0.5)


def exact_beta_quantile(q, a, b):
    """The ``q`` quantile of ``Beta(a, b)`` at 40 digits, by bisection on the regularized incomplete beta function."""
    mp.mp.dps = 40
    lo, hi = mp.mpf(0), mp.mpf(1)
    for _ in range(150):
        mid = (lo + hi) / 2
        if mp.betainc(a, b, 0, mid, regularized=True) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


CASES = [
    (780, 1000, 0.01),
    (1, 100, 0.001),
    (99, 100, 0.001),
    (9990, 10000, 1e-5),
    (50, 100, 0.05),
    (3, 20, 0.2),
    (99_999, 100_000, 0.0005),
    (4321, 5000, 0.003),
]


@pytest.mark.parametrize("k, n, alpha", CASES)
def test_clopper_pearson_bounds_and_radii_err_outwards(k, n, alpha):
    from ensemblecert import (
        clopper_pearson_lower,
        clopper_pearson_lower_gap,
        clopper_pearson_upper,
        clopper_pearson_upper_gap,
        gaussian_radius,
    )

    lower = exact_beta_quantile(mp.mpf(alpha), k, n - k + 1)
    upper = exact_beta_quantile(1 - mp.mpf(alpha), k + 1, n - k)
    assert lower * (1 - mp.mpf(1e-9)) < clopper_pearson_lower(k, n, alpha) <= lower
    assert 1 - lower <= clopper_pearson_lower_gap(k, n, alpha) < (1 - lower) * (1 + mp.mpf(1e-9))
    assert upper <= clopper_pearson_upper(k, n, alpha) < upper * (1 + mp.mpf(1e-9))
    assert (1 - upper) * (1 - mp.mpf(1e-9)) < clopper_pearson_upper_gap(k, n, alpha) <= 1 - upper
    if lower > 0.5:
        exact_radius = SIGMA * mp.sqrt(2) * mp.erfinv(2 * lower - 1)
        assert gaussian_radius(clopper_pearson_lower_gap(k, n, alpha), SIGMA) <= exact_radius


# ------------------------------------------------------------------------------------ randomized Clopper-Pearson
@pytest.mark.parametrize("n, p", [(50, 0.9), (40, 0.75)])
def test_the_randomized_bound_exceeds_p_with_probability_alpha_over_the_draws_and_the_uniform(n, p):
    """Over the binomial draws and the uniform, P(L > p) = alpha exactly: the implementation's decision at each
    (k, u) on a grid equals the exact randomized test's (``(1 - u) P_p(X > k) + u P_p(X >= k) < alpha``), and the
    grid average is alpha within the grid's resolution."""
    from ensemblecert import randomized_clopper_pearson_lower_gap as gap

    alpha, grid = 0.05, (np.arange(200) + 0.5) / 200
    total = 0.0
    for k in range(n + 1):
        a, b = stats.binom.sf(k, n, p), stats.binom.sf(k - 1, n, p)
        exact = (1 - grid) * a + grid * b < alpha
        if stats.binom.pmf(k, n, p) < 1e-9 or exact.all() or not exact.any() and k < n * p - 3 * math.sqrt(n):
            total += stats.binom.pmf(k, n, p) * exact.mean()
            continue
        found = np.array([gap(k, n, alpha, float(u)) < 1 - p for u in grid])
        assert (found == exact).mean() >= 0.99, k  # equal except within rounding of the boundary
        total += stats.binom.pmf(k, n, p) * found.mean()
    assert total == pytest.approx(alpha, abs=2.5e-3) and total <= alpha + 2.5e-3


def test_the_randomized_bound_is_clopper_pearsons_at_u_1_and_grows_as_u_falls():
    from ensemblecert import clopper_pearson_lower_gap
    from ensemblecert import randomized_clopper_pearson_lower_gap as gap

    for k, n in [(90, 100), (100, 100), (3, 10), (99_990, 100_000)]:
        cp = clopper_pearson_lower_gap(k, n, 0.001)
        gaps = [gap(k, n, 0.001, u) for u in (1.0, 0.7, 0.3, 0.01)]
        assert gaps[0] == pytest.approx(cp, rel=1e-9) and gaps[0] >= cp  # equal, erring outwards
        assert all(b < a for a, b in zip(gaps, gaps[1:]))  # a smaller u: a smaller gap, a larger bound
        if k < n:
            assert gaps[-1] > clopper_pearson_lower_gap(k + 1, n, 0.001)  # never beyond one more success
    assert gap(0, 10, 0.01, 0.5) == 1.0 and gap(10, 10, 0.01, 0.005) > 0  # all hits, u below alpha: finite
