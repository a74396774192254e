"""Starting a run: its output directory (emptied of every stage's outputs with ``--fresh``, never of the run's
own inputs), its resolved configuration written, the data loaded and the held-out split taken: the
:class:`~ensemblecert.running.context.RunContext` its stages share."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..checkpoints import write_json
from ..components import Stage
from ..config import Pipeline, describe
from ..distributed import World
from ..errors import UserError
from ..registry import Registry
from .context import Outputs, RunContext, owned, remove, size
from .preflight import prepare_output, resolve_device, start_checkpoints
from .report import Reporter
from .stages.calibration import split_heldout
from .tensorboard import Board


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


def start_run(
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
