"""The pipeline end to end: results written as produced, resuming, checkpoints, and the Python API."""

import copy

import attrs
import pytest
import torch

from ensemblecert import BaseLoss, RunResult, UserError, hookimpl, load_pipeline, run
from ensemblecert.plugins.gaussian_augmentation import GaussianAugmentation

ARMED = {"on": False}


@attrs.frozen
class Interrupting(BaseLoss):
    """Gaussian augmentation that simulates a crash (Ctrl-C) at the start of epoch ``at``, when armed."""

    at: int = 1

    def terms(self, batch):
        if ARMED["on"] and batch.epoch == self.at:
            raise KeyboardInterrupt
        return GaussianAugmentation().terms(batch)


class InterruptPlugin:
    @staticmethod
    @hookimpl
    def register_losses(register):
        register("interrupting", Interrupting)


def rows(result: RunResult) -> list[str]:
    return (result.output / "certification.tsv").read_text().splitlines()


def test_run_returns_results_and_writes_them(tiny_pipeline):
    result = run(tiny_pipeline)
    assert [r.index for r in result.results] == list(range(0, 360, 30))
    assert len(rows(result)) == 13
    assert result.summary.examples == 12
    assert set(result.summary.certifiers["cohen"].certified_accuracy) == {0.0, 0.25}
    assert len(result.losses) == 2 and result.losses[1] < result.losses[0]
    ckpt = torch.load(result.output / "checkpoints" / "member_1.pt", weights_only=True)
    assert ckpt["model"] == {"name": "mlp", "hidden": [32]} and ckpt["seed"] == 2
    assert ckpt["pipeline"]["training"]["epochs"] == 2
    assert not (result.output / "checkpoints" / "train_state.pt").exists()


def test_certification_resumes_and_matches_an_uninterrupted_run(tiny_pipeline, tmp_path):
    first = copy.deepcopy(tiny_pipeline)
    first["certification"]["max_examples"] = 5
    part = run(first)
    before = rows(part)
    assert len(before) == 6
    # a crash in the middle of writing a row leaves a partial line; it must be dropped and redone
    with open(part.output / "certification.tsv", "a") as fh:
        fh.write("150\t4\t")
    whole = run(tiny_pipeline)
    assert rows(whole)[:6] == before
    assert len(rows(whole)) == 13
    other = copy.deepcopy(tiny_pipeline)
    other["output"] = str(tmp_path / "other")
    straight = run(other)
    strip_time = lambda lines: [line.split("\t")[:5] for line in lines]  # noqa: E731
    assert strip_time(rows(straight)) == strip_time(rows(whole))


def test_training_resumes_after_an_interruption(tiny_pipeline, tmp_path):
    cfg = copy.deepcopy(tiny_pipeline)
    cfg["training"].update(epochs=3, loss={"name": "interrupting", "at": 2})
    cfg["certification"]["enabled"] = False
    ARMED["on"] = True
    try:
        with pytest.raises(KeyboardInterrupt):
            run(cfg, plugins=[InterruptPlugin()])
    finally:
        ARMED["on"] = False
    state = torch.load(tmp_path / "run" / "checkpoints" / "train_state.pt", weights_only=True)
    assert state["epoch"] == 2
    resumed = run(cfg, plugins=[InterruptPlugin()])
    assert len(resumed.losses) == 1  # only the last epoch was run again
    straight_cfg = copy.deepcopy(cfg)
    straight_cfg["output"] = str(tmp_path / "straight")
    straight = run(straight_cfg, plugins=[InterruptPlugin()])
    for a, b in zip(resumed.ensemble.members, straight.ensemble.members):
        for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(pa, pb), name


