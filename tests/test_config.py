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
    assert cfg["certification"]["certifiers"] == [
        {
            "name": "cohen",
            "n0": 100,
            "n": 10000,
            "alpha": 0.001,
            "expectation": None,
            "procedure": "sound",
            "randomized": False,
        }
    ]
    assert cfg["ensemble"]["aggregator"] == {"name": "we", "weights": None}


def test_out_of_range_value_names_its_path():
    data = {"certification": {"certifiers": [{"name": "cohen", "alpha": 1.5}]}}
    assert problems(data) == ["certification.certifiers[0].alpha: must be in (0, 1), got 1.5"]


def test_unknown_component_lists_the_known_names():
    (msg,) = problems({"ensemble": {"aggregator": {"name": "wee"}}})
    assert msg.startswith("ensemble.aggregator.name: unknown aggregator 'wee'; did you mean 'we'?")
    assert "'mme'" in msg and "'we'" in msg and "plugins = [...]" in msg


def test_wrong_types_are_not_coerced():
    found = problems({"training": {"epochs": 2.5, "lr": "fast", "enabled": 1}})
    assert "training.epochs: expected an integer, got 2.5" in found
    assert "training.lr: expected a number, got 'fast'" in found
    assert "training.enabled: expected true or false, got 1" in found


def test_nested_leaf_path():
    (msg,) = problems({"ensemble": {"model": {"name": "mlp", "hidden": [32, "x"]}}})
    assert msg == "ensemble.model.hidden[1]: expected an integer, got 'x'"


def test_all_problems_are_collected_together():
    found = problems(
        {
            "seed": "zero",
            "noise": {"name": "gaussian", "sigma": -1.0},
            "training": {"epoch": 3},
            "certification": {"certifiers": [{"name": "cohen", "n": 0}, {"name": "nope"}], "radii": []},
        }
    )
    assert len(found) == 6, found
    assert any(f.startswith("training.epoch: unknown setting; did you mean 'epochs'?") for f in found)
    assert "noise.sigma: must be > 0, got -1.0" in found
    assert "certification.certifiers[0].n: must be >= 1, got 0" in found
    assert "certification.radii: must not be empty" in found
    assert "seed: expected an integer, got 'zero'" in found


def test_unknown_component_parameter():
    (msg,) = problems({"certification": {"certifiers": [{"name": "cohen", "sigma": 0.5}]}})
    assert msg.startswith("certification.certifiers[0].sigma: unknown setting;")
    assert "n0, n, alpha" in msg


def test_component_shorthand_and_defaults_merge():
    pipeline, _ = load_pipeline({"ensemble": {"aggregator": "mme"}, "noise": {"sigma": 0.5}})
    assert type(pipeline.ensemble.aggregator).__name__ == "MaxMarginEnsemble"
    assert pipeline.noise.sigma == 0.5 and type(pipeline.noise).__name__ == "GaussianNoise"


def test_component_table_must_be_a_table():
    (msg,) = problems({"data": 3})
    assert msg.startswith("data: expected a dataset table like")


def test_list_component_needs_a_name():
    (msg,) = problems({"certification": {"certifiers": [{"n": 5}]}})
    assert msg == "certification.certifiers[0].name: missing: which certifier to use"


def test_cross_component_checks(tmp_path):
    from ensemblecert.running.pipeline import check_pipeline

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
    path.write_text('[certification]\ncertifiers = [{ name = "cohen", alpha = 1.5 }]\n')
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert str(info.value).splitlines() == [
        f"1 problem in {path}:",
        "  certification.certifiers[0].alpha: must be in (0, 1), got 1.5",
    ]


def test_overrides():
    data = apply_overrides(
        {"training": {"epochs": 3}},
        ["training.epochs=5", "certification.certifiers[0].n=2000", "device=cpu", "certification.radii=[0, 0.5]"],
    )
    assert data["training"]["epochs"] == 5
    assert data["certification"]["certifiers"] == [{"name": "cohen", "n": 2000}]  # indexed into the default
    assert data["device"] == "cpu" and data["certification"]["radii"] == [0, 0.5]
    pipeline, _ = load_pipeline(default_pipeline_data(), overrides=["certification.certifiers[0].n=2000"])
    assert pipeline.certification.certifiers[0].n == 2000 and pipeline.certification.certifiers[0].n0 == 100


