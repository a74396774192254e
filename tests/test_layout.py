"""The architecture's rules: the core never imports a plugin; plugins use only the public API."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PUBLIC = {"ensemblecert", "ensemblecert.validators", "ensemblecert.testing"}


def package_of(path: Path) -> list[str]:
    rel = path.relative_to(REPO).with_suffix("")
    return (
        ["ensemblecert", *rel.parts[1:-1]] if rel.parts[0] == "core" else ["ensemblecert", "plugins", *rel.parts[1:-1]]
    )


def imports(path: Path, package_parts: list[str] | None = None) -> list[tuple[str, int]]:
    """Absolute module names imported by ``path`` (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package_parts = package_parts if package_parts is not None else package_of(path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, node.lineno))
            found += [(f"{module}.{a.name}", node.lineno) for a in node.names]
    return found


def test_core_never_imports_plugins():
    offenders = [
        f"{path.relative_to(REPO)}:{line} imports {mod}"
        for path in (REPO / "core").rglob("*.py")
        for mod, line in imports(path)
        if mod == "ensemblecert.plugins" or mod.startswith("ensemblecert.plugins.")
    ]
    assert not offenders, offenders


def test_plugins_use_only_the_public_api():
    offenders = []
    for path in (REPO / "plugins").rglob("*.py"):
        for mod, line in imports(path):
            if not mod.startswith("ensemblecert"):
                continue
            ok = mod in PUBLIC or mod.startswith("ensemblecert.plugins") or mod.rsplit(".", 1)[0] in PUBLIC
            if not ok:
                offenders.append(f"{path.relative_to(REPO)}:{line} imports {mod}")
    assert not offenders, offenders


def test_the_checker_resolves_private_and_relative_imports(tmp_path):
    # The rules above must be able to fail: direct and relative imports of private modules are seen.
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from ensemblecert.smoothing.sampling import Tally\nfrom ... import pipeline\nfrom . import plugins\n"
    )
    mods = [m for m, _ in imports(bad, ["ensemblecert", "plugins", "sub"])]
    assert "ensemblecert.smoothing.sampling" in mods
    assert "ensemblecert.pipeline" in mods  # resolved, whether or not such a module exists
    assert "ensemblecert.plugins.sub.plugins" in mods


def test_every_builtin_plugin_module_is_an_entry_point():
    """Every module or package of plugins/ that implements hooks is registered through an entry point (helpers
    that implement none, such as confidence_sequences, are imported by the plugins that use them)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = set(project["entry-points"]["ensemblecert"].values())

    def implements_hooks(path: Path) -> bool:
        files = [path] if path.suffix == ".py" else list(path.rglob("*.py"))
        return any("@hookimpl" in f.read_text() for f in files)

    modules = {
        "ensemblecert.plugins."
        + ".".join(p.relative_to(REPO / "plugins").with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / "plugins").glob("*")
        if ((p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").exists()))
        and implements_hooks(p)
    }
    assert modules == declared
    assert "ensemblecert.plugins.confidence_sequences" not in modules  # a helper: the check sees the difference


def test_example_is_the_builtin_default():
    assert (REPO / "examples" / "digits.toml").read_text() == (REPO / "core" / "defaults" / "digits.toml").read_text()


def test_the_core_never_probes_components_for_undeclared_attributes():
    """Everything the core calls on a component is declared in components.py: getattr/hasattr appear only where
    they read something that is not a component (attrs fields, torch, nn.Module parameters, a plugin module's
    hook functions)."""
    allowed = {
        # a cattrs type's name; describe() and components() read the attrs fields they list (three times)
        ("structure.py", "getattr"): 4,
        ("__init__.py", "getattr"): 1,  # a public name, from its module, on first use
        ("fusion.py", "getattr"): 2,  # the same parameter or buffer of several nn.Modules
        ("manager.py", "getattr"): 4,  # hook collection: hookspecs, a plugin module, its name, pluggy's hook relay
        ("manager.py", "hasattr"): 1,  # whether a plugin module's register_* function carries @hookimpl
        ("preflight.py", "getattr"): 1,  # torch.backends.mps, absent from some torch builds
    }
    found: dict[tuple[str, str], int] = {}
    for path in sorted((REPO / "core").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
            ):
                key = (path.name, node.func.id)
                found[key] = found.get(key, 0) + 1
    assert found == allowed


def test_ruff_lint_and_format_are_clean():
    """The code is linted and formatted as pyproject.toml configures ruff."""
    import shutil
    import subprocess

    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    for args in (["check", "."], ["format", "--check", "."]):
        done = subprocess.run([ruff, *args], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_mypy_is_clean_on_core(tmp_path):
    """core/'s type hints check, as pyproject.toml configures mypy (a fresh cache, so nothing stale passes)."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


#: The layers of core/, lowest first: top-level modules are the contract and its infrastructure (layer 0), except
#: the public soundness harness, which sits on the smoothing layer.
LAYERS = {"defaults": 0, "config": 1, "ensemble": 2, "smoothing": 3, "training": 4, "running": 5, "reports": 5}
TOP_LEVEL = {"testing": 3}


def layer_of(module: str) -> int:
    first = module.split(".")[1]
    return LAYERS.get(first, TOP_LEVEL.get(first, 0))


def runtime_imports(path: Path) -> list[tuple[str, int]]:
    """``imports(path)`` without those under ``if TYPE_CHECKING:`` (annotations only)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    hidden = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for n in ast.walk(node)
    }
    lines = {n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in hidden}
    return [(m, line) for m, line in imports(path) if line in lines]


def test_a_lower_layer_never_imports_a_higher_one():
    offenders = []
    for path in sorted((REPO / "core").rglob("*.py")):
        rel = path.relative_to(REPO / "core")
        if rel.parts in (("__init__.py",), ("__main__.py",)):
            continue  # the package root re-exports the public API from every layer
        own = ["ensemblecert", *rel.with_suffix("").parts]
        mine = layer_of(".".join(own))
        for module, line in runtime_imports(path):
            if module.startswith("ensemblecert.") and not module.startswith("ensemblecert.plugins"):
                if layer_of(module) > mine:
                    offenders.append(f"{rel}:{line} (layer {mine}) imports {module} (layer {layer_of(module)})")
    assert not offenders, offenders
    assert {p.name for p in (REPO / "core").iterdir() if p.is_dir() and (p / "__init__.py").exists()} == {*LAYERS}
