"""Aggregation variants and K-consensus (Horvath et al., Horvath22, Section 4 and App. E.3.1;
the max aggregator of Deng & Mu, Deng23, Section 5).

Every aggregator maps member logits ``[N, B, C]`` to class probabilities ``[B, C]``; the predicted class is
the argmax. Soft voting after softmax is the ``we`` aggregator (Yang et al.'s Weighted Ensemble).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import numpy as np
import torch
from scipy import optimize
from torch import Tensor

from ensemblecert import Aggregate, Aggregator, HeldOut, Members, hookimpl
from ensemblecert.validators import in_range, one_of


def weighted_sum(values: Tensor, weights: Sequence[float]) -> Tensor:
    """``sum_l w_l values[l]`` with the weights as Python numbers, so no tensor is copied to the device per batch."""
    return sum(float(w) * v for w, v in zip(weights, values))


def soft_vote(member_logits: Tensor, weights: Sequence[float] | None = None) -> Tensor:
    """Soft voting on logits (Horvath22 Eq. 2; App. E.3.1): ``softmax((1/k) sum_l w_l f^l(x))``, ``w_l = 1``
    unweighted."""
    if weights is None:
        mean = member_logits.mean(dim=0)
    else:
        mean = weighted_sum(member_logits, weights) / member_logits.shape[0]
    return mean.softmax(dim=-1)


def softmax_vote(member_logits: Tensor) -> Tensor:
    """Soft voting after softmax (Horvath22 App. E.3.1): ``(1/k) sum_l softmax(f^l(x))``."""
    return member_logits.softmax(dim=-1).mean(dim=0)


def hard_vote(member_logits: Tensor) -> Tensor:
    """Hard (majority) voting (Horvath22 App. E.3.1): the share of members voting for each class.

    Ties go to the lowest class index (the argmax of the shares returns the first maximum).
    """
    votes = member_logits.argmax(dim=-1)  # [N, B]
    shares = torch.zeros_like(member_logits[0])
    shares.scatter_add_(1, votes.T, torch.ones_like(votes.T, dtype=shares.dtype))
    return shares / member_logits.shape[0]


def max_combine(member_logits: Tensor) -> Tensor:
    """The max aggregator (Deng23, Section 5): ``h_j(x) = max_i h^i_j(x)`` over the members' probabilities,
    renormalised to sum to 1 (which keeps the argmax)."""
    top = member_logits.softmax(dim=-1).amax(dim=0)
    return top / top.sum(dim=-1, keepdim=True)


COMBINERS: dict[str, Callable[[Tensor], Tensor]] = {
    "soft": soft_vote,
    "softmax": softmax_vote,
    "hard": hard_vote,
    "max": max_combine,
}


def fit_weights(member_logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Weights ``w >= 0`` minimising the cross-entropy of weighted soft voting on held-out logits ``[N, M, C]``
    (L-BFGS-B with the analytic gradient), for App. E.3.1's weighted soft voting."""
    members = member_logits.shape[0]
    onehot = np.eye(member_logits.shape[2])[labels]

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = np.einsum("n,nmc->mc", w, member_logits) / members
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        grad_z = (np.exp(log_p) - onehot) / len(labels)
        return float(-(onehot * log_p).sum() / len(labels)), np.einsum("mc,nmc->n", grad_z, member_logits) / members

    result = optimize.minimize(loss, np.ones(members), jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * members)
    return result.x


def heldout_logits(members: Members, heldout: HeldOut) -> tuple[Tensor, Tensor]:
    """Every member's logits on the noisy held-out inputs ``[N, M, C]``, and the labels ``[M]``."""
    logits, labels = [], []
    with torch.inference_mode():
        for x, y in heldout.noisy_batches():
            logits.append(members.logits(x))
            labels.append(y)
    return torch.cat(logits, dim=1), torch.cat(labels)


