"""A researcher's daily tools: results as data frames, runs in TensorBoard, studies on a cluster (submitit)."""

from __future__ import annotations

import copy
import json

import pytest

import ensemblecert as ec
from conftest import tiny_config
from test_kill import lines, rows_without_times


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny run with two certifiers, TensorBoard on, finished."""
    config = tiny_config(tmp_path_factory.mktemp("tools") / "run")
    config["certification"].update(
        certifiers=[{"name": "cohen", "n0": 20, "n": 200, "alpha": 0.01}, {"name": "cohen", "n": 400}],
        batch_size=200,
        max_examples=5,
    )
    config["logging"] = {"tensorboard": True}
    return config, ec.run(config)


def test_a_run_as_data_frames(finished):
    config, result = finished
    rows = ec.results_frame(result.output)
    labels = list(result.summary.certifiers)
    assert len(rows) == 5 * len(labels) and set(rows["certifier"]) == set(labels)
    for r in result.results:
        for label, outcome in r.outcomes.items():
            row = rows[(rows["index"] == r.index) & (rows["certifier"] == label)].iloc[0]
            assert row["radius"] == pytest.approx(outcome.certificate.radius, abs=1e-6)
            assert row["prediction"] == outcome.certificate.prediction and row["label"] == r.label
            assert row["samples"] == outcome.certificate.samples and row["classifier"] == "hard"
            assert bool(row["correct"]) == (outcome.certificate.prediction == r.label)
    assert "p_lower" in rows.columns
    summary = ec.summary_frame(result.output)
    assert len(summary) == len(labels) * 2
    for label, s in result.summary.certifiers.items():
        for radius, accuracy in s.certified_accuracy.items():
            row = summary[(summary["certifier"] == label) & (summary["radius"] == radius)].iloc[0]
            assert row["certified_accuracy"] == pytest.approx(accuracy) and row["acr"] == pytest.approx(s.acr)


def test_tensorboard_holds_training_certification_and_results(finished):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config, result = finished
    events = EventAccumulator(str(result.output / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    log = json.loads((result.output / "train_log.json").read_text())["epochs"]
    for key in ("loss", "ce", "lr", "member 0 ce", "member 1 ce"):
        values = events.Scalars(f"train/{key}")
        assert [v.step for v in values] == [1, 2]
        assert [v.value for v in values] == pytest.approx([e[key] for e in log], rel=1e-6)
    assert [v.step for v in events.Scalars("certify/inputs")] == [1, 2, 3, 4, 5]
    for label, s in result.summary.certifiers.items():
        assert events.Scalars(f"certified/{label}/r=0.25")[0].value == pytest.approx(s.certified_accuracy[0.25])
        assert events.Scalars(f"certified/{label}/acr")[0].value == pytest.approx(s.acr, rel=1e-6)
        assert f"certified/{label}/samples_per_input" in scalars


def test_tensorboard_is_no_part_of_any_fingerprint(finished, tmp_path):
    config, result = finished
    again = ec.run({**copy.deepcopy(config), "logging": {"tensorboard": False}})
    assert set(again.stages.values()) <= {"resumed", "disabled"}


def test_a_study_writes_one_tensorboard_run_per_point_with_its_settings(tiny_pipeline, tmp_path):
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    tiny_pipeline.update(output=str(tmp_path / "study"), logging={"tensorboard": True})
    tiny_pipeline["certification"]["max_examples"] = 3
    tiny_pipeline["sweep"] = {"certification.certifiers[0].alpha": [0.01, 0.001]}
    ec.run_study(ec.load_study(tiny_pipeline))
    for name in ("alpha=0.01", "alpha=0.001"):
        events = EventAccumulator(str(tmp_path / "study" / name / "tensorboard"))
        events.Reload()
        start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = HParamsPluginData.FromString(start).session_start_info.hparams  # what the HPARAMS tab shows
        assert hparams["certification.certifiers[0].alpha"].number_value == float(name.split("=")[1])
        assert "hparam/cohen/acr" in events.Tags()["tensors"]
    frame = ec.results_frame(tmp_path / "study")
    assert sorted(set(frame["certification.certifiers[0].alpha"])) == [0.001, 0.01] and len(frame) == 6


SHARDED = """\
seed = 3
device = "cpu"
output = "run"

