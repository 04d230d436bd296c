r"""The worker: one process that pulls tasks from cistemd and runs them.

Threads
-------
Two threads share the work, and only one of them touches ZeroMQ:

* the **link** thread owns the DEALER socket. It says hello, sends and checks
  heartbeats, reconnects, receives assignments and cancels, sends progress
  and outcomes, and decides when the process ends. It never runs task code,
  so a task that keeps the CPU busy cannot make the worker look dead: pure
  Python hands the GIL over every few milliseconds, numpy releases it in its
  loops, and cistemd's numba kernels are compiled ``nogil=True`` (a kernel
  that holds the GIL for longer than ``liveness`` heartbeat intervals *will*
  get its worker declared dead; that is why the kernels must not).
* the **main** thread runs one task at a time (:meth:`Action.run_task`), so a
  kernel may use signals, numba's threading layer and everything else that
  wants the main thread. It gets assignments from a queue and hands outcomes
  back through a mailbox that wakes the link thread through a pipe.

Prefetch
--------
With ``WorkerConfig.prefetch`` K > 1 (``--prefetch``, 64 from the command
line) the hello says K and the worker asks for work only after (re)connecting:
the daemon sends up to K assignments ahead (as many as its measure of the
task time says are worth holding) and tops the worker up as outcomes arrive,
so no task waits a round trip. Held attempts run in the order received; the
oldest is the running one, which heartbeats name. A ``task_cancel`` of a held
attempt that has not started drops it (no outcome is sent); stopping drops
every one not started; a reconnection drops them too (a daemon that still
counts them as this worker's sends them again, a restarted one re-queued
them). An assignment of an attempt held, or finished with its outcome still
kept for re-sending, is a re-delivery and is ignored. With K = 1 the worker
holds one attempt, sends ``task_request`` after each outcome and answers an
assignment while busy with ``worker_busy``.

Conversation (protocol messages in :mod:`cistemd.protocol`)
-----------------------------------------------------------
::

    worker                                   cistemd
    worker_hello  ------------------------->             (then task_request at once)
                  <------------------------- worker_welcome {heartbeat_interval_s, liveness}
    task_request  ------------------------->
                  <------------------------- task_assign {task_id, attempt, action, parameters}
                  <------------------------- (more task_assign ahead, with prefetch)
    task_progress ------------------------->             (≤ 5 per second, latest wins)
    task_result | task_error -------------->
    task_request  ------------------------->             ... and so on (without prefetch;
                                                          with it, the daemon tops up)
    heartbeat     <------------------------> heartbeat   (every interval, both ways;
                                                          names the running task)
                  <------------------------- task_cancel  -> the task stops, no outcome sent
                  <------------------------- worker_shutdown -> worker_bye, exit 0

``task_assign.parameters`` is ``{"scratch_dir": PATH, "payload": {...}}``:
``payload`` is handed to :meth:`Action.run_task` as is and ``scratch_dir`` is
the task's ``context.scratch_dir`` (created if missing). A map without
``"payload"`` is taken as the payload itself, less ``scratch_dir``.

Liveness, reconnection, death
-----------------------------
Any message from the daemon proves it alive. After ``liveness`` intervals of
silence the worker closes its socket, waits (1 s, doubling to 32 s; reset by
any message) and connects again with a new socket and a new hello; while
it runs a task, its heartbeats name the task so a restarted daemon can take
the attempt back, and the outcomes it sent since the daemon last answered are
sent again (the daemon records a result once and rejects repeats). After
``death_timeout`` seconds without a word it stops its task and exits with
:attr:`ExitCode.DAEMON_GONE`, so no worker outlives its daemon for long.

Stopping
--------
``task_cancel`` for the running attempt sets ``context.is_cancelled()``; a
task that has not returned :data:`CANCEL_GRACE_SECONDS` later takes the whole
process down (:attr:`ExitCode.TASK_STUCK`), so a cancel takes effect within
2 s whatever the kernel does. ``worker_shutdown``, SIGTERM/SIGINT/SIGHUP and
the death timeout stop the running task the same way, then the worker says
``worker_bye`` (when the daemon is there to hear it) and exits.

Exit codes
----------
:class:`~cistemd.worker.exit_codes.ExitCode` (0 stopped when told, 75 daemon
gone, 76 refused, 77 bad credentials, 79 task stuck, 128 + n stopped on
signal n; the table is in :mod:`cistemd.worker.exit_codes`). The ``selftest``
action's crash modes end a worker with ``os._exit(13)``, SIGKILL or SIGSEGV.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import signal
import socket as pysocket
import stat
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgpack
import zmq

from cistemd import protocol
from cistemd.actions.base import Action, TaskContext, get_action
from cistemd.errors import CistemError
from cistemd.worker.exit_codes import ExitCode, exit_code_for_signal

__all__ = [
    "CANCEL_GRACE_SECONDS",
    "MAX_PREFETCH",
    "PROGRESS_INTERVAL_SECONDS",
    "CredentialsError",
    "CurveCredentials",
    "ExitCode",
    "Worker",
    "WorkerConfig",
    "exit_code_for_signal",
    "load_credentials",
]

logger = logging.getLogger(__name__)

CANCEL_GRACE_SECONDS: Final = 1.0
"""How long a cancelled task may take to return before the process exits."""

PROGRESS_INTERVAL_SECONDS: Final = 0.2
"""Least time between two ``task_progress`` messages (at most 5 per second)."""

MAX_PREFETCH: Final = 64
"""Most attempts a worker may hold at once (the protocol's bound too)."""

_UNCONFIRMED_KEPT: Final = MAX_PREFETCH  # outcomes kept for re-sending after a reconnection
_RECV_BATCH: Final = 256  # messages read per wake-up before timers are looked at again
_BYE_LINGER_MS: Final = 500  # how long a closing socket may try to deliver worker_bye
_TRACEBACK_MAX: Final = 4096
_CREDENTIALS_MAX_BYTES: Final = 64 * 1024


# --------------------------------------------------------------------------- credentials


class CredentialsError(CistemError):
    """A credentials file that cannot be used; the message names the file and the fault."""

    code = "bad_credentials"


@dataclass(frozen=True, slots=True, repr=False)
class CurveCredentials:
    """CURVE keys of a worker: the daemon's public key and the worker's key pair.

    Keys are Z85 text (40 ASCII characters) as ``bytes``, the form ZeroMQ takes.

    Parameters
    ----------
    server_public_key
        The daemon's public key.
    public_key
        The worker's public key (on the daemon's allow-list).
    secret_key
        The worker's secret key; never printed by :func:`repr`.
    """

    server_public_key: bytes
    public_key: bytes
    secret_key: bytes

    def __repr__(self) -> str:
        return (
            f"CurveCredentials(server_public_key={self.server_public_key.decode()!r}, "
            f"public_key={self.public_key.decode()!r}, secret_key=<hidden>)"
        )

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE client with these keys (before it connects).

        Parameters
        ----------
        sock
            A ZeroMQ socket that has not connected yet.
        """
        sock.curve_serverkey = self.server_public_key
        sock.curve_publickey = self.public_key
        sock.curve_secretkey = self.secret_key


def _z85_key(value: object, name: str, path: str) -> bytes:
    from zmq.utils import z85

    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    if isinstance(value, bytes) and len(value) == 32:  # raw key in a msgpack file
        return z85.encode(value)
    if not isinstance(value, bytes) or len(value) != 40:
        raise CredentialsError(f"{path}: {name!r} must be a 40-character Z85 CURVE key")
    try:
        decoded = z85.decode(value)
    except (ValueError, KeyError, TypeError):
        decoded = b""
    if len(decoded) != 32:
        raise CredentialsError(f"{path}: {name!r} is not valid Z85 text")
    return value


def load_credentials(path: str | os.PathLike[str]) -> CurveCredentials:
    """Read a worker's CURVE keys from a private file.

    The file is a JSON or msgpack map ``{"server_public_key", "public_key",
    "secret_key"}`` of Z85 strings (msgpack may also hold the raw 32-byte
    keys). It must be a regular file owned by this user and readable by
    nobody else (mode 0600 or stricter), since it holds a secret key.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    CurveCredentials
        The keys.

    Raises
    ------
    CredentialsError
        The file is missing, a link, not ours, group/world accessible,
        malformed, or its public key does not belong to its secret key.
    """
    where = os.fspath(path)
    try:
        fd = os.open(where, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC)
    except OSError as exc:
        raise CredentialsError(
            f"{where}: cannot open the credentials file ({exc.strerror})"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CredentialsError(f"{where}: the credentials file is not a regular file")
        if info.st_uid != os.geteuid():
            raise CredentialsError(f"{where}: the credentials file belongs to another user")
        if info.st_mode & 0o077:
            raise CredentialsError(
                f"{where}: the credentials file is accessible to others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run chmod 600 on it"
            )
        raw = os.read(fd, _CREDENTIALS_MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > _CREDENTIALS_MAX_BYTES:
        raise CredentialsError(f"{where}: the credentials file is too large")
    data: object
    try:
        if raw.lstrip()[:1] == b"{":
            data = json.loads(raw.decode("utf-8"))
        else:
            data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, UnicodeDecodeError):
        raise CredentialsError(f"{where}: the credentials file is not JSON or msgpack") from None
    if not isinstance(data, dict):
        raise CredentialsError(f"{where}: the credentials file must hold a map")
    names = ("server_public_key", "public_key", "secret_key")
    missing = [name for name in names if name not in data]
    if missing:
        raise CredentialsError(f"{where}: the credentials file lacks {', '.join(missing)}")
    server, public, secret = (_z85_key(data[name], name, where) for name in names)
    if zmq.curve_public(secret) != public:
        raise CredentialsError(f"{where}: 'public_key' does not belong to 'secret_key'")
    return CurveCredentials(server_public_key=server, public_key=public, secret_key=secret)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything a worker is told at start.

    Parameters
    ----------
    endpoint
        The daemon's worker endpoint, ``ipc://PATH`` or ``tcp://HOST:PORT``.
    worker_id
        This worker's id (ASCII, :mod:`cistemd.protocol`'s id syntax); it is
        also the socket's routing identity.
    job_id
        The job it was started for ("" = any).
    threads
        Threads a task may use.
    heartbeat_interval_s
        Heartbeat period until the daemon's welcome sets its own.
    liveness
        Intervals of silence after which the daemon is presumed lost (until
        the welcome sets it).
    death_timeout_s
        Seconds without a word from the daemon after which the worker exits.
    credentials
        CURVE keys, needed for ``tcp://`` endpoints of a secured daemon.
    reconnect_initial_s, reconnect_max_s
        Back-off before reconnecting: doubles from the first to the second.
    cancel_grace_s
        How long a cancelled task may take to return.
    progress_interval_s
        Least time between two progress messages.
    prefetch
        Attempts this worker may hold at once (1 to :data:`MAX_PREFETCH`): it
        says so in its hello, runs what it holds in the order received, and
        does not ask for each task (the daemon tops it up). 1 = one task at a
        time, one ``task_request`` each.

    Raises
    ------
    ValueError
        A value out of range, naming it.
    """

    endpoint: str
    worker_id: str
    job_id: str = ""
    threads: int = 1
    heartbeat_interval_s: float = 1.0
    liveness: int = 3
    death_timeout_s: float = 60.0
    credentials: CurveCredentials | None = None
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 32.0
    cancel_grace_s: float = CANCEL_GRACE_SECONDS
    progress_interval_s: float = PROGRESS_INTERVAL_SECONDS
    prefetch: int = 1

    def __post_init__(self) -> None:
        if not self.endpoint.startswith(("ipc://", "tcp://")):
            raise ValueError(
                f"endpoint must be ipc://PATH or tcp://HOST:PORT, got {self.endpoint!r}"
            )
        _check_id(self.worker_id, "worker_id", empty_ok=False)
        _check_id(self.job_id, "job_id", empty_ok=True)
        if self.threads < 1:
            raise ValueError(f"threads must be ≥ 1, got {self.threads}")
        if not 0 < self.heartbeat_interval_s <= 3600:
            raise ValueError(
                f"heartbeat_interval_s must be in (0, 3600], got {self.heartbeat_interval_s}"
            )
        if self.liveness < 1:
            raise ValueError(f"liveness must be ≥ 1, got {self.liveness}")
        for name in ("death_timeout_s", "reconnect_initial_s", "reconnect_max_s", "cancel_grace_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.progress_interval_s < 0:
            raise ValueError(f"progress_interval_s must be ≥ 0, got {self.progress_interval_s}")
        if not 1 <= self.prefetch <= MAX_PREFETCH:
            raise ValueError(f"prefetch must be in 1..{MAX_PREFETCH}, got {self.prefetch}")


def _check_id(value: str, name: str, *, empty_ok: bool) -> None:
    """Raise ``ValueError`` unless ``value`` is an id the protocol accepts."""
    if not value and empty_ok:
        return
    try:  # the protocol owns the id syntax; let one of its id fields judge
        protocol.new_message("task_cancel", {"task_id": value, "attempt": 1})
    except protocol.ProtocolError:
        raise ValueError(
            f"{name} {value!r}: an id is 1-128 characters of A-Z a-z 0-9 _ . : - "
            "starting with a letter or a digit"
        ) from None


# --------------------------------------------------------------------------- hand-over types


@dataclass(slots=True)
class _Assignment:
    """A task attempt handed from the link thread to the main thread."""

    task_id: str
    attempt: int
    action: str
    parameters: dict[str, Any]
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What the main thread hands back when a task attempt has returned or raised."""

    task_id: str
    attempt: int
    elapsed_s: float
    result: dict[str, Any] | None = None
    reason: str = ""
    traceback: str = ""
    skipped: bool = False  # cancelled before it started: nothing ran, nothing to send


@dataclass(frozen=True, slots=True)
class _Stop:
    """Tells the main thread to return ``code``."""

    code: int


class _Mailbox:
    """Main (and task) threads → link thread: outcomes and the latest progress.

    Posting writes a byte to a pipe that the link thread polls, so it wakes
    at once; a full pipe already means "wake up", so the byte may be dropped.
    Only the first post after the link thread last looked writes a byte: the
    rest would wake it for what it is about to take anyway (a pipe write is a
    system call and a hand-over of the GIL, per task).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outcomes: deque[_Outcome] = deque()
        self._progress: tuple[str, int, float, str] | None = None
        self._woken = False  # a byte was written since the link thread last looked
        self.read_fd, self._write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self._write_fd, False)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write_fd, b"\0")

    def post_outcome(self, outcome: _Outcome) -> None:
        with self._lock:
            self._outcomes.append(outcome)
            wake, self._woken = not self._woken, True
        if wake:
            self._wake()

    def set_progress(self, task_id: str, attempt: int, fraction: float, message: str) -> None:
        with self._lock:
            wake = self._progress is None and not self._woken
            self._progress = (task_id, attempt, fraction, message)
            self._woken = self._woken or wake
        if wake:
            self._wake()

    def take_outcomes(self) -> list[_Outcome]:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.read_fd, 4096):
                pass
        with self._lock:
            self._woken = False
            outcomes = list(self._outcomes)
            self._outcomes.clear()
        return outcomes

    def has_progress(self) -> bool:
        with self._lock:
            return self._progress is not None

    def take_progress(self) -> tuple[str, int, float, str] | None:
        with self._lock:
            progress, self._progress = self._progress, None
        return progress

    def close(self) -> None:
        for fd in (self.read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


# --------------------------------------------------------------------------- the link thread


class _Link(threading.Thread):
    """Owns the socket: talks to the daemon and decides when the worker stops."""

    def __init__(
        self,
        config: WorkerConfig,
        inbox: queue.Queue[_Assignment | _Stop],
        mailbox: _Mailbox,
        signal_fd: int | None,
    ) -> None:
        super().__init__(name="cistemd-worker-link", daemon=True)
        self.config = config
        self.inbox = inbox
        self.mailbox = mailbox
        self.signal_fd = signal_fd
        self.exit_code: int = ExitCode.INTERNAL
        self.stats = protocol.ProtocolStats()
        self._sender = f"worker:{config.worker_id}"
        self._identity = config.worker_id.encode("ascii")
        self._host = (pysocket.gethostname() or "unknown")[:255]
        self._context: zmq.Context[Any] | None = None
        self._socket: zmq.Socket[Any] | None = None
        self._poller = zmq.Poller()
        self._interval = config.heartbeat_interval_s
        self._liveness = config.liveness
        self._backoff = config.reconnect_initial_s
        now = time.monotonic()
        self._last_heard = now  # for the death timeout
        self._silence_deadline = now  # for liveness; set on connect
        self._next_heartbeat = now
        self._reconnect_at: float | None = now
        self._hello_id = ""
        # Attempts held, in the order received = the order the main thread runs them:
        # the first is running (or about to). An attempt leaves when its outcome comes.
        self._held: dict[tuple[str, int], _Assignment] = {}
        self._cancel_deadline: float | None = None
        self._stopping: tuple[int, str, bool] | None = None  # (code, reason, say bye)
        # Outcome frames sent and not known to have arrived, by attempt, oldest first.
        self._unconfirmed: dict[tuple[str, int], bytes] = {}
        self._next_progress = now
        self._done = False

    @property
    def _current(self) -> _Assignment | None:
        """The running attempt: the oldest held."""
        return next(iter(self._held.values()), None)

    # ----------------------------------------------------------------- main loop

    def run(self) -> None:
        try:
            self._context = zmq.Context()
            self._poller.register(self.mailbox.read_fd, zmq.POLLIN)
            if self.signal_fd is not None:
                self._poller.register(self.signal_fd, zmq.POLLIN)
            while not self._done:
                self._step()
        except BaseException:
            logger.exception("internal error in the worker's link thread")
            self._finish(
                ExitCode.INTERNAL, "internal error", bye=True, forced=self._current is not None
            )
        finally:
            self._close_socket(linger_ms=0)
            if self._context is not None:
                self._context.term()

    def _step(self) -> None:
        now = time.monotonic()
        timeout_s = max(0.0, self._next_deadline() - now)
        events = dict(self._poller.poll(timeout=max(1, round(timeout_s * 1000))))
        if self.signal_fd is not None and self.signal_fd in events:
            self._on_signals()
        if self._socket is not None and self._socket in events:
            self._receive()
        if self.mailbox.read_fd in events or self.mailbox.has_progress():
            self._on_mailbox()
        if not self._done:
            self._on_timers(time.monotonic())

    def _next_deadline(self) -> float:
        deadlines = [math.inf]
        if self._stopping is None:
            deadlines.append(self._last_heard + self.config.death_timeout_s)
        if self._socket is not None:
            deadlines += [self._next_heartbeat, self._silence_deadline]
        elif self._reconnect_at is not None:
            deadlines.append(self._reconnect_at)
        if self._cancel_deadline is not None:
            deadlines.append(self._cancel_deadline)
        if self.mailbox.has_progress():
            deadlines.append(self._next_progress)
        return min(deadlines)

    def _on_timers(self, now: float) -> None:
        if self._cancel_deadline is not None and now >= self._cancel_deadline:
            self._task_stuck()
            return
        if self._stopping is None and now - self._last_heard >= self.config.death_timeout_s:
            logger.error(
                "no word from the daemon at %s for %.1f s (death timeout); exiting",
                self.config.endpoint,
                now - self._last_heard,
            )
            self._close_socket(linger_ms=0)
            self._begin_stop(ExitCode.DAEMON_GONE, "daemon gone", bye=False)
            return
        if self._socket is None:
            if self._reconnect_at is not None and now >= self._reconnect_at:
                self._connect(now)
            return
        if now >= self._silence_deadline:
            self._lost_daemon(now)
            return
        if now >= self._next_heartbeat:
            current = self._current
            content: dict[str, Any] = {}
            if current is not None and not current.cancelled.is_set():
                content = {"task_id": current.task_id, "attempt": current.attempt}
            self._send(protocol.new_message("heartbeat", content, sender=self._sender))
            self._next_heartbeat = now + self._interval

    # ----------------------------------------------------------------- connection

    def _connect(self, now: float) -> None:
        assert self._context is not None
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self._identity)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.DEFAULT_LIMITS.transport_max_bytes)
        if self.config.credentials is not None:
            self.config.credentials.apply(sock)
        sock.connect(self.config.endpoint)
        self._socket = sock
        self._poller.register(sock, zmq.POLLIN)
        self._reconnect_at = None
        self._silence_deadline = now + self._interval * self._liveness
        self._next_heartbeat = now + self._interval
        current = self._current
        # Prefetched attempts not started yet are dropped: a daemon that still
        # counts them as ours sends them again; a restarted one re-queued them.
        self._drop_prefetched("reconnecting")
        hello = protocol.new_message(
            "worker_hello",
            {
                "worker_id": self.config.worker_id,
                "job_id": self.config.job_id,
                "host": self._host,
                "pid": os.getpid(),
                "protocol_version": protocol.PROTOCOL_VERSION,
                "threads": self.config.threads,
                "prefetch": self.config.prefetch,
            },
            sender=self._sender,
        )
        self._hello_id = hello.msg_id
        logger.info("connecting to %s as %s", self.config.endpoint, self.config.worker_id)
        self._send(hello)
        if current is not None:  # name the running attempt at once, for re-adoption
            self._send(
                protocol.new_message(
                    "heartbeat",
                    {"task_id": current.task_id, "attempt": current.attempt},
                    sender=self._sender,
                )
            )
        for frame in self._unconfirmed.values():
            self._send_frame(frame, "task outcome")
        if current is None and self._stopping is None:
            self._send(protocol.new_message("task_request", sender=self._sender))

    def _lost_daemon(self, now: float) -> None:
        delay = self._backoff
        logger.warning(
            "no word from the daemon for %d heartbeat intervals (%.1f s); reconnecting in %.0f s",
            self._liveness,
            self._interval * self._liveness,
            delay,
        )
        self._close_socket(linger_ms=0)
        self._reconnect_at = None if self._stopping is not None else now + delay
        self._backoff = min(self._backoff * 2, self.config.reconnect_max_s)

    def _close_socket(self, *, linger_ms: int) -> None:
        sock, self._socket = self._socket, None
        if sock is None:
            return
        with contextlib.suppress(KeyError):
            self._poller.unregister(sock)
        sock.close(linger=linger_ms)

    def _send(self, message: protocol.Message) -> bool:
        try:
            frame = protocol.encode(message)
        except protocol.ProtocolError as exc:
            logger.error("not sending a %s message: %s", message.msg_type, exc.reason)
            return False
        return self._send_frame(frame, message.msg_type)

    def _send_frame(self, frame: bytes, what: str) -> bool:
        if self._socket is None:
            return False
        try:
            self._socket.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            logger.warning("the link to the daemon is full; dropped a %s message", what)
            return False
        return True

    # ----------------------------------------------------------------- receiving

    def _receive(self) -> None:
        sock = self._socket
        for _ in range(_RECV_BATCH):
            if sock is None or self._socket is not sock or self._done:
                return
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            now = time.monotonic()
            self._last_heard = now
            self._silence_deadline = now + self._interval * self._liveness
            self._backoff = self.config.reconnect_initial_s
            if len(frames) != 1:
                self.stats.record_error("bad_envelope", f"{len(frames)} frames")
                self._reply_error("bad_envelope", f"expected one frame, got {len(frames)}", None)
                continue
            try:
                message = protocol.decode(
                    frames[0], direction=protocol.Direction.DAEMON_TO_WORKER, stats=self.stats
                )
            except protocol.ProtocolError as exc:
                logger.warning("refused a message from the daemon: [%s] %s", exc.code, exc.reason)
                if exc.code == "version_mismatch":
                    self._begin_stop(ExitCode.REFUSED, "protocol version mismatch", bye=False)
                    return
                if exc.header is None or exc.header.msg_type != "error":
                    self._reply_error(exc.code, exc.reason, exc.header)
                continue
            self._dispatch(message)

    def _reply_error(self, code: str, reason: str, parent: protocol.Header | None) -> None:
        self._send(protocol.error_message(code, reason, parent=parent, sender=self._sender))

    def _dispatch(self, message: protocol.Message) -> None:
        content = message.content
        kind = message.msg_type
        if kind == "heartbeat":
            return
        if kind == "worker_welcome":
            self._interval = float(content["heartbeat_interval_s"])
            self._liveness = int(content["liveness"])
            self._silence_deadline = time.monotonic() + self._interval * self._liveness
            self._next_heartbeat = min(self._next_heartbeat, time.monotonic() + self._interval)
            logger.info(
                "welcomed by the daemon: heartbeat every %.3g s, liveness %d",
                self._interval,
                self._liveness,
            )
        elif kind == "task_assign":
            self._on_assign(message)
        elif kind == "task_cancel":
            key = (content["task_id"], content["attempt"])
            held = self._held.get(key)
            if held is None:
                logger.info(
                    "cancel of task %s attempt %d, which is not held here; ignored", *key
                )
                return
            logger.info(
                "cancelling task %s attempt %d: %s", *key, content["reason"] or "no reason given"
            )
            if held is self._current:
                self._cancel_current()
            else:  # not started: the main thread skips it
                held.cancelled.set()
                del self._held[key]
        elif kind == "worker_shutdown":
            logger.info("the daemon asks this worker to stop: %s", content["reason"])
            self._begin_stop(ExitCode.OK, "shutdown requested", bye=True)
        elif kind == "error":
            logger.warning("the daemon reports [%s] %s", content["code"], content["reason"])
            parent = message.parent_header
            if parent is not None and parent.msg_id == self._hello_id:
                self._begin_stop(ExitCode.REFUSED, f"hello refused: {content['code']}", bye=False)
        else:  # a D>W type added to the protocol after this worker was written
            logger.warning("ignored a %r message this worker does not know", kind)

    def _on_assign(self, message: protocol.Message) -> None:
        content = message.content
        task_id, attempt = content["task_id"], content["attempt"]
        current = self._current
        if self._stopping is not None:
            logger.info("ignored task %s attempt %d: this worker is stopping", task_id, attempt)
            return
        key = (task_id, attempt)
        if key in self._held or key in self._unconfirmed:
            return  # a re-delivery of what is held or was done (its outcome is kept)
        if self.config.prefetch > 1:
            if len(self._held) >= self.config.prefetch:
                logger.warning(
                    "task %s attempt %d is beyond the %d this worker holds; it runs anyway",
                    task_id,
                    attempt,
                    self.config.prefetch,
                )
            current = None
        if current is not None:
            self._send(
                protocol.error_message(
                    "worker_busy",
                    f"worker {self.config.worker_id} is running task {current.task_id} attempt "
                    f"{current.attempt}; task {task_id} attempt {attempt} was not started",
                    parent=message,
                    sender=self._sender,
                )
            )
            return
        if self.config.prefetch == 1:
            # The daemon answered a request sent after every outcome we hold: all arrived.
            self._unconfirmed.clear()
        assignment = _Assignment(
            task_id=task_id,
            attempt=attempt,
            action=content["action"],
            parameters=content["parameters"],
        )
        if not self._held:
            self._next_progress = time.monotonic()
        self._held[key] = assignment
        self.inbox.put(assignment)

    # ----------------------------------------------------------------- task outcomes

    def _on_mailbox(self) -> None:
        for outcome in self.mailbox.take_outcomes():
            self._on_outcome(outcome)
        if self._done or not self.mailbox.has_progress():
            return
        now = time.monotonic()
        if now < self._next_progress:
            return
        progress = self.mailbox.take_progress()
        current = self._current
        if progress is None or current is None or current.cancelled.is_set():
            return
        task_id, attempt, fraction, text = progress
        if (task_id, attempt) != (current.task_id, current.attempt):
            return
        fraction = min(1.0, max(0.0, fraction)) if fraction == fraction else 0.0
        self._send(
            protocol.new_message(
                "task_progress",
                {
                    "task_id": task_id,
                    "attempt": attempt,
                    "fraction": fraction,
                    "message": _clip_text(text, 1024),
                },
                sender=self._sender,
            )
        )
        self._next_progress = now + self.config.progress_interval_s

    def _on_outcome(self, outcome: _Outcome) -> None:
        key = (outcome.task_id, outcome.attempt)
        held = self._held.get(key)
        if outcome.skipped and (held is None or not held.cancelled.is_set()):
            return  # dropped before it started (it left ``_held`` then), maybe sent again
        current = self._held.pop(key, None)
        if current is None:  # cannot happen: the main thread runs only what it was handed
            logger.error("an outcome for task %s that is not held", outcome.task_id)
            return
        self._cancel_deadline = None
        self.mailbox.take_progress()  # progress of a task that ended is no news
        self._next_progress = time.monotonic()
        if current.cancelled.is_set():
            logger.info("task %s attempt %d stopped after cancel", current.task_id, current.attempt)
        else:
            frame = self._outcome_frame(outcome)
            self._unconfirmed[key] = frame
            if len(self._unconfirmed) > _UNCONFIRMED_KEPT:
                del self._unconfirmed[next(iter(self._unconfirmed))]
            self._send_frame(frame, "task outcome")
        if self._stopping is not None:
            if not self._held:
                code, reason, bye = self._stopping
                self._finish(code, reason, bye=bye, forced=False)
        elif self.config.prefetch == 1:
            self._send(protocol.new_message("task_request", sender=self._sender))

    def _outcome_frame(self, outcome: _Outcome) -> bytes:
        """Encode the ``task_result`` or ``task_error`` of ``outcome``.

        A result the protocol refuses (not JSON-like, too deep, over 1 MiB)
        becomes a ``task_error`` saying why.
        """
        base = {"task_id": outcome.task_id, "attempt": outcome.attempt}
        if outcome.result is not None:
            try:
                return protocol.encode(
                    protocol.new_message(
                        "task_result",
                        {
                            **base,
                            "result": outcome.result,
                            "elapsed_s": max(0.0, outcome.elapsed_s),
                        },
                        sender=self._sender,
                    )
                )
            except protocol.ProtocolError as exc:
                logger.error("task %s returned a result that cannot be sent", outcome.task_id)
                reason = f"the task's result cannot be sent: {exc.reason}"
                trace = ""
        else:
            reason, trace = outcome.reason, outcome.traceback
        return protocol.encode(
            protocol.new_message(
                "task_error",
                {
                    **base,
                    "reason": _clip_text(reason, 4096),
                    "traceback": _tail_text(trace, _TRACEBACK_MAX),
                },
                sender=self._sender,
            )
        )

    # ----------------------------------------------------------------- stopping

    def _cancel_current(self) -> None:
        current = self._current
        if current is None or current.cancelled.is_set():
            return
        current.cancelled.set()
        self._cancel_deadline = time.monotonic() + self.config.cancel_grace_s

    def _drop_prefetched(self, why: str) -> None:
        """Let go of the held attempts that have not started (all but the oldest)."""
        for key in list(self._held)[1:]:
            logger.debug("dropping task %s attempt %d (%s)", *key, why)
            self._held.pop(key).cancelled.set()

    def _begin_stop(self, code: int, reason: str, *, bye: bool) -> None:
        if self._stopping is not None:
            return
        self._stopping = (code, reason, bye)
        self._reconnect_at = None  # a worker that is stopping does not come back
        self._drop_prefetched("stopping")
        if self._current is None:
            self._finish(code, reason, bye=bye, forced=False)
        else:
            self._cancel_current()

    def _task_stuck(self) -> None:
        current = self._current
        code = ExitCode.TASK_STUCK if self._stopping is None else self._stopping[0]
        if code == ExitCode.OK:
            code = ExitCode.TASK_STUCK
        reason = (
            f"task {current.task_id if current else '?'} attempt "
            f"{current.attempt if current else 0} did not stop within "
            f"{self.config.cancel_grace_s:.1f} s"
        )
        logger.error("%s; exiting with code %d", reason, code)
        self._finish(code, reason, bye=True, forced=True)

    def _on_signals(self) -> None:
        try:
            data = os.read(self.signal_fd, 512) if self.signal_fd is not None else b""
        except (BlockingIOError, OSError):
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                logger.info("got %s; stopping", signal.Signals(signum).name)
                self._begin_stop(exit_code_for_signal(signum), "terminated", bye=True)
                return

    def _finish(self, code: int, reason: str, *, bye: bool, forced: bool) -> None:
        """End the link: say bye, close, and either hand ``code`` to the main thread or exit."""
        self.exit_code = int(code)
        if bye and self._socket is not None:
            self._send(protocol.new_message("worker_bye", {"reason": reason}, sender=self._sender))
            self._close_socket(linger_ms=_BYE_LINGER_MS)
        else:
            self._close_socket(linger_ms=0)
        self._done = True
        if forced:
            # The main thread is stuck in task code: nothing short of ending the
            # process stops it. Flush what can be flushed first.
            if self._context is not None:
                self._context.term()
            logging.shutdown()
            os._exit(self.exit_code)
        self.inbox.put(_Stop(self.exit_code))


