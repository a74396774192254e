"""Cohen's CERTIFY: closed-form radius, soundness against an exactly known smoothed classifier, PREDICT."""

import copy
import math

import pytest
import torch
from scipy import stats
from torch import nn

from conftest import Scripted
from ensemblecert import ABSTAIN, Certificate, Certifier, MonteCarloSampler, certify_inputs, input_generator
from ensemblecert.plugins.cohen import Cohen, cohen_radius
from ensemblecert.plugins.noise import GaussianNoise
from ensemblecert.testing import LinearModel, check_soundness


def test_radius_formula():
    assert cohen_radius(0.5, 1.0) == 0.0
    assert cohen_radius(stats.norm.cdf(1.3), 0.5) == pytest.approx(0.65)
    p_low, r = Cohen(alpha=0.001).radius(10_000, 10_000, 0.25)
    assert p_low == pytest.approx(0.001 ** (1 / 10_000))
    assert r == pytest.approx(0.25 * stats.norm.ppf(p_low))


@pytest.mark.parametrize("n, alpha", [(10**7, 0.2), (10**9, 0.5), (10**12, 0.05), (10**20, 0.001)])
def test_radius_is_exact_near_p_one(n, alpha):
    # All n draws agree: the lower bound is alpha^(1/n), so 1 - p_lower = -expm1(log(alpha) / n) exactly.
    # Through p_lower itself the radius is off by up to 1e-7 relative (too large), or infinite at 1e20.
    gap = -math.expm1(math.log(alpha) / n)
    exact = 0.25 * stats.norm.isf(gap)
    p_lower, radius = Cohen(alpha=alpha).radius(n, n, 0.25)
    assert math.isfinite(radius)
    assert radius == pytest.approx(exact, rel=1e-13)
    assert radius <= exact * (1 + 1e-14)
    assert p_lower == pytest.approx(1 - gap, abs=1e-16)


@pytest.mark.parametrize("sigma, alpha, n0, n", [(0.12, 0.2, 10, 50), (1.0, 0.05, 30, 1000)])
def test_cohen_is_sound_at_other_scales(sigma, alpha, n0, n):
    report = check_soundness(Cohen(n0=n0, n=n, alpha=alpha), GaussianNoise(sigma=sigma), trials=600, seed=3)
    assert report.sound, str(report)
    assert report.certified > 600  # the test exercised many certificates, not only abstentions


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
    certs = certify_inputs(Cohen(n0=50, n=2000, alpha=0.001), model, xs, GaussianNoise(1.0), batch_size=500)
    assert [c.prediction for c in certs[:2]] == [1, 0]
    assert all(0 < c.radius <= 2.0 for c in certs[:2])
    assert certs[2].prediction == ABSTAIN and certs[2].radius == 0.0
    assert all(c.samples == 2050 for c in certs)


def batchnorm_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    with torch.no_grad():
        for _ in range(3):  # running statistics that differ from any batch's own
            model(torch.randn(32, 5) * 3 + 1)
    return model


def test_certify_runs_modules_in_evaluation_mode_and_changes_nothing():
    model = batchnorm_model().train()
    model[3].eval()  # modes are restored per submodule, not just for the root
    modes = [m.training for m in model.modules()]
    state = copy.deepcopy(model.state_dict())
    xs, cohen, noise = torch.rand(3, 5), Cohen(n0=10, n=300, alpha=0.01), GaussianNoise(0.5)
    small = certify_inputs(cohen, model, xs, noise, batch_size=16, num_classes=3)
    large = certify_inputs(cohen, model, xs, noise, batch_size=200, num_classes=3)
    assert small == large  # in training mode, batch statistics made these differ
    assert [m.training for m in model.modules()] == modes
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # running statistics untouched
    assert certify_inputs(cohen, model.eval(), xs, noise, num_classes=3) == small


def test_a_shard_reproduces_the_full_runs_certificates():
    model = LinearModel(5, seed=3)
    xs = torch.stack([model.point_at(m, seed=i) for i, m in enumerate([0.1, 0.4, -0.3, 0.2, -0.05])])
    cohen, noise = Cohen(n0=20, n=500, alpha=0.01), GaussianNoise(0.5)
    full = certify_inputs(cohen, model, xs, noise)
    assert certify_inputs(cohen, model, xs[2:4], noise, indices=[2, 3]) == full[2:4]
    assert certify_inputs(cohen, model, xs[2:4], noise) != full[2:4]  # positions 0 and 1 draw other noise
    with pytest.raises(ValueError, match="2 indices for 1 inputs"):
        certify_inputs(cohen, model, xs[:1], noise, indices=[0, 1])


