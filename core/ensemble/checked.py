"""Checked reduced precision: float32's decisions at bf16 (or fp16) speed, audited.

A certificate rests on counts of the base classifier's decisions on noisy samples. At ``bf16-checked`` the
members run in bf16, and a sample's decision is taken from the bf16 logits only where it cannot differ from
float32's by the measured size of their difference; every other sample is evaluated again in float32:

1. **Probe.** The first batches, until ``check_probe`` samples have been seen, run at both precisions (so a
   first call on one clean input, as the sampler makes to learn the number of classes, never fixes the margins
   alone). ``member difference``: the largest difference of any logit of any member; ``aggregate difference``:
   the largest difference of any ensemble probability (with members checked at the margin so far). A margin is
   ``check_safety`` times twice the difference (a top class can fall by the difference while the runner-up rises
   by it), and at least the reduced precision's rounding step at the size of the values. The probe batches'
   counts are float32's.
2. **Checked batches.** Members run at the reduced precision; a sample where some member's top two logits are
   closer than the member margin is evaluated again in float32 (:meth:`Members.checking`), so every member vote is
   float32's; a sample whose ensemble probabilities' top two are closer than the aggregate margin is run through
   the aggregator again in float32. A value that is not finite (an fp16 overflow) is close, and a probe that
   meets one makes the margin infinite.
3. **Audit.** A share ``check_audit`` of the batches is also evaluated fully in float32 and every decision
   (the ensemble's and, where the aggregator ran them all, each member's) is compared with the checked path; the
   batch counts float32's. Any disagreement switches the rest of the run to float32 and is reported.
4. **Never slower than float32.** Checking costs re-evaluations and host synchronisations, and where most samples
   are close or the members are small it costs more than the reduced precision saves. After the probe, and again
   every :data:`RETRIAL` batches, :data:`TRIAL` batches run checked and :data:`TRIAL` in float32 alone, timed (on a
   GPU with a synchronisation before and after each); when float32 took less time per sample, the rest of the run
   runs in float32 (sound either way: every batch counts float32's decisions), and the record says so
   (``fell_back_to_fp32``, with both times). ``check_fallback = false`` keeps checking whatever it costs.

What this guarantees: agreement with float32 in every audited sample, measured; elsewhere agreement wherever the
probed difference bounds the actual one (the safety factor's job, and what the audit measures). What it does not:
float32 is itself rounded arithmetic, not the exact function (Voracek and Hein, 2023); and it concerns decisions,
so soft smoothed classifiers, whose tallies sum probabilities, are refused with it. Samples decided by their
reduced-precision pass count that pass's member evaluations; float32 re-evaluations are counted apart here: the
share of member evaluations (a sample through a member) made again in float32, and the share of samples run again
through the aggregator, each at most 1 (a sample may be in both). The
price on the hot path: one host synchronisation per member call and one per batch, to learn how many samples go
again (the float32 path has none beyond the counts).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

from ..components import Aggregate, Aggregator
from ..config.schema import Engine
from .engine import Members

#: The rounding step (unit roundoff times two) of each reduced precision's significand.
STEPS = {"bf16": 2.0**-8, "fp16": 2.0**-11}
#: Batches timed at each precision in one trial of whether checking is faster than float32 alone.
TRIAL = 3
#: Batches between two trials (the share of close samples changes with the inputs).
RETRIAL = 256


@attrs.define
class CheckRecord:
    """What a checked run did: the margins derived at each start (one per process and resume), the batches and
    samples seen, the member evaluations made at the reduced precision and how many of them again in float32, the
    samples run again through the aggregator in float32, and the audit."""

    precision: str
    safety: float
    audit_share: float
    probes: list[dict[str, float]] = attrs.field(factory=list)
    batches: int = 0
    samples: int = 0
    member_evaluations: int = 0
    member_evaluations_reevaluated: int = 0
    reevaluated_for_aggregate: int = 0
    audited_batches: int = 0
    audited_samples: int = 0
    disagreements: int = 0
    switched_to_fp32: bool = False
    #: Float32 alone was faster than checking, so the rest of the run ran in float32 (sound either way).
    fell_back_to_fp32: bool = False
    #: The last trial's seconds per sample, checked and in float32 alone (0 before any trial).
    checked_seconds_per_sample: float = 0.0
    fp32_seconds_per_sample: float = 0.0

    @property
    def agreed(self) -> bool:
        """No audited sample disagreed with float32 (vacuous when nothing was audited)."""
        return self.disagreements == 0 and not self.switched_to_fp32

    def to_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["member_reevaluated_share"] = self.member_reevaluated_share
        out["aggregate_reevaluated_share"] = self.reevaluated_for_aggregate / self.samples if self.samples else 0.0
        return out

    @property
    def member_reevaluated_share(self) -> float:
        """The share of member evaluations at the reduced precision that were made again in float32."""
        return self.member_evaluations_reevaluated / self.member_evaluations if self.member_evaluations else 0.0

    @classmethod
    def of(cls, engine: Engine) -> CheckRecord:
        """An empty record of a checked ``engine``."""
        return cls(engine.precision, engine.check_safety, engine.check_audit)

    def merge(self, other: Mapping[str, Any]) -> None:
        """Add another record's counts (an earlier session of a resumed run, or another process)."""
        mine = attrs.asdict(self)
        for name in COUNTS:
            setattr(self, name, mine[name] + int(other.get(name, 0)))
        self.probes = [*other.get("probes", []), *self.probes]
        self.switched_to_fp32 = self.switched_to_fp32 or bool(other.get("switched_to_fp32", False))
        self.fell_back_to_fp32 = self.fell_back_to_fp32 or bool(other.get("fell_back_to_fp32", False))
        if not self.checked_seconds_per_sample:  # this session has not timed a trial yet: the last one's
            self.checked_seconds_per_sample = float(other.get("checked_seconds_per_sample", 0.0))
            self.fp32_seconds_per_sample = float(other.get("fp32_seconds_per_sample", 0.0))


