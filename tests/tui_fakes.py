"""An in-process stand-in for cistemd, for the TUI's Pilot and snapshot tests.

``FakeDaemon`` keeps projects, assets, groups, jobs, events and run profiles in
memory; ``daemon.client()`` returns an object with the methods of
:class:`cistemd.client.Client` the screens use, with the same return shapes
and the same errors (``DaemonRequestError`` with a code). Every call is
recorded in ``daemon.calls`` so tests can assert on the message flow, and
``daemon.emit(...)`` publishes an event to every subscription.

Use::

    daemon = FakeDaemon()
    daemon.add_project("/p", images=10_000)
    app = CistemApp("/p", client_factory=daemon.client)
"""

from __future__ import annotations

import copy
import itertools
import queue
import threading
from typing import Any

from cistemd.client import DaemonRequestError

_GROUP_KINDS = {
    "movies": "movie",
    "images": "image",
    "positions": "particle_position",
    "volumes": "volume",
}
_ID_COLUMNS = {
    "movies": "movie_asset_id",
    "images": "image_asset_id",
    "positions": "particle_position_asset_id",
    "volumes": "volume_asset_id",
    "packages": "refinement_package_asset_id",
}
_TIME = "2026-11-22T03:00:00.000000Z"


def _movie(i: int) -> dict[str, Any]:
    return {
        "movie_asset_id": i,
        "name": f"movie_{i:04d}",
        "filename": f"/data/raw/movie_{i:04d}.tif",
        "number_of_frames": 40,
        "x_size": 4096,
        "y_size": 4096,
        "pixel_size": 1.06,
        "voltage": 300.0,
        "spherical_aberration": 2.7,
        "dose_per_frame": 1.2,
        "gain_filename": "/data/raw/gain.mrc",
    }


def _image(i: int) -> dict[str, Any]:
    return {
        "image_asset_id": i,
        "name": f"image_{i:05d}",
        "filename": f"/data/p/Assets/Images/image_{i:05d}.mrc",
        "x_size": 3838,
        "y_size": 3710,
        "pixel_size": 1.06,
        "voltage": 300.0,
        "spherical_aberration": 2.7,
        "parent_movie_id": i,
        "ctf_estimation_id": -1,
    }


def _position(i: int) -> dict[str, Any]:
    return {
        "particle_position_asset_id": i,
        "parent_image_asset_id": 1 + (i - 1) // 100,
        "x_position": 100.0 + (i * 37) % 3000,
        "y_position": 100.0 + (i * 53) % 3000,
        "peak_height": 6.0 + (i % 10) / 10,
        "picking_id": 1,
        "pick_job_id": 1,
    }


class _Rows:
    """Rows made on demand (a million positions cost nothing until asked for)."""

    def __init__(self, make: Any, count: int) -> None:
        self.make = make
        self.count = count
        self.extra: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return self.count + len(self.extra)

    def page(self, offset: int, limit: int) -> list[dict[str, Any]]:
        out = [self.make(i + 1) for i in range(offset, min(offset + limit, self.count))]
        start = max(0, offset - self.count)
        out += self.extra[start : start + limit - len(out)]
        return out

    def get(self, asset_id: int) -> dict[str, Any]:
        if asset_id <= self.count:
            return self.make(asset_id)
        return self.extra[asset_id - self.count - 1]


class FakeSubscription:
    """Live events of a :class:`FakeDaemon`."""

    def __init__(self, daemon: FakeDaemon) -> None:
        self.daemon = daemon
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue()
        with daemon.lock:
            daemon.subscribers.append(self)

    def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        with self.daemon.lock:
            if self in self.daemon.subscribers:
                self.daemon.subscribers.remove(self)


class FakeProject:
    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name
        self.assets: dict[str, Any] = {
            "movies": _Rows(_movie, 0),
            "images": _Rows(_image, 0),
            "positions": _Rows(_position, 0),
            "volumes": _Rows(lambda i: {}, 0),
            "packages": _Rows(lambda i: {}, 0),
        }
        self.groups: dict[str, list[dict[str, Any]]] = {kind: [] for kind in _GROUP_KINDS.values()}
        self.members: dict[tuple[str, int], list[int]] = {}


