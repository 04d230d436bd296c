"""The Actions panel and action forms: Pilot tests against a fake client and a real daemon."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import daemon_fixtures as fx
import pytest
from textual.app import App, ComposeResult
from textual.widgets import Button, Collapsible, Input, ProgressBar, Select, Static, Switch

from cistem_tui.forms import ActionForm, FieldError, asset_selector_kind, check_value, label_for
from cistem_tui.messages import DaemonEvent, ProjectChanged
from cistem_tui.panels.actions import ActionsPanel, _positions_from_result
from cistem_tui.widgets.picture import PictureView

SELFTEST = {
    "name": "selftest",
    "title": "Self test",
    "parameters": [
        {"name": "tasks", "kind": "int", "default": 10, "help": "number of tasks",
         "minimum": 1, "maximum": 1000, "choices": None, "expert": False},
        {"name": "sleep", "kind": "float", "default": 0.1, "help": "seconds",
         "minimum": 0.0, "maximum": None, "choices": None, "expert": False},
        {"name": "work", "kind": "str", "default": "sleep", "help": "how",
         "minimum": None, "maximum": None, "choices": ["sleep", "python"], "expert": True},
        {"name": "verbose", "kind": "bool", "default": False, "help": "talk",
         "minimum": None, "maximum": None, "choices": None, "expert": True},
    ],
}
PICKER = {
    "name": "find_particles",
    "title": "Find Particles",
    "parameters": [
        {"name": "image_group", "kind": "int", "default": 0, "help": "input group",
         "minimum": 0, "maximum": None, "choices": None, "expert": False},
        {"name": "characteristic_radius", "kind": "float", "default": 80.0, "help": "Å",
         "minimum": 1.0, "maximum": None, "choices": None, "expert": False},
        {"name": "preview", "kind": "bool", "default": False, "help": "one image",
         "minimum": None, "maximum": None, "choices": None, "expert": True},
        {"name": "preview_image_asset_id", "kind": "int", "default": 0, "help": "which",
         "minimum": 0, "maximum": None, "choices": None, "expert": True},
    ],
}


class FakeClient:
    """The Client methods the Actions panel uses, recording calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.submitted: list[tuple[str, dict[str, Any], str]] = []

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self, f"_{name}")

        def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return method(*args, **kwargs)

        return record

    def _actions(self) -> list[dict[str, Any]]:
        return [SELFTEST, PICKER]

    def _profiles(self) -> list[dict[str, Any]]:
        return [{"name": "Default Local"}, {"name": "cluster"}]

    def _submit(self, project: str, action: str, values: dict[str, Any], profile: str = "") -> str:
        self.submitted.append((action, dict(values), profile))
        return str(len(self.submitted))

    def _job(self, job_id: str) -> dict[str, Any]:
        return {"job_id": job_id, "state": "queued", "progress": 0.0}

    def _cancel(self, job_id: str) -> dict[str, Any]:
        return {"job_id": job_id, "state": "cancelled"}

    def _groups(self, project: str, kind: str) -> list[dict[str, Any]]:
        return [{"group_id": 0, "name": "All Images", "count": 3},
                {"group_id": 2, "name": "good", "count": 1}]

    def _group_members(self, project: str, kind: str, group_id: int) -> list[int]:
        return [7]

    def _assets_page(self, project: str, kind: str, **kwargs: Any) -> tuple[list[dict], int]:
        return [{"image_asset_id": 5}], 3

    def _assets(self, project: str, kind: str, **kwargs: Any) -> tuple[list[dict], int]:
        if kind == "volumes":
            return [{"volume_asset_id": 4, "name": "map"}], 1
        if kind == "refinements":
            return [{"refinement_id": 3, "name": "r3"}], 1
        return [{"refinement_package_asset_id": 1, "name": "pkg"}], 1

    def _job_results(self, job_id: str, **kwargs: Any) -> tuple[list[dict], int]:
        return [{"result": {"image_asset_id": 7, "picks": [[20.0, 30.0], [60.0, 10.0]]}}], 1

    def _image_preview(self, project: str, source: str, **kwargs: Any) -> dict[str, Any]:
        return {"width": 50, "height": 40, "pixels": bytes(range(200)) * 10, "scale": 0.5,
                "pixel_size_angstroms": 1.0, "original_width": 100, "original_height": 80,
                "original_depth": 1, "file": "/p/a.mrc"}


