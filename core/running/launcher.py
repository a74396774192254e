"""Runs and studies as cluster jobs, through submitit (``--launcher slurm``; the ``slurm`` extra).

Where one machine is not enough, the work goes to the scheduler researchers already have, not to one of ours:

* **a study**: its points become jobs, submitted as job arrays, each point once the point whose members it uses
  has finished (as ``--jobs`` runs them on one machine);
* **one pipeline**: one job; with ``[launcher] shards = K``, a job that trains (and calibrates) the members and
  records the certification's fingerprint, then K jobs (one array) that each certify their fixed share of the inputs
  (every K-th, as torchrun's ranks do) into ``certification.part-<k>.tsv``, then a job that merges the parts into
  ``certification.tsv`` and runs the stages after certification (where there is nothing after it but the report,
  the submitting process merges them when it collects the results).

The submitting process waits, shows each job's state, and at the end collects the results as a resumed run (which
takes seconds). Every job resumes from the run's files: a job that SLURM preempts or that reaches ``[launcher]
time`` is requeued by submitit and picks up where it stopped, and after a job that died outright, running the
same command again redoes only what is missing. Job logs go to ``<output>/jobs``. ``--launcher local`` runs the same
pickled jobs as processes on this machine (submitit's local executor), which is how the tests run them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..config import LauncherConfig, Pipeline, load_pipeline
from ..distributed import World
from ..errors import UserError
from .report import Reporter

#: The launchers ``--launcher`` accepts: ``slurm``, and ``local`` (the same jobs as processes here).
LAUNCHERS = ("slurm", "local")
#: Where the jobs' logs and submitit's files go, under the run's or the study's output.
JOBS = "jobs"
#: Seconds between two looks at the jobs' states.
POLL = {"slurm": 15.0, "local": 0.5}


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher: needs submitit; pip install 'ensemblecert[slurm]'") from None
    return submitit


def executor(kind: str, options: LauncherConfig, folder: Path, name: str) -> Any:
    """A submitit executor for ``kind`` (``slurm`` or ``local``) with ``options``' resources, logging to ``folder``."""
    if kind not in LAUNCHERS:
        raise UserError(f"--launcher: {kind!r} is not one of {', '.join(LAUNCHERS)}")
    submitit = _submitit()
    ex = submitit.AutoExecutor(folder=str(folder), cluster=kind)
    params: dict[str, Any] = {"timeout_min": options.time, "gpus_per_node": options.gpus, "name": name}
    if options.cpus:
        params["cpus_per_task"] = options.cpus
    if kind == "slurm" and options.partition:
        params["slurm_partition"] = options.partition
    ex.update_parameters(**params)
    return ex


@attrs.frozen
class Job:
    """One job's work on the pipeline ``source`` (plain data, so that it pickles): the ``whole`` run, or for a
    sharded certification its ``prepare`` step or shard ``rank`` of ``shards``. Returns ``None`` when done, else what
    went wrong. submitit calls :meth:`checkpoint` before a timeout or a preemption: the job is requeued as it is
    and resumes from the run's files."""

    source: dict[str, Any]
    part: str = "whole"
    rank: int = 0
    shards: int = 1
    fresh: bool = False
    beside: str | None = None

    def __call__(self) -> str | None:
        from .pipeline import run_pipeline

        try:
            pipeline, registry = load_pipeline(self.source, beside=Path(self.beside) if self.beside else None)
            reporter = Reporter()
            if self.part == "prepare":
                run_pipeline(pipeline, registry, fresh=self.fresh, reporter=reporter, until="certification")
            elif self.part == "shard":
                world = World(rank=self.rank, size=self.shards, independent=True)
                run_pipeline(pipeline, registry, reporter=reporter, world=world, through="certification")
            else:
                run_pipeline(pipeline, registry, fresh=self.fresh, reporter=reporter)
        except UserError as exc:
            return str(exc)
        return None

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        return _submitit().helpers.DelayedSubmission(attrs.evolve(self, fresh=False))

    @property
    def title(self) -> str:
        return f"shard {self.rank + 1} of {self.shards}" if self.part == "shard" else self.part


