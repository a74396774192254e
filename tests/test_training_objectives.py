"""Training objectives: DRT's terms against hand-taken gradients, ADP, GAL, SmoothAdv, composition from TOML,
fine-tuning, the epoch log."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ensemblecert import ConfigError, TrainBatch, build_component, load_pipeline, load_registry, run
from ensemblecert.plugins.adp import ensemble_entropy, log_diversity
from ensemblecert.plugins.drt import confidence_margin, margins, reduce_pairs, safe_sqrt, valid_pairs
from ensemblecert.plugins.gal import gradient_alignment
from ensemblecert.plugins.noise import GaussianNoise
from ensemblecert.running.pipeline import check_pipeline

REGISTRY = load_registry()


def regularizer(**spec):
    return build_component("regularizer", spec, REGISTRY)


def members(count=3, dim=5, classes=4, seed=0):
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(dim, 8), nn.Tanh(), nn.Linear(8, classes)) for _ in range(count)]


def batch_of(nets, x, y, *, copies=1, seed=0, sigma=0.3):
    return TrainBatch(
        x,
        y,
        nets,
        GaussianNoise(sigma),
        torch.Generator().manual_seed(seed),
        0,
        copies=copies,
        shared=True,
    )


def test_gd_matches_gradients_taken_by_hand():
    nets = members()
    x, y = torch.randn(12, 5), torch.randint(0, 4, (12,))
    # make most members right most of the time, so there are valid pairs
    with torch.no_grad():
        for net in nets:
            net[2].bias.zero_()
    batch = batch_of(nets, x, y, copies=2)
    terms = regularizer(name="drt", rho1=0.7, rho2=0.0).terms(batch)
    inputs = batch.inputs()[0].detach()
    targets = batch.targets()
    expected, rows = 0.0, inputs.shape[0]
    for m in range(rows):
        point, label = inputs[m : m + 1], int(targets[m])
        grads, right = [], []
        for net in nets:
            p = point.clone().requires_grad_(True)
            probs = net(p).softmax(-1)[0]
            runner = int(torch.cat([probs[:label], torch.tensor([-1.0]), probs[label + 1 :]]).argmax())
            (g,) = torch.autograd.grad(probs[label] - probs[runner], p)
            grads.append(g.flatten())
            right.append(int(probs.argmax()) == label)
        for i in range(3):
            for j in range(3):
                if i != j and right[i] and right[j]:
                    expected += float((grads[i] + grads[j]).norm())
    assert float(terms["gd"].detach()) == pytest.approx(0.7 * expected / rows, rel=1e-5)
    assert 0 < batch.metrics["valid_share"] <= 1
    terms["gd"].backward()  # second-order backpropagation reaches the weights
    assert all(float(net[0].weight.grad.abs().sum()) > 0 for net in nets)


def test_valid_pairs_cm_sign_and_normalisation():
    probs = torch.tensor(
        [
            [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]],  # member 0: right on input 0, wrong on input 1
            [[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]],  # member 1: right on both
            [[0.1, 0.8, 0.1], [0.3, 0.1, 0.6]],  # member 2: wrong on input 0, right on input 1
        ]
    )
    y = torch.tensor([0, 2])
    margin, correct = margins(probs, y)
    assert torch.allclose(margin[:, 0], torch.tensor([0.5, 0.3, -0.7]))
    valid = valid_pairs(correct)
    assert valid[0].nonzero().tolist() == [[0, 1], [1, 0]] and valid[1].nonzero().tolist() == [[1, 2], [2, 1]]
    cm = confidence_margin(margin, valid)
    assert float(cm[0, 0, 1]) == pytest.approx(-(0.5 + 0.3))
    # larger margins, smaller CM
    sharper = torch.stack([probs[:, 0] ** 4 / (probs[:, 0] ** 4).sum(-1, keepdim=True), probs[:, 1]], dim=1)
    m2, c2 = margins(sharper, y)
    assert float(reduce_pairs(confidence_margin(m2, valid_pairs(c2)), valid, "sum")) < float(
        reduce_pairs(cm, valid, "sum")
    )
    ones = torch.where(valid, torch.ones_like(cm), torch.zeros_like(cm))
    assert float(reduce_pairs(ones, valid, "sum")) == pytest.approx(2.0)  # two ordered pairs per input
    assert float(reduce_pairs(ones, valid, "mean")) == pytest.approx(1.0)


def test_the_norms_gradient_at_zero_is_finite():
    x = torch.zeros(3, requires_grad=True)
    safe_sqrt(x * x).sum().backward()
    assert torch.equal(x.grad, torch.zeros(3))
    # two members whose margin gradients cancel: GD is 0 and its gradient is not NaN
    net = nn.Linear(4, 2)
    twin = nn.Linear(4, 2)
    with torch.no_grad():
        twin.weight.copy_(-net.weight.flip(0))
        twin.bias.copy_(-net.bias.flip(0))
    x, y = torch.randn(6, 4), torch.zeros(6, dtype=torch.long)
    batch = batch_of([net, twin], x, y, sigma=1e-9)
    gd = regularizer(name="drt", rho1=1.0, rho2=0.0).terms(batch).get("gd")
    gd.backward()
    assert torch.isfinite(net.weight.grad).all()


def test_adp_diversity_is_the_log_det_of_unit_l2_non_true_class_vectors_by_hand():
    """Two members, true class 0, predictions that are not one-hot: the non-true parts (0.3, 0.2) and (0.1, 0.7)
    scaled to unit L2 length have the inner product 0.17 / sqrt(0.13 * 0.5), so the Gram matrix is [[1, c], [c, 1]]
    plus delta on the diagonal (an L1 scaling gives other lengths and another determinant)."""
    probs = torch.tensor([[[0.5, 0.3, 0.2]], [[0.2, 0.1, 0.7]]], dtype=torch.float64)
    c = 0.17 / math.sqrt(0.13 * 0.5)
    delta = 1e-6
    expected = math.log((1 + delta) ** 2 - c**2)
    assert float(log_diversity(probs, torch.tensor([0]), delta=delta)) == pytest.approx(expected, rel=1e-9)
    # the true class is left out wherever it is: class 2 leaves (0.5, 0.3) and (0.2, 0.1)
    c2 = (0.5 * 0.2 + 0.3 * 0.1) / math.sqrt(0.34 * 0.05)
    got = float(log_diversity(probs, torch.tensor([2]), delta=delta))
    assert got == pytest.approx(math.log((1 + delta) ** 2 - c2**2), rel=1e-9)


def test_adp_falls_as_the_members_diversify():
    y = torch.tensor([0])
    same = torch.tensor([[[0.6, 0.3, 0.05, 0.05]], [[0.6, 0.3, 0.05, 0.05]]])
    diverse = torch.tensor([[[0.6, 0.3, 0.05, 0.05]], [[0.6, 0.05, 0.3, 0.05]]])
    adp = lambda p: float(-2.0 * ensemble_entropy(p).mean() - 0.5 * log_diversity(p, y).mean())  # noqa: E731
    assert adp(diverse) < adp(same)
    # orthogonal non-true-class vectors: det = 1 (up to the offset)
    ortho = torch.tensor([[[0.5, 0.5, 0.0, 0.0]], [[0.5, 0.0, 0.5, 0.0]]])
    assert float(log_diversity(ortho, y)) == pytest.approx(0.0, abs=1e-5)
    nets = members(2)
    batch = TrainBatch(
        torch.randn(8, 5),
        torch.randint(0, 4, (8,)),
        nets,
        GaussianNoise(0.3),
        torch.Generator().manual_seed(0),
        0,
        shared=True,
    )
    terms = regularizer(name="adp", alpha=2.0, beta=0.5).terms(batch)
    probs = torch.stack([logits.softmax(-1) for logits in batch.logits()])
    assert float(terms["adp_entropy"].detach()) == pytest.approx(-2.0 * float(ensemble_entropy(probs).mean().detach()))


def test_gal_against_a_direct_computation():
    nets = members(3)
    x, y = torch.randn(5, 5), torch.randint(0, 4, (5,))
    batch = batch_of(nets, x, y)
    value = float(regularizer(name="gal", weight=0.5).terms(batch)["gal"].detach())
    inputs = batch.inputs()[0].detach()
    per_input = []
    for m in range(5):
        grads = []
        for net in nets:
            p = inputs[m : m + 1].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(net(p), y[m : m + 1]), p)
            grads.append(g.flatten())
        sims = [F.cosine_similarity(grads[i], grads[j], dim=0) for i in range(3) for j in range(i + 1, 3)]
        per_input.append(torch.log(torch.exp(torch.stack(sims)).sum()))
    assert value == pytest.approx(0.5 * float(torch.stack(per_input).mean()), rel=1e-5)
    assert float(gradient_alignment(torch.ones(2, 1, 3))) == pytest.approx(1.0)  # one pair, aligned: log e^1


def test_smoothadv_attack_raises_the_smoothed_loss():
    nets = members(1, classes=3)
    x, y = torch.rand(16, 5), torch.randint(0, 3, (16,))
    attack = {"name": "pgd", "norm": "l2", "epsilon": 0.5, "steps": 5, "step_size": 0.2, "random_start": False}
    loss_fn = build_component("loss", {"name": "smoothadv", "attack": attack}, REGISTRY)
    batch = TrainBatch(x, y, nets, GaussianNoise(0.25), torch.Generator().manual_seed(0), 0, copies=4)
    noise = batch.noise_draws()[0]
    adv = loss_fn.adversarial(batch, nets, noise)
    assert (adv - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5 and adv.min() >= 0 and adv.max() <= 1

    def smoothed(points):  # -log of the mean over the 4 noise copies of the true class's softmax
        with torch.no_grad():
            probs = nets[0](batch.repeated(points) + noise).softmax(-1).reshape(4, 16, 3).mean(0)
            return -torch.log(probs.gather(1, y[:, None])[:, 0])

    assert float(smoothed(adv).mean()) > float(smoothed(x).mean()) + 0.05
    terms = loss_fn.terms(batch)  # trains at the adversarial points with the attack's noise
    assert torch.allclose(batch.inputs()[0], batch.repeated(adv) + noise, atol=1e-6)
    assert set(terms) == {"adv_ce"}


def test_smoothadv_warm_up():
    loss_fn = build_component("loss", {"name": "smoothadv", "warmup": 4}, REGISTRY)  # epsilon 1.0
    assert [loss_fn.radius(e) for e in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


@pytest.mark.parametrize(
    "train, message",
    [
        ({"regularizers": [{"name": "drt", "rho1": -0.5}]}, "training.regularizers[0].rho1: must be >= 0, got -0.5"),
        ({"copies": 0}, "training.copies: must be >= 1, got 0"),
        ({"regularizers": [{"name": "drtt"}]}, "unknown regularizer 'drtt'; did you mean 'drt'?"),
        (
            {"loss": {"name": "smoothadv", "attack": {"name": "pgd", "steps": 0}}},
            "training.loss.attack.steps: must be >= 1",
        ),
    ],
)
def test_bad_training_settings(train, message, tiny_pipeline):
    tiny_pipeline["training"].update(train)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("?", r"\?")):
        load_pipeline(tiny_pipeline)


def test_a_pair_regularizer_on_one_member_is_refused_before_any_work(tiny_pipeline, tmp_path, cli):
    tiny_pipeline["ensemble"]["members"] = 1
    tiny_pipeline["training"]["regularizers"] = [{"name": "drt"}, {"name": "gal"}]
    pipeline, _ = load_pipeline(tiny_pipeline)
    with pytest.raises(ConfigError) as info:
        check_pipeline(pipeline)
    assert "training.regularizers[0]: drt couples pairs of members; this ensemble has 1" in str(info.value)
    assert "training.regularizers[1]: gal aligns pairs" in str(info.value)
    (tmp_path / "p.toml").write_text('[ensemble]\nmembers = 1\n[training]\nregularizers = [{ name = "adp" }]\n')
    proc = cli("run", "p.toml", cwd=tmp_path)
    assert proc.returncode == 2 and "training.regularizers[0]: adp needs at least 2 members" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_drt_fine_tunes_from_a_gaussian_run_and_records_it(tiny_pipeline, tmp_path):
    tiny_pipeline["certification"]["enabled"] = False
    first = run(tiny_pipeline)
    tuned = copy.deepcopy(tiny_pipeline)
    tuned["output"] = str(tmp_path / "tuned")
    tuned["training"].update(
        epochs=1,
        lr=1e-12,
        copies=2,
        start_from=[str(first.output)],
        regularizers=[{"name": "drt", "rho1": 0.5, "rho2": 2.0}],
    )
    result = run(tuned)
    for a, b in zip(first.ensemble.members, result.ensemble.members):  # started from the Gaussian weights
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.allclose(pa, pb, atol=1e-8)
    ckpt = torch.load(result.output / "checkpoints" / "member_0.pt", weights_only=True)
    assert ckpt["start_from"][0]["path"] == str(first.output / "checkpoints" / "member_0.pt")
    assert len(ckpt["start_from"][0]["sha256"]) == 16
    log = json.loads((result.output / "train_log.json").read_text())["epochs"]
    assert [r["epoch"] for r in log] == [1] and {"ce", "gd", "cm", "valid_share", "loss"} <= set(log[0])
    assert log[0]["loss"] == pytest.approx(log[0]["ce"] + log[0]["gd"] + log[0]["cm"], rel=1e-6)
    assert (result.output / "train_log.png").stat().st_size > 1000
    tuned["training"]["start_from"] = ["a.pt", "b.pt", "c.pt"]
    with pytest.raises(Exception, match="training.start_from: 3 files for 2 members"):
        run(tuned)


def test_drt_training_is_reproducible_and_every_term_moves_the_weights(tiny_pipeline, tmp_path):
    tiny_pipeline["certification"]["enabled"] = False
    tiny_pipeline["training"].update(epochs=1, regularizers=[{"name": "drt"}, {"name": "adp"}, {"name": "gal"}])
    a = run(tiny_pipeline)
    tiny_pipeline["output"] = str(tmp_path / "again")
    b = run(tiny_pipeline)
    for ma, mb in zip(a.ensemble.members, b.ensemble.members):
        for pa, pb in zip(ma.state_dict().values(), mb.state_dict().values()):
            assert torch.equal(pa, pb)
    tiny_pipeline["output"] = str(tmp_path / "plain")
    tiny_pipeline["training"]["regularizers"] = []
    c = run(tiny_pipeline)
    assert not torch.equal(next(a.ensemble.members[0].parameters()), next(c.ensemble.members[0].parameters()))


@pytest.mark.parametrize("rho1, rho2, terms", [(0.0, 1.0, {"cm"}), (1.0, 0.0, {"gd"})])
def test_cm_alone_and_gd_alone_from_toml(rho1, rho2, terms, tiny_pipeline):
    tiny_pipeline["certification"]["enabled"] = False
    tiny_pipeline["training"].update(epochs=1, regularizers=[{"name": "drt", "rho1": rho1, "rho2": rho2}])
    result = run(tiny_pipeline)
    (record,) = json.loads((result.output / "train_log.json").read_text())["epochs"]
    assert {"gd", "cm"} & set(record) == terms and record["loss"] == pytest.approx(
        record["ce"] + sum(record[t] for t in terms), rel=1e-6
    )


@pytest.mark.parametrize("shared", [True, False])
def test_a_shard_sees_its_rows_of_the_whole_batchs_noise(shared):
    """Data-parallel training: rank r of K draws what one process draws for the whole mini-batch and keeps its
    inputs' rows, for every noisy copy and member, so the noise does not depend on the number of processes."""
    from ensemblecert.distributed import World

    nets = members()
    x, y = torch.randn(7, 5), torch.randint(0, 4, (7,))
    draw = lambda xs, ys, **kw: TrainBatch(  # noqa: E731
        xs, ys, nets, GaussianNoise(0.3), torch.Generator().manual_seed(3), 0,
        copies=3, shared=shared, **kw,
    ).noise_draws()  # fmt: skip
    whole = draw(x, y)
    for size in (2, 3):
        for rank in range(size):
            world = World(rank=rank, size=size)
            part = draw(x[rank::size], y[rank::size], world=world, whole=7)
            for member in range(3):
                expected = whole[member].view(3, 7, 5)[:, rank::size].reshape(-1, 5)
                assert torch.equal(part[member], expected)
    assert not torch.equal(whole[0], whole[1]) if not shared else whole[0] is whole[1]
    with pytest.raises(ValueError, match="shard"):
        TrainBatch(x[:3], y[:3], nets, GaussianNoise(0.3), torch.Generator(), 0,
                   world=World(rank=0, size=2), whole=7)  # fmt: skip
