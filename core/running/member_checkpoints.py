"""A member's checkpoint: its weights with what produced them, read back with every mismatch named.

Besides this project's own files, a member loads the checkpoints people already have: those published with the
original randomized-smoothing code and its forks (a dict with ``arch`` and ``state_dict``, the network behind a
normalization layer without state of its own, so its keys start with ``1.``, or ``1.module.`` when saved from
``DataParallel``), and plain state dicts of a network (torchvision's included, with or without ``module.``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints import load_checkpoint
from ..components import DataInfo
from ..errors import UserError

CHECKPOINT_FORMAT = "ensemblecert.member/1"

#: The architectures the published randomized-smoothing checkpoints name (``arch``), as this project's models.
PUBLISHED_ARCHITECTURES = {"cifar_resnet20": "resnet20", "cifar_resnet110": "resnet110", "resnet50": "resnet50"}


def published_architecture(ckpt: Mapping[str, Any], path: Path) -> str | None:
    """The model a checkpoint of another layout names (``arch``), as a registered model name; ``None`` when it
    names none (or is this project's own, which records its model otherwise)."""
    arch = ckpt.get("arch")
    if ckpt.get("format") == CHECKPOINT_FORMAT or arch is None:
        return None
    if arch not in PUBLISHED_ARCHITECTURES:
        raise UserError(
            f"{path}: names the architecture {arch!r}, which ensemblecert does not know (known: "
            f"{', '.join(PUBLISHED_ARCHITECTURES)}); save its state_dict alone and set ensemble.model to the "
            "model it fits"
        )
    return PUBLISHED_ARCHITECTURES[str(arch)]


def network_weights(ckpt: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The network's own weights from a checkpoint of another layout: a published ``{arch, state_dict}`` dict or a
    plain state dict, with the normalization layer's index (``1.``) and ``DataParallel``'s ``module.`` taken off."""
    weights = ckpt.get("state_dict") if isinstance(ckpt.get("state_dict"), Mapping) else ckpt
    if not weights or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise UserError(
            f"{path}: not a checkpoint ensemblecert reads: neither its own member file nor a dict of weights "
            "(a state_dict, alone or with arch as the randomized-smoothing code saves it)"
        )
    keys = list(weights)
    if all(k.startswith(("0.", "1.")) for k in keys):  # Sequential(normalization, network)
        weights = {k[2:]: v for k, v in weights.items() if k.startswith("1.")}  # the normalization is the data's
    if weights and all(k.startswith("module.") for k in weights):  # saved from DataParallel
        weights = {k[len("module.") :]: v for k, v in weights.items()}
    return dict(weights)


def load_member(
    member: nn.Module,
    path: Path,
    *,
    model: Any,
    info: DataInfo | None = None,
    fingerprint: str | None = None,
    ckpt: Mapping[str, Any] | None = None,
    foreign: bool = False,
) -> None:
    """Load the member checkpoint ``path`` (or its contents ``ckpt``, already read) into ``member`` (in evaluation
    mode). ``model`` is the configured model (for messages); ``info`` the data it must have been trained for;
    ``fingerprint``, when given, the training configuration it must come from. With ``foreign``, checkpoints of
    other layouts are read too (see the module docstring). A UserError says what does not fit."""
    ckpt = ckpt if ckpt is not None else load_checkpoint(path)
    if foreign and ckpt.get("format") != CHECKPOINT_FORMAT:
        _load_foreign(member, path, ckpt, model)
        return
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


def _load_foreign(member: nn.Module, path: Path, ckpt: Mapping[str, Any], model: Any) -> None:
    """Load a checkpoint of another layout into the member's network (its normalization stays the data's)."""
    weights = network_weights(ckpt, path)
    try:
        member.get_submodule("net").load_state_dict(weights)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]  # missing, unexpected, sizes
        arch = ckpt.get("arch")
        said = f" (the file says arch {arch!r})" if arch is not None else ""
        raise UserError(
            f"{path}: its weights{said} do not fit the model {model}: {'; '.join(lines)[:400]}; set ensemble.model "
            "to the architecture the file was saved from"
        ) from None
    member.eval()
