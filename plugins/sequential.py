"""An anytime-valid sequential certifier: stop after any batch, keep CERTIFY's guarantee.

CERTIFY fixes n in advance; CERTIFYADP fixes a target radius and its stages. ``sequential`` draws batches
after one ``n0`` selection draw and, after every batch, bounds ``c_A``'s probability with a time-uniform
confidence sequence: with probability at least ``1 - alpha`` the bounds hold at every look at once, so the
radius ``sigma PhiInv(lower bound)`` reported at whatever time the procedure stops is wrong with probability
at most ``alpha`` (Ville's inequality), just like CERTIFY's.

The confidence sequence is the beta-binomial mixture (Robbins, 1970; Howard, Ramdas, McAuliffe and Sekhon,
"Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 2021): with ``S`` hits in
``t`` draws and a ``Beta(a, b)`` mixing prior,

    M_t(p) = B(a + S, b + t - S) / (B(a, b) p^S (1 - p)^(t - S))

is a nonnegative martingale with ``M_0 = 1`` under the true ``p``, so ``{p : M_t(p) < 1/alpha}`` covers ``p`` at
all ``t`` simultaneously with probability ``1 - alpha``. The prior is Jeffreys' ``Beta(1/2, 1/2)``.

Stopping: with a target ``radius``, look after every draw and stop once the lower bound certifies it (report
the larger radius the bound allows) or the upper bound, at its own level ``beta``, shows it unreachable: the
decisions are hit-count thresholds tabulated once per ``t`` (:func:`thresholds`), so looking costs nothing and
draws come in batches (64, then doubling up to ``batch``) of which only those up to the deciding one count.
Without a target, double the batch at every look and stop once the upper bound is at most 1/2 (abstain) or the
radii the two bounds allow differ by at most ``tolerance``. The certifier is stepwise (:class:`SequentialDecision`),
so the certification loop fills each forward pass with many undecided inputs' draws. At ``max_samples`` certify
what the lower bound allows, as CERTIFY does. An early stop only costs radius, never soundness: the certificate
always comes from the lower bound.
"""

from __future__ import annotations

import functools
import math
from enum import IntEnum

import attrs
import numpy as np
import torch
from scipy import optimize, special, stats
from torch import Tensor

from ensemblecert import ABSTAIN, Certificate, Certifier, Decision, SmoothedClassifier, decide, hookimpl
from ensemblecert.validators import in_range, probability

PRIOR = (0.5, 0.5)


def log_mixture(
    p: np.ndarray | float, hits: np.ndarray | int, draws: np.ndarray | int, prior: tuple[float, float] = PRIOR
):
    """``log M_t(p)`` of the beta-binomial mixture martingale (module docstring), vectorized."""
    a, b = prior
    p, hits, draws = (
        np.asarray(p, dtype=np.float64),
        np.asarray(hits, dtype=np.float64),
        np.asarray(draws, dtype=np.float64),
    )
    misses = draws - hits
    with np.errstate(divide="ignore", invalid="ignore"):
        value = (
            special.betaln(a + hits, b + misses)
            - special.betaln(a, b)
            - np.where(hits > 0, hits * np.log(p), 0.0)
            - np.where(misses > 0, misses * np.log1p(-p), 0.0)
        )
    return value if value.ndim else float(value)


#: Relative error allowed for in ``log M_t`` (scipy's ``betaln`` is off by about 2.4e-14 relative near 1e5 draws).
RELATIVE_ERROR = 1e-12


def level_of(hits: int, draws: int, alpha: float) -> float:
    """The threshold ``log(1/alpha)``, raised by more than the floating-point error of ``log M_t`` near the bounds,
    so that a bound found on the computed martingale errs outwards (the interval only grows)."""
    return float(level(np.asarray(float(hits)), np.asarray(float(draws)), alpha))


def level(hits: np.ndarray, draws: np.ndarray, alpha: float) -> np.ndarray:
    """:func:`level_of` for arrays: every tabulated decision errs towards "undecided"."""
    a, b = PRIOR
    centre = np.clip(hits / draws, 1e-300, 1.0 - 1e-16)
    size = (
        np.abs(special.betaln(a + hits, b + draws - hits))
        + abs(special.betaln(a, b))
        + hits * np.abs(np.log(centre))
        + (draws - hits) * np.abs(np.log1p(-centre))
        + 1.0
    )
    return math.log(1.0 / alpha) + RELATIVE_ERROR * size


def _certifies(q: float, hits: np.ndarray, draws: np.ndarray, alpha: float) -> np.ndarray:
    """Whether ``hits`` in ``draws`` put the confidence sequence at ``alpha`` above ``q``."""
    return (hits > q * draws) & (log_mixture(q, hits, draws) >= level(hits, draws, alpha))


def _refutes(q: float, hits: np.ndarray, draws: np.ndarray, beta: float) -> np.ndarray:
    """Whether ``hits`` in ``draws`` put the confidence sequence at ``beta`` below ``q``."""
    return (hits < q * draws) & (log_mixture(q, hits, draws) >= level(hits, draws, beta))


