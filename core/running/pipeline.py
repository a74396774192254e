"""Running a pipeline: check it, build the run's context, and run its stages in turn.

A run is a list of stages (:class:`ensemblecert.Stage`): the built-in ones (members, calibration, certification,
evaluation; :mod:`ensemblecert.running.stages`), then those the pipeline lists under ``stages``. Each stage is
resumed or refused by one rule (:func:`ensemblecert.running.context.resume_or_refuse`) and writes its outputs under
``pipeline.output`` as it works (:class:`ensemblecert.running.context.Outputs` names them), so a run that was
interrupted picks up where it stopped when started again with the same configuration.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from rich.console import Console

from ..checkpoints import write_json
from ..components import DataInfo, Stage
from ..config import Pipeline, describe, load_pipeline
from ..config.labels import component_labels
from ..distributed import World, join, leave
from ..ensemble.assembly import Ensemble
from ..errors import ConfigError, UserError
from ..registry import Registry
from ..smoothing.results import ExampleResult, Summary
from .context import Outputs, Refused, RunContext, owned, remove, resume_or_refuse, size
from .evaluation import EvaluationSummary
from .lock import OutputLock
from .member_checkpoints import CHECKPOINT_FORMAT
from .preflight import attack_problems, check_pipeline, prepare_output, resolve_device, start_checkpoints
from .report import Reporter
from .stages import BUILT_IN
from .stages.calibration import split_heldout
from .tensorboard import Board

__all__ = ["CHECKPOINT_FORMAT", "RunResult", "check_pipeline", "run", "run_pipeline", "stages_of"]


@attrs.frozen
class RunResult:
    """What :func:`run` returns: the pipeline, the trained ensemble and the certification results."""

    pipeline: Pipeline
    output: Path
    ensemble: Ensemble
    data_info: DataInfo
    results: list[ExampleResult]
    summary: Summary | None
    losses: list[float]
    evaluation: EvaluationSummary | None = None
    #: This process's rank among the processes of a ``torchrun`` run (0 when alone).
    rank: int = 0
    #: What each stage did, by name: ``"resumed"``, ``"started"``, ``"redone"``, ``"unchecked"`` or ``"disabled"``.
    stages: dict[str, str] = attrs.Factory(dict)


def stages_of(pipeline: Pipeline, registry: Registry) -> list[tuple[str, Stage]]:
    """The run's stages with their names: the built-in ones, then the pipeline's own (by their labels)."""
    built_in = [(name, registry.get("stage", name).cls()) for name in BUILT_IN]
    names = component_labels(describe(pipeline, registry)["stages"])
    return built_in + list(zip(names, pipeline.stages))


def _refuse_deleting_inputs(pipeline: Pipeline, out: Path, doomed: Sequence[Path]) -> None:
    """A UserError when ``--fresh`` would delete a file this run reads (``training.start_from``,
    ``ensemble.checkpoints``)."""
    inputs = [("ensemble.checkpoints", Path(p)) for p in pipeline.ensemble.checkpoints or []]
    if pipeline.training.enabled:
        inputs += [("training.start_from", p) for p in start_checkpoints(pipeline)]
    doomed = [p.resolve() for p in doomed]
    for setting, path in inputs:
        where = path.resolve()
        if any(where == d or d in where.parents for d in doomed):
            raise UserError(
                f"--fresh: would delete {path}, which {setting} names as an input of this run; nothing was deleted. "
                f"Copy it elsewhere and point {setting} there, or write this run to another output directory"
            )


def _start(
    pipeline: Pipeline,
    registry: Registry,
    stages: Sequence[tuple[str, Stage]],
    fresh: bool,
    reporter: Reporter,
    world: World,
) -> RunContext:
    """Prepare the output directory (emptied of every stage's outputs with ``fresh``), load the data and take the
    held-out split: the context the stages share."""
    out = Path(pipeline.output)
    if world.main:
        if fresh:  # everything is checked before anything is deleted
            doomed = [p for _, stage in stages for p in owned(out, stage)] + [out / Outputs.STAGES]
            _refuse_deleting_inputs(pipeline, out, doomed)
            remove(doomed)
        files = [Outputs.PIPELINE, Outputs.STAGES, *(p for _, stage in stages for p in stage.outputs)]
        prepare_output(out, checkpoints=not pipeline.ensemble.checkpoints, files=files)
    config = describe(pipeline, registry)
    if world.main:
        write_json(out / Outputs.PIPELINE, config)
    world.barrier()
    device = resolve_device(pipeline.device)
    data = pipeline.data.load()
    reporter.info(
        f"Data: {size(data.train)} training and {size(data.test)} test inputs of shape "
        f"{tuple(data.info.input_shape)}, {data.info.num_classes} classes; device {device}"
    )
    heldout = None
    if pipeline.ensemble.aggregator.needs_heldout():
        data, heldout = split_heldout(data, pipeline.heldout.fraction, pipeline.seed)
        reporter.info(f"Held out {len(heldout)} training inputs to calibrate the aggregator (heldout.json)")
    if world.distributed:
        reporter.info(f"Running on {world.size} processes (rank 0 reports)")
    return RunContext(
        pipeline=pipeline,
        registry=registry,
        reporter=reporter,
        world=world,
        device=device,
        out=out,
        config=config,
        data=data,
        heldout=heldout,
        board=Board(out, enabled=pipeline.logging.tensorboard and world.main),
    )


def _run_stages(pipeline: Pipeline, registry: Registry, fresh: bool, reporter: Reporter, world: World) -> RunResult:
    stages = stages_of(pipeline, registry)
    run = _start(pipeline, registry, stages, fresh, reporter, world)
    problems = attack_problems(pipeline, run.data.info.num_classes)
    problems += [problem for _, stage in stages if stage.enabled(run) for problem in stage.check(run)]
    if problems:
        raise ConfigError(problems, pipeline.origin)
    try:
        for name, stage in stages:
            if not stage.enabled(run):
                run.outcomes[name] = "disabled"
                continue
            try:
                run.outcomes[name] = resume_or_refuse(run, stage, name)
            except Refused as exc:
                exc.outcomes = dict(run.outcomes)
                raise
            stage.run(run)
    finally:
        run.board.close()
    return RunResult(
        pipeline=pipeline,
        output=run.out,
        ensemble=run.assembled(),
        data_info=run.data.info,
        results=run.results,
        summary=run.summary,
        losses=run.losses,
        evaluation=run.evaluation,
        rank=world.rank,
        stages=dict(run.outcomes),
    )


def run_pipeline(
    pipeline: Pipeline, registry: Registry, *, fresh: bool = False, reporter: Reporter | None = None
) -> RunResult:
    """Run a loaded pipeline (see :func:`ensemblecert.load_pipeline`) and return its results.

    Started by ``torchrun``, every process runs this; they share the work as :mod:`ensemblecert.distributed`
    says, and only rank 0 reports and writes the shared files."""
    reporter = reporter or Reporter(quiet=True)
    check_pipeline(pipeline)
    world = join(pipeline.device)
    silent = Reporter(Console(file=io.StringIO()), quiet=True)  # other ranks say nothing, warnings included
    lock = OutputLock(pipeline.output)
    try:
        if world.main:  # one lock per run, held by rank 0 from before anything in the directory is touched
            lock.acquire()
        result = _run_stages(pipeline, registry, fresh, reporter if world.main else silent, world)
    except BaseException:
        leave(world, synchronize=False)
        raise
    finally:
        lock.release()
    leave(world)
    return result


def run(
    source: str | Path | Mapping[str, Any] | None = None,
    *,
    overrides: Sequence[str] = (),
    plugins: Sequence[object] = (),
    fresh: bool = False,
    reporter: Reporter | None = None,
) -> RunResult:
    """Load a pipeline (TOML path, dict, or ``None`` for the built-in default) and run it.

    The Python counterpart of ``ensemblecert run``: ``overrides`` are ``--set`` strings.
    """
    pipeline, registry = load_pipeline(source, overrides=overrides, plugins=plugins)
    return run_pipeline(pipeline, registry, fresh=fresh, reporter=reporter)
