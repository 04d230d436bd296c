"""Manage run profiles: where and how a job's workers start.

  cistem profile list [--json]              every profile (Default Local first)
  cistem profile show NAME [--json]         one profile in full
  cistem profile add NAME [OPTIONS]         a new profile, from a shipped template
                                            (--template slurm-sbatch ...) and/or options
  cistem profile edit NAME [OPTIONS]        change some fields of a profile
  cistem profile delete NAME                delete a stored profile
  cistem profile import FILE                cisTEM's default_run_profiles.txt
  cistem profile export [NAME ...] [-o FILE]  the same format, for cisTEM
  cistem profile script NAME                the exact script or command lines the
                                            next job's first worker(s) would get

Profiles are files in ``$CISTEM_HOME/profiles/`` (0600); a job names one with
``cistem run ACTION --profile NAME``. Templates shipped with cistemd
(``run_profiles/``): local, ssh-cluster, slurm-sbatch, slurm-srun,
slurm-salloc, sge, lsf, pbs.

Options of add/edit: ``--launcher local|ssh|scheduler``, ``--copies N``,
``--threads N``, ``--delay-ms N``, ``--command TEMPLATE`` (``$command`` = the
worker), ``--host [USER@]HOST[:PORT]`` (repeat: one command line per host,
for ssh), ``--gui-address ADDR`` (where remote workers connect back: address,
``ADDR:PORT`` or an interface name), ``--worker-python PATH``; SSH:
``--known-hosts FILE``, ``--identity-file FILE``, ``--ssh-user``,
``--remote-dir``; schedulers: ``--scheduler slurm|sge|lsf|pbs``, ``--mode
batch|srun|allocation``, ``--queue``, ``--account``, ``--walltime``,
``--memory``, ``--directive=LINE`` (repeat; write ``--directive=--gres=gpu:1``
with ``=`` when the line starts with ``-``), ``--prologue LINE`` (repeat),
``--submit-options=OPTIONS``.

Exit status: 0 done, 2 bad input (unknown profile, bad field: one line on
stderr names it). ``script`` prints no secret: the worker's CURVE keys are in a
0600 credentials file whose path the script names.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cistemd.manager.profiles import RunProfile

NAME = "profile"
HELP = "list, edit, import and export run profiles; print a profile's job script"


def _add_fields(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--launcher", choices=("local", "ssh", "scheduler"))
    parser.add_argument("--copies", type=int, help="workers per command line (per host)")
    parser.add_argument("--threads", type=int, help="threads per worker")
    parser.add_argument("--delay-ms", type=int, help="milliseconds between two copies")
    parser.add_argument("--command", help="command template; $command = the worker")
    parser.add_argument(
        "--host", action="append", default=None, help="[user@]host[:port] (repeat per host)"
    )
    parser.add_argument("--gui-address", help="address remote workers connect back to")
    parser.add_argument("--worker-python", help="python with cistemd on the worker machines")
    parser.add_argument("--known-hosts", help="ssh: known_hosts file (never added to)")
    parser.add_argument("--identity-file", help="ssh: private key file")
    parser.add_argument("--ssh-user", help="ssh: login name")
    parser.add_argument("--remote-dir", help="ssh: directory for credentials on the hosts")
    parser.add_argument("--scheduler", choices=("slurm", "sge", "lsf", "pbs"))
    parser.add_argument("--mode", choices=("batch", "srun", "allocation"))
    parser.add_argument("--queue", help="partition / queue")
    parser.add_argument("--account", help="account / project to charge")
    parser.add_argument("--walltime", help="time limit HH:MM:SS")
    parser.add_argument("--memory", help="memory per worker job, e.g. 8G")
    parser.add_argument("--directive", action="append", default=None, help="extra header line")
    parser.add_argument("--prologue", action="append", default=None, help="shell line before")
    parser.add_argument("--submit-options", help="extra options of the submit command")
    parser.add_argument("--json", action="store_true", help="print the profile as JSON")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem profile`` sub-commands."""
    sub = parser.add_subparsers(dest="profile_command", metavar="SUBCOMMAND", required=True)
    listing = sub.add_parser("list", help="list the profiles")
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = sub.add_parser("show", help="show one profile")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true", help="print JSON")
    add = sub.add_parser("add", help="add a profile")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--template", help="start from a shipped template (see the list above)")
    add.add_argument("--force", action="store_true", help="replace a profile of that name")
    _add_fields(add)
    edit = sub.add_parser("edit", help="change fields of a profile")
    edit.add_argument("name", metavar="NAME")
    _add_fields(edit)
    delete = sub.add_parser("delete", help="delete a profile")
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("--json", action="store_true", help="print JSON")
    imports = sub.add_parser("import", help="import cisTEM's default_run_profiles.txt")
    imports.add_argument("file", metavar="FILE")
    imports.add_argument("--json", action="store_true", help="print JSON")
    export = sub.add_parser("export", help="write cisTEM's default_run_profiles.txt")
    export.add_argument("names", metavar="NAME", nargs="*", help="profiles (default: all)")
    export.add_argument("-o", "--output", help="file to write (default: stdout)")
    script = sub.add_parser("script", help="print what the next job would submit or run")
    script.add_argument("name", metavar="NAME")
    script.add_argument("--worker-id", help="worker id to show (default: made up)")
    script.add_argument("--json", action="store_true", help="print JSON")


