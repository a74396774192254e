"""Checked reduced precision: float32's counts from members run in bf16, close decisions re-evaluated in float32,
an audit that catches a precision error larger than the derived margin."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ensemblecert import ConfigError, DataInfo, Engine, Ensemble, MonteCarloSampler, build_member, run
from ensemblecert.plugins.aggregators import WeightedEnsemble
from ensemblecert.plugins.datasets import Digits
from ensemblecert.plugins.models import ResNet20
from ensemblecert.plugins.noise import GaussianNoise
from ensemblecert.plugins.voting import HardVoting

CIFAR = DataInfo((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3)


def tallies(members, engine, xs, *, n=600, batch=200, aggregator=None, sigma=0.25):
    """Counts and per-member counts of every input, each from its own generator, and the ensemble (its check)."""
    ensemble = Ensemble(members, aggregator or WeightedEnsemble(), engine=engine)
    sampler = MonteCarloSampler(ensemble, GaussianNoise(sigma=sigma), batch_size=batch, num_classes=10)
    out = []
    for i, x in enumerate(xs):
        tally = sampler.tally(x, n, generator=torch.Generator().manual_seed(i), members=True)
        out.append((tally.counts.tolist(), tally.member_counts.tolist()))
    return out, ensemble


@pytest.fixture(scope="module")
def digits_members(tmp_path_factory):
    """Three MLPs trained on digits for a few epochs, and ten test inputs."""
    output = tmp_path_factory.mktemp("digits") / "run"
    result = run(
        {
            "seed": 0,
            "device": "cpu",
            "output": str(output),
            "ensemble": {"members": 3, "model": {"name": "mlp", "hidden": [64]}},
            "training": {"epochs": 4, "batch_size": 128, "lr": 0.1},
            "certification": {"enabled": False},
        }
    )
    test = Digits().load().test
    return [m.eval() for m in result.ensemble.members], [test[i][0] for i in range(0, 200, 20)]


@pytest.mark.parametrize("aggregator", [WeightedEnsemble(), HardVoting()], ids=["we", "hard"])
def test_checked_bf16_counts_are_float32s_on_digits_mlps(digits_members, aggregator):
    members, xs = digits_members
    exact, _ = tallies(members, Engine(), xs, aggregator=aggregator)
    checked, ensemble = tallies(
        members, Engine(check_fallback=False, precision="bf16-checked"), xs, aggregator=aggregator
    )
    assert checked == exact
    record = ensemble.check.record
    assert record.probes and record.audited_batches > 0 and record.disagreements == 0 and record.agreed
    assert record.samples == len(xs) * 600
    assert 0 < record.member_evaluations_reevaluated + record.reevaluated_for_aggregate  # it did check
    assert record.member_evaluations_reevaluated < record.member_evaluations
    assert record.reevaluated_for_aggregate < record.samples


def test_checked_bf16_counts_are_float32s_on_batch_norm_resnet20():
    members = [build_member(ResNet20(), CIFAR, seed).eval() for seed in range(2)]
    xs = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    engine = dict(compile=False)
    exact, _ = tallies(members, Engine(**engine), xs, n=200, batch=100)
    checked, ensemble = tallies(
        members, Engine(check_fallback=False, precision="bf16-checked", check_probe=100, **engine), xs, n=200, batch=100
    )
    assert checked == exact
    assert ensemble.check.record.agreed and ensemble.check.record.member_evaluations > 0  # it ran checked batches


def test_the_margins_come_from_check_probe_samples_not_from_a_first_clean_input(digits_members):
    """The sampler's first call evaluates one clean input (to learn the number of classes): the probe goes on,
    counting float32's decisions, until check_probe noisy samples have run at both precisions."""
    members, xs = digits_members
    ensemble = Ensemble(
        members, WeightedEnsemble(), engine=Engine(check_fallback=False, precision="bf16-checked", check_probe=500)
    )
    check = ensemble.check
    with torch.inference_mode():
        ensemble.evaluate(xs[0][None])
    sampler = MonteCarloSampler(ensemble, GaussianNoise(sigma=0.25), batch_size=200)
    sampler.tally(xs[0], 400, generator=torch.Generator().manual_seed(0))
    assert check.member_margin is None and check.record.member_evaluations == 0 and not check.record.probes
    sampler.tally(xs[1], 200, generator=torch.Generator().manual_seed(1))
    (probe,) = check.record.probes
    assert probe["samples"] >= 601 and check.member_margin == probe["member_margin"] > 0
    sampler.tally(xs[2], 200, generator=torch.Generator().manual_seed(2))
    assert check.record.member_evaluations == 3 * 200  # the next batch ran checked