class Host(App[None]):
    """Stands in for CistemApp: ``call``, ``project_path``, ``ssh_mode``."""

    def __init__(self, client: Any, panel: type, project: str | None = "/p") -> None:
        super().__init__()
        self.client = client
        self.project_path = project
        self.ssh_mode = False
        self._panel = panel

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.client, name), *args, **kwargs)

    def compose(self) -> ComposeResult:
        yield self._panel(id="panel", classes="panel")


async def _until(pilot: Any, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


def test_check_value_and_labels():
    tasks = SELFTEST["parameters"][0]
    assert check_value(tasks, " 12 ") == 12
    assert check_value(tasks, "") is None  # the daemon fills the default
    with pytest.raises(FieldError, match="at least 1"):
        check_value(tasks, "0")
    with pytest.raises(FieldError, match="whole number"):
        check_value(tasks, "1.5")
    with pytest.raises(FieldError, match="required"):
        check_value({"name": "x", "kind": "float", "default": None}, " ")
    with pytest.raises(FieldError, match="one of sleep, python"):
        check_value(SELFTEST["parameters"][2], "numpy")
    assert check_value({"name": "b", "kind": "bool", "default": False}, "yes") is True
    assert label_for("pixel_size_angstroms") == "Pixel size (Å)"
    assert asset_selector_kind(PICKER["parameters"][0], "find_particles") == "group:image"
    assert asset_selector_kind({"name": "movie_group", "kind": "int"}, "x") == "group:movie"
    assert asset_selector_kind({"name": "input_group", "kind": "int"}, "align_movies") == (
        "group:movie"
    )
    assert asset_selector_kind({"name": "reference_volume_asset_id", "kind": "int"}) == "volume"
    assert asset_selector_kind(tasks) is None


def test_preview_positions_accept_several_shapes():
    assert _positions_from_result({"picks": [[1, 2], {"x": 3, "y": 4}]}) == [(1, 2), (3, 4)]
    assert _positions_from_result({"x_angstroms": [1.0], "y_angstroms": [2.0]}) == [(1.0, 2.0)]
    # What cistemd.actions.find_particles returns in preview mode.
    assert _positions_from_result({"x": [5.0, 6.0], "y": [7.0, 8.0], "preview": True}) == [
        (5.0, 7.0), (6.0, 8.0)
    ]
    assert _positions_from_result({"other": 1}) == []


def test_form_has_program_and_collapsed_expert_options_and_validates():
    async def run() -> None:
        client = FakeClient()
        app = Host(client, ActionsPanel)
        async with app.run_test(size=(80, 24)) as pilot:
            panel = app.query_one(ActionsPanel)
            await _until(pilot, lambda: bool(app.query("#field-tasks")))
            form = panel.form
            assert isinstance(form, ActionForm)
            assert [p["name"] for p in form.program_parameters] == ["tasks", "sleep"]
            expert = app.query_one("#expert-options", Collapsible)
            assert expert.collapsed
            assert app.query_one("#field-tasks", Input).value == "10"
            assert app.query_one("#field-verbose", Switch).value is False
            # Profiles came from the daemon.
            profiles = app.query_one("#profile-choice", Select)
            await _until(pilot, lambda: [v for _, v in profiles._options] == ["", "cluster"])
            # A bad value shows a message as it is typed and blocks Start.
            field = app.query_one("#field-tasks", Input)
            field.value = "0"
            await pilot.pause()
            assert "at least 1" in str(app.query_one("#error-tasks", Static).render())
            await panel.action_start()
            assert client.submitted == []
            assert "fix" in str(app.query_one("#action-status").render())
            # Preview is only offered to actions with a preview parameter.
            assert not app.query_one("#preview", Button).display

    asyncio.run(run())


def test_start_by_keys_follows_progress_and_terminates():
    async def run() -> None:
        client = FakeClient()
        app = Host(client, ActionsPanel)
        async with app.run_test(size=(80, 24)) as pilot:
            panel = app.query_one(ActionsPanel)
            await _until(pilot, lambda: bool(app.query("#field-tasks")))
            app.query_one("#field-tasks", Input).focus()
            await pilot.press("end", "backspace", "backspace", "3", "tab")
            await pilot.press("f5")
            await _until(pilot, lambda: bool(client.submitted))
            action, values, profile = client.submitted[0]
            assert action == "selftest" and values["tasks"] == 3 and profile == ""
            assert panel.job_id == "1" and panel.running
            assert not app.query_one("#terminate", Button).disabled
            assert app.query_one("#start", Button).disabled
            panel.post_message(DaemonEvent({"job_id": "1", "kind": "progress",
                                            "payload": {"fraction": 0.5, "done": 1, "total": 2}}))
            await pilot.pause()
            assert app.query_one("#action-progress", ProgressBar).progress == pytest.approx(0.5)
            assert "1/2 tasks" in str(app.query_one("#action-status").render())
            # Events of other jobs are not ours.
            panel.post_message(DaemonEvent({"job_id": "9", "kind": "progress",
                                            "payload": {"fraction": 0.9}}))
            await pilot.pause()
            assert app.query_one("#action-progress", ProgressBar).progress == pytest.approx(0.5)
            await pilot.press("ctrl+t")
            await _until(pilot, lambda: not panel.running)
            assert any(name == "cancel" for name, _, _ in client.calls)
            assert not app.query_one("#start", Button).disabled

    asyncio.run(run())


def test_preview_draws_picks_on_the_micrograph():
    async def run() -> None:
        client = FakeClient()
        app = Host(client, ActionsPanel)
        async with app.run_test(size=(80, 24)) as pilot:
            panel = app.query_one(ActionsPanel)
            await _until(pilot, lambda: bool(app.query("#field-tasks")))
            app.query_one("#action-choice", Select).value = "find_particles"
            await _until(pilot, lambda: panel.form is not None
                         and panel.form.action["name"] == "find_particles")
            # The group drop-down was filled from the project.
            await _until(pilot, lambda: app.query_one("#field-image_group", Select).value == 0)
            # the buttons follow the new form in the same refresh or the next one
            await _until(pilot, lambda: app.query_one("#preview", Button).display)
            app.query_one("#field-image_group", Select).value = 2
            await pilot.pause()
            await panel.action_preview()
            action, values, _ = client.submitted[-1]
            assert action == "find_particles"
            assert values["preview"] is True and values["preview_image_asset_id"] == 7
            assert values["image_group"] == 2
            panel.post_message(DaemonEvent({"job_id": panel.preview_job_id, "kind": "state",
                                            "payload": {"state": "completed"}}))
            view = app.query_one("#preview-picture", PictureView)
            await _until(pilot, lambda: view.picture is not None)
            assert len(view.circles) == 2
            # 20 Å, 30 Å at 1 Å/pixel, half scale, 80 rows: (10, 25); radius 80 Å -> 40 px.
            assert (view.circles[0].x, view.circles[0].y) == (10.0, 25.0)
            assert view.circles[0].radius == 40.0
            assert "2 picks" in str(app.query_one("#action-status").render())
            # A real Start of the same form switches preview off.
            await panel.action_start()
            assert client.submitted[-1][1]["preview"] is False
            assert client.submitted[-1][1]["preview_image_asset_id"] == 0

    asyncio.run(run())


def test_without_a_project_nothing_starts():
    async def run() -> None:
        client = FakeClient()
        app = Host(client, ActionsPanel, project=None)
        async with app.run_test(size=(80, 24)) as pilot:
            panel = app.query_one(ActionsPanel)
            await _until(pilot, lambda: bool(app.query("#field-tasks")))
            assert app.query_one("#start", Button).disabled
            app.project_path = "/p"
            panel.post_message(ProjectChanged("/p"))
            await _until(pilot, lambda: not app.query_one("#start", Button).disabled)

    asyncio.run(run())


# -------------------------------------------------------------------------- a real daemon

daemon = fx.daemon
home = fx.home


class DaemonHost(Host):
    """The panel with the TUI's real connection: a client thread and an event thread."""

    def __init__(self, home_root: str, project: str) -> None:
        from cistem_tui.connection import Connection

        super().__init__(None, ActionsPanel, project)
        self.connection = Connection(home=home_root)
        self._events: Any = None

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self.connection.call, name, *args, **kwargs)

    def on_mount(self) -> None:
        import threading

        def post(event: dict[str, Any]) -> None:
            for panel in self.query(".panel"):
                panel.post_message(DaemonEvent(event))

        self._events = threading.Thread(
            target=self.connection.follow_events, args=(post, lambda up, why: None), daemon=True
        )
        self._events.start()

    async def on_unmount(self) -> None:
        self.connection.close()


