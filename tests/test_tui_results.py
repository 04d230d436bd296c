"""Result queries and pictures (daemon side) and the Results panel (Pilot).

The daemon side is tested on a Project whose rows are inserted through the
Project API (the producing actions are not needed); the panel runs against an
in-process "daemon": a client whose methods call the same ``client_ops``
functions on that project. One test goes through a real daemon.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import daemon_fixtures as fx
import numpy as np
import pytest
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Input, Select

from cistem_tui.panels.results import ResultsPanel, _zero_marks, parse_filters
from cistem_tui.widgets.picture import PictureView
from cistem_tui.widgets.plots import CtfFitPlot, DriftPlot, FscPlot
from cistemd import protocol
from cistemd.errors import InvalidInputError
from cistemd.io import mrc
from cistemd.manager import client_ops
from cistemd.project import Project

daemon = fx.daemon
home = fx.home

PIXEL = 1.5


def _gradient_file(path: Path, ny: int = 64, nx: int = 128) -> Path:
    """An image whose value is x + 1000 * y (so rows and columns are recognisable)."""
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float32)
    mrc.write(path, x + 1000.0 * y, voxel_size_angstroms=PIXEL)
    return path


def _avrot(path: Path, n: int = 50) -> None:
    lines = ["# CTFFIND rotational averages", "# six lines per micrograph"]
    k = [0.25 * i / n for i in range(n)]
    lines.append(" ".join(f"{v:.6f}" for v in k))
    for factor in (1.0, 1.1, 0.5, 0.9, 0.2):
        lines.append(" ".join(f"{factor * math.cos(30 * v):.6f}" for v in k))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def project(tmp_path: Path):
    """A project with 3 images, CTF estimates, one alignment, picks and a refinement's FSC."""
    with Project.create(tmp_path / "P") as opened:
        root = Path(opened.path)
        images = []
        for index in range(3):
            path = _gradient_file(root / "Assets" / "Images" / f"sum_{index}.mrc")
            images.append(
                opened.add_image(path, pixel_size_angstroms=PIXEL, voltage_kv=300.0,
                                 spherical_aberration_mm=2.7)
            )
        diagnostic = root / "Assets" / "CTF" / "sum_0_CTF_0.mrc"
        spectrum = np.fromfunction(lambda y, x: np.hypot(y - 32, x - 32), (64, 64))
        mrc.write(diagnostic, spectrum.astype(np.float32), voxel_size_angstroms=PIXEL)
        _avrot(root / "Assets" / "CTF" / "sum_0_CTF_0_avrot.txt")
        fits = [(12000.0, 11000.0, 0.12, 4.0), (20000.0, 19900.0, 0.05, 7.5),
                (15000.0, 14000.0, 0.20, 3.2)]
        for image, (d1, d2, score, fit) in zip(images, fits, strict=True):
            opened.add_ctf_estimate(
                image, defocus1_angstroms=d1, defocus2_angstroms=d2, defocus_angle_degrees=30.0,
                score=score, detected_ring_resolution_angstroms=fit, job_id=4,
                output_diagnostic_file=diagnostic if image == images[0] else None,
                parameters={"AMPLITUDE_CONTRAST": 0.07},
            )
        movie = opened.insert_row(
            "MOVIE_ASSETS",
            {"NAME": "movie_1", "FILENAME": str(root / "movie_1.tif"), "X_SIZE": 128,
             "Y_SIZE": 64, "NUMBER_OF_FRAMES": 4, "VOLTAGE": 300.0, "PIXEL_SIZE": PIXEL,
             "DOSE_PER_FRAME": 1.0, "SPHERICAL_ABERRATION": 2.7, "OUTPUT_BINNING_FACTOR": 1.0},
        )
        alignment = opened.add_movie_alignment(
            movie, output_file=root / "Assets" / "Images" / "sum_0.mrc",
            x_shifts_angstroms=[0.0, 3.0, 3.0, 3.0], y_shifts_angstroms=[0.0, 4.0, 4.0, 5.0],
            job_id=2,
        )
        opened.connection.execute(
            "UPDATE IMAGE_ASSETS SET ALIGNMENT_ID = ?, PARENT_MOVIE_ID = ? "
            "WHERE IMAGE_ASSET_ID = ?",
            (alignment, movie, images[0]),
        )
        opened.connection.commit()
        picking = opened.insert_row(
            "PARTICLE_PICKING_LIST",
            {"PICKING_JOB_ID": 5, "PARENT_IMAGE_ASSET_ID": images[1],
             "CHARACTERISTIC_RADIUS": 15.0, "MAXIMUM_RADIUS": 20.0},
        )
        opened.add_particle_positions(images[1], [30.0, 90.0], [15.0, 60.0],
                                      peak_heights=[5.0, 6.0], picking_id=picking, pick_job_id=5)
        volume_path = root / "Assets" / "Volumes" / "volume_1_1.mrc"
        z, y, x = np.mgrid[0:16, 0:16, 0:16].astype(np.float32)
        mrc.write(volume_path, x + 10 * y + 100 * z, voxel_size_angstroms=2.0)
        (volume,) = opened.import_volumes([volume_path], pixel_size_angstroms=2.0)
        package = opened.insert_row(
            "REFINEMENT_PACKAGE_ASSETS",
            {"NAME": "pkg", "STACK_FILENAME": str(root / "stack.mrc"), "STACK_BOX_SIZE": 16,
             "OUTPUT_PIXEL_SIZE": 2.0, "SYMMETRY": "C1", "NUMBER_OF_CLASSES": 1},
        )
        refinement = opened.insert_row(
            "REFINEMENT_LIST",
            {"REFINEMENT_PACKAGE_ASSET_ID": package, "NAME": "r1", "NUMBER_OF_CLASSES": 1,
             "RESOLUTION_STATISTICS_BOX_SIZE": 16, "RESOLUTION_STATISTICS_PIXEL_SIZE": 2.0},
        )
        opened.insert_rows(
            "REFINEMENT_CLASS_STATISTICS",
            [{"REFINEMENT_ID": refinement, "CLASS_NUMBER": 1, "SHELL": shell,
              "RESOLUTION": 32.0 / shell, "FSC": 1.0 - 0.12 * shell, "PART_FSC": 1.0 - 0.1 * shell,
              "PART_SSNR": 1.0, "REC_SSNR": 1.0} for shell in range(1, 9)],
        )
        opened.insert_row(
            "RECONSTRUCTION_LIST",
            {"REFINEMENT_PACKAGE_ID": package, "REFINEMENT_ID": refinement, "NAME": "rec",
             "CLASS_NUMBER": 1, "VOLUME_ASSET_ID": volume},
        )
        yield opened


