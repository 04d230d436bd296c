"""The Jobs panel: live progress, per-task state, logs, cancel; fake and real daemons."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_fixtures import daemon, home  # noqa: F401  (pytest fixtures)
from textual.widgets import DataTable, Label, Log
from tui_fakes import FakeDaemon, run_async

from cistem_tui.app import CistemApp
from cistem_tui.dialogs.prompt import ConfirmPrompt
from cistem_tui.panels.jobs import JobsPanel, format_event, progress_text, task_summary


async def _settle(pilot, seconds: float = 0.1) -> None:
    await pilot.pause(seconds)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def _wait_for(pilot, predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


def test_text_helpers():
    assert progress_text(0.0).startswith(" " * 10)
    assert progress_text(1.0) == "█" * 10 + " 100%"
    assert progress_text(0.55).startswith("█████▌")
    assert task_summary({"completed": 7, "running": 3, "failed": 1, "queued": 1}) == "8/12 r3 f1"
    line = format_event(
        {"time": "2026-01-01T10:11:12Z", "kind": "state",
         "payload": {"state": "failed", "old": "running", "reason": "task 3 failed"}}
    )  # fmt: skip
    assert "10:11:12" in line and "running → failed: task 3 failed" in line


@run_async
async def test_progress_state_and_log_follow_the_events():
    fake = FakeDaemon()
    fake.add_project("/data/p")
    job_id = fake.add_job("/data/p", n_tasks=20)
    app = CistemApp("/data/p", client_factory=fake.client, home="/nonexistent-home")
    async with app.run_test(size=(100, 30)) as pilot:
        await _settle(pilot)
        await pilot.press("5")
        await _wait_for(pilot, lambda: fake.subscribers)
        panel = app.query_one("#jobs", JobsPanel)
        table = app.query_one("#jobs-table", DataTable)
        assert panel.selected == job_id and table.row_count == 1
        assert table.get_cell(job_id, "tasks") == "10/20 r1"
        log = app.query_one("#job-log", Log)
        assert any("queued → running" in line for line in log.lines)
        assert not any("tasks done" in line for line in log.lines)  # progress: bars, not log
        fake.progress(job_id, 15)
        await _wait_for(pilot, lambda: table.get_cell(job_id, "tasks") == "15/20")
        assert table.get_cell(job_id, "progress") == progress_text(0.75)
        await _wait_for(pilot, lambda: "75%" in str(app.query_one("#job-progress", Label).render()))
        fake.progress(job_id, 20)
        await _wait_for(pilot, lambda: table.get_cell(job_id, "state") == "completed")
        await _wait_for(pilot, lambda: any("→ completed" in line for line in log.lines))
        # the task page reloads (at most once a second) and shows the new states
        tasks = app.query_one("#job-tasks", DataTable)
        await _wait_for(pilot, lambda: tasks.get_row_at(19)[2] == "completed", timeout=5)
        # task filter
        await pilot.press("t")  # running only
        await _settle(pilot)
        assert panel.task_filter == "running" and tasks.row_count == 0


@run_async
async def test_cancel_asks_first_then_cancels():
    fake = FakeDaemon()
    fake.add_project("/data/p")
    job_id = fake.add_job("/data/p", n_tasks=4)
    app = CistemApp("/data/p", client_factory=fake.client, home="/nonexistent-home")
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(pilot)
        await pilot.press("5")
        await _settle(pilot)
        await pilot.press("c")
        assert isinstance(app.screen, ConfirmPrompt)
        await pilot.press("n")
        assert fake.jobs[job_id]["state"] == "running"
        await pilot.press("c", "y")
        await _settle(pilot, 0.2)
        assert fake.jobs[job_id]["state"] == "cancelled"
        table = app.query_one("#jobs-table", DataTable)
        assert table.get_cell(job_id, "state") == "cancelled"
        await pilot.press("c")  # already ended: no question
        assert not isinstance(app.screen, ConfirmPrompt)


@run_async
async def test_a_job_started_elsewhere_appears():
    fake = FakeDaemon()
    fake.add_project("/data/p")
    app = CistemApp("/data/p", client_factory=fake.client, home="/nonexistent-home")
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(pilot)
        await pilot.press("5")
        await _settle(pilot)
        await _wait_for(pilot, lambda: fake.subscribers)
        table = app.query_one("#jobs-table", DataTable)
        assert table.row_count == 0
        fake.add_job("/data/p", n_tasks=3)  # another client submits
        await _wait_for(pilot, lambda: table.row_count == 1)


@pytest.mark.slow
@run_async
async def test_real_daemon_job_progress_matches_cistem_jobs(daemon, tmp_path: Path):  # noqa: F811
    project = tmp_path / "proj"
    with daemon.client() as client:
        client.create_project(project)
    app = CistemApp(str(project), home=daemon.home.root)
    async with app.run_test(size=(120, 40)) as pilot:
        await _settle(pilot, 0.3)
        await pilot.press("5")
        await _wait_for(pilot, lambda: app.connected)
        with daemon.client() as client:
            job_id = client.submit(
                project, "selftest", {"tasks": 12, "sleep": 0.1}, profile="local:2"
            )
        panel = app.query_one("#jobs", JobsPanel)
        table = app.query_one("#jobs-table", DataTable)
        await _wait_for(pilot, lambda: job_id in panel.jobs, timeout=15)
        await _wait_for(pilot, lambda: table.get_cell(job_id, "state") == "completed", 60)
        assert table.get_cell(job_id, "tasks") == "12/12"
        await _wait_for(
            pilot, lambda: any("→ completed" in line for line in app.query_one(Log).lines)
        )
        tasks = app.query_one("#job-tasks", DataTable)
        await _wait_for(pilot, lambda: tasks.row_count == 12, timeout=5)
        await _wait_for(pilot, lambda: tasks.get_row_at(11)[2] == "completed", timeout=5)
    done = subprocess.run(
        [sys.executable, "-m", "cistemd.cli.main", "jobs", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"CISTEM_HOME": str(daemon.home.root), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert f'"{job_id}"' in done.stdout and "completed" in done.stdout
