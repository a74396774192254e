"""What sharing trained members saves: a 6-point sweep over certification settings against six separate runs.

    python benchmarks/study.py [--epochs 10] [--inputs 30]

Both sides run the same six pipelines (one digits ensemble of 3 MLPs, certified with CERTIFY at three alphas and
two sample sizes) in this process: the contender as one study, whose points share the members trained once; the
baseline as six independent runs, each training its own. Printed: trainings, wall time and the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ensemblecert as ec

SWEEP = {"certification.certifiers[0].alpha": [0.01, 0.001, 0.0001], "certification.certifiers[0].n": [1000, 2000]}


def pipeline(output: Path, epochs: int, inputs: int) -> dict:
    return {
        "seed": 0,
        "device": "cpu",
        "output": str(output),
        "ensemble": {"members": 3, "model": {"name": "mlp", "hidden": [256, 256]}},
        "training": {"epochs": epochs},
        "certification": {"certifiers": [{"name": "cohen", "n0": 100, "n": 1000}], "max_examples": inputs},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--inputs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        study = ec.load_study({**pipeline(root / "study", args.epochs, args.inputs), "sweep": SWEEP})
        start = time.perf_counter()
        ec.run_study(study)
        shared = time.perf_counter() - start
        trained = len(list((root / "study").glob("*/train_log.json")))
        start = time.perf_counter()
        for point in study.points:
            data = pipeline(root / "separate" / point.name, args.epochs, args.inputs)
            overrides = [f"{path}={value}" for path, value in point.settings]
            ec.run(data, overrides=overrides)
        separate = time.perf_counter() - start
        alone = len(list((root / "separate").glob("*/train_log.json")))
    print("| side | points | trainings | seconds |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| study (members shared) | {len(study.points)} | {trained} | {shared:.1f} |")
    print(f"| six separate runs | {len(study.points)} | {alone} | {separate:.1f} |")
    print(f"\nstudy / separate wall time: {shared / separate:.2f}")


if __name__ == "__main__":
    main()
