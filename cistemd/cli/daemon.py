"""``cistemd``: the daemon that owns projects, the job broker and the workers.

The daemon is not built yet (issue 3). This entry point exists so that the
command is installed and documents what is coming.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cistemd import __version__

__all__ = ["main"]

_DESCRIPTION = """\
cistemd keeps cisTEM projects and their jobs alive when no client is attached:
it is the only writer of the project database, runs a ZeroMQ job broker and
starts workers through run profiles (local processes, SSH, SLURM/SGE/LSF/PBS).

  cistemd start    start in the background (log and pid file under $CISTEM_HOME)
  cistemd serve    run in the foreground, logging to stderr
  cistemd status   is it running, which projects, workers and jobs
  cistemd stop     stop it; running jobs are re-queued on the next start

Not available in this release: the daemon arrives with the next one. Until
then `cistem demo`, `cistem simulate`, `cistem info` and `cistem project` work
without a daemon.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``; every action reports that the daemon is not built yet."""
    parser = argparse.ArgumentParser(
        prog="cistemd",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cistemd {__version__}")
    parser.add_argument("action", choices=["start", "stop", "status", "serve"], nargs="?")
    args = parser.parse_args(argv)
    if args.action is None:
        parser.print_help()
        return 2
    print(f"cistemd {args.action}: the daemon is not part of this release yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
