"""Bounds on a smoothed classifier's expectations (Cullen24, Section 2.1 and Eq. 4): ``E0`` below the top class,
``E1`` above the runner-up, from one tally.

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

import attrs
import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from .sampling import SmoothedClassifier, Tally
from .stats import clopper_pearson_lower, clopper_pearson_upper

#: What is averaged over the noise: the predicted class (one-hot) or the softmax output.
EXPECTATIONS = ("multinomial", "softmax")
#: How the class and the runner-up are chosen: sound (a separate selection draw) or as the paper does.
PROCEDURES = ("sound", "paper")


def _select(
    values: np.ndarray, selection: ArrayLike | None, procedure: str, top: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The class per input and, for the paper's procedure, its runner-up (both from ``values`` itself); the sound
    procedure takes the class from ``selection`` and bounds every other class, so it returns no runner-up.
    ``top``, when given, is the class (chosen elsewhere, from draws independent of ``values`` for soundness)."""
    if procedure not in PROCEDURES:
        raise ValueError(f"procedure must be one of {PROCEDURES}, got {procedure!r}")
    given = None if top is None else np.broadcast_to(np.asarray(top, dtype=np.int64), values.shape[:-1])
    if procedure == "paper":
        classes = given if given is not None else np.argmax(values, axis=-1)
        rest = values.copy()
        np.put_along_axis(rest, classes[..., None], -np.inf, axis=-1)
        return classes, np.argmax(rest, axis=-1)
    if given is not None:
        return given, None
    if selection is None:
        raise ValueError("the sound procedure needs the outputs of a separate selection draw")
    return np.argmax(np.atleast_2d(np.asarray(selection)), axis=-1), None