def _query(project, query, parameters=None, **kwargs):
    reply = client_ops.results_query(project, query, parameters or {}, **kwargs)
    protocol.new_message("results_reply", reply)  # the reply fits the protocol
    return reply


# -------------------------------------------------------------------------- daemon side


def test_actions_are_listed_with_their_forms(monkeypatch):
    from cistemd.actions import base

    monkeypatch.setitem(base.ACTION_MODULES, "zz_broken", "cistemd.actions.no_such_module")
    reply = client_ops.list_actions()
    protocol.new_message("actions_reply", reply)
    selftest = next(a for a in reply["actions"] if a["name"] == "selftest")
    tasks = next(p for p in selftest["parameters"] if p["name"] == "tasks")
    assert tasks["kind"] == "int" and tasks["default"] == 10 and tasks["minimum"] == 1
    work = next(p for p in selftest["parameters"] if p["name"] == "work")
    assert "sleep" in work["choices"]
    assert [p for p in reply["problems"] if "zz_broken" in p]
    assert "zz_broken" not in [a["name"] for a in reply["actions"]]


def test_ctf_table_sorts_filters_and_selects(project):
    reply = _query(project, "ctf_table", {"sort": "fit_resolution"})
    assert reply["total"] == 3
    assert [r["fit_resolution"] for r in reply["rows"]] == [3.2, 4.0, 7.5]
    row = reply["rows"][1]
    assert row["defocus"] == pytest.approx(11500.0) and row["astigmatism"] == pytest.approx(1000)
    reply = _query(project, "ctf_table", {"sort": "score", "descending": True})
    assert [r["score"] for r in reply["rows"]] == [0.2, 0.12, 0.05]
    better_than_5 = {"filters": {"fit_resolution": [None, 5.0]}}
    reply = _query(project, "ctf_table", better_than_5)
    assert reply["total"] == 2 and {r["image_asset_id"] for r in reply["rows"]} == {1, 3}
    ids = _query(project, "ctf_table", {**better_than_5, "ids_only": True})["data"]
    assert sorted(ids["image_asset_ids"]) == [1, 3]
    assert _query(project, "ctf_table", {"job_id": 99})["total"] == 0
    group = project.create_group("image", "two")
    project.add_to_group("image", group, [2, 3])
    assert _query(project, "ctf_table", {"image_group": group})["total"] == 2
    assert _query(project, "ctf_table", limit=1, offset=2)["rows"][0]["image_asset_id"] == 3
    with pytest.raises(InvalidInputError, match="cannot sort"):
        _query(project, "ctf_table", {"sort": "filename; DROP TABLE"})
    with pytest.raises(InvalidInputError, match="cannot filter"):
        _query(project, "ctf_table", {"filters": {"name": [None, 1]}})


