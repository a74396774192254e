"""Running ensemble members together (torch.func.vmap over stacked weights) vs one after another.

    python benchmarks/members.py [--device cpu|cuda] [--repeats 20]

Prints the time per batch of both and the ratio (loop / vmap; above 1 means vmap is faster).
"""

from __future__ import annotations

import argparse
import time

import torch

from ensemblecert import DataInfo, Engine, Members, build_component, build_member, load_registry


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    registry = load_registry()
    cases = [
        ("mlp digits", {"name": "mlp"}, (1, 8, 8), 2000, (3, 10)),
        ("lenet mnist", {"name": "lenet"}, (1, 28, 28), 500, (3, 10)),
        ("resnet20 cifar", {"name": "resnet20"}, (3, 32, 32), 200 if device.type == "cpu" else 1000, (3, 10)),
    ]
    print(f"device: {device}  torch {torch.__version__}  threads {torch.get_num_threads()}")
    print(f"{'model':16} {'members':>7} {'batch':>6} {'loop ms':>9} {'vmap ms':>9} {'loop/vmap':>9}")
    for label, spec, shape, batch, sizes in cases:
        model = build_component("model", spec, registry)
        info = DataInfo(shape, 10, (0.5,) * shape[0], (0.25,) * shape[0])
        x = torch.rand(batch, *shape, device=device)
        for n in sizes:
            members = [build_member(model, info, s).to(device).eval() for s in range(n)]
            loop = Members(members, Engine(layout="loop", compile=False))
            vmap = Members(members, Engine(layout="vmap", compile=False))
            with torch.inference_mode():
                t_loop = timed(lambda: loop.logits(x), args.repeats, device)
                t_vmap = timed(lambda: vmap.logits(x), args.repeats, device)
            print(f"{label:16} {n:>7} {batch:>6} {t_loop * 1e3:>9.2f} {t_vmap * 1e3:>9.2f} {t_loop / t_vmap:>9.2f}")


if __name__ == "__main__":
    main()
