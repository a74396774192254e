"""The evaluation stage: accuracy on clean test inputs and under each attack, per aggregator (``[evaluation]``).

Rows go to ``evaluation.tsv`` batch by batch (see :mod:`ensemblecert.running.evaluation`) and the accuracies to
``evaluation.json``. It runs on rank 0 alone: attacks are cheap next to certification.
"""

from __future__ import annotations

import attrs

from ...checkpoints import write_json
from ...components import Stage
from ..context import ROUNDING, THROUGH_WEIGHTS, Outputs, RunContext, size, weights_digest
from ..evaluation import evaluate


@attrs.frozen
class EvaluationStage(Stage):
    """Evaluate the members under ``[evaluation]``'s attacks; leaves ``run.evaluation``."""

    outputs = (Outputs.EVALUATION_TSV, Outputs.EVALUATION_UNSELECTED, Outputs.EVALUATION_SUMMARY)
    refusal = (
        "holds results of a different model or evaluation setup; run with --fresh to replace them or choose "
        "another output directory"
    )

    def enabled(self, run: RunContext) -> bool:
        return bool(run.pipeline.evaluation.attacks)

    independent_of = {
        "device": ROUNDING,
        # a row depends on its batch: batches are fixed chunks of every skip-th input, and the last one is attacked
        # whole however many of its inputs are selected
        "evaluation.max_examples": "selects the inputs; a row depends only on its batch, which is attacked whole",
        "engine": "attacks see the members directly, not through the certification engine",
        "noise": "attacks see the members without noise",
        "ensemble.aggregator": "attacks see the members through evaluation.aggregators",
        "ensemble.smoothing": "read by certification only",
        "certification": "another stage's settings",
        "training": THROUGH_WEIGHTS,
        "ensemble.members": THROUGH_WEIGHTS,
        "ensemble.checkpoints": THROUGH_WEIGHTS,
        "heldout": THROUGH_WEIGHTS,
        "plugins": "the components they register are named by the settings that use them",
        "stages": "the plugin stages run after the built-in ones",
    }

    def fingerprint(self, run: RunContext) -> object | None:
        return {"settings": run.settings(self), "weights": weights_digest(run.members)}

    def run(self, run: RunContext) -> None:
        if not run.world.main:  # on rank 0 alone
            return
        p, e = run.pipeline, run.pipeline.evaluation
        aggregators = dict(zip(run.labels("evaluation.aggregators"), e.aggregators))
        attacks = dict(zip(run.labels("evaluation.attacks"), e.attacks))
        tsv, meta = run.path(Outputs.EVALUATION_TSV), run.path(Outputs.EVALUATION_SUMMARY)
        every = list(range(0, size(run.data.test), e.skip))
        indices = every[: e.max_examples]
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
                unselected=run.path(Outputs.EVALUATION_UNSELECTED),
                batches=every,
                batch_size=e.batch_size,
                seed=p.seed,
                device=run.device,
                on_progress=lambda k, what: bar.update(task, advance=k, status=what),
            )
        write_json(meta, {**run.evaluation.to_dict(), "tsv": str(tsv)})
        run.reporter.info(f"Accuracy under attack: {tsv}, {meta}")