def test_certify_existing_checkpoints_without_training(tiny_pipeline, tmp_path):
    trained = run(tiny_pipeline)
    again = copy.deepcopy(tiny_pipeline)
    again["training"]["enabled"] = False
    again["training"]["epochs"] = 50  # irrelevant when not training
    reloaded = run(again)
    assert reloaded.losses == []
    key = lambda r: (r.index, r.outcomes["cohen"].certificate.prediction, r.outcomes["cohen"].certificate.radius)  # noqa: E731
    assert [key(r) for r in reloaded.results] == [key(r) for r in trained.results]
    elsewhere = copy.deepcopy(again)
    elsewhere["output"] = str(tmp_path / "elsewhere")
    elsewhere["ensemble"]["checkpoints"] = [str(trained.output / "checkpoints" / f"member_{i}.pt") for i in range(2)]
    recomputed = run(elsewhere)  # certified afresh from the loaded checkpoints
    assert recomputed.losses == []
    assert [key(r) for r in recomputed.results] == [key(r) for r in trained.results]


def test_no_checkpoints_to_certify(tiny_pipeline):
    tiny_pipeline["training"]["enabled"] = False
    with pytest.raises(UserError, match="no trained members in .*member_0.pt"):
        run(tiny_pipeline)


def test_checkpoint_that_does_not_fit_the_model(tiny_pipeline, tmp_path):
    trained = run(tiny_pipeline)
    cfg = copy.deepcopy(tiny_pipeline)
    cfg["output"] = str(tmp_path / "other")
    cfg["ensemble"]["model"]["hidden"] = [16]
    cfg["ensemble"]["checkpoints"] = [str(trained.output / "checkpoints" / f"member_{i}.pt") for i in range(2)]
    with pytest.raises(
        UserError,
        match=r"^ensemble\.checkpoints: .*member_0.pt: it was saved for the model "
        r"\{'name': 'mlp', 'hidden': \[32\]\}, this pipeline's is .*\[16\]",
    ):
        run(cfg)


def test_a_changed_configuration_is_not_mixed_with_old_results(tiny_pipeline):
    run(tiny_pipeline)
    changed = copy.deepcopy(tiny_pipeline)
    changed["certification"]["certifiers"][0]["n"] = 300
    with pytest.raises(UserError, match="certification.tsv: holds results of a different .* --fresh"):
        run(changed)
    retrained = copy.deepcopy(tiny_pipeline)
    retrained["training"]["lr"] = 0.01
    with pytest.raises(UserError, match="member_0.pt: was trained with a different configuration"):
        run(retrained)
    fresh = run(changed, fresh=True)
    assert all(r.outcomes["cohen"].certificate.samples == 320 for r in fresh.results)


def test_corrupt_checkpoint_is_a_user_error(tiny_pipeline, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    tiny_pipeline["ensemble"]["checkpoints"] = [str(bad), str(bad)]
    with pytest.raises(UserError, match="bad.pt: not a readable ensemblecert checkpoint"):
        run(tiny_pipeline)


def test_mme_pipeline_and_dict_loading(tiny_pipeline):
    tiny_pipeline["ensemble"]["aggregator"] = {"name": "mme"}
    pipeline, registry = load_pipeline(tiny_pipeline)
    assert registry.name_of(type(pipeline.ensemble.aggregator)) == "mme"
    result = run(tiny_pipeline)
    assert result.summary.examples == 12


def test_a_checkpoint_whose_weights_are_not_a_mapping(tiny_pipeline, tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"format": "ensemblecert.member/1", "state_dict": [1, 2, 3]}, bad)
    tiny_pipeline["ensemble"]["checkpoints"] = [str(bad), str(bad)]
    with pytest.raises(UserError, match="bad.pt: not an ensemblecert member checkpoint"):
        run(tiny_pipeline)


def test_a_checkpoint_with_arbitrary_objects_is_refused_without_unsafe_advice(tiny_pipeline, tmp_path):
    import fractions

    bad = tmp_path / "objects.pt"
    torch.save({"format": "ensemblecert.member/1", "state_dict": {"w": fractions.Fraction(1, 3)}}, bad)
    tiny_pipeline["ensemble"]["checkpoints"] = [str(bad), str(bad)]
    with pytest.raises(UserError) as info:
        run(tiny_pipeline)
    message = str(info.value)
    assert "objects.pt: not a readable ensemblecert checkpoint: it holds objects other than tensors" in message
    assert "weights_only" not in message and "trusted source" not in message


