"""An anytime-valid sequential certifier: stop after any batch, keep CERTIFY's guarantee.

CERTIFY fixes n in advance; CERTIFYADP fixes a target radius and its stages. ``sequential`` draws batches
after one ``n0`` selection draw and, after every batch, bounds ``c_A``'s probability with a time-uniform
confidence sequence: with probability at least ``1 - alpha`` the bounds hold at every look at once, so the
radius ``sigma PhiInv(lower bound)`` reported at whatever time the procedure stops is wrong with probability
at most ``alpha`` (Ville's inequality), just like CERTIFY's.

The confidence sequence is the beta-binomial mixture (Robbins70, Howard21; computed in
:mod:`.confidence_sequences`): with ``S`` hits in ``t`` draws and a ``Beta(a, b)`` mixing prior,

    M_t(p) = B(a + S, b + t - S) / (B(a, b) p^S (1 - p)^(t - S))

is a nonnegative martingale with ``M_0 = 1`` under the true ``p``, so ``{p : M_t(p) < 1/alpha}`` covers ``p`` at
all ``t`` simultaneously with probability ``1 - alpha``. The prior is Jeffreys' ``Beta(1/2, 1/2)``.

Stopping: with a target ``radius``, look after every draw and stop once the lower bound certifies it (report
the larger radius the bound allows) or the upper bound, at its own level ``beta``, shows it unreachable: the
decisions are hit-count thresholds tabulated once per ``t`` (``confidence_sequences.thresholds``), so looking
costs nothing and draws come in batches (as many as must be drawn before the next decision could fall, and at
least a quarter of those drawn so far: :func:`next_draws`) of which only those up to the deciding one count.
Without a target, double the batch at every look and stop once the upper bound is at most 1/2 (abstain) or the
radii the two bounds allow differ by at most ``tolerance``. The certifier is stepwise (:class:`SequentialDecision`),
so the certification loop fills each forward pass with many undecided inputs' draws. At ``max_samples`` certify
what the lower bound allows, as CERTIFY does. An early stop only costs radius, never soundness: the certificate
always comes from the lower bound.
"""

from __future__ import annotations

from enum import IntEnum

import attrs
import torch
from scipy import stats
from torch import Tensor

from ensemblecert import ABSTAIN, Certificate, Certifier, Decision, SmoothedClassifier, decide, hookimpl
from ensemblecert.validators import in_range, probability

from .confidence_sequences import Tables, confidence_sequence, excludes, look, next_draws, tables


def radius_of(p: float, sigma: float) -> float:
    """``sigma PhiInv(p)``, ``-inf`` at 0 and ``inf`` at 1."""
    return float(sigma * stats.norm.ppf(p))


class Stop(IntEnum):
    """Why the procedure stopped (recorded as ``details["stop"]``)."""

    TARGET = 1  # the lower bound certifies the target radius
    UNREACHABLE = 2  # the upper bound shows the target cannot be certified
    PRECISE = 3  # without a target: the radius is known to within the tolerance
    HOPELESS = 4  # without a target: the upper bound is at most 1/2
    CAP = 5  # max_samples reached


@attrs.frozen
class Sequential(Certifier):
    """Anytime-valid CERTIFY: batches until a time-uniform confidence sequence decides (see the module)."""

    radius: float | None = attrs.field(default=None, validator=attrs.validators.optional(in_range(0)))
    n0: int = attrs.field(default=100, validator=in_range(1))
    batch: int = attrs.field(default=1_000, validator=in_range(1))
    max_samples: int = attrs.field(default=100_000, validator=in_range(1))
    alpha: float = attrs.field(default=0.001, validator=probability)
    beta: float = attrs.field(default=0.001, validator=probability)
    tolerance: float = attrs.field(default=0.02, validator=in_range(0, low_open=True))

    noise_families = ("gaussian",)
    stepwise = True

    def failure_probability(self) -> float:
        return self.alpha

    def bounds(self, hits: int, draws: int) -> tuple[float, float]:
        """The confidence sequence's lower bound at ``alpha`` (the certificate's) and upper bound at ``beta`` (for
        stopping early only), valid at every look at once."""
        return confidence_sequence(hits, draws, self.alpha)[0], confidence_sequence(hits, draws, self.beta)[1]

    def decide(self, hits: int, draws: int, sigma: float) -> Stop | None:
        """Whether to stop after ``hits`` in ``draws``, and why; ``None`` to draw another batch.

        With a target, the threshold ``q = Phi(radius / sigma)`` is tested against the sequence directly:
        below it (the lower bound reaches ``q``) certifies, above it at level ``beta`` proves it unreachable.
        """
        centre = hits / draws
        if self.radius is not None:
            q = max(float(stats.norm.cdf(self.radius / sigma)), 0.5)
            if centre > q and excludes(q, hits, draws, self.alpha):
                return Stop.TARGET
            if centre < q and excludes(q, hits, draws, self.beta):
                return Stop.UNREACHABLE
        elif centre < 0.5 and excludes(0.5, hits, draws, self.beta):
            return Stop.HOPELESS
        elif centre > 0.5:
            lower, upper = self.bounds(hits, draws)
            if lower > 0.5 and radius_of(upper, sigma) - radius_of(lower, sigma) <= self.tolerance:
                return Stop.PRECISE
        return Stop.CAP if draws >= self.max_samples else None

    def decision(self, sigma: float, label: int | None) -> SequentialDecision:
        return SequentialDecision(self, sigma)

    def certify(self, smoothed: SmoothedClassifier, x: Tensor, generator: torch.Generator | None = None) -> Certificate:
        return decide(smoothed, x, self.decision(float(smoothed.noise.sigma), None), generator)


