"""One training step's shared work: the noisy inputs and every member's outputs, computed once for all terms.

The training objective is a base loss (each member's own loss) plus any number of regularizers over the
ensemble. They all read one :class:`TrainBatch`, which draws the noise and runs the members once, on first
request, and hands the same tensors to every term that asks, so that DRT's gradient diversity and confidence
margin are evaluated at exactly the noisy inputs the base loss trains on (Yang22, App. F) and nothing is recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..components import NoiseSampler
from ..distributed import SINGLE, World


class TrainBatch:
    """Everything a training objective may look at for one mini-batch, with the shared work cached.

    ``x``, ``y``: the clean mini-batch. ``members``: every network of the ensemble, in training mode. (How the
    members will be combined is not part of training: a term that needs an aggregator declares its own, as iGAT
    does.)
    ``copies``: noisy copies of each input (m; the batch of noisy inputs is ``x`` repeated ``copies`` times).
    ``shared``: all members see one noise draw (set when regularizers couple the members); otherwise each
    member draws its own, which trains each exactly as if it were trained alone.

    A base loss may set :attr:`centres` (the points noise is added to: one tensor for all members, or one per
    member, each shaped like ``x`` repeated ``copies`` times) before :meth:`inputs` is first called.

    ``generator`` is the stream for a term's own draws (an attack's random start, iGAT's distribution);
    ``noise_generator`` (by default the same) is the one the noise comes from. In data-parallel training ``x`` is
    this rank's shard (``world.shard``) of a mini-batch of ``whole`` inputs: every rank draws the noise of the whole
    mini-batch from the one stream all ranks share and keeps its shard's rows, so the noise of every input, and with
    it the members, do not depend on the number of processes.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        members: Sequence[nn.Module],
        noise: NoiseSampler,
        generator: torch.Generator,
        epoch: int,
        *,
        copies: int = 1,
        shared: bool = False,
        noise_generator: torch.Generator | None = None,
        world: World = SINGLE,
        whole: int | None = None,
    ) -> None:
        self.x, self.y, self.members = x, y, members
        self.noise, self.generator, self.epoch = noise, generator, epoch
        self.copies, self.shared = copies, shared
        self.noise_generator = noise_generator if noise_generator is not None else generator
        self.world, self.whole = world, whole if whole is not None else x.shape[0]
        if len(range(world.rank, self.whole, world.size)) != x.shape[0]:
            raise ValueError(f"x has {x.shape[0]} inputs, not rank {world.rank}'s shard of a batch of {self.whole}")
        self.centres: Tensor | Sequence[Tensor] | None = None
        self.metrics: dict[str, Tensor] = {}
        self._noise: list[Tensor] | None = None
        self._inputs: list[Tensor] | None = None
        self._logits: list[Tensor] | None = None

    @property
    def num_members(self) -> int:
        return len(self.members)

    def repeated(self, t: Tensor) -> Tensor:
        """``t`` (inputs or labels of the clean batch) repeated ``copies`` times along the batch dimension."""
        return t.repeat(self.copies, *([1] * (t.dim() - 1))) if self.copies > 1 else t

    def targets(self) -> Tensor:
        """The labels of the noisy inputs (``y`` repeated ``copies`` times)."""
        return self.repeated(self.y)

    def noise_draws(self) -> list[Tensor]:
        """The noise of each member (the same tensor for all when ``shared``), drawn once."""
        if self._noise is None:
            if self.shared:
                self._noise = [self._draw()] * self.num_members
            else:
                self._noise = [self._draw() for _ in self.members]
        return self._noise

    def _draw(self) -> Tensor:
        """One noise tensor for the repeated inputs: the whole mini-batch's, this rank's rows of it."""
        rest = tuple(self.x.shape[1:])
        full = self.noise.sample(
            (self.copies * self.whole, *rest), generator=self.noise_generator, device=self.x.device, dtype=self.x.dtype
        )
        if self.whole == self.x.shape[0]:
            return full
        rows = full.view(self.copies, self.whole, *rest)[:, self.world.rank :: self.world.size]
        return rows.reshape(self.copies * self.x.shape[0], *rest)

    def inputs(self) -> list[Tensor]:
        """Each member's noisy inputs: its centre (``x`` by default) plus its noise. When ``shared`` they are one
        tensor that requires grad, so terms can take input gradients (DRT, GAL)."""
        if self._inputs is None:
            centres = self.centres if self.centres is not None else self.repeated(self.x)
            noise = self.noise_draws()
            if self.shared:
                if not isinstance(centres, Tensor):
                    raise ValueError("members that share their noise share their centres too: set one tensor")
                leaf = (centres.detach() + noise[0]).requires_grad_(True)
                self._inputs = [leaf] * self.num_members
            else:
                if isinstance(centres, Tensor):
                    centres = [centres] * self.num_members
                self._inputs = [c + n for c, n in zip(centres, noise)]
        return self._inputs

    def logits(self) -> list[Tensor]:
        """Each member's logits on its noisy inputs, computed once (with the graph, for training)."""
        if self._logits is None:
            self._logits = [member(inp) for member, inp in zip(self.members, self.inputs())]
        return self._logits

    def computed_logits(self) -> list[Tensor] | None:
        """The members' logits if a term has computed them (:meth:`logits`), else ``None``; computes nothing."""
        return self._logits

    def log(self, name: str, value: float | Tensor) -> None:
        """Record a metric of this batch (shown with the terms; not part of the loss); kept on the device, so
        logging never waits for it."""
        self.metrics[name] = value.detach() if isinstance(value, Tensor) else torch.tensor(float(value))


def total(terms: Mapping[str, Tensor]) -> Tensor:
    """The loss: the sum of all named terms."""
    values = list(terms.values())
    if not values:
        raise ValueError("the training objective produced no terms")
    out = values[0]
    for v in values[1:]:
        out = out + v
    return out
