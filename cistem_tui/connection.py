"""The TUI's link to cistemd: one locked client for requests, one thread for events.

No widget touches a socket. The app owns one :class:`Connection`:

* :meth:`Connection.call` runs one :class:`cistemd.client.Client` method under
  a lock (the client is not thread-safe); the app calls it from worker threads
  (``await app.call("assets_page", ...)``).
* :meth:`Connection.follow_events` runs in its own thread with its own client:
  it follows :meth:`Client.subscribe` and hands each event to a callback,
  resubscribing (from the last event seen) when the daemon restarts.

Helpers for ``cistem-tui`` itself: :func:`ensure_daemon` starts the user's
daemon fully detached with ``cistemd start`` (double fork, new session) when
none runs, and :func:`logind_warning` tells when systemd-logind would kill it
at logout.

The TUI never opens a project database and never imports kernels: this module
imports only the client (zmq, msgpack) and the home's paths.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "Connection",
    "ensure_daemon",
    "logind_warning",
    "recent_projects",
]

logger = logging.getLogger(__name__)

ClientFactory = Callable[[], Any]
"""Makes a client: :class:`cistemd.client.Client` or a test double with its methods."""


class Connection:
    """Requests and events to and from one daemon.

    Parameters
    ----------
    factory
        Makes a new client (called once for requests and once per event
        subscription); default ``Client(home)``.
    home
        The ``$CISTEM_HOME`` (default ``$CISTEM_HOME`` or ``~/.cistem``); used
        by the default factory.
    """

    def __init__(
        self, factory: ClientFactory | None = None, *, home: str | os.PathLike[str] | None = None
    ) -> None:
        self.home = None if home is None else os.fspath(home)
        self._factory = factory or self._default_factory
        self._lock = threading.Lock()
        self._client: Any = None
        self._closed = threading.Event()

    def _default_factory(self) -> Any:
        from cistemd.client import Client

        return Client(self.home, timeout=30.0)

    def call(self, method_name: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``client.<method_name>(*args, **kwargs)`` under the lock; return its result.

        Parameters
        ----------
        method_name
            A :class:`cistemd.client.Client` method (``assets_page``, ``submit`` ...).
        *args, **kwargs
            Its arguments.

        Returns
        -------
        Any
            What the method returns.

        Raises
        ------
        cistemd.client.ClientError
            The daemon refused, did not answer, or does not run; the client is
            dropped after a connection failure and made again by the next call.
        AttributeError
            The client has no such method (a daemon older than the TUI).
        """
        from cistemd.client import DaemonNotRunning, DaemonTimeout

        with self._lock:
            if self._closed.is_set():
                raise DaemonNotRunning("the TUI is detaching")
            if self._client is None:
                self._client = self._factory()
            method = getattr(self._client, method_name)
            try:
                return method(*args, **kwargs)
            except (DaemonNotRunning, DaemonTimeout):
                self._drop()
                raise

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None and hasattr(client, "close"):
            try:
                client.close()
            except Exception:  # a broken client must not hide the original error
                logger.debug("closing a failed client", exc_info=True)

    def close(self) -> None:
        """Stop the event thread and close the client (idempotent)."""
        self._closed.set()
        with self._lock:
            self._drop()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed.is_set()

    def follow_events(
        self,
        on_event: Callable[[dict[str, Any]], None],
        on_status: Callable[[bool, str], None],
        *,
        since_event_id: int | None = None,
        poll_s: float = 0.5,
        retry_s: float = 2.0,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> None:
        """Follow the daemon's events until :meth:`close` (blocks: run it in a thread).

        Parameters
        ----------
        on_event
            Called with each EVENT record, in order.
        on_status
            Called with ``(connected, detail)`` when the link goes up or down.
        since_event_id
            Replay stored events after this id. Default: only events from about
            now on (the panels read the stored state when they load, so the
            whole history need not be replayed at every attach). Event ids are
            the daemon's microsecond clock, so "now" is the current time.
        poll_s
            How often to look at ``cancelled`` and :meth:`close`.
        retry_s
            Seconds between attempts to (re)subscribe while the daemon is away.
        cancelled
            Returns True when the caller wants the loop to stop.
        """
        from cistemd.client import ClientError

        cursor = (
            max(0, time.time_ns() // 1000 - 2_000_000)
            if since_event_id is None
            else int(since_event_id)
        )
        connected: bool | None = None

        def stopping() -> bool:
            return self._closed.is_set() or cancelled()

        while not stopping():
            client: Any = None
            subscription: Any = None
            try:
                client = self._factory()
                subscription = client.subscribe(since_event_id=cursor)
                if connected is not True:
                    connected = True
                    on_status(True, "attached")
                quiet_since = time.monotonic()
                while not stopping():
                    event = subscription.get(timeout=poll_s)
                    if event is None:
                        # A silent daemon may be a dead one: check now and then.
                        if time.monotonic() - quiet_since > 5.0:
                            client.ping(timeout=2.0)
                            quiet_since = time.monotonic()
                        continue
                    quiet_since = time.monotonic()
                    cursor = max(cursor, int(event.get("event_id", cursor)))
                    on_event(event)
            except ClientError as exc:
                if connected is not False:
                    connected = False
                    on_status(False, str(exc))
            finally:
                for thing in (subscription, client):
                    if thing is not None and hasattr(thing, "close"):
                        try:
                            thing.close()
                        except Exception:
                            logger.debug("closing the event link", exc_info=True)
            deadline = time.monotonic() + retry_s
            while not stopping() and time.monotonic() < deadline:
                time.sleep(min(poll_s, 0.1))


def ensure_daemon(
    home: str | os.PathLike[str] | None = None, *, wait_s: float = 30.0
) -> tuple[bool, str]:
    """Start the user's daemon, fully detached, unless one runs already.

    The start is ``cistemd start`` in a subprocess: it double-forks into a new
    session with stdin from /dev/null and logs to ``$CISTEM_HOME/logs``, so the
    daemon survives the terminal (and ssh session) that started it.

    Parameters
    ----------
    home
        The ``$CISTEM_HOME`` (default: the environment's).
    wait_s
        How long ``cistemd start`` waits for the daemon to answer.

    Returns
    -------
    tuple
        ``(started, message)``: whether a daemon was started now, and what to
        tell the user (empty when one was running already).

    Raises
    ------
    cistemd.client.DaemonNotRunning
        It could not be started (the message holds the log's tail).
    """
    from cistemd.client import DaemonNotRunning
    from cistemd.manager.home import CistemHome

    where = CistemHome.from_env() if home is None else CistemHome.at(home)
    if where.running_pid() is not None:
        return False, ""
    argv = [
        sys.executable,
        "-m",
        "cistemd.cli.daemon",
        "--home",
        str(where.root),
        "start",
        "--wait",
        repr(float(wait_s)),
    ]
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=wait_s + 30,
        check=False,
    )
    if done.returncode != 0 and where.running_pid() is None:
        raise DaemonNotRunning(
            f"could not start cistemd for CISTEM_HOME={where.root}: "
            f"{(done.stderr or done.stdout).strip()}"
        )
    return True, (done.stdout.strip() or f"cistemd started for CISTEM_HOME={where.root}")


_LOGIND_DIRS = (
    "etc/systemd/logind.conf.d",
    "run/systemd/logind.conf.d",
    "usr/local/lib/systemd/logind.conf.d",
    "usr/lib/systemd/logind.conf.d",
)


def _logind_files(root: Path) -> list[Path]:
    """Return logind's configuration files, in the order systemd reads them (later wins)."""
    files = [root / "etc/systemd/logind.conf"]
    dropins: dict[str, Path] = {}
    for directory in reversed(_LOGIND_DIRS):  # /etc overrides /run overrides /usr
        folder = root / directory
        if folder.is_dir():
            for path in folder.glob("*.conf"):
                dropins[path.name] = path
    files += [dropins[name] for name in sorted(dropins)]
    return files


def _kill_user_processes(files: Iterable[Path]) -> bool:
    value = False  # systemd's compiled-in default since v230
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        section = ""
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line.strip("[]").strip()
                continue
            key, _, setting = line.partition("=")
            if section == "Login" and key.strip() == "KillUserProcesses":
                value = setting.strip().lower() in ("yes", "true", "1", "on")
    return value


def logind_warning(user: str | None = None, *, root: str | os.PathLike[str] = "/") -> str | None:
    """Say how to keep the daemon alive when systemd-logind would kill it at logout.

    logind kills a user's processes when their last session ends if
    ``KillUserProcesses=yes`` (``/etc/systemd/logind.conf`` and its drop-in
    directories) and lingering is off for the user
    (``/var/lib/systemd/linger/USER`` absent).

    Parameters
    ----------
    user
        The user name (default: the current user's).
    root
        Filesystem root to read (tests point it at a temporary tree).

    Returns
    -------
    str or None
        The warning, or None when the daemon is safe.
    """
    base = Path(root)
    if user is None:
        import getpass

        try:
            user = getpass.getuser()
        except Exception:  # no name for this uid: nothing sensible to suggest
            return None
    if not _kill_user_processes(_logind_files(base)):
        return None
    if (base / "var/lib/systemd/linger" / user).exists():
        return None
    return (
        "systemd-logind on this host kills your processes at logout "
        "(KillUserProcesses=yes) and lingering is off, so cistemd and its jobs would die "
        f"with your last session: run `loginctl enable-linger {user}` once to keep them"
    )


def recent_projects(home: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Return the projects this ``$CISTEM_HOME``'s daemon knows, most recent first.

    Reads ``$CISTEM_HOME/projects.json`` (a plain file the daemon keeps, not a
    database). Each entry is ``{"path", "open", "last_opened", "exists"}``.
    """
    from cistemd.manager.home import CistemHome

    where = CistemHome.from_env() if home is None else CistemHome.at(home)
    known = where.known_projects()
    known.sort(key=lambda entry: entry.get("last_opened", ""), reverse=True)
    return [{**entry, "exists": os.path.isdir(entry["path"])} for entry in known]
