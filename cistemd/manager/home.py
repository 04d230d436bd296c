"""``$CISTEM_HOME``: everything per user that the daemon and its clients share.

Layout (default ``~/.cistem``; set ``CISTEM_HOME`` to run isolated daemons side
by side, as the tests do)::

    $CISTEM_HOME/                 0700
      run/                        0700  runtime directory (see below)
        client.ipc                      client requests (ROUTER)
        events.ipc                      event stream (PUB)
        workers.ipc                     workers (ROUTER)
        cistemd.pid                     pid of the running daemon
        cistemd.lock                    flock held by the running daemon
      logs/                       0700
        cistemd.log                     the daemon's log (``cistemd start``)
        workers/job-<id>/<worker>.log   one log per worker
      keys/                       0700  CURVE keys for TCP endpoints
        server.key, server.key_secret   0600
        authorized/                     public keys of allowed clients and workers
      projects.json               0600  projects the daemon knows (and reopens)
      jobs.counter                0600  highest job id handed out

The runtime directory holds Unix sockets, whose path is limited to 107 bytes
on Linux. When ``$CISTEM_HOME/run/workers.ipc`` would be longer than that (a
deeply nested ``CISTEM_HOME``), the runtime directory moves to
``/tmp/cistemd-<uid>/<hash of CISTEM_HOME>/`` (both 0700 and owned by the
user, or refused); every program derives the same place from ``CISTEM_HOME``.

One daemon runs per ``CISTEM_HOME`` and host: it holds an exclusive ``flock``
on ``cistemd.lock`` for its whole life; the kernel drops the lock when the
process ends, however it ends, so a stale pid file never blocks a new daemon.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cistemd.errors import CistemError

__all__ = [
    "DEFAULT_HOME",
    "ENV_VAR",
    "CistemHome",
    "DaemonLock",
    "DaemonRunningError",
    "HomeError",
    "check_private_dir",
]

logger = logging.getLogger(__name__)

ENV_VAR: Final = "CISTEM_HOME"
"""Environment variable naming the home directory."""

DEFAULT_HOME: Final = "~/.cistem"
"""Home directory when :data:`ENV_VAR` is unset or empty."""

_MAX_SOCKET_PATH: Final = 100  # sockaddr_un.sun_path is 108 bytes with the NUL; keep a margin
_SOCKET_NAMES: Final = ("client.ipc", "events.ipc", "workers.ipc")


class HomeError(CistemError):
    """``$CISTEM_HOME`` or its runtime directory cannot be used safely."""

    code = "home_error"


class DaemonRunningError(CistemError):
    """Another daemon holds the lock of this ``$CISTEM_HOME`` on this host.

    Parameters
    ----------
    message
        Names the home, the holder's pid and how to reach it.
    pid
        The pid of the running daemon, when known.
    """

    code = "daemon_running"

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


def check_private_dir(path: Path, *, fix: bool = True) -> None:
    """Make sure ``path`` is a real directory owned by this user with mode 0700.

    Parameters
    ----------
    path
        The directory (must exist).
    fix
        Tighten the mode of a directory this user owns instead of refusing it.

    Raises
    ------
    HomeError
        A symlink, not a directory, owned by another user, or (``fix=False``)
        readable by group or others.
    """
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise HomeError(f"{path} is a symbolic link; cistemd needs a real private directory")
    if not stat.S_ISDIR(info.st_mode):
        raise HomeError(f"{path} is not a directory")
    if info.st_uid != os.getuid():
        raise HomeError(
            f"{path} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}); "
            "remove it or choose another CISTEM_HOME"
        )
    if info.st_mode & 0o077:
        if not fix:
            raise HomeError(
                f"{path} is accessible to other users (mode {stat.S_IMODE(info.st_mode):o}); "
                f"run `chmod 700 {path}`"
            )
        os.chmod(path, 0o700)
        logger.warning(
            "%s was accessible to other users (mode %o); set it to 0700",
            path,
            stat.S_IMODE(info.st_mode),
        )


def _make_private_dir(path: Path) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    check_private_dir(path)


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (0600) through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True, slots=True)
class CistemHome:
    """Paths under one ``$CISTEM_HOME``; creating nothing until :meth:`prepare`.

    Parameters
    ----------
    root
        The home directory (absolute).
    """

    root: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CistemHome:
        """Return the home named by ``$CISTEM_HOME`` (default ``~/.cistem``).

        Parameters
        ----------
        environ
            Environment to read; default ``os.environ``.

        Returns
        -------
        CistemHome
        """
        env = os.environ if environ is None else environ
        raw = env.get(ENV_VAR) or DEFAULT_HOME
        return cls(Path(os.path.abspath(os.path.expanduser(raw))))

    @classmethod
    def at(cls, path: str | os.PathLike[str]) -> CistemHome:
        """Return the home at ``path`` (made absolute).

        Parameters
        ----------
        path
            The directory.

        Returns
        -------
        CistemHome
        """
        return cls(Path(os.path.abspath(os.path.expanduser(os.fspath(path)))))

    # -- paths ---------------------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        """The runtime directory: sockets, pid file and lock (see the module docstring)."""
        preferred = self.root / "run"
        longest = max(len(os.fsencode(preferred / name)) for name in _SOCKET_NAMES)
        if longest <= _MAX_SOCKET_PATH:
            return preferred
        digest = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"cistemd-{os.getuid()}" / digest

    @property
    def client_socket(self) -> Path:
        """Unix socket of client requests."""
        return self.run_dir / "client.ipc"

    @property
    def events_socket(self) -> Path:
        """Unix socket of the event stream."""
        return self.run_dir / "events.ipc"

    @property
    def workers_socket(self) -> Path:
        """Unix socket of workers."""
        return self.run_dir / "workers.ipc"

    @property
    def client_endpoint(self) -> str:
        """ZeroMQ endpoint of client requests."""
        return f"ipc://{self.client_socket}"

    @property
    def events_endpoint(self) -> str:
        """ZeroMQ endpoint of the event stream."""
        return f"ipc://{self.events_socket}"

    @property
    def workers_endpoint(self) -> str:
        """ZeroMQ endpoint of workers."""
        return f"ipc://{self.workers_socket}"

    @property
    def pid_file(self) -> Path:
        """The running daemon's pid file."""
        return self.run_dir / "cistemd.pid"

    @property
    def lock_file(self) -> Path:
        """The file the running daemon holds an exclusive ``flock`` on."""
        return self.run_dir / "cistemd.lock"

    @property
    def logs_dir(self) -> Path:
        """Directory of the daemon's and the workers' logs."""
        return self.root / "logs"

    @property
    def daemon_log(self) -> Path:
        """Log file of a daemon started with ``cistemd start``."""
        return self.logs_dir / "cistemd.log"

    def worker_log(self, job_id: str, worker_id: str) -> Path:
        """Return the log file of one worker.

        Parameters
        ----------
        job_id, worker_id
            The worker's job and id (protocol ids, safe as file names).

        Returns
        -------
        Path
        """
        return self.logs_dir / "workers" / f"job-{job_id}" / f"{worker_id}.log"

    @property
    def keys_dir(self) -> Path:
        """Directory of the CURVE keys."""
        return self.root / "keys"

    @property
    def authorized_dir(self) -> Path:
        """Directory of the public keys allowed on TCP endpoints."""
        return self.keys_dir / "authorized"

    @property
    def projects_file(self) -> Path:
        """The list of projects the daemon knows."""
        return self.root / "projects.json"

    @property
    def job_counter_file(self) -> Path:
        """The highest job id handed out by a daemon of this home."""
        return self.root / "jobs.counter"

    # -- creating ------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the home, runtime, log and key directories, all 0700.

        Raises
        ------
        HomeError
            A directory exists but belongs to someone else or is a symlink.
        """
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_private_dir(self.root)
        run_dir = self.run_dir
        if run_dir.parent != self.root:
            _make_private_dir(run_dir.parent)
        _make_private_dir(run_dir)
        _make_private_dir(self.logs_dir)
        _make_private_dir(self.logs_dir / "workers")
        _make_private_dir(self.keys_dir)
        _make_private_dir(self.authorized_dir)

    def prepare_worker_log(self, job_id: str, worker_id: str) -> Path:
        """Create the directory of a worker's log and return the log path.

        Parameters
        ----------
        job_id, worker_id
            As for :meth:`worker_log`.

        Returns
        -------
        Path
        """
        path = self.worker_log(job_id, worker_id)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    # -- pid file ------------------------------------------------------------------------------

    def write_pid_file(self, pid: int | None = None) -> None:
        """Write the daemon's pid (default: this process).

        Parameters
        ----------
        pid
            The pid to record.
        """
        _atomic_write_text(self.pid_file, f"{os.getpid() if pid is None else pid}\n")

    def read_pid_file(self) -> int | None:
        """Return the pid in the pid file, or ``None`` if absent or unreadable."""
        try:
            text = self.pid_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() and int(text) > 0 else None

    def remove_pid_file(self, pid: int | None = None) -> None:
        """Remove the pid file if it names ``pid`` (default: this process).

        Parameters
        ----------
        pid
            Only a file naming this pid is removed (another daemon's is kept).
        """
        expected = os.getpid() if pid is None else pid
        if self.read_pid_file() == expected:
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()

    def running_pid(self) -> int | None:
        """Return the pid of a live daemon of this home, judged by its pid file.

        Returns
        -------
        int or None
            The pid, if the pid file names a live process whose command line
            mentions cistemd or that holds the daemon lock; ``None`` otherwise.
        """
        pid = self.read_pid_file()
        if pid is None:
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if not cmdline:  # a zombie
            return None
        if b"cistemd" in cmdline or self._holds_lock(pid):
            return pid
        return None

    def _holds_lock(self, pid: int) -> bool:
        """Return whether ``pid`` holds the ``flock`` of the lock file (``/proc/locks``)."""
        try:
            inode = os.stat(self.lock_file).st_ino
            table = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
        except OSError:
            return False
        for line in table.splitlines():
            fields = line.split()
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[4] == str(pid):
                if fields[5].rsplit(":", 1)[-1] == str(inode):
                    return True
        return False

    # -- known projects ------------------------------------------------------------------------

    def known_projects(self) -> list[dict[str, Any]]:
        """Return the projects the daemon knows, oldest first.

        Returns
        -------
        list of dict
            ``{"path": str, "open": bool, "last_opened": iso date}`` each; a
            missing or damaged file gives an empty list (with a warning).
        """
        try:
            data = json.loads(self.projects_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            logger.warning("ignoring %s: %s", self.projects_file, exc)
            return []
        entries = data.get("projects", []) if isinstance(data, dict) else []
        return [
            {
                "path": str(entry["path"]),
                "open": bool(entry.get("open", False)),
                "last_opened": str(entry.get("last_opened", "")),
            }
            for entry in entries
            if isinstance(entry, dict) and isinstance(entry.get("path"), str)
        ]

    def remember_project(self, path: str | os.PathLike[str], *, open_: bool) -> None:
        """Record a project and whether the daemon holds it open.

        Parameters
        ----------
        path
            The project directory (absolute).
        open_
            Whether it is open now (open projects are reopened by the next daemon).
        """
        key = os.fspath(path)
        known = self.known_projects()
        entries = [entry for entry in known if entry["path"] != key]
        previous = [entry for entry in known if entry["path"] == key]
        last = (
            datetime.now(UTC).isoformat(timespec="seconds")
            if open_
            else (previous[0]["last_opened"] if previous else "")
        )
        entries.append({"path": key, "open": open_, "last_opened": last})
        _atomic_write_text(self.projects_file, json.dumps({"projects": entries}, indent=1) + "\n")

    # -- job ids -------------------------------------------------------------------------------

    def read_job_counter(self) -> int:
        """Return the highest job id a daemon of this home has handed out (0 if none)."""
        try:
            text = self.job_counter_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return 0
        return int(text) if text.isdigit() else 0

    def write_job_counter(self, value: int) -> None:
        """Record the highest job id handed out.

        Parameters
        ----------
        value
            The id.
        """
        _atomic_write_text(self.job_counter_file, f"{int(value)}\n")


class DaemonLock:
    """The exclusive, non-blocking ``flock`` that makes one daemon per home and host.

    Parameters
    ----------
    home
        The home whose :attr:`CistemHome.lock_file` is locked.
    """

    def __init__(self, home: CistemHome) -> None:
        self.home = home
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or fail at once.

        Raises
        ------
        DaemonRunningError
            Another process holds it; the message names its pid.
        """
        if self._fd is not None:
            return
        path = self.home.lock_file
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            pid = self.home.read_pid_file()
            holder = f"pid {pid}" if pid else "another process"
            raise DaemonRunningError(
                f"a cistemd for CISTEM_HOME={self.home.root} is already running on this host "
                f"({holder}); use `cistemd status`, or `cistemd stop` first",
                pid=pid,
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> DaemonLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
