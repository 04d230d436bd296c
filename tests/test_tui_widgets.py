"""TUI widgets: half-block pictures, overlays, plots; and the TUI's import hygiene."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from rich.color import Color
from textual.app import App, ComposeResult
from textual.geometry import Size

from cistem_tui.widgets.picture import (
    Circle,
    GreyPicture,
    Mark,
    PictureView,
    fit_size,
    half_block_rows,
    picture_point,
    scale_picture,
)
from cistem_tui.widgets.plots import CtfFitPlot, DriftPlot, FscPlot


def _gradient(width: int, height: int) -> GreyPicture:
    """Left-to-right ramp 0..255."""
    row = bytes(round(255 * x / (width - 1)) for x in range(width))
    return GreyPicture(width, height, row * height)


def _cells(rows: list) -> list[list[tuple[int, int]]]:
    """Per cell: (top grey, bottom grey) from the segments' colours."""
    out = []
    for segments in rows:
        cells = []
        for segment in segments:
            top = segment.style.color.get_truecolor().red
            bottom = segment.style.bgcolor.get_truecolor().red
            cells += [(top, bottom)] * len(segment.text)
            assert set(segment.text) == {"▀"}
        out.append(cells)
    return out


def test_picture_needs_matching_bytes():
    with pytest.raises(ValueError, match="needs 6 bytes"):
        GreyPicture(3, 2, b"12345")
    reply = {"width": 2, "height": 1, "pixels": b"\x00\xff"}
    assert GreyPicture.from_reply(reply).row(0) == b"\x00\xff"


def test_scaling_averages_areas():
    picture = GreyPicture(4, 2, bytes([0, 100, 200, 255, 0, 100, 200, 255]))
    assert scale_picture(picture, 2, 1) == [[50, 228]]
    assert scale_picture(picture, 4, 2) == [[0, 100, 200, 255]] * 2
    assert fit_size(GreyPicture(100, 50, bytes(5000)), Size(80, 24)) == (80, 40)
    assert fit_size(GreyPicture(50, 100, bytes(5000)), Size(80, 24)) == (24, 48)


def test_half_blocks_of_a_gradient_increase_left_to_right():
    rows = half_block_rows(_gradient(64, 32), Size(32, 8))
    cells = _cells(rows)
    assert len(cells) == 8 and all(len(row) == 32 for row in cells)
    for row in cells:
        greys = [top for top, _ in row]
        assert greys == sorted(greys)
        assert greys[0] < 16 and greys[-1] > 240
        assert all(top == bottom for top, bottom in row)  # constant down each column
    # Quantised: equal neighbours merge, so a row has fewer segments than cells.
    assert all(len(segments) <= 32 for segments in rows)


def test_vertical_gradient_uses_both_halves_of_a_cell():
    column = [round(255 * y / 15) for y in range(16)]
    picture = GreyPicture(1, 16, bytes(column))
    cells = _cells(half_block_rows(picture, Size(1, 8)))
    tops = [row[0][0] for row in cells]
    bottoms = [row[0][1] for row in cells]
    assert all(t < b for t, b in zip(tops, bottoms, strict=True))
    assert tops == sorted(tops)


def test_overlays_paint_circles_and_marks():
    picture = GreyPicture(40, 40, bytes(1600))
    rows = half_block_rows(
        picture,
        Size(40, 20),
        circles=[Circle(20, 20, 8, color=(0, 230, 0))],
        marks=[Mark(2, 2, color=(255, 60, 60))],
    )
    colours = {
        (seg.style.color.get_truecolor(), seg.style.bgcolor.get_truecolor())
        for row in rows
        for seg in row
    }
    flat = {c for pair in colours for c in pair}
    assert Color.from_rgb(0, 230, 0).get_truecolor() in flat
    assert Color.from_rgb(255, 60, 60).get_truecolor() in flat
    # The centre of the circle stays dark.
    centre = _cells(rows)[10][20]
    assert centre[0] < 16


def test_picture_point_flips_y():
    # 1 Å pixels, picture at half scale, file 100 pixels high.
    x, y = picture_point(10.0, 0.0, pixel_size_angstroms=1.0, scale=0.5, original_height=100)
    assert (x, y) == (5.0, 50.0)
    x, y = picture_point(0.0, 100.0, pixel_size_angstroms=2.0, scale=1.0, original_height=100)
    assert (x, y) == (0.0, 50.0)


class _WidgetsApp(App[None]):
    def compose(self) -> ComposeResult:
        yield PictureView(id="picture")
        yield DriftPlot(id="drift")
        yield CtfFitPlot(id="ctf")
        yield FscPlot(id="fsc")


def test_widgets_render_in_an_app():
    asyncio.run(_widgets_render())


async def _widgets_render() -> None:
    app = _WidgetsApp()
    async with app.run_test(size=(80, 24)) as pilot:
        view = app.query_one(PictureView)
        assert "no picture" in "".join(s.text for s in view.render_line(view.size.height // 2))
        view.show(_gradient(64, 64))
        await pilot.pause()
        line = view.render_line(0)
        assert "▀" in line.text
        drift = app.query_one(DriftPlot)
        drift.show_shifts([{"frame": i, "x": 0.5 * i, "y": -0.25 * i} for i in range(1, 11)])
        ctf = app.query_one(CtfFitPlot)
        frequencies = [i / 100 for i in range(1, 40)]
        ctf.show_fit(
            {
                "spatial_frequency": frequencies,
                "rotational_average": [1.0] * 39,
                "ctf_fit": [0.5] * 39,
                "cross_correlation": [0.9] * 39,
                "zeros_mean_defocus": [0.1, 0.2],
            }
        )
        fsc = app.query_one(FscPlot)
        fsc.show_fsc(
            [
                {"resolution": 100 / s, "fsc": 1 - s / 20, "part_fsc": 1 - s / 25}
                for s in range(1, 20)
            ]
        )
        await pilot.pause()
        for plot in (drift, ctf, fsc):
            text = plot.render().plain  # type: ignore[union-attr]
            assert text.strip(), type(plot).__name__
        assert "FSC" in fsc.render().plain  # type: ignore[union-attr]
        ctf.show_fit({"note": "no _avrot.txt"})
        assert ctf.title == "no _avrot.txt"


def test_tui_modules_import_no_numpy_kernels_or_database():
    modules = [
        "cistem_tui.widgets.picture",
        "cistem_tui.widgets.plots",
        "cistem_tui.forms",
        "cistem_tui.panels.actions",
        "cistem_tui.panels.results",
    ]
    code = (
        "import sys, json\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    forbidden = {m for m in loaded if m.split(".")[0] in {"numpy", "sqlite3", "_sqlite3", "scipy"}}
    forbidden |= {m for m in loaded if m.startswith(("cistemd.kernels", "cistemd.project"))}
    assert not forbidden, sorted(forbidden)
