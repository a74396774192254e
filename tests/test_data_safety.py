"""Nothing lost, nothing mixed: one run per output directory, --fresh never deletes an input, results files hold
exactly the run's rows, bad input is one message; and checks that kill plausible planted bugs."""

import copy
import io
import json
import math
import pathlib
import subprocess
import sys
import textwrap
import types

import pytest
import torch
from rich.console import Console

import ensemblecert
from ensemblecert import (
    Certificate,
    ConfigError,
    DataInfo,
    UserError,
    build_component,
    build_member,
    hookimpl,
    load_pipeline,
    load_registry,
    run,
)
from ensemblecert.checkpoints import save_checkpoint
from ensemblecert.running.lock import OutputLock
from ensemblecert.running.pipeline import CHECKPOINT_FORMAT, check_pipeline
from ensemblecert.running.report import Reporter, summary_table
from ensemblecert.smoothing.results import (
    ExampleResult,
    Outcome,
    ResultsWriter,
    read_results,
    summarize,
)

REGISTRY = load_registry()


def rows(path):
    return [line.split("\t") for line in path.read_text().splitlines()[1:]]


# ----------------------------------------------------------------------------------------- one run at a time
def test_a_second_run_into_a_held_directory_is_refused_and_names_the_holder(tiny_pipeline):
    out = tiny_pipeline["output"]
    with OutputLock(out):
        with pytest.raises(UserError, match=r"is in use by another ensemblecert run \(process \d+ on "):
            run(tiny_pipeline)
    assert not (pathlib.Path(out) / "certification.tsv").exists()  # the refused run wrote nothing
    first = run(tiny_pipeline)  # released: the next run goes ahead, and releases it again
    with OutputLock(out):
        pass
    assert len(rows(first.output / "certification.tsv")) == len(first.results)


def test_the_command_line_refuses_a_held_directory_with_exit_2(tmp_path, cli):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import time
            from ensemblecert.running.lock import OutputLock
            lock = OutputLock({str(out)!r}).acquire()
            print("held", flush=True)
            time.sleep(120)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = cli("run", "--output", str(out), "--set", "training.epochs=1")
        assert result.returncode == 2, result.stderr
        assert f"process {holder.pid}" in result.stderr and "Traceback" not in result.stderr
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------------------------- --fresh and its inputs
def test_fresh_never_deletes_the_checkpoints_it_starts_from(tiny_pipeline):
    trained = run(tiny_pipeline)
    checkpoints = sorted((trained.output / "checkpoints").glob("member_*.pt"))
    before = [p.read_bytes() for p in checkpoints]
    again = copy.deepcopy(tiny_pipeline)
    again["training"]["start_from"] = [str(trained.output)]
    with pytest.raises(UserError, match=r"training\.start_from: .* is this run's own output directory"):
        run(again, fresh=True)
    assert [p.read_bytes() for p in checkpoints] == before  # nothing was deleted
    assert (trained.output / "certification.tsv").exists()
    elsewhere = copy.deepcopy(again)  # the checkpoints of given members, inside the run's directory
    elsewhere["training"].update(enabled=False, start_from=[])
    elsewhere["ensemble"]["checkpoints"] = [str(p) for p in checkpoints]
    with pytest.raises(UserError, match=r"--fresh: would delete .*member_0\.pt, which ensemble\.checkpoints names"):
        run(elsewhere, fresh=True)
    assert [p.read_bytes() for p in checkpoints] == before


