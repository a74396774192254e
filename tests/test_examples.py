"""Every example pipeline validates, and every registered component is used by at least one example."""

import pathlib
import sys

import pytest

from conftest import REPO
from ensemblecert import load_pipeline, load_study
from ensemblecert.running.pipeline import check_pipeline
from ensemblecert.running.study import is_study

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXAMPLES = sorted((REPO / "examples").glob("*.toml"))
#: The papers' configurations: validated, not run (they need the real data sets and GPUs).
PAPERS = sorted((REPO / "examples" / "papers").glob("*.toml"))


def make_inputs(path, tmp_path, monkeypatch):
    """A fine-tuning example starts from another example's run: make that run's member files exist (empty) in a
    working directory of its own."""
    data = tomllib.loads(path.read_text())
    starts = [data.get("training", {}).get("start_from", [])]
    for choices in data.get("sweep", {}).values():  # a study's named choices may each start elsewhere
        if isinstance(choices, dict):
            starts += [c.get("training.start_from", []) for c in choices.values() if isinstance(c, dict)]
    for start in filter(None, starts):
        monkeypatch.chdir(tmp_path)
        for i in range(data.get("ensemble", {}).get("members", 3)):
            target = tmp_path / start[0] / "checkpoints" / f"member_{i}.pt"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"")


def make_files(pipeline) -> None:
    """The data files and given checkpoints a pipeline names, as empty stand-ins in the working directory (validate
    checks that they exist, not what they hold)."""
    for missing in pipeline.data.missing_files():
        target = pathlib.Path(missing.split("/<wnid>")[0])
        if "/<wnid>" in missing:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"")
    for name in pipeline.ensemble.checkpoints:
        pathlib.Path(name).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(name).touch()


@pytest.mark.parametrize("path", EXAMPLES + PAPERS, ids=lambda p: p.relative_to(REPO / "examples").as_posix())
def test_example_validates(path, tmp_path, monkeypatch):
    make_inputs(path, tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    if is_study(path):
        study = load_study(path)
        assert len(study.points) > 1
        for pipeline in study.pipelines:
            make_files(pipeline)
            check_pipeline(pipeline)
    else:
        pipeline, _ = load_pipeline(path)
        make_files(pipeline)
        check_pipeline(pipeline)


def test_validate_names_every_missing_input_file_with_its_resolved_path(tmp_path, monkeypatch):
    """Three missing checkpoints and a missing data root: one message naming each, before any work."""
    from ensemblecert import ConfigError

    monkeypatch.chdir(tmp_path)
    data = {
        "data": {"name": "mnist", "root": "nowhere"},
        "ensemble": {"members": 3, "checkpoints": ["a.pt", "b.pt", "c.pt"]},
    }
    with pytest.raises(ConfigError) as caught:
        check_pipeline(load_pipeline(data)[0])
    message = str(caught.value)
    for i, name in enumerate("abc"):
        assert f"ensemble.checkpoints[{i}]: no such file '{name}.pt' ({tmp_path / (name + '.pt')})" in message
    assert f"data: missing {tmp_path / 'nowhere' / 'MNIST' / 'raw' / 'train-images-idx3-ubyte'}" in message


@pytest.mark.parametrize("path", PAPERS, ids=lambda p: p.name)
def test_each_paper_configuration_cites_its_source(path):
    head = path.read_text().split("\n\n")[0]
    assert head.startswith("#") and any(key in head for key in ("Yang22", "Horvath22", "Deng23", "Cullen24"))


def names_in(node):
    if isinstance(node, dict):
        yield from ([node["name"]] if isinstance(node.get("name"), str) else [])
        for value in node.values():
            yield from names_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from ([value] if isinstance(value, str) else names_in(value))
    elif isinstance(node, str):
        yield node


@pytest.mark.parametrize(
    "name",
    [
        "certify_adp",
        "sequential",
        "k_consensus",
        "soft",
        "eas",
        "ebs",
        "cohen",
        "we",
        "best",
        "drt",
        "gaussian",
        "smoothadv",
        "adp",
        "pgd",
        "fgsm",
        "autoattack",
        "square",
        "igat",
    ],
)
def test_each_method_has_an_example(name):
    used = {n for path in EXAMPLES for n in names_in(tomllib.loads(path.read_text()))}
    assert name in used


def test_the_other_voting_variants_are_shown_in_the_voting_example():
    text = (REPO / "examples" / "voting.toml").read_text()
    for variant in ('name = "hard"', 'name = "max"', 'name = "we"'):
        assert variant in text
