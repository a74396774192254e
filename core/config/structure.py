"""Building components and pipelines from plain data: a strict cattrs converter for leaf values (``2.5`` is not an
integer) and a structurer that checks every field with its validators and collects every problem with its TOML path;
and the way back, :func:`describe`.
"""

from __future__ import annotations

import copy
import difflib
import math
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import cattrs

from ..errors import ConfigError
from ..registry import KINDS, Registry, UnknownComponentError
from ..validators import FieldError
from .labels import label_problem

_DEFAULT = object()  # a field left to its class's default
_INVALID = object()


def _strict(kind: type, accept: tuple[type, ...], word: str):
    def hook(value: Any, _type: Any) -> Any:
        if isinstance(value, bool) and kind is not bool or not isinstance(value, accept):
            raise TypeError(f"expected {word}, got {value!r}")
        return kind(value)

    return hook


def _finite(value: Any, _type: Any) -> float:
    number = _strict(float, (int, float), "a number")(value, float)
    if not math.isfinite(number):
        raise TypeError(f"expected a finite number, got {value!r}")
    return number


def make_converter() -> cattrs.Converter:
    """A cattrs converter that refuses lossy conversions (``"3"`` -> 3, ``2.5`` -> 2) and non-finite numbers."""
    conv = cattrs.Converter(detailed_validation=True)
    conv.register_structure_hook(int, _strict(int, (int,), "an integer"))
    conv.register_structure_hook(float, _finite)
    conv.register_structure_hook(bool, _strict(bool, (bool,), "true or false"))
    conv.register_structure_hook(str, _strict(str, (str,), "a string"))
    conv.register_structure_hook(Path, lambda v, _: Path(_strict(str, (str,), "a path string")(v, str)))
    return conv


