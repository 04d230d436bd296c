"""Particle-position text import/export (asset ID or file name, x and y in Å)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cistemd.errors import InvalidInputError
from cistemd.io import positions
from cistemd.io.positions import ParticlePosition


def test_read_ids_names_comments_and_extra_tokens(tmp_path: Path, caplog) -> None:
    path = tmp_path / "picks.txt"
    path.write_text(
        "# picked by hand\n"
        "\n"
        "12  1534.5 2210.0\n"
        "   micrograph_0007.mrc 800 96.25   # trailing comment token\n"
        "12 -3.5e1 0\n"
    )
    found, warnings = positions.read_with_warnings(path)
    assert found == [
        ParticlePosition(12, 1534.5, 2210.0),
        ParticlePosition("micrograph_0007.mrc", 800.0, 96.25),
        ParticlePosition(12, -35.0, 0.0),
    ]
    assert len(warnings) == 1 and "line 4" in warnings[0] and "4 extra" in warnings[0]
    with caplog.at_level(logging.WARNING, logger="cistemd.io.positions"):
        assert positions.read(path) == found
    assert "line 4: ignored 4 extra value(s)" in caplog.text


def test_round_trip(tmp_path: Path) -> None:
    picks = [ParticlePosition(3, 0.1, 1e-7), ParticlePosition("a/b_01.mrc", 4096.25, 1 / 3)]
    path = tmp_path / "p.txt"
    positions.write(path, picks)
    assert positions.read(path) == picks
    positions.write(path, [])
    assert positions.read(path) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("12 100\n", "line 1 has 2 values"),
        ("12 nan 3\n", "line 1: x is 'nan', not a finite number"),
        ("12 1 inf\n", "line 1: y is 'inf', not a finite number"),
        ("img.mrc 1 two\n", "line 1: y is 'two', not a number"),
        ("-4 1 2\n", "asset ID -4 out of range"),
    ],
)
def test_errors(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(body)
    with pytest.raises(InvalidInputError, match=message) as caught:
        positions.read(path)
    assert str(caught.value).startswith(str(path))


def test_write_refuses_ambiguous_names(tmp_path: Path) -> None:
    path = tmp_path / "w.txt"
    for bad in (ParticlePosition("has space.mrc", 1, 2), ParticlePosition("17", 1, 2),
                ParticlePosition("x.mrc", float("nan"), 2)):
        with pytest.raises(ValueError):
            positions.write(path, [bad])
    assert not path.exists()
