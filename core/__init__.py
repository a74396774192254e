"""ensemblecert: certify (L2) and train robust ensembles with randomized smoothing.

The public API, in two groups (docs/api.md lists both, and a test keeps the list and ``__all__`` equal):

* for running pipelines and certifying: ``run``, ``load_pipeline``, ``run_pipeline``, ``load_study``, ``run_study``,
  ``certify_inputs``,
  ``load_registry``, ``build_component``, the results (``RunResult``, ``ExampleResult``, ``Summary``,
  ``read_results``) and the errors;
* for plugin authors: the base class of every component kind (``Certifier``, ``Aggregator``, ``Stage``, ...), the
  ``hookimpl`` decorator, and the sampling and statistics a component builds on; with ``ensemblecert.validators``
  (field checks), ``ensemblecert.testing`` (the soundness harness) and ``ensemblecert.running.context`` (for run
  stages).

Plugins import only these. Every other module is internal. Names are imported on first use (PEP 562), so
that ``import ensemblecert`` and the command line's ``--help`` do not load torch.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any


def _public_names() -> dict[str, tuple[str, str]]:
    """Each public name -> (its module, relative to this package; its name there), read from the imports under
    ``if TYPE_CHECKING:`` at the end of this file: one list serves type checkers and the lazy loader (as scientific
    Python's lazy_loader reads a stub)."""
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    block = next(n for n in tree.body if isinstance(n, ast.If) and isinstance(n.test, ast.Name))
    return {
        alias.asname or alias.name: ("." * node.level + (node.module or ""), alias.name)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


_NAMES = _public_names()
__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, original = _NAMES[name]
    value = getattr(importlib.import_module(module, __name__), original)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and editors see: the same names, imported eagerly
    from .checkpoints import check_writable, write_text
    from .components import (
        ABSTAIN,
        HARD,
        SMOOTHED_CLASSIFIERS,
        SOFT,
        Aggregate,
        Aggregator,
        Attack,
        BaseLoss,
        Certificate,
        Certifier,
        CertifyPlan,
        Command,
        DataInfo,
        Dataset,
        DataSplits,
        Decision,
        HeldOut,
        Model,
        NoiseSampler,
        ProbabilityModel,
        Regularizer,
        SmoothingStrategy,
        Stage,
    )
    from .config import Pipeline, build_component, describe, load_pipeline
    from .config import component as component_field
    from .ensemble.assembly import Ensemble, build_member
    from .ensemble.engine import Engine, Members
    from .errors import ConfigError, UserError
    from .hookspecs import hookimpl
    from .manager import load_registry
    from .registry import Component, Registry
    from .reports.frames import results_frame, summary_frame
    from .running.evaluation import probability_model
    from .running.pipeline import RunResult, run, run_pipeline
    from .running.study import Study, load_study, run_study
    from .smoothing.certification import certify_inputs, input_generator
    from .smoothing.decisions import decide, decide_many
    from .smoothing.expectations import (
        EXPECTATIONS,
        PROCEDURES,
        ExpectationDraws,
        draw_expectations,
        hoeffding_width,
        multinomial_bounds,
        softmax_bounds,
    )
    from .smoothing.results import ExampleResult, Summary, read_results, summarize
    from .smoothing.sampling import MonteCarloSampler, SharedTallies, SmoothedClassifier, Tally, Usage, evaluation_mode
    from .smoothing.stats import (
        clopper_pearson_interval,
        clopper_pearson_lower,
        clopper_pearson_lower_gap,
        clopper_pearson_upper,
        clopper_pearson_upper_gap,
        gaussian_radius,
        randomized_clopper_pearson_lower_gap,
    )
    from .training.objectives import TrainBatch
