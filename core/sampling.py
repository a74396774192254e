"""Monte-Carlo smoothing: draw noisy copies of one input and count what the base classifier says.

This is the hot path of certification. Noise is drawn a whole batch at a time, predictions are
counted on the device with ``bincount``, and only the final counts are copied to the host, so
memory is bounded by ``batch_size`` and not by the number of samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import attrs
import torch
from torch import Tensor, nn

from .components import NoiseSampler
from .ensemble import Ensemble


@attrs.frozen
class Tally:
    """What ``n`` noisy copies of one input produced (all tensors on the CPU).

    ``counts[c]``: how often the base classifier predicted class ``c`` (all classes, the multinomial
    view). ``prob_sums[c]``: the sum of its class-``c`` probability (the softmax view; ``/ n`` gives
    the empirical softmax expectation), when requested. ``member_counts[i, c]``: how often member ``i``
    alone predicted ``c`` on the same draws, when requested. ``evaluations``: member forward passes
    spent (fewer than ``n`` times the ensemble size when the aggregator skipped members).
    """

    n: int
    counts: Tensor
    evaluations: int
    prob_sums: Tensor | None = None
    member_counts: Tensor | None = None

    @property
    def top(self) -> int:
        """The most frequent class (lowest index on ties)."""
        return int(torch.argmax(self.counts))


@runtime_checkable
class SmoothedClassifier(Protocol):
    """What certifiers sample from: a base classifier smoothed by a noise distribution."""

    num_classes: int
    noise: NoiseSampler

    def tally(
        self,
        x: Tensor,
        n: int,
        *,
        generator: torch.Generator | None = None,
        softmax: bool = False,
        members: bool = False,
    ) -> Tally:
        """Draw ``n`` noisy copies of the single input ``x`` and tally the base classifier's outputs."""
        ...


Classifier = Callable[[Tensor], Tensor]


class MonteCarloSampler:
    """Smooth ``classifier`` under ``noise`` by sampling.

    ``classifier`` maps a batch of inputs ``[B, ...]`` to logits ``[B, C]``; an :class:`Ensemble` is
    evaluated through its aggregator, so ensemble probabilities, member counts and skipped members
    are all accounted for. ``num_classes`` is inferred with one forward pass when not given.
    """

    def __init__(
        self,
        classifier: Classifier,
        noise: NoiseSampler,
        *,
        num_classes: int | None = None,
        batch_size: int = 1000,
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.classifier = classifier
        self.noise = noise
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else _device_of(classifier)
        self.num_classes = num_classes
        self._ensemble = classifier if isinstance(classifier, Ensemble) else None

    def _infer_classes(self, x: Tensor) -> int:
        with torch.inference_mode():
            return int(self._scores(x.unsqueeze(0))[0].shape[-1])

    def _scores(self, batch: Tensor) -> tuple[Tensor, bool, Tensor | None, int]:
        """(scores, are-probabilities, member logits or None, evaluations) for one batch."""
        if self._ensemble is not None:
            agg = self._ensemble.evaluate(batch)
            return agg.probs, True, agg.member_logits, agg.evaluations
        return self.classifier(batch), False, None, batch.shape[0]

    def tally(
        self,
        x: Tensor,
        n: int,
        *,
        generator: torch.Generator | None = None,
        softmax: bool = False,
        members: bool = False,
    ) -> Tally:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        x = x.to(self.device)
        if self.num_classes is None:
            self.num_classes = self._infer_classes(x)
        classes = self.num_classes
        counts = torch.zeros(classes, dtype=torch.long, device=self.device)
        prob_sums = torch.zeros(classes, dtype=torch.float64, device=self.device) if softmax else None
        member_counts = None
        if members:
            if self._ensemble is None:
                raise ValueError("per-member counts need an Ensemble classifier")
            member_counts = torch.zeros(
                self._ensemble.num_members, classes, dtype=torch.long, device=self.device
            )
        evaluations = 0
        done = 0
        with torch.inference_mode():
            while done < n:
                size = min(self.batch_size, n - done)
                batch = self.noise.sample((size, *x.shape), generator=generator, device=self.device, dtype=x.dtype)
                batch += x
                scores, are_probs, member_logits, spent = self._scores(batch)
                evaluations += spent
                if scores.shape[-1] != classes:
                    raise ValueError(f"the classifier returned {scores.shape[-1]} classes, expected {classes}")
                counts += torch.bincount(scores.argmax(dim=1), minlength=classes)
                if prob_sums is not None:
                    probs = scores if are_probs else scores.softmax(dim=1)
                    prob_sums += probs.sum(dim=0, dtype=torch.float64)
                if member_counts is not None:
                    if member_logits is None:
                        raise ValueError("the aggregator skipped members, so per-member counts are unavailable")
                    member_counts.scatter_add_(
                        1, member_logits.argmax(dim=2), torch.ones_like(member_logits[..., 0], dtype=torch.long)
                    )
                done += size
        return Tally(
            n=n,
            counts=counts.cpu(),
            evaluations=evaluations,
            prob_sums=None if prob_sums is None else prob_sums.cpu(),
            member_counts=None if member_counts is None else member_counts.cpu(),
        )


def _device_of(classifier: Classifier) -> torch.device:
    if isinstance(classifier, nn.Module):
        for p in classifier.parameters():
            return p.device
    return torch.device("cpu")
