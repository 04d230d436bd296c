"""List a project's assets through cistemd.

  cistem assets KIND [--group ID] [--limit N] [--json]

KIND is ``movies``, ``images``, ``positions``, ``volumes``, ``packages``
(refinement packages), ``refinements`` or ``ctf-estimates``. ``--group`` lists
the members of one group (``cistem groups list KIND``). The table shows the
id, the file or name and a few key values; ``--json`` prints ``{"kind",
"assets", "total"}`` with every column of cisTEM's table (lower-case names,
as in ``sqlite3 PROJECT.db 'SELECT * FROM MOVIE_ASSETS'``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cistemd.cli.commands._daemon import add_common, project_path, with_client

NAME = "assets"
HELP = "list movies, images, positions, volumes, packages, refinements, CTF estimates"

KINDS = ("movies", "images", "positions", "volumes", "packages", "refinements", "ctf-estimates")

# Columns shown in the table, per kind (all are in --json).
_COLUMNS: dict[str, tuple[str, ...]] = {
    "movies": ("movie_asset_id", "x_size", "y_size", "number_of_frames", "pixel_size", "filename"),
    "images": ("image_asset_id", "x_size", "y_size", "pixel_size", "defocus1", "filename"),
    "positions": (
        "particle_position_asset_id",
        "parent_image_asset_id",
        "x_position",
        "y_position",
    ),
    "volumes": ("volume_asset_id", "x_size", "y_size", "z_size", "pixel_size", "filename"),
    "packages": (
        "refinement_package_asset_id",
        "number_of_particles",
        "symmetry",
        "stack_box_size",
        "name",
    ),
    "refinements": ("refinement_id", "refinement_package_asset_id", "number_of_classes", "name"),
    "ctf_estimates": ("ctf_estimation_id", "image_asset_id", "defocus1", "defocus2", "score"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem assets`` arguments."""
    parser.add_argument("kind", metavar="KIND", choices=KINDS, help=", ".join(KINDS))
    parser.add_argument("--group", type=int, default=0, metavar="ID", help="only this group")
    parser.add_argument(
        "--limit", type=int, default=None, help="at most this many rows (default: all)"
    )
    add_common(parser)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def format_table(kind: str, rows: Sequence[Mapping[str, Any]], total: int) -> str:
    """Render asset rows as a table of the kind's key columns."""
    if not rows:
        return f"no {kind.replace('_', ' ')}"
    columns = [c for c in _COLUMNS[kind] if c in rows[0]]
    table = [[c.upper() for c in columns]] + [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in table
    ]
    if total > len(rows):
        lines.append(f"({total - len(rows)} more not shown; --limit)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Execute ``cistem assets KIND``."""
    project = project_path(args.project)
    kind = args.kind.replace("-", "_")

    def body(client: Any) -> int:
        rows, total = client.assets(project, kind, group_id=args.group, limit=args.limit)
        if args.json:
            print(json.dumps({"kind": kind, "assets": rows, "total": total}))
        else:
            print(format_table(kind, rows, total))
        return 0

    return with_client(f"assets {args.kind}", body)