def test_ctf_fit_reads_avrot_and_places_zeros(project):
    reply = _query(project, "ctf_fit", {"image_asset_id": 1})
    data = reply["data"]
    assert len(data["spatial_frequency"]) == 50
    assert data["ctf_fit"][0] == pytest.approx(0.5)
    assert data["diagnostic_pixel_size_angstroms"] == pytest.approx(PIXEL)
    # First zero of an 11,500 Å defocus at 300 kV (Cs negligible there): χ ≈ πλΔf k² = π
    # less the amplitude-contrast phase, so k ≈ 1/sqrt(λΔf) ≈ 0.066/Å, a little lower.
    wavelength = 0.019687  # Å at 300 kV
    first = data["zeros_mean_defocus"][0]
    assert 0.97 < first * math.sqrt(wavelength * 11500.0) < 1.0
    azimuths = dict((a, ks) for a, ks in data["zeros_by_azimuth"])
    # The zero comes earlier along the larger defocus (30°) than across it (120°).
    assert azimuths[30.0][0] < azimuths[120.0][0]
    assert reply["rows"][0]["fit_resolution"] == 4.0
    # Another image has no diagnostic file: curves are empty, no error.
    other = _query(project, "ctf_fit", {"image_asset_id": 2})["data"]
    assert "spatial_frequency" not in other
    with pytest.raises(InvalidInputError, match="image 77"):
        _query(project, "ctf_fit", {"image_asset_id": 77})


def test_alignment_queries(project):
    listed = _query(project, "alignments")
    row = listed["rows"][0]
    assert row["frames"] == 4 and row["image_asset_id"] == 1
    assert row["total_drift"] == pytest.approx(6.0) and row["max_shift"] == pytest.approx(
        math.hypot(3, 5)
    )
    assert _query(project, "alignments", {"job_id": 3})["total"] == 0
    shifts = _query(project, "alignment_shifts", {"image_asset_id": 1})
    assert [(r["x"], r["y"]) for r in shifts["rows"]] == [(0, 0), (3, 4), (3, 4), (3, 5)]
    assert shifts["data"]["movie_asset_id"] == 1
    assert _query(project, "alignment_shifts", {"movie_asset_id": 1})["total"] == 4
    with pytest.raises(InvalidInputError, match="aligned movie"):
        _query(project, "alignment_shifts", {"image_asset_id": 2})


