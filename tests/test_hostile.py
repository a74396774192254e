"""Hostile inputs through the command line: files that cannot be written, values that are not one value, empty lists,
component checks wherever a component is listed, and messages that send the user the right way. Each is one
message naming the problem and where it is, exit status 2, no traceback, and nothing already written is lost."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from ensemblecert.reports.writer import NAMES
from ensemblecert.running.cli import main

PIPELINE = """\
seed = 1
device = "cpu"
output = "{output}"

[ensemble]
members = 2
model = {{ name = "mlp", hidden = [16] }}
aggregator = {{ name = "soft", fit = true }}

[training]
epochs = 1
batch_size = 128

[certification]
certifiers = [{{ name = "{certifier}", n0 = 10, n = 60, alpha = 0.01 }}]
batch_size = 60
skip = 90
radii = [0.0, 0.25]

[evaluation]
attacks = [{{ name = "fgsm", epsilon = 0.1 }}]
max_examples = 3
"""


def pipeline_file(folder: Path, output: Path, certifier: str = "cohen") -> Path:
    path = folder / f"{output.name}.toml"
    path.write_text(PIPELINE.format(output=output, certifier=certifier))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (members, certification, evaluation, report) and its pipeline file."""
    folder = tmp_path_factory.mktemp("hostile")
    toml = pipeline_file(folder, folder / "run")
    assert main(["run", str(toml), "--quiet"]) == 0
    return toml, folder / "run"


@pytest.fixture
def read_only():
    """Make a directory read-only for this test, for root too (immutable), restored afterwards."""
    made = []

    def make(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
            made.append(("chattr", path))
        else:
            path.chmod(0o555)
            made.append(("chmod", path))
        probe = path / ".probe"
        try:
            probe.write_text("")
        except OSError:
            return path
        probe.unlink()
        pytest.skip("cannot make a directory read-only here")

    yield make
    for how, path in made:
        if how == "chattr":
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o755)


def fails(capsys, *argv: str) -> str:
    """Run the command line; it must exit 2 with one message and no traceback. Returns the message."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("error:")
    return " ".join(err.split())


def contents(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run but the lock (which records who ran last)."""
    files = [p for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".ensemblecert.lock"]
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in files}


# ------------------------------------------------------------------------------------ files that cannot be written
RUN_OUTPUTS = [
    "pipeline.json",
    "stages.json",
    "certification.tsv",
    "certification.json",
    "certification.meta.json",
    "checkpoints/member_0.pt",
    "train_log.json",
    "train_log.png",
    "heldout.json",
    "aggregator.json",
    "evaluation.tsv",
    "evaluation.json",
    "report.md",
    "report.tex",
    "certified_accuracy.png",
    "lower_bounds.pdf",
]


@pytest.mark.parametrize("name", RUN_OUTPUTS)
def test_a_directory_in_place_of_a_run_output_is_refused_before_any_work(finished, tmp_path, capsys, name):
    toml, run_dir = finished
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / name).unlink()
    (copy / name).mkdir()
    before = contents(copy)
    message = fails(capsys, "run", str(toml), "--output", str(copy))
    assert f"output: {copy / name} is a directory" in message
    assert contents(copy) == before  # nothing written, nothing lost


def test_a_read_only_output_directory_is_refused_before_any_work(finished, tmp_path, capsys, read_only):
    toml, run_dir = finished
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = contents(copy)
    read_only(copy)
    message = fails(capsys, "run", str(toml), "--output", str(copy))
    assert f"output: cannot write to {copy}" in message
    assert contents(copy) == before


def test_report_refuses_a_read_only_folder_and_an_empty_output(finished, tmp_path, capsys, read_only):
    _, run_dir = finished
    locked = read_only(tmp_path / "locked")
    assert f"--output: cannot write in {locked}" in fails(capsys, "report", str(run_dir), "-o", str(locked))
    assert "--output: must not be empty" in fails(capsys, "report", str(run_dir), "-o", "")


@pytest.mark.parametrize("name", NAMES)
def test_report_refuses_a_directory_in_place_of_any_of_its_files_before_drawing(finished, tmp_path, capsys, name):
    _, run_dir = finished
    (tmp_path / "rep" / name).mkdir(parents=True)
    message = fails(capsys, "report", str(run_dir), "-o", str(tmp_path / "rep"))
    assert f"--output: {tmp_path / 'rep' / name} is a directory" in message
    assert [p.name for p in (tmp_path / "rep").iterdir()] == [name]  # checked before anything was drawn


def test_simplex_checks_its_output_before_the_minutes_of_mapping(tmp_path, capsys, read_only):
    locked = read_only(tmp_path / "locked")
    assert f"--output: cannot write in {locked}" in fails(capsys, "simplex", "-o", str(locked / "x.png"))
    (tmp_path / "taken.png").mkdir()
    message = fails(capsys, "simplex", "-o", str(tmp_path / "taken.png"))
    assert f"--output: {tmp_path / 'taken.png'} is a directory" in message
    assert "--output: must not be empty" in fails(capsys, "simplex", "-o", "")


