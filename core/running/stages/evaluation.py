"""The evaluation stage: accuracy on clean test inputs and under each attack, per aggregator (``[evaluation]``).

Rows go to ``evaluation.tsv`` batch by batch (see :mod:`ensemblecert.running.evaluation`) and the accuracies to
``evaluation.json``. It runs on rank 0 alone: attacks are cheap next to certification.
"""

from __future__ import annotations

import attrs

from ...checkpoints import write_json
from ...components import Stage
from ..context import Outputs, RunContext, size, weights_digest
from ..evaluation import evaluate


@attrs.frozen
class EvaluationStage(Stage):
    """Evaluate the members under ``[evaluation]``'s attacks; leaves ``run.evaluation``."""

    outputs = (Outputs.EVALUATION_TSV, Outputs.EVALUATION_SUMMARY)
    refusal = (
        "holds results of a different model or evaluation setup; run with --fresh to replace them or choose "
        "another output directory"
    )

    def enabled(self, run: RunContext) -> bool:
        return bool(run.pipeline.evaluation.attacks)

    def check(self, run: RunContext) -> list[str]:
        classes = run.data.info.num_classes
        problems = [(i, attack.check_classes(classes)) for i, attack in enumerate(run.pipeline.evaluation.attacks)]
        return [f"evaluation.attacks[{i}]: {why}" for i, why in problems if why]

    def fingerprint(self, run: RunContext) -> object | None:
        return {
            "weights": weights_digest(run.members),
            # a row depends on its batch, i.e. on skip and batch_size, but not on how many inputs are evaluated
            "evaluation": {k: v for k, v in run.config["evaluation"].items() if k != "max_examples"},
            "seed": run.pipeline.seed,
        }

    def run(self, run: RunContext) -> None:
        if not run.world.main:  # on rank 0 alone
            return
        p, e = run.pipeline, run.pipeline.evaluation
        aggregators = dict(zip(run.labels("evaluation.aggregators"), e.aggregators))
        attacks = dict(zip(run.labels("evaluation.attacks"), e.attacks))
        tsv, meta = run.path(Outputs.EVALUATION_TSV), run.path(Outputs.EVALUATION_SUMMARY)
        indices = list(range(0, size(run.data.test), e.skip))[: e.max_examples]
        with run.reporter.progress() as bar:
            steps = len(indices) * len(aggregators) * (1 + len(attacks))  # each input, clean and under each attack
            task = bar.add_task("evaluate", total=steps, status=", ".join(attacks))
            run.evaluation = evaluate(
                run.members,
                aggregators,
                attacks,
                run.data.test,
                indices,
                tsv,
                batch_size=e.batch_size,
                seed=p.seed,
                device=run.device,
                on_progress=lambda k, what: bar.update(task, advance=k, status=what),
            )
        write_json(meta, {**run.evaluation.to_dict(), "tsv": str(tsv)})
        run.reporter.info(f"Accuracy under attack: {tsv}, {meta}")
