"""Reading a pipeline: the TOML file (or the built-in default), ``--set`` overrides, then the structured pipeline."""

from __future__ import annotations

import copy
import difflib
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..defaults import default_pipeline_text
from ..errors import ConfigError, UserError
from ..registry import Registry
from .schema import Pipeline
from .structure import structure
from .sweeps import SWEEP

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning a missing file or a syntax error into a :class:`UserError`."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
        return tomllib.loads(text.removeprefix("\ufeff"))  # editors may start UTF-8 files with a byte-order mark
    except FileNotFoundError:
        raise UserError(f"{path}: no such pipeline file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a pipeline TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not valid TOML (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the pipeline file: {exc.strerror or exc}") from None


def default_pipeline_data() -> dict[str, Any]:
    return tomllib.loads(default_pipeline_text())


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _parse_path(path: str, where: str) -> list[str | int]:
    parts: list[str | int] = []
    pos = 0
    for m in _PATH_PART.finditer(path):
        if m.start() != pos and (path[pos : m.start()] != "." or pos == 0):
            break
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if pos != len(path) or not parts or isinstance(parts[0], int):
        raise UserError(f"{where}: not a setting path like 'training.epochs' or 'certification.certifiers[0].n'")
    return parts


def _parse_value(text: str, where: str) -> Any:
    """The one TOML value ``text`` is (a bare word on one line is a string: ``--set device=cpu``); a UserError
    quoting it when it is empty or more than one value (``1\nseed=5`` would set a second setting unseen)."""
    fix = "give exactly one TOML value (quote strings that hold spaces or newlines); set each setting with a --set"
    if not text:
        raise UserError(f"{where}: no value after '='; {fix}")
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        if any(c in text for c in "\n\r") or any(ord(c) < 32 for c in text):
            raise UserError(f"{where}: {text!r} is not one TOML value; {fix}") from None
        return text
    if set(parsed) != {"v"}:
        raise UserError(f"{where}: {text!r} is more than one TOML value; {fix}")
    return parsed["v"]


def _schema_default(parts: Sequence[str | int]) -> Any:
    """The default spec the schema uses for the value at ``parts``, if any (to index into defaults)."""
    cls: Any = Pipeline
    value: Any = None
    for part in parts:
        if cls is not None and isinstance(part, str) and attrs.has(cls):
            attrs.resolve_types(cls)
            f = next((f for f in attrs.fields(cls) if f.alias == part), None)
            if f is None:
                return None
            if f.metadata.get("section"):
                cls, value = f.type, {}
                continue
            value = copy.deepcopy(f.metadata.get("default_spec"))
            cls = None
        elif isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and -len(value) <= part < len(value):
            value = value[part]
        else:
            return None
    return value


def set_setting(data: dict[str, Any], path: str, value: Any, *, where: str) -> None:
    """Set the setting at ``path`` (``training.epochs``, ``certification.certifiers[0].n``) of ``data`` to
    ``value`` in place, filling in the schema's defaults on the way; ``where`` names the source in messages."""
    parts = _parse_path(path.strip(), where)
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        try:
            child = node[part]
        except (KeyError, IndexError, TypeError):
            child = _schema_default(parts[: i + 1])
            if child is None:
                child = [] if isinstance(nxt, int) else {}
            try:
                node[part] = child
            except (IndexError, TypeError):
                raise UserError(f"{where}: {path.strip()} does not exist in this pipeline{_hint(parts)}") from None
        node = child
    try:
        node[parts[-1]] = copy.deepcopy(value)
    except (IndexError, TypeError):
        raise UserError(f"{where}: {path.strip()} does not exist in this pipeline{_hint(parts)}") from None


def _hint(parts: Sequence[str | int]) -> str:
    """ "; did you mean 'certifiers'?" for the first key of ``parts`` the schema's sections do not have."""
    cls: Any = Pipeline
    for part in parts:
        if not isinstance(part, str) or cls is None or not attrs.has(cls):
            return ""
        fields = {f.alias: f for f in attrs.fields(attrs.resolve_types(cls))}
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=1)
            return f"; did you mean {'.'.join([*map(str, parts[: parts.index(part)]), close[0]])!r}?" if close else ""
        cls = fields[part].type if fields[part].metadata.get("section") else None
    return ""


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``path=value`` overrides applied (values parsed as TOML)."""
    result = copy.deepcopy(dict(data))
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected PATH=VALUE, e.g. --set training.epochs=5")
        _parse_path(path.strip(), f"--set {path.strip()!r}")  # a malformed path is named alone
        where = f"--set {item!r}"
        set_setting(result, path, _parse_value(text.strip(), where), where=where)
    return result


def read_source(source: str | Path | Mapping[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """A pipeline's plain data (a TOML path, a dict, or ``None`` for the built-in default) and its name for
    messages (``None`` for a dict)."""
    if source is None:
        return default_pipeline_data(), "the built-in default pipeline"
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source)), None
    return read_toml(source), str(source)


def load_pipeline(
    source: str | Path | Mapping[str, Any] | None = None,
    *,
    overrides: Sequence[str] = (),
    plugins: Sequence[object] = (),
    entry_points: bool = True,
    beside: Path | None = None,
) -> tuple[Pipeline, Registry]:
    """Read a pipeline (a TOML path, a dict, or ``None`` for the built-in default) and resolve it.

    Plugin modules listed under ``plugins`` in the pipeline are loaded before its components are
    resolved, looked for first in the folder ``beside`` (by default the pipeline file's), whatever the working
    directory; ``plugins`` here adds already-imported plugin objects. Returns the pipeline and the
    registry its components came from.
    """
    from ..manager import load_registry

    data, label = read_source(source)
    if SWEEP in data:
        raise UserError(
            f"{label or 'the pipeline'}: has a [{SWEEP}] table, so it is a study of several pipelines; run it with "
            "`ensemblecert run` (or ensemblecert.run_study), or load its points with ensemblecert.load_study"
        )
    data = apply_overrides(data, overrides)
    modules = data.get("plugins", [])
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConfigError([f"plugins: expected a list of module names, got {modules!r}"], label)
    try:
        if beside is None and isinstance(source, (str, Path)):
            beside = Path(source).resolve().parent
        registry = load_registry(modules, plugins=plugins, entry_points=entry_points, beside=beside)
    except UserError as exc:
        raise UserError(f"{label}: {exc}" if label else str(exc)) from None
    try:
        pipeline = structure(Pipeline, data, registry)
    except ConfigError as exc:
        partial = None
        if exc.partial is not None:  # what could be read, for the checks of settings together
            partial = (attrs.evolve(exc.partial[0], source=data, origin=label), exc.partial[1])
        raise ConfigError(exc.problems, label, partial=partial) from None
    return attrs.evolve(pipeline, source=data, origin=label), registry
