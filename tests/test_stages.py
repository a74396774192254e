"""A run is a list of stages with one protocol: a plugin adds a stage with one class and its registration."""

import copy
import json
import types

import attrs
import pytest

from conftest import REPO
from ensemblecert import Stage, UserError, hookimpl, load_pipeline, load_registry, run
from ensemblecert.running.pipeline import stages_of


@attrs.frozen
class Toy(Stage):
    """Writes its message to toy.txt, once; a resumed run leaves the file as it is. Its fingerprint is the default:
    every setting."""

    message: str = "hello"
    outputs = ("toy.txt",)

    def run(self, run):
        path = run.out / "toy.txt"
        if path.exists():
            run.products["toy"] = "resumed"
            return
        if run.world.main:
            path.write_text(self.message)
        run.products["toy"] = "written"


def toy_plugin():
    plugin = types.ModuleType("toy_stage_plugin")

    @hookimpl
    def register_stages(register):
        register("toy", Toy)

    plugin.register_stages = register_stages
    return plugin


def test_a_plugin_stage_runs_after_the_built_ins_resumes_and_is_refused_when_changed(tiny_pipeline):
    plugin = toy_plugin()
    tiny_pipeline["stages"] = [{"name": "toy", "message": "hi"}]
    first = run(tiny_pipeline, plugins=[plugin])
    toy = first.output / "toy.txt"
    assert toy.read_text() == "hi"
    assert set(json.loads((first.output / "stages.json").read_text())) == {"members", "certification", "report", "toy"}
    assert first.stages == {
        "members": "started",
        "calibration": "disabled",
        "certification": "started",
        "evaluation": "disabled",
        "report": "started",
        "toy": "started",
    }
    written = toy.stat().st_mtime_ns
    assert set(run(tiny_pipeline, plugins=[plugin]).stages.values()) == {"resumed", "disabled"}  # left alone
    assert toy.stat().st_mtime_ns == written and toy.read_text() == "hi"
    changed = copy.deepcopy(tiny_pipeline)
    changed["stages"][0]["message"] = "bye"
    with pytest.raises(UserError, match=r"toy\.txt: holds results of a different configuration; run with --fresh"):
        run(changed, plugins=[plugin])
    run(changed, plugins=[plugin], fresh=True)  # --fresh removes every stage's outputs, the plugin's included
    assert toy.read_text() == "bye"


def test_the_run_is_the_built_in_stages_then_the_pipelines_own():
    plugin = toy_plugin()
    pipeline, registry = load_pipeline({"stages": ["toy", {"name": "toy", "message": "again"}]}, plugins=[plugin])
    names = [name for name, _ in stages_of(pipeline, registry)]
    assert names == ["members", "calibration", "certification", "evaluation", "report", "toy (hello)", "toy (again)"]
    registered = {c.name: c.plugin for c in load_registry(entry_points=False) if c.kind == "stage"}
    assert registered == dict.fromkeys(
        ["members", "calibration", "certification", "evaluation", "report"], "ensemblecert.running.stages"
    )


def test_a_misspelt_stage_is_a_configuration_error():
    with pytest.raises(UserError, match=r"stages\[0\]\.name: unknown stage 'tyo'"):
        load_pipeline({"stages": ["tyo"]}, plugins=[toy_plugin()])


def test_the_run_modules_stay_small():
    assert len((REPO / "core" / "running" / "pipeline.py").read_text().splitlines()) < 200
    for module in (REPO / "core" / "running" / "stages").glob("*.py"):
        assert len(module.read_text().splitlines()) <= 250, module.name
