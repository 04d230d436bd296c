"""List and edit asset groups through cistemd (cisTEM's movie/image/... groups).

  cistem groups list KIND [--members ID]        groups (id, name, size); one group's members
  cistem groups create KIND NAME                a new empty group; prints its id
  cistem groups rename KIND ID NAME
  cistem groups delete KIND ID                  the assets stay in the project
  cistem groups add KIND ID ASSET_ID...         append assets (members already there are kept)
  cistem groups remove KIND ID ASSET_ID...      take assets out of the group
  cistem groups from-movie-group ID [NAME]      an image group of the images aligned from
                                                the movies of movie group ID

KIND is ``movies``, ``images``, ``positions``, ``volumes`` or
``atomic-coordinates`` (singular works too). Group 0 is cisTEM's implicit
"All Movies" / "All Images" / ... group: listed, never stored, not editable.
Asset ids are those of ``cistem assets KIND``. Every sub-command takes
``--project PATH`` and ``--json`` (the ``groups_reply``: ``{"kind", "groups",
"group_id", "changed", ...}``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cistemd.cli.commands._daemon import add_common, project_path, with_client

NAME = "groups"
HELP = "list and edit asset groups"

KINDS = {
    "movies": "movie",
    "movie": "movie",
    "images": "image",
    "image": "image",
    "positions": "particle_position",
    "position": "particle_position",
    "volumes": "volume",
    "volume": "volume",
    "atomic-coordinates": "atomic_coordinates",
}


def _kind(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", metavar="KIND", choices=sorted(KINDS), help="asset kind")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem groups`` sub-commands."""
    sub = parser.add_subparsers(dest="groups_command", metavar="SUBCOMMAND", required=True)
    listing = sub.add_parser("list", help="list groups of one kind")
    _kind(listing)
    listing.add_argument("--members", type=int, metavar="ID", help="also list this group's ids")
    create = sub.add_parser("create", help="create an empty group")
    _kind(create)
    create.add_argument("name", metavar="NAME")
    rename = sub.add_parser("rename", help="rename a group")
    _kind(rename)
    rename.add_argument("group_id", type=int, metavar="ID")
    rename.add_argument("name", metavar="NAME")
    delete = sub.add_parser("delete", help="delete a group (not its assets)")
    _kind(delete)
    delete.add_argument("group_id", type=int, metavar="ID")
    for name, text in (("add", "add assets to a group"), ("remove", "remove assets from a group")):
        command = sub.add_parser(name, help=text)
        _kind(command)
        command.add_argument("group_id", type=int, metavar="ID")
        command.add_argument("asset_ids", type=int, nargs="+", metavar="ASSET_ID")
    from_movies = sub.add_parser(
        "from-movie-group", help="image group of the images aligned from a movie group"
    )
    from_movies.add_argument("group_id", type=int, metavar="ID")
    from_movies.add_argument("name", nargs="?", default="", metavar="NAME")
    for command in sub.choices.values():
        add_common(command)


def format_groups(groups: Sequence[Mapping[str, Any]]) -> str:
    """Render GROUP records as a table."""
    lines = [f"{'ID':>4}  {'SIZE':>7}  NAME"]
    for group in groups:
        lines.append(f"{group['group_id']:>4}  {group['count']:>7}  {group['name']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Execute ``cistem groups …``."""
    project = project_path(args.project)
    operation = args.groups_command.replace("-", "_")
    kind = "movie" if operation == "from_movie_group" else KINDS[args.kind]

    def body(client: Any) -> int:
        if operation == "list":
            groups = client.groups(project, kind)
            members = None
            if args.members is not None:
                members = client.group_members(project, kind, args.members)
            if args.json:
                out: dict[str, Any] = {"kind": kind, "groups": groups}
                if members is not None:
                    out["group_id"], out["members"] = args.members, members
                print(json.dumps(out))
            else:
                print(format_groups(groups))
                if members is not None:
                    print(f"group {args.members}: " + (" ".join(map(str, members)) or "empty"))
            return 0
        reply = client.edit_group(
            project,
            kind,
            operation,
            group_id=getattr(args, "group_id", 0),
            name=getattr(args, "name", ""),
            asset_ids=getattr(args, "asset_ids", ()),
        )
        if args.json:
            print(json.dumps(reply))
        elif operation in ("create", "from_movie_group"):
            print(f"created {reply['kind']} group {reply['group_id']}")
        elif operation in ("add", "remove"):
            verb = "added to" if operation == "add" else "removed from"
            print(f"{reply['changed']} asset(s) {verb} group {reply['group_id']}")
        else:
            print(format_groups(reply["groups"]))
        return 0

    return with_client(f"groups {args.groups_command}", body)
