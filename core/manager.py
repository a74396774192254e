"""The plugin manager: finds plugins and collects the components they register.

A manager is made per run (never at import time), so tests can register throwaway plugins.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

import pluggy

from . import hookspecs
from .errors import UserError
from .registry import KINDS, Registry

ENTRY_POINT_GROUP = "ensemblecert"


def make_plugin_manager(
    modules: Sequence[str] = (),
    *,
    plugins: Iterable[object] = (),
    entry_points: bool = True,
    beside: Path | None = None,
) -> pluggy.PluginManager:
    """Return a plugin manager holding the entry-point plugins, ``modules`` and ``plugins``.

    ``modules`` are importable module names (what a pipeline file lists under ``plugins``), looked for first in the
    folder ``beside`` (the pipeline file's, as pytest finds a conftest.py beside the tests) whatever the working
    directory, then on the import path; ``plugins`` are already-imported plugin objects (handy in tests);
    ``entry_points=False`` skips the ``ensemblecert`` entry-point group, built-ins included.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    _register(
        pm, importlib.import_module(f"{__package__}.running.stages"), "ensemblecert.running.stages"
    )  # the core's own stages
    if entry_points:
        for ep in _entry_points():
            if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party plugin must not hide behind a traceback
                raise UserError(
                    f"plugin {ep.name!r} (entry point {ep.value!r} in group {ENTRY_POINT_GROUP!r}) failed to "
                    f"load: {type(exc).__name__}: {exc}. Reinstall or uninstall the package that provides it"
                ) from exc
            _register(pm, plugin, ep.name)
    for index, name in enumerate(modules):
        if pm.has_plugin(name):
            continue
        try:
            plugin = _import_beside(name, beside)
        except Exception as exc:
            raise UserError(
                f"plugins[{index}]: cannot import plugin module {name!r}: {type(exc).__name__}: {exc}. "
                "Check the module name and that its package is installed in this environment"
            ) from exc
        if pm.is_registered(plugin):  # installed too, and already registered through its entry point
            continue
        _register(pm, plugin, name)
    for plugin in plugins:
        _register(pm, plugin, None)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise UserError(f"plugin {exc.plugin!r} has a hook that ensemblecert does not define: {exc}") from exc
    return pm


def _import_beside(name: str, folder: Path | None) -> object:
    """Import the module ``name``, looking in ``folder`` first (it stays on the path only while importing)."""
    if folder is None:
        return importlib.import_module(name)
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))


#: Set (to anything but the empty string) to load only ensemblecert's own entry points, not those of other installed
#: packages (as ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` does for pytest): the test suite sets it, so that what it lists is
#: the built-ins whatever else is installed. Modules a pipeline names under ``plugins`` still load.
DISABLE_AUTOLOAD = "ENSEMBLECERT_DISABLE_PLUGIN_AUTOLOAD"


def _entry_points() -> list[metadata.EntryPoint]:
    found = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    if os.environ.get(DISABLE_AUTOLOAD):
        found = [ep for ep in found if ep.dist is not None and _normal(ep.dist.name) == "ensemblecert"]
    return sorted(found, key=lambda ep: ep.name)


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


def _check_hook_functions(plugin: object, name: str) -> None:
    """A UserError for a ``register_*`` function pluggy would silently ignore: a name that is no hook (a typo), or a
    hook without the ``@hookimpl`` decorator."""
    hooks = [h for h in dir(hookspecs) if h.startswith("register_") and callable(getattr(hookspecs, h))]
    for attr in dir(plugin):
        if not attr.startswith("register_"):
            continue
        function = getattr(plugin, attr, None)
        if not (inspect.isfunction(function) or inspect.ismethod(function)):
            continue
        if attr not in hooks:
            close = difflib.get_close_matches(attr, hooks, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UserError(
                f"plugin {name!r} defines {attr}, which is not an ensemblecert hook; {hint}the hooks are "
                f"{', '.join(hooks)}"
            )
        if not hasattr(function, f"{hookspecs.PROJECT_NAME}_impl"):
            raise UserError(
                f"plugin {name!r} defines {attr} without the @hookimpl decorator, so it would never be called; "
                "decorate it with @ensemblecert.hookimpl"
            )


def _register(pm: pluggy.PluginManager, plugin: object, name: str | None) -> None:
    if name is None:  # a plugin object: name it after its module or class, kept unique
        base = getattr(plugin, "__name__", None) or type(plugin).__qualname__
        name, n = base, 1
        while pm.has_plugin(name):
            n += 1
            name = f"{base}#{n}"
    _check_hook_functions(plugin, name)
    try:
        pm.register(plugin, name=name)
    except (ValueError, pluggy.PluginValidationError) as exc:
        raise UserError(f"cannot register plugin {name or plugin!r}: {exc}") from exc


def collect_components(pm: pluggy.PluginManager) -> Registry:
    """Call every registration hook and return the registry, recording which plugin gave each name."""
    registry = Registry()
    for kind in KINDS.values():
        caller = getattr(pm.hook, kind.hook)
        # Call implementations one by one (in registration order) so each registration knows its plugin.
        for impl in caller.get_hookimpls():
            register = functools.partial(registry.add, kind.name, plugin=impl.plugin_name)
            impl.function(**{arg: register for arg in impl.argnames})
    return registry


def load_registry(
    modules: Sequence[str] = (),
    *,
    plugins: Iterable[object] = (),
    entry_points: bool = True,
    beside: Path | None = None,
) -> Registry:
    """Make a plugin manager (see :func:`make_plugin_manager`) and collect its components."""
    pm = make_plugin_manager(modules, plugins=plugins, entry_points=entry_points, beside=beside)
    return collect_components(pm)