@pytest.mark.parametrize(
    "content, expected",
    [
        (b'{"fingerprint": "abc', "stages.json: damaged (not a JSON object)"),
        (b"[1, 2]", "stages.json: damaged (not a JSON object)"),
        (b"\xff\xfe\x00", "stages.json: damaged (not a JSON object)"),
    ],
)
def test_damaged_stage_record(tiny_pipeline, content, expected):
    first = run(tiny_pipeline)
    (first.output / "stages.json").write_bytes(content)
    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        run(tiny_pipeline)


def test_stale_temporary_files_are_removed_when_a_run_starts(tiny_pipeline, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    stale = [out / ".certification.json.k3j2_x.tmp", out / "checkpoints" / ".member_0.pt.a8b_c1.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    keep = out / "notes.tmp"  # not named like an atomic write's temporary file
    keep.write_text("mine")
    tiny_pipeline["certification"]["enabled"] = False
    run(tiny_pipeline)
    assert not any(path.exists() for path in stale)
    assert keep.read_text() == "mine"


def test_every_member_learns_from_its_own_training(tiny_pipeline):
    tiny_pipeline["ensemble"]["members"] = 3
    tiny_pipeline["certification"]["enabled"] = False
    result = run(tiny_pipeline)
    from ensemblecert.plugins.datasets import Digits

    test = Digits().load().test
    x, y = test.tensors
    with torch.no_grad():
        accuracies = [float((member(x).argmax(1) == y).float().mean()) for member in result.ensemble.members]
    assert min(accuracies) > 0.6, accuracies  # chance is 0.1; untrained members sit near it
    weights = [m.net[1].weight for m in result.ensemble.members]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])


def test_the_training_noise_reaches_the_objective(tiny_pipeline, tmp_path):
    tiny_pipeline["certification"]["enabled"] = False
    losses = {}
    for sigma in (0.01, 2.0):
        cfg = copy.deepcopy(tiny_pipeline)
        cfg["output"] = str(tmp_path / f"sigma{sigma}")
        cfg["training"]["noise"] = {"name": "gaussian", "sigma": sigma}
        losses[sigma] = run(cfg).losses[-1]
    assert losses[2.0] > losses[0.01] + 1.0, losses  # heavy noise makes digits much harder to fit


def test_gaussian_augmentation_gives_each_member_its_own_noise():
    from torch import nn

    from ensemblecert import TrainBatch
    from ensemblecert.plugins.noise import GaussianNoise

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.seen = None

        def forward(self, x):
            self.seen = x.detach().clone()
            return self.lin(x)

    members = [Spy(), Spy()]
    x, y = torch.zeros(4000, 4), torch.zeros(4000, dtype=torch.long)
    batch = TrainBatch(x, y, members, GaussianNoise(0.5), torch.Generator().manual_seed(0), 0)
    loss = GaussianAugmentation().terms(batch)["ce"]
    loss.backward()
    for m in members:
        assert float(m.seen.std()) == pytest.approx(0.5, rel=0.03)
        assert m.lin.weight.grad is not None and float(m.lin.weight.grad.abs().sum()) > 0
    assert not torch.equal(members[0].seen, members[1].seen)


