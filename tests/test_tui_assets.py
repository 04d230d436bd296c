"""The Assets panel: paged tables, kinds, groups, import dialogs, display.

Against the fake daemon (10,000 images and 1,000,000 particle positions cost
nothing there) and against a real daemon with real MRC files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from daemon_fixtures import daemon, home  # noqa: F401  (pytest fixtures)
from textual.widgets import DataTable, Input, Label
from tui_fakes import FakeDaemon, run_async

from cistem_tui.app import CistemApp
from cistem_tui.dialogs.display import DisplayScreen
from cistem_tui.dialogs.imports import (
    FIELDS,
    ImportDialog,
    expand_paths,
    parse_fields,
)
from cistem_tui.dialogs.prompt import ChoicePrompt, TextPrompt
from cistem_tui.panels.assets import PAGE_ROWS, AssetsPanel
from cistem_tui.widgets.picture import PictureView
from cistemd.io import mrc


async def _settle(pilot, seconds: float = 0.1) -> None:
    await pilot.pause(seconds)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def _open_assets(pilot) -> AssetsPanel:
    await _settle(pilot)
    await pilot.press("2")
    await _settle(pilot)
    return pilot.app.query_one("#assets", AssetsPanel)


def _big() -> FakeDaemon:
    fake = FakeDaemon()
    fake.add_project("/data/p", movies=30, images=10_000, positions=1_000_000)
    return fake


def _page_calls(fake: FakeDaemon) -> list[dict]:
    return [dict(kw, kind=args[1]) for name, args, kw in fake.calls if name == "assets_page"]


@run_async
async def test_large_tables_are_paged_never_loaded_whole():
    fake = _big()
    app = CistemApp("/data/p", client_factory=fake.client, home="/nonexistent-home")
    async with app.run_test(size=(80, 24)) as pilot:
        panel = await _open_assets(pilot)
        table = app.query_one("#assets-table", DataTable)
        assert panel.kind.key == "movies" and table.row_count == 30
        await pilot.press("greater_than_sign")  # Images
        await _settle(pilot)
        assert panel.kind.key == "images"
        assert table.row_count == PAGE_ROWS and panel.total == 10_000
        assert "of 10,000" in str(app.query_one("#assets-page", Label).render())
        await pilot.press("n", "n")
        await _settle(pilot)
        assert panel.page_offset == 2 * PAGE_ROWS
        assert table.get_row_at(0)[1] == "201"
        await pilot.press("p")
        await _settle(pilot)
        assert panel.page_offset == PAGE_ROWS
        await pilot.press("greater_than_sign")  # Particle Positions
        await _settle(pilot)
        assert panel.total == 1_000_000 and table.row_count == PAGE_ROWS
        assert "page 1/10,000" in str(app.query_one("#assets-page", Label).render())
        # every request asked for one page only
        assert all(call["limit"] <= PAGE_ROWS for call in _page_calls(fake))
        await pilot.press("less_than_sign", "less_than_sign")
        await _settle(pilot)
        assert panel.kind.key == "movies"


@run_async
async def test_groups_create_add_rename_remove_by_keys():
    fake = _big()
    app = CistemApp("/data/p", client_factory=fake.client, home="/nonexistent-home")
    async with app.run_test(size=(100, 30)) as pilot:
        panel = await _open_assets(pilot)
        await pilot.press("space", "space", "space")  # mark movies 1-3
        assert panel.marked == {1, 2, 3}
        await pilot.press("g")
        assert isinstance(app.screen, TextPrompt)
        await pilot.press(*"good", "enter")
        await _settle(pilot, 0.2)
        groups = fake.projects["/data/p"].groups["movie"]
        assert [g["name"] for g in groups] == ["good"]
        assert fake.projects["/data/p"].members[("movie", 1)] == [1, 2, 3]
        assert panel.group_id == 1 and panel.total == 3 and not panel.marked
        # rename the shown group
        await pilot.press("r")
        await pilot.press(*"best", "enter")  # the old name is selected: typing replaces it
        await _settle(pilot, 0.2)
        assert fake.projects["/data/p"].groups["movie"][0]["name"] == "best"
        # remove the current row (movie 1) from the group
        app.query_one("#assets-table", DataTable).move_cursor(row=0)
        await pilot.press("x")
        await _settle(pilot, 0.2)
        assert fake.projects["/data/p"].members[("movie", 1)] == [2, 3]
        # back to All, add movie 10 to the group through the chooser
        panel.group_id = 0
        panel.reload()
        await _settle(pilot)
        app.query_one("#assets-table", DataTable).move_cursor(row=9)
        await pilot.press("a")
        assert isinstance(app.screen, ChoicePrompt)
        await pilot.press("enter")
        await _settle(pilot, 0.2)
        assert fake.projects["/data/p"].members[("movie", 1)] == [2, 3, 10]


@run_async
async def test_movie_import_dialog_sends_every_field():
    fake = _big()
    app = CistemApp("/data/p", client_factory=fake.client, home="/nonexistent-home")
    async with app.run_test(size=(100, 40)) as pilot:
        await _open_assets(pilot)
        await pilot.press("i")
        dialog = app.screen
        assert isinstance(dialog, ImportDialog) and dialog.kind == "movies"
        # every field of cisTEM's dialog is there
        for spec in FIELDS["movies"]:
            dialog.query_one(f"#import-{spec.name.replace('_', '-')}")
        dialog.query_one("#import-paths", Input).value = __file__
        dialog.query_one("#import-voltage-kv", Input).value = "200"
        dialog.query_one("#import-pixel-size-angstroms", Input).value = "0.83"
        dialog.query_one("#import-use-gain").value = True
        dialog.query_one("#import-gain-filename", Input).value = __file__
        dialog.query_one("#import-resample").value = True
        dialog.query_one("#import-desired-pixel-size-angstroms", Input).value = "1.2"
        dialog.query_one("#import-correct-mag-distortion").value = True
        dialog.query_one("#import-mag-distortion-angle", Input).value = "42.5"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await _settle(pilot, 0.2)
    kind, files, options = fake.imported[-1]
    assert kind == "movies" and files == [str(Path(__file__).resolve())]
    assert options["voltage_kv"] == 200.0 and options["pixel_size_angstroms"] == 0.83
    assert options["spherical_aberration_mm"] == 2.7 and options["exposure_per_frame"] == 1.0
    assert options["gain_filename"] == str(Path(__file__).resolve())
    assert options["desired_pixel_size_angstroms"] == 1.2
    assert options["correct_mag_distortion"] is True and options["mag_distortion_angle"] == 42.5
    assert "dark_filename" not in options  # its switch is off


@run_async
async def test_bad_import_field_keeps_the_dialog_open():
    fake = _big()
    app = CistemApp("/data/p", client_factory=fake.client, home="/nonexistent-home")
    async with app.run_test(size=(100, 40)) as pilot:
        panel = await _open_assets(pilot)
        panel.show_kind("volumes")
        await _settle(pilot)
        await pilot.press("i")
        dialog = app.screen
        assert isinstance(dialog, ImportDialog) and dialog.kind == "volumes"
        dialog.query_one("#import-paths", Input).value = "/no/such/*.mrc"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is dialog
        assert any("no such file" in n.message for n in app._notifications)
        await pilot.press("escape")
        assert app.screen is not dialog
    assert not fake.imported


def test_parse_fields_checks_and_converts(tmp_path: Path):
    for name in ("a.mrc", "b.mrc", "c.txt"):
        (tmp_path / name).write_text("x")
    assert expand_paths(str(tmp_path), "volumes") == [
        str(tmp_path / "a.mrc"),
        str(tmp_path / "b.mrc"),
    ]
    assert expand_paths(f"{tmp_path}/*.mrc, {tmp_path}/c.txt", "images")[-1].endswith("c.txt")
    with pytest.raises(ValueError, match="nothing matches"):
        expand_paths(f"{tmp_path}/*.tif", "movies")
    request = parse_fields(
        "refinement_package",
        {
            "stack": str(tmp_path / "a.mrc"),
            "parameters": str(tmp_path / "c.txt"),
            "parameters_format": "frealign",
            "name": "",
            "pixel_size_angstroms": "",
            "symmetry": "O",
            "molecular_weight_kda": "400",
            "largest_dimension_angstroms": "150",
            "amplitude_contrast": "0.07",
            "spherical_aberration_mm": "2.7",
            "voltage_kv": "300",
            "protein_is_white": False,
        },
    )
    assert request.paths == [str(tmp_path / "a.mrc"), str(tmp_path / "c.txt")]
    assert request.options["symmetry"] == "O" and "pixel_size_angstroms" not in request.options
    assert request.options["parameters_format"] == "frealign"
    with pytest.raises(ValueError, match="Pixel size"):
        parse_fields("images", {"paths": str(tmp_path / "a.mrc"), "voltage_kv": "300",
                                "spherical_aberration_mm": "2.7",
                                "pixel_size_angstroms": "one"})  # fmt: skip
    with pytest.raises(ValueError, match="exactly one"):
        parse_fields("positions", {"paths": f"{tmp_path}/a.mrc {tmp_path}/b.mrc"})


@run_async
async def test_display_draws_the_daemons_picture():
    fake = _big()
    app = CistemApp("/data/p", client_factory=fake.client, home="/nonexistent-home")
    async with app.run_test(size=(80, 24)) as pilot:
        panel = await _open_assets(pilot)
        panel.show_kind("positions")
        await _settle(pilot)
        await pilot.press("d")
        await _settle(pilot, 0.2)
        assert isinstance(app.screen, DisplayScreen)
        view = app.screen.query_one(PictureView)
        assert view.picture is not None and view.picture.width == 64
        assert len(view.circles) == 1  # the particle, on its micrograph
        previews = [args for name, args, kwargs in fake.calls if name == "image_preview"]
        assert previews[-1][1] == "image"
        await pilot.press("escape")
        assert not isinstance(app.screen, DisplayScreen)


# -- a real daemon ---------------------------------------------------------------------------------


def _micrographs(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    paths = []
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"mic_{i:02d}.mrc"
        mrc.write(path, rng.normal(size=(64, 64)).astype(np.float32), voxel_size_angstroms=1.5)
        paths.append(path)
    return paths


@pytest.mark.slow
@run_async
async def test_real_daemon_import_group_and_page(daemon, tmp_path: Path):  # noqa: F811
    project = tmp_path / "proj"
    _micrographs(tmp_path / "raw", 5)
    with daemon.client() as client:
        client.create_project(project)
    app = CistemApp(str(project), home=daemon.home.root)
    async with app.run_test(size=(100, 40)) as pilot:
        panel = await _open_assets(pilot)
        panel.show_kind("images")
        await _settle(pilot)
        assert panel.total == 0
        await pilot.press("i")
        dialog = app.screen
        assert isinstance(dialog, ImportDialog)
        dialog.query_one("#import-paths", Input).value = f"{tmp_path}/raw/*.mrc"
        dialog.query_one("#import-pixel-size-angstroms", Input).value = "1.5"
        await pilot.press("ctrl+s")
        await _settle(pilot, 1.0)
        await _settle(pilot, 0.3)
        table = app.query_one("#assets-table", DataTable)
        assert panel.total == 5 and table.row_count == 5
        await pilot.press("space", "space")
        await pilot.press("g", *"first two", "enter")
        await _settle(pilot, 0.5)
        await _settle(pilot, 0.3)
        assert panel.total == 2
        await pilot.press("d")
        await _settle(pilot, 1.0)
        view = app.screen.query_one(PictureView)
        assert view.picture is not None and view.picture.width == 64
        await pilot.press("escape")
    with daemon.client() as client:
        groups = client.groups(project, "image")
        assert [(g["name"], g["count"]) for g in groups] == [("All Images", 5), ("first two", 2)]
        rows, total = client.assets_page(project, "images")
        assert total == 5 and rows[0]["pixel_size"] == pytest.approx(1.5)
