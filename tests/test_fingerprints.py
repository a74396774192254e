"""Results that cannot mix: every setting a stage's outputs depend on is in its fingerprint, and every other one is
declared harmless (``Stage.independent_of``) with a reason that holds.

The schema walk finishes a tiny run, then changes each of its settings in turn, runs again in a copy of the run's
directory and looks at each stage:

- refused, or run again (a changed fingerprint): nothing mixes;
- resumed (its fingerprint unchanged, as the run reports): the stage must declare the setting harmless, and a fresh
  run with the change must then give the same outputs as the resumed one (except where the reason is rounding).

Two runs are walked: one that trains its members, and one that certifies given checkpoints with an aggregator that
calibrates on held-out data (there no members' fingerprint stands in front of the later stages). Both read MNIST in
its real on-disk format, so ``data.root`` can point at two folders of different images.
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
import textwrap
from pathlib import Path

import attrs
import pytest
import torch

from conftest import write_mnist
from ensemblecert import ConfigError, Pipeline, UserError, load_pipeline, run
from ensemblecert.running.context import ROUNDING, RUN_ONLY, Refused
from ensemblecert.running.pipeline import stages_of

NOTE_PLUGIN = '''
"""A plugin stage with the default fingerprint (every setting)."""
import attrs
from ensemblecert import Stage, hookimpl


@attrs.frozen
class Note(Stage):
    """Writes its text to note.txt once."""

    text: str = "hello"
    outputs = ("note.txt",)

    def run(self, run):
        path = run.out / "note.txt"
        if run.world.main and not path.exists():
            path.write_text(self.text)


@hookimpl
def register_stages(register):
    register("note", Note)
'''


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    """The walk's material: two MNIST folders, the plugin modules, and the finished run that trains."""
    root = tmp_path_factory.mktemp("walk")
    (root / "mods").mkdir()
    (root / "mods" / "walk_note.py").write_text(textwrap.dedent(NOTE_PLUGIN))
    (root / "mods" / "walk_extra.py").write_text('"""A plugin module that registers nothing."""\n')
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(root / "mods"))
    data = [write_mnist(root / name, seed=seed, train=40, test=12) for name, seed in (("mnist-a", 0), ("mnist-b", 1))]
    trains = {
        "seed": 1,
        "device": "cpu",
        "output": str(root / "trains"),
        "plugins": ["walk_note"],
        "data": {"name": "mnist", "root": str(data[0])},
        "noise": {"name": "gaussian", "sigma": 0.25},
        "ensemble": {"members": 2, "model": {"name": "mlp", "hidden": [8]}},
        "training": {"epochs": 1, "batch_size": 16, "lr": 0.1},
        "certification": {
            "certifiers": [{"name": "cohen", "n0": 10, "n": 40, "alpha": 0.01}],
            "batch_size": 40,
            "skip": 3,
            "radii": [0.0, 0.25],
        },
        "evaluation": {"attacks": [{"name": "fgsm", "epsilon": 0.1}], "max_examples": 4, "batch_size": 3},
        "stages": [{"name": "note", "text": "hi"}],
    }
    run(trains)
    members = [str(p) for p in sorted((root / "trains" / "checkpoints").glob("member_*.pt"))]
    copies = root / "copies"
    copies.mkdir()
    for p in members:
        shutil.copy(p, copies)
    given = copy.deepcopy(trains)
    given.update(output=str(root / "given"), stages=[])
    given["ensemble"].update(checkpoints=members, aggregator={"name": "soft", "fit": True})
    given["heldout"] = {"fraction": 0.25}
    yield {
        "root": root,
        "data": data,
        "trains": trains,
        "given": given,
        "members": members,
        "copies": [str(copies / Path(p).name) for p in members],
    }
    mp.undo()


# ------------------------------------------------------------------------------------ settings and their variants
def leaves(node, path=()):
    """Every setting of a resolved configuration: ``(path, value)``, a path being keys and list indices. A list of
    plain values is one setting; a list of components is walked entry by entry."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*path, key))
    elif isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        for i, value in enumerate(node):
            yield from leaves(value, (*path, i))
    else:
        yield path, node


def dotted(path) -> str:
    """``certification.certifiers[0].n`` for a path of keys and indices."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


