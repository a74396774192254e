"""One folder per report: ``report.md`` (the comparison and the figures, ready to paste into a paper or an issue),
``report.tex`` (the table), ``certified_accuracy.png``/``.pdf``, ``lower_bounds.png``/``.pdf`` and, where a certifier
recorded ``E0`` and ``E1`` per input, ``simplex.png``/``.pdf``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..checkpoints import check_writable, write_text
from ..running.context import Outputs
from .figures import certified_accuracy_figure, lower_bound_figure, simplex_figure
from .runs import RunRecord, run_names
from .tables import Comparison, compare, latex_table, markdown_table

#: The files a report writes into its folder (glob patterns: the figures are PNG and PDF).
FILES = (
    Outputs.REPORT,
    Outputs.REPORT_TABLE,
    f"{Outputs.CERTIFIED_ACCURACY_PLOT}.*",
    f"{Outputs.LOWER_BOUNDS_PLOT}.*",
    f"{Outputs.SIMPLEX_PLOT}.*",
)


#: Every file a report may write, by name.
NAMES = (
    Outputs.REPORT,
    Outputs.REPORT_TABLE,
    *(f"{stem}.{ext}" for stem in (Outputs.CERTIFIED_ACCURACY_PLOT, Outputs.LOWER_BOUNDS_PLOT, Outputs.SIMPLEX_PLOT)
      for ext in ("png", "pdf")),
)  # fmt: skip


def write_report(
    records: Sequence[RunRecord],
    folder: str | Path,
    *,
    radii: Sequence[float] | None = None,
    command: str = "",
    sweep: bool = False,
    where: str = "--output",
) -> Comparison:
    """Write the report of ``records`` into ``folder`` (created if missing) and return its comparison. ``command``,
    when given, is the command line that made it, quoted in ``report.md``. Every file is checked first
    (:func:`~ensemblecert.check_writable`, naming ``where``, the option or setting that chose the folder)."""
    folder = Path(folder)
    for name in NAMES:
        check_writable(folder / name, where)
    comparison = compare(records, radii, sweep=sweep)
    curves = certified_accuracy_figure(records, folder / Outputs.CERTIFIED_ACCURACY_PLOT)
    bounds = lower_bound_figure(records, folder / Outputs.LOWER_BOUNDS_PLOT)
    simplex = simplex_figure(records, folder / Outputs.SIMPLEX_PLOT)
    write_text(folder / Outputs.REPORT_TABLE, latex_table(comparison))
    names = run_names(records)
    lines = [f"# Certification report: {', '.join(names)}", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += [
        "Certified accuracy is the share of inputs predicted correctly with a certified L2 radius of at least r; ACR",
        "averages the radius, counting 0 for abstentions and wrong predictions, which are counted apart. Samples and",
        "member evaluations are per input.",
        "",
        markdown_table(comparison),
    ]
    lines += [f"**Warning:** {warning}.\n" for warning in comparison.warnings]
    if len(comparison.rows) > 1:
        lines += ["The best value of each column is in bold.", ""]
    if sweep:
        lines += [
            'The rows "best over the sweep" take, at each radius, the best certified accuracy over the points (and',
            "the best ACR), as tables that report the best over a grid of settings do; no single point need reach",
            "them all.",
            "",
        ]
    if not all(r.sound for r in records):
        lines += ["Runs marked NOT SOUND ran their members in reduced precision: their radii promise nothing.", ""]
    lines += [f"![Certified accuracy against radius]({curves[0].name})", ""]
    if bounds:
        lines += [
            "Where the lower confidence bounds on the top class's probability lie (an input is certified only",
            "above 1/2):",
            "",
            f"![Distribution of the lower bounds]({bounds[0].name})",
            "",
        ]
    if simplex:
        lines += [
            "Each input in the (E0, E1) triangle (Cullen24 Fig. 3), per certifier that recorded both bounds: where",
            "the top class's lower bound and the runner-up's upper bound put it, and whether it was certified.",
            "`ensemblecert simplex RUN_DIR` (the simplex plugin) adds the regions where each mechanism wins.",
            "",
            f"![Inputs in the simplex]({simplex[0].name})",
            "",
        ]
    lines += ["Runs:", ""]
    lines += [f"- {name}: `{r.directory}` ({len(r.results)} inputs)" for name, r in zip(names, records)]
    write_text(folder / Outputs.REPORT, "\n".join(lines) + "\n")
    return comparison