@pytest.mark.slow
def test_selftest_job_from_the_form_by_keys_with_a_real_daemon(daemon, home, tmp_path):
    project = str(tmp_path / "tui_project")
    with daemon.client() as client:
        client.create_project(project)

    async def run() -> None:
        app = DaemonHost(str(home.root), project)
        async with app.run_test(size=(80, 24)) as pilot:
            panel = app.query_one(ActionsPanel)
            await _until(pilot, lambda: bool(panel.actions), timeout=30)
            assert "selftest" in [a["name"] for a in panel.actions]
            app.query_one("#action-choice", Select).value = "selftest"
            await _until(pilot, lambda: bool(app.query("#field-tasks")), timeout=20)
            # the profile list arrives asynchronously; type only into a settled form
            await _until(
                pilot, lambda: app.query_one("#profile-choice", Select).value != Select.BLANK
            )
            await pilot.pause()
            app.query_one("#field-tasks", Input).focus()
            await pilot.press("end", "backspace", "backspace", "4", "tab", "end")
            await pilot.press(*["backspace"] * 5, *"0.3")
            await _until(pilot, lambda: app.query_one("#field-tasks", Input).value == "4")
            await pilot.press("f5")
            status = app.query_one("#action-status")
            try:
                await _until(pilot, lambda: panel.job_id is not None, timeout=20)
            except AssertionError:
                raise AssertionError(f"no job started; status: {status.render()}") from None
            bar = app.query_one("#action-progress", ProgressBar)
            await _until(pilot, lambda: panel.job_state == "completed", timeout=60)
            await _until(pilot, lambda: bar.progress == pytest.approx(1.0))
            assert "completed" in str(app.query_one("#action-status").render())
            job = await app.call("job", panel.job_id)
            assert job["state"] == "completed" and job["parameters"]["tasks"] == 4
            assert job["parameters"]["sleep"] == pytest.approx(0.3)

    asyncio.run(run())


