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
    bad.write_text("from ensemblecert.sampling import Tally\nfrom ... import pipeline\nfrom . import plugins\n")
    mods = [m for m, _ in imports(bad, ["ensemblecert", "plugins", "sub"])]
    assert "ensemblecert.sampling" in mods
    assert "ensemblecert.pipeline" in mods
    assert "ensemblecert.plugins.sub.plugins" in mods


def test_every_builtin_plugin_module_is_an_entry_point():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = set(project["entry-points"]["ensemblecert"].values())
    modules = {
        "ensemblecert.plugins."
        + ".".join(p.relative_to(REPO / "plugins").with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / "plugins").glob("*")
        if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").exists())
    }
    assert modules == declared


def test_example_is_the_builtin_default():
    assert (REPO / "examples" / "digits.toml").read_text() == (REPO / "core" / "defaults" / "digits.toml").read_text()


def test_the_core_never_probes_components_for_undeclared_attributes():
    """Everything the core calls on a component is declared in components.py: getattr/hasattr appear only where
    they read something that is not a component (attrs fields, torch, nn.Module parameters, a plugin module's
    hook functions)."""
    allowed = {
        ("structure.py", "getattr"): 2,  # a cattrs type's name; describe() reads the attrs fields it lists
        ("fusion.py", "getattr"): 1,  # the same parameter of several nn.Modules
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
