"""Create or summarise a cistemd project (a cisTEM-layout directory with NAME.db).

  cistem project create PATH     the project's name is the folder's name
  cistem project info [PATH]     counts of assets, groups and packages

Until the daemon lands these commands open the project database directly;
``info`` opens it read-only, so it works while another process writes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "project"
HELP = "create or summarise a project"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem project`` sub-commands."""
    sub = parser.add_subparsers(dest="project_command", metavar="SUBCOMMAND", required=True)
    create = sub.add_parser("create", help="create a new project directory")
    create.add_argument("path", type=Path, help="project directory to create")
    create.add_argument("--json", action="store_true", help="print the summary as JSON")
    info = sub.add_parser("info", help="summarise a project")
    info.add_argument(
        "path", type=Path, nargs="?", default=Path.cwd(), help="project directory (default: .)"
    )
    info.add_argument("--json", action="store_true", help="print the summary as JSON")


def format_summary(summary: dict) -> str:
    """Render a project summary (from ``Project.summary()``) for the terminal."""
    lines = []
    width = max((len(str(key)) for key in summary), default=0)
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        lines.append(f"{key:<{width}}  {value}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Execute ``cistem project create|info``."""
    from cistemd.project import Project

    if args.project_command == "create":
        with Project.create(args.path) as project:
            summary = project.summary()
            warnings = list(project.warnings)
    else:
        with Project.open(args.path, read_only=True) as project:
            summary = project.summary()
            warnings = list(project.warnings)
    if args.json:
        print(json.dumps({**summary, "warnings": warnings}, indent=2, default=str))
    else:
        print(format_summary(summary))
        for warning in warnings:
            print(f"warning: {warning}")
    return 0