def _store() -> Any:
    from cistemd.manager.home import CistemHome
    from cistemd.manager.profile_store import ProfileStore

    return ProfileStore(CistemHome.from_env().root / "profiles")


def _where(profile: RunProfile) -> str:
    if profile.launcher == "ssh":
        return ", ".join(f"{c.host}×{c.number_of_copies}" for c in profile.commands)
    if profile.launcher == "scheduler":
        settings = profile.scheduler
        queue = f" ({settings.queue})" if settings.queue else ""
        return f"{settings.kind} {settings.mode}{queue}"
    return "this machine"


def format_list(profiles: list[RunProfile]) -> str:
    """Render profiles as a table.

    Parameters
    ----------
    profiles
        The profiles.

    Returns
    -------
    str
    """
    width = max([len("NAME"), *(len(p.name) for p in profiles)])
    lines = [f"{'NAME':<{width}}  {'LAUNCHER':<9}  {'WORKERS':>7}  WHERE"]
    for profile in profiles:
        lines.append(
            f"{profile.name:<{width}}  {profile.launcher:<9}  {profile.total_copies:>7}  "
            f"{_where(profile)}"
        )
    return "\n".join(lines)


def _updated(base: Mapping[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Return ``base`` (a profile map) with the fields given on the command line."""
    data = json.loads(json.dumps(dict(base)))
    data.setdefault("commands", [{}])
    data.setdefault("ssh", {})
    data.setdefault("scheduler", {})
    for option, key in (("launcher", "launcher"), ("gui_address", "gui_address"),
                        ("worker_python", "worker_python")):  # fmt: skip
        if getattr(args, option) is not None:
            data[key] = getattr(args, option)
    if args.host is not None:
        template = data["commands"][0] if data["commands"] else {}
        data["commands"] = [{**template, "host": host} for host in args.host]
        if args.launcher is None:
            data["launcher"] = "ssh"
    for option, key in (("copies", "number_of_copies"), ("threads", "threads_per_copy"),
                        ("delay_ms", "delay_ms"), ("command", "command_to_run")):  # fmt: skip
        if getattr(args, option) is not None:
            for command in data["commands"]:
                command[key] = getattr(args, option)
    for option, key in (("known_hosts", "known_hosts"), ("identity_file", "identity_file"),
                        ("ssh_user", "user"), ("remote_dir", "remote_dir")):  # fmt: skip
        if getattr(args, option) is not None:
            data["ssh"][key] = getattr(args, option)
    for option, key in (("scheduler", "kind"), ("mode", "mode"), ("queue", "queue"),
                        ("account", "account"), ("walltime", "walltime"), ("memory", "memory"),
                        ("directive", "extra_directives"), ("prologue", "prologue"),
                        ("submit_options", "submit_options")):  # fmt: skip
        if getattr(args, option) is not None:
            data["scheduler"][key] = getattr(args, option)
    if args.scheduler is not None and args.launcher is None:
        data["launcher"] = "scheduler"
    return data


def _print_profile(profile: RunProfile, as_json: bool) -> None:
    if as_json:
        print(json.dumps(profile.to_dict()))
        return
    data = profile.to_dict()
    print(f"{profile.name}: {profile.launcher}, {profile.total_copies} worker(s)")
    for number, command in enumerate(data["commands"]):
        where = f" on {command['host']}" if command["host"] else ""
        print(
            f"  command {number}: {command['command_to_run']!r} × {command['number_of_copies']}"
            f"{where}, {command['threads_per_copy']} thread(s), {command['delay_ms']} ms apart"
        )
    if profile.gui_address:
        print(f"  workers connect back to: {profile.gui_address}")
    if profile.worker_python:
        print(f"  worker python: {profile.worker_python}")
    if profile.launcher == "ssh":
        print(f"  ssh: {json.dumps(data['ssh'])}")
    if profile.launcher == "scheduler":
        print(f"  scheduler: {json.dumps(data['scheduler'])}")


def preview(profile: RunProfile, worker_id: str | None = None) -> list[dict[str, str]]:
    """Return what the next job's first copies of each command would run or submit.

    Parameters
    ----------
    profile
        The profile.
    worker_id
        The worker id to show (default ``w<next job>-0123abcd``).

    Returns
    -------
    list of dict
        ``{"command": index, "kind": "script" | "command line", "text": ...}`` each.
    """
    import os
    import shlex

    from cistemd.manager.daemon import DaemonConfig
    from cistemd.manager.home import CistemHome
    from cistemd.manager.launchers import resolve_worker_address, worker_command
    from cistemd.manager.profiles import render_template
    from cistemd.manager.schedulers import (
        allocation_step_command,
        job_name,
        job_script,
        salloc_command,
        srun_command,
    )

    home = CistemHome.from_env()
    config = DaemonConfig()
    job_id = str(home.read_job_counter() + 1)
    endpoint = home.workers_endpoint
    credentials = None
    if profile.remote:
        probe = next((c.host for c in profile.commands if c.host), "")
        address, port = resolve_worker_address(profile.gui_address, probe)
        if not port:
            try:
                port = int(json.loads((home.root / "tcp_workers.json").read_text())[address])
            except (OSError, ValueError, KeyError, TypeError):
                port = 0
        endpoint = f"tcp://{address}:{port or '<port>'}"
        credentials = str(home.root / "credentials" / f"job-{job_id}.json")
    log_dir = home.logs_dir / "workers" / f"job-{job_id}"
    shown = []
    for index, command in enumerate(profile.commands):
        wid = worker_id or f"w{job_id}-0123abc{index}"
        path = credentials
        if credentials is not None and profile.launcher == "ssh":
            remote = profile.ssh.remote_dir or ".cistem/remote"
            path = f"{remote.rstrip('/')}/{os.path.basename(credentials)}"
        def worker(
            wid: str, path: str | None = path, threads: int = command.threads_per_copy
        ) -> list[str]:
            return worker_command(
                endpoint=endpoint, job_id=job_id, worker_id=wid, threads=threads,
                heartbeat_interval_s=config.heartbeat_interval_s,
                death_timeout_s=config.worker_death_timeout_s, credentials_file=path,
                python=profile.worker_python or None,
            )  # fmt: skip

        argv = worker(wid)
        settings = profile.scheduler
        if profile.launcher == "scheduler" and settings.mode == "batch":
            text = job_script(settings, argv, command_template=command.command_to_run,
                              threads=command.threads_per_copy, log_dir=log_dir)  # fmt: skip
            shown.append({"command": str(index), "kind": "script", "text": text})
        elif profile.launcher == "scheduler" and settings.mode == "srun":
            line = srun_command(settings, argv, command_template=command.command_to_run,
                                threads=command.threads_per_copy)  # fmt: skip
            shown.append({"command": str(index), "kind": "command line", "text": shlex.join(line)})
        elif profile.launcher == "scheduler":
            name = job_name(settings, f"job{job_id}-c{index}-{wid}")
            salloc = salloc_command(settings, name=name, workers=command.number_of_copies,
                                    threads=command.threads_per_copy)  # fmt: skip
            everyone = [worker(f"{wid}-{n}") for n in range(command.number_of_copies)]
            step = allocation_step_command(settings, "<allocation id>", everyone,
                                           command_template=command.command_to_run,
                                           threads=command.threads_per_copy)  # fmt: skip
            text = shlex.join(salloc) + "\n" + shlex.join(step)
            shown.append({"command": str(index), "kind": "command line", "text": text})
        elif profile.launcher == "ssh":
            body = render_template(command.command_to_run, argv)
            text = f"ssh {command.host}: exec {body}"
            shown.append({"command": str(index), "kind": "command line", "text": text})
        else:
            text = render_template(command.command_to_run, argv)
            shown.append({"command": str(index), "kind": "command line", "text": text})
    return shown


def run(args: argparse.Namespace) -> int:
    """Carry out ``cistem profile ...``; return the exit status."""
    from cistemd.errors import CistemError

    try:
        return _run(args)
    except CistemError as exc:
        print(f"cistem profile {args.profile_command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cistem profile {args.profile_command}: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from cistemd.errors import InvalidInputError
    from cistemd.manager.profile_store import shipped_templates
    from cistemd.manager.profiles import RunProfile

    store = _store()
    command = args.profile_command
    if command == "list":
        profiles = store.all()
        if args.json:
            print(json.dumps({"profiles": [p.to_dict() for p in profiles]}))
        else:
            print(format_list(profiles))
        return 0
    if command == "show":
        _print_profile(store.get(args.name), args.json)
        return 0
    if command in ("add", "edit"):
        if command == "add":
            if args.name in store.names() and not args.force and store.path(args.name).exists():
                raise InvalidInputError(
                    f"a profile {args.name!r} exists; use `cistem profile edit` or --force"
                )
            base: dict[str, Any] = {"name": args.name, "commands": [{}]}
            if args.template:
                templates = shipped_templates()
                if args.template not in templates:
                    raise InvalidInputError(
                        f"no template {args.template!r}; shipped: {', '.join(sorted(templates))}"
                    )
                base = {**templates[args.template].to_dict(), "name": args.name}
        else:
            base = store.get(args.name).to_dict()
        profile = RunProfile.from_dict(_updated(base, args))
        store.save(profile)
        _print_profile(profile, args.json)
        return 0
    if command == "delete":
        store.delete(args.name)
        if args.json:
            print(json.dumps({"deleted": args.name}))
        return 0
    if command == "import":
        with open(args.file, encoding="utf-8") as handle:
            names = store.import_text(handle.read())
        print(json.dumps({"imported": names}) if args.json else "\n".join(names))
        return 0
    if command == "export":
        text = store.export_text(args.names or None)
        if args.output:
            with open(args.output, "w", encoding="utf-8") as handle:
                handle.write(text)
        else:
            sys.stdout.write(text)
        return 0
    shown = preview(store.get(args.name), args.worker_id)
    if args.json:
        print(json.dumps({"profile": args.name, "launch": shown}))
    else:
        for item in shown:
            if len(shown) > 1:
                print(f"# command {item['command']} ({item['kind']})")
            sys.stdout.write(item["text"] if item["text"].endswith("\n") else item["text"] + "\n")
    return 0
