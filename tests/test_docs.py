"""What the documentation states about the default pipeline is what the code computes and the run prints."""

import re

import pytest
from scipy import stats

from conftest import REPO
from ensemblecert import load_pipeline


def default_pipeline():
    pipeline, _ = load_pipeline(None)
    return pipeline


def test_the_stated_radius_ceiling_is_the_true_one():
    p = default_pipeline()
    (cohen,) = p.certification.certifiers
    ceiling = p.noise.sigma * stats.norm.ppf(cohen.alpha ** (1 / cohen.n))  # all n draws agree
    assert cohen.radius(cohen.n, cohen.n, p.noise.sigma)[1] == pytest.approx(ceiling, rel=1e-12)
    for path in (REPO / "core" / "defaults" / "digits.toml", REPO / "README.md"):
        stated = re.search(r"PhiInv\(0\.001\^\(1/10000\)\) = ([0-9.]+)", path.read_text())
        assert stated, f"{path.name} no longer states the radius ceiling"
        assert float(stated.group(1)) == round(ceiling, 2), path.name
    assert max(p.certification.radii) < ceiling  # every reported radius can be certified at all


def table_row(text: str) -> list[str]:
    """The cells of the `cohen` row of a certified-accuracy table, without the timing column."""
    line = next(line for line in text.splitlines() if line.startswith("│ cohen"))
    cells = [c.strip() for c in line.strip("│").split("│")]
    return cells[:-1]


