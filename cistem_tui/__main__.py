"""Entry point of ``cistem-tui`` (the terminal UI arrives with a later release)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]

_DESCRIPTION = """\
Attach a terminal UI to your cistemd daemon (starting it if needed) and work on
PROJECT: Overview, Assets, Actions, Results, Jobs and Settings panels as in
cisTEM's GUI, usable at 80x24 over plain ssh. Quitting detaches; jobs go on.

Not available in this release: it needs the daemon, which arrives first.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and report that the TUI is not built yet."""
    parser = argparse.ArgumentParser(
        prog="cistem-tui",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("project", nargs="?", help="project directory to open")
    parser.parse_args(argv)
    print("cistem-tui: the terminal UI is not part of this release yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
