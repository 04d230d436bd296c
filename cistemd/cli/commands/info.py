"""Describe cryo-EM files.

MRC images/stacks/volumes, TIFF movies, cisTEM/RELION ``.star``, Frealign
``.par`` and particle-position text files.

Prints what a user needs to know (dimensions, mode, pixel size, frames,
columns, particle count), like IMOD's ``header``. A file that cannot be read
gives a one-line message naming it and exit status 2; the other files are
still described.
"""

from __future__ import annotations

import argparse
import json
import sys

NAME = "info"
HELP = "describe MRC, TIFF, STAR, PAR and particle-position files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem info`` arguments."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="files to describe")
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list, one object per file"
    )


def run(args: argparse.Namespace) -> int:
    """Describe every file; return 2 if any could not be read."""
    from cistemd.errors import InvalidInputError
    from cistemd.io import info

    status = 0
    results: list[dict] = []
    for path in args.files:
        try:
            description = info.describe(path)
        except InvalidInputError as error:
            message = " ".join(str(error).split())  # one line, whatever the reader said
            print(f"cistem info: {message}", file=sys.stderr)
            results.append({"path": str(path), "error": message})
            status = 2
            continue
        results.append(description)
        if not args.json:
            if len(results) > 1:
                print()
            print(info.format_description(description))
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False, allow_nan=False))
    return status
