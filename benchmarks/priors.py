"""Per-input priors for the label test's one-sided mixtures: does a prior fitted on a first look at each input's
draws decide with fewer draws than Jeffreys' prior?

    python benchmarks/priors.py [--inputs 100] [--draws 20000]

Cullen26 (Halt Fast!) gives each input's e-process a prior from a cheap first look. The construction measured here
keeps the guarantee: the first ``n0`` draws only choose the prior, ``Beta(1/2 + w S0, 1/2 + w (n0 - S0))``
truncated to the alternative (``S0`` hits; ``w = 1`` is the posterior after them, smaller ``w`` discounts it), and
the one-sided test runs on the later draws alone, which are independent of the first look, so it rejects a true
null with probability at most alpha. The total is ``n0`` plus the draws the test needs.

The same ensemble, inputs and settings as benchmarks/adaptive.py (sigma = 0.25, alpha = 0.001, beta = 0.0001, the
true label, soft voting); each input's draws are recorded once (``--draws`` of its own noise stream) and every
prior is replayed on the same draws, so the comparison carries no sampling noise between contenders. Inputs
undecided after ``--draws`` count that many.
"""

from __future__ import annotations

import argparse

import numpy as np
from adaptive import SIGMA, train
from scipy import special

import ensemblecert as ec
from ensemblecert.plugins.confidence_sequences import log_one_sided

ALPHA, BETA = 0.001, 0.0001
#: (first look n0, weight w): n0 = 0 is the label test as it is (Jeffreys' prior on every draw).
PRIORS = [(0, 0.0), (32, 1.0), (64, 1.0), (128, 1.0), (64, 0.5), (128, 0.25), (256, 0.25)]


def decision(hits: np.ndarray, q: float, n0: int, w: float) -> tuple[int, bool]:
    """(draws spent, certified) for one input's recorded hits, with the prior of a first look of ``n0`` draws."""
    first = float(hits[:n0].sum())
    prior = (0.5 + w * first, 0.5 + w * (n0 - first))
    rest = hits[n0:]
    s, t = np.cumsum(rest), np.arange(1, len(rest) + 1)
    up = (s > q * t) & (log_one_sided(q, s, t, True, prior) >= np.log(1 / ALPHA))
    down = (s < q * t) & (log_one_sided(q, s, t, False, prior) >= np.log(1 / BETA))
    stop = np.flatnonzero(up | down)
    return (n0 + int(stop[0]) + 1, bool(up[stop[0]])) if stop.size else (len(hits), False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=100)
    parser.add_argument("--draws", type=int, default=20_000)
    parser.add_argument("--output", default="runs/bench-adaptive")
    args = parser.parse_args()

    members = list(train(args.output).ensemble.members)
    registry = ec.load_registry()
    ensemble = ec.Ensemble(members, ec.build_component("aggregator", {"name": "soft"}, registry)).eval()
    noise = ec.build_component("noise", {"name": "gaussian", "sigma": SIGMA}, registry)
    test = ec.build_component("dataset", "digits", registry).load().test
    indices = list(range(0, len(test), 3))[: args.inputs]
    sampler = ec.MonteCarloSampler(ensemble, noise, num_classes=10, batch_size=5000)
    recorded = []
    for i in indices:
        x, y = test[i]
        tally = sampler.tally(x, args.draws, generator=ec.input_generator(0, i), sequence=True)
        recorded.append((tally.sequence == int(y)).numpy())
    print(f"{len(indices)} digits test inputs, {args.draws:,} recorded draws each, sigma = {SIGMA}")
    print("\n| r | first look n0 | weight w | draws (all inputs) | against Jeffreys | certified | costliest 5 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for radius in (0.25, 0.5):
        q = float(special.ndtr(radius / SIGMA))
        base = None
        for n0, w in PRIORS:
            outcomes = [decision(h, q, n0, w) for h in recorded]
            total = sum(d for d, _ in outcomes)
            base = base or total
            costly = ", ".join(f"{d:,}" for d in sorted((d for d, _ in outcomes), reverse=True)[:5])
            name = "none (Jeffreys)" if n0 == 0 else str(n0)
            print(
                f"| {radius:g} | {name} | {w:g} | {total:,} | {total / base:.3f} | "
                f"{sum(c for _, c in outcomes)} | {costly} |"
            )


if __name__ == "__main__":
    main()
