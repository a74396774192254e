"""Results as pandas data frames, for notebooks: one call per run folder or study folder.

:func:`results_frame` has one row per input and certifier (``index label certifier prediction radius correct
samples evaluations seconds classifier given_label`` and every recorded detail, such as ``p_lower``);
:func:`summary_frame` one row per certifier and radius (certified accuracy there, and the certifier's ACR,
abstentions and costs). Given a study's folder, both stack its points (those with results) into one long frame
with a ``point`` column and one column per swept setting (its TOML path), so ``frame.groupby("noise.sigma")`` works
as it reads. pandas is an optional extra (``pip install 'ensemblecert[frames]'``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..running.context import Outputs
from .runs import RunRecord, read_run, study_points

if TYPE_CHECKING:  # pandas is optional: imported when a frame is made
    import pandas as pd  # type: ignore[import-untyped]


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise UserError("data frames need pandas: pip install 'ensemblecert[frames]'") from None
    return pandas


def _result_rows(record: RunRecord) -> list[dict[str, Any]]:
    rows = []
    for result in record.results:
        for label, outcome in result.outcomes.items():
            cert = outcome.certificate
            rows.append(
                {
                    "index": result.index,
                    "label": result.label,
                    "certifier": label,
                    "prediction": cert.prediction,
                    "radius": cert.radius,
                    "correct": cert.prediction == result.label,
                    "samples": cert.samples,
                    "evaluations": outcome.evaluations,
                    "seconds": outcome.seconds,
                    "classifier": cert.classifier,
                    "given_label": label in record.given_label,
                    **outcome.extras(),
                }
            )
    return rows


def _summary_rows(record: RunRecord) -> list[dict[str, Any]]:
    summary = record.summary()
    rows = []
    for label, s in summary.certifiers.items():
        for radius, accuracy in s.certified_accuracy.items():
            rows.append(
                {
                    "certifier": label,
                    "radius": float(radius),
                    "certified_accuracy": accuracy,
                    "acr": s.acr,
                    "abstain_rate": s.abstain_rate,
                    "mean_samples": s.mean_samples,
                    "mean_evaluations": s.mean_evaluations,
                    "mean_seconds": s.mean_seconds,
                    "classifier": s.classifier,
                    "given_label": s.given_label,
                    "inputs": summary.examples,
                }
            )
    return rows


def _frame(path: str | Path, rows_of: Callable[[RunRecord], list[dict[str, Any]]]) -> pd.DataFrame:
    pandas = _pandas()
    path = Path(path)
    if not (path / Outputs.STUDY).exists():
        return pandas.DataFrame(rows_of(read_run(path)))
    rows = [
        {"point": folder.name, **settings, **row}
        for folder, settings in study_points(path)
        for row in rows_of(read_run(folder))
    ]
    return pandas.DataFrame(rows)


def results_frame(path: str | Path) -> pd.DataFrame:
    """One row per input and certifier of the run (or of every point of the study) at ``path``."""
    return _frame(path, _result_rows)


def summary_frame(path: str | Path) -> pd.DataFrame:
    """One row per certifier and radius of the run (or of every point of the study) at ``path``: certified accuracy
    at that radius, and the certifier's ACR, abstentions and mean costs per input."""
    return _frame(path, _summary_rows)
