"""The GPU figures as one table: float32 reference loop, float32 engine, plain bf16, and bf16-checked on random and
on confident members, for 3 x ResNet-20, 3 x ResNet-50 and the default digits pipeline.

    python benchmarks/gpu_table.py --device cuda [--out gpu-figures] [--rows digits,resnet20,resnet50]
    python benchmarks/gpu_table.py --smoke      # tiny sizes on the CPU: checks that every row runs

Members are random (``build_member`` with seeds 0, 1, 2), as in ``benchmarks/engine.py``, whose ``reference`` loop
and ``confident`` members (one class's last bias raised by 10,000: no sample is close, the checked path's best case)
this reuses; random members leave most samples close (its worst case). Every contender of a row is built and
warmed (compiled, probed) first, then each is timed in turns, ``--repeats`` times, and the median kept. The digits
row runs the default pipeline (``ensemblecert run`` on its 360 test inputs) once per precision on the same trained
members and reports seconds per input.

Each row is appended to ``<out>/table.md`` as soon as it is measured, so a row that runs out of time leaves the
rows before it. Columns: samples per second (seconds per input for digits) with the ratio to the float32 engine;
then the checked path's ratio to plain bf16 (goal >= 0.9 on confident members), its share of member evaluations
run again in float32, and for ResNet-50 the checked path's share of the bf16 rate the matrix units allow
(``--peak`` TFLOP/s; 3 x 8.2 GFLOP a sample).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from engine import CASES, confident, reference, timed

import ensemblecert as ec

#: (label, case, members, n, batch) per row on a GPU; the smoke sizes on a CPU.
ROWS = {
    "resnet20": ("3 x ResNet-20, n = 20,000, batch 2,000", "resnet20", 3, 20_000, 2000),
    "resnet50": ("3 x ResNet-50, 224 x 224, n = 2,000, batch 250", "resnet50", 3, 2000, 250),
}
SMOKE = {"resnet20": (96, 32), "resnet50": (8, 4)}
#: Floating-point operations of one ResNet-50 evaluation at 224 x 224 (multiply-adds counted twice).
RESNET50_FLOP = 8.2e9
COLUMNS = [
    "float32 reference loop",
    "float32 engine",
    "plain bf16 (unsound)",
    "bf16-checked, random",
    "bf16-checked, confident",
]
HEADER = (
    "| what | " + " | ".join(COLUMNS) + " | checked / plain bf16 (random, confident) | re-run in float32 (random, "
    "confident) | of the matrix units' bf16 rate (checked, confident) |\n| --- |" + " ---: |" * (len(COLUMNS) + 3)
)


def engines(batch: int, compile_: bool | None) -> dict[str, ec.Engine]:
    """The engine contenders of a row: the defaults at each precision (``compile_`` overrides the default)."""
    return {
        "float32 engine": ec.Engine(compile=compile_),
        "plain bf16 (unsound)": ec.Engine(compile=compile_, precision="bf16"),
        "bf16-checked, random": ec.Engine(compile=compile_, precision="bf16-checked", check_probe=batch),
        "bf16-checked, confident": ec.Engine(compile=compile_, precision="bf16-checked", check_probe=batch),
    }


def model_row(key: str, device: torch.device, smoke: bool, repeats: int, peak: float) -> str:
    """One row of the table for a model case: samples per second of every contender."""
    label, case, count, n, batch = ROWS[key]
    _, spec, info = CASES[case]
    if smoke:
        n, batch = SMOKE[key]
        info = ec.DataInfo((3, 32, 32), info.num_classes, info.mean, info.std)
        label = f"{label} (smoke: n = {n}, batch {batch}, 32 x 32, CPU)"
    registry = ec.load_registry()
    model = ec.build_component("model", spec, registry)
    noise = ec.build_component("noise", {"name": "gaussian", "sigma": 0.25}, registry)
    x = torch.rand(info.input_shape, device=device)
    members = [ec.build_member(model, info, s).to(device).eval() for s in range(count)]
    samplers = {}
    for name, engine in engines(batch, False if smoke else None).items():
        own = [ec.build_member(model, info, s).to(device).eval() for s in range(count)]
        if name.endswith("confident"):
            own = [confident(m) for m in own]
        ensemble = ec.Ensemble(own, ec.build_component("aggregator", "we", registry), engine=engine).to(device).eval()
        sampler = ec.MonteCarloSampler(ensemble, noise, num_classes=info.num_classes, batch_size=batch, device=device)
        sampler.tally(x, min(n, 2 * batch), generator=ec.input_generator(0, 0, device=device))  # compile, probe
        samplers[name] = sampler
    gen = torch.Generator(device=device).manual_seed(0)
    runs = {"float32 reference loop": lambda: reference(members, x, n, batch, 0.25, info.num_classes, gen)}
    for name, sampler in samplers.items():
        runs[name] = lambda s=sampler: s.tally(x, n, generator=ec.input_generator(0, 0, device=device))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()  # warm
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn, device))
    rate = {name: n / statistics.median(t) for name, t in times.items()}
    base = rate["float32 engine"]
    cells = [f"{rate[c]:,.0f} ({rate[c] / base:.2f}x)" for c in COLUMNS]
    plain = rate["plain bf16 (unsound)"]
    checked = ["bf16-checked, random", "bf16-checked, confident"]
    shares = []
    for name in checked:
        check = samplers[name].classifier.check
        record = check.record if check is not None else None
        fell = " (fell back to fp32)" if record is not None and record.fell_back_to_fp32 else ""
        shares.append(f"{record.member_reevaluated_share:.1%}{fell}" if record is not None else "n/a")
    of_peak = ""
    if case == "resnet50" and not smoke:
        of_peak = ", ".join(f"{rate[c] * count * RESNET50_FLOP / (peak * 1e12):.0%}" for c in checked)
    ratios = ", ".join(f"{rate[c] / plain:.2f}" for c in checked)
    return f"| {label} | " + " | ".join(cells) + f" | {ratios} | {', '.join(shares)} | {of_peak} |"


def digits_row(device: torch.device, smoke: bool, out: Path) -> str:
    """The default digits pipeline at each precision on the same trained members: seconds per input."""
    base = ec.load_pipeline(None)[0].source | {}
    run_dir = out / "digits"
    certification = dict(base["certification"])
    if smoke:
        certification["max_examples"] = 12
    trained = ec.run({**base, "output": str(run_dir / "fp32"), "device": str(device), "certification": certification})
    checkpoints = sorted(str(p) for p in (run_dir / "fp32" / "checkpoints").glob("member_*.pt"))
    ensemble = {**base["ensemble"], "checkpoints": checkpoints}
    seconds: dict[str, float] = {"float32 engine": _per_input(trained)}
    shares = ["", ""]
    for name, precision in [("plain bf16 (unsound)", "bf16"), ("bf16-checked, random", "bf16-checked")]:
        cfg = {
            **base,
            "output": str(run_dir / precision),
            "device": str(device),
            "ensemble": ensemble,
            "engine": {"precision": precision},
            "certification": certification,
        }
        result = ec.run(cfg)
        seconds[name] = _per_input(result)
        check = result.summary.check if result.summary is not None else None
        if check:
            fell = " (fell back to fp32)" if check.get("fell_back_to_fp32") else ""
            shares[0] = f"{check['member_reevaluated_share']:.1%}{fell}"
    inputs = len(trained.results)
    base_s = seconds["float32 engine"]
    cells = [
        f"{seconds[c]:.4f} ({base_s / seconds[c]:.2f}x)" if c in seconds else "" for c in COLUMNS
    ]  # speed-ups: float32 engine seconds over each
    ratio = seconds["plain bf16 (unsound)"] / seconds["bf16-checked, random"]
    label = f"the default digits pipeline, {inputs} inputs (s/input)"
    return f"| {label} | " + " | ".join(cells) + f" | {ratio:.2f} | {', '.join(s for s in shares if s)} | |"


def _per_input(result: ec.RunResult) -> float:
    """Mean seconds per input over the run's certifiers."""
    total = sum(o.seconds for r in result.results for o in r.outcomes.values())
    return total / max(1, len(result.results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--rows", default="digits,resnet20,resnet50", help="comma-separated: digits, " + ", ".join(ROWS)
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--peak", type=float, default=790.0, help="the GPU's measured bf16 matrix rate, TFLOP/s")
    parser.add_argument("--out", default="gpu-figures")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (on a CPU: checks that every row runs)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 is float32
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    table = out / "table.md"
    table.write_text(f"{name}, torch {torch.__version__}, median of {args.repeats}\n\n{HEADER}\n")
    print(table.read_text(), end="", flush=True)
    for row in args.rows.split(","):
        start = time.perf_counter()
        line = (
            digits_row(device, args.smoke, out)
            if row == "digits"
            else model_row(row, device, args.smoke, args.repeats, args.peak)
        )
        with table.open("a") as f:
            f.write(line + "\n")
        print(line, f"<!-- {time.perf_counter() - start:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
