"""The training layer: the objective's shared batch, the training loop and its per-epoch log."""

from .loop import train_ensemble

__all__ = ["train_ensemble"]
