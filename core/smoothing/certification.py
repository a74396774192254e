"""Certifying inputs one by one, with reproducible noise: the one loop behind the API, the pipeline and the
soundness harness.

:func:`certification_loop` certifies each input with every planned (strategy, certifier) pair, from noise that depends
only on the seed and the input's index, and stamps each certificate with the smoothed classifier it is about;
:func:`certify_inputs` is its short form for one certifier, no pipeline needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import cast

import attrs
import torch
from torch import Tensor

from ..components import Certificate, Certifier, Decision, NoiseSampler, SmoothingStrategy
from ..ensemble.assembly import Ensemble
from ..seeds import generator
from .decisions import decide_many
from .results import Outcome
from .sampling import Classifier, MonteCarloSampler, SharedTallies, SmoothedClassifier


def input_generator(seed: int, index: int, slot: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for the noise of input ``index`` and certifier ``slot``.

    Depends only on ``(seed, index, slot)``, so a resumed or sharded run draws exactly the noise an
    uninterrupted run would have drawn for the same input.
    """
    return generator(seed, index, slot, device=device)


class DirectSmoothing(SmoothingStrategy):
    """Smooth the classifier as it is (for an ensemble: its aggregated prediction, as EBS does) and certify with
    the certifier alone; what :func:`certify_inputs` uses when no strategy is given."""

    def smooth(self, ensemble: Ensemble, noise: NoiseSampler, *, batch_size: int) -> SmoothedClassifier:
        return MonteCarloSampler(ensemble, noise, batch_size=batch_size)


@attrs.frozen
class Planned:
    """One column of results: ``certifier`` certified through ``strategy`` on ``smoothed`` (shared by every entry
    of the same strategy), under ``label``."""

    label: str
    strategy: SmoothingStrategy
    certifier: Certifier
    smoothed: SharedTallies


def certification_loop(
    plan: Sequence[Planned],
    indices: Sequence[int],
    fetch: Callable[[int], Tensor],
    *,
    seed: int,
    device: torch.device | str = "cpu",
    label_of: Callable[[int], int] | None = None,
) -> Iterator[tuple[int, dict[str, Outcome]]]:
    """Certify the inputs ``fetch(i)`` for ``i`` in ``indices``, yielding ``(i, outcomes by label)`` as each is done.
    ``label_of(i)`` is input ``i``'s true class, for certifiers that certify a given label
    (:attr:`~ensemblecert.Certifier.needs_label`).

    Every entry of the plan starts from the input's one noise stream (``input_generator(seed, i)``), so entries
    with equal sampling settings share their draws (:class:`SharedTallies`), and small first draws of upcoming
    inputs are drawn together in one forward pass. Each outcome records its certificate (stamped with the smoothed
    classifier the strategy and certifier certify), its seconds (its own work plus an equal share of every tally it
    used with others: :meth:`SharedTallies.time_shares`) and its member evaluations.
    """
    source = _Source(fetch, seed, device, label_of, {e.label: e.strategy.classifier(e.certifier) for e in plan})
    stepwise = [entry for entry in plan if entry.certifier.stepwise]
    pools = {entry.smoothed for entry in stepwise}
    if len(pools) == 1 and next(iter(pools)).sampler is not None:  # fill each batch with many inputs' draws
        yield from _pooled(plan, stepwise, indices, source)
        return
    yield from _one_by_one(plan, indices, source)


@attrs.frozen
class _Source:
    """Where a loop's inputs, their noise and their labels come from, and the classifier each entry's
    certificates are about (worked out once per loop)."""

    fetch: Callable[[int], Tensor]
    seed: int
    device: torch.device | str
    label_of: Callable[[int], int] | None
    classifiers: dict[str, str]

    def generator(self, index: int) -> torch.Generator:
        return input_generator(self.seed, index, 0, self.device)

    def label(self, index: int) -> int | None:
        return self.label_of(index) if self.label_of is not None else None


def _pooled(
    plan: Sequence[Planned], stepwise: Sequence[Planned], indices: Sequence[int], source: _Source
) -> Iterator[tuple[int, dict[str, Outcome]]]:
    """The stepwise entries of every input decided in shared batches (:func:`decide_many`); each input's row once
    they are all decided, with its other entries certified then, one by one. Rows come in the order inputs are
    decided, each exactly what it would be alone."""
    shared = stepwise[0].smoothed
    sampler = shared.sampler
    assert sampler is not None  # checked by the caller
    sigma = float(sampler.noise.sigma)
    others = [entry for entry in plan if not entry.certifier.stepwise]
    inputs: dict[int, Tensor] = {}
    found: dict[int, dict[str, Outcome]] = {}

    def pending() -> Iterator[tuple[object, Tensor, torch.Generator | None, Decision]]:
        for index in indices:
            inputs[index] = torch.as_tensor(source.fetch(index))
            for entry in stepwise:
                decision = entry.certifier.decision(sigma, source.label(index))
                yield (index, entry.label), inputs[index], source.generator(index), decision

    for done in decide_many(sampler, pending()):
        index, name = cast(tuple[int, str], done.key)
        cert = attrs.evolve(done.certificate, classifier=source.classifiers[name])
        found.setdefault(index, {})[name] = Outcome(cert, done.seconds, round(done.evaluations), None)
        if len(found[index]) < len(stepwise):
            continue
        row = found.pop(index)
        x = inputs.pop(index)
        shared.clear()
        for entry in others:
            row[entry.label] = _certify(entry, x, index, source)
        yield index, {entry.label: row[entry.label] for entry in plan}


