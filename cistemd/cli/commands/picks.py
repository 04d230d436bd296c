"""List and edit particle picks through cistemd (manual editing, as in cisTEM's picking panel).

  cistem picks list [--image ID]                  positions (id, image, x, y Å, peak height)
  cistem picks add IMAGE_ID X Y [X Y ...]         add positions (Å from the first pixel)
  cistem picks remove IMAGE_ID --id ID [--id ID]  remove positions by id
  cistem picks remove IMAGE_ID --at X Y [--at X Y] [--radius Å]
                                                  remove the position nearest (X, Y)
                                                  within the radius (default 50 Å)

x is along the image's fast axis; both are in Å from the centre of the first
pixel (cisTEM's particle-position convention). The image's picking row is
marked as manually edited. Every sub-command takes ``--project PATH`` and
``--json`` (the ``positions_reply``: ``{"image_asset_id", "operation",
"position_ids", "total"}``; for ``list`` ``{"positions": [...], "total"}``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from cistemd.cli.commands._daemon import add_common, project_path, with_client

NAME = "picks"
HELP = "list, add and remove particle picks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem picks`` sub-commands."""
    sub = parser.add_subparsers(dest="picks_command", metavar="SUBCOMMAND", required=True)
    listing = sub.add_parser("list", help="list particle positions")
    listing.add_argument("--image", type=int, default=None, metavar="ID",
                         help="only this image asset's positions")
    add = sub.add_parser("add", help="add positions to an image")
    add.add_argument("image_id", type=int, metavar="IMAGE_ID")
    add.add_argument("coordinates", type=float, nargs="+", metavar="X Y",
                     help="pairs of x y in Å")
    remove = sub.add_parser("remove", help="remove positions from an image")
    remove.add_argument("image_id", type=int, metavar="IMAGE_ID")
    remove.add_argument("--id", dest="ids", type=int, action="append", default=[],
                        metavar="ID", help="a position id (repeatable)")
    remove.add_argument("--at", dest="points", type=float, nargs=2, action="append",
                        default=[], metavar=("X", "Y"),
                        help="remove the position nearest to X Y (repeatable)")
    remove.add_argument("--radius", type=float, default=50.0, metavar="Å",
                        help="how far from X Y a position may be (default: 50)")
    for command in sub.choices.values():
        add_common(command)


def run(args: argparse.Namespace) -> int:
    """Execute ``cistem picks …``."""
    project = project_path(args.project)
    command = args.picks_command

    def body(client: Any) -> int:
        if command == "list":
            rows, _total = client.assets(project, "positions")
            if args.image is not None:
                rows = [r for r in rows if int(r["parent_image_asset_id"]) == args.image]
            if args.json:
                print(json.dumps({"positions": rows, "total": len(rows)}))
                return 0
            print(f"{'ID':>7} {'IMAGE':>6} {'X (Å)':>10} {'Y (Å)':>10} {'PEAK':>8}")
            for row in rows:
                print(f"{row['particle_position_asset_id']:>7} "
                      f"{row['parent_image_asset_id']:>6} {row['x_position']:>10.2f} "
                      f"{row['y_position']:>10.2f} {row['peak_height']:>8.2f}")
            print(f"{len(rows)} position(s)" + ("" if args.image is None else
                                                f" on image {args.image}"))
            return 0
        if command == "add":
            values = list(args.coordinates)
            if len(values) % 2:
                print("cistem picks add: give x y pairs (an even number of values)")
                return 2
            reply = client.edit_positions(project, "add", args.image_id,
                                          x_angstroms=values[0::2], y_angstroms=values[1::2])
        else:
            if not args.ids and not args.points:
                print("cistem picks remove: give --id ID or --at X Y")
                return 2
            reply = client.edit_positions(
                project, "remove", args.image_id, position_ids=args.ids,
                x_angstroms=[p[0] for p in args.points], y_angstroms=[p[1] for p in args.points],
                radius_angstroms=args.radius,
            )
        if args.json:
            print(json.dumps(reply))
        else:
            verb = "added" if command == "add" else "removed"
            ids = " ".join(str(i) for i in reply["position_ids"]) or "none"
            print(f"{verb} position(s) {ids}; image {reply['image_asset_id']} has "
                  f"{reply['total']} now")
        return 0

    return with_client(f"picks {command}", body)
