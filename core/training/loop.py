"""Training the ensemble: all members together, a base loss plus regularizers, SGD with momentum and a step
schedule.

Members share mini-batches (so objectives that couple members, like DRT, can compare them) but have their own
initialisation seeds. Every term of the objective reads one :class:`~ensemblecert.TrainBatch`, which computes
the noisy inputs and the members' outputs once. The mean of every term and metric is recorded per epoch, and a
training state is saved atomically after every epoch, so an interrupted run resumes from its last finished epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence, Sized
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..components import DataSplits, NoiseSampler
from ..config import TrainingConfig
from ..distributed import SINGLE, World
from ..errors import UserError
from ..seeds import generator
from .log import MEMBER
from .objectives import TrainBatch, total


def batch_terms(config: TrainingConfig, batch: TrainBatch) -> dict[str, torch.Tensor]:
    """Every named term of the objective on ``batch``: the base loss's, then each regularizer's (a name that
    repeats is prefixed with its regularizer's position)."""
    terms = dict(config.loss.terms(batch))
    for k, reg in enumerate(config.regularizers):
        for name, value in reg.terms(batch).items():
            terms[name if name not in terms else f"{k}.{name}"] = value
    return terms


def member_losses(batch: TrainBatch) -> dict[str, torch.Tensor]:
    """Each member's cross-entropy on its noisy inputs (``member 0 ce``, ...), where a term computed the members'
    logits anyway (no forward pass is added); recorded per epoch beside the terms."""
    logits = batch.computed_logits()
    if logits is None:
        return {}
    targets = batch.targets()
    return {
        f"{MEMBER}{i} ce": F.cross_entropy(z.detach().float(), targets)
        for i, z in enumerate(logits)
        if z.shape[0] == targets.shape[0]
    }


def train_ensemble(
    members: Sequence[nn.Module],
    data: DataSplits,
    config: TrainingConfig,
    *,
    noise: NoiseSampler,
    seed: int,
    device: torch.device,
    resume: dict[str, Any] | None = None,
    on_epoch: Callable[[int, Mapping[str, float], dict[str, Any]], None] | None = None,
    on_batch: Callable[[Mapping[str, float]], None] | None = None,
    world: World = SINGLE,
) -> list[float]:
    """Train ``members`` in place as ``config`` says and return the mean loss of each epoch run.

    ``on_epoch(epoch, record, state)`` receives the epoch's means (``loss``, every term and metric, ``lr``,
    ``seconds``) and the state to save; ``resume`` is such a state, and training continues after its epoch.
    ``on_batch(record)`` receives each batch's terms and metrics. Shuffling and noise are seeded from
    ``(seed, epoch)`` (see :mod:`ensemblecert.seeds`), so a resumed run sees the batches an uninterrupted one
    would have.

    Across the processes of a ``world`` (see :mod:`ensemblecert.distributed`), each rank trains on its shard of
    every mini-batch with that shard's rows of the mini-batch's noise (every rank draws the whole mini-batch's from
    the epoch's one stream), gradients are weighted by the shard's share and averaged with one all-reduce per step
    and buffers follow rank 0's. Every rank holds the same members, and they are the members one process trains up
    to float32 rounding (which many epochs amplify; see docs/engine.md), as long as every term is a mean over the
    inputs, the members have no batch statistics (batch norm normalises each shard by its own) and no term draws
    from :attr:`TrainBatch.generator` (each rank has its own stream for such draws).
    """
    params = [p for m in members for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=config.lr_step, gamma=config.lr_gamma)
    start = 0
    if resume is not None:
        for m, state in zip(members, resume["members"]):
            m.load_state_dict(state)
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        start = int(resume["epoch"])
    inputs = len(cast(Sized, data.train))
    if world.distributed and min(inputs, config.batch_size) < world.size:  # every rank stops here alike
        raise UserError(
            f"training.batch_size ({config.batch_size}) and the training set ({inputs} inputs) must each "
            f"hold one input per process ({world.size}); set a larger batch size or run fewer processes"
        )
    losses = []
    shared = bool(config.regularizers)
    for epoch in range(start, config.epochs):
        for m in members:
            m.train()
        began = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        order = generator(seed, "shuffle", epoch)
        loader = DataLoader(data.train, batch_size=config.batch_size, shuffle=True, generator=order)
        noise_stream = generator(seed, "train-noise", epoch, device=device)
        # A term's own draws: from the noise stream in one process (as ever), from the rank's stream in several.
        own = generator(seed, "train-draws", epoch, world.rank, device=device) if world.distributed else noise_stream
        buffers = [b for m in members for b in m.buffers()]
        sums: dict[str, torch.Tensor] = {}
        batches = 0
        for x, y in loader:
            whole = x.shape[0]
            x, y = (t[world.rank :: world.size].to(device, non_blocking=True) for t in (x, y))
            opt.zero_grad(set_to_none=True)
            if x.shape[0]:
                batch = TrainBatch(
                    x, y, members, noise, own, epoch, copies=config.copies, shared=shared,
                    noise_generator=noise_stream, world=world, whole=whole,
                )  # fmt: skip
                terms = batch_terms(config, batch)
                loss = total(terms)
                loss.backward()
                values = {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}
                values.update({k: v.to(device, torch.float32) for k, v in batch.metrics.items()})
                values.update(member_losses(batch))
            else:  # a last mini-batch smaller than the number of ranks leaves this one nothing
                values = {k: torch.zeros_like(v) for k, v in sums.items()}
            if world.distributed:  # every rank must send every gradient, used or not
                grads = []
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    grads.append(p.grad)
                # Each rank's loss is a mean over its shard: weighting by the shard's share makes the average
                # over ranks the whole mini-batch's mean, as one process computes it.
                share = x.shape[0] * world.size / whole
                if share != 1.0:
                    for g in grads:
                        g.mul_(share)
                world.average_(grads)
            opt.step()
            world.broadcast_(buffers)
            for k, v in values.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
            batches += 1
            if on_batch is not None:
                on_batch({k: float(v) for k, v in values.items()} if batches % 10 == 1 else {})
        sched.step()
        world.average_([sums[k] for k in sorted(sums)])  # the epoch's means over all ranks' slices
        record = {k: float(v) / max(batches, 1) for k, v in sums.items()}
        record.update(lr=lr, seconds=time.perf_counter() - began)
        losses.append(record.get("loss", 0.0))
        for m in members:
            m.eval()
        if on_epoch is not None:
            on_epoch(
                epoch + 1,
                record,
                {
                    "epoch": epoch + 1,
                    "members": [m.state_dict() for m in members],
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                },
            )
    for m in members:
        m.eval()
    return losses
