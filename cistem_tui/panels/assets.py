"""The Assets panel: Movies, Images, Particle Positions, 3D Volumes, Refinement Packages.

As cisTEM's asset panels: the groups of the kind on the left (group 0 is
"All ..."), the assets of the chosen group on the right, and the buttons to
import, display, and make and fill groups. Tables are paged through
``Client.assets_page`` (:data:`PAGE_ROWS` rows at a time), so a project with a
million particle positions opens as fast as an empty one.

Keys: ``i`` import, ``d`` display, ``space`` mark a row (``*`` marks the page,
``u`` clears marks), ``g`` new group, ``r`` rename group, ``a`` add marked (or
the current row) to a group, ``x`` remove them from the shown group, ``D``
delete the shown group, ``f`` image group from a movie group, ``n``/``p`` next
and previous page, ``<``/``>`` previous and next kind.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Horizontal, Vertical
from textual.widgets import Button, DataTable, Label, OptionList, Tab, Tabs
from textual.widgets.option_list import Option

from cistem_tui.messages import DaemonEvent, ProjectChanged
from cistem_tui.panels import in_worker, run_later

__all__ = ["KINDS", "PAGE_ROWS", "AssetKind", "AssetsPanel", "format_cell"]

PAGE_ROWS = 100
"""Rows fetched and shown at a time."""


def _name(path: Any) -> str:
    return os.path.basename(str(path)) if path else ""


@dataclass(frozen=True)
class AssetKind:
    """One asset panel: what to list, its groups, columns (title, key, format, width), import."""

    key: str
    title: str
    list_kind: str
    group_kind: str
    import_kind: str
    id_column: str
    columns: tuple[tuple[str, str, Callable[[Any], str] | None, int], ...]
    display_column: str


KINDS: tuple[AssetKind, ...] = (
    AssetKind(
        "movies",
        "Movies",
        "movies",
        "movie",
        "movies",
        "movie_asset_id",
        (
            ("ID", "movie_asset_id", None, 7),
            ("Name", "name", None, 16),
            ("Frames", "number_of_frames", None, 6),
            ("X", "x_size", None, 5),
            ("Y", "y_size", None, 5),
            ("Pixel Å", "pixel_size", None, 7),
            ("kV", "voltage", None, 5),
            ("Cs", "spherical_aberration", None, 4),
            ("e⁻/Å²/fr", "dose_per_frame", None, 8),
            ("Gain", "gain_filename", _name, 16),
        ),
        "filename",
    ),
    AssetKind(
        "images",
        "Images",
        "images",
        "image",
        "images",
        "image_asset_id",
        (
            ("ID", "image_asset_id", None, 7),
            ("Name", "name", None, 16),
            ("X", "x_size", None, 5),
            ("Y", "y_size", None, 5),
            ("Pixel Å", "pixel_size", None, 7),
            ("kV", "voltage", None, 5),
            ("Cs", "spherical_aberration", None, 4),
            ("Movie", "parent_movie_id", None, 6),
            ("CTF", "ctf_estimation_id", None, 6),
        ),
        "filename",
    ),
    AssetKind(
        "positions",
        "Particle Positions",
        "positions",
        "particle_position",
        "positions",
        "particle_position_asset_id",
        (
            ("ID", "particle_position_asset_id", None, 8),
            ("Image", "parent_image_asset_id", None, 6),
            ("X Å", "x_position", None, 8),
            ("Y Å", "y_position", None, 8),
            ("Peak", "peak_height", None, 6),
            ("Picking", "picking_id", None, 7),
            ("Job", "pick_job_id", None, 5),
        ),
        "",
    ),
    AssetKind(
        "volumes",
        "3D Volumes",
        "volumes",
        "volume",
        "volumes",
        "volume_asset_id",
        (
            ("ID", "volume_asset_id", None, 5),
            ("Name", "name", None, 18),
            ("Pixel Å", "pixel_size", None, 7),
            ("X", "x_size", None, 5),
            ("Y", "y_size", None, 5),
            ("Z", "z_size", None, 5),
            ("Half maps", "half_map1_filename", lambda v: "yes" if v else "", 9),
        ),
        "filename",
    ),
    AssetKind(
        "packages",
        "Refinement Packages",
        "packages",
        "",
        "refinement_package",
        "refinement_package_asset_id",
        (
            ("ID", "refinement_package_asset_id", None, 4),
            ("Name", "name", None, 18),
            ("Particles", "number_of_particles", None, 10),
            ("Box", "stack_box_size", None, 5),
            ("Pixel Å", "output_pixel_size", None, 7),
            ("Sym", "symmetry", None, 4),
            ("kDa", "molecular_weight", None, 6),
            ("Size Å", "particle_size", None, 7),
            ("Classes", "number_of_classes", None, 7),
            ("Refinements", "number_of_refinements", None, 11),
        ),
        "stack_filename",
    ),
)
"""The asset panels, in cisTEM's order."""

