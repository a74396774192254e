"""Monte-Carlo smoothing: draw noisy copies of one input and count what the base classifier says.

This is the hot path of certification. Noise is drawn in blocks of :func:`noise_block` samples
(never one sample at a time), predictions are counted on the device (``scatter_add``), and only the
final counts are copied to the host, so memory is bounded by ``batch_size`` and not by the number of
samples.

Two things make a tally depend only on the input, ``n`` and the generator:

* the noise of sample ``j`` is the same whatever ``batch_size`` is, because noise is always drawn in
  blocks of :func:`noise_block` samples and batches are cut from those blocks (a random-number
  generator's output for one request of ``m`` numbers differs from two requests that add up to ``m``);
* the classifier runs in evaluation mode (dropout off, batch-norm on its running statistics), so each
  draw's prediction does not depend on the other draws in its batch, as the binomial bounds assume; the
  caller's mode is restored afterwards and no state of the model changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import attrs
import torch
from torch import Tensor, nn

from ..components import NoiseSampler
from ..ensemble.assembly import Ensemble


@attrs.frozen
class Tally:
    """What ``n`` noisy copies of one input produced (all tensors on the CPU).

    ``counts[c]``: how often the base classifier predicted class ``c`` (all classes, the multinomial
    view). ``prob_sums[c]``: the sum of its class-``c`` probability (the softmax view; ``/ n`` gives
    the empirical softmax expectation), when requested. ``member_counts[i, c]``: how often member ``i``
    alone predicted ``c`` on the same draws, when requested. ``sequence[j]``: the class the ``j``-th draw
    predicted, in the order drawn, when requested (for procedures that look after every draw). ``evaluations``:
    member forward passes spent (fewer than ``n`` times the ensemble size when the aggregator skipped members).
    """

    n: int
    counts: Tensor
    evaluations: int
    prob_sums: Tensor | None = None
    member_counts: Tensor | None = None
    sequence: Tensor | None = None

    @property
    def top(self) -> int:
        """The most frequent class (lowest index on ties)."""
        return int(torch.argmax(self.counts))


@attrs.define
class Usage:
    """What a sampler has spent so far: noise draws, member evaluations, and samples an aggregator settled
    early (``None`` while no aggregator reported any). Take a :meth:`snapshot` before and after a piece of
    work and subtract to see what it cost."""

    draws: int = 0
    evaluations: int = 0
    settled: int | None = None

    def snapshot(self) -> Usage:
        return Usage(self.draws, self.evaluations, self.settled)

    def __sub__(self, earlier: Usage) -> Usage:
        settled = None if self.settled is None else self.settled - (earlier.settled or 0)
        return Usage(self.draws - earlier.draws, self.evaluations - earlier.evaluations, settled)


@runtime_checkable
class SmoothedClassifier(Protocol):
    """What certifiers sample from: a base classifier smoothed by a noise distribution."""

    #: ``None`` until the first tally, for a sampler that infers the class count from the classifier's output.
    num_classes: int | None
    noise: NoiseSampler

    def tally(
        self,
        x: Tensor,
        n: int,
        *,
        generator: torch.Generator | None = None,
        softmax: bool = False,
        members: bool = False,
        sequence: bool = False,
    ) -> Tally:
        """Draw ``n`` noisy copies of the single input ``x`` and tally the base classifier's outputs (with
        ``sequence``, also each draw's class in order)."""
        ...


Classifier = Callable[[Tensor], Tensor]

#: On the CPU, noise is drawn this many samples at a time, whatever the batch size (see the module docstring).
NOISE_BLOCK = 128
#: On a GPU, a block holds about this many numbers: each draw is a kernel launch, and blocks of 128 small inputs
#: left the GPU waiting on launches (the engine ran at a quarter of the reference loop's speed on digits MLPs).
GPU_BLOCK_ELEMENTS = 2**20


