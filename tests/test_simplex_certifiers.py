"""Certifiers for the mechanisms of "It's Simplex!" (Cullen24): soundness per mechanism and expectation, best,
pipeline."""

import pytest
import torch

from ensemblecert import ConfigError, build_component, load_pipeline, load_registry, run
from ensemblecert.plugins.noise import GaussianNoise
from ensemblecert.plugins.simplex.mechanisms import MECHANISMS
from ensemblecert.testing import DEFAULT_REGIONS, IntervalModel, LinearModel, check_soundness

REGISTRY = load_registry()


def certifier(**spec):
    return build_component("certifier", spec, REGISTRY)


CASES = [(m, "multinomial") for m in ("cohen", "cohen_two_sided", "li", "lecuyer", "dp", "best")] + [
    (m, "softmax") for m in ("cohen", "cohen_two_sided", "lecuyer", "dp", "best")
]
MIXED = ["cohen", "li", "dp", "softmax:lecuyer", "softmax:dp"]


@pytest.mark.parametrize("name, expectation", CASES)
def test_sound_on_the_linear_model(name, expectation):
    # Two classes with logits (-m, m): the expected softmax is also decided by the sign of m, so the exact radius
    # |m| is the truth for both expectations.
    mech = certifier(name=name, expectation=expectation, n0=20, n=200, alpha=0.1)
    report = check_soundness(mech, GaussianNoise(0.5), trials=250)
    assert report.sound, str(report)
    assert report.certified > 250


def test_best_refuses_sets_about_two_classifiers():
    # multinomial bounds certify the hard smoothed classifier, softmax bounds the soft one: a larger radius of the two
    # is a promise about neither, so the set is a configuration error at `.of` that says why
    with pytest.raises(
        ConfigError, match=r"certification\.certifiers\[0\]\.of: mixes mechanisms about two different classifiers"
    ):
        load_pipeline({"certification": {"certifiers": [{"name": "best", "of": MIXED}]}})
    assert certifier(name="best", of=["softmax:lecuyer", "softmax:dp"]).classifier() == "soft"
    assert certifier(name="best", expectation="softmax").classifier() == "soft"
    assert certifier(name="best").classifier() == "hard"
    assert certifier(name="dp", expectation="softmax").classifier() == "soft"
    assert certifier(name="cohen", expectation="softmax").classifier() == "soft"
    assert certifier(name="cohen").classifier() == "hard"


def test_unknown_names_in_of_name_the_setting():
    with pytest.raises(ConfigError, match=r"certification\.certifiers\[0\]\.of: 'dpp': unknown mechanism"):
        load_pipeline({"certification": {"certifiers": [{"name": "best", "of": ["cohen", "dpp"]}]}})


@pytest.mark.parametrize("name, expectation", CASES)
def test_sound_on_a_k_class_model(name, expectation):
    # several classes: the selection and the runner-up bound must cover every other class. The model's softmax
    # output is one-hot, so both expectations equal the closed-form class probabilities.
    model = IntervalModel(16, [-0.5, 0.0, 0.35, 1.1], seed=0, one_hot=True)
    regions = (*DEFAULT_REGIONS, type(DEFAULT_REGIONS[0])("plurality", 0.3, 0.5))
    report = check_soundness(
        certifier(name=name, n0=20, n=200, alpha=0.1, expectation=expectation),
        GaussianNoise(0.5),
        model=model,
        regions=regions,
        trials=150,
    )
    assert report.sound, str(report)
    assert report.certified > 150


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
    assert certifier(name="best", expectation="softmax").entries() == ["lecuyer", "dp"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"of": ["softmax:li"]}, "li does not apply to softmax"),
        ({"of": ["dp", "multinomial:dp"]}, "names a mechanism twice"),
        ({"of": ["gaussian:dp"]}, "the expectation before ':' must be one of"),
        ({"of": ["dpp"]}, "unknown mechanism 'dpp'"),
        ({"of": []}, "non-empty list"),
    ],
)
def test_best_refuses_bad_sets(spec, message):
    with pytest.raises(ConfigError, match=message):
        certifier(name="best", **spec)


def test_cohen_under_the_expectations_of_004():
    model = LinearModel(8)
    from ensemblecert import MonteCarloSampler, draw_expectations, input_generator

    sampler = MonteCarloSampler(model, GaussianNoise(0.5), num_classes=2)
    x = model.point_at(0.4, seed=0)
    classic = certifier(name="cohen", n0=20, n=500, alpha=0.05).certify(sampler, x, input_generator(0, 0))
    for which in ("multinomial", "softmax"):
        cert = certifier(name="cohen", expectation=which, n0=20, n=500, alpha=0.05).certify(
            sampler, x, input_generator(0, 0)
        )
        _, e0, e1 = draw_expectations(sampler, x, 20, 500, generator=input_generator(0, 0)).bounds(which, 0.05)
        assert cert.details == pytest.approx({"e0": e0, "e1": e1})
        assert cert.radius == pytest.approx(float(MECHANISMS["cohen"](e0, e1, 0.5)))
    # the classic CERTIFY spends all of alpha on p_A, so on the same draws it certifies more than Eq. 9 at alpha / 2
    assert (
        classic.radius
        > certifier(name="cohen", expectation="multinomial", n0=20, n=500, alpha=0.05)
        .certify(sampler, x, input_generator(0, 0))
        .radius
    )
    with pytest.raises(ConfigError, match="set expectation as well"):
        certifier(name="cohen", procedure="paper")


def test_li_refuses_softmax_expectations():
    with pytest.raises(ConfigError, match="li does not apply to softmax expectations"):
        certifier(name="li", expectation="softmax")
    with pytest.raises(ConfigError, match="li does not apply"):
        certifier(name="best", expectation="softmax", of=["li", "dp"])


def test_the_paper_procedure_draws_no_selection_samples():
    model = LinearModel(4)
    from ensemblecert import certify_inputs

    x = torch.stack([model.point_at(0.5, seed=0)])
    (paper,) = certify_inputs(certifier(name="dp", procedure="paper", n0=100, n=300), model, x, GaussianNoise(0.5))
    (sound,) = certify_inputs(certifier(name="dp", n0=100, n=300), model, x, GaussianNoise(0.5))
    assert paper.samples == 300 and sound.samples == 400


def test_best_in_a_pipeline(tiny_pipeline):
    tiny_pipeline["certification"]["certifiers"] = [{"name": "best", "n0": 20, "n": 200, "alpha": 0.01}]
    result = run(tiny_pipeline)
    header = (result.output / "certification.tsv").read_text().splitlines()[0].split("\t")
    assert header[8:] == ["classifier", "best:e0", "best:e1", "best:r_cohen", "best:r_li", "best:r_dp", "best:winner"]
    details = result.summary.certifiers["best"].details
    assert 0 <= details["winner"] <= 2 and details["e0"] > details["e1"]
    assert result.summary.certifiers["best"].classifier == "hard"
    assert {line.split("\t")[8] for line in (result.output / "certification.tsv").read_text().splitlines()[1:]} == {
        "hard"
    }
