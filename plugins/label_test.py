"""The certified-accuracy question answered directly: does the smoothed classifier return the input's true label
with a radius of at least r? (Voracek24 poses certified accuracy as this test; see docs/methods/label_test.md.)

Every benchmark table asks exactly this per input and radius, and with the label ``y`` known no selection draws
are needed: each draw asks only whether the base classifier returned ``y``. With ``S`` such hits in ``t`` draws,
radius ``r`` is certified at the first draw after which a time-uniform test rejects ``p <= q(r) = Phi(r / sigma)``
for ``p = P(f(x + noise) = y)`` at level ``alpha`` (then the hard smoothed classifier returns ``y`` on the ball of
radius ``sigma PhiInv(p) > r``); it is out of reach once the mirror test rejects ``p >= q(r)`` at level ``beta``.
The procedure stops when every radius is decided, or at ``max_samples``.

The tests are beta-binomial mixture martingales with Jeffreys' prior (Robbins70, Howard21;
:mod:`.confidence_sequences`): by default each radius has its own one-sided mixture, the prior truncated to the
alternative (about 12% fewer draws), or, with ``mixture = "two-sided"``, one confidence sequence serves every
radius. Either way ``alpha`` is not split between the radii: radii are certified from the smallest up, and a
certificate is wrong only if it includes the smallest radius whose ``q(r)`` is at least ``p``, whose own test
then rejected wrongly, which happens with probability at most ``alpha`` whenever the procedure stops. ``beta``
bounds how often a robust input is given up early.

Looking after every draw costs no computation: for each radius the least hit count that certifies after ``t``
draws and the greatest that refutes are tabulated once for ``t = 1 .. max_samples``, and a batch's running hit
counts are compared with them, so the procedure stops at the very draw that decides it however large its batches
(the draws after it in the batch are never looked at). The certifier is stepwise (:class:`LabelDecision`): the
certification loop fills each forward pass with the draws of many undecided inputs, each from its own noise
stream, so an input's certificate does not depend on its company or on the batch size.
"""

from __future__ import annotations

import attrs
import torch
from scipy import special, stats
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
from ensemblecert.validators import in_range, increasing, one_of, probability

from .confidence_sequences import MIXTURES, Tables, confidence_sequence, look, next_draws, one_sided_bound, tables


def lower_bound(hits: int, draws: int, alpha: float, mixture: str) -> float:
    """The lower confidence bound on ``p`` at ``alpha`` after ``hits`` in ``draws`` (what certifies), of the
    ``mixture`` named."""
    if draws == 0:
        return 0.0
    if mixture == "one-sided":
        return one_sided_bound(hits, draws, alpha)
    return confidence_sequence(hits, draws, alpha)[0]


def upper_bound(hits: int, draws: int, beta: float, mixture: str) -> float:
    """The upper confidence bound on ``p`` at ``beta`` (what refutes), of the ``mixture`` named."""
    if draws == 0:
        return 1.0
    if mixture == "one-sided":
        return one_sided_bound(hits, draws, beta, above=False)
    return confidence_sequence(hits, draws, beta)[1]


def largest_certifiable(sigma: float, alpha: float, max_samples: int, mixture: str = "one-sided") -> float:
    """The largest radius ``max_samples`` draws can certify at ``alpha`` (every draw a hit)."""
    return float(sigma * stats.norm.ppf(lower_bound(max_samples, max_samples, alpha, mixture)))


@attrs.frozen
class LabelTest(Certifier):
    """Certified accuracy asked directly: does the smoothed classifier return the true label with each radius?

    Decided draw by draw with a time-uniform test per radius (see the module); certifies the given label, not a
    prediction."""

    radii: list[float] = attrs.field(factory=lambda: [0.25], validator=increasing(0, "radii"))
    alpha: float = attrs.field(default=0.001, validator=probability)
    beta: float = attrs.field(default=0.001, validator=probability)
    max_samples: int = attrs.field(default=100_000, validator=in_range(1))
    #: The largest batch of draws asked for at once (each input is asked for what ``next_draws`` says).
    batch: int = attrs.field(default=4096, validator=in_range(1))
    #: ``one-sided``: each radius tested with Jeffreys' prior truncated to its alternative (fewer draws);
    #: ``two-sided``: one confidence sequence for every radius.
    mixture: str = attrs.field(default="one-sided", validator=one_of(MIXTURES))

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
        reach = largest_certifiable(float(noise.sigma), self.alpha, self.max_samples, self.mixture)
        if self.radii[-1] > reach:
            return (
                f"radius {self.radii[-1]:g} can never be certified: {self.max_samples:,} draws certify at most "
                f"r = {reach:.4g} at sigma = {noise.sigma:g} and alpha = {self.alpha:g}; raise max_samples or drop "
                "the radius"
            )
        return None

    def certify(self, smoothed: SmoothedClassifier, x: Tensor, generator: torch.Generator | None = None) -> Certificate:
        raise NotImplementedError("label_test certifies a given label (certify_label); it makes no prediction")

    def tables(self, sigma: float) -> Tables:
        """Per radius (rows) and number of draws (columns): the certify and refute thresholds on the hit count
        (computed once per setting and shared by every input)."""
        qs = tuple(float(special.ndtr(r / sigma)) for r in self.radii)
        return tables(qs, self.alpha, self.beta, self.max_samples, self.mixture)

    def decision(self, sigma: float, label: int | None) -> LabelDecision:
        if label is None:
            raise ValueError("label_test certifies a given label; none was given")
        return LabelDecision(self, self.tables(sigma), int(label))

    def certify_label(
        self, smoothed: SmoothedClassifier, x: Tensor, label: int, generator: torch.Generator | None = None
    ) -> Certificate:
        return decide(smoothed, x, self.decision(float(smoothed.noise.sigma), label), generator)


class LabelDecision(Decision):
    """One input's state: hits and draws so far, and how many radii are certified (from the smallest) and
    refuted (from the largest). It wants what ``next_draws`` says for the radii still undecided (up to the
    certifier's ``batch``), and looks at them one by one. What it wants is worked out once per look (the
    certification loop asks several times per pass)."""

    def __init__(self, certifier: LabelTest, tables: Tables, label: int) -> None:
        self.certifier, self.tables, self.label = certifier, tables, label
        self.hits = self.draws = self.certified = self.refuted = 0
        self._wanted = self._next()

    def _next(self) -> int:
        c, left = self.certifier, len(self.certifier.radii) - self.certified - self.refuted
        if left <= 0:
            return 0
        most = min(c.batch, c.max_samples - self.draws)
        return next_draws(self.hits, self.draws, self.tables, self.certified, self.certified + left - 1, most)

    def wants(self) -> int:
        return self._wanted

    def observe(self, classes: Tensor) -> None:
        count = min(int(classes.shape[0]), self._wanted)
        if count == 0:
            return
        hit = classes[:count].numpy() == self.label
        t = self.tables
        self.hits, self.draws, self.certified, self.refuted = look(
            self.hits, self.draws, hit, t.certify, t.refute, self.certified, self.refuted
        )
        self._wanted = self._next()

    def certificate(self) -> Certificate:
        c = self.certifier
        lower = lower_bound(self.hits, self.draws, c.alpha, c.mixture)
        upper = upper_bound(self.hits, self.draws, c.beta, c.mixture)
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
