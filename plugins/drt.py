"""Diversity-Regularized Training (DRT) of Yang22, Section 3 and App. F.

Every term is evaluated at the noisy inputs ``x0 + eps`` all members share (App. F). Members ``i`` and ``j`` form
a *valid pair* there when both predict the true class ``y0``. With ``f`` the members' softmax outputs and
``y_i(2)`` member ``i``'s runner-up class, over the ordered valid pairs ``i != j``:

* GD (Eq. 9): ``|| grad_x (f_i[y0] - f_i[y_i(2)]) + grad_x (f_j[y0] - f_j[y_j(2)]) ||_2``, the norm of the sum of
  the two members' margin gradients (small when the gradients point apart);
* CM (Eq. 10): ``(f_i[y_i(2)] - f_i[y0]) + (f_j[y_j(2)] - f_j[y0])``, minus the two margins.

The training loss after Eq. 10 adds ``rho1 * GD + rho2 * CM`` to the members' base losses. The paper does not say
how terms are averaged over the batch and the pairs, which rescales ``rho1`` and ``rho2``; here (``pairs``):
``"sum"`` (default) sums over the valid pairs of a noisy input, as the equation is written, and averages over all
noisy inputs of the batch (an input with no valid pair adds 0), like the cross-entropy beside it; ``"mean"``
averages over the valid pairs instead. All pairs of a batch are computed together from the members' Gram matrix
of margin gradients; the gradients are taken with ``create_graph`` so training back-propagates through them.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from ensemblecert import Regularizer, TrainBatch, hookimpl
from ensemblecert.validators import in_range, one_of


def margins(probs: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(f[y0] - f[y(2)], predicts y0)`` per member and input, from softmax outputs ``[N, M, K]`` and labels ``[M]``:
    ``y(2)`` is the most probable class other than ``y0`` (the runner-up whenever the member predicts ``y0``)."""
    true = probs.gather(-1, y.expand(probs.shape[0], -1)[..., None])[..., 0]
    others = probs.scatter(-1, y.expand(probs.shape[0], -1)[..., None], float("-inf"))
    return true - others.max(dim=-1).values, probs.argmax(dim=-1) == y


def valid_pairs(correct: Tensor) -> Tensor:
    """``[M, N, N]``: members ``i != j`` both predict ``y0`` on input ``m`` (from ``correct`` ``[N, M]``)."""
    c = correct.T
    eye = torch.eye(c.shape[1], dtype=torch.bool, device=c.device)
    return c[:, :, None] & c[:, None, :] & ~eye


def safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)`` for ``x >= 0`` with gradient 0 (not inf or NaN) where ``x = 0``."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def gradient_diversity(grads: Tensor, valid: Tensor, *, squared: bool = False) -> Tensor:
    """Eq. 9 for every ordered pair at once: ``||g_i + g_j||`` (or its square) ``[M, N, N]``, 0 off ``valid``.

    ``grads`` ``[N, M, D]`` are the members' margin gradients; ``||g_i + g_j||^2 = G_ii + G_jj + 2 G_ij`` with
    ``G`` the per-input Gram matrix, so no ``[N, N, M, D]`` tensor is formed.
    """
    gram = torch.einsum("imd,jmd->mij", grads, grads)
    diag = torch.diagonal(gram, dim1=1, dim2=2)
    sq = (diag[:, :, None] + diag[:, None, :] + 2 * gram).clamp_min(0)
    value = sq if squared else safe_sqrt(sq)
    return torch.where(valid, value, torch.zeros_like(value))


def confidence_margin(margin: Tensor, valid: Tensor) -> Tensor:
    """Eq. 10 for every ordered pair: ``-(margin_i + margin_j)`` ``[M, N, N]``, 0 off ``valid``."""
    m = margin.T
    value = -(m[:, :, None] + m[:, None, :])
    return torch.where(valid, value, torch.zeros_like(value))


def reduce_pairs(values: Tensor, valid: Tensor, how: str) -> Tensor:
    """``"sum"``: the sum over valid pairs, averaged over inputs; ``"mean"``: the mean over all valid pairs."""
    if how == "sum":
        return values.sum(dim=(1, 2)).mean()
    return values.sum() / valid.sum().clamp_min(1)


@attrs.frozen
class DRT(Regularizer):
    """Diversity-Regularized Training (Yang22 Eqs. 9-10): ``rho1 * GD + rho2 * CM`` over valid member pairs.

    ``rho1 = 0`` is CM alone and ``rho2 = 0`` GD alone (the ablation of Yang22 App. G.1). ``pairs`` says how the
    terms are averaged (see the module docstring); ``squared`` uses ``||.||^2`` in GD.
    """

    rho1: float = attrs.field(default=0.5, validator=in_range(0))
    rho2: float = attrs.field(default=2.0, validator=in_range(0))
    pairs: str = attrs.field(default="sum", validator=one_of(["sum", "mean"]))
    squared: bool = False

    def check_members(self, count: int) -> str | None:
        if count < 2:
            return f"drt couples pairs of members; this ensemble has {count}, set ensemble.members >= 2"
        return None

    def terms(self, batch: TrainBatch) -> dict[str, Tensor]:
        y = batch.targets()
        probs = torch.stack([logits.softmax(dim=-1) for logits in batch.logits()])
        margin, correct = margins(probs, y)
        valid = valid_pairs(correct)
        count = valid.shape[1] * (valid.shape[1] - 1) * valid.shape[0]
        batch.log("valid_share", valid.sum() / max(count, 1))
        out = {}
        if self.rho1 > 0:
            inputs = batch.inputs()[0]
            grads = torch.stack(
                [
                    torch.autograd.grad(margin[i].sum(), inputs, create_graph=True)[0].flatten(1)
                    for i in range(batch.num_members)
                ]
            )
            out["gd"] = self.rho1 * reduce_pairs(
                gradient_diversity(grads, valid, squared=self.squared), valid, self.pairs
            )
        if self.rho2 > 0:
            out["cm"] = self.rho2 * reduce_pairs(confidence_margin(margin, valid), valid, self.pairs)
        return out


@hookimpl
def register_regularizers(register):
    register("drt", DRT)
