"""Snapshot tests of the main screens at 80×24 and 160×48, against the fake daemon.

Update the pictures after a deliberate change with
``pytest tests/test_tui_snapshots.py --snapshot-update`` and look at them
(``tests/__snapshots__/test_tui_snapshots/*.svg``) before committing.
"""

from __future__ import annotations

import pytest
from tui_fakes import FakeDaemon

from cistem_tui.app import CistemApp

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]


def _app() -> CistemApp:
    fake = FakeDaemon()
    fake.add_project("/data/apoferritin", movies=48, images=10_000, positions=1_000_000)
    fake.add_job("/data/apoferritin", action="selftest", n_tasks=20, state="completed")
    fake.add_job("/data/apoferritin", action="ctffind", n_tasks=48, state="running")
    # follow_events off: the picture must not depend on when a thread gets to run
    return CistemApp(
        "/data/apoferritin",
        client_factory=fake.client,
        home="/nonexistent-home",
        follow_events=False,
    )


def _before(*keys: str):
    async def run_before(pilot) -> None:
        await pilot.pause(0.1)
        await pilot.app.workers.wait_for_complete()
        for key in keys:
            await pilot.press(key)
            await pilot.pause(0.05)
            await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.1)
        await pilot.app.workers.wait_for_complete()
        pilot.app.clear_notifications()
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_overview(snap_compare, size):
    assert snap_compare(_app(), terminal_size=size, run_before=_before())


@pytest.mark.parametrize("size", SIZES)
def test_assets_images(snap_compare, size):
    assert snap_compare(_app(), terminal_size=size, run_before=_before("2", "greater_than_sign"))


@pytest.mark.parametrize("size", SIZES)
def test_jobs(snap_compare, size):
    assert snap_compare(_app(), terminal_size=size, run_before=_before("5"))


@pytest.mark.parametrize("size", SIZES)
def test_settings(snap_compare, size):
    assert snap_compare(_app(), terminal_size=size, run_before=_before("6"))
