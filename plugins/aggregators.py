"""Ensemble protocols of Yang et al. (000_aea2a03b72c2b28c.txt): Weighted Ensemble and Max-Margin Ensemble."""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from ensemblecert import Aggregator, hookimpl
from ensemblecert.validators import positive


@attrs.frozen
class WeightedEnsemble(Aggregator):
    """Weighted Ensemble (WE, Definition 2, Eq. 1): soft voting with weights; equal weights by default.

    Ensemble confidence ``sum_j w_j f_j(x) / ||w||_1`` where ``f_j`` is member ``j``'s softmax output.
    """

    weights: list[float] | None = attrs.field(
        default=None, validator=attrs.validators.optional(positive)
    )

    def check_members(self, count: int) -> str | None:
        if self.weights is not None and len(self.weights) != count:
            return f"weights has {len(self.weights)} entries for {count} members; give one weight per member"
        return None

    def combine(self, member_logits: Tensor) -> Tensor:
        probs = member_logits.softmax(dim=-1)
        if self.weights is None:
            return probs.mean(dim=0)
        problem = self.check_members(probs.shape[0])
        if problem:
            raise ValueError(problem)
        w = torch.tensor(self.weights, dtype=probs.dtype, device=probs.device)
        return torch.einsum("n,nbc->bc", w / w.sum(), probs)


@attrs.frozen
class MaxMarginEnsemble(Aggregator):
    """Max-Margin Ensemble (MME, Definition 3, Eq. 2): follow the member most confident over its runner-up.

    For each input, pick ``c = argmax_i f_i(x)_top - f_i(x)_runner-up`` and output member ``c``'s
    softmax, so the ensemble predicts ``F_c(x)``.
    """

    def combine(self, member_logits: Tensor) -> Tensor:
        probs = member_logits.softmax(dim=-1)  # [N, B, C]
        top2 = probs.topk(2, dim=-1).values
        chosen = (top2[..., 0] - top2[..., 1]).argmax(dim=0)  # [B]
        return probs[chosen, torch.arange(probs.shape[1], device=probs.device)]


@hookimpl
def register_aggregators(register):
    register("we", WeightedEnsemble)
    register("mme", MaxMarginEnsemble)
