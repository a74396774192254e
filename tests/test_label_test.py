"""The label test (certified accuracy answered directly): its threshold tables against an independent
high-precision computation, soundness at the boundary under stopping after every draw (with a peeking variant the
harness must catch), several radii at one alpha, and its place in pipelines."""

from __future__ import annotations

import functools

import mpmath
import numpy as np
import pytest
import torch
from scipy import special, stats

from ensemblecert import ABSTAIN, ConfigError, MonteCarloSampler, certify_inputs, load_pipeline, run
from ensemblecert.plugins.confidence_sequences import (
    TAIL_ERROR,
    Tables,
    level,
    log_one_sided,
    look,
    one_sided_bound,
    thresholds,
)
from ensemblecert.plugins.label_test import LabelTest, largest_certifiable
from ensemblecert.plugins.noise import GaussianNoise
from ensemblecert.running.pipeline import check_pipeline
from ensemblecert.testing import HardSoftModel, IntervalModel, LinearModel, check_soundness

mpmath.mp.dps = 40


def exact_log_martingale(q: float, hits: int, draws: int) -> mpmath.mpf:
    """log M_t(q) of the Jeffreys mixture, in 40-digit arithmetic."""
    half = mpmath.mpf(1) / 2
    q = mpmath.mpf(q)
    return (
        mpmath.log(mpmath.beta(half + hits, half + draws - hits))
        - mpmath.log(mpmath.pi)
        - hits * mpmath.log(q)
        - (draws - hits) * mpmath.log(1 - q)
    )


def exact_thresholds(q: float, alpha: float, beta: float, draws: int) -> tuple[int, int]:
    """The least certifying and greatest refuting hit count after ``draws``, by scanning every hit count."""
    certify, refute = draws + 1, -1
    for s in range(draws + 1):
        value = exact_log_martingale(q, s, draws)
        if s > q * draws and value >= mpmath.log(1 / mpmath.mpf(alpha)) and certify > draws:
            certify = s
        if s < q * draws and value >= mpmath.log(1 / mpmath.mpf(beta)):
            refute = s
    return certify, refute


def exact_log_one_sided(q: float, hits: int, draws: int, above: bool) -> mpmath.mpf:
    """log M+_t(q) of the one-sided mixture (Jeffreys' prior truncated above or below q), in 40-digit arithmetic:
    the integrals of the mixture taken directly."""
    half, q = mpmath.mpf(1) / 2, mpmath.mpf(q)
    a, b = half + hits, half + draws - hits
    side = (q, 1) if above else (0, q)
    return (
        mpmath.log(mpmath.betainc(a, b, *side))
        - mpmath.log(mpmath.betainc(half, half, *side))
        - hits * mpmath.log(q)
        - (draws - hits) * mpmath.log(1 - q)
    )


def exact_one_sided_thresholds(q: float, alpha: float, beta: float, draws: int) -> tuple[int, int]:
    """The least certifying and greatest refuting hit count of the one-sided tests, by bisection over the hit count
    (each statistic is monotone in it: replacing a miss by a hit multiplies M+ above q by a posterior mean of
    ``p' (1 - q) / ((1 - p') q) > 1``)."""
    lo, hi = int(np.floor(q * draws)), draws + 1  # lo never certifies (S <= q t); hi stands for "none does"
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ok = exact_log_one_sided(q, mid, draws, True) >= mpmath.log(1 / mpmath.mpf(alpha))
        lo, hi = (lo, mid) if ok else (mid, hi)
    low, high = -1, int(np.ceil(q * draws))  # high never refutes; -1 stands for "none does"
    while high - low > 1:
        mid = (low + high) // 2
        ok = exact_log_one_sided(q, mid, draws, False) >= mpmath.log(1 / mpmath.mpf(beta))
        low, high = (mid, high) if ok else (low, mid)
    return hi, low


CASES = [(float(stats.norm.cdf(1.0)), 0.001, 0.001), (0.5, 0.05, 0.2)]


@pytest.mark.parametrize("q, alpha, beta", CASES)
def test_threshold_tables_equal_a_40_digit_computation(q, alpha, beta):
    certify, refute = thresholds(q, alpha, beta, 400)
    for t in [*range(1, 80), 97, 150, 233, 400]:
        assert (certify[t], refute[t]) == exact_thresholds(q, alpha, beta, t), t


@pytest.mark.parametrize("q, alpha, beta", CASES)
def test_one_sided_tables_equal_a_40_digit_computation(q, alpha, beta):
    certify, refute = thresholds(q, alpha, beta, 400, "one-sided")
    for t in [*range(1, 60, 3), 97, 150, 233, 400]:
        assert (certify[t], refute[t]) == exact_one_sided_thresholds(q, alpha, beta, t), t


