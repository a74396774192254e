"""What changed between the fingerprint a stage's outputs were made with and this run's: the lines a refusal
names (``training.epochs: 10 (recorded) -> 12``, ``ensemble.checkpoints: file contents changed``)."""

from __future__ import annotations

from typing import Any

#: How the parts of a fingerprint that are not settings read in a message.
PRODUCTS = {
    "weights": "the members' weights",
    "aggregator": "the calibrated aggregator",
    "results": "the results files",
    "draws": "how certifiers share draws",
}
#: The members' fingerprint (the training setup) names a few settings by short keys; their TOML paths.
SHORT_KEYS = {"model": "ensemble.model", "members": "ensemble.members", "start_from": "training.start_from"}
#: Fingerprint entries holding digests of file contents rather than values a reader would recognise.
DIGESTS = ("weights", "start_from", "results")
#: The most changes one message lists.
LISTED = 8


def changes(recorded: Any, current: Any) -> list[str]:
    """Every difference between two fingerprints (plain data), as ``path: old (recorded) -> new`` lines; a
    fingerprint's ``settings`` read as the TOML paths of the resolved configuration."""
    if not isinstance(recorded, dict) or not isinstance(current, dict):
        return [] if recorded == current else [f"{_value(recorded)} (recorded) -> {_value(current)}"]
    found: list[str] = []
    for key in [*recorded, *(k for k in current if k not in recorded)]:
        old, new = recorded.get(key, _ABSENT), current.get(key, _ABSENT)
        if key == "settings" and isinstance(old, dict) and isinstance(new, dict):
            found += _diff(old, new, "")
        elif key == "weights" and isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
            found += [f"the weights of member {i} changed" for i, (a, b) in enumerate(zip(old, new)) if a != b]
        elif key in PRODUCTS and old != new:
            found.append(f"{PRODUCTS[key]} changed")
        else:
            found += _diff(old, new, SHORT_KEYS.get(key, key), digest=key in DIGESTS)
    return found


def summary(lines: list[str]) -> str:
    """The changes as one clause for a message (at most :data:`LISTED`, then how many more)."""
    if not lines:
        return ""
    more = f"; and {len(lines) - LISTED} more" if len(lines) > LISTED else ""
    return "changed since it was made: " + "; ".join(lines[:LISTED]) + more


_ABSENT = object()


def _diff(old: Any, new: Any, path: str, *, digest: bool = False) -> list[str]:
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [*old, *(k for k in new if k not in old)]
        return [line for k in keys for line in _diff(old.get(k, _ABSENT), new.get(k, _ABSENT), _join(path, k))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [line for i, (a, b) in enumerate(zip(old, new)) for line in _diff(a, b, f"{path}[{i}]", digest=digest)]
    if digest:
        return [f"{path}: file contents changed"]
    return [f"{path}: {_value(old)} (recorded) -> {_value(new)}"]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _value(value: Any) -> str:
    return "(not set)" if value is _ABSENT else repr(value)
