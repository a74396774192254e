"""Results: one TSV row per certified input, written as soon as it is known, and a summary."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import attrs

from .components import ABSTAIN, Certificate
from .errors import UserError

#: The leading columns, as in the original randomized-smoothing tooling.
BASE_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")


@attrs.frozen
class Outcome:
    """One mechanism's result on one input: its certificate and the seconds it took."""

    certificate: Certificate
    seconds: float


@attrs.frozen
class ExampleResult:
    """Every mechanism's result on one test input (``index`` into the test split)."""

    index: int
    label: int
    outcomes: Mapping[str, Outcome]

    def correct(self, mechanism: str) -> bool:
        return self.outcomes[mechanism].certificate.prediction == self.label


@attrs.frozen
class MechanismSummary:
    """Certified accuracy at each radius, average certified radius (ACR) and costs, for one mechanism."""

    certified_accuracy: Mapping[float, float]
    acr: float
    abstain_rate: float
    mean_seconds: float
    mean_samples: float


@attrs.frozen
class Summary:
    examples: int
    mechanisms: Mapping[str, MechanismSummary]

    def to_dict(self) -> dict:
        return {
            "examples": self.examples,
            "mechanisms": {
                name: {
                    "certified_accuracy": {f"{r:g}": acc for r, acc in m.certified_accuracy.items()},
                    "acr": m.acr,
                    "abstain_rate": m.abstain_rate,
                    "mean_seconds": m.mean_seconds,
                    "mean_samples": m.mean_samples,
                }
                for name, m in self.mechanisms.items()
            },
        }


def summarize(results: Sequence[ExampleResult], mechanisms: Sequence[str], radii: Sequence[float]) -> Summary:
    """Certified accuracy at ``radii`` (share of inputs predicted correctly with radius >= r) and ACR.

    ACR is the mean over inputs of the certified radius, counting 0 for wrong predictions and abstentions.
    """
    n = len(results)
    out = {}
    for name in mechanisms:
        certs = [(r.outcomes[name].certificate, r.correct(name), r.outcomes[name].seconds) for r in results]
        out[name] = MechanismSummary(
            certified_accuracy={
                float(rad): (sum(ok and c.radius >= rad for c, ok, _ in certs) / n if n else math.nan)
                for rad in radii
            },
            acr=sum(c.radius for c, ok, _ in certs if ok) / n if n else math.nan,
            abstain_rate=sum(c.prediction == ABSTAIN for c, _, _ in certs) / n if n else math.nan,
            mean_seconds=sum(s for _, _, s in certs) / n if n else math.nan,
            mean_samples=sum(c.samples for c, _, _ in certs) / n if n else math.nan,
        )
    return Summary(examples=n, mechanisms=out)


def columns(mechanisms: Sequence[str]) -> list[str]:
    """TSV header: the base columns for the first mechanism, ``samples``, then ``<mechanism>:<field>`` for each."""
    cols = [*BASE_COLUMNS, "samples"]
    if len(mechanisms) > 1:
        for name in mechanisms:
            cols += [f"{name}:{f}" for f in ("predict", "radius", "correct", "time", "samples")]
    return cols


def _row(result: ExampleResult, mechanisms: Sequence[str]) -> list[str]:
    def fields(name: str) -> list[str]:
        o = result.outcomes[name]
        c = o.certificate
        return [str(c.prediction), repr(float(c.radius)), str(int(result.correct(name))), f"{o.seconds:.4f}", str(c.samples)]

    first = fields(mechanisms[0])
    row = [str(result.index), str(result.label), first[0], first[1], first[2], first[3], first[4]]
    if len(mechanisms) > 1:
        for name in mechanisms:
            row += fields(name)
    return row


class ResultsWriter:
    """Appends one TSV row per input and flushes it, so an interrupted run loses nothing."""

    def __init__(self, path: str | Path, mechanisms: Sequence[str]) -> None:
        self.path = Path(path)
        self.mechanisms = list(mechanisms)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self._fh = self.path.open("a", encoding="utf-8", newline="")
        if fresh:
            self._fh.write("\t".join(columns(self.mechanisms)) + "\n")
            self._fh.flush()

    def write(self, result: ExampleResult) -> None:
        self._fh.write("\t".join(_row(result, self.mechanisms)) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_results(path: str | Path, mechanisms: Sequence[str]) -> list[ExampleResult]:
    """Read a results TSV written for ``mechanisms``; a truncated last line (a crash mid-write) is dropped."""
    path = Path(path)
    fix = "run with --fresh to start the certification over, or choose another output directory"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a results table (binary content); {fix}") from None
    if "\0" in text:
        raise UserError(f"{path}: not a results table (binary content); {fix}")
    lines = text.split("\n")
    complete = lines[:-1] if not text.endswith("\n") else lines
    reader = csv.reader([ln for ln in complete if ln], delimiter="\t")
    header = next(reader, None)
    expected = columns(mechanisms)
    if header is None:
        return []
    if header != expected:
        raise UserError(
            f"{path}: its columns {header} do not match this pipeline's mechanisms {list(mechanisms)}; "
            "use --fresh to start over or choose another output directory"
        )
    at = {c: i for i, c in enumerate(expected)}
    results = []
    for line, row in enumerate(reader, start=2):
        if len(row) != len(expected):
            continue
        try:
            results.append(_parse_row(row, at, mechanisms))
        except ValueError as exc:
            raise UserError(f"{path}, line {line}: {exc}; {fix}") from None
    if not text.endswith("\n") and lines[-1]:
        with path.open("w", encoding="utf-8", newline="") as fh:  # drop the partial line before appending
            fh.write("\n".join(complete) + ("\n" if complete else ""))
    return results


def _number(text: str, kind: type[int] | type[float], column: str) -> int | float:
    """``text`` read as ``kind``; a ValueError naming the column otherwise (NaN is not a number here)."""
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"column {column!r} holds {text!r}, not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and math.isnan(value):
        raise ValueError(f"column {column!r} holds {text!r}, not a number")
    return value


def _parse_row(row: Sequence[str], at: Mapping[str, int], mechanisms: Sequence[str]) -> ExampleResult:
    outcomes = {}
    for name in mechanisms:
        prefix = f"{name}:" if len(mechanisms) > 1 else ""
        value = {f: row[at[prefix + f]] for f in ("predict", "radius", "time", "samples")}
        certificate = Certificate(
            _number(value["predict"], int, prefix + "predict"),
            _number(value["radius"], float, prefix + "radius"),
            _number(value["samples"], int, prefix + "samples"),
        )
        outcomes[name] = Outcome(certificate, _number(value["time"], float, prefix + "time"))
    return ExampleResult(index=_number(row[0], int, "idx"), label=_number(row[1], int, "label"), outcomes=outcomes)


def plot_certified_accuracy(results: Iterable[ExampleResult], mechanisms: Sequence[str], path: str | Path) -> Path:
    """Save certified accuracy against radius (one curve per mechanism) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = list(results)
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for name in mechanisms:
        radii = sorted(r.outcomes[name].certificate.radius for r in results if r.correct(name))
        top = max([*radii, 1e-9])
        grid = [1.05 * top * i / 200 for i in range(201)]
        n = max(len(results), 1)
        ax.plot(grid, [sum(r >= g for r in radii) / n for g in grid], label=name)
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
