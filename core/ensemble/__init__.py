"""The ensemble layer: members behind their normalisation, combined by an aggregator, run by the engine."""

from .assembly import Ensemble, Normalize, build_member

__all__ = ["Ensemble", "Normalize", "build_member"]
