r"""Workers on other machines over SSH (paramiko): the "SSH cluster" of workstations.

:class:`SshLauncher` runs the copies of one profile command on one host
(``[user@]host[:port]``), each as one SSH ``exec`` channel::

    echo "cistemd-pid $$ <start ticks>"; <the profile command, $command = the worker>

* **Host keys** are checked against the profile's known_hosts file (default
  ``~/.ssh/known_hosts``) and never added: an unknown or a changed key ends
  the connection before authentication, so no remote command runs.
* **Authentication** by the profile's key file, else the SSH agent and the
  usual ``~/.ssh/id_*`` keys; never a password.
* **Credentials**: the worker's CURVE keys travel through the SSH channel into
  a 0600 file on the host (``umask 077; cat > FILE``; the file's path, never
  its content, is on the worker's command line).
* **Output**: stdout and stderr of every channel are drained concurrently by
  the launcher's thread into ``<log dir>/worker-<id>.log``, so a chatty worker
  can never block on a full SSH window.
* **Keepalives**: SSH keepalives every ``keepalive_s`` and a TCP user timeout
  of three of them: a host that stops answering (a cut link, a dead node) ends
  the connection, and its workers are reported lost (the daemon re-queues
  their tasks; it also notices their silence on the broker by itself).
* **Quoting**: the worker's command line is shell-quoted (:func:`shlex.join`)
  into the template; host names are checked against a strict pattern.
* **Stopping**: the remote shell is its own session and process group (sshd
  starts it with ``setsid``), so ``kill -TERM -- -PID`` and then ``-KILL``
  reach the worker and everything it started.

One background thread per launcher owns the connection, so a slow or dead
host never blocks the daemon's loop: :meth:`SshLauncher.launch` only queues
the work, and failures (refused host key, no route) come back through
:meth:`SshLauncher.poll` as workers that could not start. A launcher
re-attached after a daemon restart (:meth:`SshLauncher.from_dict`) checks the
recorded pids -- and their start times, so a reused pid is never signalled --
over a new connection.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import queue
import re
import select
import shlex
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cistemd.errors import InvalidInputError
from cistemd.manager.launchers import (
    _LAUNCHERS,
    LAUNCH_FAILED_EXIT_CODE,
    Launcher,
    WorkerExit,
    read_tail,
    worker_id_of,
)
from cistemd.manager.profiles import COMMAND_PLACEHOLDER, SshSettings, render_template

if TYPE_CHECKING:
    import paramiko

__all__ = ["HostKeyRefused", "SshLauncher", "connect", "parse_host"]

logger = logging.getLogger(__name__)

_PID_MARK: Final = "cistemd-pid"
_HOST: Final = re.compile(
    r"(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})@)?(?P<host>[A-Za-z0-9_][A-Za-z0-9_.-]{0,252})"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
_CHECK_INTERVAL_S: Final = 2.0
_STEP_S: Final = 0.05
_IDLE_S: Final = 2.0  # idle this long: disconnect, delete the remote credentials, end the thread


class HostKeyRefused(InvalidInputError):
    """The host's key is unknown or has changed; nothing was run there."""

    code = "host_key_refused"


def parse_host(text: str, settings: SshSettings) -> tuple[str, str, int]:
    """Split ``[user@]host[:port]`` into ``(user, host, port)`` with the profile's defaults.

    Parameters
    ----------
    text
        The command's host.
    settings
        The profile's SSH settings (default user and port).

    Returns
    -------
    tuple of (str, str, int)

    Raises
    ------
    InvalidInputError
        A malformed host.
    """
    match = _HOST.fullmatch(text.strip())
    if match is None:
        raise InvalidInputError(f"ssh host {text!r} is not [user@]host[:port]")
    user = match.group("user") or settings.user or getpass.getuser()
    port = int(match.group("port") or settings.port)
    if not 1 <= port <= 65535:
        raise InvalidInputError(f"ssh host {text!r}: port {port} is out of range")
    return user, match.group("host"), port


