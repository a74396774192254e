"""The report stage: the run's certification results as a table (Markdown and LaTeX) and figures, in the output
directory, the same as ``ensemblecert report`` writes for it. Cheap, so it is written again at every run."""

from __future__ import annotations

import attrs

from ...components import Stage
from ...reports.runs import read_run
from ...reports.writer import FILES, write_report
from ..context import Outputs, RunContext


@attrs.frozen
class ReportStage(Stage):
    """Report the certification results (``report.md``, ``report.tex``, ``certified_accuracy.png``/``.pdf``,
    ``lower_bounds.png``/``.pdf``)."""

    outputs = FILES

    def enabled(self, run: RunContext) -> bool:
        return run.pipeline.certification.enabled

    def run(self, run: RunContext) -> None:
        if not run.world.main or not run.path(Outputs.CERTIFICATION_TSV).exists():
            return
        write_report([read_run(run.out)], run.out)
        run.reporter.info(f"Report: {run.path(Outputs.REPORT)}")
