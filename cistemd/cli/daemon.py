"""``cistemd``: start, stop and inspect the daemon that owns projects and runs jobs.

  cistemd start    start in the background: fully detached (double fork, new
                   session, stdin from /dev/null), logging to
                   $CISTEM_HOME/logs/cistemd.log; returns once the daemon answers
  cistemd serve    run in the foreground, logging to stderr (for systemd units,
                   containers and debugging)
  cistemd status   is it running: pid, uptime, projects, workers, jobs
                   (--json for scripts; exit status 3 when no daemon runs)
  cistemd stop     stop it gracefully and wait until it has exited; workers are
                   stopped and running jobs continue on the next start

Everything per user lives under $CISTEM_HOME (default ~/.cistem): sockets in
run/ (0700), logs, CURVE keys, the list of projects to reopen. One daemon runs
per CISTEM_HOME and host; a second one exits at once with status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cistemd import __version__

if TYPE_CHECKING:
    from cistemd.manager.home import CistemHome

__all__ = ["build_parser", "main"]

_NOT_RUNNING_STATUS = 3  # LSB: "program is not running"


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _add_daemon_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--project",
        action="append",
        default=[],
        metavar="PATH",
        help="open this project at start (repeatable); failing to open it is fatal",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=_positive_float,
        default=1.0,
        metavar="S",
        help="seconds between heartbeats with workers (default 1)",
    )
    parser.add_argument(
        "--liveness",
        type=int,
        default=3,
        metavar="N",
        help="missed heartbeats after which a worker is dead (default 3)",
    )
    parser.add_argument(
        "--worker-death-timeout",
        type=_positive_float,
        default=60.0,
        metavar="S",
        help="workers exit after this long without the daemon (default 60)",
    )
    parser.add_argument(
        "--restart-grace",
        type=float,
        default=None,
        metavar="S",
        help="after a restart, wait this long for surviving workers before launching new ones",
    )
    parser.add_argument(
        "--tcp-workers",
        metavar="ENDPOINT",
        help="also accept workers on tcp://HOST:PORT (CURVE, keys/authorized allow-list)",
    )
    parser.add_argument(
        "--tcp-clients",
        metavar="ENDPOINT",
        help="also accept clients on tcp://HOST:PORT (CURVE, keys/authorized allow-list)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the ``cistemd`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="cistemd",
        description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cistemd {__version__}")
    parser.add_argument(
        "--home", metavar="PATH", help="the CISTEM_HOME to use (default: $CISTEM_HOME or ~/.cistem)"
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    start = sub.add_parser("start", help="start the daemon in the background")
    _add_daemon_options(start)
    start.add_argument(
        "--wait",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="how long to wait for the daemon to answer (default 30)",
    )
    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    _add_daemon_options(serve)
    status = sub.add_parser("status", help="show whether and how the daemon runs")
    status.add_argument("--json", action="store_true", help="print a JSON object")
    stop = sub.add_parser("stop", help="stop the daemon and wait for it to exit")
    stop.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="how long to wait for it to exit (default 30)",
    )
    stop.add_argument(
        "--force", action="store_true", help="kill it (SIGKILL) if it has not exited in time"
    )
    stop.add_argument("--json", action="store_true", help="print a JSON object")
    return parser


def _home(args: argparse.Namespace) -> CistemHome:
    from cistemd.manager.home import CistemHome

    return CistemHome.at(args.home) if args.home else CistemHome.from_env()


def _config(args: argparse.Namespace) -> Any:
    from cistemd.manager.daemon import DaemonConfig

    return DaemonConfig(
        heartbeat_interval_s=args.heartbeat_interval,
        liveness=args.liveness,
        worker_death_timeout_s=args.worker_death_timeout,
        restart_grace_s=args.restart_grace,
        projects=tuple(os.path.abspath(p) for p in args.project),
        tcp_workers=args.tcp_workers,
        tcp_clients=args.tcp_clients,
    )


def _daemon_argv(args: argparse.Namespace, home: CistemHome) -> list[str]:
    argv = [sys.executable, "-m", "cistemd.cli.daemon", "--home", str(home.root), "serve"]
    for path in args.project:
        argv += ["--project", os.path.abspath(path)]
    argv += [
        "--heartbeat-interval",
        repr(args.heartbeat_interval),
        "--liveness",
        str(args.liveness),
        "--worker-death-timeout",
        repr(args.worker_death_timeout),
    ]
    if args.restart_grace is not None:
        argv += ["--restart-grace", repr(args.restart_grace)]
    if args.tcp_workers:
        argv += ["--tcp-workers", args.tcp_workers]
    if args.tcp_clients:
        argv += ["--tcp-clients", args.tcp_clients]
    argv += ["-v"] * args.verbose
    return argv


def _process_alive(pid: int) -> bool:
    """Return whether ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode("ascii", "replace")
    except OSError:
        return False
    fields = text[text.rfind(")") + 2 :].split()
    return bool(fields) and fields[0] not in ("Z", "X", "x")


