"""The members stage: train the ensemble's members (resuming after the last finished epoch), or load them.

Members come from ``ensemble.checkpoints`` when given (never trained), else from the run's own
``checkpoints/member_<i>.pt`` when a finished training left them, else they are trained: each epoch's state goes to
``checkpoints/train_state.pt`` and the epoch log to ``train_log.json``, both atomically, so a killed run resumes
after its last finished epoch and ends with the weights an uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from torch import nn

from ...checkpoints import load_checkpoint, plain, save_checkpoint
from ...components import Stage
from ...config import Pipeline, build_component
from ...ensemble.assembly import build_member
from ...errors import UserError
from ...training.log import TrainLog
from ...training.log import status as train_status
from ...training.loop import train_ensemble
from ..context import ROUNDING, Outputs, RunContext, file_digest, fingerprint, size
from ..member_checkpoints import CHECKPOINT_FORMAT, load_member, published_architecture
from ..preflight import start_checkpoints


def training_setup(c: Mapping[str, Any], p: Pipeline) -> dict[str, Any]:
    """Everything trained members depend on (their checkpoints record its digest), from the resolved configuration
    ``c`` of the pipeline ``p``."""
    return {
        "data": c["data"],
        "model": c["ensemble"]["model"],
        "members": c["ensemble"]["members"],
        "noise": c["training"]["noise"] or c["noise"],
        "seed": c["seed"],
        "training": {k: v for k, v in c["training"].items() if k not in ("enabled", "noise")},
        "heldout": c["heldout"] if p.ensemble.aggregator.needs_heldout() else None,
        "start_from": [file_digest(path) for path in start_checkpoints(p)] if p.training.enabled else [],
    }


@attrs.frozen
class MembersStage(Stage):
    """Train (or load) the members; leaves ``run.members`` (on the run's device, in evaluation mode) and
    ``run.losses``."""

    outputs = (Outputs.MEMBER.format(index="*"), Outputs.TRAIN_STATE, Outputs.TRAIN_LOG, Outputs.TRAIN_PLOT)
    independent_of = {
        "device": ROUNDING,
        "engine": "evaluates members for certification; training does not use it",
        "ensemble.aggregator": "members train alone or through their regularizers' own settings; how they are "
        "combined is chosen after training (its held-out split is in the fingerprint when it calibrates)",
        "ensemble.smoothing": "read by certification only",
        "ensemble.checkpoints": "given checkpoints replace training, and the stage then records nothing",
        "training.enabled": "without training the stage loads the members it finds, checked against this fingerprint",
        "heldout": "in the fingerprint when the aggregator calibrates (the members then train on the rest); "
        "otherwise unused",
        "certification": "a later stage's settings",
        "evaluation": "a later stage's settings",
        "plugins": "the components they register are named by the settings that use them",
        "stages": "the plugin stages run after the built-in ones",
    }
    refusal = (
        "was trained with a different configuration than this pipeline's; run with --fresh to retrain, choose "
        "another output directory, or set training.enabled = false to certify the existing members as they are"
    )

    def fingerprint(self, run: RunContext) -> object | None:
        """The training setup when this run trains its members; nothing to check when it only loads them.

        The setup (:func:`training_setup`) is the stage's own list of the settings, kept because checkpoints and
        studies record its digest; ``tests/test_fingerprints.py`` checks it against :attr:`independent_of`."""
        p = run.pipeline
        return training_setup(run.config, run.pipeline) if p.training.enabled and not p.ensemble.checkpoints else None

    def recorded(self, run: RunContext, name: str) -> str | None:
        """Member checkpoints and the training state carry the digest of the setup that made them (so trained
        members copied into another run directory are recognised)."""
        for path in [run.path(Outputs.TRAIN_STATE), *sorted(run.out.glob(Outputs.MEMBER.format(index="*")))]:
            if path.exists():
                value = load_checkpoint(path, mmap=True).get("fingerprint")  # the weights are not read
                return value if isinstance(value, str) else None
        return run.recorded(name)

    def run(self, run: RunContext) -> None:
        p = run.pipeline
        info = run.data.info
        members = [build_member(p.ensemble.model, info, p.seed + i).to(run.device) for i in range(p.ensemble.members)]
        run.members = members
        model = run.config["ensemble"]["model"]
        if p.ensemble.checkpoints:
            run.reporter.info(f"Loading {len(members)} members from ensemble.checkpoints (training skipped)")
            for i, file in enumerate(p.ensemble.checkpoints):
                try:
                    ckpt = load_checkpoint(Path(file))
                    arch = published_architecture(ckpt, Path(file))
                    if arch is not None and arch != model.get("name"):  # the file says which network it holds
                        network = build_component("model", {"name": arch}, run.registry)
                        members[i] = build_member(network, info, p.seed + i).to(run.device)
                        run.reporter.info(f"  member {i}: {arch}, as {file} says")
                    load_member(members[i], Path(file), model=arch or model, info=info, ckpt=ckpt, foreign=True)
                except UserError as exc:
                    raise UserError(f"ensemble.checkpoints: {exc}") from None
            return
        paths = [run.path(Outputs.MEMBER, index=i) for i in range(len(members))]
        if all(path.exists() for path in paths):
            expected = fingerprint(training_setup(run.config, run.pipeline)) if p.training.enabled else None
            for member, path in zip(members, paths):
                load_member(member, path, model=model, info=info, fingerprint=expected)
            run.reporter.info(f"Reusing the {len(members)} trained members in {run.path(Outputs.CHECKPOINTS)}")
            return
        if not p.training.enabled:
            raise UserError(
                f"no trained members in {run.path(Outputs.CHECKPOINTS)} (expected {', '.join(x.name for x in paths)}); "
                "enable training (training.enabled = true) or name existing files in ensemble.checkpoints"
            )
        run.losses = self._train(run, members)

    def _train(self, run: RunContext, members: list[nn.Module]) -> list[float]:
        p, t, world = run.pipeline, run.pipeline.training, run.world
        setup = fingerprint(training_setup(run.config, run.pipeline))
        state_path = run.path(Outputs.TRAIN_STATE)
        resume = None
        if state_path.exists():
            state = load_checkpoint(state_path)
            if state.get("fingerprint") != setup:
                raise UserError(
                    f"{state_path}: an interrupted training run of a different configuration; "
                    "run with --fresh to discard it or choose another output directory"
                )
            resume = state
            run.reporter.info(f"Resuming training after epoch {state['epoch']} from {state_path}")
        batches = -(-size(run.data.train) // t.batch_size)
        start = int(resume["epoch"]) if resume else 0
        starts = start_checkpoints(p)
        if starts and resume is None:
            for member, path in zip(members, starts):
                try:
                    load_member(member, path, model=run.config["ensemble"]["model"], info=run.data.info)
                except UserError as exc:
                    raise UserError(f"training.start_from: {exc}") from None
            run.reporter.info(f"Fine-tuning from {', '.join(map(str, starts))}")
        log = TrainLog(run.path(Outputs.TRAIN_LOG), start)
        with run.reporter.progress() as bar:
            epochs = bar.add_task("epoch", total=t.epochs, completed=start, status="", each=True)
            steps = bar.add_task("  batch", total=batches, status="", repeats=True)

            def on_epoch(epoch: int, record: Mapping[str, float], state: dict[str, Any]) -> None:
                if world.main:
                    log.add(epoch, record)
                    run.board.scalars(record, epoch, "train")
                    save_checkpoint({**state, "fingerprint": setup}, state_path)
                world.barrier()
                bar.update(epochs, completed=epoch, status=train_status(record))
                bar.reset(steps)

            def on_batch(record: Mapping[str, float]) -> None:
                bar.advance(steps)
                if record:
                    bar.update(steps, status=train_status(record))

            losses = train_ensemble(
                members,
                run.data,
                t,
                noise=p.train_noise,
                seed=p.seed,
                device=run.device,
                resume=resume,
                on_epoch=on_epoch,
                on_batch=on_batch,
                world=world,
            )
            bar.remove_task(steps)
        if not world.main:
            world.barrier()  # rank 0 writes the checkpoints
            return losses
        log.plot(run.path(Outputs.TRAIN_PLOT))
        for i, member in enumerate(members):
            save_checkpoint(
                {
                    "format": CHECKPOINT_FORMAT,
                    "member": i,
                    "seed": p.seed + i,
                    "fingerprint": setup,
                    "model": plain(run.config["ensemble"]["model"]),
                    "data_info": plain(attrs.asdict(run.data.info)),
                    "pipeline": plain(run.config),
                    "start_from": [{"path": str(path), "sha256": file_digest(path)} for path in starts],
                    "state_dict": member.state_dict(),
                },
                run.path(Outputs.MEMBER, index=i),
            )
        state_path.unlink(missing_ok=True)
        run.reporter.info(f"Saved {len(members)} members to {run.path(Outputs.CHECKPOINTS)}")
        world.barrier()
        return losses
