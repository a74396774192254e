"""Training the ensemble: all members together, one objective, SGD with momentum and a step schedule.

Members share mini-batches (so objectives that couple members, like DRT, can compare them) but have
their own initialisation seeds; a training state is saved atomically after every epoch, so an
interrupted run resumes from its last finished epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .components import Aggregator, DataSplits, NoiseSampler, TrainBatch
from .config import TrainConfig
from .seeds import generator


def train_ensemble(
    members: Sequence[nn.Module],
    data: DataSplits,
    config: TrainConfig,
    *,
    noise: NoiseSampler,
    aggregator: Aggregator,
    seed: int,
    device: torch.device,
    resume: dict[str, Any] | None = None,
    on_epoch: Callable[[int, float, dict[str, Any]], None] | None = None,
    on_batch: Callable[[], None] | None = None,
) -> list[float]:
    """Train ``members`` in place as ``config`` says and return the mean loss of each epoch run.

    ``resume`` is a state previously passed to ``on_epoch(epoch, mean_loss, state)``; training
    continues after its epoch. Shuffling and noise are seeded from ``(seed, epoch)`` (see
    :mod:`ensemblecert.seeds`), so a resumed run sees the batches an uninterrupted one would have.
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
    losses = []
    for epoch in range(start, config.epochs):
        for m in members:
            m.train()
        order = generator(seed, "shuffle", epoch)
        loader = DataLoader(data.train, batch_size=config.batch_size, shuffle=True, generator=order)
        gen = generator(seed, "train-noise", epoch, device=device)
        total = torch.zeros((), device=device)
        batches = 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = config.objective.loss(
                TrainBatch(x=x, y=y, members=members, noise=noise, aggregator=aggregator, generator=gen, epoch=epoch)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            batches += 1
            if on_batch is not None:
                on_batch()
        sched.step()
        mean = float(total) / max(batches, 1)
        losses.append(mean)
        for m in members:
            m.eval()
        if on_epoch is not None:
            on_epoch(
                epoch + 1,
                mean,
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
