"""The evaluation stage: empirical robustness, i.e. accuracy on clean test inputs and under each attack, for each
aggregator through which the attacks see the ensemble (Deng23, Eq. 12 and Section 6: the average or the maximum).

Inputs are attacked a batch at a time. ``evaluation.tsv`` gets one row per input as each batch finishes:
``idx``, ``label``, then for every aggregator ``<aggregator>:natural`` and ``<aggregator>:<attack>``, the predicted
class. Batches are fixed chunks of every ``skip``-th input, attacked whole even where ``max_examples`` selects only
part of the last one, and each batch's random starts come from a generator seeded by the pipeline seed, the
batch's first index, the aggregator and the attack, so a row is the same whatever the selection, and a resumed run
computes exactly the rows an uninterrupted one would have. Rows of inputs outside the current selection wait in
``evaluation.unselected.tsv`` until selected again. ``evaluation.json`` holds the accuracies.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs
import torch
from torch import Tensor

from ..checkpoints import write_text
from ..components import Aggregator, Attack
from ..ensemble.assembly import Ensemble
from ..errors import UserError
from ..seeds import generator
from ..smoothing.results import cut_partial_line


@attrs.frozen
class EvaluationSummary:
    """Accuracy (share of inputs classified correctly) per aggregator, clean (``natural``) and under each attack."""

    examples: int
    accuracy: Mapping[str, Mapping[str, float]]

    def to_dict(self) -> dict:
        return {"examples": self.examples, "accuracy": {c: dict(v) for c, v in self.accuracy.items()}}


def columns(aggregators: Sequence[str], attacks: Sequence[str]) -> list[str]:
    return ["idx", "label", *(f"{c}:{a}" for c in aggregators for a in ("natural", *attacks))]


def read_rows(path: Path, header: list[str]) -> dict[int, list[int]]:
    """The complete rows of an earlier run's ``evaluation.tsv`` by input index; a truncated last line is dropped."""
    if not path.exists():
        return {}
    cut_partial_line(path)  # a crash mid-write: the partial line goes before anything is appended
    lines = [ln for ln in path.read_bytes().decode("utf-8", errors="replace").split("\n") if ln]
    if not lines:
        return {}
    rows = list(csv.reader(lines, delimiter="\t"))
    if rows[0] != header:
        raise UserError(
            f"{path}: its columns {rows[0]} are not this pipeline's {header}; run with --fresh to evaluate again "
            "or choose another output directory"
        )
    done = {}
    for row in rows[1:]:
        try:
            values = [int(v) for v in row]
        except ValueError:
            values = []
        if len(values) != len(header):
            raise UserError(f"{path}: damaged row {row}; run with --fresh to evaluate again")
        done[values[0]] = values[1:]
    return done


def _rewrite(path: Path, header: list[str], rows: Mapping[int, list[int]]) -> None:
    """Replace ``path`` atomically with ``header`` and ``rows``."""
    lines = ["\t".join(header)] + ["\t".join(map(str, [i, *row])) for i, row in rows.items()]
    write_text(path, "\n".join(lines) + "\n")


def probability_model(members: Sequence[torch.nn.Module], aggregator: Aggregator) -> Callable[[Tensor], Tensor]:
    """The ensemble seen through ``aggregator``: a differentiable map from inputs to class probabilities, as attacks
    see it (members run in whatever mode they are in)."""
    ensemble = Ensemble(members, aggregator)
    return lambda x: ensemble.evaluate(x).probs


def evaluate(
    members: Sequence[torch.nn.Module],
    aggregators: Mapping[str, Aggregator],
    attacks: Mapping[str, Attack],
    dataset: torch.utils.data.Dataset,
    indices: Sequence[int],
    path: Path,
    *,
    unselected: Path,
    batch_size: int,
    seed: int,
    device: torch.device,
    batches: Sequence[int] | None = None,
    on_progress: Callable[[int, str], None] | None = None,
) -> EvaluationSummary:
    """Evaluate the inputs ``indices`` of ``dataset`` and return the accuracies (rows go to ``path`` as they come).
    Rows of other inputs found in ``path`` move to ``unselected`` (written first, so a kill loses no row), and rows of
    selected inputs found there move back: nothing evaluated is lost when the selection narrows and widens again.

    Batches are chunks of ``batch_size`` consecutive entries of ``batches`` (by default ``indices``), each attacked
    whole, so that an input's row does not depend on how many of its batch are selected. ``on_progress(count,
    what)`` hears of every evaluation of ``count`` inputs as it ends (``what``: the aggregator and the attack, or
    ``natural``): ``len(indices) * len(aggregators) * (1 + len(attacks))`` in all."""
    header = columns(list(aggregators), list(attacks))
    held, aside = read_rows(path, header), read_rows(unselected, header)
    wanted = set(indices)
    found = {**aside, **held}
    others = {i: found[i] for i in sorted(found) if i not in wanted}
    if others.keys() != aside.keys():
        _rewrite(unselected, header, others)
    done = {i: row for i, row in found.items() if i in wanted}
    if done.keys() != held.keys():
        _rewrite(path, header, {i: done[i] for i in sorted(done)})
    for m in members:
        m.eval()
    models = {name: probability_model(members, c) for name, c in aggregators.items()}
    with path.open("a", encoding="utf-8", newline="") as fh:
        if path.stat().st_size == 0:
            fh.write("\t".join(header) + "\n")
        order = list(indices if batches is None else batches)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            mine = [i for i in chunk if i in wanted]
            if not mine:
                continue
            if all(i in done for i in mine):
                if on_progress is not None:
                    on_progress(len(mine) * len(models) * (1 + len(attacks)), "resumed")
                continue
            pairs = [dataset[i] for i in chunk]
            x = torch.stack([torch.as_tensor(p[0]) for p in pairs]).to(device)
            y = torch.as_tensor([int(p[1]) for p in pairs], device=device)
            predictions = []
            for c, (cname, model) in enumerate(models.items()):
                with torch.no_grad():
                    predictions.append(model(x).argmax(dim=1))
                if on_progress is not None:
                    on_progress(len(mine), f"{cname}: natural")
                for a, (aname, attack) in enumerate(attacks.items()):
                    gen = generator(seed, "attack", chunk[0], c, a, device=device)
                    adversarial = attack.perturb(model, x, y, generator=gen)
                    with torch.no_grad():
                        predictions.append(model(adversarial).argmax(dim=1))
                    if on_progress is not None:
                        on_progress(len(mine), f"{cname}: {aname}")
            table = torch.stack([y, *predictions], dim=1).cpu().tolist()
            for index, row in zip(chunk, table):
                if index in done or index not in wanted:
                    continue
                done[index] = row
                fh.write("\t".join(map(str, [index, *row])) + "\n")
            fh.flush()
    names = header[2:]
    rows = [done[i] for i in indices if i in done]
    accuracy: dict[str, dict[str, float]] = {c: {} for c in aggregators}
    for k, column in enumerate(names):
        cname, _, aname = column.partition(":")
        accuracy[cname][aname] = sum(r[k + 1] == r[0] for r in rows) / max(len(rows), 1)
    return EvaluationSummary(examples=len(rows), accuracy=accuracy)
