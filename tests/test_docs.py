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
    (cohen,) = p.certify.mechanisms
    ceiling = p.noise.sigma * stats.norm.ppf(cohen.alpha ** (1 / cohen.n))  # all n draws agree
    assert cohen.radius(cohen.n, cohen.n, p.noise.sigma)[1] == pytest.approx(ceiling, rel=1e-12)
    for path in (REPO / "core" / "defaults" / "digits.toml", REPO / "README.md"):
        stated = re.search(r"PhiInv\(0\.001\^\(1/10000\)\) = ([0-9.]+)", path.read_text())
        assert stated, f"{path.name} no longer states the radius ceiling"
        assert float(stated.group(1)) == round(ceiling, 2), path.name
    assert max(p.certify.radii) < ceiling  # every reported radius can be certified at all


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
