"""Certifying inputs one by one, with reproducible noise: the one loop behind the API, the pipeline and the
soundness harness.

:func:`certification_loop` certifies each input with every planned (strategy, certifier) pair, from noise that depends
only on the seed and the input's index, and stamps each certificate with the smoothed classifier it is about;
:func:`certify_inputs` is its short form for one certifier, no pipeline needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import attrs
import torch
from torch import Tensor

from ..components import Certificate, Certifier, NoiseSampler, SmoothingStrategy
from ..ensemble.assembly import Ensemble
from ..seeds import generator
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
) -> Iterator[tuple[int, dict[str, Outcome]]]:
    """Certify the inputs ``fetch(i)`` for ``i`` in ``indices``, yielding ``(i, outcomes by label)`` as each is done.

    Every entry of the plan starts from the input's one noise stream (``input_generator(seed, i)``), so entries
    with equal sampling settings share their draws (:class:`SharedTallies`), and small first draws of upcoming
    inputs are drawn together in one forward pass. Each outcome records its certificate (stamped with the smoothed
    classifier the strategy and certifier certify), its seconds (its own work plus an equal share of every tally it
    used with others: :meth:`SharedTallies.time_shares`) and its member evaluations.
    """
    samplers = list(dict.fromkeys(entry.smoothed for entry in plan))
    ahead = {id(s): 0 for s in samplers}  # per sampler: the position in indices up to which first draws are drawn
    classifiers = [entry.strategy.classifier(entry.certifier) for entry in plan]
    fetched: dict[int, Tensor] = {}  # inputs read ahead for a prefetch, each read once

    def get(i: int) -> Tensor:
        if i not in fetched:
            fetched[i] = torch.as_tensor(fetch(i))
        return fetched[i]

    for pos, index in enumerate(indices):
        x = get(index)
        for shared in samplers:
            shared.clear()
            k = shared.inputs_per_pass()
            if k > 1 and pos >= ahead[id(shared)]:
                upcoming = list(indices[pos : pos + k])
                shared.prefetch([get(j) for j in upcoming], [input_generator(seed, j, 0, device) for j in upcoming])
                ahead[id(shared)] = pos + k
        del fetched[index]
        outcomes = {}
        for entry, classifier in zip(plan, classifiers):
            usage = entry.smoothed.usage
            before = usage.snapshot() if usage is not None else None
            entry.smoothed.asking = entry.label
            start = time.perf_counter()
            cert = entry.strategy.certificate(
                entry.certifier, entry.smoothed, x, input_generator(seed, index, 0, device)
            )
            seconds = time.perf_counter() - start
            cert = attrs.evolve(cert, classifier=classifier)
            spent = usage - before if usage is not None and before is not None else None
            outcomes[entry.label] = Outcome(
                cert, seconds, spent.evaluations if spent else None, spent.settled if spent else None
            )
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
) -> list[Certificate]:
    """Certify each input with ``certifier``, no pipeline needed.

    ``classifier`` is any callable from a batch of inputs to logits (an :class:`~ensemblecert.Ensemble`
    included), smoothed with ``noise`` by ``strategy`` (for example EAS; default: the classifier as it is); or
    an already smoothed classifier (then ``noise`` is unused). ``inputs`` is a tensor whose first dimension
    indexes inputs, or an iterable of single inputs. The noise of an input comes from
    ``input_generator(seed, index)`` where ``index`` is its entry in ``indices`` (default ``0, 1, 2, ...``):
    certifying a shard with its indices in the full list gives exactly the full run's certificates for those
    inputs, whatever ``batch_size`` is. A module is certified in evaluation mode and left as it was.
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
    loop = certification_loop(
        plan, [int(i) for i in indices], lambda i: inputs[position[i]], seed=seed, device=gen_device
    )
    return [outcomes["certificate"].certificate for _, outcomes in loop]
