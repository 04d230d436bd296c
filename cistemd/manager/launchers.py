r"""Launchers: start a job's worker processes, watch them, stop them.

Every launcher has the same small interface (:class:`Launcher`, after
jupyter_client's kernel provisioners): :meth:`~Launcher.launch` a batch of
worker command lines, :meth:`~Launcher.poll` for the ones that ended,
:meth:`~Launcher.signal` / :meth:`~Launcher.terminate` /
:meth:`~Launcher.kill` them, and :meth:`~Launcher.to_dict` /
:func:`launcher_from_dict` so that a restarted daemon re-attaches to the
processes a previous daemon started. One launcher serves one job.

Each launcher is given the worker command lines built by
:func:`worker_command` and a *command template* from the run profile
(:class:`~cistemd.manager.profiles.ProfileCommand`), in which ``$command``
stands for the shell-quoted worker command line. :class:`LocalLauncher`
starts local processes; SSH and batch-scheduler launchers (``ssh host
$command``, ``sbatch --wrap="$command"``) fit the same interface.

:class:`LocalLauncher`
----------------------
* each worker runs in its own session and process group
  (``start_new_session=True``), stdin from ``/dev/null``, stdout and stderr
  appended to ``<log_dir>/worker-<worker_id>.log`` (mode 0600);
* the template ``$command`` runs the worker directly; any other template
  (``nice -n 10 $command``) runs through ``/bin/sh -c``;
* copies start ``delay_ms`` apart, as cisTEM's run profiles say;
* :meth:`~LocalLauncher.terminate` sends SIGTERM to every process group,
  SIGKILL to what is left after the grace period, and reaps its children, so
  no worker -- and nothing a worker started -- outlives it; when a worker
  ends by itself, its group is killed too, so it leaves no orphans;
* a re-attached launcher (:meth:`~LocalLauncher.from_dict`) checks each pid
  against the start time recorded in ``/proc/<pid>/stat`` before it signals
  it, so a pid the system has reused is never touched; such processes are no
  longer its children, so their exit status is unknown (reported as None).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import shlex
import signal as signals
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

from cistemd.errors import InvalidInputError
from cistemd.manager.profiles import COMMAND_PLACEHOLDER, render_template
from cistemd.worker.exit_codes import describe_exit

if TYPE_CHECKING:
    from cistemd.manager.profiles import ProfileCommand, RunProfile

__all__ = [
    "LAUNCH_FAILED_EXIT_CODE",
    "STDERR_TAIL_BYTES",
    "Launcher",
    "LocalLauncher",
    "WorkerExit",
    "create_launcher",
    "interface_address",
    "launcher_from_dict",
    "process_start_ticks",
    "read_tail",
    "resolve_worker_address",
    "worker_command",
    "worker_id_of",
]

STDERR_TAIL_BYTES: Final = 4096
"""Most bytes of a worker's log kept as the evidence of its exit."""

LAUNCH_FAILED_EXIT_CODE: Final = 127
"""Exit code reported for a worker that could not be started (as a shell says)."""

logger = logging.getLogger(__name__)

_POLL_STEP_S: Final = 0.02
_REAP_TIMEOUT_S: Final = 5.0


def worker_command(
    *,
    endpoint: str,
    job_id: str,
    worker_id: str,
    threads: int = 1,
    heartbeat_interval_s: float = 1.0,
    death_timeout_s: float = 60.0,
    credentials_file: str | os.PathLike[str] | None = None,
    log_file: str | os.PathLike[str] | None = None,
    python: str | None = None,
) -> list[str]:
    """Return the command line of one worker, as the daemon and the worker agree.

    Parameters
    ----------
    endpoint
        The daemon's worker endpoint, ``ipc://…`` or ``tcp://host:port``.
    job_id
        The job the worker serves.
    worker_id
        The worker's id (also its socket identity).
    threads
        Threads per task (the profile command's ``threads_per_copy``).
    heartbeat_interval_s
        Heartbeat period until the daemon's welcome.
    death_timeout_s
        Seconds without a word from the daemon after which the worker exits.
    credentials_file
        A 0600 file with the CURVE keys -- keys themselves never go on a command line.
    log_file
        Where the worker appends its log instead of stderr.
    python
        The interpreter (default: this one, ``sys.executable``).

    Returns
    -------
    list of str
        ``[python, "-m", "cistemd.worker", "--connect", …]``.
    """
    argv = [
        python or sys.executable,
        "-m",
        "cistemd.worker",
        "--connect",
        endpoint,
        "--job-id",
        job_id,
        "--worker-id",
        worker_id,
        "--threads",
        str(int(threads)),
        "--heartbeat-interval",
        repr(float(heartbeat_interval_s)),
        "--death-timeout",
        repr(float(death_timeout_s)),
    ]
    if credentials_file is not None:
        argv += ["--credentials-file", os.fspath(credentials_file)]
    if log_file is not None:
        argv += ["--log-file", os.fspath(log_file)]
    return argv


