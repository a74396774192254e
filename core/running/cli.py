"""The ``ensemblecert`` command: run, validate, plugins, default, and the commands plugins register."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..defaults import default_pipeline_text
from ..errors import UserError, file_error
from .terminal import console

if TYPE_CHECKING:
    from ..components import Command
    from ..registry import Registry

# Only what parsing needs is imported above: torch and the rest load inside the command that needs them, so that
# --help, `default` and a mistyped option answer at once.

EPILOG = """\
Plugins add commands of their own (`ensemblecert plugins` lists them under "command");
`ensemblecert COMMAND --help` describes each.

examples:
  ensemblecert run                                 # the built-in default pipeline (digits, offline)
  ensemblecert run examples/digits.toml --set training.epochs=5 --set certification.certifiers[0].n=2000
  ensemblecert validate my_pipeline.toml
  ensemblecert plugins
  ensemblecert default > my_pipeline.toml          # start a pipeline from the default
"""


def _add_pipeline_args(p: argparse.ArgumentParser, *, several: bool = False) -> None:
    if several:
        p.add_argument(
            "pipelines",
            nargs="*",
            metavar="PIPELINE",
            help="pipeline TOML files (default: the built-in digits pipeline, see `ensemblecert default`)",
        )
    else:
        p.add_argument(
            "pipeline",
            nargs="?",
            help="pipeline TOML file (default: the built-in digits pipeline, see `ensemblecert default`)",
        )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a setting, e.g. --set training.epochs=5 or --set certification.certifiers[0].alpha=0.01 "
        "(VALUE is read as TOML; bare words are strings); repeatable",
    )


BUILT_IN = ("run", "validate", "plugins", "default", "report", "reference")


def plugin_commands(registry: Registry) -> dict[str, Command]:
    """The commands plugins registered, by name; a UserError if one takes a built-in command's name."""
    commands = {}
    for comp in registry:
        if comp.kind != "command":
            continue
        if comp.name in BUILT_IN:
            raise UserError(
                f"plugin {comp.plugin!r} registers the command {comp.name!r}, which is built in; "
                "register it under another name"
            )
        commands[comp.name] = comp.cls()
    return commands


