"""Interactive global adversarial training (iGAT) of Deng23, Section 5 (Eqs. 12 to 16).

Each batch, an attack against the whole ensemble seen through an aggregator (Eq. 12: the average or the maximum of
the members' probabilities) makes *global* adversarial examples. Each example is given to one member, the one
best at it (hard rule, Eq. 13) or by roulette over the members ranked by their true-class probability (soft rule,
Eq. 14: rank ``r`` is drawn with probability ``2^(N - r) / (2^N - 1)``), and trains that member alone. A
regularizer (Eq. 15) pushes down, on inputs the ensemble misclassifies, the largest probability any member gives
to a wrong class. The enhanced loss (Eq. 16) adds, to the base method's loss, ``adversarial_weight`` times the
members' cross-entropy on their examples and ``regularizer_weight`` times Eq. 15 over natural and adversarial
inputs together (Deng23 uses 5 and 10 for ADP; named so as not to clash with ADP's own ``alpha`` and ``beta``).

Deliberate readings of the paper, as documented in docs/methods/igat.md: Eq. 15's maximum excludes the true class
(the text means the most wrongly predicted class; as printed, a confident correct member would be penalised), and
its log is kept finite by clipping ``1 - p`` at ``clip``. The paper gives no training attack settings: the default
is L-infinity PGD, epsilon 8/255, 10 steps of 2/255 from a random start. Ties in the ranking go to the lower
member index. The attack runs with the members in evaluation mode and on clean inputs (not the noisy ones).
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ensemblecert import (
    Aggregator,
    Attack,
    Regularizer,
    TrainBatch,
    component_field,
    evaluation_mode,
    hookimpl,
    probability_model,
)
from ensemblecert.validators import in_range, one_of

RULES = ("soft", "hard", "opposite", "random")


def ranks(scores: Tensor) -> Tensor:
    """Each member's rank ``[B, N]`` (1 = the highest true-class probability) from ``scores`` ``[B, N]``; ties go to
    the lower member index."""
    order = torch.sort(-scores, dim=1, stable=True).indices
    out = torch.empty_like(order)
    out.scatter_(1, order, torch.arange(1, scores.shape[1] + 1, device=scores.device).expand_as(order))
    return out


def soft_probabilities(scores: Tensor) -> Tensor:
    """Eq. 14: ``p_i = 2^(N - r_i) / (2^N - 1)`` per example ``[B, N]``; each row sums to 1."""
    n = scores.shape[1]
    return torch.pow(2.0, (n - ranks(scores)).to(torch.float64)) / (2.0**n - 1)


def roulette(probabilities: Tensor, q: Tensor) -> Tensor:
    """Roulette-wheel selection: member ``i`` where ``a_i < q <= b_i`` for the intervals laid end to end in member
    order with widths ``probabilities[:, i]``; ``q`` ``[B]`` uniform in (0, 1]."""
    edges = probabilities.cumsum(dim=1)
    edges[:, -1] = 1.0  # rounding must never leave q beyond the last interval
    return torch.searchsorted(edges, q[:, None].to(edges.dtype)).clamp_max(probabilities.shape[1] - 1)[:, 0]


def distribute(scores: Tensor, rule: str, generator: torch.Generator | None) -> Tensor:
    """The member ``[B]`` each example goes to: ``soft`` (Eq. 14), ``hard`` (Eq. 13: the highest true-class
    probability), or the ablations of Deng23 Table 3, ``opposite`` (the lowest) and ``random`` (uniform)."""
    if rule == "hard":
        return ranks(scores).argmin(dim=1)
    if rule == "opposite":
        return ranks(scores).argmax(dim=1)
    q = 1.0 - torch.rand(scores.shape[0], generator=generator, device=scores.device, dtype=torch.float64)  # (0, 1]
    if rule == "random":
        return roulette(torch.full(scores.shape, 1.0 / scores.shape[1], dtype=torch.float64, device=scores.device), q)
    return roulette(soft_probabilities(scores), q)


def misclassification_penalty(member_probs: Tensor, y: Tensor, wrong: Tensor, clip: float) -> Tensor:
    """Eq. 15 per input: ``-log(1 - max_{c != y} max_j h^j_c(x))`` where the combined ensemble misclassifies ``x``
    (``wrong``), else 0; ``member_probs`` ``[N, B, C]``; ``1 - p`` is clipped below at ``clip``."""
    others = member_probs.scatter(2, y.expand(member_probs.shape[0], -1)[..., None], 0.0)
    worst = others.amax(dim=(0, 2))
    penalty = -torch.log((1.0 - worst).clamp_min(clip))
    return torch.where(wrong, penalty, torch.zeros_like(penalty))


@attrs.frozen
class IGAT(Regularizer):
    """iGAT (Deng23 Eq. 16): members trained on global adversarial examples distributed to them (Eqs. 12-14), plus
    the misclassification regularizer (Eq. 15)."""

    attack: Attack = component_field(
        "attack", {"name": "pgd", "norm": "linf", "epsilon": 8 / 255, "steps": 10, "step_size": 2 / 255}
    )
    aggregator: Aggregator = component_field("aggregator", {"name": "we"})
    rule: str = attrs.field(default="soft", validator=one_of(RULES))
    #: Distribute every adversarial example (the paper), or only those the ensemble misclassifies.
    examples: str = attrs.field(default="all", validator=one_of(["all", "misclassified"]))
    adversarial_weight: float = attrs.field(default=5.0, validator=in_range(0))
    regularizer_weight: float = attrs.field(default=10.0, validator=in_range(0))
    clip: float = attrs.field(default=1e-6, validator=in_range(0, 1, low_open=True, high_open=True))

    def check_members(self, count: int) -> str | None:
        if count < 2:
            return f"igat distributes examples among members; this ensemble has {count}, set ensemble.members >= 2"
        return None

    def terms(self, batch: TrainBatch) -> dict[str, Tensor]:
        x, y, members = batch.x, batch.y, batch.members
        with evaluation_mode(nn.ModuleList(members)):
            adversarial = self.attack.perturb(
                probability_model(members, self.aggregator), x, y, generator=batch.generator
            )
        both = torch.cat([x, adversarial])
        logits = torch.stack([m(both) for m in members])  # [N, 2B, C], with the graph
        probs = logits.softmax(dim=-1)
        labels = torch.cat([y, y])
        with torch.no_grad():
            wrong = self.aggregator.combine(logits.detach()).argmax(dim=-1) != labels
        b = x.shape[0]
        adv_logits, adv_wrong = logits[:, b:], wrong[b:]
        owner = distribute(
            probs[:, b:].detach().gather(2, y.expand(len(members), -1)[..., None])[..., 0].T, self.rule, batch.generator
        )
        use = adv_wrong if self.examples == "misclassified" else torch.ones_like(adv_wrong)
        adversarial_loss = x.new_zeros(())
        for i in range(len(members)):
            mine = use & (owner == i)
            if mine.any():
                adversarial_loss = adversarial_loss + F.cross_entropy(adv_logits[i][mine], y[mine])
        batch.log("adv_error_share", adv_wrong.float().mean())
        penalty = misclassification_penalty(probs, labels, wrong, self.clip).mean()
        return {"igat_adv": self.adversarial_weight * adversarial_loss, "igat_reg": self.regularizer_weight * penalty}


@hookimpl
def register_regularizers(register):
    register("igat", IGAT)
