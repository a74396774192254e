"""How the members of an ensemble run on a batch: their layout, compilation and arithmetic precision.

Three layouts compute the same logits ``[N, B, C]``:

* ``loop``: one member after another;
* ``vmap``: one ``torch.func.vmap`` call over the members' stacked weights;
* ``fused``: one wider network (:mod:`ensemblecert.ensemble.fusion`): the first layer of all members as one layer, later
  ones grouped.

``auto`` takes what measured fastest (``benchmarks/engine.py``, ``docs/engine.md``): the fused network for
members without convolutions on a GPU (one wide and a few batched matrix products instead of many small ones),
the loop everywhere else (grouped convolutions are 2 to 2.5 times slower than the members' own, on the CPU and on
an H100 alike, and batched matrix products are slower than the members' dense layers on the CPU). ``compile``
runs the layout through ``torch.compile``; its default compiles members with convolutions (1.4x to 1.6x on
CPU ResNet-20, 1.15x to 1.24x on an H100). ``channels_last`` stores convolutional members' weights and inputs
channels-last; its default is on only on a GPU at a reduced precision (in strict float32 it made ResNet-20 2.8
times slower on an H100).

``precision`` is ``fp32`` unless asked otherwise: float32 everywhere, TF32 tensor cores off. ``tf32``, ``bf16``
and ``fp16`` are faster on GPUs but can change predictions near a decision boundary, and then the counts the
bounds assume are no longer the base classifier's (Voracek and Hein, 2023): they are an explicit choice,
recorded with the results. ``bf16-checked`` and ``fp16-checked`` run members at the reduced precision only inside
:meth:`Members.checking`, where every sample whose top two logits of some member lie within the given margin is
evaluated again in float32 (:mod:`ensemblecert.ensemble.checked` derives the margin and audits it); everywhere
else they run in float32.

Every choice changes only the floating-point rounding of the logits, never which noise a sample gets, so with
the same seed the counts agree between layouts and batch sizes unless a sample's top two scores tie to within
rounding (``tests/test_engine.py`` checks every path).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from ..config.schema import Engine
from .fusion import FusionError, fuse


def _signature(module: nn.Module) -> tuple:
    return (
        tuple(type(m) for m in module.modules()),
        tuple((n, p.shape, p.dtype) for n, p in module.named_parameters()),
        tuple((n, b.shape, b.dtype) for n, b in module.named_buffers()),
    )


def _device_type(modules: Sequence[nn.Module]) -> str:
    for module in modules:
        for p in module.parameters():
            return p.device.type
    return "cpu"


def _has_convolutions(modules: Sequence[nn.Module]) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for module in modules for m in module.modules())


@contextmanager
def precision_context(precision: str, device_type: str) -> Iterator[None]:
    """Run the members at ``precision``: fp32 turns TF32 off (and restores the settings afterwards); bf16 and
    fp16 autocast."""
    if device_type != "cuda":
        if precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if precision == "bf16" else torch.float16
            with torch.autocast(device_type, dtype=dtype):
                yield
        else:
            yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        if precision in ("bf16", "fp16"):
            with torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def auto_layout(device_type: str, convolutional: bool) -> str:
    """The layout ``auto`` chooses: the one measured fastest for such members on such a device (module docstring;
    ``docs/engine.md``). ``fused`` only for members without convolutions on a GPU (1.4x and 1.9x the loop for 3 and
    5 digits MLPs on an H100); everywhere else the loop (fused ResNet-20s ran at about a third of the compiled
    loop on an H100 and at 0.36x to 0.69x of it on the CPU; fused MLPs at 0.36x to 0.47x of the reference loop on
    the CPU). ``vmap`` is never chosen: it lost to the loop wherever it was measured (0.25x to 0.7x on the CPU)."""
    return "fused" if device_type == "cuda" and not convolutional else "loop"


class Members:
    """The members of an ensemble, run on one batch as the :class:`Engine` says.

    ``logits(x)`` gives all members' logits ``[N, B, C]`` (float32 whatever the precision); ``member(i, x)`` one
    member's ``[B, C]``, for aggregators that skip members. The layout is settled on the first batch: ``fused``
    needs a probe batch to check the wider network against the members, and falls back to the loop, saying why in
    :attr:`why_not`, when the architecture does not fuse. Members that differ in architecture or run in training
    mode always loop. Stacked or fused layouts, and channels-last members, hold copies of the weights: build a new
    ``Members`` after a change. The modules passed in are never changed, so several ensembles over the same members
    with different ``[engine]`` settings all work.
    """

    def __init__(self, modules: Sequence[nn.Module], engine: Engine | None = None) -> None:
        self.modules = list(modules)
        self.engine = engine or Engine()
        self.device_type = _device_type(self.modules)
        self.why_not: str | None = None
        #: Checked precisions: the reduced one; member evaluations (a sample through a member) made at it while
        #: checking, and how many of them were made again in float32.
        self.low = self.engine.precision.removesuffix("-checked")
        self.evaluations = 0
        self.reevaluated = 0
        self._modes: list[tuple[str, float | None]] = []
        self.layout = self._requested_layout()
        self._run: Callable[[Tensor], Tensor] | None = None
        self._single: list[Callable[[Tensor], Tensor]] | None = None
        convolutional = _has_convolutions(self.modules)
        self.compiled = self.engine.compile if self.engine.compile is not None else convolutional
        cl = self.engine.channels_last
        self.channels_last = convolutional and (
            cl if cl is not None else self.device_type == "cuda" and self.engine.reduced
        )
        if self.channels_last:  # copies: the caller's modules (another ensemble may run them) keep their layout
            self.modules = [copy.deepcopy(module).to(memory_format=torch.channels_last) for module in self.modules]

    def _requested_layout(self) -> str:
        layout = self.engine.layout
        if layout == "auto":
            layout = auto_layout(self.device_type, _has_convolutions(self.modules))
        if layout == "loop":
            return layout
        if len(self.modules) < 2:
            self.why_not = "a single member"
        elif any(m.training for module in self.modules for m in module.modules()):
            self.why_not = "members in training mode"
        elif len({_signature(m) for m in self.modules}) != 1:
            self.why_not = "members differ in architecture"
        else:
            return layout
        return "loop"

    def __len__(self) -> int:
        return len(self.modules)

    @property
    def vectorized(self) -> bool:
        return self.layout != "loop"

    def describe(self) -> dict:
        """The choices made, for the record (``certification.meta.json``)."""
        return {
            "layout": self.layout,
            "compiled": self.compiled,
            "channels_last": self.channels_last,
            "precision": self.engine.precision,
            **({"why_not": self.why_not} if self.why_not else {}),
        }

    def _compile(self, fn: Callable) -> Callable:
        return torch.compile(fn, dynamic=None) if self.compiled else fn

    def _build(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        if self.layout == "fused":
            try:
                fused = fuse(self.modules, x[: min(len(x), 8)].float())
            except FusionError as exc:
                self.layout, self.why_not = "loop", str(exc)
            else:
                if self.channels_last:
                    fused = fused.to(memory_format=torch.channels_last)
                return self._compile(fused)
        if self.layout == "vmap":
            params, buffers = stack_module_state(self.modules)
            base = copy.deepcopy(self.modules[0]).to("meta")

            def call(p: dict, b: dict, inp: Tensor) -> Tensor:
                return functional_call(base, (p, b), (inp,))

            vmapped = torch.vmap(call, in_dims=(0, 0, None))
            return self._compile(lambda inp: vmapped(params, buffers, inp))
        singles = self._singles()
        return lambda inp: torch.stack([run(inp) for run in singles])

    def _singles(self) -> list[Callable[[Tensor], Tensor]]:
        if self._single is None:
            self._single = [self._compile(m) for m in self.modules]
        return self._single

    def checking(self, margin: float | None) -> contextlib.AbstractContextManager[None]:
        """Within: a checked precision runs at its reduced precision, and re-evaluates in float32 every sample where
        some member's top two logits differ by less than ``margin`` (``None``: low precision, nothing checked)."""
        return self._mode("checking", margin)

    def exact(self) -> contextlib.AbstractContextManager[None]:
        """Within: float32, whatever the precision."""
        return self._mode("exact", None)

    @contextmanager
    def _mode(self, mode: str, margin: float | None) -> Iterator[None]:
        self._modes.append((mode, margin))
        try:
            yield
        finally:
            self._modes.pop()

    def _precision(self) -> tuple[str, float | None]:
        """The precision to run at now and the margin to check (``None``: none)."""
        mode, margin = self._modes[-1] if self._modes else ("default", None)
        if mode == "exact":
            return "fp32", None
        if not self.engine.checked:
            return self.engine.precision, None
        return (self.low, margin) if mode == "checking" else ("fp32", None)  # checked runs float32 elsewhere

    def _context(self, precision: str):
        if precision == "fp32" and self.device_type != "cuda":
            return nullcontext()
        return precision_context(precision, self.device_type)

    def _evaluate(self, run: Callable[[Tensor], Tensor], x: Tensor, dim: int) -> Tensor:
        """``run(x)`` at the current precision, close samples (along ``dim``) re-run in float32 when checking."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        precision, margin = self._precision()
        with self._context(precision):
            out = run(x).float()
        if margin is None or out.shape[-1] < 2:
            return out
        top = out.topk(2, dim=-1).values
        close = ~(top[..., 0] - top[..., 1] >= margin)  # a NaN (an overflow at the low precision) is close
        if close.dim() > 1:
            close = close.any(dim=0)
        rows = close.nonzero().squeeze(1)  # one host synchronisation: how many are re-evaluated
        per_sample = out.shape[0] if dim == 1 else 1  # members in this call
        self.evaluations += out.shape[dim] * per_sample
        if rows.numel():
            self.reevaluated += int(rows.numel()) * per_sample
            with self._context("fp32"):
                out = out.index_copy(dim, rows, run(x.index_select(0, rows)).float())
        return out

    def logits(self, x: Tensor) -> Tensor:
        """All members' logits ``[N, B, C]``."""
        if self._run is None:
            self._run = self._build(x)
        return self._evaluate(self._run, x, 1)

    def member(self, index: int, x: Tensor) -> Tensor:
        """The logits ``[B, C]`` of member ``index`` alone."""
        return self._evaluate(self._singles()[index], x, 0)
