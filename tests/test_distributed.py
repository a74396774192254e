"""Runs across processes (torchrun, gloo on the CPU): sharded certification merged by rank 0 equals a single
process's, interrupted multi-process runs resume, and data-parallel training gives the members one process trains."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from ensemblecert import Certificate
from ensemblecert.distributed import SINGLE, World, join
from ensemblecert.smoothing.results import ExampleResult, Outcome, merge_results, read_results

PIPELINE = """
seed = 5
device = "cpu"

[ensemble]
members = 2
model = { name = "mlp", hidden = [32] }

[training]
epochs = 2
batch_size = 128

[certification]
certifiers = [{ name = "cohen", n0 = 20, n = 1500 }]
batch_size = 200
skip = 7
"""


def torchrun(workdir: Path, *args: str, processes: int = 2, wait: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "ensemblecert",
        "run",
        "pipeline.toml",
        "--quiet",
        *args,
    ]
    if not wait:
        return subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def single(workdir: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ensemblecert", "run", "pipeline.toml", "--quiet", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def rows(path: Path) -> list[list[str]]:
    table = list(csv.reader(path.read_text().splitlines(), delimiter="\t"))
    keep = [i for i, name in enumerate(table[0]) if name != "time"]
    return [[row[i] for i in keep] for row in table]


def summary(out: Path) -> dict:
    data = json.loads((out / "certification.json").read_text())
    for certifier in data["certifiers"].values():
        certifier.pop("mean_seconds")
    return {k: v for k, v in data.items() if k != "tsv"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A pipeline directory whose members are trained (single process) and certified by one process."""
    work = tmp_path_factory.mktemp("dist")
    (work / "pipeline.toml").write_text(PIPELINE)
    single(work, "--output", "one")
    return work


def with_members_of(work: Path, out: str) -> Path:
    (work / out / "checkpoints").mkdir(parents=True)
    for path in (work / "one" / "checkpoints").glob("member_*.pt"):
        (work / out / "checkpoints" / path.name).write_bytes(path.read_bytes())
    return work / out


def test_world_of_one_shards_nothing_and_skips_collectives():
    assert SINGLE.main and not SINGLE.distributed and SINGLE.shard([1, 2, 3]) == [1, 2, 3]
    assert World(rank=1, size=3).shard(list(range(8))) == [1, 4, 7]
    t = torch.ones(3)
    SINGLE.average_([t])
    SINGLE.broadcast_([t])
    assert torch.equal(t, torch.ones(3)) and SINGLE.any(True) and not SINGLE.any(False)
    assert join("cpu") == SINGLE  # no torchrun variables: no process group


def result(index: int, radius: float) -> ExampleResult:
    cert = Certificate(prediction=1, radius=radius, samples=10)
    return ExampleResult(index=index, label=1, outcomes={"cohen": Outcome(cert, 0.1, None, None)})


def test_merge_keeps_every_record_once_in_index_order(tmp_path):
    from ensemblecert.smoothing.results import ResultsWriter

    def write(name, results):
        with ResultsWriter(tmp_path / name, ["cohen"]) as writer:
            for r in results:
                writer.write(r)
        return tmp_path / name

    merged_before = write("certification.tsv", [result(0, 0.5)])
    parts = [
        write("certification.part-0.tsv", [result(4, 0.1), result(2, 0.2)]),
        write("certification.part-1.tsv", [result(3, 0.3), result(0, 0.5)]),
    ]
    merged = merge_results(parts, merged_before, ["cohen"])
    assert [r.index for r in merged] == [0, 2, 3, 4]
    assert [r.index for r in read_results(merged_before, ["cohen"])] == [0, 2, 3, 4]
    assert not any(p.exists() for p in parts)


def test_two_processes_certify_what_one_does(trained):
    out = with_members_of(trained, "two")
    torchrun(trained, "--output", "two")
    assert rows(out / "certification.tsv") == rows(trained / "one" / "certification.tsv")
    assert summary(out) == summary(trained / "one")
    assert not list(out.glob("certification.part-*"))
    assert json.loads((out / "certification.meta.json").read_text())["engine"]["processes"] == 2


def test_a_multi_process_run_resumes_from_its_parts(trained):
    out = with_members_of(trained, "resumed")
    torchrun(trained, "--output", "resumed", "--set", "certification.max_examples=10")
    assert len(rows(out / "certification.tsv")) == 11
    # an earlier run killed before merging left a part behind: its records count, none is certified twice
    tsv = out / "certification.tsv"
    lines = tsv.read_text().splitlines(keepends=True)
    tsv.write_text("".join(lines[:6]))
    (out / "certification.part-1.tsv").write_text("".join(lines[:1] + lines[6:]))
    torchrun(trained, "--output", "resumed", processes=3)
    assert rows(out / "certification.tsv") == rows(trained / "one" / "certification.tsv")
    assert summary(out) == summary(trained / "one")
    # every record was certified once: those of the first run kept their times
    assert tsv.read_text().splitlines()[1:11] == [line.rstrip("\n") for line in lines[1:11]]


