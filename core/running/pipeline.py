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

from ..components import DataInfo, Stage
from ..config import Pipeline, describe
from ..config.labels import component_labels
from ..distributed import World, join, leave
from ..ensemble.assembly import Ensemble
from ..errors import ConfigError
from ..registry import Registry
from ..smoothing.results import ExampleResult, Summary
from .context import Refused, resume_or_refuse
from .evaluation import EvaluationSummary
from .lock import OutputLock
from .member_checkpoints import CHECKPOINT_FORMAT
from .preflight import attack_problems, check_pipeline, load_checked
from .report import Reporter
from .stages import BUILT_IN
from .start import start_run

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


def _run_stages(
    pipeline: Pipeline,
    registry: Registry,
    fresh: bool,
    reporter: Reporter,
    world: World,
    until: str | None = None,
    through: str | None = None,
) -> RunResult:
    stages = stages_of(pipeline, registry)
    run = start_run(pipeline, registry, stages, fresh, reporter, world)
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
            if name == until:
                break
            stage.run(run)
            if name == through:
                break
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
    pipeline: Pipeline,
    registry: Registry,
    *,
    fresh: bool = False,
    reporter: Reporter | None = None,
    world: World | None = None,
    until: str | None = None,
    through: str | None = None,
) -> RunResult:
    """Run a loaded pipeline (see :func:`ensemblecert.load_pipeline`) and return its results.

    Started by ``torchrun``, every process runs this; they share the work as :mod:`ensemblecert.distributed`
    says, and only rank 0 reports and writes the shared files. A cluster launcher
    (:mod:`ensemblecert.running.launcher`) runs parts of a run as jobs: ``until`` stops at that stage after checking
    and recording its fingerprint (the stages before it run), ``through`` stops after that stage, and ``world`` (an
    independent shard's) replaces the one ``torchrun`` would give."""
    reporter = reporter or Reporter(quiet=True)
    check_pipeline(pipeline)
    world = world if world is not None else join(pipeline.device)
    silent = Reporter(Console(file=io.StringIO()), quiet=True)  # other ranks say nothing, warnings included
    lock = OutputLock(pipeline.output)
    try:
        if world.main:  # one lock per run, held by rank 0 from before anything in the directory is touched
            lock.acquire()
        speaks = world.main or world.independent
        result = _run_stages(pipeline, registry, fresh, reporter if speaks else silent, world, until, through)
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

    The Python counterpart of ``ensemblecert run``: ``overrides`` are ``--set`` strings. Every mistake in the
    settings is reported in one ConfigError (:func:`~ensemblecert.running.preflight.load_checked`).
    """
    pipeline, registry = load_checked(source, overrides=overrides, plugins=plugins)
    return run_pipeline(pipeline, registry, fresh=fresh, reporter=reporter)