@pytest.mark.parametrize("dim", [5, 147, 64])
def test_certificates_do_not_depend_on_the_batch_size(dim):
    # Odd sizes: a noise batch of 5 or 147 values per copy is not a multiple of the generator's blocks of 16.
    model = LinearModel(dim, seed=1)
    xs = torch.stack([model.point_at(m, seed=i) for i, m in enumerate([0.05, -0.2, 0.6])])
    cohen, noise = Cohen(n0=13, n=301, alpha=0.01), GaussianNoise(0.5)
    reference = certify_inputs(cohen, model, xs, noise, batch_size=1000)
    for batch_size in (1, 7, 16, 127, 128, 129, 300):
        assert certify_inputs(cohen, model, xs, noise, batch_size=batch_size) == reference, batch_size


def test_predict_abstains_near_the_boundary_and_answers_far_from_it():
    model = LinearModel(4, seed=2)
    sampler = MonteCarloSampler(model, GaussianNoise(1.0), num_classes=2)
    cohen = Cohen(n=1000, alpha=0.001)
    assert cohen.predict(sampler, model.point_at(3.0, seed=0), input_generator(0, 1)) == 1
    assert cohen.predict(sampler, model.point_at(0.0, seed=0), input_generator(0, 2)) == ABSTAIN


def test_cohen_refuses_non_gaussian_noise():
    class Uniform(GaussianNoise):
        family = "uniform"

    assert "gaussian noise only, got 'uniform' noise" in Cohen().check_noise(Uniform(0.5))
    assert Cohen().check_noise(GaussianNoise(0.5)) is None
    assert not math.isnan(Cohen().radius(60, 100, 1.0)[0])


def smallest_certifying_count(n, alpha):
    return next(k for k in range(n + 1) if Cohen(alpha=alpha).radius(k, n, 1.0)[1] > 0)


def test_cohen_counts_the_class_selected_on_the_first_draws():
    # Selection (n0 = 10) says class 2; estimation's most frequent class is 1. CERTIFY bounds class 2.
    k = smallest_certifying_count(100, 0.1)
    smoothed = Scripted([1, 2, 7], [0, 100 - k, k])
    cert = Cohen(n0=10, n=100, alpha=0.1).certify(smoothed, torch.zeros(2))
    assert smoothed.asked == [10, 100]
    assert cert.prediction == 2 and cert.details["count"] == k
    assert cert.radius == pytest.approx(0.5 * stats.norm.isf(clopper_gap(k, 100, 0.1)))
    # ... and abstains when the selected class falls short, however clear the estimation's winner is.
    cert = Cohen(n0=10, n=100, alpha=0.1).certify(Scripted([1, 2, 7], [0, 101 - k, k - 1]), torch.zeros(2))
    assert cert.prediction == ABSTAIN and cert.radius == 0.0 and cert.samples == 110


def clopper_gap(k, n, alpha):
    from ensemblecert import clopper_pearson_lower_gap

    return clopper_pearson_lower_gap(k, n, alpha)


def test_cohen_abstains_exactly_below_one_half():
    n, alpha = 100, 0.1
    k = smallest_certifying_count(n, alpha)
    assert clopper_gap(k, n, alpha) < 0.5 <= clopper_gap(k - 1, n, alpha)
    assert stats.beta.ppf(alpha, k, n - k + 1) > 0.5 >= stats.beta.ppf(alpha, k - 1, n - k + 2)


def test_randomized_certify_is_sound_records_its_uniform_and_never_certifies_less():
    """The randomized Clopper-Pearson bound (an exact test over the draws and the uniform) certifies at least the
    radius CERTIFY does on the same draws, records its uniform, repeats with the seed, and passes the harness."""
    noise = GaussianNoise(sigma=0.5)
    randomized = Cohen(n0=20, n=200, alpha=0.1, randomized=True)
    report = check_soundness(randomized, noise, trials=600, seed=5, target_radii=[0.25])
    assert report.sound, str(report)
    model = LinearModel(8, seed=2)
    xs = [model.point_with_top_probability(p, 0.5, seed=i) for i, p in enumerate([0.7, 0.9, 0.99, 0.999])]
    plain = certify_inputs(Cohen(n0=20, n=200, alpha=0.1), model, xs, noise, num_classes=2, seed=9)
    first = certify_inputs(randomized, model, xs, noise, num_classes=2, seed=9)
    again = certify_inputs(randomized, model, xs, noise, num_classes=2, seed=9)
    assert first == again and all(0 < c.details["u"] <= 1 for c in first)
    assert all(r.radius >= c.radius and r.details["count"] == c.details["count"] for r, c in zip(first, plain))
    assert any(r.radius > c.radius for r, c in zip(first, plain))
    assert Cohen(randomized=True).certify_plan() is None  # EAS runs CERTIFY's plan per member: not randomized
