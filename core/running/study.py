"""Studies: a pipeline file with a ``[sweep]`` table runs one pipeline per point, each into its own folder under the
study's ``output`` (named by its values), in order. A point is a run like any other: finished points resume in
seconds, interrupted ones where they stopped, and each is kill -9 safe. Points whose trained members would be the
same (same data, model, training, noise and seed: the training fingerprint) share them: the first of them trains,
the others certify its members (``ensemble.checkpoints``), so a sweep over certification settings trains once.
``study.json`` lists the points; the study's report compares them and adds the best over the sweep per radius.

Points run one after another in this process (or each under ``torchrun``, as a run does), or ``jobs`` at a time,
each in a process of its own that writes its messages to ``log.txt`` in its folder, with one progress view of the
whole study; a point starts once the point whose members it uses has finished.
"""

from __future__ import annotations

import copy
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..checkpoints import write_json
from ..config import Pipeline, describe, load_pipeline
from ..config.loading import apply_overrides, read_source, set_setting
from ..config.sweeps import SWEEP, Point, sweep_points
from ..errors import ConfigError, UserError
from ..registry import Registry
from .context import Outputs, fingerprint
from .pipeline import RunResult, run_pipeline
from .report import Reporter
from .stages.members import training_setup
from .tensorboard import Board, results_of


@attrs.frozen
class Study:
    """The points of a sweep and each one's pipeline, checked; ``output`` is the study's folder."""

    output: Path
    points: tuple[Point, ...]
    pipelines: tuple[Pipeline, ...]
    registry: Registry
    trains_with: tuple[int, ...]  # per point, the point whose members it uses (itself when it trains)
    #: The study file's folder, searched first for the plugin modules its pipelines list.
    beside: Path | None = None

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
    beside = Path(source).resolve().parent if isinstance(source, (str, Path)) else None
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
            pipeline, registry = load_pipeline(mine, plugins=plugins, beside=beside)
        except ConfigError as exc:
            problems += [f"point {point.name}: {problem}" for problem in exc.problems]
            continue
        pipelines.append(pipeline)
    if problems or registry is None:
        raise ConfigError(problems or ["the sweep has no points"], label)
    keys = [_training_key(p, registry) for p in pipelines]
    trains_with = tuple(keys.index(k) if k is not None else i for i, k in enumerate(keys))
    return Study(output, tuple(points), tuple(pipelines), registry, trains_with, beside)


def _training_key(pipeline: Pipeline, registry: Registry) -> str | None:
    """The fingerprint trained members would carry, or ``None`` when the point does not train its own."""
    if not pipeline.training.enabled or pipeline.ensemble.checkpoints:
        return None
    return fingerprint(training_setup(describe(pipeline, registry), pipeline))


def run_study(
    study: Study,
    *,
    fresh: bool = False,
    reporter: Reporter | None = None,
    plugins: Sequence[object] = (),
    jobs: int = 1,
    launcher: str | None = None,
) -> list[RunResult]:
    """Run every point (members shared as :attr:`Study.trains_with` says), ``jobs`` at a time, and write
    ``study.json`` and the study's report in its folder.

    With ``jobs > 1`` the points run in processes of their own (plugins must then be installed or named in the
    pipeline: ``plugins`` objects do not cross processes); this process then collects every finished point, which
    takes seconds each, so the results are those of a run in turn. With a ``launcher`` (``slurm`` or ``local``) the
    points run as cluster jobs instead (:mod:`ensemblecert.running.launcher`), with the same collection after."""
    reporter = reporter or Reporter(quiet=True)
    if jobs < 1:
        raise UserError(f"--jobs: must be at least 1, got {jobs}")
    if (jobs > 1 or launcher is not None) and plugins:
        raise UserError(
            "jobs: points in processes of their own load installed plugins only; install yours or name it in the "
            "pipeline's `plugins`, or run the points in turn (jobs = 1)"
        )
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
    if launcher is not None:
        _run_as_jobs(study, kind=launcher, fresh=fresh, reporter=reporter)
        fresh = False  # every point is done: what follows collects them
        reporter.info("Collecting the points")
    elif jobs > 1 and len(study.points) > 1:
        _run_in_processes(study, fresh=fresh, reporter=reporter, jobs=jobs)
        fresh = False  # every point is done: what follows collects them
        reporter.info("Collecting the points")
    results: list[RunResult] = []
    for i, (point, pipeline) in enumerate(zip(study.points, study.pipelines)):
        leader = study.trains_with[i]
        reporter.info(f"Point {i + 1} of {len(study.points)}: {point.name}")
        if leader != i:  # certify the members its twin trained
            pipeline, registry = load_pipeline(_point_source(study, i), plugins=plugins, beside=study.beside)
            reporter.info(f"  using the members trained for {study.points[leader].name}")
        else:
            registry = study.registry
        result = run_pipeline(pipeline, registry, fresh=fresh, reporter=reporter)
        results.append(result)
        made = any(outcome not in ("resumed", "disabled") for outcome in result.stages.values())
        if pipeline.logging.tensorboard and result.summary is not None and made:
            board = Board(result.output, enabled=True)  # the point's settings, for TensorBoard's HPARAMS tab
            board.hparams(dict(point.settings), results_of(result.summary))
            board.close()
    if any(r.summary is not None for r in results):
        from ..reports.runs import read_run
        from ..reports.writer import write_report

        records = [read_run(r.output) for r in results if r.summary is not None]
        write_report(records, study.output, sweep=True)
        reporter.info(f"Study report: {study.output / Outputs.REPORT}")
    return results


