"""Per-input simplex analysis (Cullen24, Fig. 3 and Section 4): where in the (E0, E1) triangle each mechanism wins.

All radii are linear in sigma, so which mechanism wins at ``(E0, E1)`` does not depend on sigma: the regions
are computed once on a grid at ``sigma = 1``. A run's inputs are placed in the same triangle from the bounds
its certifier recorded (``e0``, ``e1``), coloured by the mechanism that won for them, and the gain of ``best``
over each of its members is read from the radii it recorded for every member (``r_<entry>``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np

from ensemblecert import ExampleResult, UserError, read_results

from .mechanisms import MECHANISMS

#: One colour per mechanism, the same in every figure.
COLOURS = {
    "cohen": "#1f77b4",
    "cohen_two_sided": "#7f7f7f",
    "li": "#ff7f0e",
    "lecuyer": "#9467bd",
    "dp": "#2ca02c",
}


def mechanism_of(entry: str) -> str:
    """The mechanism an entry of ``best.of`` names (``"softmax:dp"`` -> ``"dp"``)."""
    return entry.rpartition(":")[2]


@attrs.frozen
class WinnerMap:
    """The winning mechanism on a grid of the triangle ``E1 <= E0``, ``E0 + E1 <= 1`` (cell centres).

    ``winner[i, j]`` indexes ``names`` at ``(e0[j], e1[i])``; -1 where no mechanism certifies (or outside the
    triangle: ``inside`` is False there). ``radii[k]`` is mechanism ``k``'s radius at ``sigma = 1``.
    """

    names: tuple[str, ...]
    e0: np.ndarray
    e1: np.ndarray
    inside: np.ndarray
    radii: np.ndarray
    winner: np.ndarray

    def shares(self) -> dict[str, float]:
        """The share of the certifying part of the triangle (some radius > 0) that each mechanism wins."""
        won = self.winner[self.winner >= 0]
        total = max(won.size, 1)
        return {name: float(np.count_nonzero(won == k)) / total for k, name in enumerate(self.names)}


def winner_map(names: Sequence[str], resolution: int = 200) -> WinnerMap:
    """Every mechanism of ``names`` on a ``resolution x resolution / 2`` grid of the triangle; the first listed
    wins a tie (so list a mechanism before those it equals somewhere)."""
    unknown = [n for n in names if n not in MECHANISMS]
    if unknown:
        raise ValueError(f"unknown mechanisms {unknown}; known: {', '.join(MECHANISMS)}")
    e0 = (np.arange(resolution) + 0.5) / resolution
    e1 = (np.arange(resolution // 2) + 0.5) / resolution
    grid0, grid1 = np.meshgrid(e0, e1)
    inside = (grid1 < grid0) & (grid0 + grid1 <= 1.0)
    radii = np.zeros((len(names), *grid0.shape))
    for k, name in enumerate(names):
        radii[k][inside] = MECHANISMS[name](grid0[inside], grid1[inside], 1.0)
    winner = np.where(radii.max(axis=0) > 0, np.argmax(radii, axis=0), -1)
    return WinnerMap(tuple(names), e0, e1, inside, radii, np.where(inside, winner, -1))


def ceiling_ratios(names: Sequence[str], resolution: int = 200) -> dict[str, float]:
    """Each mechanism's mean radius over the certifying triangle as a share of ``cohen_two_sided``'s there."""
    found = winner_map(["cohen_two_sided", *[n for n in names if n != "cohen_two_sided"]], resolution)
    ceiling = found.radii[0][found.inside & (found.radii[0] > 0)].sum()
    return {
        name: float(found.radii[k][found.inside & (found.radii[0] > 0)].sum() / ceiling)
        for k, name in enumerate(found.names)
        if name in names
    }


@attrs.frozen
class MechanismRecord:
    """What one certifier recorded for every input of a run (arrays over inputs)."""

    label: str
    entries: tuple[str, ...]
    labels: np.ndarray
    predictions: np.ndarray
    radius: np.ndarray
    e0: np.ndarray
    e1: np.ndarray
    member_radii: np.ndarray  # [inputs, entries]; empty second axis for a single mechanism
    member_correct: np.ndarray  # [inputs, entries]: the member's class is the true label
    winner: np.ndarray  # index into entries, -1 where nothing was certified

    def certified_accuracy(self, radius: float, member: int | None = None) -> float:
        """The share of inputs certified correctly at ``radius`` by ``best`` (``member=None``) or one member."""
        if member is None:
            hit = (self.radius > 0) & (self.radius >= radius) & (self.predictions == self.labels)
        else:
            r = self.member_radii[:, member]
            hit = (r > 0) & (r >= radius) & self.member_correct[:, member]
        return float(hit.mean()) if hit.size else 0.0

    def acr(self, member: int | None = None) -> float:
        """Average certified radius (0 for wrong or abstained inputs)."""
        if member is None:
            r = np.where(self.predictions == self.labels, self.radius, 0.0)
        else:
            r = np.where(self.member_correct[:, member], self.member_radii[:, member], 0.0)
        return float(r.mean()) if r.size else 0.0

    def win_shares(self) -> list[float]:
        certified = self.winner >= 0
        total = max(int(certified.sum()), 1)
        return [float(np.count_nonzero(self.winner == k)) / total for k in range(len(self.entries))]


def read_run(run_dir: str | Path) -> tuple[list[MechanismRecord], list[float]]:
    """The records of every certifier in ``run_dir`` that reported ``e0`` and ``e1``, and the run's radii."""
    run_dir = Path(run_dir)
    meta_path, tsv = run_dir / "certification.meta.json", run_dir / "certification.tsv"
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory; give the output directory of `ensemblecert run`")
    if not tsv.exists() or not meta_path.exists():
        raise UserError(
            f"{run_dir}: holds no certification results (certification.tsv and certification.meta.json); "
            "run the pipeline first"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        labels = [str(m) for m in meta["certifiers"]]
    except (ValueError, KeyError, TypeError):
        raise UserError(
            f"{meta_path}: damaged (no list of mechanisms in it); run the pipeline again with --fresh"
        ) from None
    radii = [0.0, 0.25, 0.5, 0.75, 1.0]
    try:
        radii = [
            float(r)
            for r in json.loads((run_dir / "pipeline.json").read_text(encoding="utf-8"))["certification"]["radii"]
        ]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    results = read_results(tsv, labels)
    if not results:
        raise UserError(f"{tsv}: holds no certified inputs; let the run certify some (run it again to resume) first")
    records = [_record(label, results) for label in labels]
    return [r for r in records if r is not None], radii


def _record(label: str, results: list[ExampleResult]) -> MechanismRecord | None:
    if not results:
        return None
    details = [r.outcomes[label].certificate.details for r in results]
    if not all("e0" in d and "e1" in d for d in details):
        return None
    entries = tuple(k[2:] for k in details[0] if k.startswith("r_"))
    certs = [r.outcomes[label].certificate for r in results]
    labels = np.array([r.label for r in results])
    predictions = np.array([c.prediction for c in certs])
    member_radii = np.array([[d[f"r_{e}"] for e in entries] for d in details]).reshape(len(results), len(entries))
    # every member of one certifier certifies the same class (mixed sets too), so it is right when the prediction is
    member_correct = np.repeat((predictions == labels)[:, None], len(entries), axis=1)
    winner = np.array([int(d.get("winner", 0)) if c.radius > 0 else -1 for d, c in zip(details, certs)])
    return MechanismRecord(
        label=label,
        entries=entries,
        labels=labels,
        predictions=predictions,
        radius=np.array([c.radius for c in certs]),
        e0=np.array([d["e0"] for d in details]),
        e1=np.array([d["e1"] for d in details]),
        member_radii=member_radii,
        member_correct=member_correct,
        winner=winner,
    )


def draw(found: WinnerMap, path: str | Path, *, record: MechanismRecord | None = None, title: str = "") -> Path:
    """Save the picture of Cullen24 Fig. 3: the regions where each mechanism wins, and (with ``record``) each certified
    input at its ``(E0, E1)``, coloured by the mechanism that won for it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(7.5, 4.4), dpi=130)
    colours = [COLOURS[n] for n in found.names]
    image = np.ma.masked_less(found.winner.astype(float), 0)
    step = found.e0[1] - found.e0[0] if found.e0.size > 1 else 1.0
    ax.imshow(
        image,
        origin="lower",
        cmap=ListedColormap(colours),
        vmin=-0.5,
        vmax=len(colours) - 0.5,
        alpha=0.35,
        extent=(0, found.e0[-1] + step / 2, 0, found.e1[-1] + step / 2),
        aspect="auto",
        interpolation="nearest",
    )
    edge = np.linspace(0, 1, 200)
    ax.plot(edge, np.minimum(edge, 1 - edge), color="black", lw=0.8)
    handles = [
        Line2D([], [], marker="s", ls="", ms=9, color=c, alpha=0.5, label=f"{n} wins")
        for n, c in zip(found.names, colours)
    ]
    if record is not None and record.entries:
        certified = record.winner >= 0
        for k, entry in enumerate(record.entries):
            at = certified & (record.winner == k)
            if not at.any():
                continue
            marker = "^" if entry.startswith("softmax:") else "o"
            ax.scatter(
                record.e0[at],
                record.e1[at],
                s=16,
                marker=marker,
                color=COLOURS[mechanism_of(entry)],
                edgecolors="black",
                linewidths=0.4,
                zorder=3,
            )
            handles.append(
                Line2D(
                    [],
                    [],
                    marker=marker,
                    ls="",
                    color=COLOURS[mechanism_of(entry)],
                    markeredgecolor="black",
                    label=f"input: {entry} ({int(at.sum())})",
                )
            )
        rest = ~certified
        if rest.any():
            ax.scatter(record.e0[rest], record.e1[rest], s=10, marker="x", color="black", alpha=0.5, zorder=3)
            handles.append(Line2D([], [], marker="x", ls="", color="black", label=f"abstained ({int(rest.sum())})"))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 0.5)
    ax.set_xlabel("E0 (lower bound, top class)")
    ax.set_ylabel("E1 (upper bound, runner-up)")
    ax.set_title(title or "Where each mechanism certifies the largest radius")
    ax.legend(handles=handles, loc="upper left", fontsize=7, frameon=True)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def gain_rows(record: MechanismRecord, radii: Sequence[float]) -> list[dict[str, float | str]]:
    """One row per member and one for ``best``: win share, certified accuracy at ``radii`` and ACR, and the gain
    of ``best`` in ACR over the member."""
    best_acr = record.acr()
    rows: list[dict[str, float | str]] = []
    for k, entry in enumerate(record.entries):
        rows.append(
            {
                "mechanism": entry,
                "wins": record.win_shares()[k],
                **{f"{r:g}": record.certified_accuracy(r, k) for r in radii},
                "acr": record.acr(k),
                "gain": best_acr - record.acr(k),
            }
        )
    rows.append(
        {
            "mechanism": record.label,
            "wins": 1.0 if record.entries else math.nan,
            **{f"{r:g}": record.certified_accuracy(r) for r in radii},
            "acr": best_acr,
            "gain": 0.0,
        }
    )
    return rows