# ------------------------------------------------------------------------ exactly the selection's rows, none lost
def lines_of(path):
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("narrower", [{"max_examples": 3}, {"skip": 60}])
def test_narrowing_the_inputs_keeps_every_certified_row_and_widening_reuses_them(tiny_pipeline, narrower):
    full = run(tiny_pipeline)
    tsv, unselected = full.output / "certification.tsv", full.output / "certification.unselected.tsv"
    certified = lines_of(tsv)
    assert len(full.results) > 3
    smaller = copy.deepcopy(tiny_pipeline)
    smaller["certification"].update(narrower)
    narrow = run(smaller)
    indices = [int(r[0]) for r in rows(tsv)]
    assert indices == [r.index for r in narrow.results] and len(indices) < len(full.results)
    assert narrow.summary.examples == len(indices)
    assert json.loads((full.output / "certification.json").read_text())["examples"] == len(indices)
    assert sorted(lines_of(tsv)[1:] + lines_of(unselected)[1:]) == sorted(certified[1:])  # every row kept
    wide = run(tiny_pipeline)
    assert lines_of(tsv) == certified  # the same rows, times included: nothing certified again
    assert lines_of(unselected)[1:] == [] and wide.stages["certification"] == "resumed"
    assert wide.summary == full.summary


def test_evaluation_keeps_the_rows_a_narrower_selection_leaves_out(tiny_pipeline):
    tiny_pipeline["certification"]["enabled"] = False
    tiny_pipeline["evaluation"] = {"attacks": [{"name": "fgsm", "epsilon": 0.1}], "max_examples": 6, "batch_size": 3}
    first = run(tiny_pipeline)
    tsv = first.output / "evaluation.tsv"
    evaluated = lines_of(tsv)
    tiny_pipeline["evaluation"]["max_examples"] = 3
    second = run(tiny_pipeline)
    assert len(lines_of(tsv)) == 1 + 3 and second.evaluation.examples == 3
    assert lines_of(first.output / "evaluation.unselected.tsv")[1:] == evaluated[4:]
    tiny_pipeline["evaluation"]["max_examples"] = 6
    third = run(tiny_pipeline)
    assert lines_of(tsv) == evaluated and third.evaluation == first.evaluation


def test_a_row_cut_by_a_crash_never_runs_into_the_next(tmp_path):
    path = tmp_path / "certification.tsv"
    a = ExampleResult(12, 1, {"c": Outcome(Certificate(1, 0.25, 10), 0.1)})
    b = ExampleResult(4, 2, {"c": Outcome(Certificate(2, 0.5, 10), 0.1)})
    with ResultsWriter(path, ["c"]) as writer:
        writer.write(a)
    path.write_text(path.read_text() + "1")  # the start of a row for input 1..., cut short
    with ResultsWriter(path, ["c"]) as writer:  # appending without reading first
        writer.write(b)
    assert [r.index for r in read_results(path, ["c"])] == [12, 4]


# --------------------------------------------------------------------------------------- the command line
def test_processes_validates_the_pipeline_before_starting_any_process(tmp_path, cli):
    result = cli("run", str(tmp_path / "missing.toml"), "--processes", "2")
    assert result.returncode == 2
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr and "torch" not in result.stderr
    result = cli("run", "--processes", "999999", "--output", str(tmp_path / "run"))
    assert result.returncode == 2 and "use at most" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_leading_dot_in_set_is_refused():
    with pytest.raises(UserError, match=r"--set '\.training\.epochs': not a setting path"):
        load_pipeline(None, overrides=[".training.epochs=1"])


def test_soundness_warnings_survive_quiet_and_the_table_says_unsound(tiny_pipeline):
    tiny_pipeline["engine"] = {"precision": "bf16"}
    tiny_pipeline["certification"]["max_examples"] = 2
    buffer = io.StringIO()
    result = run(tiny_pipeline, reporter=Reporter(Console(file=buffer, width=200), quiet=True))
    assert "not sound" in buffer.getvalue() and "bf16" in buffer.getvalue()
    table = io.StringIO()
    Console(file=table, width=200).print(summary_table(result.summary, [0.0]))
    assert "NOT SOUND (bf16)" in table.getvalue()
    assert not result.summary.sound and result.summary.precision == "bf16"
    fine = summarize(result.results, list(result.summary.certifiers), [0.0])
    plain = io.StringIO()
    Console(file=plain, width=200).print(summary_table(fine, [0.0]))
    assert "NOT SOUND" not in plain.getvalue() and "hard" in plain.getvalue()


