"""The soundness harness itself: it must catch certifiers that over-claim where errors live.

The mutants here are the plausible wrong versions of CERTIFY (class chosen on the estimation draws;
selection and estimation on the same draws) and oracles that over-claim at exactly twice alpha in one
region only, which an average over all inputs would dilute below alpha.
"""

import attrs
import pytest
import torch

from ensemblecert import ABSTAIN, Certificate, Certifier
from ensemblecert.plugins.cohen import Cohen
from ensemblecert.plugins.noise import GaussianNoise
from ensemblecert.testing import DEFAULT_REGIONS, LinearModel, Region, check_soundness, overclaims

NOISE = GaussianNoise(sigma=0.5)
MODEL = LinearModel(16, seed=0)  # the harness's default reference model, which the oracle knows


@attrs.frozen
class TopOfEstimation(Cohen):
    """Wrong: certifies the most frequent class of the estimation draws instead of the selected one."""

    def certify(self, smoothed, x, generator=None):
        smoothed.tally(x, self.n0, generator=generator)
        tally = smoothed.tally(x, self.n, generator=generator)
        _, radius = self.radius(int(tally.counts[tally.top]), self.n, smoothed.noise.sigma)
        return Certificate(tally.top if radius > 0 else ABSTAIN, radius, self.n0 + self.n)


@attrs.frozen
class SameDraws(Cohen):
    """Wrong: selects the class and bounds its probability on the same draws."""

    def certify(self, smoothed, x, generator=None):
        tally = smoothed.tally(x, self.n, generator=generator)
        _, radius = self.radius(int(tally.counts[tally.top]), self.n, smoothed.noise.sigma)
        return Certificate(tally.top if radius > 0 else ABSTAIN, radius, self.n)


@attrs.frozen
class Oracle(Certifier):
    """Knows the truth; over-claims with probability ``rate`` on inputs whose top probability is in ``band``."""

    rate: float
    band: tuple[float, float]
    alpha: float = 0.1

    def failure_probability(self):
        return self.alpha

    def certify(self, smoothed, x, generator=None):
        model, sigma = MODEL, smoothed.noise.sigma
        cls, exact = model.smoothed_class(x), model.exact_radius(x)
        p = max(model.smoothed_probability(x, sigma), 1 - model.smoothed_probability(x, sigma))
        u = float(torch.rand((), generator=generator, device=generator.device))
        if self.band[0] <= p <= self.band[1] and u < self.rate:
            return Certificate(cls, exact + 0.05, 1)
        return Certificate(cls, 0.5 * exact, 1)


def test_correct_cohen_passes_in_every_region():
    report = check_soundness(Cohen(n0=20, n=100, alpha=0.1), NOISE)
    assert report.sound, str(report)
    assert [r.region.name for r in report.regions] == ["boundary", "moderate", "confident"]
    assert all(r.certified > 0 for r in report.regions)
    assert str(report).splitlines()[-1].startswith("verdict: SOUND")


@pytest.mark.parametrize("mutant", [TopOfEstimation, SameDraws])
def test_selection_mistakes_are_caught_near_the_boundary(mutant):
    report = check_soundness(mutant(n0=20, n=100, alpha=0.1), NOISE)
    assert not report.sound, str(report)
    worst = min(report.regions, key=lambda r: r.p_value)
    assert worst.region.name == "boundary"
    assert str(report).splitlines()[-1] == "verdict: NOT SOUND (over-claims in boundary beyond 0.1)"


@pytest.mark.parametrize("region", DEFAULT_REGIONS, ids=lambda r: r.name)
def test_twice_alpha_in_one_region_is_caught(region):
    # Over all three regions the rate is 2 alpha / 3 < alpha: only a per-region test sees it.
    report = check_soundness(Oracle(rate=0.2, band=(region.low, region.high)), NOISE, trials=1000)
    assert not report.sound, str(report)
    assert report.overclaims < 0.1 * report.trials
    assert min(report.regions, key=lambda r: r.p_value).region == region


def test_alpha_itself_is_accepted():
    report = check_soundness(Oracle(rate=0.1, band=(0.5, 1.0)), NOISE, trials=1000)
    assert report.sound, str(report)
    assert 0.07 * report.trials < report.overclaims < 0.13 * report.trials  # the oracle really over-claims


def test_target_radius_region_covers_inputs_just_below_the_target():
    region = Region.below_radius(0.5, sigma=0.5)
    band = (region.low, region.high)
    assert band[1] == pytest.approx(0.8413447, abs=1e-6)  # Phi(1): exact radius 0.5 at sigma 0.5
    assert not check_soundness(Oracle(rate=0.2, band=band), NOISE, target_radii=[0.5]).sound
    assert check_soundness(Oracle(rate=0.2, band=band), NOISE).sound  # diluted without the target region


