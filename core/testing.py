"""Statistical soundness checks for certifiers.

A certificate is a promise: with probability at least ``1 - alpha`` over the noise, the certified
radius does not exceed the smoothed classifier's true robust radius. :func:`check_soundness` tests
that promise against :class:`LinearModel`, whose smoothed class probabilities and exact robust radius
are known in closed form, over many inputs, and computes the p-value of the observed over-claim
count under "over-claims happen with probability at most alpha" (a one-sided binomial test).
"""

from __future__ import annotations

import math

import attrs
import torch
from scipy import stats
from torch import Tensor, nn

from .certification import input_generator
from .components import ABSTAIN, Certifier, NoiseSampler
from .sampling import MonteCarloSampler


class LinearModel(nn.Module):
    """Two classes split by the hyperplane ``w . x + b = 0`` with ``||w|| = 1``; logits ``(-m, m)``, ``m = w . x + b``.

    Under noise ``N(0, sigma^2 I)`` the base classifier predicts class 1 with probability
    ``Phi(m / sigma)``; the smoothed classifier therefore predicts ``1[m > 0]`` and its exact L2 robust
    radius at ``x`` is ``|m|``, the distance to the hyperplane.
    """

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(dim, generator=gen, dtype=torch.float64)
        self.register_buffer("w", w / w.norm())
        self.register_buffer("b", torch.randn((), generator=gen, dtype=torch.float64))

    def margin(self, x: Tensor) -> Tensor:
        return x.to(self.w.dtype).flatten(1) @ self.w + self.b

    def forward(self, x: Tensor) -> Tensor:
        m = self.margin(x)
        return torch.stack([-m, m], dim=1).to(x.dtype)

    def point_at(self, margin: float, seed: int) -> Tensor:
        """An input whose signed distance to the hyperplane is ``margin``."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(self.w.shape[0], generator=gen, dtype=torch.float64)
        x = x + (margin - float(self.margin(x[None])[0])) * self.w
        return x.to(torch.float32)

    def smoothed_probability(self, x: Tensor, sigma: float) -> float:
        """``P(F(x + e) = 1)`` for ``e ~ N(0, sigma^2 I)``."""
        return float(stats.norm.cdf(float(self.margin(x[None])[0]) / sigma))

    def exact_radius(self, x: Tensor) -> float:
        return abs(float(self.margin(x[None])[0]))

    def smoothed_class(self, x: Tensor) -> int:
        return int(float(self.margin(x[None])[0]) > 0)


@attrs.frozen
class SoundnessReport:
    """How often a mechanism over-claimed, and whether that is compatible with its ``alpha``."""

    trials: int
    overclaims: int
    certified: int
    alpha: float
    p_value: float
    significance: float

    @property
    def sound(self) -> bool:
        return self.p_value >= self.significance

    def __str__(self) -> str:
        return (
            f"{self.overclaims} over-claims in {self.trials} trials ({self.certified} certified); "
            f"allowed rate alpha = {self.alpha:g}, expected at most {self.alpha * self.trials:.1f}; "
            f"one-sided binomial p-value {self.p_value:.3g} (fail below {self.significance:g})"
        )


def check_soundness(
    mechanism: Certifier,
    noise: NoiseSampler,
    *,
    alpha: float | None = None,
    trials: int = 1000,
    dim: int = 16,
    seed: int = 0,
    batch_size: int = 10_000,
    significance: float = 1e-3,
) -> SoundnessReport:
    """Certify ``trials`` inputs of a :class:`LinearModel` and count over-claims.

    An over-claim is a certificate (not an abstention) whose class differs from the smoothed class,
    or whose radius exceeds the exact robust radius. Inputs are spread so that the true top-class
    probability covers ``[0.5, 0.999]``, where certifiers are most likely to overreach. ``alpha`` is
    the mechanism's allowed failure rate (its ``alpha`` attribute when not given).
    """
    alpha = float(alpha if alpha is not None else getattr(mechanism, "alpha"))
    sigma = float(noise.sigma)
    model = LinearModel(dim, seed=seed)
    smoothed = MonteCarloSampler(model, noise, num_classes=2, batch_size=batch_size)
    overclaims = certified = 0
    for i in range(trials):
        p = 0.5 + 0.499 * ((i * 0.6180339887) % 1.0)  # low-discrepancy sweep of [0.5, 0.999]
        margin = sigma * stats.norm.ppf(p) * (1 if i % 2 else -1)
        x = model.point_at(margin, seed=seed * 1_000_003 + i)
        cert = mechanism.certify(smoothed, x, input_generator(seed, i))
        if cert.prediction == ABSTAIN:
            continue
        certified += 1
        wrong_class = cert.prediction != model.smoothed_class(x)
        if wrong_class or cert.radius > model.exact_radius(x) + 1e-9 * max(1.0, abs(margin)):
            overclaims += 1
    p_value = float(stats.binomtest(overclaims, trials, alpha, alternative="greater").pvalue)
    return SoundnessReport(trials, overclaims, certified, alpha, p_value, significance)


def assert_sound(mechanism: Certifier, noise: NoiseSampler, **kwargs: object) -> SoundnessReport:
    """:func:`check_soundness`, raising ``AssertionError`` with the report when the mechanism over-claims."""
    report = check_soundness(mechanism, noise, **kwargs)  # type: ignore[arg-type]
    if not report.sound:
        raise AssertionError(f"{type(mechanism).__name__} over-claims: {report}")
    if math.isnan(report.p_value):  # pragma: no cover - defensive
        raise AssertionError("soundness test produced no p-value")
    return report
