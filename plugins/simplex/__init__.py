"""The certificate mechanisms of Cullen et al., "It's Simplex!" (004_7daf5597198d4c39.txt).

Unfinished: the pure mechanisms (:mod:`.mechanisms`) are implemented and tested; the certifier plugins that
draw one tally per input and compute (E0, E1), the ``best`` ensemble of mechanisms, the benchmark and the
simplex plot are still to come, so nothing is registered yet.
"""
