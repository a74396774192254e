"""Gaussian data augmentation: the standard training objective for smoothed classifiers."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

from ensemblecert import Regularizer, TrainBatch, hookimpl


@attrs.frozen
class GaussianAugmentation(Regularizer):
    """Cross-entropy on x + noise for each member, independently (Cohen et al., 2019; the papers' baseline).

    Each member sees its own noise draw; the loss is the sum over members, so each member's gradient
    is exactly that of training it alone.
    """

    def loss(self, batch: TrainBatch) -> torch.Tensor:
        total = batch.x.new_zeros(())
        for member in batch.members:
            noisy = batch.x + batch.noise.sample(
                batch.x.shape, generator=batch.generator, device=batch.x.device, dtype=batch.x.dtype
            )
            total = total + F.cross_entropy(member(noisy), batch.y)
        return total


@hookimpl
def register_regularizers(register):
    register("gaussian", GaussianAugmentation)