def _serve(args: argparse.Namespace) -> int:
    from cistemd.errors import CistemError
    from cistemd.manager.daemon import Daemon
    from cistemd.manager.home import DaemonRunningError

    level = [logging.INFO, logging.DEBUG][min(args.verbose, 1)]
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s cistemd[%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    home = _home(args)
    try:
        config = _config(args)
    except ValueError as exc:
        print(f"cistemd serve: {exc}", file=sys.stderr)
        return 2
    try:
        return Daemon(home, config).serve()
    except DaemonRunningError as exc:
        print(f"cistemd: {exc}", file=sys.stderr)
        return 1
    except CistemError as exc:
        logging.getLogger("cistemd").error("cannot start: %s", exc)
        print(f"cistemd: cannot start: {exc}", file=sys.stderr)
        return 1


def _start(args: argparse.Namespace) -> int:
    home = _home(args)
    home.prepare()
    pid = home.running_pid()
    if pid is not None:
        print(
            f"cistemd: already running for CISTEM_HOME={home.root} (pid {pid}); "
            "`cistemd stop` first to restart it",
            file=sys.stderr,
        )
        return 1
    argv = _daemon_argv(args, home)
    log_path = home.daemon_log
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # first child: new session, then fork again so it can never get a tty
        try:
            os.close(read_end)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            os.chdir("/")
            os.umask(0o077)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.write(write_end, f"{os.getpid()}\n".encode())
            os.close(write_end)
            os.execv(argv[0], argv)
        except BaseException:
            pass
        os._exit(127)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read().decode("ascii", "replace").strip()
    if not text.isdigit():
        print("cistemd: could not start the daemon process", file=sys.stderr)
        return 1
    daemon_pid = int(text)
    return _wait_ready(home, daemon_pid, args.wait)


def _wait_ready(home: CistemHome, daemon_pid: int, wait: float) -> int:
    from cistemd.client import Client, ClientError

    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not _process_alive(daemon_pid):
            from cistemd.manager.launchers import read_tail

            print(
                f"cistemd: the daemon (pid {daemon_pid}) exited at start; end of "
                f"{home.daemon_log}:\n{read_tail(home.daemon_log, 2000)}",
                file=sys.stderr,
            )
            return 1
        if home.running_pid() == daemon_pid:
            try:
                with Client(home, timeout=1.0) as client:
                    client.ping()
            except ClientError:
                pass
            else:
                print(f"cistemd started (pid {daemon_pid}); log: {home.daemon_log}")
                return 0
        time.sleep(0.05)
    print(
        f"cistemd: the daemon (pid {daemon_pid}) did not answer within {wait:g} s; "
        f"see {home.daemon_log}",
        file=sys.stderr,
    )
    return 1


def _status(args: argparse.Namespace) -> int:
    from cistemd.client import Client, ClientError

    home = _home(args)
    pid = home.running_pid()
    info: dict[str, Any] = {"running": False, "pid": pid, "home": str(home.root)}
    if pid is not None:
        try:
            with Client(home, timeout=5.0) as client:
                info.update(client.status())
            info["running"] = True
        except ClientError as exc:
            info["error"] = str(exc)
    info["client_endpoint"] = home.client_endpoint
    info["log"] = str(home.daemon_log)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    elif not info["running"]:
        extra = f" (pid {pid} does not answer: {info.get('error')})" if pid else ""
        print(f"cistemd is not running for CISTEM_HOME={home.root}{extra}")
    else:
        jobs = ", ".join(f"{k} {v}" for k, v in sorted(info["jobs"].items())) or "none"
        print(
            f"cistemd {info['version']} running, pid {info['pid']}, up {info['uptime_s']:.0f} s\n"
            f"  CISTEM_HOME  {home.root}\n"
            f"  projects     {', '.join(info['projects']) or 'none'}\n"
            f"  workers      {info['workers']}\n"
            f"  jobs         {jobs}"
        )
        errors = info.get("protocol_errors") or {}
        if errors:
            print("  refused      " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
    return 0 if info["running"] else _NOT_RUNNING_STATUS


def _stop(args: argparse.Namespace) -> int:
    home = _home(args)
    pid = home.running_pid()
    if pid is None:
        message = f"no cistemd running for CISTEM_HOME={home.root}"
        print(json.dumps({"stopped": False, "pid": None}) if args.json else message)
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + args.timeout
    while _process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    forced = False
    if _process_alive(pid) and args.force:
        os.kill(pid, signal.SIGKILL)
        forced = True
        while _process_alive(pid) and time.monotonic() < deadline + 5:
            time.sleep(0.05)
    stopped = not _process_alive(pid)
    if args.json:
        print(json.dumps({"stopped": stopped, "pid": pid, "forced": forced}))
    elif stopped:
        print(f"cistemd (pid {pid}) stopped" + (" (killed)" if forced else ""))
    else:
        print(
            f"cistemd (pid {pid}) has not exited after {args.timeout:g} s; "
            "`cistemd stop --force` kills it",
            file=sys.stderr,
        )
    return 0 if stopped else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cistemd`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.action is None:
        parser.print_help()
        return 2
    handlers = {"start": _start, "serve": _serve, "status": _status, "stop": _stop}
    try:
        return handlers[args.action](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `cistemd status | head`: the reader left; exit quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
