"""Runs side by side: certified accuracy at chosen radii, ACR, abstentions and wrong predictions counted apart, and
the cost per input, one row per run and certifier, the best value of each column marked; for the terminal, Markdown
and LaTeX."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence

import attrs
from rich.markup import escape
from rich.table import Table

from ..components import ABSTAIN
from ..smoothing.results import acr_text, share_text
from .runs import RunRecord, differing_settings, flat_settings, run_names


@attrs.frozen
class Row:
    """One certifier of one run over its inputs."""

    run: str
    certifier: str
    classifier: str
    inputs: int | None
    accuracy: tuple[float, ...]  # certified accuracy at each radius of the table
    acr: float
    abstained: int | None
    wrong: int | None  # a class predicted, not the label's
    samples: float | None  # mean per input
    evaluations: float | None  # mean member evaluations per input, where counted
    sound: bool = True
    #: The best over a sweep's points at each radius (as the DRT paper's tables report), not a run of its own.
    over_sweep: bool = False
    #: The run's values of the comparison's differing settings.
    settings: tuple[str, ...] = ()


#: At most this many differing settings become columns; the others are named in a warning.
SETTING_COLUMNS = 6


@attrs.frozen
class Comparison:
    radii: tuple[float, ...]
    rows: tuple[Row, ...]
    #: Settings that differ between the runs compared (TOML paths), shown as columns.
    settings: tuple[str, ...] = ()
    #: What a reader must know before comparing the rows (runs over different inputs, more differing settings).
    warnings: tuple[str, ...] = ()

    def best(self) -> tuple[set[int], ...]:
        """Per radius, then for ACR: the rows holding the column's best value (ties all marked)."""
        runs = [i for i, row in enumerate(self.rows) if not row.over_sweep]
        columns = [[self.rows[i].accuracy[k] for i in runs] for k in range(len(self.radii))]
        columns.append([self.rows[i].acr for i in runs])
        marks = []
        for values in columns:
            top = _best(values)
            marks.append({i for i, v in zip(runs, values) if len(runs) > 1 and v == top})
        return tuple(marks)


def _best(values: Iterable[float]) -> float:
    """The largest measured value (``nan`` when none was measured)."""
    measured = [v for v in values if not math.isnan(v)]
    return max(measured) if measured else math.nan


def compare(records: Sequence[RunRecord], radii: Sequence[float] | None = None, *, sweep: bool = False) -> Comparison:
    """Every run's every certifier at ``radii`` (default: the first run's radii); for the points of a ``sweep``,
    also each certifier's best over the points at each radius (and the best ACR), as one row per certifier."""
    radii = tuple(float(r) for r in (radii if radii is not None else (records[0].radii if records else ())))
    differing = differing_settings(records) if len(records) > 1 and not sweep else []  # (a point's name says)
    shown = differing[:SETTING_COLUMNS]
    warnings = _warnings(records, differing[SETTING_COLUMNS:])
    rows = []
    for name, record in zip(run_names(records), records):
        flat = flat_settings(record.config)
        values = tuple(_value(flat.get(key)) for key in shown)
        summary = record.summary(radii)
        for label in record.labels:
            s = summary.certifiers[label]
            certs = [(r.outcomes[label].certificate, r.label) for r in record.results]
            rows.append(
                Row(
                    run=name,
                    certifier=label,
                    classifier=s.describes,
                    inputs=summary.examples,
                    accuracy=tuple(s.certified_accuracy[r] for r in radii),
                    acr=s.acr,
                    abstained=sum(c.prediction == ABSTAIN for c, _ in certs),
                    wrong=sum(c.prediction not in (ABSTAIN, y) for c, y in certs),
                    samples=s.mean_samples,
                    evaluations=s.mean_evaluations,
                    sound=record.sound,
                    settings=values,
                )
            )
    if sweep:
        labels = list(dict.fromkeys(row.certifier for row in rows))
        for label in labels:
            mine = [row for row in rows if row.certifier == label]
            best = tuple(_best(row.accuracy[k] for row in mine) for k in range(len(radii)))
            rows.append(
                Row(
                    run="best over the sweep",
                    certifier=label,
                    classifier=mine[0].classifier,
                    inputs=None,
                    accuracy=best,
                    acr=_best(row.acr for row in mine),
                    abstained=None,
                    wrong=None,
                    samples=None,
                    evaluations=None,
                    sound=all(row.sound for row in mine),
                    over_sweep=True,
                )
            )
    return Comparison(radii, tuple(rows), tuple(shown), warnings)