def test_pick_queries(project):
    images = _query(project, "picked_images")
    assert images["rows"] == [
        {"image_asset_id": 2, "name": "sum_1", "picks": 2, "picking_id": 1, "job_id": 5}
    ]
    picks = _query(project, "picks", {"image_asset_id": 2})
    assert [(r["x"], r["y"]) for r in picks["rows"]] == [(30.0, 15.0), (90.0, 60.0)]
    assert picks["data"]["characteristic_radius"] == 15.0
    assert _query(project, "picks", {"image_asset_id": 2, "job_id": 6})["total"] == 0


def test_fsc_of_a_volume(project):
    reply = _query(project, "fsc", {"volume_asset_id": 1})
    assert reply["total"] == 8 and reply["rows"][0]["resolution"] == 32.0
    # FSC = 1 - 0.12 s drops below 0.5 between shells 4 (0.52) and 5 (0.40).
    crossing = reply["data"]["resolution_fsc_05"]
    assert 32 / 5 < crossing < 32 / 4
    assert reply["data"]["resolution_fsc_0143"] < crossing
    nothing = _query(project, "fsc", {"refinement_id": 0})
    assert nothing["total"] == 0


def test_image_preview_bins_flips_and_stays_in_the_project(project, tmp_path):
    reply = client_ops.image_preview(project, "image", asset_id=1, max_size=32)
    protocol.new_message("image_reply", reply)
    assert (reply["width"], reply["height"]) == (32, 16)
    assert reply["scale"] == pytest.approx(0.25) and reply["pixel_size_angstroms"] == PIXEL
    pixels = np.frombuffer(reply["pixels"], np.uint8).reshape(16, 32)
    # y up: the top row comes from the file's last rows (largest values).
    assert pixels[0, 0] > pixels[-1, 0]
    assert pixels[-1, 0] <= pixels[-1, -1]
    orth = client_ops.image_preview(project, "volume", asset_id=1, which="volume_orth",
                                    max_size=96)
    assert (orth["width"], orth["height"]) == (48, 32) and orth["original_depth"] == 16
    diagnostic = client_ops.image_preview(project, "image", asset_id=1, which="ctf_diagnostic")
    assert diagnostic["original_width"] == 64
    with pytest.raises(InvalidInputError, match="is missing"):
        client_ops.image_preview(project, "image", asset_id=2, which="ctf_diagnostic")
    with pytest.raises(InvalidInputError, match="spectrum"):
        client_ops.image_preview(project, "image", asset_id=1, which="spectrum")
    # A movie shows its aligned sum; a movie without one, the sum of its first frames.
    assert client_ops.image_preview(project, "movie", asset_id=1)["file"].endswith("sum_0.mrc")
    stack = Path(project.path) / "raw.mrc"
    frames = np.stack([np.full((8, 16), float(i), np.float32) for i in range(6)])
    frames[:, :4, :] += 10.0  # the first rows (bottom of the picture) brighter
    mrc.write(stack, frames, voxel_size_angstroms=1.0)
    movie = project.import_movies([stack], voltage_kv=300.0, spherical_aberration_mm=2.7,
                                  pixel_size_angstroms=1.0, exposure_per_frame=1.0)[0]
    summed = client_ops.image_preview(project, "movie", asset_id=movie)
    assert summed["original_depth"] == 6 and (summed["width"], summed["height"]) == (16, 8)
    rows = np.frombuffer(summed["pixels"], np.uint8).reshape(8, 16)
    assert rows[-1, 0] > rows[0, 0]
    with pytest.raises(InvalidInputError, match="no aligned sum"):
        client_ops.image_preview(project, "movie", asset_id=movie, which="spectrum")
    outside = _gradient_file(tmp_path / "outside.mrc")
    with pytest.raises(InvalidInputError, match="inside the project"):
        client_ops.image_preview(project, "file", path=str(outside))
    inside = client_ops.image_preview(
        project, "file", path=str(Path(project.path) / "Assets" / "Images" / "sum_2.mrc")
    )
    assert inside["original_width"] == 128


