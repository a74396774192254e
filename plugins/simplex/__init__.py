"""The certificate mechanisms of Cullen et al., "It's Simplex!" (Cullen24).

:mod:`.mechanisms` turns ``(E0, E1, sigma)`` into radii, and :mod:`.certifiers` wires them into the
registered certifiers; :mod:`.analysis` and :mod:`.command` draw where each mechanism wins
(``ensemblecert simplex``). The bounds themselves are the core's (:mod:`ensemblecert.smoothing.expectations`), which the
``cohen`` certifier also uses for Eq. 9 under these expectations.
"""

from ensemblecert import hookimpl

from .certifiers import Best, DifferentialPrivacy, Lecuyer, Li, TwoSidedCohen
from .command import SimplexCommand


@hookimpl
def register_certifiers(register):
    register("cohen_two_sided", TwoSidedCohen)
    register("li", Li)
    register("lecuyer", Lecuyer)
    register("dp", DifferentialPrivacy)
    register("best", Best)


@hookimpl
def register_commands(register):
    register("simplex", SimplexCommand)