def test_validate_catches_eas_with_an_aggregator_that_skips_members():
    pipeline, _ = load_pipeline(
        {
            "ensemble": {"members": 3, "smoothing": ["eas"], "aggregator": {"name": "k_consensus", "k": 2}},
        }
    )
    with pytest.raises(ConfigError, match=r"ensemble\.smoothing\[0\]: .*skips members"):
        check_pipeline(pipeline)


@pytest.mark.parametrize(
    "spec", [{"name": "dp"}, {"name": "best"}, {"name": "cohen", "expectation": "multinomial"}, {"name": "sequential"}]
)
def test_eas_refuses_every_mechanism_but_certify(spec):
    pipeline, _ = load_pipeline({"ensemble": {"smoothing": ["eas"]}, "certification": {"certifiers": [spec]}})
    with pytest.raises(
        ConfigError, match=r"ensemble\.smoothing\[0\]: certification\.certifiers\[0\]: eas .* only with CERTIFY"
    ):
        check_pipeline(pipeline)


# ------------------------------------------------------------------------------------------- messages
def digits_info():
    return build_component("dataset", {"name": "digits"}, REGISTRY).load().info


def write_member(path, info, model=None):
    model = model or build_component("model", {"name": "mlp", "hidden": [32]}, REGISTRY)
    member = build_member(model, info, 0)
    save_checkpoint(
        {
            "format": CHECKPOINT_FORMAT,
            "state_dict": member.state_dict(),
            "model": {"name": "mlp"},
            "data_info": {"input_shape": list(info.input_shape), "num_classes": info.num_classes},
        },
        path,
    )


def test_start_from_errors_name_the_setting_and_the_class_count(tiny_pipeline, tmp_path):
    info = digits_info()
    five = ensemblecert.DataInfo(info.input_shape, 5, info.mean, info.std)
    paths = [tmp_path / f"five_{i}.pt" for i in range(2)]
    for path in paths:
        write_member(path, five)
    tiny_pipeline["training"]["start_from"] = [str(p) for p in paths]
    with pytest.raises(
        UserError,
        match=r"^training\.start_from: .*five_0\.pt: was saved for 5 classes, but this "
        r"pipeline's data has 10",
    ):
        run(tiny_pipeline)
    paths[0].write_bytes(paths[0].read_bytes()[:200])  # truncated
    with pytest.raises(UserError, match=r"^training\.start_from: .*five_0\.pt: not a readable ensemblecert checkpoint"):
        run(tiny_pipeline)


def test_simplex_on_a_run_with_no_rows_says_so(tmp_path, cli):
    (tmp_path / "certification.tsv").write_text("")
    (tmp_path / "certification.meta.json").write_text('{"certifiers": ["best"]}')
    result = cli("simplex", str(tmp_path))
    assert result.returncode == 2 and "holds no certified inputs" in result.stderr and "best" not in result.stderr
    header = "\t".join(["idx", "label", "predict", "radius", "correct", "time", "samples", "evaluations", "classifier"])
    (tmp_path / "certification.tsv").write_text(header + "\n0\t1\t1\t0.3\n")  # a damaged row
    result = cli("simplex", str(tmp_path))
    assert result.returncode == 2 and "certification.tsv, line 2: 4 fields where the header has 9" in result.stderr


