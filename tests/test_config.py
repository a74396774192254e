"""Pipeline files: components by name, validated parameters, every problem reported with its path."""

import pytest

from ensemblecert import ConfigError, UserError, describe, load_pipeline
from ensemblecert.config import apply_overrides, default_pipeline_data


def problems(data, **kw):
    with pytest.raises(ConfigError) as info:
        load_pipeline(data, **kw)
    return info.value.problems


def test_default_pipeline_resolves():
    pipeline, registry = load_pipeline(None)
    assert type(pipeline.data).__name__ == "Digits"
    assert pipeline.ensemble.members == 3
    cfg = describe(pipeline, registry)
    assert cfg["certify"]["mechanisms"] == [{"name": "cohen", "n0": 100, "n": 10000, "alpha": 0.001}]
    assert cfg["ensemble"]["aggregator"] == {"name": "we", "weights": None}


def test_out_of_range_value_names_its_path():
    data = {"certify": {"mechanisms": [{"name": "cohen", "alpha": 1.5}]}}
    assert problems(data) == ["certify.mechanisms[0].alpha: must be in (0, 1), got 1.5"]


def test_unknown_component_lists_the_known_names():
    (msg,) = problems({"ensemble": {"aggregator": {"name": "wee"}}})
    assert msg.startswith("ensemble.aggregator.name: unknown aggregator 'wee'; did you mean 'we'?")
    assert "'mme'" in msg and "'we'" in msg and "plugins = [...]" in msg


def test_wrong_types_are_not_coerced():
    found = problems({"train": {"epochs": 2.5, "lr": "fast", "enabled": 1}})
    assert "train.epochs: expected an integer, got 2.5" in found
    assert "train.lr: expected a number, got 'fast'" in found
    assert "train.enabled: expected true or false, got 1" in found


def test_nested_leaf_path():
    (msg,) = problems({"ensemble": {"model": {"name": "mlp", "hidden": [32, "x"]}}})
    assert msg == "ensemble.model.hidden[1]: expected an integer, got 'x'"


def test_all_problems_are_collected_together():
    found = problems(
        {
            "seed": "zero",
            "noise": {"name": "gaussian", "sigma": -1.0},
            "train": {"epoch": 3},
            "certify": {"mechanisms": [{"name": "cohen", "n": 0}, {"name": "nope"}], "radii": []},
        }
    )
    assert len(found) == 6, found
    assert any(f.startswith("train.epoch: unknown setting; did you mean 'epochs'?") for f in found)
    assert "noise.sigma: must be > 0, got -1.0" in found
    assert "certify.mechanisms[0].n: must be >= 1, got 0" in found
    assert "certify.radii: must not be empty" in found
    assert "seed: expected an integer, got 'zero'" in found


def test_unknown_component_parameter():
    (msg,) = problems({"certify": {"mechanisms": [{"name": "cohen", "sigma": 0.5}]}})
    assert msg.startswith("certify.mechanisms[0].sigma: unknown setting;")
    assert "n0, n, alpha" in msg


def test_component_shorthand_and_defaults_merge():
    pipeline, _ = load_pipeline({"ensemble": {"aggregator": "mme"}, "noise": {"sigma": 0.5}})
    assert type(pipeline.ensemble.aggregator).__name__ == "MaxMarginEnsemble"
    assert pipeline.noise.sigma == 0.5 and type(pipeline.noise).__name__ == "GaussianNoise"


def test_component_table_must_be_a_table():
    (msg,) = problems({"data": 3})
    assert msg.startswith("data: expected a dataset table like")


def test_list_component_needs_a_name():
    (msg,) = problems({"certify": {"mechanisms": [{"n": 5}]}})
    assert msg == "certify.mechanisms[0].name: missing: which certifier to use"


def test_cross_component_checks(tmp_path):
    from ensemblecert.pipeline import check_pipeline

    pipeline, _ = load_pipeline(
        {"ensemble": {"members": 2, "aggregator": {"name": "we", "weights": [1.0]}, "checkpoints": ["a.pt"]}}
    )
    with pytest.raises(ConfigError) as info:
        check_pipeline(pipeline)
    text = str(info.value)
    assert "ensemble.checkpoints: 1 files for 2 members" in text
    assert "ensemble.aggregator: weights has 1 entries for 2 members" in text


def test_toml_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3\n")
    with pytest.raises(UserError, match=r"bad.toml: not valid TOML: .*line 1"):
        load_pipeline(bad)
    with pytest.raises(UserError, match="no such pipeline file"):
        load_pipeline(tmp_path / "missing.toml")


def test_problems_name_the_file(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[certify]\nmechanisms = [{ name = "cohen", alpha = 1.5 }]\n')
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert str(info.value).splitlines() == [
        f"1 problem in {path}:",
        "  certify.mechanisms[0].alpha: must be in (0, 1), got 1.5",
    ]


def test_overrides():
    data = apply_overrides(
        {"train": {"epochs": 3}},
        ["train.epochs=5", "certify.mechanisms[0].n=2000", "device=cpu", "certify.radii=[0, 0.5]"],
    )
    assert data["train"]["epochs"] == 5
    assert data["certify"]["mechanisms"] == [{"name": "cohen", "n": 2000}]  # indexed into the default
    assert data["device"] == "cpu" and data["certify"]["radii"] == [0, 0.5]
    pipeline, _ = load_pipeline(default_pipeline_data(), overrides=["certify.mechanisms[0].n=2000"])
    assert pipeline.certify.mechanisms[0].n == 2000 and pipeline.certify.mechanisms[0].n0 == 100


@pytest.mark.parametrize("bad", ["train.epochs", "=3", "a..b=1", "certify.mechanisms[5].n=1"])
def test_bad_overrides(bad):
    with pytest.raises(UserError, match="--set"):
        apply_overrides(default_pipeline_data(), [bad])


def test_plugins_key_must_be_module_names():
    (msg,) = problems({"plugins": "mine"})
    assert msg.startswith("plugins: expected a list of module names")
