"""Certification throughput with 1 and with K processes under torchrun, side by side.

    python benchmarks/scaling.py [--processes 2] [--model mlp|resnet20] [--inputs 24] [--samples 20000]

Starts ``torchrun --standalone --nproc_per_node P`` on this script for each setting and lets every rank certify
its round-robin share of the same inputs (``MonteCarloSampler.tally`` of n draws each, as certification does),
timed from one barrier to the next. Prints noisy samples per second through all members for 1 process with one
thread, 1 process with K threads (all the cores one process can use) and K processes with one thread each, and
the ratios (issue goal: at least 1.8x with 2 processes).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

import torch


def worker(args: argparse.Namespace) -> None:
    from ensemblecert import (
        DataInfo,
        Ensemble,
        MonteCarloSampler,
        build_component,
        build_member,
        input_generator,
        load_registry,
    )
    from ensemblecert.distributed import join, leave

    torch.set_num_threads(args.threads)
    world = join("cpu")
    registry = load_registry()
    info = (
        DataInfo((1, 8, 8), 10, (0.3,), (0.3,))
        if args.model == "mlp"
        else DataInfo((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3)
    )
    model = build_component("model", {"name": args.model}, registry)
    members = [build_member(model, info, s).eval() for s in range(3)]
    ensemble = Ensemble(members, build_component("aggregator", "we", registry)).eval()
    noise = build_component("noise", {"name": "gaussian", "sigma": 0.25}, registry)
    sampler = MonteCarloSampler(ensemble, noise, num_classes=10, batch_size=args.batch)
    inputs = torch.rand((args.inputs, *info.input_shape), generator=torch.Generator().manual_seed(0))
    sampler.tally(inputs[0], 2 * args.batch, generator=input_generator(1, 0))  # warm (and compile, if it does)
    world.barrier()
    start = time.perf_counter()
    for i in world.shard(range(args.inputs)):
        sampler.tally(inputs[i], args.samples, generator=input_generator(0, i))
    world.barrier()
    seconds = time.perf_counter() - start
    if world.main:
        print(f"RESULT {args.inputs * args.samples / seconds:.1f}", flush=True)
    leave(world)


def measure(processes: int, threads: int, args: argparse.Namespace) -> float:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        __file__,
        "--worker",
        "--threads",
        str(threads),
        "--model",
        args.model,
        "--inputs",
        str(args.inputs),
        "--samples",
        str(args.samples),
        "--batch",
        str(args.batch),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    found = re.search(r"RESULT ([0-9.]+)", done.stdout)
    if done.returncode or not found:
        raise SystemExit(f"torchrun failed:\n{done.stderr[-3000:]}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--model", default="mlp", choices=["mlp", "resnet20"])
    parser.add_argument("--inputs", type=int, default=24)
    parser.add_argument("--samples", type=int, default=20_000, help="noisy samples per input (n)")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    k = args.processes
    settings = [(1, 1), (1, k), (k, 1)]
    print(
        f"{args.model}, 3 members, {args.inputs} inputs of n = {args.samples:,}, {os.cpu_count()} cores; "
        f"noisy samples per second (best of {args.repeats})"
    )
    rates = {}
    for processes, threads in settings:
        rates[(processes, threads)] = max(measure(processes, threads, args) for _ in range(args.repeats))
        print(f"{processes} process(es) x {threads} thread(s): {rates[(processes, threads)]:>12,.0f}", flush=True)
    print(f"{k} processes / 1 process, 1 thread:  {rates[(k, 1)] / rates[(1, 1)]:.2f}x")
    print(f"{k} processes / 1 process, {k} threads: {rates[(k, 1)] / rates[(1, k)]:.2f}x")


if __name__ == "__main__":
    main()
