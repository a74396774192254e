"""Adaptive Diversity Promoting (ADP) regularizer of Pang et al. (2019), as Yang22 App. G.4 and
Deng23's supplement (Sec. 1.1) adapt it to smoothed ensembles.

ADP *maximises* the entropy of the ensemble's prediction and the diversity of the members' non-true-class
predictions; the printed formulas in both papers garble the sign, so here, with the members' cross-entropy as the
base loss, the added terms are ``- alpha * H(mean_i f_i) - beta * log(ED)``, where ``f_i`` are the members'
softmax outputs and ``ED = det(M^T M + delta I)`` is the ensemble diversity: the columns of ``M`` are each member's
prediction vector without the true class, scaled to unit L2 norm, and ``delta`` (1e-6) keeps the determinant
positive. ``alpha = 2`` and ``beta = 0.5`` as Pang et al. Each term is a mean over the batch's noisy inputs
(the same inputs the base loss trains on).
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from ensemblecert import Regularizer, TrainBatch, hookimpl
from ensemblecert.validators import in_range


def ensemble_entropy(probs: Tensor) -> Tensor:
    """``H(mean_i f_i)`` per input, from the members' softmax outputs ``[N, M, K]``."""
    mean = probs.mean(dim=0)
    return -(mean * torch.log(mean.clamp_min(1e-20))).sum(dim=-1)


def log_diversity(probs: Tensor, y: Tensor, delta: float = 1e-6) -> Tensor:
    """``log det(M^T M + delta I)`` per input: ``M``'s columns are the members' non-true-class predictions,
    normalised to unit L2 norm (``probs`` ``[N, M, K]``, labels ``[M]``)."""
    n, m, k = probs.shape
    keep = torch.ones(m, k, dtype=torch.bool, device=probs.device)
    keep[torch.arange(m, device=probs.device), y] = False
    rest = probs.permute(1, 0, 2)[keep[:, None, :].expand(m, n, k)].reshape(m, n, k - 1)
    rest = rest / rest.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    gram = rest @ rest.transpose(1, 2) + delta * torch.eye(n, device=probs.device, dtype=probs.dtype)
    return torch.logdet(gram)


@attrs.frozen
class ADP(Regularizer):
    """ADP (Pang et al., 2019; Yang22 App. G.4): ``- alpha * H(ensemble) - beta * log det`` of the normalised
    non-true-class predictions, maximising entropy and diversity."""

    alpha: float = attrs.field(default=2.0, validator=in_range(0))
    beta: float = attrs.field(default=0.5, validator=in_range(0))

    def check_members(self, count: int) -> str | None:
        if count < 2:
            return f"adp needs at least 2 members to diversify; this ensemble has {count}"
        return None

    def terms(self, batch: TrainBatch) -> dict[str, Tensor]:
        probs = torch.stack([logits.softmax(dim=-1) for logits in batch.logits()])
        y = batch.targets()
        return {
            "adp_entropy": -self.alpha * ensemble_entropy(probs).mean(),
            "adp_diversity": -self.beta * log_diversity(probs, y).mean(),
        }


@hookimpl
def register_regularizers(register):
    register("adp", ADP)