def setting(path) -> str:
    """The setting's TOML path without list indices (what ``independent_of`` names)."""
    return ".".join(p for p in path if isinstance(p, str))


def kind_of(path) -> str | None:
    """The component kind of the component at ``path`` (for its ``name``), from the schema's fields."""
    cls, kind = Pipeline, None
    for part in path:
        if isinstance(part, int) or cls is None:
            continue
        field = attrs.fields_dict(attrs.resolve_types(cls)).get(part)
        if field is None:
            return None
        kind = field.metadata.get("kind", kind)
        cls = field.type if isinstance(field.type, type) and attrs.has(field.type) else None
    return kind


def variants(path, value, walk, base, registry):
    """Other values for the setting at ``path`` to try in turn, as ``(path, value)`` (a change that only makes sense
    with its neighbours replaces the table holding it); the first that loads is used."""
    name = setting(path)
    if name == "certification.certifiers.procedure":  # only under an expectation
        parent = config_value(json.loads((Path(base["output"]) / "pipeline.json").read_text()), path[:-1])
        return [(path[:-1], {**parent, "expectation": "multinomial", "procedure": p}) for p in ("sound", "paper")]
    if path[-1] == "name":  # another component in its place, with its defaults
        kind = kind_of(path[:-1])
        return [(path[:-1], {"name": n}) for n in registry.names(kind) if n != value] if kind else []
    return [(path, v) for v in values(path, value, walk, base)]


def values(path, value, walk, base):
    """Other values for the setting at ``path``: from its type, or from a table for those a type does not tell."""
    name = setting(path)
    special = {
        "data.root": [str(walk["data"][1])],
        "data.name": ["digits"],
        "device": ["auto"],
        "plugins": [[*base["plugins"], "walk_extra"]],
        "stages": [[{"name": "note"}]],
        "ensemble.checkpoints": [walk["copies"]],
        "training.start_from": [walk["members"]],
        "training.regularizers": [[{"name": "gal"}]],
        "training.noise": [{"name": "gaussian", "sigma": 0.5}],
        "ensemble.aggregator.weights": [[1.0, 2.0]],
        "evaluation.aggregators.weights": [[1.0, 2.0]],
        "certification.certifiers.expectation": ["multinomial", "softmax"],
        "stages.text": ["bye"],
        "certification.max_examples": [1],
        "engine.layout": ["loop", "vmap"],
        "engine.precision": ["bf16"],
        "engine.compile": [False],
        "engine.channels_last": [False],
        "launcher.partition": ["gpu"],
        "launcher.cpus": [2],
    }
    if name in special:
        return special[name]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1]
    if isinstance(value, float):
        return [value * 0.5, value * 1.5, 0.1] if value else [0.1, 1.0]
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return [[*value[:-1], value[-1] * 2 + 1]]
    return []


#: Settings the walk does not vary, with the reason.
NOT_VARIED = {
    "output": "the walk runs every change in another directory: the place is never part of a fingerprint",
}


#: Settings under which a fresh run cannot make the outputs it would resume, with the reason.
NOT_REMADE = {
    "training.enabled": "without training, a fresh run has no members to load",
    "certification.enabled": "without certification, a fresh run makes no rows to compare",
}


def changed(config, path, value):
    new = copy.deepcopy(config)
    node = new
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return new


def loadable(config) -> bool:
    try:
        load_pipeline(config)
    except (ConfigError, UserError):
        return False
    return True


# ------------------------------------------------------------------------------------ comparing a stage's outputs
def tsv_rows(path: Path) -> dict[str, list[str]]:
    """Rows by input index, without the columns that hold times."""
    if not path.exists():
        return {}
    rows = list(csv.reader(path.read_text().splitlines(), delimiter="\t"))
    keep = [i for i, column in enumerate(rows[0]) if "time" not in column]
    return {row[0]: [row[i] for i in keep] for row in rows[1:]}


def common(a: dict, b: dict) -> tuple[dict, dict]:
    shared = a.keys() & b.keys()
    return {k: a[k] for k in shared}, {k: b[k] for k in shared}


