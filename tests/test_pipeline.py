"""The pipeline end to end: results written as produced, resuming, checkpoints, and the Python API."""

import copy

import attrs
import pytest
import torch

from ensemblecert import Regularizer, RunResult, UserError, hookimpl, load_pipeline, run
from ensemblecert.plugins.gaussian_augmentation import GaussianAugmentation

ARMED = {"on": False}


@attrs.frozen
class Interrupting(Regularizer):
    """Gaussian augmentation that simulates a crash (Ctrl-C) at the start of epoch ``at``, when armed."""

    at: int = 1

    def loss(self, batch):
        if ARMED["on"] and batch.epoch == self.at:
            raise KeyboardInterrupt
        return GaussianAugmentation().loss(batch)


class InterruptPlugin:
    @staticmethod
    @hookimpl
    def register_regularizers(register):
        register("interrupting", Interrupting)


def rows(result: RunResult) -> list[str]:
    return (result.output / "certify.tsv").read_text().splitlines()


def test_run_returns_results_and_writes_them(tiny_pipeline):
    result = run(tiny_pipeline)
    assert [r.index for r in result.results] == list(range(0, 360, 30))
    assert len(rows(result)) == 13
    assert result.summary.examples == 12
    assert set(result.summary.mechanisms["cohen"].certified_accuracy) == {0.0, 0.25}
    assert len(result.losses) == 2 and result.losses[1] < result.losses[0]
    ckpt = torch.load(result.output / "checkpoints" / "member_1.pt", weights_only=True)
    assert ckpt["model"] == {"name": "mlp", "hidden": [32]} and ckpt["seed"] == 2
    assert ckpt["pipeline"]["train"]["epochs"] == 2
    assert not (result.output / "checkpoints" / "train_state.pt").exists()


def test_certification_resumes_and_matches_an_uninterrupted_run(tiny_pipeline, tmp_path):
    first = copy.deepcopy(tiny_pipeline)
    first["certify"]["max_examples"] = 5
    part = run(first)
    before = rows(part)
    assert len(before) == 6
    # a crash in the middle of writing a row leaves a partial line; it must be dropped and redone
    with open(part.output / "certify.tsv", "a") as fh:
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
    cfg["train"].update(epochs=3, objective={"name": "interrupting", "at": 2})
    cfg["certify"]["enabled"] = False
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
    again["train"]["enabled"] = False
    again["train"]["epochs"] = 50  # irrelevant when not training
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
    tiny_pipeline["train"]["enabled"] = False
    with pytest.raises(UserError, match="no trained members in .*member_0.pt"):
        run(tiny_pipeline)


def test_checkpoint_that_does_not_fit_the_model(tiny_pipeline, tmp_path):
    trained = run(tiny_pipeline)
    cfg = copy.deepcopy(tiny_pipeline)
    cfg["output"] = str(tmp_path / "other")
    cfg["ensemble"]["model"]["hidden"] = [16]
    cfg["ensemble"]["checkpoints"] = [str(trained.output / "checkpoints" / f"member_{i}.pt") for i in range(2)]
    with pytest.raises(UserError, match=r"member_0.pt: does not fit the configured model .*hidden"):
        run(cfg)


def test_a_changed_configuration_is_not_mixed_with_old_results(tiny_pipeline):
    run(tiny_pipeline)
    changed = copy.deepcopy(tiny_pipeline)
    changed["certify"]["mechanisms"][0]["n"] = 300
    with pytest.raises(UserError, match="certify.tsv: holds results of a different .* --fresh"):
        run(changed)
    retrained = copy.deepcopy(tiny_pipeline)
    retrained["train"]["lr"] = 0.01
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
