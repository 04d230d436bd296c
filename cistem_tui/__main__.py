"""Entry point of ``cistem-tui``: attach the terminal UI to your cistemd."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["build_parser", "main", "wants_ssh_mode"]

_DESCRIPTION = """\
Attach a terminal UI to your cistemd daemon and work on PROJECT: Overview,
Assets, Actions, Results, Jobs and Settings panels as in cisTEM's GUI, usable
at 80x24 over plain ssh. If no daemon runs for $CISTEM_HOME, one is started
fully detached (it outlives this terminal and the ssh session). Quitting (q)
detaches: jobs go on, and `cistem-tui` attaches again from anywhere, as often
as you like (several TUIs and CLIs may be attached at once).

Keys: F1 or ? lists them all; 1-6 switch panels; q detaches.
"""

_EPILOG = """\
Over ssh (SSH_CONNECTION set) or with --ssh the UI draws less: no animations,
at most 10 frames per second. If systemd-logind on this host kills your
processes at logout, cistem-tui says so: run `loginctl enable-linger $USER`
once so the daemon survives.
"""

_HANGUP_GRACE_S = 2.0


def build_parser() -> argparse.ArgumentParser:
    """Return the ``cistem-tui`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="cistem-tui",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "project", nargs="?", help="project directory to open (default: the one you are in)"
    )
    parser.add_argument(
        "--home", metavar="PATH", help="the CISTEM_HOME to use (default: $CISTEM_HOME or ~/.cistem)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--ssh",
        dest="ssh",
        action="store_true",
        default=None,
        help="light drawing for slow links (default when SSH_CONNECTION is set)",
    )
    mode.add_argument(
        "--no-ssh", dest="ssh", action="store_false", help="full drawing even over ssh"
    )
    parser.add_argument(
        "--panel",
        choices=("overview", "assets", "actions", "results", "jobs", "settings"),
        default="overview",
        help="the panel to show first (default: overview)",
    )
    parser.add_argument(
        "--no-start",
        action="store_true",
        help="do not start a daemon when none runs (attach only)",
    )
    return parser


def wants_ssh_mode(flag: bool | None, environ: Mapping[str, str] | None = None) -> bool:
    """Decide the light mode: ``--ssh``/``--no-ssh`` win, else whether ``SSH_CONNECTION`` is set.

    Parameters
    ----------
    flag
        The command line's choice (None: not given).
    environ
        The environment (default ``os.environ``).

    Returns
    -------
    bool
        Whether to draw lightly.
    """
    env = os.environ if environ is None else environ
    return bool(env.get("SSH_CONNECTION")) if flag is None else bool(flag)


def _light_mode_environment() -> None:
    """Ask Textual for fewer frames and no animations (read when textual is imported)."""
    os.environ.setdefault("TEXTUAL_FPS", "10")
    os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
    os.environ.setdefault("TEXTUAL_SMOOTH_SCROLL", "0")


def _install_hangup(app: Any) -> None:
    """Detach at once when the terminal goes away; never linger without one."""

    def on_hangup(signum: int, frame: object) -> None:
        # Whatever state the UI is in, the process must not outlive its
        # terminal: detach cleanly if we can, and leave by force shortly after.
        timer = threading.Timer(_HANGUP_GRACE_S, os._exit, args=(0,))
        timer.daemon = True
        timer.start()
        try:
            app.connection.close()
            app.exit(0)
        except Exception:
            os._exit(0)

    signal.signal(signal.SIGHUP, on_hangup)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cistem-tui``; return the exit status."""
    args = build_parser().parse_args(argv)
    ssh_mode = wants_ssh_mode(args.ssh)
    if ssh_mode:
        _light_mode_environment()

    from cistem_tui.connection import ensure_daemon, logind_warning
    from cistemd.client import ClientError, find_project

    home = os.path.abspath(os.path.expanduser(args.home)) if args.home else None
    if home is not None:
        os.environ["CISTEM_HOME"] = home
    notices: list[tuple[str, str]] = []
    if not args.no_start:
        try:
            started, message = ensure_daemon(home)
        except ClientError as exc:
            print(f"cistem-tui: {exc}", file=sys.stderr)
            return 1
        if started:
            notices.append(("information", message))
    warning = logind_warning()
    if warning:
        notices.append(("warning", warning))
    project = args.project
    if project is None:
        project = find_project()
    elif not os.path.isdir(project):
        notices.append(("warning", f"{project} is not a directory yet: Create it on Overview"))
        project = None

    if not ssh_mode and os.environ.get("CISTEM_TUI_GRAPHICS", "1") != "0":
        # textual-image must ask the terminal about graphics before Textual owns the tty;
        # over ssh pictures stay half blocks (light on the link, no terminal queries)
        from cistem_tui.widgets.picture import prepare_terminal_graphics

        prepare_terminal_graphics()

    from cistem_tui.app import CistemApp

    app = CistemApp(
        os.path.abspath(project) if project else None,
        home=home,
        ssh_mode=ssh_mode,
        notices=notices,
        initial_panel=args.panel,
    )
    if args.project and project is None:
        app.initial_path_hint = os.path.abspath(args.project)
    _install_hangup(app)
    code = app.run()
    app.connection.close()
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