#: The counts of a :class:`CheckRecord` (what :meth:`CheckRecord.merge` adds up).
COUNTS = tuple(f.name for f in attrs.fields(CheckRecord) if f.type in ("int", int))


@attrs.define
class Probe:
    """What the probe has measured so far: samples, and the largest difference between the precisions and the
    largest magnitude, of the members' logits and of the ensemble's probabilities."""

    samples: int = 0
    member_difference: float = 0.0
    member_size: float = 0.0
    aggregate_difference: float = 0.0
    aggregate_size: float = 0.0


def margin_of(scores: Tensor) -> Tensor:
    """The difference between the top two scores along the last dimension."""
    top = scores.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def derived_margin(difference: float, size: float, precision: str, safety: float) -> float:
    """``safety`` times twice the larger of the measured ``difference`` and the precision's rounding step at values
    of ``size`` (the largest magnitude seen): below it a decision could change between the precisions."""
    return safety * 2.0 * max(difference, STEPS[precision] * size)


def largest(t: Tensor) -> float:
    """The largest magnitude in ``t`` (0 when empty; infinite where anything is not finite, as when fp16
    overflows, so that the margin covers every sample)."""
    if not t.numel():
        return 0.0
    value = float(t.abs().max())  # NaN propagates through max
    return value if math.isfinite(value) else math.inf


def decisions_differ(a: Aggregate, b: Aggregate) -> Tensor:
    """Per sample: whether the two aggregates decide differently (the ensemble, or any member both ran)."""
    differ = a.probs.argmax(dim=-1) != b.probs.argmax(dim=-1)
    if a.member_logits is not None and b.member_logits is not None:
        differ |= (a.member_logits.argmax(dim=-1) != b.member_logits.argmax(dim=-1)).any(dim=0)
    return differ


