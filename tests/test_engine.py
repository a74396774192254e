"""The engine: fused members, every execution path giving the same counts, batching of small draws, precision."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import ensemblecert
from ensemblecert import (
    DataInfo,
    Engine,
    Ensemble,
    Members,
    MonteCarloSampler,
    SharedTallies,
    build_member,
    input_generator,
)
from ensemblecert.ensemble.engine import auto_layout
from ensemblecert.ensemble.fusion import FusionError, fuse
from ensemblecert.plugins.aggregators import WeightedEnsemble
from ensemblecert.plugins.models import MLP, LeNet, ResNet20
from ensemblecert.plugins.noise import GaussianNoise
from ensemblecert.plugins.voting import KConsensus

DIGITS = DataInfo((1, 8, 8), 10, (0.3,), (0.3,))
SMALL_RGB = DataInfo((3, 8, 8), 10, (0.5,) * 3, (0.25,) * 3)


def members_of(model, info, count=3):
    return [build_member(model, info, seed).eval() for seed in range(count)]


@pytest.mark.parametrize("model,info", [(MLP(hidden=[32, 16]), DIGITS), (LeNet(), DIGITS), (ResNet20(), SMALL_RGB)])
def test_fused_network_computes_every_members_logits(model, info):
    members = members_of(model, info)
    x = torch.rand(9, *info.input_shape)
    fused = fuse(members, x[:4])
    with torch.inference_mode():
        expected = torch.stack([m(x) for m in members])
        got = fused(x)
    assert got.shape == expected.shape == (3, 9, 10)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    # the first weighted layer is one wide layer, the later ones grouped
    layers = [m for m in fused.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert (
        layers[0].weight.shape[0]
        == 3 * next(m for m in members[0].modules() if isinstance(m, (nn.Linear, nn.Conv2d))).weight.shape[0]
    )


class InputAgainDeeper(nn.Module):
    """Uses the raw input after the first layer: a rewrite that widens layers cannot see that."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 8)
        self.b = nn.Linear(8 + 64, 10)

    def forward(self, x):
        flat = x.flatten(1)
        return self.b(torch.cat([torch.relu(self.a(flat)), flat], dim=1))


