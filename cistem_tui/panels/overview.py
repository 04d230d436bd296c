"""The Overview panel: create or open a project, recent projects, the project's summary.

As cisTEM's "Overview" page: the recent projects of this ``$CISTEM_HOME`` (the
list the daemon keeps), a path to open or create, and what the open project
holds (asset counts, jobs by state) next to the daemon's status.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Horizontal, Vertical
from textual.widgets import Button, DataTable, Input, Label, Static

from cistem_tui.messages import DaemonEvent, DaemonStatus, ProjectChanged
from cistem_tui.panels import run_later

__all__ = ["OverviewPanel", "format_summary"]

_COUNT_LABELS = (
    ("movies", "Movies"),
    ("images", "Images"),
    ("images_with_ctf", "  with CTF"),
    ("particle_positions", "Particle positions"),
    ("volumes", "3D volumes"),
    ("refinement_packages", "Refinement packages"),
    ("refinements", "Refinements"),
    ("classifications", "2D classifications"),
    ("ab_initio_runs", "Ab-initio runs"),
    ("movie_alignments", "Movie alignments"),
    ("ctf_estimations", "CTF estimations"),
    ("particle_pickings", "Particle pickings"),
)


def format_summary(info: dict[str, Any], status: dict[str, Any] | None) -> str:
    """Return the summary text of a project and the daemon.

    Parameters
    ----------
    info
        ``Client.project_info`` reply (``{"path", "name", "counts"}``); empty: none open.
    status
        ``Client.status`` reply, or None when unknown.

    Returns
    -------
    str
        Lines for the summary box.
    """
    lines: list[str] = []
    if info:
        counts = info.get("counts", {})
        lines += [f"Project  {info.get('name', '')}", f"         {info.get('path', '')}", ""]
        for key, label in _COUNT_LABELS:
            if key in counts:
                lines.append(f"{label:<22}{int(counts[key]):>10,}")
        by_state = {k.removeprefix("jobs_"): v for k, v in counts.items() if k.startswith("jobs_")}
        if by_state:
            lines.append("Jobs    " + ", ".join(f"{k} {v}" for k, v in sorted(by_state.items())))
    else:
        lines.append("No project open: type a directory above and Open or Create.")
    lines.append("")
    if status:
        jobs = ", ".join(f"{k} {v}" for k, v in sorted(status.get("jobs", {}).items()))
        lines += [
            f"cistemd {status.get('version', '?')}  pid {status.get('pid', '?')}  "
            f"up {float(status.get('uptime_s', 0)):.0f} s",
            f"workers {status.get('workers', 0)}   jobs {jobs or 'none'}",
        ]
    else:
        lines.append("cistemd: not connected")
    return "\n".join(lines)


class OverviewPanel(Container):
    """Open or create a project; see recent ones and the open one's summary."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("o", "open_selected", "Open recent", show=False),
        Binding("ctrl+o", "focus_path", "Path", show=False),
    ]

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._recent: list[dict[str, Any]] = []
        self._status: dict[str, Any] | None = None

    def compose(self) -> ComposeResult:
        """Lay out the path row, the recent projects and the summary."""
        with Horizontal(id="overview-path-row", classes="form-row"):
            yield Label("Project directory", classes="field-label")
            yield Input(placeholder="/path/to/project", id="project-path", compact=True)
            yield Input(placeholder="name (new)", id="project-name", compact=True)
            yield Button("Open", id="open-project", variant="primary", compact=True)
            yield Button("Create", id="create-project", compact=True)
        with Horizontal(id="overview-body"):
            with Vertical(id="recent-box"):
                yield Label(
                    "Recent projects (Enter opens; Ctrl+O: type a path)", classes="section-title"
                )
                yield DataTable(id="recent-projects", cursor_type="row", zebra_stripes=True)
            yield Static("", id="project-summary")

    def on_mount(self) -> None:
        """Fill the recent projects and the summary."""
        table = self.query_one("#recent-projects", DataTable)
        for title, width in (("Project", 16), ("Last opened", 16), ("Directory", 60)):
            table.add_column(title, width=width)
        hint = getattr(self.app, "initial_path_hint", None)
        if hint:
            self.query_one("#project-path", Input).value = hint
        self.refresh_recent()
        app: Any = self.app
        app.load_soon(
            self, partial(run_later, self, self.refresh_summary, group="overview", exclusive=True)
        )

    def focus_default(self) -> None:
        """Focus the recent projects (Ctrl+O goes to the path box)."""
        self.query_one("#recent-projects", DataTable).focus()

    def refresh_recent(self) -> None:
        """Re-read the projects this home's daemon knows."""
        from cistem_tui.connection import recent_projects

        home = getattr(self.app, "home", None)
        try:
            self._recent = recent_projects(home)
        except OSError:
            self._recent = []
        table = self.query_one("#recent-projects", DataTable)
        table.clear()
        for entry in self._recent:
            path = entry["path"]
            mark = "" if entry.get("exists", True) else " (missing)"
            table.add_row(
                os.path.basename(path) + mark,
                str(entry.get("last_opened", ""))[:16].replace("T", " "),
                path,
                key=path,
            )

    async def refresh_summary(self) -> None:
        """Ask the daemon for the project's counts and its own status."""
        from cistemd.client import ClientError

        app: Any = self.app
        info: dict[str, Any] = {}
        try:
            self._status = await app.call("status")
            if app.project_path:
                info = await app.call("project_info", app.project_path)
        except ClientError:
            self._status = None
        self.query_one("#project-summary", Static).update(format_summary(info, self._status))

    # -- events -----------------------------------------------------------------------------------

    def on_project_changed(self, message: ProjectChanged) -> None:
        """Show the newly open project."""
        if message.path:
            self.query_one("#project-path", Input).value = message.path
        self.refresh_recent()
        app: Any = self.app
        app.load_soon(
            self, partial(run_later, self, self.refresh_summary, group="overview", exclusive=True)
        )

    def on_daemon_event(self, message: DaemonEvent) -> None:
        """Recount when a job changes state."""
        if message.kind == "state":
            run_later(self, self.refresh_summary, group="overview", exclusive=True)

    def on_daemon_status(self, message: DaemonStatus) -> None:
        """Refresh when the daemon comes or goes."""
        if message.connected != (self._status is not None):
            run_later(self, self.refresh_summary, group="overview", exclusive=True)

    @on(Button.Pressed, "#open-project")
    @on(Input.Submitted, "#project-path")
    def _open_typed(self) -> None:
        path = self.query_one("#project-path", Input).value.strip()
        if not path:
            self.app.notify("type a project directory first", severity="warning")
            return
        run_later(self, partial(self._open, path, create=False))

    @on(Button.Pressed, "#create-project")
    @on(Input.Submitted, "#project-name")
    def _create_typed(self) -> None:
        path = self.query_one("#project-path", Input).value.strip()
        name = self.query_one("#project-name", Input).value.strip()
        if not path:
            self.app.notify("type the new project's directory first", severity="warning")
            return
        run_later(self, partial(self._open, path, create=True, name=name))

    @on(DataTable.RowSelected, "#recent-projects")
    def _open_recent(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            run_later(self, partial(self._open, str(event.row_key.value), create=False))

    def action_open_selected(self) -> None:
        """Open the highlighted recent project."""
        table = self.query_one("#recent-projects", DataTable)
        if table.row_count:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
            if key.value:
                run_later(self, partial(self._open, str(key.value), create=False))

    def action_focus_path(self) -> None:
        """Focus the project directory box."""
        self.query_one("#project-path", Input).focus()

    async def _open(self, path: str, *, create: bool, name: str = "") -> None:
        app: Any = self.app
        if await app.open_project(path, create=create, name=name):
            app.show_panel("assets")
