"""Certifying inputs one by one, with reproducible noise: the loop shared by the API and the pipeline."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from .components import Certificate, Certifier, NoiseSampler
from .sampling import Classifier, MonteCarloSampler, SmoothedClassifier
from .seeds import generator


def input_generator(seed: int, index: int, slot: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for the noise of input ``index`` and mechanism ``slot``.

    Depends only on ``(seed, index, slot)``, so a resumed or sharded run draws exactly the noise an
    uninterrupted run would have drawn for the same input.
    """
    return generator(seed, index, slot, device=device)


def certify(
    mechanism: Certifier,
    classifier: Classifier | SmoothedClassifier,
    inputs: Iterable[Tensor] | Tensor,
    noise: NoiseSampler | None = None,
    *,
    batch_size: int = 1000,
    num_classes: int | None = None,
    seed: int = 0,
    indices: Sequence[int] | None = None,
    device: torch.device | str | None = None,
) -> list[Certificate]:
    """Certify each input with ``mechanism``, no pipeline needed.

    ``classifier`` is any callable from a batch of inputs to logits (an :class:`~ensemblecert.Ensemble`
    included), smoothed with ``noise``; or an already smoothed classifier (then ``noise`` is unused).
    ``inputs`` is a tensor whose first dimension indexes inputs, or an iterable of single inputs.
    The noise of an input comes from ``input_generator(seed, index)`` where ``index`` is its entry in
    ``indices`` (default ``0, 1, 2, ...``): certifying a shard with its indices in the full list gives
    exactly the full run's certificates for those inputs, whatever ``batch_size`` is. A module is
    certified in evaluation mode and left as it was.
    """
    if isinstance(classifier, SmoothedClassifier):
        smoothed = classifier
    else:
        if noise is None:
            raise ValueError("a noise sampler is needed to smooth a plain classifier")
        smoothed = MonteCarloSampler(
            classifier, noise, num_classes=num_classes, batch_size=batch_size, device=device
        )
    problem = mechanism.check_noise(smoothed.noise)
    if problem:
        raise ValueError(problem)
    gen_device = getattr(smoothed, "device", "cpu")
    inputs = list(inputs)
    if indices is None:
        indices = range(len(inputs))
    elif len(indices) != len(inputs):
        raise ValueError(f"got {len(indices)} indices for {len(inputs)} inputs; give one index per input")
    return [
        mechanism.certify(smoothed, x, input_generator(seed, int(i), device=gen_device))
        for i, x in zip(indices, inputs)
    ]
