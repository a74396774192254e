"""Attacks: PGD and FGSM stay in their ball and in [0, 1] and raise the loss; ours agrees with torchattacks' PGD;
AutoAttack and Square run through the library; attacks see an ensemble through an aggregator."""

import json
from pathlib import Path

import attrs
import pytest
import torch
from torch import nn

from ensemblecert import ConfigError, DataInfo, Dataset, DataSplits, Ensemble, UserError, build_component, load_registry
from ensemblecert.plugins.attacks import cross_entropy, cw_margin, pgd

REGISTRY = load_registry()


@attrs.frozen
class ThreeClasses(Dataset):
    """A tiny three-class data set (only its class count matters here)."""

    def load(self) -> DataSplits:
        x, y = torch.rand(30, 1, 4, 4), torch.arange(30) % 3
        data = torch.utils.data.TensorDataset(x, y)
        return DataSplits(train=data, test=data, info=DataInfo((1, 4, 4), 3, (0.5,), (0.25,)))


def attack(**spec):
    return build_component("attack", spec, REGISTRY)


def model_and_data(seed=0, n=64):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))
    with torch.no_grad():
        net[1].weight.mul_(4)
        net[3].weight.mul_(4)  # confident predictions that a small perturbation can still flip
    x = torch.rand(n, 1, 4, 4)
    with torch.no_grad():
        y = net(x).argmax(1)  # correctly classified to start with
    return net, x, y


def probs_of(net):
    return lambda x: net(x).softmax(-1)


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "pgd", "norm": "linf", "epsilon": 0.05, "steps": 10},
        {"name": "pgd", "norm": "l2", "epsilon": 0.3, "steps": 10},
        {"name": "pgd", "norm": "linf", "epsilon": 0.05, "steps": 10, "loss": "cw"},
        {"name": "fgsm", "epsilon": 0.05},
    ],
)
def test_attacks_stay_in_the_ball_and_the_range_and_raise_the_loss(spec):
    net, x, y = model_and_data()
    a = attack(**spec)
    adv = a.perturb(probs_of(net), x, y, generator=torch.Generator().manual_seed(0))
    delta = (adv - x).flatten(1)
    bound = delta.abs().max(dim=1).values if spec.get("norm", "linf") == "linf" else delta.norm(dim=1)
    assert float(bound.max()) <= spec["epsilon"] + 1e-6
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    with torch.no_grad():
        before, after = cross_entropy(probs_of(net)(x), y), cross_entropy(probs_of(net)(adv), y)
    assert float(after.mean()) > float(before.mean()) + 0.05
    with torch.no_grad():
        assert float((net(adv).argmax(1) != y).float().mean()) > 0.1  # some inputs flip


def test_random_start_is_reproducible_from_the_generator():
    net, x, y = model_and_data()
    a = attack(name="pgd", epsilon=0.05, steps=3)
    one = a.perturb(probs_of(net), x, y, generator=torch.Generator().manual_seed(5))
    two = a.perturb(probs_of(net), x, y, generator=torch.Generator().manual_seed(5))
    assert torch.equal(one, two)


def test_cw_margin_is_positive_exactly_when_misclassified():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    margin = cw_margin(probs, torch.tensor([0, 0]))
    assert float(margin[0]) == pytest.approx(float(torch.log(torch.tensor(0.2 / 0.7))))
    assert float(margin[1]) > 0 > float(margin[0])


def test_our_pgd_agrees_with_torchattacks():
    torchattacks = pytest.importorskip("torchattacks")
    net, x, y = model_and_data(n=32)
    ours = pgd(probs_of(net), x, y, norm="linf", epsilon=0.05, steps=10, step_size=0.01)
    # torchattacks' PGD maximises the cross-entropy of the logits, which equals ours on softmax probabilities
    theirs = torchattacks.PGD(net, eps=0.05, alpha=0.01, steps=10, random_start=False)(x, y)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_autoattack_and_square_through_the_library():
    pytest.importorskip("torchattacks")
    net, x, y = model_and_data(n=16)

    def accuracy(points):
        with torch.no_grad():
            return float((net(points).argmax(1) == y).float().mean())

    found = {}
    for spec in (
        {"name": "autoattack", "epsilon": 0.1},
        {"name": "square", "epsilon": 0.1, "queries": 200},
        {"name": "pgd", "epsilon": 0.1, "steps": 20},
    ):
        adv = attack(**spec).perturb(probs_of(net), x, y, generator=torch.Generator().manual_seed(0))
        assert float((adv - x).abs().max()) <= 0.1 + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1
        found[spec["name"]] = accuracy(adv)
    assert found["square"] < 1.0 and found["autoattack"] < 1.0  # every input starts correctly classified
    assert found["autoattack"] <= found["pgd"]  # AutoAttack includes a stronger PGD (APGD)
    assert attack(name="autoattack").check_classes(3) is not None


