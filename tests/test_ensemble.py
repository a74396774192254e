"""Aggregators (WE, MME), vectorised members, and the Monte-Carlo sampler."""

import pytest
import torch
from torch import nn

from ensemblecert import (
    Aggregate,
    Aggregator,
    DataInfo,
    Engine,
    Ensemble,
    Members,
    MonteCarloSampler,
    build_member,
    input_generator,
)
from ensemblecert.plugins.aggregators import MaxMarginEnsemble, WeightedEnsemble
from ensemblecert.plugins.models import MLP, ResNet20
from ensemblecert.plugins.noise import GaussianNoise

INFO = DataInfo((1, 4, 4), 3, (0.5,), (0.25,))


def test_weighted_ensemble_is_the_weighted_mean_of_softmax():
    logits = torch.randn(3, 5, 4)
    probs = logits.softmax(-1)
    assert torch.allclose(WeightedEnsemble().combine(logits), probs.mean(0), atol=1e-6)
    w = [1.0, 2.0, 5.0]
    expected = (probs[0] + 2 * probs[1] + 5 * probs[2]) / 8
    assert torch.allclose(WeightedEnsemble(weights=w).combine(logits), expected, atol=1e-6)
    with pytest.raises(ValueError, match="3 entries for 2 members"):
        WeightedEnsemble(weights=w).combine(logits[:2])


def logits_of(*rows):
    return torch.tensor(rows, dtype=torch.float64).log().float()


def test_mme_uses_the_softmax_margin_not_confidence_or_logit_margin():
    # 20 classes. Member 0: top 0.62 (class 0), runner-up 0.06 -> margin 0.56 (the largest).
    # Member 1: top 0.7 (class 1), runner-up 0.3 -> the largest confidence, margin 0.4.
    # Member 2: top 0.5 (class 2), the rest 0.5/19 each -> the largest logit margin (log 19 > log(0.62/0.06)).
    a = [0.62, 0.06] + [0.32 / 18] * 18
    b = [0.0, 0.7, 0.3] + [1e-30] * 17
    c = [0.5 / 19] * 2 + [0.5] + [0.5 / 19] * 17
    probs = logits_of(a, b, c).softmax(-1)
    top2 = probs.topk(2, dim=-1).values
    logit_margin = logits_of(a, b, c).topk(2, dim=-1).values
    assert (top2[:, 0] - top2[:, 1]).argmax() == 0
    assert top2[:, 0].argmax() == 1
    assert (logit_margin[:, 0] - logit_margin[:, 1]).argmax() == 2
    out = MaxMarginEnsemble().combine(logits_of(a, b, c)[:, None])  # [N=3, B=1, C=20]
    assert out.argmax(1).tolist() == [0]
    assert torch.allclose(out[0], probs[0], atol=1e-6)


def test_mme_stays_exact_for_confident_members():
    # float32 softmax margins are both exactly 1.0 here; Definition 3 picks member 1 (margin 1 - 4e-18 vs 1 - 2e-9).
    logits = torch.tensor([[[20.0, 0.0, 0.0]], [[0.0, 40.0, 0.0]]])
    probs = logits.softmax(-1)
    assert probs[0, 0].topk(2).values.diff().abs().item() == probs[1, 0].topk(2).values.diff().abs().item() == 1.0
    assert MaxMarginEnsemble().combine(logits).argmax(1).tolist() == [1]
    swapped = logits.flip(0)
    assert MaxMarginEnsemble().combine(swapped).argmax(1).tolist() == [1]


def test_max_margin_ensemble_follows_the_most_confident_member():
    # input 0: member 1 has the larger top-vs-runner-up margin; input 1: member 0 does.
    probs = torch.tensor([[[0.5, 0.4, 0.1], [0.1, 0.1, 0.8]], [[0.0, 0.9, 0.1], [0.3, 0.4, 0.3]]])
    out = MaxMarginEnsemble().combine(probs.clamp_min(1e-9).log())
    assert out.argmax(1).tolist() == [1, 2]
    assert torch.allclose(out[0], probs[1, 0], atol=1e-6)
    assert torch.allclose(out.sum(1), torch.ones(2))


@pytest.mark.parametrize("model", [MLP(hidden=[16]), ResNet20()])
def test_vectorised_members_match_one_by_one(model):
    info = DataInfo((3, 8, 8), 3, (0.5,) * 3, (0.25,) * 3) if isinstance(model, ResNet20) else INFO
    members = [build_member(model, info, seed).eval() for seed in range(3)]
    x = torch.rand(7, *info.input_shape)
    together = Members(members, Engine(layout="vmap", compile=False))
    assert together.vectorized
    looped = Members(members, Engine(layout="loop", compile=False))
    with torch.no_grad():
        assert torch.allclose(together.logits(x), looped.logits(x), atol=1e-5)


def test_members_differ_by_seed_and_build_is_reproducible():
    a, b, a2 = (build_member(MLP(hidden=[8]), INFO, s) for s in (0, 1, 0))
    assert not torch.equal(a.net[1].weight, b.net[1].weight)
    assert torch.equal(a.net[1].weight, a2.net[1].weight)


