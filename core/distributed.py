"""Runs spread over processes and machines with ``torchrun``.

``torchrun --nproc_per_node K [--nnodes M ...] -m ensemblecert run PIPELINE.toml`` starts K processes per machine
with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; :func:`join` turns that into a
:class:`World` (a ``torch.distributed`` process group: NCCL between GPUs, gloo on CPUs). A run without those
variables is a world of one and touches no ``torch.distributed`` state.

What each stage does with it:

* training: every rank takes its shard of each mini-batch (the same shuffled batches a single process would see)
  with its rows of the whole mini-batch's noise, gradients are weighted by the shard's share and averaged over the
  ranks with one all-reduce per step and buffers (batch-norm statistics) follow rank 0's, so the members stay
  identical on every rank and equal one process's up to rounding; rank 0 writes the checkpoints;
* certification: inputs are dealt out round-robin, each rank appends its records to its own
  ``certification.part-<rank>.tsv``, and rank 0 merges every part into ``certification.tsv`` (see
  :func:`ensemblecert.smoothing.results.merge_results`); a run started again finds the records of every part and of the
  merged file, whatever the number of processes before;
* everything else that writes a file (summary, plots, the evaluation stage) runs on rank 0.

The noise of an input depends only on the seed and the input's index, so the merged results equal a single
process's.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Sequence

import attrs
import torch
import torch.distributed as dist
from torch import Tensor

from .errors import UserError


@attrs.frozen
class World:
    """This process's place among the processes of one run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    #: Whether :func:`join` started the process group (and :func:`leave` ends it).
    owns_group: bool = attrs.field(default=False, eq=False)
    #: A shard run as a job of its own (see :mod:`ensemblecert.running.launcher`): no process group, no
    #: collectives, no shared file written; it certifies its fixed share of the inputs into its part file, and a
    #: later run of one process merges the parts. Only certification runs in such a world.
    independent: bool = False

    @property
    def main(self) -> bool:
        """Whether this process writes the run's shared files (rank 0 of a process group)."""
        return self.rank == 0 and not self.independent

    @property
    def collective(self) -> bool:
        """Whether the ranks talk to each other (several processes in one group)."""
        return self.size > 1 and not self.independent

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, items: Sequence) -> list:
        """This rank's share of ``items``: every ``size``-th, starting at ``rank``."""
        return list(items[self.rank :: self.size])

    def barrier(self) -> None:
        if self.collective:
            dist.barrier()

    def average_(self, tensors: Sequence[Tensor]) -> None:
        """Replace each tensor by its mean over the ranks (one all-reduce for all of them)."""
        if self.independent:
            raise RuntimeError("a shard running alone cannot average with other ranks (it must not train)")
        if not self.distributed or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def broadcast_(self, tensors: Sequence[Tensor]) -> None:
        """Overwrite each tensor with rank 0's (one broadcast for all of them)."""
        if self.independent:
            raise RuntimeError("a shard running alone cannot take rank 0's tensors (it must not train)")
        if not self.distributed or not tensors:
            return
        flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
        dist.broadcast(flat, 0)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (every rank must call it; a shard running alone knows only its own)."""
        if not self.collective:
            return flag
        value = torch.tensor([1 if flag else 0])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())


#: A world of one process.
SINGLE = World()


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def join(device: str) -> World:
    """The :class:`World` this process belongs to, joining the process group when ``torchrun`` started it.
    ``device`` is the pipeline's device setting: CUDA processes use NCCL and their local GPU."""
    size = _env_int("WORLD_SIZE") or 1
    if size == 1:
        return SINGLE
    rank, local = _env_int("RANK") or 0, _env_int("LOCAL_RANK") or 0
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=2))
    return World(rank=rank, size=size, local_rank=local, owns_group=owns)


#: Seconds a gloo rank waits after the last barrier before it closes its connections (see :func:`leave`).
LINGER = 0.2


def leave(world: World, *, synchronize: bool = True) -> None:
    """Leave the process group :func:`join` joined (nothing for a world of one). With ``synchronize`` every rank
    arrives before any tears the group down (gloo aborts with "terminate called without an active exception" when a
    rank destroys its connections while a peer still has traffic in flight); pass ``False`` when leaving because of
    an error, so that a failed rank never pairs its barrier with a barrier its peers wait at elsewhere."""
    if world.owns_group and dist.is_initialized():
        if synchronize:
            dist.barrier()
            if dist.get_backend() == "gloo":
                # A barrier's last message can still be in flight when a rank leaves it (the rank that sent it
                # returns first); tearing the connections down then aborts the peer, rarely but for real (seen in
                # one CI run of the data-parallel training test). Let it land.
                time.sleep(LINGER)
        dist.destroy_process_group()
