"""attrs validators whose messages read well after a TOML path (``alpha: must be in (0, 1), got 1.5``).

Use them on component fields; the configuration loader runs every field's validator and collects
all failures, so a message should describe the value, not the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

Validator = Callable[[Any, Any, Any], None]


class FieldError(ValueError):
    """A check of several fields at once (raised from ``__attrs_post_init__``) that blames one field: the
    configuration loader reports it at that field's TOML path (``certification.certifiers[0].of: ...``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def in_range(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Validator:
    """The value (or every value of a list) must be finite and lie between ``low`` and ``high`` (closed ends
    unless marked open)."""
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    if low is not None and high is not None:
        text = f"must be in {left}{_fmt(low)}, {_fmt(high)}{right}"
    elif low is not None:
        text = f"must be {'>' if low_open else '>='} {_fmt(low)}"
    elif high is not None:
        text = f"must be {'<' if high_open else '<='} {_fmt(high)}"
    else:
        raise ValueError("in_range needs a lower or an upper bound")

    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"must be a finite number, got {value!r}")
            bad = False
            if low is not None:
                bad |= v <= low if low_open else v < low
            if high is not None:
                bad |= v >= high if high_open else v > high
            if bad:
                raise ValueError(f"{text}, got {value!r}")

    return check


#: The value (or every value of a list) must be > 0.
positive = in_range(0, low_open=True)

#: The value must lie in the open interval (0, 1).
probability = in_range(0, 1, low_open=True, high_open=True)


def one_of(choices: Sequence[Any]) -> Validator:
    """The value must be one of ``choices``."""

    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")

    return check


def path_string(_instance: Any, _attribute: Any, value: Any) -> None:
    """The value must be a usable file-system path: not empty, no NUL character."""
    if value is None:
        return
    if not value.strip():
        raise ValueError("must not be empty")
    if "\0" in value:
        raise ValueError(f"must not contain a NUL character, got {value!r}")


def non_empty(_instance: Any, _attribute: Any, value: Any) -> None:
    """The list must have at least one element."""
    if len(value) == 0:
        raise ValueError("must not be empty")


def increasing(low: float, what: str) -> Validator:
    """The list must be non-empty, strictly increasing, and every element at least ``low`` (``what`` names the
    elements in the message: "sample counts", "radii")."""

    def check(_instance: Any, _attribute: Any, value: Sequence[float]) -> None:
        if len(value) == 0:
            raise ValueError(f"must list at least one of the {what}")
        if any(v < low for v in value) or any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError(f"must be {what} >= {_fmt(low)} in strictly increasing order, got {list(value)}")

    return check
