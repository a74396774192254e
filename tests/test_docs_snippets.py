"""The code in the documentation: every Python snippet imports only public names, and each snippet of the plugin
guide (docs/plugins.md) runs as a reader would paste it."""

from __future__ import annotations

import ast
import re
import textwrap

import pytest

import ensemblecert
from conftest import REPO, run_main
from ensemblecert import load_pipeline, run

#: Modules whose every name is public (docs/api.md), besides ``ensemblecert`` itself (its ``__all__``).
PUBLIC_MODULES = ("ensemblecert.validators", "ensemblecert.testing", "ensemblecert.running.context")


def snippets(path) -> list[str]:
    """The fenced Python blocks of a Markdown file, indented ones (inside a list) dedented."""
    text = path.read_text()
    return [textwrap.dedent(m.group(2)) for m in re.finditer(r"^( *)```python\n(.*?)^\1```", text, re.M | re.S)]


def documented_files():
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_every_snippet_in_the_docs_imports_only_public_names():
    problems = []
    for path in documented_files():
        for code in snippets(path):
            for node in ast.walk(ast.parse(code)):
                if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("ensemblecert"):
                    continue
                module, names = node.module or "", [alias.name for alias in node.names]
                where = f"{path.relative_to(REPO)}: from {module} import {', '.join(names)}"
                if module == "ensemblecert":
                    problems += [f"{where}: {n} is not public" for n in names if n not in ensemblecert.__all__]
                elif module.startswith("ensemblecert.plugins."):  # a method page may show its own plugin's API
                    if "methods" not in path.parts:
                        problems.append(f"{where}: a plugin's module outside its method page")
                elif module not in PUBLIC_MODULES and not module.startswith("ensemblecert_"):
                    problems.append(f"{where}: not a public module")
    assert not problems, "\n".join(problems)


GUIDE = snippets(REPO / "docs" / "plugins.md")
CERTIFIER, AGGREGATOR, SOUNDNESS, STAGE, COMMAND = GUIDE


def test_the_guide_has_the_snippets_these_tests_run():
    assert "class TwoStage(Certifier)" in CERTIFIER and "class Median(Aggregator)" in AGGREGATOR
    assert "check_soundness" in SOUNDNESS and "class Margins(Stage)" in STAGE and "class Abstentions" in COMMAND


def pipeline_file(tmp_path, module: str, code: str, **tables) -> str:
    """A tiny pipeline beside ``module``.py (holding ``code``), with ``tables`` added."""
    (tmp_path / f"{module}.py").write_text(code)
    extra = "\n".join(f"{key} = {value}" for key, value in tables.items())
    (tmp_path / "p.toml").write_text(
        textwrap.dedent(
            f"""\
            seed = 0
            device = "cpu"
            output = "run"
            plugins = ["{module}"]
            {extra}

            [ensemble]
            members = 3
            model = {{ name = "mlp", hidden = [16] }}

            [training]
            epochs = 1

            [certification]
            certifiers = [{{ name = "cohen", n0 = 20, n = 300, alpha = 0.01 }}]
            max_examples = 3
            """
        )
    )
    return str(tmp_path / "p.toml")


def test_the_aggregator_example_certifies(tmp_path):
    path = pipeline_file(tmp_path, "my_aggregator", AGGREGATOR)
    done = run_main("run", path, "--set", 'ensemble.aggregator="median"', "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "cohen" in done.stdout
    done = run_main("run", path, "--set", "ensemble.members=2", "--set", 'ensemble.aggregator="median"')
    assert done.returncode == 2 and "the median of 2 members is their mean" in done.stderr


@pytest.mark.parametrize(
    "broken, message",
    [
        ("return member_logits.mean(dim=0)", r"row \d+ sums to .*are they logits\? softmax them"),
        (
            "return (probs / probs.sum(dim=-1, keepdim=True))[:3]",
            r"it returned shape \[3, 10\] for \d+ inputs, expected \[\d+, classes\]",
        ),
    ],
    ids=["logits", "shape"],
)
def test_an_aggregator_that_breaks_its_contract_is_named_once(tmp_path, request, broken, message):
    code = AGGREGATOR.replace("return probs / probs.sum(dim=-1, keepdim=True)", broken)
    assert code != AGGREGATOR
    module = f"bad_aggregator_{request.node.callspec.id}"  # a name of its own: imported modules stay imported
    path = pipeline_file(tmp_path, module, code)
    done = run_main("run", path, "--set", 'ensemble.aggregator="median"', "--quiet", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert re.search(rf"aggregator Median \(from {module}\) broke its contract: .*" + message, done.stderr)
    assert len(done.stderr.strip().splitlines()) <= 2


def test_the_soundness_snippet_reports_the_example_package_sound(on_path, capsys):
    on_path(REPO / "examples" / "plugin_package")
    exec(compile(SOUNDNESS, "docs/plugins.md", "exec"), {})
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("verdict: SOUND")


def test_the_stage_and_command_examples_run(tmp_path, on_path, autoload):
    (tmp_path / "my_command.py").write_text(COMMAND)
    info = tmp_path / "my_command-1.0.dist-info"  # installed, as a command's package must be to be found
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-command\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[ensemblecert]\nabstentions = my_command\n")
    on_path(tmp_path)
    path = pipeline_file(tmp_path, "my_stage", STAGE, stages='[{ name = "margins" }]')
    result = run(path, overrides=[f'output="{tmp_path / "run"}"'])
    lines = (tmp_path / "run" / "margins.tsv").read_text().splitlines()
    assert len(lines) == len(result.results) == 3
    assert load_pipeline(path)[1].get("command", "abstentions").plugin == "abstentions"
    done = run_main("abstentions", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