def test_ensemble_notices_weight_changes():
    members = [build_member(MLP(hidden=[8]), INFO, s).eval() for s in range(2)]
    ens = Ensemble(members, WeightedEnsemble()).eval()
    x = torch.rand(4, *INFO.input_shape)
    before = ens(x).clone()
    with torch.no_grad():
        members[0].net[-1].bias[0] += 5.0  # one class only: a shift of all logits keeps the softmax
    assert not torch.allclose(before, ens(x))


class FirstAgreeing(Aggregator):
    """Evaluates member 0 only (a stand-in for an aggregator that skips members)."""

    def forward(self, members, x):
        return Aggregate(probs=members.member(0, x).softmax(-1), member_logits=None, evaluations=x.shape[0])

    def combine(self, member_logits):  # pragma: no cover - not used
        raise NotImplementedError


class MaxBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.largest = 0
        self.lin = nn.Linear(16, 3)

    def forward(self, x):
        self.largest = max(self.largest, x.shape[0])
        return self.lin(x.flatten(1))


def test_sampler_counts_batches_and_is_reproducible():
    model = MaxBatch()
    sampler = MonteCarloSampler(model, GaussianNoise(0.5), batch_size=64)
    x = torch.rand(1, 4, 4)
    t1 = sampler.tally(x, 1000, generator=input_generator(0, 0), softmax=True)
    t2 = sampler.tally(x, 1000, generator=input_generator(0, 0))
    assert t1.n == 1000 and int(t1.counts.sum()) == 1000 and sampler.num_classes == 3
    assert torch.equal(t1.counts, t2.counts)
    assert model.largest == 64  # memory is bounded by the batch size, not by n
    assert t1.prob_sums.sum().item() == pytest.approx(1000, rel=1e-6)
    assert t1.evaluations == 1000


def test_sampler_member_counts_and_skipping_aggregators():
    members = [build_member(MLP(hidden=[8]), INFO, s).eval() for s in range(3)]
    x = torch.rand(*INFO.input_shape)
    ens = Ensemble(members, WeightedEnsemble()).eval()
    tally = MonteCarloSampler(ens, GaussianNoise(0.3), batch_size=128).tally(x, 300, members=True, softmax=True)
    assert tally.member_counts.shape == (3, 3) and tally.member_counts.sum(1).tolist() == [300, 300, 300]
    assert tally.evaluations == 900 and tally.prob_sums.sum().item() == pytest.approx(300, rel=1e-5)
    skipping = Ensemble(members, FirstAgreeing()).eval()
    sampler = MonteCarloSampler(skipping, GaussianNoise(0.3), batch_size=128)
    assert sampler.tally(x, 300).evaluations == 300
    with pytest.raises(ValueError, match="skipped members"):
        sampler.tally(x, 300, members=True)


def test_sampler_rejects_class_count_mismatch():
    sampler = MonteCarloSampler(nn.Sequential(nn.Flatten(), nn.Linear(16, 5)), GaussianNoise(0.1), num_classes=3)
    with pytest.raises(ValueError, match="returned 5 classes, expected 3"):
        sampler.tally(torch.rand(1, 4, 4), 10)


def test_ebs_smooths_the_aggregated_ensemble():
    from ensemblecert.plugins.ebs import EnsembleBeforeSmoothing

    members = [build_member(MLP(hidden=[8]), INFO, s).eval() for s in range(2)]
    ens = Ensemble(members, WeightedEnsemble()).eval()
    smoothed = EnsembleBeforeSmoothing().smooth(ens, GaussianNoise(0.2), batch_size=50)
    x = torch.rand(*INFO.input_shape)
    tally = smoothed.tally(x, 200, generator=input_generator(0, 0))
    # the same draws through the ensemble by hand give the same counts
    gen = input_generator(0, 0)
    noisy = torch.cat([GaussianNoise(0.2).sample((50, *x.shape), generator=gen) + x for _ in range(4)])
    with torch.no_grad():
        expected = torch.bincount(ens(noisy).argmax(1), minlength=3)
    assert torch.equal(tally.counts, expected)


def test_shared_tallies_draw_each_tally_once_and_move_the_generator_on():
    from ensemblecert import SharedTallies

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    plain = MonteCarloSampler(net, GaussianNoise(0.5), num_classes=3, batch_size=70)
    shared = SharedTallies(MonteCarloSampler(net, GaussianNoise(0.5), num_classes=3, batch_size=70))
    x = torch.randn(6)

    def draws(sampler, sizes):
        gen = input_generator(0, 7)
        return [sampler.tally(x, n, generator=gen) for n in sizes]

    first = draws(shared, [100, 1000])
    spent = shared.usage.draws
    again = draws(shared, [100, 1000, 300])  # the same two tallies, then a fresh one
    assert shared.usage.draws == spent + 300
    alone = draws(plain, [100, 1000, 300])
    for a, b in zip([*first, again[2]], alone):
        assert torch.equal(a.counts, b.counts)
    assert all(a is b for a, b in zip(first, again[:2]))
    assert torch.allclose(first[1].prob_sums.sum(), torch.tensor(1000.0, dtype=torch.float64))  # softmax kept
    other = draws(shared, [200])  # another size from the same state: a different tally, drawn afresh
    assert torch.equal(other[0].counts, draws(plain, [200])[0].counts)
    shared.clear()
    draws(shared, [100])
    assert shared.usage.draws == spent + 300 + 200 + 100
