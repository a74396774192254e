"""Time-uniform tests of a success probability: beta-binomial mixture martingales, the decisions they make after
every draw, and the schedule of draws that looks at them (shared by the ``sequential`` and ``label_test``
certifiers).

With ``S`` hits in ``t`` draws and Jeffreys' prior ``Beta(1/2, 1/2)`` (Robbins70, Howard21), the **two-sided**
mixture

    M_t(p) = B(1/2 + S, 1/2 + t - S) / (B(1/2, 1/2) p^S (1 - p)^(t - S))

is a nonnegative martingale with ``M_0 = 1`` under the true ``p``, so ``{p : M_t(p) < 1/alpha}`` covers ``p`` at
every ``t`` at once with probability ``1 - alpha`` (Ville's inequality): one confidence sequence serves every
threshold.

To test one threshold ``q`` only (``p <= q`` against ``p > q``), the prior can be truncated to the alternative: the
**one-sided** mixture

    M+_t(q) = B(1/2 + S, 1/2 + t - S) Ibar_q(1/2 + S, 1/2 + t - S) / (B(1/2, 1/2) Ibar_q(1/2, 1/2) q^S (1 - q)^(t - S))

(``Ibar_q`` the regularised upper incomplete beta function: the prior's and the posterior's mass above ``q``) mixes
likelihood ratios ``(p'/q)^X ((1 - p')/(1 - q))^(1 - X)`` over ``p' > q`` only. Each has expectation
``p p'/q + (1 - p)(1 - p')/(1 - q) <= 1`` for every ``p <= q``, so ``M+`` is a nonnegative supermartingale under
the null and rejects it at ``1/alpha`` with probability at most ``alpha`` whenever it is looked at. It spends no
prior mass where the null lies, so it decides with about 12% fewer draws (measured: ``docs/methods/label_test.md``)
but is a test of ``q`` alone; with the mirror image (mass below ``q``) it refutes. Its confidence bound (the least
``q`` whose test does not reject) is valid at every ``t`` too, each ``q`` being tested by its own martingale.

Decisions are hit-count thresholds tabulated once per ``t`` (:func:`thresholds`), so looking after every draw costs
a comparison; :func:`next_draws` says how many draws to ask for next, :func:`look` compares them with the tables.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import attrs
import numpy as np
from scipy import optimize, special

PRIOR = (0.5, 0.5)


def log_mixture(
    p: np.ndarray | float, hits: np.ndarray | int, draws: np.ndarray | int, prior: tuple[float, float] = PRIOR
):
    """``log M_t(p)`` of the beta-binomial mixture martingale (module docstring), vectorized (plain floats in, a
    plain float out, the same value without numpy's array machinery: the root finding of
    :func:`confidence_sequence` calls it dozens of times per input)."""
    a, b = prior
    if isinstance(p, float) and isinstance(hits, int) and isinstance(draws, int):
        misses = draws - hits
        if (hits and p <= 0.0) or (misses and p >= 1.0):
            return math.inf  # the numpy path's value there: a hit has probability 0 (or a miss does)
        value = float(special.betaln(a + hits, b + misses)) - float(special.betaln(a, b))  # as below, term by term
        return value - (hits * float(np.log(p)) if hits else 0.0) - (misses * float(np.log1p(-p)) if misses else 0.0)
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


def level_of(hits: int, draws: int, alpha: float, mixture: str = "two-sided") -> float:
    """The threshold ``log(1/alpha)``, raised by more than the floating-point error of ``log M_t`` near the bounds,
    so that a bound found on the computed martingale errs outwards (the interval only grows)."""
    return float(level(np.asarray(float(hits)), np.asarray(float(draws)), alpha, mixture))


def level(hits: np.ndarray, draws: np.ndarray, alpha: float, mixture: str = "two-sided") -> np.ndarray:
    """:func:`level_of` for arrays: every tabulated decision errs towards "undecided". The one-sided mixture's
    incomplete beta functions are allowed :data:`TAIL_ERROR` more."""
    a, b = PRIOR
    centre = np.clip(hits / draws, 1e-300, 1.0 - 1e-16)
    size = (
        np.abs(special.betaln(a + hits, b + draws - hits))
        + abs(special.betaln(a, b))
        + hits * np.abs(np.log(centre))
        + (draws - hits) * np.abs(np.log1p(-centre))
        + 1.0
    )
    return math.log(1.0 / alpha) + RELATIVE_ERROR * size + (TAIL_ERROR if mixture == "one-sided" else 0.0)


#: The mixtures a test can use (module docstring).
MIXTURES = ("one-sided", "two-sided")

#: Absolute error allowed for in the two ``log Ibar`` terms of the one-sided mixture: scipy's regularised
#: incomplete beta function (Boost's ``ibeta``) is accurate to far better than 1e-9 relative (the tests compare it
#: with 40-digit values up to 100,000 draws).
TAIL_ERROR = 1e-9


def _mass(a: np.ndarray | float, b: np.ndarray | float, q: float, above: bool) -> np.ndarray | float:
    """``Beta(a, b)``'s mass above ``q`` (``above``) or below it. Above ``q >= 1/2`` it is the mass of
    ``Beta(b, a)`` below ``1 - q`` (exact in floating point there), which scipy computes five times faster."""
    if not above:
        return special.betainc(a, b, q)
    return special.betainc(b, a, 1.0 - q) if q >= 0.5 else special.betaincc(a, b, q)


def log_one_sided(
    q: float,
    hits: np.ndarray | int,
    draws: np.ndarray | int,
    above: bool = True,
    prior: tuple[float, float] = PRIOR,
):
    """``log M+_t(q)`` of the one-sided mixture (module docstring), vectorized over hits and draws (plain ints in, a
    plain float out, the same value without numpy's array machinery): the prior's mass above ``q`` (``above``,
    which tests ``p <= q``) or below it (which tests ``p >= q``); ``0 < q < 1``. ``prior``: the ``Beta(a, b)``
    truncated (Jeffreys' unless given)."""
    a, b = prior
    mass = float(special.betaln(a, b)) + math.log(float(_mass(a, b, q, above)))
    if isinstance(hits, int) and isinstance(draws, int):
        misses = draws - hits
        posterior = float(_mass(a + hits, b + misses, q, above))
        if posterior == 0.0:
            return -math.inf  # the posterior mass underflows: the test is far from rejecting
        value = float(special.betaln(a + hits, b + misses)) + float(np.log(posterior))  # as below, term by term
        return value - mass - hits * float(np.log(q)) - misses * float(np.log1p(-q))
    hits, draws = np.asarray(hits, dtype=np.float64), np.asarray(draws, dtype=np.float64)
    misses = draws - hits
    with np.errstate(divide="ignore"):  # a posterior mass that underflows: the test is far from rejecting
        value = (
            special.betaln(a + hits, b + misses)
            + np.log(_mass(a + hits, b + misses, q, above))
            - mass
            - hits * np.log(q)
            - misses * np.log1p(-q)
        )
    return value if value.ndim else float(value)


def _statistic(q: float, hits: np.ndarray, draws: np.ndarray, mixture: str, above: bool) -> np.ndarray:
    if mixture == "one-sided":
        return log_one_sided(q, hits, draws, above)
    return log_mixture(q, hits, draws)


def _certifies(q: float, hits: np.ndarray, draws: np.ndarray, alpha: float, mixture: str) -> np.ndarray:
    """Whether ``hits`` in ``draws`` reject ``p <= q`` at ``alpha`` (the confidence sequence lies above ``q``)."""
    stat = _statistic(q, hits, draws, mixture, above=True)
    return (hits > q * draws) & (stat >= level(hits, draws, alpha, mixture))


def _refutes(q: float, hits: np.ndarray, draws: np.ndarray, beta: float, mixture: str) -> np.ndarray:
    """Whether ``hits`` in ``draws`` reject ``p >= q`` at ``beta`` (the confidence sequence lies below ``q``)."""
    stat = _statistic(q, hits, draws, mixture, above=False)
    return (hits < q * draws) & (stat >= level(hits, draws, beta, mixture))


def _boundary(above: Callable[[np.ndarray, np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Bisection for many draw counts at once: given ``lo`` where ``above(S, i)`` is false (or taken as false) and
    ``hi`` where it is true, narrow each pair to neighbours and return ``hi``; only the pairs still apart are
    evaluated (``i``: their positions)."""
    lo, hi = lo.copy(), hi.copy()
    open_ = np.flatnonzero(hi - lo > 1)
    while open_.size:
        mid = np.floor((lo[open_] + hi[open_]) / 2)
        ok = above(mid, open_)
        hi[open_], lo[open_] = np.where(ok, mid, hi[open_]), np.where(ok, lo[open_], mid)
        open_ = open_[hi[open_] - lo[open_] > 1]
    return hi


#: Draw counts between two whose thresholds are found in the wide brackets (:func:`_warm_boundary`).
GRID = 64


#: Evaluations spent walking from a guess towards the boundary before bisecting what is left.
WALK = 3


def _warm_boundary(above: Callable[[np.ndarray, np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """:func:`_boundary`, started from a guess: the boundary changes slowly with the number of draws, so it is
    found in the wide brackets at every :data:`GRID`-th count and interpolated in between (almost every guess is
    within one of it). Each bracket is narrowed by evaluating the guess and then stepping one towards the boundary,
    :data:`WALK` times at most, which settles almost every count in two or three evaluations; what is left is
    bisected. The result is the same as bisecting every wide bracket."""
    grid = np.unique(np.r_[np.arange(0, len(lo), GRID), len(lo) - 1])
    exact = _boundary(lambda s, i: above(s, grid[i]), lo[grid], hi[grid])
    point = np.round(np.interp(np.arange(len(lo)), grid, exact))
    low, high = lo.copy(), hi.copy()
    for _ in range(WALK):
        open_ = np.flatnonzero(high - low > 1)
        if not open_.size:
            break
        s = np.clip(point[open_], low[open_] + 1, high[open_] - 1)
        ok = above(s, open_)
        high[open_], low[open_] = np.where(ok, s, high[open_]), np.where(ok, low[open_], s)
        point[open_] = np.where(ok, s - 1, s + 1)
    return _boundary(above, low, high)


@functools.lru_cache(maxsize=16)
def thresholds(
    q: float, alpha: float, beta: float, max_samples: int, mixture: str = "two-sided"
) -> tuple[np.ndarray, np.ndarray]:
    """For ``t = 0 .. max_samples`` draws: the least hit count that certifies ``p > q`` at ``alpha`` (``t + 1``
    where none does) and the greatest that refutes it at ``beta`` (``-1`` where none does), with the ``mixture``
    named. Found by bisection over the hit count for every ``t`` at once (either martingale grows with the hit
    count on its side of ``q``), started from the thresholds of nearby counts (:func:`_warm_boundary`)."""
    t = np.arange(max_samples + 1, dtype=np.float64)
    t[0] = 1.0  # no decision after no draw (set below)

    # certify: the least S in (q t, t] that certifies; floor(q t) fails, and t + 1 stands for "none does"
    def certifies(s: np.ndarray, i: np.ndarray) -> np.ndarray:
        return (s > t[i]) | _certifies(q, np.minimum(s, t[i]), t[i], alpha, mixture)

    certify = _warm_boundary(certifies, np.floor(q * t), t + 1.0).astype(np.int64)

    # refute: the greatest S in [0, q t) that refutes; -1 stands for "none does", and ceil(q t) fails
    def fails(s: np.ndarray, i: np.ndarray) -> np.ndarray:
        return (s >= 0) & ~_refutes(q, np.maximum(s, 0.0), t[i], beta, mixture)

    refute = _warm_boundary(fails, np.full_like(t, -1.0), np.ceil(q * t)).astype(np.int64) - 1
    certify[0], refute[0] = 1, -1
    return certify, refute


@attrs.frozen(eq=False)
class Tables:
    """The decision tables of thresholds ``qs`` (rows, increasing) for ``t = 0 .. max_samples`` draws (columns):
    ``certify`` and ``refute`` from :func:`thresholds`, and their running maxima, which say when a threshold could
    be decided at the earliest: ``reach[i, t]``, the most misses with which ``qs[i]`` is certified within ``t``
    draws, and ``refute_reach[i, t]``, the most hits with which it is refuted within ``t``. Shared, read-only."""

    qs: tuple[float, ...]
    certify: np.ndarray
    refute: np.ndarray
    reach: np.ndarray
    refute_reach: np.ndarray

    @classmethod
    def of(cls, qs: tuple[float, ...], certify: np.ndarray, refute: np.ndarray) -> Tables:
        """The tables of thresholds ``qs`` from their ``certify`` and ``refute`` rows."""
        reach = np.maximum.accumulate(np.arange(certify.shape[1]) - certify, axis=1)
        refute_reach = np.maximum.accumulate(refute, axis=1)
        for table in (certify, refute, reach, refute_reach):
            table.flags.writeable = False
        return cls(tuple(qs), certify, refute, reach, refute_reach)


@functools.lru_cache(maxsize=16)
def tables(qs: tuple[float, ...], alpha: float, beta: float, max_samples: int, mixture: str = "two-sided") -> Tables:
    """The :class:`Tables` of ``qs``, computed once per setting (every input of a run shares them)."""
    pairs = [thresholds(q, alpha, beta, max_samples, mixture) for q in qs]
    return Tables.of(qs, np.stack([c for c, _ in pairs]), np.stack([r for _, r in pairs]))


#: An undecided input is asked for at least this share of the draws it has had so far: the looks grow
#: geometrically (few of them) while little is drawn past the deciding draw (at most this share, beyond what the
#: tables show must be drawn anyway).
GROWTH = 0.25


def next_draws(hits: int, draws: int, tables: Tables, low: int, high: int, most: int) -> int:
    """How many draws to ask for next, at most ``most``, for an input with ``hits`` in ``draws`` whose undecided
    thresholds are rows ``low .. high`` of ``tables``. Heading for a certificate (no draw yet, or a hit rate above
    ``qs[low]``): at least the draws before ``qs[low]`` could be certified if every one were a hit; heading for a
    refutation: at least those before ``qs[high]`` could be refuted if every one were a miss. None of those can be
    wasted (no decision falls among them); beyond them, :data:`GROWTH` of the draws so far. Only the schedule
    depends on this, never a certificate."""
    if draws == 0 or hits > tables.qs[low] * draws:
        earliest = int(np.searchsorted(tables.reach[low], draws - hits, side="left"))
    else:
        earliest = int(np.searchsorted(tables.refute_reach[high], hits, side="left"))
    return min(most, max(1, earliest - draws, math.ceil(GROWTH * draws)))


def look(
    hits: int, draws: int, hit: np.ndarray, certify: np.ndarray, refute: np.ndarray, certified: int, refuted: int
) -> tuple[int, int, int, int]:
    """Look after each new draw (``hit``: whether it returned the class tested, in order) against the tables of
    several thresholds (rows of ``certify`` and ``refute``, from :func:`thresholds`, in increasing order): how many
    are certified (from the smallest) and refuted (from the largest). Returns ``(hits, draws, certified, refuted)``
    at the first draw after which every threshold is decided, or after the last draw.

    A threshold stays decided once it was; the certified ones are those below the first never certified (a
    prefix), the refuted ones those above the last never refuted. With one test per threshold (one-sided
    mixtures) this is what keeps a certificate's error within ``alpha``: a certificate is wrong only if it
    includes the smallest threshold ``q >= p``, and then that threshold's own test rejected wrongly."""
    running = hits + np.cumsum(hit)
    t = np.arange(draws + 1, draws + len(hit) + 1)
    rows = certify.shape[0]
    ever = np.logical_or.accumulate(running[None, :] >= certify[:, t], axis=1)
    ever[:certified] = True
    up = np.cumprod(ever, axis=0).sum(axis=0)
    ever = np.logical_or.accumulate(running[None, :] <= refute[:, t], axis=1)
    ever[rows - refuted :] = True
    down = np.cumprod(ever[::-1], axis=0).sum(axis=0)
    decided = np.flatnonzero(up + down >= certify.shape[0])
    last = int(decided[0]) if decided.size else len(hit) - 1  # the draw that decides, or the last one seen
    return int(running[last]), int(t[last]), int(up[last]), int(down[last])


def excludes(p: float, hits: int, draws: int, alpha: float) -> bool:
    """Whether ``p`` lies outside the confidence sequence at level ``alpha``: one evaluation, no root finding
    (erring towards "inside", as the bounds do)."""
    return bool(log_mixture(p, hits, draws) >= level_of(hits, draws, alpha))


def one_sided_bound(hits: int, draws: int, alpha: float, above: bool = True) -> float:
    """The confidence bound of the one-sided tests after ``hits`` in ``draws``: the least ``q`` whose test at
    ``alpha`` does not reject ``p <= q`` (``above``; 0 when none rejects), or the greatest whose mirror test does
    not reject ``p >= q`` (1 when none does). Valid at every ``t``; erring outwards, as the tables do."""
    centre = hits / draws
    if (above and hits == 0) or (not above and hits == draws):
        return 0.0 if above else 1.0

    threshold = level_of(hits, draws, alpha, "one-sided")

    def excess(q: float) -> float:  # positive where the test rejects; zero at the bound
        return float(log_one_sided(q, hits, draws, above)) - threshold

    slack = 4e-15  # brentq's tolerance, so that the bound errs outwards
    low, high = 1e-300, 1.0 - 1e-16  # the tests need 0 < q < 1; at q = S / t neither rejects (M+ <= 1 there)
    if above:
        edge, centre = low, min(centre, high)
        return 0.0 if excess(edge) < 0 else max(0.0, optimize.brentq(excess, edge, centre, xtol=1e-15) - slack)
    edge, centre = high, max(centre, low)
    return 1.0 if excess(edge) < 0 else min(1.0, optimize.brentq(excess, centre, edge, xtol=1e-15) + slack)


def confidence_sequence(hits: int, draws: int, alpha: float) -> tuple[float, float]:
    """The interval ``{p : M_t(p) < 1/alpha}`` after ``hits`` in ``draws``: valid at every ``t`` at once. Both ends
    err outwards by more than the arithmetic's error (:func:`level_of`)."""
    threshold = level_of(hits, draws, alpha)
    centre = hits / draws
    inside = lambda p: log_mixture(p, hits, draws) - threshold  # noqa: E731 - negative inside the interval
    slack = 4e-15  # brentq's tolerance, so that each bound errs outwards
    lower = 0.0 if inside(0.0) < 0 else max(0.0, optimize.brentq(inside, 0.0, centre, xtol=1e-15, rtol=1e-15) - slack)
    upper = 1.0 if inside(1.0) < 0 else min(1.0, optimize.brentq(inside, centre, 1.0, xtol=1e-15, rtol=1e-15) + slack)
    return lower, upper
