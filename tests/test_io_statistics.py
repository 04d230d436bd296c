"""Round trips and strictness of the cisTEM statistics-file reader/writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cistemd.errors import InvalidInputError
from cistemd.io.statistics import (
    HEADER,
    ResolutionStatistics,
    read_statistics,
    write_statistics,
)


def _stats(box: int = 128, pixel_size: float = 1.5) -> ResolutionStatistics:
    shells = np.arange(1, int(box // 2 * np.sqrt(3)) + 1)
    ring = shells / box
    fsc = 1.0 / (1.0 + np.exp((ring - 0.3) * 40.0))
    part_fsc = np.clip(fsc * 1.1, -1, 1)
    return ResolutionStatistics(
        pixel_size_angstroms=pixel_size,
        box_size=box,
        shell=shells,
        fsc=fsc,
        part_fsc=part_fsc,
        part_ssnr=2 * fsc / (1 - fsc + 1e-3) * 0.01,
        rec_ssnr=2 * part_fsc / (1 - part_fsc + 1e-3),
    )


@pytest.mark.parametrize("box", [64, 128, 512, 1024])
def test_round_trip(tmp_path: Path, box: int) -> None:
    stats = _stats(box=box, pixel_size=1.234)
    path = tmp_path / "stats.txt"
    write_statistics(path, stats, comments=["written by a test"])
    text = path.read_text()
    assert HEADER in text
    assert text.count("\n") == len(stats) + 3
    back = read_statistics(path)
    assert back.box_size == box
    assert back.pixel_size_angstroms == pytest.approx(1.234, abs=1e-4)
    np.testing.assert_array_equal(back.shell, stats.shell)
    np.testing.assert_allclose(back.fsc, stats.fsc, atol=6e-5)
    np.testing.assert_allclose(back.part_fsc, stats.part_fsc, atol=6e-5)
    # The file holds square roots with 4 decimals.
    np.testing.assert_allclose(np.sqrt(back.part_ssnr), np.sqrt(stats.part_ssnr), atol=6e-5)
    np.testing.assert_allclose(np.sqrt(back.rec_ssnr), np.sqrt(stats.rec_ssnr), atol=6e-5)
    np.testing.assert_allclose(back.resolution_angstroms, 1.234 * box / stats.shell, atol=1e-4)


def test_file_holds_square_roots(tmp_path: Path) -> None:
    stats = _stats()
    stats.part_ssnr[:] = 4.0
    stats.rec_ssnr[:] = 9.0
    path = tmp_path / "s.txt"
    write_statistics(path, stats)
    row = next(line for line in path.read_text().splitlines() if not line.startswith("C"))
    columns = row.split()
    assert float(columns[5]) == 2.0 and float(columns[6]) == 3.0
    assert float(columns[1]) == pytest.approx(1.5 * 128)
    assert float(columns[2]) == pytest.approx(1 / 128, abs=1e-6)


def test_resolution_at_interpolates() -> None:
    stats = ResolutionStatistics(
        pixel_size_angstroms=1.0,
        box_size=100,
        shell=np.array([1, 2, 3, 4]),
        fsc=np.array([1.0, 0.5, 0.1, 0.0]),
        part_fsc=np.array([1.0, 0.9, 0.2, 0.0]),
        part_ssnr=np.zeros(4),
        rec_ssnr=np.zeros(4),
    )
    assert stats.resolution_at(0.5) == pytest.approx(50.0)
    # 0.3 is halfway between shells 2 (0.5) and 3 (0.1): ring 0.025 -> 40 Å.
    assert stats.resolution_at(0.3) == pytest.approx(40.0)
    assert stats.resolution_at(0.143, use_part_fsc=True) < stats.resolution_at(0.143)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("C only comments\n", "no statistics rows"),
        ("1 2 3\n", "expected 7 columns"),
        ("1 192.0 0.0078125 1.0 1.0 x 1.0\n", "not a number"),
        ("1 192.0 0.0078125 1 1 1 1\n2 50.0 0.015625 1 1 1 1\n", "does not match"),
        ("2 96.0 0.015625 1 1 1 1\n1 192.0 0.0078125 1 1 1 1\n", "increasing"),
        ("1 192.0 0.0078125 1 1 -1 1\n", "negative"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad_stats.txt"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=message) as info:
        read_statistics(path)
    assert "bad_stats.txt" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such file"):
        read_statistics(tmp_path / "absent.txt")


def test_cistem_style_file_without_pixel_comment(tmp_path: Path) -> None:
    rows = [f"{i:14d} {2.0 * 64 / i:14.4f} {i / 64:14.5f} 0.9 0.95 3.0 4.0" for i in range(1, 40)]
    path = tmp_path / "c.txt"
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    stats = read_statistics(path)
    assert stats.box_size == 64
    assert stats.pixel_size_angstroms == pytest.approx(2.0, abs=1e-3)
    np.testing.assert_allclose(stats.rec_ssnr, 16.0)
