"""The component kinds: the abstract classes every registered component subclasses.

A component is a *frozen attrs class*: its fields are the parameters a pipeline file may set
(``{ name = "cohen", n = 100000, alpha = 0.001 }``), validated by the fields' validators before the
component is built. The methods below are what the pipeline calls. ``core/hookspecs.py`` says when.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

import attrs
import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only
    from rich.console import Console

    from .ensemble.assembly import Ensemble, Members
    from .running.context import RunContext
    from .smoothing.sampling import SmoothedClassifier
    from .training.objectives import TrainBatch

#: The prediction a certifier reports when it abstains.
ABSTAIN = -1

#: The hard smoothed classifier, ``argmax_c P(f(x + e) = c)``: the base classifier's votes under noise.
HARD = "hard"
#: The soft smoothed classifier, ``argmax_c E[softmax(f(x + e))_c]``: its expected probabilities under noise.
SOFT = "soft"
#: The smoothed classifiers a certificate can be about. The two can predict different classes and have different
#: radii at the same input, so every certificate names one, and one radius never mixes bounds about both.
SMOOTHED_CLASSIFIERS = (HARD, SOFT)


# --------------------------------------------------------------------------------------- data
@attrs.frozen
class DataInfo:
    """What a model needs to know about its inputs.

    ``mean`` and ``std`` (one value per channel) are applied by the first layer of every model, so
    inputs, noise and certified radii all live in pixel space ([0, 1]).
    """

    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@attrs.frozen
class DataSplits:
    """A training and a test split (``torch.utils.data.Dataset`` of ``(image, label)`` pairs)."""

    train: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    info: DataInfo


class Dataset(ABC):
    """A data set. ``load`` is called once per run, before training and certification."""

    @abstractmethod
    def load(self) -> DataSplits:
        """Return the splits; raise :class:`ensemblecert.UserError` naming the missing files if absent."""

    def missing_files(self) -> list[str]:
        """The files or folders ``load`` would need and cannot find, each with its resolved path (none by default:
        a data set without files, or one that downloads them). Checked by ``ensemblecert validate`` and before a
        run, without loading anything."""
        return []


# -------------------------------------------------------------------------------------- models
class Model(ABC):
    """A base-model architecture. ``build`` is called once per ensemble member."""

    @abstractmethod
    def build(self, info: DataInfo) -> nn.Module:
        """Return a freshly initialised network from normalised inputs to logits ``[B, num_classes]``.

        The core seeds torch's global generator before the call (a different seed per member) and puts
        a normalisation layer in front of the returned network.
        """


# --------------------------------------------------------------------------------- aggregation
@attrs.frozen
class Aggregate:
    """An aggregator's answer for one batch.

    ``probs``: ensemble class probabilities ``[B, C]``. ``member_logits``: the members' logits
    ``[N, B, C]`` when every member was evaluated (``None`` when the aggregator skipped some).
    ``evaluations``: member forward passes spent, summed over the batch. ``settled``: for aggregators that
    stop early (K-consensus), how many of the batch's samples were decided before the last member.
    """

    probs: Tensor
    member_logits: Tensor | None
    evaluations: int
    settled: int | None = None


class Aggregator(ABC):
    """An aggregator (the papers' "ensemble protocol"): how the members' outputs become one prediction.

    Override :meth:`combine` for aggregators that need every member's output; override :meth:`forward`
    for aggregators that decide which members to evaluate (K-consensus evaluates members one by one and
    stops once K agree), and then declare :attr:`skips_members`.
    """

    #: Whether :meth:`forward` may leave members unevaluated (then per-member counts are unavailable).
    skips_members: ClassVar[bool] = False

    def forward(self, members: Members, x: Tensor) -> Aggregate:
        """Evaluate ``members`` on the batch ``x`` and aggregate. Called on every noisy batch."""
        logits = members.logits(x)
        return Aggregate(probs=self.combine(logits), member_logits=logits, evaluations=len(members) * x.shape[0])

    @abstractmethod
    def combine(self, member_logits: Tensor) -> Tensor:
        """Map member logits ``[N, B, C]`` to ensemble class probabilities ``[B, C]`` (rows sum to 1)."""

    def check_members(self, count: int) -> str | None:
        """Return why this aggregator cannot combine ``count`` members, or ``None``. Called once per run."""
        return None

    def needs_heldout(self) -> bool:
        """Whether :meth:`calibrate` needs held-out data (then the pipeline carves it from the training data)."""
        return False

    def differentiable(self) -> bool:
        """Whether the probabilities carry gradients back to the members' logits. Attacks see an ensemble through
        an aggregator (``evaluation.aggregators``, iGAT's), so only such an aggregator can be listed there."""
        return True

    def calibrate(self, members: Members, heldout: HeldOut) -> Aggregator:
        """Return this aggregator fitted to held-out data (member ranking, weights). Called once per run after
        training when :meth:`needs_heldout`; the returned component's fields are saved with the run and it is
        rebuilt from them when the run resumes, so put everything fitted into fields."""
        return self


@attrs.frozen
class HeldOut:
    """Held-out labelled data for calibrating an aggregator, never certified: a split of the training data.

    :meth:`noisy_batches` yields ``(x + noise, y)`` on ``device`` with noise from ``generator``.
    """

    data: torch.utils.data.Dataset
    noise: NoiseSampler
    generator: torch.Generator
    device: torch.device
    batch_size: int = 500

    def noisy_batches(self):
        loader = torch.utils.data.DataLoader(self.data, batch_size=self.batch_size, shuffle=False)
        for x, y in loader:
            x, y = x.to(self.device), torch.as_tensor(y).to(self.device)
            noise = self.noise.sample(x.shape, generator=self.generator, device=self.device, dtype=x.dtype)
            yield x + noise, y


# --------------------------------------------------------------------------------------- noise
class NoiseSampler(ABC):
    """A noise distribution for smoothing and noise-augmented training.

    ``family`` names the distribution so that a certifier can refuse noise its theorem does not
    cover (Cohen's radius holds for isotropic Gaussian noise only); ``sigma`` is its scale.
    """

    family: ClassVar[str]
    sigma: float

    @abstractmethod
    def sample(
        self,
        shape: Sequence[int],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Draw a tensor of noise of ``shape`` from ``generator`` on ``device``."""


# ------------------------------------------------------------------------------------ training
class BaseLoss(ABC):
    """Each member's own training loss on one mini-batch (cross-entropy on noisy inputs, SmoothAdv).

    It may choose the points the batch's noise is added to (``batch.centres``, e.g. adversarial examples)
    before anything reads ``batch.inputs()``; regularizers then see the same noisy inputs and outputs.
    """

    @abstractmethod
    def terms(self, batch: TrainBatch) -> Mapping[str, Tensor]:
        """Named scalar terms (summed into the loss, shown per term in the progress bar and the epoch log)."""


class Regularizer(ABC):
    """A term of the training objective over the whole ensemble (DRT, ADP, GAL), added to the base loss."""

    @abstractmethod
    def terms(self, batch: TrainBatch) -> Mapping[str, Tensor]:
        """Named scalar terms, already weighted (summed into the loss; metrics go to ``batch.log``)."""

    def check_members(self, count: int) -> str | None:
        """Return why this regularizer cannot train ``count`` members, or ``None``. Called once per run."""
        return None


# ------------------------------------------------------------------------------- certification
@attrs.frozen
class Certificate:
    """What a certifier concludes for one input.

    ``prediction`` is the smoothed classifier's class or :data:`ABSTAIN`; ``radius`` the certified L2
    radius (0 when abstaining); ``samples`` the number of noise draws spent (selection included);
    ``details`` certifier-specific numbers (bounds, counts) that end up in the results table;
    ``classifier`` the smoothed classifier the promise is about (:data:`HARD` or :data:`SOFT`), filled in by
    the certification loop from the certifier's declaration (:meth:`Certifier.classifier`).
    """

    prediction: int
    radius: float
    samples: int
    details: Mapping[str, float] = attrs.field(factory=dict)
    classifier: str = HARD

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN


@attrs.frozen
class CertifyPlan:
    """CERTIFY's sampling plan: ``n0`` selection draws, ``n`` estimation draws, a lower bound at level ``alpha``.
    Strategies that run CERTIFY themselves (EAS runs it per member) take it from the certifier."""

    n0: int
    n: int
    alpha: float


class Decision(ABC):
    """One input's decision by a certifier that decides draw by draw (:meth:`Certifier.decision`), driven from
    outside: the certification loop gives every undecided input the draws it :meth:`wants`, many inputs in one
    batch, each from the input's own noise stream, so the certificate is the one the input would get alone."""

    @abstractmethod
    def wants(self) -> int:
        """How many more draws the input needs before it may decide (0: decided)."""

    @abstractmethod
    def observe(self, classes: Tensor) -> None:
        """The classes the base classifier returned on the input's next draws, in order (1-D, on the CPU; at most
        as many as :meth:`wants` said)."""

    @abstractmethod
    def certificate(self) -> Certificate:
        """The certificate, once decided (``wants() == 0``); its ``samples`` are the draws the decision looked at."""


class Certifier(ABC):
    """A certifier. ``certify`` is called once per test input.

    It draws whatever it needs from ``smoothed`` (in one go, or in stages that stop early) and is the
    only place where statistics become a promise; see ``ensemblecert.testing`` for the soundness
    check every certifier must pass. What the core and strategies may rely on is declared here:
    :attr:`noise_families`, :meth:`classifier`, :meth:`certify_plan`, :meth:`failure_probability` and
    :meth:`targets`.
    """

    #: The noise families (``NoiseSampler.family``) the certifier's theorem covers; ``None``: any.
    noise_families: ClassVar[tuple[str, ...] | None] = None
    #: Whether the certifier decides draw by draw through :meth:`decision` (the certification loop then fills each
    #: batch with the draws of many undecided inputs).
    stepwise: ClassVar[bool] = False
    #: Whether the certifier answers the certified-accuracy question for a given label (:meth:`certify_label`:
    #: does the smoothed classifier return the input's true label with at least a radius?) instead of
    #: certifying its own prediction (:meth:`certify`). Its rows certify the true label, not a prediction.
    needs_label: ClassVar[bool] = False

    def classifier(self) -> str:
        """The smoothed classifier the certificates are about: :data:`HARD` (class counts) or :data:`SOFT`
        (expected softmax). The soundness harness checks each certificate against that classifier's exact radius."""
        return HARD

    def certify_plan(self) -> CertifyPlan | None:
        """CERTIFY's plan when this certifier is CERTIFY (so a strategy may run it per member), else ``None``."""
        return None

    def failure_probability(self) -> float | None:
        """The probability (``alpha``) with which a certificate may be wrong, which the soundness harness tests
        against; ``None`` when the certifier does not say (then the harness must be told)."""
        return None

    def targets(self) -> tuple[float, ...] | None:
        """The radii a target-radius certifier decides (it certifies one of them or none, never a radius it computed):
        tables show them in its row and leave its other radii and its ACR blank, which are not comparable with a
        certifier's that bounds each input's radius. ``None`` (the default): each certificate's radius is computed."""
        return None

    @abstractmethod
    def certify(self, smoothed: SmoothedClassifier, x: Tensor, generator: torch.Generator | None = None) -> Certificate:
        """Certify the single input ``x`` (no batch dimension) against ``smoothed``."""

    def decision(self, sigma: float, label: int | None) -> Decision:
        """For a :attr:`stepwise` certifier: a fresh :class:`Decision` for one input under noise of scale ``sigma``
        (``label``: its true class, for a certifier that :attr:`needs_label`)."""
        raise NotImplementedError(f"{type(self).__name__} draws for itself in certify()")

    def certify_label(
        self, smoothed: SmoothedClassifier, x: Tensor, label: int, generator: torch.Generator | None = None
    ) -> Certificate:
        """For a certifier that :attr:`needs_label`: the certificate that the smoothed classifier returns ``label``
        at ``x`` with the certificate's radius (prediction ``label``), or an abstention. Called instead of
        :meth:`certify`."""
        raise NotImplementedError(f"{type(self).__name__} certifies its prediction; call certify()")

    def check_noise(self, noise: NoiseSampler) -> str | None:
        """Return why ``noise`` is unsupported by this certifier, or ``None`` if it is fine (by default: whether
        its family is among :attr:`noise_families`)."""
        families = self.noise_families
        if families is None or noise.family in families:
            return None
        return (
            f"this certifier certifies {' or '.join(families)} noise only, got {noise.family!r} noise; "
            'use noise.name = "gaussian" or another certifier'
        )


# ----------------------------------------------------------------------------------- smoothing
class SmoothingStrategy(ABC):
    """How noise and ensembling are combined (EBS smooths the aggregated ensemble; EAS smooths members)."""

    #: Whether the strategy needs every member's prediction on every draw (per-member counts), which an
    #: aggregator that :attr:`~Aggregator.skips_members` cannot give.
    needs_member_counts: ClassVar[bool] = False

    @abstractmethod
    def smooth(self, ensemble: Ensemble, noise: NoiseSampler, *, batch_size: int) -> SmoothedClassifier:
        """Return the smoothed classifier that certifiers sample from. Called once per run."""

    def certificate(
        self,
        certifier: Certifier,
        smoothed: SmoothedClassifier,
        x: Tensor,
        generator: torch.Generator | None = None,
        label: int | None = None,
    ) -> Certificate:
        """The certificate of ``x`` by ``certifier`` under this strategy (by default: the certifier's own on
        ``smoothed``; ``label`` is given, and passed on, only to a certifier that
        :attr:`~Certifier.needs_label`); strategies whose certificate combines per-member ones override this."""
        if certifier.needs_label:
            if label is None:
                raise ValueError(f"{type(certifier).__name__} certifies a given label; none was given")
            return certifier.certify_label(smoothed, x, label, generator)
        return certifier.certify(smoothed, x, generator)

    def check_certifier(self, certifier: Certifier) -> str | None:
        """Return why this strategy cannot certify with ``certifier``, or ``None``. Called once per run."""
        return None

    def classifier(self, certifier: Certifier) -> str:
        """The smoothed classifier this strategy's certificates with ``certifier`` are about (the certifier's)."""
        return certifier.classifier()


# -------------------------------------------------------------------------------------- attacks
#: What an attack sees: a differentiable map from inputs ``[B, ...]`` to class probabilities ``[B, C]``.
ProbabilityModel = Callable[[Tensor], Tensor]


class Attack(ABC):
    """An adversarial attack: inputs within a norm ball around ``x``, in pixel space, clipped to [0, 1].

    The model is seen through an aggregator (an aggregator's ``combine``: the average or the elementwise maximum
    of the members' probabilities, Deng23 Eq. 12), so one attack serves single models and ensembles alike.
    """

    #: The norm of the ball (``"linf"`` or ``"l2"``) and its radius, for reports.
    norm: ClassVar[str]

    @abstractmethod
    def perturb(
        self, model: ProbabilityModel, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Adversarial versions of the batch ``x`` (labels ``y``), each within the ball and in [0, 1]."""

    def check_classes(self, num_classes: int) -> str | None:
        """Return why this attack cannot run on ``num_classes`` classes, or ``None``. Called once per run."""
        return None


# --------------------------------------------------------------------------------------- stages
class Stage(ABC):
    """One stage of a run (train or load the members, calibrate, certify, evaluate, or a plugin's own).

    A run is a list of stages, each run in turn with the run's shared
    :class:`~ensemblecert.running.context.RunContext`. The core asks each stage, through these declarations only,
    what it owns and what its results depend on, and resumes or refuses it in one place
    (:func:`ensemblecert.running.context.resume_or_refuse`): a stage whose outputs exist and whose fingerprint
    changed is refused (or, with ``on_change = "redo"``, run again from scratch), so results of different
    configurations are never mixed. Stages from plugins are frozen attrs classes like any component,
    listed under ``stages = [...]`` in a pipeline and run after the built-in ones.
    """

    #: The paths under the output directory this stage writes (glob patterns allowed). ``--fresh`` removes the
    #: union of every stage's outputs; a stage whose outputs exist is resuming.
    outputs: ClassVar[tuple[str, ...]] = ()
    #: The settings this stage's outputs do not depend on, by TOML path (a table's path covers all of it), each with
    #: the reason. Every other setting of the resolved configuration is part of the stage's fingerprint, so a new
    #: setting is covered until a stage declares it harmless. (``output``, where the files go, is never part of it.)
    independent_of: ClassVar[Mapping[str, str]] = {}
    #: What to do when outputs exist but the fingerprint changed: ``"refuse"`` (ask for --fresh) or ``"redo"``.
    on_change: ClassVar[str] = "refuse"
    #: The refusal, after the name of the first output found: what is wrong and how to fix it.
    refusal: ClassVar[str] = (
        "holds results of a different configuration; run with --fresh to replace them or choose another output "
        "directory"
    )

    def enabled(self, run: RunContext) -> bool:
        """Whether this stage runs in this run (default: always)."""
        return True

    def check(self, run: RunContext) -> list[str]:
        """Problems (``"toml.path: message"``) found once the data is loaded, before any stage runs."""
        return []

    def fingerprint(self, run: RunContext) -> object | None:
        """Plain data naming everything the outputs depend on (``None``: the stage writes nothing a later run
        resumes from). The default is every setting but those in :attr:`independent_of` (``run.settings(self)``);
        a stage that reads what earlier stages produced adds it (the members' weights). Called after the earlier
        stages ran."""
        return run.settings(self)

    def recorded(self, run: RunContext, name: str) -> str | None:
        """The digest of the fingerprint the existing outputs were made with (default: what ``stages.json`` recorded
        for the stage registered as ``name``); a stage whose outputs carry it themselves may read it from them."""
        return run.recorded(name)

    @abstractmethod
    def run(self, run: RunContext) -> None:
        """Do the work: read what earlier stages left in ``run``, write outputs as they are produced (on rank 0
        unless each rank writes its own file), resume from outputs already there, and leave products in ``run``."""


# ------------------------------------------------------------------------------------- commands
class Command(ABC):
    """A subcommand of the ``ensemblecert`` command line (``ensemblecert <name> ...``), for work on a run's
    results that belongs to one method (an analysis, a figure). Its docstring's first line is its ``--help``
    summary and the whole docstring its description."""

    @abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the command's arguments on its own ``argparse`` parser."""

    @abstractmethod
    def run(self, args: argparse.Namespace, console: Console) -> int:
        """Do the work and return the exit status; raise :class:`~ensemblecert.UserError` for bad input."""
