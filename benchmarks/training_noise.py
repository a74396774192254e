"""What keying the training noise costs, beside a training step: why the noise comes from one stream per epoch.

    python benchmarks/training_noise.py [--steps 50] [--members 3] [--batch 64] [--processes 2]

Data-parallel training keeps the members independent of the number of processes by having every rank draw the
noise of the whole mini-batch from the epoch's stream and keep its rows (``ensemblecert.TrainBatch``). The
alternative, a generator per input seeded from ``(seed, epoch, index)``, needs no whole-batch draw but costs a
generator and a draw per input. This prints, for digits MLP members and Gaussian augmentation, the time per
mini-batch of: one draw per member for the batch (one process), the whole-batch draw a rank of ``--processes``
makes for its shard, a generator per input, and the whole training step with the noise it uses; medians of
``--steps`` in one process, and each cost as a share of the step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from ensemblecert import DataInfo, build_component, build_member, load_pipeline, load_registry
from ensemblecert.distributed import World
from ensemblecert.seeds import generator
from ensemblecert.training.loop import batch_terms
from ensemblecert.training.objectives import TrainBatch, total


def median_ms(run: Callable[[], object], steps: int) -> float:
    run()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    registry = load_registry()
    info = DataInfo((1, 8, 8), 10, (0.3,), (0.3,))
    nets = [build_member(build_component("model", "mlp", registry), info, s).train() for s in range(args.members)]
    opt = torch.optim.SGD([p for m in nets for p in m.parameters()], lr=0.01, momentum=0.9)
    noise = build_component("noise", {"name": "gaussian", "sigma": 0.25}, registry)
    config = load_pipeline({})[0].training
    stream = generator(0, "train-noise", 0)
    x = torch.rand(args.batch, *info.input_shape, generator=stream)
    y = torch.randint(0, info.num_classes, (args.batch,), generator=stream)
    rank = World(rank=0, size=args.processes)
    shard_x, shard_y = x[:: args.processes], y[:: args.processes]

    def one_stream() -> object:
        return TrainBatch(x, y, nets, noise, stream, 0).noise_draws()

    def whole_batch_on_a_rank() -> object:
        return TrainBatch(shard_x, shard_y, nets, noise, stream, 0, world=rank, whole=args.batch).noise_draws()

    def generator_per_input() -> object:
        return [
            torch.cat(
                [noise.sample((1, *x.shape[1:]), generator=generator(0, "train-noise", 0, i, m)) for i in range(len(x))]
            )
            for m in range(args.members)
        ]

    def step() -> None:
        loss = total(batch_terms(config, TrainBatch(x, y, nets, noise, stream, 0)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    print(
        f"threads {torch.get_num_threads()}; digits MLP, {args.members} members, Gaussian augmentation, "
        f"mini-batch {args.batch}; median of {args.steps}"
    )
    full = median_ms(step, args.steps)
    print(f"{'':<44}{'ms / batch':>11}{'share of a step':>17}")
    for label, run in [
        ("one stream, one process", one_stream),
        (f"whole batch on a rank of {args.processes}", whole_batch_on_a_rank),
        ("a generator per input", generator_per_input),
    ]:
        ms = median_ms(run, args.steps)
        print(f"{label:<44}{ms:>11.3f}{ms / full:>17.2f}")
    print(f"{'training step (noise, forward, backward, SGD)':<44}{full:>11.3f}{1.0:>17.2f}")


if __name__ == "__main__":
    main()
