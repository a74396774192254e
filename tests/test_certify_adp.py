"""CERTIFYADP (Horvath22, Algorithm 2, Theorem 6.1): decisions on given counts, n_s, stages, soundness, early
abstention."""

import math

import attrs
import pytest
import torch
from scipy import stats

from conftest import Scripted
from ensemblecert import ABSTAIN
from ensemblecert.plugins.certify_adp import CertifyAdp, Decision, matching_final_stage, stage_decision
from ensemblecert.plugins.noise import GaussianNoise
from ensemblecert.testing import IntervalModel, check_early_abstentions, check_soundness

SIGMA = 0.25


def decide(count, n, stage, stages, alpha=0.001, beta=0.0001, radius=0.25):
    return stage_decision(count, n, stage=stage, stages=stages, radius=radius, sigma=SIGMA, alpha=alpha, beta=beta)


def test_decisions_against_the_beta_quantiles():
    # r = sigma: certifying needs a lower bound of Phi(1) = 0.8413.
    need = stats.norm.cdf(1.0)
    for count, n, stage, expected in [
        (1000, 1000, 1, Decision.CERTIFY),  # lower (0.001/3)^(1/1000) = 0.992
        (500, 1000, 1, Decision.ABSTAIN),  # upper at 1 - 0.0001/2 is about 0.56
        (850, 1000, 1, Decision.CONTINUE),  # lower 0.81 < 0.8413 < upper 0.89
        (850, 1000, 3, Decision.ABSTAIN),  # the last stage makes no upper test: it abstains
        (8600, 10000, 2, Decision.CERTIFY),
    ]:
        decision, lower, upper = decide(count, n, stage, 3)
        assert decision is expected, (count, n, stage)
        assert lower == pytest.approx(
            stats.beta.ppf(0.001 / 3, count, n - count + 1) if count < n else (0.001 / 3) ** (1 / n)
        )
        if decision is Decision.CERTIFY or stage == 3:
            assert upper == 1.0
        else:
            assert upper == pytest.approx(stats.beta.ppf(1 - 0.0001 / 2, count + 1, n - count))
        assert (decision is Decision.CERTIFY) == (lower >= need)


def test_the_thresholds_are_exact():
    # the smallest count that certifies at stage 1 of 3, and the largest that abstains early
    n, need = 1000, stats.norm.cdf(1.0)
    certify = next(k for k in range(n + 1) if stats.beta.ppf(0.001 / 3, k, n - k + 1) >= need)
    assert decide(certify, n, 1, 3)[0] is Decision.CERTIFY and decide(certify - 1, n, 1, 3)[0] is not Decision.CERTIFY
    give_up = max(k for k in range(n) if stats.beta.ppf(1 - 0.0001 / 2, k + 1, n - k) < need)
    assert decide(give_up, n, 1, 3)[0] is Decision.ABSTAIN and decide(give_up + 1, n, 1, 3)[0] is Decision.CONTINUE


def test_one_stage_has_no_early_abstention():
    decision, _, upper = decide(10, 1000, 1, 1)  # beta / (s - 1) would divide by zero
    assert decision is Decision.ABSTAIN and upper == 1.0
    assert decide(1000, 1000, 1, 1, alpha=0.001)[0] is Decision.CERTIFY  # at alpha / 1


def test_matching_final_stage_reaches_certifys_largest_radius():
    for n, alpha, s in [(100_000, 0.001, 3), (10_000, 0.01, 2), (1000, 0.001, 5)]:
        ns = matching_final_stage(n, alpha, s)
        assert ns == math.ceil(n * (1 - math.log(s) / math.log(alpha)))
        assert (alpha / s) ** (1 / ns) >= alpha ** (1 / n) > (alpha / s) ** (1 / (ns - 1))


def test_stops_at_the_stage_that_decides_and_counts_the_selected_class():
    adp = CertifyAdp(radius=0.25, n0=10, stages=[100, 1000, 5000])
    # selection picks class 1; stage 1 is undecided for class 1 (class 2 leads there, and is not counted)
    smoothed = Scripted([2, 7, 1], [0, 85, 15], [0, 990, 10], sigma=SIGMA)
    cert = adp.certify(smoothed, torch.zeros(2))
    assert smoothed.asked == [10, 100, 1000]
    assert (cert.prediction, cert.radius, cert.samples) == (1, 0.25, 1110)
    assert cert.details["stage"] == 2 and cert.details["count"] == 990
    early = adp.certify(Scripted([2, 7, 1], [40, 20, 40], sigma=SIGMA), torch.zeros(2))
    assert (early.prediction, early.radius, early.samples, early.details["stage"]) == (ABSTAIN, 0.0, 110, 1)


