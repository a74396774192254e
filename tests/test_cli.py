"""The command line: clear errors with exit status 2, listings, help, and an end-to-end run."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ensemblecert.registry import KINDS

MALFORMED = {
    "bad TOML": ("[train\nepochs = 3\n", "not valid TOML"),
    "unknown name": (
        '[ensemble]\naggregator = { name = "avg" }\n',
        "unknown aggregator 'avg'; known aggregators: 'hard', 'k_consensus', 'max', 'mme', 'soft', 'we'",
    ),
    "wrong type": ('[training]\nepochs = "ten"\n', "training.epochs: expected an integer, got 'ten'"),
    "out of range": (
        '[certification]\ncertifiers = [{ name = "cohen", alpha = 1.5 }]\n',
        "certification.certifiers[0].alpha: must be in (0, 1), got 1.5",
    ),
    "unknown key": ("[training]\nepocs = 3\n", "training.epocs: unknown setting; did you mean 'epochs'?"),
    "not UTF-8": (b"\xff\xfe[training]\n", "not valid TOML"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_malformed_pipeline_gets_one_clear_message(case, command, tmp_path, cli):
    text, expected = MALFORMED[case]
    path = tmp_path / "pipeline.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    proc = cli(command, str(path), cwd=tmp_path)
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.count("error:") == 1
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_missing_file(tmp_path, cli):
    proc = cli("run", "nope.toml", cwd=tmp_path)
    assert proc.returncode == 2 and "nope.toml: no such pipeline file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_set_and_bad_arguments(tmp_path, cli):
    proc = cli("validate", "--set", "training.epochs", cwd=tmp_path)
    assert proc.returncode == 2 and "expected PATH=VALUE" in proc.stderr
    proc = cli("run", "--no-such-flag", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_missing_data_files_are_a_user_error(tmp_path, cli):
    proc = cli("run", "--set", 'data={ name = "mnist", root = "nowhere" }', cwd=tmp_path)
    assert proc.returncode == 2
    assert "data: missing " in proc.stderr and "nowhere/MNIST/raw/train-images-idx3-ubyte" in proc.stderr
    assert "data.download = true" in proc.stderr and "Traceback" not in proc.stderr


def test_validate_the_default_and_the_example(cli):
    from conftest import REPO

    for args in ([], [str(REPO / "examples" / "digits.toml")]):
        proc = cli("validate", *args)
        assert proc.returncode == 0, proc.stderr
        assert "valid" in proc.stdout and 'name = "cohen"' in proc.stdout


def test_plugins_lists_every_kind_with_builtins(cli):
    proc = cli("plugins")
    assert proc.returncode == 0, proc.stderr
    for kind in KINDS.values():
        assert kind.title in proc.stdout
    for name in [
        "digits",
        "mnist",
        "cifar10",
        "imagenet",
        "mlp",
        "lenet",
        "resnet20",
        "resnet110",
        "resnet50",
        "we",
        "mme",
        "soft",
        "hard",
        "max",
        "k_consensus",
        "gaussian",
        "ebs",
        "eas",
        "cohen",
        "certify_adp",
        "sequential",
        "cohen_two_sided",
        "li",
        "lecuyer",
        "dp",
        "best",
        "simplex",
        "drt",
        "smoothadv",
        "adp",
        "gal",
        "pgd",
        "fgsm",
        "autoattack",
        "square",
        "igat",
    ]:
        assert f" {name} " in proc.stdout


def test_plugins_shows_third_party_components(cli, third_party, autoload):
    proc = cli("plugins", extra_path=third_party)
    assert proc.returncode == 0, proc.stderr
    # its row: the certifier's name, then the plugin (the entry point's name) that registered it
    assert re.search(r"│\s*majority\s*│\s*majority\s*│\s*n=50", proc.stdout) and "MajorityVote" not in proc.stdout


def test_the_suite_lists_only_the_built_ins_whatever_is_installed(third_party, tmp_path):
    """With a working third-party plugin installed (here one that registers a certifier, and one that registers the
    docs' own example under its documented name), the tests that list components still pass: the suite loads only
    ensemblecert's own entry points (ENSEMBLECERT_DISABLE_PLUGIN_AUTOLOAD, set for every test)."""
    from conftest import REPO

    certifier, aggregator = (REPO / "docs" / "plugins.md").read_text().split("```python\n")[1:3]
    (third_party / "doc_example_installed.py").write_text(certifier.split("```")[0] + aggregator.split("```")[0])
    info = third_party / "doc_example_installed-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: doc-example-installed\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[ensemblecert]\ntwo_stage = doc_example_installed\n")
    env = {k: v for k, v in os.environ.items() if k != "ENSEMBLECERT_DISABLE_PLUGIN_AUTOLOAD"}
    env["PYTHONPATH"] = os.pathsep.join([str(third_party), env.get("PYTHONPATH", "")])
    installed = subprocess.run(
        [sys.executable, "-m", "ensemblecert", "plugins"], env=env, capture_output=True, text=True, timeout=120
    )
    for name in ("two-stage", "median", "majority"):  # installed and working
        assert f"│ {name} " in installed.stdout, name
    listing = [
        "tests/test_docs.py::test_the_reference_is_generated_from_the_code",
        "tests/test_cli.py::test_malformed_pipeline_gets_one_clear_message",
        "tests/test_plugins.py::test_the_documented_plugin_example_works_and_is_sound",
        "tests/test_plugins.py::test_builtins_cover_every_kind",
    ]
    suite = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *listing,
            "-k",
            "unknown or reference or doc or cover",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    passed = re.search(r"(\d+) passed", suite.stdout)
    assert suite.returncode == 0 and passed and int(passed.group(1)) >= 5, suite.stdout[-3000:]


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["validate", "--help"], ["plugins", "--help"]])
def test_help(cli, args):
    proc = cli(*args)
    assert proc.returncode == 0 and "usage: ensemblecert" in proc.stdout


