"""The simplex analysis (Cullen24 Fig. 3): the map of winning regions, a run's inputs on it, and the command."""

import json

import numpy as np
import pytest

from ensemblecert import Command, UserError, hookimpl, load_registry, run
from ensemblecert.plugins.simplex.analysis import ceiling_ratios, read_run, winner_map
from ensemblecert.plugins.simplex.mechanisms import MECHANISMS
from ensemblecert.running.cli import build_parser, plugin_commands


def test_the_map_is_the_argmax_of_the_mechanisms_at_every_cell():
    names = ["cohen", "li", "dp"]
    found = winner_map(names, resolution=60)
    rng = np.random.default_rng(0)
    rows, cols = np.nonzero(found.inside)
    for k in rng.choice(rows.size, 40, replace=False):
        i, j = rows[k], cols[k]
        radii = [float(MECHANISMS[n](found.e0[j], found.e1[i], 1.0)) for n in names]
        assert found.winner[i, j] == (int(np.argmax(radii)) if max(radii) > 0 else -1)
    assert not found.inside[found.e1[:, None] >= found.e0[None, :]].any()
    assert sum(found.shares().values()) == pytest.approx(1.0)


def test_the_papers_qualitative_picture():
    found = winner_map(["cohen", "li", "dp"], resolution=100)
    shares = found.shares()
    assert shares["dp"] > 0.5 and shares["li"] > 0 and shares["cohen"] > 0  # every region is non-empty (Cor. 4.3)

    def winner_at(e0, e1):
        j, i = np.searchsorted(found.e0, e0), np.searchsorted(found.e1, e1)
        return found.names[found.winner[i, j]]

    assert winner_at(0.9, 0.095) == "cohen"  # near E0 + E1 = 1
    assert winner_at(0.8, 0.01) == "li"  # a confident top class, a tiny runner-up
    assert winner_at(0.4, 0.1) == "dp"  # no Eq. 9 certificate below E0 = 1/2
    assert winner_map(["lecuyer", "dp"], resolution=60).shares()["dp"] == 1.0
    ratios = ceiling_ratios(["cohen", "li", "lecuyer", "dp"], resolution=60)
    assert all(0 < r < 1 for r in ratios.values()) and ratios["dp"] > ratios["lecuyer"]


def test_the_bare_map_from_the_command_line(tmp_path, cli):
    proc = cli("simplex", "--of", "lecuyer,dp", "--resolution", "40", "-o", "map.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "map.png").stat().st_size > 5000
    assert "100.0%" in proc.stdout and "lecuyer" in proc.stdout
    proc = cli("simplex", "--of", "cohen,dpp", cwd=tmp_path)
    assert proc.returncode == 2 and "--of: unknown mechanisms ['dpp']" in proc.stderr and "Traceback" not in proc.stderr


DEFAULT, CHOSEN = "best (of=none)", "best (of=[cohen cohen_two_sided li lecuyer dp])"  # labels: what differs


def test_a_runs_inputs_and_the_gain_of_best(tiny_pipeline, tmp_path, cli):
    own = ["cohen", "cohen_two_sided", "li", "lecuyer", "dp"]
    tiny_pipeline["certification"]["certifiers"] = [
        {"name": "best", "n0": 20, "n": 300, "alpha": 0.01},
        {"name": "best", "of": own, "n0": 20, "n": 300, "alpha": 0.01},
    ]
    tiny_pipeline["certification"]["skip"] = 15
    result = run(tiny_pipeline)
    records, radii = read_run(result.output)
    assert [r.label for r in records] == [DEFAULT, CHOSEN] and radii == [0.0, 0.25]
    for record in records:
        labels = [r.label for r in result.results]
        label = record.label
        # each member's ACR, recomputed from the rows
        for k, entry in enumerate(record.entries):
            certs = [r.outcomes[label].certificate for r in result.results]
            expected = np.mean(
                [c.details[f"r_{entry}"] * (c.prediction == r.label) for c, r in zip(certs, result.results)]
            )
            assert record.acr(k) == pytest.approx(expected)
            assert record.acr(k) <= record.acr() + 1e-12
        assert record.acr() == pytest.approx(result.summary.certifiers[label].acr)
        assert record.certified_accuracy(0.25) == pytest.approx(
            result.summary.certifiers[label].certified_accuracy[0.25]
        )
        assert record.labels.tolist() == labels
    proc = cli("simplex", str(result.output), "--resolution", "40", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(": mapping where") == 2  # says what it is doing before each slow step
    for slug in ("best_of_none_", "best_of_cohen_cohen_two_sided_li_lecuyer_dp_"):
        assert (result.output / f"simplex_{slug}.png").stat().st_size > 5000
    report = json.loads((result.output / "simplex.json").read_text())
    rows = report[CHOSEN]["rows"]
    assert [r["mechanism"] for r in rows] == [*own, CHOSEN]
    assert sum(r["wins"] for r in rows[:-1]) == pytest.approx(1.0)
    assert all(r["gain"] >= -1e-12 for r in rows)


def test_command_errors(tiny_pipeline, tmp_path, cli):
    proc = cli("simplex", "nowhere", cwd=tmp_path)
    assert proc.returncode == 2 and "nowhere: no such run directory" in proc.stderr
    result = run(tiny_pipeline)  # cohen only: nothing to rank
    proc = cli("simplex", str(result.output), cwd=tmp_path)
    assert proc.returncode == 2 and 'certify with { name = "best" }' in proc.stderr and "Traceback" not in proc.stderr


class Hello(Command):
    """Say hello."""

    def add_arguments(self, parser):
        parser.add_argument("--who", default="world")

    def run(self, args, console):
        console.print(f"hello {args.who}")
        return 0


def test_a_plugin_adds_a_command_but_not_over_a_built_in():
    import attrs

    hello = attrs.frozen(Hello)

    class Good:
        @staticmethod
        @hookimpl
        def register_commands(register):
            register("hello", hello)

    class Bad:
        @staticmethod
        @hookimpl
        def register_commands(register):
            register("run", hello)

    commands = plugin_commands(load_registry(plugins=[Good()]))
    assert set(commands) >= {"hello", "simplex"}
    args = build_parser(commands).parse_args(["hello", "--who", "you"])
    assert args.command == "hello" and args.who == "you"
    with pytest.raises(UserError, match="registers the command 'run', which is built in"):
        plugin_commands(load_registry(plugins=[Bad()]))