def _utf8(text: str) -> str:
    """Make ``text`` encodable (a lone surrogate from a file name would not pack)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _clip_text(text: str, limit: int) -> str:
    text = _utf8(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tail_text(text: str, limit: int) -> str:
    text = _utf8(text)
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


# --------------------------------------------------------------------------- the worker


def _split_parameters(parameters: Mapping[str, Any]) -> tuple[dict[str, Any], Path]:
    scratch = parameters.get("scratch_dir")
    if not isinstance(scratch, str) or not scratch:
        raise CistemError(
            "task_assign.parameters.scratch_dir is missing or not a path; the daemon must "
            "send the project's scratch directory with every task",
            code="bad_assignment",
        )
    if "payload" in parameters:
        payload = parameters["payload"]
        if not isinstance(payload, dict):
            raise CistemError("task_assign.parameters.payload must be a map", code="bad_assignment")
    else:
        payload = {key: value for key, value in parameters.items() if key != "scratch_dir"}
    return payload, Path(scratch)


class Worker:
    """A worker process's logic: run :meth:`run` in the main thread.

    Parameters
    ----------
    config
        What the worker was told at start.
    """

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._actions: dict[str, Action] = {}
        self._scratch_made: set[Path] = set()  # scratch directories made (or found) already

    def run(self, *, signal_fd: int | None = None) -> int:
        """Serve the daemon until told to stop, and return the exit code.

        Parameters
        ----------
        signal_fd
            The read end of a :func:`signal.set_wakeup_fd` pipe; SIGTERM,
            SIGINT and SIGHUP bytes read from it stop the worker. The link
            thread watches it, so a signal is acted on even while a kernel
            keeps the main thread busy in C code.

        Returns
        -------
        int
            An :class:`ExitCode` or ``128 + signal``.
        """
        inbox: queue.Queue[_Assignment | _Stop] = queue.Queue()
        mailbox = _Mailbox()
        link = _Link(self.config, inbox, mailbox, signal_fd)
        link.start()
        try:
            while True:
                try:
                    item = inbox.get(timeout=1.0)
                except queue.Empty:
                    if link.is_alive():
                        continue
                    return link.exit_code  # the link died without a word: a bug, logged there
                if isinstance(item, _Stop):
                    return item.code
                if item.cancelled.is_set():  # dropped or cancelled before it started
                    mailbox.post_outcome(
                        _Outcome(item.task_id, item.attempt, 0.0, skipped=True)
                    )
                    continue
                mailbox.post_outcome(self._run_one(item, mailbox))
        finally:
            link.join()
            mailbox.close()

    def _action(self, name: str) -> Action:
        action = self._actions.get(name)
        if action is None:
            action = self._actions[name] = get_action(name)
        return action

    def _run_one(self, assignment: _Assignment, mailbox: _Mailbox) -> _Outcome:
        started = time.perf_counter()
        task_id, attempt = assignment.task_id, assignment.attempt

        def report_progress(fraction: float, message: str = "") -> None:
            mailbox.set_progress(task_id, attempt, float(fraction), str(message))

        is_cancelled: Callable[[], bool] = assignment.cancelled.is_set
        try:
            action = self._action(assignment.action)
            payload, scratch_dir = _split_parameters(assignment.parameters)
            if scratch_dir not in self._scratch_made or not scratch_dir.is_dir():
                scratch_dir.mkdir(parents=True, exist_ok=True)
                self._scratch_made.add(scratch_dir)
            context = TaskContext(
                task_id=task_id,
                attempt=attempt,
                scratch_dir=scratch_dir,
                threads=self.config.threads,
                report_progress=report_progress,
                is_cancelled=is_cancelled,
            )
            logger.debug("running task %s attempt %d (%s)", task_id, attempt, assignment.action)
            result = action.run_task(payload, context)
            if not isinstance(result, dict):
                raise TypeError(
                    f"action {assignment.action!r} returned {type(result).__name__}, not a dict"
                )
        except (Exception, SystemExit) as exc:
            if not is_cancelled():
                logger.warning("task %s attempt %d failed: %r", task_id, attempt, exc)
            return _Outcome(
                task_id=task_id,
                attempt=attempt,
                elapsed_s=time.perf_counter() - started,
                reason=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
            )
        return _Outcome(
            task_id=task_id,
            attempt=attempt,
            elapsed_s=time.perf_counter() - started,
            result=result,
        )
