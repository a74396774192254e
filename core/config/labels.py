"""How listed components are named in results: their ``label``, or a name that says what sets them apart.

Every entry of a component list (certifiers, smoothing strategies, the evaluation's aggregators and attacks) names
its columns in the results, its row in the tables and its line in the plots. An entry may carry
``label = "..."``; otherwise it is known by its component name, and where two entries share a name, by the name and
the settings in which they differ: ``best (softmax)`` and ``best (multinomial)``, ``cohen (n=1000)`` and
``cohen (n=10000)``; entries that are the same in everything are numbered, ``cohen #2``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: Characters a label cannot hold: ``:`` separates a label from its field in result columns, ``/`` a strategy from
#: its certifier, and tabs and line breaks would break the TSV.
FORBIDDEN = (":", "/", "\t", "\n", "\r")


def label_problem(label: object) -> str | None:
    """Why ``label`` cannot name an entry, or ``None``."""
    if not isinstance(label, str) or not label.strip():
        return f"expected a non-empty string, got {label!r}"
    bad = [c for c in FORBIDDEN if c in label]
    if bad:
        return f"{label!r} holds {', '.join(map(repr, bad))}, which cannot appear in a label"
    if label != label.strip():
        return f"{label!r} starts or ends with white space"
    return None


def _short(value: Any) -> str:
    """A setting's value as a label shows it: ``1000``, ``none``, ``[cohen li dp]``, ``{pgd epsilon=0.1}``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_short(v) for v in value) + "]"
    if isinstance(value, Mapping):
        parts = [str(value["name"])] if "name" in value else []
        parts += [f"{k}={_short(v)}" for k, v in value.items() if k != "name"]
        return "{" + " ".join(parts) + "}"
    return str(value)


def _value(key: str, value: Any) -> str:
    return value if isinstance(value, str) else f"{key}={_short(value)}"


def component_labels(specs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The label of each entry of a component list, given as plain ``{name = ..., settings...}`` tables (a
    ``label`` among them is taken as it is). Labels are unique."""
    labels: list[str] = []
    for spec in specs:
        if "label" in spec:
            labels.append(str(spec["label"]))
            continue
        name = str(spec["name"])
        alike = [s for s in specs if s.get("name") == name and "label" not in s]
        keys = [k for k in spec if k not in ("name", "label") and any(s.get(k) != spec.get(k) for s in alike)]
        labels.append(f"{name} ({', '.join(_value(k, spec[k]) for k in keys)})" if keys else name)
    unique = []
    for i, label in enumerate(labels):
        repeats = labels.count(label)
        unique.append(label if repeats == 1 else f"{label} #{labels[:i].count(label) + 1}")
    return unique
