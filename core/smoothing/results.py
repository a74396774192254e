"""Results: one TSV row per certified input, written as soon as it is known, and a summary.

Columns: the base columns (``idx label predict radius correct time samples evaluations classifier``) for the
first certifier, ``classifier`` naming the smoothed classifier the certificate is about (``hard`` or ``soft``);
with several certifiers the same per certifier as ``<label>:<field>``; then extra columns ``<label>:<key>`` for
everything a certificate's ``details`` holds (bounds, counts, stages, per-member radii) and, where an aggregator
settled samples early, ``<label>:kcr``. The extra columns are fixed by the first
row written; a resumed run reads them back.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from ..components import ABSTAIN, HARD, SMOOTHED_CLASSIFIERS, Certificate
from ..errors import UserError

#: The leading columns, as in the original randomized-smoothing tooling, then the costs.
BASE_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "samples", "evaluations", "classifier")
_Number = TypeVar("_Number", int, float)
_PER_CERTIFIER = ("predict", "radius", "correct", "time", "samples", "evaluations", "classifier")


@attrs.frozen
class Outcome:
    """One certifier's result on one input: its certificate, the seconds it took, the member evaluations it
    spent, and how many of its noisy samples the aggregator settled early (K-consensus), where known."""

    certificate: Certificate
    seconds: float
    evaluations: int | None = None
    settled: int | None = None

    def extras(self) -> dict[str, float]:
        """The extra columns: the certificate's details, and the share of samples settled early (KCR)."""
        out = {key: float(value) for key, value in self.certificate.details.items()}
        if self.settled is not None and self.certificate.samples:
            out["kcr"] = self.settled / self.certificate.samples
        return out


@attrs.frozen
class ExampleResult:
    """Every certifier's result on one test input (``index`` into the test split)."""

    index: int
    label: int
    outcomes: Mapping[str, Outcome]

    def correct(self, certifier: str) -> bool:
        return self.outcomes[certifier].certificate.prediction == self.label


@attrs.frozen
class CertifierSummary:
    """Certified accuracy at each radius, average certified radius (ACR) and costs, for one certifier.

    ``evaluation_share``: member evaluations spent over those the full ensemble would have spent on the
    same samples (below 1 when an aggregator skipped members). ``details``: the mean of every extra column.
    ``classifier``: the smoothed classifier the certificates are about (``hard`` or ``soft``). ``given_label``: the
    certifier certified the true label it was given (whether the smoothed classifier returns it with each radius:
    certified accuracy asked directly), not its own prediction; such rows are no prediction certificates.
    """

    certified_accuracy: Mapping[float, float]
    acr: float
    abstain_rate: float
    mean_seconds: float
    mean_samples: float
    median_samples: float
    mean_evaluations: float | None = None
    median_evaluations: float | None = None
    evaluation_share: float | None = None
    details: Mapping[str, float] = attrs.field(factory=dict)
    classifier: str = HARD
    given_label: bool = False
    #: A target-radius certifier's radii (:meth:`ensemblecert.Certifier.targets`); its certified accuracy at any
    #: other radius and its ACR are ``nan`` (not measured), blank in tables.
    targets: tuple[float, ...] | None = None

    @property
    def describes(self) -> str:
        """The classifier column of a table: the smoothed classifier, "true label" for given-label rows, and a
        target-radius certifier's targets."""
        parts = [self.classifier, *(["true label"] if self.given_label else [])]
        if self.targets is not None:
            parts.append("target r = " + ", ".join(f"{t:g}" for t in self.targets))
        return ", ".join(parts)


@attrs.frozen
class Summary:
    """Every certifier's summary over ``examples`` inputs. ``precision`` is the members' arithmetic; ``sound`` is
    false when a reduced precision could have changed what was counted (the radii then promise nothing)."""

    examples: int
    certifiers: Mapping[str, CertifierSummary]
    precision: str = "fp32"
    sound: bool = True
    #: At a checked precision, what the check did (see :class:`ensemblecert.ensemble.checked.CheckRecord`).
    check: Mapping[str, Any] | None = None

    def to_dict(self) -> dict:
        return {
            "examples": self.examples,
            "precision": self.precision,
            "sound": self.sound,
            **({"precision_check": dict(self.check)} if self.check is not None else {}),
            "certifiers": {
                name: {
                    **attrs.asdict(m, recurse=False),
                    "certified_accuracy": {f"{r:g}": _measured(acc) for r, acc in m.certified_accuracy.items()},
                    "acr": _measured(m.acr),
                    "details": dict(m.details),
                }
                for name, m in self.certifiers.items()
            },
        }


