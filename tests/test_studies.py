"""Studies: a pipeline file with a [sweep] runs one pipeline per point, shares trained members between points that
would train alike, resumes like a run (kill -9 included) and reports the points with the best over the sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ensemblecert import ConfigError, UserError, load_pipeline, load_study, run_study
from ensemblecert.config.sweeps import sweep_points
from test_kill import kill_when, lines, rows_without_times


def test_a_grid_varies_the_last_path_fastest_and_names_points_by_their_values():
    points = sweep_points({"noise.sigma": [0.25, 0.5], "training.regularizers[0].rho1": [0.2, 1]})
    assert [p.name for p in points] == [
        "sigma=0.25,rho1=0.2",
        "sigma=0.25,rho1=1",
        "sigma=0.5,rho1=0.2",
        "sigma=0.5,rho1=1",
    ]
    assert points[1].settings == (("noise.sigma", 0.25), ("training.regularizers[0].rho1", 1))
    zipped = sweep_points({"mode": "zip", "noise.sigma": [0.25, 0.5], "seed": [1, 2]})
    assert [p.name for p in zipped] == ["sigma=0.25,seed=1", "sigma=0.5,seed=2"]


def test_named_choices_set_several_settings_together():
    base = {
        "gaussian": {"training.start_from": ["runs/g"]},
        "smoothadv": {"training.start_from": ["runs/s"], "training.loss.name": "smoothadv"},
    }
    points = sweep_points({"noise.sigma": [0.25, 0.5], "base": base})
    assert [p.name for p in points] == [
        "sigma=0.25,base=gaussian",
        "sigma=0.25,base=smoothadv",
        "sigma=0.5,base=gaussian",
        "sigma=0.5,base=smoothadv",
    ]
    assert points[3].settings == (
        ("noise.sigma", 0.5),
        ("training.start_from", ["runs/s"]),
        ("training.loss.name", "smoothadv"),
    )
    zipped = sweep_points({"mode": "zip", "base": base, "seed": [1, 2]})
    assert [p.name for p in zipped] == ["base=gaussian,seed=1", "base=smoothadv,seed=2"]


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"mode": "random", "seed": [1]}, "sweep.mode: must be one of grid, zip"),
        ({"seed": []}, 'sweep."seed": expected a non-empty list'),
        ({"mode": "zip", "seed": [1, 2], "noise.sigma": [0.5]}, "zip needs lists of one length"),
        ({"output": ["a", "b"]}, "cannot be swept"),
        ({}, "sweeps nothing"),
        ({"base": {"a": 1}}, r'sweep."base".a: expected a table of setting paths'),
        ({"seed": [1], "base": {"a": {"seed": 2}}}, r'sweep."base": seed is already swept by sweep."seed"'),
        ({"base": {"a": {"output": "x"}}}, "output cannot be swept"),
    ],
)
def test_bad_sweeps_are_refused_at_their_path(sweep, message):
    with pytest.raises(ConfigError, match=message):
        sweep_points(sweep)


def test_every_point_is_checked_before_any_work(tiny_pipeline):
    tiny_pipeline["sweep"] = {"training.epochs": [1, 0]}
    with pytest.raises(ConfigError, match=r"point epochs=0: training\.epochs: must be >= 1"):
        load_study(tiny_pipeline)
    with pytest.raises(UserError, match=r"has a \[sweep\] table, so it is a study"):
        load_pipeline(tiny_pipeline)


def test_points_that_train_alike_share_their_members(tiny_pipeline, tmp_path):
    tiny_pipeline["output"] = str(tmp_path / "study")
    tiny_pipeline["certification"]["max_examples"] = 4
    tiny_pipeline["sweep"] = {
        "training.lr": [0.1, 0.05],  # two trainings ...
        "certification.certifiers[0].alpha": [0.01, 0.001, 0.0001],  # ... each certified three ways
    }
    study = load_study(tiny_pipeline)
    assert study.trainings == 2 and study.trains_with == (0, 0, 0, 3, 3, 3)
    results = run_study(study)
    trained = sorted(p.parent.name for p in (tmp_path / "study").glob("*/train_log.json"))
    assert trained == sorted(["lr=0.1,alpha=0.01", "lr=0.05,alpha=0.01"])  # the first point of each training
    for i, result in enumerate(results):
        leader = results[study.trains_with[i]]
        mine, theirs = result.ensemble.state_dict(), leader.ensemble.state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
        assert len(result.results) == 4
    # a smaller alpha certifies no larger radius on the same members and draws
    radii = [[r.outcomes["cohen"].certificate.radius for r in res.results] for res in results[:3]]
    assert all(a >= b >= c for a, b, c in zip(*radii))
    for point, result in zip(study.points, results):  # each point ran with its own settings, followers included
        saved = json.loads((result.output / "pipeline.json").read_text())
        assert (
            saved["certification"]["certifiers"][0]["alpha"]
            == dict(point.settings)["certification.certifiers[0].alpha"]
        )
        assert saved["training"]["lr"] == dict(point.settings)["training.lr"]
    listing = json.loads((tmp_path / "study" / "study.json").read_text())
    assert [p["trains_with"] for p in listing["points"]][:3] == ["lr=0.1,alpha=0.01"] * 3
    report = (tmp_path / "study" / "report.md").read_text()
    assert "| best over the sweep | cohen |" in report and report.count("| lr=") == 6


STUDY = """\
seed = 2
device = "cpu"
output = "study"

