"""A third-party plugin package (examples/plugin_package) installs with pip, registers through the entry point the
built-ins use, is listed, certifies from a TOML file beside the built-ins, and passes the soundness harness."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, THIRD_PARTY_MODULE

PACKAGE = REPO / "examples" / "plugin_package"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The package installed with pip into a folder of its own (built from a copy, so the checkout stays clean)."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "source"
    shutil.copytree(PACKAGE, source)
    target = root / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def cli(site, *args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "ensemblecert", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_installed_package_is_listed_under_its_entry_point(site, tmp_path, autoload):
    proc = cli(site, "plugins", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (row,) = [line for line in proc.stdout.splitlines() if " hoeffding " in line]
    assert row.count("hoeffding") >= 2  # the component and the plugin (its entry point) that registered it


def test_a_pipeline_certifies_with_it_beside_the_built_ins(site, tmp_path, autoload):
    proc = cli(
        site,
        "run",
        str(PACKAGE / "hoeffding.toml"),
        "--output",
        "out",
        "--set",
        "training.epochs=2",
        "--set",
        "certification.max_examples=6",
        "--set",
        "certification.certifiers[0].n=1000",
        "--set",
        "certification.certifiers[1].n=1000",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "certification.tsv").open(), delimiter="\t"))
    assert len(rows) == 6
    for row in rows:  # the same draws: Hoeffding's bound is looser than Clopper-Pearson's
        assert float(row["hoeffding:radius"]) <= float(row["cohen:radius"]) + 1e-12
        assert row["hoeffding:samples"] == "1100"
    assert any(float(row["hoeffding:radius"]) > 0 for row in rows)


def test_it_passes_the_soundness_harness(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    from ensemblecert_hoeffding import HoeffdingCertify

    from ensemblecert.plugins.noise import GaussianNoise
    from ensemblecert.testing import check_soundness

    report = check_soundness(HoeffdingCertify(n0=50, n=500, alpha=0.05), GaussianNoise(0.5), trials=200)
    assert report.sound, str(report)
    assert report.certified > 100


def test_a_plugin_module_beside_the_pipeline_file_is_found_from_any_working_directory(tmp_path):
    """The `ensemblecert` command (no cwd on the import path) finds `plugins = ["my_local"]` beside the pipeline
    file, as pytest finds a conftest.py beside the tests, run from another directory."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "my_local_majority.py").write_text(
        textwrap.dedent(THIRD_PARTY_MODULE).replace('"majority"', '"local_majority"')
    )
    (folder / "p.toml").write_text(
        'plugins = ["my_local_majority"]\n[certification]\ncertifiers = [{ name = "local_majority" }]\n'
    )
    script = Path(sys.executable).parent / "ensemblecert"
    proc = subprocess.run(
        [str(script), "validate", str(folder / "p.toml")], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "local_majority" in proc.stdout
