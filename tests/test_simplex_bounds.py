"""Bounds on the expectations (Cullen24, Section 2.1): formulas, and the joint level by simulation with many classes."""

import math

import numpy as np
import pytest
from scipy import stats

from ensemblecert.smoothing.expectations import hoeffding_width, multinomial_bounds, softmax_bounds


def test_multinomial_bounds_formulas():
    counts = np.array([[700, 200, 100], [100, 250, 650]])
    selection = np.array([[60, 30, 10], [5, 10, 85]])
    top, e0, e1 = multinomial_bounds(counts, 1000, 0.01, selection=selection)
    assert top.tolist() == [0, 2]
    assert e0[0] == pytest.approx(stats.beta.ppf(0.005, 700, 301))
    # every other class at 0.01 / (2 * 2), the largest, capped at 1 - E0
    assert e1[0] == pytest.approx(min(stats.beta.ppf(1 - 0.0025, 201, 800), 1 - e0[0]))
    assert e1[1] == pytest.approx(stats.beta.ppf(1 - 0.0025, 251, 750))
    top, e0, e1 = multinomial_bounds(counts, 1000, 0.01, procedure="paper")
    assert top.tolist() == [0, 2]
    assert e1[0] == pytest.approx(stats.beta.ppf(1 - 0.005, 201, 800))  # only the observed runner-up, at alpha / 2


def test_the_selected_class_is_bounded_even_when_another_leads_the_estimation():
    counts = np.array([[300, 600, 100]])
    top, e0, e1 = multinomial_bounds(counts, 1000, 0.01, selection=np.array([[55, 40, 5]]))
    assert top.tolist() == [0] and e0[0] < 0.3 and e1[0] > 0.6  # no certificate for class 0 here


def test_softmax_bounds_formulas():
    means = np.array([[0.6, 0.3, 0.1]])
    assert hoeffding_width(1000, 0.005) == pytest.approx(math.sqrt(math.log(2 / 0.01) / 2000))  # Eq. 4 as printed
    top, e0, e1 = softmax_bounds(means, 1000, 0.01, selection=means)
    assert e0[0] == pytest.approx(0.6 - hoeffding_width(1000, 0.005))
    assert e1[0] == pytest.approx(0.3 + hoeffding_width(1000, 0.0025))
    _, e0p, e1p = softmax_bounds(means, 1000, 0.01, procedure="paper")
    assert e1p[0] == pytest.approx(0.3 + hoeffding_width(1000, 0.005)) and e0p[0] == e0[0]
    _, lo, hi = softmax_bounds(np.array([[0.999, 0.001]]), 10, 0.01, selection=np.array([[1.0, 0.0]]))
    assert 0 <= lo[0] and hi[0] <= 1 - lo[0]  # clipped, and E1 never above 1 - E0


def joint_miss_rate(p, n, alpha, procedure, trials=4000, seed=0):
    """How often E0 > p_top or E1 < (the largest other class probability), over simulated multinomial counts."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, p, size=trials)
    selection = rng.multinomial(50, p, size=trials)
    top, e0, e1 = multinomial_bounds(counts, n, alpha, selection=selection, procedure=procedure)
    p = np.asarray(p)
    rest = np.where(np.arange(len(p))[None] == top[:, None], -1.0, p[None])
    return float(np.mean((e0 > p[top]) | (e1 < rest.max(axis=1))))


def test_the_sound_procedure_keeps_its_level_where_the_paper_procedure_does_not():
    # five equally likely classes: the paper's top class is the largest of five noisy counts, so its lower bound
    # exceeds that class's true probability far more often than alpha / 2 (measured 0.116 of 4000 at alpha = 0.05).
    p = [0.2] * 5
    alpha = 0.05
    assert joint_miss_rate(p, 2000, alpha, "sound") <= alpha
    assert joint_miss_rate(p, 2000, alpha, "paper") > 2 * alpha
    for p in ([0.3, 0.3, 0.3, 0.1], [0.34, 0.33, 0.33], [0.7, 0.1, 0.1, 0.1]):
        assert joint_miss_rate(p, 2000, alpha, "sound") <= alpha


def test_a_class_chosen_elsewhere_is_bounded_under_both_procedures():
    counts = np.array([[300, 600, 100]])
    top, e0, e1 = multinomial_bounds(counts, 1000, 0.01, top=[0])
    assert top.tolist() == [0] and e0[0] == pytest.approx(stats.beta.ppf(0.005, 300, 701))
    top, e0, e1 = multinomial_bounds(counts, 1000, 0.01, procedure="paper", top=[0])
    assert e1[0] == pytest.approx(stats.beta.ppf(1 - 0.005, 601, 400))  # the runner-up of the fixed class
    top, e0, e1 = softmax_bounds(np.array([[0.3, 0.6, 0.1]]), 1000, 0.01, top=[0])
    assert e0[0] == pytest.approx(0.3 - hoeffding_width(1000, 0.005))
