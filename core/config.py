"""Pipeline files: TOML -> frozen attrs classes, with every problem reported at its TOML path.

A component is written ``{ name = "...", param = value }`` (or just ``"name"`` when the defaults
suffice); its parameters are the fields of the registered attrs class and are checked by their
validators. Leaf values are converted by a strict cattrs converter (``2.5`` is not an integer).
All problems are collected and raised together as one :class:`~ensemblecert.ConfigError`.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import sys
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import cattrs

from .components import (
    Aggregator,
    Attack,
    BaseLoss,
    Certifier,
    Dataset,
    Model,
    NoiseSampler,
    Regularizer,
    SmoothingStrategy,
    Stage,
)
from .engine import Engine
from .errors import ConfigError, UserError
from .registry import Registry, UnknownComponentError
from .validators import FieldError, in_range, non_empty, path_string

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_INVALID = object()

#: The largest seed: torch generators take 64-bit seeds, and derived seeds stay below 2**63.
MAX_SEED = 2**63 - 1


def component(kind: str, spec: Mapping[str, Any] | None = None, **field_kwargs: Any) -> Any:
    """A field holding one component of ``kind``; ``spec`` is the component used when the key is absent.

    Public as ``ensemblecert.component_field``: a component may hold another (iGAT holds its attack), written in
    TOML as a nested table and validated with its own path."""
    meta: dict[str, Any] = {"kind": kind}
    if spec is not None:
        meta["default_spec"] = dict(spec)
    return attrs.field(metadata=meta, **field_kwargs)


def component_list(
    kind: str, default: Sequence[Mapping[str, Any]], *, single: bool = False, empty: bool = False
) -> Any:
    """A field holding a list of components of ``kind`` (non-empty unless ``empty``); with ``single``, one
    component written without brackets is taken as a list of one."""
    return attrs.field(
        metadata={"kind": kind, "many": True, "single": single, "default_spec": [dict(d) for d in default]},
        validator=None if empty else non_empty,
    )


def section() -> Any:
    """A field holding a nested table; absent means all its defaults."""
    return attrs.field(metadata={"section": True})


def _device(_instance: Any, _attribute: Any, value: str) -> None:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise ValueError(f"must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {value!r}")


# ------------------------------------------------------------------------------------ schema
@attrs.frozen(kw_only=True)
class EnsembleConfig:
    """``[ensemble]``: the members and how they are combined and smoothed."""

    members: int = attrs.field(default=3, validator=in_range(1))
    model: Model = component("model", {"name": "mlp"})
    aggregator: Aggregator = component("aggregator", {"name": "we"})
    #: One strategy, or a list of them to compare on the same members, inputs and noise.
    smoothing: list[SmoothingStrategy] = component_list("smoothing", [{"name": "ebs"}], single=True)
    #: Checkpoint files to load instead of the run's own (one per member); implies no training.
    checkpoints: list[str] = attrs.field(factory=list, validator=attrs.validators.deep_iterable(path_string))


@attrs.frozen(kw_only=True)
class TrainConfig:
    """``[train]``: SGD with momentum and a step learning-rate schedule, all members together."""

    enabled: bool = True
    epochs: int = attrs.field(default=30, validator=in_range(1))
    batch_size: int = attrs.field(default=64, validator=in_range(1))
    lr: float = attrs.field(default=0.05, validator=in_range(0, low_open=True))
    momentum: float = attrs.field(default=0.9, validator=in_range(0, 1, high_open=True))
    weight_decay: float = attrs.field(default=1e-4, validator=in_range(0))
    #: Multiply the learning rate by ``lr_gamma`` every ``lr_step`` epochs.
    lr_step: int = attrs.field(default=10, validator=in_range(1))
    lr_gamma: float = attrs.field(default=0.1, validator=in_range(0, 1, low_open=True))
    #: Each member's own loss (``gaussian``, ``smoothadv``).
    loss: BaseLoss = component("loss", {"name": "gaussian"})
    #: Terms over the whole ensemble added to the base loss (``drt``, ``adp``, ``gal``); with any, the members
    #: share one noise draw per batch.
    regularizers: list[Regularizer] = component_list("regularizer", [], empty=True)
    #: Noisy copies of each training input per batch (m; Yang22 App. F uses 2).
    copies: int = attrs.field(default=1, validator=in_range(1))
    #: Fine-tune: start from these member checkpoints (one file per member), or from the checkpoints/ of the one
    #: run directory named; empty: from the seeded initialisation.
    start_from: list[str] = attrs.field(factory=list, validator=attrs.validators.deep_iterable(path_string))
    #: Training noise; the pipeline's ``noise`` when absent.
    noise: NoiseSampler | None = component("noise", default=None)


@attrs.frozen(kw_only=True)
class CertifyConfig:
    """``[certify]``: which mechanisms certify which test inputs, and the radii to report."""

    enabled: bool = True
    mechanisms: list[Certifier] = component_list("certifier", [{"name": "cohen"}])
    #: Noisy copies evaluated per forward pass; bounds memory, not the statistics.
    batch_size: int = attrs.field(default=1000, validator=in_range(1))
    radii: list[float] = attrs.field(factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], validator=[non_empty, in_range(0)])
    #: Certify every ``skip``-th test input.
    skip: int = attrs.field(default=1, validator=in_range(1))
    #: Stop after this many inputs (all when absent).
    max_examples: int | None = attrs.field(default=None, validator=attrs.validators.optional(in_range(1)))


@attrs.frozen(kw_only=True)
class EvaluateConfig:
    """``[evaluate]``: empirical robustness, accuracy on clean test inputs and under each attack, per combiner.
    Runs when ``attacks`` lists any."""

    attacks: list[Attack] = component_list("attack", [], empty=True)
    #: How the attacks see the ensemble: aggregators (``we``: the average; ``max``: the elementwise maximum).
    combiners: list[Aggregator] = component_list("aggregator", [{"name": "we"}], single=True)
    #: Test inputs attacked together.
    batch_size: int = attrs.field(default=250, validator=in_range(1))
    #: Evaluate every ``skip``-th test input.
    skip: int = attrs.field(default=1, validator=in_range(1))
    #: Stop after this many inputs (all when absent).
    max_examples: int | None = attrs.field(default=None, validator=attrs.validators.optional(in_range(1)))


@attrs.frozen(kw_only=True)
class HeldoutConfig:
    """``[heldout]``: labelled data kept from training, never certified, for protocols that calibrate
    (K-consensus ranks members on it, weighted soft voting fits weights). Carved only when one asks."""

    #: Share of the training data set aside, chosen with the pipeline seed; recorded in heldout.json.
    fraction: float = attrs.field(default=0.1, validator=in_range(0, 1, low_open=True, high_open=True))


@attrs.frozen(kw_only=True)
class Pipeline:
    """A whole pipeline: data -> train (or load) members -> aggregate -> smooth -> certify -> report."""

    data: Dataset = component("dataset", {"name": "digits"})
    noise: NoiseSampler = component("noise", {"name": "gaussian", "sigma": 0.25})
    ensemble: EnsembleConfig = section()
    train: TrainConfig = section()
    certify: CertifyConfig = section()
    evaluate: EvaluateConfig = section()
    heldout: HeldoutConfig = section()
    engine: Engine = section()
    #: Seeds initialisation, shuffling and noise; any integer that fits in 63 bits.
    seed: int = attrs.field(default=0, validator=in_range(0, MAX_SEED))
    device: str = attrs.field(default="auto", validator=_device)
    #: Where checkpoints and results go (relative to the working directory).
    output: str = attrs.field(default="runs/default", validator=path_string)
    #: Extra plugin modules to load for this pipeline.
    plugins: list[str] = attrs.field(factory=list)
    #: Stages from plugins, run after the built-in ones (members, calibration, certification, evaluation).
    stages: list[Stage] = component_list("stage", [], empty=True)
    #: The configuration as read (after overrides), saved next to checkpoints and results.
    source: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False, metadata={"internal": True})
    #: Where the configuration came from (a file name), for messages.
    label: str | None = attrs.field(default=None, eq=False, repr=False, metadata={"internal": True})

    @property
    def train_noise(self) -> NoiseSampler:
        return self.train.noise if self.train.noise is not None else self.noise


# ------------------------------------------------------------------------------ structuring
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
            if value is _INVALID:
                ok = False
                continue
            if f.validator is not None:
                try:
                    f.validator(None, f, value)
                except (ValueError, TypeError) as exc:
                    self.problem(where, str(exc))
                    ok = False
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

    def value(self, f: attrs.Attribute, raw: Any, path: str) -> Any:
        kind = f.metadata.get("kind")
        if kind and f.metadata.get("many"):
            if f.metadata.get("single") and isinstance(raw, (str, Mapping)):
                raw = [raw]
            if not isinstance(raw, list):
                self.problem(path, f"expected a list of {kind} tables, got {raw!r}")
                return _INVALID
            items = [self.component(kind, item, _join(path, i), None) for i, item in enumerate(raw)]
            return _INVALID if _INVALID in items else items
        if kind:
            return self.component(kind, raw, path, f.metadata.get("default_spec"))
        if f.metadata.get("section"):
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
    if s.problems or result is _INVALID:
        raise ConfigError(s.problems or ["invalid configuration"])
    return result


def build_component(kind: str, spec: Mapping[str, Any] | str, registry: Registry) -> Any:
    """Build one component from ``{ name = ..., ...params }``, validated as in a pipeline file."""
    s = _Structurer(registry)
    result = s.component(kind, spec, kind, None)
    if s.problems or result is _INVALID:
        raise ConfigError(s.problems or ["invalid component"])
    return result


# -------------------------------------------------------------------------------- reading
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


def default_pipeline_text() -> str:
    """The built-in default pipeline (``examples/digits.toml``) as TOML text."""
    return resources.files("ensemblecert").joinpath("defaults", "digits.toml").read_text("utf-8")


def default_pipeline_data() -> dict[str, Any]:
    return tomllib.loads(default_pipeline_text())


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _parse_path(path: str) -> list[str | int]:
    parts: list[str | int] = []
    pos = 0
    for m in _PATH_PART.finditer(path):
        if m.start() != pos and (path[pos : m.start()] != "." or pos == 0):
            break
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if pos != len(path) or not parts or isinstance(parts[0], int):
        raise UserError(f"--set {path!r}: not a setting path like 'train.epochs' or 'certify.mechanisms[0].n'")
    return parts


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string: --set device=cpu


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
        elif isinstance(value, (dict, list)):
            try:
                value = value[part]
            except (KeyError, IndexError, TypeError):
                return None
        else:
            return None
    return value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``path=value`` overrides applied (values parsed as TOML)."""
    result = copy.deepcopy(dict(data))
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected PATH=VALUE, e.g. --set train.epochs=5")
        parts = _parse_path(path.strip())
        node: Any = result
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
                    raise UserError(f"--set {item!r}: {path.strip()} does not exist in this pipeline") from None
            node = child
        try:
            node[parts[-1]] = _parse_value(text.strip())
        except (IndexError, TypeError):
            raise UserError(f"--set {item!r}: {path.strip()} does not exist in this pipeline") from None
    return result


