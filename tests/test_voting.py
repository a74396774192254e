"""Aggregation variants (Horvath22 App. E.3.1, Deng23 Sec. 5) and K-consensus (Horvath22 Sec. 4)."""

import json

import numpy as np
import pytest
import torch
from scipy import optimize
from torch import nn

from ensemblecert import Members, run
from ensemblecert.plugins.aggregators import WeightedEnsemble
from ensemblecert.plugins.voting import (
    HardVoting,
    KConsensus,
    MaxCombiner,
    SoftVoting,
    fit_weights,
    hard_vote,
    max_combine,
    soft_vote,
    softmax_vote,
)


def test_combiners_against_their_equations():
    logits = torch.randn(3, 5, 4)
    probs = logits.softmax(-1)
    assert torch.allclose(soft_vote(logits), logits.mean(0).softmax(-1), atol=1e-6)
    w = torch.tensor([1.0, 2.0, 0.5])
    assert torch.allclose(soft_vote(logits, w), ((w[:, None, None] * logits).sum(0) / 3).softmax(-1), atol=1e-6)
    assert torch.allclose(softmax_vote(logits), WeightedEnsemble().combine(logits), atol=1e-6)
    top = probs.max(0).values
    assert torch.allclose(max_combine(logits), top / top.sum(-1, keepdim=True), atol=1e-6)
    # soft voting on logits and after softmax can disagree: mean logits [3.33, 1.0], mean probabilities [0.45, 0.55]
    split = torch.tensor([[[10.0, 0.0]], [[0.0, 1.5]], [[0.0, 1.5]]])
    assert soft_vote(split).argmax(-1).item() == 0 and softmax_vote(split).argmax(-1).item() == 1


def test_hard_voting_counts_votes_and_breaks_ties_towards_the_lowest_class():
    # votes per sample: [2, 2, 0] -> 2; [1, 3, 3, 1] would tie: with 3 members [1, 3, 0] ties three ways -> 0
    logits = torch.full((3, 2, 4), -5.0)
    for member, (a, b) in enumerate([(2, 1), (2, 3), (0, 0)]):
        logits[member, 0, a] = 5.0
        logits[member, 1, b] = 5.0
    shares = hard_vote(logits)
    assert shares[0].tolist() == pytest.approx([1 / 3, 0, 2 / 3, 0])
    assert shares[1].tolist() == pytest.approx([1 / 3, 1 / 3, 0, 1 / 3])
    assert HardVoting().combine(logits).argmax(-1).tolist() == [2, 0]
    # a confident minority does not win a hard vote, though it wins a soft one
    minority = torch.tensor([[[9.0, 0.0]], [[0.0, 0.1]], [[0.0, 0.1]]])
    assert HardVoting().combine(minority).argmax(-1).item() == 1 and soft_vote(minority).argmax(-1).item() == 0
    assert MaxCombiner().combine(minority).argmax(-1).item() == 0


def test_fitted_weights_minimise_the_cross_entropy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=400)
    good = np.eye(3)[labels] * 4 + rng.normal(size=(400, 3))
    noise = rng.normal(size=(400, 3)) * 4
    logits = np.stack([good, noise])
    w = fit_weights(logits, labels)
    assert w[0] > 1.0 and w[1] < 0.2 * w[0]
    # the analytic gradient matches finite differences, and the optimum is one (no better point nearby)

    def ce(weights):
        z = np.einsum("n,nmc->mc", weights, logits) / 2
        z = z - z.max(1, keepdims=True)
        return -np.mean(z[np.arange(400), labels] - np.log(np.exp(z).sum(1)))

    assert optimize.check_grad(ce, lambda v: optimize.approx_fprime(v, ce, 1e-7), np.array([1.0, 1.0])) < 1e-4
    for step in ([0.05, 0], [-0.05, 0], [0, 0.05]):
        assert ce(w) <= ce(np.maximum(w + step, 0)) + 1e-9


class Counting(nn.Module):
    """Predicts ``cls`` for every input whose first feature is below ``flip`` (else ``other``); counts rows seen."""

    def __init__(self, cls, other=None, flip=float("inf")):
        super().__init__()
        self.cls, self.other, self.flip, self.rows = cls, other, flip, 0
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        self.rows += x.shape[0]
        out = torch.full((x.shape[0], 3), -3.0)
        first = x[:, 0]
        out[first < self.flip, self.cls] = 3.0
        if self.other is not None:
            out[first >= self.flip, self.other] = 3.0
        return out


