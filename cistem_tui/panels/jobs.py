"""The Jobs panel: running and finished jobs, progress, per-task state, logs, cancel.

The table lists the open project's jobs (every open project's when none is
open), newest first, each with a progress bar and its task counts; it follows
the daemon's events live. Below it, the chosen job: its overall progress, a
page of its tasks (state, attempt, host, failure reason) and its log — the
stored story of the job (``Client.job_log``) followed by live events, so a TUI
that attaches late sees the whole history.

Keys: ``enter`` show the job, ``c`` cancel it, ``t`` cycle the task filter
(all, running, queued, failed, completed), ``n``/``p`` next and previous page
of tasks, ``l`` focus the log.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Horizontal, Vertical
from textual.widgets import DataTable, Label, Log

from cistem_tui.messages import DaemonEvent, DaemonStatus, ProjectChanged
from cistem_tui.panels import in_worker, run_later

__all__ = ["JobsPanel", "format_event", "progress_text", "task_summary"]

TASK_PAGE = 100
_BAR_WIDTH = 30
_TASK_FILTERS = ("", "running", "queued", "failed", "completed")
_TERMINAL = frozenset({"completed", "failed", "cancelled"})


def progress_text(fraction: float, width: int = 10) -> str:
    """Return a text progress bar with eighths, e.g. ``█████▌    55%``."""
    fraction = min(max(float(fraction), 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "")
    return f"{bar:<{width}} {fraction * 100:3.0f}%"


def task_summary(tasks: dict[str, Any]) -> str:
    """Return ``done/total`` with the in-flight and failed counts, e.g. ``7/12 r3 f1``."""
    total = sum(int(v) for v in tasks.values())
    done = sum(int(tasks.get(s, 0)) for s in _TERMINAL)
    extra = ""
    running = int(tasks.get("running", 0)) + int(tasks.get("assigned", 0))
    if running:
        extra += f" r{running}"
    if tasks.get("failed"):
        extra += f" f{int(tasks['failed'])}"
    return f"{done}/{total}{extra}"


def format_event(event: dict[str, Any]) -> str:
    """Return one log line for an event (time, kind, what happened)."""
    payload = event.get("payload", {}) or {}
    stamp = str(event.get("time", ""))[11:19]
    kind = str(event.get("kind", ""))
    if kind == "state":
        text = f"job {payload.get('old') or 'new'} → {payload.get('state')}"
        if payload.get("reason"):
            text += f": {payload['reason']}"
        if payload.get("tasks"):
            text += f"  tasks {task_summary(payload['tasks'])}"
    elif kind == "progress" and "done" in payload:
        text = f"{payload.get('done')}/{payload.get('total')} tasks done"
    elif kind == "progress":
        text = f"task {payload.get('task_id')}: {payload.get('message') or ''}".rstrip()
        if "fraction" in payload:
            text += f" {float(payload['fraction']) * 100:.0f}%"
    else:
        text = str(payload.get("message") or payload)
    return f"{stamp} {kind:<8} {text}"


class JobsPanel(Container):
    """Jobs of the open project, live."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "cancel_job", "Cancel job"),
        Binding("t", "task_filter", "Task filter", show=False),
        Binding("n", "task_page(1)", "Next tasks", show=False),
        Binding("p", "task_page(-1)", "Previous tasks", show=False),
        Binding("l", "focus_log", "Log", show=False),
    ]

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.selected: str | None = None
        self.task_filter = ""
        self.task_offset = 0
        self.task_total = 0
        self._log_cursor = 0
        self._tasks_stale_since: float | None = None
        self._task_rows: list[tuple[str, ...]] = []
        self._link_lost = False
        self._dirty: set[str] = set()

    def compose(self) -> ComposeResult:
        """Lay out the jobs table and the chosen job's details."""
        yield DataTable(id="jobs-table", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="job-progress-row"):
            yield Label("No job chosen", id="job-title")
            yield Label(progress_text(0.0, _BAR_WIDTH), id="job-progress")
        with Horizontal(id="job-details"):
            with Vertical(id="job-tasks-box"):
                yield Label("Tasks", id="job-tasks-label", classes="section-title")
                yield DataTable(id="job-tasks", cursor_type="row")
            with Vertical(id="job-log-box"):
                yield Label("Log", classes="section-title")
                yield Log(id="job-log", max_lines=2000, auto_scroll=True)

    def on_mount(self) -> None:
        """Set the columns and load the jobs."""
        jobs = self.query_one("#jobs-table", DataTable)
        # Fixed widths: no re-measuring of every cell at each update (and stable pictures).
        for title, key, width in (
            ("Job", "job", 5),
            ("Action", "action", 14),
            ("State", "state", 9),
            ("Progress", "progress", 15),
            ("Tasks", "tasks", 11),
            ("Submitted", "submitted", 14),
            ("Profile", "profile", 16),
        ):
            jobs.add_column(title, key=key, width=width)
        tasks = self.query_one("#job-tasks", DataTable)
        for title, width in (
            ("Task", 10),
            ("Stage", 5),
            ("State", 10),
            ("Try", 3),
            ("Host", 12),
            ("Reason", 40),
        ):
            tasks.add_column(title, key=title.lower(), width=width)
        app: Any = self.app
        app.load_soon(self, self.reload)
        # Progress is drawn at most once a tick (every 2 s over ssh): a busy job
        # sends many events, and every repaint is bytes on a slow link.
        tick = 2.0 if getattr(app, "ssh_mode", False) else 1.0
        self.set_interval(tick, self._flush)

    def focus_default(self) -> None:
        """Focus the jobs table."""
        self.query_one("#jobs-table", DataTable).focus()

    # -- loading -----------------------------------------------------------------------------------

    def reload(self) -> None:
        """Fetch the job list again."""
        run_later(self, self._load_jobs, group="jobs-load", exclusive=True)

    async def _load_jobs(self) -> None:
        from cistemd.client import ClientError

        app: Any = self.app
        try:
            jobs, _total = await app.call("jobs_page", project=app.project_path, limit=200)
        except ClientError as exc:
            if app.project_path:
                app.report_error(exc, title="Jobs")
            return
        self.jobs = {str(job["job_id"]): job for job in jobs}
        table = self.query_one("#jobs-table", DataTable)
        cursor = table.cursor_row
        table.clear()
        for job in jobs:
            table.add_row(*self._cells(job), key=str(job["job_id"]))
        if jobs:
            table.move_cursor(row=min(max(cursor, 0), len(jobs) - 1))
            if self.selected is None or self.selected not in self.jobs:
                self.show_job(str(jobs[0]["job_id"]))
            else:
                self._show_title()

    @staticmethod
    def _cells(job: dict[str, Any]) -> list[str]:
        return [
            str(job["job_id"]),
            str(job.get("action", "")),
            str(job.get("state", "")),
            progress_text(float(job.get("progress", 0.0))),
            task_summary(job.get("tasks", {}) or {}),
            str(job.get("submitted", ""))[5:19].replace("T", " "),
            str(job.get("profile", "")),
        ]

    def show_job(self, job_id: str) -> None:
        """Show one job's progress, tasks and log."""
        if job_id != self.selected:
            self.selected = job_id
            self.task_offset = 0
            self._task_rows = []
            self._log_cursor = 0
            self.query_one("#job-log", Log).clear()
            run_later(self, partial(self._load_log, job_id), group="jobs-log", exclusive=True)
        self._show_title()
        run_later(self, partial(self._load_tasks, job_id), group="jobs-tasks", exclusive=True)

    def _show_title(self) -> None:
        job = self.jobs.get(self.selected or "")
        title = self.query_one("#job-title", Label)
        bar = self.query_one("#job-progress", Label)
        if job is None:
            title.update("No job chosen")
            bar.update(progress_text(0.0, _BAR_WIDTH))
            return
        title.update(f"Job {job['job_id']} {job.get('action', '')}: {job.get('state', '')}")
        bar.update(progress_text(float(job.get("progress", 0.0)), _BAR_WIDTH))

    async def _load_tasks(self, job_id: str) -> None:
        from cistemd.client import ClientError

        app: Any = self.app
        states = [self.task_filter] if self.task_filter else []
        try:
            tasks, total = await app.call(
                "job_tasks_page", job_id, states=states, limit=TASK_PAGE, offset=self.task_offset
            )
        except ClientError as exc:
            app.report_error(exc, title=f"Tasks of job {job_id}")
            return
        if job_id != self.selected:
            return
        self._tasks_stale_since = None
        self.task_total = int(total)
        rows: list[tuple[str, ...]] = [
            (
                str(task.get("task_id")),
                str(task.get("key", "")),
                str(task.get("stage", "")),
                str(task.get("state", "")),
                str(task.get("attempt", "")),
                str(task.get("host", "")),
                str(task.get("reason", ""))[:200],
            )
            for task in tasks
        ]
        table = self.query_one("#job-tasks", DataTable)
        if rows != self._task_rows:
            # Repaint only a page that changed: over ssh every repaint costs bytes.
            self._task_rows = rows
            cursor = table.cursor_row
            table.clear()
            for task_id, *cells in rows:
                table.add_row(*cells, key=task_id)
            if rows:
                table.move_cursor(row=min(max(cursor, 0), len(rows) - 1))
        shown = f"{self.task_offset + 1 if tasks else 0}-{self.task_offset + len(tasks)}"
        which = self.task_filter or "all"
        self.query_one("#job-tasks-label", Label).update(
            f"Tasks ({which}, t): {shown} of {self.task_total:,} (n/p)"
        )

    async def _load_log(self, job_id: str) -> None:
        from cistemd.client import ClientError

        app: Any = self.app
        lines: list[str] = []
        cursor = 0
        try:
            while True:
                page = await app.call("job_log", job_id, since_event_id=cursor, limit=1000)
                events = page.get("events", [])
                # Progress is drawn by the bars; the log tells the story of states and tasks.
                lines += [format_event(e) for e in events if _logged(e)]
                cursor = int(page.get("last_event_id", cursor))
                if not page.get("more") or not events or len(lines) > 5000:
                    break
        except ClientError as exc:
            app.report_error(exc, title=f"Log of job {job_id}")
            return
        if job_id != self.selected:
            return
        self._log_cursor = max(self._log_cursor, cursor)
        log = self.query_one("#job-log", Log)
        log.clear()
        log.write_lines(lines[-2000:])

    def _reload_tasks(self) -> None:
        if self.selected:
            run_later(
                self, partial(self._load_tasks, self.selected), group="jobs-tasks", exclusive=True
            )

    def _flush(self) -> None:
        """Draw the progress gathered since the last tick; reload a stale task page."""
        if self._dirty:
            table = self.query_one("#jobs-table", DataTable)
            for job_id in self._dirty:
                job = self.jobs.get(job_id)
                if job is not None:
                    _set_cell(table, job_id, "progress", progress_text(job["progress"]))
                    _set_cell(table, job_id, "tasks", task_summary(job.get("tasks", {}) or {}))
            if self.selected in self._dirty:
                self._show_title()
            self._dirty.clear()
        # Task rows change with every task; reload the visible page at most once a
        # tick while events come, instead of once per event.
        if self._tasks_stale_since is not None and self.selected:
            self._tasks_stale_since = None
            self._reload_tasks()

    # -- events ------------------------------------------------------------------------------------

    def on_project_changed(self, message: ProjectChanged) -> None:
        """Show the new project's jobs."""
        self.selected = None
        self.query_one("#job-log", Log).clear()
        self.reload()

    def on_daemon_status(self, message: DaemonStatus) -> None:
        """Reload after the daemon came back."""
        if message.connected and self._link_lost:
            self.reload()
        self._link_lost = not message.connected

    def on_daemon_event(self, message: DaemonEvent) -> None:
        """Apply a live event to the table, the chosen job's details and its log."""
        event = message.event
        job_id = message.job_id
        payload = event.get("payload", {}) or {}
        job = self.jobs.get(job_id)
        if job is None:
            if message.kind == "state":
                self.reload()  # a new job (maybe from another client)
            return
        table = self.query_one("#jobs-table", DataTable)
        if message.kind == "state":
            job["state"] = payload.get("state", job.get("state"))
            if payload.get("tasks"):
                job["tasks"] = dict(payload["tasks"])
            if job["state"] in _TERMINAL and job.get("tasks"):
                job["progress"] = 1.0 if job["state"] == "completed" else job.get("progress", 0)
            _set_cell(table, job_id, "state", str(job["state"]))
            _set_cell(table, job_id, "tasks", task_summary(job.get("tasks", {}) or {}))
            _set_cell(table, job_id, "progress", progress_text(float(job.get("progress", 0))))
        elif message.kind == "progress" and "done" in payload:
            total = int(payload.get("total", 0)) or 1
            job["progress"] = float(payload.get("fraction", int(payload["done"]) / total))
            if payload.get("tasks"):
                job["tasks"] = dict(payload["tasks"])
            self._dirty.add(job_id)  # drawn at the next tick
        if job_id == self.selected:
            if message.kind == "state":
                self._show_title()
            if message.kind in ("state", "log") or (
                message.kind == "progress" and "done" in payload
            ):
                self._tasks_stale_since = self._tasks_stale_since or time.monotonic()
            if _logged(event) and int(event.get("event_id", 0)) > self._log_cursor:
                self._log_cursor = int(event.get("event_id", 0))
                self.query_one("#job-log", Log).write_line(format_event(event))

    @on(DataTable.RowHighlighted, "#jobs-table")
    @on(DataTable.RowSelected, "#jobs-table")
    def _job_chosen(self, event: DataTable.RowHighlighted | DataTable.RowSelected) -> None:
        if event.row_key.value and event.row_key.value != self.selected:
            self.show_job(str(event.row_key.value))

    # -- actions -----------------------------------------------------------------------------------

    def action_cancel_job(self) -> None:
        """Cancel the chosen job (after a yes)."""
        from cistem_tui.dialogs.prompt import ConfirmPrompt

        job = self.jobs.get(self.selected or "")
        if job is None:
            return
        if job.get("state") in _TERMINAL:
            self.app.notify(f"job {job['job_id']} has already ended", severity="warning")
            return
        job_id = str(job["job_id"])

        async def cancel(yes: bool | None) -> None:
            from cistemd.client import ClientError

            if not yes:
                return
            app: Any = self.app
            try:
                record = await app.call("cancel", job_id)
            except ClientError as exc:
                app.report_error(exc, title=f"Cancel job {job_id}")
                return
            self.jobs[job_id] = record
            table = self.query_one("#jobs-table", DataTable)
            for key, value in zip(
                ("job", "action", "state", "progress", "tasks", "submitted", "profile"),
                self._cells(record),
                strict=True,
            ):
                _set_cell(table, job_id, key, value)
            self._show_title()
            app.notify(f"job {job_id}: {record.get('state')}")

        self.app.push_screen(
            ConfirmPrompt(f"Cancel job {job_id} ({job.get('action')})?"),
            in_worker(self, cancel),
        )

    def action_task_filter(self) -> None:
        """Show the next task state only (all → running → queued → failed → completed)."""
        index = _TASK_FILTERS.index(self.task_filter)
        self.task_filter = _TASK_FILTERS[(index + 1) % len(_TASK_FILTERS)]
        self.task_offset = 0
        if self.selected:
            self._reload_tasks()

    def action_task_page(self, step: int) -> None:
        """Show the next or previous page of tasks."""
        new = self.task_offset + step * TASK_PAGE
        if self.selected and 0 <= new < max(self.task_total, 1):
            self.task_offset = new
            self._reload_tasks()

    def action_focus_log(self) -> None:
        """Focus the log (scroll it with the arrows)."""
        self.query_one("#job-log", Log).focus()


def _logged(event: dict[str, Any]) -> bool:
    """Whether an event belongs in the log (progress is shown by the bars, not logged)."""
    return event.get("kind") != "progress"


def _set_cell(table: DataTable[Any], row: str, column: str, value: str) -> None:
    """Update a cell only when its text changes (each repaint is bytes over ssh)."""
    try:
        if table.get_cell(row, column) == value:
            return
    except Exception:  # the row went away meanwhile
        return
    table.update_cell(row, column, value)
