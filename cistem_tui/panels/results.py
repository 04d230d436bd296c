"""The Results panel: what Align Movies, Find CTF, Find Particles and Generate 3D made.

Choose a kind of result (and optionally one job); the table lists its items,
and the selected item is drawn on the right:

* **Align Movies** -- alignments (frames, total drift); the aligned sum and the
  drift trajectory plot.
* **Find CTF** -- estimates (defocus, astigmatism, score, fit resolution),
  sortable (select a column header, or ``s``/``r``); the diagnostic spectrum with
  the CTF zeros marked, and the 1-D fit plot. A filter such as
  ``fit_resolution<5 score>0.05`` narrows the table, and "Make group" (``g``)
  puts the selected images into a new image group.
* **Find Particles** -- images with picks; the micrograph with a circle per pick.
* **3D Volumes** (Generate 3D, Sharpen Map) -- central sections over
  projections (xy | xz | yz), and the FSC plot.

Everything comes from the daemon's read-only queries (``Client.results``,
``Client.image_preview``); the panel never opens the database or reads files.
Keys: ``v`` picture/plot/both, ``i`` the other picture (micrograph, spectrum,
central section), ``z`` hide the table, ``g`` make group, ``s`` next sort
column, ``r`` reverse the sort.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Horizontal, Vertical
from textual.widgets import Button, DataTable, Input, Label, Select

from cistem_tui.forms import SafeSelect
from cistem_tui.messages import DaemonEvent, ProjectChanged
from cistem_tui.widgets.picture import Circle, GreyPicture, Mark, PictureView, picture_point
from cistem_tui.widgets.plots import CtfFitPlot, DriftPlot, FscPlot, ResultPlot

__all__ = ["KINDS", "ResultsPanel", "parse_filters"]

logger = logging.getLogger(__name__)

KINDS: tuple[tuple[str, str], ...] = (
    ("ctf", "Find CTF"),
    ("alignments", "Align Movies"),
    ("picks", "Find Particles"),
    ("volumes", "3D Volumes"),
)
"""``(id, title)`` of the result kinds."""

_ACTION_WORDS: dict[str, tuple[str, ...]] = {
    "ctf": ("ctf",),
    "alignments": ("align", "unblur"),
    "picks": ("particle", "pick"),
    "volumes": ("generate", "3d", "reconstruct", "sharpen", "refine"),
}
_CTF_SORTS = ("image_asset_id", "defocus", "astigmatism", "score", "fit_resolution")
_ROWS_SHOWN = 2000
_FILTER = re.compile(r"^([a-z_0-9]+)\s*(<=|>=|<|>|=)\s*(-?[0-9.eE+-]+)$")


def parse_filters(text: str) -> dict[str, list[float | None]]:
    """Parse ``fit_resolution<5 score>0.05`` into ``{column: [min, max]}``.

    Parameters
    ----------
    text
        Space-separated ``column<value``, ``column>value`` (``<=``, ``>=`` the
        same) or ``column=value`` terms.

    Returns
    -------
    dict
        Bounds per column (``None`` = open), as the ``ctf_table`` query takes them.

    Raises
    ------
    ValueError
        A term that is not of that form.
    """
    filters: dict[str, list[float | None]] = {}
    for term in text.replace(",", " ").split():
        match = _FILTER.match(term)
        if match is None:
            raise ValueError(f"cannot read {term!r}: write e.g. fit_resolution<5")
        column, operator, number = match.groups()
        value = float(number)
        bounds = filters.setdefault(column, [None, None])
        if operator in ("<", "<="):
            bounds[1] = value
        elif operator in (">", ">="):
            bounds[0] = value
        else:
            bounds[0] = bounds[1] = value
    return filters


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


class ResultsPanel(Container):
    """Results of Align Movies, Find CTF, Find Particles, Generate 3D and Sharpen Map."""

    DEFAULT_CSS = """
    ResultsPanel { layout: vertical; }
    ResultsPanel #results-top { height: 1; }
    ResultsPanel #result-kind { width: 24; }
    ResultsPanel #result-job { width: 1fr; }
    ResultsPanel #ctf-tools { height: 1; display: none; }
    ResultsPanel #ctf-tools.shown { display: block; }
    ResultsPanel #ctf-filter { width: 1fr; }
    ResultsPanel #make-group { min-width: 14; }
    ResultsPanel #results-body { height: 1fr; }
    ResultsPanel #result-table { width: 1fr; }
    ResultsPanel #result-view { width: 1fr; }
    ResultsPanel #result-view ResultPlot { display: none; }
    ResultsPanel #result-view ResultPlot.active { display: block; }
    ResultsPanel #results-body.wide #result-table { display: none; }
    ResultsPanel #result-view.picture-only ResultPlot.active { display: none; }
    ResultsPanel #result-view.plot-only PictureView { display: none; }
    ResultsPanel #result-status { height: 1; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("v", "cycle_view", "Picture/plot"),
        Binding("z", "toggle_table", "Table"),
        Binding("g", "make_group", "Make group", show=False),
        Binding("s", "next_sort", "Sort", show=False),
        Binding("r", "reverse_sort", "Reverse", show=False),
        Binding("i", "other_picture", "Other picture", show=False),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind = "ctf"
        self.job_id = 0
        self.rows: list[dict[str, Any]] = []
        self.total = 0
        self.sort = "image_asset_id"
        self.descending = False
        self.filters: dict[str, list[float | None]] = {}
        self.selected: dict[str, Any] | None = None
        self.alternate_picture = False
        self._refresh_pending = False

    # -- layout ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        """Lay out the kind and job choice, the CTF tools, the table and the view."""
        with Horizontal(id="results-top"):
            yield SafeSelect(
                [(title, kind) for kind, title in KINDS], id="result-kind", value="ctf",
                allow_blank=False, compact=True,
            )
            yield SafeSelect(
                [("All (current)", 0)], id="result-job", value=0, allow_blank=False, compact=True
            )
        with Horizontal(id="ctf-tools", classes="shown"):
            yield Input(
                placeholder="filter, e.g. fit_resolution<5 score>0.05", id="ctf-filter",
                compact=True,
            )
            yield Button("Make group", id="make-group", compact=True)
        with Horizontal(id="results-body"):
            yield DataTable(id="result-table", cursor_type="row", zebra_stripes=True)
            with Vertical(id="result-view"):
                yield PictureView(id="result-picture", ssh_mode=self._ssh_mode)
                yield DriftPlot(id="plot-alignments", ssh_mode=self._ssh_mode)
                yield CtfFitPlot(id="plot-ctf", ssh_mode=self._ssh_mode, classes="active")
                yield FscPlot(id="plot-volumes", ssh_mode=self._ssh_mode)
        yield Label("", id="result-status")

    @property
    def _ssh_mode(self) -> bool:
        try:
            return bool(getattr(self.app, "ssh_mode", False))
        except Exception:
            return False

    @property
    def _project(self) -> str | None:
        return getattr(self.app, "project_path", None)

    def on_mount(self) -> None:
        """Load the results of the open project, if any."""
        if self._project:
            self.reload()

    def focus_default(self) -> None:
        """Focus the table (the app calls this when the panel is shown)."""
        self.query_one("#result-table", DataTable).focus()

    def _status(self, text: str) -> None:
        if self.is_attached and self.query("#result-status"):
            self.query_one("#result-status", Label).update(text)

    # -- choosing ----------------------------------------------------------------------------

    async def on_select_changed(self, event: Select.Changed) -> None:
        """Switch kind or job."""
        event.stop()
        if event.select.id == "result-kind" and isinstance(event.value, str):
            if event.value == self.kind:
                return
            self.kind = event.value
            self.job_id = 0
            self.sort, self.descending = "image_asset_id", False
            self.query_one("#ctf-tools").set_class(self.kind == "ctf", "shown")
            for plot in self.query(ResultPlot):
                plot.set_class(plot.id == f"plot-{self.kind}", "active")
            self.reload()
        elif event.select.id == "result-job" and isinstance(event.value, int):
            if event.value != self.job_id:
                self.job_id = event.value
                self.reload(jobs=False)

    def on_project_changed(self, message: ProjectChanged) -> None:
        """Show the new project's results."""
        self.reload()

    def on_daemon_event(self, message: DaemonEvent) -> None:
        """Refresh when a job ends (its results are recorded by then)."""
        if message.kind != "state":
            return
        state = str(message.event.get("payload", {}).get("state", ""))
        if state in ("completed", "failed", "cancelled") and self._project:
            self.reload()

    # -- loading -----------------------------------------------------------------------------

    @work(exclusive=True, group="results-load")
    async def reload(self, jobs: bool = True) -> None:
        """Load the job list and the table for the current kind."""
        project = self._project
        if not self.query("#result-table"):
            return  # not composed yet: on_mount loads
        table = self.query_one("#result-table", DataTable)
        if project is None:
            table.clear(columns=True)
            self._status("Open a project to see results.")
            return
        call = self.app.call  # type: ignore[attr-defined]
        try:
            if jobs:
                await self._load_jobs(project)
            if self.kind == "ctf":
                parameters: dict[str, Any] = {
                    "job_id": self.job_id,
                    "sort": self.sort,
                    "descending": self.descending,
                    "filters": self.filters,
                }
                rows, total, _ = await call(
                    "results", project, "ctf_table", parameters, limit=_ROWS_SHOWN
                )
            elif self.kind == "alignments":
                rows, total, _ = await call(
                    "results", project, "alignments", {"job_id": self.job_id}, limit=_ROWS_SHOWN
                )
            elif self.kind == "picks":
                rows, total, _ = await call(
                    "results", project, "picked_images", {"job_id": self.job_id},
                    limit=_ROWS_SHOWN,
                )
            else:
                rows, total = await call("assets", project, "volumes", limit=_ROWS_SHOWN)
                if self.job_id:
                    rows = [r for r in rows if int(r.get("reconstruction_job_id") or 0)
                            == self.job_id]
                    total = len(rows)
        except Exception as exc:
            self._status(f"cannot load results: {exc}")
            return
        if not self.query("#result-table"):
            return  # removed meanwhile (the app is closing)
        self.rows, self.total = list(rows), int(total)
        self._fill_table()
        shown = len(self.rows)
        more = f" (first {shown})" if shown < self.total else ""
        self._status(f"{self.total} result(s){more}" if self.total else "no results yet")
        if self.rows:
            self.show_item(self.rows[0])
        else:
            self.query_one("#result-picture", PictureView).clear("nothing to show")
            for plot in self.query(ResultPlot):
                plot.clear_plot()

    async def _load_jobs(self, project: str) -> None:
        words = _ACTION_WORDS[self.kind]
        try:
            jobs, _ = await self.app.call(  # type: ignore[attr-defined]
                "jobs_page", project=project, limit=200
            )
        except Exception:
            jobs = []
        mine = [j for j in jobs if any(w in str(j.get("action", "")).lower() for w in words)]
        options = [("All (current)", 0)] + [
            (f"job {j['job_id']} {j.get('action', '')} {j.get('state', '')}", int(j["job_id"]))
            for j in mine
            if str(j.get("job_id", "")).isdigit()
        ]
        select = self.query_one("#result-job", Select)
        with self.prevent(Select.Changed):
            select.set_options(options)
            values = [v for _, v in options]
            select.value = self.job_id if self.job_id in values else 0
        if self.job_id not in [v for _, v in options]:
            self.job_id = 0

    def _columns(self) -> list[tuple[str, str]]:
        if self.kind == "ctf":
            return [
                ("image_asset_id", "Image"),
                ("defocus", "Defocus Å"),
                ("astigmatism", "Astig Å"),
                ("score", "Score"),
                ("fit_resolution", "Fit Å"),
                ("name", "Name"),
            ]
        if self.kind == "alignments":
            return [
                ("movie_asset_id", "Movie"),
                ("frames", "Frames"),
                ("total_drift", "Drift Å"),
                ("max_shift", "Max Å"),
                ("name", "Name"),
            ]
        if self.kind == "picks":
            return [("image_asset_id", "Image"), ("picks", "Picks"), ("name", "Name")]
        return [("volume_asset_id", "Volume"), ("pixel_size", "Å/px"), ("x_size", "Box"),
                ("name", "Name")]

    def _fill_table(self) -> None:
        table = self.query_one("#result-table", DataTable)
        table.clear(columns=True)
        for key, title in self._columns():
            marker = ""
            if self.kind == "ctf" and key == self.sort:
                marker = " ▼" if self.descending else " ▲"
            table.add_column(title + marker, key=key)
        digits = {"defocus": 0, "astigmatism": 0, "total_drift": 1, "max_shift": 1, "score": 3}
        for index, row in enumerate(self.rows):
            table.add_row(
                *[_fmt(row.get(key), digits.get(key, 2)) for key, _ in self._columns()],
                key=str(index),
            )

    # -- the selected item -------------------------------------------------------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """Show the highlighted row's picture and plot."""
        event.stop()
        key = event.row_key.value
        if key is not None and key.isdigit() and int(key) < len(self.rows):
            row = self.rows[int(key)]
            if row is not self.selected:
                self.show_item(row)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        """Sort the CTF table by the selected column (again: reverse)."""
        event.stop()
        column = str(event.column_key.value)
        if self.kind != "ctf" or column not in _CTF_SORTS:
            return
        if column == self.sort:
            self.descending = not self.descending
        else:
            self.sort, self.descending = column, False
        self.reload(jobs=False)

    def action_next_sort(self) -> None:
        """Sort the CTF table by the next column."""
        if self.kind != "ctf":
            return
        index = _CTF_SORTS.index(self.sort) if self.sort in _CTF_SORTS else -1
        self.sort, self.descending = _CTF_SORTS[(index + 1) % len(_CTF_SORTS)], False
        self.reload(jobs=False)

    def action_reverse_sort(self) -> None:
        """Reverse the CTF table's order."""
        if self.kind == "ctf":
            self.descending = not self.descending
            self.reload(jobs=False)

    def action_cycle_view(self) -> None:
        """Show both picture and plot, the picture only, or the plot only."""
        view = self.query_one("#result-view")
        if view.has_class("picture-only"):
            view.remove_class("picture-only")
            view.add_class("plot-only")
        elif view.has_class("plot-only"):
            view.remove_class("plot-only")
        else:
            view.add_class("picture-only")

    def action_other_picture(self) -> None:
        """Switch to the other picture of a result and back.

        Find CTF: diagnostic or micrograph; Align Movies: aligned sum or its
        amplitude spectrum; volumes: orthogonal views or the central section.
        """
        self.alternate_picture = not self.alternate_picture
        if self.selected is not None:
            self.show_item(self.selected)

    def action_toggle_table(self) -> None:
        """Hide or show the table (the picture gets the whole width)."""
        self.query_one("#results-body").toggle_class("wide")

    @work(exclusive=True, group="results-item")
    async def show_item(self, row: Mapping[str, Any]) -> None:
        """Fetch and draw the picture and plot of one row."""
        self.selected = dict(row)
        project = self._project
        if project is None or not self.query("#result-picture"):
            return
        view = self.query_one("#result-picture", PictureView)
        if not view.is_attached:
            return
        size = 256 if self._ssh_mode else 384
        call = self.app.call  # type: ignore[attr-defined]
        try:
            if self.kind == "ctf":
                estimation = int(row["ctf_estimation_id"])
                _, _, data = await call("results", project, "ctf_fit",
                                        {"ctf_estimation_id": estimation})
                self.query_one(CtfFitPlot).show_fit(data, title=f"CTF fit, image "
                                                    f"{row.get('image_asset_id')}")
                if self.alternate_picture:  # the micrograph the CTF was fitted on
                    reply = await call("image_preview", project, "image",
                                       asset_id=int(row["image_asset_id"]), max_size=size)
                    view.show(GreyPicture.from_reply(reply))
                else:
                    reply = await call("image_preview", project, "ctf_estimate",
                                       asset_id=estimation, max_size=size)
                    view.show(GreyPicture.from_reply(reply), marks=_zero_marks(reply, data))
            elif self.kind == "alignments":
                shifts, _, data = await call("results", project, "alignment_shifts",
                                             {"alignment_id": int(row["alignment_id"])})
                self.query_one(DriftPlot).show_shifts(
                    shifts, title=f"Drift, movie {row.get('movie_asset_id')}"
                )
                image = int(data.get("image_asset_id") or 0)
                if image:
                    which = "spectrum" if self.alternate_picture else "scaled"
                    reply = await call("image_preview", project, "image", asset_id=image,
                                       which=which, max_size=size)
                    view.show(GreyPicture.from_reply(reply))
                else:
                    view.clear("no aligned sum recorded")
            elif self.kind == "picks":
                image = int(row["image_asset_id"])
                picks, _, data = await call("results", project, "picks",
                                            {"image_asset_id": image, "job_id": self.job_id})
                reply = await call("image_preview", project, "image", asset_id=image,
                                   max_size=size)
                view.show(GreyPicture.from_reply(reply), circles=_pick_circles(reply, picks, data))
            else:
                volume = int(row["volume_asset_id"])
                fsc, _, data = await call("results", project, "fsc", {"volume_asset_id": volume})
                crossing = data.get("resolution_fsc_0143")
                title = f"FSC, volume {volume}" + (
                    f" ({crossing:.1f} Å at 0.143)" if isinstance(crossing, float) else ""
                )
                self.query_one(FscPlot).show_fsc(fsc, title=title)
                which = "image" if self.alternate_picture else "volume_orth"
                reply = await call("image_preview", project, "volume", asset_id=volume,
                                   which=which, max_size=size)
                view.show(GreyPicture.from_reply(reply))
        except Exception as exc:
            view.clear(f"{exc}")
            self._status(f"cannot show this result: {exc}")

    # -- groups from a selection -------------------------------------------------------------

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Apply the CTF filter."""
        event.stop()
        if event.input.id != "ctf-filter":
            return
        try:
            self.filters = parse_filters(event.value)
        except ValueError as exc:
            self._status(str(exc))
            return
        self.reload(jobs=False)

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        """Make group."""
        event.stop()
        if event.button.id == "make-group":
            await self.action_make_group()

    async def action_make_group(self) -> None:
        """Put the images the CTF filter selects into a new image group."""
        project = self._project
        if project is None or self.kind != "ctf":
            return
        text = self.query_one("#ctf-filter", Input).value.strip()
        try:
            self.filters = parse_filters(text)
        except ValueError as exc:
            self._status(str(exc))
            return
        call = self.app.call  # type: ignore[attr-defined]
        parameters = {"job_id": self.job_id, "filters": self.filters}
        try:
            ids = await call("selected_image_ids", project, parameters)
            if not ids:
                self._status("the filter selects no images; no group made")
                return
            name = f"CTF {text}" if text else "CTF selection"
            group_id = await call("create_group", project, "image", name[:200])
            await call("edit_group", project, "image", "add", group_id=group_id, asset_ids=ids)
        except Exception as exc:
            self._status(f"cannot make the group: {exc}")
            return
        self._status(f"image group {group_id} '{name}' made with {len(ids)} image(s)")
        notify = getattr(self.app, "notify", None)
        if callable(notify):
            notify(f"group '{name}': {len(ids)} images", timeout=4)


def _zero_marks(reply: Mapping[str, Any], data: Mapping[str, Any], rings: int = 6) -> list[Mark]:
    """Return marks at the CTF zeros on a diagnostic picture (centre: the spectrum's origin)."""
    pixel_size = float(data.get("diagnostic_pixel_size_angstroms") or 0.0)
    box = int(reply.get("original_width") or 0)
    scale = float(reply.get("scale") or 0.0)
    if pixel_size <= 0 or box <= 0 or scale <= 0:
        return []
    centre_x = (box // 2) * scale
    centre_y = (int(reply.get("original_height") or box) - box // 2) * scale
    marks = []
    for azimuth, zeros in data.get("zeros_by_azimuth", []):
        angle = math.radians(float(azimuth))
        for k in list(zeros)[:rings]:
            radius = float(k) * box * pixel_size * scale
            marks.append(
                Mark(centre_x + radius * math.cos(angle), centre_y - radius * math.sin(angle))
            )
    return marks


def _pick_circles(
    reply: Mapping[str, Any], picks: list[dict[str, Any]], data: Mapping[str, Any]
) -> list[Circle]:
    """Circles at the picks (Å) on a micrograph picture."""
    pixel_size = float(reply.get("pixel_size_angstroms") or 0.0) or float(
        data.get("pixel_size") or 1.0
    )
    scale = float(reply["scale"])
    radius_angstroms = data.get("characteristic_radius")
    radius = (
        float(radius_angstroms) / pixel_size * scale
        if isinstance(radius_angstroms, int | float) and radius_angstroms > 0
        else 2.0
    )
    circles = []
    for pick in picks:
        x, y = picture_point(
            float(pick["x"]), float(pick["y"]), pixel_size_angstroms=pixel_size, scale=scale,
            original_height=int(reply["original_height"]),
        )
        circles.append(Circle(x, y, max(1.0, radius)))
    return circles