def build_parser(commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ensemblecert",
        description="Train ensembles and certify their L2 robustness with randomized smoothing.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="train (or load) an ensemble and certify it",
        description="Run a pipeline: data -> train or load members -> aggregate -> smooth -> certify -> report. "
        "Results are written as they are produced; rerunning an interrupted run resumes it.",
    )
    _add_pipeline_args(run)
    run.add_argument("--output", "-o", help="output directory (overrides the pipeline's `output`)")
    run.add_argument("--device", help="cpu, cuda, cuda:N or auto (overrides the pipeline's `device`)")
    run.add_argument(
        "--fresh", action="store_true", help="discard earlier checkpoints and results in the output directory"
    )
    run.add_argument("--skip-train", action="store_true", help="certify existing checkpoints; never train")
    run.add_argument("--skip-certify", action="store_true", help="only train (or load) the members")
    run.add_argument("--quiet", "-q", action="store_true", help="print only the final table and errors")
    run.add_argument(
        "--processes",
        type=int,
        metavar="K",
        help="spread the run over K processes on this machine (starts the same command under torchrun; "
        "for several machines call torchrun yourself, see docs/engine.md)",
    )
    run.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=1,
        metavar="J",
        help="a study: run J points at a time, each in a process of its own (its messages in log.txt in its folder)",
    )
    run.add_argument(
        "--launcher",
        choices=("slurm", "local"),
        help="run as cluster jobs through submitit: a study's points as job arrays, a pipeline as one job or, with "
        "[launcher] shards = K, its certification as K jobs; resources from the [launcher] table or --set "
        "launcher.partition=... (local: the same jobs as processes here); needs pip install 'ensemblecert[slurm]'",
    )

    val = sub.add_parser(
        "validate",
        help="check pipeline files without running them",
        description="Load each pipeline, resolve every component and check every value; print what would run. "
        "Every file is checked; the exit status is 2 if any is invalid.",
    )
    _add_pipeline_args(val, several=True)

    plug = sub.add_parser(
        "plugins",
        help="list every registered component by kind and the plugin that provides it",
        description="List the components registered by the built-in and installed plugins.",
    )
    plug.add_argument(
        "--plugin", dest="modules", action="append", default=[], metavar="MODULE", help="also load this plugin module"
    )

    sub.add_parser(
        "default", help="print the built-in default pipeline (TOML)", description="Print the built-in default pipeline."
    )

    sub.add_parser(
        "reference",
        help="print the reference of every setting, component and command (Markdown)",
        description="Print the reference of every pipeline setting, every registered component's parameters and "
        "every command, generated from the schema, the registry and this parser (docs/reference.md is its output).",
    )

    rep = sub.add_parser(
        "report",
        help="compare runs: certified accuracy tables and figures of their results",
        description="Read the certification results of one or more runs and write a report: report.md (a table of "
        "certified accuracy at chosen radii, ACR, abstentions and wrong predictions, samples and member "
        "evaluations per input, the best value of each column marked, and the figures), report.tex (the table), "
        "certified_accuracy.png/.pdf (accuracy against radius) and lower_bounds.png/.pdf (the distribution of the "
        "lower confidence bounds). `ensemblecert run` writes the same report for its own run.",
    )
    rep.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run output directories (a study's folder: all its points)"
    )
    rep.add_argument(
        "--output", "-o", help="folder for the report (default: the run's directory, or ./report for several runs)"
    )
    rep.add_argument(
        "--radii", type=float, nargs="+", metavar="R", help="radii of the table (default: the first run's)"
    )
    for name, command in (commands or {}).items():
        doc = (type(command).__doc__ or name).strip()
        parser_ = sub.add_parser(
            name, help=doc.splitlines()[0], description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        command.add_arguments(parser_)
    return parser


def _first_command(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` (the first argument that is not an option), if any."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


#: How long (busy-wait iterations) an OpenMP thread spins before it sleeps, unless the user says otherwise. The
#: runtime's default (300,000) keeps idle threads spinning through every wait: on a machine shared with other
#: CPU-bound work they take the cores from the threads that have work, and a run took 6.4 times its idle time beside
#: two busy processes on 2 cores. 10,000 sleeps almost at once under load and costs nothing idle
#: (benchmarks/contention.py, figures in docs/engine.md).
SPINCOUNT = "10000"


def wait_politely() -> None:
    """Set :data:`SPINCOUNT` for the OpenMP runtime torch loads, before it loads, unless the environment already
    chooses a wait policy (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``: the user's settings win)."""
    if "torch" in sys.modules or any(k in os.environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
        return
    os.environ["GOMP_SPINCOUNT"] = SPINCOUNT


def main(argv: Sequence[str] | None = None) -> int:
    wait_politely()
    argv = list(sys.argv[1:] if argv is None else argv)
    out, err = console(), console(stderr=True)
    commands: dict[str, Command] = {}
    if _first_command(argv) not in (None, *BUILT_IN):  # perhaps a plugin's command: load the plugins to know
        from ..manager import load_registry

        try:
            commands = plugin_commands(load_registry())
        except UserError as exc:
            return _fail(err, exc)
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "run":
            return _run(args, out, err)
        if args.command == "validate":
            return _validate_all(args, out, err)
        if args.command == "plugins":
            return _plugins(args, out)
        if args.command == "default":
            sys.stdout.write(default_pipeline_text())
            return 0
        if args.command == "report":
            return _report(args, argv, out)
        if args.command == "reference":
            from ..manager import load_registry
            from .reference import reference_text

            registry = load_registry()
            sys.stdout.write(reference_text(registry, build_parser(plugin_commands(registry))))
            return 0
        if args.command in commands:
            return commands[args.command].run(args, out)
    except UserError as exc:
        return _fail(err, exc)
    except OSError as exc:  # a file that could not be read or written after the checks: the path and the reason
        return _fail(err, file_error(exc, "nothing already written was lost; fix the path or its permissions"))
    except KeyboardInterrupt:
        err.print("interrupted; everything finished so far is saved; run the same command again to resume")
        return 130
    return 2  # pragma: no cover


def _fail(err: Console, exc: UserError) -> int:
    err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
    return exc.exit_code


def _torchrun(processes: int) -> int:
    """Run this same command under ``torchrun`` with ``processes`` processes and return its exit status; the count
    was checked by :func:`_check_processes`. When a process stops on bad input (status 2, its message printed),
    the status is 2 and torchrun's failure report is left out; any other failure names the processes."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--processes":
            skip = True
        elif not arg.startswith("--processes="):
            argv.append(arg)
    launch = ["--standalone", f"--nproc_per_node={processes}", "-m", "ensemblecert", *argv]
    # The cores shared out (torchrun would set 1 thread each and say so); the launcher's own log lines left out:
    # the processes print what matters, and a failure is summed up below.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    for name in ("torch.distributed.run", "torch.distributed.elastic"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        torchrun.run(torchrun.parse_args(launch))
    except ChildFailedError as exc:
        codes = {rank: failure.exitcode for rank, failure in exc.failures.items()}
        if 2 in codes.values():
            return 2
        failed = ", ".join(
            f"rank {rank} ({f'killed by signal {-code}' if code < 0 else f'exit status {code}'})"
            for rank, code in sorted(codes.items())
        )
        console(stderr=True).print(
            f"error: {failed} failed (their own messages, if any, are above); everything finished so far is saved: "
            "run the same command again to resume",
            highlight=False,
        )
        return 1
    return 0


def _spread(processes: int | None, device: str) -> int | None:
    """With ``--processes K`` (and not already under torchrun): check K, then run the command in K processes under
    torchrun and return its exit status (``None``: this process runs it)."""
    if processes is None or "WORLD_SIZE" in os.environ:
        return None
    _check_processes(processes, device)
    return _torchrun(processes) if processes > 1 else None


def _check_cores(processes: int) -> None:
    """A UserError unless ``processes`` is between 1 and this machine's CPU cores."""
    if processes < 1:
        raise UserError(f"--processes: must be at least 1, got {processes}")
    cores = os.cpu_count() or 1
    if processes > cores:
        raise UserError(f"--processes: {processes} processes on a machine with {cores} CPU cores; use at most {cores}")


def _check_processes(processes: int, device: str) -> None:
    """A UserError unless ``processes`` is between 1 and what this machine has for ``device``."""
    _check_cores(processes)
    if device.startswith("cuda") or device == "auto":
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus and processes > gpus:
            raise UserError(f"--processes: {processes} processes for {gpus} GPUs; use at most {gpus} (one per GPU)")


def _run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from .pipeline import run_pipeline
    from .preflight import load_checked
    from .report import Reporter
    from .study import is_study

    overrides = list(args.overrides)
    if args.output is not None:
        if not args.output.strip():
            raise UserError("--output: must not be empty; give a directory, e.g. --output runs/mine")
        overrides.append(f"output={_toml_string(args.output)}")
    if args.device is not None:
        overrides.append(f"device={_toml_string(args.device)}")
    if args.skip_train:
        overrides.append("training.enabled=false")
    if args.skip_certify:
        overrides.append("certification.enabled=false")
    if args.processes is not None and "WORLD_SIZE" not in os.environ:
        _check_cores(args.processes)  # the option first: it is wrong whatever the pipeline says
    if is_study(args.pipeline):
        return _run_study(args, overrides, out, err)
    if args.jobs != 1:
        raise UserError("--jobs: runs points of a study at once; this pipeline has no [sweep] (use --processes)")
    if args.launcher is not None and args.processes is not None:
        raise UserError("--launcher and --processes: choose one (cluster jobs, or K processes on this machine)")
    pipeline, registry = load_checked(args.pipeline, overrides=overrides)  # every mistake, before any work
    if (status := _spread(args.processes, pipeline.device)) is not None:
        return status
    reporter = Reporter(err, quiet=args.quiet)
    fresh = args.fresh
    if args.launcher is not None:
        from .launcher import launch_pipeline

        beside = Path(args.pipeline).resolve().parent if args.pipeline else None  # its plugin modules, for the jobs
        launch_pipeline(pipeline, kind=args.launcher, fresh=fresh, reporter=reporter, beside=beside)
        fresh = False  # the jobs did the work: collect it
        reporter.info("Collecting the results")
    result = run_pipeline(pipeline, registry, fresh=fresh, reporter=reporter)
    if result.rank != 0:
        return 0  # rank 0 prints
    if result.summary is not None:
        reporter.summary(result.summary, pipeline.certification.radii, console=out)
    if result.evaluation is not None:
        reporter.evaluation(result.evaluation, console=out)
    if result.summary is None and result.evaluation is None:
        reporter.info(f"Trained members are in {result.output / 'checkpoints'}")
    return 0


def _report(args: argparse.Namespace, argv: Sequence[str], out: Console) -> int:
    import shlex

    from ..reports.runs import read_runs
    from ..reports.tables import rich_table
    from ..reports.writer import write_report

    if args.output is not None and not args.output.strip():
        raise UserError("--output: must not be empty; give a folder, or leave the option out for the default")
    records, sweep = read_runs(args.runs)
    folder = args.output if args.output is not None else args.runs[0] if len(args.runs) == 1 else "report"
    if args.radii is not None and any(r < 0 for r in args.radii):
        raise UserError(f"--radii: radii are at least 0, got {args.radii}")
    command = "ensemblecert " + " ".join(shlex.quote(a) for a in argv)
    comparison = write_report(records, folder, radii=args.radii, command=command, sweep=sweep)
    out.print(rich_table(comparison))
    for warning in comparison.warnings:
        out.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    out.print(f"Report: {escape(str(Path(folder) / 'report.md'))}", highlight=False)
    return 0


def _run_study(args: argparse.Namespace, overrides: list[str], out: Console, err: Console) -> int:
    from ..reports.runs import read_run
    from ..reports.tables import compare, rich_table
    from .pipeline import check_pipeline
    from .report import Reporter
    from .study import load_study, run_study

    study = load_study(args.pipeline, overrides=overrides)
    for pipeline in study.pipelines:
        check_pipeline(pipeline)
    if args.launcher is not None and (args.jobs != 1 or args.processes is not None):
        raise UserError("--launcher: the cluster runs the points; leave out --jobs and --processes")
    if args.jobs != 1:
        if args.processes is not None:
            raise UserError("--jobs and --processes: choose one (points at once, or each point over K processes)")
        cores = os.cpu_count() or 1
        if not 1 <= args.jobs <= cores:
            raise UserError(f"--jobs: between 1 and this machine's {cores} CPU cores, got {args.jobs}")
    if (status := _spread(args.processes, study.pipelines[0].device)) is not None:
        return status
    reporter = Reporter(err, quiet=args.quiet)
    reporter.info(
        f"Study of {len(study.points)} points in {study.output}: {study.trainings} of them train, the others "
        "share their members"
    )
    results = run_study(study, fresh=args.fresh, reporter=reporter, jobs=args.jobs, launcher=args.launcher)
    if results and results[0].rank != 0:
        return 0
    certified = [read_run(r.output) for r in results if r.summary is not None]
    if certified:
        out.print(rich_table(compare(certified, sweep=True), title=f"Study {study.output}"))
    return 0


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string (JSON's escapes are valid TOML escapes; non-ASCII stays as it is)."""
    return json.dumps(text, ensure_ascii=False)


def _validate_all(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Validate every file named (the default pipeline when none is); one message per invalid file."""
    status = 0
    for path in args.pipelines or [None]:
        try:
            _validate(path, args.overrides, out)
        except UserError as exc:
            status = max(status, _fail(err, exc))
    return status


def _validate(path: str | None, overrides: Sequence[str], out: Console) -> None:
    from ..config import describe
    from .pipeline import check_pipeline
    from .preflight import load_checked
    from .reference import inline
    from .study import is_study, load_study

    if is_study(path):
        study = load_study(path, overrides=overrides)
        for pipeline in study.pipelines:
            check_pipeline(pipeline)
        table = Table(title=escape(f"{path}: a valid study of {len(study.points)} points"))
        for column in ("point", "settings", "members from"):
            table.add_column(column)
        for point, leader in zip(study.points, study.trains_with):
            settings = ", ".join(f"{k} = {inline(v)}" for k, v in point.settings)
            trained = "its own training" if study.points[leader] == point else study.points[leader].name
            table.add_row(escape(point.name), escape(settings), escape(trained))
        out.print(table)
        return

    pipeline, registry = load_checked(path, overrides=overrides)
    config = describe(pipeline, registry)
    table = Table(title=escape(f"{path or 'built-in default pipeline'}: valid"), show_header=False)
    table.add_column("setting", style="bold")
    table.add_column("value")
    for key in ("data", "noise"):
        table.add_row(key, escape(inline(config[key])))
    for section in ("ensemble", "training", "certification", "evaluation"):
        for key, value in config[section].items():
            table.add_row(f"{section}.{key}", escape(inline(value)))
    for key in ("seed", "device", "output", "plugins"):
        table.add_row(key, escape(inline(config[key])))
    out.print(table)


def _plugins(args: argparse.Namespace, out: Console) -> int:
    from ..manager import load_registry
    from ..registry import KINDS
    from .reference import field_default

    registry = load_registry(args.modules)
    table = Table(title="Registered components")
    table.add_column("kind", style="bold")
    table.add_column("name", style="cyan")
    table.add_column("plugin")
    table.add_column("parameters")
    table.add_column("description")
    for kind in KINDS.values():
        comps = [c for c in registry if c.kind == kind.name]
        if not comps:
            table.add_row(kind.title, "[dim](none)[/]", "", "", "")
        for i, comp in enumerate(comps):
            params = ", ".join(f"{a.alias}={field_default(a) or '(required)'}" for a in comp.parameters)
            table.add_row(
                kind.title if i == 0 else "",
                escape(comp.name),
                escape(comp.plugin),
                escape(params),
                escape(comp.summary),
            )
        table.add_section()
    out.print(table)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