def test_default_prints_the_builtin_pipeline(cli):
    from conftest import REPO

    proc = cli("default")
    assert proc.stdout == (REPO / "examples" / "digits.toml").read_text()


def test_run_end_to_end_on_digits(tmp_path, cli):
    proc = cli(
        "run",
        "--output",
        "out",
        "--set",
        "training.epochs=3",
        "--set",
        "ensemble.members=3",
        "--set",
        "certification.certifiers[0].n=500",
        "--set",
        "certification.skip=12",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Certified accuracy (30 test inputs)" in proc.stdout and "ACR" in proc.stdout
    summary = json.loads((tmp_path / "out" / "certification.json").read_text())
    cohen = summary["certifiers"]["cohen"]
    assert summary["examples"] == 30
    rows = (tmp_path / "out" / "certification.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    table = [dict(zip(rows[0].split("\t"), row.split("\t"))) for row in rows[1:]]
    assert [int(r["idx"]) for r in table] == list(range(0, 360, 12))
    for radius in ("0", "0.25", "0.5", "0.75"):
        expected = sum(r["correct"] == "1" and float(r["radius"]) >= float(radius) for r in table) / 30
        assert cohen["certified_accuracy"][radius] == pytest.approx(expected)
        assert f"{expected:.1%}" in proc.stdout  # the printed table says the same
    assert cohen["acr"] == pytest.approx(sum(float(r["radius"]) for r in table if r["correct"] == "1") / 30)
    assert cohen["certified_accuracy"]["0"] > 0.7  # 3 trained members beat chance (0.1) by far
    assert all(r["correct"] == str(int(r["predict"] == r["label"])) for r in table)
    assert (tmp_path / "out" / "certified_accuracy.png").stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == [
        "member_0.pt",
        "member_1.pt",
        "member_2.pt",
    ]


def one_clear_error(proc, expected: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.count("error:") == 1


FAST = [
    "--set",
    "training.epochs=1",
    "--set",
    "certification.max_examples=1",
    "--set",
    "certification.certifiers[0].n=10",
]


def test_a_seed_beyond_64_bits(tmp_path, cli):
    proc = cli("run", "--set", "seed=99999999999999999999999", cwd=tmp_path)
    one_clear_error(proc, "seed: must be in [0, 9223372036854775807], got 99999999999999999999999")


def test_a_device_this_torch_lacks(tmp_path, cli):
    import torch

    if torch.backends.mps.is_available():  # pragma: no cover - not on the CI machines
        pytest.skip("this machine has MPS")
    proc = cli("run", "--device", "mps", cwd=tmp_path)
    one_clear_error(proc, "device: 'mps' requested but this torch build or machine has no MPS support")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("case", ["a file", "under a file", "too long", "empty"])
def test_unusable_output_paths(case, tmp_path, cli):
    (tmp_path / "afile").write_text("x")
    output = {"a file": "afile", "under a file": "afile/run", "too long": "x" * 300, "empty": ""}[case]
    expected = {
        "a file": "output: " + str(Path("afile")) + " exists and is not a directory",
        "under a file": "output: cannot write to afile/run",
        "too long": "File name too long",
        "empty": "--output: must not be empty",
    }[case]
    proc = cli("run", "--output", output, *FAST, cwd=tmp_path)
    one_clear_error(proc, expected)


def test_an_output_with_a_nul_character(tmp_path, cli):
    (tmp_path / "p.toml").write_text('output = "runs/a\\u0000b"\n')
    proc = cli("run", "p.toml", cwd=tmp_path)
    one_clear_error(proc, "output: must not contain a NUL character")


def test_checkpoints_being_a_file_is_found_before_any_work(tmp_path, cli):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoints").write_text("not a directory")
    proc = cli("run", "--output", "out", *FAST, cwd=tmp_path)
    one_clear_error(proc, "checkpoints exists and is not a directory")
    found = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert found == [".ensemblecert.lock", "checkpoints"]  # nothing was trained or written (the lock is kept)


def test_validate_shows_values_that_look_like_markup(tmp_path, cli):
    proc = cli("validate", "--set", 'output="[bold]runs[/bold]"', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"[bold]runs[/bold]"' in proc.stdout


def test_an_error_message_keeps_values_that_look_like_markup(tmp_path, cli):
    proc = cli("validate", "--set", 'ensemble.aggregator="[red]avg"', cwd=tmp_path)
    one_clear_error(proc, "unknown aggregator '[red]avg'")


@pytest.mark.parametrize(
    "argv", [["--help"], ["default"], ["run", "--no-such-option"], ["run", "--help"], ["validate", "--help"], []]
)
def test_answers_that_need_no_work_do_not_import_torch(argv, tmp_path):
    """Parsing comes first: help, the default pipeline and argument errors never load torch or a plugin
    (benchmarks/startup.py measures what that saves)."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from ensemblecert.running.cli import main\n"
        "try:\n"
        f"    code = main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "heavy = ('torch', 'scipy', 'ensemblecert.plugins', 'ensemblecert.components')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "print('HEAVY', heavy, code, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert "HEAVY [] " in proc.stderr, proc.stderr[-2000:]
    if argv == ["default"]:
        assert proc.stdout.startswith("# The built-in default pipeline")


def test_a_plugin_command_still_parses_its_own_arguments(tmp_path, cli):
    proc = cli("simplex", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "--resolution" in proc.stdout
    assert "plugins add commands" in cli("--help", cwd=tmp_path).stdout.lower()


@pytest.mark.parametrize(
    "env, expected",
    [({}, "10000"), ({"OMP_WAIT_POLICY": "PASSIVE"}, None), ({"GOMP_SPINCOUNT": "5"}, "5")],
    ids=["unset", "user-policy", "user-spincount"],
)
def test_threads_wait_politely_unless_the_user_chose(env, expected):
    """The command line makes waiting OpenMP threads sleep soon (a machine shared with other work gets its cores
    back) before torch loads the runtime, and leaves a user's own wait policy alone."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    code = (
        "import os, sys; from ensemblecert.running.cli import wait_politely; wait_politely(); "
        "assert 'torch' not in sys.modules; print(os.environ.get('GOMP_SPINCOUNT'))"
    )
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(expected)