def test_two_processes_train_and_certify_what_one_does(trained):
    """The digits pipeline at reduced size trained and certified by two processes: the members of one process,
    up to the rounding of the all-reduce, and the same records."""
    torchrun(trained, "--output", "trained-two")
    for path in sorted((trained / "one" / "checkpoints").glob("member_*.pt")):
        alone = torch.load(path, weights_only=True)["state_dict"]
        two = torch.load(trained / "trained-two" / "checkpoints" / path.name, weights_only=True)["state_dict"]
        for key, value in alone.items():
            assert torch.allclose(two[key], value, rtol=0, atol=1e-5), (path.name, key)
    assert rows(trained / "trained-two" / "certification.tsv") == rows(trained / "one" / "certification.tsv")
    assert summary(trained / "trained-two") == summary(trained / "one")


def test_a_mini_batch_smaller_than_the_processes_is_refused_on_every_rank(trained):
    """Every rank stops with the same message (none waits for a peer at a collective that never comes)."""
    done = subprocess.run(
        [sys.executable, "-m", "ensemblecert", "run", "pipeline.toml", "--quiet", "--processes", "2", "--output",
         "tiny-batches", "--set", "training.batch_size=1"],
        cwd=trained, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "training.batch_size (1)" in done.stderr and "one input per process (2)" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_killed_multi_process_run_resumes(trained):
    out = with_members_of(trained, "killed")
    proc = torchrun(trained, "--output", "killed", "--set", "certification.batch_size=20", wait=False)
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(p.read_bytes().count(b"\n") for p in out.glob("certification.part-*.tsv")) >= 6:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode != 0, "the run finished before it could be killed"
    assert list(out.glob("certification.part-*.tsv"))
    torchrun(trained, "--output", "killed", "--set", "certification.batch_size=20")
    assert rows(out / "certification.tsv") == rows(trained / "one" / "certification.tsv")


TRAIN_SCRIPT = """
import sys, torch
from ensemblecert import DataSplits, DataInfo, build_member
from ensemblecert.config import TrainingConfig
from ensemblecert.distributed import join, leave
from ensemblecert.plugins.attacks import PGD
from ensemblecert.plugins.drt import DRT
from ensemblecert.plugins.gaussian_augmentation import GaussianAugmentation
from ensemblecert.plugins.models import MLP
from ensemblecert.plugins.noise import GaussianNoise
from ensemblecert.plugins.smoothadv import SmoothAdv
from ensemblecert.training import train_ensemble

out, loss = sys.argv[1], sys.argv[2]
g = torch.Generator().manual_seed(0)
x = torch.rand(100, 1, 8, 8, generator=g)  # mini-batches of 33, 33, 33 and 1: uneven shards and an empty one
y = torch.randint(0, 4, (100,), generator=g)
data = DataSplits(train=torch.utils.data.TensorDataset(x, y), test=None, info=DataInfo((1, 8, 8), 4, (0.5,), (0.25,)))
members = [build_member(MLP(hidden=[16]), data.info, s) for s in range(2)]
world = join("cpu")
attack = PGD(norm="l2", epsilon=1.0, steps=4, step_size=0.5, random_start=False)
config = TrainingConfig(
    epochs=2, batch_size=33, copies=2, loss=SmoothAdv(attack=attack) if loss == "smoothadv" else GaussianAugmentation(),
    regularizers=[DRT(rho1=0.5, rho2=1.0)],
)
train_ensemble(members, data, config, noise=GaussianNoise(0.5), seed=0,
               device=torch.device("cpu"), world=world)
torch.save([m.state_dict() for m in members], out + f"/rank{world.rank}.pt")
leave(world)
"""


@pytest.mark.parametrize("loss", ["gaussian", "smoothadv"])
def test_data_parallel_training_equals_one_process(tmp_path, loss):
    """Two ranks on uneven shards of every mini-batch (one empty), with the noise of their rows of the whole
    mini-batch and gradients weighted by their share, take the steps one process takes: DRT with Gaussian
    augmentation and with SmoothAdv (the attack on each shard alone)."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(TRAIN_SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for processes in (1, 2):
        (tmp_path / str(processes)).mkdir()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={processes}",
                str(script),
                str(tmp_path / str(processes)),
                loss,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    alone = torch.load(tmp_path / "1" / "rank0.pt", weights_only=True)
    ranks = [torch.load(tmp_path / "2" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for member in range(2):
        for key, value in alone[member].items():
            assert torch.equal(ranks[0][member][key], ranks[1][member][key])  # the ranks agree exactly
            assert torch.allclose(ranks[0][member][key], value, rtol=0, atol=1e-5), key  # and step like one process
    initial = build_state()
    assert any(not torch.equal(alone[0][k], initial[k]) for k in initial)  # training moved the weights


def build_state():
    from ensemblecert import DataInfo, build_member
    from ensemblecert.plugins.models import MLP

    return build_member(MLP(hidden=[16]), DataInfo((1, 8, 8), 4, (0.5,), (0.25,)), 0).state_dict()
