"""CERTIFYADP: adaptive sampling for a target radius (Horvath et al., Horvath22, Section 6).

One selection draw of ``n0`` samples picks the class ``c_A``; stage ``i`` then draws ``n_i`` fresh samples
and bounds ``c_A``'s probability with one-sided Clopper-Pearson bounds. A stage certifies the target
radius ``r`` when ``sigma * PhiInv(lower bound at 1 - alpha/s) >= r`` with the lower bound above 1/2;
before the last stage it abstains early when ``sigma * PhiInv(upper bound at 1 - beta/(s-1)) < r``; after
the last stage it abstains (Algorithm 2). Theorem 6.1: a certificate is wrong with probability at most
``alpha`` and an early abstention at a robust input happens with probability at most ``beta`` (both by
Bonferroni over the stages). One instance serves one target radius: list several instances for several radii.
"""

from __future__ import annotations

import math
from enum import Enum

import attrs
import torch
from scipy import stats
from torch import Tensor

from ensemblecert import (
    ABSTAIN,
    Certificate,
    Certifier,
    SmoothedClassifier,
    clopper_pearson_lower_gap,
    clopper_pearson_upper,
    gaussian_radius,
    hookimpl,
)
from ensemblecert.validators import in_range, increasing, probability


class Decision(Enum):
    CERTIFY = "certify"
    ABSTAIN = "abstain"
    CONTINUE = "continue"


def stage_decision(
    count: int, n: int, *, stage: int, stages: int, radius: float, sigma: float, alpha: float, beta: float
) -> tuple[Decision, float, float]:
    """Algorithm 2, lines 6-9, for stage ``stage`` (1-based) of ``stages`` given ``count`` hits of ``c_A`` in ``n``.

    Returns the decision, the lower bound (at ``1 - alpha/stages``) and the upper bound (at
    ``1 - beta/(stages - 1)``; 1 where no upper-bound test is made: the last stage, or a single stage).
    Theorem 6.1 (2) bounds early abstentions only, so the last stage makes no upper-bound test and
    abstains whenever it does not certify.
    """
    gap = float(clopper_pearson_lower_gap(count, n, alpha / stages))
    lower = 1.0 - gap
    if gap < 0.5 and gaussian_radius(gap, sigma) >= radius:
        return Decision.CERTIFY, lower, 1.0
    if stage == stages:
        return Decision.ABSTAIN, lower, 1.0
    upper = float(clopper_pearson_upper(count, n, beta / (stages - 1)))
    if upper < stats.norm.cdf(radius / sigma):  # sigma * PhiInv(upper) < r, without PhiInv's overflow at 1
        return Decision.ABSTAIN, lower, upper
    return Decision.CONTINUE, lower, upper


def matching_final_stage(n: int, alpha: float, stages: int) -> int:
    """Theorem 6.1 (3): ``n_s = ceil(n (1 - log_alpha(s)))`` samples in the last stage at ``alpha / s`` reach
    at least the largest radius CERTIFY reaches with ``n`` samples at ``alpha``."""
    return math.ceil(n * (1.0 - math.log(stages) / math.log(alpha)))


@attrs.frozen
class CertifyAdp(Certifier):
    """CERTIFYADP (Algorithm 2 of Horvath22): certify one target radius with stages that may stop early."""

    radius: float = attrs.field(validator=in_range(0))
    n0: int = attrs.field(default=100, validator=in_range(1))
    stages: list[int] = attrs.field(
        factory=lambda: [1_000, 10_000, 125_000], validator=increasing(1, "sample counts (n_1 < ... < n_s)")
    )
    alpha: float = attrs.field(default=0.001, validator=probability)
    beta: float = attrs.field(default=0.0001, validator=probability)

    noise_families = ("gaussian",)

    def failure_probability(self) -> float:
        return self.alpha

    def targets(self) -> tuple[float, ...]:
        return (self.radius,)

    def certify(self, smoothed: SmoothedClassifier, x: Tensor, generator: torch.Generator | None = None) -> Certificate:
        top = smoothed.tally(x, self.n0, generator=generator).top
        sigma = smoothed.noise.sigma
        used = self.n0
        s = len(self.stages)
        for stage, n in enumerate(self.stages, start=1):
            count = int(smoothed.tally(x, n, generator=generator).counts[top])
            used += n
            decision, lower, upper = stage_decision(
                count, n, stage=stage, stages=s, radius=self.radius, sigma=sigma, alpha=self.alpha, beta=self.beta
            )
            details = {"stage": float(stage), "count": float(count), "p_lower": lower, "p_upper": upper}
            if decision is Decision.CERTIFY:
                return Certificate(top, self.radius, used, details)
            if decision is Decision.ABSTAIN:
                return Certificate(ABSTAIN, 0.0, used, details)
        raise AssertionError("the last stage always decides")  # pragma: no cover


@hookimpl
def register_certifiers(register):
    register("certify_adp", CertifyAdp)