def _value(value: object) -> str:
    return "" if value is None else json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)


def _warnings(records: Sequence[RunRecord], hidden: Sequence[str]) -> tuple[str, ...]:
    out = []
    inputs = [frozenset(r.index for r in record.results) for record in records]
    if len(set(inputs)) > 1:
        counts = ", ".join(f"{name}: {len(i)}" for name, i in zip(run_names(records), inputs))
        out.append(
            f"the runs certified different test inputs ({counts}), so their rows are not comparable input by input; "
            "compare runs over the same inputs (certification.skip and max_examples)"
        )
    if hidden:
        out.append(f"{len(hidden)} more settings differ between the runs: {', '.join(hidden)}")
    return tuple(out)


def _texts(c: Comparison) -> int:
    """How many leading columns hold text (run, certifier, classifier, the differing settings)."""
    return 3 + len(c.settings)


def _headers(c: Comparison) -> list[str]:
    return [
        "run",
        "certifier",
        "classifier",
        *c.settings,
        *(f"r = {r:g}" for r in c.radii),
        "ACR",
        "abstained",
        "wrong",
        "inputs",
        "samples/input",
        "evaluations/input",
    ]


def _body(c: Comparison, mark: Callable[[str, bool], str]) -> list[list[str]]:
    """Every row's cells, the best value of each column passed through ``mark(text, True)``."""
    best = c.best()
    body = []
    for i, row in enumerate(c.rows):
        body.append(
            [
                row.run if row.sound else f"{row.run} (NOT SOUND)",
                row.certifier,
                row.classifier,
                *row.settings,
                *(mark(share_text(a), i in best[k]) for k, a in enumerate(row.accuracy)),
                mark(acr_text(row.acr), i in best[-1]),
                "" if row.abstained is None else str(row.abstained),
                "" if row.wrong is None else str(row.wrong),
                "" if row.inputs is None else str(row.inputs),
                "" if row.samples is None else f"{row.samples:,.0f}",
                "" if row.evaluations is None else f"{row.evaluations:,.0f}",
            ]
        )
    return body


def rich_table(c: Comparison, title: str = "Certified accuracy") -> Table:
    table = Table(title=title, caption="best of each column in bold" if len(c.rows) > 1 else None)
    for k, header in enumerate(_headers(c)):
        table.add_column(header, justify="left" if k < _texts(c) else "right", style="bold" if k == 1 else None)
    for cells in _body(c, lambda text, best: f"[bold green]{text}[/]" if best else text):
        texts = _texts(c)  # names and settings are text, never markup
        table.add_row(*(escape(x) for x in cells[:texts]), *cells[texts:])
    return table


def markdown_table(c: Comparison) -> str:
    def md(text: str) -> str:
        return text.replace("|", "\\|")

    headers = _headers(c)
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(["---"] * _texts(c) + ["---:"] * (len(headers) - _texts(c))) + " |",  # text left
    ]
    for cells in _body(c, lambda text, best: f"**{text}**" if best else text):
        lines.append("| " + " | ".join(md(x) for x in cells) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _tex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex_table(c: Comparison) -> str:
    """A ``tabular`` (booktabs rules) to paste into a paper; the best of each column in bold."""
    headers = _headers(c)
    spec = "l" * _texts(c) + "r" * (len(headers) - _texts(c))
    lines = [
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(_tex(h) for h in headers) + " \\\\",
        "\\midrule",
    ]
    for cells in _body(c, lambda text, best: f"\x00{text}\x01" if best else text):
        tex = [_tex(x).replace("\x00", "\\textbf{").replace("\x01", "}") for x in cells]
        lines.append(" & ".join(tex) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"