def float32_is_faster(checked: list[tuple[float, int]], fp32: list[tuple[float, int]]) -> bool:
    """Whether float32 alone took less time per sample than checking, from timed batches ``(seconds, samples)``
    of each (the median batch's rate, so one slow batch, a compilation say, does not decide)."""

    def rate(timed: list[tuple[float, int]]) -> float:
        rates = sorted(seconds / max(1, samples) for seconds, samples in timed)
        return rates[len(rates) // 2]

    return bool(checked and fp32) and rate(fp32) < rate(checked)


class PrecisionCheck:
    """The checked evaluation of one ensemble (see the module docstring); :attr:`record` says what it did.
    ``clock`` times the trials (a test can make one precision look slow)."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.perf_counter) -> None:
        if not engine.checked:
            raise ValueError(f"{engine.precision!r} is not a checked precision")
        self.low = engine.precision.removesuffix("-checked")
        self.record = CheckRecord.of(engine)
        #: The margins, fixed once ``check_probe`` samples have been probed (``None`` until then).
        self.member_margin: float | None = None
        self.aggregate_margin: float | None = None
        self._period = round(1 / engine.check_audit) if engine.check_audit > 0 else 0
        self._probe_samples = engine.check_probe
        self._probed = Probe()
        self._clock = clock
        self._fallback = engine.check_fallback
        self._trial_left = 0  # batches left in the current trial (2 * TRIAL when one starts)
        self._since_trial = 0
        self._timed: dict[str, list[tuple[float, int]]] = {"checked": [], "fp32": []}

    def evaluate(self, aggregator: Aggregator, members: Members, x: Tensor) -> Aggregate:
        """The aggregate of batch ``x`` with float32's decisions (under autograd: float32 throughout)."""
        if torch.is_grad_enabled():  # attacks and training: no counts to protect
            with members.exact():
                return aggregator.forward(members, x)
        record = self.record
        batch = record.batches
        record.batches += 1
        record.samples += x.shape[0]
        if record.switched_to_fp32 or record.fell_back_to_fp32:
            with members.exact():
                return aggregator.forward(members, x)
        if self.member_margin is None:
            out = self._probe(aggregator, members, x)
            if self.member_margin is not None and self._fallback:
                self._trial_left = 2 * TRIAL
            return out
        if self._period and batch % self._period == 0:
            return self._audit(aggregator, members, x)
        if self._trial_left:
            return self._trial(aggregator, members, x)
        self._since_trial += 1
        if self._fallback and self._since_trial >= RETRIAL:
            self._since_trial, self._trial_left = 0, 2 * TRIAL
        return self._checked(aggregator, members, x)

    def _trial(self, aggregator: Aggregator, members: Members, x: Tensor) -> Aggregate:
        """One timed batch of a trial, checked and in float32 alone by turns; at the trial's end, fall back to
        float32 for the rest of the run if it was faster."""
        kind = "checked" if self._trial_left % 2 == 0 else "fp32"
        self._trial_left -= 1
        _synchronize(x)
        start = self._clock()
        if kind == "checked":
            out = self._checked(aggregator, members, x)
        else:
            with members.exact():
                out = aggregator.forward(members, x)
        _synchronize(x)
        self._timed[kind].append((self._clock() - start, x.shape[0]))
        if not self._trial_left:
            checked, fp32 = self._timed["checked"], self._timed["fp32"]
            record = self.record
            record.checked_seconds_per_sample = sum(s for s, _ in checked) / max(1, sum(n for _, n in checked))
            record.fp32_seconds_per_sample = sum(s for s, _ in fp32) / max(1, sum(n for _, n in fp32))
            record.fell_back_to_fp32 = float32_is_faster(checked, fp32)
            self._timed = {"checked": [], "fp32": []}
        return out

    def _probe(self, aggregator: Aggregator, members: Members, x: Tensor) -> Aggregate:
        """Run ``x`` at both precisions, add what differed to the probe, and fix the margins once enough samples
        have been probed; the batch counts float32's."""
        seen, safety = self._probed, self.record.safety
        with members.exact():
            exact_logits = members.logits(x)
            exact = aggregator.forward(members, x)
        with members.checking(None):
            low_logits = members.logits(x)
        seen.samples += x.shape[0]
        seen.member_difference = max(seen.member_difference, largest(low_logits - exact_logits))
        seen.member_size = max(seen.member_size, largest(exact_logits))
        member_margin = derived_margin(seen.member_difference, seen.member_size, self.low, safety)
        before = members.evaluations, members.reevaluated
        with members.checking(member_margin):  # the margin so far: the final one is no smaller
            low = aggregator.forward(members, x)
        members.evaluations, members.reevaluated = before  # the probe's batches count float32's, checked or not
        seen.aggregate_difference = max(seen.aggregate_difference, largest(low.probs - exact.probs))
        seen.aggregate_size = max(seen.aggregate_size, largest(exact.probs))
        if seen.samples >= self._probe_samples:
            self.member_margin = member_margin
            self.aggregate_margin = derived_margin(seen.aggregate_difference, seen.aggregate_size, self.low, safety)
            self.record.probes.append(
                {
                    "samples": seen.samples,
                    "member_difference": seen.member_difference,
                    "member_margin": self.member_margin,
                    "aggregate_difference": seen.aggregate_difference,
                    "aggregate_margin": self.aggregate_margin,
                }
            )
        return exact

    def _checked(self, aggregator: Aggregator, members: Members, x: Tensor) -> Aggregate:
        evaluations, reevaluated = members.evaluations, members.reevaluated
        with members.checking(self.member_margin):
            low = aggregator.forward(members, x)
        self.record.member_evaluations += members.evaluations - evaluations
        self.record.member_evaluations_reevaluated += members.reevaluated - reevaluated
        assert self.aggregate_margin is not None
        rows = (~(margin_of(low.probs) >= self.aggregate_margin)).nonzero().squeeze(1)  # NaN counts as close
        if not rows.numel():
            return low
        self.record.reevaluated_for_aggregate += int(rows.numel())
        with members.exact():
            again = aggregator.forward(members, x.index_select(0, rows))
        member_logits = low.member_logits
        if member_logits is not None and again.member_logits is not None:
            member_logits = member_logits.index_copy(1, rows, again.member_logits)
        return attrs.evolve(low, probs=low.probs.index_copy(0, rows, again.probs), member_logits=member_logits)

    def _audit(self, aggregator: Aggregator, members: Members, x: Tensor) -> Aggregate:
        checked = self._checked(aggregator, members, x)
        with members.exact():
            exact = aggregator.forward(members, x)
        wrong = int(decisions_differ(checked, exact).sum())
        record = self.record
        record.audited_batches += 1
        record.audited_samples += x.shape[0]
        record.disagreements += wrong
        if wrong:
            record.switched_to_fp32 = True
        return exact


def _synchronize(x: Tensor) -> None:
    """Wait for the device's queued work, so that a trial times the work and not its launch (a GPU only)."""
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
