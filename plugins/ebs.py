"""Ensemble-before-Smoothing (Yang et al., Yang22, Definition 5 and Proposition C.1)."""

from __future__ import annotations

import attrs

from ensemblecert import Ensemble, MonteCarloSampler, NoiseSampler, SmoothingStrategy, hookimpl


@attrs.frozen
class EnsembleBeforeSmoothing(SmoothingStrategy):
    """Ensemble-before-Smoothing (EBS): the aggregated ensemble is the base classifier that is smoothed.

    ``G(x) = argmax_j P(M(x + e) = j)`` for the ensemble ``M``; any certificate for a single smoothed
    classifier then applies unchanged (Proposition C.1: ``r = sigma Phi^-1(g_M(x)_G(x))``).
    """

    def smooth(self, ensemble: Ensemble, noise: NoiseSampler, *, batch_size: int) -> MonteCarloSampler:
        return MonteCarloSampler(ensemble, noise, batch_size=batch_size)


@hookimpl
def register_smoothing_strategies(register):
    register("ebs", EnsembleBeforeSmoothing)
