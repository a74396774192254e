"""Running a pipeline: data -> train (or load) members -> aggregate -> smooth -> certify -> report.

Everything a run produces goes under ``pipeline.output``:

* ``checkpoints/member_<i>.pt``: each trained member with the configuration that produced it;
* ``checkpoints/train_state.pt``: the state after the last finished epoch (for resuming);
* ``train_log.json`` and ``train_log.png``: every term of the training objective per epoch;
* ``certify.tsv``: one row per certified input, appended as soon as it is known;
* ``summary.json`` and ``certified_accuracy.png``: certified accuracy at the requested radii and ACR;
* ``evaluate.tsv`` and ``evaluation.json``: accuracy on clean inputs and under each attack (``[evaluate]``).

A run that was interrupted picks up where it stopped when started again with the same configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from .certification import Planned, certify_inputs
from .checkpoints import load_checkpoint, plain, remove_temporaries, save_checkpoint, write_json
from .distributed import SINGLE, World, join, leave
from .components import Aggregator, DataInfo, DataSplits, HeldOut
from .config import Pipeline, build_component, describe, load_pipeline
from .ensemble import Ensemble, Members, build_member
from .errors import ConfigError, UserError
from .evaluation import EvaluationSummary
from .lock import OutputLock
from .evaluation import evaluate as evaluate_ensemble
from .registry import Registry
from .report import Reporter
from .results import (
    ExampleResult,
    ResultsWriter,
    Summary,
    merge_results,
    plot_certified_accuracy,
    read_results,
    rewrite_results,
    summarize,
)
from .sampling import SharedTallies
from .seeds import generator
from .train_log import TrainLog
from .train_log import status as train_status
from .training import train_ensemble

CHECKPOINT_FORMAT = "ensemblecert.member/1"


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
            raise UserError(f"device: {name!r} requested but this machine has {torch.cuda.device_count()} CUDA devices; {fix}")
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError(f"device: 'mps' requested but this torch build or machine has no MPS support; {fix}")
    return device


def _unique(names: list[str]) -> list[str]:
    """The names, numbered where a name repeats (``cohen#1``, ``cohen#2``)."""
    return [name if names.count(name) == 1 else f"{name}#{names[:i].count(name) + 1}" for i, name in enumerate(names)]


def certification_plan(pipeline: Pipeline, registry: Registry) -> list[tuple[str, int, int]]:
    """``(label, strategy index, mechanism index)`` for every smoothing strategy and mechanism, in results order.

    Labels are the mechanisms' names (numbered when one repeats), prefixed by the strategy's name
    (``eas/cohen``) when the pipeline compares several strategies.
    """
    name = lambda obj: registry.name_of(type(obj)) or type(obj).__name__  # noqa: E731
    mechanisms = _unique([name(m) for m in pipeline.certify.mechanisms])
    strategies = _unique([name(s) for s in pipeline.ensemble.smoothing])
    if len(strategies) == 1:
        return [(label, 0, k) for k, label in enumerate(mechanisms)]
    return [(f"{s}/{m}", i, k) for i, s in enumerate(strategies) for k, m in enumerate(mechanisms)]



def check_pipeline(pipeline: Pipeline) -> None:
    """Checks that need several components together, or the machine (each component validated its own fields)."""
    problems = []
    try:
        resolve_device(pipeline.device)
    except UserError as exc:
        problems.append(str(exc))
    for i, mech in enumerate(pipeline.certify.mechanisms):
        why = mech.check_noise(pipeline.noise)
        if why:
            problems.append(f"certify.mechanisms[{i}]: {why}")
        for j, strategy in enumerate(pipeline.ensemble.smoothing):
            why = strategy.check_mechanism(mech)
            if why:
                problems.append(f"ensemble.smoothing[{j}]: certify.mechanisms[{i}]: {why}")
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
    if pipeline.train.enabled:
        for i, reg in enumerate(pipeline.train.regularizers):
            why = reg.check_members(pipeline.ensemble.members)
            if why:
                problems.append(f"train.regularizers[{i}]: {why}")
        try:
            start_checkpoints(pipeline)
        except UserError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(problems, pipeline.label)


def start_checkpoints(pipeline: Pipeline) -> list[Path]:
    """The member checkpoints ``train.start_from`` names (one per member), or none; a UserError when they do not
    fit the ensemble or do not exist."""
    names = pipeline.train.start_from
    if not names:
        return []
    members = pipeline.ensemble.members
    if len(names) == 1 and not (members == 1 and Path(names[0]).is_file()):  # one entry: a run directory
        run_dir = Path(names[0])
        if not run_dir.is_dir():
            raise UserError(
                f"train.start_from: no such run directory {names[0]!r}; run the pipeline that trains it first, "
                "or name one checkpoint file per member"
            )
        paths = [run_dir / "checkpoints" / f"member_{i}.pt" for i in range(members)]
    elif len(names) != members:
        raise UserError(
            f"train.start_from: {len(names)} files for {members} members; name one checkpoint per member, "
            "or one run directory whose checkpoints/ holds them"
        )
    else:
        paths = [Path(n) for n in names]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise UserError(f"train.start_from: no such checkpoint {', '.join(missing)}; train that run first or fix the path")
    return paths


def prepare_output(out: Path, *, checkpoints: bool) -> None:
    """Create the output directory (and ``checkpoints/`` when members will be saved) and make sure both are
    writable, before any work; remove temporary files that a killed run's atomic writes left behind."""
    dirs = [out, out / "checkpoints"] if checkpoints else [out]
    fix = "choose another directory with --output or the pipeline's `output`"
    for d in dirs:
        try:
            if d.exists() and not d.is_dir():
                raise UserError(f"output: {d} exists and is not a directory; remove it or {fix}")
            d.mkdir(parents=True, exist_ok=True)
            remove_temporaries(d)
            probe = d / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"output: cannot write to {d}: {exc.strerror or exc}; {fix}") from None


