from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ensemblecert.running.cli import wait_politely

wait_politely()  # before torch loads its OpenMP runtime: the suite's own threads sleep soon on a shared machine

REPO = Path(__file__).resolve().parents[1]

# A third-party plugin package: a certifier registered through the `ensemblecert` entry-point group,
# exactly as an installed package would declare it (a module plus a dist-info with entry_points.txt).
THIRD_PARTY_MODULE = '''
import attrs
from ensemblecert import ABSTAIN, Certificate, Certifier, hookimpl
from ensemblecert.validators import in_range


@attrs.frozen
class MajorityVote(Certifier):
    """Reports the majority class of n draws and never certifies a radius (a test plugin)."""

    n: int = attrs.field(default=50, validator=in_range(1))

    def certify(self, smoothed, x, generator=None):
        tally = smoothed.tally(x, self.n, generator=generator)
        return Certificate(tally.top, 0.0, self.n)


@hookimpl
def register_certifiers(register):
    register("majority", MajorityVote)
'''


@pytest.fixture(scope="session")
def third_party(tmp_path_factory) -> Path:
    """A directory holding an 'installed' third-party plugin distribution; put it on sys.path / PYTHONPATH."""
    root = tmp_path_factory.mktemp("site")
    (root / "ec_majority.py").write_text(textwrap.dedent(THIRD_PARTY_MODULE))
    info = root / "ec_majority-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ec-majority\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[ensemblecert]\nmajority = ec_majority\n")
    return root


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    """Every test sees ensemblecert's own entry points only, whatever else is installed (see
    ``ensemblecert.manager.DISABLE_AUTOLOAD``); a test of third-party loading asks for :func:`autoload`."""
    monkeypatch.setenv("ENSEMBLECERT_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture
def autoload(monkeypatch):
    """Installed third-party plugins load, as they do for users."""
    monkeypatch.delenv("ENSEMBLECERT_DISABLE_PLUGIN_AUTOLOAD", raising=False)


@pytest.fixture
def on_path(monkeypatch):
    """Put directories on sys.path for this test only."""

    def add(path: Path) -> None:
        monkeypatch.syspath_prepend(str(path))

    return add


class Scripted:
    """A smoothed classifier that answers each tally with the next scripted class counts (for unit tests of
    certifiers' decisions); records the sample sizes it was asked for."""

    num_classes = 3

    def __init__(self, *counts, sigma=0.5):
        import torch

        from ensemblecert.plugins.noise import GaussianNoise

        self.script = [torch.tensor(c) for c in counts]
        self.noise = GaussianNoise(sigma)
        self.asked = []

    def tally(self, x, n, *, generator=None, softmax=False, members=False):
        from ensemblecert import Tally

        counts = self.script.pop(0)
        assert int(counts.sum()) == n
        self.asked.append(n)
        return Tally(n=n, counts=counts, evaluations=n)


def write_idx(path: Path, array) -> None:
    """IDX format: big-endian magic (0, 0, dtype 0x08 = ubyte, ndim), the dimensions, then the bytes."""
    import struct

    import numpy as np

    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.asarray(array).astype(np.uint8).tobytes())


def write_mnist(root: Path, *, seed: int = 0, train: int = 6, test: int = 4) -> Path:
    """A tiny MNIST in the real on-disk format (``<root>/MNIST/raw``): random images, labels cycling through 0-9."""
    import numpy as np

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", train), ("t10k", test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, size=(n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


def run_cli(*args: str, cwd: Path | None = None, extra_path: Path | None = None, timeout: float = 600):
    env = dict(os.environ)
    env["COLUMNS"] = "200"
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "ensemblecert", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_main(*args: str, cwd: Path | None = None, extra_path: Path | None = None, timeout: float = 600):
    """The command line run in this process (``main``), as :func:`run_cli` runs it in a new one, without the second
    or two a new process spends importing torch: its exit status and what it printed. A call that needs another
    import path (``extra_path``) gets a process of its own."""
    import contextlib
    import io

    from ensemblecert.running.cli import main

    if extra_path is not None:
        return run_cli(*args, cwd=cwd, extra_path=extra_path, timeout=timeout)
    out, err = io.StringIO(), io.StringIO()
    here, columns = os.getcwd(), os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "200"
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's --help and usage errors
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(here)
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    return subprocess.CompletedProcess(["ensemblecert", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    """The command line, in this process (:func:`run_main`); tests that need a process of its own (a kill, start-up
    without torch, torchrun) call :func:`run_cli`."""
    return run_main


@pytest.fixture
def tiny_pipeline(tmp_path) -> dict:
    """:func:`tiny_config` in the test's own folder."""
    return tiny_config(tmp_path / "run")


def tiny_config(output: Path) -> dict:
    """A fast digits pipeline as a dict (2 members, 2 epochs, small n, 12 test inputs) writing to ``output``."""
    return {
        "seed": 1,
        "device": "cpu",
        "output": str(output),
        "data": {"name": "digits"},
        "noise": {"name": "gaussian", "sigma": 0.25},
        "ensemble": {"members": 2, "model": {"name": "mlp", "hidden": [32]}},
        "training": {"epochs": 2, "batch_size": 128, "lr": 0.1},
        "certification": {
            "certifiers": [{"name": "cohen", "n0": 20, "n": 200, "alpha": 0.01}],
            "batch_size": 100,
            "skip": 30,
            "radii": [0.0, 0.25],
        },
    }
