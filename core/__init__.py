"""ensemblecert: certify (L2) and train robust ensembles with randomized smoothing.

The public API, in two groups (docs/api.md lists both, and a test keeps the list and ``__all__`` equal):

* for running pipelines and certifying: ``run``, ``load_pipeline``, ``run_pipeline``, ``certify_inputs``,
  ``load_registry``, ``build_component``, the results (``RunResult``, ``ExampleResult``, ``Summary``,
  ``read_results``) and the errors;
* for plugin authors: the base class of every component kind (``Certifier``, ``Aggregator``, ``Stage``, ...), the
  ``hookimpl`` decorator, and the sampling and statistics a component builds on; with ``ensemblecert.validators``
  (field checks), ``ensemblecert.testing`` (the soundness harness) and ``ensemblecert.context`` (for run stages).

Plugins import only these. Every other module is internal.
"""

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
from .running.evaluation import probability_model
from .running.pipeline import RunResult, run, run_pipeline
from .smoothing.certification import certify_inputs, input_generator
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
)
from .training.objectives import TrainBatch

__all__ = [
    "ABSTAIN",
    "Aggregate",
    "Aggregator",
    "Attack",
    "BaseLoss",
    "Certificate",
    "Certifier",
    "CertifyPlan",
    "Command",
    "Component",
    "ConfigError",
    "DataInfo",
    "DataSplits",
    "Dataset",
    "EXPECTATIONS",
    "Engine",
    "Ensemble",
    "ExampleResult",
    "ExpectationDraws",
    "HARD",
    "HeldOut",
    "Members",
    "Model",
    "MonteCarloSampler",
    "NoiseSampler",
    "PROCEDURES",
    "Pipeline",
    "ProbabilityModel",
    "Registry",
    "Regularizer",
    "RunResult",
    "SMOOTHED_CLASSIFIERS",
    "SOFT",
    "SharedTallies",
    "SmoothedClassifier",
    "SmoothingStrategy",
    "Stage",
    "Summary",
    "Tally",
    "TrainBatch",
    "Usage",
    "UserError",
    "build_component",
    "build_member",
    "certify_inputs",
    "clopper_pearson_interval",
    "clopper_pearson_lower",
    "clopper_pearson_lower_gap",
    "clopper_pearson_upper",
    "clopper_pearson_upper_gap",
    "component_field",
    "describe",
    "draw_expectations",
    "evaluation_mode",
    "gaussian_radius",
    "hoeffding_width",
    "hookimpl",
    "input_generator",
    "load_pipeline",
    "load_registry",
    "multinomial_bounds",
    "probability_model",
    "read_results",
    "run",
    "run_pipeline",
    "softmax_bounds",
    "summarize",
]
