"""Statistical soundness checks for certifiers.

A certificate is a promise about one smoothed classifier (the hard or the soft one, as the certifier declares):
with probability at least ``1 - alpha`` over the noise, the certified class is that classifier's class and the
certified radius does not exceed its true robust radius. :func:`check_soundness` tests that promise against a
reference model whose smoothed class probabilities and exact robust radii are known in closed form: two classes
(:class:`LinearModel`), K classes (:class:`IntervalModel`), and one whose hard and soft smoothed classifiers
differ (:class:`HardSoftModel`), so a certificate checked against the wrong classifier is caught.

Errors live in particular places, so inputs are not spread evenly: each :class:`Region` is a band of
the true top-class probability (the decision boundary, where a biased class selection over-claims;
moderate and confident inputs; and, for certifiers that certify a target radius, inputs whose exact
radius lies just below that target), and each region gets its own one-sided binomial test of
"over-claims happen with probability at most alpha", Bonferroni-corrected over the regions. A
certifier that over-claims at twice its alpha in any one region is caught (``tests/test_testing.py``
checks this power). Where a certifier's certificate on two classes rests on one bound at a share of alpha (the
Simplex certifiers bound ``E0`` at ``alpha / 2``), pass that share as ``rate`` to test the accounting itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs
import numpy as np
import torch
from scipy import optimize, stats
from torch import Tensor, nn

from .components import ABSTAIN, HARD, SOFT, Certificate, Certifier, NoiseSampler, SmoothingStrategy
from .ensemble.assembly import Ensemble
from .smoothing.certification import DirectSmoothing, Planned, certification_loop
from .smoothing.sampling import MonteCarloSampler, SharedTallies, SmoothedClassifier


class ReferenceModel(Protocol):
    """A base classifier whose smoothed classifiers are known exactly under Gaussian noise of scale ``sigma``;
    ``classifier`` names which one (:data:`~ensemblecert.HARD` or :data:`~ensemblecert.SOFT`)."""

    num_classes: int
    #: Whether the soft smoothed classifier is known in closed form too.
    soft_known: bool

    def __call__(self, x: Tensor) -> Tensor: ...

    def point_with_top_probability(self, p: float, sigma: float, seed: int, classifier: str = HARD) -> Tensor:
        """An input where ``classifier``'s top class has probability ``p`` (the class chosen by ``seed``)."""
        ...

    def smoothed_class(self, x: Tensor, sigma: float, classifier: str = HARD) -> int: ...

    def exact_radius(self, x: Tensor, sigma: float, classifier: str = HARD) -> float: ...


def _known(classifier: str, model: ReferenceModel) -> None:
    if classifier not in (HARD, SOFT):
        raise ValueError(f"classifier must be {HARD!r} or {SOFT!r}, got {classifier!r}")
    if classifier == SOFT and not model.soft_known:
        raise ValueError(f"the soft smoothed classifier of this {type(model).__name__} is not known in closed form")


