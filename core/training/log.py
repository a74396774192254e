"""The epoch log of a training run: every term and metric per epoch, saved as the run goes, and its plot.

``train_log.json`` holds one record per finished epoch (``epoch``, ``loss``, each term of the objective, each
metric such as DRT's share of valid pairs, each member's base loss ``member i ce``, ``lr``, ``seconds``); it is
rewritten atomically after every epoch and cut back to the resumed epoch when an interrupted run resumes.
``train_log.png`` plots it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from ..checkpoints import write_json
from ..errors import UserError

#: Columns that are bookkeeping, not terms.
_META = ("epoch", "lr", "seconds")
#: How one member's own columns start (``member 0 ce``): logged and kept, left out of the status line and the plot.
MEMBER = "member "


class TrainLog:
    """The records of ``path`` up to ``resume_epoch`` (none when starting afresh), extended epoch by epoch."""

    def __init__(self, path: str | Path, resume_epoch: int = 0) -> None:
        self.path = Path(path)
        self.records: list[dict[str, float]] = []
        if resume_epoch and self.path.exists():
            try:
                records = json.loads(self.path.read_text(encoding="utf-8"))["epochs"]
            except (ValueError, KeyError, TypeError, OSError):
                raise UserError(f"{self.path}: damaged; run with --fresh to train again") from None
            self.records = [r for r in records if isinstance(r, dict) and r.get("epoch", 0) <= resume_epoch]

    def add(self, epoch: int, record: Mapping[str, float]) -> None:
        self.records.append({"epoch": epoch, **record})
        write_json(self.path, {"epochs": self.records})

    def plot(self, path: str | Path) -> Path | None:
        """Save the loss and every term (left) and every metric in [0, 1] (right) against the epoch."""
        if not self.records:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = [k for k in self.records[-1] if k not in _META and not k.startswith(MEMBER)]
        shares = [k for k in keys if k.endswith("share")]  # shares of a whole, drawn on their own [0, 1] axis
        terms = [k for k in keys if k not in shares]
        epochs = [r["epoch"] for r in self.records]
        fig, axes = plt.subplots(1, 2 if shares else 1, figsize=(9 if shares else 5.5, 3.6), dpi=120, squeeze=False)
        for k in terms:
            axes[0, 0].plot(epochs, [r.get(k, float("nan")) for r in self.records], label=k, lw=2 if k == "loss" else 1)
        axes[0, 0].set_xlabel("epoch")
        axes[0, 0].set_ylabel("mean over the epoch's batches")
        axes[0, 0].grid(alpha=0.3)
        axes[0, 0].legend(fontsize=8)
        if shares:
            for k in shares:
                axes[0, 1].plot(epochs, [r.get(k, float("nan")) for r in self.records], label=k)
            axes[0, 1].set_ylim(0, 1)
            axes[0, 1].set_xlabel("epoch")
            axes[0, 1].grid(alpha=0.3)
            axes[0, 1].legend(fontsize=8)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
        plt.close(fig)
        return path


def status(record: Mapping[str, float]) -> str:
    """A one-line progress status: the loss, every term and metric."""
    parts = [
        f"{k} {v:.3g}" if not k.endswith("share") else f"{k} {v:.0%}"
        for k, v in record.items()
        if k not in _META and not k.startswith(MEMBER)
    ]
    return " · ".join(parts)