def load_pipeline(
    source: str | Path | Mapping[str, Any] | None = None,
    *,
    overrides: Sequence[str] = (),
    plugins: Sequence[object] = (),
    entry_points: bool = True,
) -> tuple[Pipeline, Registry]:
    """Read a pipeline (a TOML path, a dict, or ``None`` for the built-in default) and resolve it.

    Plugin modules listed under ``plugins`` in the pipeline are loaded before its components are
    resolved; ``plugins`` here adds already-imported plugin objects. Returns the pipeline and the
    registry its components came from.
    """
    from .manager import load_registry

    label = None
    if source is None:
        data = default_pipeline_data()
        label = "the built-in default pipeline"
    elif isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
    else:
        data = read_toml(source)
        label = str(source)
    data = apply_overrides(data, overrides)
    modules = data.get("plugins", [])
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConfigError([f"plugins: expected a list of module names, got {modules!r}"], label)
    try:
        registry = load_registry(modules, plugins=plugins, entry_points=entry_points)
    except UserError as exc:
        raise UserError(f"{label}: {exc}" if label else str(exc)) from None
    try:
        pipeline = structure(Pipeline, data, registry)
    except ConfigError as exc:
        raise ConfigError(exc.problems, label) from None
    return attrs.evolve(pipeline, source=data, label=label), registry


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
        return out
    if isinstance(obj, (list, tuple)):
        return [describe(v, registry) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): describe(v, registry) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj
