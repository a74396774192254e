"""The anytime-valid sequential certifier: the confidence sequence, its decisions, and soundness at any stop."""

import math

import attrs
import numpy as np
import pytest
from scipy import special, stats

from ensemblecert import ABSTAIN, Certificate, clopper_pearson_lower
from ensemblecert.plugins.confidence_sequences import confidence_sequence, excludes, log_mixture
from ensemblecert.plugins.noise import GaussianNoise
from ensemblecert.plugins.sequential import Sequential, Stop
from ensemblecert.testing import IntervalModel, check_soundness


def test_all_hits_has_a_closed_form():
    # S = t = n: M_n(p) = B(1/2 + n, 1/2) / (B(1/2, 1/2) p^n) = 1 / alpha at p = (alpha B(n + 1/2, 1/2) / pi)^(1/n)
    for n in (10, 1000, 100_000):
        lower, upper = confidence_sequence(n, n, 0.001)
        expected = math.exp((math.log(0.001) + special.betaln(n + 0.5, 0.5) - math.log(math.pi)) / n)
        assert lower == pytest.approx(expected, rel=1e-12) and lower <= expected and upper == 1.0


def test_the_interval_is_where_the_martingale_stays_below_one_over_alpha():
    lower, upper = confidence_sequence(730, 1000, 0.01)
    assert lower < 0.73 < upper
    assert log_mixture(lower, 730, 1000) == pytest.approx(math.log(100), abs=1e-6)
    assert log_mixture(upper, 730, 1000) == pytest.approx(math.log(100), abs=1e-6)
    assert log_mixture(0.73, 730, 1000) < math.log(100)
    # wider than the fixed-n Clopper-Pearson bound: the price of being valid at every look
    assert lower < clopper_pearson_lower(730, 1000, 0.01)


def test_coverage_holds_uniformly_over_time_where_repeated_clopper_pearson_fails():
    rng = np.random.default_rng(0)
    p, alpha, paths, looks, batch = 0.8, 0.1, 2000, 200, 10
    hits = rng.binomial(batch, p, size=(paths, looks)).cumsum(axis=1)
    draws = np.broadcast_to(batch * np.arange(1, looks + 1), hits.shape)
    left = log_mixture(p, hits, draws) >= math.log(1 / alpha)  # p outside the sequence at that look
    sequence_miss = np.any(left, axis=1).mean()
    cp_miss = np.any(clopper_pearson_lower(hits, draws, alpha) > p, axis=1).mean()
    assert sequence_miss <= alpha  # Ville: at most alpha of paths ever leave the sequence
    assert cp_miss > 2 * alpha  # looking at a fixed-n bound after every batch is not valid
    assert excludes(0.5, 700, 1000, 0.01) and not excludes(0.7, 700, 1000, 0.01)


def test_decisions():
    target = Sequential(radius=0.25, alpha=0.01, beta=0.01)
    need = stats.norm.cdf(1.0)  # sigma = 0.25
    for hits, draws, expected in [
        (1000, 1000, Stop.TARGET),
        (600, 1000, Stop.UNREACHABLE),
        (850, 1000, None),
        (83_000, 100_000, Stop.UNREACHABLE),
        (90_000, 100_000, Stop.TARGET),
    ]:
        assert target.decide(hits, draws, 0.25) is expected, (hits, draws)
        lower, _ = confidence_sequence(hits, draws, 0.01)
        _, upper = confidence_sequence(hits, draws, 0.01)
        assert (expected is Stop.TARGET) == (lower >= need)  # the shortcut agrees with the solved bounds
        assert (expected is Stop.UNREACHABLE) == (upper < need)
    free = Sequential(alpha=0.01, beta=0.01, tolerance=0.02)
    assert free.decide(400, 1000, 0.25) is Stop.HOPELESS
    assert free.decide(900, 1000, 0.25) is None
    for hits, draws in [(900, 1000), (9_000, 10_000), (90_000, 100_000)]:
        lower, _ = confidence_sequence(hits, draws, 0.01)
        _, upper = confidence_sequence(hits, draws, 0.01)
        width = 0.25 * (stats.norm.ppf(upper) - stats.norm.ppf(lower))
        assert (free.decide(hits, draws, 0.25) is Stop.PRECISE) == (width <= 0.02), (hits, draws, width)
    assert Sequential(alpha=0.01, tolerance=1e-4).decide(90_000, 100_000, 0.25) is Stop.CAP
    assert Sequential(alpha=0.01, max_samples=1000).decide(900, 1000, 0.25) is Stop.CAP