def noise_block(x: Tensor) -> int:
    """Samples per noise block for inputs like ``x``: :data:`NOISE_BLOCK` on the CPU; on other devices the
    largest power of two of samples within :data:`GPU_BLOCK_ELEMENTS` numbers (at least ``NOISE_BLOCK``). It
    depends on the device and the input's size alone, never on the batch size."""
    if x.device.type == "cpu":
        return NOISE_BLOCK
    fits = max(1, GPU_BLOCK_ELEMENTS // max(1, x.numel()))
    return max(NOISE_BLOCK, 1 << (fits.bit_length() - 1))


@contextmanager
def evaluation_mode(model: object) -> Iterator[None]:
    """Run ``model`` (any ``nn.Module``; other callables are left alone) in evaluation mode, then restore
    every submodule's own mode."""
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    if not any(training for _, training in modes):
        yield
        return
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class NoiseStream:
    """Consecutive noisy copies of one input, drawn in blocks of ``block`` samples (:func:`noise_block` when
    not given).

    ``take(k)`` returns the next ``k`` noisy copies; the noise of the ``j``-th copy depends only on the
    generator's state when the stream started, never on how the copies are split into batches.
    """

    def __init__(
        self,
        noise: NoiseSampler,
        x: Tensor,
        generator: torch.Generator | None,
        *,
        block: int | None = None,
    ) -> None:
        self.noise = noise
        self.x = x
        self.generator = generator
        self.block = block if block is not None else noise_block(x)
        self._left: Tensor | None = None  # drawn noise not yet handed out

    def _draw(self) -> Tensor:
        return self.noise.sample(
            (self.block, *self.x.shape), generator=self.generator, device=self.x.device, dtype=self.x.dtype
        )

    def take(self, count: int) -> Tensor:
        pieces: list[Tensor] = []
        need = count
        while need > 0:
            block = self._left if self._left is not None else self._draw()
            pieces.append(block[:need])
            self._left = block[need:] if need < block.shape[0] else None
            need -= pieces[-1].shape[0]
        batch = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        return batch.add_(self.x)  # rows handed out are never handed out again, so in place is safe


@attrs.frozen
class Drawn:
    """One forward pass over draws of several inputs, on the device: each draw's class, its probabilities and each
    member's class (``[members, draws]``) when asked for, and the member evaluations spent; ``exact`` when every
    member ran on every draw (so each input's share of the evaluations is known)."""

    classes: Tensor
    probs: Tensor | None
    member_classes: Tensor | None
    evaluations: int
    exact: bool


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
        self.usage = Usage()
        self._ensemble = classifier if isinstance(classifier, Ensemble) else None

    def _infer_classes(self, x: Tensor) -> int:
        with torch.inference_mode(), evaluation_mode(self.classifier):
            return int(self._scores(x.unsqueeze(0))[0].shape[-1])

    def _scores(self, batch: Tensor) -> tuple[Tensor, bool, Tensor | None, int, int | None]:
        """(scores, are-probabilities, member logits or None, evaluations, settled or None) for one batch."""
        if self._ensemble is not None:
            agg = self._ensemble.evaluate(batch)
            return agg.probs, True, agg.member_logits, agg.evaluations, agg.settled
        return self.classifier(batch), False, None, batch.shape[0], None

    def stream(self, x: Tensor, generator: torch.Generator | None) -> NoiseStream:
        """The noisy copies of ``x`` (moved to the sampler's device) drawn from ``generator``, in order."""
        x = x.to(self.device)
        if self.num_classes is None:
            self.num_classes = self._infer_classes(x)
        return NoiseStream(self.noise, x, generator)

    def draw(self, parts: Sequence[tuple[NoiseStream, int]], *, probs: bool = False, members: bool = False) -> Drawn:
        """One forward pass over the next draws of several inputs (``parts``: each input's stream and how many of
        its draws), counted in :attr:`usage`. Every tally and every decision goes through here. Call it under
        ``inference_mode`` with the classifier in evaluation mode (:func:`evaluation_mode`)."""
        batch = parts[0][0].take(parts[0][1]) if len(parts) == 1 else torch.cat([s.take(k) for s, k in parts])
        scores, are_probs, member_logits, spent, settled = self._scores(batch)
        if scores.shape[-1] != self.num_classes:
            raise ValueError(f"the classifier returned {scores.shape[-1]} classes, expected {self.num_classes}")
        if members and member_logits is None:
            if self._ensemble is None:
                raise ValueError("per-member counts need an Ensemble classifier")
            raise ValueError("the aggregator skipped members, so per-member counts are unavailable")
        if settled is not None:
            self.usage.settled = (self.usage.settled or 0) + settled
        rows = batch.shape[0]
        self.usage.draws += rows
        self.usage.evaluations += spent
        size = self._ensemble.num_members if self._ensemble is not None else 1
        return Drawn(
            classes=scores.argmax(dim=1),
            probs=(scores if are_probs else scores.softmax(dim=1)) if probs else None,
            member_classes=member_logits.argmax(dim=2) if members and member_logits is not None else None,
            evaluations=spent,
            exact=spent == size * rows and not settled,
        )

    def tally(
        self,
        x: Tensor,
        n: int,
        *,
        generator: torch.Generator | None = None,
        softmax: bool = False,
        members: bool = False,
        sequence: bool = False,
    ) -> Tally:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        tallies = self._tallies([x], n, [generator], softmax=softmax, members=members, sequence=sequence)
        assert tallies is not None  # one input: its evaluations are always known
        return tallies[0]

    def tally_many(
        self,
        xs: Sequence[Tensor],
        n: int,
        *,
        generators: Sequence[torch.Generator],
        softmax: bool = False,
        members: bool = False,
    ) -> list[Tally] | None:
        """The tallies of ``n`` draws of each input in ``xs`` (each from its own generator, exactly the draws
        :meth:`tally` would make), evaluated together in one forward pass so that small draws still fill a
        batch. ``len(xs) * n`` must fit in ``batch_size``. Returns ``None``, having spent the pass, when the
        aggregator skipped members (the evaluations of each input are then unknown): tally them one by one."""
        if len(xs) * n > self.batch_size or n < 1:
            raise ValueError(f"{len(xs)} inputs of {n} draws do not fit in a batch of {self.batch_size}")
        return self._tallies(xs, n, generators, softmax=softmax, members=members, sequence=False)

    def _tallies(
        self,
        xs: Sequence[Tensor],
        n: int,
        generators: Sequence[torch.Generator | None],
        *,
        softmax: bool,
        members: bool,
        sequence: bool,
    ) -> list[Tally] | None:
        """``n`` draws of each input, packed in order into passes of up to ``batch_size`` draws; ``None`` when a
        pass shared by several inputs skipped members (each input's evaluations are then unknown)."""
        streams = [self.stream(x, g) for x, g in zip(xs, generators)]
        classes, count = int(self.num_classes or 0), len(streams)
        counts = torch.zeros(count, classes, dtype=torch.long, device=self.device)
        prob_sums = torch.zeros(count, classes, dtype=torch.float64, device=self.device) if softmax else None
        member_counts = None
        if members and self._ensemble is not None:
            member_counts = torch.zeros(
                count, self._ensemble.num_members, classes, dtype=torch.long, device=self.device
            )
        ones = torch.ones(min(self.batch_size, n), dtype=torch.long, device=self.device)
        order: list[list[Tensor]] = [[] for _ in streams]  # each input's classes, on the device until the end
        evaluations, left, i = [0] * count, [n] * count, 0
        with torch.inference_mode(), evaluation_mode(self.classifier):
            while i < count:
                room, parts, owners = self.batch_size, [], []
                while i < count and room > 0:
                    take = min(left[i], room)
                    parts.append((streams[i], take))
                    owners.append(i)
                    left[i] -= take
                    room -= take
                    i += left[i] == 0
                drawn = self.draw(parts, probs=softmax, members=members)
                if len(parts) > 1 and not drawn.exact:
                    return None
                at, drawn_rows = 0, drawn.classes.shape[0]
                for (_, take), owner in zip(parts, owners):
                    rows = slice(at, at + take)
                    at += take
                    # scatter_add, not bincount: bincount on a GPU waits for the batch to learn its length
                    counts[owner].scatter_add_(0, drawn.classes[rows], ones[:take])
                    evaluations[owner] += drawn.evaluations * take // drawn_rows  # exact when shared (above)
                    if sequence:
                        order[owner].append(drawn.classes[rows])
                    if prob_sums is not None and drawn.probs is not None:
                        prob_sums[owner] += drawn.probs[rows].sum(dim=0, dtype=torch.float64)
                    if member_counts is not None and drawn.member_classes is not None:
                        picked = drawn.member_classes[:, rows]
                        member_counts[owner].scatter_add_(1, picked, torch.ones_like(picked))
        counts_cpu = counts.cpu()
        sums_cpu = None if prob_sums is None else prob_sums.cpu()
        members_cpu = None if member_counts is None else member_counts.cpu()
        return [
            Tally(
                n=n,
                counts=counts_cpu[k],
                evaluations=evaluations[k],
                prob_sums=None if sums_cpu is None else sums_cpu[k],
                member_counts=None if members_cpu is None else members_cpu[k],
                sequence=torch.cat(order[k]).cpu() if sequence else None,
            )
            for k in range(count)
        ]


def _device_of(classifier: Classifier) -> torch.device:
    if isinstance(classifier, nn.Module):
        for p in classifier.parameters():
            return p.device
    return torch.device("cpu")


@attrs.define
class _Drawn:
    """One tally of an input: the seconds it took, whether that was inside a request (so inside the first user's
    wall time) rather than ahead of it, and who used it, first user first."""

    seconds: float
    inside: bool
    users: list[object]


class SharedTallies:
    """A smoothed classifier that draws each distinct tally of an input once, for every certifier that asks.

    Certifiers of one run draw the noise of an input from generators seeded alike, so two certifiers with the
    same sampling settings ask for the same tallies in the same order. A tally is remembered under the
    generator's state before the draw, ``n`` and whether per-member counts were asked for (softmax sums are
    always kept, so the multinomial and softmax views share the draws); a repeated request returns the
    remembered tally and moves the generator on to the state the draw left it in, so the next draw is as fresh
    as it would have been. A request without a generator is never shared. :meth:`clear` forgets everything
    (call it between inputs). ``num_classes`` and ``noise`` are the wrapped classifier's.

    Small first draws (a selection of ``n0 = 100`` when a batch holds 1,000) waste most of a forward pass. The
    first request after :meth:`clear` is remembered; :meth:`inputs_per_pass` then says how many inputs' first
    draws fit in one batch, and :meth:`prefetch` draws them for upcoming inputs in one pass (the same noise, from
    the same generators). A prefetched tally is charged to the sampler's usage when it is first asked for, so
    every record reads as if it had been drawn alone.

    Time is split by use: whoever asks names itself in :attr:`asking`, and :meth:`time_shares` says, per asker,
    how much to add to (or take from) the wall time of its requests so that every tally costs each of its users an
    equal share (a prefetched tally's share of the pass that drew it included).
    """

    def __init__(self, smoothed: SmoothedClassifier) -> None:
        self.smoothed = smoothed
        self._seen: dict[tuple[bytes, int, bool, bool], tuple[Tally, Tensor]] = {}
        self._ahead: dict[tuple[bytes, int, bool, bool], tuple[Tally, Tensor, float]] = {}
        self._drawn: dict[tuple[bytes, int, bool, bool], _Drawn] = {}  # this input's tallies: cost and users
        #: Who is asking for tallies now (a label of the caller's choosing), for :meth:`time_shares`.
        self.asking: object = None
        self._first: tuple[int, bool, bool] | None = None
        self._fresh = True  # no request since clear()
        self._sampler = smoothed if isinstance(smoothed, MonteCarloSampler) else None
        self._batchable = self._sampler is not None  # only a MonteCarloSampler draws several inputs at once
        self.num_classes = smoothed.num_classes
        self.noise = smoothed.noise

    @property
    def usage(self) -> Usage | None:
        """What the wrapped sampler has spent (``None`` when it is not a :class:`MonteCarloSampler`)."""
        return self._sampler.usage if self._sampler is not None else None

    @property
    def sampler(self) -> MonteCarloSampler | None:
        """The wrapped sampler, when it is a :class:`MonteCarloSampler` (what decisions draw from directly)."""
        return self._sampler

    def clear(self) -> None:
        self._seen.clear()
        self._drawn.clear()
        self._fresh = True

    def time_shares(self) -> dict[object, float]:
        """Seconds to add to each asker's wall time since :meth:`clear`: an equal share of every tally it used,
        less what it spent drawing tallies that others used too."""
        shares: dict[object, float] = {}
        for drawn in self._drawn.values():
            if drawn.inside:  # the first user's wall time holds the draw
                shares[drawn.users[0]] = shares.get(drawn.users[0], 0.0) - drawn.seconds
            for user in drawn.users:
                shares[user] = shares.get(user, 0.0) + drawn.seconds / len(drawn.users)
        return shares

    def inputs_per_pass(self) -> int:
        """How many inputs' first draws fit in one batch (0 or 1: prefetching would not help)."""
        if not self._batchable or self._sampler is None or self._first is None or self._first[2]:
            return 0  # (a first draw that keeps each draw's class is drawn alone)
        return self._sampler.batch_size // self._first[0]

    def prefetch(self, xs: Sequence[Tensor], generators: Sequence[torch.Generator]) -> None:
        """Draw the first tally of each upcoming input (``generators`` in the state their input starts from)."""
        sampler, first = self._sampler, self._first
        if sampler is None or first is None or self.inputs_per_pass() < 2 or not xs:
            return
        n, members, _ = first
        keys = [(g.get_state().numpy().tobytes(), n, members, False) for g in generators]
        usage = sampler.usage
        before = usage.snapshot()
        start = time.perf_counter()
        tallies = sampler.tally_many(xs, n, generators=generators, softmax=True, members=members)
        each = (time.perf_counter() - start) / len(xs)
        usage.draws, usage.evaluations = before.draws, before.evaluations  # charged when asked for (tally)
        if tallies is None:  # the aggregator skips members: tally inputs one by one
            self._batchable = False
            return
        for key, tally, g in zip(keys, tallies, generators):
            self._ahead[key] = (tally, g.get_state(), each)

    def tally(
        self,
        x: Tensor,
        n: int,
        *,
        generator: torch.Generator | None = None,
        softmax: bool = False,
        members: bool = False,
        sequence: bool = False,
    ) -> Tally:
        if self._fresh:
            self._fresh = False
            if self._first is None:
                self._first = (int(n), bool(members), bool(sequence))
        extra: dict[str, bool] = {"sequence": True} if sequence else {}  # asked only of samplers that keep it
        if generator is None:
            return self.smoothed.tally(x, n, softmax=softmax, members=members, **extra)  # type: ignore[arg-type]
        key = (generator.get_state().numpy().tobytes(), int(n), bool(members), bool(sequence))
        if key in self._seen:
            tally, after = self._seen[key]
            generator.set_state(after)
            if key in self._drawn and self.asking not in self._drawn[key].users:
                self._drawn[key].users.append(self.asking)
            return tally
        if key in self._ahead:
            tally, after, seconds = self._ahead.pop(key)
            generator.set_state(after)
            usage = self.usage
            if usage is not None:  # charged now, as if drawn now
                usage.draws += tally.n
                usage.evaluations += tally.evaluations
            inside = False
        else:
            start = time.perf_counter()
            tally = self.smoothed.tally(x, n, generator=generator, softmax=True, members=members, **extra)
            seconds, inside = time.perf_counter() - start, True
            after = generator.get_state()
        self._seen[key] = (tally, after)
        self._drawn[key] = _Drawn(seconds, inside, [self.asking])
        return tally
