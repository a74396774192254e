"""Sweeps: a ``[sweep]`` table in a pipeline file turns it into a study, one pipeline per point.

```toml
[sweep]
mode = "grid"                                   # every combination (default); "zip": the i-th value of each
"noise.sigma" = [0.25, 0.5]
"training.regularizers[0].rho1" = [0.2, 0.5, 1.0]
```

Every other key is a setting path, as ``--set`` takes it, with the list of values it takes. Each point is named by
its values (``sigma=0.25,rho1=0.2``), which is also its folder under the study's ``output``.
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


def sweep_points(sweep: Any) -> list[Point]:
    """The points of a ``[sweep]`` table, in order (the last path varies fastest in a grid); a ConfigError names
    every problem at its ``sweep.<path>``."""
    if not isinstance(sweep, Mapping):
        raise ConfigError([f"{SWEEP}: expected a table of setting paths and their values, got {sweep!r}"])
    mode = sweep.get("mode", "grid")
    problems = []
    if mode not in MODES:
        problems.append(f"{SWEEP}.mode: must be one of {', '.join(MODES)}, got {mode!r}")
    axes = {k: v for k, v in sweep.items() if k != "mode"}
    if not axes:
        problems.append(f'{SWEEP}: sweeps nothing; add a setting path and its values, e.g. "noise.sigma" = [0.25, 0.5]')
    for path, values in axes.items():
        if not isinstance(values, list) or not values:
            problems.append(f'{SWEEP}."{path}": expected a non-empty list of values, got {values!r}')
        elif path.split(".")[0].split("[")[0] in (SWEEP, "output"):
            problems.append(f'{SWEEP}."{path}": cannot be swept (each point has its own output folder)')
    if mode == "zip" and len({len(v) for v in axes.values() if isinstance(v, list)}) > 1:
        lengths = ", ".join(f"{k}: {len(v)}" for k, v in axes.items() if isinstance(v, list))
        problems.append(f"{SWEEP}: zip needs lists of one length, got {lengths}")
    if problems:
        raise ConfigError(problems)
    paths = list(axes)
    combos = itertools.product(*axes.values()) if mode == "grid" else zip(*axes.values())
    short = [_short(p) for p in paths]
    labels = short if len(set(short)) == len(short) else paths
    points = []
    for values in combos:
        name = _folder(",".join(f"{label}={_text(v)}" for label, v in zip(labels, values)))
        points.append(Point(name=name, settings=tuple(zip(paths, values))))
    names = [p.name for p in points]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError([f"{SWEEP}: points {', '.join(repeated)} repeat; give each value once"])
    return points
