"""Ensembles: members behind a normalisation layer, evaluated together, combined by an aggregator."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..components import Aggregate, Aggregator, DataInfo, Model
from ..errors import UserError
from .checked import PrecisionCheck
from .engine import Engine, Members


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the first layer of every member, so noise lives in pixel space."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


def build_member(model: Model, info: DataInfo, seed: int) -> nn.Module:
    """Build one member: ``Normalize`` then ``model.build(info)``, initialised from ``seed``.

    The global torch generator is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = model.build(info)
    return nn.Sequential(OrderedDict(normalize=Normalize(info.mean, info.std), net=net))


class Ensemble(nn.Module):
    """Members combined by an aggregator; ``forward`` returns log ensemble probabilities ``[B, C]``.

    ``evaluate`` returns the full :class:`Aggregate` (member logits and evaluation counts too).
    """

    def __init__(self, members: Sequence[nn.Module], aggregator: Aggregator, *, engine: Engine | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.aggregator = aggregator
        self.engine = engine or Engine()
        self._runner: Members | None = None
        self._runner_key: tuple | None = None
        #: At a checked precision, what checks the decisions (and records what it did).
        self.check = PrecisionCheck(self.engine) if self.engine.checked else None
        self._contract_checked = False

    def runner(self) -> Members:
        """The :class:`~ensemblecert.ensemble.engine.Members` that evaluate the members. A stacked or fused layout holds
        copies of the weights, so it is rebuilt whenever a weight changed or the mode switched."""
        key = (self.training, tuple((id(p), p._version) for p in self.parameters()))
        runner, known = self._runner, self._runner_key
        if runner is None or known is None or (key != known if runner.vectorized else key[0] != known[0]):
            runner = self._runner = Members(list(self.members), self.engine)
            self._runner_key = key
        return runner

    def evaluate(self, x: Tensor) -> Aggregate:
        if self.check is not None:
            out = self.check.evaluate(self.aggregator, self.runner(), x)
        else:
            out = self.aggregator.forward(self.runner(), x)
        if not self._contract_checked:  # the first batches: a broken aggregator is named before its output is used
            problem = aggregate_problem(out, x.shape[0])
            if problem:
                cls = type(self.aggregator)
                raise UserError(
                    f"aggregator {cls.__qualname__} (from {cls.__module__}) broke its contract: {problem}. Its "
                    "combine() maps member logits [members, inputs, classes] to probabilities [inputs, classes]"
                )
            self._contract_checked = x.shape[0] > 1  # (one clean input, to learn the classes, is not enough)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.evaluate(x).probs.clamp_min(torch.finfo(torch.float32).tiny).log()

    @property
    def num_members(self) -> int:
        return len(self.members)


#: How far from 1 a row of probabilities may sum (float32 rounding over many classes stays far below).
SUM_TOLERANCE = 1e-3


def aggregate_problem(aggregate: Aggregate, inputs: int) -> str | None:
    """What is wrong with an aggregator's output for a batch of ``inputs`` (``None`` when nothing): probabilities
    ``[inputs, classes]``, finite, nonnegative, each row summing to 1."""
    probs = aggregate.probs
    if probs.dim() != 2 or probs.shape[0] != inputs:
        return f"it returned shape {list(probs.shape)} for {inputs} inputs, expected [{inputs}, classes]"
    values = probs.detach()
    if not bool(torch.isfinite(values).all()):
        return "it returned values that are not finite"
    sums = values.float().sum(dim=1)
    worst = int((sums - 1).abs().argmax())
    if bool((values < 0).any()) or abs(float(sums[worst]) - 1) > SUM_TOLERANCE:
        return (
            f"its rows must be probabilities (nonnegative, summing to 1), but row {worst} sums to "
            f"{float(sums[worst]):.4g}; are they logits? softmax them"
        )
    return None
