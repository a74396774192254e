"""The certification engine against a reference loop and against its own member evaluation, side by side.

    python benchmarks/engine.py [--repeats 3] [--device cpu|cuda] [--cases mlp,resnet20,resnet110,resnet50] [--n N]

Ways to tally n noisy copies of one input through the same ensemble (average of softmax, as WE), timed in turns
(reference, then each engine, then again) so that the machine's load affects them alike:

* reference: the loop the original randomized-smoothing code runs: noise drawn per batch, members evaluated one
  after another, class counts copied to the host after every batch (float32, TF32 off, as the engine's default);
* engine: ``MonteCarloSampler.tally`` (what certification runs) with ``[engine]`` as given: ``auto`` (the default
  choices) and each layout, compiled or not;
* raw: that engine's member evaluation alone (``Members.logits``, the aggregator and the arg-max) on pre-drawn
  noisy batches, without the framework around it.

On CUDA (or with ``--reduced``) the reduced precisions run too, and the checked path twice: on the random members,
whose logits are so close that most samples are evaluated again in float32 (its worst case), and on *confident*
members (the same networks with one class's last bias raised by 10,000, so that no sample is close: its best case).
Trained members lie between; the share each run re-evaluated and its audit are printed after the table.

Prints noisy samples per second through all members, each engine's speed-up over the reference (issue goal: at
least 1.5x) and the default engine's overhead over its raw member evaluation (goal: under 5%).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ensemblecert import (
    DataInfo,
    Engine,
    Ensemble,
    MonteCarloSampler,
    build_component,
    build_member,
    input_generator,
    load_registry,
)
from ensemblecert.ensemble.checked import CheckRecord

CASES = {
    "mlp": ("digits MLP", {"name": "mlp"}, DataInfo((1, 8, 8), 10, (0.3,), (0.3,))),
    "resnet20": ("CIFAR ResNet-20", {"name": "resnet20"}, DataInfo((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3)),
    "resnet110": ("CIFAR ResNet-110", {"name": "resnet110"}, DataInfo((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3)),
    "resnet50": (
        "ImageNet ResNet-50",
        {"name": "resnet50"},
        DataInfo((3, 224, 224), 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ),
}
#: (n, batch size) per case and device type.
SIZES = {
    ("mlp", "cpu"): (20_000, 1000),
    ("resnet20", "cpu"): (1000, 250),
    ("resnet110", "cpu"): (200, 100),
    ("resnet50", "cpu"): (16, 8),
    ("mlp", "cuda"): (100_000, 10_000),
    ("resnet20", "cuda"): (100_000, 2000),
    ("resnet110", "cuda"): (100_000, 1000),
    ("resnet50", "cuda"): (10_000, 250),
}
#: Contenders whose members are made confident (see the module docstring).
CONFIDENT = "bf16-checked, confident"


def check_line(name: str, record: CheckRecord) -> str:
    """What a checked path re-evaluated and audited, in one line."""
    return (
        f"{name}: re-evaluated in float32 {record.member_reevaluated_share:.1%} of member evaluations and "
        f"{record.reevaluated_for_aggregate / max(record.samples, 1):.1%} of {record.samples:,} samples, "
        f"{record.audited_samples:,} audited, {record.disagreements} disagreements"
    )


def confident(member: torch.nn.Module, boost: float = 1e4) -> torch.nn.Module:
    """``member`` with its last linear layer's bias for class 0 raised by ``boost``: every sample's decision then
    has a wide margin, so the checked path evaluates nothing again (its best case)."""
    last = [m for m in member.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias[0] += boost
    return member


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


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def engines(device: torch.device, probe: int, heavy: bool = False, reduced: bool = False) -> dict[str, Engine]:
    """The contenders; the checked ones probe ``probe`` samples (one batch: in the warm-up, not in the timings)."""
    out = {
        "auto": Engine(),
        "loop": Engine(layout="loop", compile=False),
        "loop+compile": Engine(layout="loop", compile=True),
        "fused": Engine(layout="fused", compile=False),
        "fused+compile": Engine(layout="fused", compile=True),
    }
    if device.type == "cuda" or reduced:
        out["loop+compile, not channels-last"] = Engine(layout="loop", compile=True, channels_last=False)
        out["loop+compile bf16 (unsound)"] = Engine(layout="loop", compile=True, precision="bf16")
        out["fused+compile bf16 (unsound)"] = Engine(layout="fused", compile=True, precision="bf16")
        checked = Engine(layout="loop", compile=True, precision="bf16-checked", check_probe=probe)
        out["bf16-checked, random weights"] = checked
        out[CONFIDENT] = checked
    if heavy:  # the slow layouts, left out where a run is long
        for key in ("fused", "fused+compile", "loop", "fused+compile bf16 (unsound)"):
            out.pop(key, None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", default="mlp,resnet20", help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--members", default="3,5", help="comma-separated ensemble sizes")
    parser.add_argument("--n", type=int, help="noisy samples per input (default per case and device)")
    parser.add_argument("--reduced", action="store_true", help="the reduced precisions on a CPU too (a smoke test)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # the reference, like fp32
    registry = load_registry()
    noise = build_component("noise", {"name": "gaussian", "sigma": 0.25}, registry)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"device {device} ({name}), torch {torch.__version__}; noisy samples per second through all members, "
        f"median of {args.repeats}"
    )
    header = f"{'members':<19}{'N':>3}{'n':>9}{'engine':>30}{'samples/s':>12}{'x reference':>13}{'overhead':>10}"
    print(header)
    checks = []
    for case in args.cases.split(","):
        label, spec, info = CASES[case]
        n, batch = SIZES[(case, device.type)]
        n = args.n or n
        for count in map(int, args.members.split(",")):
            model = build_component("model", spec, registry)
            members = [build_member(model, info, s).to(device).eval() for s in range(count)]
            x = torch.rand(info.input_shape, device=device)
            gen = torch.Generator(device=device).manual_seed(0)
            contenders = {}
            heavy = case in ("resnet110", "resnet50")
            for key, engine in engines(device, batch, heavy=heavy, reduced=args.reduced).items():
                own = [build_member(model, info, s).to(device).eval() for s in range(count)]  # channels-last converts
                if key == CONFIDENT:
                    own = [confident(m) for m in own]
                ensemble = Ensemble(own, build_component("aggregator", "we", registry), engine=engine)
                ensemble = ensemble.to(device).eval()
                classes = info.num_classes
                sampler = MonteCarloSampler(ensemble, noise, num_classes=classes, batch_size=batch, device=device)
                sampler.tally(x, min(n, 2 * batch), generator=input_generator(0, 0, device=device))  # build, compile
                sampler.tally(x, batch // 3 + 1, generator=input_generator(0, 1, device=device))  # a short batch too
                contenders[key] = (ensemble, sampler)
            batches = [
                x.unsqueeze(0) + torch.randn((batch, *x.shape), generator=gen, device=device) * 0.25
                for _ in range(max(1, n // batch))
            ]
            auto_ensemble = contenders["auto"][0]

            def raw() -> None:
                with torch.inference_mode():
                    for b in batches:
                        auto_ensemble.evaluate(b).probs.argmax(dim=1)

            runs = {"reference": lambda: reference(members, x, n, batch, 0.25, classes, gen), "raw": raw}
            for key, (_, sampler) in contenders.items():
                runs[key] = lambda s=sampler: s.tally(x, n, generator=input_generator(0, 0, device=device))
            times: dict[str, list[float]] = {key: [] for key in runs}
            for fn in runs.values():
                fn()  # warm
            for _ in range(args.repeats):
                for key, fn in runs.items():
                    times[key].append(timed(fn, device))
            t = {key: statistics.median(v) for key, v in times.items()}
            raw_n = len(batches) * batch
            print(f"{label:<19}{count:>3}{n:>9,}{'reference':>30}{n / t['reference']:>12,.0f}{1:>13.2f}")
            for key in contenders:
                overhead = f"{(t[key] / n) / (t['raw'] / raw_n) - 1:>10.1%}" if key == "auto" else ""
                choice = contenders[key][0].runner().describe()
                flags = ("+compile" if choice["compiled"] else "") + ("+cl" if choice["channels_last"] else "")
                shown = f"{key} [{choice['layout']}{flags}]" if key == "auto" else key
                print(
                    f"{'':<19}{'':>3}{'':>9}{shown:>30}{n / t[key]:>12,.0f}{t['reference'] / t[key]:>13.2f}{overhead}",
                    flush=True,
                )
                check = contenders[key][0].check
                if check is not None:
                    checks.append(check_line(f"{label}, {count} members, {key}", check.record))
    print("\n".join(checks))


if __name__ == "__main__":
    main()
