r"""cistemd, the daemon: owns projects, brokers jobs to workers, outlives every client.

One process, one thread, one poll loop. The daemon holds its projects open
(it is their only writer), keeps one :class:`~cistemd.manager.state.JobTaskState`
per project, and talks ZeroMQ:

==========================  ============  =========================================
endpoint                    socket        who
==========================  ============  =========================================
``run/client.ipc``          ROUTER        clients: ``cistem``, the TUI, scripts
``run/events.ipc``          PUB           the event stream clients subscribe to
``run/workers.ipc``         ROUTER        workers (local)
``tcp://…`` (optional)      ROUTER+CURVE  remote clients / workers (allow-listed keys)
==========================  ============  =========================================

Every frame is checked by :func:`cistemd.protocol.decode` with the direction
of the socket it came in on; a malformed, unknown or misdirected message is
answered with an ``error`` (never an ``error`` itself) and counted, and never
reaches a handler. ``MAXMSGSIZE`` is set on every socket.

Events in, instructions out
---------------------------
Whatever happens -- a client's submit or cancel, a worker's hello, heartbeat,
progress, result or error, a launcher seeing a process end, the passing of
time -- becomes an event for the project's state machine. Its instructions
are carried out in two steps:

1. **persist** (inside the project's ``BEGIN IMMEDIATE`` transaction): task and
   job state changes, committed results (and ``Action.record``), the event
   story; each event's writes sit in a savepoint, so one bad event cannot
   spoil the others;
2. **act** (after the commit): send ``task_assign`` / ``task_cancel`` /
   ``worker_shutdown``, launch workers, ask an action's plan for its next
   stage, reply to clients, publish events.

So nothing is ever acted on -- no assignment sent, no submit acknowledged --
before it is on disk; a job acknowledged to a client is never lost, and an
attempt number is never handed out twice. The loop groups the messages that
are waiting into one transaction per project (group commit), which is what
makes thousands of small tasks per second possible.

Workers and failures
--------------------
Workers are launched per job through the job's run profile
(:mod:`~cistemd.manager.profiles`, :class:`~cistemd.manager.launchers.LocalLauncher`).
Heartbeats go both ways every ``heartbeat_interval_s``; a worker silent for
``liveness`` intervals is dead and its task re-queued; a launcher that sees a
process end reports the exit code or signal and the tail of its log, which
become the evidence of a failed task. When a job ends, its workers are told
to stop, then their process groups get SIGTERM and SIGKILL.

Restart
-------
On start the daemon reopens the projects it held (``projects.json``), rebuilds
each state machine from the job tables, re-attaches the launchers of the
previous daemon, and sends :class:`~cistemd.manager.state.DaemonRestarted`:
what was in flight is re-queued, plans waiting for their next stage are asked
again, workers are launched after a grace period in which survivors of the
previous daemon may say hello again and take their task back. A graceful stop
(SIGTERM, ``cistemd stop``) stops the workers without counting their tasks'
attempts as lost, closes the projects and removes the pid file.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import socket
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import zmq

from cistemd import __version__, protocol
from cistemd.errors import CistemError, InvalidInputError, ProjectError
from cistemd.manager import state as sm
from cistemd.manager.home import CistemHome, DaemonLock
from cistemd.manager.store import JobStore, TaskRow, utc_now, wire_payload

if TYPE_CHECKING:
    from cistemd.actions.base import Action
    from cistemd.manager.keys import ZapAllowList
    from cistemd.manager.launchers import Launcher, WorkerExit
    from cistemd.manager.profiles import RunProfile
    from cistemd.project import Project

__all__ = ["Daemon", "DaemonConfig", "DaemonError", "resolve_profile"]

logger = logging.getLogger(__name__)

_SENDER: Final = "cistemd"
_C2D: Final = protocol.Direction.CLIENT_TO_DAEMON
_W2D: Final = protocol.Direction.WORKER_TO_DAEMON
_EVENT_PAGE: Final = 500
_LEASE_NONE_S: Final = 7 * 24 * 3600.0
_SHUTDOWN_WAIT_S: Final = 4.0
_CLIENT_QUEUE: Final = 64  # messages buffered per client before it must wait
_WORKER_QUEUE: Final = 1000  # per worker: heartbeats, progress and outcomes
_LAUNCHER_SAVE_S: Final = 2.0  # least time between two checks of a remote launcher's handle


class DaemonError(CistemError):
    """A request the daemon cannot carry out; ``code`` is sent to the client."""

    code = "daemon_error"


@dataclasses.dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Settings of one daemon.

    Parameters
    ----------
    heartbeat_interval_s
        Seconds between heartbeats, both ways.
    liveness
        Heartbeat intervals of silence after which a worker is dead (3).
    worker_death_timeout_s
        Workers exit after this long without a word from the daemon.
    lease_s
        Lease of a task assignment, renewed by every message of its worker that
        names it (``None``: no lease).
    max_task_failures
        Lost attempts after which a task is failed (3).
    worker_restarts_allowed
        Replacement launches allowed per wanted worker, per job and daemon lifetime.
    restart_grace_s
        After a restart, seconds to wait for surviving workers to say hello
        before launching new ones; ``None``: ``heartbeat_interval_s * liveness + 1.5``.
    tick_interval_s
        How often liveness and leases are checked.
    launcher_poll_s
        How often launchers are asked which processes ended.
    stop_grace_s
        After a job ended, how long its workers have to exit before SIGTERM.
    kill_grace_s
        After SIGTERM, how long before SIGKILL.
    progress_interval_s
        Least time between two stored progress events of a job or task.
    projects
        Projects to open at start; failing to open one is fatal.
    tcp_workers, tcp_clients
        Optional TCP endpoints (``tcp://HOST:PORT``) for remote workers and
        clients, secured with CURVE and the allow-list in ``keys/authorized``.
    worker_python
        Interpreter for local workers (default: this one).
    max_batch
        Most messages read from one socket before the loop commits and acts
        (small enough that a client's request never waits behind a long
        batch of worker results: one batch is a few ms of work).
    """

    heartbeat_interval_s: float = 1.0
    liveness: int = 3
    worker_death_timeout_s: float = 60.0
    lease_s: float | None = 120.0
    max_task_failures: int = 3
    worker_restarts_allowed: int = 3
    restart_grace_s: float | None = None
    tick_interval_s: float = 0.1
    launcher_poll_s: float = 0.1
    stop_grace_s: float = 1.0
    kill_grace_s: float = 0.5
    progress_interval_s: float = 0.5
    projects: tuple[str, ...] = ()
    tcp_workers: str | None = None
    tcp_clients: str | None = None
    worker_python: str | None = None
    max_batch: int = 32

    def __post_init__(self) -> None:
        for name in (
            "heartbeat_interval_s",
            "worker_death_timeout_s",
            "tick_interval_s",
            "launcher_poll_s",
            "progress_interval_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"DaemonConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.liveness < 1 or self.max_task_failures < 1 or self.max_batch < 1:
            raise ValueError("liveness, max_task_failures and max_batch must be ≥ 1")
        if self.stop_grace_s < 0 or self.kill_grace_s < 0:
            raise ValueError("stop_grace_s and kill_grace_s must be ≥ 0")

    @property
    def effective_restart_grace_s(self) -> float:
        """The restart grace actually used."""
        if self.restart_grace_s is not None:
            return self.restart_grace_s
        return self.heartbeat_interval_s * self.liveness + 1.5


def resolve_profile(name: str, home: CistemHome) -> RunProfile:
    """Return the run profile called ``name``.

    ``""``, ``"local"`` and ``"Default Local"`` are cisTEM's Default Local
    (CPU count + 1 workers); ``"local:N"`` is the same with ``N`` workers; any
    other name is ``$CISTEM_HOME/profiles/NAME.json`` (a
    :meth:`~cistemd.manager.profiles.RunProfile.to_dict` map).

    Parameters
    ----------
    name
        The name given to ``cistem run --profile``.
    home
        Where user profiles live.

    Returns
    -------
    RunProfile

    Raises
    ------
    InvalidInputError
        No such profile, or a malformed one.
    """
    import json

    from cistemd.manager.profiles import (
        DEFAULT_LOCAL_PROFILE_NAME,
        ProfileCommand,
        RunProfile,
        default_local_profile,
    )

    key = name.strip()
    stored_default = (home.root / "profiles" / f"{DEFAULT_LOCAL_PROFILE_NAME}.json").exists()
    if key in ("", "local", "default", DEFAULT_LOCAL_PROFILE_NAME):
        if stored_default:  # edited or imported: the user's Default Local
            key = DEFAULT_LOCAL_PROFILE_NAME
        else:
            return default_local_profile()
    if key.startswith("local:"):
        count = key.split(":", 1)[1]
        if not count.isdigit() or not 1 <= int(count) <= 4096:
            raise InvalidInputError(f"profile {name!r}: 'local:N' needs N in 1..4096")
        return RunProfile(
            name=key, commands=(ProfileCommand(number_of_copies=int(count), delay_ms=0),)
        )
    if "/" in key or key.startswith("."):
        raise InvalidInputError(f"bad profile name {name!r}")
    path = home.root / "profiles" / f"{key}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(
            f"no run profile {name!r}: use 'local', 'local:N' or put {key}.json in "
            f"{home.root / 'profiles'}"
        ) from None
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: not a run profile ({exc})") from None
    profile = RunProfile.from_dict(data)
    return profile


def _command_line(
    action: str, parameters: Mapping[str, Any], profile: str, project: str
) -> list[str]:
    """Return the ``cistem run`` command that submits the same job."""
    argv = ["cistem", "run", action]
    for key, value in parameters.items():
        option = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv += [option, "yes" if value else "no"]
        elif isinstance(value, list | dict):
            import json

            argv += [option, json.dumps(value)]
        else:
            argv += [option, str(value)]
    return [*argv, "--profile", profile or "local", "--project", project]


# --------------------------------------------------------------------------- runtime records


@dataclasses.dataclass(eq=False, slots=True)
class _Job:
    """What the daemon keeps of a job beyond its state machine.

    Kept for live jobs, and for ended ones until their processes are gone.
    """

    job_id: str
    op: _OpenProject
    action_name: str
    parameters: dict[str, Any]
    profile: RunProfile
    scratch_dir: str
    n_tasks: int
    counts: dict[str, int]
    ended: bool = False
    launchers: dict[int, Launcher] = dataclasses.field(default_factory=dict)
    term_at: float | None = None
    kill_at: float | None = None
    progress_dirty: bool = False
    action: Action | None = None


@dataclasses.dataclass(eq=False, slots=True)
class _WorkerConn:
    """A worker as the daemon knows it in this lifetime."""

    worker_id: str
    job: _Job
    identity: bytes | None = None
    hello: bool = False
    launched_here: bool = False
    host: str = ""
    pid: int | None = None
    ended: bool = False
    socket: zmq.Socket[Any] | None = None


@dataclasses.dataclass(eq=False, slots=True)
class _OpenProject:
    path: str
    project: Project
    store: JobStore
    state: sm.JobTaskState
    jobs: dict[str, _Job] = dataclasses.field(default_factory=dict)
    job_ids: set[str] = dataclasses.field(default_factory=set)
    max_job_id: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class _PendingEvent:
    event_id: int
    job_id: str
    kind: str
    payload: dict[str, Any]
    time: str