@pytest.mark.parametrize("radius", [0.25, 0.5])
def test_certify_adp_is_sound_near_its_target(radius):
    adp = CertifyAdp(radius=radius, n0=20, stages=[50, 200, 1000], alpha=0.1, beta=0.1)
    report = check_soundness(adp, GaussianNoise(0.5), target_radii=[radius], trials=600)
    assert report.sound, str(report)
    assert report.regions[-1].certified > 10  # it does certify just below the target sometimes, and is caught then


def test_certify_adp_is_sound_on_a_k_class_model():
    model = IntervalModel(16, [-0.5, 0.0, 0.35, 1.1], seed=0)
    adp = CertifyAdp(radius=0.2, n0=20, stages=[50, 200, 1000], alpha=0.1, beta=0.1)
    report = check_soundness(adp, GaussianNoise(0.5), model=model, target_radii=[0.2], trials=300)
    assert report.sound, str(report)


@attrs.frozen
class NoBonferroni(CertifyAdp):
    """Wrong: every stage at the full alpha (no division by s)."""

    def certify(self, smoothed, x, generator=None):
        return attrs.evolve(
            self, alpha=self.alpha * len(self.stages), beta=self.beta * (len(self.stages) - 1)
        ).certify_as_is(smoothed, x, generator)

    def certify_as_is(self, smoothed, x, generator):
        return CertifyAdp.certify(self, smoothed, x, generator)


def test_the_harness_catches_stages_without_bonferroni():
    wrong = NoBonferroni(radius=0.25, n0=20, stages=[50, 100, 200, 400, 800], alpha=0.1, beta=0.1)
    report = check_soundness(wrong, GaussianNoise(0.5), regions=(), target_radii=[0.25], trials=1000)
    assert not report.sound, str(report)


def is_early(adp):
    return lambda cert: cert.prediction == ABSTAIN and cert.details["stage"] < len(adp.stages)


def test_false_early_abstentions_stay_within_beta():
    adp = CertifyAdp(radius=0.25, n0=20, stages=[50, 200, 1000], alpha=0.1, beta=0.1)
    report = check_early_abstentions(adp, GaussianNoise(0.5), radius=0.25, rate=0.1, early=is_early(adp))
    assert report.sound, str(report)
    assert report.overclaims > 0  # early abstentions at robust inputs happen: the test is not vacuous
    wrong = NoBonferroni(radius=0.25, n0=20, stages=[50, 100, 200, 400, 800], alpha=0.1, beta=0.1)
    assert not check_early_abstentions(wrong, GaussianNoise(0.5), radius=0.25, rate=0.1, early=is_early(wrong)).sound


def test_certify_adp_in_a_pipeline(tiny_pipeline):
    from ensemblecert import run

    tiny_pipeline["certification"]["certifiers"] = [
        {"name": "certify_adp", "radius": 0.25, "n0": 20, "stages": [100, 400], "alpha": 0.01},
        {"name": "certify_adp", "radius": 0.5, "n0": 20, "stages": [100, 400], "alpha": 0.01},
    ]
    result = run(tiny_pipeline)
    assert set(result.summary.certifiers) == {"certify_adp (radius=0.25)", "certify_adp (radius=0.5)"}
    for r in result.results:
        for label, target in (("certify_adp (radius=0.25)", 0.25), ("certify_adp (radius=0.5)", 0.5)):
            cert = r.outcomes[label].certificate
            assert cert.radius in (0.0, target) and cert.samples in (120, 520)


@pytest.mark.parametrize("stages", [[], [100, 100], [1000, 10], [0, 5]])
def test_stages_must_increase(stages):
    from ensemblecert import ConfigError, load_pipeline

    with pytest.raises(ConfigError, match=r"certification.certifiers\[0\].stages: must"):
        load_pipeline({"certification": {"certifiers": [{"name": "certify_adp", "radius": 0.25, "stages": stages}]}})