def test_simplex_on_a_run_checks_every_picture_and_names_missing_columns(tmp_path, capsys, read_only):
    toml = pipeline_file(tmp_path, tmp_path / "best", certifier="best")
    toml.write_text(toml.read_text().split("[evaluation]")[0])
    assert main(["run", str(toml), "--quiet"]) == 0
    run_dir = tmp_path / "best"
    locked = read_only(tmp_path / "locked")
    assert f"--output: cannot write in {locked}" in fails(capsys, "simplex", str(run_dir), "-o", str(locked))
    for name in ("simplex.json", "simplex_best.png"):
        (tmp_path / name / name).mkdir(parents=True)
        message = fails(capsys, "simplex", str(run_dir), "-o", str(tmp_path / name))
        assert f"--output: {tmp_path / name / name} is a directory" in message
    tsv = run_dir / "certification.tsv"
    lines = tsv.read_text().splitlines()
    header = lines[0].split("\t")
    keep = [i for i, column in enumerate(header) if not column.endswith((":e0", ":e1"))]
    tsv.write_text("\n".join("\t".join(line.split("\t")[i] for i in keep) for line in lines) + "\n")
    message = fails(capsys, "simplex", str(run_dir))
    assert f"{tsv}: the columns best:e0, best:e1 that the best certifier writes" in message
    assert 'certify with { name = "best" }' not in message


# ------------------------------------------------------------------------------------ one value, never part of one
@pytest.mark.parametrize(
    "item, expected",
    [
        ("training.epochs=1\nseed=5", "is more than one TOML value"),
        ("training.epochs=", "no value after '='"),
        ("device=cpu\nseed", "is not one TOML value"),
    ],
)
def test_an_override_that_is_not_exactly_one_value_is_refused_with_its_text(capsys, item, expected):
    message = fails(capsys, "validate", "--set", item)
    assert expected in message and f"--set {item.strip()!r}"[:20] in " ".join(f"--set {item!r}".split())


# ------------------------------------------------------------------------------------ empty is not the default
def test_an_empty_mechanism_list_is_refused(capsys):
    assert "--of: '' leaves a mechanism's name empty" in fails(capsys, "simplex", "--of", "", "-o", "map.png")
    assert "leaves a mechanism's name empty" in fails(capsys, "simplex", "--of", "cohen,", "-o", "map.png")


@pytest.mark.parametrize(
    "table, key",
    [
        ("certification", "certifiers"),
        ("certification", "radii"),
        ("ensemble", "smoothing"),
        ("evaluation", "aggregators"),
    ],
)
def test_an_empty_list_that_must_name_something_is_refused_in_toml_and_on_the_command_line(
    tmp_path, capsys, table, key
):
    path = tmp_path / "p.toml"
    path.write_text(f"[{table}]\n{key} = []\n")
    assert f"{table}.{key}: must not be empty" in fails(capsys, "validate", str(path))
    assert f"{table}.{key}: must not be empty" in fails(capsys, "validate", "--set", f"{table}.{key}=[]")


# ------------------------------------------------------------------------------------ a check wherever listed
@pytest.mark.parametrize(
    "settings, where, expected",
    [
        ('[evaluation]\naggregators = [{ name = "k_consensus", k = 5 }]', "evaluation.aggregators[0]", "k = 5"),
        ('[ensemble]\naggregator = { name = "k_consensus", k = 5 }', "ensemble.aggregator", "k = 5"),
        ('[evaluation]\naggregators = ["we", "hard"]', "evaluation.aggregators[1]", "need gradients"),
        ('[evaluation]\naggregators = [{ name = "soft", weights = [1.0] }]', "evaluation.aggregators[0]", "1 entries"),
        (
            '[training]\nregularizers = [{ name = "igat", aggregator = { name = "k_consensus", k = 4 } }]',
            "training.regularizers[0].aggregator",
            "k = 4",
        ),
        (
            '[training]\nregularizers = [{ name = "igat", aggregator = { name = "soft", fit = true } }]',
            "training.regularizers[0].aggregator",
            "only ensemble.aggregator is calibrated",
        ),
    ],
)
def test_each_component_check_applies_wherever_the_component_is_listed(tmp_path, capsys, settings, where, expected):
    path = tmp_path / "p.toml"
    path.write_text("[ensemble]\nmembers = 3\n" + settings.replace("[ensemble]\n", "") + "\n")
    if settings.startswith("[ensemble]"):
        path.write_text(f"[ensemble]\nmembers = 3\n{settings.split(chr(10), 1)[1]}\n")
    message = fails(capsys, "validate", str(path))
    assert f"{where}: " in message and expected in message


# ------------------------------------------------------------------------------------ messages that lead the way
def test_fine_tuning_from_the_runs_own_directory_names_the_setting(finished, capsys):
    toml, run_dir = finished
    message = fails(capsys, "run", str(toml), "--set", f'training.start_from=["{run_dir}"]')
    assert "training.start_from:" in message and "this run's own output directory" in message
    assert "--fresh" not in message.split("training.start_from:")[1].split(";")[0]


def test_an_impossible_process_count_is_named_before_a_missing_file(capsys):
    message = fails(capsys, "run", "no-such-file.toml", "--processes", "999999")
    assert message.startswith("error: --processes: 999999 processes")


def test_validate_names_the_example_that_makes_a_missing_start_from(capsys):
    message = fails(capsys, "validate", "examples/drt.toml")
    assert "training.start_from: no such run directory 'runs/drt/gaussian'" in message
    assert "run examples/drt_gaussian.toml first" in message


def test_the_real_command_line_prints_one_message_without_a_traceback(tmp_path, cli):
    (tmp_path / "taken.png").mkdir()
    proc = cli("simplex", "-o", str(tmp_path / "taken.png"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert textwrap.dedent(proc.stderr).count("error:") == 1


def test_a_misspelt_set_path_gets_the_same_did_you_mean_as_a_toml_key(capsys):
    message = fails(capsys, "validate", "--set", "certification.certifier[0].n=100")
    assert "certification.certifier[0].n does not exist in this pipeline; did you mean 'certification.certifiers'?" in (
        message
    )
