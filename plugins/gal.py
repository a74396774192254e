"""Gradient Alignment Loss (GAL) of Kariyappa and Qureshi (2019), a baseline of Yang22 (App. G.4).

GAL pushes the members' input gradients of their losses apart: ``weight * log sum_{i < j} exp(cos(g_i, g_j))``,
where ``g_i`` is the gradient of member ``i``'s cross-entropy with respect to the input. Here the cosine is taken
input by input (each noisy input's gradients, flattened) and the log-sum-exp is averaged over the batch's noisy
inputs, the ones the base loss trains on; the gradients are taken with ``create_graph`` so training
back-propagates through them.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from ensemblecert import Regularizer, TrainBatch, hookimpl
from ensemblecert.validators import in_range


def gradient_alignment(grads: Tensor) -> Tensor:
    """``log sum_{i < j} exp(cos(g_i, g_j))`` per input, from gradients ``[N, M, D]``."""
    unit = grads / grads.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos = torch.einsum("imd,jmd->mij", unit, unit)
    i, j = torch.triu_indices(grads.shape[0], grads.shape[0], offset=1, device=grads.device)
    return torch.logsumexp(cos[:, i, j], dim=-1)


@attrs.frozen
class GAL(Regularizer):
    """GAL (Kariyappa and Qureshi, 2019): ``weight * log sum_{i<j} exp(cos(grad_x loss_i, grad_x loss_j))``."""

    weight: float = attrs.field(default=0.5, validator=in_range(0))

    def check_members(self, count: int) -> str | None:
        if count < 2:
            return f"gal aligns pairs of members; this ensemble has {count}, set ensemble.members >= 2"
        return None

    def terms(self, batch: TrainBatch) -> dict[str, Tensor]:
        inputs, y = batch.inputs()[0], batch.targets()
        grads = torch.stack(
            [
                torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), inputs, create_graph=True)[0].flatten(
                    1
                )
                for logits in batch.logits()
            ]
        )
        return {"gal": self.weight * gradient_alignment(grads).mean()}


@hookimpl
def register_regularizers(register):
    register("gal", GAL)
