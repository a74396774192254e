"""Checks before a run does any work: the device, settings that involve several components, the checkpoints a run
starts from, and a writable output directory."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import check_writable, remove_temporaries
from ..components import HARD, Aggregator, Attack, Regularizer
from ..config import Pipeline, components, load_pipeline, read_toml
from ..errors import ConfigError, UserError
from ..registry import Registry


def resolve_device(name: str) -> torch.device:
    """The torch device for a pipeline's ``device`` setting; a UserError if this machine lacks it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    fix = 'use device = "cpu" or "auto"'
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device: {name!r} requested but CUDA is not available; {fix}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"device: {name!r} requested but this machine has {torch.cuda.device_count()} CUDA devices; {fix}"
            )
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError(f"device: 'mps' requested but this torch build or machine has no MPS support; {fix}")
    return device


def check_pipeline(pipeline: Pipeline) -> None:
    """Checks that need several components together, or the machine (each component validated its own fields): a
    ConfigError listing every problem :func:`pipeline_problems` finds."""
    problems = pipeline_problems(pipeline)
    if problems:
        raise ConfigError(problems, pipeline.origin)


def load_checked(
    source: str | Path | Mapping[str, Any] | None, *, overrides: Sequence[str] = (), plugins: Sequence[object] = ()
) -> tuple[Pipeline, Registry]:
    """:func:`~ensemblecert.load_pipeline`, then :func:`check_pipeline`, every mistake in one ConfigError: where some
    values cannot be read, the checks of settings together still run on the rest (each unreadable value replaced by
    its default, and a problem that names a replaced setting left out, since it would be about the default)."""
    try:
        pipeline, registry = load_pipeline(source, overrides=overrides, plugins=plugins)
    except ConfigError as exc:
        if exc.partial is None:
            raise
        partial, replaced = exc.partial
        more = [p for p in pipeline_problems(partial) if not any(path in p for path in replaced)]
        raise ConfigError([*exc.problems, *more], exc.source) from None
    check_pipeline(pipeline)
    return pipeline, registry


def pipeline_problems(pipeline: Pipeline) -> list[str]:
    """Every problem of settings together, or of the machine, one line each."""
    problems = []
    try:
        resolve_device(pipeline.device)
    except UserError as exc:
        problems.append(str(exc))
    for i, mech in enumerate(pipeline.certification.certifiers):
        why = mech.check_noise(pipeline.noise)
        if why:
            problems.append(f"certification.certifiers[{i}]: {why}")
        for j, strategy in enumerate(pipeline.ensemble.smoothing):
            why = strategy.check_certifier(mech)
            if why:
                problems.append(f"ensemble.smoothing[{j}]: certification.certifiers[{i}]: {why}")
            elif pipeline.engine.checked and strategy.classifier(mech) != HARD:
                problems.append(
                    f"engine.precision: {pipeline.engine.precision!r} checks decisions, but "
                    f"certification.certifiers[{i}] certifies the {strategy.classifier(mech)} smoothed classifier, "
                    "whose tallies sum probabilities that a reduced precision changes; use engine.precision = 'fp32'"
                )
    aggregator = pipeline.ensemble.aggregator
    for j, strategy in enumerate(pipeline.ensemble.smoothing):
        if strategy.needs_member_counts and aggregator.skips_members:
            problems.append(
                f"ensemble.smoothing[{j}]: this strategy needs every member's prediction on every draw, but "
                "ensemble.aggregator skips members (as k_consensus does); use an aggregator that evaluates all "
                "members (for example we) with it"
            )
    missing = pipeline.data.missing_files()
    if missing:
        problems.append(
            f"data: missing {', '.join(missing)}; set data.root (relative paths are relative to the working "
            "directory) or data.download = true where the data set offers it"
        )
    checkpoints = pipeline.ensemble.checkpoints
    for i, name in enumerate(checkpoints):
        if not Path(name).is_file():
            problems.append(
                f"ensemble.checkpoints[{i}]: no such file {name!r} ({Path(name).resolve()}); relative paths are "
                "relative to the working directory"
            )
    if checkpoints and len(checkpoints) != pipeline.ensemble.members:
        problems.append(
            f"ensemble.checkpoints: {len(checkpoints)} files for {pipeline.ensemble.members} members; "
            "give one checkpoint per member or change ensemble.members"
        )
    problems += component_problems(pipeline)
    if pipeline.training.enabled:
        try:
            start_checkpoints(pipeline)
        except UserError as exc:
            problems.append(str(exc))
    return problems


