"""Certifier components for the mechanisms of "It's Simplex!" (004): one tally per input, bounds, a radius.

Each certifier draws ``n0`` selection samples (the sound procedure; the paper's procedure draws none) and ``n``
estimation samples (:func:`ensemblecert.draw_expectations`, which keeps both the class counts and the softmax
sums), turns them into ``(class, E0, E1)`` for the chosen expectation and certifies the radius of its mechanism
(:mod:`.mechanisms`), recording ``e0`` and ``e1`` (and, for ``best``, every member's radius and the winner) in
the certificate's details.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
from torch import Tensor

from ensemblecert import (
    ABSTAIN,
    EXPECTATIONS,
    PROCEDURES,
    Certificate,
    Certifier,
    NoiseSampler,
    SmoothedClassifier,
    draw_expectations,
)
from ensemblecert.validators import in_range, one_of, probability

from .mechanisms import MECHANISMS

#: Which mechanisms hold for which expectation (Li et al.'s bound needs multinomial outputs, 004 Sec. 2.2).
APPLIES = {
    "multinomial": ("cohen", "cohen_two_sided", "li", "lecuyer", "dp"),
    "softmax": ("cohen", "cohen_two_sided", "lecuyer", "dp"),
}
#: The paper's sets for ``best`` (Algorithms 1 and 2).
DEFAULT_SETS = {"multinomial": ["cohen", "li", "dp"], "softmax": ["lecuyer", "dp"]}


def parse_member(entry: str, expectation: str) -> tuple[str, str]:
    """``(expectation, mechanism)`` for an entry of ``best.of``: ``"dp"`` (the certifier's own expectation) or
    ``"softmax:dp"``; a ValueError that says what is wrong otherwise."""
    if not isinstance(entry, str):
        raise ValueError(f"entries must be mechanism names, got {entry!r}")
    which, _, name = entry.rpartition(":")
    which = which or expectation
    if which not in EXPECTATIONS:
        raise ValueError(f"{entry!r}: the expectation before ':' must be one of {', '.join(map(repr, EXPECTATIONS))}")
    if name not in MECHANISMS:
        raise ValueError(f"{entry!r}: unknown mechanism {name!r}; known: {', '.join(map(repr, MECHANISMS))}")
    if name not in APPLIES[which]:
        raise ValueError(f"{name} does not apply to {which} expectations; use expectation = 'multinomial'")
    return which, name


@attrs.frozen
class SimplexCertifier(Certifier):
    """Shared sampling and bounds; subclasses name their mechanism."""

    mechanism: ClassVar[str]

    n0: int = attrs.field(default=100, validator=in_range(1))
    n: int = attrs.field(default=100_000, validator=in_range(1))
    alpha: float = attrs.field(default=0.001, validator=probability)
    expectation: str = attrs.field(default="multinomial", validator=one_of(EXPECTATIONS))
    procedure: str = attrs.field(default="sound", validator=one_of(PROCEDURES))

    def __attrs_post_init__(self) -> None:
        self.members()  # refuses a mechanism that does not apply to the expectation

    def members(self) -> list[tuple[str, str]]:
        """``(expectation, mechanism)`` pairs whose radius this certifier takes."""
        return [parse_member(self.mechanism, self.expectation)]

    def check_noise(self, noise: NoiseSampler) -> str | None:
        if getattr(noise, "family", None) != "gaussian":
            return f"these mechanisms certify isotropic Gaussian noise only, got {getattr(noise, 'family', noise)!r} noise"
        return None

    def certify(self, smoothed: SmoothedClassifier, x: Tensor, generator: torch.Generator | None = None) -> Certificate:
        draws = draw_expectations(smoothed, x, self.n0, self.n, procedure=self.procedure, generator=generator)
        members = self.members()
        expectations = list(dict.fromkeys(which for which, _ in members))
        # Section 4.1: members sharing one pair of bounds need no correction; two pairs split alpha between them,
        # and speak of one class (the multinomial selection's), so every member certifies the same prediction
        top = draws.multinomial_top(self.procedure) if len(expectations) > 1 else None
        bounds = {
            which: draws.bounds(which, self.alpha / len(expectations), self.procedure, top=top) for which in expectations
        }
        sigma = smoothed.noise.sigma
        radii = [float(MECHANISMS[name](bounds[which][1], bounds[which][2], sigma)) for which, name in members]
        winner = max(range(len(radii)), key=radii.__getitem__)
        top, e0, e1 = bounds[members[winner][0]]
        details = {"e0": e0, "e1": e1}
        if len(expectations) > 1:
            for which, (_, lo, hi) in bounds.items():
                details.update({f"e0_{which}": lo, f"e1_{which}": hi})
        if self.mechanism == "best":
            details.update({f"r_{entry}": r for entry, r in zip(self.entries(), radii)})
            details["winner"] = float(winner)
        if not radii[winner] > 0:
            return Certificate(ABSTAIN, 0.0, draws.samples, details)
        return Certificate(top, radii[winner], draws.samples, details)

    def entries(self) -> list[str]:
        """The members as written in results columns (``r_<entry>``)."""
        return [self.mechanism]


@attrs.frozen
class TwoSidedCohen(SimplexCertifier):
    """Cohen et al.'s two-sided bound ``sigma / 2 (PhiInv(E0) - PhiInv(E1))``: the Neyman-Pearson ceiling (004)."""

    mechanism: ClassVar[str] = "cohen_two_sided"


@attrs.frozen
class Li(SimplexCertifier):
    """Li et al.'s Renyi-divergence radius (004 Eq. 8); multinomial expectations only."""

    mechanism: ClassVar[str] = "li"


@attrs.frozen
class Lecuyer(SimplexCertifier):
    """Lecuyer et al.'s differential-privacy radius (004 Eq. 5), sensitivity 1."""

    mechanism: ClassVar[str] = "lecuyer"


@attrs.frozen
class DifferentialPrivacy(SimplexCertifier):
    """The improved differential-privacy radius (004 Eqs. 16-18): the analytic Gaussian mechanism, optimised."""

    mechanism: ClassVar[str] = "dp"


def _check_of(_instance: object, _attribute: attrs.Attribute, value: list[str] | None) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a non-empty list of mechanism names, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"names a mechanism twice: {value!r}")


@attrs.frozen
class Best(SimplexCertifier):
    """The ensemble of mechanisms (004 Corollary 4.3, Algorithms 1-2): the largest radius over ``of``.

    Members that share one pair of bounds need no further alpha correction (Section 4.1). ``of`` defaults to
    the paper's sets (cohen, li and dp for multinomial expectations; lecuyer and dp for softmax); an entry may
    name its expectation (``"softmax:dp"``), and a set that mixes both expectations bounds each at ``alpha / 2``,
    both for the class the multinomial selection picks (so ``best`` never exceeds a member on another class).
    Records every member's radius (``r_<entry>``) and the winner's position in ``of`` (``winner``); with mixed
    expectations ``e0`` and ``e1`` are the winner's, and each expectation's bounds are recorded too.
    """

    mechanism: ClassVar[str] = "best"
    of: list[str] | None = attrs.field(default=None, validator=_check_of)

    def entries(self) -> list[str]:
        return list(self.of) if self.of is not None else DEFAULT_SETS[self.expectation]

    def members(self) -> list[tuple[str, str]]:
        pairs = [parse_member(entry, self.expectation) for entry in self.entries()]
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"of: names a mechanism twice: {self.entries()!r}")
        return pairs
