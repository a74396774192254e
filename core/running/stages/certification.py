"""The certification stage: certify the selected test inputs with every smoothing strategy and certifier.

One row per input goes to ``certification.tsv`` as soon as it is certified (under torchrun each rank writes
``certification.part-<rank>.tsv``, merged by rank 0 at the end); a resumed run skips the inputs already there, and the
file keeps exactly the rows of the inputs this configuration selects: rows of the inputs a narrower selection leaves
out (``skip``, ``max_examples``) wait in ``certification.unselected.tsv`` and come back when selected again.
``certification.json`` and the plot are written at the end.
"""

from __future__ import annotations

import attrs

from ...checkpoints import plain, write_json
from ...components import Stage
from ...config import describe
from ...smoothing.certification import Planned, certification_loop
from ...smoothing.results import (
    ExampleResult,
    ResultsWriter,
    gather_results,
    keep_selected,
    merge_results,
    read_results,
    summarize,
)
from ...smoothing.sampling import SharedTallies
from ..context import ROUNDING, THROUGH_WEIGHTS, Outputs, RunContext, size, weights_digest
from ..precision_record import check_record, report_check, start_check
from ..tensorboard import results_of


def certification_plan(run: RunContext) -> list[tuple[str, int, int]]:
    """``(label, strategy index, certifier index)`` for every smoothing strategy and certifier, in results order.

    Labels are the certifiers' labels (:mod:`ensemblecert.config.labels`), prefixed by the strategy's
    (``eas/cohen``) when the pipeline compares several strategies.
    """
    certifiers, strategies = run.labels("certification.certifiers"), run.labels("ensemble.smoothing")
    if len(strategies) == 1:
        return [(label, 0, k) for k, label in enumerate(certifiers)]
    return [(f"{s}/{m}", i, k) for i, s in enumerate(strategies) for k, m in enumerate(certifiers)]


def given_label(run: RunContext) -> list[str]:
    """The labels of the plan's certifiers that certify the true label they are given (not a prediction)."""
    certifiers = run.pipeline.certification.certifiers
    return [label for label, _, k in certification_plan(run) if certifiers[k].needs_label]


def targets_of(run: RunContext) -> dict[str, list[float]]:
    """The target-radius certifiers' radii, by label (:meth:`ensemblecert.Certifier.targets`)."""
    certifiers = run.pipeline.certification.certifiers
    aims = {label: certifiers[k].targets() for label, _, k in certification_plan(run)}
    return {label: list(aim) for label, aim in aims.items() if aim is not None}


def selected(run: RunContext) -> list[int]:
    """The test inputs this configuration certifies (``skip``, ``max_examples``)."""
    c = run.pipeline.certification
    indices = list(range(0, size(run.data.test), c.skip))
    return indices if c.max_examples is None else indices[: c.max_examples]