@pytest.mark.parametrize("bad", ["training.epochs", "=3", "a..b=1", "certification.certifiers[5].n=1"])
def test_bad_overrides(bad):
    with pytest.raises(UserError, match="--set"):
        apply_overrides(default_pipeline_data(), [bad])


def test_plugins_key_must_be_module_names():
    (msg,) = problems({"plugins": "mine"})
    assert msg.startswith("plugins: expected a list of module names")


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(
    "data, path",
    [
        ({"noise": {"sigma": INF}}, "noise.sigma"),
        ({"training": {"lr": INF}}, "training.lr"),
        ({"training": {"weight_decay": INF}}, "training.weight_decay"),
        ({"training": {"momentum": NAN}}, "training.momentum"),
        ({"ensemble": {"aggregator": {"name": "we", "weights": [INF, 1.0, 1.0]}}}, "ensemble.aggregator.weights[0]"),
        ({"certification": {"radii": [0.0, NAN]}}, "certification.radii[1]"),
        ({"certification": {"certifiers": [{"name": "cohen", "alpha": NAN}]}}, "certification.certifiers[0].alpha"),
    ],
)
def test_non_finite_numbers_are_refused(data, path):
    (msg,) = problems(data)
    assert msg.startswith(f"{path}: expected a finite number, got ")


def test_validators_refuse_non_finite_values_passed_directly():
    from ensemblecert.plugins.noise import GaussianNoise

    with pytest.raises(ValueError, match="must be a finite number"):
        GaussianNoise(sigma=INF)


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"ensemble": {"checkpoints": "abc"}}, "ensemble.checkpoints: expected a list, got 'abc'"),
        ({"ensemble": {"model": {"name": "mlp", "hidden": "64"}}}, "ensemble.model.hidden: expected a list, got '64'"),
        ({"ensemble": {"model": {"name": "mlp", "hidden": 256}}}, "ensemble.model.hidden: expected a list, got 256"),
        ({"certification": {"radii": 0.5}}, "certification.radii: expected a list, got 0.5"),
        (
            {"ensemble": {"aggregator": {"name": "we", "weights": "1,2"}}},
            "ensemble.aggregator.weights: expected a list, got '1,2'",
        ),
    ],
)
def test_a_list_must_be_a_list(data, expected):
    assert problems(data) == [expected]


# Each rule at its exact threshold: the bound itself is refused for open ends and accepted for closed ends.
REFUSED_AT_THE_BOUND = [
    ({"noise": {"sigma": 0}}, "noise.sigma: must be > 0, got 0.0"),
    ({"training": {"lr": 0}}, "training.lr: must be > 0, got 0.0"),
    ({"training": {"lr_gamma": 0}}, "training.lr_gamma: must be in (0, 1], got 0.0"),
    ({"training": {"momentum": 1}}, "training.momentum: must be in [0, 1), got 1.0"),
    ({"training": {"epochs": 0}}, "training.epochs: must be >= 1, got 0"),
    (
        {"certification": {"certifiers": [{"name": "cohen", "alpha": 0}]}},
        "certification.certifiers[0].alpha: must be in (0, 1), got 0.0",
    ),
    (
        {"certification": {"certifiers": [{"name": "cohen", "alpha": 1}]}},
        "certification.certifiers[0].alpha: must be in (0, 1), got 1.0",
    ),
    ({"certification": {"radii": [-1e-300]}}, "certification.radii: must be >= 0, got [-1e-300]"),
    (
        {"ensemble": {"aggregator": {"name": "we", "weights": [1.0, 0.0, 1.0]}}},
        "ensemble.aggregator.weights: must be > 0, got [1.0, 0.0, 1.0]",
    ),
    ({"ensemble": {"model": {"name": "mlp", "hidden": [8, 0]}}}, "ensemble.model.hidden: must be > 0, got [8, 0]"),
    ({"seed": -1}, "seed: must be in [0, 9223372036854775807], got -1"),
    ({"seed": 2**63}, "seed: must be in [0, 9223372036854775807], got 9223372036854775808"),
    ({"output": ""}, "output: must not be empty"),
    ({"output": "runs/a\0b"}, "output: must not contain a NUL character, got 'runs/a\\x00b'"),
    ({"ensemble": {"checkpoints": [""]}}, "ensemble.checkpoints: must not be empty"),
]


