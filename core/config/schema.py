"""The schema of a pipeline file: one frozen attrs class per section, every section's fields and checks in one place.

A component is written ``{ name = "...", param = value }`` (or just ``"name"`` when the defaults suffice); the
fields below that hold components say which kind (:func:`component`, :func:`component_list`), and
:mod:`.structure` builds them from the registry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..components import (
    Aggregator,
    Attack,
    BaseLoss,
    Certifier,
    Dataset,
    Model,
    NoiseSampler,
    Regularizer,
    SmoothingStrategy,
    Stage,
)
from ..validators import in_range, non_empty, one_of, path_string

#: The largest seed: torch generators take 64-bit seeds, and derived seeds stay below 2**63.
MAX_SEED = 2**63 - 1


def component(kind: str, spec: Mapping[str, Any] | None = None, **field_kwargs: Any) -> Any:
    """A field holding one component of ``kind``; ``spec`` is the component used when the key is absent.

    Public as ``ensemblecert.component_field``: a component may hold another (iGAT holds its attack), written in
    TOML as a nested table and validated with its own path."""
    meta: dict[str, Any] = {"kind": kind}
    if spec is not None:
        meta["default_spec"] = dict(spec)
    return attrs.field(metadata=meta, **field_kwargs)


def component_list(
    kind: str, default: Sequence[Mapping[str, Any]], *, single: bool = False, empty: bool = False
) -> Any:
    """A field holding a list of components of ``kind`` (non-empty unless ``empty``); with ``single``, one
    component written without brackets is taken as a list of one."""
    return attrs.field(
        metadata={"kind": kind, "many": True, "single": single, "default_spec": [dict(d) for d in default]},
        validator=None if empty else non_empty,
    )


def section() -> Any:
    """A field holding a nested table; absent means all its defaults."""
    return attrs.field(metadata={"section": True})


def _device(_instance: Any, _attribute: Any, value: str) -> None:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise ValueError(f"must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {value!r}")


# ------------------------------------------------------------------------------------ schema
LAYOUTS = ("auto", "loop", "vmap", "fused")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "bf16-checked", "fp16-checked")


@attrs.frozen(kw_only=True)
class Engine:
    """``[engine]``: how members are evaluated (see the module docstring)."""

    #: ``auto``, ``loop``, ``vmap`` or ``fused``.
    layout: str = attrs.field(default="auto", validator=one_of(LAYOUTS))
    #: ``torch.compile`` the member evaluation; absent: members with convolutions.
    compile: bool | None = None
    #: Channels-last weights and inputs for convolutional members; absent: on a GPU at a reduced precision.
    channels_last: bool | None = None
    #: ``fp32`` (sound); ``tf32``, ``bf16``, ``fp16`` trade the soundness of the counts for speed;
    #: ``bf16-checked``, ``fp16-checked`` run at that precision and re-evaluate close decisions in float32.
    precision: str = attrs.field(default="fp32", validator=one_of(PRECISIONS))
    #: Checked precisions: close means a margin below this many times twice the precisions' probed difference.
    check_safety: float = attrs.field(default=4.0, validator=in_range(1.0))
    #: Checked precisions: the share of batches also evaluated in float32 and compared (0 to 1).
    check_audit: float = attrs.field(default=0.05, validator=in_range(0.0, 1.0))
    #: Checked precisions: samples run at both precisions before the margins are fixed.
    check_probe: int = attrs.field(default=1000, validator=in_range(1))
    #: Checked precisions: run the rest in float32 when a timed trial finds it faster than checking.
    check_fallback: bool = True

    @property
    def reduced(self) -> bool:
        """Whether members run below float32 anywhere (the checked precisions included)."""
        return self.precision != "fp32"

    @property
    def checked(self) -> bool:
        """Whether close decisions are re-evaluated in float32 (``bf16-checked``, ``fp16-checked``)."""
        return self.precision.endswith("-checked")


@attrs.frozen(kw_only=True)
class EnsembleConfig:
    """``[ensemble]``: the members and how they are combined and smoothed."""

    members: int = attrs.field(default=3, validator=in_range(1))
    model: Model = component("model", {"name": "mlp"})
    aggregator: Aggregator = component("aggregator", {"name": "we"})
    #: One strategy, or a list of them to compare on the same members, inputs and noise.
    smoothing: list[SmoothingStrategy] = component_list("smoothing", [{"name": "ebs"}], single=True)
    #: Checkpoint files to load instead of the run's own (one per member); implies no training.
    checkpoints: list[str] = attrs.field(factory=list, validator=attrs.validators.deep_iterable(path_string))


@attrs.frozen(kw_only=True)
class TrainingConfig:
    """``[training]``: SGD with momentum and a step learning-rate schedule, all members together."""

    enabled: bool = True
    epochs: int = attrs.field(default=30, validator=in_range(1))
    batch_size: int = attrs.field(default=64, validator=in_range(1))
    lr: float = attrs.field(default=0.05, validator=in_range(0, low_open=True))
    momentum: float = attrs.field(default=0.9, validator=in_range(0, 1, high_open=True))
    weight_decay: float = attrs.field(default=1e-4, validator=in_range(0))
    #: Multiply the learning rate by ``lr_gamma`` every ``lr_step`` epochs.
    lr_step: int = attrs.field(default=10, validator=in_range(1))
    lr_gamma: float = attrs.field(default=0.1, validator=in_range(0, 1, low_open=True))
    #: Each member's own loss (``gaussian``, ``smoothadv``).
    loss: BaseLoss = component("loss", {"name": "gaussian"})
    #: Terms over the whole ensemble added to the base loss (``drt``, ``adp``, ``gal``); with any, the members
    #: share one noise draw per batch.
    regularizers: list[Regularizer] = component_list("regularizer", [], empty=True)
    #: Noisy copies of each training input per batch (m; Yang22 App. F uses 2).
    copies: int = attrs.field(default=1, validator=in_range(1))
    #: Fine-tune: start from these member checkpoints (one file per member), or from the checkpoints/ of the one
    #: run directory named; empty: from the seeded initialisation.
    start_from: list[str] = attrs.field(factory=list, validator=attrs.validators.deep_iterable(path_string))
    #: Training noise; the pipeline's ``noise`` when absent.
    noise: NoiseSampler | None = component("noise", default=None)


@attrs.frozen(kw_only=True)
class CertificationConfig:
    """``[certification]``: which certifiers certify which test inputs, and the radii to report."""

    enabled: bool = True
    certifiers: list[Certifier] = component_list("certifier", [{"name": "cohen"}])
    #: Noisy copies evaluated per forward pass; bounds memory, not the statistics.
    batch_size: int = attrs.field(default=1000, validator=in_range(1))
    radii: list[float] = attrs.field(factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], validator=[non_empty, in_range(0)])
    #: Certify every ``skip``-th test input.
    skip: int = attrs.field(default=1, validator=in_range(1))
    #: Stop after this many inputs (all when absent).
    max_examples: int | None = attrs.field(default=None, validator=attrs.validators.optional(in_range(1)))


@attrs.frozen(kw_only=True)
class EvaluationConfig:
    """``[evaluation]``: empirical robustness, accuracy on clean test inputs and under each attack, per aggregator.
    Runs when ``attacks`` lists any."""

    attacks: list[Attack] = component_list("attack", [], empty=True)
    #: How the attacks see the ensemble: aggregators (``we``: the average; ``max``: the elementwise maximum).
    aggregators: list[Aggregator] = component_list("aggregator", [{"name": "we"}], single=True)
    #: Test inputs attacked together.
    batch_size: int = attrs.field(default=250, validator=in_range(1))
    #: Evaluate every ``skip``-th test input.
    skip: int = attrs.field(default=1, validator=in_range(1))
    #: Stop after this many inputs (all when absent).
    max_examples: int | None = attrs.field(default=None, validator=attrs.validators.optional(in_range(1)))


@attrs.frozen(kw_only=True)
class HeldoutConfig:
    """``[heldout]``: labelled data kept from training, never certified, for aggregators that calibrate
    (K-consensus ranks members on it, weighted soft voting fits weights). Carved only when one asks."""

    #: Share of the training data set aside, chosen with the pipeline seed; recorded in heldout.json.
    fraction: float = attrs.field(default=0.1, validator=in_range(0, 1, low_open=True, high_open=True))


@attrs.frozen(kw_only=True)
class LoggingConfig:
    """``[logging]``: where a run's progress goes besides the terminal and its own files."""

    #: Write TensorBoard event files under ``<output>/tensorboard`` (the ``tensorboard`` extra).
    tensorboard: bool = False