def _read_meta(path: Path) -> dict[str, Any]:
    """The certification metadata written beside the results (empty if there is none)."""
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        meta = None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: damaged (not a JSON object); run with --fresh to start the certification over")
    return meta


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(plain(obj), sort_keys=True).encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _weights_digest(members: Sequence[nn.Module]) -> str:
    h = hashlib.sha256()
    for m in members:
        for key, value in m.state_dict().items():
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class _Run:
    def __init__(self, pipeline: Pipeline, registry: Registry, reporter: Reporter, world: World = SINGLE) -> None:
        self.p = pipeline
        self.registry = registry
        self.rep = reporter
        self.world = world
        self.out = Path(pipeline.output)
        self.ckpt_dir = self.out / "checkpoints"
        self.device = resolve_device(pipeline.device)
        self.config = describe(pipeline, registry)
        c = self.config
        self.uses_heldout = pipeline.ensemble.aggregator.needs_heldout()
        self.train_fp = _fingerprint(
            {
                "data": c["data"],
                "model": c["ensemble"]["model"],
                "members": c["ensemble"]["members"],
                "noise": c["train"]["noise"] or c["noise"],
                "seed": c["seed"],
                "train": {k: v for k, v in c["train"].items() if k not in ("enabled", "noise")},
                "heldout": c["heldout"] if self.uses_heldout else None,
                "start_from": [_file_digest(path) for path in start_checkpoints(pipeline)] if pipeline.train.enabled else [],
            }
        )

    # ------------------------------------------------------------------------------ held-out
    def split_heldout(self, data: DataSplits) -> tuple[DataSplits, torch.utils.data.Dataset]:
        """Set ``heldout.fraction`` of the training data aside (chosen with the pipeline seed), record which
        indices in heldout.json, and return the remaining splits and the held-out part."""
        size = len(data.train)
        count = max(1, round(self.p.heldout.fraction * size))
        if count >= size:
            raise UserError(f"heldout.fraction: {self.p.heldout.fraction} leaves no training data of {size} inputs")
        order = torch.randperm(size, generator=generator(self.p.seed, "heldout")).tolist()
        held, kept = sorted(order[:count]), sorted(order[count:])
        if self.world.main:
            write_json(self.out / "heldout.json", {"fraction": self.p.heldout.fraction, "size": size, "indices": held})
        subset = torch.utils.data.Subset
        return attrs.evolve(data, train=subset(data.train, kept)), subset(data.train, held)

    def calibrate(self, aggregator: Aggregator, members: Sequence[nn.Module], heldout: torch.utils.data.Dataset) -> Aggregator:
        """The aggregator fitted on the held-out split, reused from aggregator.json when the same members,
        protocol, noise and split produced it."""
        path = self.out / "aggregator.json"
        fp = _fingerprint(
            {
                "weights": _weights_digest(members),
                "aggregator": self.config["ensemble"]["aggregator"],
                "noise": self.config["noise"],
                "heldout": self.config["heldout"],
                "seed": self.p.seed,
            }
        )
        saved = _read_meta(path)
        if saved.get("fingerprint") == fp and isinstance(saved.get("aggregator"), dict):
            self.rep.info(f"Reusing the calibrated aggregator in {path}")
            return build_component("aggregator", saved["aggregator"], self.registry)
        self.rep.info(f"Calibrating the aggregator on {len(heldout)} held-out inputs")
        held = HeldOut(
            data=heldout,
            noise=self.p.noise,
            generator=generator(self.p.seed, "heldout-noise", device=self.device),
            device=self.device,
            batch_size=self.p.certify.batch_size,
        )
        for m in members:
            m.eval()
        fitted = aggregator.calibrate(Members(members, self.p.engine), held)
        if self.world.main:
            write_json(path, {"fingerprint": fp, "aggregator": plain(describe(fitted, self.registry))})
        return fitted

    # ------------------------------------------------------------------------------ members
    def members(self, data: DataSplits) -> tuple[list[nn.Module], list[float]]:
        p = self.p
        members = [
            build_member(p.ensemble.model, data.info, p.seed + i).to(self.device) for i in range(p.ensemble.members)
        ]
        if p.ensemble.checkpoints:
            self.rep.info(f"Loading {len(members)} members from ensemble.checkpoints (training skipped)")
            for member, path in zip(members, p.ensemble.checkpoints):
                try:
                    self._load_member(member, Path(path), check_fingerprint=False, info=data.info)
                except UserError as exc:
                    raise UserError(f"ensemble.checkpoints: {exc}") from None
            return members, []
        paths = [self.ckpt_dir / f"member_{i}.pt" for i in range(len(members))]
        if all(path.exists() for path in paths):
            for member, path in zip(members, paths):
                self._load_member(member, path, check_fingerprint=p.train.enabled, info=data.info)
            self.rep.info(f"Reusing the {len(members)} trained members in {self.ckpt_dir}")
            return members, []
        if not p.train.enabled:
            raise UserError(
                f"no trained members in {self.ckpt_dir} (expected {', '.join(x.name for x in paths)}); "
                "enable training (train.enabled = true) or name existing files in ensemble.checkpoints"
            )
        return members, self._train(members, data)

    def _load_member(
        self, member: nn.Module, path: Path, *, check_fingerprint: bool, info: DataInfo | None = None
    ) -> None:
        ckpt = load_checkpoint(path)
        if ckpt.get("format") != CHECKPOINT_FORMAT or not isinstance(ckpt.get("state_dict"), Mapping):
            raise UserError(f"{path}: not an ensemblecert member checkpoint (no {CHECKPOINT_FORMAT} weights in it)")
        if check_fingerprint and ckpt.get("fingerprint") != self.train_fp:
            raise UserError(
                f"{path}: was trained with a different configuration than this pipeline's; "
                "run with --fresh to retrain, choose another output directory, or set train.enabled = false "
                "to certify the existing members as they are"
            )
        saved = ckpt.get("data_info") if isinstance(ckpt.get("data_info"), Mapping) else {}
        if info is not None and saved.get("num_classes") not in (None, info.num_classes):
            raise UserError(
                f"{path}: was saved for {saved['num_classes']} classes, but this pipeline's data has "
                f"{info.num_classes}; use a checkpoint trained on data with {info.num_classes} classes"
            )
        if info is not None and saved.get("input_shape") not in (None, list(info.input_shape)):
            raise UserError(
                f"{path}: was saved for inputs of shape {tuple(saved['input_shape'])}, but this pipeline's data "
                f"has {tuple(info.input_shape)}; use a checkpoint trained on the same data"
            )
        try:
            member.load_state_dict(ckpt["state_dict"])
        except (RuntimeError, TypeError, KeyError, ValueError, AttributeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            configured, trained = self.config["ensemble"]["model"], ckpt.get("model")
            what = (f"it was saved for the model {trained}, this pipeline's is {configured}"
                    if trained not in (None, configured) else f"it does not fit the model {configured}")
            raise UserError(f"{path}: {what} ({first})") from None
        member.eval()

    def _train(self, members: list[nn.Module], data: DataSplits) -> list[float]:
        p, t = self.p, self.p.train
        state_path = self.ckpt_dir / "train_state.pt"
        resume = None
        if state_path.exists():
            state = load_checkpoint(state_path)
            if state.get("fingerprint") == self.train_fp:
                resume = state
                self.rep.info(f"Resuming training after epoch {state['epoch']} from {state_path}")
            else:
                raise UserError(
                    f"{state_path}: an interrupted training run of a different configuration; "
                    "run with --fresh to discard it or choose another output directory"
                )
        batches = -(-len(data.train) // t.batch_size)
        start = int(resume["epoch"]) if resume else 0
        starts = start_checkpoints(p)
        if starts and resume is None:
            for member, path in zip(members, starts):
                try:
                    self._load_member(member, path, check_fingerprint=False, info=data.info)
                except UserError as exc:
                    raise UserError(f"train.start_from: {exc}") from None
            self.rep.info(f"Fine-tuning from {', '.join(map(str, starts))}")
        log = TrainLog(self.out / "train_log.json", start)
        with self.rep.progress() as bar:
            epochs = bar.add_task("train", total=t.epochs, completed=start, status="")
            steps = bar.add_task("  epoch", total=batches, status="")

            def on_epoch(epoch: int, record: dict[str, float], state: dict[str, Any]) -> None:
                if self.world.main:
                    log.add(epoch, record)
                    save_checkpoint({**state, "fingerprint": self.train_fp}, state_path)
                self.world.barrier()
                bar.update(epochs, completed=epoch, status=train_status(record))
                bar.reset(steps)

            def on_batch(record: dict[str, float]) -> None:
                bar.advance(steps)
                if record:
                    bar.update(steps, status=train_status(record))

            losses = train_ensemble(
                members,
                data,
                t,
                noise=p.train_noise,
                aggregator=p.ensemble.aggregator,
                seed=p.seed,
                device=self.device,
                resume=resume,
                on_epoch=on_epoch,
                on_batch=on_batch,
                world=self.world,
            )
            bar.remove_task(steps)
        if not self.world.main:
            self.world.barrier()  # rank 0 writes the checkpoints
            return losses
        log.plot(self.out / "train_log.png")
        for i, member in enumerate(members):
            save_checkpoint(
                {
                    "format": CHECKPOINT_FORMAT,
                    "member": i,
                    "seed": p.seed + i,
                    "fingerprint": self.train_fp,
                    "model": plain(self.config["ensemble"]["model"]),
                    "data_info": plain(attrs.asdict(data.info)),
                    "pipeline": plain(self.config),
                    "start_from": [{"path": str(path), "sha256": _file_digest(path)} for path in starts],
                    "state_dict": member.state_dict(),
                },
                self.ckpt_dir / f"member_{i}.pt",
            )
        state_path.unlink(missing_ok=True)
        self.rep.info(f"Saved {len(members)} members to {self.ckpt_dir}")
        self.world.barrier()
        return losses

    # -------------------------------------------------------------------------- certification
    def certify(self, ensemble: Ensemble, data: DataSplits) -> tuple[list[ExampleResult], Summary]:
        p, c = self.p, self.p.certify
        plan = certification_plan(p, self.registry)
        labels = [label for label, _, _ in plan]
        fp = _fingerprint(
            {
                "weights": _weights_digest(ensemble.members),
                "aggregator": plain(describe(ensemble.aggregator, self.registry)),
                "smoothing": self.config["ensemble"]["smoothing"],
                "noise": self.config["noise"],
                "mechanisms": self.config["certify"]["mechanisms"],
                "batch_size": c.batch_size,
                "seed": p.seed,
                "draws": "shared",  # every mechanism starts from the input's one noise stream
                # layout and compilation change only rounding; a reduced precision changes what is counted
                **({"precision": p.engine.precision} if p.engine.reduced else {}),
            }
        )
        tsv, meta = self.out / "certify.tsv", self.out / "certify.json"
        world = self.world
        parts = sorted(self.out.glob("certify.part-*.tsv"))  # records of the ranks of a multi-process run
        found: dict[int, ExampleResult] = {}
        if tsv.exists() or parts:
            previous = _read_meta(meta)
            if previous.get("fingerprint") != fp:
                raise UserError(
                    f"{tsv}: holds results of a different model or certification setup; "
                    "run with --fresh to replace them or choose another output directory"
                )
            for path in [tsv, *parts]:
                if path.exists():
                    for result in read_results(path, labels):
                        found.setdefault(result.index, result)
        done = [found[i] for i in sorted(found)]
        indices = list(range(0, len(data.test), c.skip))
        if c.max_examples is not None:
            indices = indices[: c.max_examples]
        wanted = set(indices)
        world.barrier()  # every rank has read the records before rank 0 writes anything
        if world.main:
            engine = {**attrs.asdict(p.engine), "members": ensemble.runner().describe(), "processes": world.size}
            write_json(meta, {"fingerprint": fp, "mechanisms": labels, "engine": engine})
            # rows of inputs this configuration no longer selects (another skip or max_examples) are dropped
            for path in [tsv, *parts]:
                if path.exists() and any(r.index not in wanted for r in read_results(path, labels)):
                    rewrite_results(path, [r for r in read_results(path, labels) if r.index in wanted], labels)
        world.barrier()  # no rank appends before the files hold only this configuration's rows
        if ensemble.runner().compiled:
            self.rep.info("Members run through torch.compile: the first batches of each size compile them")
        if p.engine.reduced:
            self.rep.unsound(
                f"engine.precision = {p.engine.precision!r}: members run in reduced precision, which can change "
                "their predictions; the radii are not sound certificates of the float32 ensemble"
            )
        results = [r for r in done if r.index in wanted]
        finished = {r.index for r in results}
        todo = world.shard([i for i in indices if i not in finished])
        if results:
            self.rep.info(f"Resuming certification: {len(results)} of {len(indices)} inputs already certified")
        mine = tsv if not world.distributed else self.out / f"certify.part-{world.rank}.tsv"
        if world.distributed:
            self.rep.info(f"Certifying on {world.size} processes; each writes certify.part-<rank>.tsv, merged at the end")
        strategies = p.ensemble.smoothing
        # mechanisms with equal sampling settings ask for the same draws of an input: each is drawn once
        smoothed = [SharedTallies(s.smooth(ensemble, p.noise, batch_size=c.batch_size)) for s in strategies]
        entries = [Planned(label, strategies[i], c.mechanisms[k], smoothed[i]) for label, i, k in plan]
        correct = sum(r.correct(labels[0]) for r in results)
        with ResultsWriter(mine, labels) as writer, self.rep.progress() as bar:
            label = "certify" if not world.distributed else f"certify (rank {world.rank} of {world.size})"
            task = bar.add_task(label, total=len(todo) + len(results), completed=len(results), status="")
            loop = certify_inputs(entries, todo, lambda i: data.test[i][0], seed=p.seed, device=self.device)
            for index, outcomes in loop:
                result = ExampleResult(index=index, label=int(data.test[index][1]), outcomes=outcomes)
                writer.write(result)
                results.append(result)
                correct += result.correct(labels[0])
                bar.update(task, advance=1, status=f"accuracy {correct / len(results):.1%}")
        world.barrier()  # every rank's records are written
        parts = sorted(self.out.glob("certify.part-*.tsv"))
        if world.main and parts:
            merge_results(parts, tsv, labels)
        world.barrier()
        if parts or world.distributed:
            results = [r for r in read_results(tsv, labels) if r.index in wanted]
        results.sort(key=lambda r: r.index)
        summary = summarize(
            results, labels, c.radii, members=ensemble.num_members, precision=p.engine.precision,
            sound=not p.engine.reduced,
        )
        if not world.main:
            return results, summary
        write_json(self.out / "summary.json", {**summary.to_dict(), "tsv": str(tsv)})
        if results:
            plot_certified_accuracy(results, labels, self.out / "certified_accuracy.png")
        return results, summary


    # ----------------------------------------------------------------------------- evaluation
    def evaluate(self, members: Sequence[nn.Module], data: DataSplits) -> EvaluationSummary:
        """Accuracy on clean test inputs and under each attack, per combiner (see :mod:`ensemblecert.evaluation`)."""
        p, e = self.p, self.p.evaluate
        name = lambda obj: self.registry.name_of(type(obj)) or type(obj).__name__  # noqa: E731
        combiners = dict(zip(_unique([name(c) for c in e.combiners]), e.combiners))
        attacks = dict(zip(_unique([name(a) for a in e.attacks]), e.attacks))
        fp = _fingerprint(
            {
                "weights": _weights_digest(members),
                # a row depends on its batch, i.e. on skip and batch_size, but not on how many inputs are evaluated
                "evaluate": {k: v for k, v in self.config["evaluate"].items() if k != "max_examples"},
                "seed": p.seed,
            }
        )
        tsv, meta = self.out / "evaluate.tsv", self.out / "evaluation.json"
        if tsv.exists() and _read_meta(meta).get("fingerprint") != fp:
            raise UserError(
                f"{tsv}: holds results of a different model or evaluation setup; "
                "run with --fresh to replace them or choose another output directory"
            )
        write_json(meta, {"fingerprint": fp})
        indices = list(range(0, len(data.test), e.skip))[: e.max_examples]
        with self.rep.progress() as bar:
            task = bar.add_task("evaluate", total=len(indices), status=", ".join(attacks))
            summary = evaluate_ensemble(
                members, combiners, attacks, data.test, indices, tsv, batch_size=e.batch_size, seed=p.seed,
                device=self.device, on_batch=lambda k: bar.advance(task, k),
            )
        write_json(meta, {"fingerprint": fp, **summary.to_dict(), "tsv": str(tsv)})
        return summary


def run_pipeline(
    pipeline: Pipeline, registry: Registry, *, fresh: bool = False, reporter: Reporter | None = None
) -> RunResult:
    """Run a loaded pipeline (see :func:`ensemblecert.load_pipeline`) and return its results.

    Started by ``torchrun``, every process runs this; they share the work as :mod:`ensemblecert.distributed`
    says, and only rank 0 reports and writes the shared files."""
    reporter = reporter or Reporter(quiet=True)
    check_pipeline(pipeline)
    world = join(pipeline.device)
    lock = OutputLock(pipeline.output)
    try:
        if world.main:  # one lock per run, held by rank 0 from before anything in the directory is touched
            lock.acquire()
        result = _run_stages(pipeline, registry, fresh, reporter if world.main else Reporter(quiet=True), world)
    except BaseException:
        leave(world, synchronize=False)
        raise
    finally:
        lock.release()
    leave(world)
    return result


#: What ``--fresh`` removes from the output directory (with ``checkpoints/`` and ``certify.part-*.tsv``).
FRESH_FILES = ("certify.tsv", "certify.json", "summary.json", "certified_accuracy.png", "aggregator.json",
               "heldout.json", "train_log.json", "train_log.png", "evaluate.tsv", "evaluation.json")


def _refuse_deleting_inputs(pipeline: Pipeline, out: Path) -> None:
    """A UserError when ``--fresh`` would delete a file this run reads (``train.start_from``, ``ensemble.checkpoints``)."""
    doomed_dir = (out / "checkpoints").resolve()
    doomed = {(out / name).resolve() for name in FRESH_FILES}
    inputs = [("ensemble.checkpoints", Path(p)) for p in pipeline.ensemble.checkpoints or []]
    if pipeline.train.enabled:
        inputs += [("train.start_from", p) for p in start_checkpoints(pipeline)]
    for setting, path in inputs:
        where = path.resolve()
        if where in doomed or doomed_dir in where.parents or where.name.startswith("certify.part-") and where.parent == out.resolve():
            raise UserError(
                f"--fresh: would delete {path}, which {setting} names as an input of this run; nothing was deleted. "
                f"Copy it elsewhere and point {setting} there, or write this run to another output directory"
            )


def _run_stages(pipeline: Pipeline, registry: Registry, fresh: bool, reporter: Reporter, world: World) -> RunResult:
    if fresh and world.main:
        _refuse_deleting_inputs(pipeline, Path(pipeline.output))  # everything is checked before anything is deleted
    run = _Run(pipeline, registry, reporter, world)
    if world.main:
        prepare_output(run.out, checkpoints=not pipeline.ensemble.checkpoints)
        if fresh:
            shutil.rmtree(run.ckpt_dir, ignore_errors=True)
            for name in FRESH_FILES:
                (run.out / name).unlink(missing_ok=True)
            for part in run.out.glob("certify.part-*.tsv"):
                part.unlink()
            prepare_output(run.out, checkpoints=not pipeline.ensemble.checkpoints)
        write_json(run.out / "pipeline.json", run.config)
    world.barrier()
    data = pipeline.data.load()
    reporter.info(
        f"Data: {len(data.train)} training and {len(data.test)} test inputs of shape "
        f"{tuple(data.info.input_shape)}, {data.info.num_classes} classes; device {run.device}"
    )
    aggregator = pipeline.ensemble.aggregator
    heldout = None
    if run.uses_heldout:
        data, heldout = run.split_heldout(data)
        reporter.info(f"Held out {len(heldout)} training inputs to calibrate the aggregator (heldout.json)")
    for i, attack in enumerate(pipeline.evaluate.attacks):
        why = attack.check_classes(data.info.num_classes)
        if why:
            raise ConfigError([f"evaluate.attacks[{i}]: {why}"], pipeline.label)
    members, losses = run.members(data)
    if heldout is not None:
        aggregator = run.calibrate(aggregator, members, heldout)
    ensemble = Ensemble(members, aggregator, engine=pipeline.engine)
    ensemble = ensemble.to(run.device).eval()
    if world.distributed:
        reporter.info(f"Running on {world.size} processes (rank 0 reports)")
    results: list[ExampleResult] = []
    summary = None
    if pipeline.certify.enabled:
        results, summary = run.certify(ensemble, data)
        reporter.info(f"Results: {run.out / 'certify.tsv'}, {run.out / 'summary.json'}")
    evaluation = None
    if pipeline.evaluate.attacks and world.main:  # on rank 0 alone
        evaluation = run.evaluate(members, data)
        reporter.info(f"Accuracy under attack: {run.out / 'evaluate.tsv'}, {run.out / 'evaluation.json'}")
    return RunResult(
        pipeline=pipeline,
        output=run.out,
        ensemble=ensemble,
        data_info=data.info,
        results=results,
        summary=summary,
        losses=losses,
        evaluation=evaluation,
        rank=world.rank,
    )


def run(
    source: str | Path | Mapping[str, Any] | None = None,
    *,
    overrides: Sequence[str] = (),
    plugins: Sequence[object] = (),
    fresh: bool = False,
    reporter: Reporter | None = None,
) -> RunResult:
    """Load a pipeline (TOML path, dict, or ``None`` for the built-in default) and run it.

    The Python counterpart of ``ensemblecert run``: ``overrides`` are ``--set`` strings.
    """
    pipeline, registry = load_pipeline(source, overrides=overrides, plugins=plugins)
    return run_pipeline(pipeline, registry, fresh=fresh, reporter=reporter)