def share_text(value: float) -> str:
    """A certified accuracy for a table, blank where it was not measured (a target-radius certifier's other radii)."""
    return "" if math.isnan(value) else f"{value:.1%}"


def acr_text(value: float) -> str:
    """An ACR for a table, blank where it was not measured (a target-radius certifier's)."""
    return "" if math.isnan(value) else f"{value:.3f}"


def _measured(value: float) -> float | None:
    """``value``, or ``None`` (JSON's null) where it was not measured (``nan``)."""
    return None if math.isnan(value) else value


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarize(
    results: Sequence[ExampleResult],
    certifiers: Sequence[str],
    radii: Sequence[float],
    *,
    members: int | None = None,
    precision: str = "fp32",
    sound: bool = True,
    check: Mapping[str, Any] | None = None,
    given_label: Collection[str] = (),
    targets: Mapping[str, Sequence[float]] | None = None,
) -> Summary:
    """Certified accuracy at ``radii`` (share of inputs predicted correctly with radius >= r), ACR and costs.
    ``given_label`` names the certifiers that certified the true label they were given; ``targets`` gives the
    target-radius certifiers' radii (elsewhere, and for ACR, their summary holds ``nan``: not measured).

    ACR is the mean over inputs of the certified radius, counting 0 for wrong predictions and abstentions.
    ``members`` (the ensemble size) gives the evaluation share against evaluating every member on every sample.
    """
    n = len(results)
    out = {}
    for name in certifiers:
        outcomes = [r.outcomes[name] for r in results]
        certs = [(o.certificate, r.correct(name)) for o, r in zip(outcomes, results)]
        samples = [c.samples for c, _ in certs]
        spent = [o.evaluations for o in outcomes if o.evaluations is not None]
        counted = [o.certificate.samples for o in outcomes if o.evaluations is not None]
        extras = [o.extras() for o in outcomes]
        keys = sorted({k for e in extras for k in e})
        aimed = tuple(float(t) for t in targets[name]) if targets and name in targets else None
        measured = [float(rad) for rad in radii if aimed is None or any(math.isclose(rad, t) for t in aimed)]
        out[name] = CertifierSummary(
            certified_accuracy={
                float(rad): (
                    sum(ok and c.radius >= rad for c, ok in certs) / n if n and float(rad) in measured else math.nan
                )
                for rad in radii
            },
            acr=sum(c.radius for c, ok in certs if ok) / n if n and aimed is None else math.nan,
            abstain_rate=sum(c.prediction == ABSTAIN for c, _ in certs) / n if n else math.nan,
            mean_seconds=_mean([o.seconds for o in outcomes]),
            mean_samples=_mean(samples),
            median_samples=float(statistics.median(samples)) if samples else math.nan,
            mean_evaluations=_mean(spent) if spent else None,
            median_evaluations=float(statistics.median(spent)) if spent else None,
            evaluation_share=sum(spent) / (members * sum(counted)) if spent and members and sum(counted) else None,
            details={k: _mean([e[k] for e in extras if k in e and not math.isnan(e[k])]) for k in keys},
            classifier=_classifier(outcomes, name),
            given_label=name in given_label,
            targets=aimed,
        )
    return Summary(examples=n, certifiers=out, precision=precision, sound=sound, check=check)


def _classifier(outcomes: Sequence[Outcome], name: str) -> str:
    """The one smoothed classifier a certifier's certificates are about (``hard`` when there are none)."""
    found = {o.certificate.classifier for o in outcomes}
    if len(found) > 1:
        raise UserError(f"{name}: certificates about both the hard and the soft smoothed classifier in one column")
    return found.pop() if found else HARD


def columns(certifiers: Sequence[str], extras: Sequence[str] = ()) -> list[str]:
    """TSV header: the base columns for the first certifier, per-certifier columns when there are several,
    then the extra columns ``<certifier>:<key>``."""
    cols = list(BASE_COLUMNS)
    if len(certifiers) > 1:
        for name in certifiers:
            cols += [f"{name}:{f}" for f in _PER_CERTIFIER]
    return cols + list(extras)


def extra_columns(result: ExampleResult, certifiers: Sequence[str]) -> list[str]:
    """The extra columns a row of ``result`` calls for, in certifier order."""
    return [f"{name}:{key}" for name in certifiers for key in result.outcomes[name].extras()]


