"""Randomized smoothing's PREDICT and CERTIFY (Cohen et al., 2019).

CERTIFY as Algorithm 1 of Horvath22: ``n0`` draws select the top class, ``n`` fresh
draws give a one-sided Clopper-Pearson lower bound on its probability at level ``1 - alpha``; above
one half it certifies ``sigma * Phi^-1(p_lower)`` (Theorem 3.1 with ``p_B = 1 - p_A``), else abstains.
The radius is computed from ``1 - p_lower`` directly, so it stays exact (and finite) as ``p_lower -> 1``.

With ``expectation = "multinomial"`` or ``"softmax"`` it is instead Eq. 9 of "It's Simplex!"
(Cullen24): ``sigma PhiInv(E0)`` with ``E0`` and ``E1`` bounded at ``alpha / 2`` each as that
paper does (Section 2.1: Clopper-Pearson on the class counts, or Hoeffding on the mean softmax output), so its
certificates line up with the other mechanisms of that paper on the same draws.
"""

from __future__ import annotations

import attrs
import torch
from scipy import stats
from torch import Tensor

from ensemblecert import (
    ABSTAIN,
    EXPECTATIONS,
    HARD,
    PROCEDURES,
    SOFT,
    Certificate,
    Certifier,
    CertifyPlan,
    SmoothedClassifier,
    clopper_pearson_lower_gap,
    draw_expectations,
    gaussian_radius,
    hookimpl,
    randomized_clopper_pearson_lower_gap,
)
from ensemblecert.validators import in_range, one_of, probability


def cohen_radius(p_lower: float, sigma: float) -> float:
    """``sigma * Phi^-1(p_lower)`` when ``p_lower > 1/2``, else 0 (no certificate).

    Precise only as far as ``p_lower`` is; :meth:`Cohen.radius` works from ``1 - p_lower``.
    """
    return float(gaussian_radius(1.0 - p_lower, sigma))


@attrs.frozen
class Cohen(Certifier):
    """CERTIFY of randomized smoothing (Algorithm 1 of Horvath22), isotropic Gaussian noise.

    ``expectation`` (unset by default) switches to Eq. 9 of Cullen24 under multinomial or softmax expectations;
    ``procedure`` then chooses between the sound selection and the paper's (see
    ``ensemblecert.smoothing.expectations``).
    """

    n0: int = attrs.field(default=100, validator=in_range(1))
    n: int = attrs.field(default=100_000, validator=in_range(1))
    alpha: float = attrs.field(default=0.001, validator=probability)
    expectation: str | None = attrs.field(default=None, validator=attrs.validators.optional(one_of(EXPECTATIONS)))
    procedure: str = attrs.field(default="sound", validator=one_of(PROCEDURES))
    #: A randomized certificate: the randomized Clopper-Pearson bound (Voracek24), exact where Clopper-Pearson's is
    #: conservative, so the radius is larger at the same n; its uniform is drawn from the input's noise generator
    #: after the draws (seeded like them) and recorded in the row (``u``).
    randomized: bool = False

    def __attrs_post_init__(self) -> None:
        if self.procedure != "sound" and self.expectation is None:
            raise ValueError(
                f"procedure {self.procedure!r} applies to the expectations of Cullen24 only; set expectation as well"
            )
        if self.randomized and self.expectation is not None:
            raise ValueError("randomized applies to CERTIFY's Clopper-Pearson bound, not to Cullen24's expectations")

    noise_families = ("gaussian",)

    def failure_probability(self) -> float:
        return self.alpha

    def classifier(self) -> str:
        """The hard smoothed classifier, except under softmax expectations (the soft one)."""
        return SOFT if self.expectation == "softmax" else HARD

    def certify_plan(self) -> CertifyPlan | None:
        """CERTIFY's plan, so EAS can run it per member (not under Cullen24's expectations: that is Eq. 9; not
        randomized)."""
        return CertifyPlan(self.n0, self.n, self.alpha) if self.expectation is None and not self.randomized else None

    def radius(self, count: int, n: int, sigma: float) -> tuple[float, float]:
        """``(p_lower, radius)`` from ``count`` top-class hits in ``n`` draws, without sampling."""
        gap = float(clopper_pearson_lower_gap(count, n, self.alpha))
        return 1.0 - gap, float(gaussian_radius(gap, sigma))

    def certify(self, smoothed: SmoothedClassifier, x: Tensor, generator: torch.Generator | None = None) -> Certificate:
        if self.expectation is not None:
            return self._certify_expectation(smoothed, x, generator)
        top = smoothed.tally(x, self.n0, generator=generator).top
        count = int(smoothed.tally(x, self.n, generator=generator).counts[top])
        details: dict[str, float] = {"count": float(count)}
        if self.randomized:
            u = 1.0 - float(torch.rand((), generator=generator, device=_device(generator)))  # in (0, 1]
            gap = randomized_clopper_pearson_lower_gap(count, self.n, self.alpha, u)
            p_lower, radius, details["u"] = 1.0 - gap, float(gaussian_radius(gap, smoothed.noise.sigma)), u
        else:
            p_lower, radius = self.radius(count, self.n, smoothed.noise.sigma)
        details["p_lower"] = p_lower
        if radius <= 0.0:
            return Certificate(ABSTAIN, 0.0, self.n0 + self.n, details)
        return Certificate(top, radius, self.n0 + self.n, details)

    def _certify_expectation(
        self, smoothed: SmoothedClassifier, x: Tensor, generator: torch.Generator | None
    ) -> Certificate:
        """Eq. 9 of Cullen24: ``sigma PhiInv(E0)`` when ``E0 > 1/2``, the bounds at ``alpha / 2`` each."""
        draws = draw_expectations(smoothed, x, self.n0, self.n, procedure=self.procedure, generator=generator)
        top, e0, e1 = draws.bounds(self.expectation, self.alpha, self.procedure)
        radius = float(gaussian_radius(1.0 - e0, smoothed.noise.sigma))
        details = {"e0": e0, "e1": e1}
        if radius <= 0.0:
            return Certificate(ABSTAIN, 0.0, draws.samples, details)
        return Certificate(top, radius, draws.samples, details)

    def predict(self, smoothed: SmoothedClassifier, x: Tensor, generator: torch.Generator | None = None) -> int:
        """PREDICT: the top class of ``n`` draws if a two-sided binomial test against the runner-up rejects
        equality at level ``alpha``, else :data:`ABSTAIN` (Cohen et al., 2019, Section 3.2)."""
        counts = smoothed.tally(x, self.n, generator=generator).counts
        top2 = torch.topk(counts, 2)
        n_a, n_b = int(top2.values[0]), int(top2.values[1])
        if stats.binomtest(n_a, n_a + n_b, 0.5).pvalue <= self.alpha:
            return int(top2.indices[0])
        return ABSTAIN


def _device(generator: torch.Generator | None) -> torch.device | str:
    return generator.device if generator is not None else "cpu"


@hookimpl
def register_certifiers(register):
    register("cohen", Cohen)
