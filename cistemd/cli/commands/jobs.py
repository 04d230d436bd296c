"""List cistemd's jobs, once or continuously.

  cistem jobs [--project PATH | --all] [--state STATE ...] [--watch] [--json]

Lists the jobs of the project the current directory is in (``--project`` names
another, ``--all`` lists every project the daemon holds; outside a project
directory ``--all`` is the default), newest first: id, state, progress, tasks
by state, action, profile. ``--watch`` redraws the list every ``--interval``
seconds until interrupted (Ctrl-C detaches; the jobs go on), or with
``--until-done`` until every listed job has ended. ``--json`` prints the list as
JSON (one list per line with ``--watch``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

NAME = "jobs"
HELP = "list jobs (--watch to follow them)"

_STATES = ("queued", "running", "completed", "failed", "cancelled")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem jobs`` arguments."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--project", help="only this project's jobs")
    where.add_argument("--all", action="store_true", help="jobs of every open project")
    parser.add_argument(
        "--state", action="append", choices=_STATES, default=[], help="only jobs in this state"
    )
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    parser.add_argument("--watch", action="store_true", help="redraw until interrupted")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between redraws (default 1)"
    )
    parser.add_argument(
        "--until-done", action="store_true", help="with --watch: stop when every job has ended"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def format_table(jobs: Sequence[Mapping[str, Any]], total: int) -> str:
    """Render job records as a table.

    Parameters
    ----------
    jobs
        JOB records.
    total
        How many jobs match in all.

    Returns
    -------
    str
    """
    if not jobs:
        return "no jobs"
    header = f"{'JOB':>6}  {'STATE':<9}  {'DONE':>5}  {'TASKS':<34}  {'ACTION':<10}  PROFILE"
    lines = [header]
    for job in jobs:
        tasks = " ".join(f"{k}:{v}" for k, v in sorted(job.get("tasks", {}).items()))
        lines.append(
            f"{job['job_id']:>6}  {job['state']:<9}  {100 * float(job['progress']):4.0f}%  "
            f"{tasks[:34]:<34}  {job['action']:<10}  {job['profile']}"
        )
    if total > len(jobs):
        lines.append(f"({total - len(jobs)} older jobs not shown; --limit)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """List (or watch) jobs; return the exit status."""
    from cistemd.client import (
        TERMINAL_STATES,
        Client,
        ClientError,
        DaemonRequestError,
        find_project,
    )

    project = None if args.all else (args.project or find_project())
    try:
        with Client() as client:
            while True:
                jobs, total = client.jobs_page(
                    project=project, states=args.state, limit=max(1, min(args.limit, 1000))
                )
                if args.json:
                    print(json.dumps(jobs if args.watch else {"jobs": jobs, "total": total}))
                else:
                    if args.watch and sys.stdout.isatty():
                        print("\033[H\033[J", end="")
                    if args.watch:
                        print(time.strftime("%H:%M:%S"), f"({project or 'all projects'})")
                    print(format_table(jobs, total))
                sys.stdout.flush()
                if not args.watch:
                    return 0
                if args.until_done and all(job["state"] in TERMINAL_STATES for job in jobs):
                    return 0
                time.sleep(max(0.1, args.interval))
    except DaemonRequestError as exc:
        print(f"cistem jobs: [{exc.code}] {exc.reason}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`| head`): not an error
        _silence_stdout()
        return 0
    except ClientError as exc:
        print(f"cistem jobs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
