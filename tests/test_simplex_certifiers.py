"""Certifiers for the mechanisms of "It's Simplex!" (004): soundness per mechanism and expectation, best, pipeline."""

import numpy as np
import pytest
import torch

from ensemblecert import ConfigError, build_component, load_registry, run
from ensemblecert.plugins.noise import GaussianNoise
from ensemblecert.plugins.simplex.mechanisms import MECHANISMS
from ensemblecert.testing import DEFAULT_REGIONS, IntervalModel, LinearModel, check_soundness

REGISTRY = load_registry()


def certifier(**spec):
    return build_component("certifier", spec, REGISTRY)


CASES = [(m, "multinomial") for m in ("cohen_two_sided", "li", "lecuyer", "dp", "best")] + [
    (m, "softmax") for m in ("cohen_two_sided", "lecuyer", "dp", "best")
]


@pytest.mark.parametrize("name, expectation", CASES)
def test_sound_on_the_linear_model(name, expectation):
    # Two classes with logits (-m, m): the expected softmax is also decided by the sign of m, so the exact radius
    # |m| is the truth for both expectations.
    mech = certifier(name=name, expectation=expectation, n0=20, n=200, alpha=0.1)
    report = check_soundness(mech, GaussianNoise(0.5), trials=250)
    assert report.sound, str(report)
    assert report.certified > 250


@pytest.mark.parametrize("name", ["cohen_two_sided", "best"])
def test_sound_on_a_k_class_model(name):
    # several classes: the runner-up bound must cover every other class (multinomial expectations)
    model = IntervalModel(16, [-0.5, 0.0, 0.35, 1.1], seed=0)
    regions = (*DEFAULT_REGIONS, type(DEFAULT_REGIONS[0])("plurality", 0.3, 0.5))
    report = check_soundness(certifier(name=name, n0=20, n=200, alpha=0.1), GaussianNoise(0.5), model=model,
                             regions=regions, trials=200)
    assert report.sound, str(report)


def test_best_takes_the_largest_member_and_records_the_winner():
    model = LinearModel(8)
    smoothed_x = [model.point_at(v, seed=i) for i, v in enumerate([0.9, 0.3, 0.05])]
    from ensemblecert import MonteCarloSampler, input_generator

    sampler = MonteCarloSampler(model, GaussianNoise(0.5), num_classes=2)
    best = certifier(name="best", n0=20, n=500, alpha=0.05)
    for i, x in enumerate(smoothed_x):
        cert = best.certify(sampler, x, input_generator(0, i))
        radii = {k[2:]: v for k, v in cert.details.items() if k.startswith("r_")}
        assert set(radii) == {"cohen", "li", "dp"}
        for name, r in radii.items():
            assert r == pytest.approx(float(MECHANISMS[name](cert.details["e0"], cert.details["e1"], 0.5)))
        assert cert.radius == max(radii.values()) == radii[["cohen", "li", "dp"][int(cert.details["winner"])]]
    assert certifier(name="best", expectation="softmax").mechanisms() == ["lecuyer", "dp"]


def test_li_refuses_softmax_expectations():
    with pytest.raises(ConfigError, match="li does not apply to softmax expectations"):
        certifier(name="li", expectation="softmax")
    with pytest.raises(ConfigError, match="li does not apply"):
        certifier(name="best", expectation="softmax", of=["li", "dp"])


def test_the_paper_procedure_draws_no_selection_samples():
    model = LinearModel(4)
    from ensemblecert import certify

    x = torch.stack([model.point_at(0.5, seed=0)])
    (paper,) = certify(certifier(name="dp", procedure="paper", n0=100, n=300), model, x, GaussianNoise(0.5))
    (sound,) = certify(certifier(name="dp", n0=100, n=300), model, x, GaussianNoise(0.5))
    assert paper.samples == 300 and sound.samples == 400


def test_best_in_a_pipeline(tiny_pipeline):
    tiny_pipeline["certify"]["mechanisms"] = [{"name": "best", "n0": 20, "n": 200, "alpha": 0.01}]
    result = run(tiny_pipeline)
    header = (result.output / "certify.tsv").read_text().splitlines()[0].split("\t")
    assert header[8:] == ["best:e0", "best:e1", "best:r_cohen", "best:r_li", "best:r_dp", "best:winner"]
    details = result.summary.mechanisms["best"].details
    assert 0 <= details["winner"] <= 2 and details["e0"] > details["e1"]
