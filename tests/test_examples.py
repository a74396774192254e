"""Every example pipeline validates, and every registered component is used by at least one example."""

import sys

import pytest

from conftest import REPO
from ensemblecert import ConfigError, load_pipeline
from ensemblecert.running.pipeline import check_pipeline

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXAMPLES = sorted((REPO / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path, tmp_path, monkeypatch):
    pipeline, _ = load_pipeline(path)
    if pipeline.training.start_from:  # fine-tuning examples start from another example's run: make it exist
        monkeypatch.chdir(tmp_path)
        with pytest.raises(ConfigError, match="training.start_from: no such run directory"):
            check_pipeline(pipeline)
        for i in range(pipeline.ensemble.members):
            target = tmp_path / pipeline.training.start_from[0] / "checkpoints" / f"member_{i}.pt"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"")
    check_pipeline(pipeline)


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
