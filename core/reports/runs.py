"""A run's certification results read back from its directory, for reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..config.labels import component_labels
from ..errors import UserError
from ..running.context import RUN_ONLY, Outputs, read_json
from ..smoothing.results import ExampleResult, Summary, read_results, summarize

#: Radii reported when a run does not say (as ``[certification] radii`` defaults).
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


@attrs.frozen
class RunRecord:
    """One run's certification results: each input's outcome per certifier ``label``, the radii its pipeline
    reports, and whether its counts are sound (full precision)."""

    directory: Path
    labels: tuple[str, ...]
    results: tuple[ExampleResult, ...]
    radii: tuple[float, ...]
    sound: bool = True
    #: The certifiers that certified the true label they were given, not their own prediction.
    given_label: tuple[str, ...] = ()
    #: The target-radius certifiers' radii, by label.
    targets: Mapping[str, tuple[float, ...]] = attrs.field(factory=dict)
    #: The run's resolved configuration (``pipeline.json``).
    config: Mapping[str, Any] = attrs.field(factory=dict)

    def summary(self, radii: Sequence[float] | None = None) -> Summary:
        radii = radii if radii is not None else self.radii
        return summarize(
            self.results, self.labels, radii, sound=self.sound, given_label=self.given_label, targets=self.targets
        )


def read_run(directory: str | Path) -> RunRecord:
    """The certification results in ``directory`` (a run's output directory); a UserError saying what is missing."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: no such run directory")
    tsv, meta = directory / Outputs.CERTIFICATION_TSV, directory / Outputs.CERTIFICATION_META
    if not tsv.exists() or not meta.exists():
        raise UserError(
            f"{directory}: holds no certification results ({Outputs.CERTIFICATION_TSV}); run its pipeline with "
            "certification enabled first"
        )
    recorded = read_json(meta, "the run")
    labels = recorded.get("certifiers")
    if not isinstance(labels, list) or not labels:
        raise UserError(f"{meta}: damaged (no list of certifiers in it); run the pipeline again with --fresh")
    try:
        results = read_results(tsv, [str(label) for label in labels])
    except ValueError as exc:
        raise UserError(f"{tsv}: {exc}") from None
    config = read_json(directory / Outputs.PIPELINE, "the run")
    radii: Any = config.get("certification", {}).get("radii", DEFAULT_RADII)
    sound = bool(read_json(directory / Outputs.CERTIFICATION_SUMMARY, "the run").get("sound", True))
    return RunRecord(
        directory=directory,
        labels=tuple(str(label) for label in labels),
        results=tuple(sorted(results, key=lambda r: r.index)),
        radii=tuple(float(r) for r in radii),
        sound=sound,
        given_label=tuple(str(label) for label in recorded.get("given_label", [])),
        targets={str(k): tuple(float(r) for r in v) for k, v in dict(recorded.get("targets", {})).items()},
        config=config,
    )


def read_runs(paths: Sequence[str | Path]) -> tuple[list[RunRecord], bool]:
    """The runs at ``paths``, a study's folder standing for its points (those with results); and whether any was a
    study (so the report adds the best over the sweep)."""
    records, sweep = [], False
    for path in map(Path, paths):
        if (path / Outputs.STUDY).exists():
            sweep = True
            records += [read_run(folder) for folder, _ in study_points(path)]
        else:
            records.append(read_run(path))
    return records, sweep


def study_points(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The points of the study at ``path`` that hold certification results, each its folder and its swept settings
    (from ``study.json``); a UserError when none does yet."""
    points = read_json(path / Outputs.STUDY, "the study").get("points", [])
    done = [
        (path / str(p.get("name")), dict(p.get("settings", {})))
        for p in points
        if isinstance(p, dict) and (path / str(p.get("name")) / Outputs.CERTIFICATION_TSV).exists()
    ]
    if not done:
        raise UserError(f"{path}: a study whose points hold no certification results yet; run it first")
    return done


def run_names(records: Sequence[RunRecord]) -> list[str]:
    """How each run is called in a comparison: its directory's name, or as much of its path as tells it apart;
    study points (``sigma=0.25,rho1=0.2``) without the ``key=value`` parts every one of them shares."""
    parts = [r.directory.resolve().parts for r in records]
    for depth in range(1, max((len(p) for p in parts), default=1) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return _without_shared_settings(names)
    return [str(r.directory) for r in records]


def _without_shared_settings(names: list[str]) -> list[str]:
    if len(names) < 2 or not all("=" in n and "/" not in n for n in names):
        return names
    split = [n.split(",") for n in names]
    shared = set.intersection(*(set(s) for s in split))
    shorter = [",".join(x for x in s if x not in shared) or n for s, n in zip(split, names)]
    return shorter if len(set(shorter)) == len(shorter) else names


#: Settings that never tell runs' numbers apart: where they were written, and the run-only ones (how progress was
#: shown, which jobs ran), which no fingerprint holds either.
NOT_COMPARED = ("output", *RUN_ONLY)


def flat_settings(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A configuration as ``{TOML path: value}``, lists of tables by index (``certification.certifiers[0].n``)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flat_settings(value, path))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                out.update(flat_settings(item, f"{path}[{i}]"))
        else:
            out[path] = value
    return out


def varying(tables: Sequence[Mapping[str, Any]]) -> list[str]:
    """The keys whose values differ between ``tables`` (absent counts as a value), in the order first seen."""
    keys = dict.fromkeys(k for table in tables for k in table)
    return [k for k in keys if len({repr(table.get(k)) for table in tables}) > 1]


def differing_settings(records: Sequence[RunRecord]) -> list[str]:
    """The settings (TOML paths) whose values differ between ``records``, in the order of the first run's file."""
    keys = varying([flat_settings(r.config) for r in records])
    return [k for k in keys if not any(k == n or k.startswith(n + ".") for n in NOT_COMPARED)]


def certifier_settings(record: RunRecord, label: str) -> dict[str, Any]:
    """What a curve of ``label`` in ``record`` needs to keep its meaning: the noise's sigma and the certifier's sample
    sizes, level and targets, as set in its pipeline."""
    config = record.config
    out: dict[str, Any] = {}
    sigma = config.get("noise", {}).get("sigma") if isinstance(config.get("noise"), Mapping) else None
    if sigma is not None:
        out["sigma"] = sigma
    certifiers = config.get("certification", {}).get("certifiers", [])
    if isinstance(certifiers, list) and certifiers:
        labels = component_labels(certifiers)
        if label in labels:
            table = certifiers[labels.index(label)]
            out.update({k: table[k] for k in ("n", "alpha", "radius", "radii") if k in table})
    return out
