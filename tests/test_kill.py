"""Runs that survive SIGKILL: a run killed during training, certification or evaluation and started again ends
exactly as an uninterrupted run does (no input lost or done twice, the same weights, rows and summaries)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

PIPELINE = """
seed = 3
device = "cpu"
data = { name = "digits" }
noise = { name = "gaussian", sigma = 0.25 }

[ensemble]
members = 2
model = { name = "mlp", hidden = [64] }

[training]
epochs = 6
batch_size = 128
lr = 0.1

[certification]
certifiers = [{ name = "cohen", n0 = 20, n = 2000, alpha = 0.01 }]
batch_size = 500
skip = 9
radii = [0.0, 0.25, 0.5]

[evaluation]
attacks = [{ name = "pgd", epsilon = 0.1, steps = 5 }]
aggregators = ["we", "max"]
batch_size = 4
skip = 6
"""


def start(workdir: Path, out: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ensemblecert", "run", "pipeline.toml", "--output", out, "--quiet"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("the run neither reached the kill point nor finished")


def rows_without_times(path: Path) -> list[list[str]]:
    table = list(csv.reader(path.read_text().splitlines(), delimiter="\t"))
    keep = [i for i, name in enumerate(table[0]) if name != "time" and not name.endswith(":time")]
    return [[row[i] for i in keep] for row in table]


def outcome(out: Path) -> dict:
    summary = json.loads((out / "certification.json").read_text())
    cohen = summary["certifiers"]["cohen"]
    evaluation = json.loads((out / "evaluation.json").read_text())
    weights = [torch.load(out / "checkpoints" / f"member_{i}.pt", weights_only=True)["state_dict"] for i in range(2)]
    return {
        "certification rows": rows_without_times(out / "certification.tsv"),
        "evaluation rows": (out / "evaluation.tsv").read_text(),
        "summary": (cohen["certified_accuracy"], cohen["acr"], cohen["abstain_rate"], summary["examples"]),
        "evaluation": evaluation["accuracy"],
        "train_log": [
            {k: v for k, v in r.items() if k != "seconds"}
            for r in json.loads((out / "train_log.json").read_text())["epochs"]
        ],
        "weights": weights,
    }


@pytest.mark.slow
def test_a_run_killed_at_any_stage_resumes_to_the_uninterrupted_result(tmp_path):
    (tmp_path / "pipeline.toml").write_text(PIPELINE)
    whole = start(tmp_path, "whole")
    assert whole.wait(timeout=600) == 0, whole.stderr.read()
    expected = outcome(tmp_path / "whole")

    points = {
        "training": lambda out: (out / "checkpoints" / "train_state.pt").exists(),
        "certification": lambda out: lines(out / "certification.tsv") >= 8,
        "evaluation": lambda out: lines(out / "evaluation.tsv") >= 20,
    }
    for name, ready in points.items():
        out = tmp_path / name
        killed = 0
        for _ in range(2):  # killed twice at the same stage, then left to finish
            proc = start(tmp_path, name)
            killed += kill_when(proc, lambda: ready(out))
        assert killed >= 1, f"the run finished before reaching the {name} kill point"
        proc = start(tmp_path, name)
        assert proc.wait(timeout=600) == 0, proc.stderr.read()
        got = outcome(out)
        for key in ("certification rows", "evaluation rows", "summary", "evaluation", "train_log"):
            assert got[key] == expected[key], f"after a kill during {name}, {key} differs"
        for a, b in zip(got["weights"], expected["weights"]):
            assert all(torch.equal(a[k], b[k]) for k in a), f"after a kill during {name}, the weights differ"


NARROWING = """
seed = 2
device = "cpu"
data = { name = "digits" }

[ensemble]
members = 2
model = { name = "mlp", hidden = [32] }

[training]
epochs = 1
batch_size = 128

[certification]
certifiers = [{ name = "cohen", n0 = 20, n = 1000, alpha = 0.01 }]
batch_size = 500
skip = 9
max_examples = 8
radii = [0.0, 0.25]
"""


@pytest.mark.slow
def test_a_narrower_selection_killed_mid_way_loses_no_certified_row(tmp_path):
    """Certify 8 inputs, then a selection of every 18th input (3 of the 8 and new ones) killed while it certifies;
    going back to the first selection finds all its rows, times included, and certifies none again."""
    (tmp_path / "pipeline.toml").write_text(NARROWING)
    first = start(tmp_path, "run")
    assert first.wait(timeout=600) == 0, first.stderr.read()
    tsv = tmp_path / "run" / "certification.tsv"
    certified = tsv.read_text().splitlines()
    narrow = subprocess.Popen(
        [sys.executable, "-m", "ensemblecert", "run", "pipeline.toml", "--output", "run", "--quiet", "--set",
         "certification.skip=18", "--set", "certification.max_examples=40"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def certifying_new_inputs() -> bool:
        rows = tsv.read_text().split("\n")[1:-1] if tsv.exists() else []  # whole lines only
        return sum(int(row.split("\t")[0]) > 63 for row in rows) >= 2

    assert kill_when(narrow, certifying_new_inputs), "the narrower run finished before the kill point"
    kept = (
        tsv.read_text().splitlines()[1:]
        + (tmp_path / "run" / "certification.unselected.tsv").read_text().splitlines()[1:]
    )
    assert set(certified[1:]) <= set(kept)  # every row of the first selection is still somewhere
    again = start(tmp_path, "run")
    assert again.wait(timeout=600) == 0, again.stderr.read()
    assert tsv.read_text().splitlines() == certified


POOLED = NARROWING.replace(
    'certifiers = [{ name = "cohen", n0 = 20, n = 1000, alpha = 0.01 }]',
    'certifiers = [{ name = "label_test", radii = [0.0, 0.25, 0.5], alpha = 0.01, beta = 0.01, max_samples = 4000 }]',
).replace("max_examples = 8", "max_examples = 30")


@pytest.mark.slow
def test_a_run_of_pooled_stepwise_decisions_killed_mid_way_ends_as_an_uninterrupted_one(tmp_path):
    """The label test fills each pass with many inputs' draws and writes rows as inputs are decided: a run killed
    while some are decided and others are not resumes to the uninterrupted rows (each undecided input starts its
    own stream again)."""
    (tmp_path / "pipeline.toml").write_text(POOLED)
    whole = start(tmp_path, "whole")
    assert whole.wait(timeout=600) == 0, whole.stderr.read()
    killed = start(tmp_path, "killed")
    tsv = tmp_path / "killed" / "certification.tsv"
    assert kill_when(killed, lambda: lines(tsv) >= 1 + 5), "the run finished before the kill point"
    again = start(tmp_path, "killed")
    assert again.wait(timeout=600) == 0, again.stderr.read()
    # member evaluations, like times, are each input's share of the passes it was drawn in: work, not results
    tables = {name: rows_without_times(tmp_path / name / "certification.tsv") for name in ("whole", "killed")}
    spent = tables["whole"][0].index("evaluations")
    rows = {name: sorted(r[:spent] + r[spent + 1 :] for r in table[1:]) for name, table in tables.items()}
    assert rows["killed"] == rows["whole"] and len(rows["whole"]) == 30
