"""Members of one architecture as one wider network.

Under smoothing every member sees the same noisy batch, so ``N`` members of one architecture can run as a
single computation: the layers before the first weighted one (normalisation, flattening) run once, the first
weighted layer of all members becomes one layer ``N`` times wider (their outputs concatenated), and every later
layer works on ``N`` groups side by side: convolutions as grouped convolutions, linear layers as one batched
matrix product, batch norms over the concatenated channels. Activations of member ``i`` are channels
``[i * C, (i + 1) * C)`` of one tensor ``[B, N * C, ...]`` throughout, so element-wise operations, pooling,
residual additions and flattening need no change.

:func:`fuse` rewrites a copy of the first member module by module (the members' own ``forward`` code runs
unchanged on the wider tensors) and then checks the result against the members run one after another on a probe
batch; an architecture whose forward code mixes channels in a way the rewrite cannot see (a concatenation, a
reshape with a fixed channel count, the raw input used again deeper in) fails that check, and :func:`fuse` says
why instead of returning a wrong network. The weights are copied: a fused network is a snapshot, rebuilt when the
members change.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

#: Layers without weights that act on each channel (or element) alone, so they run unchanged on grouped tensors.
CHANNELWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Hardswish,
    nn.Identity,
    nn.Dropout,
    nn.Flatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)


class FusionError(ValueError):
    """The members cannot run as one network; the message says why."""


class GroupedLinear(nn.Module):
    """``N`` linear layers side by side: input ``[B, N * F]`` (member ``i``'s features in block ``i``), output
    ``[B, N * H]``, computed as one batched matrix product."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.groups = len(layers)
        self.weight = nn.Parameter(
            torch.stack([layer.weight.detach() for layer in layers]).transpose(1, 2).contiguous()
        )
        bias = [layer.bias for layer in layers]
        self.bias = None if bias[0] is None else nn.Parameter(torch.stack([b.detach() for b in bias]).unsqueeze(1))

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        grouped = x.reshape(batch, self.groups, -1).transpose(0, 1)  # [N, B, F]
        out = torch.bmm(grouped, self.weight) if self.bias is None else torch.baddbmm(self.bias, grouped, self.weight)
        return out.transpose(0, 1).reshape(batch, -1)


def _concatenate(target: nn.Module, modules: Sequence[nn.Module], *names: str) -> None:
    """Set each parameter ``name`` of ``target`` to the members' ones concatenated (``None`` where they have none)."""
    for name in names:
        values = [getattr(m, name) for m in modules]
        setattr(target, name, None if values[0] is None else nn.Parameter(torch.cat([v.detach() for v in values])))


def _wide(layers: Sequence[nn.Module]) -> nn.Module:
    """The first weighted layer of all members as one layer with their outputs concatenated."""
    first = layers[0]
    wide: nn.Module
    if isinstance(first, nn.Linear):
        wide = nn.Linear(first.in_features, first.out_features * len(layers), bias=first.bias is not None)
    elif isinstance(first, nn.Conv2d) and first.groups == 1:
        conv = copy.deepcopy(first)
        conv.out_channels = first.out_channels * len(layers)
        wide = conv
    else:
        raise FusionError(f"the first weighted layer is a {type(first).__name__}, which has no wide form")
    _concatenate(wide, layers, "weight", "bias")
    return wide.to(first.weight.device)


def _grouped(layers: Sequence[nn.Module]) -> nn.Module:
    """A later layer of all members, side by side on their channel blocks."""
    first, count = layers[0], len(layers)
    if isinstance(first, nn.Linear):
        return GroupedLinear([layer for layer in layers if isinstance(layer, nn.Linear)])
    if isinstance(first, nn.Conv2d):
        conv = copy.deepcopy(first)
        conv.in_channels, conv.out_channels = first.in_channels * count, first.out_channels * count
        conv.groups = first.groups * count
        _concatenate(conv, layers, "weight", "bias")
        return conv
    if isinstance(first, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if not first.track_running_stats:
            raise FusionError(f"{type(first).__name__} without running statistics")
        norm = copy.deepcopy(first)
        norm.num_features = first.num_features * count
        _concatenate(norm, layers, "weight", "bias")
        for name in ("running_mean", "running_var"):
            setattr(norm, name, torch.cat([getattr(layer, name) for layer in layers]))
        return norm
    if isinstance(first, CHANNELWISE):
        return first
    if not _has_state(first):
        return first  # weightless and not known to be channel-wise: the probe check decides
    raise FusionError(f"no grouped form for {type(first).__name__} layers")


def _has_state(layer: nn.Module) -> bool:
    return any(True for _ in layer.parameters()) or any(True for _ in layer.buffers())


def _same_state(layers: Sequence[nn.Module]) -> bool:
    states = [layer.state_dict() for layer in layers]
    return all(all(torch.equal(state[key], states[0][key]) for key in states[0]) for state in states[1:])


def _execution_order(module: nn.Module, probe: Tensor) -> list[str]:
    """Names of the leaf modules in the order ``module`` calls them on ``probe``."""
    order: list[str] = []
    handles = [
        sub.register_forward_pre_hook(lambda _m, _a, name=name: order.append(name))
        for name, sub in module.named_modules()
        if not any(True for _ in sub.children())
    ]
    try:
        with torch.inference_mode():
            module(probe)
    finally:
        for handle in handles:
            handle.remove()
    return order


def _set(module: nn.Module, name: str, value: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, leaf, value)


class FusedMembers(nn.Module):
    """``N`` members as one network: ``forward(x)`` returns all members' logits ``[N, B, C]``."""

    def __init__(self, net: nn.Module, count: int) -> None:
        super().__init__()
        self.net = net
        self.count = count

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out.reshape(out.shape[0], self.count, -1).transpose(0, 1)


def fuse(modules: Sequence[nn.Module], probe: Tensor, *, rtol: float = 1e-4, atol: float = 1e-5) -> FusedMembers:
    """Fuse ``modules`` (one architecture, evaluation mode) into one network, checked on ``probe`` (a batch of
    inputs) against the members run one after another. Raises :class:`FusionError` with the reason when the
    architecture does not fuse."""
    modules = list(modules)
    if len(modules) < 2:
        raise FusionError("a single member has nothing to fuse with")
    if any(sub.training for m in modules for sub in m.modules()):
        raise FusionError("members in training mode (batch norm and dropout would see the wider batch)")
    names = [[n for n, _ in m.named_modules()] for m in modules]
    if any(n != names[0] for n in names[1:]) or any(
        [type(s) for s in m.modules()] != [type(s) for s in modules[0].modules()] for m in modules[1:]
    ):
        raise FusionError("members differ in architecture")
    order = _execution_order(modules[0], probe)
    stateful = [name for name in order if _has_state(modules[0].get_submodule(name))]
    if len(stateful) != len(set(stateful)):
        raise FusionError("a layer with weights runs more than once in the forward pass")
    order = list(dict.fromkeys(order))
    leaves = {name: [m.get_submodule(name) for m in modules] for name in order}
    fused = copy.deepcopy(modules[0])
    entered = False
    for name in order:
        layers = leaves[name]
        weighted = isinstance(layers[0], (nn.Linear, nn.Conv2d))
        if not entered and not weighted:
            if not _same_state(layers):
                raise FusionError(f"layer {name!r} comes before the first weighted layer but differs between members")
            continue  # runs once, on the shared input
        if not entered:
            _set(fused, name, _wide(layers))
            entered = True
        else:
            _set(fused, name, _grouped(layers))
    if not entered:
        raise FusionError("the members have no weighted layer")
    result = FusedMembers(fused, len(modules)).eval()
    with torch.inference_mode():
        expected = torch.stack([m(probe) for m in modules])
        try:
            got = result(probe)
        except RuntimeError as exc:  # shapes the rewrite did not foresee
            raise FusionError(f"the fused network fails on a probe batch ({exc})") from None
    if got.shape != expected.shape or not torch.allclose(
        got, expected, rtol=rtol, atol=atol * expected.abs().max().item()
    ):
        raise FusionError("the fused network disagrees with the members on a probe batch")
    return result


__all__ = ["FusedMembers", "FusionError", "GroupedLinear", "fuse"]