def _fmt(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _row(result: ExampleResult, certifiers: Sequence[str], extras: Sequence[str]) -> list[str]:
    def fields(name: str) -> list[str]:
        o = result.outcomes[name]
        c = o.certificate
        spent = "" if o.evaluations is None else str(o.evaluations)
        return [
            str(c.prediction),
            repr(float(c.radius)),
            str(int(result.correct(name))),
            f"{o.seconds:.4f}",
            str(c.samples),
            spent,
            c.classifier,
        ]

    row = [str(result.index), str(result.label), *fields(certifiers[0])]
    if len(certifiers) > 1:
        for name in certifiers:
            row += fields(name)
    values = {f"{name}:{k}": v for name in certifiers for k, v in result.outcomes[name].extras().items()}
    return row + [_fmt(values.get(col)) for col in extras]


class ResultsWriter:
    """Appends one TSV row per input and flushes it, so an interrupted run loses nothing.

    The header is written with the first row (its extra columns come from that row's details), or taken
    from the file when appending to an earlier run's results. A last line cut short by a crash is removed before
    anything is appended, so it can never run into the next row.
    """

    def __init__(self, path: str | Path, certifiers: Sequence[str]) -> None:
        self.path = Path(path)
        self.certifiers = list(certifiers)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cut_partial_line(self.path)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self.extras: list[str] | None = None if fresh else _read_header(self.path)[len(columns(self.certifiers)) :]
        self._fh = self.path.open("a", encoding="utf-8", newline="")

    def write(self, result: ExampleResult) -> None:
        if self.extras is None:
            self.extras = extra_columns(result, self.certifiers)
            self._fh.write("\t".join(columns(self.certifiers, self.extras)) + "\n")
        self._fh.write("\t".join(_row(result, self.certifiers, self.extras)) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cut_partial_line(path: Path) -> None:
    """Remove a last line without its newline (a write cut short by a crash) from ``path``, if it has one."""
    if not path.exists():
        return
    with path.open("r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        fh.seek(0)
        data = fh.read()
        fh.truncate(data.rfind(b"\n") + 1)


def rewrite_results(path: Path, results: Sequence[ExampleResult], certifiers: Sequence[str]) -> None:
    """Replace ``path`` atomically with exactly ``results`` (one row each, in the given order)."""
    tmp = path.with_name(f".{path.name}.rewrite.tmp")
    tmp.unlink(missing_ok=True)
    with ResultsWriter(tmp, certifiers) as writer:
        for result in results:
            writer.write(result)
    if not results:
        tmp.write_text("", encoding="utf-8")
    os.replace(tmp, path)


_FIX = "run with --fresh to start the certification over, or choose another output directory"


def _read_text(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a results table (binary content); {_FIX}") from None
    if "\0" in text:
        raise UserError(f"{path}: not a results table (binary content); {_FIX}")
    return text


def _read_header(path: Path) -> list[str]:
    first = _read_text(path).split("\n", 1)[0]
    return first.split("\t") if first else []


def read_results(path: str | Path, certifiers: Sequence[str]) -> list[ExampleResult]:
    """Read a results TSV written for ``certifiers``; a truncated last line (a crash mid-write) is dropped."""
    path = Path(path)
    text = _read_text(path)
    lines = text.split("\n")
    complete = lines[:-1] if not text.endswith("\n") else lines
    reader = csv.reader([ln for ln in complete if ln], delimiter="\t")
    header = next(reader, None)
    expected = columns(certifiers)
    if header is None:
        return []
    extras = header[len(expected) :]
    if header[: len(expected)] != expected or not all(_is_extra(c, certifiers) for c in extras):
        raise UserError(
            f"{path}: its columns {header[: len(expected)]} do not match this pipeline's certifiers "
            f"{list(certifiers)}; "
            "use --fresh to start over or choose another output directory"
        )
    at = {c: i for i, c in enumerate(header)}
    results = []
    for line, row in enumerate(reader, start=2):
        if len(row) != len(header):
            raise UserError(f"{path}, line {line}: {len(row)} fields where the header has {len(header)}; {_FIX}")
        try:
            results.append(_parse_row(row, at, certifiers))
        except ValueError as exc:
            raise UserError(f"{path}, line {line}: {exc}; {_FIX}") from None
    cut_partial_line(path)  # before anything is appended
    return results


def gather_results(paths: Sequence[Path], certifiers: Sequence[str]) -> dict[int, ExampleResult]:
    """Every row of the results files ``paths`` that exist, by input index (a row met twice: the first file's)."""
    return _first_of_each([read_results(path, certifiers) for path in paths if path.exists()])


def _first_of_each(tables: Sequence[Sequence[ExampleResult]]) -> dict[int, ExampleResult]:
    found: dict[int, ExampleResult] = {}
    for rows in tables:
        for result in rows:
            found.setdefault(result.index, result)
    return found


def keep_selected(
    main: Path, parts: Sequence[Path], unselected: Path, wanted: set[int], certifiers: Sequence[str]
) -> dict[int, ExampleResult]:
    """Make ``main`` (and each of ``parts``) hold the rows of exactly the ``wanted`` inputs without losing any row:
    rows of other inputs move to ``unselected``, and rows of wanted inputs found there move back into ``main``.
    Returns the rows of wanted inputs found anywhere, by input index.

    ``unselected`` is written first and ``main`` after, both atomically, so a run killed between them holds a row
    twice, never nowhere (a row met twice is read once, ``main``'s first)."""
    held = {path: read_results(path, certifiers) for path in [main, *parts] if path.exists()}
    aside = read_results(unselected, certifiers) if unselected.exists() else []
    found = _first_of_each([*held.values(), aside])
    others = sorted((i for i in found if i not in wanted), key=int)
    if others != [r.index for r in aside]:
        rewrite_results(unselected, [found[i] for i in others], certifiers)
    chosen = {i: r for i, r in found.items() if i in wanted}
    if {r.index for r in held.get(main, [])} != chosen.keys():  # an input to leave out, or one to bring back
        rewrite_results(main, [chosen[i] for i in sorted(chosen)], certifiers)
    for path in parts:
        if path in held and any(r.index not in wanted for r in held[path]):
            rewrite_results(path, [r for r in held[path] if r.index in wanted], certifiers)
    return chosen


def merge_results(paths: Sequence[str | Path], into: str | Path, certifiers: Sequence[str]) -> list[ExampleResult]:
    """Merge the records of ``paths`` (``into`` itself among them when it exists) into ``into``, one row per
    input in index order, and return them. ``into`` is replaced atomically; the merged files other than ``into``
    are deleted only afterwards, so a run killed while merging loses nothing (a record met twice is kept once)."""
    into = Path(into)
    found: dict[int, ExampleResult] = {}
    for path in [into, *paths]:
        if Path(path).exists():
            for result in read_results(path, certifiers):
                found.setdefault(result.index, result)
    merged = [found[i] for i in sorted(found)]
    rewrite_results(into, merged, certifiers)
    for path in paths:
        if Path(path) != into:
            Path(path).unlink(missing_ok=True)
    return merged


def _is_extra(column: str, certifiers: Sequence[str]) -> bool:
    return any(column.startswith(f"{name}:") for name in certifiers)


def _number(text: str, kind: type[_Number], column: str) -> _Number:
    """``text`` read as ``kind``; a ValueError naming the column otherwise (NaN is not a number here)."""
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(
            f"column {column!r} holds {text!r}, not {'an integer' if kind is int else 'a number'}"
        ) from None
    if kind is float and math.isnan(value):
        raise ValueError(f"column {column!r} holds {text!r}, not a number")
    return value


def _parse_row(row: Sequence[str], at: Mapping[str, int], certifiers: Sequence[str]) -> ExampleResult:
    outcomes = {}
    for name in certifiers:
        prefix = f"{name}:" if len(certifiers) > 1 else ""
        value = {f: row[at[prefix + f]] for f in ("predict", "radius", "time", "samples", "evaluations", "classifier")}
        if value["classifier"] not in SMOOTHED_CLASSIFIERS:
            raise ValueError(
                f"column {prefix + 'classifier'!r} holds {value['classifier']!r}, "
                f"not one of {', '.join(SMOOTHED_CLASSIFIERS)}"
            )
        extras = {
            column[len(name) + 1 :]: _number(row[i], float, column)
            for column, i in at.items()
            if column.startswith(f"{name}:") and column[len(name) + 1 :] not in _PER_CERTIFIER and row[i] != ""
        }
        samples = _number(value["samples"], int, prefix + "samples")
        kcr = extras.pop("kcr", None)
        certificate = Certificate(
            _number(value["predict"], int, prefix + "predict"),
            _number(value["radius"], float, prefix + "radius"),
            samples,
            extras,
            value["classifier"],
        )
        outcomes[name] = Outcome(
            certificate,
            _number(value["time"], float, prefix + "time"),
            _number(value["evaluations"], int, prefix + "evaluations") if value["evaluations"] else None,
            round(kcr * samples) if kcr is not None else None,
        )
    return ExampleResult(index=_number(row[0], int, "idx"), label=_number(row[1], int, "label"), outcomes=outcomes)
