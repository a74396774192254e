"""The calibration stage: fit an aggregator that needs held-out data (member ranking, weights) to a split of the
training data that the members never trained on.

The split is taken when the run starts (:func:`split_heldout`, chosen with the pipeline seed, so a resumed run
takes the same one) and recorded in ``heldout.json``; the fitted aggregator is saved in ``aggregator.json`` and
rebuilt from its fields when the run resumes. Calibration is cheap, so a changed configuration redoes it rather
than refusing.
"""

from __future__ import annotations

import attrs
import torch

from ...checkpoints import plain, write_json
from ...components import DataSplits, HeldOut, Stage
from ...config import build_component, describe
from ...ensemble.engine import Members
from ...errors import UserError
from ...seeds import generator
from ..context import ROUNDING, THROUGH_WEIGHTS, Outputs, RunContext, read_json, size, weights_digest


def split_heldout(data: DataSplits, fraction: float, seed: int) -> tuple[DataSplits, torch.utils.data.Subset]:
    """Set ``fraction`` of the training data aside, chosen with ``seed``: the remaining splits and the held-out part
    (its ``indices`` say which inputs)."""
    total = size(data.train)
    count = max(1, round(fraction * total))
    if count >= total:
        raise UserError(f"heldout.fraction: {fraction} leaves no training data of {total} inputs")
    order = torch.randperm(total, generator=generator(seed, "heldout")).tolist()
    held, kept = sorted(order[:count]), sorted(order[count:])
    subset = torch.utils.data.Subset
    return attrs.evolve(data, train=subset(data.train, kept)), subset(data.train, held)


@attrs.frozen
class CalibrationStage(Stage):
    """Calibrate the aggregator on the held-out split (when it asks for one); leaves ``run.aggregator``."""

    outputs = (Outputs.HELDOUT, Outputs.AGGREGATOR)
    on_change = "redo"

    def enabled(self, run: RunContext) -> bool:
        return run.heldout is not None

    independent_of = {
        "device": ROUNDING,
        "engine.layout": ROUNDING,
        "engine.compile": ROUNDING,
        "engine.channels_last": ROUNDING,
        "ensemble.smoothing": "read by certification only",
        "certification.certifiers": "another stage's settings",
        "certification.radii": "another stage's settings",
        "certification.skip": "another stage's settings",
        "certification.max_examples": "another stage's settings",
        "evaluation": "another stage's settings",
        "training": THROUGH_WEIGHTS,
        "ensemble.members": THROUGH_WEIGHTS,
        "ensemble.checkpoints": THROUGH_WEIGHTS,
        "plugins": "the components they register are named by the settings that use them",
        "stages": "the plugin stages run after the built-in ones",
    }

    def fingerprint(self, run: RunContext) -> object | None:
        return {"settings": run.settings(self), "weights": weights_digest(run.members)}

    def run(self, run: RunContext) -> None:
        p, path = run.pipeline, run.path(Outputs.AGGREGATOR)
        held = run.heldout
        if held is None:  # not enabled without it
            return
        if run.world.main:
            indices = [int(i) for i in held.indices]
            write_json(
                run.path(Outputs.HELDOUT),
                {"fraction": p.heldout.fraction, "size": size(held.dataset), "indices": indices},
            )
        saved = read_json(path, "the calibration")
        if isinstance(saved.get("aggregator"), dict):
            run.reporter.info(f"Reusing the calibrated aggregator in {path}")
            run.aggregator = build_component("aggregator", saved["aggregator"], run.registry)
            return
        run.reporter.info(f"Calibrating the aggregator on {len(held)} held-out inputs")
        heldout = HeldOut(
            data=held,
            noise=p.noise,
            generator=generator(p.seed, "heldout-noise", device=run.device),
            device=run.device,
            batch_size=p.certification.batch_size,
        )
        for m in run.members:
            m.eval()
        fitted = p.ensemble.aggregator.calibrate(Members(run.members, p.engine), heldout)
        if run.world.main:
            write_json(path, {"aggregator": plain(describe(fitted, run.registry))})
        run.aggregator = fitted