# -------------------------------------------------------------------------- the panel


class InProcessClient:
    """Client methods answered by client_ops on one open Project (a daemon without sockets)."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.groups_made: list[tuple[str, list[int]]] = []

    def results(self, path, query, parameters=None, *, limit=None):
        reply = client_ops.results_query(self.project, query, parameters or {},
                                         limit=limit or 10_000)
        return reply["rows"], reply["total"], reply["data"]

    def image_preview(self, path, source, **kwargs):
        return client_ops.image_preview(self.project, source, **kwargs)

    def assets(self, path, kind, *, group_id=0, limit=None):
        reply = client_ops.list_assets(self.project, kind, limit=limit or 1000)
        return reply["assets"], reply["total"]

    def jobs_page(self, **kwargs):
        return [{"job_id": "4", "action": "find_ctf", "state": "completed"},
                {"job_id": "2", "action": "align_movies", "state": "completed"}], 2

    def selected_image_ids(self, path, parameters):
        reply = client_ops.results_query(self.project, "ctf_table",
                                         {**parameters, "ids_only": True}, limit=10_000)
        return reply["data"]["image_asset_ids"]

    def create_group(self, path, kind, name):
        return client_ops.edit_groups(self.project, kind, "create", name=name)["group_id"]

    def edit_group(self, path, kind, operation, *, group_id=0, asset_ids=()):
        self.groups_made.append((operation, list(asset_ids)))
        return client_ops.edit_groups(self.project, kind, operation, group_id=group_id,
                                      asset_ids=list(asset_ids))


class Host(App[None]):
    def __init__(self, client: Any, project: str) -> None:
        super().__init__()
        self.client = client
        self.project_path = project
        self.ssh_mode = False

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.client, name)(*args, **kwargs)  # in-process: no thread needed

    def compose(self) -> ComposeResult:
        yield ResultsPanel(id="results", classes="panel")


async def _until(pilot: Any, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


def test_parse_filters():
    assert parse_filters("fit_resolution<5 score>=0.1") == {
        "fit_resolution": [None, 5.0], "score": [0.1, None]
    }
    assert parse_filters("defocus=1e4") == {"defocus": [1e4, 1e4]}
    with pytest.raises(ValueError, match="fit_resolution<5"):
        parse_filters("better than 5")


def test_zero_marks_sit_on_rings_around_the_centre():
    reply = {"original_width": 64, "original_height": 64, "scale": 1.0}
    data = {"diagnostic_pixel_size_angstroms": 1.0, "zeros_by_azimuth": [[0.0, [0.25]],
                                                                        [90.0, [0.125]]]}
    marks = _zero_marks(reply, data)
    assert [(m.x, m.y) for m in marks] == [(48.0, 32.0), (32.0, 24.0)]


def test_results_panel_shows_ctf_alignment_picks_and_volumes(project):
    async def run() -> None:
        client = InProcessClient(project)
        app = Host(client, str(project.path))
        async with app.run_test(size=(80, 24)) as pilot:
            panel = app.query_one(ResultsPanel)
            table = app.query_one("#result-table", DataTable)
            view = app.query_one("#result-picture", PictureView)
            await _until(pilot, lambda: table.row_count == 3 and view.picture is not None)
            assert view.marks  # CTF zeros on the diagnostic
            assert app.query_one(CtfFitPlot).series
            # Sort by fit resolution with the key, then reverse it.
            table.focus()
            await pilot.press("s", "s", "s", "s")  # image -> defocus -> astig -> score -> fit
            await _until(pilot, lambda: panel.sort == "fit_resolution"
                         and [r["fit_resolution"] for r in panel.rows] == [3.2, 4.0, 7.5])
            await pilot.press("r")
            await _until(pilot, lambda: [r["fit_resolution"] for r in panel.rows]
                         == [7.5, 4.0, 3.2])
            # Make a group of the images fitted better than 5 Å.
            field = app.query_one("#ctf-filter", Input)
            field.focus()
            await pilot.press(*"fit_resolution<5", "enter")
            await _until(pilot, lambda: table.row_count == 2)
            table.focus()
            await pilot.press("g")
            await _until(pilot, lambda: bool(client.groups_made))
            assert sorted(client.groups_made[0][1]) == [1, 3]
            groups = project.list_groups("image")
            made = [g for g in groups if g["name"] == "CTF fit_resolution<5"]
            assert made and made[0]["count"] == 2
            # Align Movies: drift plot and the aligned sum.
            app.query_one("#result-kind", Select).value = "alignments"
            await _until(pilot, lambda: panel.kind == "alignments" and table.row_count == 1
                         and bool(app.query_one(DriftPlot).series))
            assert app.query_one(DriftPlot).series[0][1] == [0.0, 3.0, 3.0, 3.0]
            await _until(pilot, lambda: view.picture is not None and not view.marks)
            # Find Particles: circles at the picks.
            app.query_one("#result-kind", Select).value = "picks"
            await _until(pilot, lambda: panel.kind == "picks" and len(view.circles) == 2)
            # 30 Å, 15 Å at 1.5 Å/px, scale 1 (128 px fits 384): (20, 64 - 10) px.
            assert (view.circles[0].x, view.circles[0].y) == (20.0, 54.0)
            assert view.circles[0].radius == pytest.approx(10.0)
            # Volumes: orthogonal views and the FSC.
            app.query_one("#result-kind", Select).value = "volumes"
            await _until(pilot, lambda: panel.kind == "volumes"
                         and bool(app.query_one(FscPlot).series))
            await _until(pilot, lambda: view.picture is not None and view.picture.height == 32)
            assert "Å at 0.143" in app.query_one(FscPlot).title
            await pilot.press("i")  # the central section instead of the orthogonal views
            await _until(pilot, lambda: view.picture is not None and view.picture.height == 16)
            await pilot.press("v")
            assert app.query_one("#result-view").has_class("picture-only")
            await pilot.press("z")
            assert app.query_one("#results-body").has_class("wide")

    asyncio.run(run())


# -------------------------------------------------------------------------- a real daemon


def test_queries_and_pictures_through_a_real_daemon(daemon, project):
    path = str(project.path)
    project.close()
    with daemon.client() as client:
        client.open_project(path)
        assert any(a["name"] == "selftest" for a in client.actions())
        picture = client.image_preview(path, "image", asset_id=1, max_size=64)
        assert (picture["width"], picture["height"]) == (64, 32)
        assert len(picture["pixels"]) == 64 * 32
        rows, total, _ = client.results(path, "ctf_table", {"sort": "score"})
        assert total == 3 and [r["score"] for r in rows] == [0.05, 0.12, 0.2]
        assert sorted(client.selected_image_ids(
            path, {"filters": {"fit_resolution": [None, 5.0]}}
        )) == [1, 3]
        _, _, fit = client.results(path, "ctf_fit", {"image_asset_id": 1})
        assert len(fit["spatial_frequency"]) == 50
        with pytest.raises(Exception, match="inside the project"):
            client.image_preview(path, "file", path="/etc/hostname")


# -------------------------------------------------------------------------- snapshots

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_results_panel_ctf(snap_compare, project, size):
    async def ready(pilot: Any) -> None:
        view = pilot.app.query_one("#result-picture", PictureView)
        table = pilot.app.query_one("#result-table", DataTable)
        await _until(pilot, lambda: table.row_count == 3 and view.picture is not None)
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    app = Host(InProcessClient(project), str(project.path))
    assert snap_compare(app, terminal_size=size, run_before=ready)
