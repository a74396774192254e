"""The built-in stages of a run, registered by the core as any plugin registers its own.

A run is ``members -> calibration -> certification -> evaluation -> report``, then the stages a pipeline lists under
``stages = [...]``. Each stage is one module; :mod:`ensemblecert.running.context` holds what they share.
"""

from __future__ import annotations

from ...hookspecs import hookimpl
from .calibration import CalibrationStage
from .certification import CertificationStage
from .evaluation import EvaluationStage
from .members import MembersStage
from .report import ReportStage

#: The built-in stages by registered name, in the order every run runs them.
BUILT_IN = {
    "members": MembersStage,
    "calibration": CalibrationStage,
    "certification": CertificationStage,
    "evaluation": EvaluationStage,
    "report": ReportStage,
}


@hookimpl
def register_stages(register):
    for name, cls in BUILT_IN.items():
        register(name, cls)
