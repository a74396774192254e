"""Where a run's messages go: consoles that never cut a value, and progress that suits a terminal or a log.

On a terminal, progress is a live bar. Anywhere else (a pipe, ``nohup``, a batch job's log) a bar would appear only
when finished, so :class:`LogProgress` prints a plain line per task instead: at most every
``ENSEMBLECERT_PROGRESS_SECONDS`` seconds (default 30) and when the task is done, with the count, the rate and the
time left.
"""

from __future__ import annotations

import os
import time
from typing import Any

import attrs
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: The environment variable that sets the seconds between progress lines in logs.
INTERVAL_VARIABLE = "ENSEMBLECERT_PROGRESS_SECONDS"
#: Width for consoles that are not terminals: lines as long as what they hold (tables, names, paths).
UNLIMITED = 100_000


def console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr): the terminal's width on a terminal; elsewhere nothing is cut or wrapped, so
    ``ensemblecert plugins | grep NAME`` finds whole names."""
    found = Console(stderr=stderr)
    return found if found.is_terminal else Console(stderr=stderr, width=UNLIMITED)


def progress(target: Console, *, quiet: bool = False) -> Progress | LogProgress:
    """A live bar on a terminal, plain lines elsewhere; silent when ``quiet``."""
    if target.is_terminal or quiet:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=target,
            disable=quiet,
        )
    return LogProgress(target, interval=float(os.environ.get(INTERVAL_VARIABLE, "30")))


@attrs.define
class _Task:
    description: str
    total: float | None
    completed: float
    status: str
    started: float
    start_count: float  # completed when the task (or its last reset) began: the rate counts only this run's work
    printed: float = 0.0
    each: bool = False  # a line at every step (epochs), not every interval
    repeats: bool = False  # reset and run again (the batches of each epoch): no line when a round finishes


class LogProgress:
    """Progress as plain lines (``certify: 12/30 (40%), 1.3/s, about 14 s left, accuracy 92%``), for logs, one every
    ``interval`` seconds and when a task finishes; a task added with ``each=True`` gets a line at every step
    (``epoch 7/30: 1.3/s, about 14 s left, loss 0.52``), and a task that repeats (``repeats=True``, or reset: an
    epoch's batches) none when a round finishes. It takes the calls of :class:`rich.progress.Progress` that the
    stages make."""

    def __init__(self, target: Console, *, interval: float = 30.0) -> None:
        self.console, self.interval = target, interval
        self._tasks: dict[TaskID, _Task] = {}

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        for task in self._tasks.values():
            if task.total is None or task.completed < task.total:
                self._line(task)  # where an unfinished task stopped

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> TaskID:
        key = TaskID(len(self._tasks))
        now = time.monotonic()
        status = str(fields.get("status", ""))
        each, repeats = bool(fields.get("each", False)), bool(fields.get("repeats", False))
        task = _Task(description.strip(), total, completed, status, now, completed, printed=now, each=each)
        task.repeats = repeats
        self._tasks[key] = task
        return key

    def update(
        self,
        task_id: TaskID,
        *,
        completed: float | None = None,
        advance: float | None = None,
        total: float | None = None,
        **fields: Any,
    ) -> None:
        task = self._tasks[task_id]
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        if "status" in fields:
            task.status = str(fields["status"])
        now = time.monotonic()
        finished = task.total is not None and task.completed >= task.total and not task.repeats
        stepped = task.each and (completed is not None or advance)
        if finished or stepped or now - task.printed >= self.interval:
            self._line(task)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def reset(self, task_id: TaskID, **_: Any) -> None:
        task = self._tasks[task_id]
        task.completed = task.start_count = 0
        task.started = time.monotonic()
        task.repeats = True

    def remove_task(self, task_id: TaskID) -> None:
        self._tasks.pop(task_id, None)

    def _line(self, task: _Task) -> None:
        now = time.monotonic()
        task.printed = now
        done = task.completed - task.start_count
        rate = done / (now - task.started) if now > task.started else 0.0
        count = f"{task.completed:g}" if task.total is None else f"{task.completed:g}/{task.total:g}"
        parts = [f"{task.description} {count}:" if task.each else f"{task.description}: {count}"]
        if task.total and not task.each:
            parts[0] += f" ({task.completed / task.total:.0%})"
        if rate > 0:
            parts.append(f"{rate:.3g}/s")
            if task.total is not None and task.completed < task.total:
                parts.append(f"about {_duration((task.total - task.completed) / rate)} left")
        if task.status:
            parts.append(task.status)
        head, rest = parts[0], ", ".join(parts[1:])
        self.console.print(f"{head} {rest}" if task.each else ", ".join(parts), markup=False, highlight=False)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
