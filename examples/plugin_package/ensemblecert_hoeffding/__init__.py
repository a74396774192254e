"""CERTIFY with Hoeffding's bound: a certifier that a third party adds to ensemblecert from its own package.

Like Cohen et al.'s CERTIFY it picks the top class on ``n0`` draws and bounds its probability on ``n`` fresh ones,
but with Hoeffding's inequality, ``p_lower = count / n - sqrt(ln(1 / alpha) / 2n)``, which needs no special
functions and holds for any bounded statistic; it is looser than Clopper-Pearson's exact bound, so it certifies
smaller radii on the same draws. It imports only ensemblecert's public API.
"""

from __future__ import annotations

import attrs

from ensemblecert import ABSTAIN, Certificate, Certifier, gaussian_radius, hoeffding_width, hookimpl
from ensemblecert.validators import in_range, probability


def hoeffding_lower(count: int, n: int, alpha: float) -> float:
    """A lower confidence bound at level ``1 - alpha`` on a probability seen ``count`` times in ``n`` draws."""
    return count / n - hoeffding_width(n, alpha)


@attrs.frozen
class HoeffdingCertify(Certifier):
    """CERTIFY with a Hoeffding lower bound on the top class's probability."""

    n0: int = attrs.field(default=100, validator=in_range(1))
    n: int = attrs.field(default=10_000, validator=in_range(1))
    alpha: float = attrs.field(default=0.001, validator=probability)

    noise_families = ("gaussian",)

    def failure_probability(self) -> float:
        return self.alpha

    def certify(self, smoothed, x, generator=None):
        top = smoothed.tally(x, self.n0, generator=generator).top
        count = int(smoothed.tally(x, self.n, generator=generator).counts[top])
        p_lower = hoeffding_lower(count, self.n, self.alpha)
        details = {"count": float(count), "p_lower": p_lower}
        if p_lower <= 0.5:
            return Certificate(ABSTAIN, 0.0, self.n0 + self.n, details)
        radius = float(gaussian_radius(1.0 - p_lower, smoothed.noise.sigma))
        return Certificate(top, radius, self.n0 + self.n, details)


@hookimpl
def register_certifiers(register):
    register("hoeffding", HoeffdingCertify)