class SequentialDecision(Decision):
    """One input: ``n0`` selection draws pick ``c_A``; then, with a target, every draw is looked at (its running hit
    count against the tabulated thresholds, asked for as :func:`next_draws` says, at most ``batch`` at a time);
    without one, batches of ``batch`` that double, looked at after each (:meth:`Sequential.decide`). What it wants
    is worked out once per look (the certification loop asks several times per pass)."""

    def __init__(self, certifier: Sequential, sigma: float) -> None:
        self.certifier, self.sigma = certifier, sigma
        self.selection: list[Tensor] = []
        self.top: int | None = None
        self.hits = self.draws = self.looks = 0
        self.stop: Stop | None = None
        self.tables: Tables | None = None
        if certifier.radius is not None:
            q = max(float(stats.norm.cdf(certifier.radius / sigma)), 0.5)
            self.tables = tables((q,), certifier.alpha, certifier.beta, certifier.max_samples)
        self._wanted = self._next()

    def wants(self) -> int:
        return self._wanted

    def _next(self) -> int:
        c = self.certifier
        if self.top is None:
            return c.n0 - sum(len(s) for s in self.selection)
        if self.stop is not None:
            return 0
        most = min(c.batch, c.max_samples - self.draws)
        if self.tables is not None:
            return next_draws(self.hits, self.draws, self.tables, 0, 0, most)
        return min(c.batch * 2**self.looks, c.max_samples - self.draws)  # without a target, batches double

    def observe(self, classes: Tensor) -> None:
        self._look(classes[: self._wanted])
        self._wanted = self._next()

    def _look(self, classes: Tensor) -> None:
        if self.top is None:
            self.selection.append(classes)
            if sum(len(s) for s in self.selection) == self.certifier.n0:
                drawn = torch.cat(self.selection)
                self.top = int(torch.bincount(drawn).argmax())  # the most frequent class, lowest index on ties
            return
        hits = (classes == self.top).numpy()
        if self.tables is None:
            self.hits, self.draws, self.looks = self.hits + int(hits.sum()), self.draws + len(hits), self.looks + 1
            self.stop = self.certifier.decide(self.hits, self.draws, self.sigma)
            return
        t = self.tables
        self.hits, self.draws, up, down = look(self.hits, self.draws, hits, t.certify, t.refute, 0, 0)
        capped = self.draws >= self.certifier.max_samples
        self.stop = Stop.TARGET if up else Stop.UNREACHABLE if down else Stop.CAP if capped else None

    def certificate(self) -> Certificate:
        c = self.certifier
        assert self.top is not None and self.stop is not None  # decided
        lower, upper = c.bounds(self.hits, self.draws)  # the certificate: always the lower bound at alpha
        details = {
            "stop": float(self.stop),
            "draws": float(self.draws),
            "count": float(self.hits),
            "p_lower": lower,
            "p_upper": upper,
        }
        if lower <= 0.5:
            return Certificate(ABSTAIN, 0.0, c.n0 + self.draws, details)
        return Certificate(self.top, radius_of(lower, self.sigma), c.n0 + self.draws, details)


@hookimpl
def register_certifiers(register):
    register("sequential", Sequential)