def _certify(entry: Planned, x: Tensor, index: int, source: _Source) -> Outcome:
    """One entry's outcome for one input: its certificate, seconds and member evaluations."""
    usage = entry.smoothed.usage
    before = usage.snapshot() if usage is not None else None
    entry.smoothed.asking = entry.label
    given = {"label": source.label(index)} if entry.certifier.needs_label else {}
    start = time.perf_counter()
    cert = entry.strategy.certificate(entry.certifier, entry.smoothed, x, source.generator(index), **given)
    seconds = time.perf_counter() - start
    cert = attrs.evolve(cert, classifier=source.classifiers[entry.label])
    spent = usage - before if usage is not None and before is not None else None
    return Outcome(cert, seconds, spent.evaluations if spent else None, spent.settled if spent else None)


def _one_by_one(
    plan: Sequence[Planned], indices: Sequence[int], source: _Source
) -> Iterator[tuple[int, dict[str, Outcome]]]:
    """Every input in turn, every entry in turn; small first draws of upcoming inputs are drawn together."""
    samplers = list(dict.fromkeys(entry.smoothed for entry in plan))
    ahead = {id(s): 0 for s in samplers}  # per sampler: the position in indices up to which first draws are drawn
    fetched: dict[int, Tensor] = {}  # inputs read ahead for a prefetch, each read once

    def get(i: int) -> Tensor:
        if i not in fetched:
            fetched[i] = torch.as_tensor(source.fetch(i))
        return fetched[i]

    for pos, index in enumerate(indices):
        x = get(index)
        for shared in samplers:
            shared.clear()
            k = shared.inputs_per_pass()
            if k > 1 and pos >= ahead[id(shared)]:
                upcoming = list(indices[pos : pos + k])
                shared.prefetch([get(j) for j in upcoming], [source.generator(j) for j in upcoming])
                ahead[id(shared)] = pos + k
        del fetched[index]
        outcomes = {entry.label: _certify(entry, x, index, source) for entry in plan}
        for shared in samplers:  # shared draws cost each of their users an equal share
            for label, extra in shared.time_shares().items():
                if label in outcomes:
                    outcome = outcomes[label]
                    outcomes[label] = attrs.evolve(outcome, seconds=max(0.0, outcome.seconds + extra))
        yield index, outcomes


def certify_inputs(
    certifier: Certifier,
    classifier: Classifier | SmoothedClassifier,
    inputs: Iterable[Tensor] | Tensor,
    noise: NoiseSampler | None = None,
    *,
    strategy: SmoothingStrategy | None = None,
    batch_size: int = 1000,
    num_classes: int | None = None,
    seed: int = 0,
    indices: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    labels: Sequence[int] | None = None,
) -> list[Certificate]:
    """Certify each input with ``certifier``, no pipeline needed.

    ``classifier`` is any callable from a batch of inputs to logits (an :class:`~ensemblecert.Ensemble`
    included), smoothed with ``noise`` by ``strategy`` (for example EAS; default: the classifier as it is); or
    an already smoothed classifier (then ``noise`` is unused). ``inputs`` is a tensor whose first dimension
    indexes inputs, or an iterable of single inputs. The noise of an input comes from
    ``input_generator(seed, index)`` where ``index`` is its entry in ``indices`` (default ``0, 1, 2, ...``):
    certifying a shard with its indices in the full list gives exactly the full run's certificates for those
    inputs, whatever ``batch_size`` is. A module is certified in evaluation mode and left as it was. ``labels``
    (one per input) are the true classes a certifier that certifies a given label needs.
    """
    strategy = strategy if strategy is not None else DirectSmoothing()
    if isinstance(classifier, SmoothedClassifier):
        smoothed = classifier
    else:
        if noise is None:
            raise ValueError("a noise sampler is needed to smooth a plain classifier")
        if isinstance(classifier, Ensemble) and not isinstance(strategy, DirectSmoothing):
            smoothed = strategy.smooth(classifier, noise, batch_size=batch_size)
        else:
            smoothed = MonteCarloSampler(
                classifier, noise, num_classes=num_classes, batch_size=batch_size, device=device
            )
    for problem in (certifier.check_noise(smoothed.noise), strategy.check_certifier(certifier)):
        if problem:
            raise ValueError(problem)
    inputs = list(inputs)
    if indices is None:
        indices = range(len(inputs))
    elif len(indices) != len(inputs):
        raise ValueError(f"got {len(indices)} indices for {len(inputs)} inputs; give one index per input")
    position = {int(i): k for k, i in enumerate(indices)}
    if len(position) != len(inputs):
        raise ValueError("indices must be distinct: each input's noise comes from its index")
    plan = [Planned("certificate", strategy, certifier, SharedTallies(smoothed))]
    gen_device = smoothed.device if isinstance(smoothed, MonteCarloSampler) else (device or "cpu")
    if certifier.needs_label and (labels is None or len(labels) != len(inputs)):
        raise ValueError(f"{type(certifier).__name__} certifies a given label: pass labels=, one per input")
    label_of = (lambda i: int(labels[position[i]])) if labels is not None else None
    loop = certification_loop(
        plan, [int(i) for i in indices], lambda i: inputs[position[i]], seed=seed, device=gen_device, label_of=label_of
    )
    found = {index: outcomes["certificate"].certificate for index, outcomes in loop}  # in the order decided
    return [found[int(i)] for i in indices]