def softmax_between_layers():
    """A softmax between weighted layers runs over every member's features at once in the fused network: the shapes
    fit, the values do not (0.12 off), so only comparing the values tells."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Softmax(dim=1), nn.Linear(8, 10))


@pytest.mark.parametrize(
    "make, why",
    [(InputAgainDeeper, "fails on a probe batch"), (softmax_between_layers, "disagrees with the members on a probe")],
)
def test_architectures_that_do_not_fuse_are_refused_and_looped(make, why):
    torch.manual_seed(0)
    members = [make().eval() for _ in range(3)]
    x = torch.rand(5, 1, 8, 8)
    with pytest.raises(FusionError, match=why):
        fuse(members, x)
    runner = Members(members, Engine(layout="fused", compile=False))
    with torch.inference_mode():
        assert torch.equal(runner.logits(x), torch.stack([m(x) for m in members]))
    assert runner.layout == "loop" and why in runner.why_not
    assert runner.describe()["why_not"] == runner.why_not


@pytest.mark.parametrize(
    "device, convolutional, expected",
    [("cpu", False, "loop"), ("cpu", True, "loop"), ("cuda", False, "fused"), ("cuda", True, "loop")],
)
def test_auto_chooses_the_layout_measured_fastest_and_never_one_that_lost(device, convolutional, expected):
    """``auto`` takes the loop everywhere but for members without convolutions on a GPU; ``vmap``, which lost to
    the loop wherever it was measured, is never chosen (docs/engine.md)."""
    assert auto_layout(device, convolutional) == expected != "vmap"


def test_auto_on_this_machine_runs_what_auto_layout_says():
    mlps = members_of(MLP(hidden=[8]), DIGITS, 3)
    resnets = members_of(ResNet20(), SMALL_RGB, 2)
    for members, convolutional in ((mlps, False), (resnets, True)):
        runner = Members(members, Engine())
        assert runner.layout == auto_layout("cpu", convolutional) == "loop"


def test_members_in_training_mode_or_of_different_architectures_loop():
    mixed = [build_member(MLP(hidden=[8]), DIGITS, 0).eval(), build_member(MLP(hidden=[9]), DIGITS, 1).eval()]
    assert Members(mixed, Engine(layout="fused")).layout == "loop"
    training = members_of(MLP(hidden=[8]), DIGITS, 2)
    training[0].train()
    runner = Members(training, Engine(layout="vmap"))
    assert runner.layout == "loop" and "training" in runner.why_not


PATHS = [
    Engine(layout="loop", compile=False),
    Engine(layout="vmap", compile=False),
    Engine(layout="fused", compile=False),
    pytest.param(Engine(layout="fused", compile=True), marks=pytest.mark.slow),
    pytest.param(Engine(layout="loop", compile=True), marks=pytest.mark.slow),
]


#: The GPU paths are checked where a GPU is present (CI has none; docs/engine.md records the GPU run).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def reference_tally(members, device, n=700):
    ensemble = Ensemble(members, WeightedEnsemble(), engine=Engine(layout="loop", compile=False)).to(device).eval()
    sampler = MonteCarloSampler(ensemble, GaussianNoise(sigma=0.5), num_classes=10, batch_size=1000)
    x = torch.full((1, 8, 8), 0.4)
    return sampler.tally(x, n, generator=input_generator(3, 1, device=device), softmax=True, members=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("engine", PATHS)
@pytest.mark.parametrize("batch_size", [1, 37, 128, 1000])
def test_counts_do_not_depend_on_the_execution_path_or_batch_size(engine, batch_size, device):
    members = [m.to(device) for m in members_of(MLP(hidden=[32, 16]), DIGITS)]
    expected = reference_tally(members, device)
    assert expected.counts.count_nonzero() > 1  # several classes: the comparison can fail
    ensemble = Ensemble(members, WeightedEnsemble(), engine=engine).to(device).eval()
    sampler = MonteCarloSampler(ensemble, GaussianNoise(sigma=0.5), num_classes=10, batch_size=batch_size)
    got = sampler.tally(
        torch.full((1, 8, 8), 0.4), 700, generator=input_generator(3, 1, device=device), softmax=True, members=True
    )
    assert torch.equal(got.counts, expected.counts)
    assert torch.equal(got.member_counts, expected.member_counts)
    assert torch.allclose(got.prob_sums, expected.prob_sums, rtol=1e-5)
    assert got.evaluations == expected.evaluations == 3 * 700


@pytest.mark.parametrize("device", DEVICES)
def test_conv_members_count_alike_looped_and_fused(device):
    members = [m.to(device) for m in members_of(ResNet20(), SMALL_RGB)]
    x = torch.rand(3, 8, 8)
    tallies = []
    for layout, batch in (("loop", 1000), ("fused", 1000), ("fused", 64)):
        ensemble = Ensemble(members, WeightedEnsemble(), engine=Engine(layout=layout, compile=False)).to(device).eval()
        sampler = MonteCarloSampler(ensemble, GaussianNoise(sigma=0.5), num_classes=10, batch_size=batch)
        tallies.append(sampler.tally(x, 500, generator=input_generator(0, 7, device=device)))
    assert tallies[0].counts.count_nonzero() > 1
    assert all(torch.equal(t.counts, tallies[0].counts) for t in tallies[1:])


def test_k_consensus_skips_members_on_the_fused_engine_too():
    members = members_of(MLP(hidden=[16]), DIGITS, 5)
    results = []
    for layout in ("loop", "fused"):
        ensemble = Ensemble(members, KConsensus(k=2, order=[4, 3, 2, 1, 0]), engine=Engine(layout=layout)).eval()
        sampler = MonteCarloSampler(ensemble, GaussianNoise(sigma=0.5), num_classes=10, batch_size=256)
        results.append(sampler.tally(torch.full((1, 8, 8), 0.4), 600, generator=input_generator(0, 2)))
    assert torch.equal(results[0].counts, results[1].counts)
    assert results[0].evaluations == results[1].evaluations < 5 * 600


def test_small_draws_of_several_inputs_share_a_forward_pass():
    members = members_of(MLP(hidden=[16]), DIGITS)
    ensemble = Ensemble(members, WeightedEnsemble()).eval()
    sampler = MonteCarloSampler(ensemble, GaussianNoise(sigma=0.5), num_classes=10, batch_size=512)
    xs = [torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    gens = [input_generator(0, i) for i in range(5)]
    together = sampler.tally_many(xs, 100, generators=gens, softmax=True, members=True)
    for i, (x, tally) in enumerate(zip(xs, together)):
        alone_gen = input_generator(0, i)
        alone = sampler.tally(x, 100, generator=alone_gen, softmax=True, members=True)
        assert torch.equal(tally.counts, alone.counts)
        assert torch.equal(tally.member_counts, alone.member_counts)
        assert torch.allclose(tally.prob_sums, alone.prob_sums)
        assert tally.evaluations == alone.evaluations == 300
        assert torch.equal(gens[i].get_state(), alone_gen.get_state())  # the generator moved on alike
    with pytest.raises(ValueError, match="do not fit"):
        sampler.tally_many(xs * 2, 100, generators=gens * 2)


def test_prefetched_first_draws_read_as_if_drawn_alone():
    members = members_of(MLP(hidden=[16]), DIGITS)
    ensemble = Ensemble(members, WeightedEnsemble()).eval()
    xs = [torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]

    def certify_all(prefetch: bool):
        shared = SharedTallies(MonteCarloSampler(ensemble, GaussianNoise(sigma=0.5), num_classes=10, batch_size=400))
        out = []
        for i, x in enumerate(xs):
            shared.clear()
            if prefetch and i == 1:  # the first input taught it the first draw: 100 of 400 fit four times
                assert shared.inputs_per_pass() == 4
                shared.prefetch(xs[1:], [input_generator(0, j) for j in range(1, 4)])
            gen = input_generator(0, i)
            before = shared.usage.snapshot()
            first = shared.tally(x, 100, generator=gen)
            second = shared.tally(x, 300, generator=gen)
            spent = shared.usage - before
            out.append((first.counts.tolist(), second.counts.tolist(), spent.draws, spent.evaluations))
        return out

    assert certify_all(True) == certify_all(False)


def test_reduced_precision_is_recorded_and_changes_the_fingerprint(tmp_path):
    def certify(precision):
        result = ensemblecert.run(
            None,
            overrides=[
                f"output={tmp_path / precision}",
                "training.epochs=1",
                "certification.max_examples=3",
                "certification.certifiers=[{name='cohen', n0=20, n=200}]",
                f"engine.precision={precision}",
            ],
        )
        read = lambda name: json.loads((result.output / name).read_text())  # noqa: E731
        return read("certification.meta.json"), read("certification.json"), read("stages.json")["certification"]

    fp32, fp32_summary, fp32_fingerprint = certify("fp32")
    bf16, bf16_summary, bf16_fingerprint = certify("bf16")
    assert fp32["engine"]["precision"] == "fp32" and fp32_summary["sound"] is True
    assert bf16["engine"]["members"]["precision"] == "bf16" and bf16_summary["sound"] is False
    assert fp32_fingerprint != bf16_fingerprint


def test_building_an_ensemble_leaves_the_callers_modules_alone():
    """Two ensembles over the same members with different engines: building the channels-last one changes neither
    the members' weights nor their memory layout, and the first ensemble's outputs stay the same."""
    members = members_of(ResNet20(), DataInfo((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3), count=2)
    before = [{k: (v.clone(), v.stride()) for k, v in m.state_dict().items()} for m in members]
    x = torch.rand(4, 3, 32, 32)
    plain = Ensemble(members, WeightedEnsemble(), engine=Engine(compile=False))
    with torch.inference_mode():
        expected = plain(x)
        other = Ensemble(members, WeightedEnsemble(), engine=Engine(compile=False, channels_last=True))
        assert other.runner().channels_last
        assert torch.allclose(other(x), expected, atol=1e-5)
        assert torch.equal(plain(x), expected)
    for member, saved in zip(members, before):
        for key, value in member.state_dict().items():
            assert torch.equal(value, saved[key][0]) and value.stride() == saved[key][1], key
