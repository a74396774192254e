"""Reports: runs read back, compared side by side (terminal, Markdown, LaTeX) and drawn, by `ensemblecert report`
and by the report stage at the end of every run."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from ensemblecert import ABSTAIN, run
from ensemblecert.reports.figures import lower_bounds, simplex_points
from ensemblecert.reports.runs import read_run, run_names
from ensemblecert.reports.tables import compare, latex_table, markdown_table


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """One small run with two certifiers, and a copy of it whose rows were changed (a second run to compare)."""
    base = tmp_path_factory.mktemp("reports")
    pipeline = {
        "seed": 3,
        "device": "cpu",
        "output": str(base / "first"),
        "ensemble": {"members": 2, "model": {"name": "mlp", "hidden": [32]}},
        "training": {"epochs": 2, "batch_size": 128, "lr": 0.1},
        "certification": {
            "certifiers": [
                {"name": "cohen", "n0": 20, "n": 300, "alpha": 0.01},
                {"name": "cohen", "n0": 20, "n": 300, "alpha": 0.01, "expectation": "softmax", "label": "soft_one"},
            ],
            "skip": 30,
            "radii": [0.0, 0.25, 0.5],
        },
    }
    result = run(pipeline)
    second = base / "second"
    shutil.copytree(result.output, second)
    # the second run abstains on its first input wherever the first certified it
    tsv = second / "certification.tsv"
    lines = tsv.read_text().splitlines()
    header, first = lines[0].split("\t"), lines[1].split("\t")
    for prefix in ("", "cohen:"):  # the leading columns repeat the first certifier's
        first[header.index(f"{prefix}predict")] = str(ABSTAIN)
        first[header.index(f"{prefix}radius")] = "0"
        first[header.index(f"{prefix}correct")] = "0"
    tsv.write_text("\n".join([lines[0], "\t".join(first), *lines[2:]]) + "\n")
    return result, second


def test_a_run_writes_its_own_report(two_runs):
    result, _ = two_runs
    for name in ("report.md", "report.tex", "certified_accuracy.png", "certified_accuracy.pdf", "lower_bounds.png"):
        assert (result.output / name).stat().st_size > 200, name
    text = (result.output / "report.md").read_text()
    assert "| first | cohen | hard |" in text
    assert "![Inputs in the simplex](simplex.png)" in text  # soft_one records E0 and E1
    assert (result.output / "simplex.png").stat().st_size > 200 and (result.output / "simplex.pdf").exists()


def test_the_simplex_points_are_each_inputs_bounds_and_outcome(two_runs):
    result, second = two_runs
    record = read_run(second)
    points = simplex_points(record, "soft_one")
    assert points.shape == (len(record.results), 3)
    for (e0, e1, state), r in zip(points, record.results):
        outcome = r.outcomes["soft_one"].certificate
        assert (e0, e1) == (outcome.details["e0"], outcome.details["e1"])
        assert state == (0 if outcome.abstained else (1 if outcome.prediction == r.label else -1))
    assert simplex_points(record, "cohen").size == 0  # CERTIFY records no E0 and E1


def test_the_comparison_counts_what_the_rows_say(two_runs):
    result, second = two_runs
    records = [read_run(result.output), read_run(second)]
    assert run_names(records) == ["first", "second"]
    comparison = compare(records)
    assert comparison.radii == (0.0, 0.25, 0.5)
    rows = {(r.run, r.certifier): r for r in comparison.rows}
    assert set(rows) == {(run_, c) for run_ in ("first", "second") for c in ("cohen", "soft_one")}
    for label in ("cohen", "soft_one"):
        mine = rows["first", label]
        summary = result.summary.certifiers[label]
        assert mine.acr == pytest.approx(summary.acr)
        assert mine.accuracy == pytest.approx(tuple(summary.certified_accuracy[r] for r in (0.0, 0.25, 0.5)))
        certs = [(r.outcomes[label].certificate, r.label) for r in result.results]
        assert mine.abstained == sum(c.prediction == ABSTAIN for c, _ in certs)
        assert mine.wrong == sum(c.prediction not in (ABSTAIN, y) for c, y in certs)
        assert mine.abstained + mine.wrong + round(mine.accuracy[0] * mine.inputs) == mine.inputs
    assert result.results[0].outcomes["cohen"].certificate.prediction != ABSTAIN  # so the second lost one
    assert rows["second", "cohen"].abstained == rows["first", "cohen"].abstained + 1
    # the best of each column is the first run's (the second only lost a certificate), ties marked on both
    best = comparison.best()
    acr = [r.acr for r in comparison.rows]
    assert {comparison.rows[i].acr for i in best[-1]} == {max(acr)}
    markdown = markdown_table(comparison)
    assert markdown.count("**") >= 2 and "| second | soft_one |" in markdown
    latex = latex_table(comparison)
    assert (
        "soft\\_one" in latex and "\\textbf{" in latex and "\\%" in latex and latex.strip().endswith("\\end{tabular}")
    )


def test_the_lower_bounds_are_the_certificates_own(two_runs):
    result, _ = two_runs
    record = read_run(result.output)
    got = lower_bounds(record, "cohen")
    expected = [r.outcomes["cohen"].certificate.details["p_lower"] for r in result.results]
    assert np.allclose(got, expected)
    soft = lower_bounds(record, "soft_one")  # the softmax expectation's bound is E0
    assert np.allclose(soft, [r.outcomes["soft_one"].certificate.details["e0"] for r in result.results])
    assert all(0 <= v <= 1 and not math.isnan(v) for v in got)


def test_report_command_compares_runs(two_runs, tmp_path, cli):
    result, second = two_runs
    proc = cli("report", str(result.output), str(second), "-o", "rep", "--radii", "0", "0.5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "second" in proc.stdout and "r = 0.5" in proc.stdout
    text = (tmp_path / "rep" / "report.md").read_text()
    assert text.startswith("# Certification report: first, second")
    assert "ensemblecert report" in text and "--radii 0 0.5" in text
    assert (tmp_path / "rep" / "certified_accuracy.pdf").stat().st_size > 1000


def test_report_refuses_what_is_not_a_run(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    proc = cli("report", "empty", cwd=tmp_path)
    assert proc.returncode == 2 and "empty: holds no certification results" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli("report", "missing", cwd=tmp_path)
    assert proc.returncode == 2 and "missing: no such run directory" in proc.stderr


def test_a_target_radius_certifier_shows_its_target_and_leaves_the_rest_blank(tiny_pipeline):
    from rich.console import Console

    from ensemblecert.running.report import summary_table

    tiny_pipeline["certification"].update(
        certifiers=[
            {"name": "cohen", "n0": 20, "n": 400, "alpha": 0.01},
            {"name": "certify_adp", "radius": 0.25, "n0": 20, "stages": [100, 400], "alpha": 0.01},
        ],
        max_examples=4,
    )
    result = run(tiny_pipeline)
    adp = result.summary.certifiers["certify_adp"]
    assert adp.targets == (0.25,) and "target r = 0.25" in adp.describes
    assert math.isnan(adp.certified_accuracy[0.0]) and math.isnan(adp.acr)
    assert not math.isnan(adp.certified_accuracy[0.25])
    console = Console(width=200, record=True)
    console.print(summary_table(result.summary, [0.0, 0.25]))
    row = next(line for line in console.export_text().splitlines() if "certify_adp" in line)
    cells = [c.strip() for c in row.strip("│").split("│")]
    assert cells[2] == "" and cells[3].endswith("%") and cells[4] == ""  # r = 0 blank, r = 0.25, ACR blank
    saved = (result.output / "certification.json").read_text()
    assert '"acr": null' in saved and '"targets": [\n        0.25' in saved
    record = read_run(result.output)  # read back by the report: the targets are recorded
    assert record.targets == {"certify_adp": (0.25,)}
    row = next(r for r in compare([record]).rows if r.certifier == "certify_adp")
    assert math.isnan(row.accuracy[0]) and "| certify_adp | hard, target r = 0.25 |  |" in markdown_table(
        compare([record])
    )


def test_runs_over_different_inputs_are_flagged_and_what_differs_is_shown(two_runs, tmp_path, cli):
    from ensemblecert.reports.figures import _curves, _shared

    result, _ = two_runs
    narrower = tmp_path / "narrower"
    shutil.copytree(result.output, narrower)
    tsv = narrower / "certification.tsv"
    lines = tsv.read_text().splitlines()
    tsv.write_text("\n".join(lines[:4]) + "\n")  # three inputs of twelve
    config = (narrower / "pipeline.json").read_text().replace('"n": 300', '"n": 600', 1)
    (narrower / "pipeline.json").write_text(config)
    done = cli("report", str(result.output), str(narrower), "-o", str(tmp_path / "report"))
    assert done.returncode == 0, done.stderr
    assert "certified different test inputs" in done.stdout and "first: 12, narrower: 3" in done.stdout
    text = (tmp_path / "report" / "report.md").read_text()
    assert "**Warning:** the runs certified different test inputs" in text
    header = next(line for line in text.splitlines() if line.startswith("| run |"))
    assert "| classifier | certification.certifiers[0].n | r = 0 |" in header
    records = [read_run(result.output), read_run(narrower)]
    comparison = compare(records)
    assert comparison.settings == ("certification.certifiers[0].n",)
    assert [r.settings for r in comparison.rows][:3] == [("300",), ("300",), ("600",)]
    legends = [text for text, _, _ in _curves(records)]
    assert legends[0] == "first: cohen (n = 300)" and legends[2] == "narrower: cohen (n = 600)"
    assert _shared(records).startswith("sigma = 0.25") and "alpha = 0.01" in _shared(records)
    alone = [text for text, _, _ in _curves(records[:1])]
    assert alone == ["cohen", "soft_one"] and "n = 300" in _shared(records[:1])  # one run: all in the title