def worker_id_of(argv: Sequence[str]) -> str | None:
    """Return the value of ``--worker-id`` in a worker command line, if any.

    Parameters
    ----------
    argv
        A command line.

    Returns
    -------
    str or None
        The worker id.
    """
    for index, item in enumerate(argv):
        if item == "--worker-id" and index + 1 < len(argv):
            return argv[index + 1]
        if item.startswith("--worker-id="):
            return item.split("=", 1)[1]
    return None


def read_tail(path: str | os.PathLike[str] | None, limit: int = STDERR_TAIL_BYTES) -> str:
    """Return the last ``limit`` bytes of a text file, decoded; "" if it cannot be read.

    Parameters
    ----------
    path
        The file (a worker's log).
    limit
        Most bytes read.

    Returns
    -------
    str
        At most ``limit`` characters; undecodable bytes are replaced.
    """
    if path is None:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            data = handle.read(limit)
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class WorkerExit:
    """A worker process that has ended, with the evidence of how.

    Parameters
    ----------
    worker_id
        The worker's id (from its ``--worker-id``).
    pid
        Its process id; None if it never started.
    exit_code
        Its exit status; None if a signal killed it or the status is unknown
        (a process re-attached after a daemon restart is not our child).
    signal
        The signal that killed it, if any.
    stderr_tail
        The last ≤ 4 kB of its log (stdout and stderr).
    log_path
        Its log file, "" if none.
    """

    worker_id: str
    pid: int | None
    exit_code: int | None
    signal: int | None
    stderr_tail: str
    log_path: str = ""

    @property
    def description(self) -> str:
        """How it ended, in words (``"killed by SIGSEGV"``, ``"exited with code 75 (…)"``)."""
        return describe_exit(self.exit_code, self.signal)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-like map."""
        return {
            "worker_id": self.worker_id,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "stderr_tail": self.stderr_tail,
            "log_path": self.log_path,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerExit:
        """Build from :meth:`to_dict`'s map.

        Parameters
        ----------
        data
            The map.

        Returns
        -------
        WorkerExit
            The exit record.
        """
        return cls(
            worker_id=str(data["worker_id"]),
            pid=_optional_int(data.get("pid")),
            exit_code=_optional_int(data.get("exit_code")),
            signal=_optional_int(data.get("signal")),
            stderr_tail=str(data.get("stderr_tail", "")),
            log_path=str(data.get("log_path", "")),
        )


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"expected an int or null, got {value!r}")
    return value


class Launcher(ABC):
    """Starts, watches and stops the worker processes of one job.

    Implementations must be usable from one thread at a time (the daemon's);
    :meth:`terminate` may block for its grace period.
    """

    kind: ClassVar[str] = ""
    """Name under which :func:`launcher_from_dict` finds the class."""

    endpoint: str = ""
    """The daemon endpoint its workers connect to, when it is a TCP one ("" otherwise)."""

    def worker_credentials_path(self, local_path: str) -> str:
        """Return where the workers of this launcher find their credentials file.

        Parameters
        ----------
        local_path
            The 0600 credentials file on the daemon's (shared) filesystem.

        Returns
        -------
        str
            The path to give the workers (``local_path`` unless the launcher
            copies the file elsewhere, as the SSH launcher does).
        """
        return local_path

    def deliver_credentials(self, local_path: str) -> None:
        """Make the credentials file available where the workers run (before :meth:`launch`).

        Parameters
        ----------
        local_path
            The 0600 credentials file on the daemon's filesystem; a shared
            filesystem needs nothing more (this default).
        """
        return None

    @abstractmethod
    def launch(self, commands: Sequence[Sequence[str]]) -> None:
        """Start one worker per command line, the profile's delay apart.

        Parameters
        ----------
        commands
            Worker command lines (:func:`worker_command`), one per copy.
            A copy that cannot be started is reported by :meth:`poll` (exit
            code :data:`LAUNCH_FAILED_EXIT_CODE` and the reason), not raised.
        """

    @abstractmethod
    def poll(self) -> list[WorkerExit]:
        """Return the workers that ended since the last call (each exactly once)."""

    @abstractmethod
    def signal(self, signum: int) -> None:
        """Send ``signum`` to every live worker (and what it started).

        Parameters
        ----------
        signum
            The signal.
        """

    @abstractmethod
    def terminate(self, grace_seconds: float | None = None) -> None:
        """Stop every worker: SIGTERM, then SIGKILL after the grace period.

        Parameters
        ----------
        grace_seconds
            How long to wait between the two (None: the launcher's default).
        """

    @abstractmethod
    def kill(self) -> None:
        """Kill every worker at once (SIGKILL) and wait until they are gone."""

    @abstractmethod
    def is_alive(self) -> bool:
        """Return whether any worker is still running."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-like map from which :meth:`from_dict` re-attaches.

        The map has a ``"kind"`` key naming the launcher class.
        """

    @classmethod
    @abstractmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Launcher:
        """Re-attach to the processes described by :meth:`to_dict`'s map.

        Parameters
        ----------
        data
            The map.

        Returns
        -------
        Launcher
            A launcher that watches and controls those processes.
        """


_LAUNCHERS: dict[str, type[Launcher]] = {}
_LAUNCHER_MODULES: Final = {
    "ssh": "cistemd.manager.ssh",
    "scheduler": "cistemd.manager.schedulers",
}


def launcher_from_dict(data: Mapping[str, Any]) -> Launcher:
    """Re-attach a launcher of any kind from its :meth:`Launcher.to_dict` map.

    Parameters
    ----------
    data
        The map.

    Returns
    -------
    Launcher
        A launcher of the class its ``"kind"`` names.

    Raises
    ------
    InvalidInputError
        An unknown or missing kind.
    """
    kind = data.get("kind") if isinstance(data, Mapping) else None
    if isinstance(kind, str) and kind not in _LAUNCHERS and kind in _LAUNCHER_MODULES:
        importlib.import_module(_LAUNCHER_MODULES[kind])  # registers the class
    launcher_class = _LAUNCHERS.get(kind) if isinstance(kind, str) else None
    if launcher_class is None:
        raise InvalidInputError(
            f"unknown launcher kind {kind!r}; known: {', '.join(sorted(_LAUNCHERS))}"
        )
    return launcher_class.from_dict(data)


# --------------------------------------------------------------------------- /proc helpers


def process_start_ticks(pid: int) -> int | None:
    """Return the start time of process ``pid`` (clock ticks since boot), or None.

    None means the process does not exist, is a zombie, or ``/proc`` cannot
    tell (not Linux).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode("ascii", errors="replace")
    except OSError:
        return None
    # Field 2 (comm) may hold spaces and parentheses: split after its last ")".
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X", "x"):
        return None
    try:
        return int(fields[19])  # field 22, starttime
    except ValueError:
        return None


def _kill_group(pgid: int, signum: int) -> bool:
    """Signal process group ``pgid``; return whether any process got it."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(slots=True)
class _Process:
    worker_id: str
    pid: int
    start_ticks: int | None
    log_path: str
    popen: subprocess.Popen[bytes] | None  # None: re-attached, not our child

    def status(self) -> tuple[int | None, int | None] | None:
        """Return None while it runs, else ``(exit_code, signal)``."""
        if self.popen is not None:
            code = self.popen.poll()
            if code is None:
                return None
            return (None, -code) if code < 0 else (code, None)
        if self.start_ticks is not None and process_start_ticks(self.pid) == self.start_ticks:
            return None
        return (None, None)


class LocalLauncher(Launcher):
    """Runs workers as local processes (cisTEM's "Default Local" and friends).

    Parameters
    ----------
    log_dir
        Directory for the workers' log files (created 0700 if missing).
    command_template
        The profile command's template; ``$command`` = the worker command line.
    delay_ms
        Milliseconds between two copies.
    grace_seconds
        Default wait between SIGTERM and SIGKILL in :meth:`terminate`.
    env
        Extra environment variables for the workers (never secrets: a
        process's environment can be read by its owner's other processes).

    Raises
    ------
    InvalidInputError
        A template without ``$command`` or a negative delay or grace.
    """

    kind = "local"

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        *,
        command_template: str = COMMAND_PLACEHOLDER,
        delay_ms: int = 10,
        grace_seconds: float = 2.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if COMMAND_PLACEHOLDER not in command_template:
            raise InvalidInputError(
                f"command template {command_template!r} does not contain {COMMAND_PLACEHOLDER}"
            )
        if delay_ms < 0 or grace_seconds < 0:
            raise InvalidInputError("delay_ms and grace_seconds must be ≥ 0")
        self.log_dir = Path(log_dir)
        self.command_template = command_template
        self.delay_ms = int(delay_ms)
        self.grace_seconds = float(grace_seconds)
        self.env = dict(env or {})
        self._running: dict[int, _Process] = {}
        self._exited: list[WorkerExit] = []
        self._launched = 0

    # ----------------------------------------------------------------- starting

    def _argv(self, worker_argv: Sequence[str]) -> list[str]:
        if self.command_template.strip() == COMMAND_PLACEHOLDER:
            return list(worker_argv)
        return ["/bin/sh", "-c", render_template(self.command_template, worker_argv)]

    def _log_path(self, worker_id: str) -> Path:
        return self.log_dir / f"worker-{_SAFE_NAME.sub('_', worker_id)}.log"

    def launch(self, commands: Sequence[Sequence[str]]) -> None:
        """Start one worker per command line, ``delay_ms`` apart.

        Blocks for ``(len(commands) - 1) * delay_ms`` milliseconds.

        Parameters
        ----------
        commands
            Worker command lines (:func:`worker_command`).
        """
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        environment = {**os.environ, **self.env}
        for index, worker_argv in enumerate(commands):
            if index and self.delay_ms:
                time.sleep(self.delay_ms / 1000)
            self._launched += 1
            worker_id = worker_id_of(worker_argv) or f"copy-{self._launched}"
            self._start(worker_id, list(worker_argv), environment)

    def _start(self, worker_id: str, worker_argv: list[str], environment: dict[str, str]) -> None:
        log_path = self._log_path(worker_id)
        try:
            log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._exited.append(
                WorkerExit(
                    worker_id=worker_id,
                    pid=None,
                    exit_code=LAUNCH_FAILED_EXIT_CODE,
                    signal=None,
                    stderr_tail=f"cannot open the log file {log_path}: {exc.strerror}",
                    log_path="",
                )
            )
            return
        try:
            popen = subprocess.Popen(
                self._argv(worker_argv),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=environment,
            )
        except OSError as exc:
            message = f"cannot start {shlex.join(worker_argv)}: {exc.strerror or exc}\n"
            with contextlib.suppress(OSError):
                os.write(log_fd, message.encode("utf-8", errors="replace"))
            self._exited.append(
                WorkerExit(
                    worker_id=worker_id,
                    pid=None,
                    exit_code=LAUNCH_FAILED_EXIT_CODE,
                    signal=None,
                    stderr_tail=read_tail(log_path),
                    log_path=str(log_path),
                )
            )
            return
        finally:
            os.close(log_fd)
        self._running[popen.pid] = _Process(
            worker_id=worker_id,
            pid=popen.pid,
            start_ticks=process_start_ticks(popen.pid),
            log_path=str(log_path),
            popen=popen,
        )

    # ----------------------------------------------------------------- watching

    def _reap(self) -> None:
        """Move every ended process from running to exited (killing its leftovers)."""
        for pid, process in list(self._running.items()):
            status = process.status()
            if status is None:
                continue
            del self._running[pid]
            if process.popen is not None:
                # The worker is gone; anything it started in its group goes with it.
                # Its pid cannot be reused while that group still has members.
                _kill_group(pid, signals.SIGKILL)
            exit_code, signum = status
            self._exited.append(
                WorkerExit(
                    worker_id=process.worker_id,
                    pid=pid,
                    exit_code=exit_code,
                    signal=signum,
                    stderr_tail=read_tail(process.log_path),
                    log_path=process.log_path,
                )
            )

    def poll(self) -> list[WorkerExit]:
        """Return the workers that ended since the last call (each exactly once).

        Returns
        -------
        list of WorkerExit
            In the order they were noticed.
        """
        self._reap()
        exited, self._exited = self._exited, []
        return exited

    def is_alive(self) -> bool:
        """Return whether any worker is still running."""
        self._reap()
        return bool(self._running)

    @property
    def pids(self) -> dict[str, int]:
        """The running workers' pids by worker id."""
        self._reap()
        return {process.worker_id: process.pid for process in self._running.values()}

    # ----------------------------------------------------------------- stopping

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process group of every live worker.

        Parameters
        ----------
        signum
            The signal.
        """
        self._reap()  # never signal a pid that has been reaped (it may be reused)
        for process in self._running.values():
            _kill_group(process.pid, signum)

    def _wait(self, deadline: float) -> None:
        while True:
            self._reap()
            if not self._running or time.monotonic() >= deadline:
                return
            time.sleep(_POLL_STEP_S)

    def terminate(self, grace_seconds: float | None = None) -> None:
        """SIGTERM every worker's group, SIGKILL what is left after the grace, reap.

        Parameters
        ----------
        grace_seconds
            Wait between the two (None: :attr:`grace_seconds`).
        """
        grace = self.grace_seconds if grace_seconds is None else max(0.0, grace_seconds)
        self.signal(signals.SIGTERM)
        self._wait(time.monotonic() + grace)
        if self._running:
            self.kill()

    def kill(self) -> None:
        """SIGKILL every worker's group and wait until they are gone."""
        self.signal(signals.SIGKILL)
        self._wait(time.monotonic() + _REAP_TIMEOUT_S)
        for process in self._running.values():  # pragma: no cover - e.g. stuck in the kernel (D)
            logger.error(
                "worker %s (pid %d) is still there %.0f s after SIGKILL",
                process.worker_id,
                process.pid,
                _REAP_TIMEOUT_S,
            )

    # ----------------------------------------------------------------- persistence

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-like map for :meth:`from_dict` (no environment: it may hold secrets).

        Returns
        -------
        dict
            ``{"kind": "local", "endpoint", "log_dir", "command_template", "delay_ms",
            "grace_seconds", "launched", "processes": [{worker_id, pid,
            start_ticks, log_path}], "exited": [WorkerExit maps not yet polled]}``.
        """
        self._reap()
        return {
            "kind": self.kind,
            "endpoint": self.endpoint,
            "log_dir": str(self.log_dir),
            "command_template": self.command_template,
            "delay_ms": self.delay_ms,
            "grace_seconds": self.grace_seconds,
            "launched": self._launched,
            "processes": [
                {
                    "worker_id": process.worker_id,
                    "pid": process.pid,
                    "start_ticks": process.start_ticks,
                    "log_path": process.log_path,
                }
                for process in self._running.values()
            ],
            "exited": [item.to_dict() for item in self._exited],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LocalLauncher:
        """Re-attach to the workers a previous daemon started.

        A recorded process whose pid now belongs to another process (its
        start time differs) or is gone is reported by the next :meth:`poll`
        with an unknown exit status and its log tail.

        Parameters
        ----------
        data
            :meth:`to_dict`'s map.

        Returns
        -------
        LocalLauncher
            A launcher watching those processes.

        Raises
        ------
        InvalidInputError
            A malformed map.
        """
        if not isinstance(data, Mapping) or data.get("kind") != cls.kind:
            raise InvalidInputError(f"not a {cls.kind!r} launcher record: {data!r:.200}")
        try:
            launcher = cls(
                data["log_dir"],
                command_template=str(data.get("command_template", COMMAND_PLACEHOLDER)),
                delay_ms=int(data.get("delay_ms", 10)),
                grace_seconds=float(data.get("grace_seconds", 2.0)),
            )
            launcher._launched = int(data.get("launched", 0))
            launcher.endpoint = str(data.get("endpoint", ""))
            for item in data.get("processes", []):
                pid = int(item["pid"])
                ticks = _optional_int(item.get("start_ticks"))
                launcher._running[pid] = _Process(
                    worker_id=str(item["worker_id"]),
                    pid=pid,
                    start_ticks=ticks,
                    log_path=str(item.get("log_path", "")),
                    popen=None,
                )
            launcher._exited = [WorkerExit.from_dict(item) for item in data.get("exited", [])]
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed local launcher record: {exc}") from None
        return launcher


_LAUNCHERS[LocalLauncher.kind] = LocalLauncher


# --------------------------------------------------------------------------- remote addresses


def interface_address(name: str) -> str | None:
    """Return the IPv4 address of network interface ``name``, or None.

    Parameters
    ----------
    name
        An interface name (``eth0``).

    Returns
    -------
    str or None
        Its first IPv4 address.
    """
    import fcntl
    import socket
    import struct

    if not name or len(name) > 15:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(
                sock.fileno(), 0x8915, struct.pack("256s", name.encode())  # SIOCGIFADDR
            )
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def _route_address(host: str) -> str | None:
    """Return this machine's address on the route to ``host`` (no packet is sent)."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((host, 9))
            return str(sock.getsockname()[0])
    except OSError:
        return None


def resolve_worker_address(gui_address: str, probe_host: str = "") -> tuple[str, int]:
    """Return the ``(address, port)`` remote workers connect back to.

    Parameters
    ----------
    gui_address
        The profile's ``gui_address``: ``""`` (automatic), ``"10.0.0.1"``,
        ``"10.0.0.1:5555"``, ``"node01"``, ``"eth0"`` or ``"interface:eth0"``.
    probe_host
        A host the workers run on: automatic picks the address of the route
        to it; without one, the address this host's name resolves to.

    Returns
    -------
    tuple of (str, int)
        The IPv4 address and the port (0: any free port).

    Raises
    ------
    InvalidInputError
        An unknown interface or an address that does not resolve.
    """
    import socket

    text = gui_address.strip()
    port = 0
    if text.startswith("interface:"):
        name = text.split(":", 1)[1]
        address = interface_address(name)
        if address is None:
            raise InvalidInputError(f"gui_address {gui_address!r}: no interface {name!r}")
        return address, 0
    if text.count(":") == 1:
        text, _, port_text = text.partition(":")
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise InvalidInputError(f"gui_address {gui_address!r}: bad port {port_text!r}")
        port = int(port_text)
    if not text:
        probe = probe_host.rpartition("@")[2].partition(":")[0]
        found = _route_address(probe) if probe else None
        if found is None:
            try:
                found = socket.gethostbyname(socket.gethostname())
            except OSError:
                found = "127.0.0.1"
        return found, port
    address = interface_address(text)
    if address is not None:
        return address, port
    try:
        return socket.gethostbyname(text), port
    except OSError:
        raise InvalidInputError(
            f"gui_address {gui_address!r}: neither an interface nor a resolvable address"
        ) from None


# --------------------------------------------------------------------------- the factory


def create_launcher(
    profile: RunProfile,
    command: ProfileCommand,
    *,
    log_dir: str | os.PathLike[str],
    grace_seconds: float,
    tag: str,
    endpoint: str = "",
) -> Launcher:
    """Return the launcher that runs ``command`` of ``profile``.

    Parameters
    ----------
    profile
        The run profile (its ``launcher`` kind and settings).
    command
        One of its command lines.
    log_dir
        Directory for the workers' logs (and the scheduler scripts).
    grace_seconds
        Wait between SIGTERM and SIGKILL.
    tag
        A name unique to this job and command (``job12-c0``), used to find the
        scheduler jobs this launcher submitted.
    endpoint
        The TCP endpoint the workers connect to ("" for local ipc).

    Returns
    -------
    Launcher
        A :class:`LocalLauncher`, :class:`~cistemd.manager.ssh.SshLauncher` or
        :class:`~cistemd.manager.schedulers.SchedulerLauncher`.
    """
    launcher: Launcher
    if profile.launcher == "ssh":
        from cistemd.manager.ssh import SshLauncher

        launcher = SshLauncher(
            command.host,
            profile.ssh,
            log_dir=log_dir,
            command_template=command.command_to_run,
            delay_ms=command.delay_ms,
            grace_seconds=grace_seconds,
            tag=tag,
        )
    elif profile.launcher == "scheduler":
        from cistemd.manager.schedulers import SchedulerLauncher

        launcher = SchedulerLauncher(
            profile.scheduler,
            log_dir=log_dir,
            command_template=command.command_to_run,
            threads=command.threads_per_copy,
            delay_ms=command.delay_ms,
            grace_seconds=grace_seconds,
            tag=tag,
        )
    else:
        launcher = LocalLauncher(
            log_dir,
            command_template=command.command_to_run,
            delay_ms=command.delay_ms,
            grace_seconds=grace_seconds,
        )
    launcher.endpoint = endpoint
    return launcher