def _point_source(study: Study, i: int) -> dict[str, Any]:
    """Point ``i``'s configuration as it was loaded; a follower's certifies the members its leader trained."""
    pipeline, leader = study.pipelines[i], study.trains_with[i]
    data = copy.deepcopy(dict(pipeline.source))  # the point's own tables: nothing reaches another point
    if leader != i:
        members = study.pipelines[leader].output / Path(Outputs.CHECKPOINTS)
        files = [str(members / Path(Outputs.MEMBER.format(index=k)).name) for k in range(pipeline.ensemble.members)]
        set_setting(data, "ensemble.checkpoints", files, where=f"point {study.points[i].name}")
    return data


def _run_in_processes(study: Study, *, fresh: bool, reporter: Reporter, jobs: int) -> None:
    """Run the points ``jobs`` at a time in processes of their own, each point once its leader has finished; a
    point that fails stops the points that use its members and, once the running ones end, the study."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // jobs)
    waiting = list(range(len(study.points)))
    running: dict[Future[str | None], int] = {}
    finished: set[int] = set()  # points that ran to the end: their followers may start
    failed: list[str] = []
    context = multiprocessing.get_context("spawn")  # no forked copies of this process's threads or CUDA state
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_start, initargs=(threads,)) as pool:
        with reporter.progress() as bars:
            task = bars.add_task("points", total=len(waiting), status="")
            while waiting or running:
                for i in [i for i in waiting if study.trains_with[i] in finished | {i}]:
                    if len(running) >= jobs:
                        break
                    waiting.remove(i)
                    running[pool.submit(_run_point, _point_source(study, i), fresh, study.beside)] = i
                names = ", ".join(study.points[i].name for i in sorted(running.values()))
                bars.update(task, status=f"running {names}" if names else "")
                ended, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in ended:
                    i = running.pop(future)
                    problem = future.result()
                    bars.advance(task)
                    if problem is None:
                        finished.add(i)
                        continue
                    failed.append(f"point {study.points[i].name}: {problem}")
                    orphans = [k for k in waiting if study.trains_with[k] == i]
                    waiting = [k for k in waiting if k not in orphans]
                    bars.advance(task, len(orphans))
    if failed:
        raise UserError("; ".join(failed) + f" (each point's {Outputs.LOG} in {study.output} says more)")


def _run_as_jobs(study: Study, *, kind: str, fresh: bool, reporter: Reporter) -> None:
    """Submit the points as cluster jobs: the points that train first, as one job array, and the points that use a
    point's members as soon as it has finished; wait for them all."""
    from .launcher import JOBS, Job, executor, jobs_failed, submit_array, wait

    options = study.pipelines[0].launcher
    if options.shards > 1:
        raise UserError(
            "launcher.shards: a study's points are its jobs; shard the certification of a single pipeline instead"
        )
    ex = executor(kind, options, study.output / JOBS, f"ensemblecert:{study.output.name}")
    beside = str(study.beside) if study.beside else None
    index = {p.name: i for i, p in enumerate(study.points)}

    def submit(points: list[int]) -> list[tuple[str, Any]]:
        if not points:
            return []
        jobs = submit_array(
            ex, [Job(_point_source(study, i), fresh=fresh, beside=beside) for i in points], reporter, kind
        )
        return [(study.points[i].name, job) for i, job in zip(points, jobs)]

    def followers(name: str) -> list[tuple[str, Any]]:
        leader = index[name]
        return submit([k for k, t in enumerate(study.trains_with) if t == leader and k != leader])

    leaders = [i for i, t in enumerate(study.trains_with) if t == i]
    problems = wait(submit(leaders), reporter, kind, "points", more=followers)
    if problems:
        raise jobs_failed([f"point {p}" for p in problems])


def _worker_start(threads: int) -> None:
    """A point's process: ``threads`` threads, and (on Linux) it ends with the study's process, however that ends,
    so a killed study leaves no point running."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    import torch

    torch.set_num_threads(threads)


def _run_point(source: dict[str, Any], fresh: bool, beside: Path | None = None) -> str | None:
    """Run one point in this process, its messages in ``log.txt`` in its folder; ``None`` when it finished, else
    what went wrong (a message, or the traceback of an unexpected error)."""
    from rich.console import Console

    output = Path(str(source["output"]))
    output.mkdir(parents=True, exist_ok=True)
    with (output / Outputs.LOG).open("a", encoding="utf-8") as log:
        reporter = Reporter(Console(file=log, width=120, force_terminal=False))
        try:
            pipeline, registry = load_pipeline(source, beside=beside)
            run_pipeline(pipeline, registry, fresh=fresh, reporter=reporter)
        except UserError as exc:
            return str(exc)
        except Exception:  # noqa: BLE001 - reported to the study's process, which stops
            text = traceback.format_exc()
            log.write(text)
            return text.strip().splitlines()[-1]
    return None
