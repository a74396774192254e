"""The certification engine against a reference loop and against its own member evaluation, side by side.

    python benchmarks/engine.py [--repeats 3] [--skip-cifar]

Three ways to tally n noisy copies of one input through the same ensemble (average of softmax, as WE):

* reference: the loop the original randomized-smoothing code runs: noise drawn per batch, members evaluated one
  after another, class counts copied to the host after every batch;
* engine: ``MonteCarloSampler.tally`` (what certification runs);
* raw: the engine's member evaluation alone (``Ensemble.evaluate`` and the arg-max) on pre-drawn noisy batches,
  without the framework around it.

Prints noisy samples per second through all members, the engine's speed-up over the reference (issue goal: at
least 1.5x) and its overhead over raw member evaluation (goal: under 5%), for digits MLPs and CIFAR-shaped
ResNet-20 members, 3 and 5 of each, on this machine's CPU (or ``--device cuda``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ensemblecert import DataInfo, Ensemble, MonteCarloSampler, build_component, build_member, input_generator, load_registry


def reference(members, x: torch.Tensor, n: int, batch: int, sigma: float, num_classes: int, gen) -> torch.Tensor:
    counts = torch.zeros(num_classes, dtype=torch.long)
    done = 0
    with torch.no_grad():
        while done < n:
            size = min(batch, n - done)
            inputs = x.unsqueeze(0) + torch.randn((size, *x.shape), generator=gen, device=x.device) * sigma
            probs = sum(m(inputs).softmax(dim=1) for m in members) / len(members)
            counts += torch.bincount(probs.argmax(dim=1), minlength=num_classes).cpu()
            done += size
    return counts


def best_of(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-cifar", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    registry = load_registry()
    noise = build_component("noise", {"name": "gaussian", "sigma": 0.25}, registry)
    cases = [("digits MLP", {"name": "mlp"}, DataInfo((1, 8, 8), 10, (0.3,), (0.3,)), 20_000, 1000)]
    if not args.skip_cifar:
        cases.append(("CIFAR ResNet-20", {"name": "resnet20"}, DataInfo((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3), 1000, 250))
    print(f"device {device}, threads {torch.get_num_threads()}; samples per second through all members "
          f"(median of {args.repeats})")
    print(f"{'members':<17}{'N':>3}{'n':>8}{'reference':>12}{'engine':>10}{'raw':>10}{'engine/ref':>12}{'overhead':>10}")
    for label, spec, info, n, batch in cases:
        for count in (3, 5):
            model = build_component("model", spec, registry)
            members = [build_member(model, info, s).to(device).eval() for s in range(count)]
            ensemble = Ensemble(members, build_component("aggregator", "we", registry)).to(device).eval()
            x = torch.rand(info.input_shape, device=device)
            sampler = MonteCarloSampler(ensemble, noise, num_classes=10, batch_size=batch, device=device)
            gen = torch.Generator(device=device).manual_seed(0)
            batches = [x.unsqueeze(0) + torch.randn((batch, *x.shape), generator=gen, device=device) * 0.25
                       for _ in range(n // batch)]

            def raw() -> None:
                with torch.inference_mode():
                    for b in batches:
                        ensemble.evaluate(b).probs.argmax(dim=1)

            t_ref = best_of(lambda: reference(members, x, n, batch, 0.25, 10, gen), args.repeats, device)
            t_eng = best_of(lambda: sampler.tally(x, n, generator=input_generator(0, 0, device=device)), args.repeats, device)
            t_raw = best_of(raw, args.repeats, device)
            print(f"{label:<17}{count:>3}{n:>8,}{n / t_ref:>12,.0f}{n / t_eng:>10,.0f}{n / t_raw:>10,.0f}"
                  f"{t_ref / t_eng:>12.2f}{t_eng / t_raw - 1:>10.1%}", flush=True)


if __name__ == "__main__":
    main()