def test_a_hook_function_pluggy_would_ignore_is_refused():
    typo = types.ModuleType("typo_plugin")
    typo.register_certifier = lambda register: None
    with pytest.raises(
        UserError,
        match="defines register_certifier, which is not an ensemblecert hook; did you mean 'register_certifiers'",
    ):
        load_registry(plugins=[typo])
    bare = types.ModuleType("bare_plugin")

    def register_certifiers(register):
        register("never", object)

    bare.register_certifiers = register_certifiers
    with pytest.raises(UserError, match="register_certifiers without the @hookimpl decorator"):
        load_registry(plugins=[bare])
    bare.register_certifiers = hookimpl(register_certifiers)
    with pytest.raises(UserError):  # decorated, it is called (and refuses a class that is no certifier)
        load_registry(plugins=[bare])


# -------------------------------------------------------------------------- checks that kill planted bugs
def test_normalisation_subtracts_the_mean_and_divides_by_the_std():
    from ensemblecert.ensemble import Normalize

    layer = Normalize([0.3, 0.1], [0.5, 0.2])
    x = torch.tensor([[0.9, 0.7]]).view(1, 2, 1, 1)
    assert layer(x).flatten().tolist() == pytest.approx([(0.9 - 0.3) / 0.5, (0.7 - 0.1) / 0.2])  # 1.2, 3.0


def test_a_member_normalises_its_input_with_the_data_sets_mean_and_std():
    """build_member puts the data set's normalisation in front of the network: mean 0.1, std 0.4 and input 0.9 give
    2.0 (swapped, they would give 5.0)."""
    from ensemblecert.ensemble import Normalize

    info = DataInfo((1, 1, 1), 2, (0.1,), (0.4,))
    member = build_member(build_component("model", {"name": "mlp", "hidden": [3]}, load_registry()), info, 0)
    seen = []
    member.net.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    member(torch.tensor([[[[0.9]]]]))
    assert isinstance(member.normalize, Normalize) and seen[0].flatten().tolist() == pytest.approx([2.0])


@pytest.mark.parametrize(
    "kind, spec",
    [
        ("certifier", {"name": "cohen", "alpha": math.nan}),
        ("certifier", {"name": "certify_adp", "radius": math.nan}),
        ("certifier", {"name": "sequential", "tolerance": math.inf}),
        ("noise", {"name": "gaussian", "sigma": math.nan}),
    ],
)
def test_nan_and_inf_are_refused_by_the_constructors_themselves(kind, spec):
    cls = REGISTRY.get(kind, spec["name"]).cls
    with pytest.raises(ValueError, match="finite"):
        cls(**{k: v for k, v in spec.items() if k != "name"})


def test_l2_projection_leaves_points_inside_the_ball_alone():
    from ensemblecert.plugins.attacks import project

    inside = torch.tensor([[0.3, 0.4]])  # norm 0.5
    outside = torch.tensor([[3.0, 4.0]])  # norm 5
    assert torch.equal(project(inside, "l2", 1.0), inside)
    assert project(outside, "l2", 1.0).flatten().tolist() == pytest.approx([0.6, 0.8])
    assert torch.equal(project(torch.tensor([[0.05, -0.2]]), "linf", 0.1), torch.tensor([[0.05, -0.1]]))


def test_certification_results_of_another_seed_are_not_reused(tiny_pipeline, tmp_path):
    trained = run(tiny_pipeline)
    certify_only = copy.deepcopy(tiny_pipeline)
    certify_only["output"] = str(tmp_path / "certify")
    certify_only["ensemble"]["checkpoints"] = [
        str(p) for p in sorted((trained.output / "checkpoints").glob("member_*.pt"))
    ]
    certify_only["training"]["enabled"] = False
    run(certify_only)
    certify_only["seed"] = 2  # same weights, other noise: the rows of seed 1 are not this run's
    with pytest.raises(UserError, match="holds results of a different model or certification setup"):
        run(certify_only)


def test_the_lock_file_records_the_holder(tmp_path):
    lock = OutputLock(tmp_path / "out").acquire()
    try:
        text = (tmp_path / "out" / ".ensemblecert.lock").read_text()
        assert f'"pid": {__import__("os").getpid()}' in text
    finally:
        lock.release()
