"""Figures of certification results: certified accuracy against radius (as the papers draw it, one curve per run
and certifier, y from 0 to 1), and the empirical distribution of the lower confidence bound on the top class's
probability per input (ACR alone can hide where the bounds lie). Each saved as PNG and PDF."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .runs import RunRecord, certifier_settings, run_names, varying

#: The details holding the lower confidence bound on the top class's probability: ``p_lower`` (CERTIFY and the
#: certifiers built on it) or ``e0`` (the expectations of Cullen24).
LOWER_BOUND_KEYS = ("p_lower", "e0")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curves(records: Sequence[RunRecord]) -> list[tuple[str, RunRecord, str]]:
    """Each curve's legend, run and certifier label. A legend carries the certifier's settings that differ between
    the curves (sigma, n, alpha, targets); those all curves share are in the title (:func:`_shared`)."""
    names = run_names(records)
    several = len(records) > 1
    curves = [
        (f"{name}: {label}" if several else label, r, label) for name, r in zip(names, records) for label in r.labels
    ]
    settings = [certifier_settings(r, label) for _, r, label in curves]
    differ = varying(settings)
    return [
        (f"{text} ({_describe({k: s[k] for k in differ if k in s})})" if differ else text, r, label)
        for (text, r, label), s in zip(curves, settings)
    ]


def _shared(records: Sequence[RunRecord]) -> str:
    """The certifier settings every curve shares, for the title (``sigma = 0.25, n = 10,000, alpha = 0.001``)."""
    settings = [certifier_settings(r, label) for r in records for label in r.labels]
    differ = varying(settings)
    return _describe({k: v for k, v in settings[0].items() if k not in differ}) if settings else ""


def _describe(settings: dict) -> str:
    return ", ".join(
        f"{k} = {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k} = {v}" for k, v in settings.items()
    )


def _finish(fig, ax, stem: Path, xlabel: str, ylabel: str, right: float, title: str = "") -> list[Path]:
    """Label the axes (y from 0 to 1, x from 0 to ``right``) and the figure (``title``: the settings every curve
    shares), save ``stem``.png and .pdf, and close the figure."""
    if title:
        ax.set_title(title, fontsize="small")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, right)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    labels = ax.get_legend_handles_labels()[1]
    if max((len(text) for text in labels), default=0) > 32:  # long names (study points): the legend below
        fig.set_size_inches(fig.get_size_inches()[0] + 2, fig.get_size_inches()[1] + 0.25 * len(labels))
        ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1)
    else:
        ax.legend(fontsize="small")
    return _save(fig, stem)


def _save(fig, stem: Path) -> list[Path]:
    """Lay ``fig`` out, save it as ``stem``.png and .pdf, and close it."""
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    try:
        for path in paths:
            fig.savefig(path)
    finally:
        _pyplot().close(fig)
    return paths


def certified_accuracy_figure(records: Sequence[RunRecord], stem: str | Path) -> list[Path]:
    """Certified accuracy (correct and certified at radius >= r) against r; saves ``stem``.png and .pdf."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    top = 1e-9
    for _, record, label in _curves(records):
        top = max([top, *(r.outcomes[label].certificate.radius for r in record.results)])
    grid = np.linspace(0.0, 1.05 * top, 300)
    for name, record, label in _curves(records):
        radii = np.array([r.outcomes[label].certificate.radius for r in record.results if r.correct(label)])
        n = max(len(record.results), 1)
        ax.plot(grid, [(radii >= g).sum() / n for g in grid], label=name)
    return _finish(fig, ax, Path(stem), "L2 radius", "certified accuracy", float(grid[-1]), _shared(records))


def lower_bounds(record: RunRecord, label: str) -> np.ndarray:
    """The lower confidence bound on the top class's probability of every input certified by ``label`` (empty when
    its certificates do not record one)."""
    values = []
    for r in record.results:
        details = r.outcomes[label].certificate.details
        key = next((k for k in LOWER_BOUND_KEYS if k in details), None)
        if key is None:
            return np.array([])
        values.append(details[key])
    return np.array(values, dtype=float)


def lower_bound_figure(records: Sequence[RunRecord], stem: str | Path) -> list[Path]:
    """The empirical CDF of each certifier's lower bounds; saves ``stem``.png and .pdf (nothing when no certifier
    records a bound)."""
    curves = [(name, lower_bounds(record, label)) for name, record, label in _curves(records)]
    curves = [(name, np.sort(v)) for name, v in curves if v.size]
    if not curves:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, values in curves:
        ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", label=name)
    ax.axvline(0.5, color="grey", lw=0.8, ls=":")  # below 1/2 nothing is certified
    xlabel, ylabel = "lower confidence bound on the top class's probability", "share of inputs at or below"
    return _finish(fig, ax, Path(stem), xlabel, ylabel, 1.0, _shared(records))


#: The most panels one simplex figure draws (one per run and certifier that recorded ``E0`` and ``E1``).
SIMPLEX_PANELS = 12


def simplex_points(record: RunRecord, label: str) -> np.ndarray:
    """``[inputs, 3]``: each input's ``(E0, E1, outcome)`` as certifier ``label`` recorded them, outcome 1 certified
    and correct, -1 certified and wrong, 0 abstained; empty when its certificates record no ``E0`` and ``E1``."""
    rows = []
    for r in record.results:
        outcome = r.outcomes[label]
        details = outcome.certificate.details
        if "e0" not in details or "e1" not in details:
            return np.empty((0, 3))
        state = 0 if outcome.certificate.abstained else (1 if r.correct(label) else -1)
        rows.append((float(details["e0"]), float(details["e1"]), state))
    return np.array(rows, dtype=float).reshape(-1, 3)


def simplex_figure(records: Sequence[RunRecord], stem: str | Path) -> list[Path]:
    """Each input in the (E0, E1) triangle of Cullen24 (Fig. 3), one panel per run and certifier that recorded the
    two bounds (at most :data:`SIMPLEX_PANELS`), marked certified-correct, certified-wrong or abstained; saves
    ``stem``.png and .pdf (nothing when no certifier recorded them)."""
    panels = [(name, simplex_points(record, label)) for name, record, label in _curves(records)]
    panels = [(name, p) for name, p in panels if p.size][:SIMPLEX_PANELS]
    if not panels:
        return []
    plt = _pyplot()
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), dpi=110, squeeze=False)
    edge = np.linspace(0, 1, 201)
    kinds = ((1, "certified, correct", "tab:green"), (-1, "certified, wrong", "tab:red"), (0, "abstained", "grey"))
    for ax, (name, points) in zip(axes.flat, panels):
        ax.plot(edge, np.minimum(edge, 1 - edge), color="black", lw=0.8)  # E1 <= E0 and E0 + E1 <= 1
        ax.axvline(0.5, color="grey", lw=0.6, ls=":")
        for state, text, colour in kinds:
            chosen = points[points[:, 2] == state]
            if chosen.size:
                ax.scatter(chosen[:, 0], chosen[:, 1], s=9, color=colour, alpha=0.7, label=f"{text} ({len(chosen)})")
        ax.set_title(name, fontsize="small")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 0.5)
        ax.set_xlabel("E0 (lower bound, top class)")
        ax.set_ylabel("E1 (upper bound, runner-up)")
        ax.legend(fontsize="x-small", loc="upper left")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    return _save(fig, Path(stem))
