"""The TUI application: start, panels, keys, events, detaching, the daemon link.

Pilot tests (``App.run_test``) against the in-process fake daemon of
``tests/tui_fakes.py`` and against a real daemon (``tests/daemon_fixtures.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from daemon_fixtures import daemon, home  # noqa: F401  (pytest fixtures)
from textual.widgets import TabbedContent
from tui_fakes import FakeDaemon, run_async

from cistem_tui.__main__ import build_parser, wants_ssh_mode
from cistem_tui.app import PANELS, CistemApp
from cistem_tui.connection import Connection, ensure_daemon, logind_warning, recent_projects
from cistem_tui.help import HelpScreen, help_text
from cistem_tui.messages import DaemonEvent, ProjectChanged
from cistemd.client import Client, DaemonNotRunning, DaemonRequestError
from cistemd.manager.home import CistemHome


def _fake(**counts) -> FakeDaemon:
    fake = FakeDaemon()
    fake.add_project("/data/p", **counts)
    return fake


async def _settle(pilot, seconds: float = 0.2) -> None:
    await pilot.pause(seconds)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


# -- layering --------------------------------------------------------------------------------------


def test_tui_never_loads_the_database_or_kernels():
    code = (
        "import sys, json\n"
        "import cistem_tui.app, cistem_tui.__main__, cistem_tui.dialogs.imports\n"
        "import cistem_tui.dialogs.display, cistem_tui.help\n"
        "from cistem_tui.app import PANELS, panel_class\n"
        "[panel_class(panel) for panel, _ in PANELS]\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    forbidden = {"sqlite3", "_sqlite3", "numpy", "numba", "scipy", "mrcfile"}
    assert not forbidden & loaded, sorted(forbidden & loaded)
    assert not any(
        name.startswith(("cistemd.kernels", "cistemd.project", "cistemd.manager.daemon"))
        for name in loaded
    ), sorted(n for n in loaded if n.startswith("cistemd."))


# -- the app ---------------------------------------------------------------------------------------


@run_async
async def test_app_opens_the_project_and_tells_every_panel():
    fake = _fake(images=5)
    app = CistemApp("/data/p", client_factory=fake.client, home="/nonexistent-home")
    seen: list[str | None] = []
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(pilot)
        assert app.project_path == "/data/p"
        assert app.project_info["name"] == "p"
        assert "p" in app.sub_title
        # panels are built when first shown, and load the open project at once
        assert [p.id for p in app.query(".panel")] == ["overview"]
        await pilot.press("2", "5")
        await _settle(pilot)
        assert sorted(p.id for p in app.query(".panel")) == ["assets", "jobs", "overview"]
        names = [call[0] for call in fake.calls]
        assert "open_project" in names
        assert names.count("assets_page") >= 1 and "jobs_page" in names
        app.query_one("#overview").post_message(ProjectChanged(None))
        seen.append(app.project_path)
    assert seen == ["/data/p"]


@run_async
async def test_number_keys_and_brackets_switch_panels():
    fake = _fake()
    app = CistemApp(client_factory=fake.client, home="/nonexistent-home")
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(pilot)
        tabs = app.query_one("#panels", TabbedContent)
        assert tabs.active == "tab-overview"
        await pilot.press("ctrl+o")
        assert app.focused is not None and app.focused.id == "project-path"
        await pilot.press("/", "p", "3")  # digits type into a text box
        assert app.focused.value == "/p3" and tabs.active == "tab-overview"
        await pilot.press("alt+2")  # works while typing in a box
        assert tabs.active == "tab-assets"
        for number, (panel, _) in enumerate(PANELS, start=1):
            await pilot.press(str(number))
            assert tabs.active == f"tab-{panel}"
        assert sorted(p.id for p in app.query(".panel")) == sorted(p for p, _ in PANELS)
        await pilot.press("right_square_bracket")
        assert tabs.active == "tab-overview"
        await pilot.press("left_square_bracket")
        assert tabs.active == "tab-settings"


@run_async
async def test_help_screen_lists_the_keys_and_closes():
    app = CistemApp(client_factory=_fake().client, home="/nonexistent-home")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("q")  # closes help, does not detach
        assert not isinstance(app.screen, HelpScreen)
        assert app.is_running
    text = help_text()
    for needle in ("Detach", "Import", "Cancel job", "New profile", "Display", "F1"):
        assert needle in text


@run_async
async def test_daemon_events_are_forwarded_to_every_panel():
    fake = _fake()
    app = CistemApp("/data/p", client_factory=fake.client, home="/nonexistent-home")
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(pilot)
        deadline = time.monotonic() + 5
        while not fake.subscribers and time.monotonic() < deadline:
            await pilot.pause(0.05)
        assert fake.subscribers, "the app never subscribed"
        await pilot.press("5")
        await _settle(pilot)
        job_id = fake.add_job("/data/p", n_tasks=4)
        await _settle(pilot, 0.5)
        jobs = app.query_one("#jobs")
        assert job_id in jobs.jobs  # the Jobs panel reloaded on the new job's state event


def test_progress_events_of_a_job_coalesce():
    first = DaemonEvent({"job_id": "1", "kind": "progress", "payload": {"done": 1}})
    later = DaemonEvent({"job_id": "1", "kind": "progress", "payload": {"done": 2}})
    other = DaemonEvent({"job_id": "2", "kind": "progress", "payload": {"done": 2}})
    state = DaemonEvent({"job_id": "1", "kind": "state", "payload": {"state": "completed"}})
    task = DaemonEvent({"job_id": "1", "kind": "progress", "payload": {"task_id": "7"}})
    assert later.can_replace(first)
    assert not other.can_replace(first)
    assert not state.can_replace(first) and not later.can_replace(state)
    assert not task.can_replace(first)


@run_async
async def test_q_detaches_and_closes_the_connection():
    fake = _fake()
    app = CistemApp("/data/p", client_factory=fake.client, home="/nonexistent-home")
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(pilot)
        await pilot.press("q")
        await pilot.pause(0.1)
    assert app.return_code == 0
    assert app.connection.closed
    deadline = time.monotonic() + 3
    while fake.subscribers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not fake.subscribers, "the event thread kept its subscription"


@run_async
async def test_a_refused_request_becomes_a_notification():
    fake = FakeDaemon()  # no project at all
    app = CistemApp("/data/missing", client_factory=fake.client, home="/nonexistent-home")
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(pilot)
        assert app.project_path is None
        assert any("not a cistemd project" in n.message for n in app._notifications)


@run_async
async def test_app_call_raises_the_clients_error():
    fake = _fake()
    app = CistemApp(client_factory=fake.client, home="/nonexistent-home", follow_events=False)
    async with app.run_test(size=(80, 24)):
        with pytest.raises(DaemonRequestError):
            await app.call("open_project", "/nowhere")
        info = await app.call("project_info", "/data/p")
        assert info["name"] == "p"


# -- command line ----------------------------------------------------------------------------------


def test_ssh_mode_follows_the_flag_then_ssh_connection():
    assert wants_ssh_mode(None, {"SSH_CONNECTION": "10.0.0.1 5000 10.0.0.2 22"})
    assert not wants_ssh_mode(None, {})
    assert wants_ssh_mode(True, {})
    assert not wants_ssh_mode(False, {"SSH_CONNECTION": "x"})
    args = build_parser().parse_args(["--ssh", "/data/p"])
    assert args.ssh is True and args.project == "/data/p"
    assert build_parser().parse_args([]).ssh is None


def test_ssh_mode_app_turns_animations_off():
    app = CistemApp(client_factory=_fake().client, ssh_mode=True, home="/nonexistent-home")
    assert app.animation_level == "none"
    assert app.ssh_mode


def test_cli_help_runs_without_a_terminal():
    done = subprocess.run(
        [sys.executable, "-m", "cistem_tui", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "Quitting" in done.stdout and "--ssh" in done.stdout


# -- the connection --------------------------------------------------------------------------------


def test_connection_serialises_calls_and_drops_a_dead_client():
    made: list[object] = []
    inside = threading.Event()
    overlap = []

    class Flaky:
        def __init__(self) -> None:
            self.busy = False
            made.append(self)

        def slow(self) -> int:
            if self.busy:
                overlap.append(True)
            self.busy = True
            inside.set()
            time.sleep(0.05)
            self.busy = False
            return 1

        def fail(self) -> None:
            raise DaemonNotRunning("gone")

        def close(self) -> None:
            pass

    connection = Connection(Flaky)
    threads = [threading.Thread(target=connection.call, args=("slow",)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not overlap and len(made) == 1
    with pytest.raises(DaemonNotRunning):
        connection.call("fail")
    assert connection.call("slow") == 1
    assert len(made) == 2  # a new client after the failure
    connection.close()
    with pytest.raises(DaemonNotRunning):
        connection.call("slow")


def test_follow_events_reports_down_then_up_and_resumes():
    fake = _fake()
    attempts = []

    def factory():
        attempts.append(1)
        if len(attempts) == 1:
            raise DaemonNotRunning("not yet")
        return fake.client()

    connection = Connection(factory)
    events: list[dict] = []
    statuses: list[bool] = []
    thread = threading.Thread(
        target=connection.follow_events,
        args=(events.append, lambda up, detail: statuses.append(up)),
        kwargs={"retry_s": 0.1, "poll_s": 0.05},
        daemon=True,
    )
    thread.start()
    deadline = time.monotonic() + 5
    while not fake.subscribers and time.monotonic() < deadline:
        time.sleep(0.02)
    fake.add_job("/data/p", n_tasks=2)
    while len(events) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    connection.close()
    thread.join(timeout=3)
    assert not thread.is_alive()
    assert statuses[:2] == [False, True]
    assert [e["kind"] for e in events[:2]] == ["state", "state"]


def test_logind_warning_reads_the_config_and_lingering(tmp_path: Path):
    assert logind_warning("alice", root=tmp_path) is None
    conf = tmp_path / "etc/systemd/logind.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("[Login]\n#KillUserProcesses=yes\n")
    assert logind_warning("alice", root=tmp_path) is None
    conf.write_text("[Login]\nKillUserProcesses=yes\n")
    warning = logind_warning("alice", root=tmp_path)
    assert warning is not None and "loginctl enable-linger alice" in warning
    dropin = tmp_path / "etc/systemd/logind.conf.d/90-keep.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text("[Login]\nKillUserProcesses=no\n")
    assert logind_warning("alice", root=tmp_path) is None
    dropin.unlink()
    linger = tmp_path / "var/lib/systemd/linger/alice"
    linger.parent.mkdir(parents=True)
    linger.touch()
    assert logind_warning("alice", root=tmp_path) is None
    assert logind_warning("bob", root=tmp_path) is not None


def test_recent_projects_newest_first(tmp_path: Path):
    where = CistemHome.at(tmp_path / "home")
    where.prepare()
    (tmp_path / "a").mkdir()
    where.projects_file.write_text(
        json.dumps(
            {
                "projects": [
                    {"path": str(tmp_path / "a"), "open": True, "last_opened": "2026-01-01T00:00"},
                    {"path": str(tmp_path / "b"), "open": False, "last_opened": "2026-02-01T00:00"},
                ]
            }
        )
    )
    found = recent_projects(where.root)
    assert [Path(e["path"]).name for e in found] == ["b", "a"]
    assert [e["exists"] for e in found] == [False, True]


# -- against a real daemon -------------------------------------------------------------------------


@pytest.mark.slow
def test_ensure_daemon_starts_a_detached_daemon_once(tmp_path: Path):
    root = tmp_path / "home"
    where = CistemHome.at(root)
    try:
        started, message = ensure_daemon(root, wait_s=30)
        assert started and "started" in message
        pid = where.running_pid()
        assert pid is not None
        # fully detached: its own session, not ours
        assert os.getsid(pid) != os.getsid(0)
        assert ensure_daemon(root) == (False, "")
        with Client(root) as client:
            client.ping()
    finally:
        subprocess.run(
            [sys.executable, "-m", "cistemd.cli.daemon", "--home", str(root), "stop", "--force"],
            capture_output=True,
            timeout=60,
            check=False,
        )


@run_async
async def test_real_daemon_project_is_opened_and_summarised(daemon, tmp_path: Path):  # noqa: F811
    project = tmp_path / "proj"
    with daemon.client() as client:
        client.create_project(project)
    app = CistemApp(str(project), home=daemon.home.root)
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(pilot, 0.5)
        assert app.project_path == str(project)
        summary = str(app.query_one("#project-summary").render())
        assert "proj" in summary and "cistemd" in summary
        recent = app.query_one("#overview")._recent
        assert str(project) in [entry["path"] for entry in recent]
        await pilot.press("q")
    assert app.connection.closed
