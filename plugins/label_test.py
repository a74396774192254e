"""The certified-accuracy question answered directly: does the smoothed classifier return the input's true label
with a radius of at least r? (Voracek24 poses certified accuracy as this test; see docs/methods/label_test.md.)

Every benchmark table asks exactly this per input and radius, and with the label ``y`` known no selection draws
are needed: each draw asks only whether the base classifier returned ``y``. With ``S`` such hits in ``t`` draws,
the beta-binomial mixture martingale of the ``sequential`` certifier (Robbins70, Howard21; Jeffreys' prior)

    M_t(p) = B(1/2 + S, 1/2 + t - S) / (B(1/2, 1/2) p^S (1 - p)^(t - S))

gives a confidence sequence for ``p = P(f(x + noise) = y)`` that holds at every ``t`` at once. Radius ``r`` is
certified at the first draw after which the sequence at level ``alpha`` lies above ``q(r) = Phi(r / sigma)``
(then the hard smoothed classifier returns ``y`` on the ball of radius ``sigma PhiInv(p) > r``); it is out of
reach once the sequence at level ``beta`` lies below ``q(r)``. The procedure stops when every radius is decided,
or at ``max_samples``.

One sequence serves every radius and every look: a certificate is wrong only if the sequence at ``alpha`` misses
``p``, which happens with probability at most ``alpha`` whatever the radii and whenever the procedure stops, so
``alpha`` is not split between the radii. ``beta`` bounds how often a robust input is given up early.

Looking after every draw costs no computation: for each radius the least hit count that certifies after ``t``
draws and the greatest that refutes are tabulated once for ``t = 1 .. max_samples`` (:func:`thresholds`), and a
batch's running hit counts are compared with them, so the procedure stops at the very draw that decides it
however large its batches (the draws after it in the batch are never looked at). The certifier is stepwise
(:class:`LabelDecision`): the certification loop fills each forward pass with the draws of many undecided inputs,
each from its own noise stream, so an input's certificate does not depend on its company or on the batch size.
"""

from __future__ import annotations

import attrs
import numpy as np
import torch
from scipy import stats
from torch import Tensor

from ensemblecert import (
    ABSTAIN,
    Certificate,
    Certifier,
    Decision,
    NoiseSampler,
    SmoothedClassifier,
    decide,
    hookimpl,
)
from ensemblecert.validators import in_range, increasing, probability

from .sequential import confidence_sequence, look, thresholds

#: Draws in the first batch; each later batch doubles, up to the certifier's ``batch``.
FIRST = 64


def largest_certifiable(sigma: float, alpha: float, max_samples: int) -> float:
    """The largest radius ``max_samples`` draws can certify at ``alpha`` (every draw a hit)."""
    lower = confidence_sequence(max_samples, max_samples, alpha)[0]
    return float(sigma * stats.norm.ppf(lower))


@attrs.frozen
class LabelTest(Certifier):
    """Certified accuracy asked directly: does the smoothed classifier return the true label with each radius?

    Decided draw by draw with one confidence sequence for all ``radii`` (see the module); certifies the given label,
    not a prediction."""

    radii: list[float] = attrs.field(factory=lambda: [0.25], validator=increasing(0, "radii"))
    alpha: float = attrs.field(default=0.001, validator=probability)
    beta: float = attrs.field(default=0.001, validator=probability)
    max_samples: int = attrs.field(default=100_000, validator=in_range(1))
    #: The largest batch of draws asked for at once (the first holds 64; each later one doubles up to this).
    batch: int = attrs.field(default=4096, validator=in_range(1))

    noise_families = ("gaussian",)
    needs_label = True
    stepwise = True

    def failure_probability(self) -> float:
        return self.alpha

    def targets(self) -> tuple[float, ...]:
        return tuple(self.radii)

    def check_noise(self, noise: NoiseSampler) -> str | None:
        problem = super().check_noise(noise)
        if problem:
            return problem
        reach = largest_certifiable(float(noise.sigma), self.alpha, self.max_samples)
        if self.radii[-1] > reach:
            return (
                f"radius {self.radii[-1]:g} can never be certified: {self.max_samples:,} draws certify at most "
                f"r = {reach:.4g} at sigma = {noise.sigma:g} and alpha = {self.alpha:g}; raise max_samples or drop "
                "the radius"
            )
        return None

    def certify(self, smoothed: SmoothedClassifier, x: Tensor, generator: torch.Generator | None = None) -> Certificate:
        raise NotImplementedError("label_test certifies a given label (certify_label); it makes no prediction")

    def tables(self, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """Per radius (rows) and number of draws (columns): the certify and refute thresholds on the hit count."""
        qs = [float(stats.norm.cdf(r / sigma)) for r in self.radii]
        pairs = [thresholds(q, self.alpha, self.beta, self.max_samples) for q in qs]
        return np.stack([c for c, _ in pairs]), np.stack([r for _, r in pairs])

    def decision(self, sigma: float, label: int | None) -> LabelDecision:
        if label is None:
            raise ValueError("label_test certifies a given label; none was given")
        certify, refute = self.tables(sigma)
        return LabelDecision(self, certify, refute, int(label))

    def certify_label(
        self, smoothed: SmoothedClassifier, x: Tensor, label: int, generator: torch.Generator | None = None
    ) -> Certificate:
        return decide(smoothed, x, self.decision(float(smoothed.noise.sigma), label), generator)


class LabelDecision(Decision):
    """One input's state: hits and draws so far, and how many radii are certified (from the smallest) and
    refuted (from the largest). It wants 64 draws, then twice as many as last time (up to the certifier's
    ``batch``), and looks at them one by one."""

    def __init__(self, certifier: LabelTest, certify: np.ndarray, refute: np.ndarray, label: int) -> None:
        self.certifier, self.certify, self.refute, self.label = certifier, certify, refute, label
        self.hits = self.draws = self.certified = self.refuted = 0
        self.size = min(FIRST, certifier.batch)

    def wants(self) -> int:
        if self.certified + self.refuted >= len(self.certifier.radii):
            return 0
        return min(self.size, self.certifier.max_samples - self.draws)

    def observe(self, classes: Tensor) -> None:
        count = min(int(classes.shape[0]), self.wants())
        if count == 0:
            return
        hit = classes[:count].numpy() == self.label
        self.hits, self.draws, self.certified, self.refuted = look(
            self.hits, self.draws, hit, self.certify, self.refute, self.certified, self.refuted
        )
        self.size = min(2 * self.size, self.certifier.batch)

    def certificate(self) -> Certificate:
        c = self.certifier
        lower = confidence_sequence(self.hits, self.draws, c.alpha)[0] if self.draws else 0.0
        upper = confidence_sequence(self.hits, self.draws, c.beta)[1] if self.draws else 1.0
        details = {
            "draws": float(self.draws),
            "count": float(self.hits),
            "p_lower": lower,
            "p_upper": upper,
            "certified_radii": float(self.certified),
            "refuted_radii": float(self.refuted),
        }
        if self.certified == 0:
            return Certificate(ABSTAIN, 0.0, self.draws, details)
        return Certificate(self.label, c.radii[self.certified - 1], self.draws, details)


@hookimpl
def register_certifiers(register):
    register("label_test", LabelTest)