def _place(w: Tensor, projection: Callable[[Tensor], Tensor], target: float, seed: int) -> Tensor:
    """A random input (from ``seed``) moved along the unit vector ``w`` until ``projection`` is ``target``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(w.shape[0], generator=gen, dtype=torch.float64)
    return (x + (target - float(projection(x[None])[0])) * w).to(torch.float32)


class LinearModel(nn.Module):
    """Two classes split by the hyperplane ``w . x + b = 0`` with ``||w|| = 1``; logits ``(-m, m)``, ``m = w . x + b``.

    Under noise ``N(0, sigma^2 I)`` the base classifier predicts class 1 with probability
    ``Phi(m / sigma)``; the smoothed classifier therefore predicts ``1[m > 0]`` and its exact L2 robust
    radius at ``x`` is ``|m|``, the distance to the hyperplane. The soft smoothed classifier agrees: the expected
    softmax output of class 1, ``E[sigmoid(2 (m + sigma Z))]``, exceeds 1/2 exactly when ``m > 0``, so its class
    and exact radius are the same (inputs are placed by the hard classifier's probability for both).
    """

    num_classes = 2
    soft_known = True
    w: Tensor
    b: Tensor

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
        return _place(self.w, self.margin, margin, seed)

    def point_with_top_probability(self, p: float, sigma: float, seed: int, classifier: str = HARD) -> Tensor:
        _known(classifier, self)
        sign = 1 if seed % 2 else -1
        return self.point_at(sign * sigma * float(stats.norm.ppf(p)), seed)

    def smoothed_probability(self, x: Tensor, sigma: float) -> float:
        """``P(F(x + e) = 1)`` for ``e ~ N(0, sigma^2 I)``."""
        return float(stats.norm.cdf(float(self.margin(x[None])[0]) / sigma))

    def exact_radius(self, x: Tensor, sigma: float | None = None, classifier: str = HARD) -> float:
        _known(classifier, self)
        return abs(float(self.margin(x[None])[0]))

    def smoothed_class(self, x: Tensor, sigma: float | None = None, classifier: str = HARD) -> int:
        _known(classifier, self)
        return int(float(self.margin(x[None])[0]) > 0)


class HardSoftModel(LinearModel):
    """Two classes whose hard and soft smoothed classifiers differ: class 1 is predicted iff ``m = w . x + b > 0``
    (``||w|| = 1``), with softmax output ``high`` for class 1 there and ``low`` (below 1/2) elsewhere.

    Under noise ``N(0, sigma^2 I)``, with ``q = Phi(m / sigma)``: the hard smoothed classifier gives class 1
    probability ``q``, so it predicts ``1[m > 0]`` with exact radius ``|m|``; the soft one has expected class-1
    output ``low + (high - low) q``, so it predicts class 1 iff ``m > m* = sigma PhiInv((1/2 - low) / (high - low))``
    (negative for the defaults) and its exact radius is ``|m - m*|``. Between ``m*`` and 0 they predict different
    classes; elsewhere they agree on the class but not on the radius. The soft classifier's top probability never
    exceeds ``high`` (class 1) or ``1 - low`` (class 0).
    """

    def __init__(self, dim: int, seed: int = 0, *, high: float = 0.99, low: float = 0.45) -> None:
        super().__init__(dim, seed)  # the hyperplane, its margin and the placement of inputs are the linear model's
        if not 0.0 < low < 0.5 < high < 1.0:
            raise ValueError(f"need 0 < low < 1/2 < high < 1, got low = {low}, high = {high}")
        self.high, self.low = float(high), float(low)

    def forward(self, x: Tensor) -> Tensor:
        m = self.margin(x)
        share = torch.where(m > 0, self.high, self.low).to(torch.float64)
        gap = torch.log(share) - torch.log1p(-share)  # logits (0, gap) give softmax (1 - share, share)
        return torch.stack([torch.zeros_like(gap), gap], dim=1).to(x.dtype)

    def soft_threshold(self, sigma: float) -> float:
        """``m*``: where the soft smoothed classifier's class-1 output is exactly 1/2."""
        return float(sigma * stats.norm.ppf((0.5 - self.low) / (self.high - self.low)))

    def _m(self, x: Tensor) -> float:
        return float(self.margin(x[None])[0])

    def point_with_top_probability(self, p: float, sigma: float, seed: int, classifier: str = HARD) -> Tensor:
        _known(classifier, self)
        if classifier == HARD:
            return super().point_with_top_probability(p, sigma, seed)
        span = self.high - self.low
        options = [
            q for q, ok in (((p - self.low) / span, p < self.high), ((1 - p - self.low) / span, p < 1 - self.low)) if ok
        ]
        if not options:
            raise ValueError(f"the soft smoothed classifier never has top-class probability {p} (at most {self.high})")
        return self.point_at(sigma * float(stats.norm.ppf(options[seed % len(options)])), seed)

    def _boundary(self, sigma: float | None, classifier: str) -> float:
        """Where the named smoothed classifier changes class: ``m = 0`` (hard) or ``m = m*`` (soft)."""
        _known(classifier, self)
        if classifier == HARD:
            return 0.0
        if sigma is None:
            raise ValueError("the soft smoothed classifier depends on sigma; pass sigma")
        return self.soft_threshold(sigma)

    def smoothed_class(self, x: Tensor, sigma: float | None = None, classifier: str = HARD) -> int:
        return int(self._m(x) > self._boundary(sigma, classifier))

    def exact_radius(self, x: Tensor, sigma: float | None = None, classifier: str = HARD) -> float:
        return abs(self._m(x) - self._boundary(sigma, classifier))


def nearest_sign_change(
    margin: Callable[[np.ndarray], np.ndarray],
    start: float,
    *,
    step: float,
    limit: float,
    directions: Sequence[float] = (-1.0, 1.0),
) -> float:
    """Distance from ``start`` to the nearest point where the continuous, vectorized ``margin`` (positive at
    ``start``) reaches 0, searched on a grid of ``step`` up to ``limit`` away in each direction and refined
    to 1e-12 with ``brentq``; ``inf`` when it stays positive."""
    grid = np.arange(1, int(math.ceil(limit / step)) + 1) * step
    best = math.inf
    for direction in directions:
        values = margin(start + direction * grid)
        hits = np.flatnonzero(values <= 0)
        if hits.size:
            i = int(hits[0])
            low = grid[i - 1] if i else 0.0
            root = optimize.brentq(
                lambda t: float(margin(np.array([start + direction * t]))[0]), low, grid[i], xtol=1e-13, rtol=1e-14
            )
            best = min(best, root)
    return best


class IntervalModel(nn.Module):
    """K classes by interval of the projection ``m = w . x + b`` (``||w|| = 1``): class ``k`` when
    ``t_k <= m < t_{k+1}`` for thresholds ``t_1 < ... < t_{K-1}`` (``t_0 = -inf``, ``t_K = inf``).

    Under noise ``N(0, sigma^2 I)`` the projection is ``m + sigma Z``, so class ``k`` has probability
    ``Phi((t_{k+1} - m) / sigma) - Phi((t_k - m) / sigma)``; the smoothed classifier depends on ``m`` alone and
    its exact L2 robust radius is the distance along ``m`` to the nearest point where another class takes the
    lead (found to 1e-12 by :func:`nearest_sign_change`). An interior class of width ``w`` never exceeds
    probability ``2 Phi(w / 2 sigma) - 1``, so narrow intervals give inputs whose top class is below 1/2.

    With ``one_hot=True`` the logits are 0 for the interval's class and -1e4 for the others, so the softmax
    output is the one-hot vector of the predicted class (``exp(-1e4)`` is 0 in floating point) and the
    expected softmax equals the class probabilities above: the same closed form holds for softmax expectations.
    Otherwise the logits are minus the distance from ``m`` to each class's interval.
    """

    w: Tensor
    b: Tensor
    t: Tensor

    def __init__(self, dim: int, thresholds: Sequence[float], seed: int = 0, *, one_hot: bool = False) -> None:
        super().__init__()
        t = sorted(float(v) for v in thresholds)
        if len(t) < 1 or len(set(t)) != len(t):
            raise ValueError(f"need at least one threshold, all distinct, got {thresholds}")
        self.thresholds = t
        self.num_classes = len(t) + 1
        self.one_hot = one_hot
        self.soft_known = one_hot  # one-hot outputs: the soft smoothed classifier is the hard one
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(dim, generator=gen, dtype=torch.float64)
        self.register_buffer("w", w / w.norm())
        self.register_buffer("b", torch.randn((), generator=gen, dtype=torch.float64))
        self.register_buffer("t", torch.tensor(t, dtype=torch.float64))
        self._ranges: dict[float, list[tuple[int, float, float]]] = {}

    def projection(self, x: Tensor) -> Tensor:
        return x.to(self.w.dtype).flatten(1) @ self.w + self.b

    def forward(self, x: Tensor) -> Tensor:
        m = self.projection(x)[:, None]
        lower = torch.cat([m.new_full((1,), -math.inf), self.t])[None]
        upper = torch.cat([self.t, m.new_full((1,), math.inf)])[None]
        # minus the distance from m to each class's interval: 0 inside, so the argmax is the interval's class
        logits = -(lower - m).clamp_min(0) - (m - upper).clamp_min(0)
        if self.one_hot:
            inside = (lower <= m) & (m < upper)
            logits = torch.where(inside, 0.0, -1e4).to(logits.dtype)
        return logits.to(x.dtype)

    def probabilities_at(self, m: float | np.ndarray, sigma: float) -> np.ndarray:
        """Class probabilities under noise when the projection is ``m`` (``[K]``, or ``[len(m), K]``)."""
        edges = np.concatenate([[-np.inf], self.thresholds, [np.inf]])
        at = np.asarray(m, dtype=np.float64)
        return np.diff(stats.norm.cdf((edges - at[..., None]) / sigma), axis=-1)

    def lead(self, k: int, sigma: float) -> Callable[[np.ndarray], np.ndarray]:
        """``m -> P_k(m) - max_{j != k} P_j(m)``: positive where class ``k`` is the smoothed class."""

        def margin(m: np.ndarray) -> np.ndarray:
            p = self.probabilities_at(m, sigma)
            return p[..., k] - np.max(np.delete(p, k, axis=-1), axis=-1)

        return margin

    def smoothed_probabilities(self, x: Tensor, sigma: float) -> np.ndarray:
        return self.probabilities_at(float(self.projection(x[None])[0]), sigma)

    def smoothed_class(self, x: Tensor, sigma: float, classifier: str = HARD) -> int:
        _known(classifier, self)
        return int(np.argmax(self.smoothed_probabilities(x, sigma)))

    def exact_radius(self, x: Tensor, sigma: float, classifier: str = HARD) -> float:
        _known(classifier, self)
        m = float(self.projection(x[None])[0])
        top = int(np.argmax(self.probabilities_at(m, sigma)))
        return nearest_sign_change(self.lead(top, sigma), m, step=sigma / 50, limit=self._span(sigma))

    def point_at(self, m: float, seed: int) -> Tensor:
        """An input whose projection is ``m``."""
        return _place(self.w, self.projection, m, seed)

    def point_with_top_probability(self, p: float, sigma: float, seed: int, classifier: str = HARD) -> Tensor:
        """An input whose smoothed top class has probability ``p``; ``seed`` chooses among the classes (and
        sides of their intervals) where that happens."""
        _known(classifier, self)
        options = [
            (k, peak, end)
            for k, peak, end in self._top_ranges(sigma)
            if self._pk(peak, k, sigma) >= p > self._pk(end, k, sigma)
        ]
        if not options:
            raise ValueError(f"no class of this model has top-class probability {p} at sigma = {sigma}")
        k, peak, end = options[seed % len(options)]
        m = optimize.brentq(lambda at: self._pk(at, k, sigma) - p, peak, end, xtol=1e-14, rtol=1e-15)
        return self.point_at(m, seed)

    def _pk(self, m: float, k: int, sigma: float) -> float:
        return float(self.probabilities_at(m, sigma)[k])

    def _span(self, sigma: float) -> float:
        return self.thresholds[-1] - self.thresholds[0] + 20 * sigma

    def _top_ranges(self, sigma: float) -> list[tuple[int, float, float]]:
        """``(class, peak, end)``: from the projection where class k is most likely to where it stops leading
        (or far out), one entry per side on which its probability falls; cached per sigma."""
        if sigma not in self._ranges:
            t = self.thresholds
            peaks = [t[0] - 20 * sigma] + [(a + b) / 2 for a, b in zip(t, t[1:])] + [t[-1] + 20 * sigma]
            ranges = []
            for k, peak in enumerate(peaks):
                if self.lead(k, sigma)(np.array([peak]))[0] <= 0:
                    continue  # this class never leads
                sides = [1.0] if k == 0 else [-1.0] if k == len(peaks) - 1 else [-1.0, 1.0]
                for side in sides:
                    d = nearest_sign_change(
                        self.lead(k, sigma), peak, step=sigma / 50, limit=self._span(sigma), directions=[side]
                    )
                    ranges.append((k, peak, peak + side * min(d, self._span(sigma))))
            self._ranges[sigma] = ranges
        return self._ranges[sigma]


@attrs.frozen
class Region:
    """Inputs whose true smoothed top-class probability lies in ``[low, high]``."""

    name: str
    low: float
    high: float

    @classmethod
    def below_radius(cls, radius: float, sigma: float, width: float = 0.02) -> Region:
        """Inputs whose exact radius lies in ``[radius - width * sigma, radius)``: where a certifier that
        certifies ``radius`` as a target must abstain, yet may be tempted not to. The band is narrow
        because errors concentrate at the threshold (a CERTIFYADP without Bonferroni over its stages
        over-claims 15% of the time in a band 0.02 sigma wide at alpha = 0.1, but 7.5% in one 0.15 wide)."""
        low = stats.norm.cdf(max(radius / sigma - width, 0.0))
        high = stats.norm.cdf(radius / sigma)
        return cls(f"just below r = {radius:g}", max(float(low), 0.5), float(high))


#: The default regions. With n Monte-Carlo samples the boundary band should be narrower than about
#: ``1 / sqrt(n)`` to catch selection errors; 0.5 to 0.52 suits the small n (100 to 1,000) that
#: soundness tests use, and catches a class chosen on the estimation draws at p ~ 1e-12.
DEFAULT_REGIONS = (
    Region("boundary", 0.5, 0.52),
    Region("moderate", 0.52, 0.9),
    Region("confident", 0.9, 0.9999),
)


@attrs.frozen
class RegionReport:
    region: Region
    trials: int
    certified: int
    overclaims: int
    p_value: float


@attrs.frozen
class SoundnessReport:
    """How often a certifier over-claimed in each region, and whether that is compatible with its ``alpha``."""

    regions: tuple[RegionReport, ...]
    alpha: float
    significance: float

    @property
    def trials(self) -> int:
        return sum(r.trials for r in self.regions)

    @property
    def overclaims(self) -> int:
        return sum(r.overclaims for r in self.regions)

    @property
    def certified(self) -> int:
        return sum(r.certified for r in self.regions)

    @property
    def p_value(self) -> float:
        """The smallest per-region p-value, Bonferroni-adjusted for the number of regions."""
        return min(1.0, len(self.regions) * min(r.p_value for r in self.regions))

    @property
    def sound(self) -> bool:
        return self.p_value >= self.significance

    def __str__(self) -> str:
        lines = [
            f"allowed over-claim rate {self.alpha:g}; adjusted p-value {self.p_value:.3g} "
            f"(fail below {self.significance:g})"
        ]
        for r in self.regions:
            lines.append(
                f"  {r.region.name} (p in [{r.region.low:.4g}, {r.region.high:.4g}]): {r.overclaims} over-claims "
                f"in {r.trials} trials ({r.certified} certified, at most {self.alpha * r.trials:.1f} expected), "
                f"p-value {r.p_value:.3g}"
            )
        if self.sound:
            lines.append(f"verdict: SOUND (no region over-claims more than {self.alpha:g} allows)")
        else:
            worst = min(self.regions, key=lambda r: r.p_value)
            lines.append(f"verdict: NOT SOUND (over-claims in {worst.region.name} beyond {self.alpha:g})")
        return "\n".join(lines)


def overclaims(cert: Certificate, model: ReferenceModel, x: Tensor, sigma: float) -> bool:
    """Whether ``cert`` promises more than the truth about the smoothed classifier it names
    (``cert.classifier``): a wrong class, or a radius beyond that classifier's exact one."""
    if cert.prediction == ABSTAIN:
        return False
    exact = model.exact_radius(x, sigma, cert.classifier)
    wrong_class = cert.prediction != model.smoothed_class(x, sigma, cert.classifier)
    return wrong_class or cert.radius > exact + 1e-9 * max(1.0, exact)


def _run_region(
    certifier: Certifier,
    strategy: SmoothingStrategy,
    smoothed: SmoothedClassifier,
    model: ReferenceModel,
    region: Region,
    *,
    trials: int,
    rate: float,
    seed: int,
    offset: int,
    failed: Callable[[Certificate, Tensor], bool],
) -> RegionReport:
    """Certify ``trials`` inputs sweeping ``region``'s probability band (low-discrepancy, alternating classes) of the
    classifier the certifier certifies, through the certification loop of the API and the pipeline; count those
    where ``failed(certificate, x)``, and test the count against ``rate`` (one-sided binomial)."""
    sigma = float(smoothed.noise.sigma)
    classifier = strategy.classifier(certifier)
    points: dict[int, Tensor] = {}

    def point(index: int) -> Tensor:
        if index not in points:
            p = region.low + (region.high - region.low) * ((0.5 + (index - offset) * 0.6180339887498949) % 1.0)
            points[index] = model.point_with_top_probability(p, sigma, seed * 1_000_003 + index, classifier)
        return points[index]

    plan = [Planned("certificate", strategy, certifier, SharedTallies(smoothed))]
    bad = certified = 0
    # a certifier of a given label is given the class the smoothed classifier returns (where errors live)
    loop = certification_loop(
        plan,
        range(offset, offset + trials),
        point,
        seed=seed,
        label_of=lambda i: model.smoothed_class(point(i), sigma, classifier),
    )
    for index, outcomes in loop:
        cert = outcomes["certificate"].certificate
        certified += cert.prediction != ABSTAIN
        bad += bool(failed(cert, points.pop(index)))
    p_value = float(stats.binomtest(bad, trials, rate, alternative="greater").pvalue)
    return RegionReport(region, trials, certified, bad, p_value)


def _smoothed(model: ReferenceModel, noise: NoiseSampler, batch_size: int) -> MonteCarloSampler:
    return MonteCarloSampler(model, noise, num_classes=model.num_classes, batch_size=batch_size)


def check_soundness(
    certifier: Certifier,
    noise: NoiseSampler,
    *,
    alpha: float | None = None,
    rate: float | None = None,
    strategy: SmoothingStrategy | None = None,
    trials: int = 1000,
    regions: Sequence[Region] = DEFAULT_REGIONS,
    target_radii: Sequence[float] = (),
    model: ReferenceModel | None = None,
    dim: int = 16,
    seed: int = 0,
    batch_size: int = 10_000,
    significance: float = 1e-3,
) -> SoundnessReport:
    """Certify ``trials`` inputs in each region and test each region's over-claim count against the exact radius
    of the smoothed classifier the certifier declares (:meth:`~ensemblecert.Certifier.classifier`).

    ``alpha`` is the certifier's promised failure rate; ``rate``, the over-claim rate tested against, is ``alpha``
    unless given (pass a certifier's share of alpha to test its accounting). ``strategy`` certifies through a
    smoothing strategy (default: the certifier alone). ``target_radii`` adds a :meth:`Region.below_radius` region
    for each radius a certifier certifies as a target. ``model`` is the reference model (a :class:`LinearModel`
    of dimension ``dim`` by default). Inputs within a region sweep the band of the declared classifier's top
    probability with a low-discrepancy sequence, alternating classes.
    """
    alpha = alpha if alpha is not None else certifier.failure_probability()
    if alpha is None:
        raise ValueError(f"{type(certifier).__name__} declares no failure probability; pass alpha=")
    alpha = float(alpha)
    rate = float(rate if rate is not None else alpha)
    strategy = strategy if strategy is not None else DirectSmoothing()
    sigma = float(noise.sigma)
    model = model if model is not None else LinearModel(dim, seed=seed)
    if isinstance(model, Ensemble):  # an ensemble of reference members is smoothed as the strategy smooths it
        smoothed = strategy.smooth(model, noise, batch_size=batch_size)
    else:
        smoothed = _smoothed(model, noise, batch_size)
    all_regions = [*regions, *(Region.below_radius(r, sigma) for r in target_radii)]
    reports = tuple(
        _run_region(
            certifier,
            strategy,
            smoothed,
            model,
            region,
            trials=trials,
            rate=rate,
            seed=seed,
            offset=k * trials,
            failed=lambda cert, x: overclaims(cert, model, x, sigma),
        )
        for k, region in enumerate(all_regions)
    )
    return SoundnessReport(reports, rate, significance)


def check_early_abstentions(
    certifier: Certifier,
    noise: NoiseSampler,
    *,
    radius: float,
    rate: float,
    early: Callable[[Certificate], bool],
    trials: int = 1000,
    width: float = 0.02,
    model: ReferenceModel | None = None,
    dim: int = 16,
    seed: int = 0,
    batch_size: int = 10_000,
    significance: float = 1e-3,
) -> SoundnessReport:
    """Count wrong early abstentions: ``early(certificate)`` on inputs whose exact radius is at least ``radius``.

    For a certifier that promises to give up early on a robust input with probability at most ``rate``
    (CERTIFYADP's ``beta``): inputs have exact radius in ``[radius, radius + width * sigma]``, where the
    early test is most tempted, and the count is tested against ``rate`` as in :func:`check_soundness`.
    """
    sigma = float(noise.sigma)
    model = model if model is not None else LinearModel(dim, seed=seed)
    low, high = stats.norm.cdf(radius / sigma), stats.norm.cdf(radius / sigma + width)
    region = Region(f"just above r = {radius:g}", float(low), float(high))
    report = _run_region(
        certifier,
        DirectSmoothing(),
        _smoothed(model, noise, batch_size),
        model,
        region,
        trials=trials,
        rate=rate,
        seed=seed,
        offset=7_000_000,
        failed=lambda cert, x: early(cert) and model.exact_radius(x, sigma) >= radius,
    )
    return SoundnessReport((report,), rate, significance)


def assert_sound(certifier: Certifier, noise: NoiseSampler, **kwargs: object) -> SoundnessReport:
    """:func:`check_soundness`, raising ``AssertionError`` with the report when the certifier over-claims."""
    report = check_soundness(certifier, noise, **kwargs)  # type: ignore[arg-type]
    if math.isnan(report.p_value):  # pragma: no cover - defensive
        raise AssertionError("soundness test produced no p-value")
    if not report.sound:
        raise AssertionError(f"{type(certifier).__name__} over-claims:\n{report}")
    return report