def _list_only(tp: Any) -> bool:
    """Whether values of type ``tp`` are lists (or lists or None): a string must not pass as a list of letters."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (list, Sequence, tuple):
        return True
    return bool(args) and all(_list_only(a) or a is type(None) for a in args) and type(None) in args


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class _Structurer:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.converter = make_converter()
        self.problems: list[str] = []
        #: The labels taken out of component lists, by the list's path.
        self.labels: dict[str, tuple[str | None, ...]] = {}
        #: The paths whose values could not be read and were replaced by their defaults (see ConfigError.partial).
        self.replaced: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path or '(top level)'}: {message}")

    def table(self, cls: type, data: Any, path: str) -> Any:
        if not isinstance(data, Mapping):
            self.problem(path, f"expected a table, got {data!r}")
            return _INVALID
        try:
            attrs.resolve_types(cls)
        except Exception:  # unresolvable annotations: values are then taken as written
            pass
        fields = [f for f in attrs.fields(cls) if f.init and not f.metadata.get("internal")]
        names = [f.alias for f in fields]
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                allowed = ", ".join(names) if names else "none"
                self.problem(_join(path, key), f"unknown setting; {hint}allowed here: {allowed}")
        values: dict[str, Any] = {}
        ok = True
        for f in fields:
            where = _join(path, f.alias)
            if f.alias in data:
                raw = data[f.alias]
            elif "default_spec" in f.metadata:
                raw = copy.deepcopy(f.metadata["default_spec"])
            elif f.metadata.get("section"):
                raw = {}
            elif f.default is attrs.NOTHING:
                self.problem(where, "missing required value")
                ok = False
                continue
            else:
                continue
            value = self.value(f, raw, where)
            if value is not _INVALID and f.validator is not None:
                try:
                    f.validator(None, f, value)
                except (ValueError, TypeError) as exc:
                    self.problem(where, str(exc))
                    value = _INVALID
            if value is _INVALID:  # reported; read on with the default, so later checks still see the rest
                value = self._default(f, where)
                if value is _INVALID:
                    ok = False
                    continue
                self.replaced.append(where)
                if value is _DEFAULT:
                    continue
            values[f.alias] = value
        if not ok:
            return _INVALID
        try:
            return cls(**values)
        except FieldError as exc:
            self.problem(_join(path, exc.field), exc.message)
            return _INVALID
        except (ValueError, TypeError) as exc:
            self.problem(path, str(exc))
            return _INVALID

    def _default(self, f: attrs.Attribute, path: str) -> Any:
        """The value a field falls back to when its own cannot be read: its default spec or section built quietly,
        :data:`_DEFAULT` for a plain default (the class fills it in), :data:`_INVALID` when it has none."""
        if "default_spec" in f.metadata or f.metadata.get("section"):
            quiet = _Structurer(self.registry)
            raw = copy.deepcopy(f.metadata["default_spec"]) if "default_spec" in f.metadata else {}
            value = quiet.value(f, raw, path)
            return _INVALID if quiet.problems else value
        return _INVALID if f.default is attrs.NOTHING else _DEFAULT

    def value(self, f: attrs.Attribute, raw: Any, path: str) -> Any:
        kind = f.metadata.get("kind")
        if kind and f.metadata.get("many"):
            if f.metadata.get("single") and isinstance(raw, (str, Mapping)):
                raw = [raw]
            if not isinstance(raw, list):
                self.problem(path, f"expected a list of {kind} tables, got {raw!r}")
                return _INVALID
            raw = self.take_labels(raw, path)
            items = [self.component(kind, item, _join(path, i), None) for i, item in enumerate(raw)]
            return _INVALID if _INVALID in items else items
        if kind and raw is None and f.default is None:  # an optional component left out (as describe writes it)
            return None
        if kind:
            return self.component(kind, raw, path, f.metadata.get("default_spec"))
        if f.metadata.get("section") and isinstance(f.type, type):
            return self.table(f.type, raw, path)
        if f.type is None or isinstance(f.type, str):
            return raw
        if _list_only(f.type) and not (raw is None or isinstance(raw, list)):
            self.problem(path, f"expected a list, got {raw!r}")
            return _INVALID
        try:
            return self.converter.structure(raw, f.type)
        except Exception as exc:
            for line in cattrs.transform_error(exc, path=path, format_exception=_format_leaf):
                message, _, where = line.rpartition(" @ ")
                self.problems.append(f"{where}: {message}")
            return _INVALID

    def take_labels(self, raw: list[Any], path: str) -> list[Any]:
        """``raw`` with the ``label`` of each entry taken out, checked and recorded under ``path``."""
        labels: list[str | None] = []
        items = []
        for i, item in enumerate(raw):
            label = None
            if isinstance(item, Mapping) and "label" in item:
                label, item = item["label"], {k: v for k, v in item.items() if k != "label"}
                where = _join(_join(path, i), "label")
                problem = label_problem(label)
                if problem is None and label in labels:
                    problem = f"{label!r} already labels {_join(path, labels.index(label))}; give each its own"
                if problem is not None:
                    self.problem(where, problem)
                    label = None
            labels.append(label)
            items.append(item)
        if any(label is not None for label in labels):
            self.labels[path] = tuple(labels)
        return items

    def component(self, kind: str, raw: Any, path: str, default: Mapping[str, Any] | None) -> Any:
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, Mapping):
            self.problem(path, f'expected a {kind} table like {{ name = "..." }}, got {raw!r}')
            return _INVALID
        if "name" not in raw:
            if default is None:
                self.problem(_join(path, "name"), f"missing: which {kind} to use")
                return _INVALID
            raw = {**default, **raw}
        name = raw["name"]
        if not isinstance(name, str):
            self.problem(_join(path, "name"), f"expected a string, got {name!r}")
            return _INVALID
        try:
            comp = self.registry.get(kind, name)
        except UnknownComponentError as exc:
            self.problem(_join(path, "name"), str(exc))
            return _INVALID
        return self.table(comp.cls, {k: v for k, v in raw.items() if k != "name"}, path)


def _format_leaf(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, (TypeError, ValueError)) and str(exc).startswith("expected"):
        return str(exc)
    if isinstance(exc, KeyError):
        return "missing required value"
    name = getattr(_type, "__name__", None) or str(_type)
    return f"expected {name}"


def structure(cls: type, data: Mapping[str, Any], registry: Registry, *, path: str = "") -> Any:
    """Build ``cls`` from ``data`` (components resolved in ``registry``); raise ConfigError listing all problems."""
    s = _Structurer(registry)
    result = s.table(cls, data, path)
    holders = [f for f in attrs.fields(cls) if f.metadata.get("labels")]
    if result is not _INVALID and holders:
        result = attrs.evolve(result, **{holders[0].alias: s.labels})
    if s.problems or result is _INVALID:
        partial = (result, tuple(s.replaced)) if result is not _INVALID else None
        raise ConfigError(s.problems or ["invalid configuration"], partial=partial)
    return result


def build_component(kind: str, spec: Mapping[str, Any] | str, registry: Registry) -> Any:
    """Build one component from ``{ name = ..., ...params }``, validated as in a pipeline file."""
    s = _Structurer(registry)
    result = s.component(kind, spec, kind, None)
    if s.problems or result is _INVALID:
        raise ConfigError(s.problems or ["invalid component"])
    return result


# -------------------------------------------------------------------------------- reading
def _put_labels(data: dict[str, Any], path: str, labels: Sequence[str | None]) -> None:
    """Write the labels of the component list at the dotted ``path`` back into its tables."""
    node: Any = data
    for key in path.split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    if isinstance(node, list):
        for item, label in zip(node, labels):
            if label is not None and isinstance(item, dict):
                item["label"] = label


def describe(obj: Any, registry: Registry) -> Any:
    """The resolved configuration as plain data: components become ``{name = ..., params...}`` tables."""
    if attrs.has(type(obj)):
        out: dict[str, Any] = {}
        name = registry.name_of(type(obj))
        if name is not None:
            out["name"] = name
        for f in attrs.fields(type(obj)):
            if not f.metadata.get("internal"):
                out[f.alias] = describe(getattr(obj, f.name), registry)
        for f in attrs.fields(type(obj)):
            if f.metadata.get("labels"):
                for path, labels in getattr(obj, f.name).items():
                    _put_labels(out, path, labels)
        return out
    if isinstance(obj, (list, tuple)):
        return [describe(v, registry) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): describe(v, registry) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def components(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every component in ``obj`` (a pipeline, a section or a component), nested ones included (iGAT's attack), with
    its TOML path (``evaluation.aggregators[1]``, ``training.regularizers[0].attack``): what a check of one kind of
    component walks, so that it applies wherever the component can be listed."""
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from components(item, f"{path}[{i}]")
        return
    if not attrs.has(type(obj)):
        return
    if isinstance(obj, _COMPONENT_BASES):
        yield path, obj
    for f in attrs.fields(type(obj)):
        if not f.metadata.get("internal"):
            yield from components(getattr(obj, f.name), _join(path, f.alias))


_COMPONENT_BASES = tuple(kind.base for kind in KINDS.values())
