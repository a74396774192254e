"""How fast the command line answers when it has no work to do, against the cost of importing torch.

    python benchmarks/startup.py [--repeats 5]

Each contender runs as a fresh process (as a user's shell starts it), ``--repeats`` times; the median wall time is
compared with the median of ``python -c "import torch"``, the baseline every command that certifies pays anyway.
``--help``, ``default`` and a mistyped option parse their arguments before anything heavy is imported, so their
ratio should be well under 0.1; ``validate`` of the default pipeline loads torch and the plugins, for contrast.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CONTENDERS = {
    "ensemblecert --help": ["-m", "ensemblecert", "--help"],
    "ensemblecert default": ["-m", "ensemblecert", "default"],
    "ensemblecert run --no-such-option": ["-m", "ensemblecert", "run", "--no-such-option"],
    "ensemblecert run --help": ["-m", "ensemblecert", "run", "--help"],
    "ensemblecert validate": ["-m", "ensemblecert", "validate"],
}


def seconds(args: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    seconds(["-c", "import torch"], 1)  # warm the file cache first, so the baseline is not charged for it
    baseline = seconds(["-c", "import torch"], args.repeats)
    print(f"| command | median seconds | ratio to `import torch` ({baseline:.2f} s) |")
    print("| --- | ---: | ---: |")
    for name, command in CONTENDERS.items():
        took = seconds(command, args.repeats)
        print(f"| `{name}` | {took:.3f} | {took / baseline:.3f} |")


if __name__ == "__main__":
    main()
