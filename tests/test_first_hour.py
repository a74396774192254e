"""What a new user meets first: output that survives pipes and logs, labels that say which entry is which, time
split fairly between certifiers that share draws, files with the user's permissions, and a README that works when
followed from top to bottom."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from conftest import REPO
from ensemblecert import ConfigError, load_pipeline, run
from ensemblecert.checkpoints import write_json
from ensemblecert.config.labels import component_labels
from ensemblecert.running import terminal


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The command as a shell pipes it: stdout and stderr are not terminals and no width is set."""
    base = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run(
        [sys.executable, "-m", "ensemblecert", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


# ------------------------------------------------------------------------------------------ pipes


def test_a_piped_listing_keeps_whole_names_on_one_line(tmp_path):
    proc = cli("plugins", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if re.search(r"\bcohen_two_sided\b", line)]
    assert len(rows) == 1, proc.stdout[:2000]  # `ensemblecert plugins | grep -w cohen_two_sided` finds it
    assert "ensemblecert.plugins.simplex" in rows[0] or "simplex" in rows[0]  # the row is not wrapped
    assert "…" not in proc.stdout


def test_a_piped_results_table_shows_whole_labels(tmp_path, tiny_pipeline):
    tiny_pipeline["certification"]["certifiers"] = [
        {"name": "cohen", "n0": 20, "n": 200, "alpha": 0.01},
        {"name": "cohen", "n0": 20, "n": 400, "alpha": 0.01, "label": "a rather long label that a narrow table cuts"},
    ]
    tiny_pipeline["certification"]["max_examples"] = 2
    toml = tmp_path / "p.toml"
    toml.write_text(_toml(tiny_pipeline))
    proc = cli("run", str(toml), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "a rather long label that a narrow table cuts" in proc.stdout
    assert re.search(r"│ cohen +│", proc.stdout) and "…" not in proc.stdout


def _toml(data: dict, prefix: str = "") -> str:
    """A pipeline dict as TOML (tables and inline values; enough for the tiny pipeline)."""

    def inline(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {inline(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(inline(x) for x in v) + "]"
        return json.dumps(v)

    top = [f"{k} = {inline(v)}" for k, v in data.items() if not isinstance(v, dict) or "name" in v]
    tables = [
        f"[{k}]\n" + "\n".join(f"{a} = {inline(b)}" for a, b in v.items())
        for k, v in data.items()
        if isinstance(v, dict) and "name" not in v
    ]
    return "\n".join(top) + "\n\n" + "\n\n".join(tables) + "\n"


# ------------------------------------------------------------------------------------------ logs


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_log_progress_prints_at_its_interval_and_when_done(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(terminal.time, "monotonic", clock)
    out = Console(record=True, width=200, file=open(os.devnull, "w"))
    with terminal.LogProgress(out, interval=10) as bar:
        task = bar.add_task("certify", total=100, status="")
        for i in range(100):
            clock.now += 1.0
            bar.update(task, advance=1, status=f"accuracy {i}%")
    lines = out.export_text().splitlines()
    # one line every 10 s of 100 s, then the last one
    assert 9 <= len(lines) <= 11, lines
    assert lines[0].startswith("certify: 10/100 (10%), 1/s, about 90 s left, accuracy 9%")
    assert lines[-1].startswith("certify: 100/100 (100%)")


def test_a_log_shows_progress_during_every_stage(tmp_path, tiny_pipeline):
    tiny_pipeline["evaluation"] = {"attacks": [{"name": "fgsm", "epsilon": 0.1}], "max_examples": 4, "batch_size": 2}
    toml = tmp_path / "p.toml"
    toml.write_text(_toml(tiny_pipeline))
    proc = cli("run", str(toml), cwd=tmp_path, env={terminal.INTERVAL_VARIABLE: "0"})
    assert proc.returncode == 0, proc.stderr
    log = proc.stderr
    assert re.search(r"^epoch 1/2: ", log, re.M) and re.search(r"^epoch 2/2: ", log, re.M), log  # every epoch
    assert re.search(r"^batch: \d+/\d+", log, re.M), log
    assert re.search(r"^certify: 1/12 \(8%\)", log, re.M), log
    assert re.search(r"^evaluate: 2/8 \(25%\), .*we: natural", log, re.M), log
    assert "━" not in log  # no bars drawn into the log


# ------------------------------------------------------------------------------------------ labels


def test_default_labels_say_what_sets_entries_apart():
    assert component_labels([{"name": "cohen", "n": 100}]) == ["cohen"]
    assert component_labels(
        [{"name": "best", "expectation": "softmax", "n": 9}, {"name": "best", "expectation": "multinomial", "n": 9}]
    ) == ["best (softmax)", "best (multinomial)"]
    assert component_labels(
        [{"name": "cohen", "n": 1000, "alpha": 0.001}, {"name": "cohen", "n": 10000, "alpha": 0.01}, {"name": "li"}]
    ) == ["cohen (n=1000, alpha=0.001)", "cohen (n=10000, alpha=0.01)", "li"]
    assert component_labels([{"name": "cohen"}, {"name": "cohen"}]) == ["cohen #1", "cohen #2"]
    assert component_labels([{"name": "cohen", "label": "mine"}, {"name": "cohen"}]) == ["mine", "cohen"]


def test_labels_name_results_columns_and_survive_in_pipeline_json(tiny_pipeline):
    tiny_pipeline["certification"]["certifiers"] = [
        {"name": "cohen", "n0": 20, "n": 200, "alpha": 0.01, "label": "quick"},
        {"name": "cohen", "n0": 20, "n": 400, "alpha": 0.01},
    ]
    tiny_pipeline["certification"]["max_examples"] = 2
    result = run(tiny_pipeline)
    assert list(result.summary.certifiers) == ["quick", "cohen"]
    header = (result.output / "certification.tsv").read_text().splitlines()[0].split("\t")
    assert "cohen:predict" in header
    saved = json.loads((result.output / "pipeline.json").read_text())
    assert [c.get("label") for c in saved["certification"]["certifiers"]] == ["quick", None]
    # the resolved configuration loads back to the same pipeline, labels included
    again, _ = load_pipeline(saved)
    assert again.labels == {"certification.certifiers": ("quick", None)}


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("a:b", r"certification\.certifiers\[1\]\.label: 'a:b' holds ':'"),
        ("", r"certification\.certifiers\[1\]\.label: expected a non-empty string"),
        ("same", r"certification\.certifiers\[1\]\.label: 'same' already labels certification\.certifiers\[0\]"),
    ],
)
def test_bad_labels_are_refused_where_they_are(label, message):
    certifiers = [{"name": "cohen", "label": "same"}, {"name": "cohen", "label": label}]
    with pytest.raises(ConfigError, match=message):
        load_pipeline({"certification": {"certifiers": certifiers}})


# ------------------------------------------------------------------------------------------ shared time


def test_a_shared_tally_costs_each_of_its_users_an_equal_share(monkeypatch):
    """Two certifiers ask for the same tally; one draws it, the other gets it for free. Each is charged half."""
    from ensemblecert import SharedTallies
    from ensemblecert.plugins.cohen import Cohen
    from ensemblecert.plugins.noise import GaussianNoise
    from ensemblecert.smoothing import certification
    from ensemblecert.smoothing.certification import DirectSmoothing, Planned, certification_loop
    from ensemblecert.testing import LinearModel

    clock = Clock()
    monkeypatch.setattr(certification.time, "perf_counter", clock)  # the time module, as sampling sees it too
    model = LinearModel(4, seed=0)

    class Slow(torch.nn.Module):  # every forward pass takes 1 "second" of the fake clock
        def forward(self, x):
            clock.now += 1.0
            return model(x)

    from ensemblecert import MonteCarloSampler

    shared = SharedTallies(MonteCarloSampler(Slow(), GaussianNoise(0.5), num_classes=2, batch_size=10_000))
    cohen = Cohen(n0=10, n=100, alpha=0.01)
    plan = [Planned(label, DirectSmoothing(), cohen, shared) for label in ("first", "second")]
    x = model.point_at(1.0, seed=0)
    ((_, outcomes),) = list(certification_loop(plan, [0], lambda i: x, seed=0))
    # each draw (selection and estimation) is one forward pass: 2 s in all, shared by both
    assert outcomes["first"].seconds == pytest.approx(1.0)
    assert outcomes["second"].seconds == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ files


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_json_outputs_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        (tmp_path / "b.tsv").write_text("x\n")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.tsv").stat().st_mode) == 0o666 & ~umask


# ------------------------------------------------------------------------------------------ commands


def test_validate_takes_several_files_and_reports_each(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[training]\nepochs = "ten"\n')
    good = [str(p) for p in sorted((REPO / "examples").glob("*.toml"))[:3]]
    proc = cli("validate", *good, str(bad), str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert proc.returncode == 2
    assert sum(f"{p}: valid" in proc.stdout for p in good) == 3
    assert "training.epochs: expected an integer" in proc.stderr and "missing.toml" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert cli("validate", *good, cwd=tmp_path).returncode == 0


def test_a_plugin_installed_and_listed_is_registered_once():
    pipeline, registry = load_pipeline({"plugins": ["ensemblecert.plugins.cohen"]})
    assert [c.plugin for c in registry if c.kind == "certifier" and c.name == "cohen"] == ["cohen"]


def test_the_default_pipeline_describes_its_aggregator_rightly(tmp_path):
    text = cli("default", cwd=tmp_path).stdout
    assert 'aggregator = { name = "we" }' in text and "soft voting" not in text and "equal weights" in text


# ------------------------------------------------------------------------------------------ README


def readme_blocks(language: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


@pytest.mark.slow
def test_the_readme_works_from_top_to_bottom(tmp_path):
    """The README's commands and Python, in order and in one directory, at reduced sizes."""
    (tmp_path / "examples").symlink_to(REPO / "examples")
    smaller = ["--set", "training.epochs=1", "--set", "certification.max_examples=2"]
    (bash,) = readme_blocks("bash")
    assert "ensemblecert run " in bash
    proc = cli("run", *smaller, "--set", "certification.certifiers[0].n=200", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (python,) = readme_blocks("python")
    python = python.replace('"training.epochs=5"', '"training.epochs=1", "certification.max_examples=2"')
    python = python.replace('"n": 10_000', '"n": 200')
    assert "certification.max_examples=2" in python and '"n": 200' in python  # the README still says what we edit
    done = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs" / "digits" / "certification.tsv").exists()
    assert (tmp_path / "runs" / "digits-5-epochs" / "certification.tsv").exists()
    shutil.rmtree(tmp_path / "runs")
