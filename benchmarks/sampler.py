"""Certification sampling: the batched sampler vs drawing one noisy copy per forward pass.

    python benchmarks/sampler.py [--n 20000]

The contender is ``MonteCarloSampler`` with a batch of noisy copies per forward pass (counts kept on
the device); the baseline evaluates one noisy copy at a time, as a per-sample Python loop would.
Both count the same n draws of a 3-member digits-sized MLP ensemble. Prints draws per second and
the speed-up, and the peak extra memory of the contender for two values of n (it must not grow with n).

Last, the price of batch-size-independent noise: noise drawn in blocks of ``NOISE_BLOCK`` samples
(what the sampler does) against one noise draw per batch (what it did before; its certificates then
changed with the batch size), same batches, same model, ratio printed.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import torch

from ensemblecert import (
    DataInfo,
    Ensemble,
    MonteCarloSampler,
    build_component,
    build_member,
    input_generator,
    load_registry,
    sampling,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--baseline-n", type=int, default=2_000)
    args = parser.parse_args()
    registry = load_registry()
    info = DataInfo((1, 8, 8), 10, (0.3,), (0.3,))
    model = build_component("model", {"name": "mlp"}, registry)
    members = [build_member(model, info, s).eval() for s in range(3)]
    ensemble = Ensemble(members, build_component("aggregator", "we", registry)).eval()
    noise = build_component("noise", {"name": "gaussian", "sigma": 0.25}, registry)
    x = torch.rand(1, 8, 8)

    def rate(batch_size: int, n: int) -> float:
        sampler = MonteCarloSampler(ensemble, noise, num_classes=10, batch_size=batch_size)
        sampler.tally(x, min(n, 100), generator=input_generator(0, 0))
        start = time.perf_counter()
        sampler.tally(x, n, generator=input_generator(0, 1))
        return n / (time.perf_counter() - start)

    base = rate(1, args.baseline_n)
    print(f"{'batch':>6} {'draws/s':>12} {'vs batch 1':>10}")
    print(f"{1:>6} {base:>12,.0f} {1.0:>10.1f}")
    for batch in (100, 1000, 4000):
        r = rate(batch, args.n)
        print(f"{batch:>6} {r:>12,.0f} {r / base:>10.1f}")

    # Peak Python-heap growth is a proxy for host memory: it must not grow with n.
    for n in (args.n, 10 * args.n):
        sampler = MonteCarloSampler(ensemble, noise, num_classes=10, batch_size=1000)
        tracemalloc.start()
        sampler.tally(x, n, generator=input_generator(0, 2))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"n = {n:>8,}: peak traced host allocations {peak / 1024:.1f} KiB")

    print(f"\nnoise in blocks of {sampling.NOISE_BLOCK} vs one draw per batch (median of 5)")
    print(f"{'batch':>6} {'blocks/s':>12} {'per-batch/s':>12} {'ratio':>6}")
    block = sampling.NOISE_BLOCK
    for batch in (100, 1000, 4000):
        blocks, per_batch = [], []
        for _ in range(5):
            sampling.NOISE_BLOCK = block
            blocks.append(rate(batch, args.n))
            sampling.NOISE_BLOCK = batch  # one block per batch: the old behaviour
            per_batch.append(rate(batch, args.n))
        sampling.NOISE_BLOCK = block
        b, p = sorted(blocks)[2], sorted(per_batch)[2]
        print(f"{batch:>6} {b:>12,.0f} {p:>12,.0f} {b / p:>6.2f}")


if __name__ == "__main__":
    main()
