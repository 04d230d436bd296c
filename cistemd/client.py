"""A small synchronous client of cistemd, for scripts, the ``cistem`` command and the TUI.

::

    from cistemd.client import Client

    with Client() as daemon:                       # $CISTEM_HOME/run/client.ipc
        daemon.create_project("/data/apoferritin")
        job_id = daemon.submit("/data/apoferritin", "selftest", {"tasks": 20}, profile="local:2")
        job = daemon.wait_for_job(job_id, timeout=60)
        print(job["state"], job["tasks"])

Every operation of the protocol is a method; each sends one request and waits
for its reply (``timeout`` seconds, default 10). A daemon that is not running
gives :class:`DaemonNotRunning` at once, with the command that starts one; an
``error`` reply raises :class:`DaemonRequestError` with the daemon's stable
``code`` and reason. :meth:`Client.subscribe` follows the event stream: it
replays the stored history, then yields live events, without gaps or repeats.

A :class:`Client` is not thread-safe: give each thread its own.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from cistemd.errors import CistemError

if TYPE_CHECKING:
    import zmq

    from cistemd import protocol
    from cistemd.manager.home import CistemHome

__all__ = [
    "TERMINAL_STATES",
    "Client",
    "ClientError",
    "DaemonNotRunning",
    "DaemonRequestError",
    "DaemonTimeout",
    "Subscription",
    "find_project",
]

TERMINAL_STATES: Final = frozenset({"completed", "failed", "cancelled"})
"""Job states that never change again."""

_DEFAULT_TIMEOUT_S: Final = 10.0
_IMPORT_BATCH: Final = 500  # paths per assets_import request (the protocol's limit)


class ClientError(CistemError):
    """Base class of the client's errors."""

    code = "client_error"


class DaemonNotRunning(ClientError):
    """No daemon runs for this ``$CISTEM_HOME`` (or it does not answer)."""

    code = "daemon_not_running"


class DaemonTimeout(ClientError):
    """The daemon runs but did not answer in time."""

    code = "daemon_timeout"