[ensemble]
members = 2
model = { name = "mlp", hidden = [64] }

[training]
epochs = 4
batch_size = 128
lr = 0.1

[certification]
certifiers = [{ name = "cohen", n0 = 20, n = 2000, alpha = 0.01 }]
batch_size = 500
skip = 12
radii = [0.0, 0.25]

[sweep]
"training.epochs" = [4, 5]
"certification.certifiers[0].alpha" = [0.01, 0.001]
"""


@pytest.mark.slow
def test_a_study_killed_at_any_point_resumes_to_the_uninterrupted_result(tmp_path):
    (tmp_path / "study.toml").write_text(STUDY)

    def start(out: str, *more: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "ensemblecert", "run", "study.toml", "--output", out, "--quiet", *more],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    whole = start("whole")
    assert whole.wait(timeout=600) == 0, whole.stderr.read()
    names = [p["name"] for p in json.loads((tmp_path / "whole" / "study.json").read_text())["points"]]
    out = tmp_path / "killed"
    kill_points = [  # during the first point's training, the second point's certification, the fourth's
        lambda: (out / names[0] / "checkpoints" / "train_state.pt").exists(),
        lambda: lines(out / names[1] / "certification.tsv") >= 4,
        lambda: lines(out / names[3] / "certification.tsv") >= 4,
    ]
    for ready in kill_points:
        assert kill_when(start("killed"), ready), "the study finished before the kill point"
    proc = start("killed")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    for name in names:
        got, expected = out / name / "certification.tsv", tmp_path / "whole" / name / "certification.tsv"
        assert rows_without_times(got) == rows_without_times(expected), name
    assert sorted(p.parent.name for p in out.glob("*/train_log.json")) == sorted(
        p.parent.name for p in (tmp_path / "whole").glob("*/train_log.json")
    )
    assert len(list(out.glob("*/train_log.json"))) == 2  # two trainings for four points

    # two points at a time, each in a process of its own: killed in its first points, the study's process takes its
    # points with it (a rerun is not refused for a directory in use) and resumes to the same rows
    out = tmp_path / "parallel"
    assert kill_when(start("parallel", "--jobs", "2"), lambda: lines(out / names[0] / "certification.tsv") >= 2)
    proc = start("parallel", "--jobs", "2")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    for name in names:
        got, expected = out / name / "certification.tsv", tmp_path / "whole" / name / "certification.tsv"
        assert rows_without_times(got) == rows_without_times(expected), name
    assert len(list(out.glob("*/train_log.json"))) == 2
    assert "certify" in (out / names[1] / "log.txt").read_text()  # each point's messages in its folder


def test_report_of_a_study_folder(tmp_path, cli):
    tiny = {
        "seed": 1,
        "device": "cpu",
        "output": str(tmp_path / "s"),
        "ensemble": {"members": 2, "model": {"name": "mlp", "hidden": [16]}},
        "training": {"epochs": 1, "batch_size": 128},
        "certification": {"certifiers": [{"name": "cohen", "n0": 10, "n": 100}], "max_examples": 2},
        "sweep": {"certification.certifiers[0].n": [100, 200]},
    }
    run_study(load_study(tiny))
    proc = cli("report", str(tmp_path / "s"), "-o", str(tmp_path / "rep"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| n=100 | cohen |" in text and "| n=200 | cohen |" in text and "best over the sweep" in text
    assert Path(tmp_path / "rep" / "report.tex").exists()
