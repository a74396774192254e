"""What a run shows on the terminal: messages, progress bars and the certified-accuracy table."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from ..smoothing.results import Summary, acr_text, share_text
from . import terminal
from .evaluation import EvaluationSummary
from .terminal import LogProgress


class Reporter:
    """Terminal output of a run; ``quiet`` silences everything but errors."""

    def __init__(self, console: Console | None = None, *, quiet: bool = False) -> None:
        self.console = console if console is not None else terminal.console(stderr=True)
        self.quiet = quiet

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, markup=False, highlight=False)

    def warn(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)

    def unsound(self, message: str) -> None:
        """A warning that results are not sound certificates: printed even when ``quiet``."""
        self.console.print(f"[bold red]warning: not sound:[/] {escape(message)}", highlight=False)

    def progress(self) -> Progress | LogProgress:
        """A live bar on a terminal, plain progress lines in a log."""
        return terminal.progress(self.console, quiet=self.quiet)

    def evaluation(self, summary: EvaluationSummary, console: Console | None = None) -> None:
        (console or self.console).print(evaluation_table(summary))

    def summary(self, summary: Summary, radii: Sequence[float], console: Console | None = None) -> None:
        table = summary_table(summary, radii)
        (console or self.console).print(table)


def summary_table(summary: Summary, radii: Sequence[float]) -> Table:
    """Certified accuracy at each radius and ACR, one row per certifier, with the smoothed classifier each certifies;
    a run whose counts may be wrong (reduced precision) says so in the title and caption."""
    title = f"Certified accuracy ({summary.examples} test inputs)"
    caption = None
    if not summary.sound:
        title = f"NOT SOUND ({summary.precision}): {title}"
        caption = f"members ran in {summary.precision}: the radii are not sound certificates of the float32 ensemble"
    table = Table(title=escape(title), caption=caption and escape(caption), caption_style="bold red")
    table.add_column("certifier", style="bold")
    table.add_column("classifier")
    for r in radii:
        table.add_column(f"r = {r:g}", justify="right")
    for col in ("ACR", "abstain", "samples/input", "s/input"):
        table.add_column(col, justify="right")
    for name, m in summary.certifiers.items():
        table.add_row(
            escape(name),
            m.describes,
            *(share_text(m.certified_accuracy[float(r)]) for r in radii),
            acr_text(m.acr),
            f"{m.abstain_rate:.1%}",
            f"{m.mean_samples:,.0f}",
            f"{m.mean_seconds:.3f}",
        )
    return table


def evaluation_table(summary: EvaluationSummary) -> Table:
    """Accuracy, clean and under each attack, one row per aggregator."""
    table = Table(title=f"Accuracy under attack ({summary.examples} test inputs)")
    table.add_column("aggregator", style="bold")
    columns = list(next(iter(summary.accuracy.values())))
    for col in columns:
        table.add_column(escape(col), justify="right")
    for name, row in summary.accuracy.items():
        table.add_row(escape(name), *(f"{row[c]:.1%}" for c in columns))
    return table