class DaemonRequestError(ClientError):
    """The daemon answered with an ``error``.

    Parameters
    ----------
    code
        The daemon's stable error code (``no_such_job``, ``invalid_input`` ...).
    reason
        Its reason, in words a user can act on.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason, code=code)
        self.reason = reason


def find_project(start: str | os.PathLike[str] | None = None) -> str | None:
    """Return the project directory that holds ``start`` (default: the current directory).

    A directory is a project when it holds ``<its name>.db``, or exactly one
    ``*.db`` file next to an ``Assets`` directory. The search goes up from
    ``start`` to the filesystem root.

    Parameters
    ----------
    start
        Where to start.

    Returns
    -------
    str or None
        The absolute project directory, or None when ``start`` is in no project.
    """
    from pathlib import Path

    here = Path(os.path.abspath(os.fspath(start) if start is not None else os.getcwd()))
    for directory in (here, *here.parents):
        if (directory / f"{directory.name}.db").is_file():
            return str(directory)
        if (directory / "Assets").is_dir():
            databases = [p for p in directory.glob("*.db") if p.is_file()]
            if len(databases) == 1:
                return str(directory)
    return None


def _not_running(home: CistemHome) -> DaemonNotRunning:
    return DaemonNotRunning(
        f"no cistemd running for CISTEM_HOME={home.root}; start it with `cistemd start`"
    )


class Client:
    """A connection to the daemon of one ``$CISTEM_HOME``.

    Parameters
    ----------
    home
        The home (a :class:`~cistemd.manager.home.CistemHome` or a path);
        default ``$CISTEM_HOME`` or ``~/.cistem``.
    endpoint
        Connect here instead of the home's ``client.ipc`` (e.g. ``tcp://host:port``).
    timeout
        Default seconds to wait for a reply.
    server_public_key, public_key, secret_key
        CURVE keys (Z85) for a ``tcp://`` endpoint of a secured daemon.

    Raises
    ------
    DaemonNotRunning
        No daemon runs for the home (ipc endpoints only; checked at once).
    """

    def __init__(
        self,
        home: CistemHome | str | os.PathLike[str] | None = None,
        *,
        endpoint: str | None = None,
        timeout: float = _DEFAULT_TIMEOUT_S,
        server_public_key: bytes | None = None,
        public_key: bytes | None = None,
        secret_key: bytes | None = None,
    ) -> None:
        import zmq

        from cistemd import protocol
        from cistemd.manager.home import CistemHome

        if home is None:
            self.home = CistemHome.from_env()
        elif isinstance(home, CistemHome):
            self.home = home
        else:
            self.home = CistemHome.at(home)
        self.timeout = float(timeout)
        self.endpoint = endpoint or self.home.client_endpoint
        if endpoint is None and (
            not self.home.client_socket.exists() or self.home.running_pid() is None
        ):
            raise _not_running(self.home)
        self._protocol = protocol
        self._zmq = zmq
        self._curve = (server_public_key, public_key, secret_key)
        self._context: zmq.Context[Any] | None = zmq.Context()
        self._socket: zmq.Socket[Any] | None = None
        self._connect()

    def _connect(self) -> None:
        zmq = self._zmq
        assert self._context is not None
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self._protocol.DEFAULT_LIMITS.transport_max_bytes)
        server, public, secret = self._curve
        if server is not None:
            sock.curve_serverkey = server
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        sock.connect(self.endpoint)
        self._socket = sock

    # -- life cycle --------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._context is not None:
            self._context.term()
            self._context = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- requests ----------------------------------------------------------------------------------

    def request(
        self,
        msg_type: str,
        content: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> protocol.Message:
        """Send one request and return the daemon's reply.

        Parameters
        ----------
        msg_type
            A client-to-daemon message type.
        content
            Its fields.
        timeout
            Seconds to wait (default: the client's).

        Returns
        -------
        protocol.Message
            The reply (never an ``error``).

        Raises
        ------
        DaemonRequestError
            The daemon answered with an error.
        DaemonTimeout, DaemonNotRunning
            No answer in time (the second if no daemon process is left).
        """
        protocol, zmq = self._protocol, self._zmq
        if self._socket is None:
            raise ClientError("the client is closed")
        message = protocol.new_message(msg_type, content, sender=f"client:{os.getpid()}")
        self._socket.send(protocol.encode(message))
        wait = self.timeout if timeout is None else float(timeout)
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._socket.poll(max(1, int(remaining * 1000)), zmq.POLLIN):
                break
            frames = self._socket.recv_multipart()
            if len(frames) != 1:
                continue
            try:
                reply = protocol.decode(frames[0], direction=protocol.Direction.DAEMON_TO_CLIENT)
            except protocol.ProtocolError:
                continue
            if reply.parent_header is None or reply.parent_header.msg_id != message.msg_id:
                continue  # a late answer to an earlier request that timed out
            if reply.msg_type == "error":
                raise DaemonRequestError(reply.content["code"], reply.content["reason"])
            return reply
        # A request left unanswered must not be answered into the next one: start afresh.
        self._socket.close(linger=0)
        self._connect()
        if self.endpoint == self.home.client_endpoint and self.home.running_pid() is None:
            raise _not_running(self.home)
        raise DaemonTimeout(
            f"cistemd ({self.endpoint}) did not answer a {msg_type} request within {wait:g} s"
        )

    def _content(self, msg_type: str, content: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return dict(self.request(msg_type, content).content)

    # -- operations --------------------------------------------------------------------------------

    def ping(self, *, timeout: float | None = None) -> float:
        """Return the round-trip time of a ``ping``, in seconds."""
        start = time.perf_counter()
        self.request("ping", timeout=timeout)
        return time.perf_counter() - start

    def status(self) -> dict[str, Any]:
        """Return the daemon's status (pid, version, uptime, projects, workers, jobs)."""
        return self._content("status_request")

    @staticmethod
    def _path(path: str | os.PathLike[str]) -> str:
        return os.path.abspath(os.path.expanduser(os.fspath(path)))

    def create_project(self, path: str | os.PathLike[str], name: str = "") -> dict[str, Any]:
        """Create a project (the daemon holds it open) and return its description.

        Parameters
        ----------
        path
            The project directory (made absolute).
        name
            Project name; default the directory's name.

        Returns
        -------
        dict
            ``{"path", "name", "counts"}``.
        """
        return self._content("project_create", {"path": self._path(path), "name": name})

    def open_project(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Open a project in the daemon; return ``{"path", "name", "counts"}``."""
        return self._content("project_open", {"path": self._path(path)})

    def project_info(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Describe a project (opened if needed); return ``{"path", "name", "counts"}``."""
        return self._content("project_info", {"path": self._path(path)})

    def submit(
        self,
        project: str | os.PathLike[str],
        action: str,
        parameters: Mapping[str, Any] | None = None,
        profile: str = "",
    ) -> str:
        """Submit a job; return its id once the daemon has stored it.

        Parameters
        ----------
        project
            The project directory.
        action
            The action (``selftest``, ...).
        parameters
            Its parameters (cisTEM's defaults fill the rest).
        profile
            Run profile name (``""`` = Default Local, ``"local:N"``, or a profile file's name).

        Returns
        -------
        str
            The job id.
        """
        reply = self._content(
            "job_submit",
            {
                "project": self._path(project),
                "action": action,
                "parameters": dict(parameters or {}),
                "profile": profile,
            },
        )
        return str(reply["job_id"])

    def cancel(self, job_id: str | int) -> dict[str, Any]:
        """Cancel a job; return its record after the cancel."""
        return dict(self._content("job_cancel", {"job_id": str(job_id)})["job"])

    def job(self, job_id: str | int) -> dict[str, Any]:
        """Return one job's record (``state``, ``progress``, ``tasks`` by state, ...)."""
        return dict(self._content("job_show", {"job_id": str(job_id)})["job"])

    def jobs_page(
        self,
        *,
        project: str | os.PathLike[str] | None = None,
        states: Iterable[str] = (),
        limit: int = 200,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Return a page of jobs (newest first) and how many match in all.

        Parameters
        ----------
        project
            Only this project's jobs (default: every open project).
        states
            Only jobs in these states.
        limit, offset
            The page (``limit`` ≤ 1000).

        Returns
        -------
        tuple
            ``(jobs, total)``.
        """
        reply = self._content(
            "jobs_list",
            {
                "project": "" if project is None else self._path(project),
                "states": list(states),
                "limit": int(limit),
                "offset": int(offset),
            },
        )
        return list(reply["jobs"]), int(reply["total"])

    def jobs(
        self, *, project: str | os.PathLike[str] | None = None, states: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """Return every job (newest first), of one project or all open ones."""
        wanted = list(states)
        found: list[dict[str, Any]] = []
        while True:
            page, total = self.jobs_page(
                project=project, states=wanted, limit=1000, offset=len(found)
            )
            found += page
            if not page or len(found) >= total:
                return found

    def job_log(
        self, job_id: str | int, *, since_event_id: int = 0, limit: int = 500
    ) -> dict[str, Any]:
        """Return one page of a job's stored events.

        Returns
        -------
        dict
            ``{"job_id", "events", "last_event_id", "more"}``.
        """
        return self._content(
            "job_log",
            {"job_id": str(job_id), "since_event_id": int(since_event_id), "limit": int(limit)},
        )

    def job_events(self, job_id: str | int, *, since_event_id: int = 0) -> list[dict[str, Any]]:
        """Return every stored event of a job after ``since_event_id``, oldest first."""
        events: list[dict[str, Any]] = []
        cursor = since_event_id
        while True:
            page = self.job_log(job_id, since_event_id=cursor, limit=2000)
            events += page["events"]
            cursor = int(page["last_event_id"])
            if not page["more"]:
                return events

    def wait_for_job(
        self,
        job_id: str | int,
        *,
        states: Iterable[str] = TERMINAL_STATES,
        timeout: float = 60.0,
        interval: float = 0.1,
    ) -> dict[str, Any]:
        """Poll a job until it is in one of ``states``; return its record.

        Raises
        ------
        DaemonTimeout
            The job did not get there within ``timeout`` seconds.
        """
        wanted = set(states)
        deadline = time.monotonic() + timeout
        while True:
            record = self.job(job_id)
            if record["state"] in wanted:
                return record
            if time.monotonic() >= deadline:
                raise DaemonTimeout(
                    f"job {job_id} is still {record['state']} after {timeout:g} s "
                    f"(tasks {record.get('tasks')})"
                )
            time.sleep(interval)

    def job_tasks_page(
        self,
        job_id: str | int,
        *,
        states: Iterable[str] = (),
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Return a page of a job's tasks (stage and position order) and how many match.

        Each task is ``{task_id, key, stage, label, state, attempt, failures,
        worker_id, host, reason, evidence}``; a page may be shorter than
        ``limit`` (the daemon keeps replies under the frame size).
        """
        reply = self._content(
            "job_tasks",
            {
                "job_id": str(job_id),
                "states": list(states),
                "limit": int(limit),
                "offset": int(offset),
            },
        )
        return list(reply["tasks"]), int(reply["total"])

    def job_tasks(
        self, job_id: str | int, *, states: Iterable[str] = (), limit: int | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Return up to ``limit`` tasks of a job (None: all) and how many match in all."""
        wanted = list(states)
        found: list[dict[str, Any]] = []
        total = 0
        while limit is None or len(found) < limit:
            step = 1000 if limit is None else min(1000, limit - len(found))
            page, total = self.job_tasks_page(job_id, states=wanted, limit=step, offset=len(found))
            found += page
            if not page or len(found) >= total:
                break
        return found, total

    def job_results(
        self, job_id: str | int, *, limit: int | None = None, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """Return up to ``limit`` recorded results of a job (None: all) and the total.

        Each result is ``{task_id, key, attempt, worker_id, result, output_files,
        elapsed_s, recorded_at}``.
        """
        found: list[dict[str, Any]] = []
        total = 0
        while limit is None or len(found) < limit:
            step = 1000 if limit is None else min(1000, limit - len(found))
            reply = self._content(
                "job_results",
                {"job_id": str(job_id), "limit": step, "offset": int(offset) + len(found)},
            )
            total = int(reply["total"])
            found += reply["results"]
            if not reply["results"] or offset + len(found) >= total:
                break
        return found, total

    # -- assets and groups -------------------------------------------------------------------------

    def import_assets(
        self,
        project: str | os.PathLike[str],
        kind: str,
        paths: Iterable[str | os.PathLike[str]],
        *,
        batch: int = 500,
        **options: Any,
    ) -> dict[str, Any]:
        """Import files into a project through the daemon.

        Parameters
        ----------
        project
            The project directory.
        kind
            ``movies``, ``images``, ``positions`` (one text file), ``volumes`` or
            ``refinement_package`` (``[stack, parameters]``).
        paths
            The files (made absolute here).
        batch
            Paths per request (≤ 500). Each request is one transaction in the
            daemon: a bad file refuses its whole batch, and batches already
            imported stay.
        **options
            The import dialog's fields, named as in the Project API
            (``voltage_kv``, ``spherical_aberration_mm``, ``pixel_size_angstroms``,
            ``exposure_per_frame``, ``gain_filename``, ...); None values are left out.

        Returns
        -------
        dict
            ``{"kind", "ids", "count", "warnings"}`` over all batches.
        """
        files = [self._path(path) for path in paths]
        values = {
            name: (self._path(value) if name.endswith("_filename") else value)
            for name, value in options.items()
            if value is not None
        }
        size = max(1, min(int(batch), _IMPORT_BATCH))
        if kind in ("positions", "refinement_package"):
            size = max(size, len(files))
        total: dict[str, Any] = {"kind": kind, "ids": [], "count": 0, "warnings": []}
        for start in range(0, len(files), size):
            reply = self.request(
                "assets_import",
                {
                    "project": self._path(project),
                    "kind": kind,
                    "paths": files[start : start + size],
                    "options": values,
                },
                timeout=max(self.timeout, 120.0),
            ).content
            total["ids"] += reply["ids"]
            total["count"] += int(reply["count"])
            total["warnings"] += reply["warnings"]
        return total

    def assets_page(
        self,
        project: str | os.PathLike[str],
        kind: str,
        *,
        group_id: int = 0,
        limit: int = 200,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Return a page of asset rows of one kind (lower-case column names) and the total.

        ``kind`` is ``movies``, ``images``, ``positions``, ``volumes``,
        ``packages``, ``refinements`` or ``ctf_estimates``; ``group_id`` > 0
        lists one group's members.
        """
        reply = self._content(
            "assets_list",
            {
                "project": self._path(project),
                "kind": kind,
                "group_id": int(group_id),
                "limit": int(limit),
                "offset": int(offset),
            },
        )
        return list(reply["assets"]), int(reply["total"])

    def assets(
        self,
        project: str | os.PathLike[str],
        kind: str,
        *,
        group_id: int = 0,
        limit: int | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """Return up to ``limit`` asset rows (None: all) and how many there are in all."""
        found: list[dict[str, Any]] = []
        total = 0
        while limit is None or len(found) < limit:
            step = 1000 if limit is None else min(1000, limit - len(found))
            page, total = self.assets_page(
                project, kind, group_id=group_id, limit=step, offset=len(found)
            )
            found += page
            if not page or len(found) >= total:
                break
        return found, total

    def groups(self, project: str | os.PathLike[str], kind: str) -> list[dict[str, Any]]:
        """Return the groups of one kind, group 0 ("All ...") first.

        ``kind`` is ``movie``, ``image``, ``particle_position``, ``volume`` or
        ``atomic_coordinates``; each group is ``{group_id, name, count, implicit}``.
        """
        reply = self._content("groups_list", {"project": self._path(project), "kind": kind})
        return list(reply["groups"])

    def group_members(self, project: str | os.PathLike[str], kind: str, group_id: int) -> list[int]:
        """Return the asset ids in a group, in member order (group 0: every asset)."""
        members: list[int] = []
        while True:
            reply = self._content(
                "groups_list",
                {
                    "project": self._path(project),
                    "kind": kind,
                    "group_id": int(group_id),
                    "offset": len(members),
                },
            )
            members += reply["members"]
            if not reply["members"] or len(members) >= int(reply["members_total"]):
                return members

    def edit_group(
        self,
        project: str | os.PathLike[str],
        kind: str,
        operation: str,
        *,
        group_id: int = 0,
        name: str = "",
        asset_ids: Iterable[int] = (),
    ) -> dict[str, Any]:
        """Change groups and return ``{kind, groups, group_id, changed}``.

        ``operation`` is ``create``, ``rename``, ``delete``, ``add``, ``remove`` or
        ``from_movie_group`` (an image group of the images aligned from a movie
        group). ``add`` and ``remove`` send at most 10,000 ids per request.
        """
        ids = [int(i) for i in asset_ids]
        content: dict[str, Any] = {
            "project": self._path(project),
            "kind": kind,
            "operation": operation,
            "group_id": int(group_id),
            "name": name,
        }
        if operation not in ("add", "remove"):
            return self._content("groups_edit", content)
        reply: dict[str, Any] = {}
        changed = 0
        for start in range(0, max(1, len(ids)), 10_000):
            reply = self._content(
                "groups_edit", {**content, "asset_ids": ids[start : start + 10_000]}
            )
            changed += int(reply["changed"])
        reply["changed"] = changed
        return reply

    def create_group(self, project: str | os.PathLike[str], kind: str, name: str) -> int:
        """Create an empty group; return its id."""
        return int(self.edit_group(project, kind, "create", name=name)["group_id"])

    def edit_positions(
        self,
        project: str | os.PathLike[str],
        operation: str,
        image_asset_id: int,
        *,
        x_angstroms: Iterable[float] = (),
        y_angstroms: Iterable[float] = (),
        position_ids: Iterable[int] = (),
        radius_angstroms: float = 50.0,
    ) -> dict[str, Any]:
        """Add or remove particle positions on one image (manual editing of picks).

        ``add`` records ``(x, y)`` positions (Å from the first pixel) and returns
        ``{image_asset_id, operation, position_ids, total}`` with the new ids;
        ``remove`` deletes ``position_ids`` and, for each ``(x, y)``, the nearest
        position within ``radius_angstroms``, returning the ids removed.
        """
        return self._content(
            "positions_edit",
            {
                "project": self._path(project),
                "operation": operation,
                "image_asset_id": int(image_asset_id),
                "x": [float(v) for v in x_angstroms],
                "y": [float(v) for v in y_angstroms],
                "position_ids": [int(v) for v in position_ids],
                "radius_angstroms": float(radius_angstroms),
            },
        )

    # -- actions, pictures and result queries (the TUI's Actions and Results panels) -------------

    def actions(self) -> list[dict[str, Any]]:
        """Return every action the daemon offers, with its form.

        Each action is ``{name, title, parameters}``; each parameter is ``{name,
        kind, default, help, minimum, maximum, choices, expert}`` (cisTEM's GUI
        defaults; ``expert`` ones belong under "Expert Options").
        """
        return list(self._content("actions_list")["actions"])

    def image_preview(
        self,
        project: str | os.PathLike[str],
        source: str,
        *,
        asset_id: int = 0,
        path: str | os.PathLike[str] = "",
        which: str = "image",
        max_size: int = 256,
    ) -> dict[str, Any]:
        """Return a small 8-bit picture of an asset, made by the daemon.

        Parameters
        ----------
        project
            The project directory.
        source
            ``image``, ``movie``, ``volume``, ``ctf_estimate`` or ``file``.
        asset_id
            The asset's id.
        path
            With ``source="file"``: an MRC file inside the project.
        which
            ``image``, ``spectrum``, ``scaled``, ``ctf_diagnostic`` or ``volume_orth``.
        max_size
            Largest edge of the picture, 16..512.

        Returns
        -------
        dict
            ``{width, height, pixels (bytes, top row first), file, original_width,
            original_height, original_depth, pixel_size_angstroms, scale}``.
        """
        content = {
            "project": self._path(project),
            "source": source,
            "asset_id": int(asset_id),
            "path": self._path(path) if os.fspath(path) else "",
            "which": which,
            "max_size": int(max_size),
        }
        return dict(self.request("image_preview", content, timeout=max(self.timeout, 60.0)).content)

    def results_query(
        self,
        project: str | os.PathLike[str],
        query: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        limit: int = 500,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Return one page of a read-only result query: ``{query, rows, total, data}``.

        ``query`` is ``ctf_table``, ``ctf_fit``, ``alignments``,
        ``alignment_shifts``, ``picked_images``, ``picks`` or ``fsc``; see
        :func:`cistemd.manager.client_ops.results_query` for their parameters.
        """
        return self._content(
            "results_query",
            {
                "project": self._path(project),
                "query": query,
                "parameters": dict(parameters or {}),
                "limit": int(limit),
                "offset": int(offset),
            },
        )

    def results(
        self,
        project: str | os.PathLike[str],
        query: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        limit: int | None = None,
    ) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
        """Return up to ``limit`` rows of a result query (None: all), the total and its data."""
        rows: list[dict[str, Any]] = []
        total, data = 0, {}
        while limit is None or len(rows) < limit:
            step = 10_000 if limit is None else min(10_000, limit - len(rows))
            reply = self.results_query(project, query, parameters, limit=step, offset=len(rows))
            total, data = int(reply["total"]), dict(reply["data"])
            rows += reply["rows"]
            if not reply["rows"] or len(rows) >= total:
                break
        return rows, total, data

    def selected_image_ids(
        self, project: str | os.PathLike[str], parameters: Mapping[str, Any] | None = None
    ) -> list[int]:
        """Return the image ids a ``ctf_table`` selection holds (``filters``, ``job_id`` ...)."""
        ids: list[int] = []
        wanted = {**dict(parameters or {}), "ids_only": True}
        while True:
            reply = self.results_query(project, "ctf_table", wanted, limit=10_000, offset=len(ids))
            page = [int(i) for i in reply["data"].get("image_asset_ids", [])]
            ids += page
            if not page or len(ids) >= int(reply["total"]):
                return ids

    def events(self, since_event_id: int = 0, *, job_id: str | int = "") -> list[dict[str, Any]]:
        """Return the stored events after ``since_event_id`` (all jobs, or one), oldest first.

        Parameters
        ----------
        since_event_id
            Return events with a larger id (0: the whole history).
        job_id
            Only this job's events.

        Returns
        -------
        list of dict
            EVENT records; follow new ones with :meth:`subscribe`.
        """
        events: list[dict[str, Any]] = []
        cursor = int(since_event_id)
        while True:
            reply = self._content("subscribe", {"since_event_id": cursor, "job_id": str(job_id)})
            events += reply["events"]
            if not reply["more"] or not reply["events"]:
                return events
            cursor = int(reply["last_event_id"])

    def subscribe(self, *, since_event_id: int = 0, job_id: str | int = "") -> Subscription:
        """Follow the events: stored history after ``since_event_id``, then live ones.

        Parameters
        ----------
        since_event_id
            Replay the events after this id (0: the whole history).
        job_id
            Only this job's events (default: all).

        Returns
        -------
        Subscription
            Iterate it, or call :meth:`Subscription.get`; close it when done.
        """
        return Subscription(self, since_event_id=since_event_id, job_id=str(job_id))

    # -- run profiles ------------------------------------------------------------------------------

    def profiles(self) -> list[dict[str, Any]]:
        """Return every run profile (``Default Local`` first) as ``RunProfile.to_dict()`` maps.

        Returns
        -------
        list of dict
            ``name``, ``manager_command``, ``gui_address``, ``controller_address``,
            ``commands`` (``command_to_run``, ``number_of_copies``, ``threads_per_copy``,
            ``delay_ms``, ``override_total_copies``, ``overridden_total_copies``,
            ``host``), ``launcher`` (``local`` | ``ssh`` | ``scheduler``),
            ``worker_python``, ``ssh`` and ``scheduler`` settings.
        """
        return [dict(item) for item in self._content("profiles_list")["profiles"]]

    def save_profile(self, profile: Mapping[str, Any]) -> None:
        """Create or replace a run profile (checked by the daemon).

        Parameters
        ----------
        profile
            A ``RunProfile.to_dict()`` map (absent fields take their defaults).
        """
        self._content("profile_save", {"profile": dict(profile)})

    def delete_profile(self, name: str) -> None:
        """Delete the stored run profile ``name``.

        Parameters
        ----------
        name
            The profile's name.
        """
        self._content("profile_delete", {"name": name})

    def import_profiles(self, text: str) -> list[str]:
        """Import cisTEM's ``default_run_profiles.txt``; return the names imported.

        Parameters
        ----------
        text
            The file's content.

        Returns
        -------
        list of str
            The profiles stored (same names are replaced).
        """
        return [str(name) for name in self._content("profiles_import", {"text": text})["names"]]

    def export_profiles(self, names: list[str] | None = None) -> str:
        """Return run profiles in cisTEM's ``default_run_profiles.txt`` format.

        Parameters
        ----------
        names
            The profiles to export (None: all).

        Returns
        -------
        str
            The text.
        """
        return str(self._content("profiles_export", {"names": list(names or [])})["text"])


class Subscription:
    """The event stream of a daemon: replay, then live, in order, without repeats.

    Made by :meth:`Client.subscribe`.
    """

    def __init__(self, client: Client, *, since_event_id: int, job_id: str) -> None:
        zmq_module = client._zmq
        self._client = client
        self._job_id = job_id
        assert client._context is not None
        # Connect the SUB socket before asking for the replay: nothing falls between.
        first = client.request("subscribe", {"since_event_id": since_event_id, "job_id": job_id})
        self._sub: zmq.Socket[Any] | None = client._context.socket(zmq_module.SUB)
        self._sub.setsockopt(zmq_module.LINGER, 0)
        self._sub.setsockopt(zmq_module.SUBSCRIBE, b"")
        self._sub.connect(first.content["pub_endpoint"])
        time.sleep(0.05)  # let the subscription reach the publisher
        reply = client.request("subscribe", {"since_event_id": since_event_id, "job_id": job_id})
        self._backlog: list[dict[str, Any]] = list(reply.content["events"])
        self._more = bool(reply.content["more"])
        self.last_event_id = int(since_event_id)
        self._cursor = int(reply.content["last_event_id"])

    def _fill(self) -> None:
        while self._more and not self._backlog:
            reply = self._client.request(
                "subscribe", {"since_event_id": self._cursor, "job_id": self._job_id}
            )
            self._backlog = list(reply.content["events"])
            self._more = bool(reply.content["more"])
            self._cursor = int(reply.content["last_event_id"])

    def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Return the next event, or ``None`` if none comes within ``timeout`` seconds.

        Parameters
        ----------
        timeout
            Seconds to wait for a live event (None: forever).

        Returns
        -------
        dict or None
            An EVENT record: ``{event_id, job_id, kind, payload, time}``.
        """
        protocol, zmq = self._client._protocol, self._client._zmq
        self._fill()
        if self._backlog:
            event = self._backlog.pop(0)
            self.last_event_id = max(self.last_event_id, int(event["event_id"]))
            return event
        if self._sub is None:
            raise ClientError("the subscription is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            wait_ms = -1 if remaining is None else int(remaining * 1000)
            if not self._sub.poll(wait_ms, zmq.POLLIN):
                return None
            frame = self._sub.recv()
            try:
                message = protocol.decode(frame, direction=protocol.Direction.EVENT)
            except protocol.ProtocolError:
                continue
            event = dict(message.content)
            if int(event["event_id"]) <= self.last_event_id:
                continue
            if self._job_id and event["job_id"] != self._job_id:
                continue
            self.last_event_id = int(event["event_id"])
            return event

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            event = self.get()
            if event is not None:
                yield event

    def close(self) -> None:
        """Stop following (the client stays open)."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                self._sub.close(linger=0)
            self._sub = None

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
