"""Ensemble-after-Smoothing (Yang et al., Yang22, Definition 6 and Theorem 5).

Each member is smoothed on its own, from the same noise draws; the EAS ensemble follows the member whose
smoothed top class is most probable (Definition 6, Eq. 37). Member ``i``'s radius term is
``r_i = sigma PhiInv(p_i)`` when its top class is the EAS prediction ``y0`` and ``-sigma PhiInv(p_i)``
otherwise. Theorem 5 (Eq. 39) certifies ``(max_i r_i + min_i r_i) / 2``; its proof assumes that the member
with the largest ``r_i`` agrees with ``y0``, and the radius over-claims when a dissenting member is
unconfident (member A at 0.9 for class 1, member B at 0.05 for class 2: 1.46 sigma, yet a third class of A
wins at 1.3 sigma). ensemblecert certifies the sound form :func:`sound_radius`,
``(max over agreeing members of r_i + min over all members of r_i) / 2``, equal to Eq. 39 whenever every
``p_i > 1/2``.

Certification by sampling (the paper never samples EAS): every member's class is selected on the ``n0``
selection draws, ``y0`` is the selected class of the member with the most selection votes for its class,
and the ``n`` estimation draws bound, at ``alpha / N`` per member, the terms conservatively: a lower bound
on ``P(member i says y0)`` for the members that agree, and for each dissenting member an upper bound on
every class but ``y0`` (Bonferroni over those classes). The issue behind this plugin asked for an upper
bound on the dissenting member's selected class only; that is unsound when the selection draws pick the
wrong class of a member split between two classes, so ensemblecert bounds them all.
"""

from __future__ import annotations

import attrs
import numpy as np
import torch
from scipy import stats
from torch import Tensor

from ensemblecert import (
    ABSTAIN,
    HARD,
    Certificate,
    Certifier,
    Ensemble,
    MonteCarloSampler,
    NoiseSampler,
    SmoothedClassifier,
    SmoothingStrategy,
    UserError,
    clopper_pearson_lower_gap,
    clopper_pearson_upper_gap,
    hookimpl,
)


def eas_member(top_probabilities: np.ndarray) -> int:
    """Definition 6 (Eq. 37): the member whose smoothed top class is most probable (lowest index on ties)."""
    return int(np.argmax(top_probabilities))


def member_terms(top_probabilities: np.ndarray, agree: np.ndarray, sigma: float) -> np.ndarray:
    """Theorem 5's ``r_i``: ``sigma PhiInv(p_i)`` for members agreeing with ``y0``, ``-sigma PhiInv(p_i)`` otherwise."""
    z = stats.norm.ppf(np.asarray(top_probabilities, dtype=np.float64))
    return sigma * np.where(agree, z, -z)


def theorem5_radius(terms: np.ndarray) -> float:
    """Eq. 39 as published: ``(max_i r_i + min_i r_i) / 2``. Over-claims when the largest term dissents."""
    return float((np.max(terms) + np.min(terms)) / 2)


def sound_radius(terms: np.ndarray, agree: np.ndarray) -> float:
    """``(max over agreeing members of r_i + min over all members of r_i) / 2``: Eq. 39 with the maximum
    restricted to the members that agree with ``y0`` (equal to it when every ``p_i > 1/2``)."""
    return float((np.max(terms[agree]) + np.min(terms)) / 2)


def sampled_terms(
    selection: np.ndarray, counts: np.ndarray, n: int, alpha: float, sigma: float
) -> tuple[int, np.ndarray, np.ndarray]:
    """``(y0, agree, terms)`` from per-member selection counts ``[N, C]`` (n0 draws) and estimation counts
    ``[N, C]`` (n fresh draws), each term a lower bound on the true one with probability ``1 - alpha / N``.

    Agreeing member: ``sigma PhiInv(L_i)`` with ``L_i`` the lower bound on ``P(member i says y0)``; since its
    other classes share at most ``1 - L_i``, this also bounds how close they come. Dissenting member:
    ``-sigma PhiInv(max_{c != y0} U_ic)`` with upper bounds ``U_ic`` at ``alpha / (N (C - 1))`` each.
    """
    members, classes = counts.shape
    chosen = selection.argmax(axis=1)
    y0 = int(chosen[eas_member(selection.max(axis=1))])
    agree = chosen == y0
    level = alpha / members
    terms = np.empty(members)
    lower_gap = np.asarray(clopper_pearson_lower_gap(counts[:, y0], n, level))
    terms[agree] = sigma * stats.norm.isf(lower_gap[agree])  # sigma PhiInv(1 - gap), exact near 1
    others = np.delete(counts[~agree], y0, axis=1)
    if others.size:
        upper_gap = np.asarray(clopper_pearson_upper_gap(others, n, level / (classes - 1)))
        terms[~agree] = sigma * stats.norm.ppf(upper_gap.min(axis=1))  # -sigma PhiInv(max U) = sigma PhiInv(1 - max U)
    return y0, agree, terms


@attrs.frozen
class EnsembleAfterSmoothing(SmoothingStrategy):
    """Ensemble-after-Smoothing (EAS, Definition 6 of Yang22): smooth each member, follow the most confident one.

    Certifies with the certifier's CERTIFY plan (``n0``, ``n`` and ``alpha``: CERTIFY's two steps, per member, on
    shared draws) and the sound form of Theorem 5's radius; see the module docstring. Only a certifier that
    declares a CERTIFY plan (``cohen`` without Cullen24's expectations) is accepted.
    """

    needs_member_counts = True

    def smooth(self, ensemble: Ensemble, noise: NoiseSampler, *, batch_size: int) -> MonteCarloSampler:
        return MonteCarloSampler(ensemble, noise, batch_size=batch_size)

    def check_certifier(self, certifier: Certifier) -> str | None:
        if certifier.certify_plan() is None:
            return (
                "eas runs CERTIFY's selection and estimation on every member and certifies only with CERTIFY "
                f"(cohen without an expectation); {type(certifier).__name__} is another certifier, which eas would "
                "not run; certify it with ebs instead"
            )
        return None

    def classifier(self, certifier: Certifier) -> str:
        """The EAS classifier, built from each member's hard smoothed classifier."""
        return HARD

    def certificate(
        self,
        certifier: Certifier,
        smoothed: SmoothedClassifier,
        x: Tensor,
        generator: torch.Generator | None = None,
        label: int | None = None,
    ) -> Certificate:
        plan = certifier.certify_plan()
        if plan is None:
            raise UserError(f"ensemble.smoothing: {self.check_certifier(certifier)}")
        n0, n, alpha = plan.n0, plan.n, plan.alpha
        try:
            selection = smoothed.tally(x, n0, generator=generator, members=True).member_counts.numpy()
            counts = smoothed.tally(x, n, generator=generator, members=True).member_counts.numpy()
        except ValueError as exc:
            raise UserError(
                f"ensemble.smoothing: eas smooths every member on its own and needs every member's prediction on "
                f"every draw, but {exc}; use an aggregator that evaluates all members (not k_consensus) with eas"
            ) from None
        y0, agree, terms = sampled_terms(selection, counts, n, alpha, smoothed.noise.sigma)
        radius = sound_radius(terms, agree)
        details = {f"r_{i}": float(t) for i, t in enumerate(terms)}
        details["agreeing"] = float(agree.sum())
        if not radius > 0:
            return Certificate(ABSTAIN, 0.0, n0 + n, details)
        return Certificate(y0, radius, n0 + n, details)


@hookimpl
def register_smoothing_strategies(register):
    register("eas", EnsembleAfterSmoothing)
