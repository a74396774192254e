"""The report stage: the run's certification results as a table (Markdown and LaTeX) and figures, in the output
directory, the same as ``ensemblecert report`` writes for it. Drawn again whenever what it reads changed (the
results files, the radii); a run that changed nothing leaves it as it is."""

from __future__ import annotations

import attrs

from ...components import Stage
from ...reports.runs import read_run
from ...reports.writer import FILES, write_report
from ..context import Outputs, RunContext, file_digest, read_json

#: The certification settings other than the radii.
CERTIFICATION = ("enabled", "certifiers", "batch_size", "skip", "max_examples")


@attrs.frozen
class ReportStage(Stage):
    """Report the certification results (``report.md``, ``report.tex``, ``certified_accuracy.png``/``.pdf``,
    ``lower_bounds.png``/``.pdf``)."""

    outputs = FILES

    def enabled(self, run: RunContext) -> bool:
        return run.pipeline.certification.enabled

    on_change = "redo"
    #: The report is drawn from the results files (:func:`ensemblecert.reports.runs.read_run`) and the radii.
    independent_of = {
        **{
            key: "reaches the report only through the results files, whose digest the fingerprint holds"
            for key in ("data", "noise", "ensemble", "training", "evaluation", "heldout", "engine", "seed", "device")
        },
        **{f"certification.{key}": "reaches the report only through the results files" for key in CERTIFICATION},
        "plugins": "the components they register are named by the settings that use them",
        "stages": "the plugin stages run after the built-in ones",
    }

    def fingerprint(self, run: RunContext) -> object | None:
        """The settings the report reads (the radii) and the files it is drawn from, as certification left them:
        the report is drawn again when any of them changed."""
        tsv = run.path(Outputs.CERTIFICATION_TSV)
        return {
            "settings": run.settings(self),
            "certifiers": read_json(run.path(Outputs.CERTIFICATION_META), "the run").get("certifiers"),
            "results": file_digest(tsv) if tsv.exists() else None,
            "sound": None if run.summary is None else run.summary.sound,
        }

    def run(self, run: RunContext) -> None:
        if not run.world.main or not run.path(Outputs.CERTIFICATION_TSV).exists():
            return
        if run.path(Outputs.REPORT).exists():  # written last: the report of exactly these results is there
            return
        write_report([read_run(run.out)], run.out, where="output")
        run.reporter.info(f"Report: {run.path(Outputs.REPORT)}")
