"""The Actions panel: one form per action the daemon offers, Start, Terminate, progress.

The daemon lists its actions with their parameters (``Client.actions()``), so
this panel works with whatever actions exist (Align Movies, Find CTF, Find
Particles, Generate 3D, Sharpen Map, the ``selftest`` diagnostic ...). A form
has cisTEM's Program Options and collapsed Expert Options
(:class:`~cistem_tui.forms.ActionForm`); parameters naming an input group,
volume or refinement package are drop-downs filled from the project. The run
profile comes from ``Client.profiles()``.

Start submits the job (``Client.submit``); its progress and state follow from
the daemon's events; Terminate cancels it (``Client.cancel``). An action with a
``preview`` parameter (Find Particles) also gets a Preview button: it runs the
action on one image and draws the picks on that micrograph.

Keys: F5 Start, Ctrl+T Terminate, F6 Preview; Tab moves between fields.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Horizontal, VerticalScroll
from textual.css.query import NoMatches
from textual.widgets import Button, Label, ProgressBar, Select, Static

from cistem_tui.forms import ActionForm, SafeSelect, asset_selector_kind
from cistem_tui.messages import DaemonEvent, DaemonStatus, ProjectChanged
from cistem_tui.widgets.picture import Circle, GreyPicture, PictureView, picture_point

__all__ = ["ActionsPanel"]

logger = logging.getLogger(__name__)

_TERMINAL = frozenset({"completed", "failed", "cancelled"})
_DEFAULT_PROFILE = ""  # the daemon's Default Local


def _preview_parameters(action: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """Return ``(flag, image)``: the preview switch and the preview-image parameter names."""
    flag = image = None
    for parameter in action.get("parameters", []):
        name = str(parameter["name"])
        if not name.startswith("preview"):
            continue
        if parameter.get("kind") == "bool":
            flag = name
        elif parameter.get("kind") == "int":
            image = name
    return flag, image


def _radius_angstroms(values: Mapping[str, Any]) -> float | None:
    for name in ("characteristic_radius", "typical_radius", "characteristic_radius_angstroms",
                 "typical_radius_angstroms", "particle_radius_angstroms", "particle_radius"):
        value = values.get(name)
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return None


def _positions_from_result(result: Mapping[str, Any]) -> list[tuple[float, float]]:
    """Pick positions (Å) a preview task may return in its result instead of rows."""
    for key in ("picks", "positions", "particles"):
        items = result.get(key)
        if isinstance(items, list):
            out = []
            for item in items:
                if isinstance(item, Mapping):
                    x = item.get("x", item.get("x_angstroms", item.get("x_position")))
                    y = item.get("y", item.get("y_angstroms", item.get("y_position")))
                elif isinstance(item, list | tuple) and len(item) >= 2:
                    x, y = item[0], item[1]
                else:
                    continue
                if isinstance(x, int | float) and isinstance(y, int | float):
                    out.append((float(x), float(y)))
            return out
    for x_key, y_key in (("x", "y"), ("x_angstroms", "y_angstroms")):
        xs, ys = result.get(x_key), result.get(y_key)
        if isinstance(xs, list) and isinstance(ys, list):
            return [(float(x), float(y)) for x, y in zip(xs, ys, strict=False)]
    return []


class ActionsPanel(Container):
    """Forms to start the daemon's actions, with live progress."""

    DEFAULT_CSS = """
    ActionsPanel { layout: vertical; }
    ActionsPanel #actions-top { height: 1; }
    ActionsPanel #action-choice { width: 1fr; }
    ActionsPanel #profile-choice { width: 30; }
    ActionsPanel #action-form-area { height: 1fr; }
    ActionsPanel #action-bar { height: 1; }
    ActionsPanel #action-bar Button { min-width: 11; margin: 0 1 0 0; }
    ActionsPanel #action-progress { width: 1fr; padding: 0 0 0 1; }
    ActionsPanel #action-status { height: 1; }
    ActionsPanel #preview-picture { height: 16; display: none; }
    ActionsPanel #preview-picture.shown { display: block; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f5", "start", "Start", key_display="F5"),
        Binding("ctrl+t", "terminate", "Terminate"),
        Binding("f6", "preview", "Preview", show=False, key_display="F6"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.actions: list[dict[str, Any]] = []
        self.job_id: str | None = None
        self.job_state = ""
        self.preview_job_id: str | None = None
        self._preview_context: dict[str, Any] = {}
        self._form_counter = 0
        self._rebuilds = 0
        self._building = False

    # -- layout ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        """Lay out the action and profile choice, the form, Start/Terminate and progress."""
        with Horizontal(id="actions-top"):
            yield SafeSelect(
                [], id="action-choice", prompt="Action", allow_blank=True, compact=True
            )
            yield SafeSelect(
                [("Default Local", _DEFAULT_PROFILE)],
                id="profile-choice",
                value=_DEFAULT_PROFILE,
                allow_blank=False,
                compact=True,
            )
        with VerticalScroll(id="action-form-area"):
            yield Static("Open a project to run actions.", id="action-note")
            yield PictureView(id="preview-picture", ssh_mode=self._ssh_mode)
        with Horizontal(id="action-bar"):
            yield Button("Start", id="start", variant="success", disabled=True, compact=True)
            yield Button("Terminate", id="terminate", variant="error", disabled=True, compact=True)
            yield Button("Preview", id="preview", disabled=True, compact=True)
            yield ProgressBar(id="action-progress", total=1.0, show_eta=False)
        yield Label("", id="action-status")

    @property
    def _ssh_mode(self) -> bool:
        try:
            return bool(getattr(self.app, "ssh_mode", False))
        except Exception:  # not mounted yet
            return False

    @property
    def _project(self) -> str | None:
        return getattr(self.app, "project_path", None)

    def on_mount(self) -> None:
        """Load the action list (and the project's groups if one is open)."""
        self.reload()

    def focus_default(self) -> None:
        """Focus the action choice (the app calls this when the panel is shown)."""
        self.query_one("#action-choice", Select).focus()

    # -- loading ----------------------------------------------------------------------------

    @work(exclusive=True, group="actions-load")
    async def reload(self) -> None:
        """Ask the daemon for its actions and profiles; rebuild the choice lists."""
        if not self.query("#action-choice"):
            return  # not composed yet: on_mount loads
        try:
            actions = await self.app.call("actions")  # type: ignore[attr-defined]
        except Exception as exc:
            self._status(f"cannot list actions: {exc}")
            return
        self.actions = [dict(a) for a in actions]
        choice = self.query_one("#action-choice", Select)
        previous = choice.value
        choice.set_options([(a.get("title") or a["name"], a["name"]) for a in self.actions])
        names = [a["name"] for a in self.actions]
        if previous in names:
            choice.value = previous
        elif names:
            choice.value = names[0]
        await self._load_profiles()
        self._update_buttons()

    async def _load_profiles(self) -> None:
        names: list[str] = []
        try:
            profiles = await self.app.call("profiles")  # type: ignore[attr-defined]
            names = [str(p.get("name", "")) for p in profiles if p.get("name")]
        except Exception:  # an older daemon without profiles: Default Local only
            names = []
        options = [("Default Local", _DEFAULT_PROFILE)]
        options += [(name, name) for name in names if name != "Default Local"]
        select = self.query_one("#profile-choice", Select)
        current = select.value
        select.set_options(options)
        select.value = current if current in [v for _, v in options] else _DEFAULT_PROFILE

    def action_by_name(self, name: str) -> dict[str, Any] | None:
        """Return the listed action called ``name``."""
        return next((a for a in self.actions if a["name"] == name), None)

    @property
    def form(self) -> ActionForm | None:
        """The form shown now, if any."""
        forms = self.query(ActionForm)
        return forms.first() if forms else None

    def on_select_changed(self, event: Select.Changed) -> None:
        """Show the chosen action's form."""
        if event.select.id != "action-choice":
            return
        event.stop()
        self.rebuild_form()

    async def _show_form(self, keep: Mapping[str, Any] | None = None) -> None:
        name = self.query_one("#action-choice", Select).value
        action = self.action_by_name(str(name)) if isinstance(name, str) else None
        options = await self._selector_options(action) if action is not None else {}
        if not self.query("#action-form-area"):
            return
        area = self.query_one("#action-form-area", VerticalScroll)
        for old in self.query(ActionForm):
            await old.remove()
        note = self.query_one("#action-note", Static)
        if action is None:
            note.update("Choose an action." if self.actions else "The daemon lists no actions.")
            self._update_buttons()
            return
        note.update(f"{action.get('title') or action['name']}")
        self._form_counter += 1
        form = ActionForm(action, options, keep, id=f"form-{self._form_counter}")
        await area.mount(form, after=note)
        await self._composed(form)
        self.query_one("#preview-picture", PictureView).remove_class("shown")
        self._update_buttons()

    @staticmethod
    async def _composed(form: ActionForm, timeout_s: float = 2.0) -> None:
        """Wait until the drop-downs of a new form have built their parts.

        A form removed before that (the user flicking through actions) would
        leave a drop-down that fails when it mounts.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and form.is_attached:
            if all(select.query("#label") for select in form.query(Select)):
                return
            await asyncio.sleep(0.01)

    async def _selector_options(
        self, action: Mapping[str, Any]
    ) -> dict[str, list[tuple[str, Any]]]:
        """Ask the project for the choices of the action's group/volume/package parameters."""
        project = self._project
        found: dict[str, list[tuple[str, Any]]] = {}
        if project is None:
            return found
        for parameter in action.get("parameters", []):
            kind = asset_selector_kind(parameter, str(action.get("name", "")))
            if kind is None:
                continue
            try:
                if kind.startswith("group:"):
                    groups = await self.app.call(  # type: ignore[attr-defined]
                        "groups", project, kind.removeprefix("group:")
                    )
                    found[parameter["name"]] = [
                        (f"{g['name']} ({g.get('count', 0)})", int(g["group_id"])) for g in groups
                    ]
                    continue
                listing, key = {
                    "volume": ("volumes", "volume_asset_id"),
                    "package": ("packages", "refinement_package_asset_id"),
                    "refinement": ("refinements", "refinement_id"),
                }[kind]
                rows, _ = await self.app.call(  # type: ignore[attr-defined]
                    "assets", project, listing, limit=1000
                )
                found[parameter["name"]] = [
                    (f"{r.get(key)}: {r.get('name', '')}", int(r[key])) for r in rows
                ]
            except Exception as exc:
                self._status(f"cannot list {kind}: {exc}")
        return found

    @work(group="actions-form")
    async def rebuild_form(self, keep_values: bool = False) -> None:
        """Build the chosen action's form with the project's current groups.

        With ``keep_values`` (same action, new project) the values typed are kept.
        Builds run one at a time (a form removed while it mounts would break its
        drop-downs); requests that come meanwhile make one more build.
        """
        self._rebuilds += 1
        if self._building:
            return
        self._building = True
        try:
            while self._rebuilds:
                self._rebuilds = 0
                form = self.form
                keep = form.check()[0] if form is not None and keep_values else None
                await self._show_form(keep)
        except NoMatches:
            pass  # the panel went away meanwhile (the app is closing)
        finally:
            self._building = False

    # -- messages from the app --------------------------------------------------------------

    def on_project_changed(self, message: ProjectChanged) -> None:
        """Refill the drop-downs for the new project."""
        self._update_buttons()
        if self.actions:
            self.rebuild_form(keep_values=True)
        else:
            self.reload()

    def on_daemon_status(self, message: DaemonStatus) -> None:
        """Reload the actions when the daemon comes back."""
        if message.connected and not self.actions:
            self.reload()

    def on_daemon_event(self, message: DaemonEvent) -> None:
        """Follow the started job's progress and state."""
        job = message.job_id
        if not job or job not in (self.job_id, self.preview_job_id):
            return
        payload = message.event.get("payload", {}) or {}
        if message.kind == "progress" and "task_id" not in payload and job == self.job_id:
            fraction = payload.get("fraction")
            if isinstance(fraction, int | float):
                self._set_progress(float(fraction))
            done, total = payload.get("done"), payload.get("total")
            if done is not None and total is not None:
                self._status(f"job {job}: {done}/{total} tasks")
        elif message.kind == "state":
            state = str(payload.get("state", ""))
            if job == self.job_id:
                self.job_state = state
                reason = str(payload.get("reason") or "")
                self._status(f"job {job}: {state}" + (f" ({reason})" if reason else ""))
                if state == "completed":
                    self._set_progress(1.0)
            if state in _TERMINAL and job == self.preview_job_id:
                self.preview_job_id = None
                if state == "completed":
                    self.show_preview(job)
                else:
                    self._status(f"preview job {job} {state}")
            self._update_buttons()

    # -- start, terminate, preview ---------------------------------------------------------

    def _set_progress(self, fraction: float) -> None:
        # events and replies may arrive while the panel is closing: no bar, nothing to do
        for bar in self.query("#action-progress").results(ProgressBar):
            bar.update(progress=fraction)

    def _status(self, text: str) -> None:
        if self.is_attached and self.query("#action-status"):
            self.query_one("#action-status", Label).update(text)

    @property
    def running(self) -> bool:
        """Whether the job started here has not ended yet."""
        return self.job_id is not None and self.job_state not in _TERMINAL

    def _update_buttons(self) -> None:
        if not self.is_attached or not self.query("#start"):
            return
        form = self.form
        ready = form is not None and self._project is not None
        self.query_one("#start", Button).disabled = not ready or self.running
        self.query_one("#terminate", Button).disabled = not self.running
        has_preview = form is not None and _preview_parameters(form.action) != (None, None)
        preview = self.query_one("#preview", Button)
        preview.display = has_preview
        preview.disabled = not ready or not has_preview or self.preview_job_id is not None

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        """Start, Terminate, Preview."""
        event.stop()
        if event.button.id == "start":
            await self.action_start()
        elif event.button.id == "terminate":
            await self.action_terminate()
        elif event.button.id == "preview":
            await self.action_preview()

    def _values(self) -> dict[str, Any] | None:
        form = self.form
        if form is None:
            return None
        values, errors = form.check()
        if errors:
            first = next(iter(errors.items()))
            self._status(f"{len(errors)} field(s) to fix: {first[0]}: {first[1]}")
            return None
        return values

    async def action_start(self) -> None:
        """Submit the form's action as a job."""
        form, project = self.form, self._project
        if form is None or project is None or self.running:
            return
        values = self._values()
        if values is None:
            return
        flag, image_parameter = _preview_parameters(form.action)
        if flag is not None:
            values[flag] = False
        if image_parameter is not None:
            values[image_parameter] = 0  # a real run, not a preview
        job_id = await self._submit(form.action["name"], values)
        if job_id is None:
            return
        self.job_id, self.job_state = job_id, "queued"
        self._set_progress(0.0)
        self._status(f"job {job_id}: submitted")
        self._update_buttons()
        self.sync_job(job_id)

    @work(group="actions-sync")
    async def sync_job(self, job_id: str) -> None:
        """Read the job's state once: events sent before the id was known are not lost."""
        try:
            job = await self.app.call("job", job_id)  # type: ignore[attr-defined]
        except Exception:
            return
        if job_id != self.job_id or self.job_state in _TERMINAL:
            return
        state = str(job.get("state", ""))
        if state and state != self.job_state:
            self.job_state = state
            self._status(f"job {job_id}: {state}")
        progress = job.get("progress")
        if isinstance(progress, int | float) and self.is_attached:
            self._set_progress(float(progress))
        self._update_buttons()

    async def _submit(self, action: str, values: dict[str, Any]) -> str | None:
        profile = self.query_one("#profile-choice", Select).value
        try:
            job_id = await self.app.call(  # type: ignore[attr-defined]
                "submit",
                self._project,
                action,
                values,
                profile=profile if isinstance(profile, str) else _DEFAULT_PROFILE,
            )
        except Exception as exc:
            self._status(f"not started: {exc}")
            return None
        return str(job_id)

    async def action_terminate(self) -> None:
        """Cancel the running job."""
        if not self.running or self.job_id is None:
            return
        try:
            job = await self.app.call("cancel", self.job_id)  # type: ignore[attr-defined]
        except Exception as exc:
            self._status(f"cannot terminate job {self.job_id}: {exc}")
            return
        self.job_state = str(job.get("state", "cancelled"))
        self._status(f"job {self.job_id}: {self.job_state}")
        self._update_buttons()

    async def action_preview(self) -> None:
        """Run the action on one image (its preview mode) and draw the picks."""
        form, project = self.form, self._project
        if form is None or project is None or self.preview_job_id is not None:
            return
        flag, image_parameter = _preview_parameters(form.action)
        if flag is None and image_parameter is None:
            return
        values = self._values()
        if values is None:
            return
        image_id = int(values.get(image_parameter, 0) or 0) if image_parameter else 0
        if not image_id:
            image_id = await self._first_image(form, values)
            if image_parameter and image_id:
                values[image_parameter] = image_id
        if flag is not None:
            values[flag] = True
        job_id = await self._submit(form.action["name"], values)
        if job_id is None:
            return
        self.preview_job_id = job_id
        self._preview_context = {"image_id": image_id, "values": values}
        self._status(f"preview job {job_id}: submitted")
        self._update_buttons()

    async def _first_image(self, form: ActionForm, values: Mapping[str, Any]) -> int:
        groups = [int(values[n]) for n, k in form.selectors.items() if k == "group:image"
                  and n in values]
        group = groups[0] if groups else 0
        try:
            if group:
                members = await self.app.call(  # type: ignore[attr-defined]
                    "group_members", self._project, "image", group
                )
                return int(members[0]) if members else 0
            rows, _ = await self.app.call(  # type: ignore[attr-defined]
                "assets_page", self._project, "images", limit=1
            )
            return int(rows[0]["image_asset_id"]) if rows else 0
        except Exception:
            return 0

    @work(group="actions-preview")
    async def show_preview(self, job_id: str) -> None:
        """Draw the micrograph of a finished preview job with its picks."""
        project = self._project
        context = self._preview_context
        image_id = int(context.get("image_id") or 0)
        positions: list[tuple[float, float]] = []
        try:
            results, _ = await self.app.call(  # type: ignore[attr-defined]
                "job_results", job_id, limit=10
            )
            for result in results:
                found = _positions_from_result(result.get("result", {}))
                positions += found
                image_id = image_id or int(result.get("result", {}).get("image_asset_id", 0) or 0)
            if not positions and image_id:
                rows, _, _ = await self.app.call(  # type: ignore[attr-defined]
                    "results",
                    project,
                    "picks",
                    {"image_asset_id": image_id, "job_id": int(job_id)},
                )
                positions = [(float(r["x"]), float(r["y"])) for r in rows]
            if not image_id:
                self._status(f"preview job {job_id}: no image to show")
                return
            reply = await self.app.call(  # type: ignore[attr-defined]
                "image_preview", project, "image", asset_id=image_id, max_size=384
            )
        except Exception as exc:
            self._status(f"preview: {exc}")
            return
        picture = GreyPicture.from_reply(reply)
        pixel_size = float(reply.get("pixel_size_angstroms") or 0.0) or 1.0
        radius = _radius_angstroms(context.get("values", {})) or 10.0 * pixel_size
        scale = float(reply["scale"])
        circles = []
        for x, y in positions:
            px, py = picture_point(
                x, y, pixel_size_angstroms=pixel_size, scale=scale,
                original_height=int(reply["original_height"]),
            )
            circles.append(Circle(px, py, max(1.0, radius / pixel_size * scale)))
        view = self.query_one("#preview-picture", PictureView)
        view.add_class("shown")
        view.show(picture, circles=circles)
        self._status(f"preview job {job_id}: {len(positions)} picks on image {image_id}")
        self._update_buttons()
