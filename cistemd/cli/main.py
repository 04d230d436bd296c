"""``cistem``: the headless command line of cistemd.

Every sub-command is a module in :mod:`cistemd.cli.commands`; this module only
builds the parser and dispatches. Exit status: 0 success, 1 the command ran but
failed, 2 bad input (a one-line message on stderr names the file or field).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from cistemd import __version__
from cistemd.errors import CistemError

__all__ = ["build_parser", "main"]

# Order = order in ``cistem --help``.
# One name per line so independent changes do not collide.
COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "simulate",
    "info",
    "project",
    "imports",
    "assets",
    "groups",
    "run",
    "jobs",
    "job",
    "results",
    "picks",
    "packages",
    "profile",
    # standalone programs (cisTEM's binaries), in pipeline order
    "unblur",
    "ctffind",
    "find_particles",
    "project3d",
    "reconstruct3d",
    "merge3d",
    "sharpen_map",
)

_COMING = """\
jobs run in the cistemd daemon (`cistemd start`); they go on when you log out.
`cistem run ACTION` submits one (align_movies, find_ctf, find_particles,
create_refinement_package, generate_3d, sharpen_map, selftest).

coming in later releases (see the issues):
  refine2d, refine3d, ab-initio       2D classification, refinement, ab-initio 3D
"""


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"cistemd.cli.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    """Return the ``cistem`` argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="cistem",
        description=(
            "cistemd command line: single-particle cryo-EM from movies to maps. "
            "Projects, assets and jobs live in the cistemd daemon; every command "
            "has --json output for scripts."
        ),
        epilog=_COMING,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cistem {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = _load(name)
        command = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cistem`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    module = getattr(args, "_module", None)
    if module is None:
        parser.print_help()
        return 2
    try:
        return int(module.run(args))
    except CistemError as error:
        print(f"cistem {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cistem {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `cistem … | head`: the reader left; exit quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
