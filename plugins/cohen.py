"""Randomized smoothing's PREDICT and CERTIFY (Cohen et al., 2019).

CERTIFY as Algorithm 1 of 001_94e5826843c1fbd1.txt: ``n0`` draws select the top class, ``n`` fresh
draws give a one-sided Clopper-Pearson lower bound on its probability at level ``1 - alpha``; above
one half it certifies ``sigma * Phi^-1(p_lower)`` (Theorem 3.1 with ``p_B = 1 - p_A``), else abstains.
The radius is computed from ``1 - p_lower`` directly, so it stays exact (and finite) as ``p_lower -> 1``.
"""

from __future__ import annotations

import attrs
import torch
from scipy import stats
from torch import Tensor

from ensemblecert import (
    ABSTAIN,
    Certificate,
    Certifier,
    NoiseSampler,
    SmoothedClassifier,
    clopper_pearson_lower_gap,
    gaussian_radius,
    hookimpl,
)
from ensemblecert.validators import in_range, probability


def cohen_radius(p_lower: float, sigma: float) -> float:
    """``sigma * Phi^-1(p_lower)`` when ``p_lower > 1/2``, else 0 (no certificate).

    Precise only as far as ``p_lower`` is; :meth:`Cohen.radius` works from ``1 - p_lower``.
    """
    return float(gaussian_radius(1.0 - p_lower, sigma))


@attrs.frozen
class Cohen(Certifier):
    """CERTIFY of randomized smoothing (Algorithm 1 of 001_94e5826843c1fbd1.txt), isotropic Gaussian noise."""

    n0: int = attrs.field(default=100, validator=in_range(1))
    n: int = attrs.field(default=100_000, validator=in_range(1))
    alpha: float = attrs.field(default=0.001, validator=probability)

    def check_noise(self, noise: NoiseSampler) -> str | None:
        if getattr(noise, "family", None) != "gaussian":
            return f"cohen certifies isotropic Gaussian noise only, got {getattr(noise, 'family', noise)!r} noise"
        return None

    def radius(self, count: int, n: int, sigma: float) -> tuple[float, float]:
        """``(p_lower, radius)`` from ``count`` top-class hits in ``n`` draws, without sampling."""
        gap = float(clopper_pearson_lower_gap(count, n, self.alpha))
        return 1.0 - gap, float(gaussian_radius(gap, sigma))

    def certify(self, smoothed: SmoothedClassifier, x: Tensor, generator: torch.Generator | None = None) -> Certificate:
        top = smoothed.tally(x, self.n0, generator=generator).top
        count = int(smoothed.tally(x, self.n, generator=generator).counts[top])
        p_lower, radius = self.radius(count, self.n, smoothed.noise.sigma)
        details = {"count": float(count), "p_lower": p_lower}
        if radius <= 0.0:
            return Certificate(ABSTAIN, 0.0, self.n0 + self.n, details)
        return Certificate(top, radius, self.n0 + self.n, details)

    def predict(self, smoothed: SmoothedClassifier, x: Tensor, generator: torch.Generator | None = None) -> int:
        """PREDICT: the top class of ``n`` draws if a two-sided binomial test against the runner-up rejects
        equality at level ``alpha``, else :data:`ABSTAIN` (Cohen et al., 2019, Section 3.2)."""
        counts = smoothed.tally(x, self.n, generator=generator).counts
        top2 = torch.topk(counts, 2)
        n_a, n_b = int(top2.values[0]), int(top2.values[1])
        if stats.binomtest(n_a, n_a + n_b, 0.5).pvalue <= self.alpha:
            return int(top2.indices[0])
        return ABSTAIN


@hookimpl
def register_certifiers(register):
    register("cohen", Cohen)