@pytest.mark.parametrize("radius", [None, 0.25])
def test_sequential_is_sound_whatever_it_stops_on(radius):
    # many looks (batches of 20) make optional stopping bite if the bound were not time-uniform
    seq = Sequential(radius=radius, n0=20, batch=20, max_samples=1000, alpha=0.1, beta=0.1, tolerance=0.1)
    report = check_soundness(seq, GaussianNoise(0.5), target_radii=[0.25] if radius else [], trials=300)
    assert report.sound, str(report)
    assert report.certified > 300


def test_sequential_is_sound_on_a_k_class_model():
    model = IntervalModel(16, [-0.5, 0.0, 0.35, 1.1], seed=0)
    seq = Sequential(radius=0.2, n0=20, batch=20, max_samples=1000, alpha=0.1, beta=0.1)
    assert check_soundness(seq, GaussianNoise(0.5), model=model, target_radii=[0.2], trials=200).sound


@attrs.frozen
class PeekingCertify(Sequential):
    """Wrong: the fixed-n Clopper-Pearson bound after every batch, stopping as soon as it reaches the target."""

    stepwise = False  # draws for itself in certify()

    def certify(self, smoothed, x, generator=None):
        top = smoothed.tally(x, self.n0, generator=generator).top
        hits = draws = 0
        sigma = smoothed.noise.sigma
        while draws < self.max_samples:
            hits += int(smoothed.tally(x, self.batch, generator=generator).counts[top])
            draws += self.batch
            lower = float(clopper_pearson_lower(hits, draws, self.alpha))
            if lower > 0.5 and sigma * stats.norm.ppf(lower) >= self.radius:
                return Certificate(top, self.radius, self.n0 + draws)
        return Certificate(ABSTAIN, 0.0, self.n0 + draws)


def test_the_harness_catches_peeking_at_a_fixed_n_bound():
    wrong = PeekingCertify(radius=0.25, n0=20, batch=20, max_samples=1000, alpha=0.1)
    report = check_soundness(wrong, GaussianNoise(0.5), regions=(), target_radii=[0.25], trials=600)
    assert not report.sound, str(report)


def test_sequential_in_a_pipeline(tiny_pipeline):
    from ensemblecert import run

    tiny_pipeline["certification"]["certifiers"] = [
        {"name": "sequential", "radius": 0.25, "n0": 20, "batch": 50, "max_samples": 1000, "alpha": 0.01}
    ]
    result = run(tiny_pipeline)
    samples = [r.outcomes["sequential"].certificate.samples for r in result.results]
    assert all(20 < s <= 1020 for s in samples)
    assert min(samples) < 1020 and any((s - 20) % 50 for s in samples)  # some stop early, at the deciding draw


def test_with_a_target_it_stops_at_the_first_draw_that_decides():
    """The stepwise sequential certifier looks after every draw: its certificate counts exactly n0 plus the draws up
    to the first at which decide() stops, on the very draws of the input's one noise stream."""
    import torch

    from ensemblecert import MonteCarloSampler, certify_inputs, input_generator
    from ensemblecert.testing import LinearModel

    model, sigma = LinearModel(8, seed=5), 0.5
    seq = Sequential(radius=0.25, n0=20, batch=256, max_samples=3000, alpha=0.01, beta=0.01)
    xs = [model.point_with_top_probability(p, sigma, seed=i) for i, p in enumerate([0.99, 0.8, 0.7, 0.6, 0.3])]
    sampler = MonteCarloSampler(model, GaussianNoise(sigma), num_classes=2, batch_size=500)
    certs = certify_inputs(seq, sampler, xs, seed=7)
    for i, (x, cert) in enumerate(zip(xs, certs)):
        draws = sampler.tally(x, 20 + 3000, generator=input_generator(7, i), sequence=True).sequence
        top = int(torch.bincount(draws[:20]).argmax())
        hits = (draws[20:] == top).cumsum(0).tolist()
        stop = next(t for t in range(1, 3001) if seq.decide(hits[t - 1], t, sigma) is not None)
        assert cert.samples == 20 + stop, i
