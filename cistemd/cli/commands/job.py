"""Show, follow or cancel one job of cistemd.

  cistem job show ID [--tasks N|all] [--json]
                                        state, progress, tasks by state, parameters,
                                        and the first N tasks (default 100) with their
                                        state, attempt, worker host and failure evidence
  cistem job log ID [--follow] [--json] the job's story: state changes, worker
                                        losses, failures with their evidence, progress
  cistem job cancel ID [--json]         stop every task of the job (within 2 s) and
                                        its workers

``--json`` output of ``show`` and ``cancel`` is the job record: ``"state"`` is
one of queued, running, completed, failed, cancelled; ``"task_counts"`` counts
the tasks in each state (queued, assigned, running, completed, failed,
cancelled). ``show --json`` adds ``"tasks"``: a list of per-task records
``{task_id, key, stage, label, state, attempt, failures, worker_id, host,
reason, evidence}`` in stage order -- the first ``--tasks`` of them (default
100; ``all`` for every one, paged from the daemon), with ``"tasks_total"``;
``--tasks 0`` leaves the list empty. ``log --json`` prints one event per line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

NAME = "job"
HELP = "show, follow or cancel one job"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem job`` sub-commands."""
    sub = parser.add_subparsers(dest="job_command", metavar="SUBCOMMAND", required=True)
    show = sub.add_parser("show", help="describe a job")
    show.add_argument("job_id", metavar="ID")
    show.add_argument(
        "--tasks",
        default="100",
        metavar="N",
        help="list the first N tasks (default 100; 'all' for every one)",
    )
    show.add_argument("--json", action="store_true", help="print the job record as JSON")
    log = sub.add_parser("log", help="print a job's events")
    log.add_argument("job_id", metavar="ID")
    log.add_argument("--follow", "-f", action="store_true", help="keep printing until it ends")
    log.add_argument("--json", action="store_true", help="one JSON event per line")
    cancel = sub.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id", metavar="ID")
    cancel.add_argument("--json", action="store_true", help="print the job record as JSON")


def format_job(record: Mapping[str, Any]) -> str:
    """Render a job record for the terminal.

    Parameters
    ----------
    record
        A JOB record (``Client.job``).

    Returns
    -------
    str
    """
    counts = record.get("task_counts", record.get("tasks", {}))
    if not isinstance(counts, Mapping):
        counts = {}
    tasks = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
    parameters = " ".join(
        f"--{key.replace('_', '-')} {value}" for key, value in record.get("parameters", {}).items()
    )
    lines = [
        f"job {record['job_id']}  {record['action']}  {record['state']}  "
        f"{100 * float(record['progress']):.0f}%",
        f"  project     {record['project']}",
        f"  profile     {record['profile']}",
        f"  submitted   {record['submitted']}",
        f"  tasks       {tasks}",
        f"  parameters  {parameters}",
    ]
    if record.get("message"):
        lines.append(f"  message     {record['message']}")
    task_list = record.get("tasks")
    if isinstance(task_list, list):
        unfinished = [t for t in task_list if t["state"] != "completed"]
        for task in unfinished[:20]:
            where = f" on {task['host']}" if task["host"] else ""
            reason = f": {task['reason']}" if task["reason"] else ""
            lines.append(
                f"  task {task['key']:<14} {task['state']:<9} attempt {task['attempt']}"
                f"{where}{reason}"
            )
        if len(unfinished) > 20:
            lines.append(f"  ({len(unfinished) - 20} more unfinished tasks; --json)")
    return "\n".join(lines)


def task_limit(text: str) -> int | None:
    """Parse ``--tasks``: a count ≥ 0, or ``all`` (None)."""
    from cistemd.errors import InvalidInputError

    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidInputError(f"--tasks: expected a count ≥ 0 or 'all', got {text!r}")
    return value


def with_tasks(client: Any, record: Mapping[str, Any], limit: int | None) -> dict[str, Any]:
    """Return ``record`` with ``task_counts`` and the first ``limit`` per-task records."""
    out = dict(record)
    out["task_counts"] = out.pop("tasks", {})
    if limit == 0:
        out["tasks"], out["tasks_total"] = [], sum(out["task_counts"].values())
    else:
        out["tasks"], out["tasks_total"] = client.job_tasks(record["job_id"], limit=limit)
    return out


def format_event(event: Mapping[str, Any]) -> str:
    """Render one event for the terminal.

    Parameters
    ----------
    event
        An EVENT record.

    Returns
    -------
    str
    """
    payload = event.get("payload", {})
    kind = event["kind"]
    if kind == "state":
        old = payload.get("old") or "new"
        text = f"{old} -> {payload.get('state')}: {payload.get('reason', '')}"
    elif kind == "progress" and "total" in payload:
        text = f"{payload.get('done')}/{payload.get('total')} tasks ended"
    elif kind == "progress":
        fraction = payload.get("fraction")
        share = f"{100 * fraction:.0f}% " if isinstance(fraction, int | float) else ""
        text = f"task {payload.get('task_id')}: {share}{payload.get('message', '')}"
    else:
        text = str(payload.get("message", payload))
        evidence = payload.get("evidence")
        if isinstance(evidence, Mapping):
            tail = str(evidence.get("stderr_tail") or evidence.get("traceback") or "").strip()
            if tail:
                text += "\n      " + "\n      ".join(tail.splitlines()[-5:])
    return f"{event['time'][:19].replace('T', ' ')}  {kind:<8} {text}"


def run(args: argparse.Namespace) -> int:
    """Execute ``cistem job show|log|cancel``."""
    from cistemd.client import TERMINAL_STATES, Client, ClientError, DaemonRequestError

    try:
        with Client() as client:
            if args.job_command == "show":
                limit = task_limit(args.tasks)
                record = with_tasks(client, client.job(args.job_id), limit)
                print(json.dumps(record, indent=2) if args.json else format_job(record))
                return 0
            if args.job_command == "cancel":
                record = client.cancel(args.job_id)
                print(json.dumps(record, indent=2) if args.json else format_job(record))
                return 0
            events = client.job_events(args.job_id)
            for event in events:
                print(json.dumps(event) if args.json else format_event(event), flush=True)
            if not args.follow or client.job(args.job_id)["state"] in TERMINAL_STATES:
                return 0
            last = events[-1]["event_id"] if events else 0
            with client.subscribe(since_event_id=last, job_id=args.job_id) as stream:
                while True:
                    live = stream.get(timeout=1.0)
                    if live is None:
                        if client.job(args.job_id)["state"] in TERMINAL_STATES:
                            return 0
                        continue
                    print(json.dumps(live) if args.json else format_event(live), flush=True)
    except DaemonRequestError as exc:
        print(f"cistem job {args.job_command}: [{exc.code}] {exc.reason}", file=sys.stderr)
        return 2 if exc.code in ("no_such_job", "invalid_input") else 1
    except BrokenPipeError:  # the reader went away (`| head`): not an error
        _silence_stdout()
        return 0
    except ClientError as exc:
        print(f"cistem job {args.job_command}: {exc}", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
