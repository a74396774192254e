"""ensemblecert: certify (L2) and train robust ensembles with randomized smoothing.

The public API. Plugins import only from here (and ``ensemblecert.validators`` for field checks).
"""

from .certification import certify, input_generator
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
from .engine import Engine, Members
from .ensemble import Ensemble, Normalize, build_member
from .errors import ConfigError, UserError
from .evaluation import probability_model
from .expectations import (
    EXPECTATIONS,
    PROCEDURES,
    ExpectationDraws,
    draw_expectations,
    hoeffding_width,
    multinomial_bounds,
    softmax_bounds,
)
from .hookspecs import hookimpl
from .manager import load_registry, make_plugin_manager
from .objectives import TrainBatch
from .pipeline import RunResult, run, run_pipeline
from .registry import KINDS, Component, Registry
from .results import ExampleResult, Summary, read_results, summarize
from .sampling import MonteCarloSampler, SharedTallies, SmoothedClassifier, Tally, Usage, evaluation_mode
from .stats import (
    clopper_pearson_interval,
    clopper_pearson_lower,
    clopper_pearson_lower_gap,
    clopper_pearson_upper,
    clopper_pearson_upper_gap,
    gaussian_radius,
)

__all__ = [
    "ABSTAIN",
    "Aggregate",
    "Aggregator",
    "Attack",
    "BaseLoss",
    "Certificate",
    "Certifier",
    "CertifyPlan",
    "HARD",
    "SMOOTHED_CLASSIFIERS",
    "SOFT",
    "Command",
    "Component",
    "ConfigError",
    "EXPECTATIONS",
    "ExpectationDraws",
    "DataInfo",
    "DataSplits",
    "Dataset",
    "Ensemble",
    "HeldOut",
    "ExampleResult",
    "KINDS",
    "Members",
    "Engine",
    "Model",
    "MonteCarloSampler",
    "NoiseSampler",
    "Normalize",
    "PROCEDURES",
    "Pipeline",
    "ProbabilityModel",
    "Registry",
    "Regularizer",
    "RunResult",
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
    "certify",
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
    "make_plugin_manager",
    "multinomial_bounds",
    "probability_model",
    "run",
    "read_results",
    "run_pipeline",
    "softmax_bounds",
    "summarize",
]
