"""Ensemble-after-Smoothing (Yang22, Definition 6, Theorem 5): formulas, sampled bounds, soundness, pipeline."""

from pathlib import Path

import attrs
import numpy as np
import pytest
from scipy import optimize, stats

from ensemblecert import ABSTAIN, Ensemble
from ensemblecert.plugins.aggregators import WeightedEnsemble
from ensemblecert.plugins.cohen import Cohen
from ensemblecert.plugins.eas import (
    EnsembleAfterSmoothing,
    member_terms,
    sampled_terms,
    sound_radius,
    theorem5_radius,
)
from ensemblecert.plugins.noise import GaussianNoise
from ensemblecert.testing import IntervalModel, Region, check_soundness, nearest_sign_change


def test_sound_form_equals_theorem_5_when_every_member_is_confident():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.uniform(0.5001, 0.9999, size=rng.integers(2, 6))
        agree = rng.random(p.size) < 0.6
        agree[rng.integers(p.size)] = True
        terms = member_terms(p, agree, 0.5)
        assert sound_radius(terms, agree) == pytest.approx(theorem5_radius(terms))


def test_the_counterexample_to_theorem_5():
    # member A: 0.9 for class 1 (y0); member B: its top class 2 at only 0.05
    terms = member_terms(np.array([0.9, 0.05]), np.array([True, False]), 1.0)
    assert terms == pytest.approx([stats.norm.ppf(0.9), stats.norm.ppf(0.95)])
    assert theorem5_radius(terms) == pytest.approx(1.4632, abs=1e-4)  # over-claims: A's 0.1 can win at 1.3
    assert sound_radius(terms, np.array([True, False])) == pytest.approx(stats.norm.ppf(0.9))
    assert stats.norm.cdf(stats.norm.ppf(0.1) + 1.3) > 0.5 > stats.norm.cdf(stats.norm.ppf(0.9) - 1.3)


def test_sampled_terms_against_the_beta_quantiles():
    # 3 members, 4 classes. Selection: member 0 says 2 (40 of 50), member 1 says 2 (30), member 2 says 0 (45).
    selection = np.array([[5, 5, 40, 0], [10, 10, 30, 0], [45, 5, 0, 0]])
    counts = np.array([[100, 50, 800, 50], [200, 100, 650, 50], [600, 350, 30, 20]])
    y0, agree, terms = sampled_terms(selection, counts, 1000, alpha=0.03, sigma=0.5)
    # y0: the selected class of the member with the most votes for its class (member 2, 45 votes, says 0)
    assert y0 == 0 and agree.tolist() == [False, False, True]
    level = 0.03 / 3
    lower = stats.beta.ppf(level, 600, 1000 - 600 + 1)
    assert terms[2] == pytest.approx(0.5 * stats.norm.ppf(lower))
    for i in (0, 1):  # every class but y0, Bonferroni over the 3 of them; the largest upper bound counts
        upper = max(stats.beta.ppf(1 - level / 3, k + 1, 1000 - k) for k in counts[i, 1:])
        assert terms[i] == pytest.approx(-0.5 * stats.norm.ppf(upper))


def test_a_dissenter_is_bounded_on_every_class_not_only_its_selected_one():
    # member 1's selection says class 1, but the estimation draws favour its class 2: the bound must cover it
    selection = np.array([[90, 5, 5], [0, 55, 45]])
    counts = np.array([[900, 50, 50], [0, 450, 550]])
    _, agree, terms = sampled_terms(selection, counts, 1000, alpha=0.01, sigma=1.0)
    assert agree.tolist() == [True, False]
    upper_class_2 = stats.beta.ppf(1 - 0.005 / 2, 551, 450)
    assert terms[1] == pytest.approx(-stats.norm.ppf(upper_class_2))