def submit_array(ex: Any, jobs: Sequence[Job], reporter: Reporter, kind: str) -> list[Any]:
    """Submit ``jobs`` as one job array and say so; the submitit jobs, in order."""
    with ex.batch():
        submitted = [ex.submit(job) for job in jobs]
    reporter.info(f"Submitted {len(submitted)} job(s) to {kind}: {', '.join(j.job_id for j in submitted)}")
    return submitted


def wait(
    jobs: Sequence[tuple[str, Any]],
    reporter: Reporter,
    kind: str,
    title: str,
    *,
    more: Callable[[str], list[tuple[str, Any]]] | None = None,
) -> list[str]:
    """Wait for ``jobs`` (``(name, submitit job)``), showing their states; ``more(name)``, called as each job ends
    well, may submit further jobs to wait for. Returns what went wrong, one line per job that failed or died."""
    pending = list(jobs)
    problems: list[str] = []
    with reporter.progress() as bars:
        total = len(pending)
        task = bars.add_task(title, total=total, status="")
        while pending:
            still = []
            for name, job in pending:
                if not job.done():
                    still.append((name, job))
                    continue
                bars.advance(task)
                try:
                    problem = job.result()
                except Exception as exc:  # noqa: BLE001 - a job that died: say so, with its log
                    problem = (
                        f"job {job.job_id} ended without finishing ({type(exc).__name__}); its log: {job.paths.stderr}"
                    )
                if problem is None:
                    added = more(name) if more is not None else []
                    still += added
                    total += len(added)
                    bars.update(task, total=total)
                else:
                    problems.append(f"{name}: {problem}")
            pending = still
            states = ", ".join(sorted({_state(job) for _, job in pending}))
            bars.update(task, status=f"{len(pending)} jobs {states}" if pending else "")
            if pending:
                time.sleep(POLL[kind])
    return problems


def _state(job: Any) -> str:
    try:
        return str(job.state).lower()
    except Exception:  # noqa: BLE001 - the scheduler did not answer this time
        return "unknown"


def launch_pipeline(
    pipeline: Pipeline,
    *,
    kind: str,
    fresh: bool = False,
    reporter: Reporter,
    beside: Path | None = None,
) -> None:
    """Run ``pipeline`` as cluster jobs (see the module): one job, or with ``[launcher] shards`` the prepare, shard
    and merge jobs in turn. Raises a :class:`UserError` naming each job that failed."""
    options, out = pipeline.launcher, Path(pipeline.output)
    source = dict(pipeline.source)
    where = str(beside) if beside else None
    if options.shards > 1 and not pipeline.certification.enabled:
        raise UserError("launcher.shards: splits the certification, which this pipeline does not run")
    ex = executor(kind, options, out / JOBS, f"ensemblecert:{out.name}")
    steps: list[list[Job]] = [[Job(source, "whole", fresh=fresh, beside=where)]]
    if options.shards > 1:
        shards = [Job(source, "shard", k, options.shards, beside=where) for k in range(options.shards)]
        steps = [[Job(source, "prepare", fresh=fresh, beside=where)], shards]
        if pipeline.evaluation.attacks or pipeline.stages:  # work after certification: a job of its own
            steps.append([Job(source, "whole", beside=where)])
    for step in steps:
        submitted = submit_array(ex, step, reporter, kind)
        title = {"prepare": "members (job)", "shard": "certification shards", "whole": "run (job)"}[step[0].part]
        problems = wait([(job.title, s) for job, s in zip(step, submitted)], reporter, kind, title)
        if problems:
            raise jobs_failed(problems)


def jobs_failed(problems: Sequence[str]) -> UserError:
    """The error naming each job that failed (what :func:`wait` returned), and how to resume."""
    return UserError("; ".join(problems) + "; run the same command again to resume: what the jobs finished is kept")
