"""TensorBoard event files of a run (``[logging] tensorboard = true``), under ``<output>/tensorboard``.

What goes in: per training epoch every term of the objective, every metric, each member's base loss, the learning
rate and the epoch's seconds (tags ``train/...``); during certification the inputs certified and the running
accuracy (``certify/...``, step = inputs done); at its end, per certifier, certified accuracy at each configured
radius, ACR and samples per input (``certified/...``); a study's point adds its swept settings as hyperparameters
with those results as metrics (TensorBoard's HPARAMS tab compares the points). Only the main process writes.
Written through ``torch.utils.tensorboard``, which needs the ``tensorboard`` package (``pip install
'ensemblecert[tensorboard]'``). TensorBoard reads a run folder while it is written: ``tensorboard --logdir runs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import UserError

#: The folder of a run's event files, under its output directory.
FOLDER = "tensorboard"


class Board:
    """A run's TensorBoard writer, opened on first use; every method does nothing when ``enabled`` is false."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.folder, self.enabled = Path(out) / FOLDER, enabled
        self._writer: Any = None

    def _open(self) -> Any:
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError(
                    "logging.tensorboard: needs the tensorboard package; pip install 'ensemblecert[tensorboard]' "
                    "or set logging.tensorboard = false"
                ) from None
            self._writer = SummaryWriter(log_dir=str(self.folder))
        return self._writer

    def scalars(self, values: Mapping[str, float], step: int, prefix: str) -> None:
        """``prefix/key`` for every value, at ``step``."""
        if not self.enabled:
            return
        writer = self._open()
        for key, value in values.items():
            writer.add_scalar(f"{prefix}/{key}", float(value), step)
        writer.flush()

    def hparams(self, settings: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """A study point's swept ``settings`` as hyperparameters, with its results as ``metrics``."""
        if not self.enabled:
            return
        plain = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in settings.items()}
        self._open().add_hparams(plain, {f"hparam/{k}": float(v) for k, v in metrics.items()}, run_name=".")
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def results_of(summary: Any) -> dict[str, float]:
    """A certification summary as flat metrics: ``<certifier>/r=<radius>`` (certified accuracy), ``<certifier>/acr``
    and ``<certifier>/samples_per_input``."""
    out: dict[str, float] = {}
    for label, s in summary.certifiers.items():
        for radius, accuracy in s.certified_accuracy.items():
            out[f"{label}/r={float(radius):g}"] = accuracy
        out[f"{label}/acr"] = s.acr
        out[f"{label}/samples_per_input"] = s.mean_samples
    return out