@attrs.frozen(kw_only=True)
class LauncherConfig:
    """``[launcher]``: the jobs ``--launcher slurm`` submits (through submitit; the ``slurm`` extra)."""

    #: The SLURM partition (the cluster's default when absent).
    partition: str | None = None
    #: GPUs per job.
    gpus: int = attrs.field(default=0, validator=in_range(0))
    #: CPU cores per job (the cluster's default when absent).
    cpus: int | None = attrs.field(default=None, validator=attrs.validators.optional(in_range(1)))
    #: Minutes a job may run; a job that reaches it is requeued and resumes from its files.
    time: int = attrs.field(default=240, validator=in_range(1))
    #: Jobs a pipeline's certification is split into (its inputs dealt out as torchrun's ranks do); 1: one job.
    shards: int = attrs.field(default=1, validator=in_range(1))


@attrs.frozen(kw_only=True)
class Pipeline:
    """A whole pipeline: data -> train (or load) members -> aggregate -> smooth -> certify -> report."""

    data: Dataset = component("dataset", {"name": "digits"})
    noise: NoiseSampler = component("noise", {"name": "gaussian", "sigma": 0.25})
    ensemble: EnsembleConfig = section()
    training: TrainingConfig = section()
    certification: CertificationConfig = section()
    evaluation: EvaluationConfig = section()
    heldout: HeldoutConfig = section()
    engine: Engine = section()
    logging: LoggingConfig = section()
    launcher: LauncherConfig = section()
    #: Seeds initialisation, shuffling and noise; any integer that fits in 63 bits.
    seed: int = attrs.field(default=0, validator=in_range(0, MAX_SEED))
    device: str = attrs.field(default="auto", validator=_device)
    #: Where checkpoints and results go (relative to the working directory).
    output: str = attrs.field(default="runs/default", validator=path_string)
    #: Extra plugin modules to load for this pipeline.
    plugins: list[str] = attrs.field(factory=list)
    #: Stages from plugins, run after the built-in ones (members, calibration, certification, evaluation, report).
    stages: list[Stage] = component_list("stage", [], empty=True)
    #: The configuration as read (after overrides), saved next to checkpoints and results.
    source: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False, metadata={"internal": True})
    #: Where the configuration came from (a file name), for messages.
    origin: str | None = attrs.field(default=None, eq=False, repr=False, metadata={"internal": True})
    #: The labels given to listed components (``label = "..."``), by the list's TOML path; ``None`` where none was
    #: given (see :mod:`ensemblecert.config.labels`).
    labels: Mapping[str, tuple[str | None, ...]] = attrs.field(
        factory=dict, repr=False, metadata={"internal": True, "labels": True}
    )

    @property
    def train_noise(self) -> NoiseSampler:
        return self.training.noise if self.training.noise is not None else self.noise


# ------------------------------------------------------------------------------ structuring
