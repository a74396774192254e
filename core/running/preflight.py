"""Checks before a run does any work: the device, settings that involve several components, the checkpoints a run
starts from, and a writable output directory."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..checkpoints import remove_temporaries
from ..components import HARD
from ..config import Pipeline
from ..errors import ConfigError, UserError


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
    """Checks that need several components together, or the machine (each component validated its own fields)."""
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
    checkpoints = pipeline.ensemble.checkpoints
    if checkpoints and len(checkpoints) != pipeline.ensemble.members:
        problems.append(
            f"ensemble.checkpoints: {len(checkpoints)} files for {pipeline.ensemble.members} members; "
            "give one checkpoint per member or change ensemble.members"
        )
    why = pipeline.ensemble.aggregator.check_members(pipeline.ensemble.members)
    if why:
        problems.append(f"ensemble.aggregator: {why}")
    if pipeline.training.enabled:
        for i, reg in enumerate(pipeline.training.regularizers):
            why = reg.check_members(pipeline.ensemble.members)
            if why:
                problems.append(f"training.regularizers[{i}]: {why}")
        try:
            start_checkpoints(pipeline)
        except UserError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(problems, pipeline.origin)


def start_checkpoints(pipeline: Pipeline) -> list[Path]:
    """The member checkpoints ``training.start_from`` names (one per member), or none; a UserError when they do not
    fit the ensemble or do not exist."""
    names = pipeline.training.start_from
    if not names:
        return []
    members = pipeline.ensemble.members
    if len(names) == 1 and not (members == 1 and Path(names[0]).is_file()):  # one entry: a run directory
        run_dir = Path(names[0])
        if not run_dir.is_dir():
            raise UserError(
                f"training.start_from: no such run directory {names[0]!r}; run the pipeline that trains it first, "
                "or name one checkpoint file per member"
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


OUTPUT_FIX = "choose another directory with --output or the pipeline's `output`"


def make_directory(d: Path) -> None:
    """Create the output directory ``d`` (with its parents); a UserError naming it when that cannot be done."""
    try:
        if d.exists() and not d.is_dir():
            raise UserError(f"output: {d} exists and is not a directory; remove it or {OUTPUT_FIX}")
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"output: cannot write to {d}: {exc.strerror or exc}; {OUTPUT_FIX}") from None


def prepare_output(out: Path, *, checkpoints: bool) -> None:
    """Create the output directory (and ``checkpoints/`` when members will be saved) and make sure both are
    writable, before any work; remove temporary files that a killed run's atomic writes left behind."""
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