@attrs.frozen
class SoftVoting(Aggregator):
    """Soft voting on logits (Horvath22 Eq. 2): the members' mean logits; optionally weighted (App. E.3.1).

    ``weights`` gives one weight per member; ``fit = true`` learns them on the held-out split instead
    (non-negative, minimising the cross-entropy under the run's noise).
    """

    weights: list[float] | None = attrs.field(default=None, validator=attrs.validators.optional(in_range(0)))
    fit: bool = False

    def check_members(self, count: int) -> str | None:
        if self.weights is not None and len(self.weights) != count:
            return f"weights has {len(self.weights)} entries for {count} members; give one weight per member"
        if self.fit and self.weights is not None:
            return "give weights or fit = true, not both"
        return None

    def needs_heldout(self) -> bool:
        return self.fit

    def calibrate(self, members: Members, heldout: HeldOut) -> SoftVoting:
        logits, labels = heldout_logits(members, heldout)
        weights = fit_weights(logits.double().cpu().numpy(), labels.cpu().numpy())
        return attrs.evolve(self, weights=[float(w) for w in weights], fit=False)

    def combine(self, member_logits: Tensor) -> Tensor:
        return soft_vote(member_logits, self.weights)


@attrs.frozen
class HardVoting(Aggregator):
    """Hard (majority) voting (Horvath22 App. E.3.1): each member votes its top class; ties go to the lowest class."""

    def differentiable(self) -> bool:
        return False  # votes

    def combine(self, member_logits: Tensor) -> Tensor:
        return hard_vote(member_logits)


@attrs.frozen
class MaxCombiner(Aggregator):
    """The max aggregator (Deng23, Section 5): the elementwise maximum of the members' probabilities."""

    def combine(self, member_logits: Tensor) -> Tensor:
        return max_combine(member_logits)


def _permutation(_instance, _attribute, value: list[int] | None) -> None:
    if value is not None and sorted(value) != list(range(len(value))):
        raise ValueError(f"must list every member index once (a ranking, best first), got {value}")


@attrs.frozen
class KConsensus(Aggregator):
    """K-consensus aggregation (Horvath22, Section 4): the first K members (best first) decide where they agree.

    Per noisy sample: the K best members run on the whole batch; where they all predict the same class their
    ``vote`` is the answer; only the other samples go on to the remaining members, and get the whole
    ensemble's ``vote``. Members are ranked by their accuracy under the run's noise on the held-out split
    unless ``order`` gives the ranking.
    """

    skips_members = True

    k: int = attrs.field(validator=in_range(1))
    vote: str = attrs.field(default="soft", validator=one_of(list(COMBINERS)))
    order: list[int] | None = attrs.field(default=None, validator=_permutation)
    #: Each member's accuracy under noise on the held-out split (recorded by calibration).
    accuracies: list[float] | None = None

    def differentiable(self) -> bool:
        return self.vote != "hard"  # which members answer is decided by votes; soft and max answers carry gradients

    def check_members(self, count: int) -> str | None:
        if self.k > count:
            return f"k = {self.k} but the ensemble has {count} members; choose k <= {count}"
        if self.order is not None and len(self.order) != count:
            return f"order ranks {len(self.order)} members but the ensemble has {count}"
        return None

    def needs_heldout(self) -> bool:
        return self.order is None

    def calibrate(self, members: Members, heldout: HeldOut) -> KConsensus:
        logits, labels = heldout_logits(members, heldout)
        accuracy = (logits.argmax(dim=-1) == labels).double().mean(dim=1).cpu().tolist()
        order = sorted(range(len(accuracy)), key=lambda i: (-accuracy[i], i))
        return attrs.evolve(self, order=order, accuracies=[float(a) for a in accuracy])

    def combine(self, member_logits: Tensor) -> Tensor:
        return COMBINERS[self.vote](member_logits)

    def forward(self, members: Members, x: Tensor) -> Aggregate:
        order = self.order if self.order is not None else list(range(len(members)))
        k, batch = self.k, x.shape[0]
        first = torch.stack([members.member(i, x) for i in order[:k]])  # [K, B, C]
        votes = first.argmax(dim=-1)
        agree = (votes == votes[0]).all(dim=0)
        probs = self.combine(first)
        rest = torch.nonzero(~agree).squeeze(1)  # the one host synchronisation: how many go on
        undecided = int(rest.numel())
        if undecided and k < len(members):
            xr = x.index_select(0, rest)
            later = torch.stack([members.member(i, xr) for i in order[k:]])
            probs = probs.index_copy(0, rest, self.combine(torch.cat([first.index_select(1, rest), later])))
        spent = k * batch + (len(members) - k) * undecided
        return Aggregate(probs=probs, member_logits=None, evaluations=spent, settled=batch - undecided)


@hookimpl
def register_aggregators(register):
    register("soft", SoftVoting)
    register("hard", HardVoting)
    register("max", MaxCombiner)
    register("k_consensus", KConsensus)