class FakeDaemon:
    """The daemon's state, shared by every fake client."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.projects: dict[str, FakeProject] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, list[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.subscribers: list[FakeSubscription] = []
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.profiles: list[dict[str, Any]] = [
            {
                "name": "Default Local",
                "manager_command": "$command",
                "gui_address": "",
                "controller_address": "",
                "commands": [
                    {
                        "command_to_run": "$command",
                        "number_of_copies": 3,
                        "threads_per_copy": 1,
                        "delay_ms": 10,
                        "override_total_copies": False,
                        "overridden_total_copies": 0,
                        "host": "",
                    }
                ],
                "launcher": "local",
                "worker_python": "",
            }
        ]
        self._event_ids = itertools.count(1_000_000)
        self._job_ids = itertools.count(1)
        self.imported: list[tuple[str, list[str], dict[str, Any]]] = []

    # -- test set-up ---------------------------------------------------------------------------

    def add_project(
        self,
        path: str,
        *,
        movies: int = 0,
        images: int = 0,
        positions: int = 0,
        name: str = "",
    ) -> FakeProject:
        project = FakeProject(path, name or path.rstrip("/").rsplit("/", 1)[-1])
        project.assets["movies"].count = movies
        project.assets["images"].count = images
        project.assets["positions"].count = positions
        self.projects[path] = project
        return project

    def add_job(
        self, project: str, action: str = "selftest", n_tasks: int = 10, state: str = "running"
    ) -> str:
        job_id = str(next(self._job_ids))
        done = n_tasks if state == "completed" else n_tasks // 2
        counts = {"completed": done, "running": 0 if state == "completed" else 1}
        counts["queued"] = n_tasks - done - counts["running"]
        self.jobs[job_id] = {
            "job_id": job_id,
            "project": project,
            "action": action,
            "profile": "Default Local",
            "state": state,
            "submitted": _TIME,
            "progress": done / n_tasks,
            "tasks": {k: v for k, v in counts.items() if v},
            "parameters": {"tasks": n_tasks},
            "message": "",
        }
        self.tasks[job_id] = [
            {
                "task_id": f"{job_id}{i:04d}",
                "key": f"task_{i:04d}",
                "stage": 0,
                "label": "",
                "state": "completed" if i < done else ("running" if i == done else "queued"),
                "attempt": 1 if i <= done else 0,
                "failures": 0,
                "worker_id": "w-1",
                "host": "localhost",
                "reason": "",
                "evidence": [],
            }
            for i in range(n_tasks)
        ]
        self.emit(job_id, "state", {"state": "queued", "old": "", "reason": "submitted"})
        self.emit(job_id, "state", {"state": state, "old": "queued", "reason": ""})
        return job_id

    def emit(self, job_id: str, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        event = {
            "event_id": next(self._event_ids),
            "job_id": job_id,
            "kind": kind,
            "payload": payload,
            "time": _TIME,
        }
        with self.lock:
            self.events.append(event)
            for subscriber in list(self.subscribers):
                subscriber.queue.put(event)
        return event

    def progress(self, job_id: str, done: int) -> None:
        """Advance a job to ``done`` finished tasks and publish it."""
        job = self.jobs[job_id]
        total = len(self.tasks[job_id])
        for i, task in enumerate(self.tasks[job_id]):
            task["state"] = "completed" if i < done else "queued"
        job["tasks"] = {"completed": done, "queued": total - done}
        job["tasks"] = {k: v for k, v in job["tasks"].items() if v}
        job["progress"] = done / total
        self.emit(
            job_id,
            "progress",
            {"fraction": done / total, "done": done, "total": total, "tasks": job["tasks"]},
        )
        if done == total:
            job["state"] = "completed"
            self.emit(job_id, "state", {"state": "completed", "old": "running", "reason": ""})

    def client(self) -> FakeClient:
        return FakeClient(self)


class FakeClient:
    """The :class:`cistemd.client.Client` methods the TUI uses, on a :class:`FakeDaemon`."""

    def __init__(self, daemon: FakeDaemon) -> None:
        self.daemon = daemon
        self.closed = False

    def _record(self, _name: str, *args: Any, **kwargs: Any) -> None:
        if self.closed:
            raise RuntimeError("the fake client is closed")
        self.daemon.calls.append((_name, args, kwargs))

    def _project(self, path: Any) -> FakeProject:
        project = self.daemon.projects.get(str(path))
        if project is None:
            raise DaemonRequestError("no_such_project", f"{path}: not a cistemd project")
        return project

    def close(self) -> None:
        self.closed = True

    # -- daemon and projects ---------------------------------------------------------------------

    def ping(self, *, timeout: float | None = None) -> float:
        self._record("ping")
        return 0.001

    def status(self) -> dict[str, Any]:
        self._record("status")
        running = sum(1 for job in self.daemon.jobs.values() if job["state"] == "running")
        return {
            "pid": 4242,
            "version": "0.1.0",
            "protocol_version": 1,
            "uptime_s": 12.0,
            "projects": list(self.daemon.projects),
            "workers": 3,
            "jobs": {"running": running} if running else {},
        }

    def _describe(self, project: FakeProject) -> dict[str, Any]:
        counts = {
            "movies": len(project.assets["movies"]),
            "images": len(project.assets["images"]),
            "particle_positions": len(project.assets["positions"]),
            "volumes": len(project.assets["volumes"]),
            "refinement_packages": len(project.assets["packages"]),
        }
        return {"path": project.path, "name": project.name, "counts": counts}

    def create_project(self, path: str, name: str = "") -> dict[str, Any]:
        self._record("create_project", path, name)
        if path in self.daemon.projects:
            raise DaemonRequestError("project_exists", f"{path} is already a project")
        return self._describe(self.daemon.add_project(path, name=name))

    def open_project(self, path: str) -> dict[str, Any]:
        self._record("open_project", path)
        return self._describe(self._project(path))

    def project_info(self, path: str) -> dict[str, Any]:
        self._record("project_info", path)
        return self._describe(self._project(path))

    # -- assets and groups -------------------------------------------------------------------------

    def assets_page(
        self, project: str, kind: str, *, group_id: int = 0, limit: int = 200, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        self._record("assets_page", project, kind, group_id=group_id, limit=limit, offset=offset)
        rows = self._project(project).assets[kind]
        if group_id:
            members = self._project(project).members[(_GROUP_KINDS[kind], group_id)]
            return [rows.get(i) for i in members[offset : offset + limit]], len(members)
        return rows.page(offset, limit), len(rows)

    def groups(self, project: str, kind: str) -> list[dict[str, Any]]:
        self._record("groups", project, kind)
        fake = self._project(project)
        asset_kind = {v: k for k, v in _GROUP_KINDS.items()}[kind]
        title = {"movie": "Movies", "image": "Images", "particle_position": "Positions"}.get(
            kind, "Volumes"
        )
        everything = {
            "group_id": 0,
            "name": f"All {title}",
            "count": len(fake.assets[asset_kind]),
            "implicit": True,
        }
        named = [
            {**g, "count": len(fake.members[(kind, g["group_id"])])} for g in fake.groups[kind]
        ]
        return [everything, *named]

    def edit_group(
        self,
        project: str,
        kind: str,
        operation: str,
        *,
        group_id: int = 0,
        name: str = "",
        asset_ids: Any = (),
    ) -> dict[str, Any]:
        ids = [int(i) for i in asset_ids]
        self._record(
            "edit_group", project, kind, operation, group_id=group_id, name=name, asset_ids=ids
        )
        fake = self._project(project)
        groups = fake.groups[kind]
        changed = 0
        if operation == "create":
            group_id = max([g["group_id"] for g in groups], default=0) + 1
            groups.append({"group_id": group_id, "name": name, "count": 0, "implicit": False})
            fake.members[(kind, group_id)] = []
        elif operation == "rename":
            for group in groups:
                if group["group_id"] == group_id:
                    group["name"] = name
        elif operation == "delete":
            fake.groups[kind] = [g for g in groups if g["group_id"] != group_id]
        elif operation == "add":
            members = fake.members[(kind, group_id)]
            new = [i for i in ids if i not in members]
            members += new
            changed = len(new)
        elif operation == "remove":
            members = fake.members[(kind, group_id)]
            changed = sum(1 for i in ids if i in members)
            fake.members[(kind, group_id)] = [i for i in members if i not in ids]
        return {"kind": kind, "groups": self.groups(project, kind), "group_id": group_id,
                "changed": changed}  # fmt: skip

    def import_assets(
        self, project: str, kind: str, paths: Any, *, batch: int = 500, **options: Any
    ) -> dict[str, Any]:
        files = [str(p) for p in paths]
        self._record("import_assets", project, kind, files, **options)
        fake = self._project(project)
        self.daemon.imported.append((kind, files, dict(options)))
        list_kind = {"refinement_package": "packages"}.get(kind, kind)
        rows = fake.assets[list_kind]
        ids = []
        for path in files:
            new_id = len(rows) + 1
            row = {_ID_COLUMNS[list_kind]: new_id, "name": path.rsplit("/", 1)[-1],
                   "filename": path}  # fmt: skip
            rows.extra.append(row)
            ids.append(new_id)
        return {"kind": kind, "ids": ids, "count": len(ids), "warnings": []}

    # -- jobs --------------------------------------------------------------------------------------

    def submit(
        self, project: str, action: str, parameters: Any = None, profile: str = ""
    ) -> str:
        self._record("submit", project, action, dict(parameters or {}), profile)
        self._project(project)
        n_tasks = int((parameters or {}).get("tasks", 4))
        return self.daemon.add_job(project, action, n_tasks, state="running")

    def cancel(self, job_id: str) -> dict[str, Any]:
        self._record("cancel", job_id)
        job = self.job(job_id)
        self.daemon.jobs[str(job_id)]["state"] = "cancelled"
        self.daemon.emit(str(job_id), "state", {"state": "cancelled", "old": job["state"],
                                               "reason": "cancelled by user"})  # fmt: skip
        return copy.deepcopy(self.daemon.jobs[str(job_id)])

    def job(self, job_id: str) -> dict[str, Any]:
        self._record("job", job_id)
        if str(job_id) not in self.daemon.jobs:
            raise DaemonRequestError("no_such_job", f"no job {job_id!r}")
        return copy.deepcopy(self.daemon.jobs[str(job_id)])

    def jobs_page(
        self, *, project: Any = None, states: Any = (), limit: int = 200, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        self._record("jobs_page", project=project, limit=limit, offset=offset)
        jobs = [
            copy.deepcopy(job)
            for job in self.daemon.jobs.values()
            if project is None or job["project"] == project
        ]
        jobs.sort(key=lambda job: int(job["job_id"]), reverse=True)
        return jobs[offset : offset + limit], len(jobs)

    def job_tasks_page(
        self, job_id: str, *, states: Any = (), limit: int = 100, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        self._record("job_tasks_page", job_id, states=list(states), limit=limit, offset=offset)
        tasks = [t for t in self.daemon.tasks.get(str(job_id), []) if not states or
                 t["state"] in states]  # fmt: skip
        return copy.deepcopy(tasks[offset : offset + limit]), len(tasks)

    def job_log(
        self, job_id: str, *, since_event_id: int = 0, limit: int = 500
    ) -> dict[str, Any]:
        self._record("job_log", job_id, since_event_id=since_event_id, limit=limit)
        events = [
            e for e in self.daemon.events
            if e["job_id"] == str(job_id) and e["event_id"] > since_event_id
        ]  # fmt: skip
        page = events[:limit]
        last = page[-1]["event_id"] if page else since_event_id
        return {"job_id": str(job_id), "events": page, "last_event_id": last,
                "more": len(events) > limit}  # fmt: skip

    def image_preview(
        self,
        project: str,
        source: str,
        *,
        asset_id: int = 0,
        path: str = "",
        which: str = "image",
        max_size: int = 256,
    ) -> dict[str, Any]:
        self._record("image_preview", project, source, asset_id=asset_id, path=path, which=which)
        width, height = 64, 48
        pixels = bytes((x * 4 + y * 2) % 256 for y in range(height) for x in range(width))
        return {"width": width, "height": height, "pixels": pixels, "file": path,
                "original_width": 640, "original_height": 480, "original_depth": 1,
                "pixel_size_angstroms": 1.0, "scale": 0.1}  # fmt: skip

    def subscribe(self, *, since_event_id: int = 0, job_id: str = "") -> FakeSubscription:
        self._record("subscribe", since_event_id=since_event_id)
        return FakeSubscription(self.daemon)

    # -- run profiles ------------------------------------------------------------------------------

    def profiles(self) -> list[dict[str, Any]]:
        self._record("profiles")
        return copy.deepcopy(self.daemon.profiles)

    def save_profile(self, profile: dict[str, Any]) -> None:
        self._record("save_profile", copy.deepcopy(profile))
        if not profile.get("name"):
            raise DaemonRequestError("invalid_input", "a run profile needs a name, got ''")
        self.daemon.profiles = [p for p in self.daemon.profiles if p["name"] != profile["name"]]
        self.daemon.profiles.append(copy.deepcopy(dict(profile)))

    def delete_profile(self, name: str) -> None:
        self._record("delete_profile", name)
        if not any(p["name"] == name for p in self.daemon.profiles):
            raise DaemonRequestError("no_such_profile", f"no run profile {name!r}")
        self.daemon.profiles = [p for p in self.daemon.profiles if p["name"] != name]

    def import_profiles(self, text: str) -> list[str]:
        self._record("import_profiles", text)
        names = [
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("profile_name:")
        ]
        for name in names:
            self.save_profile({**self.daemon.profiles[0], "name": name})
        return names

    def export_profiles(self, names: Any = None) -> str:
        self._record("export_profiles", names)
        return "".join(f"profile_name: {p['name']}\n" for p in self.daemon.profiles)


def run_async(test: Any) -> Any:
    """Run an ``async def`` test in a fresh event loop (no async pytest plugin needed)."""
    import asyncio
    import functools

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(test(*args, **kwargs))

    return wrapper
