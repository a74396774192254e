"""What only a GPU can show: checked bf16 gives float32's counts on CUDA, its fallback trial times kernels (not their
launch), and two ensembles over the same members with compiled, channels-last engines both work. Skipped without
CUDA (CI has none); the CPU versions of these tests run everywhere (test_checked_precision.py, test_engine.py)."""

from __future__ import annotations

import pytest
import torch

from ensemblecert import DataInfo, Engine, Ensemble, MonteCarloSampler, build_member, input_generator
from ensemblecert.plugins.aggregators import WeightedEnsemble
from ensemblecert.plugins.models import MLP, ResNet20
from ensemblecert.plugins.noise import GaussianNoise

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DIGITS = DataInfo((1, 8, 8), 10, (0.3,), (0.3,))
CIFAR = DataInfo((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3)


def counts(engine: Engine, members, inputs, n=4000, batch=1000):
    """Each input's class and member counts on CUDA, and the ensemble (its check record)."""
    ensemble = Ensemble(members, WeightedEnsemble(), engine=engine).to("cuda").eval()
    sampler = MonteCarloSampler(ensemble, GaussianNoise(sigma=0.25), num_classes=10, batch_size=batch)
    out = []
    for i, x in enumerate(inputs):
        tally = sampler.tally(x, n, generator=input_generator(0, i, device="cuda"), members=True)
        out.append((tally.counts.tolist(), tally.member_counts.tolist()))
    return out, ensemble


def members(model, info, count=3):
    return [build_member(model, info, seed).eval().to("cuda") for seed in range(count)]


@pytest.mark.parametrize("fallback", [False, True], ids=["checking", "may-fall-back"])
def test_checked_bf16_counts_are_float32s_on_cuda(fallback):
    nets = members(MLP(hidden=[64, 64]), DIGITS)
    inputs = [torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    exact, _ = counts(Engine(), nets, inputs)
    engine = Engine(precision="bf16-checked", check_probe=1000, check_fallback=fallback)
    checked, ensemble = counts(engine, nets, inputs)
    assert checked == exact
    record = ensemble.check.record
    assert record.agreed and record.probes
    if fallback:  # the trial ran, timing kernels: both rates are measured and positive
        assert record.checked_seconds_per_sample > 0 and record.fp32_seconds_per_sample > 0
    else:
        assert record.member_evaluations > 0 and not record.fell_back_to_fp32


def test_two_compiled_channels_last_ensembles_over_the_same_members_on_cuda():
    nets = members(ResNet20(), CIFAR, count=2)
    before = [{k: (v.clone(), v.stride()) for k, v in m.state_dict().items()} for m in nets]
    x = torch.rand(8, 3, 32, 32, device="cuda")
    plain = Ensemble(nets, WeightedEnsemble(), engine=Engine(compile=True)).eval()
    with torch.inference_mode():
        expected = plain(x)
        other = Ensemble(nets, WeightedEnsemble(), engine=Engine(compile=True, channels_last=True)).eval()
        assert torch.allclose(other(x), expected, atol=1e-4)
        assert torch.allclose(plain(x), expected, atol=1e-6)
    for member, saved in zip(nets, before):
        for key, value in member.state_dict().items():
            assert torch.equal(value, saved[key][0]) and value.stride() == saved[key][1], key