@functools.lru_cache(maxsize=16)
def thresholds(q: float, alpha: float, beta: float, max_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """For ``t = 0 .. max_samples`` draws: the least hit count that certifies ``p > q`` at ``alpha`` (``t + 1``
    where none does) and the greatest that refutes it at ``beta`` (``-1`` where none does). Found by bisection
    over the hit count for every ``t`` at once (the martingale grows with the distance of ``S / t`` from ``q``)."""
    t = np.arange(max_samples + 1, dtype=np.float64)
    t[0] = 1.0  # no decision after no draw (set below)
    # certify: the least S in (q t, t] that certifies; bisection keeps "lo fails, hi certifies (or is t + 1)"
    lo, hi = np.floor(q * t), t + 1.0
    while np.any(hi - lo > 1):
        mid = np.floor((lo + hi) / 2)
        ok = _certifies(q, np.minimum(mid, t), t, alpha) & (mid <= t)
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
    certify = hi.astype(np.int64)
    # refute: the greatest S in [0, q t) that refutes; bisection keeps "lo refutes (or is -1), hi fails"
    lo, hi = np.full_like(t, -1.0), np.ceil(q * t)
    while np.any(hi - lo > 1):
        mid = np.floor((lo + hi) / 2)
        ok = _refutes(q, np.maximum(mid, 0.0), t, beta) & (mid >= 0)
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    refute = lo.astype(np.int64)
    certify[0], refute[0] = 1, -1
    return certify, refute


def look(
    hits: int, draws: int, hit: np.ndarray, certify: np.ndarray, refute: np.ndarray, certified: int, refuted: int
) -> tuple[int, int, int, int]:
    """Look after each new draw (``hit``: whether it returned the class tested, in order) against the tables of
    several thresholds (rows of ``certify`` and ``refute``, from :func:`thresholds`, in increasing order): how many
    are certified (from the smallest) and refuted (from the largest). Returns ``(hits, draws, certified, refuted)``
    at the first draw after which every threshold is decided, or after the last draw."""
    running = hits + np.cumsum(hit)
    t = np.arange(draws + 1, draws + len(hit) + 1)
    up = np.maximum(np.maximum.accumulate((running[None, :] >= certify[:, t]).sum(axis=0)), certified)
    down = np.maximum(np.maximum.accumulate((running[None, :] <= refute[:, t]).sum(axis=0)), refuted)
    decided = np.flatnonzero(up + down >= certify.shape[0])
    last = int(decided[0]) if decided.size else len(hit) - 1  # the draw that decides, or the last one seen
    return int(running[last]), int(t[last]), int(up[last]), int(down[last])


def excludes(p: float, hits: int, draws: int, alpha: float) -> bool:
    """Whether ``p`` lies outside the confidence sequence at level ``alpha``: one evaluation, no root finding
    (erring towards "inside", as the bounds do)."""
    return bool(log_mixture(p, hits, draws) >= level_of(hits, draws, alpha))


def confidence_sequence(hits: int, draws: int, alpha: float) -> tuple[float, float]:
    """The interval ``{p : M_t(p) < 1/alpha}`` after ``hits`` in ``draws``: valid at every ``t`` at once. Both ends
    err outwards by more than the arithmetic's error (:func:`level_of`)."""
    threshold = level_of(hits, draws, alpha)
    centre = hits / draws
    inside = lambda p: log_mixture(p, hits, draws) - threshold  # noqa: E731 - negative inside the interval
    slack = 4e-15  # brentq's tolerance, so that each bound errs outwards
    lower = 0.0 if inside(0.0) < 0 else max(0.0, optimize.brentq(inside, 0.0, centre, xtol=1e-15, rtol=1e-15) - slack)
    upper = 1.0 if inside(1.0) < 0 else min(1.0, optimize.brentq(inside, centre, 1.0, xtol=1e-15, rtol=1e-15) + slack)
    return lower, upper


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
    count against the thresholds of :func:`thresholds`, 64 draws at a time, then twice as many up to ``batch``);
    without one, batches of ``batch`` that double, looked at after each (:meth:`Sequential.decide`)."""

    def __init__(self, certifier: Sequential, sigma: float) -> None:
        self.certifier, self.sigma = certifier, sigma
        self.selection: list[Tensor] = []
        self.top: int | None = None
        self.hits = self.draws = self.looks = 0
        self.stop: Stop | None = None
        self.size = min(64, certifier.batch)
        self.tables = None
        if certifier.radius is not None:
            q = max(float(stats.norm.cdf(certifier.radius / sigma)), 0.5)
            self.tables = thresholds(q, certifier.alpha, certifier.beta, certifier.max_samples)

    def wants(self) -> int:
        c = self.certifier
        if self.top is None:
            return c.n0 - sum(len(s) for s in self.selection)
        if self.stop is not None:
            return 0
        size = self.size if self.tables is not None else c.batch * 2**self.looks  # without a target, batches double
        return min(size, c.max_samples - self.draws)

    def observe(self, classes: Tensor) -> None:
        classes = classes[: self.wants()]
        if self.top is None:
            self.selection.append(classes)
            if self.wants() == 0:
                drawn = torch.cat(self.selection)
                self.top = int(torch.bincount(drawn).argmax())  # the most frequent class, lowest index on ties
            return
        hits = (classes == self.top).numpy()
        if self.tables is None:
            self.hits, self.draws, self.looks = self.hits + int(hits.sum()), self.draws + len(hits), self.looks + 1
            self.stop = self.certifier.decide(self.hits, self.draws, self.sigma)
            return
        certify, refute = self.tables
        self.hits, self.draws, up, down = look(self.hits, self.draws, hits, certify[None], refute[None], 0, 0)
        capped = self.draws >= self.certifier.max_samples
        self.stop = Stop.TARGET if up else Stop.UNREACHABLE if down else Stop.CAP if capped else None
        self.size = min(2 * self.size, self.certifier.batch)

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
