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

Stopping: with a target ``radius``, look after every ``batch`` draws and stop once the lower bound
certifies it (report the larger radius the bound allows) or the upper bound, at its own level ``beta``,
shows it unreachable; without one, double the batch at every look and stop once the upper bound is at
most 1/2 (abstain) or the radii the two bounds allow differ by at most ``tolerance``. At ``max_samples`` certify
what the lower bound allows, as CERTIFY does. An early stop only costs radius, never soundness: the certificate
always comes from the lower bound.
"""

from __future__ import annotations

import math
from enum import IntEnum

import attrs
import numpy as np
import torch
from scipy import optimize, special, stats
from torch import Tensor

from ensemblecert import ABSTAIN, Certificate, Certifier, SmoothedClassifier, hookimpl
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


def level_of(hits: int, draws: int, alpha: float, prior: tuple[float, float] = PRIOR) -> float:
    """The threshold ``log(1/alpha)``, raised by more than the floating-point error of ``log M_t`` near the bounds,
    so that a bound found on the computed martingale errs outwards (the interval only grows)."""
    a, b = prior
    centre = min(max(hits / draws, 1e-300), 1.0 - 1e-16)
    size = (
        abs(special.betaln(a + hits, b + draws - hits))
        + abs(special.betaln(a, b))
        + hits * abs(math.log(centre))
        + (draws - hits) * abs(math.log1p(-centre))
        + 1.0
    )
    return math.log(1.0 / alpha) + RELATIVE_ERROR * size


def excludes(p: float, hits: int, draws: int, alpha: float) -> bool:
    """Whether ``p`` lies outside the confidence sequence at level ``alpha``: one evaluation, no root finding
    (erring towards "inside", as the bounds do)."""
    return bool(log_mixture(p, hits, draws) >= level_of(hits, draws, alpha))


def confidence_sequence(hits: int, draws: int, alpha: float) -> tuple[float, float]:
    """The interval ``{p : M_t(p) < 1/alpha}`` after ``hits`` in ``draws``: valid at every ``t`` at once. Both ends
    err outwards by more than the arithmetic's error (:func:`level_of`)."""
    level = level_of(hits, draws, alpha)
    centre = hits / draws
    inside = lambda p: log_mixture(p, hits, draws) - level  # noqa: E731 - negative inside the interval
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

    def certify(self, smoothed: SmoothedClassifier, x: Tensor, generator: torch.Generator | None = None) -> Certificate:
        top = smoothed.tally(x, self.n0, generator=generator).top
        sigma = smoothed.noise.sigma
        hits = draws = looks = 0
        while True:
            grow = 1 if self.radius is not None else 2**looks  # without a target, batches double
            size = min(self.batch * grow, self.max_samples - draws)
            looks += 1
            hits += int(smoothed.tally(x, size, generator=generator).counts[top])
            draws += size
            stop = self.decide(hits, draws, sigma)
            if stop is not None:
                break
        lower, upper = self.bounds(hits, draws)  # the certificate: always the lower bound at alpha
        details = {"stop": float(stop), "draws": float(draws), "count": float(hits), "p_lower": lower, "p_upper": upper}
        if lower <= 0.5:
            return Certificate(ABSTAIN, 0.0, self.n0 + draws, details)
        return Certificate(top, radius_of(lower, sigma), self.n0 + draws, details)


@hookimpl
def register_certifiers(register):
    register("sequential", Sequential)
