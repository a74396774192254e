"""Pipeline files: TOML -> frozen attrs classes, with every problem reported at its TOML path.

:mod:`.schema` holds every section's fields and checks; :mod:`.structure` builds components and pipelines from
plain data (and describes them back); :mod:`.loading` reads TOML, applies ``--set`` overrides and loads a pipeline.
All problems are collected and raised together as one :class:`~ensemblecert.ConfigError`.
"""

from .loading import apply_overrides, default_pipeline_data, default_pipeline_text, load_pipeline, read_toml
from .schema import (
    MAX_SEED,
    CertificationConfig,
    Engine,
    EnsembleConfig,
    EvaluationConfig,
    HeldoutConfig,
    LauncherConfig,
    LoggingConfig,
    Pipeline,
    TrainingConfig,
    component,
    component_list,
    section,
)
from .structure import build_component, components, describe, make_converter, structure

__all__ = [
    "MAX_SEED",
    "CertificationConfig",
    "Engine",
    "EnsembleConfig",
    "EvaluationConfig",
    "HeldoutConfig",
    "LauncherConfig",
    "LoggingConfig",
    "Pipeline",
    "TrainingConfig",
    "apply_overrides",
    "build_component",
    "component",
    "component_list",
    "components",
    "default_pipeline_data",
    "default_pipeline_text",
    "describe",
    "load_pipeline",
    "make_converter",
    "read_toml",
    "section",
    "structure",
]
