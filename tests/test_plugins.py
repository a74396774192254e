"""Plugins: third-party components through entry points and `plugins = [...]`, and registry errors."""

import textwrap

import attrs
import pytest

from ensemblecert import Certifier, UserError, hookimpl, load_pipeline, load_registry, run
from ensemblecert.plugins.cohen import Cohen


def test_builtins_cover_every_kind():
    registry = load_registry()
    names = {(c.kind, c.name): c.plugin for c in registry}
    for key in [
        ("dataset", "digits"),
        ("dataset", "mnist"),
        ("dataset", "cifar10"),
        ("dataset", "imagenet"),
        ("model", "mlp"),
        ("model", "lenet"),
        ("model", "resnet20"),
        ("model", "resnet110"),
        ("model", "resnet50"),
        ("aggregator", "we"),
        ("aggregator", "mme"),
        ("noise", "gaussian"),
        ("loss", "gaussian"),
        ("loss", "smoothadv"),
        ("regularizer", "drt"),
        ("regularizer", "adp"),
        ("regularizer", "gal"),
        ("regularizer", "igat"),
        ("certifier", "cohen"),
        ("smoothing", "ebs"),
        ("command", "simplex"),
        ("attack", "pgd"),
        ("attack", "fgsm"),
        ("attack", "autoattack"),
        ("attack", "square"),
    ]:
        assert key in names, key
    assert names[("certifier", "cohen")] == "cohen"


def test_third_party_certifier_through_an_entry_point(third_party, on_path, tiny_pipeline, autoload):
    on_path(third_party)
    registry = load_registry()
    assert registry.get("certifier", "majority").plugin == "majority"
    tiny_pipeline["certification"]["certifiers"].append({"name": "majority", "n": 30})
    tiny_pipeline["certification"]["skip"] = 90
    result = run(tiny_pipeline)
    assert set(result.summary.certifiers) == {"cohen", "majority"}
    assert all(r.outcomes["majority"].certificate.samples == 30 for r in result.results)
    header = (result.output / "certification.tsv").read_text().splitlines()[0].split("\t")
    assert header[:7] == ["idx", "label", "predict", "radius", "correct", "time", "samples"]
    assert "majority:radius" in header and "cohen:radius" in header


def test_third_party_certifier_named_in_the_pipeline(tmp_path, on_path):
    (tmp_path / "my_plugin.py").write_text(
        textwrap.dedent(
            '''
            import attrs
            from ensemblecert import Certificate, Certifier, hookimpl

            @attrs.frozen
            class Always(Certifier):
                """Always predicts class 0 (test plugin)."""
                def certify(self, smoothed, x, generator=None):
                    return Certificate(0, 0.0, 0)

            @hookimpl
            def register_certifiers(register):
                register("always-zero", Always)
            '''
        )
    )
    on_path(tmp_path)
    pipeline, registry = load_pipeline(
        {"plugins": ["my_plugin"], "certification": {"certifiers": [{"name": "always-zero"}]}}
    )
    assert registry.get("certifier", "always-zero").plugin == "my_plugin"
    assert type(pipeline.certification.certifiers[0]).__name__ == "Always"


def test_missing_plugin_module_is_a_user_error():
    with pytest.raises(UserError, match=r"plugins\[0\]: cannot import plugin module 'not_a_module'"):
        load_pipeline({"plugins": ["not_a_module"]})


class DuplicateCohen:
    @staticmethod
    @hookimpl
    def register_certifiers(register):
        register("cohen", Cohen)


def test_duplicate_names_name_both_plugins():
    with pytest.raises(UserError, match=r"certifier 'cohen' is registered twice: by plugin 'cohen' and by plugin"):
        load_registry(plugins=[DuplicateCohen()])


class Misspelt:
    @staticmethod
    @hookimpl
    def register_certifier(register):  # missing the final "s"
        pass


def test_misspelt_hook_fails_loudly():
    with pytest.raises(UserError, match="register_certifier"):
        load_registry(plugins=[Misspelt()])


class NotAttrs(Certifier):
    def certify(self, smoothed, x, generator=None):  # pragma: no cover
        raise NotImplementedError


@attrs.frozen
class WrongBase:
    pass


@pytest.mark.parametrize(
    "cls,message", [(NotAttrs, "expected an attrs class"), (WrongBase, "must subclass ensemblecert.Certifier")]
)
def test_registrations_are_checked(cls, message):
    class Plugin:
        @staticmethod
        @hookimpl
        def register_certifiers(register):
            register("x", cls)

    with pytest.raises(UserError, match=message):
        load_registry(plugins=[Plugin()])


def test_broken_entry_point_is_reported(tmp_path, on_path, autoload):
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('needs a missing library')\n")
    info = tmp_path / "broken_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[ensemblecert]\nbroken = broken_plugin\n")
    on_path(tmp_path)
    with pytest.raises(UserError, match=r"plugin 'broken' .* failed to load: ImportError: needs a missing library"):
        load_registry()


def test_registry_can_be_built_without_entry_points():
    registry = load_registry(entry_points=False)
    assert [(c.kind, c.plugin) for c in registry] == [
        ("stage", "ensemblecert.running.stages")
    ] * 5  # the core's own stages
    with pytest.raises(UserError, match="known certifiers: none"):
        registry.get("certifier", "cohen")


def test_the_documented_plugin_example_works_and_is_sound(tmp_path, on_path):
    from conftest import REPO
    from ensemblecert.plugins.noise import GaussianNoise
    from ensemblecert.testing import assert_sound

    text = (REPO / "docs" / "plugins.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "doc_example_plugin.py").write_text(code)
    on_path(tmp_path)
    pipeline, registry = load_pipeline(
        {
            "plugins": ["doc_example_plugin"],
            "certification": {"certifiers": [{"name": "two-stage", "n": 200, "n0": 20, "alpha": 0.1}]},
        }
    )
    certifier = pipeline.certification.certifiers[0]
    assert registry.get("certifier", "two-stage").plugin == "doc_example_plugin"
    assert_sound(certifier, GaussianNoise(0.5), trials=600)