def products(stage: str, out: Path, config):
    """What a stage produced, in a form two runs can be compared by (rows on the inputs both hold)."""
    if stage == "members":  # the members the run used: given checkpoints, or its own
        files = config["ensemble"]["checkpoints"] or sorted(out.glob("checkpoints/member_*.pt"))
        return [torch.load(p, weights_only=True)["state_dict"] for p in files]
    if stage == "calibration":
        return json.loads((out / "aggregator.json").read_text())
    if stage in ("certification", "evaluation"):
        return tsv_rows(out / f"{stage}.tsv")
    if stage == "report":  # its table, without the run's name (its directory's)
        lines = (out / "report.md").read_text().splitlines()
        return [line.split("|")[2:] for line in lines if line.startswith("| ")]
    return sorted((p.name, p.read_bytes()) for p in out.glob("*.txt") if p.name != "log.txt")


def same(stage: str, a, b) -> bool:
    if stage == "members":
        return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    if stage in ("certification", "evaluation"):
        a, b = common(a, b)
        return bool(a) and a == b
    return a == b


# ------------------------------------------------------------------------------------ the walk
def walk_run(walk, base_key: str, tmp_path: Path) -> list[str]:
    """Walk every setting of the finished run ``base_key``; returns the problems found."""
    base = walk[base_key]
    finished = Path(base["output"])
    if not finished.exists():
        run(base)
    registry = load_pipeline(base)[1]
    problems, unvaried = [], []
    resolved = json.loads((finished / "pipeline.json").read_text())
    for k, (path, value) in enumerate(leaves(resolved)):
        if setting(path) in NOT_VARIED:
            continue
        options = [(where, v) for where, v in variants(path, value, walk, base, registry) if v != value]
        tried = (changed(resolved, where, v) for where, v in options)
        config = next((c for c in tried if loadable(c)), None)
        if config is None:
            if not (path[-1] == "name" and len(registry.names(kind_of(path[:-1]) or "")) < 2):
                unvaried.append(dotted(path))  # (a kind with one component cannot change its name)
            continue
        out = tmp_path / f"{base_key}-{k}"
        shutil.copytree(finished, out)
        config["output"] = str(out)
        try:
            outcomes = run(config).stages
        except Refused as exc:
            outcomes = exc.outcomes
        except UserError:
            outcomes = {}
        stages = dict(stages_of(*load_pipeline(config)))
        resumed = [name for name, outcome in outcomes.items() if outcome == "resumed"]
        check = []
        for name in resumed:
            declared = next(
                (why for key, why in {**RUN_ONLY, **stages[name].independent_of}.items() if setting(path) == key
                 or setting(path).startswith(key + ".")),
                None,
            )  # fmt: skip
            if declared is None:
                problems.append(f"{dotted(path)} = {config_value(config, path)!r}: the {name} stage resumed, "
                                "but does not declare the setting harmless")  # fmt: skip
            elif declared != ROUNDING and setting(path) not in NOT_REMADE:
                check.append(name)
        if check:  # each declaration holds: a fresh run with the change makes the same outputs
            fresh = tmp_path / f"{base_key}-{k}-fresh"
            run({**config, "output": str(fresh)})
            for name in check:
                if not same(name, products(name, out, config), products(name, fresh, config)):
                    problems.append(f"{dotted(path)}: the {name} stage declares it harmless, but a fresh run with the "
                                    "change made other outputs")  # fmt: skip
        shutil.rmtree(out)
        shutil.rmtree(tmp_path / f"{base_key}-{k}-fresh", ignore_errors=True)
    if unvaried:
        problems.append(f"no variant known for {', '.join(unvaried)}: teach variants() one")
    return problems


def config_value(config, path):
    node = config
    for part in path:
        node = node[part]
    return node


@pytest.mark.parametrize("base", ["trains", "given"])
def test_every_setting_is_in_each_stages_fingerprint_or_declared_harmless(walk, base, tmp_path):
    problems = walk_run(walk, base, tmp_path)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------ the cases behind the rule