def test_k_consensus_runs_only_the_members_it_needs():
    # ranked members: 2, 0, 1, 3 (k = 2). Members 2 and 0 agree on class 1 below 0.5 and disagree above it.
    members = [Counting(1), Counting(0), Counting(1, other=2, flip=0.5), Counting(2)]
    x = torch.tensor([[0.1], [0.2], [0.7], [0.9], [0.3]])
    agg = KConsensus(k=2, order=[2, 0, 1, 3]).forward(Members(members), x)
    assert [m.rows for m in members] == [5, 2, 5, 2]  # members 1 and 3 saw only the two undecided samples
    assert agg.evaluations == 2 * 5 + 2 * 2 and agg.settled == 3 and agg.member_logits is None
    first_k = soft_vote(torch.stack([members[2](x), members[0](x)]))
    full = soft_vote(torch.stack([m(x) for m in members]))
    agree = torch.tensor([True, True, False, False, True])
    assert torch.allclose(agg.probs[agree], first_k[agree]) and torch.allclose(agg.probs[~agree], full[~agree])
    assert agg.probs.argmax(-1)[agree].tolist() == [1, 1, 1]


def test_k_consensus_with_k_equal_to_the_ensemble_evaluates_everything_once():
    members = [Counting(0), Counting(1), Counting(0)]
    x = torch.rand(6, 1)
    agg = KConsensus(k=3).forward(Members(members), x)
    assert [m.rows for m in members] == [6, 6, 6] and agg.evaluations == 18 and agg.settled == 0


def test_ranking_by_accuracy_under_noise_on_the_heldout_split():
    from ensemblecert import HeldOut
    from ensemblecert.plugins.noise import GaussianNoise

    # held-out labels are class 1; members right on all, on none, on all, or on the lower half
    x = torch.linspace(0, 1, 40)[:, None]
    data = torch.utils.data.TensorDataset(x, torch.ones(40, dtype=torch.long))
    members = [Counting(1), Counting(0), Counting(1), Counting(1, other=0, flip=0.5)]
    held = HeldOut(data, GaussianNoise(1e-6), torch.Generator().manual_seed(0), torch.device("cpu"), batch_size=16)
    fitted = KConsensus(k=2).calibrate(Members(members), held)
    assert fitted.order == [0, 2, 3, 1]  # ties (members 0 and 2) keep index order
    assert fitted.accuracies == pytest.approx([1.0, 0.0, 1.0, 0.5]) and fitted.k == 2


def test_checks():
    assert "k = 4 but the ensemble has 3 members" in KConsensus(k=4).check_members(3)
    assert "order ranks 2 members" in KConsensus(k=1, order=[1, 0]).check_members(3)
    with pytest.raises(ValueError, match="every member index once"):
        KConsensus(k=1, order=[0, 0, 1])
    assert "not both" in SoftVoting(weights=[1.0, 1.0], fit=True).check_members(2)


def k_consensus_pipeline(tmp_path, **aggregator):
    return {
        "seed": 1,
        "device": "cpu",
        "output": str(tmp_path / "run"),
        "data": {"name": "digits"},
        "noise": {"name": "gaussian", "sigma": 0.25},
        "ensemble": {"members": 4, "model": {"name": "mlp", "hidden": [32]}, "aggregator": aggregator},
        "training": {"epochs": 2, "batch_size": 128, "lr": 0.1},
        "certification": {
            "certifiers": [{"name": "cohen", "n0": 20, "n": 200, "alpha": 0.01}],
            "batch_size": 100,
            "skip": 40,
            "radii": [0.0],
        },
    }


def test_k_consensus_in_a_pipeline_holds_out_ranks_records_and_reuses(tmp_path):
    cfg = k_consensus_pipeline(tmp_path, name="k_consensus", k=2)
    result = run(cfg)
    out = result.output
    heldout = json.loads((out / "heldout.json").read_text())
    assert heldout["size"] == 1437 and len(heldout["indices"]) == 144 and heldout["fraction"] == 0.1
    saved = json.loads((out / "aggregator.json").read_text())["aggregator"]
    assert saved["name"] == "k_consensus" and sorted(saved["order"]) == [0, 1, 2, 3]
    assert result.ensemble.aggregator.order == saved["order"]
    summary = result.summary.certifiers["cohen"]
    assert 0 < summary.details["kcr"] <= 1
    # evaluations: k per sample, plus the rest for unsettled samples, against 4 per sample for the full ensemble
    assert summary.evaluation_share == pytest.approx(0.5 + 0.5 * (1 - summary.details["kcr"]), rel=1e-9)
    again = run(cfg)  # resumes: the same ranking, read back, and the same results
    assert again.ensemble.aggregator == result.ensemble.aggregator
    assert [r.outcomes["cohen"].certificate for r in again.results] == [
        r.outcomes["cohen"].certificate for r in result.results
    ]


def test_fitted_soft_voting_in_a_pipeline(tmp_path):
    result = run(k_consensus_pipeline(tmp_path, name="soft", fit=True))
    weights = result.ensemble.aggregator.weights
    assert len(weights) == 4 and all(w >= 0 for w in weights) and result.ensemble.aggregator.fit is False
