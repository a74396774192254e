"""Certifiers that decide draw by draw, many inputs at once: every forward pass is filled with the next draws of the
inputs still undecided, and a decided input's place goes to the next one.

Each input draws from its own noise stream (:class:`~ensemblecert.smoothing.sampling.NoiseStream` from its own
generator), so its ``j``-th draw is the same whichever inputs share its batches and however the batches are cut: an
input's certificate is the one it gets alone (:func:`decide`), and a run stays resumable and shardable input by
input. A :class:`~ensemblecert.Decision` says how many draws it wants next and sees their classes in order; the draws
after the one that decides it are evaluated (they filled the batch) but never looked at, and the certificate counts
only the draws it looked at.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import attrs
import torch
from torch import Tensor

from ..components import Certificate, Decision
from .sampling import MonteCarloSampler, NoiseStream, SharedTallies, SmoothedClassifier, evaluation_mode

#: The fewest draws an input is given in one pass (a pass holds at most ``batch_size // MIN_SHARE`` inputs, which
#: bounds the noise the open streams hold).
MIN_SHARE = 32


@attrs.frozen
class Decided:
    """One input's decided certificate, and its share of the work: seconds and member evaluations, split between
    the inputs of every pass in proportion to their draws."""

    key: object
    certificate: Certificate
    seconds: float
    evaluations: float


@attrs.define(eq=False)
class _Open:
    key: object
    stream: NoiseStream
    decision: Decision
    seconds: float = 0.0
    evaluations: float = 0.0


def decide_many(
    sampler: MonteCarloSampler, pending: Iterable[tuple[object, Tensor, torch.Generator | None, Decision]]
) -> Iterator[Decided]:
    """Run the decisions of ``pending`` (``(key, input, its generator, its decision)``, taken as room frees up) to
    the end, yielding each as it is decided: every pass holds up to ``sampler.batch_size`` draws of the open
    inputs, each given what it :meth:`~ensemblecert.Decision.wants` while room lasts (the order rotates, so none
    waits for long)."""
    size = sampler.batch_size
    source = iter(pending)
    open_: list[_Open] = []
    more = True
    while True:
        while more and len(open_) < max(1, size // MIN_SHARE):
            item = next(source, None)
            if item is None:
                more = False
                break
            key, x, generator, decision = item
            entry = _Open(key, sampler.stream(x, generator), decision)
            if decision.wants() == 0:
                yield Decided(key, decision.certificate(), 0.0, 0.0)
            else:
                open_.append(entry)
        if not open_:
            return
        room, parts = size, []
        for entry in open_:
            take = min(entry.decision.wants(), room)
            if take > 0:
                parts.append((entry, take))
                room -= take
        start = time.perf_counter()
        with torch.inference_mode(), evaluation_mode(sampler.classifier):
            drawn = sampler.draw([(entry.stream, take) for entry, take in parts])
        classes, spent = drawn.classes.cpu(), drawn.evaluations
        seconds = time.perf_counter() - start
        drawn_rows = classes.shape[0]
        at = 0
        for entry, take in parts:
            entry.decision.observe(classes[at : at + take])
            entry.seconds += seconds * take / drawn_rows
            entry.evaluations += spent * take / drawn_rows
            at += take
        still = []
        for entry in open_:
            if entry.decision.wants() == 0:
                yield Decided(entry.key, entry.decision.certificate(), entry.seconds, entry.evaluations)
            else:
                still.append(entry)
        open_ = still[1:] + still[:1]  # rotate: the first in line goes last


def decide(smoothed: SmoothedClassifier, x: Tensor, decision: Decision, generator: torch.Generator | None = None):
    """One input's decision run alone: with a sampler, exactly the draws :func:`decide_many` gives the input in any
    company; with another smoothed classifier, through its tallies (each draw's class kept in order)."""
    sampler = smoothed.sampler if isinstance(smoothed, SharedTallies) else smoothed
    if isinstance(sampler, MonteCarloSampler):
        return next(iter(decide_many(sampler, [(None, x, generator, decision)]))).certificate
    while (wanted := decision.wants()) > 0:
        sequence = smoothed.tally(x, wanted, generator=generator, sequence=True).sequence
        if sequence is None:
            raise ValueError(f"{type(smoothed).__name__} does not keep each draw's class (tally(sequence=True))")
        decision.observe(sequence)
    return decision.certificate()