def multinomial_bounds(
    counts: ArrayLike,
    n: int,
    alpha: float,
    *,
    selection: ArrayLike | None = None,
    procedure: str = "sound",
    top: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(class, E0, E1)`` per input from class counts ``[B, K]`` over ``n`` draws (Clopper-Pearson, Beta method).

    ``sound``: the class is the argmax of ``selection`` (counts of separate draws); ``E1`` is the largest upper
    bound over the other ``K - 1`` classes at ``alpha / (2 (K - 1))``, capped at ``1 - E0``. ``paper``: the top and
    runner-up of ``counts`` itself, each bounded at ``alpha / 2``. ``top`` fixes the class instead.
    """
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    rows = np.arange(counts.shape[0])
    top, second = _select(counts, selection, procedure, top)
    e0 = np.asarray(clopper_pearson_lower(counts[rows, top], n, alpha / 2))
    if second is not None:
        return top, e0, np.asarray(clopper_pearson_upper(counts[rows, second], n, alpha / 2))
    others = counts.shape[1] - 1
    upper = np.asarray(clopper_pearson_upper(counts, n, alpha / (2 * max(others, 1))))
    upper[rows, top] = -np.inf
    e1 = np.minimum(upper.max(axis=-1), 1.0 - e0)
    return top, e0, e1


#: Added to Hoeffding's half-width: more than the rounding error of a mean of softmax outputs summed in float64.
MEAN_SLACK = 1e-12


def hoeffding_width(n: int, level: float) -> float:
    """One-sided Hoeffding half-width at ``level`` for the mean of ``n`` values in [0, 1]: ``sqrt(ln(1/level) / 2n)``,
    plus :data:`MEAN_SLACK` so that the bounds err outwards.

    At ``level = alpha/2`` this is Eq. 4's printed half-width ``sqrt(ln(2/alpha) / 2n)``.
    """
    return math.sqrt(math.log(1.0 / level) / (2.0 * n)) + MEAN_SLACK


def softmax_bounds(
    means: ArrayLike,
    n: int,
    alpha: float,
    *,
    selection: ArrayLike | None = None,
    procedure: str = "sound",
    top: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(class, E0, E1)`` per input from mean softmax outputs ``[B, K]`` over ``n`` draws (Hoeffding, Eq. 4),
    clipped to [0, 1]. ``sound`` and ``paper`` as in :func:`multinomial_bounds` (``selection``: the mean softmax of
    separate draws)."""
    means = np.atleast_2d(np.asarray(means, dtype=np.float64))
    rows = np.arange(means.shape[0])
    top, second = _select(means, selection, procedure, top)
    e0 = np.clip(means[rows, top] - hoeffding_width(n, alpha / 2), 0, 1)
    if second is not None:
        return top, e0, np.clip(means[rows, second] + hoeffding_width(n, alpha / 2), 0, 1)
    others = means.shape[1] - 1
    rest = means.copy()
    rest[rows, top] = -np.inf
    e1 = np.clip(rest.max(axis=-1) + hoeffding_width(n, alpha / (2 * max(others, 1))), 0, 1)
    return top, e0, np.minimum(e1, 1.0 - e0)


@attrs.frozen
class ExpectationDraws:
    """What one input's draws say about both expectations: class counts and mean softmax outputs ``[K]`` of the
    ``n`` estimation draws and, for the sound procedure, of the separate selection draws (``None`` otherwise)."""

    n: int
    counts: np.ndarray
    means: np.ndarray
    selection_counts: np.ndarray | None
    selection_means: np.ndarray | None
    samples: int

    def multinomial_top(self, procedure: str = "sound") -> int:
        """The class the multinomial view selects (from the selection draw, or for the paper's procedure from
        the estimation draw)."""
        counts = self.selection_counts if procedure == "sound" else self.counts
        if counts is None:
            raise ValueError("the sound procedure needs the outputs of a separate selection draw")
        return int(np.argmax(counts))

    def bounds(
        self, expectation: str, alpha: float, procedure: str = "sound", *, top: int | None = None
    ) -> tuple[int, float, float]:
        """``(class, E0, E1)`` for ``expectation`` at joint level ``1 - alpha`` (see :func:`multinomial_bounds`);
        ``top`` fixes the class (so that bounds of both expectations speak of one class)."""
        if expectation == "multinomial":
            classes, e0, e1 = multinomial_bounds(
                self.counts[None],
                self.n,
                alpha,
                procedure=procedure,
                top=top,
                selection=None if self.selection_counts is None else self.selection_counts[None],
            )
        elif expectation == "softmax":
            classes, e0, e1 = softmax_bounds(
                self.means[None],
                self.n,
                alpha,
                procedure=procedure,
                top=top,
                selection=None if self.selection_means is None else self.selection_means[None],
            )
        else:
            raise ValueError(f"expectation must be one of {EXPECTATIONS}, got {expectation!r}")
        return int(classes[0]), float(e0[0]), float(e1[0])


def _means(tally: Tally, n: int) -> np.ndarray:
    """The mean softmax output of a tally drawn with ``softmax=True``."""
    if tally.prob_sums is None:
        raise ValueError("the smoothed classifier returned no softmax sums; it must support tally(..., softmax=True)")
    return (tally.prob_sums / n).numpy()


def draw_expectations(
    smoothed: SmoothedClassifier,
    x: Tensor,
    n0: int,
    n: int,
    *,
    procedure: str = "sound",
    generator: torch.Generator | None = None,
) -> ExpectationDraws:
    """Draw ``n0`` selection samples (the sound procedure only) and ``n`` estimation samples of ``x``, keeping
    both the class counts and the softmax sums, so every expectation's bounds come from the same draws."""
    if procedure not in PROCEDURES:
        raise ValueError(f"procedure must be one of {PROCEDURES}, got {procedure!r}")
    sel_counts = sel_means = None
    samples = n
    if procedure == "sound":
        first = smoothed.tally(x, n0, generator=generator, softmax=True)
        sel_counts, sel_means = first.counts.numpy().astype(np.float64), _means(first, n0)
        samples += n0
    tally = smoothed.tally(x, n, generator=generator, softmax=True)
    return ExpectationDraws(
        n=n,
        counts=tally.counts.numpy().astype(np.float64),
        means=_means(tally, n),
        selection_counts=sel_counts,
        selection_means=sel_means,
        samples=samples,
    )
