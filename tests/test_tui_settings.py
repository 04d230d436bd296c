"""The Settings panel: run profiles listed, added, edited, deleted, imported, exported."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_fixtures import daemon, home  # noqa: F401  (pytest fixtures)
from textual.widgets import DataTable, Input, Select, TextArea
from tui_fakes import FakeDaemon, run_async

from cistem_tui.app import CistemApp
from cistem_tui.dialogs.prompt import ConfirmPrompt, TextPrompt
from cistem_tui.panels.settings import CommandDialog, LauncherDialog, SettingsPanel
from cistemd.manager.profiles import RunProfile


async def _settle(pilot, seconds: float = 0.1) -> None:
    await pilot.pause(seconds)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def _open_settings(pilot) -> SettingsPanel:
    await _settle(pilot)
    await pilot.press("6")
    await _settle(pilot)
    return pilot.app.query_one("#settings", SettingsPanel)


@run_async
async def test_add_edit_command_save_and_delete_a_profile():
    fake = FakeDaemon()
    app = CistemApp(client_factory=fake.client, home="/nonexistent-home")
    async with app.run_test(size=(100, 30)) as pilot:
        panel = await _open_settings(pilot)
        table = app.query_one("#profiles-table", DataTable)
        assert table.row_count == 1 and table.get_row_at(0)[0] == "Default Local"
        await pilot.press("a")  # new profile, name box focused
        assert app.focused is app.query_one("#profile-name", Input)
        app.query_one("#profile-name", Input).value = "Cluster"
        app.query_one("#profile-gui-address", Input).value = "10.0.0.1"
        # edit the command line: 8 copies, 4 threads, 250 ms apart
        app.query_one("#profile-commands", DataTable).focus()
        await pilot.press("enter")
        dialog = app.screen
        assert isinstance(dialog, CommandDialog)
        dialog.query_one("#command-command-to-run", Input).value = "ssh node07 $command"
        dialog.query_one("#command-number-of-copies", Input).value = "8"
        dialog.query_one("#command-threads-per-copy", Input).value = "4"
        dialog.query_one("#command-delay-ms", Input).value = "250"
        await pilot.press("ctrl+s")
        assert not isinstance(app.screen, CommandDialog)
        await pilot.press("plus")  # a second command line, defaults
        await pilot.press("ctrl+s")
        await pilot.press("ctrl+s")  # save the profile
        await _settle(pilot, 0.2)
        saved = {p["name"]: p for p in fake.profiles}["Cluster"]
        assert saved["gui_address"] == "10.0.0.1"
        assert [c["number_of_copies"] for c in saved["commands"]] == [8, 2]
        assert saved["commands"][0]["command_to_run"] == "ssh node07 $command"
        assert saved["commands"][0]["threads_per_copy"] == 4
        assert saved["commands"][0]["delay_ms"] == 250
        assert table.row_count == 2 and panel.original_name == "Cluster"
        assert table.get_row_at(table.cursor_row)[2] == "10"  # workers in all
        # rename: the old name goes away
        app.query_one("#profile-name", Input).value = "Cluster B"
        await pilot.press("ctrl+s")
        await _settle(pilot, 0.2)
        assert sorted(p["name"] for p in fake.profiles) == ["Cluster B", "Default Local"]
        # delete it
        table.focus()
        await pilot.press("D")
        assert isinstance(app.screen, ConfirmPrompt)
        await pilot.press("y")
        await _settle(pilot, 0.2)
        assert [p["name"] for p in fake.profiles] == ["Default Local"]


@run_async
async def test_ssh_and_scheduler_settings_are_edited_and_saved():
    fake = FakeDaemon()
    app = CistemApp(client_factory=fake.client, home="/nonexistent-home")
    async with app.run_test(size=(100, 30)) as pilot:
        await _open_settings(pilot)
        app.query_one("#profiles-table", DataTable).focus()
        await pilot.press("l")  # local processes: nothing to edit, says so
        assert not isinstance(app.screen, LauncherDialog)
        assert any("no launcher settings" in n.message for n in app._notifications)
        await pilot.press("a")
        app.query_one("#profile-name", Input).value = "Slurm"
        app.query_one("#profile-launcher", Select).value = "scheduler"
        app.query_one("#profiles-table", DataTable).focus()
        await pilot.press("l")
        dialog = app.screen
        assert isinstance(dialog, LauncherDialog)
        # defaults shown: SLURM batch jobs, 30 s submit timeout
        assert dialog.query_one("#launcher-kind", Select).value == "slurm"
        assert dialog.query_one("#launcher-submit-timeout-s", Input).value == "30.0"
        dialog.query_one("#launcher-queue", Input).value = "gpu"
        dialog.query_one("#launcher-walltime", Input).value = "02:00:00"
        dialog.query_one("#launcher-extra-directives", TextArea).text = "--gres=gpu:1\n\n"
        dialog.query_one("#launcher-prologue", TextArea).text = "module load cuda\n"
        dialog.query_one("#launcher-submit-timeout-s", Input).value = "soon"
        await pilot.press("ctrl+s")
        assert app.screen is dialog  # not a number: refused, named
        assert any("Submit timeout" in n.message for n in app._notifications)
        dialog.query_one("#launcher-submit-timeout-s", Input).value = "12"
        await pilot.press("ctrl+s")
        assert not isinstance(app.screen, LauncherDialog)
        await pilot.press("ctrl+s")  # save the profile
        await _settle(pilot, 0.2)
        saved = {p["name"]: p for p in fake.profiles}["Slurm"]
        assert saved["launcher"] == "scheduler"
        scheduler = saved["scheduler"]
        assert scheduler["queue"] == "gpu" and scheduler["walltime"] == "02:00:00"
        assert scheduler["extra_directives"] == ["--gres=gpu:1"]
        assert scheduler["prologue"] == ["module load cuda"]
        assert scheduler["submit_timeout_s"] == 12.0
        # an SSH cluster keeps its own settings next to them
        app.query_one("#profile-launcher", Select).value = "ssh"
        await pilot.press("l")
        dialog = app.screen
        assert isinstance(dialog, LauncherDialog)
        assert dialog.query_one("#launcher-port", Input).value == "22"
        dialog.query_one("#launcher-user", Input).value = "cryo"
        dialog.query_one("#launcher-port", Input).value = "2222"
        await pilot.press("ctrl+s")
        app.query_one("#profile-commands", DataTable).focus()
        await pilot.press("enter")  # an SSH command line names its host
        app.screen.query_one("#command-host", Input).value = "node07"
        await pilot.press("ctrl+s")
        await pilot.press("ctrl+s")
        await _settle(pilot, 0.2)
        saved = {p["name"]: p for p in fake.profiles}["Slurm"]
        assert saved["launcher"] == "ssh"
        assert saved["ssh"]["user"] == "cryo" and saved["ssh"]["port"] == 2222
        assert saved["scheduler"]["queue"] == "gpu"
        # what the daemon would store
        profile = RunProfile.from_dict(saved)
        assert profile.ssh.port == 2222 and profile.scheduler.prologue == ("module load cuda",)


@run_async
async def test_a_bad_command_is_refused_in_the_dialog():
    fake = FakeDaemon()
    app = CistemApp(client_factory=fake.client, home="/nonexistent-home")
    async with app.run_test(size=(100, 30)) as pilot:
        await _open_settings(pilot)
        await pilot.press("plus")
        dialog = app.screen
        assert isinstance(dialog, CommandDialog)
        dialog.query_one("#command-command-to-run", Input).value = "ssh node07"
        await pilot.press("ctrl+s")
        assert app.screen is dialog
        assert any("$command" in n.message for n in app._notifications)
        dialog.query_one("#command-command-to-run", Input).value = "$command"
        dialog.query_one("#command-number-of-copies", Input).value = "many"
        await pilot.press("ctrl+s")
        assert app.screen is dialog
        await pilot.press("escape")


@run_async
async def test_import_and_export_through_files(tmp_path: Path):
    fake = FakeDaemon()
    source = tmp_path / "default_run_profiles.txt"
    source.write_text("profile_name: Lab cluster\nprofile_name: Laptop\n")
    target = tmp_path / "out" / "profiles.txt"
    target.parent.mkdir()
    app = CistemApp(client_factory=fake.client, home="/nonexistent-home")
    async with app.run_test(size=(100, 30)) as pilot:
        await _open_settings(pilot)
        await pilot.press("i")
        assert isinstance(app.screen, TextPrompt)
        app.screen.query_one(Input).value = str(source)
        await pilot.press("enter")
        await _settle(pilot, 0.2)
        assert sorted(p["name"] for p in fake.profiles) == ["Default Local", "Lab cluster",
                                                             "Laptop"]  # fmt: skip
        assert app.query_one("#profiles-table", DataTable).row_count == 3
        await pilot.press("e")
        app.screen.query_one(Input).value = str(target)
        await pilot.press("enter")
        await _settle(pilot, 0.2)
    assert target.read_text().count("profile_name:") == 3


@pytest.mark.slow
@run_async
async def test_real_daemon_profiles_round_trip(daemon):  # noqa: F811
    app = CistemApp(home=daemon.home.root)
    async with app.run_test(size=(100, 30)) as pilot:
        panel = await _open_settings(pilot)
        await _settle(pilot, 0.3)
        assert panel.loaded and panel.profiles[0]["name"] == "Default Local"
        await pilot.press("a")
        app.query_one("#profile-name", Input).value = "Four local"
        app.query_one("#profile-commands", DataTable).focus()
        await pilot.press("enter")
        app.screen.query_one("#command-number-of-copies", Input).value = "4"
        await pilot.press("ctrl+s", "ctrl+s")
        await _settle(pilot, 0.5)
    with daemon.client() as client:
        stored = {p["name"]: p for p in client.profiles()}
        assert stored["Four local"]["commands"][0]["number_of_copies"] == 4
        assert "Four local" in client.export_profiles()
