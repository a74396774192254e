"""Ensembles: members behind a normalisation layer, evaluated together, combined by an aggregator."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from .components import Aggregate, Aggregator, DataInfo, Model


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the first layer of every member, so noise lives in pixel space."""

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


def _signature(module: nn.Module) -> tuple:
    return (
        tuple(type(m) for m in module.modules()),
        tuple((n, p.shape, p.dtype) for n, p in module.named_parameters()),
        tuple((n, b.shape, b.dtype) for n, b in module.named_buffers()),
    )


class Members:
    """The members of an ensemble, run on one batch.

    With ``vectorize`` and members that share one architecture and are in evaluation mode, they run
    as a single vectorised call (``torch.func.vmap`` over their stacked weights); otherwise one after
    another. On CPU the loop is faster (``benchmarks/members.py``), hence the default.
    """

    def __init__(self, modules: Sequence[nn.Module], *, vectorize: bool = False) -> None:
        self.modules = list(modules)
        self._stacked: tuple[dict, dict] | None = None
        self._base: nn.Module | None = None
        self.vectorized = (
            vectorize
            and len(self.modules) > 1
            and not any(m.training for m in self.modules)
            and len({_signature(m) for m in self.modules}) == 1
        )
        if self.vectorized:
            self._stacked = stack_module_state(self.modules)
            self._base = copy.deepcopy(self.modules[0]).to("meta")

    def __len__(self) -> int:
        return len(self.modules)

    def logits(self, x: Tensor) -> Tensor:
        """All members' logits ``[N, B, C]``."""
        if self._stacked is not None:
            params, buffers = self._stacked

            def call(p: dict, b: dict, inp: Tensor) -> Tensor:
                return functional_call(self._base, (p, b), (inp,))

            return torch.vmap(call, in_dims=(0, 0, None))(params, buffers, x)
        return torch.stack([m(x) for m in self.modules])

    def member(self, index: int, x: Tensor) -> Tensor:
        """The logits ``[B, C]`` of member ``index`` alone."""
        return self.modules[index](x)


class Ensemble(nn.Module):
    """Members combined by an aggregator; ``forward`` returns log ensemble probabilities ``[B, C]``.

    ``evaluate`` returns the full :class:`Aggregate` (member logits and evaluation counts too).
    """

    def __init__(self, members: Sequence[nn.Module], aggregator: Aggregator, *, vectorize: bool = False) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.aggregator = aggregator
        self.vectorize = vectorize
        self._runner: Members | None = None
        self._runner_key: tuple | None = None

    def runner(self) -> Members:
        """The :class:`Members` view. Vectorised, it holds stacked copies of the weights, rebuilt whenever
        a weight changed or the mode switched; looped, it holds the modules themselves."""
        if not self.vectorize:
            if self._runner is None:
                self._runner = Members(list(self.members))
            return self._runner
        key = (self.training, tuple((id(p), p._version) for p in self.parameters()))
        if self._runner is None or key != self._runner_key:
            self._runner = Members(list(self.members), vectorize=self.vectorize)
            self._runner_key = key
        return self._runner

    def evaluate(self, x: Tensor) -> Aggregate:
        return self.aggregator.forward(self.runner(), x)

    def forward(self, x: Tensor) -> Tensor:
        return self.evaluate(x).probs.clamp_min(torch.finfo(torch.float32).tiny).log()

    @property
    def num_members(self) -> int:
        return len(self.members)