class _Batch:
    """Transactions opened since the last commit, and what to do after it.

    Actions and events are tagged with the project whose commit they wait
    for; if that commit fails (or an event's effects could not be written),
    they are dropped and the project's state is reloaded from its database.
    """

    __slots__ = ("after", "failed", "open", "published")

    def __init__(self) -> None:
        self.open: dict[int, tuple[_OpenProject, contextlib.AbstractContextManager[Any]]] = {}
        self.after: list[tuple[_OpenProject | None, Callable[[], None]]] = []
        self.published: list[tuple[_OpenProject, _PendingEvent]] = []
        self.failed: set[int] = set()

    def empty(self) -> bool:
        return not self.open and not self.after and not self.published


class _Abort(Exception):
    """Rolls back a batch transaction whose effects could not all be written."""


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """The cistemd daemon of one ``$CISTEM_HOME``; run it with :meth:`serve`.

    Parameters
    ----------
    home
        The home (sockets, logs, keys, known projects).
    config
        Settings; default :class:`DaemonConfig`.
    """

    def __init__(self, home: CistemHome, config: DaemonConfig | None = None) -> None:
        self.home = home
        self.config = DaemonConfig() if config is None else config
        self.stats = protocol.ProtocolStats()
        self.counters: dict[str, int] = {}
        self._lock = DaemonLock(home)
        self._context: zmq.Context[Any] | None = None
        self._client_sockets: list[zmq.Socket[Any]] = []
        self._worker_sockets: list[zmq.Socket[Any]] = []
        self._pub: zmq.Socket[Any] | None = None
        self._zap: ZapAllowList | None = None
        self._poller = zmq.Poller()
        self._projects: dict[str, _OpenProject] = {}
        self._workers: dict[str, _WorkerConn] = {}
        self._identities: dict[tuple[int, bytes], str] = {}
        self._pending_results: dict[str, dict[str, Any]] = {}
        self._task_progress: dict[tuple[str, str], tuple[_OpenProject, sm.PublishProgress]] = {}
        self._batch = _Batch()
        self._last_event_id = 0
        self._job_counter = 0
        self._started = time.monotonic()
        self._stop_reason: str | None = None
        self._shutting_down = False
        self._signal_socks: tuple[socket.socket, socket.socket] | None = None
        # Slow read-only work (image previews) runs on one thread; its replies come
        # back through ``_finished`` and a wake-up socket the loop polls.
        self._background: concurrent.futures.ThreadPoolExecutor | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._finished: collections.deque[Callable[[], None]] = collections.deque()
        self._launcher_saves: dict[tuple[str, str, int], tuple[float, str]] = {}
        self._state_config = sm.StateConfig(
            heartbeat_interval=self.config.heartbeat_interval_s,
            liveness=self.config.liveness,
            max_task_failures=self.config.max_task_failures,
            lease_seconds=self.config.lease_s,
            worker_restarts_allowed=self.config.worker_restarts_allowed,
            restart_grace_seconds=self.config.effective_restart_grace_s,
            strict=False,
        )
        now = time.monotonic()
        self._next_tick = now
        self._next_poll = now
        self._next_heartbeat = now
        self._next_progress = now
        self._client_handlers: dict[str, Callable[[zmq.Socket[Any], bytes, protocol.Message], None]]
        self._client_handlers = {
            "ping": self._on_ping,
            "status_request": self._on_status,
            "project_create": self._on_project_create,
            "project_open": self._on_project_open,
            "project_info": self._on_project_info,
            "job_submit": self._on_job_submit,
            "job_cancel": self._on_job_cancel,
            "job_show": self._on_job_show,
            "jobs_list": self._on_jobs_list,
            "job_log": self._on_job_log,
            "subscribe": self._on_subscribe,
            "assets_import": self._on_assets_import,
            "assets_list": self._on_assets_list,
            "groups_list": self._on_groups_list,
            "groups_edit": self._on_groups_edit,
            "positions_edit": self._on_positions_edit,
            "job_tasks": self._on_job_tasks,
            "job_results": self._on_job_results,
            "actions_list": self._on_results_queries,
            "image_preview": self._on_results_queries,
            "results_query": self._on_results_queries,
            "profiles_list": self._on_profiles,
            "profile_save": self._on_profiles,
            "profile_delete": self._on_profiles,
            "profiles_import": self._on_profiles,
            "profiles_export": self._on_profiles,
        }

    # ================================================================== life cycle

    def serve(self, *, install_signal_handlers: bool = True) -> int:
        """Run until stopped; return the exit status (0 after a graceful stop).

        Parameters
        ----------
        install_signal_handlers
            Handle SIGTERM/SIGINT (stop) and SIGHUP (reload the allow-list);
            only possible in the main thread.

        Returns
        -------
        int
            0 after a graceful stop.

        Raises
        ------
        DaemonRunningError
            Another daemon holds this home's lock (nothing was changed).
        CistemError
            A project of :attr:`DaemonConfig.projects` could not be opened
            (held by another daemon, missing, too new); the daemon stopped.
        """
        self.home.prepare()
        self._lock.acquire()
        try:
            self._context = zmq.Context()
            try:
                self._bind()
                if install_signal_handlers:
                    self._install_signals()
                self.home.write_pid_file()
                self._job_counter = self.home.read_job_counter()
                self._reopen_projects()
                logger.info(
                    "cistemd %s running (pid %d), CISTEM_HOME=%s, clients at %s",
                    __version__,
                    os.getpid(),
                    self.home.root,
                    self.home.client_endpoint,
                )
                self._loop()
            finally:
                self._shutdown()
        finally:
            self._lock.release()
        return 0

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to stop gracefully (safe from a signal handler or thread).

        Parameters
        ----------
        reason
            Logged.
        """
        self._stop_reason = reason

    def _bind(self) -> None:
        assert self._context is not None
        for path in (self.home.client_socket, self.home.events_socket, self.home.workers_socket):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale: we hold the lock, no daemon owns them
        limits = protocol.DEFAULT_LIMITS.transport_max_bytes
        client = self._router(limits, receive_queue=_CLIENT_QUEUE)
        client.bind(self.home.client_endpoint)
        self._client_sockets.append(client)
        worker = self._router(limits)
        worker.setsockopt(zmq.ROUTER_HANDOVER, 1)
        worker.bind(self.home.workers_endpoint)
        self._worker_sockets.append(worker)
        pub = self._context.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, 10_000)
        pub.bind(self.home.events_endpoint)
        self._pub = pub
        if self.config.tcp_clients or self.config.tcp_workers:
            self._bind_curve(limits)
        for sock in (*self._client_sockets, *self._worker_sockets):
            self._poller.register(sock, zmq.POLLIN)

    def _router(self, max_bytes: int, *, receive_queue: int = _WORKER_QUEUE) -> zmq.Socket[Any]:
        """Return a ROUTER socket with the size limits of the protocol.

        ``receive_queue`` bounds the messages ZeroMQ buffers per peer before
        the loop reads them: a peer that floods waits for the daemon instead
        of filling its memory.
        """
        assert self._context is not None
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
        sock.setsockopt(zmq.SNDHWM, _WORKER_QUEUE)
        sock.setsockopt(zmq.RCVHWM, receive_queue)
        return sock

    def _bind_curve(self, max_bytes: int) -> None:
        from cistemd.manager.keys import CURVE_DOMAIN, ZapAllowList, ensure_server_keys

        assert self._context is not None
        keys = ensure_server_keys(self.home.keys_dir)
        self._zap = ZapAllowList(self._context, self.home.authorized_dir)
        self._poller.register(self._zap.socket, zmq.POLLIN)
        for endpoint, sockets in (
            (self.config.tcp_clients, self._client_sockets),
            (self.config.tcp_workers, self._worker_sockets),
        ):
            if not endpoint:
                continue
            queue = _WORKER_QUEUE if sockets is self._worker_sockets else _CLIENT_QUEUE
            sock = self._router(max_bytes, receive_queue=queue)
            if sockets is self._worker_sockets:
                sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret or b"")
            sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
            sock.setsockopt_string(zmq.ZAP_DOMAIN, CURVE_DOMAIN)
            sock.bind(endpoint)
            sockets.append(sock)
            logger.info(
                "listening on %s (CURVE, allow-list %s)", endpoint, self.home.authorized_dir
            )

    def tcp_endpoints(self) -> dict[str, str]:
        """Return the bound TCP endpoints (with the actual ports) by role."""
        found: dict[str, str] = {}
        for role, sockets in (("clients", self._client_sockets), ("workers", self._worker_sockets)):
            for sock in sockets[1:]:
                found[role] = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return found

    def _install_signals(self) -> None:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._signal_socks = (reader, writer)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda number, frame: None)
        self._poller.register(reader.fileno(), zmq.POLLIN)

    def _on_signals(self) -> None:
        assert self._signal_socks is not None
        try:
            data = self._signal_socks[0].recv(64)
        except (BlockingIOError, OSError):
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.request_stop(f"got {signal.Signals(signum).name}")
            elif signum == signal.SIGHUP and self._zap is not None:
                self._zap.reload()

    def _in_background(self, work: Callable[[], Callable[[], None]]) -> None:
        """Run ``work`` on the background thread; the callable it returns runs in the loop.

        ``work`` must not touch the projects (their connections belong to the
        loop's thread) nor the sockets; what it returns (usually "send this
        reply") is called by the loop when it is done.
        """
        if self._background is None:
            self._background = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="cistemd-background"
            )
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            self._wake = (reader, writer)
            self._poller.register(reader.fileno(), zmq.POLLIN)
        wake = self._wake
        finished = self._finished

        def run() -> None:
            try:
                finished.append(work())
            finally:
                assert wake is not None
                with contextlib.suppress(BlockingIOError, OSError):
                    wake[1].send(b"x")

        self._background.submit(run)

    def _on_background_done(self) -> None:
        assert self._wake is not None
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake[0].recv(4096)
        while self._finished:
            done = self._finished.popleft()
            try:
                done()
            except Exception:  # a bug must not take the daemon down
                logger.exception("internal error while finishing background work")
                self._count("internal_errors")

    # ================================================================== the loop

    def _loop(self) -> None:
        while self._stop_reason is None:
            now = time.monotonic()
            timeout = max(0.0, self._next_deadline() - now)
            ready = dict(self._poller.poll(timeout=max(0, int(timeout * 1000) + 1)))
            if self._signal_socks is not None and self._signal_socks[0].fileno() in ready:
                self._on_signals()
            if self._wake is not None and self._wake[0].fileno() in ready:
                self._on_background_done()
            if self._zap is not None and self._zap.socket in ready:
                for _ in range(64):
                    self._zap.handle()
            # Clients first, answered at once: their requests are few and someone
            # waits for each, while worker results can wait for the next commit.
            clients = [sock for sock in self._client_sockets if sock in ready]
            for sock in clients:
                self._drain(sock, self._on_client_frames)
            if clients:
                self._flush()
            for sock in self._worker_sockets:
                if sock in ready:
                    self._drain(sock, self._on_worker_frames)
            self._flush()
            self._timers(time.monotonic())
            self._flush()
        logger.info("stopping: %s", self._stop_reason)

    def _next_deadline(self) -> float:
        return min(self._next_tick, self._next_poll, self._next_heartbeat, self._next_progress)

    def _drain(
        self,
        sock: zmq.Socket[Any],
        handler: Callable[[zmq.Socket[Any], list[bytes]], None],
    ) -> None:
        for _ in range(self.config.max_batch):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                handler(sock, frames)
            except Exception:  # a bug must not take the daemon down
                logger.exception("internal error while handling a message")
                self._count("internal_errors")

    def _timers(self, now: float) -> None:
        if now >= self._next_poll:
            self._next_poll = now + self.config.launcher_poll_s
            self._poll_launchers(now)
        if now >= self._next_tick:
            self._next_tick = now + self.config.tick_interval_s
            for op in list(self._projects.values()):
                self._drive(op, sm.Tick(now))
            self._escalate(now)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat_interval_s
            self._heartbeat_workers()
        if now >= self._next_progress:
            self._next_progress = now + self.config.progress_interval_s
            self._flush_progress()

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # ================================================================== transactions

    def _begin(self, op: _OpenProject) -> None:
        """Make sure ``op``'s write transaction of the current batch is open."""
        if id(op) not in self._batch.open:
            transaction = op.project.transaction()
            transaction.__enter__()
            self._batch.open[id(op)] = (op, transaction)

    def _after(self, action: Callable[[], None], op: _OpenProject | None = None) -> None:
        """Run ``action`` after the commit (only if ``op``'s commit succeeds, when given)."""
        self._batch.after.append((op, action))

    def _flush(self) -> None:
        """Commit the open transactions, then carry out what waited for the commit."""
        rounds = 0
        while not self._batch.empty():
            rounds += 1
            batch, self._batch = self._batch, _Batch()
            failed: list[_OpenProject] = []
            for key, (op, transaction) in batch.open.items():
                if key in batch.failed:
                    transaction.__exit__(_Abort, _Abort(), None)  # rolls back
                    failed.append(op)
                    continue
                try:
                    transaction.__exit__(None, None, None)  # commits
                except Exception:
                    logger.critical("could not commit to %s", op.path, exc_info=True)
                    self._count("commit_failures")
                    with contextlib.suppress(Exception):
                        if op.project.connection.in_transaction:
                            op.project.connection.execute("ROLLBACK")
                    failed.append(op)
            lost = {id(op) for op in failed}
            for op, event in batch.published:
                if id(op) not in lost:
                    self._publish(event)
            for owner, action in batch.after:
                if owner is not None and id(owner) in lost:
                    continue
                try:
                    action()
                except Exception:
                    logger.exception("internal error after a commit")
                    self._count("internal_errors")
            for op in failed:
                logger.error("reloading the job state of %s from its database", op.path)
                self._reload(op)
            if rounds > 10_000:  # pragma: no cover - a loop of plans that never ends
                logger.error("too many follow-up rounds in one flush")
                break

    def _drive(self, op: _OpenProject, event: sm.Event) -> list[sm.Instruction]:
        """Hand one event to a project's state machine; persist now, act after the commit."""
        try:
            instructions = op.state.handle(event)
        except sm.InvalidEvent:
            logger.exception("the state machine refused %r", event)
            self._count("invalid_events")
            return []
        if not instructions:
            return instructions
        self._persist_all(op, instructions)
        self._after(lambda: self._act(op, instructions), op)
        return instructions

    @contextlib.contextmanager
    def _savepoint(self, op: _OpenProject) -> Any:
        """Open a savepoint in the batch transaction; on error roll back this part only."""
        self._begin(op)
        conn = op.project.connection
        published = len(self._batch.published)
        conn.execute("SAVEPOINT cistemd_event")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK TO cistemd_event")
            conn.execute("RELEASE cistemd_event")
            del self._batch.published[published:]
            raise
        conn.execute("RELEASE cistemd_event")

    def _persist_all(self, op: _OpenProject, instructions: Sequence[sm.Instruction]) -> None:
        """Write the effects of one event into the batch transaction.

        No savepoint per event (they would double the statements of the hot
        path): if a write fails, the whole batch of that project is rolled
        back, nothing waiting for it is done, and its state is reloaded.
        """
        try:
            self._begin(op)
            self._persist_many(op, instructions)
        except Exception:
            logger.exception("could not persist the effects of an event in %s", op.path)
            self._count("persist_failures")
            self._batch.failed.add(id(op))

    # ================================================================== persisting

    def _persist_many(self, op: _OpenProject, instructions: Sequence[sm.Instruction]) -> None:
        """Persist the instructions of one event (inside a savepoint).

        A job's end is written last: the state machine announces it before it
        cancels the job's open tasks, and the end records the final task counts.
        """
        ended: list[sm.JobStateChanged] = []
        for instruction in instructions:
            if isinstance(instruction, sm.JobStateChanged) and instruction.new.terminal:
                ended.append(instruction)
            else:
                self._persist(op, instruction)
        for instruction in ended:
            self._persist(op, instruction)

    def _persist(self, op: _OpenProject, ins: sm.Instruction) -> None:
        if isinstance(ins, sm.TaskStateChanged):
            op.store.apply_task_change(ins)
            job = op.jobs.get(ins.job_id)
            if job is not None:
                if ins.old is not None:
                    job.counts[ins.old.value] = job.counts.get(ins.old.value, 0) - 1
                job.counts[ins.new.value] = job.counts.get(ins.new.value, 0) + 1
                job.progress_dirty = True
            if ins.new is sm.TaskState.FAILED or (
                ins.new is sm.TaskState.QUEUED and ins.old is not None and ins.old.in_flight
            ):
                self._emit(op, ins.job_id, "log", self._task_story(ins))
        elif isinstance(ins, sm.JobStateChanged):
            job = op.jobs.get(ins.job_id)
            counts = None if job is None else {k: v for k, v in job.counts.items() if v}
            if ins.new.terminal:  # the story of a job ends with its end
                self._flush_progress(only=(op, ins.job_id))
            op.store.apply_job_change(ins)
            if ins.new.terminal:
                counts = op.store.record_task_counts(int(ins.job_id), counts)
            payload: dict[str, Any] = {
                "state": ins.new.value,
                "old": "" if ins.old is None else ins.old.value,
                "reason": ins.reason[:1000],
            }
            if counts is not None:
                payload["tasks"] = counts
            self._emit(op, ins.job_id, "state", payload)
            if job is not None and ins.new.terminal:
                job.ended = True
        elif isinstance(ins, sm.CommitResult):
            self._commit_result(op, ins)
        elif isinstance(ins, sm.RejectResult):
            self._count(f"results_rejected.{ins.reason.value}")
            self._emit(
                op,
                self._job_of_task(op, ins.task_id),
                "log",
                {
                    "message": f"result of task {ins.task_id} attempt {ins.attempt} from "
                    f"{ins.worker_id} rejected: {ins.reason.value}",
                    "task_id": ins.task_id,
                    "attempt": ins.attempt,
                    "worker_id": ins.worker_id,
                    "rejected": ins.reason.value,
                },
            )
        elif isinstance(ins, sm.WorkerStateChanged):
            if ins.new is sm.WorkerState.DEAD or (
                ins.new is sm.WorkerState.CONNECTED and ins.old is None
            ):
                self._emit(
                    op,
                    ins.job_id,
                    "log",
                    {
                        "message": f"worker {ins.worker_id} {ins.new.value}: {ins.reason}"[:1000],
                        "worker_id": ins.worker_id,
                        "worker_state": ins.new.value,
                    },
                )
        elif isinstance(ins, sm.PublishProgress):
            self._task_progress[(op.path, ins.task_id)] = (op, ins)

    def _job_of_task(self, op: _OpenProject, task_id: str) -> str:
        try:
            return op.state.task(task_id).job_id
        except KeyError:
            return ""

    @staticmethod
    def _task_story(ins: sm.TaskStateChanged) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "message": f"task {ins.task_id}: {ins.new.value} ({ins.reason})"[:1000],
            "task_id": ins.task_id,
            "task_state": ins.new.value,
            "attempt": ins.attempt,
            "failures": ins.failures,
        }
        if ins.evidence:
            last = ins.evidence[-1]
            payload["evidence"] = {
                "attempt": last.attempt,
                "worker_id": last.worker_id,
                "host": last.host,
                "kind": last.kind.value,
                "reason": last.reason[:1000],
                "exit_code": last.exit_code,
                "stderr_tail": last.stderr_tail[-2000:],
                "traceback": last.traceback[-2000:],
            }
        return payload

    def _commit_result(self, op: _OpenProject, ins: sm.CommitResult) -> None:
        content = self._pending_results.pop(ins.result_ref, None)
        if content is None:  # cannot happen: refs come from messages handled just now
            logger.error("no pending result %s for task %s", ins.result_ref, ins.task_id)
            content = {"result": {}, "output_files": [], "elapsed_s": 0.0}
        task_id = int(ins.task_id)
        try:
            op.store.insert_result(
                task_id=task_id,
                job_id=int(ins.job_id),
                attempt=ins.attempt,
                worker_id=ins.worker_id,
                result_ref=ins.result_ref,
                result=content["result"],
                output_files=content.get("output_files", []),
                elapsed_s=float(content.get("elapsed_s", 0.0)),
            )
        except sqlite3.IntegrityError:
            # UNIQUE(TASK_ID): the database refuses a second result; never expected.
            logger.error("task %s already has a recorded result; second one dropped", task_id)
            self._count("duplicate_results_refused")
            return
        job = op.jobs.get(ins.job_id)
        if job is None:
            return
        action = self._action_of(job)
        if action is None or type(action).record is _base_record():
            return
        key = op.store.task_key(task_id) or ins.task_id
        conn = op.project.connection
        conn.execute("SAVEPOINT cistemd_record")
        try:
            action.record(op.project, int(ins.job_id), key, content["result"])
        except Exception as exc:
            conn.execute("ROLLBACK TO cistemd_record")
            logger.exception("recording the result of task %s failed", task_id)
            self._emit(
                op,
                ins.job_id,
                "log",
                {
                    "message": f"recording task {task_id} failed: {exc}"[:1000],
                    "task_id": ins.task_id,
                },
            )
        conn.execute("RELEASE cistemd_record")

    def _action_of(self, job: _Job) -> Action | None:
        if job.action is None:
            from cistemd.actions.base import get_action

            try:
                job.action = get_action(job.action_name)
            except CistemError:
                logger.exception("job %s: action %r is not available", job.job_id, job.action_name)
                return None
        return job.action

    # ================================================================== events

    def _new_event_id(self) -> int:
        self._last_event_id = max(self._last_event_id + 1, time.time_ns() // 1000)
        return self._last_event_id

    def _emit(self, op: _OpenProject, job_id: str, kind: str, payload: dict[str, Any]) -> None:
        """Store an event (in the current transaction) and publish it after the commit."""
        self._begin(op)
        event = _PendingEvent(self._new_event_id(), job_id, kind, payload, utc_now())
        op.store.add_event(
            event.event_id, int(job_id) if job_id.isdigit() else None, kind, payload, event.time
        )
        self._batch.published.append((op, event))

    def _publish(self, event: _PendingEvent) -> None:
        if self._pub is None:
            return
        record = {
            "event_id": event.event_id,
            "job_id": event.job_id,
            "kind": event.kind,
            "payload": event.payload,
            "time": event.time,
        }
        try:
            frame = protocol.encode(_outgoing("event", record))
            self._pub.send(frame, zmq.NOBLOCK)
        except (protocol.ProtocolError, zmq.ZMQError) as exc:
            logger.warning("event %d not published: %s", event.event_id, exc)
            self._count("events_not_published")

    def _flush_progress(self, only: tuple[_OpenProject, str] | None = None) -> None:
        """Store and publish the coalesced progress of tasks and jobs.

        Parameters
        ----------
        only
            ``(project, job_id)``: flush that job's progress only (before its end).
        """
        if only is None:
            pending, self._task_progress = self._task_progress, {}
        else:
            pending = {
                key: item
                for key, item in self._task_progress.items()
                if item[0] is only[0] and item[1].job_id == only[1]
            }
            for key in pending:
                del self._task_progress[key]
        for op, ins in pending.values():
            if op.path not in self._projects:
                continue
            payload: dict[str, Any] = {
                "task_id": ins.task_id,
                "attempt": ins.attempt,
                "worker_id": ins.worker_id,
                "message": ins.message[:1000],
            }
            if ins.fraction is not None:
                payload["fraction"] = float(ins.fraction)
            self._emit(op, ins.job_id, "progress", payload)
        for op in self._projects.values():
            for job in op.jobs.values():
                if only is not None and (op is not only[0] or job.job_id != only[1]):
                    continue
                if job.progress_dirty:
                    job.progress_dirty = False
                    done = sum(job.counts.get(s, 0) for s in ("completed", "failed", "cancelled"))
                    self._emit(
                        op,
                        job.job_id,
                        "progress",
                        {
                            "fraction": done / job.n_tasks if job.n_tasks else 1.0,
                            "done": done,
                            "total": job.n_tasks,
                            "tasks": {k: v for k, v in job.counts.items() if v},
                        },
                    )

    # ================================================================== acting

    def _act(self, op: _OpenProject, instructions: Sequence[sm.Instruction]) -> None:
        now = time.monotonic()
        for ins in instructions:
            if isinstance(ins, sm.AssignTask):
                self._send_assignment(ins, now)
            elif isinstance(ins, sm.CancelTask):
                self._send_worker(
                    ins.worker_id,
                    "task_cancel",
                    {"task_id": ins.task_id, "attempt": ins.attempt, "reason": "cancelled"},
                )
            elif isinstance(ins, sm.StopWorker):
                self._send_worker(ins.worker_id, "worker_shutdown", {"reason": ins.reason[:4000]})
            elif isinstance(ins, sm.LaunchWorkers):
                self._launch(op, ins)
            elif isinstance(ins, sm.PlanNextStage):
                self._plan_next(op, ins)
            elif isinstance(ins, sm.JobStateChanged) and ins.new.terminal:
                job = op.jobs.get(ins.job_id)
                if job is not None and job.term_at is None:
                    job.term_at = now + self.config.stop_grace_s

    def _send_assignment(self, ins: sm.AssignTask, now: float) -> None:
        conn = self._workers.get(ins.worker_id)
        if conn is None or conn.identity is None or conn.socket is None:
            return
        payload = ins.payload
        lease = (
            _LEASE_NONE_S
            if ins.lease_deadline is None
            else min(_LEASE_NONE_S, max(0.001, ins.lease_deadline - now))
        )
        content = {
            "task_id": ins.task_id,
            "attempt": ins.attempt,
            "action": payload["action"],
            "parameters": {"scratch_dir": conn.job.scratch_dir, "payload": payload["parameters"]},
            "lease_s": lease,
        }
        try:
            frame = protocol.encode(_outgoing("task_assign", content))
        except protocol.ProtocolError as exc:
            # The action planned a payload the protocol cannot carry: the task can
            # never run. Fail it now (deterministically) and let the worker ask again.
            logger.error("task %s cannot be sent: %s", ins.task_id, exc.reason)
            op = conn.job.op
            self._drive(
                op,
                sm.TaskError(
                    ins.worker_id,
                    ins.task_id,
                    ins.attempt,
                    f"the task's payload cannot be sent to a worker: {exc.reason}",
                    now,
                ),
            )
            self._drive(op, sm.WorkerReady(ins.worker_id, now))
            return
        try:
            conn.socket.send_multipart([conn.identity, frame], zmq.NOBLOCK)
        except zmq.ZMQError:
            self._count("messages_dropped")

    def _send_worker(self, worker_id: str, msg_type: str, content: Mapping[str, Any]) -> None:
        conn = self._workers.get(worker_id)
        if conn is None or conn.identity is None or conn.socket is None:
            return
        self._send(
            conn.socket, conn.identity, _outgoing(msg_type, content)
        )

    def _send(self, sock: zmq.Socket[Any], identity: bytes, message: protocol.Message) -> None:
        try:
            frame = protocol.encode(message)
        except protocol.ProtocolError as exc:
            logger.error("not sending a %s message: %s", message.msg_type, exc.reason)
            self._count("unsendable_messages")
            if message.msg_type != "error" and message.parent_header is not None:
                self._send(
                    sock,
                    identity,
                    protocol.error_message(
                        "internal",
                        f"the daemon could not encode its {message.msg_type}: {exc.reason}",
                        parent=message.parent_header,
                        sender=_SENDER,
                    ),
                )
            return
        try:
            sock.send_multipart([identity, frame], zmq.NOBLOCK)
        except zmq.ZMQError:
            self._count("messages_dropped")

    def _reply(
        self,
        sock: zmq.Socket[Any],
        identity: bytes,
        request: protocol.Message | protocol.Header | None,
        msg_type: str,
        content: Mapping[str, Any],
        op: _OpenProject | None = None,
    ) -> None:
        """Send a reply after the current batch has been committed (``op``'s, if given)."""
        message = protocol.new_message(msg_type, content, parent=request, sender=_SENDER)
        self._after(lambda: self._send(sock, identity, message), op)

    def _reply_error(
        self,
        sock: zmq.Socket[Any],
        identity: bytes,
        parent: protocol.Message | protocol.Header | None,
        code: str,
        reason: str,
    ) -> None:
        message = protocol.error_message(code, reason, parent=parent, sender=_SENDER)
        self._after(lambda: self._send(sock, identity, message))

    def _heartbeat_workers(self) -> None:
        for conn in self._workers.values():
            if conn.hello and not conn.ended and conn.identity is not None:
                self._send_worker(conn.worker_id, "heartbeat", {})

    # ================================================================== projects

    def _reopen_projects(self) -> None:
        for path in self.config.projects:
            self._open_project(os.path.abspath(path))  # fatal if it fails
        for entry in self.home.known_projects():
            if not entry["open"] or entry["path"] in self._projects:
                continue
            try:
                self._open_project(entry["path"])
            except CistemError as exc:
                logger.warning("not reopening %s: %s", entry["path"], exc)
        self._flush()

    def _open_project(self, path: str, *, create: bool = False, name: str = "") -> _OpenProject:
        """Open (or create) a project, rebuild its jobs and continue them."""
        from cistemd.project import Project

        if not os.path.isabs(path):
            raise InvalidInputError(f"project path must be absolute, got {path!r}")
        key = os.path.abspath(path)
        if create:
            project = Project.create(key, name=name or None)
        else:
            existing = self._projects.get(key)
            if existing is not None:
                return existing
            project = Project.open(key)
        key = str(project.path)
        existing = self._projects.get(key)
        if existing is not None:  # the same project by another spelling of its path
            project.close()
            return existing
        try:
            store = JobStore(project)
            snapshot = store.load_snapshot()
            machine = sm.JobTaskState.from_snapshot(snapshot, self._machine_config(snapshot))
            op = _OpenProject(path=key, project=project, store=store, state=machine)
            op.job_ids = {str(job_id) for job_id in store.job_ids()}
            op.max_job_id = store.max_job_id()
            for record in snapshot.jobs:
                op.jobs[record.job_id] = self._job_runtime(op, int(record.job_id))
            self._last_event_id = max(self._last_event_id, store.max_event_id())
        except Exception:
            project.close()
            raise
        self._projects[key] = op
        self._reattach_launchers(op)
        self._drive(op, sm.DaemonRestarted(time.monotonic()))
        self.home.remember_project(key, open_=True)
        logger.info(
            "opened project %s: %d job(s), %d unfinished", key, len(op.job_ids), len(op.jobs)
        )
        return op

    def _machine_config(self, snapshot: sm.Snapshot) -> sm.StateConfig:
        """Return the state machine's settings; no restart grace when nothing ran."""
        if snapshot.jobs:
            return self._state_config
        return dataclasses.replace(self._state_config, restart_grace_seconds=0.0)

    def _job_runtime(self, op: _OpenProject, job_id: int) -> _Job:
        from cistemd.manager.profiles import RunProfile

        row = op.store.job(job_id)
        assert row is not None
        try:
            profile = RunProfile.from_dict(row["profile"])
        except CistemError:
            logger.exception("job %d: stored profile unreadable; using Default Local", job_id)
            profile = resolve_profile("", self.home)
        return _Job(
            job_id=str(job_id),
            op=op,
            action_name=str(row["action"]),
            parameters=dict(row["parameters"]),
            profile=profile,
            scratch_dir=str(op.project.layout.scratch_dir / f"job_{job_id}"),
            n_tasks=int(row["n_tasks"]),
            counts=op.store.task_counts(job_id),
        )

    def _reattach_launchers(self, op: _OpenProject) -> None:
        from cistemd.manager.launchers import launcher_from_dict

        now = time.monotonic()
        for job_id, index, handle in op.store.open_launchers():
            try:
                launcher = launcher_from_dict(handle)
            except CistemError as exc:
                logger.warning("job %d: cannot re-attach launcher %d: %s", job_id, index, exc)
                continue
            if launcher.endpoint.startswith("tcp://"):
                try:  # its workers come back to the address they were given
                    self._bind_tcp_workers(launcher.endpoint)
                except (CistemError, OSError, zmq.ZMQError) as exc:
                    logger.error(
                        "job %d: cannot listen on %s again: %s", job_id, launcher.endpoint, exc
                    )
            job = op.jobs.get(str(job_id))
            if job is None:  # the job has ended: its leftovers must go
                job = self._job_runtime(op, job_id)
                job.ended = True
                job.term_at = now
                op.jobs[job.job_id] = job
            job.launchers[index] = launcher

    def _reload(self, op: _OpenProject) -> None:
        """Rebuild a project's state from its database after a failed write."""
        if self._projects.get(op.path) is not op:
            return
        logger.warning("reloading the job state of %s from its database", op.path)
        for conn in list(self._workers.values()):
            if conn.job.op is op:
                self._send_worker(conn.worker_id, "worker_shutdown", {"reason": "daemon reload"})
                self._forget_worker(conn)
        snapshot = op.store.load_snapshot()
        op.state = sm.JobTaskState.from_snapshot(snapshot, self._machine_config(snapshot))
        op.job_ids = {str(job_id) for job_id in op.store.job_ids()}
        launchers = {job_id: job.launchers for job_id, job in op.jobs.items()}
        op.jobs = {}
        for record in snapshot.jobs:
            job = self._job_runtime(op, int(record.job_id))
            job.launchers = launchers.pop(record.job_id, {})
            op.jobs[record.job_id] = job
        now = time.monotonic()
        for job_id, kept in launchers.items():
            if kept:
                job = self._job_runtime(op, int(job_id))
                job.launchers, job.ended, job.term_at = kept, True, now
                op.jobs[job_id] = job
        self._drive(op, sm.DaemonRestarted(now))

    def _project_arg(self, path: str) -> _OpenProject:
        """Return the open project at ``path``, opening it if needed."""
        if not os.path.isabs(path):
            raise InvalidInputError(f"project path must be absolute, got {path!r}")
        key = os.path.abspath(path)
        op = self._projects.get(key)
        if op is not None:
            return op
        for candidate in self._projects.values():
            with contextlib.suppress(OSError):
                if os.path.samefile(candidate.path, key):
                    return candidate
        return self._open_project(key)

    def _find_job(self, job_id: str) -> _OpenProject:
        found = [op for op in self._projects.values() if job_id in op.job_ids]
        if not found:
            open_list = ", ".join(self._projects) or "none"
            raise DaemonError(
                f"no job {job_id!r} in the open projects ({open_list}); see `cistem jobs`, or "
                "open its project with `cistem project open PATH`",
                code="no_such_job",
            )
        if len(found) > 1:
            raise DaemonError(
                f"job id {job_id!r} exists in several open projects "
                f"({', '.join(op.path for op in found)}); it is ambiguous",
                code="ambiguous_job",
            )
        return found[0]

    # ================================================================== client messages

    def _on_client_frames(self, sock: zmq.Socket[Any], frames: list[bytes]) -> None:
        try:
            identity, payload = protocol.split_router_frames(frames)
        except protocol.ProtocolError as exc:
            self.stats.record_error(exc)
            if exc.identity:
                self._send(
                    sock, exc.identity, protocol.error_message(exc.code, exc.reason, sender=_SENDER)
                )
            return
        try:
            message = protocol.decode(payload, direction=_C2D, stats=self.stats)
        except protocol.ProtocolError as exc:
            if exc.header is not None and exc.header.msg_type == "error":
                return  # an error is never answered
            self._send(
                sock,
                identity,
                protocol.error_message(exc.code, exc.reason, parent=exc.header, sender=_SENDER),
            )
            return
        handler = self._client_handlers.get(message.msg_type)
        if handler is None:
            self._send(
                sock,
                identity,
                protocol.error_message(
                    "unknown_type",
                    f"the daemon does not serve {message.msg_type!r} requests",
                    parent=message,
                    sender=_SENDER,
                ),
            )
            return
        try:
            handler(sock, identity, message)
        except CistemError as exc:
            self._reply_error(sock, identity, message, _code(exc), str(exc))
        except Exception as exc:
            logger.exception("internal error handling %s", message.msg_type)
            self._count("internal_errors")
            self._reply_error(
                sock,
                identity,
                message,
                "internal",
                f"internal error in cistemd ({type(exc).__name__}: {exc}); see the daemon log "
                f"{self.home.daemon_log}",
            )

    def _on_ping(self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message) -> None:
        self._send(sock, identity, protocol.new_message("pong", {}, parent=msg, sender=_SENDER))

    def status(self) -> dict[str, Any]:
        """Return the ``status_reply`` content (plus details for ``cistemd status``)."""
        jobs: dict[str, int] = {}
        for op in self._projects.values():
            for state_name, n in op.store.conn.execute(
                "SELECT STATE, COUNT(*) FROM CISTEMD_JOBS GROUP BY STATE"
            ):
                jobs[str(state_name)] = jobs.get(str(state_name), 0) + int(n)
        return {
            "pid": os.getpid(),
            "version": __version__,
            "protocol_version": protocol.PROTOCOL_VERSION,
            "uptime_s": max(0.0, time.monotonic() - self._started),
            "projects": list(self._projects),
            "workers": sum(1 for c in self._workers.values() if c.hello and not c.ended),
            "jobs": jobs,
            "protocol_errors": self.stats.errors,
        }

    def _on_status(self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message) -> None:
        self._reply(sock, identity, msg, "status_reply", self.status())

    def _project_reply(
        self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message, op: _OpenProject
    ) -> None:
        summary = op.project.summary()
        counts = {
            key: int(value)
            for key, value in summary.items()
            if isinstance(value, int) and not isinstance(value, bool)
        }
        for state_name, n in op.store.conn.execute(
            "SELECT STATE, COUNT(*) FROM CISTEMD_JOBS GROUP BY STATE"
        ):
            counts[f"jobs_{state_name}"] = int(n)
        self._reply(
            sock,
            identity,
            msg,
            "project_reply",
            {"path": op.path, "name": op.project.name, "counts": counts},
        )

    def _on_project_create(
        self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message
    ) -> None:
        path = msg.content["path"]
        if not os.path.isabs(path):
            raise InvalidInputError(f"project path must be absolute, got {path!r}")
        op = self._open_project(os.path.abspath(path), create=True, name=msg.content["name"])
        self._project_reply(sock, identity, msg, op)

    def _on_project_open(
        self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message
    ) -> None:
        op = self._project_arg(msg.content["path"])
        self._project_reply(sock, identity, msg, op)

    def _on_project_info(
        self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message
    ) -> None:
        op = self._project_arg(msg.content["path"])
        self._project_reply(sock, identity, msg, op)

    def _on_job_submit(self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message) -> None:
        from cistemd.actions.base import get_action

        content = msg.content
        op = self._project_arg(content["project"])
        action = get_action(content["action"])
        parameters = action.validate(content["parameters"])
        profile = resolve_profile(content["profile"], self.home)
        try:
            plan_state, stage = action.start(parameters, project=op.project)
        except CistemError:
            raise
        except Exception as exc:
            logger.exception("action %s failed to plan", action.name)
            raise DaemonError(
                f"action {action.name!r} could not plan its first stage: {exc}", code="plan_failed"
            ) from exc
        job_id = self._allocate_job_id(op)
        job_key = str(job_id)
        n_workers = max(1, profile.total_copies)
        now = time.monotonic()
        job = _Job(
            job_id=job_key,
            op=op,
            action_name=action.name,
            parameters=dict(parameters),
            profile=profile,
            scratch_dir=str(op.project.layout.scratch_dir / f"job_{job_id}"),
            n_tasks=len(stage.tasks),
            counts={},
            action=action,
        )
        try:
            with self._savepoint(op):
                op.store.insert_job(
                    job_id=job_id,
                    action=action.name,
                    parameters=parameters,
                    profile_name=content["profile"] or profile.name,
                    profile=profile.to_dict(),
                    n_workers=n_workers,
                    software_version=f"cistemd {__version__}",
                    command_line=_command_line(
                        action.name, parameters, content["profile"], op.path
                    ),
                    plan_state=plan_state,
                )
                rows = op.store.insert_stage(
                    job_id,
                    0,
                    [TaskRow(t.key, t.payload, t.label) for t in stage.tasks],
                    final=stage.final,
                    label=stage.label,
                    plan_state=plan_state,
                )
                specs = [
                    sm.TaskSpec(str(task_id), wire_payload(action.name, task.payload))
                    for task_id, task in zip(rows.task_ids, stage.tasks, strict=True)
                ]
                op.jobs[job_key] = job
                op.job_ids.add(job_key)
                instructions = op.state.handle(
                    sm.JobSubmitted(job_key, action.name, n_workers, specs, now, final=stage.final)
                )
                self._persist_many(op, instructions)
        except sqlite3.IntegrityError as exc:
            op.jobs.pop(job_key, None)
            op.job_ids.discard(job_key)
            raise InvalidInputError(
                f"action {action.name!r} produced an invalid stage: {exc}"
            ) from None
        except BaseException:
            op.jobs.pop(job_key, None)
            op.job_ids.discard(job_key)
            raise
        logger.info(
            "job %s: %s with %d task(s) on profile %r (%d workers) in %s",
            job_key,
            action.name,
            len(stage.tasks),
            profile.name,
            n_workers,
            op.path,
        )
        self._reply(sock, identity, msg, "job_submitted", {"job_id": job_key}, op)
        self._after(lambda: self._act(op, instructions), op)

    def _allocate_job_id(self, op: _OpenProject) -> int:
        highest = max(
            [self._job_counter, self.home.read_job_counter()]
            + [other.max_job_id for other in self._projects.values()]
        )
        job_id = highest + 1
        self._job_counter = job_id
        op.max_job_id = max(op.max_job_id, job_id)
        self.home.write_job_counter(job_id)
        return job_id

    def _job_record(self, op: _OpenProject, job_id: str) -> dict[str, Any]:
        row = op.store.job(int(job_id))
        if row is None:
            raise DaemonError(f"no job {job_id!r}", code="no_such_job")
        return self._record_from_row(op, row)

    def _record_from_row(self, op: _OpenProject, row: Mapping[str, Any]) -> dict[str, Any]:
        job_id = str(row["job_id"])
        live = op.jobs.get(job_id)
        if live is not None:
            counts = {k: v for k, v in live.counts.items() if v}
        elif row["task_counts"] is not None:
            counts = dict(row["task_counts"])
        else:
            counts = op.store.task_counts(int(job_id))
        total = int(row["n_tasks"])
        done = sum(counts.get(s, 0) for s in ("completed", "failed", "cancelled"))
        state_name = str(row["state"])
        if total:
            progress = min(1.0, done / total)
        else:
            progress = 1.0 if state_name in ("completed", "failed", "cancelled") else 0.0
        return {
            "job_id": job_id,
            "project": op.path,
            "action": str(row["action"]),
            "profile": str(row["profile_name"])[:256],
            "state": state_name,
            "submitted": str(row["submitted_at"]),
            "progress": progress,
            "tasks": counts,
            "parameters": dict(row["parameters"]),
            "message": str(row["reason"])[:4096],
        }

    def _on_job_cancel(self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message) -> None:
        job_id = msg.content["job_id"]
        op = self._find_job(job_id)
        job = op.jobs.get(job_id)
        if job is not None and not job.ended:
            self._drive(op, sm.CancelJob(job_id, time.monotonic(), "cancelled by user"))
        self._after(lambda: self._send_job_reply(sock, identity, msg, op, job_id))

    def _send_job_reply(
        self,
        sock: zmq.Socket[Any],
        identity: bytes,
        msg: protocol.Message,
        op: _OpenProject,
        job_id: str,
    ) -> None:
        try:
            record = self._job_record(op, job_id)
        except CistemError as exc:
            self._send(
                sock,
                identity,
                protocol.error_message(_code(exc), str(exc), parent=msg, sender=_SENDER),
            )
            return
        self._send(
            sock,
            identity,
            protocol.new_message("job_reply", {"job": record}, parent=msg, sender=_SENDER),
        )

    def _on_job_show(self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message) -> None:
        job_id = msg.content["job_id"]
        op = self._find_job(job_id)
        self._reply(sock, identity, msg, "job_reply", {"job": self._job_record(op, job_id)})

    def _on_jobs_list(self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message) -> None:
        content = msg.content
        limit, offset = int(content["limit"]), int(content["offset"])
        projects = (
            [self._project_arg(content["project"])]
            if content["project"]
            else list(self._projects.values())
        )
        collected: list[tuple[int, str, dict[str, Any]]] = []
        total = 0
        for op in projects:
            rows, count = op.store.jobs(states=content["states"], limit=limit + offset, offset=0)
            total += count
            for row in rows:
                collected.append((int(row["job_id"]), op.path, self._record_from_row(op, row)))
        collected.sort(key=lambda item: (item[0], item[1]), reverse=True)
        page = [record for _, _, record in collected[offset : offset + limit]]
        self._reply(sock, identity, msg, "jobs_reply", {"jobs": page, "total": total})

    def _on_job_log(self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message) -> None:
        content = msg.content
        job_id = content["job_id"]
        op = self._find_job(job_id)
        limit = int(content["limit"])
        rows = op.store.events(
            since_event_id=int(content["since_event_id"]), job_id=int(job_id), limit=limit + 1
        )
        events = [_event_record(row) for row in rows[:limit]]
        last = events[-1]["event_id"] if events else int(content["since_event_id"])
        self._reply(
            sock,
            identity,
            msg,
            "job_log_reply",
            {"job_id": job_id, "events": events, "last_event_id": last, "more": len(rows) > limit},
        )

    def _on_subscribe(self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message) -> None:
        content = msg.content
        since = int(content["since_event_id"])
        job_filter = content["job_id"]
        merged: list[dict[str, Any]] = []
        if job_filter:
            op = self._find_job(job_filter)
            merged = op.store.events(
                since_event_id=since, job_id=int(job_filter), limit=_EVENT_PAGE + 1
            )
        else:
            for op in self._projects.values():
                merged += op.store.events(since_event_id=since, limit=_EVENT_PAGE + 1)
            merged.sort(key=lambda row: row["event_id"])
        events = [_event_record(row) for row in merged[:_EVENT_PAGE]]
        last = events[-1]["event_id"] if events else max(since, 0)
        if not events and not job_filter:
            last = max(since, self._last_event_id)
        self._reply(
            sock,
            identity,
            msg,
            "subscribed",
            {
                "pub_endpoint": self.home.events_endpoint,
                "events": events,
                "last_event_id": last,
                "more": len(merged) > _EVENT_PAGE,
            },
        )

    # ------------------------------------------------------------------ assets, groups, results
    # The work is in cistemd.manager.client_ops; writes go into the batch
    # transaction (a savepoint: a refused import leaves nothing behind) and the
    # reply is sent only after the commit.

    def _on_assets_import(
        self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message
    ) -> None:
        from cistemd.manager import client_ops

        content = msg.content
        op = self._project_arg(content["project"])
        with self._savepoint(op):
            reply = client_ops.import_assets(
                op.project, content["kind"], content["paths"], content["options"]
            )
        logger.info("imported %d %s into %s", reply["count"], content["kind"], op.path)
        self._reply(sock, identity, msg, "assets_imported", reply, op)

    def _on_assets_list(
        self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message
    ) -> None:
        from cistemd.manager import client_ops

        content = msg.content
        op = self._project_arg(content["project"])
        reply = client_ops.list_assets(
            op.project,
            content["kind"],
            group_id=int(content["group_id"]),
            limit=int(content["limit"]),
            offset=int(content["offset"]),
        )
        self._reply(sock, identity, msg, "assets_reply", reply)

    def _on_groups_list(
        self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message
    ) -> None:
        from cistemd.manager import client_ops

        content = msg.content
        op = self._project_arg(content["project"])
        reply = client_ops.list_groups(
            op.project,
            content["kind"],
            group_id=int(content["group_id"]),
            offset=int(content["offset"]),
            limit=int(content["limit"]),
        )
        self._reply(sock, identity, msg, "groups_reply", reply)

    def _on_groups_edit(
        self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message
    ) -> None:
        from cistemd.manager import client_ops

        content = msg.content
        op = self._project_arg(content["project"])
        with self._savepoint(op):
            reply = client_ops.edit_groups(
                op.project,
                content["kind"],
                content["operation"],
                group_id=int(content["group_id"]),
                name=content["name"],
                asset_ids=content["asset_ids"],
            )
        self._reply(sock, identity, msg, "groups_reply", reply, op)

    def _on_positions_edit(
        self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message
    ) -> None:
        from cistemd.manager import client_ops

        content = msg.content
        op = self._project_arg(content["project"])
        with self._savepoint(op):
            reply = client_ops.edit_positions(
                op.project,
                content["operation"],
                int(content["image_asset_id"]),
                x_angstroms=content["x"],
                y_angstroms=content["y"],
                position_ids=content["position_ids"],
                radius_angstroms=float(content["radius_angstroms"]),
            )
        self._reply(sock, identity, msg, "positions_reply", reply, op)

    def _on_job_tasks(self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message) -> None:
        from cistemd.manager import client_ops

        content = msg.content
        op = self._find_job(content["job_id"])
        reply = client_ops.job_tasks(
            op.store.conn,
            content["job_id"],
            states=content["states"],
            limit=int(content["limit"]),
            offset=int(content["offset"]),
        )
        self._reply(sock, identity, msg, "job_tasks_reply", reply)

    def _on_job_results(
        self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message
    ) -> None:
        from cistemd.manager import client_ops

        content = msg.content
        op = self._find_job(content["job_id"])
        reply = client_ops.job_results(
            op.store.conn,
            content["job_id"],
            limit=int(content["limit"]),
            offset=int(content["offset"]),
        )
        self._reply(sock, identity, msg, "job_results_reply", reply)

    def _on_results_queries(
        self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message
    ) -> None:
        """Serve ``actions_list``, ``image_preview`` and ``results_query`` (read-only)."""
        from cistemd.manager import client_ops

        content = msg.content
        if msg.msg_type == "actions_list":
            self._reply(sock, identity, msg, "actions_reply", client_ops.list_actions())
            return
        op = self._project_arg(content["project"])
        if msg.msg_type == "image_preview":
            # Find the file here (the project is read in the loop's thread), then
            # read and shrink it in the background: a 4k micrograph takes ~0.2 s.
            filename, how = client_ops.preview_source(
                op.project,
                content["source"],
                asset_id=int(content["asset_id"]),
                path=content["path"],
                which=content["which"],
            )
            which = str(content["which"])
            max_size = int(content["max_size"])

            def draw() -> Callable[[], None]:
                try:
                    picture = client_ops.render_preview(
                        filename, how, which=which, max_size=max_size
                    )
                except CistemError as exc:
                    error = protocol.error_message(_code(exc), str(exc), parent=msg,
                                                   sender=_SENDER)
                    return lambda: self._send(sock, identity, error)
                except Exception as exc:
                    logger.exception("internal error drawing a preview of %s", filename)
                    error = protocol.error_message(
                        "internal", f"internal error in cistemd ({type(exc).__name__}: {exc}) "
                        f"drawing {filename}; see the daemon log {self.home.daemon_log}",
                        parent=msg, sender=_SENDER,
                    )
                    return lambda: self._send(sock, identity, error)
                reply = protocol.new_message("image_reply", picture, parent=msg, sender=_SENDER)
                return lambda: self._send(sock, identity, reply)

            self._in_background(draw)
            return
        reply = client_ops.results_query(
            op.project,
            content["query"],
            content["parameters"],
            limit=int(content["limit"]),
            offset=int(content["offset"]),
        )
        self._reply(sock, identity, msg, "results_reply", reply)

    # ================================================================== worker messages

    def _on_worker_frames(self, sock: zmq.Socket[Any], frames: list[bytes]) -> None:
        try:
            identity, payload = protocol.split_router_frames(frames)
        except protocol.ProtocolError as exc:
            self.stats.record_error(exc)
            if exc.identity:
                self._send(
                    sock, exc.identity, protocol.error_message(exc.code, exc.reason, sender=_SENDER)
                )
            return
        try:
            message = protocol.decode(payload, direction=_W2D, stats=self.stats)
        except protocol.ProtocolError as exc:
            if exc.header is not None and exc.header.msg_type == "error":
                return
            self._send(
                sock,
                identity,
                protocol.error_message(exc.code, exc.reason, parent=exc.header, sender=_SENDER),
            )
            return
        if self._shutting_down:
            return  # a stopping daemon counts nothing against tasks
        kind = message.msg_type
        if kind == "worker_hello":
            self._on_hello(sock, identity, message)
            return
        worker_id = self._identities.get((id(sock), identity))
        conn = self._workers.get(worker_id) if worker_id is not None else None
        if conn is None:
            # Not said hello in this daemon's lifetime (a survivor of a restart):
            # silence makes it reconnect and say hello, naming its task.
            self._count("messages_from_unknown_workers")
            if kind == "error":
                logger.info("error from an unknown worker: %s", message.content)
            return
        op = conn.job.op
        now = time.monotonic()
        content = message.content
        wid = conn.worker_id
        if kind == "heartbeat":
            task_id = content["task_id"] or None
            self._drive(
                op, sm.Heartbeat(wid, now, task_id, int(content["attempt"]) if task_id else 0)
            )
        elif kind == "task_request":
            self._drive(op, sm.WorkerReady(wid, now))
        elif kind == "task_progress":
            self._drive(
                op,
                sm.TaskProgress(
                    wid,
                    content["task_id"],
                    content["attempt"],
                    now,
                    content["fraction"],
                    content["message"],
                ),
            )
        elif kind == "task_result":
            ref = message.msg_id
            self._pending_results[ref] = content
            self._drive(
                op,
                sm.TaskResult(
                    wid,
                    content["task_id"],
                    content["attempt"],
                    ref,
                    now,
                    elapsed_s=float(content["elapsed_s"]),
                ),
            )
            self._pending_results.pop(ref, None)
        elif kind == "task_error":
            self._drive(
                op,
                sm.TaskError(
                    wid,
                    content["task_id"],
                    content["attempt"],
                    content["reason"],
                    now,
                    traceback=content["traceback"],
                ),
            )
        elif kind == "worker_bye":
            self._drive(op, sm.WorkerDied(wid, now, reason=f"said goodbye: {content['reason']}"))
        elif kind == "error":
            logger.info("worker %s reports [%s] %s", wid, content["code"], content["reason"])
            self._count(f"worker_errors.{content['code']}")

    def _on_hello(self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message) -> None:
        content = msg.content
        wid, job_id = content["worker_id"], content["job_id"]
        if content["protocol_version"] != protocol.PROTOCOL_VERSION:
            self._send(
                sock,
                identity,
                protocol.error_message(
                    "version_mismatch",
                    f"worker speaks protocol {content['protocol_version']}, the daemon "
                    f"{protocol.PROTOCOL_VERSION}; run the same cistemd release",
                    parent=msg,
                    sender=_SENDER,
                ),
            )
            return
        ops = [op for op in self._projects.values() if job_id in op.job_ids]
        if len(ops) != 1:
            self._send(
                sock,
                identity,
                protocol.error_message(
                    "no_such_job",
                    f"no job {job_id!r} in this daemon's open projects; this worker is not needed",
                    parent=msg,
                    sender=_SENDER,
                ),
            )
            return
        op = ops[0]
        job = op.jobs.get(job_id)
        welcome = protocol.new_message(
            "worker_welcome",
            {
                "heartbeat_interval_s": self.config.heartbeat_interval_s,
                "liveness": self.config.liveness,
            },
            parent=msg,
            sender=_SENDER,
        )
        if job is None or job.ended:
            self._send(sock, identity, welcome)
            self._send(
                sock,
                identity,
                protocol.new_message(
                    "worker_shutdown", {"reason": f"job {job_id} has ended"}, sender=_SENDER
                ),
            )
            return
        conn = self._workers.get(wid)
        if conn is None:
            conn = _WorkerConn(worker_id=wid, job=job)
            self._workers[wid] = conn
        elif conn.job is not job:
            self._send(
                sock,
                identity,
                protocol.error_message(
                    "bad_hello",
                    f"worker {wid} belongs to job {conn.job.job_id}",
                    parent=msg,
                    sender=_SENDER,
                ),
            )
            return
        if conn.identity is not None and conn.socket is not None:
            self._identities.pop((id(conn.socket), conn.identity), None)
        conn.identity, conn.socket = identity, sock
        self._identities[(id(sock), identity)] = wid
        conn.hello = True
        conn.host, conn.pid = content["host"], int(content["pid"])
        self._begin(op)
        op.store.record_worker_hello(wid, int(job_id), conn.host, conn.pid)
        self._after(lambda: self._send(sock, identity, welcome), op)
        self._drive(
            op,
            sm.WorkerConnected(
                wid, job_id, conn.host, time.monotonic(), prefetch=int(content["prefetch"])
            ),
        )

    def _forget_worker(self, conn: _WorkerConn) -> None:
        if conn.identity is not None and conn.socket is not None:
            self._identities.pop((id(conn.socket), conn.identity), None)
        self._workers.pop(conn.worker_id, None)

    # ================================================================== plans

    def _plan_next(self, op: _OpenProject, ins: sm.PlanNextStage) -> None:
        job = op.jobs.get(ins.job_id)
        if job is None or job.ended:
            return
        now = time.monotonic()
        action = self._action_of(job)
        row = op.store.job(int(ins.job_id))
        if row is None:
            return
        n_stages = int(row["n_stages"])
        if action is None:
            self._drive(
                op,
                sm.PlanFinished(ins.job_id, now, error=f"action {job.action_name!r} unavailable"),
            )
            return
        results = op.store.stage_results(int(ins.job_id), ins.stage_index)
        try:
            plan_state, stage = action.advance(
                job.parameters, row["plan_state"], results, project=op.project
            )
        except Exception as exc:
            logger.exception("job %s: the plan of %s failed", ins.job_id, job.action_name)
            self._drive(op, sm.PlanFinished(ins.job_id, now, error=f"{type(exc).__name__}: {exc}"))
            return
        if stage is None:
            with self._savepoint(op):
                op.store.set_plan_finished(int(ins.job_id), plan_state)
            self._drive(op, sm.PlanFinished(ins.job_id, now))
            return
        try:
            with self._savepoint(op):
                rows = op.store.insert_stage(
                    int(ins.job_id),
                    n_stages,
                    [TaskRow(t.key, t.payload, t.label) for t in stage.tasks],
                    final=stage.final,
                    label=stage.label,
                    plan_state=plan_state,
                )
                specs = [
                    sm.TaskSpec(str(task_id), wire_payload(job.action_name, task.payload))
                    for task_id, task in zip(rows.task_ids, stage.tasks, strict=True)
                ]
                job.n_tasks += len(specs)
                instructions = op.state.handle(
                    sm.StageAdded(ins.job_id, n_stages, specs, now, final=stage.final)
                )
                self._persist_many(op, instructions)
        except (sqlite3.IntegrityError, ProjectError) as exc:
            logger.error("job %s: the plan produced a bad stage: %s", ins.job_id, exc)
            self._drive(op, sm.PlanFinished(ins.job_id, now, error=f"bad stage: {exc}"))
            return
        self._after(lambda: self._act(op, instructions), op)

    # ================================================================== launching

    def _launch(self, op: _OpenProject, ins: sm.LaunchWorkers) -> None:
        from cistemd.manager.launchers import create_launcher, worker_command

        job = op.jobs.get(ins.job_id)
        if job is None or job.ended or self._shutting_down:
            return
        profile = job.profile
        endpoint = self.home.workers_endpoint
        credentials: str | None = None
        if profile.remote:
            try:
                endpoint, credentials = self._remote_worker_access(job)
            except (CistemError, OSError, zmq.ZMQError) as exc:
                logger.error("job %s: no TCP endpoint for remote workers: %s", job.job_id, exc)
                self._drive(
                    op,
                    sm.LaunchFailed(
                        job.job_id, ins.n, f"no endpoint for remote workers: {exc}",
                        time.monotonic(),
                    ),
                )  # fmt: skip
                return
        yielded = 0
        for command, copies in profile.launch_plan(ins.n):
            index = profile.commands.index(command)
            launcher = job.launchers.get(index)
            if launcher is None:
                launcher = create_launcher(
                    profile,
                    command,
                    log_dir=self.home.logs_dir / "workers" / f"job-{job.job_id}",
                    grace_seconds=self.config.kill_grace_s,
                    tag=f"job{job.job_id}-c{index}",
                    endpoint=endpoint if profile.remote else "",
                )
                job.launchers[index] = launcher
                if credentials is not None:
                    launcher.deliver_credentials(credentials)
            worker_credentials = (
                None if credentials is None else launcher.worker_credentials_path(credentials)
            )
            commands = []
            new_ids = []
            for _ in range(copies):
                worker_id = f"w{job.job_id}-{secrets.token_hex(4)}"
                new_ids.append(worker_id)
                commands.append(
                    worker_command(
                        endpoint=endpoint,
                        job_id=job.job_id,
                        worker_id=worker_id,
                        threads=command.threads_per_copy,
                        heartbeat_interval_s=self.config.heartbeat_interval_s,
                        death_timeout_s=self.config.worker_death_timeout_s,
                        credentials_file=worker_credentials,
                        python=profile.worker_python or self.config.worker_python,
                    )
                )
            for worker_id in new_ids:
                self._workers[worker_id] = _WorkerConn(
                    worker_id=worker_id, job=job, launched_here=True
                )
            try:
                launcher.launch(commands)
            except Exception as exc:
                logger.exception("job %s: launching %d worker(s) failed", job.job_id, copies)
                for worker_id in new_ids:
                    self._workers.pop(worker_id, None)
                self._drive(
                    op,
                    sm.LaunchFailed(job.job_id, copies, f"launch failed: {exc}", time.monotonic()),
                )
                continue
            yielded += command.overridden_total_copies if command.override_total_copies else copies
            with self._savepoint(op):
                for worker_id in new_ids:
                    op.store.record_worker_launch(worker_id, int(job.job_id), socket.gethostname())
                op.store.save_launcher(int(job.job_id), index, launcher.to_dict())
            logger.info("job %s: launched %d worker(s) (%s)", job.job_id, copies, ins.reason)
        if yielded < ins.n:
            self._drive(
                op,
                sm.LaunchFailed(
                    job.job_id,
                    ins.n - yielded,
                    f"run profile {profile.name!r} yields {profile.total_copies} worker(s)",
                    time.monotonic(),
                ),
            )

    def _poll_launchers(self, now: float) -> None:
        for op in list(self._projects.values()):
            for job in list(op.jobs.values()):
                for index, launcher in list(job.launchers.items()):
                    try:
                        exits = launcher.poll()
                    except Exception:
                        logger.exception("job %s: polling launcher %d failed", job.job_id, index)
                        continue
                    if not exits:
                        if launcher.kind != "local":
                            self._save_if_changed(op, job, index, launcher, now)
                        continue
                    for item in exits:
                        self._on_worker_exit(op, job, item, now)
                    alive = launcher.is_alive()
                    with self._savepoint(op):
                        op.store.save_launcher(
                            int(job.job_id), index, launcher.to_dict(), done=not alive
                        )
                if job.ended and not any(
                    launcher.is_alive() for launcher in job.launchers.values()
                ):
                    self._retire_job(op, job)

    def _save_if_changed(
        self, op: _OpenProject, job: _Job, index: int, launcher: Launcher, now: float
    ) -> None:
        """Store a remote launcher's handle again when it learnt something (at most every 2 s).

        SSH pids and scheduler job states arrive after the launch; a daemon killed
        in between must still find them, to re-attach and to cancel.
        """
        import json

        key = (op.path, job.job_id, index)
        last = self._launcher_saves.get(key)
        if last is not None and now - last[0] < _LAUNCHER_SAVE_S:
            return
        record = launcher.to_dict()
        text = json.dumps(record, sort_keys=True)
        if last is None or text != last[1]:
            with self._savepoint(op):
                op.store.save_launcher(int(job.job_id), index, record)
        self._launcher_saves[key] = (now, text)

    def _retire_job(self, op: _OpenProject, job: _Job) -> None:
        """Drop the runtime record of a job that has ended and has no process left."""
        if job.launchers:
            with self._savepoint(op):
                for index, launcher in job.launchers.items():
                    op.store.save_launcher(int(job.job_id), index, launcher.to_dict(), done=True)
        op.jobs.pop(job.job_id, None)
        for conn in list(self._workers.values()):
            if conn.job is job:
                self._forget_worker(conn)
        self._drop_job_credentials(job.job_id)
        for key in [k for k in self._launcher_saves if k[:2] == (op.path, job.job_id)]:
            del self._launcher_saves[key]

    def _on_worker_exit(self, op: _OpenProject, job: _Job, item: WorkerExit, now: float) -> None:
        code = (
            item.exit_code
            if item.exit_code is not None
            else (-item.signal if item.signal is not None else None)
        )
        description = item.description
        # What the worker sent before it died is read first: a prefetching worker's
        # last result must not be taken for its running attempt's loss.
        for sock in self._worker_sockets:
            if sock.poll(0):
                self._drain(sock, self._on_worker_frames)
        with self._savepoint(op):
            op.store.record_worker_end(item.worker_id, "exited", exit_code=code, reason=description)
        conn = self._workers.get(item.worker_id)
        logger.info("job %s: worker %s %s", job.job_id, item.worker_id, description)
        if conn is None:
            return
        conn.ended = True
        if conn.identity is not None and conn.socket is not None:
            self._identities.pop((id(conn.socket), conn.identity), None)
        if conn.hello:
            self._drive(
                op,
                sm.WorkerDied(
                    conn.worker_id,
                    now,
                    reason=description,
                    exit_code=code,
                    stderr_tail=item.stderr_tail[-2000:],
                ),
            )
        elif conn.launched_here and not job.ended:
            tail = item.stderr_tail.strip().splitlines()[-3:]
            self._drive(
                op,
                sm.LaunchFailed(
                    job.job_id,
                    1,
                    f"worker {conn.worker_id} {description} before saying hello"
                    + (f": {' | '.join(tail)}" if tail else ""),
                    now,
                ),
            )
        self._workers.pop(conn.worker_id, None)

    def _escalate(self, now: float) -> None:
        """SIGTERM, then SIGKILL, the process groups of jobs that have ended."""
        for op in self._projects.values():
            for job in op.jobs.values():
                if not job.ended:
                    continue
                if job.term_at is not None and now >= job.term_at:
                    job.term_at = None
                    if any(launcher.is_alive() for launcher in job.launchers.values()):
                        logger.info("job %s ended; terminating its remaining workers", job.job_id)
                        for launcher in job.launchers.values():
                            launcher.signal(signal.SIGTERM)
                        job.kill_at = now + self.config.kill_grace_s
                if job.kill_at is not None and now >= job.kill_at:
                    job.kill_at = None
                    for launcher in job.launchers.values():
                        if launcher.is_alive():
                            launcher.signal(signal.SIGKILL)

    # ================================================================== shutdown

    def _shutdown(self) -> None:
        self._shutting_down = True
        try:
            self._flush()
        except Exception:
            logger.exception("flushing at shutdown")
        try:
            self._stop_all_workers()
        except Exception:
            logger.exception("stopping the workers at shutdown")
        for op in list(self._projects.values()):
            try:
                self._flush_progress()
                self._flush()
            except Exception:
                logger.exception("final flush")
            with contextlib.suppress(Exception):
                op.project.close()
        self._projects.clear()
        if self._zap is not None:
            self._zap.close()
        for sock in (*self._client_sockets, *self._worker_sockets, self._pub):
            if sock is not None:
                sock.close(linger=0)
        if self._background is not None:
            self._background.shutdown(wait=True, cancel_futures=True)
            self._background = None
        if self._wake is not None:
            for item in self._wake:
                item.close()
            self._wake = None
        if self._signal_socks is not None:
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(-1)
            for item in self._signal_socks:
                item.close()
            self._signal_socks = None
        if self._context is not None:
            self._context.term()
            self._context = None
        for path in (self.home.client_socket, self.home.events_socket, self.home.workers_socket):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.home.remove_pid_file()
        logger.info("cistemd stopped")

    def _stop_all_workers(self) -> None:
        for conn in list(self._workers.values()):
            if conn.hello and not conn.ended:
                self._send_worker(
                    conn.worker_id, "worker_shutdown", {"reason": "the daemon is stopping"}
                )
        launchers = [
            (op, job, index, launcher)
            for op in self._projects.values()
            for job in op.jobs.values()
            for index, launcher in job.launchers.items()
        ]
        started = time.monotonic()
        signalled = False
        while any(launcher.is_alive() for *_, launcher in launchers):
            now = time.monotonic()
            if now >= started + _SHUTDOWN_WAIT_S:
                for *_, launcher in launchers:
                    launcher.kill()
                break
            if not signalled and now >= started + self.config.stop_grace_s:
                for *_, launcher in launchers:
                    launcher.signal(signal.SIGTERM)
                signalled = True
            for sock in self._worker_sockets:  # read (and ignore) byes so sockets do not fill
                with contextlib.suppress(zmq.ZMQError):
                    while sock.poll(0):
                        sock.recv_multipart(zmq.NOBLOCK)
            time.sleep(0.02)
        for op, job, index, launcher in launchers:
            for item in launcher.poll():
                code = (
                    item.exit_code
                    if item.exit_code is not None
                    else (-item.signal if item.signal is not None else None)
                )
                with contextlib.suppress(Exception), op.project.transaction():
                    op.store.record_worker_end(
                        item.worker_id, "exited", exit_code=code, reason=item.description
                    )
            with contextlib.suppress(Exception), op.project.transaction():
                op.store.save_launcher(
                    int(job.job_id), index, launcher.to_dict(), done=not launcher.is_alive()
                )


    # ================================================================== remote workers

    def _ensure_zap(self) -> None:
        """Start answering CURVE authentication requests (before any CURVE socket binds)."""
        if self._zap is None:
            from cistemd.manager.keys import ZapAllowList

            assert self._context is not None
            self._zap = ZapAllowList(self._context, self.home.authorized_dir)
            self._poller.register(self._zap.socket, zmq.POLLIN)

    def _bind_tcp_workers(self, endpoint: str) -> str:
        """Listen for CURVE workers at ``endpoint`` (``tcp://ADDR:PORT``, port ``*`` = any).

        Returns the bound endpoint; binding the same address again returns the
        socket already there. A port picked for an address is remembered in
        ``$CISTEM_HOME/tcp_workers.json`` and used again by the next daemon,
        so workers that outlive a daemon find its successor.
        """
        import json

        from cistemd.manager.keys import CURVE_DOMAIN, ensure_server_keys

        address, _, port = endpoint[len("tcp://") :].rpartition(":")
        for sock in self._worker_sockets[1:]:
            bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            bound_address, _, bound_port = bound[len("tcp://") :].rpartition(":")
            if bound_address == address and port in ("*", "0", bound_port):
                return bound
        remembered_file = self.home.root / "tcp_workers.json"
        try:
            remembered = json.loads(remembered_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            remembered = {}
        if not isinstance(remembered, dict):
            remembered = {}
        candidates = [port] if port not in ("*", "0") else []
        if not candidates:
            if isinstance(remembered.get(address), int):
                candidates.append(str(remembered[address]))
            candidates.append("*")
        self._ensure_zap()
        keys = ensure_server_keys(self.home.keys_dir)
        sock = self._router(protocol.DEFAULT_LIMITS.transport_max_bytes)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret or b"")
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        sock.setsockopt_string(zmq.ZAP_DOMAIN, CURVE_DOMAIN)
        error: zmq.ZMQError | None = None
        for candidate in candidates:
            try:
                sock.bind(f"tcp://{address}:{candidate}")
                error = None
                break
            except zmq.ZMQError as exc:
                error = exc
        if error is not None:
            sock.close(linger=0)
            raise error
        bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._worker_sockets.append(sock)
        self._poller.register(sock, zmq.POLLIN)
        remembered[address] = int(bound.rpartition(":")[2])
        with contextlib.suppress(OSError):
            from cistemd.manager.home import _atomic_write_text

            _atomic_write_text(remembered_file, json.dumps(remembered) + "\n")
        logger.info("listening for remote workers on %s (CURVE)", bound)
        return bound

    def _remote_worker_access(self, job: _Job) -> tuple[str, str]:
        """Return the TCP endpoint and the 0600 credentials file for ``job``'s remote workers.

        The job gets its own CURVE key pair: its public key joins the
        allow-list (``keys/authorized/job-N.key``) for the job's life, the
        pair and the daemon's public key go into ``credentials/job-N.json``
        (0600), which the launchers hand to the workers (shared filesystem, or
        through the SSH channel) -- never on a command line.
        """
        from cistemd.manager.home import check_private_dir
        from cistemd.manager.keys import (
            authorize_public_key,
            ensure_server_keys,
            generate_keypair,
            read_credentials_file,
            write_credentials_file,
        )
        from cistemd.manager.launchers import resolve_worker_address

        profile = job.profile
        probe = next((command.host for command in profile.commands if command.host), "")
        address, port = resolve_worker_address(profile.gui_address, probe)
        endpoint = self._bind_tcp_workers(f"tcp://{address}:{port or '*'}")
        directory = self.home.root / "credentials"
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
        check_private_dir(directory)
        path = directory / f"job-{job.job_id}.json"
        if path.exists():
            existing = read_credentials_file(path)
            if existing["endpoint"] == endpoint:
                return endpoint, str(path)
            path.unlink()
        server = ensure_server_keys(self.home.keys_dir)
        keys = generate_keypair()
        key_file = self.home.authorized_dir / f"job-{job.job_id}.key"
        key_file.unlink(missing_ok=True)
        authorize_public_key(self.home.authorized_dir, f"job-{job.job_id}", keys.public)
        write_credentials_file(path, server_public=server.public, client=keys, endpoint=endpoint)
        if self._zap is not None:
            self._zap.reload()
        return endpoint, str(path)

    def _drop_job_credentials(self, job_id: str) -> None:
        """Take an ended job's key out of the allow-list and delete its credentials file."""
        key_file = self.home.authorized_dir / f"job-{job_id}.key"
        credentials = self.home.root / "credentials" / f"job-{job_id}.json"
        if not key_file.exists() and not credentials.exists():
            return
        key_file.unlink(missing_ok=True)
        credentials.unlink(missing_ok=True)
        if self._zap is not None:
            self._zap.reload()

    # ================================================================== run profiles

    def _on_profiles(self, sock: zmq.Socket[Any], identity: bytes, msg: protocol.Message) -> None:
        """Serve ``profiles_list|profile_save|profile_delete|profiles_import|profiles_export``."""
        from cistemd.manager.profile_store import ProfileStore
        from cistemd.manager.profiles import RunProfile

        store = ProfileStore(self.home.root / "profiles")
        content = msg.content
        names: list[str] = []
        if msg.msg_type == "profiles_export":
            text = store.export_text(content["names"] or None)
            self._reply(sock, identity, msg, "profiles_text", {"text": text})
            return
        if msg.msg_type == "profile_save":
            profile = RunProfile.from_dict(content["profile"])
            store.save(profile)
            names = [profile.name]
        elif msg.msg_type == "profile_delete":
            store.delete(content["name"])
        elif msg.msg_type == "profiles_import":
            names = store.import_text(content["text"])
        profiles = [profile.to_dict() for profile in store.all()]
        self._reply(
            sock, identity, msg, "profiles_reply", {"profiles": profiles, "names": names}
        )

def _outgoing(msg_type: str, content: Mapping[str, Any]) -> protocol.Message:
    """Build a message for :func:`protocol.encode`, which checks it.

    :func:`protocol.new_message` would check the content too: on the hot path
    (assignments, heartbeats, events) once is enough.
    """
    header = protocol.Header(
        msg_id=uuid.uuid4().hex,
        msg_type=msg_type,
        version=protocol.PROTOCOL_VERSION,
        date=utc_now(),
        sender=_SENDER,
    )
    return protocol.Message(header=header, parent_header=None, content=dict(content))


def _code(exc: CistemError) -> str:
    code = str(getattr(exc, "code", "") or "daemon_error")
    valid = code.replace("_", "a").isalnum() and code[:1].isalpha() and code.islower()
    return code if valid else "daemon_error"


def _event_record(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "event_id": int(row["event_id"]),
        "job_id": "" if row["job_id"] is None else str(row["job_id"]),
        "kind": str(row["kind"]),
        "payload": dict(row["payload"]),
        "time": str(row["time"]),
    }


def _base_record() -> Any:
    from cistemd.actions.base import Action

    return Action.record


def run_daemon(home: CistemHome, config: DaemonConfig | None = None) -> int:
    """Run a daemon in this process until it is stopped (``cistemd serve``).

    Parameters
    ----------
    home
        The home.
    config
        Settings.

    Returns
    -------
    int
        The exit status.
    """
    return Daemon(home, config).serve()


if __name__ == "__main__":  # pragma: no cover - use `cistemd serve`
    sys.exit(run_daemon(CistemHome.from_env()))
