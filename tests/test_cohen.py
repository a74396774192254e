"""Cohen's CERTIFY: closed-form radius, soundness against an exactly known smoothed classifier, PREDICT."""

import math

import pytest
import torch
from scipy import stats

from ensemblecert import ABSTAIN, Certificate, Certifier, MonteCarloSampler, certify, input_generator
from ensemblecert.plugins.cohen import Cohen, cohen_radius
from ensemblecert.plugins.noise import GaussianNoise
from ensemblecert.testing import LinearModel, check_soundness


def test_radius_formula():
    assert cohen_radius(0.5, 1.0) == 0.0
    assert cohen_radius(stats.norm.cdf(1.3), 0.5) == pytest.approx(0.65)
    p_low, r = Cohen(alpha=0.001).radius(10_000, 10_000, 0.25)
    assert p_low == pytest.approx(0.001 ** (1 / 10_000))
    assert r == pytest.approx(0.25 * stats.norm.ppf(p_low))


def test_cohen_is_sound_on_a_linear_model():
    # Small n and a large alpha make over-claiming likely if the bound were wrong.
    report = check_soundness(Cohen(n0=20, n=100, alpha=0.1), GaussianNoise(sigma=0.5), trials=1500)
    assert report.sound, str(report)
    assert report.certified > 500  # the test exercised many certificates, not only abstentions


@pytest.mark.parametrize("sigma", [0.12, 1.0])
def test_cohen_is_sound_at_other_scales(sigma):
    report = check_soundness(Cohen(n0=10, n=50, alpha=0.2), GaussianNoise(sigma=sigma), trials=800, seed=3)
    assert report.sound, str(report)


class PointEstimate(Certifier):
    """A broken certifier: uses the empirical frequency instead of a lower confidence bound."""

    def certify(self, smoothed, x, generator=None):
        tally = smoothed.tally(x, 100, generator=generator)
        p = float(tally.counts[tally.top]) / 100
        if p <= 0.5:
            return Certificate(ABSTAIN, 0.0, 100)
        p = min(p, 1 - 1e-6)
        return Certificate(tally.top, smoothed.noise.sigma * stats.norm.ppf(p), 100)


def test_the_soundness_check_catches_an_overclaiming_certifier():
    report = check_soundness(PointEstimate(), GaussianNoise(sigma=0.5), alpha=0.1, trials=600)
    assert not report.sound, str(report)


def test_linear_model_closed_form_matches_sampling():
    model = LinearModel(8, seed=1)
    x = model.point_at(0.3, seed=0)
    sampler = MonteCarloSampler(model, GaussianNoise(0.5), num_classes=2, batch_size=50_000)
    tally = sampler.tally(x, 200_000, generator=input_generator(0, 0))
    assert float(tally.counts[1]) / 200_000 == pytest.approx(model.smoothed_probability(x, 0.5), abs=0.005)
    assert model.exact_radius(x) == pytest.approx(0.3, abs=1e-5)


def test_certify_api_with_a_plain_classifier():
    model = LinearModel(4, seed=2)
    xs = torch.stack([model.point_at(m, seed=i) for i, m in enumerate([2.0, -2.0, 0.0])])
    certs = certify(Cohen(n0=50, n=2000, alpha=0.001), model, xs, GaussianNoise(1.0), batch_size=500)
    assert [c.prediction for c in certs[:2]] == [1, 0]
    assert all(0 < c.radius <= 2.0 for c in certs[:2])
    assert certs[2].prediction == ABSTAIN and certs[2].radius == 0.0
    assert all(c.samples == 2050 for c in certs)


def test_predict_abstains_near_the_boundary_and_answers_far_from_it():
    model = LinearModel(4, seed=2)
    sampler = MonteCarloSampler(model, GaussianNoise(1.0), num_classes=2)
    cohen = Cohen(n=1000, alpha=0.001)
    assert cohen.predict(sampler, model.point_at(3.0, seed=0), input_generator(0, 1)) == 1
    assert cohen.predict(sampler, model.point_at(0.0, seed=0), input_generator(0, 2)) == ABSTAIN


def test_cohen_refuses_non_gaussian_noise():
    class Uniform(GaussianNoise):
        family = "uniform"

    assert "Gaussian" in Cohen().check_noise(Uniform(0.5))
    assert Cohen().check_noise(GaussianNoise(0.5)) is None
    assert not math.isnan(Cohen().radius(60, 100, 1.0)[0])
