"""Certifier components for the mechanisms of "It's Simplex!" (Cullen24): one tally per input, bounds, a radius.

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
    HARD,
    PROCEDURES,
    SOFT,
    Certificate,
    Certifier,
    SmoothedClassifier,
    draw_expectations,
)
from ensemblecert.validators import FieldError, in_range, one_of, probability

from .mechanisms import MECHANISMS

#: Which mechanisms hold for which expectation (Li et al.'s bound needs multinomial outputs, Cullen24 Sec. 2.2).
APPLIES = {
    "multinomial": ("cohen", "cohen_two_sided", "li", "lecuyer", "dp"),
    "softmax": ("cohen", "cohen_two_sided", "lecuyer", "dp"),
}
#: The paper's sets for ``best`` (Algorithms 1 and 2).
DEFAULT_SETS = {"multinomial": ["cohen", "li", "dp"], "softmax": ["lecuyer", "dp"]}
#: The smoothed classifier each expectation's bounds are about: class counts bound the hard one, the mean softmax
#: output the soft one.
CLASSIFIER = {"multinomial": HARD, "softmax": SOFT}


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

    noise_families = ("gaussian",)

    def failure_probability(self) -> float:
        return self.alpha

    def __attrs_post_init__(self) -> None:
        self.members()  # refuses a mechanism that does not apply to the expectation

    def members(self) -> list[tuple[str, str]]:
        """``(expectation, mechanism)`` pairs whose radius this certifier takes (all of one expectation)."""
        try:
            return [parse_member(self.mechanism, self.expectation)]
        except ValueError as exc:
            raise FieldError("expectation", str(exc)) from None

    def bounded(self) -> str:
        """The expectation whose bounds every member uses."""
        return self.members()[0][0]

    def classifier(self) -> str:
        """The hard smoothed classifier under multinomial expectations, the soft one under softmax expectations."""
        return CLASSIFIER[self.bounded()]

    def certify(self, smoothed: SmoothedClassifier, x: Tensor, generator: torch.Generator | None = None) -> Certificate:
        draws = draw_expectations(smoothed, x, self.n0, self.n, procedure=self.procedure, generator=generator)
        members = self.members()
        # Section 4.1: members sharing one pair of bounds need no further alpha correction
        top, e0, e1 = draws.bounds(members[0][0], self.alpha, self.procedure)
        sigma = smoothed.noise.sigma
        radii = [float(MECHANISMS[name](e0, e1, sigma)) for _, name in members]
        winner = max(range(len(radii)), key=radii.__getitem__)
        details = {"e0": e0, "e1": e1}
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
    """Cohen et al.'s two-sided bound ``sigma / 2 (PhiInv(E0) - PhiInv(E1))``: the Neyman-Pearson ceiling (Cullen24)."""

    mechanism: ClassVar[str] = "cohen_two_sided"


@attrs.frozen
class Li(SimplexCertifier):
    """Li et al.'s Renyi-divergence radius (Cullen24 Eq. 8); multinomial expectations only."""

    mechanism: ClassVar[str] = "li"


@attrs.frozen
class Lecuyer(SimplexCertifier):
    """Lecuyer et al.'s differential-privacy radius (Cullen24 Eq. 5), sensitivity 1."""

    mechanism: ClassVar[str] = "lecuyer"


@attrs.frozen
class DifferentialPrivacy(SimplexCertifier):
    """The improved differential-privacy radius (Cullen24 Eqs. 16-18): the analytic Gaussian mechanism, optimised."""

    mechanism: ClassVar[str] = "dp"


def _check_of(_instance: object, _attribute: attrs.Attribute, value: list[str] | None) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a non-empty list of mechanism names, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"names a mechanism twice: {value!r}")


def check_set(entries: list[str], expectation: str) -> list[tuple[str, str]]:
    """The ``(expectation, mechanism)`` pairs of ``best.of``: every entry a known mechanism for its expectation,
    none twice, all about one smoothed classifier; a ValueError saying what is wrong otherwise."""
    pairs = [parse_member(entry, expectation) for entry in entries]
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"names a mechanism twice: {entries!r}")
    if len({CLASSIFIER[which] for which, _ in pairs}) > 1:
        hard = [e for e, (w, _) in zip(entries, pairs) if CLASSIFIER[w] == HARD]
        soft = [e for e, (w, _) in zip(entries, pairs) if CLASSIFIER[w] == SOFT]
        raise ValueError(
            f"mixes mechanisms about two different classifiers: {hard} certify the hard smoothed classifier "
            f"(class counts), {soft} the soft one (expected softmax), and the larger of their radii holds for "
            "neither; list mechanisms of one expectation here, and put a second best beside it for the other"
        )
    return pairs


@attrs.frozen
class Best(SimplexCertifier):
    """The ensemble of mechanisms (Cullen24 Corollary 4.3, Algorithms 1-2): the largest radius over ``of``.

    Members share one pair of bounds, so they need no further alpha correction (Section 4.1). ``of`` defaults to
    the paper's sets (cohen, li and dp for multinomial expectations; lecuyer and dp for softmax); an entry may
    name its expectation (``"softmax:dp"``). All entries must be of one expectation: multinomial bounds certify
    the hard smoothed classifier and softmax bounds the soft one, two classifiers that can disagree, so the
    larger of two such radii is a promise about neither (a set that mixes them is refused).
    Records every member's radius (``r_<entry>``) and the winner's position in ``of`` (``winner``).
    """

    mechanism: ClassVar[str] = "best"
    of: list[str] | None = attrs.field(default=None, validator=_check_of)

    def entries(self) -> list[str]:
        return list(self.of) if self.of is not None else DEFAULT_SETS[self.expectation]

    def members(self) -> list[tuple[str, str]]:
        try:
            return check_set(self.entries(), self.expectation)
        except ValueError as exc:
            raise FieldError("of", str(exc)) from None
