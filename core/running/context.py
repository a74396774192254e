"""What the stages of a run share: the context, the names of the output files, and the one resume-or-refuse rule.

Every stage declares the files it owns (``Stage.outputs``) and what they depend on (``Stage.fingerprint``). Before
a stage runs, :func:`resume_or_refuse` compares its fingerprint with the one recorded in ``stages.json`` when the
stage last ran: unchanged, the stage resumes from its outputs; changed while outputs exist, the run is refused
(or, for a stage that declares ``on_change = "redo"``, its outputs are removed and it runs again); the fingerprint
is then recorded, before any work, so a killed run resumes under the same rule.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections.abc import Iterable, Mapping, Sized
from pathlib import Path
from typing import Any, cast

import attrs
import torch
from torch import nn

from ..checkpoints import plain, write_json
from ..components import Aggregator, DataSplits, Stage
from ..config import Pipeline
from ..config.labels import component_labels
from ..distributed import World
from ..ensemble.assembly import Ensemble
from ..errors import UserError
from ..registry import Registry
from ..smoothing.results import ExampleResult, Summary
from .changes import changes, summary
from .evaluation import EvaluationSummary
from .report import Reporter
from .tensorboard import Board


def size(dataset: torch.utils.data.Dataset) -> int:
    """The number of examples of a map-style data set (torch's ``Dataset`` type does not declare ``__len__``)."""
    return len(cast(Sized, dataset))


class Outputs:
    """The names of the files a run writes under its output directory: the one place they are spelt."""

    PIPELINE = "pipeline.json"  # the resolved configuration
    STAGES = "stages.json"  # each stage's fingerprint when it last ran
    CHECKPOINTS = "checkpoints"
    MEMBER = "checkpoints/member_{index}.pt"
    TRAIN_STATE = "checkpoints/train_state.pt"
    TRAIN_LOG = "train_log.json"
    TRAIN_PLOT = "train_log.png"
    HELDOUT = "heldout.json"
    AGGREGATOR = "aggregator.json"
    CERTIFICATION_TSV = "certification.tsv"
    CERTIFICATION_UNSELECTED = "certification.unselected.tsv"  # rows of inputs outside the current selection
    CERTIFICATION_PARTS = "certification.part-*.tsv"
    CERTIFICATION_PART = "certification.part-{rank}.tsv"
    CERTIFICATION_META = "certification.meta.json"
    CERTIFICATION_SUMMARY = "certification.json"
    CERTIFICATION_CHECK = "certification.check-{rank}.json"  # a checked precision's record, per process
    CERTIFICATION_CHECKS = "certification.check-*.json"
    LOG = "log.txt"  # a study point's messages when points run in processes of their own
    STUDY = "study.json"  # a study's points (in the study's folder; each point's run has a folder of its own)
    REPORT = "report.md"  # the run's report (see ensemblecert.reports), with the table as LaTeX and two figures
    REPORT_TABLE = "report.tex"
    CERTIFIED_ACCURACY_PLOT = "certified_accuracy"  # .png and .pdf
    LOWER_BOUNDS_PLOT = "lower_bounds"  # .png and .pdf
    SIMPLEX_PLOT = "simplex"  # .png and .pdf, where certifiers recorded E0 and E1
    EVALUATION_TSV = "evaluation.tsv"
    EVALUATION_UNSELECTED = "evaluation.unselected.tsv"  # rows of inputs outside the current selection
    EVALUATION_SUMMARY = "evaluation.json"


@attrs.define(eq=False)
class RunContext:
    """One run's shared state: the pipeline and its machinery, and what each stage has produced so far.

    The built-in stages leave ``data`` (with the held-out split taken out), ``heldout``, ``members``, ``losses``,
    ``aggregator`` (calibrated), ``ensemble``, ``results``, ``summary`` and ``evaluation`` here; a plugin stage may
    keep its products under its name in ``products``.
    """

    pipeline: Pipeline
    registry: Registry
    reporter: Reporter
    world: World
    device: torch.device
    out: Path
    #: The resolved configuration as plain data (``pipeline.json``).
    config: dict[str, Any]
    data: DataSplits
    heldout: torch.utils.data.Subset | None = None
    members: list[nn.Module] = attrs.Factory(list)
    losses: list[float] = attrs.Factory(list)
    aggregator: Aggregator | None = None
    ensemble: Ensemble | None = None
    results: list[ExampleResult] = attrs.Factory(list)
    summary: Summary | None = None
    evaluation: EvaluationSummary | None = None
    products: dict[str, Any] = attrs.Factory(dict)
    #: What each stage did so far, by name: ``"disabled"`` or what :func:`resume_or_refuse` returned.
    outcomes: dict[str, str] = attrs.Factory(dict)
    #: The run's TensorBoard event files (writes nothing unless ``[logging] tensorboard`` and the main process).
    board: Board = attrs.Factory(lambda: Board(Path(), enabled=False))

    def path(self, name: str, **fields: object) -> Path:
        """The output file ``name`` (an :class:`Outputs` name, with its ``{fields}`` filled in)."""
        return self.out / name.format(**fields)

    def recorded(self, name: str) -> str | None:
        """The fingerprint digest ``stages.json`` recorded for the stage ``name`` (``None`` when there is none)."""
        value = read_json(self.path(Outputs.STAGES), "the run").get(name)
        if isinstance(value, dict):
            value = value.get("digest")
        return value if isinstance(value, str) else None

    def settings(self, stage: Stage) -> dict[str, Any]:
        """The resolved configuration without the settings ``stage`` declares it does not depend on
        (:attr:`ensemblecert.Stage.independent_of`) and without ``output``: a stage's fingerprint of the settings."""
        return without(self.config, ["output", *RUN_ONLY, *stage.independent_of])

    def assembled(self) -> Ensemble:
        """The members combined by the (calibrated) aggregator, on the run's device, in evaluation mode; built once."""
        if self.ensemble is None:
            aggregator = self.aggregator if self.aggregator is not None else self.pipeline.ensemble.aggregator
            self.ensemble = Ensemble(self.members, aggregator, engine=self.pipeline.engine).to(self.device).eval()
        return self.ensemble

    def labels(self, path: str) -> list[str]:
        """The labels of the component list at the TOML ``path`` (``"certification.certifiers"``): each entry's
        ``label``, or its name and what sets it apart from entries of the same name
        (:mod:`ensemblecert.config.labels`)."""
        node: Any = self.config
        for key in path.split("."):
            node = node[key]
        return component_labels(node)


#: Settings that say where a run's progress is shown, never what any stage computes: no fingerprint holds them.
RUN_ONLY = {
    "logging": "says where progress is shown (TensorBoard), never what is computed",
    "launcher": "says where the work runs (which jobs, on which partition), never what is computed",
}
#: The reason a stage gives for a setting that changes only floating-point rounding (the device, the layout).
ROUNDING = "changes only floating-point rounding, not what is computed"
#: The reason a later stage gives for the settings that make the members: their weights are in its fingerprint.
THROUGH_WEIGHTS = "reaches these outputs only through the members' weights, which the fingerprint holds"


def without(config: Mapping[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """A deep copy of ``config`` without the settings at the dotted ``paths`` (a table's path removes all of it)."""
    kept = copy.deepcopy(dict(config))
    for path in paths:
        *parents, leaf = path.split(".")
        node: Any = kept
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return kept


class Refused(UserError):
    """A stage whose outputs were made with another configuration (``stage``: its registered name; ``outcomes``:
    what each stage before it did, as :attr:`RunContext.outcomes`)."""

    def __init__(self, message: str, stage: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.outcomes: dict[str, str] = {}


def fingerprint(obj: Any) -> str:
    """A short digest of plain data (key order does not matter)."""
    return hashlib.sha256(json.dumps(plain(obj), sort_keys=True).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def weights_digest(members: Iterable[nn.Module]) -> list[str]:
    """A digest of each member's weights and buffers (one per member, so a refusal can say which changed)."""
    digests = []
    for m in members:
        h = hashlib.sha256()
        for key, value in m.state_dict().items():
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        digests.append(h.hexdigest()[:16])
    return digests


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object written by a run (empty when absent); a UserError naming ``path`` when damaged."""
    if not path.exists():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError, UnicodeDecodeError):
        obj = None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: damaged (not a JSON object); run with --fresh to start {what} over")
    return obj


def owned(out: Path, stage: Stage) -> list[Path]:
    """The files (and directories) under ``out`` that ``stage`` owns and that exist, in the order it names them."""
    return list(dict.fromkeys(p for pattern in stage.outputs for p in sorted(out.glob(pattern))))


def resume_or_refuse(run: RunContext, stage: Stage, name: str) -> str:
    """Resume ``stage`` (registered as ``name``) where its recorded fingerprint matches, refuse it (or clear its
    outputs, for ``on_change = "redo"``) where outputs exist under another, and record the current one.

    Returns what the stage does: ``"resumed"`` (its outputs were made with this fingerprint), ``"started"`` (it has
    no outputs yet), ``"redone"`` (its outputs were removed) or ``"unchecked"`` (it has no fingerprint)."""
    current = stage.fingerprint(run)
    if current is None:
        return "unchecked"
    digest = fingerprint(current)
    existing = owned(run.out, stage)
    recorded = stage.recorded(run, name) if existing else None
    stale = bool(existing) and recorded != digest
    if stale and stage.on_change != "redo":
        if recorded is None:  # outputs copied in, or stages.json lost: nothing says what made them
            raise Refused(
                f"{existing[0]}: no record of the configuration that made it ({Outputs.STAGES} has none for the "
                f"{name} stage), so it cannot be resumed as this run's; run with --fresh to replace it or choose "
                "another output directory",
                name,
            )
        entry = read_json(run.path(Outputs.STAGES), "the run").get(name)
        if entry == recorded:  # a bare digest: recorded before fingerprints held every setting
            raise Refused(
                f"{existing[0]}: recorded by an earlier ensemblecert, whose fingerprints left out settings the "
                f"{name} stage depends on, so it cannot be told apart from another configuration's; run with --fresh "
                "to make it again or choose another output directory",
                name,
            )
        made = entry.get("fingerprint") if isinstance(entry, dict) and entry.get("digest") == recorded else None
        what = summary(changes(made, plain(current))) if made is not None else ""
        raise Refused(f"{existing[0]}: {stage.refusal}" + (f"\n  {what}" if what else ""), name)
    run.world.barrier()  # every rank has looked before rank 0 changes anything
    if run.world.main:
        path = run.path(Outputs.STAGES)
        record = read_json(path, "the run")
        if stale:  # on_change = "redo": start the stage over
            remove(existing)
        entry = {"digest": digest, "fingerprint": plain(current)}
        if record.get(name) != entry:
            write_json(path, {**record, name: entry})
    run.world.barrier()
    return "redone" if stale else "resumed" if existing else "started"


def remove(paths: Iterable[Path]) -> None:
    """Delete files and directory trees (what ``--fresh`` and a redone stage do)."""
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