def test_the_summary_is_what_the_rows_say(tiny_pipeline):
    from scipy import stats

    tiny_pipeline["certification"]["skip"] = 9
    tiny_pipeline["certification"]["radii"] = [0.0, 0.1, 0.2, 0.3]
    result = run(tiny_pipeline)
    header, *lines = rows(result)
    table = [dict(zip(header.split("\t"), line.split("\t"))) for line in lines]
    n = len(table)
    assert n == 40
    for r in (0.0, 0.1, 0.2, 0.3):
        expected = sum(row["correct"] == "1" and float(row["radius"]) >= r for row in table) / n
        assert result.summary.certifiers["cohen"].certified_accuracy[r] == pytest.approx(expected)
    acr = sum(float(row["radius"]) for row in table if row["correct"] == "1") / n
    assert result.summary.certifiers["cohen"].acr == pytest.approx(acr)
    # no radius beyond what n = 200 draws at alpha = 0.01 can certify: sigma * Phi^-1(alpha^(1/n))
    largest = 0.25 * stats.norm.ppf(0.01 ** (1 / 200))
    assert all(float(row["radius"]) <= largest + 1e-12 for row in table)
    assert all((row["predict"] == "-1") == (float(row["radius"]) == 0.0) for row in table)
    assert (
        0.05
        < result.summary.certifiers["cohen"].certified_accuracy[0.2]
        < result.summary.certifiers["cohen"].certified_accuracy[0.0]
    )


def test_an_unwritable_output_is_found_before_any_work(tiny_pipeline, monkeypatch):
    from pathlib import Path

    real = Path.write_bytes

    def refuse(self, data):  # what a read-only directory answers (root is never refused, so simulate it)
        if self.name.startswith(".write-test-"):
            raise PermissionError(13, "Permission denied")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", refuse)
    with pytest.raises(UserError, match=r"output: cannot write to .*run: Permission denied; choose another directory"):
        run(tiny_pipeline)


def test_a_read_only_output_directory(tiny_pipeline, tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root may write anywhere; the simulated refusal above covers this path")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    tiny_pipeline["output"] = str(locked / "run")
    with pytest.raises(UserError, match="output: cannot write to"):
        run(tiny_pipeline)


def test_costs_and_details_reach_the_table_and_the_summary(tiny_pipeline):
    import json

    result = run(tiny_pipeline)
    header, *lines = rows(result)
    table = [dict(zip(header.split("\t"), line.split("\t"))) for line in lines]
    assert header.split("\t")[8:] == ["classifier", "cohen:count", "cohen:p_lower"]
    for row in table:  # soft voting evaluates both members on every draw, selection included
        assert int(row["evaluations"]) == 2 * int(row["samples"]) == 2 * 220
        assert 0 <= float(row["cohen:count"]) <= 200 and 0 <= float(row["cohen:p_lower"]) < 1
    summary = json.loads((result.output / "certification.json").read_text())["certifiers"]["cohen"]
    assert summary["evaluation_share"] == 1.0 and summary["median_samples"] == 220
    assert summary["details"]["count"] == pytest.approx(sum(float(r["cohen:count"]) for r in table) / len(table))


def test_certifiers_with_equal_sampling_share_one_tally(tiny_pipeline, tmp_path):
    mechs = [
        {"name": "cohen", "n0": 20, "n": 200, "alpha": 0.01},
        {"name": "dp", "n0": 20, "n": 200, "alpha": 0.01},
        {"name": "best", "n0": 20, "n": 300, "alpha": 0.01},
    ]
    tiny_pipeline["certification"]["certifiers"] = mechs
    shared = run(tiny_pipeline)
    for r in shared.results:
        spent = {label: o.evaluations for label, o in r.outcomes.items()}
        # cohen draws 20 + 200; dp reuses both tallies; best reuses the selection draw and draws its own 300
        assert spent == {"cohen": 220 * 2, "dp": 0, "best": 300 * 2}
    for k, label in enumerate(["cohen", "dp", "best"]):  # each alone certifies exactly as in the shared run
        tiny_pipeline["certification"]["certifiers"] = [mechs[k]]
        tiny_pipeline["output"] = str(tmp_path / label)
        tiny_pipeline["ensemble"]["checkpoints"] = [str(shared.output / f"checkpoints/member_{i}.pt") for i in range(2)]
        alone = run(tiny_pipeline)
        for a, b in zip(alone.results, shared.results):
            assert a.outcomes[label].certificate == b.outcomes[label].certificate