class NearTie(nn.Module):
    """A linear member whose classes 0 and 1 differ by ``gap`` times a feature: its decision between them flips
    with the sign of a small number, where bf16's rounding decides it wrongly."""

    def __init__(self, seed: int, gap: float = 2e-3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.base = nn.Linear(64, 10)
        with torch.no_grad():
            self.base.weight.copy_(torch.randn(10, 64, generator=g) * 0.05)
            self.base.bias.zero_()
            self.base.bias[:2] = 5.0  # classes 0 and 1 far ahead of the rest ...
            self.base.weight[1] = self.base.weight[0] + gap * torch.randn(64, generator=g)  # ... and nearly tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x.flatten(1))


def test_members_with_many_near_ties_flip_in_bf16_but_not_when_checked():
    members = [NearTie(seed) for seed in range(3)]
    xs = [torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    exact, _ = tallies(members, Engine(), xs)
    plain, _ = tallies(members, Engine(precision="bf16"), xs)
    checked, ensemble = tallies(members, Engine(check_fallback=False, precision="bf16-checked"), xs)
    assert plain != exact  # the near-ties do decide differently in bf16 ...
    assert checked == exact  # ... and the check puts float32's decisions back
    assert ensemble.check.record.member_reevaluated_share > 0.2


class Overflowing(nn.Module):
    """A member whose hidden units exceed fp16's range (65,504) and cancel in the next layer: in float32 its
    logits are finite and decide, in fp16 they are inf - inf = NaN."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.hidden = nn.Linear(64, 2)
        self.out = nn.Linear(2, 10)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.randn(2, 64, generator=g))
            self.hidden.bias.fill_(1e5)
            self.out.weight.zero_()
            self.out.weight[:, 0] = torch.linspace(-1, 1, 10)  # the classes read the difference of the two units
            self.out.weight[:, 1] = -torch.linspace(-1, 1, 10)
            self.out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x.flatten(1)))


def test_an_fp16_overflow_is_close_everywhere_and_float32_decides():
    members = [Overflowing(seed) for seed in range(2)]
    xs = [torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        assert members[0](xs[0][None]).isnan().all()  # the overflow is real
    exact, _ = tallies(members, Engine(), xs, n=300, batch=100)
    checked, ensemble = tallies(
        members, Engine(check_fallback=False, precision="fp16-checked", check_probe=100), xs, n=300, batch=100
    )
    assert checked == exact
    record = ensemble.check.record
    assert record.probes[0]["member_margin"] == float("inf") and record.member_reevaluated_share == 1.0


class Planted(nn.Module):
    """A member that, once ``armed``, adds an error far above any probed difference to its bf16 logits: it swaps
    its top two classes on every sample (float32 is left alone)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if self.armed and torch.is_autocast_enabled("cpu"):
            top = out.topk(2, dim=-1)
            out = out.scatter(-1, top.indices, top.values.flip(-1))
        return out


def test_a_planted_precision_error_is_caught_by_the_audit(digits_members):
    members, xs = digits_members
    planted = [Planted(m) for m in members]
    engine = Engine(check_fallback=False, precision="bf16-checked", check_audit=0.5, check_probe=100)
    ensemble = Ensemble(planted, WeightedEnsemble(), engine=engine)
    sampler = MonteCarloSampler(ensemble, GaussianNoise(sigma=0.25), batch_size=100, num_classes=10)
    sampler.tally(xs[0], 100, generator=torch.Generator().manual_seed(0))  # the probe, unarmed
    for member in planted:
        member.armed = True
    record = ensemble.check.record
    checked = sampler.tally(xs[1], 400, generator=torch.Generator().manual_seed(1), members=True)
    assert record.disagreements > 0 and record.switched_to_fp32 and not record.agreed
    # after the switch every batch is float32's: the rest of the tallies equal the float32 path's
    exact_ensemble = Ensemble(members, WeightedEnsemble(), engine=Engine())
    exact_sampler = MonteCarloSampler(exact_ensemble, GaussianNoise(sigma=0.25), batch_size=100, num_classes=10)
    later = sampler.tally(xs[2], 400, generator=torch.Generator().manual_seed(2), members=True)
    expected = exact_sampler.tally(xs[2], 400, generator=torch.Generator().manual_seed(2), members=True)
    assert torch.equal(later.counts, expected.counts) and torch.equal(later.member_counts, expected.member_counts)
    assert checked.n == 400


def test_a_checked_run_records_its_check_and_resumes_it(tiny_pipeline, tmp_path):
    tiny_pipeline["engine"] = {
        "precision": "bf16-checked",
        "check_audit": 0.25,
        "check_probe": 100,
        "check_fallback": False,
    }
    tiny_pipeline["certification"]["max_examples"] = 3
    checked = run(tiny_pipeline)
    fp32 = run({**tiny_pipeline, "engine": {}, "output": str(tmp_path / "fp32")})
    assert [r.outcomes["cohen"].certificate for r in checked.results] == [
        r.outcomes["cohen"].certificate for r in fp32.results
    ]
    summary = json.loads((checked.output / "certification.json").read_text())
    assert summary["sound"] is True and summary["precision"] == "bf16-checked"
    first = summary["precision_check"]
    # every noisy sample of the three inputs (n0 + n = 220 each), and one that finds the class count
    assert first["samples"] - 3 * 220 in (0, 1) and first["disagreements"] == 0 and first["audited_batches"] > 0
    tiny_pipeline["certification"]["max_examples"] = 5  # resume: two more inputs, the record goes on
    more = run(tiny_pipeline)
    record = json.loads((more.output / "certification.json").read_text())["precision_check"]
    assert record["samples"] - 5 * 220 in (0, 1, 2) and len(record["probes"]) == 2
    assert record["batches"] > first["batches"]


def test_a_soft_certifier_is_refused_at_a_checked_precision(tiny_pipeline):
    tiny_pipeline["engine"] = {"precision": "bf16-checked"}
    tiny_pipeline["certification"]["certifiers"].append({"name": "cohen", "expectation": "softmax", "n": 200})
    with pytest.raises(ConfigError, match=r"engine.precision: 'bf16-checked' checks decisions.*certifiers\[1\]"):
        run(tiny_pipeline)


class Arming(nn.Module):
    """Planted, armed by itself once it has run ``after`` samples at the reduced precision (after the probe)."""

    def __init__(self, inner: nn.Module, after: int) -> None:
        super().__init__()
        self.planted, self.after, self.seen = Planted(inner), after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled("cpu"):
            self.seen += x.shape[0]
            self.planted.armed = self.seen > self.after
        return self.planted(x)


def arming_plugin():
    import types

    import attrs

    from ensemblecert import Model, hookimpl
    from ensemblecert.plugins.models import MLP

    @attrs.frozen
    class ArmingMLP(Model):
        """An MLP whose bf16 logits go wrong after the probe (a test model)."""

        def build(self, info):
            return Arming(MLP(hidden=[32]).build(info), after=400)

    plugin = types.ModuleType("arming_model")
    plugin.register_models = hookimpl(lambda register: register("arming_mlp", ArmingMLP))
    return plugin


def test_a_run_whose_audit_disagreed_is_marked_not_sound_in_its_summary_and_table(tiny_pipeline):
    tiny_pipeline["ensemble"]["model"] = {"name": "arming_mlp"}
    tiny_pipeline["engine"] = {"precision": "bf16-checked", "check_audit": 0.5, "check_probe": 100}
    tiny_pipeline["certification"]["max_examples"] = 4
    result = run(tiny_pipeline, plugins=[arming_plugin()])
    summary = json.loads((result.output / "certification.json").read_text())
    assert summary["precision_check"]["disagreements"] > 0
    assert summary["sound"] is False and result.summary.sound is False
    assert "(NOT SOUND)" in (result.output / "report.md").read_text()


class FakeTime:
    """A clock that moves only when members run: ``low`` seconds per batch at the reduced precision, ``exact`` per
    batch in float32 (what a slow or a fast checked path looks like to the trial, whatever this machine does)."""

    def __init__(self, monkeypatch, *, low: float, exact: float) -> None:
        self.now = 0.0
        from ensemblecert.ensemble.engine import Members

        checking, exact_mode = Members.checking, Members.exact
        clock = self

        def slow_checking(members, margin):
            clock.now += low
            return checking(members, margin)

        def slow_exact(members):
            clock.now += exact
            return exact_mode(members)

        monkeypatch.setattr(Members, "checking", slow_checking)
        monkeypatch.setattr(Members, "exact", slow_exact)

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("slow", ["checked", "fp32"])
def test_checking_falls_back_to_float32_when_float32_is_faster(digits_members, monkeypatch, slow):
    members, xs = digits_members
    exact, _ = tallies(members, Engine(), xs[:4], n=400, batch=100)
    clock = FakeTime(monkeypatch, low=1.0 if slow == "checked" else 0.0, exact=0.0 if slow == "checked" else 1.0)
    ensemble = Ensemble(members, WeightedEnsemble(), engine=Engine(precision="bf16-checked", check_probe=100))
    from ensemblecert.ensemble.checked import TRIAL, PrecisionCheck

    ensemble.check = PrecisionCheck(ensemble.engine, clock=clock)
    sampler = MonteCarloSampler(ensemble, GaussianNoise(sigma=0.25), batch_size=100, num_classes=10)
    counts = []
    for i, x in enumerate(xs[:4]):
        tally = sampler.tally(x, 400, generator=torch.Generator().manual_seed(i), members=True)
        counts.append((tally.counts.tolist(), tally.member_counts.tolist()))
    record = ensemble.check.record
    assert counts == exact  # float32's counts either way
    assert record.fell_back_to_fp32 is (slow == "checked")
    assert record.agreed  # falling back is not a disagreement
    if slow == "checked":
        assert record.checked_seconds_per_sample > record.fp32_seconds_per_sample
        # after the trial nothing ran at the reduced precision: the member evaluations stop at the trial's
        assert record.member_evaluations == TRIAL * 100 * len(members)
    else:
        assert record.member_evaluations > TRIAL * 100 * len(members)


def test_a_run_that_fell_back_says_so(tiny_pipeline, monkeypatch):
    import functools
    import io

    from rich.console import Console

    from ensemblecert.ensemble.checked import PrecisionCheck
    from ensemblecert.running import precision_record
    from ensemblecert.running.report import Reporter

    clock = FakeTime(monkeypatch, low=1.0, exact=0.0)
    monkeypatch.setattr(precision_record, "PrecisionCheck", functools.partial(PrecisionCheck, clock=clock))
    tiny_pipeline["engine"] = {"precision": "bf16-checked", "check_probe": 100}
    tiny_pipeline["certification"]["max_examples"] = 6  # the probe, then a trial of 2 x TRIAL batches
    out = io.StringIO()
    result = run(tiny_pipeline, reporter=Reporter(Console(file=out, width=400)))
    record = json.loads((result.output / "certification.json").read_text())["precision_check"]
    assert record["fell_back_to_fp32"] is True and record["disagreements"] == 0
    assert "float32 alone was faster" in out.getvalue() and "the rest of the run ran in float32" in out.getvalue()
