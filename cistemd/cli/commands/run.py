"""Submit a job: run an action on a project through cistemd.

  cistem run ACTION [--PARAMETER VALUE ...] [--profile NAME] [--project PATH]
                    [--wait] [--json]

Every action parameter is an option named like the parameter with dashes
(``--crash-every 5`` sets ``crash_every``); values are checked by the action,
and parameters left out take cisTEM's GUI defaults. ``cistem run ACTION
--help`` lists them. ``--profile`` picks the run profile: ``local`` (cisTEM's
"Default Local": CPU count + 1 workers, the default), ``local:N`` (N local
workers) or the name of a profile file in ``$CISTEM_HOME/profiles/``.
``--project`` defaults to the project the current directory is in.

The job is acknowledged once the daemon has stored it: it survives the
terminal, the client and a daemon restart. ``--json`` prints ``{"job_id": …}``;
``--wait`` follows the job until it ends and exits 0 only if it completed.

Example::

  cistem run selftest --tasks 100 --sleep 0.2 --crash-every 10 --profile local:4
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

NAME = "run"
HELP = "submit a job (an action on a project) to cistemd"

_OWN_OPTIONS = {"--profile", "--project", "--json", "--wait", "--timeout"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem run`` arguments."""
    parser.add_argument("action", metavar="ACTION", help="the action to run (e.g. selftest)")
    parser.add_argument("--profile", default="", help="run profile (default: local)")
    parser.add_argument("--project", help="project directory (default: the current one)")
    parser.add_argument("--json", action="store_true", help='print {"job_id": ...}')
    parser.add_argument("--wait", action="store_true", help="wait until the job ends")
    parser.add_argument(
        "--timeout", type=float, default=None, help="with --wait: give up after this many seconds"
    )
    parser.add_argument(
        "parameters",
        nargs=argparse.REMAINDER,
        metavar="--PARAMETER VALUE",
        help="action parameters",
    )


def parse_parameters(tokens: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``--name value`` tokens into action parameters and this command's options.

    Parameters
    ----------
    tokens
        What follows the action on the command line.

    Returns
    -------
    tuple of dict
        ``(parameters, options)``: parameter names with underscores and their
        values as typed (the action converts them); ``options`` holds
        ``--profile``, ``--project``, ``--json``, ``--wait``, ``--timeout``, ``--help``
        given after the action.

    Raises
    ------
    InvalidInputError
        A value without an option, or an option given twice.
    """
    from cistemd.errors import InvalidInputError

    parameters: dict[str, Any] = {}
    options: dict[str, Any] = {}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token in ("-h", "--help"):
            options["help"] = True
            index += 1
            continue
        if not token.startswith("--") or token == "--":
            raise InvalidInputError(
                f"unexpected {token!r}: parameters are given as --name value (see --help)"
            )
        name, has_value, value = token[2:].partition("=")
        index += 1
        if not has_value:
            flag = f"--{name}" in ("--json", "--wait")
            if not flag and index < len(tokens) and not tokens[index].startswith("--"):
                value = tokens[index]
                index += 1
            else:
                value = "yes"
        if f"--{name}" in _OWN_OPTIONS:
            options[name] = value
            continue
        key = name.replace("-", "_")
        if not key or key in parameters:
            raise InvalidInputError(f"parameter --{name} is given twice or is empty")
        parameters[key] = value
    return parameters, options


def _describe_action(name: str) -> str:
    from cistemd.actions.base import get_action

    action = get_action(name)
    lines = [f"cistem run {name}: {action.title or name}", "", "parameters (default):"]
    for parameter in action.parameters:
        default = "required" if parameter.default is None else repr(parameter.default)
        choices = f" [{', '.join(parameter.choices)}]" if parameter.choices else ""
        lines.append(
            f"  --{parameter.name.replace('_', '-'):<20} {parameter.kind:<6} ({default}){choices}"
        )
        lines.append(f"      {parameter.help}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Submit the job; with ``--wait`` follow it. Return the exit status."""
    from cistemd.client import (
        TERMINAL_STATES,
        Client,
        ClientError,
        DaemonRequestError,
        find_project,
    )
    from cistemd.errors import InvalidInputError

    parameters, options = parse_parameters(list(args.parameters))
    if options.get("help"):
        print(_describe_action(args.action))
        return 0
    profile = str(options.get("profile", args.profile))
    project = options.get("project", args.project) or find_project()
    as_json = bool(args.json or "json" in options)
    wait = bool(args.wait or "wait" in options)
    timeout = options.get("timeout", args.timeout)
    if project is None:
        raise InvalidInputError(
            "no project: give --project PATH, or run the command inside a project directory"
        )
    try:
        with Client() as client:
            job_id = client.submit(project, args.action, parameters, profile)
            if not wait:
                if as_json:
                    print(json.dumps({"job_id": job_id}))
                else:
                    print(f"job {job_id} submitted; follow it with `cistem job show {job_id}`")
                return 0
            record = client.wait_for_job(
                job_id,
                states=TERMINAL_STATES,
                timeout=float(timeout) if timeout is not None else float("inf"),
                interval=0.25,
            )
    except DaemonRequestError as exc:
        print(f"cistem run: [{exc.code}] {exc.reason}", file=sys.stderr)
        return 2 if exc.code in ("invalid_input", "unknown_action") else 1
    except ClientError as exc:
        print(f"cistem run: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(record))
    else:
        tasks = ", ".join(f"{k} {v}" for k, v in sorted(record["tasks"].items()))
        print(f"job {job_id} {record['state']}: {record['message']} ({tasks})")
    return 0 if record["state"] == "completed" else 1
