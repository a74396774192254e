"""Studies: a pipeline file with a ``[sweep]`` table runs one pipeline per point, each into its own folder under the
study's ``output`` (named by its values), in order. A point is a run like any other: finished points resume in
seconds, interrupted ones where they stopped, and each is kill -9 safe. Points whose trained members would be the
same (same data, model, training, noise and seed: the training fingerprint) share them: the first of them trains,
the others certify its members (``ensemble.checkpoints``), so a sweep over certification settings trains once.
``study.json`` lists the points; the study's report compares them and adds the best over the sweep per radius.

Points run one after another in this process (or each under ``torchrun``, as a run does); running several points at
once is not done yet.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..checkpoints import write_json
from ..config import Pipeline, describe, load_pipeline
from ..config.loading import apply_overrides, read_source, set_setting
from ..config.sweeps import SWEEP, Point, sweep_points
from ..errors import ConfigError
from ..registry import Registry
from .context import Outputs, fingerprint
from .pipeline import RunResult, run_pipeline
from .report import Reporter
from .stages.members import training_setup


@attrs.frozen
class Study:
    """The points of a sweep and each one's pipeline, checked; ``output`` is the study's folder."""

    output: Path
    points: tuple[Point, ...]
    pipelines: tuple[Pipeline, ...]
    registry: Registry
    trains_with: tuple[int, ...]  # per point, the point whose members it uses (itself when it trains)

    @property
    def trainings(self) -> int:
        return sum(i == k for i, k in enumerate(self.trains_with))


def is_study(source: str | Path | Mapping[str, Any] | None) -> bool:
    """Whether the pipeline file (or dict) has a ``[sweep]`` table."""
    return SWEEP in read_source(source)[0]


def load_study(
    source: str | Path | Mapping[str, Any] | None, *, overrides: Sequence[str] = (), plugins: Sequence[object] = ()
) -> Study:
    """Read a study and check every point's pipeline (all problems, every point, before any work)."""
    data, label = read_source(source)
    data = apply_overrides(data, overrides)
    try:
        points = sweep_points(data.pop(SWEEP, None))
    except ConfigError as exc:
        raise ConfigError(exc.problems, label) from None
    output = Path(str(data.get("output", "runs/default")))
    pipelines, problems, registry = [], [], None
    for point in points:
        mine = copy.deepcopy(data)  # each point's own tables: a setting of one point never reaches another
        for path, value in point.settings:
            set_setting(mine, path, value, where=f'{SWEEP}."{path}"')
        mine["output"] = str(output / point.name)
        try:
            pipeline, registry = load_pipeline(mine, plugins=plugins)
        except ConfigError as exc:
            problems += [f"point {point.name}: {problem}" for problem in exc.problems]
            continue
        pipelines.append(pipeline)
    if problems or registry is None:
        raise ConfigError(problems or ["the sweep has no points"], label)
    keys = [_training_key(p, registry) for p in pipelines]
    trains_with = tuple(keys.index(k) if k is not None else i for i, k in enumerate(keys))
    return Study(output, tuple(points), tuple(pipelines), registry, trains_with)


def _training_key(pipeline: Pipeline, registry: Registry) -> str | None:
    """The fingerprint trained members would carry, or ``None`` when the point does not train its own."""
    if not pipeline.training.enabled or pipeline.ensemble.checkpoints:
        return None
    return fingerprint(training_setup(describe(pipeline, registry), pipeline))


def run_study(
    study: Study, *, fresh: bool = False, reporter: Reporter | None = None, plugins: Sequence[object] = ()
) -> list[RunResult]:
    """Run every point in order (members shared as :attr:`Study.trains_with` says) and write ``study.json`` and the
    study's report in its folder."""
    reporter = reporter or Reporter(quiet=True)
    study.output.mkdir(parents=True, exist_ok=True)
    write_json(
        study.output / Outputs.STUDY,
        {
            "points": [
                {"name": p.name, "settings": dict(p.settings), "trains_with": study.points[k].name}
                for p, k in zip(study.points, study.trains_with)
            ]
        },
    )
    results: list[RunResult] = []
    for i, (point, pipeline) in enumerate(zip(study.points, study.pipelines)):
        leader = study.trains_with[i]
        reporter.info(f"Point {i + 1} of {len(study.points)}: {point.name}")
        if leader != i:  # certify the members its twin trained
            members = results[leader].output / Path(Outputs.CHECKPOINTS)
            files = [str(members / Path(Outputs.MEMBER.format(index=k)).name) for k in range(pipeline.ensemble.members)]
            data = copy.deepcopy(dict(pipeline.source))  # the point's configuration as it was loaded
            set_setting(data, "ensemble.checkpoints", files, where=f"point {point.name}")
            pipeline, registry = load_pipeline(data, plugins=plugins)
            reporter.info(f"  using the members trained for {study.points[leader].name}")
        else:
            registry = study.registry
        results.append(run_pipeline(pipeline, registry, fresh=fresh, reporter=reporter))
    if any(r.summary is not None for r in results):
        from ..reports.runs import read_run
        from ..reports.writer import write_report

        records = [read_run(r.output) for r in results if r.summary is not None]
        write_report(records, study.output, sweep=True)
        reporter.info(f"Study report: {study.output / Outputs.REPORT}")
    return results