[ensemble]
members = 2
model = { name = "mlp", hidden = [32] }

[training]
epochs = 2
batch_size = 128
lr = 0.1

[certification]
certifiers = [{ name = "cohen", n0 = 50, n = 30000, alpha = 0.01 }]
batch_size = 1000
skip = 24
max_examples = 12
radii = [0.0, 0.25]

[launcher]
shards = 2
"""


@pytest.mark.slow
def test_a_sharded_certification_killed_mid_run_resumes_to_the_single_process_result(tmp_path):
    """``--launcher local`` runs the jobs SLURM would (submitit's local executor): a job that trains, two shards that
    certify every other input, a job that merges. Killed while the shards run, the same command finishes the work
    and the rows equal one process's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "p.toml").write_text(SHARDED)
    command = [sys.executable, "-m", "ensemblecert", "run", "p.toml", "--launcher", "local", "--quiet"]
    first = subprocess.Popen(command, cwd=tmp_path, start_new_session=True, stderr=subprocess.DEVNULL)
    parts = tmp_path / "run"
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None:
        written = [p for p in parts.glob("certification.part-*.tsv") if lines(p) > 1]
        if written:
            break
        time.sleep(0.2)
    assert first.poll() is None, "the run ended before a shard had certified an input"
    os.killpg(first.pid, signal.SIGKILL)  # the submitting process and every job it started
    first.wait()
    time.sleep(0.5)
    assert not (parts / "certification.tsv").exists()  # killed before the merge
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ec.run(str(tmp_path / "p.toml"), overrides=[f"output={json.dumps(str(tmp_path / 'reference'))}"])
    got = rows_without_times(parts / "certification.tsv")
    assert len(got) == 13 and got == rows_without_times(tmp_path / "reference" / "certification.tsv")  # a header
    assert len(list((parts / "jobs").glob("*_log.out"))) >= 5  # the jobs of both commands, logged


def test_a_study_runs_its_points_as_jobs_followers_after_their_leader(tiny_pipeline, tmp_path, monkeypatch):
    tiny_pipeline.update(output=str(tmp_path / "study"))
    tiny_pipeline["certification"]["max_examples"] = 3
    tiny_pipeline["sweep"] = {"certification.certifiers[0].alpha": [0.01, 0.001]}  # one trains, one follows
    study = ec.load_study(tiny_pipeline)
    results = ec.run_study(study, launcher="local")
    jobs = sorted((tmp_path / "study" / "jobs").glob("*_log.out"))
    assert len(jobs) == 2  # each point ran as a job
    assert [len(r.results) for r in results] == [3, 3]
    assert all(set(r.stages.values()) <= {"resumed", "disabled", "unchecked"} for r in results)  # collected
    leader, follower = (json.loads((r.output / "stages.json").read_text()) for r in results)
    assert "members" in leader and (tmp_path / "study" / "alpha=0.001" / "certification.tsv").exists()


def test_launcher_mistakes_get_one_clear_message(tmp_path, capsys):
    from ensemblecert.running.cli import main

    (tmp_path / "p.toml").write_text(SHARDED.replace("[certification]", "[certification]\nenabled = false"))
    assert main(["run", str(tmp_path / "p.toml"), "--launcher", "local", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "launcher.shards" in err and "Traceback" not in err and not (tmp_path / "x" / "jobs").exists()
    assert main(["run", str(tmp_path / "p.toml"), "--launcher", "local", "--processes", "2"]) == 2
    assert "--launcher and --processes" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "p.toml"), "--set", "launcher.shards=0"]) == 2
    assert "launcher.shards" in capsys.readouterr().err