def test_overclaim_definition():
    model = LinearModel(4)
    x = model.point_at(0.3, seed=0)
    exact = model.exact_radius(x)
    assert exact == pytest.approx(0.3, abs=1e-6)
    assert not overclaims(Certificate(1, exact, 1), model, x, 0.5)
    assert overclaims(Certificate(1, exact + 1e-6, 1), model, x, 0.5)
    assert overclaims(Certificate(0, 0.01, 1), model, x, 0.5)  # the wrong class, however small the radius
    assert not overclaims(Certificate(ABSTAIN, 0.0, 1), model, x, 0.5)


def test_interval_model_closed_form_matches_sampling_and_brute_force():
    import numpy as np

    from ensemblecert import MonteCarloSampler, input_generator
    from ensemblecert.testing import IntervalModel

    model, sigma = IntervalModel(8, [-0.5, 0.0, 0.4, 1.5], seed=1), 0.5
    sampler = MonteCarloSampler(model, GaussianNoise(sigma), num_classes=5, batch_size=100_000)
    for p, seed in [(0.6, 0), (0.6, 1), (0.35, 4), (0.9, 3)]:
        x = model.point_with_top_probability(p, sigma, seed)
        probs = model.smoothed_probabilities(x, sigma)
        assert probs.max() == pytest.approx(p, abs=1e-6) and probs.sum() == pytest.approx(1.0)
        tally = sampler.tally(x, 200_000, generator=input_generator(0, seed))
        assert np.allclose(tally.counts.numpy() / 200_000, probs, atol=0.004)
        # exact radius against a fine grid of projections
        m0, top = float(model.projection(x[None])[0]), int(probs.argmax())
        grid = m0 + np.linspace(-3, 3, 600_001)
        changed = np.argmax(model.probabilities_at(grid, sigma), axis=1) != top
        assert model.exact_radius(x, sigma) == pytest.approx(np.abs(grid[changed] - m0).min(), abs=2e-5)
    assert {model.smoothed_class(model.point_with_top_probability(0.6, sigma, s), sigma) for s in range(6)} == {0, 3, 4}
    with pytest.raises(ValueError, match="no class of this model has top-class probability 0.2"):
        model.point_with_top_probability(0.2, sigma, 0)


# --------------------------------------------------------------------------- power where the bounds are tight
# On two classes with the sound selection, E1 = 1 - E0: a Simplex certificate rests on the single bound E0 at
# alpha / 2, so it over-claims at most at that share, and the harness tests against the share (``rate``).
# CERTIFY's single bound is at alpha itself.

from ensemblecert.plugins.simplex.certifiers import TwoSidedCohen  # noqa: E402


@attrs.frozen
class InflatedTwoSided(TwoSidedCohen):
    """Wrong: the two-sided radius inflated by 15 percent."""

    def certify(self, smoothed, x, generator=None):
        cert = super().certify(smoothed, x, generator)
        return attrs.evolve(cert, radius=1.15 * cert.radius)


@attrs.frozen
class DoubledTwoSided(TwoSidedCohen):
    """Wrong: each of the two bounds at the full alpha instead of its share alpha / 2."""

    def certify(self, smoothed, x, generator=None):
        return TwoSidedCohen(n0=self.n0, n=self.n, alpha=2 * self.alpha).certify(smoothed, x, generator)


@attrs.frozen
class InflatedCohen(Cohen):
    def certify(self, smoothed, x, generator=None):
        cert = super().certify(smoothed, x, generator)
        return attrs.evolve(cert, radius=1.15 * cert.radius)


@attrs.frozen
class DoubledCohen(Cohen):
    def certify(self, smoothed, x, generator=None):
        return Cohen(self.n0, self.n, 2 * self.alpha).certify(smoothed, x, generator)


TIGHT = dict(trials=400, regions=DEFAULT_REGIONS[1:])  # where certificates are made (the boundary abstains)


def simplex_report(cls, alpha=0.2):
    return check_soundness(cls(n0=50, n=1000, alpha=alpha), NOISE, rate=alpha / 2, **TIGHT)


def test_the_correct_simplex_mechanism_passes_at_its_share_of_alpha():
    report = simplex_report(TwoSidedCohen)
    assert report.sound, str(report)
    assert report.overclaims > 0  # the share is really spent: a test of it has power
    assert check_soundness(Cohen(n0=50, n=1000, alpha=0.1), NOISE, **TIGHT).sound


@pytest.mark.parametrize("mutant", [InflatedTwoSided, DoubledTwoSided])
def test_a_simplex_mechanism_that_inflates_or_spends_twice_its_share_is_caught(mutant):
    report = simplex_report(mutant)
    assert not report.sound, str(report)


@pytest.mark.parametrize("mutant", [InflatedCohen, DoubledCohen])
def test_certify_that_inflates_or_spends_twice_alpha_is_caught(mutant):
    report = check_soundness(mutant(n0=50, n=1000, alpha=0.1), NOISE, **TIGHT)
    assert not report.sound, str(report)