class IntervalEnsemble(Ensemble):
    """Interval members sharing one projection: the EAS ensemble's exact radius is one-dimensional."""

    def __init__(self, thresholds, dim=8, seed=0):
        members = [IntervalModel(dim, t, seed=seed) for t in thresholds]
        super().__init__(members, WeightedEnsemble())
        self.num_classes = members[0].num_classes
        self.ref = members[0]

    def probabilities_at(self, m, sigma):
        return np.stack([member.probabilities_at(m, sigma) for member in self.members], axis=-2)  # [..., N, K]

    def _eas(self, m, sigma):
        p = self.probabilities_at(m, sigma)
        member = int(np.argmax(p.max(axis=-1)))
        return int(np.argmax(p[member]))

    def smoothed_class(self, x, sigma, classifier="hard"):
        assert classifier == "hard"  # EAS is built from the members' hard smoothed classifiers
        return self._eas(float(self.ref.projection(x[None])[0]), sigma)

    def exact_radius(self, x, sigma, classifier="hard"):
        assert classifier == "hard"
        m = float(self.ref.projection(x[None])[0])
        y0 = self._eas(m, sigma)

        def margin(at):
            p = self.probabilities_at(at, sigma)
            return p[..., y0].max(axis=-1) - np.delete(p, y0, axis=-1).max(axis=(-1, -2))

        return nearest_sign_change(margin, m, step=sigma / 50, limit=20 * sigma + 10)

    def point_with_top_probability(self, p, sigma, seed, classifier="hard"):
        grid = np.linspace(-4, 4, 8001)
        top = self.probabilities_at(grid, sigma).max(axis=(-1, -2)) - p
        crossings = np.flatnonzero(np.sign(top[:-1]) != np.sign(top[1:]))
        if not crossings.size:
            raise ValueError(f"no projection where the most confident member has {p}")
        i = crossings[seed % crossings.size]
        f = lambda at: float(self.probabilities_at(np.array([at]), sigma).max()) - p  # noqa: E731
        return self.ref.point_at(float(optimize.brentq(f, grid[i], grid[i + 1], xtol=1e-14)), seed)


# Six classes, narrow intervals: members whose top class is unconfident, where Eq. 39 over-claims.
ENSEMBLE_THRESHOLDS = [
    [-0.73, 0.35, 0.58, 0.75, 0.86],
    [-0.95, -0.83, -0.66, -0.16, 0.5],
    [-0.83, -0.49, -0.37, -0.28, 0.49],
]


def test_eas_is_sound_on_interval_members():
    model = IntervalEnsemble(ENSEMBLE_THRESHOLDS)
    report = check_soundness(
        Cohen(n0=30, n=300, alpha=0.1), GaussianNoise(0.3), strategy=EnsembleAfterSmoothing(), model=model, trials=300
    )
    assert report.sound, str(report)
    assert report.certified > 300


def test_the_harness_catches_the_published_radius_with_sampled_bounds():
    @attrs.frozen
    class Published(EnsembleAfterSmoothing):
        def certificate(self, certifier, smoothed, x, generator=None):
            cert = super().certificate(certifier, smoothed, x, generator)
            if cert.prediction == ABSTAIN:
                return cert
            terms = np.array([cert.details[f"r_{i}"] for i in range(3)])
            return attrs.evolve(cert, radius=theorem5_radius(terms))

    model = IntervalEnsemble(ENSEMBLE_THRESHOLDS)
    report = check_soundness(
        Cohen(n0=100, n=20_000, alpha=0.1),
        GaussianNoise(0.3),
        strategy=Published(),
        model=model,
        regions=(Region("unconfident dissent", 0.5, 0.75),),
        trials=300,
    )
    assert not report.sound, str(report)


@pytest.mark.parametrize("seed", range(4))
def test_the_sound_form_never_exceeds_the_exact_radius(seed):
    # Exact probabilities of random six-class interval ensembles, no sampling.
    rng = np.random.default_rng(seed)
    model, sigma = IntervalEnsemble([sorted(rng.uniform(-1, 1, 5)) for _ in range(3)]), 0.3
    for m in np.linspace(-1.5, 1.5, 61):
        x = model.ref.point_at(float(m), 0)
        p = model.probabilities_at(float(model.ref.projection(x[None])[0]), sigma)
        agree = p.argmax(axis=1) == model.smoothed_class(x, sigma)
        assert sound_radius(member_terms(p.max(axis=1), agree, sigma), agree) <= model.exact_radius(x, sigma) + 1e-9