def test_given_members_certified_on_another_data_set_are_refused_not_resumed(walk, tmp_path):
    """The certification stage's own fingerprint holds the data: with given checkpoints no members' fingerprint
    stands in front of it."""
    config = {**copy.deepcopy(walk["given"]), "output": str(tmp_path / "run"), "evaluation": {}}
    config["ensemble"]["aggregator"] = {"name": "we"}
    first = run(config)
    rows = (tmp_path / "run" / "certification.tsv").read_bytes()
    for path, value in (("data.root", str(walk["data"][1])), ("noise.sigma", 0.5)):
        other = copy.deepcopy(config)
        section, key = path.split(".")
        other[section][key] = value
        with pytest.raises(Refused, match=r"certification\.tsv: holds results of a different model") as refused:
            run(other)
        assert refused.value.stage == "certification" and refused.value.outcomes["members"] == "unchecked"
        assert (tmp_path / "run" / "certification.tsv").read_bytes() == rows  # nothing was touched
    assert run(config).stages["certification"] == "resumed" and first.stages["certification"] == "started"


def test_outputs_whose_configuration_was_never_recorded_are_refused(walk, tmp_path):
    config = {**copy.deepcopy(walk["given"]), "output": str(tmp_path / "run"), "evaluation": {}}
    config["ensemble"]["aggregator"] = {"name": "we"}
    run(config)
    (tmp_path / "run" / "stages.json").unlink()  # lost
    with pytest.raises(Refused, match=r"certification\.tsv: no record of the configuration that made it"):
        run(config)
    copied = tmp_path / "copied"  # results copied into a new run directory
    copied.mkdir()
    shutil.copy(tmp_path / "run" / "certification.tsv", copied)
    with pytest.raises(Refused, match="no record of the configuration"):
        run({**config, "output": str(copied)})


def test_a_run_recorded_by_an_earlier_version_is_refused_with_the_reason(walk, tmp_path):
    config = {**copy.deepcopy(walk["given"]), "output": str(tmp_path / "run"), "evaluation": {}}
    config["ensemble"]["aggregator"] = {"name": "we"}
    run(config)
    record = tmp_path / "run" / "stages.json"
    stages = json.loads(record.read_text())
    record.write_text(json.dumps({name: "0123456789abcdef" for name in stages}))  # a bare digest of fewer settings
    with pytest.raises(Refused, match="recorded by an earlier ensemblecert"):
        run(config)


# ------------------------------------------------------------------------------------ a refusal says what changed
def test_a_refusal_names_every_setting_that_changed_for_each_stage(walk, tmp_path):
    """Members, certification, evaluation and a plugin stage each name the settings that differ from the record."""
    out = tmp_path / "run"
    shutil.copytree(walk["trains"]["output"], out)
    base = {**copy.deepcopy(walk["trains"]), "output": str(out)}
    cases = [
        ("members", [("training", "epochs", 2), ("noise", "sigma", 0.5)],
         ["training.epochs: 1 (recorded) -> 2", "noise.sigma: 0.25 (recorded) -> 0.5"]),
        ("certification", [("certification", "batch_size", 20)], ["certification.batch_size: 40 (recorded) -> 20"]),
        ("evaluation", [("evaluation", "batch_size", 4)], ["evaluation.batch_size: 3 (recorded) -> 4"]),
    ]  # fmt: skip
    for stage, edits, expected in cases:
        config = copy.deepcopy(base)
        for section, key, value in edits:
            config[section][key] = value
        with pytest.raises(Refused) as refused:
            run(config)
        assert refused.value.stage == stage
        assert all(line in str(refused.value) for line in expected), str(refused.value)
    config = copy.deepcopy(base)
    config["stages"][0]["text"] = "bye"
    with pytest.raises(Refused, match=r"stages\[0\]\.text: 'hi' \(recorded\) -> 'bye'") as refused:
        run(config)
    assert refused.value.stage == "note"


def test_a_refusal_says_which_given_checkpoint_changed(walk, tmp_path):
    members = []
    for i, path in enumerate(walk["members"]):
        members.append(tmp_path / f"member_{i}.pt")
        shutil.copy(path, members[-1])
    config = {**copy.deepcopy(walk["given"]), "output": str(tmp_path / "run"), "evaluation": {}}
    config["ensemble"].update(checkpoints=[str(p) for p in members], aggregator={"name": "we"})
    run(config)
    ckpt = torch.load(members[1], weights_only=True)
    ckpt["state_dict"] = {k: v + 0.01 for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, members[1])
    with pytest.raises(Refused, match="changed since it was made: the weights of member 1 changed$"):
        run(config)