def _tcp_socket(host: str, port: int, settings: SshSettings) -> socket.socket:
    """Connect a TCP socket that notices a silent peer after three keepalive periods."""
    sock = socket.create_connection((host, port), timeout=settings.connect_timeout_s)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    period = max(1, round(settings.keepalive_s))
    for name, value in (("TCP_KEEPIDLE", period), ("TCP_KEEPINTVL", period), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # unacknowledged data for this long: the peer is gone
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(settings.keepalive_s * 3000)
            )
    return sock


def connect(host_spec: str, settings: SshSettings) -> paramiko.SSHClient:
    """Open an SSH connection, refusing unknown and changed host keys.

    Parameters
    ----------
    host_spec
        ``[user@]host[:port]``.
    settings
        The profile's SSH settings.

    Returns
    -------
    paramiko.SSHClient
        Connected and authenticated, with keepalives set.

    Raises
    ------
    HostKeyRefused
        The host key is not in known_hosts or differs from it.
    InvalidInputError
        Cannot connect or authenticate (the message says which host and why).
    """
    import paramiko

    user, host, port = parse_host(host_spec, settings)
    known_hosts = os.path.expanduser(settings.known_hosts or "~/.ssh/known_hosts")
    client = paramiko.SSHClient()
    if os.path.exists(known_hosts):
        client.load_host_keys(known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    where = f"{user}@{host}:{port}"
    try:
        sock = _tcp_socket(host, port, settings)
    except OSError as exc:
        raise InvalidInputError(f"ssh {where}: cannot connect ({exc})") from None
    try:
        client.connect(
            host,
            port=port,
            username=user,
            sock=sock,
            key_filename=os.path.expanduser(settings.identity_file)
            if settings.identity_file
            else None,
            allow_agent=True,
            look_for_keys=not settings.identity_file,
            timeout=settings.connect_timeout_s,
            banner_timeout=settings.connect_timeout_s,
            auth_timeout=settings.connect_timeout_s,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        sock.close()
        raise HostKeyRefused(
            f"ssh {where}: the host key has CHANGED (got {exc.key.get_name()} "
            f"{exc.key.get_fingerprint().hex()}, {known_hosts} says otherwise); refusing to "
            "connect. If the host was reinstalled, fix its line in known_hosts"
        ) from None
    except paramiko.SSHException as exc:
        client.close()
        sock.close()
        if "not found in known_hosts" in str(exc):
            raise HostKeyRefused(
                f"ssh {where}: the host key is unknown ({known_hosts} has no entry); refusing "
                f"to connect. Check it, then add it (e.g. ssh-keyscan -p {port} {host} >> "
                f"{known_hosts})"
            ) from None
        raise InvalidInputError(f"ssh {where}: {exc}") from None
    except OSError as exc:
        client.close()
        sock.close()
        raise InvalidInputError(f"ssh {where}: {exc}") from None
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(max(1, round(settings.keepalive_s)))
        _record_exit_signals(transport)
    return client


def _record_exit_signals(transport: paramiko.Transport) -> None:
    """Make this transport's channels keep the signal that killed a remote command.

    paramiko keeps a command's ``exit-status`` but drops ``exit-signal``
    (RFC 4254 §6.10); without it a worker killed by SIGSEGV would look like
    one whose status is unknown. The handler reads the signal name into
    ``channel.cistemd_signal`` and hands every other request on unchanged.
    """
    import signal as signals

    import paramiko.common

    table = dict(transport._channel_handler_table)
    original = table[paramiko.common.MSG_CHANNEL_REQUEST]

    def handle(channel: paramiko.Channel, message: paramiko.Message) -> None:
        start = message.packet.tell()
        if message.get_text() == "exit-signal":
            message.get_boolean()  # want reply
            name = message.get_text()
            number = getattr(signals, f"SIG{name}", None)
            channel.cistemd_signal = int(number) if number is not None else None
            channel.status_event.set()
            return
        message.packet.seek(start)
        original(channel, message)

    table[paramiko.common.MSG_CHANNEL_REQUEST] = handle
    transport._channel_handler_table = table


@dataclass(slots=True)
class _Remote:
    worker_id: str
    log_path: str
    pid: int | None = None
    start_ticks: str = ""
    channel: Any = None  # paramiko.Channel while this daemon drains it
    buffer: bytes = b""
    ended: bool = False


@dataclass(slots=True)
class _Op:
    kind: str  # "credentials" | "launch"
    payload: Any = None
    done: threading.Event = field(default_factory=threading.Event)


class SshLauncher(Launcher):
    """Runs workers on one host over SSH (see the module docstring).

    Parameters
    ----------
    host
        ``[user@]host[:port]``.
    settings
        The profile's SSH settings.
    log_dir
        Local directory of the workers' logs (created 0700).
    command_template
        The profile command; ``$command`` = the worker command line.
    delay_ms
        Milliseconds between two copies.
    grace_seconds
        Wait between SIGTERM and SIGKILL.
    tag
        Unique to the job and command (names the remote credentials file).
    wait_for_start
        Make :meth:`launch` block until every worker runs (or failed): for
        tests and scripts; the daemon never waits.
    """

    kind = "ssh"

    def __init__(
        self,
        host: str,
        settings: SshSettings,
        *,
        log_dir: str | os.PathLike[str],
        command_template: str = COMMAND_PLACEHOLDER,
        delay_ms: int = 10,
        grace_seconds: float = 2.0,
        tag: str = "",
        wait_for_start: bool = False,
    ) -> None:
        if COMMAND_PLACEHOLDER not in command_template:
            raise InvalidInputError(
                f"command template {command_template!r} does not contain {COMMAND_PLACEHOLDER}"
            )
        parse_host(host, settings)
        self.wait_for_start = wait_for_start
        self.host = host
        self.settings = settings
        self.log_dir = Path(log_dir)
        self.command_template = command_template
        self.delay_ms = int(delay_ms)
        self.grace_seconds = float(grace_seconds)
        self.tag = re.sub(r"[^A-Za-z0-9_.-]", "_", tag or "cistem")
        self._lock = threading.RLock()
        self._workers: dict[str, _Remote] = {}
        self._pending = 0
        self._exited: list[WorkerExit] = []
        self._ops: queue.Queue[_Op] = queue.Queue()
        self._client: paramiko.SSHClient | None = None
        self._connect_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_check = 0.0
        self._credentials: tuple[str, str] | None = None
        self._delivered = False

    # ----------------------------------------------------------------- paths

    @property
    def remote_dir(self) -> str:
        """Directory on the host for credentials files (relative = under the remote home)."""
        return self.settings.remote_dir or ".cistem/remote"

    def worker_credentials_path(self, local_path: str) -> str:
        """Return where the workers find the credentials file on the host.

        Parameters
        ----------
        local_path
            The daemon's copy.

        Returns
        -------
        str
        """
        return f"{self.remote_dir.rstrip('/')}/{os.path.basename(local_path)}"

    def _log_path(self, worker_id: str) -> str:
        return str(self.log_dir / f"worker-{re.sub(r'[^A-Za-z0-9_.-]', '_', worker_id)}.log")

    # ----------------------------------------------------------------- the thread

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name=f"ssh-{self.host}", daemon=True
                )
                self._thread.start()

    def _idle(self) -> bool:
        """Whether there is nothing to start, drain or watch (caller holds the lock)."""
        return (
            self._pending <= 0
            and self._ops.empty()
            and all(r.ended for r in self._workers.values())
        )

    def _wind_down(self) -> bool:
        """When idle for a while: delete the remote credentials, disconnect, end the thread.

        Returns whether the thread should end (a later launch starts a new one).
        """
        if self._delivered and self._credentials is not None and self._client is not None:
            path = shlex.quote(self.worker_credentials_path(self._credentials[0]))
            _exec(self._client, f"rm -f {path}", timeout=10.0)
        with self._lock:
            if not self._idle():
                return False
            self._delivered = False
            client, self._client = self._client, None
            self._thread = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        return True

    def _connected(self) -> paramiko.SSHClient | None:
        """Return a live connection, opening one if needed (in the launcher's thread)."""
        client = self._client
        if client is not None:
            transport = client.get_transport()
            if transport is not None and transport.is_active():
                return client
            self._lost(f"connection to {self.host} lost")
            with contextlib.suppress(Exception):
                client.close()
            self._client = None
        try:
            self._client = connect(self.host, self.settings)
            self._connect_error = ""
        except InvalidInputError as exc:
            self._connect_error = str(exc)
            return None
        return self._client

    def _lost(self, why: str) -> None:
        """Report every worker whose channel died with the connection."""
        with self._lock:
            for remote in list(self._workers.values()):
                if remote.channel is not None and not remote.ended:
                    self._finish(remote, None, why)

    def _run(self) -> None:
        idle_since: float | None = None
        while not self._stop.is_set():
            try:
                op = self._ops.get_nowait()
            except queue.Empty:
                op = None
            with self._lock:
                idle = op is None and self._idle()
            if not idle:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= _IDLE_S and self._wind_down():
                return
            if op is not None:
                try:
                    self._do(op)
                except Exception:
                    logger.exception("ssh %s: %s failed", self.host, op.kind)
                finally:
                    op.done.set()
                continue
            try:
                busy = self._drain()
                if time.monotonic() >= self._next_check:
                    self._next_check = time.monotonic() + _CHECK_INTERVAL_S
                    self._check()
            except Exception:  # a broken channel must not end the thread that watches the rest
                logger.exception("ssh %s: watching the workers failed", self.host)
                busy = False
            if not busy:
                self._wait_for_data()

    def _do(self, op: _Op) -> None:
        if op.kind == "credentials" or (
            op.kind == "launch" and op.payload and self._credentials and not self._delivered
        ):
            self._deliver()
        if op.kind == "launch":
            for index, argv in enumerate(op.payload):
                if index and self.delay_ms:
                    time.sleep(self.delay_ms / 1000)
                self._start(list(argv))

    def _deliver(self) -> None:
        """Write the credentials file on the host: ``umask 077``, a temporary file, a rename."""
        if self._credentials is None:
            return
        client = self._connected()
        if client is None:
            return
        local_path, text = self._credentials
        path = self.worker_credentials_path(local_path)
        directory = shlex.quote(os.path.dirname(path) or ".")
        target = shlex.quote(path)
        command = (
            f"umask 077 && mkdir -p {directory} && chmod 700 {directory} && "
            f"cat > {target}.tmp && mv -f {target}.tmp {target}"
        )
        status, _out, err = _exec(client, command, stdin=text, timeout=30.0)
        if status != 0:
            self._connect_error = f"ssh {self.host}: cannot write {path}: {err.strip()}"
        else:
            self._delivered = True

    def _start(self, argv: list[str]) -> None:
        worker_id = worker_id_of(argv) or f"copy-{len(self._workers) + 1}"
        remote = _Remote(worker_id=worker_id, log_path=self._log_path(worker_id))
        with self._lock:
            self._pending -= 1
            self._workers[worker_id] = remote
        client = self._connected()
        if client is None or self._connect_error:
            self._finish(remote, LAUNCH_FAILED_EXIT_CODE, self._connect_error or "no connection")
            return
        if self.command_template.strip() == COMMAND_PLACEHOLDER:
            body = shlex.join(argv)
        else:
            body = "/bin/sh -c " + shlex.quote(render_template(self.command_template, argv))
        # The login shell is a session leader (sshd's setsid); exec keeps its pid, so
        # the worker leads the process group that `kill -- -PID` reaches.
        command = (
            f"echo \"{_PID_MARK} $$ $(cut -d' ' -f22 /proc/$$/stat 2>/dev/null)\"; exec {body}"
        )
        try:
            transport = client.get_transport()
            assert transport is not None
            channel = transport.open_session(timeout=self.settings.connect_timeout_s)
            channel.exec_command(command)
            channel.shutdown_write()
        except Exception as exc:
            self._finish(remote, LAUNCH_FAILED_EXIT_CODE, f"ssh {self.host}: cannot start: {exc}")
            return
        remote.channel = channel

    def _append_log(self, remote: _Remote, data: bytes) -> None:
        fd = os.open(remote.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def _drain(self) -> bool:
        """Read what every channel has; record the ones that ended. Return whether any data."""
        busy = False
        with self._lock:
            remotes = [r for r in self._workers.values() if r.channel is not None and not r.ended]
        for remote in remotes:
            channel = remote.channel
            chunks = []
            while channel.recv_ready():
                data = channel.recv(65536)
                if not data:
                    break
                chunks.append(data)
            stdout = b"".join(chunks)
            if remote.pid is None and stdout:
                remote.buffer += stdout
                line, newline, rest = remote.buffer.partition(b"\n")
                if newline:
                    fields = line.decode("ascii", "replace").split()
                    if len(fields) >= 2 and fields[0] == _PID_MARK and fields[1].isdigit():
                        remote.pid = int(fields[1])
                        remote.start_ticks = fields[2] if len(fields) > 2 else ""
                        stdout = rest
                    else:
                        stdout = remote.buffer
                    remote.buffer = b""
                else:
                    stdout = b""
            errs = []
            while channel.recv_stderr_ready():
                data = channel.recv_stderr(65536)
                if not data:
                    break
                errs.append(data)
            data = stdout + b"".join(errs)
            if data:
                busy = True
                self._append_log(remote, data)
            # The end: the exit status and the end of the data (EOF, or the channel
            # closed) -- sshd may send the status before the last output.
            finished = channel.exit_status_ready() and (channel.eof_received or channel.closed)
            if finished and not channel.recv_ready() and not channel.recv_stderr_ready():
                status = channel.recv_exit_status()
                signum = getattr(channel, "cistemd_signal", None)
                channel.close()
                self._finish(remote, status if status >= 0 and signum is None else None, "", signum)
        client = self._client
        if client is not None and remotes:
            transport = client.get_transport()
            if transport is None or not transport.is_active():
                self._lost(f"connection to {self.host} lost (no answer to keepalives)")
        return busy

    def _wait_for_data(self) -> None:
        with self._lock:
            channels = [
                r.channel for r in self._workers.values() if r.channel is not None and not r.ended
            ]
        if not channels:
            self._stop.wait(_STEP_S * 2)
            return
        with contextlib.suppress(OSError, ValueError):
            select.select(channels, [], [], _STEP_S)

    def _check(self) -> None:
        """Check workers without a channel (re-attached) by pid and start time."""
        with self._lock:
            orphans = [
                r for r in self._workers.values() if r.channel is None and not r.ended and r.pid
            ]
        if not orphans:
            return
        client = self._connected()
        if client is None:
            return  # cannot tell; keep them until the host answers again
        tests = " ".join(
            f"{r.pid}:{r.start_ticks or 'x'}" for r in orphans
        )
        command = (
            f"for item in {tests}; do pid=${{item%%:*}}; ticks=${{item#*:}}; "
            "now=$(cut -d' ' -f22 /proc/$pid/stat 2>/dev/null); "
            'if [ -n "$now" ] && { [ "$ticks" = x ] || [ "$now" = "$ticks" ]; }; '
            'then echo "$pid alive"; fi; done'
        )
        status, out, _err = _exec(client, command, timeout=20.0)
        if status != 0:
            return
        alive = {line.split()[0] for line in out.splitlines() if line.endswith("alive")}
        for remote in orphans:
            if str(remote.pid) not in alive:
                self._finish(remote, None, "gone (checked after a daemon restart)")

    def _finish(
        self, remote: _Remote, exit_code: int | None, why: str, signum: int | None = None
    ) -> None:
        with self._lock:
            if remote.ended:
                return
            remote.ended = True
            if why:
                with contextlib.suppress(OSError):
                    self._append_log(remote, f"[cistemd] ssh {self.host}: {why}\n".encode())
            self._exited.append(
                WorkerExit(
                    worker_id=remote.worker_id,
                    pid=remote.pid,
                    exit_code=exit_code,
                    signal=signum,
                    stderr_tail=read_tail(remote.log_path),
                    log_path=remote.log_path,
                )
            )

    # ----------------------------------------------------------------- interface

    def deliver_credentials(self, local_path: str) -> None:
        """Copy the credentials file to the host through the SSH channel (mode 0600 there).

        Parameters
        ----------
        local_path
            The daemon's 0600 copy.
        """
        self._credentials = (local_path, Path(local_path).read_text(encoding="ascii"))
        self._delivered = False
        self._ops.put(_Op("credentials"))
        self._ensure_thread()

    def launch(self, commands: Sequence[Sequence[str]]) -> None:
        """Queue the workers for start on the host (returns at once).

        Parameters
        ----------
        commands
            Worker command lines.
        """
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._lock:
            self._pending += len(commands)
        self._ops.put(_Op("launch", [list(argv) for argv in commands]))
        self._ensure_thread()
        if self.wait_for_start:
            self.wait_started()

    def wait_started(self, timeout: float = 30.0) -> None:
        """Block until every queued launch has been tried (tests, benchmarks).

        Parameters
        ----------
        timeout
            Seconds to wait at most.
        """
        marker = _Op("launch", [])
        self._ensure_thread()
        self._ops.put(marker)
        deadline = time.monotonic() + timeout
        marker.done.wait(timeout)
        while time.monotonic() < deadline:
            with self._lock:
                if all(r.ended or r.pid is not None for r in self._workers.values()):
                    return
            time.sleep(0.01)

    def poll(self) -> list[WorkerExit]:
        """Return the workers that ended since the last call (each exactly once).

        Returns
        -------
        list of WorkerExit
        """
        with self._lock:
            if any(r.channel is None and not r.ended for r in self._workers.values()):
                self._ensure_thread()
            exited, self._exited = self._exited, []
        return exited

    def is_alive(self) -> bool:
        """Return whether any worker runs or waits to be started."""
        with self._lock:
            return self._pending > 0 or any(not r.ended for r in self._workers.values())

    @property
    def pids(self) -> dict[str, int]:
        """Remote pids of the running workers, by worker id."""
        with self._lock:
            return {
                r.worker_id: r.pid
                for r in self._workers.values()
                if not r.ended and r.pid is not None
            }

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process group of every remote worker.

        Parameters
        ----------
        signum
            The signal.
        """
        targets = " ".join(f"-{pid}" for pid in self.pids.values())
        if not targets:
            return
        client = self._client
        if client is None:
            try:
                client = self._client = connect(self.host, self.settings)
            except InvalidInputError as exc:
                logger.warning("cannot signal the workers on %s: %s", self.host, exc)
                return
        _exec(client, f"kill -{int(signum)} -- {targets} 2>/dev/null; true", timeout=10.0)

    def _wait(self, deadline: float) -> None:
        while self.is_alive_running() and time.monotonic() < deadline:
            with self._lock:
                orphans = any(r.channel is None and not r.ended for r in self._workers.values())
            if orphans:
                self._check()
            time.sleep(0.1)

    def is_alive_running(self) -> bool:
        """Return whether a started worker still runs (pending launches not counted)."""
        with self._lock:
            return any(not r.ended for r in self._workers.values())

    def terminate(self, grace_seconds: float | None = None) -> None:
        """SIGTERM every remote worker's group, SIGKILL what is left after the grace.

        Parameters
        ----------
        grace_seconds
            Wait between the two (None: :attr:`grace_seconds`).
        """
        grace = self.grace_seconds if grace_seconds is None else max(0.0, grace_seconds)
        self.signal(15)
        self._wait(time.monotonic() + grace)
        if self.is_alive_running():
            self.kill()

    def kill(self) -> None:
        """SIGKILL every remote worker's group and wait (≤ 5 s) for the channels to close."""
        self.signal(9)
        self._wait(time.monotonic() + 5.0)

    def close(self) -> None:
        """Stop the thread and close the connection (the workers are left as they are)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    # ----------------------------------------------------------------- persistence

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-like map from which :meth:`from_dict` re-attaches.

        Returns
        -------
        dict
            Host, settings, template, and every running worker's id, remote
            pid, start time and log path.
        """
        with self._lock:
            processes = [
                {
                    "worker_id": r.worker_id,
                    "pid": r.pid,
                    "start_ticks": r.start_ticks,
                    "log_path": r.log_path,
                }
                for r in self._workers.values()
                if not r.ended
            ]
            exited = [item.to_dict() for item in self._exited]
        return {
            "kind": self.kind,
            "endpoint": self.endpoint,
            "host": self.host,
            "settings": self.settings.to_dict(),
            "log_dir": str(self.log_dir),
            "command_template": self.command_template,
            "delay_ms": self.delay_ms,
            "grace_seconds": self.grace_seconds,
            "tag": self.tag,
            "credentials": self._credentials[0] if self._credentials else "",
            "processes": processes,
            "exited": exited,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SshLauncher:
        """Re-attach to the workers a previous daemon started on the host.

        Parameters
        ----------
        data
            :meth:`to_dict`'s map.

        Returns
        -------
        SshLauncher

        Raises
        ------
        InvalidInputError
            A malformed map.
        """
        if not isinstance(data, Mapping) or data.get("kind") != cls.kind:
            raise InvalidInputError(f"not a {cls.kind!r} launcher record: {data!r:.200}")
        try:
            launcher = cls(
                str(data["host"]),
                SshSettings.from_dict(data.get("settings") or {}),
                log_dir=str(data["log_dir"]),
                command_template=str(data.get("command_template", COMMAND_PLACEHOLDER)),
                delay_ms=int(data.get("delay_ms", 10)),
                grace_seconds=float(data.get("grace_seconds", 2.0)),
                tag=str(data.get("tag", "")),
            )
            launcher.endpoint = str(data.get("endpoint", ""))
            credentials = str(data.get("credentials", ""))
            if credentials and os.path.exists(credentials):  # for later launches
                launcher._credentials = (credentials, Path(credentials).read_text("ascii"))
            for item in data.get("processes", []):
                pid = item.get("pid")
                remote = _Remote(
                    worker_id=str(item["worker_id"]),
                    log_path=str(item.get("log_path", "")),
                    pid=int(pid) if pid is not None else None,
                    start_ticks=str(item.get("start_ticks", "")),
                )
                if remote.pid is None:
                    remote.ended = True  # never told us its pid: nothing to watch
                launcher._workers[remote.worker_id] = remote
            launcher._exited = [WorkerExit.from_dict(item) for item in data.get("exited", [])]
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed ssh launcher record: {exc}") from None
        return launcher


def _exec(
    client: paramiko.SSHClient, command: str, *, stdin: str | None = None, timeout: float
) -> tuple[int | None, str, str]:
    """Run ``command`` on the host; return ``(status, stdout, stderr)`` (status None: failed)."""
    try:
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            return None, "", "not connected"
        channel = transport.open_session(timeout=timeout)
        channel.settimeout(timeout)
        channel.exec_command(command)
        if stdin:
            channel.sendall(stdin.encode())
        channel.shutdown_write()
        out, err = [], []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while channel.recv_ready():
                out.append(channel.recv(65536))
            while channel.recv_stderr_ready():
                err.append(channel.recv_stderr(65536))
            finished = channel.exit_status_ready() and (channel.eof_received or channel.closed)
            if finished and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            time.sleep(0.01)
        else:
            channel.close()
            return None, b"".join(out).decode(errors="replace"), "timed out"
        status = channel.recv_exit_status()
        channel.close()
        return (
            status,
            b"".join(out).decode("utf-8", "replace"),
            b"".join(err).decode("utf-8", "replace"),
        )
    except Exception as exc:
        return None, "", str(exc)


_LAUNCHERS[SshLauncher.kind] = SshLauncher
