"""The certificate mechanisms of Cullen et al., "It's Simplex!" (004_7daf5597198d4c39.txt).

:mod:`.bounds` turns one tally into ``(E0, E1)`` (multinomial or softmax expectations, sound selection or the
paper's), :mod:`.mechanisms` turns ``(E0, E1, sigma)`` into radii, and :mod:`.certifiers` wires them into the
registered certifiers. Still to come: Cohen's Eq. 9 under these expectations as an option of ``cohen``,
``best`` over mixed expectations, shared tallies across listed mechanisms, the benchmark and the simplex plot.
"""

from ensemblecert import hookimpl

from .certifiers import Best, DifferentialPrivacy, Lecuyer, Li, TwoSidedCohen


@hookimpl
def register_certifiers(register):
    register("cohen_two_sided", TwoSidedCohen)
    register("li", Li)
    register("lecuyer", Lecuyer)
    register("dp", DifferentialPrivacy)
    register("best", Best)
