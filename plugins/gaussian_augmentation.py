"""Gaussian data augmentation: the standard training loss for smoothed classifiers."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

from ensemblecert import BaseLoss, TrainBatch, hookimpl


@attrs.frozen
class GaussianAugmentation(BaseLoss):
    """Cross-entropy on x + noise for each member (Cohen et al., 2019; the papers' baseline), summed over members.

    Each term is a mean over the batch's noisy inputs. Alone, each member sees its own noise draw, so each
    member's gradient is exactly that of training it alone; with regularizers, all members share the draw
    (Yang22, App. F).
    """

    def terms(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        y = batch.targets()
        return {"ce": sum((F.cross_entropy(logits, y) for logits in batch.logits()), batch.x.new_zeros(()))}


@hookimpl
def register_losses(register):
    register("gaussian", GaussianAugmentation)