_BY_KEY = {kind.key: kind for kind in KINDS}


def format_cell(value: Any, convert: Callable[[Any], str] | None = None) -> str:
    """Return a table cell's text (floats to 4 significant figures, None blank)."""
    if convert is not None:
        return convert(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class AssetsPanel(Container):
    """The project's assets, by kind and group, paged."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("i", "import_assets", "Import"),
        Binding("d", "display", "Display"),
        Binding("space", "mark", "Mark", show=False),
        Binding("asterisk", "mark_page", "Mark page", show=False),
        Binding("u", "clear_marks", "Unmark", show=False),
        Binding("g", "new_group", "New group"),
        Binding("r", "rename_group", "Rename", show=False),
        Binding("a", "add_to_group", "Add to group"),
        Binding("x", "remove_from_group", "Remove", show=False),
        Binding("D", "delete_group", "Delete group", show=False),
        Binding("f", "group_from_movies", "Images of movie group", show=False),
        Binding("n", "page(1)", "Next page", show=False),
        Binding("p", "page(-1)", "Previous page", show=False),
        Binding("greater_than_sign", "kind(1)", "Next kind", show=False),
        Binding("less_than_sign", "kind(-1)", "Previous kind", show=False),
    ]

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.kind: AssetKind = KINDS[0]
        self.group_id = 0
        self.groups: list[dict[str, Any]] = []
        self.page_offset = 0
        self.total = 0
        self.rows: list[dict[str, Any]] = []
        self.marked: set[int] = set()
        self.loaded = False

    def compose(self) -> ComposeResult:
        """Lay out the kind tabs, the group list, the table and the buttons."""
        yield Tabs(*[Tab(k.title, id=f"kind-{k.key}") for k in KINDS], id="asset-kinds")
        with Horizontal(id="assets-body"):
            with Vertical(id="groups-box"):
                yield Label("Groups", classes="section-title")
                yield OptionList(id="asset-groups")
            with Vertical(id="assets-table-box"):
                yield DataTable(id="assets-table", cursor_type="row", zebra_stripes=True)
                yield Label("", id="assets-page")
        with Horizontal(id="assets-buttons", classes="button-row"):
            yield Button("Import", id="assets-import", compact=True)
            yield Button("Display", id="assets-display", compact=True)
            yield Button("New group", id="assets-new-group", compact=True)
            yield Button("Add to group", id="assets-add", compact=True)
            yield Button("Remove", id="assets-remove", compact=True)

    def on_mount(self) -> None:
        """Show the first kind (empty until a project is open)."""
        self._set_columns()
        self._show_page_label()

    def focus_default(self) -> None:
        """Focus the table."""
        self.query_one("#assets-table", DataTable).focus()

    # -- loading -----------------------------------------------------------------------------------

    @property
    def _project(self) -> str | None:
        return getattr(self.app, "project_path", None)

    def _set_columns(self) -> None:
        table = self.query_one("#assets-table", DataTable)
        table.clear(columns=True)
        table.add_column("✓", key="mark", width=1)
        # Fixed widths: measuring every cell of every page costs more than drawing it.
        for title, column, _, width in self.kind.columns:
            table.add_column(title, key=column, width=max(width, len(title)))

    def reload(self, *, groups: bool = True) -> None:
        """Fetch the groups and the current page again (in a worker)."""
        run_later(self, partial(self._load, groups=groups), group="assets-load", exclusive=True)

    async def _load(self, *, groups: bool = True) -> None:
        from cistemd.client import ClientError

        project = self._project
        if not project:
            return
        app: Any = self.app
        kind = self.kind
        try:
            if groups:
                self.groups = (
                    await app.call("groups", project, kind.group_kind) if kind.group_kind else []
                )
                if not any(int(g["group_id"]) == self.group_id for g in self.groups):
                    self.group_id = 0
            rows, total = await app.call(
                "assets_page",
                project,
                kind.list_kind,
                group_id=self.group_id,
                limit=PAGE_ROWS,
                offset=self.page_offset,
            )
        except ClientError as exc:
            app.report_error(exc, title=f"Assets: {kind.title}")
            return
        if kind is not self.kind:
            return  # the user moved on meanwhile
        if self.page_offset and self.page_offset >= total:
            self.page_offset = max(0, (total - 1) // PAGE_ROWS * PAGE_ROWS)
            self.reload(groups=False)
            return
        self.rows, self.total = rows, int(total)
        if groups:
            self._fill_groups()
        self._fill_table()
        self.loaded = True

    def _fill_groups(self) -> None:
        options = self.query_one("#asset-groups", OptionList)
        options.clear_options()
        if not self.kind.group_kind:
            options.add_option(Option(f"All {self.kind.title} (no groups)", id="0"))
            options.highlighted = 0
            return
        highlighted = 0
        for index, group in enumerate(self.groups):
            options.add_option(
                Option(f"{group['name']} ({int(group['count']):,})", id=str(group["group_id"]))
            )
            if int(group["group_id"]) == self.group_id:
                highlighted = index
        options.highlighted = highlighted

    def _fill_table(self) -> None:
        table = self.query_one("#assets-table", DataTable)
        row = table.cursor_row
        table.clear()
        id_column = self.kind.id_column
        for record in self.rows:
            asset_id = int(record.get(id_column, 0) or 0)
            cells = ["*" if asset_id in self.marked else ""]
            cells += [format_cell(record.get(c), fmt) for _, c, fmt, _ in self.kind.columns]
            table.add_row(*cells, key=str(asset_id))
        if self.rows:
            table.move_cursor(row=min(max(row, 0), len(self.rows) - 1))
        self._show_page_label()

    def _show_page_label(self) -> None:
        label = self.query_one("#assets-page", Label)
        if not self._project:
            label.update("No project open (Overview, key 1)")
            return
        pages = max(1, (self.total + PAGE_ROWS - 1) // PAGE_ROWS)
        page = self.page_offset // PAGE_ROWS + 1
        first = self.page_offset + 1 if self.rows else 0
        last = self.page_offset + len(self.rows)
        marks = f"   {len(self.marked):,} marked" if self.marked else ""
        label.update(
            f"{first:,}-{last:,} of {self.total:,}   page {page:,}/{pages:,} (n/p){marks}"
        )

    # -- events ------------------------------------------------------------------------------------

    def on_project_changed(self, message: ProjectChanged) -> None:
        """Show the new project's first page of the shown kind."""
        self.page_offset, self.group_id, self.marked = 0, 0, set()
        self.reload()

    def on_daemon_event(self, message: DaemonEvent) -> None:
        """Reload when a job ends: it may have added assets."""
        if message.kind == "state" and message.event.get("payload", {}).get("state") in (
            "completed",
            "failed",
            "cancelled",
        ):
            self.reload()

    @on(Tabs.TabActivated, "#asset-kinds")
    def _kind_chosen(self, event: Tabs.TabActivated) -> None:
        key = (event.tab.id or "").removeprefix("kind-")
        if key in _BY_KEY and _BY_KEY[key] is not self.kind:
            self.kind = _BY_KEY[key]
            self.page_offset, self.group_id, self.marked = 0, 0, set()
            self.rows, self.total = [], 0
            self._set_columns()
            self.reload()

    @on(OptionList.OptionSelected, "#asset-groups")
    @on(OptionList.OptionHighlighted, "#asset-groups")
    def _group_chosen(
        self, event: OptionList.OptionSelected | OptionList.OptionHighlighted
    ) -> None:
        group_id = int(event.option.id or 0)
        if group_id != self.group_id:
            self.group_id = group_id
            self.page_offset = 0
            self.reload(groups=False)

    @on(Button.Pressed, "#assets-import")
    def _import_pressed(self) -> None:
        self.action_import_assets()

    @on(Button.Pressed, "#assets-display")
    def _display_pressed(self) -> None:
        self.action_display()

    @on(Button.Pressed, "#assets-new-group")
    def _new_group_pressed(self) -> None:
        self.action_new_group()

    @on(Button.Pressed, "#assets-add")
    def _add_pressed(self) -> None:
        self.action_add_to_group()

    @on(Button.Pressed, "#assets-remove")
    def _remove_pressed(self) -> None:
        self.action_remove_from_group()

    # -- actions -----------------------------------------------------------------------------------

    def _current_id(self) -> int | None:
        table = self.query_one("#assets-table", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return int(key.value) if key.value else None

    def _current_row(self) -> dict[str, Any] | None:
        asset_id = self._current_id()
        for record in self.rows:
            if int(record.get(self.kind.id_column, 0) or 0) == asset_id:
                return record
        return None

    def _chosen_ids(self) -> list[int]:
        if self.marked:
            return sorted(self.marked)
        current = self._current_id()
        return [] if current is None else [current]

    def _need_project(self) -> bool:
        if not self._project:
            self.app.notify("open a project first (Overview)", severity="warning")
            return False
        return True

    def action_page(self, step: int) -> None:
        """Show the next (1) or previous (-1) page."""
        new = self.page_offset + step * PAGE_ROWS
        if 0 <= new < max(self.total, 1):
            self.page_offset = new
            self.reload(groups=False)

    def action_kind(self, step: int) -> None:
        """Show the next or previous kind of asset."""
        index = KINDS.index(self.kind)
        tabs = self.query_one("#asset-kinds", Tabs)
        tabs.active = f"kind-{KINDS[(index + step) % len(KINDS)].key}"

    def show_kind(self, key: str) -> None:
        """Show one kind (``movies``, ``images``, ``positions``, ``volumes``, ``packages``)."""
        self.query_one("#asset-kinds", Tabs).active = f"kind-{key}"

    def action_mark(self) -> None:
        """Mark or unmark the current row, then move down."""
        asset_id = self._current_id()
        if asset_id is None:
            return
        self.marked.symmetric_difference_update({asset_id})
        table = self.query_one("#assets-table", DataTable)
        table.update_cell(str(asset_id), "mark", "*" if asset_id in self.marked else "")
        table.action_cursor_down()
        self._show_page_label()

    def action_mark_page(self) -> None:
        """Mark every row of the page."""
        ids = {int(r.get(self.kind.id_column, 0) or 0) for r in self.rows}
        self.marked |= ids
        self._fill_table()

    def action_clear_marks(self) -> None:
        """Unmark everything."""
        self.marked.clear()
        self._fill_table()

    def action_import_assets(self) -> None:
        """Open the import dialog of the shown kind."""
        from cistem_tui.dialogs.imports import ImportDialog, ImportRequest

        if not self._need_project():
            return

        def done(request: ImportRequest | None) -> None:
            if request is not None:
                run_later(self, partial(self._import, request))

        self.app.push_screen(ImportDialog(self.kind.import_kind), done)

    async def _import(self, request: Any) -> None:
        from cistemd.client import ClientError

        app: Any = self.app
        app.notify(f"importing {len(request.paths)} file(s)…", timeout=3)
        try:
            reply = await app.call(
                "import_assets", self._project, request.kind, request.paths, **request.options
            )
        except ClientError as exc:
            app.report_error(exc, title="Import")
            return
        for warning in reply.get("warnings", [])[:5]:
            app.notify(str(warning), severity="warning", timeout=8)
        app.notify(f"imported {int(reply.get('count', 0)):,} {self.kind.title.lower()}")
        self.reload()

    def action_display(self) -> None:
        """Show the current asset as a picture."""
        from cistem_tui.dialogs.display import DisplayScreen

        record = self._current_row()
        if record is None:
            self.app.notify("no asset to display", severity="warning")
            return
        self.app.push_screen(DisplayScreen(self.kind.key, record))

    def _group_name(self, group_id: int) -> str:
        for group in self.groups:
            if int(group["group_id"]) == group_id:
                return str(group["name"])
        return str(group_id)

    def _groups_usable(self) -> bool:
        if not self._need_project():
            return False
        if not self.kind.group_kind:
            self.app.notify(f"{self.kind.title} have no groups", severity="warning")
            return False
        return True

    async def _edit(self, operation: str, **kwargs: Any) -> dict[str, Any] | None:
        from cistemd.client import ClientError

        app: Any = self.app
        try:
            reply: dict[str, Any] = await app.call(
                "edit_group", self._project, self.kind.group_kind, operation, **kwargs
            )
        except ClientError as exc:
            app.report_error(exc, title="Groups")
            return None
        return reply

    def action_new_group(self) -> None:
        """Ask for a name and create an empty group (marked assets go into it)."""
        from cistem_tui.dialogs.prompt import TextPrompt

        if not self._groups_usable():
            return

        async def create(name: str | None) -> None:
            if not name:
                return
            reply = await self._edit("create", name=name)
            if reply is None:
                return
            new_id = int(reply["group_id"])
            if self.marked:
                await self._edit("add", group_id=new_id, asset_ids=sorted(self.marked))
                self.marked.clear()
            self.app.notify(f"group {name} created")
            self.group_id = new_id
            self.page_offset = 0
            self.reload()

        self.app.push_screen(TextPrompt("New group name"), in_worker(self, create))

    def action_rename_group(self) -> None:
        """Rename the shown group."""
        from cistem_tui.dialogs.prompt import TextPrompt

        if not self._groups_usable():
            return
        if self.group_id == 0:
            self.app.notify("the All group cannot be renamed", severity="warning")
            return
        group_id = self.group_id

        async def rename(name: str | None) -> None:
            if name and await self._edit("rename", group_id=group_id, name=name) is not None:
                self.reload()

        self.app.push_screen(
            TextPrompt("Rename group", self._group_name(group_id)),
            in_worker(self, rename),
        )

    def action_delete_group(self) -> None:
        """Delete the shown group (its assets stay)."""
        from cistem_tui.dialogs.prompt import ConfirmPrompt

        if not self._groups_usable() or self.group_id == 0:
            return
        group_id = self.group_id

        async def delete(yes: bool | None) -> None:
            if yes and await self._edit("delete", group_id=group_id) is not None:
                self.group_id = 0
                self.page_offset = 0
                self.reload()

        self.app.push_screen(
            ConfirmPrompt(f"Delete group {self._group_name(group_id)}? (assets stay)"),
            in_worker(self, delete),
        )

    def action_add_to_group(self) -> None:
        """Add the marked assets (or the current one) to a group chosen from a list."""
        from cistem_tui.dialogs.prompt import ChoicePrompt

        if not self._groups_usable():
            return
        ids = self._chosen_ids()
        if not ids:
            self.app.notify("nothing to add: mark rows with space", severity="warning")
            return
        choices = [
            (f"{g['name']} ({int(g['count']):,})", int(g["group_id"]))
            for g in self.groups
            if int(g["group_id"]) != 0
        ]
        if not choices:
            self.app.notify("no group yet: make one with g", severity="warning")
            return

        async def add(group_id: int | None) -> None:
            if group_id is None:
                return
            reply = await self._edit("add", group_id=group_id, asset_ids=ids)
            if reply is not None:
                self.app.notify(
                    f"{int(reply.get('changed', 0)):,} added to {self._group_name(group_id)}"
                )
                self.marked.clear()
                self.reload()

        self.app.push_screen(
            ChoicePrompt(f"Add {len(ids):,} to which group?", choices),
            in_worker(self, add),
        )

    def action_remove_from_group(self) -> None:
        """Remove the marked assets (or the current one) from the shown group."""
        if not self._groups_usable():
            return
        if self.group_id == 0:
            self.app.notify("choose a group first (assets stay in All)", severity="warning")
            return
        ids = self._chosen_ids()
        if not ids:
            return

        async def remove() -> None:
            reply = await self._edit("remove", group_id=self.group_id, asset_ids=ids)
            if reply is not None:
                self.marked.clear()
                self.reload()

        run_later(self, remove)

    def action_group_from_movies(self) -> None:
        """Make an image group of the images aligned from the shown movie group."""
        if not self._groups_usable() or self.kind.key != "movies":
            self.app.notify("choose a movie group first", severity="warning")
            return

        async def make() -> None:
            name = f"From {self._group_name(self.group_id)}"
            reply = await self._edit("from_movie_group", group_id=self.group_id, name=name)
            if reply is not None:
                self.app.notify(f"image group {name}: {int(reply.get('changed', 0)):,} images")

        run_later(self, make)
