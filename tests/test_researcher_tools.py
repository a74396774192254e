"""A researcher's daily tools: results as data frames, runs in TensorBoard, studies on a cluster (submitit)."""

from __future__ import annotations

import copy
import json

import pytest

import ensemblecert as ec


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny run with two certifiers, TensorBoard on, finished."""
    root = tmp_path_factory.mktemp("tools")
    config = {
        "seed": 1,
        "device": "cpu",
        "output": str(root / "run"),
        "ensemble": {"members": 2, "model": {"name": "mlp", "hidden": [32]}},
        "training": {"epochs": 2, "batch_size": 128, "lr": 0.1},
        "certification": {
            "certifiers": [{"name": "cohen", "n0": 20, "n": 200, "alpha": 0.01}, {"name": "cohen", "n": 400}],
            "batch_size": 200,
            "skip": 30,
            "max_examples": 5,
            "radii": [0.0, 0.25],
        },
        "logging": {"tensorboard": True},
    }
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
