"""Bounds on the expectations (004, Section 2.1 and Eq. 4): ``E0`` below the top class, ``E1`` above the runner-up.

Two expectations of the same noisy draws: *multinomial* (how often each class is predicted) and *softmax* (the
mean softmax output). Joint level ``1 - alpha``: ``E0`` at ``alpha/2`` and ``E1`` at ``alpha/2`` (Bonferroni).

Selection. The paper takes the top class and the runner-up from the same ``n`` draws it bounds, so with more
than two classes its level is only nominal: the runner-up it bounds is the most frequent *observed* one, not
necessarily the most probable. ensemblecert's default is sound: the class ``c_A`` comes from a separate
selection draw (as in CERTIFY), and ``E1`` bounds every other class at once (upper bounds at
``alpha / (2 (K - 1))`` each, the largest of them), and never exceeds ``1 - E0`` (the other classes share at most
what ``c_A`` leaves). ``procedure="paper"`` reproduces the paper's tables (Algorithms 1 and 2, lines 2-6).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from ensemblecert import clopper_pearson_lower, clopper_pearson_upper

PROCEDURES = ("sound", "paper")


def _select(values: np.ndarray, selection: ArrayLike | None, procedure: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The class per input and, for the paper's procedure, its runner-up (both from ``values`` itself); the sound
    procedure takes the class from ``selection`` and bounds every other class, so it returns no runner-up."""
    if procedure == "paper":
        order = np.argsort(-values, axis=-1, kind="stable")
        return order[..., 0], order[..., 1]
    if procedure != "sound":
        raise ValueError(f"procedure must be one of {PROCEDURES}, got {procedure!r}")
    if selection is None:
        raise ValueError("the sound procedure needs the outputs of a separate selection draw")
    return np.argmax(np.atleast_2d(np.asarray(selection)), axis=-1), None


def multinomial_bounds(
    counts: ArrayLike, n: int, alpha: float, *, selection: ArrayLike | None = None, procedure: str = "sound"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(class, E0, E1)`` per input from class counts ``[B, K]`` over ``n`` draws (Clopper-Pearson, Beta method).

    ``sound``: the class is the argmax of ``selection`` (counts of separate draws); ``E1`` is the largest upper
    bound over the other ``K - 1`` classes at ``alpha / (2 (K - 1))``, capped at ``1 - E0``. ``paper``: the top and
    runner-up of ``counts`` itself, each bounded at ``alpha / 2``.
    """
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    rows = np.arange(counts.shape[0])
    top, second = _select(counts, selection, procedure)
    e0 = np.asarray(clopper_pearson_lower(counts[rows, top], n, alpha / 2))
    if second is not None:
        return top, e0, np.asarray(clopper_pearson_upper(counts[rows, second], n, alpha / 2))
    others = counts.shape[1] - 1
    upper = np.asarray(clopper_pearson_upper(counts, n, alpha / (2 * max(others, 1))))
    upper[rows, top] = -np.inf
    e1 = np.minimum(upper.max(axis=-1), 1.0 - e0)
    return top, e0, e1


def hoeffding_width(n: int, level: float) -> float:
    """One-sided Hoeffding half-width at ``level`` for the mean of ``n`` values in [0, 1]: ``sqrt(ln(1/level) / 2n)``.

    At ``level = alpha/2`` this is Eq. 4's printed half-width ``sqrt(ln(2/alpha) / 2n)``.
    """
    return math.sqrt(math.log(1.0 / level) / (2.0 * n))


def softmax_bounds(
    means: ArrayLike, n: int, alpha: float, *, selection: ArrayLike | None = None, procedure: str = "sound"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(class, E0, E1)`` per input from mean softmax outputs ``[B, K]`` over ``n`` draws (Hoeffding, Eq. 4),
    clipped to [0, 1]. ``sound`` and ``paper`` as in :func:`multinomial_bounds` (``selection``: the mean softmax of
    separate draws)."""
    means = np.atleast_2d(np.asarray(means, dtype=np.float64))
    rows = np.arange(means.shape[0])
    top, second = _select(means, selection, procedure)
    e0 = np.clip(means[rows, top] - hoeffding_width(n, alpha / 2), 0, 1)
    if second is not None:
        return top, e0, np.clip(means[rows, second] + hoeffding_width(n, alpha / 2), 0, 1)
    others = means.shape[1] - 1
    rest = means.copy()
    rest[rows, top] = -np.inf
    e1 = np.clip(rest.max(axis=-1) + hoeffding_width(n, alpha / (2 * max(others, 1))), 0, 1)
    return top, e0, np.minimum(e1, 1.0 - e0)