def test_the_published_radius_over_claims_where_the_sound_one_does_not():
    # Exact probabilities, no sampling: at inputs where a dissenting member is unconfident, Eq. 39 exceeds the
    # exact EAS radius; the sound form never does.
    model, sigma = IntervalEnsemble(ENSEMBLE_THRESHOLDS), 0.3
    over_published = over_sound = 0
    for m in np.linspace(-1.5, 1.5, 121):
        x = model.ref.point_at(float(m), 0)
        p = model.probabilities_at(float(model.ref.projection(x[None])[0]), sigma)
        top_class, top_p = p.argmax(axis=1), p.max(axis=1)
        y0 = model.smoothed_class(x, sigma)
        agree = top_class == y0
        terms = member_terms(top_p, agree, sigma)
        exact = model.exact_radius(x, sigma)
        over_published += theorem5_radius(terms) > exact + 1e-9
        over_sound += sound_radius(terms, agree) > exact + 1e-9
    assert over_sound == 0
    assert over_published >= 10


def test_eas_pipeline_compares_with_ebs_on_the_same_draws(tiny_pipeline):
    from ensemblecert import run

    tiny_pipeline["ensemble"]["smoothing"] = ["ebs", "eas"]
    tiny_pipeline["certification"]["skip"] = 60
    result = run(tiny_pipeline)
    assert set(result.summary.certifiers) == {"ebs/cohen", "eas/cohen"}
    header = (result.output / "certification.tsv").read_text().splitlines()[0].split("\t")
    assert "eas/cohen:radius" in header and "ebs/cohen:radius" in header
    for r in result.results:
        eas = r.outcomes["eas/cohen"].certificate
        assert eas.samples == 220 and (eas.prediction == ABSTAIN) == (eas.radius == 0)
    # the Python API certifies through the same strategy and loop: the same certificates, input by input
    from ensemblecert import build_component, certify_inputs, load_registry

    registry = load_registry()
    test = build_component("dataset", tiny_pipeline["data"], registry).load().test
    indices = [r.index for r in result.results]
    certs = certify_inputs(
        result.pipeline.certification.certifiers[0],
        result.ensemble,
        [test[i][0] for i in indices],
        result.pipeline.noise,
        strategy=build_component("smoothing", "eas", registry),
        batch_size=tiny_pipeline["certification"]["batch_size"],
        seed=tiny_pipeline["seed"],
        indices=indices,
    )
    assert certs == [r.outcomes["eas/cohen"].certificate for r in result.results]
    direct = certify_inputs(
        result.pipeline.certification.certifiers[0],
        result.ensemble,
        [test[i][0] for i in indices],
        result.pipeline.noise,
        batch_size=100,
        seed=tiny_pipeline["seed"],
        indices=indices,
    )
    assert direct == [r.outcomes["ebs/cohen"].certificate for r in result.results]


def test_eas_refuses_a_mechanism_without_n0_n_alpha():
    from ensemblecert import ConfigError, load_pipeline
    from ensemblecert.running.pipeline import check_pipeline

    pipeline, _ = load_pipeline(
        {"ensemble": {"smoothing": "eas"}, "certification": {"certifiers": [{"name": "certify_adp", "radius": 0.25}]}}
    )
    with pytest.raises(ConfigError, match=r"ensemble.smoothing\[0\]: certification.certifiers\[0\]: eas runs CERTIFY"):
        check_pipeline(pipeline)


def test_eas_with_an_aggregator_that_skips_members_is_a_user_error(tiny_pipeline):
    from ensemblecert import UserError, run

    tiny_pipeline["ensemble"].update(smoothing="eas", aggregator={"name": "k_consensus", "k": 1, "order": [0, 1]})
    with pytest.raises(
        UserError,
        match=r"ensemble\.smoothing\[0\]: .*every member's prediction on every draw, but "
        r"ensemble\.aggregator skips members \(as k_consensus does\)",
    ):
        run(tiny_pipeline)
    assert not (Path(tiny_pipeline["output"]) / "checkpoints").exists()  # refused before any training
