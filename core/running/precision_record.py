"""A checked precision's record over a run (see :mod:`ensemblecert.ensemble.checked`): started in each process from
what that process wrote before an interruption, gathered over the processes, and reported at the end."""

from __future__ import annotations

from ..ensemble.checked import CheckRecord, PrecisionCheck
from .context import Outputs, RunContext, read_json


def start_check(run: RunContext) -> CheckRecord | None:
    """A fresh check of the ensemble at a checked precision; its record goes on from what this process wrote
    before an interruption."""
    ensemble = run.assembled()
    if not run.pipeline.engine.checked:
        return None
    ensemble.check = PrecisionCheck(run.pipeline.engine)
    earlier = run.path(Outputs.CERTIFICATION_CHECK, rank=run.world.rank)
    if earlier.exists():
        ensemble.check.record.merge(read_json(earlier, "the run"))
    return ensemble.check.record


def check_record(run: RunContext) -> CheckRecord:
    """The checks of every process together."""
    record = CheckRecord.of(run.pipeline.engine)
    for path in sorted(run.out.glob(Outputs.CERTIFICATION_CHECKS)):
        record.merge(read_json(path, "the run"))
    return record


def report_check(run: RunContext, record: CheckRecord) -> None:
    """One line on what the check re-evaluated, audited and found; a warning when the counts may not be float32's."""
    d = record.to_dict()
    line = (
        f"{record.precision}: {d['member_reevaluated_share']:.1%} of member evaluations and "
        f"{d['aggregate_reevaluated_share']:.1%} of {record.samples:,} samples re-evaluated in float32; "
        f"audit: {record.audited_samples:,} samples in {record.audited_batches} batches, "
        f"{record.disagreements} disagreements with float32"
    )
    if record.fell_back_to_fp32:
        line += (
            f"; float32 alone was faster ({record.fp32_seconds_per_sample * 1e6:.1f} against "
            f"{record.checked_seconds_per_sample * 1e6:.1f} us per sample checked), so the rest of the run "
            "ran in float32"
        )
    if record.agreed:
        run.reporter.info(line)
    else:
        run.reporter.unsound(
            f"{line}: the rest of the run ran in float32, but the counts of the batches before it may not be "
            "float32's; run again with engine.precision = 'fp32'"
        )