@pytest.mark.slow
def test_the_readme_table_is_the_default_runs_output(tmp_path, cli):
    proc = cli("run", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert table_row(proc.stdout) == table_row((REPO / "README.md").read_text())


def test_papers_are_cited_by_the_keys_of_references_md():
    """Code and docs cite the papers by short keys (``Yang22, Eq. 9``), never by the file names of their copies."""
    keys = set(re.findall(r"^\| (\w+) \|", (REPO / "docs" / "references.md").read_text(), flags=re.M)) - {"key"}
    assert {"Yang22", "Horvath22", "Deng23", "Cullen24"} <= keys
    sources = [
        p
        for d in ("core", "plugins", "docs", "examples", "benchmarks", "tests")
        for p in (REPO / d).rglob("*")
        if p.suffix in (".py", ".md", ".toml")
    ] + [REPO / "README.md"]
    file_name = re.compile(r"\b\d{3}_[0-9a-f]{16}\.txt\b")
    for path in sources:
        assert not file_name.search(path.read_text(encoding="utf-8")), path


def documented_api() -> dict[str, list[str]]:
    """The names docs/api.md documents, by the module its section says they come from: the backticked names a
    bullet starts with (``- `run(...)`, `load_pipeline`: ...``)."""
    found: dict[str, list[str]] = {}
    module = None
    bullets: list[str] = []
    for line in (REPO / "docs" / "api.md").read_text().splitlines():
        heading = re.match(r"#+ .*`from ([\w.]+) import \.\.\.`", line)
        if line.startswith("#"):
            module = heading.group(1) if heading else None
        elif line.startswith("- ") and module:
            bullets.append(module + "\0" + line)
        elif line.startswith("  ") and bullets:
            bullets[-1] += " " + line.strip()
    for bullet in bullets:
        module, text = bullet.split("\0")
        leading = re.match(r"- ((?:`[^`]+`(?:,\s*|\s+and\s+)?)+)", text)
        for token in re.findall(r"`([^`]+)`", leading.group(1)):
            found.setdefault(module, []).append(re.match(r"[\w.]+", token).group(0))
    return found


def test_the_api_page_documents_exactly_the_public_names_and_they_import():
    import importlib

    import ensemblecert

    documented = documented_api()
    assert ensemblecert.__all__ == sorted(ensemblecert.__all__)
    assert sorted(set(documented["ensemblecert"])) == ensemblecert.__all__
    for module, names in documented.items():
        for name in names:
            path = name.split(".")
            if path[0] == "ensemblecert" and len(path) > 1:  # a fully qualified name
                *mod, attr = path
                assert hasattr(importlib.import_module(".".join(mod)), attr), name
            else:
                assert hasattr(importlib.import_module(module), name), f"{name} from {module}"


def test_the_architecture_page_lists_every_module_of_the_core():
    text = (REPO / "docs" / "architecture.md").read_text()
    block = text.split("core/  (import package ensemblecert)", 1)[1].split("plugins/ (ensemblecert.plugins;", 1)[0]
    core = REPO / "core"
    modules = {p.name for p in core.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    listed = set(re.findall(r"\b(\w+\.py)\b", block))
    assert listed == modules, (sorted(modules - listed), sorted(listed - modules))
    packages = {p.parent.relative_to(core).parts[0] for p in core.rglob("__init__.py") if p.parent != core}
    assert all(re.search(rf"^  {name}/", block, flags=re.M) for name in packages), packages


def resolves(dotted: str) -> bool:
    """Whether ``ensemblecert.a.b.c`` names a module, or an attribute of one, that exists."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_every_dotted_name_in_code_and_docs_exists():
    """``ensemblecert.x.y`` in docstrings and docs names something real (modules moved once; references did not)."""
    pattern = re.compile(r"(?<![\w./-])ensemblecert(?:\.[A-Za-z_]\w*)+(?![\w/-])")
    files = [REPO / "README.md", *(REPO / "docs").rglob("*.md")]
    files += [p for d in ("core", "plugins") for p in (REPO / d).rglob("*.py")]
    missing = sorted(
        {
            f"{p.relative_to(REPO)}: {m.group(0)}"
            for p in files
            for m in pattern.finditer(p.read_text())
            if not resolves(m.group(0))
        }
    )
    assert not missing, missing


def test_repository_paths_in_the_docs_exist():
    """A path the docs name (``core/hookspecs.py``, ``benchmarks/startup.py``) is where they say; the import package
    is never written as a folder (``ensemblecert/hookspecs.py`` is ``core/hookspecs.py`` in the repository)."""
    pattern = re.compile(r"`((?:core|plugins|tests|benchmarks|examples|docs)/[\w./-]+\.(?:py|toml|md))`")
    texts = {p: p.read_text() for p in [REPO / "README.md", *(REPO / "docs").rglob("*.md")]}
    missing = sorted(
        f"{p.name}: {m}" for p, text in texts.items() for m in pattern.findall(text) if not (REPO / m).exists()
    )
    assert not missing, missing
    folders = sorted(p.name for p, text in texts.items() if re.search(r"`ensemblecert/\w+\.py`", text))
    assert not folders, folders


def test_the_reference_is_generated_from_the_code():
    """docs/reference.md is `ensemblecert reference`'s output: regenerate it when a setting, component or command
    changes (``ensemblecert reference > docs/reference.md``)."""
    from ensemblecert.manager import load_registry
    from ensemblecert.running.cli import build_parser, plugin_commands
    from ensemblecert.running.reference import reference_text

    registry = load_registry()
    expected = reference_text(registry, build_parser(plugin_commands(registry)))
    assert (REPO / "docs" / "reference.md").read_text() == expected, "run: ensemblecert reference > docs/reference.md"


def test_every_method_page_says_what_ensemblecert_does_differently():
    """Each page of a method (all of docs/methods but the measurements of adaptive.md) has the section the papers'
    readers look for, with at least one point in it."""
    pages = sorted(p for p in (REPO / "docs" / "methods").glob("*.md") if p.name != "adaptive.md")
    assert len(pages) >= 8
    heading = "## What ensemblecert does differently, and why\n"
    for page in pages:
        text = page.read_text()
        assert heading in text, page.name
        section = text.split(heading, 1)[1].split("\n## ", 1)[0]
        assert len(section.split()) > 20, page.name


def test_the_notebook_page_draws_a_study_from_its_frame_alone(tmp_path, monkeypatch):
    """docs/notebook.md: its study (made small) runs, then its Python code draws the figure and prints the table."""
    import tomllib

    from ensemblecert import load_study, run_study

    page = (REPO / "docs" / "notebook.md").read_text()
    study_toml = re.search(r"```toml\n(.*?)```", page, re.S).group(1)
    code = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    config = tomllib.loads(study_toml)
    config.update(seed=0, device="cpu", ensemble={"members": 1, "model": {"name": "mlp", "hidden": [32]}})
    config["training"]["epochs"] = 1
    config["certification"].update(certifiers=[{"name": "cohen", "n0": 20, "n": 200}], max_examples=6)
    monkeypatch.chdir(tmp_path)
    run_study(load_study(config))
    namespace: dict = {}
    exec(compile(code, "docs/notebook.md", "exec"), namespace)
    assert (tmp_path / "certified_accuracy_by_sigma.png").stat().st_size > 0
    table = namespace["table"]
    assert list(table.index) == [0.25, 0.5] and list(table.columns) == [0.0, 0.25, 0.5, 0.75, 1.0]
    rows = namespace["rows"]
    assert len(rows) == 12 and set(rows["point"]) == {"sigma=0.25", "sigma=0.5"}
