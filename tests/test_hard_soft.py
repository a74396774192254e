"""Certificates are promises about one named smoothed classifier: the hard-versus-soft reference model, every
certifier against the exact radius of the classifier it declares, and the mixed `best` that promised neither."""

import attrs
import numpy as np
import pytest
import torch
from scipy import stats

from ensemblecert import (
    ABSTAIN,
    EXPECTATIONS,
    HARD,
    SOFT,
    Certificate,
    Certifier,
    MonteCarloSampler,
    build_component,
    draw_expectations,
    input_generator,
    load_registry,
)
from ensemblecert.plugins.noise import GaussianNoise
from ensemblecert.plugins.simplex.mechanisms import MECHANISMS
from ensemblecert.testing import DEFAULT_REGIONS, HardSoftModel, Region, check_soundness

REGISTRY = load_registry()
NOISE = GaussianNoise(0.5)
MODEL = HardSoftModel(16, seed=0)
# the soft classifier's top probability never exceeds 0.99, so its regions stop below that
SOFT_REGIONS = (Region("boundary", 0.5, 0.52), Region("moderate", 0.52, 0.9), Region("high", 0.9, 0.985))


def test_the_closed_form_matches_sampling():
    sampler = MonteCarloSampler(MODEL, NOISE, num_classes=2, batch_size=50_000)
    for m in (-1.0, -0.5, 0.15, 0.6):
        x = MODEL.point_at(m, seed=1)
        tally = sampler.tally(x, 200_000, generator=input_generator(0, 1), softmax=True)
        q = stats.norm.cdf(m / 0.5)
        assert float(tally.counts[1]) / 200_000 == pytest.approx(q, abs=0.004)
        assert float(tally.prob_sums[1]) / 200_000 == pytest.approx(0.45 + 0.54 * q, abs=0.003)


def test_the_two_classifiers_differ_as_the_issue_reproduces():
    # sigma = 0.5: the soft classifier changes class at m* = 0.5 PhiInv(0.05 / 0.54)
    threshold = MODEL.soft_threshold(0.5)
    assert threshold == pytest.approx(0.5 * stats.norm.ppf(0.05 / 0.54))
    x = MODEL.point_at(0.15, seed=2)
    assert MODEL.exact_radius(x, 0.5, HARD) == pytest.approx(0.15, abs=1e-6)
    assert MODEL.exact_radius(x, 0.5, SOFT) == pytest.approx(0.15 - threshold, abs=1e-6)
    x = MODEL.point_at(-1.0, seed=3)
    assert MODEL.exact_radius(x, 0.5, SOFT) == pytest.approx(0.338, abs=1e-3)
    assert MODEL.exact_radius(x, 0.5, HARD) == pytest.approx(1.0, abs=1e-6)
    between = MODEL.point_at(threshold / 2, seed=4)  # the classifiers disagree on the class here
    assert MODEL.smoothed_class(between, 0.5, HARD) == 0 and MODEL.smoothed_class(between, 0.5, SOFT) == 1
    # placing inputs by either classifier's top probability
    for classifier, p in ((HARD, 0.97), (SOFT, 0.7), (SOFT, 0.53)):
        for seed in (0, 1):
            x = MODEL.point_with_top_probability(p, 0.5, seed, classifier)
            m = float(MODEL.margin(x[None])[0])
            q = stats.norm.cdf(m / 0.5)
            top = max(q, 1 - q) if classifier == HARD else max(0.45 + 0.54 * q, 0.55 - 0.54 * q)
            assert top == pytest.approx(p, abs=1e-6)  # inputs are float32
    with pytest.raises(ValueError, match="never has top-class probability"):
        MODEL.point_with_top_probability(0.995, 0.5, 0, SOFT)


@attrs.frozen
class MixedBest(Certifier):
    """The `best` this project used to allow: cohen on class counts and dp on the mean softmax, the larger radius,
    both bounded at alpha / 2 for the multinomial selection's class; it declares one classifier or the other."""

    declares: str
    n0: int = 100
    n: int = 2000
    alpha: float = 0.01

    def classifier(self):
        return self.declares

    def failure_probability(self):
        return self.alpha

    def certify(self, smoothed, x, generator=None):
        draws = draw_expectations(smoothed, x, self.n0, self.n, generator=generator)
        top = draws.multinomial_top()
        bounds = {which: draws.bounds(which, self.alpha / 2, top=top) for which in EXPECTATIONS}
        sigma = smoothed.noise.sigma
        radius = max(
            float(MECHANISMS["cohen"](*bounds["multinomial"][1:], sigma)),
            float(MECHANISMS["dp"](*bounds["softmax"][1:], sigma)),
        )
        return Certificate(top if radius > 0 else ABSTAIN, radius, draws.samples)


@pytest.mark.parametrize("declares, regions", [(HARD, DEFAULT_REGIONS), (SOFT, SOFT_REGIONS)])
def test_the_mixed_best_is_caught_whichever_classifier_it_names(declares, regions):
    report = check_soundness(MixedBest(declares), NOISE, model=MODEL, regions=regions, trials=60)
    assert not report.sound, str(report)
    assert max(r.overclaims / r.trials for r in report.regions) > 0.3  # where its radius is the other classifier's


def certifier(**spec):
    return build_component("certifier", spec, REGISTRY)


SPECS = [
    {"name": "cohen"},
    {"name": "cohen", "expectation": "multinomial"},
    {"name": "cohen", "expectation": "softmax"},
    *({"name": m, "expectation": e} for m in ("cohen_two_sided", "lecuyer", "dp", "best") for e in EXPECTATIONS),
    {"name": "li"},
    {"name": "best", "of": ["softmax:dp", "softmax:cohen_two_sided"]},
    {"name": "certify_adp", "radius": 0.25, "stages": [100, 400]},
    {"name": "sequential", "batch": 50, "max_samples": 400},
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_every_certifier_keeps_its_promise_about_the_classifier_it_names(spec):
    spec = {"alpha": 0.1, **spec}
    if spec["name"] not in ("certify_adp", "sequential"):
        spec.setdefault("n", 400)
    spec["n0"] = 20
    mech = certifier(**spec)
    soft = mech.classifier() == SOFT
    report = check_soundness(
        mech,
        NOISE,
        model=MODEL,
        regions=SOFT_REGIONS if soft else DEFAULT_REGIONS,
        target_radii=[0.25] if "radius" in spec else [],
        trials=120,
    )
    assert report.sound, str(report)
    assert report.certified > 60


def test_results_say_which_classifier_each_certificate_is_about():
    from ensemblecert import certify_inputs

    xs = torch.stack([MODEL.point_at(m, seed=i) for i, m in enumerate((-1.0, 0.6))])
    for spec, expected in (
        ({"name": "dp", "expectation": "softmax"}, SOFT),
        ({"name": "dp"}, HARD),
        ({"name": "cohen"}, HARD),
    ):
        certs = certify_inputs(certifier(n0=20, n=300, **spec), MODEL, xs, NOISE, num_classes=2)
        assert {c.classifier for c in certs} == {expected}
    assert np.all([c.radius >= 0 for c in certs])
