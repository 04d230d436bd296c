"""Create, open or summarise a cistemd project (a cisTEM-layout directory with NAME.db).

  cistem project create PATH [--name NAME]   the project's name is the folder's name
  cistem project open [PATH]                 the daemon opens it (and reopens it after
                                             a restart) so its jobs can run
  cistem project info [PATH]                 counts of assets, groups, packages, jobs

PATH defaults to ``--project``, else the project the current directory is in.

These commands go through cistemd when it runs: the daemon is the project's
only writer, so a second writer would be refused. Without a daemon,
``create`` makes the project directly (the daemon opens it on first use) and
``info`` reads it read-only; ``open`` needs the daemon -- start it with
``cistemd start``. ``--json`` prints ``{"path", "name", <count>: n, ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cistemd.cli.commands._daemon import add_common, project_path, with_client

NAME = "project"
HELP = "create, open or summarise a project"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem project`` sub-commands."""
    sub = parser.add_subparsers(dest="project_command", metavar="SUBCOMMAND", required=True)
    create = sub.add_parser("create", help="create a new project directory")
    create.add_argument("path", help="project directory to create")
    create.add_argument("--name", default="", help="project name (default: the folder's)")
    add_common(create, project=False)
    for name, text in (("open", "open a project in the daemon"), ("info", "summarise a project")):
        command = sub.add_parser(name, help=text)
        command.add_argument("path", nargs="?", help="project directory (default: --project or .)")
        add_common(command)


def format_summary(summary: dict[str, Any]) -> str:
    """Render a project summary (flat ``{key: value}``) for the terminal."""
    lines = []
    width = max((len(str(key)) for key in summary), default=0)
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        if isinstance(value, list):
            value = "; ".join(str(v) for v in value) or "none"
        lines.append(f"{key:<{width}}  {value}")
    return "\n".join(lines)


def _daemon_running() -> bool:
    from cistemd.manager.home import CistemHome

    home = CistemHome.from_env()
    return home.client_socket.exists() and home.running_pid() is not None


def _print(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    print(format_summary({k: v for k, v in summary.items() if k != "warnings"}))
    for warning in summary.get("warnings", []):
        print(f"warning: {warning}")


def _from_reply(reply: dict[str, Any]) -> dict[str, Any]:
    return {"path": reply["path"], "name": reply["name"], **reply.get("counts", {})}


def _direct(path: str, create: bool, name: str) -> dict[str, Any]:
    from cistemd.project import Project

    if create:
        with Project.create(path, name=name or None) as project:
            return project.summary()
    with Project.open(path, read_only=True) as project:
        return project.summary()


def run(args: argparse.Namespace) -> int:
    """Execute ``cistem project create|open|info``."""
    command = f"project {args.project_command}"
    if args.project_command == "create":
        path = project_path(args.path)
    else:
        path = project_path(args.path or args.project)
    if args.project_command != "open" and not _daemon_running():
        _print(
            _direct(path, args.project_command == "create", getattr(args, "name", "")), args.json
        )
        return 0

    def body(client: Any) -> int:
        if args.project_command == "create":
            reply = client.create_project(path, name=args.name)
        elif args.project_command == "open":
            reply = client.open_project(path)
        else:
            reply = client.project_info(path)
        _print(_from_reply(reply), args.json)
        if args.project_command == "create" and not args.json:
            print(f"created; next: cd {path} && cistem import movies …", file=sys.stderr)
        return 0

    return with_client(command, body)
