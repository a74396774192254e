"""A member's checkpoint: its weights with what produced them, read back with every mismatch named."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoints import load_checkpoint
from ..components import DataInfo
from ..errors import UserError

CHECKPOINT_FORMAT = "ensemblecert.member/1"


def load_member(
    member: nn.Module,
    path: Path,
    *,
    model: Any,
    info: DataInfo | None = None,
    fingerprint: str | None = None,
) -> None:
    """Load the member checkpoint ``path`` into ``member`` (in evaluation mode). ``model`` is the configured model
    (for messages); ``info`` the data it must have been trained for; ``fingerprint``, when given, the training
    configuration it must come from. A UserError says which of these does not fit."""
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != CHECKPOINT_FORMAT or not isinstance(ckpt.get("state_dict"), Mapping):
        raise UserError(f"{path}: not an ensemblecert member checkpoint (no {CHECKPOINT_FORMAT} weights in it)")
    if fingerprint is not None and ckpt.get("fingerprint") != fingerprint:
        raise UserError(
            f"{path}: was trained with a different configuration than this pipeline's; "
            "run with --fresh to retrain, choose another output directory, or set training.enabled = false "
            "to certify the existing members as they are"
        )
    data_info = ckpt.get("data_info")
    saved: Mapping[str, Any] = data_info if isinstance(data_info, Mapping) else {}
    if info is not None and saved.get("num_classes") not in (None, info.num_classes):
        raise UserError(
            f"{path}: was saved for {saved['num_classes']} classes, but this pipeline's data has "
            f"{info.num_classes}; use a checkpoint trained on data with {info.num_classes} classes"
        )
    if info is not None and saved.get("input_shape") not in (None, list(info.input_shape)):
        raise UserError(
            f"{path}: was saved for inputs of shape {tuple(saved['input_shape'])}, but this pipeline's data "
            f"has {tuple(info.input_shape)}; use a checkpoint trained on the same data"
        )
    try:
        member.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, KeyError, ValueError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        trained = ckpt.get("model")
        what = (
            f"it was saved for the model {trained}, this pipeline's is {model}"
            if trained not in (None, model)
            else f"it does not fit the model {model}"
        )
        raise UserError(f"{path}: {what} ({first})") from None
    member.eval()
