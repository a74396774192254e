"""Aggregators of Yang et al. (Yang22, "ensemble protocols" there): Weighted Ensemble and Max-Margin Ensemble."""

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

    weights: list[float] | None = attrs.field(default=None, validator=attrs.validators.optional(positive))

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
        total = sum(self.weights)  # Python numbers: no tensor copied to the device per batch
        return sum((w / total) * p for w, p in zip(self.weights, probs))


def margin_logit(member_logits: Tensor) -> Tensor:
    """``log(m / (1 - m))`` of the softmax margin ``m = f_top - f_runner-up`` (Definition 3), from logits.

    Increasing in ``m``, so the member with the largest value has the largest margin; exact at both ends,
    where ``m`` itself rounds to 0 or to 1 in float32 (two members with top probabilities above
    ``1 - 6e-8`` both have ``m == 1.0`` there). With ``d = l_runner-up - l_top <= 0`` and ``s`` the
    log-sum-exp of all non-top logits minus ``l_top``: ``m = (1 - e^d) / Z`` and ``1 - m = (e^s + e^d) / Z``
    for the same ``Z``, so the value is ``log(-expm1(d)) - logaddexp(s, d)``. Returns ``[N, B]``.
    """
    top2 = member_logits.topk(2, dim=-1)
    lead = top2.values[..., :1]
    shifted = (member_logits - lead).scatter(-1, top2.indices[..., :1], float("-inf"))
    d = top2.values[..., 1] - top2.values[..., 0]
    s = shifted.logsumexp(dim=-1)
    return torch.log(-torch.expm1(d)) - torch.logaddexp(s, d)


@attrs.frozen
class MaxMarginEnsemble(Aggregator):
    """Max-Margin Ensemble (MME, Definition 3, Eq. 2): follow the member most confident over its runner-up.

    For each input, pick ``c = argmax_i f_i(x)_top - f_i(x)_runner-up`` (softmax probabilities; the
    comparison is made exactly through :func:`margin_logit`) and output member ``c``'s softmax, so the
    ensemble predicts ``F_c(x)``. Ties go to the lowest member index.
    """

    def combine(self, member_logits: Tensor) -> Tensor:
        chosen = margin_logit(member_logits).argmax(dim=0)  # [B]
        logits = member_logits[chosen, torch.arange(member_logits.shape[1], device=member_logits.device)]
        return logits.softmax(dim=-1)


@hookimpl
def register_aggregators(register):
    register("we", WeightedEnsemble)
    register("mme", MaxMarginEnsemble)
