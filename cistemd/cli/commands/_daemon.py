"""Shared plumbing of the ``cistem`` commands that talk to cistemd (not a command itself).

Exit status of every daemon command: 0 done; 2 bad input -- the daemon refused
a file, a value or an id (``invalid_input``, ``no_such_job``, ...), one line on
stderr names it; 1 anything else (no daemon, a timeout, an internal error).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from cistemd.client import Client

INPUT_CODES: Final = frozenset(
    {
        "invalid_input",
        "no_such_job",
        "ambiguous_job",
        "project_error",
        "project_locked",
        "unknown_action",
        "schema",
    }
)
"""Daemon error codes that mean the user's input was wrong (exit status 2)."""


def one_line(text: str) -> str:
    """Return ``text`` on one line (newlines become ``; ``)."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def project_path(given: str | os.PathLike[str] | None) -> str:
    """Return the project to work on: ``given``, else the one the current directory is in.

    Raises
    ------
    InvalidInputError
        Neither is there.
    """
    from cistemd.client import find_project
    from cistemd.errors import InvalidInputError

    if given:
        return os.path.abspath(os.path.expanduser(os.fspath(given)))
    found = find_project()
    if found is None:
        raise InvalidInputError(
            "no project: give --project PATH, or run the command inside a project directory"
        )
    return found


def with_client(command: str, body: Callable[[Client], int]) -> int:
    """Connect to the daemon, run ``body(client)`` and map errors to exit statuses.

    Parameters
    ----------
    command
        The command's words for messages (``"import movies"``).
    body
        The work; returns the exit status.

    Returns
    -------
    int
        The exit status.
    """
    from cistemd.client import Client, ClientError, DaemonRequestError

    try:
        with Client() as client:
            return body(client)
    except DaemonRequestError as exc:
        print(f"cistem {command}: [{exc.code}] {one_line(exc.reason)}", file=sys.stderr)
        return 2 if exc.code in INPUT_CODES else 1
    except BrokenPipeError:  # the reader went away (`| head`): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    except ClientError as exc:
        print(f"cistem {command}: {one_line(str(exc))}", file=sys.stderr)
        return 1


def add_common(parser: Any, *, project: bool = True) -> None:
    """Add ``--project PATH`` (if asked) and ``--json`` to a parser."""
    if project:
        parser.add_argument(
            "--project", help="project directory (default: the one the current directory is in)"
        )
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts)")
