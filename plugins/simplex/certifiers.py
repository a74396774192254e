"""Certifier components for the mechanisms of "It's Simplex!" (004): one tally per input, bounds, a radius.

Each certifier draws ``n0`` selection samples (the sound procedure; the paper's procedure draws none) and ``n``
estimation samples, turns them into ``(class, E0, E1)`` with :mod:`.bounds` for the chosen expectation, and
certifies the radius of its mechanism (:mod:`.mechanisms`), recording ``e0`` and ``e1`` (and, for ``best``,
every member's radius and the winner) in the certificate's details.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np
import torch
from torch import Tensor

from ensemblecert import ABSTAIN, Certificate, Certifier, NoiseSampler, SmoothedClassifier
from ensemblecert.validators import in_range, one_of, probability

from .bounds import PROCEDURES, multinomial_bounds, softmax_bounds
from .mechanisms import MECHANISMS

EXPECTATIONS = ("multinomial", "softmax")
#: Which mechanisms hold for which expectation (Li et al.'s bound needs multinomial outputs, 004 Sec. 2.2).
APPLIES = {
    "multinomial": ("cohen", "cohen_two_sided", "li", "lecuyer", "dp"),
    "softmax": ("cohen_two_sided", "lecuyer", "dp"),
}
#: The paper's sets for ``best`` (Algorithms 1 and 2).
DEFAULT_SETS = {"multinomial": ["cohen", "li", "dp"], "softmax": ["lecuyer", "dp"]}


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
        for name in self.mechanisms():
            if name not in APPLIES[self.expectation]:
                raise ValueError(f"{name} does not apply to {self.expectation} expectations; use expectation = 'multinomial'")

    def mechanisms(self) -> list[str]:
        return [self.mechanism]

    def check_noise(self, noise: NoiseSampler) -> str | None:
        if getattr(noise, "family", None) != "gaussian":
            return f"these mechanisms certify isotropic Gaussian noise only, got {getattr(noise, 'family', noise)!r} noise"
        return None

    def bounds(
        self, smoothed: SmoothedClassifier, x: Tensor, generator: torch.Generator | None
    ) -> tuple[int, float, float, int]:
        """``(class, E0, E1, samples drawn)`` for ``x``."""
        softmax = self.expectation == "softmax"
        selection, samples = None, self.n
        if self.procedure == "sound":
            first = smoothed.tally(x, self.n0, generator=generator, softmax=softmax)
            selection = (first.prob_sums / self.n0 if softmax else first.counts).numpy()[None]
            samples += self.n0
        tally = smoothed.tally(x, self.n, generator=generator, softmax=softmax)
        if softmax:
            top, e0, e1 = softmax_bounds((tally.prob_sums / self.n).numpy()[None], self.n, self.alpha,
                                         selection=selection, procedure=self.procedure)
        else:
            top, e0, e1 = multinomial_bounds(tally.counts.numpy()[None], self.n, self.alpha,
                                             selection=selection, procedure=self.procedure)
        return int(top[0]), float(e0[0]), float(e1[0]), samples

    def radius(self, e0: float, e1: float, sigma: float) -> tuple[float, dict[str, float]]:
        """The certified radius from the bounds, and what goes into the details."""
        return float(MECHANISMS[self.mechanism](e0, e1, sigma)), {}

    def certify(self, smoothed: SmoothedClassifier, x: Tensor, generator: torch.Generator | None = None) -> Certificate:
        top, e0, e1, samples = self.bounds(smoothed, x, generator)
        radius, extra = self.radius(e0, e1, smoothed.noise.sigma)
        details = {"e0": e0, "e1": e1, **extra}
        if not radius > 0:
            return Certificate(ABSTAIN, 0.0, samples, details)
        return Certificate(top, radius, samples, details)


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


@attrs.frozen
class Best(SimplexCertifier):
    """The ensemble of mechanisms (004 Corollary 4.3, Algorithms 1-2): the largest radius over ``of``.

    All members use the same ``(E0, E1)``, so no further alpha correction is needed (Section 4.1). ``of``
    defaults to the paper's sets: cohen, li and dp for multinomial expectations; lecuyer and dp for softmax.
    Records every member's radius (``r_<name>``) and the winner's position in ``of`` (``winner``).
    """

    mechanism: ClassVar[str] = "best"
    of: list[str] | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.deep_iterable(one_of(list(MECHANISMS))))
    )

    def mechanisms(self) -> list[str]:
        return list(self.of) if self.of is not None else DEFAULT_SETS[self.expectation]

    def radius(self, e0: float, e1: float, sigma: float) -> tuple[float, dict[str, float]]:
        names = self.mechanisms()
        radii = np.array([float(MECHANISMS[name](e0, e1, sigma)) for name in names])
        winner = int(np.argmax(radii))
        return float(radii[winner]), {**{f"r_{n}": float(r) for n, r in zip(names, radii)}, "winner": float(winner)}
