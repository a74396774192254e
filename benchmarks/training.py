"""The cost of a training step under each objective, side by side, as ratios to the Gaussian step.

    python benchmarks/training.py [--steps 5] [--members 3 5] [--batch 64] [--cifar-batch 16]

For Gaussian augmentation, DRT + Gaussian, SmoothAdv and DRT + SmoothAdv (and GAL and ADP + Gaussian), on digits
MLPs (8x8 inputs) and on CIFAR-shaped inputs through ResNet-20 members, times one full training step (noise,
forward, the objective's terms, backward, SGD step), the median of ``--steps`` after one warm-up step, and prints
seconds per step and the ratio to the Gaussian step with the same members. Every objective sees 2 noisy copies of
each input (m = 2, Yang22 App. F). SmoothAdv uses 10 PGD steps (Yang22 App. F); Yang22 App. F.2 reports 3.82 s for a
DRT + Gaussian step and 6.39 s for a SmoothAdv step on CIFAR-10 (GPU), so DRT + Gaussian should cost less.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ensemblecert import DataInfo, build_component, build_member, load_pipeline, load_registry
from ensemblecert.training.loop import batch_terms
from ensemblecert.training.objectives import TrainBatch, total

OBJECTIVES = {
    "gaussian": {},
    "drt + gaussian": {"regularizers": [{"name": "drt", "rho1": 0.5, "rho2": 2.0}]},
    "smoothadv": {"loss": {"name": "smoothadv"}},
    "drt + smoothadv": {"loss": {"name": "smoothadv"}, "regularizers": [{"name": "drt", "rho1": 0.5, "rho2": 2.0}]},
    "gal + gaussian": {"regularizers": [{"name": "gal"}]},
    "adp + gaussian": {"regularizers": [{"name": "adp"}]},
}


def step_time(registry, model_spec, info, members: int, train: dict, batch: int, steps: int) -> float:
    config = load_pipeline({"training": {"copies": 2, **train}})[0].training
    nets = [build_member(build_component("model", model_spec, registry), info, s).train() for s in range(members)]
    params = [p for m in nets for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    noise = build_component("noise", {"name": "gaussian", "sigma": 0.25}, registry)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *info.input_shape, generator=gen)
    y = torch.randint(0, info.num_classes, (batch,), generator=gen)
    times = []
    for k in range(steps + 1):
        start = time.perf_counter()
        b = TrainBatch(x, y, nets, noise, gen, 0, copies=2, shared=bool(config.regularizers))
        loss = total(batch_terms(config, b))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--members", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--cifar-batch", type=int, default=16)
    parser.add_argument("--skip-cifar", action="store_true")
    args = parser.parse_args()
    registry = load_registry()
    settings = [("digits MLP", {"name": "mlp"}, DataInfo((1, 8, 8), 10, (0.3,), (0.3,)), args.batch)]
    if not args.skip_cifar:
        settings.append(
            (
                "CIFAR ResNet-20",
                {"name": "resnet20"},
                DataInfo((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3),
                args.cifar_batch,
            )
        )
    print(f"threads {torch.get_num_threads()}; m = 2 noisy copies per input; median of {args.steps} steps")
    print(f"{'setting':<18}{'N':>3}{'batch':>7}  {'objective':<17}{'s / step':>10}{'vs gaussian':>13}")
    for label, spec, info, batch in settings:
        for n in args.members:
            base = None
            for name, train in OBJECTIVES.items():
                t = step_time(registry, spec, info, n, train, batch, args.steps)
                base = base or t
                print(f"{label:<18}{n:>3}{batch:>7}  {name:<17}{t:>10.4f}{t / base:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
