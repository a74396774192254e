"""The cost of the mechanisms of "It's Simplex!" (Cullen24) against the cost of the draws they certify from.

    python benchmarks/mechanisms.py [--pairs 10000] [--n 10000]

Times every mechanism, ``best`` over the paper's multinomial set (cohen, li, dp) and over all five, each on
``--pairs`` (E0, E1) pairs spread over the triangle E1 < E0, E0 + E1 <= 1 (a low-discrepancy sequence), in one
vectorized call, and prints the time per input. The baseline is what those radii certify: one input's ``--n``
noisy draws through a 3-member digits-sized MLP ensemble on this machine; the last column is the share of
that drawing time each mechanism adds. Also checks two of the paper's claims on the same pairs: dp is never
below lecuyer, and no mechanism exceeds cohen_two_sided.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import qmc

from ensemblecert import (
    DataInfo,
    Ensemble,
    MonteCarloSampler,
    build_component,
    build_member,
    input_generator,
    load_registry,
)
from ensemblecert.plugins.simplex.mechanisms import MECHANISMS


def pairs(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points of the triangle E1 < E0, E0 + E1 <= 1 (Halton points scaled into it)."""
    u = qmc.Halton(2, seed=seed).random(count)
    e0, e1 = u[:, 0], u[:, 1] * np.minimum(u[:, 0], 1 - u[:, 0])
    return e0, e1


def per_input(fn, e0: np.ndarray, e1: np.ndarray, repeat: int = 3) -> float:
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn(e0, e1, 1.0)
        best = min(best, time.perf_counter() - start)
    return best / e0.size


def sampling_time(n: int) -> float:
    registry = load_registry()
    info = DataInfo((1, 8, 8), 10, (0.3,), (0.3,))
    model = build_component("model", {"name": "mlp"}, registry)
    members = [build_member(model, info, s).eval() for s in range(3)]
    ensemble = Ensemble(members, build_component("aggregator", "we", registry)).eval()
    sampler = MonteCarloSampler(
        ensemble,
        build_component("noise", {"name": "gaussian", "sigma": 0.25}, registry),
        num_classes=10,
        batch_size=1000,
    )
    x = torch.rand(1, 8, 8)
    sampler.tally(x, 1000, generator=input_generator(0, 0))
    start = time.perf_counter()
    sampler.tally(x, n, generator=input_generator(0, 1))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    e0, e1 = pairs(args.pairs)
    draws = sampling_time(args.n)
    radii = {name: fn(e0, e1, 1.0) for name, fn in MECHANISMS.items()}
    sets = {"best(cohen, li, dp)": ["cohen", "li", "dp"], "best(all five)": list(MECHANISMS)}

    def best_of(names):
        return lambda a, b, s: np.max([MECHANISMS[n](a, b, s) for n in names], axis=0)

    print(
        f"{len(e0):,} (E0, E1) pairs; baseline: {args.n:,} draws of one input through a 3-member MLP ensemble "
        f"take {draws * 1e3:.1f} ms"
    )
    print(f"{'mechanism':<22}{'per input':>12}{'share of drawing':>18}")
    for name, fn in [*MECHANISMS.items(), *((k, best_of(v)) for k, v in sets.items())]:
        t = per_input(fn, e0, e1)
        print(f"{name:<22}{t * 1e6:>9.1f} µs{t / draws:>18.4%}")
    ceiling = radii["cohen_two_sided"]
    over = {n: float(np.max(r - ceiling)) for n, r in radii.items()}
    gap = radii["dp"] - radii["lecuyer"]
    ratio = radii["dp"][radii["lecuyer"] > 0] / radii["lecuyer"][radii["lecuyer"] > 0]
    print(
        f"dp - lecuyer: min {gap.min():.2e} (never negative: {bool(gap.min() >= 0)}); "
        f"dp / lecuyer up to {ratio.max():.2f}x where lecuyer certifies"
    )
    print("largest excess over cohen_two_sided (sigma = 1): " + ", ".join(f"{n} {v:.1e}" for n, v in over.items()))


if __name__ == "__main__":
    main()
