"""The plugin contract: one registration hook per component kind.

Every component, built-in or third-party, arrives through these hooks. A plugin is any module or
object with functions decorated by :data:`hookimpl` and named after a hook below; it is found
through the ``ensemblecert`` entry-point group (the built-ins use the same group) or named in a
pipeline file (``plugins = ["my_package.my_plugin"]``)::

    from ensemblecert import Certifier, hookimpl

    @hookimpl
    def register_certifiers(register):
        register("my-certifier", MyCertifier)

``register(name, cls)`` takes a component name (what a pipeline file writes as ``name = "..."``) and a
frozen attrs class that subclasses the kind's base class from :mod:`ensemblecert.components`; its
fields are the parameters a pipeline may set and their validators check them. Registering a name
twice within a kind is an error that names both plugins.

All hooks are called once per plugin manager, i.e. once per run, before the pipeline file is
resolved, and return nothing. A function named ``register_*`` that matches no hook below, or a hook function
without the ``@hookimpl`` decorator, is an error (so a misspelt or undecorated hook fails loudly instead of
silently doing nothing).

How the pipeline uses each kind, in order:
data set -> base models (one per member) -> base loss + regularizers with noise ->
aggregator -> smoothing strategy -> certifiers -> results; attacks for
empirical robustness; the stages a run is made of; and commands that work on a run's results from the command
line.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT_NAME = "ensemblecert"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Decorator for plugin functions that implement a hook.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: The callback each registration hook receives: ``register(name, cls)``.
Register = Callable[[str, type], None]


@hookspec
def register_datasets(register: Register) -> None:
    """Register data sets: subclasses of :class:`ensemblecert.Dataset`.

    ``Dataset.load()`` is called once per run and returns the train and test splits plus a
    :class:`~ensemblecert.DataInfo` (input shape, class count, per-channel mean and std).
    """


@hookspec
def register_models(register: Register) -> None:
    """Register base-model architectures: subclasses of :class:`ensemblecert.Model`.

    ``Model.build(info)`` is called once per ensemble member, with a per-member seed already set,
    and returns a fresh ``torch.nn.Module`` mapping normalised inputs to logits. The core prepends
    the input normalisation, so noise is always added in pixel space.
    """


@hookspec
def register_aggregators(register: Register) -> None:
    """Register aggregators: subclasses of :class:`ensemblecert.Aggregator`.

    ``Aggregator.forward(members, x)`` is called on every (noisy) batch during certification and
    prediction. It returns an :class:`~ensemblecert.Aggregate` holding class probabilities, the member
    logits it computed and how many member evaluations it spent; it may skip members (K-consensus).
    ``Aggregator.check_members(count)`` is called once per run to refuse an ensemble size it cannot combine.
    When ``Aggregator.needs_heldout()``, the pipeline sets part of the training data aside and, after
    training, calls ``Aggregator.calibrate(members, heldout)`` once; the fitted copy it returns is saved
    with the run (rank members, fit weights) and rebuilt from its fields when the run resumes.
    """


@hookspec
def register_losses(register: Register) -> None:
    """Register base training losses: subclasses of :class:`ensemblecert.BaseLoss`.

    ``BaseLoss.terms(batch)`` is called on every training batch with a :class:`~ensemblecert.TrainBatch`
    and returns named scalar terms (each member's own loss, e.g. cross-entropy on noisy inputs). It may set
    ``batch.centres`` (adversarial examples, SmoothAdv) before the noisy inputs are first read.
    """


@hookspec
def register_regularizers(register: Register) -> None:
    """Register regularizers: subclasses of :class:`ensemblecert.Regularizer`, terms added to the base loss.

    ``Regularizer.terms(batch)`` is called on every training batch after the base loss, with the same
    :class:`~ensemblecert.TrainBatch`: the noisy inputs and every member's outputs on them are computed once and
    shared (``batch.inputs()``, ``batch.logits()``), all members see one noise draw, and the inputs require grad
    so a term can couple members through their input gradients (DRT, GAL). ``check_members(count)`` is called
    once per run to refuse an ensemble size the term cannot train.
    """


@hookspec
def register_noise_samplers(register: Register) -> None:
    """Register noise distributions: subclasses of :class:`ensemblecert.NoiseSampler`.

    ``NoiseSampler.sample(shape, generator=..., device=...)`` is called once per noisy batch in
    training and certification; ``family`` and ``sigma`` tell certifiers what they are facing.
    """


@hookspec
def register_certifiers(register: Register) -> None:
    """Register certifiers: subclasses of :class:`ensemblecert.Certifier`.

    ``Certifier.certify(smoothed, x, generator)`` is called once per test input. It draws samples
    from the :class:`~ensemblecert.SmoothedClassifier` (``smoothed.tally(x, n, ...)`` returns class
    counts, and on request softmax sums and per-member counts), as many times as it likes, and
    returns a :class:`~ensemblecert.Certificate`. ``check_noise`` is called once per run before any
    work, so a certifier can refuse a noise distribution its theorem does not cover.
    """


@hookspec
def register_smoothing_strategies(register: Register) -> None:
    """Register smoothing strategies: subclasses of :class:`ensemblecert.SmoothingStrategy`.

    ``SmoothingStrategy.smooth(ensemble, noise, batch_size=...)`` is called once per run and returns
    the smoothed classifier certifiers sample from; ``SmoothingStrategy.certificate(certifier, ...)`` is
    called once per input and certifier, so a strategy can combine per-member certificates.
    """


@hookspec
def register_attacks(register: Register) -> None:
    """Register adversarial attacks: subclasses of :class:`ensemblecert.Attack`.

    ``Attack.perturb(model, x, y, generator=...)`` is called on batches of test inputs by the evaluation stage
    and by training objectives that train on adversarial examples (iGAT). ``model`` maps inputs to class
    probabilities and is differentiable: a single network's softmax, or an ensemble seen through an aggregator
    (the average or the elementwise maximum of its members' probabilities). It returns inputs within the
    attack's norm ball around ``x``, clipped to [0, 1].
    """


@hookspec
def register_stages(register: Register) -> None:
    """Register run stages: subclasses of :class:`ensemblecert.Stage`.

    The built-in stages (members, calibration, certification, evaluation, report) are registered by the core itself. A
    pipeline lists further stages under ``stages = [{ name = "...", ... }]``; they run after the built-in ones, in
    order, each with the run's :class:`~ensemblecert.running.context.RunContext`. ``Stage.outputs`` names the files
    the stage owns (``--fresh`` removes them), ``Stage.fingerprint(run)`` what they depend on (a changed fingerprint
    with outputs present is refused), ``Stage.check(run)`` problems found once the data is loaded, and
    ``Stage.run(run)`` does the work, resuming from its outputs.
    """


@hookspec
def register_commands(register: Register) -> None:
    """Register command-line commands: subclasses of :class:`ensemblecert.Command`.

    Called once when ``ensemblecert`` starts. Each name becomes ``ensemblecert <name>``: the command's
    ``add_arguments(parser)`` declares its arguments and ``run(args, console)`` does the work and returns the
    exit status. A command may not take the name of a built-in one (run, validate, plugins, default).
    """