@pytest.mark.slow
def test_every_real_action_gets_a_working_form():
    """Forms for the actions the daemon really lists (whatever modules exist now)."""
    from cistemd.manager import client_ops

    listed = client_ops.list_actions()["actions"]

    class RealActions(FakeClient):
        def _actions(self) -> list[dict[str, Any]]:
            return listed

    async def run() -> None:
        client = RealActions()
        app = Host(client, ActionsPanel)
        async with app.run_test(size=(80, 24)) as pilot:
            panel = app.query_one(ActionsPanel)
            await _until(pilot, lambda: len(panel.actions) == len(listed))
            for action in listed:
                app.query_one("#action-choice", Select).value = action["name"]
                await _until(pilot, lambda a=action: panel.form is not None
                             and panel.form.action["name"] == a["name"]
                             and bool(app.query(".field")) and not panel._building)
                await pilot.pause()
                form = panel.form
                assert form is not None
                values, errors = form.check()
                # Defaults pass the form's checks (selectors filled from the project); only
                # a required field without a drop-down may still ask for a value.
                for name, message in errors.items():
                    assert message == "required" and form.by_name[name]["default"] is None, (
                        action["name"], name, message
                    )
                    assert name not in form.selectors, (action["name"], name)
                for parameter in action["parameters"]:
                    default = parameter["default"]
                    if default not in (None, "") and parameter["name"] not in form.selectors:
                        assert values.get(parameter["name"]) == default, parameter
                has_preview = any(p["name"].startswith("preview") for p in action["parameters"])
                assert app.query_one("#preview", Button).display == has_preview
            names = [a["name"] for a in listed]
            if "align_movies" in names:
                app.query_one("#action-choice", Select).value = "align_movies"
                await _until(pilot, lambda: panel.form is not None
                             and "movie_group" in panel.form.selectors)
                assert panel.form.selectors["movie_group"] == "group:movie"

    asyncio.run(run())


# -------------------------------------------------------------------------- snapshots

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_actions_panel(snap_compare, size):
    async def ready(pilot: Any) -> None:
        panel = pilot.app.query_one(ActionsPanel)
        await _until(pilot, lambda: bool(pilot.app.query("#field-tasks")) and not panel._building)
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    assert snap_compare(Host(FakeClient(), ActionsPanel), terminal_size=size, run_before=ready)
