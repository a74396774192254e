"""iGAT (Deng23 Section 5): the distribution rules (Eqs. 13-14), the roulette, the regularizer (Eq. 15), and the
enhanced loss composed with ADP and GAL from TOML."""

import json

import pytest
import torch
from scipy import stats

from ensemblecert import ConfigError, load_pipeline, run
from ensemblecert.plugins.igat import distribute, misclassification_penalty, ranks, roulette, soft_probabilities


def test_soft_rule_probabilities_follow_the_ranking():
    scores = torch.tensor([[0.1, 0.7, 0.3, 0.2], [0.5, 0.5, 0.1, 0.9]])
    p = soft_probabilities(scores)
    assert torch.allclose(p.sum(dim=1), torch.ones(2, dtype=torch.float64))
    # ranks of row 0: member 1 first, then 2, 3, 0 -> 2^3, 2^2, 2^1, 2^0 over 15
    assert p[0].tolist() == pytest.approx([1 / 15, 8 / 15, 4 / 15, 2 / 15])
    # row 1: a tie between members 0 and 1 goes to the lower index
    assert ranks(scores)[1].tolist() == [2, 3, 4, 1]


def test_hard_and_opposite_rules_pick_the_extremes():
    scores = torch.tensor([[0.2, 0.9, 0.4], [0.6, 0.1, 0.6], [0.3, 0.3, 0.3]])
    assert distribute(scores, "hard", None).tolist() == [1, 0, 0]
    assert distribute(scores, "opposite", None).tolist() == [0, 1, 2]


def test_the_roulette_is_reproducible_and_matches_eq_14():
    scores = torch.tensor([[0.2, 0.9, 0.4, 0.6]]).expand(40_000, -1)
    one = distribute(scores, "soft", torch.Generator().manual_seed(3))
    two = distribute(scores, "soft", torch.Generator().manual_seed(3))
    assert torch.equal(one, two)
    counts = torch.bincount(one, minlength=4).numpy()
    expected = soft_probabilities(scores[:1])[0].numpy() * len(one)  # member 1 ranks first: 8/15
    assert stats.chisquare(counts, expected).pvalue > 1e-3
    assert counts.argmax() == 1
    uniform = torch.bincount(distribute(scores, "random", torch.Generator().manual_seed(4)), minlength=4).numpy()
    assert stats.chisquare(uniform).pvalue > 1e-3
    # q on an interval's upper edge belongs to that interval (a_i < q <= b_i)
    assert roulette(torch.tensor([[0.25, 0.75]], dtype=torch.float64), torch.tensor([0.25])).tolist() == [0]


def test_the_misclassification_regularizer():
    probs = torch.tensor(
        [
            [[0.9, 0.05, 0.05], [0.2, 0.3, 0.5]],  # member 0
            [[0.6, 0.3, 0.1], [0.1, 0.8, 0.1]],  # member 1
        ]
    )
    y = torch.tensor([0, 1])
    wrong = torch.tensor([True, False])
    penalty = misclassification_penalty(probs, y, wrong, 1e-6)
    # input 0: the true class (0.9) is excluded; the largest wrong-class probability is member 1's 0.3
    assert float(penalty[0]) == pytest.approx(-torch.log(torch.tensor(0.7)).item())
    assert float(penalty[1]) == 0.0  # correctly classified: no penalty
    certain = torch.tensor([[[0.0, 1.0, 0.0]], [[0.0, 1.0, 0.0]]])
    assert float(misclassification_penalty(certain, torch.tensor([0]), torch.tensor([True]), 1e-6)[0]) == pytest.approx(
        -torch.log(torch.tensor(1e-6)).item()
    )  # kept finite by the clip


def test_igat_composes_with_adp_and_gal_from_toml(tiny_pipeline, tmp_path):
    tiny_pipeline["certification"]["enabled"] = False
    tiny_pipeline["training"].update(
        epochs=1,
        lr=0.01,
        regularizers=[
            {"name": "adp"},
            {"name": "gal"},
            {
                "name": "igat",
                "rule": "soft",
                "attack": {"name": "pgd", "epsilon": 0.1, "steps": 3},
                "aggregator": "max",
            },
        ],
    )
    result = run(tiny_pipeline)
    (record,) = json.loads((result.output / "train_log.json").read_text())["epochs"]
    assert {"ce", "adp_entropy", "adp_diversity", "gal", "igat_adv", "igat_reg", "adv_error_share"} <= set(record)
    assert record["igat_adv"] > 0 and record["igat_reg"] >= 0
    # the attack is configured where it is used, and checked with its path
    tiny_pipeline["training"]["regularizers"] = [{"name": "igat", "attack": {"name": "pgd", "epsilon": -1}}]
    with pytest.raises(ConfigError, match=r"training.regularizers\[0\].attack.epsilon: must be > 0"):
        load_pipeline(tiny_pipeline)
    tiny_pipeline["training"]["regularizers"] = [
        {"name": "igat", "adversarial_weight": 5, "regularizer_weight": 10, "examples": "misclassified", "rule": "hard"}
    ]
    pipeline, _ = load_pipeline(tiny_pipeline)
    (igat,) = pipeline.training.regularizers
    assert igat.attack.epsilon == pytest.approx(8 / 255) and igat.attack.steps == 10
