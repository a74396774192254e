"""``ensemblecert simplex``: the per-input simplex analysis of a run, or the sigma-free map of winning regions."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import attrs
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ensemblecert import Command, UserError, check_writable, write_text

from .analysis import ceiling_ratios, draw, gain_rows, mechanism_of, read_run, winner_map
from .certifiers import DEFAULT_SETS
from .mechanisms import MECHANISMS


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    choose = f"choose from {', '.join(MECHANISMS)}, comma-separated"
    if not any(names) or "" in names:
        raise UserError(f"--of: {text!r} leaves a mechanism's name empty; {choose}")
    unknown = [n for n in names if n not in MECHANISMS]
    if unknown:
        raise UserError(f"--of: unknown mechanisms {unknown}; {choose}")
    return list(dict.fromkeys(names))


def _no_bounds(run_dir: Path) -> str:
    """Why a run has nothing to place in the triangle: no `best` certifier, or one whose columns are missing."""
    tsv = run_dir / "certification.tsv"
    try:
        config = json.loads((run_dir / "pipeline.json").read_text(encoding="utf-8"))
        listed = [c for c in config["certification"]["certifiers"] if isinstance(c, dict)]
    except (OSError, ValueError, KeyError, TypeError):
        listed = []
    best = [str(c.get("label") or c.get("name")) for c in listed if c.get("name") == "best"]
    if best:
        wanted = ", ".join(f"{label}:e0, {label}:e1" for label in best)
        return (
            f"{tsv}: the columns {wanted} that the best certifier writes for every input are missing (the file was "
            "edited, or written by an older version); certify again with --fresh"
        )
    names = ", ".join(str(c.get("label") or c.get("name")) for c in listed) or "none recorded"
    return (
        f"{run_dir}: no certifier in this run recorded every mechanism's radius (its certifiers: {names}); certify "
        'with { name = "best" } (see examples/simplex.toml)'
    )


def _output(args: argparse.Namespace) -> str | None:
    """``--output``, refused when given empty (empty does not mean the default)."""
    if args.output is not None and not args.output.strip():
        raise UserError("--output: must not be empty; give a path, or leave the option out for the default")
    return args.output


@attrs.frozen
class SimplexCommand(Command):
    """Where each mechanism of "It's Simplex!" wins: a run's inputs in the (E0, E1) triangle, or the bare map.

    With RUN_DIR (the output directory of a run that certified with `best`): one PNG per `best` certifier,
    simplex_<label>.png, showing every input at its (E0, E1) coloured by the mechanism that won it over the
    regions where each mechanism wins; a table of win shares, certified accuracy and ACR of each member
    against `best` (also written to simplex.json). Without RUN_DIR: the map of winning regions for --of
    (sigma-free, since every radius is linear in sigma), with the share of the triangle each mechanism wins
    and its mean radius as a share of cohen_two_sided's (the Neyman-Pearson ceiling).
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "run_dir", nargs="?", metavar="RUN_DIR", help="a run's output directory (omit for the bare map)"
        )
        parser.add_argument("--of", help="mechanisms of the bare map, comma-separated (default: cohen,li,dp)")
        parser.add_argument("--resolution", type=int, default=200, help="grid cells along E0 (default 200)")
        parser.add_argument("--output", "-o", help="where the PNG goes (default: RUN_DIR, or simplex_regions.png)")

    def run(self, args: argparse.Namespace, console: Console) -> int:
        if not 10 <= args.resolution <= 2000:
            raise UserError(f"--resolution: must be in [10, 2000], got {args.resolution}")
        if args.run_dir is None:
            return self._bare(args, console)
        return self._run_dir(args, console)

    def _bare(self, args: argparse.Namespace, console: Console) -> int:
        names = _names(",".join(DEFAULT_SETS["multinomial"]) if args.of is None else args.of)
        path = check_writable(_output(args) or "simplex_regions.png", "--output")  # before minutes of mapping
        console.print(f"Mapping where {', '.join(names)} win on {args.resolution} cells along E0 ...", highlight=False)
        found = winner_map(names, args.resolution)
        ratios = ceiling_ratios(names, args.resolution)
        path = draw(found, path, title=f"Winning regions: {', '.join(names)}")
        table = Table(title=f"Share of the certifying triangle each mechanism wins ({args.resolution} cells along E0)")
        for column in ("mechanism", "wins", "radius / cohen_two_sided"):
            table.add_column(column, justify="left" if column == "mechanism" else "right")
        for name, share in found.shares().items():
            table.add_row(name, f"{share:.1%}", f"{ratios[name]:.3f}")
        console.print(table)
        console.print(f"Map: {escape(str(path))}")
        return 0

    def _run_dir(self, args: argparse.Namespace, console: Console) -> int:
        run_dir = Path(args.run_dir)
        records, radii = read_run(run_dir)
        ranked = [r for r in records if r.entries]
        if not ranked:
            raise UserError(_no_bounds(run_dir))
        out_dir = Path(_output(args) or run_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"--output: {out_dir} is not a directory; for a run the PNGs go to a directory")
        slugs = {record.label: re.sub(r"[^A-Za-z0-9_.-]+", "_", record.label) for record in ranked}
        for name in ["simplex.json", *(f"simplex_{slug}.png" for slug in slugs.values())]:
            check_writable(out_dir / name, "--output")  # before minutes of mapping
        report = {}
        for record in ranked:
            names = list(dict.fromkeys(mechanism_of(e) for e in record.entries))
            slug = slugs[record.label]
            doing = f"mapping where {', '.join(names)} win and placing {len(record.labels)} inputs"
            console.print(escape(f"{record.label}: {doing} ..."), highlight=False)
            path = draw(
                winner_map(names, args.resolution),
                out_dir / f"simplex_{slug}.png",
                record=record,
                title=f"{record.label}: {len(record.labels)} inputs in the (E0, E1) triangle",
            )
            rows = gain_rows(record, radii)
            table = Table(title=f"{record.label}: each member against the best of them ({len(record.labels)} inputs)")
            table.add_column("mechanism")
            table.add_column("wins", justify="right")
            for r in radii:
                table.add_column(f"r={r:g}", justify="right")
            table.add_column("ACR", justify="right")
            table.add_column("gain of best (ACR)", justify="right")
            for row in rows:
                table.add_row(
                    escape(str(row["mechanism"])),
                    f"{row['wins']:.1%}",
                    *[f"{row[f'{r:g}']:.1%}" for r in radii],
                    f"{row['acr']:.3f}",
                    f"{row['gain']:+.3f}",
                )
            console.print(table)
            console.print(f"Picture: {escape(str(path))}")
            report[record.label] = {"picture": str(path), "rows": rows}
        write_text(out_dir / "simplex.json", json.dumps(report, indent=2) + "\n")
        return 0