@attrs.frozen
class CertificationStage(Stage):
    """Certify; leaves ``run.results`` (in input order) and ``run.summary``."""

    outputs = (
        Outputs.CERTIFICATION_TSV,
        Outputs.CERTIFICATION_UNSELECTED,
        Outputs.CERTIFICATION_PARTS,
        Outputs.CERTIFICATION_META,
        Outputs.CERTIFICATION_SUMMARY,
        Outputs.CERTIFICATION_CHECKS,
    )
    refusal = (
        "holds results of a different model or certification setup; run with --fresh to replace them or choose "
        "another output directory"
    )
    independent_of = {
        "device": ROUNDING,
        "engine.layout": ROUNDING,
        "engine.compile": ROUNDING,
        "engine.channels_last": ROUNDING,
        "engine.check_safety": "a checked precision counts float32's decisions whatever its margins",
        "engine.check_audit": "a checked precision counts float32's decisions whatever share it audits",
        "engine.check_probe": "a checked precision counts float32's decisions however long it probes",
        "engine.check_fallback": "a checked precision counts float32's decisions whether or not it falls back",
        "certification.enabled": "a disabled stage does not run; enabled again, it resumes",
        "certification.skip": "selects the inputs; an input's row depends only on it and its own noise stream",
        "certification.max_examples": "selects the inputs; an input's row depends only on it and its own noise stream",
        "certification.radii": "read by the summary and the report, which every run writes again",
        "training": THROUGH_WEIGHTS,
        "ensemble.members": THROUGH_WEIGHTS,
        "ensemble.checkpoints": THROUGH_WEIGHTS,
        "heldout": "reaches these outputs only through the members' weights and the calibrated aggregator, both "
        "in the fingerprint",
        "evaluation": "another stage's settings",
        "plugins": "the components they register are named by the settings that use them",
        "stages": "the plugin stages run after the built-in ones",
    }

    def enabled(self, run: RunContext) -> bool:
        return run.pipeline.certification.enabled

    def fingerprint(self, run: RunContext) -> object | None:
        ensemble = run.assembled()
        return {
            "settings": run.settings(self),
            "weights": weights_digest(ensemble.members),
            "aggregator": plain(describe(ensemble.aggregator, run.registry)),  # as calibrated
            "draws": "shared",  # every certifier starts from the input's one noise stream
        }

    def run(self, run: RunContext) -> None:
        p, c, world, ensemble = run.pipeline, run.pipeline.certification, run.world, run.assembled()
        labels = [label for label, _, _ in certification_plan(run)]
        tsv, unselected = run.path(Outputs.CERTIFICATION_TSV), run.path(Outputs.CERTIFICATION_UNSELECTED)
        parts = sorted(run.out.glob(Outputs.CERTIFICATION_PARTS))
        indices = selected(run)
        wanted = set(indices)
        found = gather_results([tsv, *parts, unselected], labels)
        world.barrier()  # every rank has read the records before rank 0 writes anything
        if world.main:
            engine = {**attrs.asdict(p.engine), "members": ensemble.runner().describe(), "processes": world.size}
            meta = {"certifiers": labels, "given_label": given_label(run), "targets": targets_of(run), "engine": engine}
            write_json(run.path(Outputs.CERTIFICATION_META), meta)
            # rows of inputs this selection leaves out are kept beside, and those it selects again come back
            keep_selected(tsv, parts, unselected, wanted, labels)
        world.barrier()  # no rank appends before the files hold only this selection's rows
        self._announce(run)
        results = [found[i] for i in sorted(found) if i in wanted]
        finished = {r.index for r in results}
        if world.independent:  # shards run apart in time: each keeps its fixed share, whatever the others finished
            todo = [i for i in world.shard(indices) if i not in finished]
        else:
            todo = world.shard([i for i in indices if i not in finished])
        if results:
            run.reporter.info(f"Resuming certification: {len(results)} of {len(indices)} inputs already certified")
        mine = tsv if not world.distributed else run.path(Outputs.CERTIFICATION_PART, rank=world.rank)
        check = start_check(run)
        strategies = p.ensemble.smoothing
        # certifiers with equal sampling settings ask for the same draws of an input: each is drawn once
        smoothed = [SharedTallies(s.smooth(ensemble, p.noise, batch_size=c.batch_size)) for s in strategies]
        plan = [Planned(label, strategies[i], c.certifiers[k], smoothed[i]) for label, i, k in certification_plan(run)]
        correct = sum(r.correct(labels[0]) for r in results)
        with ResultsWriter(mine, labels) as writer, run.reporter.progress() as bar:
            title = "certify" if not world.distributed else f"certify (rank {world.rank} of {world.size})"
            task = bar.add_task(title, total=len(todo) + len(results), completed=len(results), status="")
            test = run.data.test
            loop = certification_loop(
                plan, todo, lambda i: test[i][0], seed=p.seed, device=run.device, label_of=lambda i: int(test[i][1])
            )
            for index, outcomes in loop:
                result = ExampleResult(index=index, label=int(test[index][1]), outcomes=outcomes)
                writer.write(result)
                if check is not None:  # what the check did up to this input, for a resumed run to add to
                    write_json(run.path(Outputs.CERTIFICATION_CHECK, rank=world.rank), check.to_dict())
                results.append(result)
                correct += result.correct(labels[0])
                bar.update(task, advance=1, status=f"accuracy {correct / len(results):.1%}")
                run.board.scalars({"inputs": len(results), "accuracy": correct / len(results)}, len(results), "certify")
        if world.independent:
            return  # a shard running alone: a run of one process merges the parts once every shard is done
        world.barrier()  # every rank's records are written
        parts = sorted(run.out.glob(Outputs.CERTIFICATION_PARTS))
        if world.main and parts:
            merge_results(parts, tsv, labels)
        world.barrier()
        # the rows as recorded (times to 0.1 ms): the summary of a run is the same whether it was resumed or not
        results = [r for r in read_results(tsv, labels) if r.index in wanted]
        results.sort(key=lambda r: r.index)
        run.results = results
        record = check_record(run) if p.engine.checked else None
        run.summary = summarize(
            results,
            labels,
            c.radii,
            members=ensemble.num_members,
            precision=p.engine.precision,
            sound=not p.engine.reduced or (record is not None and record.agreed),
            check=None if record is None else record.to_dict(),
            given_label=given_label(run),
            targets=targets_of(run),
        )
        if record is not None:
            report_check(run, record)
        run.board.scalars(results_of(run.summary), 0, "certified")
        if world.main:
            write_json(run.path(Outputs.CERTIFICATION_SUMMARY), {**run.summary.to_dict(), "tsv": str(tsv)})
            run.reporter.info(f"Results: {tsv}, {run.path(Outputs.CERTIFICATION_SUMMARY)}")

    @staticmethod
    def _announce(run: RunContext) -> None:
        p, world = run.pipeline, run.world
        if run.assembled().runner().compiled:
            run.reporter.info("Members run through torch.compile: the first batches of each size compile them")
        if p.engine.checked:
            run.reporter.info(
                f"engine.precision = {p.engine.precision!r}: members run at the reduced precision; close decisions are "
                f"evaluated again in float32 and {p.engine.check_audit:.0%} of the batches are audited in float32"
            )
        elif p.engine.reduced:
            run.reporter.unsound(
                f"engine.precision = {p.engine.precision!r}: members run in reduced precision, which can change "
                "their predictions; the radii are not sound certificates of the float32 ensemble"
            )
        if world.distributed:
            run.reporter.info(
                f"Certifying on {world.size} processes; each writes certification.part-<rank>.tsv, merged at the end"
            )