@pytest.mark.parametrize("mixture", ["one-sided", "two-sided"])
def test_tables_started_from_interpolated_guesses_equal_a_plain_bisection(mixture):
    """The tables are bisected from guesses interpolated between every 64th count; a plain bisection of every
    wide bracket gives the same thresholds."""
    from ensemblecert.plugins import confidence_sequences as cs

    q, alpha, beta, draws = float(stats.norm.cdf(1.5)), 0.001, 0.01, 20_000
    t = np.arange(draws + 1, dtype=np.float64)
    t[0] = 1.0
    certify = cs._boundary(
        lambda s, i: (s > t[i]) | cs._certifies(q, np.minimum(s, t[i]), t[i], alpha, mixture), np.floor(q * t), t + 1
    )
    refute = cs._boundary(
        lambda s, i: (s >= 0) & ~cs._refutes(q, np.maximum(s, 0.0), t[i], beta, mixture),
        np.full_like(t, -1.0),
        np.ceil(q * t),
    )
    tables = thresholds(q, alpha, beta, draws, mixture)
    assert (tables[0][1:] == certify[1:]).all() and (tables[1][1:] == refute[1:] - 1).all()


@pytest.mark.parametrize("draws", [2_000, 20_000, 100_000])
def test_the_one_sided_statistic_is_within_its_error_allowance_at_many_draws(draws):
    """Near the thresholds of Phi(1), where decisions fall, scipy's regularised incomplete beta function is within
    a tenth of TAIL_ERROR of the 40-digit value in log, and log M+ within the allowance the tables add to the level
    (so they err towards undecided)."""
    q = float(stats.norm.cdf(1.0))
    certify, refute = thresholds(q, 0.001, 0.001, draws, "one-sided")
    for hits, above in [(int(certify[draws]), True), (int(certify[draws]) - 1, True), (int(refute[draws]), False)]:
        a, b = 0.5 + hits, 0.5 + draws - hits
        tail = special.betaincc(a, b, q) if above else special.betainc(a, b, q)
        exact_tail = (
            mpmath.betainc(a, b, q, 1, regularized=True) if above else mpmath.betainc(a, b, 0, q, regularized=True)
        )
        assert abs(np.log(tail) - float(mpmath.log(exact_tail))) < TAIL_ERROR / 10
        error = abs(log_one_sided(q, hits, draws, above) - float(exact_log_one_sided(q, hits, draws, above)))
        assert error < level(np.float64(hits), np.float64(draws), 0.001, "one-sided") - np.log(1000)


@pytest.mark.parametrize("mixture, first", [("two-sided", 55), ("one-sided", 47)])
def test_all_hits_certify_phi_one_after_55_draws_or_47_with_the_one_sided_test(mixture, first):
    """The issue's estimate: t all-correct draws reject p <= Phi(1) at alpha = 0.001 near t = 55; the one-sided
    mixture spends no prior mass below Phi(1) and needs 47."""
    certify, _ = thresholds(float(stats.norm.cdf(1.0)), 0.001, 0.001, 100, mixture)
    assert min(t for t in range(101) if certify[t] <= t) == first


def test_the_one_sided_bound_agrees_with_the_tables():
    """The bound recorded in a row and the tables decide alike: the least certifying hit count gives a lower bound
    above q, one hit fewer a bound at most q (and the mirror image for the upper bound)."""
    q = float(stats.norm.cdf(1.0))
    certify, refute = thresholds(q, 0.001, 0.01, 5000, "one-sided")
    for t in [60, 333, 5000]:
        assert one_sided_bound(int(certify[t]), t, 0.001) > q >= one_sided_bound(int(certify[t]) - 1, t, 0.001)
        high = one_sided_bound(int(refute[t]), t, 0.01, above=False)
        assert high < q <= one_sided_bound(int(refute[t]) + 1, t, 0.01, above=False)


def test_radii_are_certified_from_the_smallest_up_and_refuted_from_the_largest_down():
    """With one test per radius a larger radius's table may pass where a smaller one's does not: only the radii
    below the first never certified count, which keeps a certificate's error within alpha."""
    certify = np.array([[9, 9, 9, 9], [1, 1, 1, 1], [9, 9, 9, 9]])  # the middle row passes at once
    refute = np.full((3, 4), -1)
    assert look(0, 0, np.array([True, True, True]), certify, refute, 0, 0) == (3, 3, 0, 0)
    certify[0] = 2  # the smallest passes after two draws: now two radii count
    assert look(0, 0, np.array([True, True, True]), certify, refute, 0, 0) == (3, 3, 2, 0)
    refute = np.array([[-1] * 4, [5] * 4, [-1] * 4])  # the middle refutes; the largest does not: none refuted
    assert look(0, 0, np.array([False, False]), np.full((3, 4), 9), refute, 0, 0)[3] == 0


