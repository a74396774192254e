"""Sweeps: a ``[sweep]`` table in a pipeline file turns it into a study, one pipeline per point.

```toml
[sweep]
mode = "grid"                                   # every combination (default); "zip": the i-th value of each
"noise.sigma" = [0.25, 0.5]
"training.regularizers[0].rho1" = [0.2, 0.5, 1.0]

[sweep.base]                                    # named choices: each sets several settings together
gaussian = { "training.start_from" = ["runs/gaussian"] }
smoothadv = { "training.start_from" = ["runs/smoothadv"], "training.loss.name" = "smoothadv" }
```

Every other key is an axis: a setting path, as ``--set`` takes it, with the list of values it takes, or a name with a
table of named choices, each a table of setting paths and their values. Each point is named by its values and choices
(``sigma=0.25,rho1=0.2,base=gaussian``), which is also its folder under the study's ``output``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any

import attrs

from ..errors import ConfigError

#: The table that makes a pipeline file a study.
SWEEP = "sweep"
MODES = ("grid", "zip")


@attrs.frozen
class Point:
    """One point of a sweep: its name (a folder name) and the value it gives each swept setting path."""

    name: str
    settings: tuple[tuple[str, Any], ...]


def _short(path: str) -> str:
    """The last key of a setting path (``training.regularizers[0].rho1`` -> ``rho1``)."""
    return re.split(r"[.\[\]]+", path.strip(".[]"))[-1]


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Mapping):  # a whole component: its name and settings (drt-rho1=0.1-rho2=0.2)
        settings = [f"{k}={_text(v)}" for k, v in value.items() if k != "name"]
        return "-".join([str(value.get("name", "table")), *settings])
    if isinstance(value, list):
        return "+".join(_text(v) for v in value) if value else "none"
    return str(value)


def _folder(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", text)


@attrs.frozen
class _Axis:
    """One axis of a sweep: its label in point names and, per value, the value's text and the settings it makes."""

    label: str
    values: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]


def _axis(key: str, values: Any, problems: list[str]) -> _Axis | None:
    """The axis a ``[sweep]`` key describes, or ``None`` after adding its problems."""
    where = f'{SWEEP}."{key}"'
    if isinstance(values, Mapping):  # named choices, each a table of setting paths
        choices = []
        for name, settings in values.items():
            if not isinstance(settings, Mapping) or not settings:
                problems.append(f"{where}.{name}: expected a table of setting paths and their values, got {settings!r}")
                continue
            choices.append((str(name), tuple(settings.items())))
        return _Axis(key, tuple(choices)) if choices else None
    if not isinstance(values, list) or not values:
        problems.append(f"{where}: expected a non-empty list of values (or a table of named choices), got {values!r}")
        return None
    return _Axis(_short(key), tuple((_text(v), ((key, v),)) for v in values))


def sweep_points(sweep: Any) -> list[Point]:
    """The points of a ``[sweep]`` table, in order (the last axis varies fastest in a grid); a ConfigError names
    every problem at its ``sweep.<path>``."""
    if not isinstance(sweep, Mapping):
        raise ConfigError([f"{SWEEP}: expected a table of setting paths and their values, got {sweep!r}"])
    mode = sweep.get("mode", "grid")
    problems: list[str] = []
    if mode not in MODES:
        problems.append(f"{SWEEP}.mode: must be one of {', '.join(MODES)}, got {mode!r}")
    if not any(k != "mode" for k in sweep):
        problems.append(f'{SWEEP}: sweeps nothing; add a setting path and its values, e.g. "noise.sigma" = [0.25, 0.5]')
    found = {k: _axis(k, v, problems) for k, v in sweep.items() if k != "mode"}
    by_key = {k: a for k, a in found.items() if a is not None}
    keys, axes = list(by_key), list(by_key.values())
    owner: dict[str, str] = {}
    for key, axis in by_key.items():
        for path in dict.fromkeys(path for _, settings in axis.values for path, _ in settings):
            if path.split(".")[0].split("[")[0] in (SWEEP, "output"):
                problems.append(f'{SWEEP}."{key}": {path} cannot be swept (each point has its own output folder)')
            elif path in owner:
                problems.append(f'{SWEEP}."{key}": {path} is already swept by {SWEEP}."{owner[path]}"; sweep it once')
            owner[path] = key
    if mode == "zip" and len({len(a.values) for a in axes}) > 1:
        lengths = ", ".join(f"{k}: {len(a.values)}" for k, a in zip(keys, axes))
        problems.append(f"{SWEEP}: zip needs lists of one length, got {lengths}")
    if problems:
        raise ConfigError(problems)
    labels = [a.label for a in axes]
    if len(set(labels)) < len(labels):
        labels = keys
    combos = itertools.product(*(a.values for a in axes)) if mode == "grid" else zip(*(a.values for a in axes))
    points = []
    for values in combos:
        name = _folder(",".join(f"{label}={text}" for label, (text, _) in zip(labels, values)))
        points.append(Point(name=name, settings=tuple(s for _, settings in values for s in settings)))
    names = [p.name for p in points]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError([f"{SWEEP}: points {', '.join(repeated)} repeat; give each value once"])
    return points
