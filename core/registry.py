"""The registry: which component names exist, of which kind, and which plugin provided each."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterator

import attrs

from . import components as c
from .errors import UserError


@attrs.frozen
class Kind:
    """A component kind: its config word, its registration hook, its base class and a title."""

    name: str
    hook: str
    base: type
    title: str


#: Every component kind, in pipeline order (then the command-line commands plugins add).
KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("dataset", "register_datasets", c.Dataset, "data sets"),
        Kind("model", "register_models", c.Model, "base models"),
        Kind("loss", "register_losses", c.BaseLoss, "base losses (training)"),
        Kind("regularizer", "register_regularizers", c.Regularizer, "regularizers (training)"),
        Kind("noise", "register_noise_samplers", c.NoiseSampler, "noise samplers"),
        Kind("aggregator", "register_aggregators", c.Aggregator, "aggregators"),
        Kind("smoothing", "register_smoothing_strategies", c.SmoothingStrategy, "smoothing strategies"),
        Kind("certifier", "register_certifiers", c.Certifier, "certifiers"),
        Kind("attack", "register_attacks", c.Attack, "attacks"),
        Kind("stage", "register_stages", c.Stage, "run stages"),
        Kind("command", "register_commands", c.Command, "commands"),
    )
}


@attrs.frozen
class Component:
    """A registered component: its kind, name, class and the plugin that registered it."""

    kind: str
    name: str
    cls: type
    plugin: str

    @property
    def summary(self) -> str:
        """The first line of the class docstring."""
        doc = inspect.getdoc(self.cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    @property
    def parameters(self) -> tuple[attrs.Attribute, ...]:
        return tuple(f for f in attrs.fields(self.cls) if f.init)


class UnknownComponentError(UserError):
    """A name that no plugin registered for a kind."""


class Registry:
    """Components by kind and name. Built once per run by :func:`ensemblecert.load_registry`."""

    def __init__(self) -> None:
        self._components: dict[str, dict[str, Component]] = {k: {} for k in KINDS}

    def add(self, kind: str, name: str, cls: type, plugin: str) -> Component:
        """Record ``cls`` as ``name`` of ``kind``, provided by ``plugin``; reject invalid or duplicate names."""
        spec = KINDS[kind]
        where = f"plugin {plugin!r} registering {spec.name} {name!r}"
        if not isinstance(name, str) or not name or name != name.strip():
            raise UserError(f"{where}: the name must be a non-empty string without surrounding spaces")
        if not (inspect.isclass(cls) and attrs.has(cls)):
            raise UserError(f"{where}: expected an attrs class (decorate it with @attrs.frozen), got {cls!r}")
        if not issubclass(cls, spec.base):
            raise UserError(f"{where}: {cls.__qualname__} must subclass ensemblecert.{spec.base.__name__}")
        existing = self._components[kind].get(name)
        if existing is not None:
            raise UserError(
                f"{spec.name} {name!r} is registered twice: by plugin {existing.plugin!r} and by plugin "
                f"{plugin!r}; uninstall one of them or register the new one under another name"
            )
        component = Component(kind=kind, name=name, cls=cls, plugin=plugin)
        self._components[kind][name] = component
        return component

    def get(self, kind: str, name: str) -> Component:
        """Return the component, or raise :class:`UnknownComponentError` listing the known names."""
        try:
            return self._components[kind][name]
        except KeyError:
            raise UnknownComponentError(self.unknown_message(kind, name)) from None

    def unknown_message(self, kind: str, name: str) -> str:
        if kind not in KINDS:
            return f"unknown component kind {kind!r}; the kinds are {', '.join(map(repr, KINDS))}"
        known = sorted(self._components.get(kind, {}))
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        listing = ", ".join(repr(k) for k in known) or "none"
        return (
            f"unknown {kind} {name!r}; {hint}known {KINDS[kind].title}: {listing}. "
            "If it comes from a plugin, install that package or list its module in `plugins = [...]`"
        )

    def name_of(self, cls: type) -> str | None:
        """The name ``cls`` is registered under, if any."""
        for comp in self:
            if comp.cls is cls:
                return comp.name
        return None

    def names(self, kind: str) -> list[str]:
        return sorted(self._components[kind])

    def __iter__(self) -> Iterator[Component]:
        for kind in KINDS:
            yield from (self._components[kind][n] for n in sorted(self._components[kind]))

    def __contains__(self, key: tuple[str, str]) -> bool:
        kind, name = key
        return name in self._components.get(kind, {})