class Peeking(LabelTest):
    """Unsound on purpose: a fixed-n Clopper-Pearson bound looked at after every draw (no time-uniformity)."""

    def tables(self, sigma):
        return peeking_tables(tuple(self.radii), sigma, self.alpha, self.max_samples)


@functools.lru_cache
def peeking_tables(radii, sigma, alpha, max_samples):
    t = np.arange(max_samples + 1)
    certify = []
    for r in radii:
        q = stats.norm.cdf(r / sigma)
        s = np.arange(max_samples + 1)[:, None]
        lower = stats.beta.ppf(alpha, s, t[None, :] - s + 1)  # [S, t]
        ok = (s <= t[None, :]) & (lower > q)
        certify.append(np.where(ok.any(axis=0), ok.argmax(axis=0), t + 1))
    qs = tuple(float(stats.norm.cdf(r / sigma)) for r in radii)
    return Tables.of(qs, np.stack(certify), np.full((len(radii), max_samples + 1), -1))


REGIONS = ()  # only the bands just below each radius: where a certificate of that radius is wrong


@pytest.mark.parametrize("mixture", ["one-sided", "two-sided"])
def test_sound_at_the_boundary_with_a_look_after_every_draw_and_the_harness_catches_peeking(mixture):
    noise = GaussianNoise(0.5)
    sound = LabelTest(radii=[0.25, 0.5], alpha=0.05, beta=0.05, max_samples=600, batch=256, mixture=mixture)
    report = check_soundness(sound, noise, trials=400, regions=REGIONS, target_radii=[0.25, 0.5], batch_size=512)
    assert report.sound, str(report)
    if mixture == "two-sided":
        return  # the harness's power is shown once
    peeking = Peeking(radii=[0.25, 0.5], alpha=0.05, beta=0.05, max_samples=600, batch=256)
    report = check_soundness(peeking, noise, trials=400, regions=REGIONS, target_radii=[0.25, 0.5], batch_size=512)
    assert not report.sound, str(report)


@pytest.mark.parametrize(
    "model",
    [IntervalModel(6, [-1.0, 0.4, 1.5], seed=2), HardSoftModel(6, seed=3)],
    ids=["k-class", "hard-differs-from-soft"],
)
def test_sound_on_k_class_and_hard_versus_soft_models_with_three_radii_at_one_alpha(model):
    """Three radii share one confidence sequence: the miss rate stays within alpha itself (no split)."""
    certifier = LabelTest(radii=[0.0, 0.2, 0.4], alpha=0.1, beta=0.1, max_samples=500, batch=256)
    report = check_soundness(
        certifier, GaussianNoise(0.5), model=model, trials=250, target_radii=[0.2, 0.4], batch_size=512
    )
    assert report.sound, str(report)


def test_decides_at_the_draw_that_decides_whatever_the_batch():
    """The certificate and the draws spent do not depend on the sampler's batch size: batches only group draws."""
    model = LinearModel(8, seed=1)
    noise = GaussianNoise(0.5)
    xs = [model.point_with_top_probability(p, 0.5, seed=i) for i, p in enumerate([0.995, 0.9, 0.7, 0.3])]
    labels = [model.smoothed_class(x, 0.5) for x in xs]
    labels[3] = 1 - labels[3]  # a wrong label: refuted at once
    runs = []
    certifier = LabelTest(radii=[0.25, 0.5, 1.0], alpha=0.001, beta=0.001, max_samples=20_000, batch=1024)
    for batch in (50, 1000):
        sampler = MonteCarloSampler(model, noise, num_classes=2, batch_size=batch)
        runs.append(certify_inputs(certifier, sampler, xs, labels=labels))
    assert runs[0] == runs[1]
    confident, _, _, wrong = runs[0]
    assert confident.prediction == labels[0] and confident.radius == 1.0 and confident.samples < 2000
    assert wrong.prediction == ABSTAIN and wrong.samples < 40


def test_an_input_gets_the_certificate_it_gets_alone_in_any_company():
    """Batches are filled with many undecided inputs' draws: each input's certificate equals the one it gets
    certified alone (``decide``), whichever inputs share its batches and in whichever order they come."""
    from ensemblecert import decide

    model = LinearModel(8, seed=4)
    noise = GaussianNoise(0.5)
    xs = [model.point_with_top_probability(0.55 + 0.044 * i, 0.5, seed=i) for i in range(10)]
    labels = [model.smoothed_class(x, 0.5) for x in xs]
    certifier = LabelTest(radii=[0.0, 0.25, 0.5], alpha=0.01, beta=0.01, max_samples=5000, batch=512)
    sampler = MonteCarloSampler(model, noise, num_classes=2, batch_size=700)
    together = certify_inputs(certifier, sampler, xs, labels=labels, seed=3)
    order = [7, 2, 9, 0, 5]
    some = certify_inputs(certifier, sampler, [xs[i] for i in order], labels=[labels[i] for i in order],
                          indices=order, seed=3)  # fmt: skip
    assert some == [together[i] for i in order]
    from ensemblecert import input_generator

    alone = [decide(sampler, xs[i], certifier.decision(0.5, labels[i]), input_generator(3, i)) for i in range(10)]
    assert alone == together


def test_a_label_certifier_needs_labels():
    model = LinearModel(4)
    with pytest.raises(ValueError, match="pass labels="):
        certify_inputs(LabelTest(), model, [torch.zeros(4)], GaussianNoise(0.5), num_classes=2)


def test_in_a_pipeline_its_rows_certify_the_true_label(tiny_pipeline):
    tiny_pipeline["certification"]["certifiers"] = [
        {"name": "cohen", "n0": 20, "n": 200, "alpha": 0.01},
        {"name": "label_test", "radii": [0.0, 0.25], "alpha": 0.01, "beta": 0.01, "max_samples": 2000},
    ]
    result = run(tiny_pipeline)
    for r in result.results:
        cert = r.outcomes["label_test"].certificate
        assert cert.prediction in (ABSTAIN, r.label) and cert.samples <= 2000
    summary = result.summary.certifiers["label_test"]
    assert summary.given_label and not result.summary.certifiers["cohen"].given_label
    assert "true label" in (result.output / "report.md").read_text()


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"alpha": 1.5}, "alpha"),
        ({"beta": 0.0}, "beta"),
        ({"radii": []}, "must list at least one of the radii"),
        ({"radii": [0.5, 0.25]}, "strictly increasing order"),
        ({"radii": [0.25, 3.0], "max_samples": 1000}, "radius 3 can never be certified"),
    ],
)
def test_hostile_settings_get_one_clear_message(spec, expected):
    data = {"certification": {"certifiers": [{"name": "label_test", **spec}]}}
    with pytest.raises(ConfigError, match=expected) as caught:
        check_pipeline(load_pipeline(data)[0])  # field checks while loading, the noise check after
    assert "certification.certifiers[0]" in str(caught.value) and len(caught.value.problems) == 1


def test_the_reach_of_the_sample_cap_is_a_little_below_certifys():
    """All 100,000 draws hits: CERTIFY reaches 0.25 PhiInv(0.001^(1/100000)) = 0.950; the time-uniform sequence pays
    a little for looking after every draw."""
    reach = largest_certifiable(0.25, 0.001, 100_000)
    certify = 0.25 * stats.norm.ppf(0.001 ** (1 / 100_000))
    assert 0.9 * certify < reach < certify
    certify_table, _ = thresholds(float(stats.norm.cdf(reach / 0.25)) - 1e-9, 0.001, 0.001, 100_000, "one-sided")
    assert certify_table[100_000] <= 100_000  # the table agrees: all hits certify there


def test_the_schedule_draws_little_past_the_deciding_draw():
    """Each input is asked for the draws that must pass before it could be certified (47 all-hit draws at
    r = sigma, alpha = 0.001, with the one-sided test) and then at least a quarter of what it has drawn: a sure
    input spends exactly its 47 draws, and a confident one at most a quarter more than it looks at."""
    from ensemblecert.plugins.confidence_sequences import GROWTH

    model, noise = LinearModel(8, seed=5), GaussianNoise(0.25)
    certifier = LabelTest(radii=[0.25], alpha=0.001, beta=0.001, max_samples=10_000, batch=4096)
    for p, expected in [(1 - 1e-12, 47), (0.97, None)]:
        x = model.point_with_top_probability(p, 0.25, seed=1)
        sampler = MonteCarloSampler(model, noise, num_classes=2, batch_size=4096)
        [cert] = certify_inputs(certifier, sampler, [x], labels=[model.smoothed_class(x)])
        assert cert.radius == 0.25
        assert expected is None or cert.samples == expected
        assert cert.samples <= sampler.usage.draws <= cert.samples + np.ceil(GROWTH * cert.samples)