def test_an_ensemble_is_attacked_through_a_combiner():
    nets = [model_and_data(seed=s)[0] for s in range(3)]
    _, x, _ = model_and_data(seed=9)
    for aggregator in ("we", "max"):
        ensemble = Ensemble(nets, build_component("aggregator", aggregator, REGISTRY))
        model = lambda inp: ensemble.evaluate(inp).probs  # noqa: E731
        with torch.no_grad():
            y = model(x).argmax(1)
        adv = attack(name="pgd", epsilon=0.1, steps=10).perturb(model, x, y, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert float((model(adv).argmax(1) == y).float().mean()) < 0.9


def test_bad_attack_settings():
    with pytest.raises(ConfigError, match="norm: must be one of 'linf', 'l2', got 'l1'"):
        attack(name="pgd", norm="l1")
    with pytest.raises(ConfigError, match="epsilon: must be > 0"):
        attack(name="fgsm", epsilon=0)


EVALUATE = {
    "attacks": [{"name": "pgd", "epsilon": 0.1, "steps": 10}, {"name": "fgsm", "epsilon": 0.1}],
    "aggregators": ["we", "max"],
    "batch_size": 16,
}


def test_the_evaluation_stage_reports_what_its_rows_say(tiny_pipeline):
    from ensemblecert import run

    tiny_pipeline["certification"]["enabled"] = False
    tiny_pipeline["evaluation"] = dict(EVALUATE, skip=5)
    result = run(tiny_pipeline)
    rows = [line.split("\t") for line in (result.output / "evaluation.tsv").read_text().splitlines()]
    assert rows[0] == ["idx", "label", "we:natural", "we:pgd", "we:fgsm", "max:natural", "max:pgd", "max:fgsm"]
    assert [int(r[0]) for r in rows[1:]] == list(range(0, 360, 5))
    saved = json.loads((result.output / "evaluation.json").read_text())
    for k, column in enumerate(rows[0][2:], start=2):
        aggregator, _, attack = column.partition(":")
        expected = sum(r[k] == r[1] for r in rows[1:]) / (len(rows) - 1)
        assert saved["accuracy"][aggregator][attack] == pytest.approx(expected)
        assert result.evaluation.accuracy[aggregator][attack] == pytest.approx(expected)
    # natural accuracy is the ensemble's own prediction on clean inputs
    from ensemblecert.plugins.datasets import Digits

    x, y = Digits().load().test.tensors
    with torch.no_grad():
        clean = float((result.ensemble(x[::5]).argmax(1) == y[::5]).float().mean())
    assert saved["accuracy"]["we"]["natural"] == pytest.approx(clean)
    for aggregator in ("we", "max"):
        acc = saved["accuracy"][aggregator]
        assert acc["pgd"] < acc["natural"] and acc["fgsm"] < acc["natural"]


def test_an_interrupted_evaluation_resumes_to_the_same_rows(tiny_pipeline, tmp_path):
    from ensemblecert import run

    tiny_pipeline["certification"]["enabled"] = False
    tiny_pipeline["evaluation"] = dict(EVALUATE, skip=5)
    whole = run(tiny_pipeline)
    text = (whole.output / "evaluation.tsv").read_text()
    lines = text.splitlines(keepends=True)
    (whole.output / "evaluation.tsv").write_text("".join(lines[:20]) + lines[20][:5])  # a crash mid-row
    again = run(tiny_pipeline)
    assert (again.output / "evaluation.tsv").read_text() == text
    tiny_pipeline["evaluation"]["attacks"][0]["epsilon"] = 0.2
    with pytest.raises(UserError, match="evaluation.tsv: holds results of a different model or evaluation setup"):
        run(tiny_pipeline)


def test_an_attack_that_cannot_run_on_the_data_stops_before_training(tiny_pipeline):

    pytest.importorskip("torchattacks")
    tiny_pipeline["data"] = {"name": "digits"}
    tiny_pipeline["evaluation"] = {"attacks": [{"name": "autoattack"}]}
    # digits has 10 classes, so this is fine; a 3-class check is what refuses
    assert build_component("attack", {"name": "autoattack"}, REGISTRY).check_classes(10) is None
    with pytest.raises(ConfigError, match="evaluation.attacks\\[0\\]: standard AutoAttack's targeted attacks need"):
        from ensemblecert import load_pipeline
        from ensemblecert.running.pipeline import run_pipeline

        pipeline, registry = load_pipeline(tiny_pipeline)
        small = attrs.evolve(pipeline, data=ThreeClasses())
        run_pipeline(small, registry)
    assert not (Path(tiny_pipeline["output"]) / "checkpoints" / "member_0.pt").exists()