def component_problems(pipeline: Pipeline) -> list[str]:
    """Each component's own checks against the ensemble, wherever the component is listed (an aggregator in
    ``ensemble.aggregator``, ``evaluation.aggregators`` or inside iGAT; a regularizer in a run that trains)."""
    problems, count = [], pipeline.ensemble.members
    for where, c in components(pipeline):
        why = None
        if isinstance(c, Aggregator):
            why = c.check_members(count)
            if why is None and where != "ensemble.aggregator":  # attacks see the ensemble through these
                if not c.differentiable():
                    why = (
                        "attacks see the ensemble through this aggregator and need gradients, which its votes do not "
                        "carry; use one that combines probabilities (we, mme, soft, max)"
                    )
                elif c.needs_heldout():
                    why = (
                        "only ensemble.aggregator is calibrated on held-out data; give this one its fitted "
                        "parameters, or use it as ensemble.aggregator"
                    )
        elif isinstance(c, Regularizer) and pipeline.training.enabled:
            why = c.check_members(count)
        if why:
            problems.append(f"{where}: {why}")
    return problems


def attack_problems(pipeline: Pipeline, num_classes: int) -> list[str]:
    """Each attack's check of the class count (known once the data is loaded), wherever the attack is listed
    (``evaluation.attacks``, inside iGAT or SmoothAdv)."""
    problems = [(where, c.check_classes(num_classes)) for where, c in components(pipeline) if isinstance(c, Attack)]
    return [f"{where}: {why}" for where, why in problems if why]


def start_checkpoints(pipeline: Pipeline) -> list[Path]:
    """The member checkpoints ``training.start_from`` names (one per member), or none; a UserError when they do not
    fit the ensemble or do not exist."""
    names = pipeline.training.start_from
    if not names:
        return []
    members = pipeline.ensemble.members
    own = Path(pipeline.output).resolve()
    for name in names:
        if Path(name).resolve() == own or own in Path(name).resolve().parents:
            raise UserError(
                f"training.start_from: {name!r} is this run's own output directory ({own}), whose members the run "
                "writes; name another run's directory or checkpoints (copy these elsewhere to fine-tune from them)"
            )
    if len(names) == 1 and not (members == 1 and Path(names[0]).is_file()):  # one entry: a run directory
        run_dir = Path(names[0])
        if not run_dir.is_dir():
            maker = _pipeline_writing(run_dir, pipeline.origin)
            first = f"run {maker} first (it writes there)" if maker else "run the pipeline that trains it first"
            raise UserError(
                f"training.start_from: no such run directory {names[0]!r} ({run_dir.resolve()}); {first}, or name one "
                "checkpoint file per member"
            )
        paths = [run_dir / "checkpoints" / f"member_{i}.pt" for i in range(members)]
    elif len(names) != members:
        raise UserError(
            f"training.start_from: {len(names)} files for {members} members; name one checkpoint per member, "
            "or one run directory whose checkpoints/ holds them"
        )
    else:
        paths = [Path(n) for n in names]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise UserError(
            f"training.start_from: no such checkpoint {', '.join(missing)}; train that run first or fix the path"
        )
    return paths


def _pipeline_writing(directory: Path, origin: str | None) -> str | None:
    """A pipeline file beside ``origin`` (the pipeline's own file) whose ``output`` is ``directory``, if any: the
    one to run first when a pipeline fine-tunes from another's members."""
    if origin is None or not Path(origin).is_file():
        return None
    target, itself = directory.resolve(), Path(origin).resolve()
    for candidate in sorted(Path(origin).parent.glob("*.toml")):
        try:
            output = read_toml(candidate).get("output")
        except UserError:
            continue
        if candidate.resolve() != itself and isinstance(output, str) and Path(output).resolve() == target:
            return str(candidate)
    return None


OUTPUT_FIX = "choose another directory with --output or the pipeline's `output`"


def make_directory(d: Path) -> None:
    """Create the output directory ``d`` (with its parents); a UserError naming it when that cannot be done."""
    try:
        if d.exists() and not d.is_dir():
            raise UserError(f"output: {d} exists and is not a directory; remove it or {OUTPUT_FIX}")
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"output: cannot write to {d}: {exc.strerror or exc}; {OUTPUT_FIX}") from None


def prepare_output(out: Path, *, checkpoints: bool, files: Sequence[str] = ()) -> None:
    """Before any work: create the output directory (and ``checkpoints/`` when members will be saved) and make sure
    both take new files; make sure every file already there that the run writes again (``files``: glob patterns,
    the stages' outputs) can be written and is no directory; remove temporary files that a killed run's atomic
    writes left behind."""
    dirs = [out, out / "checkpoints"] if checkpoints else [out]
    for d in dirs:
        make_directory(d)
        try:
            remove_temporaries(d)
            probe = d / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"output: cannot write to {d}: {exc.strerror or exc}; {OUTPUT_FIX}") from None
    for pattern in files:
        for path in sorted(out.glob(pattern)):
            check_writable(path, "output")
