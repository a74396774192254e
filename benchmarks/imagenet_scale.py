"""An ImageNet-scale ensemble: three ResNet-50s, side by side through the reference loop, the float32 engine and the
checked bf16 path, and what their speeds project for Horvath22's ImageNet experiment.

    python benchmarks/imagenet_scale.py [--device cuda] [--image 224] [--n 2000] [--batch 200] [--repeats 2]
    python benchmarks/imagenet_scale.py            # on a CPU: a smoke test at 64x64 pixels, n = 32

Random weights and inputs are enough for throughput. The checked path's speed depends on how many samples it
evaluates again, which depends on how confident the members are: it runs on the random members (nearly every
sample close: its worst case) and on confident ones (the same networks with one class's last bias raised, nothing
close: its best case); trained members lie between, and their share is measured by a certification run. From the
noisy samples per second of each, the time to certify 500 images with CERTIFY (n0 = 100, n = 100,000) and with
CertifyAdp, assuming CertifyAdp needs 25 times fewer samples (the reduction measured at r = 0.25 on digits in
docs/methods/adaptive.md; an assumption at ImageNet scale), beside Horvath22 App. D.5's 26.2 hours on two GPUs
for CERTIFY of three ResNet-50s on 500 images.
"""

from __future__ import annotations

import argparse
import platform

import torch
from engine import check_line, confident, reference, timed  # the reference loop, confident members, the timer

from ensemblecert import DataInfo, Engine, Ensemble, MonteCarloSampler, build_component, build_member, load_registry

IMAGES, N0, N = 500, 100, 100_000
ADP_REDUCTION = 25.0  # docs/methods/adaptive.md, r = 0.25 (an assumption here)
PAPER_HOURS = 26.2  # Horvath22 App. D.5, two GPUs


def hours(rate: float, reduction: float = 1.0) -> float:
    return IMAGES * (N0 + N) / reduction / rate / 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image", type=int, help="pixels per side (default 224 on a GPU, 64 on a CPU)")
    parser.add_argument("--n", type=int, help="noisy samples per timing (default 2000 on a GPU, 32 on a CPU)")
    parser.add_argument("--batch", type=int, help="samples per batch (default 200 on a GPU, 16 on a CPU)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    image = args.image or (224 if gpu else 64)
    n = args.n or (2000 if gpu else 32)
    batch = args.batch or (200 if gpu else 16)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # the reference, like fp32
    info = DataInfo((3, image, image), 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    registry = load_registry()
    model = build_component("model", {"name": "resnet50"}, registry)
    members = [build_member(model, info, seed).to(device).eval() for seed in range(3)]
    aggregator = build_component("aggregator", "we", registry)
    noise = build_component("noise", {"name": "gaussian", "sigma": 0.5}, registry)
    x = torch.rand(3, image, image, device=device)
    checked = Engine(precision="bf16-checked", check_probe=batch)  # the probe: one batch, in the warm-up
    sure = [confident(build_member(model, info, seed).to(device).eval()) for seed in range(3)]
    ensembles = {
        "float32 engine": Ensemble(members, aggregator, engine=Engine()),
        "bf16-checked": Ensemble(members, aggregator, engine=checked),
        "bf16-checked, confident": Ensemble(sure, aggregator, engine=checked),
    }
    samplers = {name: MonteCarloSampler(e, noise, batch_size=batch, num_classes=1000) for name, e in ensembles.items()}
    runs = {"reference": lambda: reference(members, x, n, batch, 0.5, 1000, torch.Generator(device).manual_seed(0))}
    for name, sampler in samplers.items():
        runs[name] = lambda s=sampler: s.tally(x, n, generator=torch.Generator(device).manual_seed(0))
    for run in runs.values():  # warm-up: compilation, the checked path's probe, cuDNN's choices
        run()
    best = {name: min(timed(run, device) for _ in range(args.repeats)) for name, run in runs.items()}
    name = (
        torch.cuda.get_device_name(device)
        if gpu
        else f"{platform.processor() or 'CPU'} ({torch.get_num_threads()} threads)"
    )
    print(f"3 x ResNet-50, {image}x{image} inputs, n = {n} per timing, batch {batch}, on {name}")
    print(
        f"{'path':<24}{'samples/s':>12}{'x reference':>13}{'CERTIFY, 500 images':>22}{'CertifyAdp (assumed /25)':>26}"
    )
    for path, t in best.items():
        rate = n / t
        print(
            f"{path:<24}{rate:>12,.1f}{best['reference'] / t:>13.2f}{hours(rate):>20,.1f} h"
            f"{hours(rate, ADP_REDUCTION):>24,.1f} h"
        )
    for path in ("bf16-checked", "bf16-checked, confident"):
        print(check_line(path, ensembles[path].check.record))
    print(f"Horvath22 App. D.5: CERTIFY of three ResNet-50s on 500 ImageNet images took {PAPER_HOURS} h on two GPUs")
    if not gpu or image != 224:
        print("(a smoke test: projections at this size say nothing about ImageNet on a GPU)")


if __name__ == "__main__":
    main()