@pytest.mark.parametrize("data, expected", REFUSED_AT_THE_BOUND)
def test_open_bounds_are_refused_at_the_bound(data, expected):
    assert problems(data) == [expected]


def test_closed_bounds_are_accepted_at_the_bound():
    pipeline, _ = load_pipeline(
        {
            "seed": 2**63 - 1,
            "training": {"momentum": 0, "weight_decay": 0, "lr_gamma": 1, "epochs": 1},
            "certification": {"radii": [0], "certifiers": [{"name": "cohen", "n": 1, "n0": 1}]},
        }
    )
    assert pipeline.seed == 2**63 - 1 and pipeline.training.momentum == 0.0 and pipeline.training.lr_gamma == 1.0


def test_the_largest_seed_derives_valid_generators():
    from ensemblecert.seeds import derive_seed, generator

    assert 0 <= derive_seed(2**63 - 1, "shuffle", 3) < 2**63
    assert derive_seed(5, "shuffle", 3) != derive_seed(5, "shuffle", 4) != derive_seed(5, "train-noise", 4)
    torch_gen = generator(2**63 - 1, "shuffle", 0)
    assert torch_gen.initial_seed() == derive_seed(2**63 - 1, "shuffle", 0)


def test_cross_setting_problems_name_the_pipeline_file(tmp_path):
    from ensemblecert.running.pipeline import check_pipeline

    path = tmp_path / "p.toml"
    path.write_text('[ensemble]\nmembers = 2\naggregator = { name = "we", weights = [1.0] }\n')
    pipeline, _ = load_pipeline(path)
    with pytest.raises(ConfigError) as info:
        check_pipeline(pipeline)
    assert str(info.value).splitlines()[0] == f"1 problem in {path}:"


def test_plugin_import_errors_name_the_pipeline_file(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('plugins = ["no_such_module_for_ensemblecert"]\n')
    with pytest.raises(UserError) as info:
        load_pipeline(path)
    assert str(info.value).startswith(
        f"{path}: plugins[0]: cannot import plugin module 'no_such_module_for_ensemblecert'"
    )


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeff[training]\nepochs = 4\n".encode("utf-8"))
    pipeline, _ = load_pipeline(path)
    assert pipeline.training.epochs == 4


def test_field_mistakes_and_mistakes_across_settings_arrive_in_one_round(tmp_path, cli):
    """A value that cannot be read does not hide the checks of settings together: they run on the rest (the value
    replaced by its default), and a problem that would be about the replacement is left out."""
    from ensemblecert import ConfigError, run

    (tmp_path / "p.toml").write_text(
        '[training]\nepochs = "ten"\n\n'
        '[ensemble]\nmembers = 3\naggregator = { name = "we", weights = [1.0, 2.0] }\n\n'
        '[engine]\nprecision = "bf16-checked"\n\n'
        '[certification]\ncertifiers = [{ name = "cohen", expectation = "softmax" }, { name = "cohen", alpha = 1.5 }]\n'
    )
    expected = [
        "training.epochs: expected an integer, got 'ten'",
        "certification.certifiers[1].alpha: must be in (0, 1), got 1.5",
        "engine.precision: 'bf16-checked' checks decisions, but certification.certifiers[0] certifies the soft",
        "ensemble.aggregator: weights has 2 entries for 3 members",
    ]
    for command in ("validate", "run"):
        done = cli(command, str(tmp_path / "p.toml"))
        assert done.returncode == 2 and "4 problems in" in done.stderr, done.stderr
        assert all(line in done.stderr for line in expected), done.stderr
    with pytest.raises(ConfigError) as caught:
        run(str(tmp_path / "p.toml"))
    assert len(caught.value.problems) == 4
    # a component that cannot be built at all: the checks of what uses it are left out, the others still run
    (tmp_path / "q.toml").write_text(
        '[ensemble]\nmembers = 3\naggregator = { name = "we", weights = [1.0, 2.0] }\n\n'
        '[certification]\ncertifiers = [{ name = "cohn" }]\n'
    )
    done = cli("validate", str(tmp_path / "q.toml"))
    assert "2 problems" in done.stderr and "unknown certifier 'cohn'" in done.stderr and "weights has 2" in done.stderr
