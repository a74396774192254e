"""Full speed on a shared machine: the default pipeline idle and beside ``k`` CPU-bound processes, under each
thread policy, with the ratio of each loaded time to the fair-share time.

    python benchmarks/contention.py [--busy 2] [--set PATH=VALUE ...] [--policies as-is,passive,one-thread]

A run on a machine with ``cores`` cores beside ``k`` processes that each want a whole core can expect at most
``threads / (k + threads)`` of the cores it would use alone, so its fair-share time is the idle time times
``(k + threads) / cores`` (and at least the idle time). A ratio near 1 means the run took its share and no more;
far above 1, its threads spent the time spinning while they waited for each other (OpenMP's default). Policies:

* ``as-is``: ensemblecert as installed (it sets ``GOMP_SPINCOUNT=10000`` unless the environment chooses a wait
  policy);
* ``runtime-default``: ``GOMP_SPINCOUNT=300000``, the OpenMP runtime's own default (what ensemblecert did before);
* ``spinning``: ``OMP_WAIT_POLICY=ACTIVE`` (threads spin while they wait);
* ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once);
* ``one-thread``: ``OMP_NUM_THREADS=1``.

Each run is the command line in a process of its own, into a fresh folder; the busy processes are Python loops.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

POLICIES = {
    "as-is": {},
    "runtime-default": {"GOMP_SPINCOUNT": "300000"},
    "spinning": {"OMP_WAIT_POLICY": "ACTIVE"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "one-thread": {"OMP_NUM_THREADS": "1"},
}


def busy(count: int) -> list[subprocess.Popen]:
    """``count`` processes that keep a core each busy until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def timed(env: dict[str, str], settings: list[str], folder: str) -> float:
    command = [sys.executable, "-m", "ensemblecert", "run", "--quiet", "--fresh", "--output", folder, *settings]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, default=2, help="CPU-bound processes beside the run (default 2)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="PATH=VALUE")
    parser.add_argument("--policies", default="as-is,runtime-default,passive,one-thread")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    settings = [x for s in args.settings for x in ("--set", s)]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "KMP_"))}
    print(f"{cores} cores; the default pipeline {' '.join(args.settings)}; beside {args.busy} busy processes")
    print("| policy | threads | idle (s) | loaded (s) | fair share (s) | loaded / fair share | idle / first idle |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    reference = None  # the first policy's idle time
    with tempfile.TemporaryDirectory() as root:
        for name in args.policies.split(","):
            env = {**base, **POLICIES[name]}
            threads = int(env.get("OMP_NUM_THREADS", cores))
            idle = timed(env, settings, os.path.join(root, name))
            reference = reference or idle
            others = busy(args.busy)
            try:
                time.sleep(1.0)  # the busy processes are running before the run starts
                loaded = timed(env, settings, os.path.join(root, name))
            finally:
                for p in others:
                    p.kill()
                    p.wait()
            fair = max(idle, idle * (args.busy + threads) / cores)
            print(
                f"| {name} | {threads} | {idle:.1f} | {loaded:.1f} | {fair:.1f} | {loaded / fair:.2f} | "
                f"{idle / reference:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
