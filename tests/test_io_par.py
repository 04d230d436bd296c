"""Frealign .par files: 17-column cisTEM/FrealignX layout, Frealign 9's 16 columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cistemd.errors import InvalidInputError
from cistemd.io import par
from cistemd.io.parameters import ParticleParameters

# Two rows in cisTEM's .par layout (reference §5.2), with a trailing statistics comment.
CISTEM_PAR = """\
C           PSI   THETA     PHI       SHX       SHY     MAG  INCLUDE   DF1      DF2  ANGAST  PSHIFT     OCC      LogP      SIGMA   SCORE  CHANGE
      1  329.83   78.32  205.77     -1.67      3.72       0     1  21234.5  20765.1  -44.10    0.00  100.00    -10023    10.0000   25.18    0.00
      2    4.50  120.00   33.30      0.00     -2.10       0     0  19000.0  18500.5   12.00   90.00   50.00     -9000     9.5000   18.20   -1.10
C  Total particles included, overall score, average occ.           2       21.69    75.00
"""  # noqa: E501

# Frealign 9.0x: 16 columns, FILM instead of INCLUDE, no PSHIFT, negated LogP.
FREALIGN9_PAR = """\
C           PSI   THETA     PHI       SHX       SHY     MAG  FILM      DF1      DF2  ANGAST     OCC     -LogP      SIGMA   SCORE  CHANGE
      1  329.83   78.32  205.77     -1.67      3.72   50000     3  21234.5  20765.1  -44.10  100.00     10023     0.5000   25.18    0.00
      2    4.50  120.00   33.30      0.00     -2.10   50000    -3  19000.0  18500.5   12.00  100.00      9000     0.5000   18.20   -1.10
"""  # noqa: E501


def test_reads_cistem_layout(tmp_path: Path) -> None:
    path = tmp_path / "c.par"
    path.write_text(CISTEM_PAR)
    table = par.read(path)
    assert table.active_names == [
        "position_in_stack", "psi", "theta", "phi", "x_shift", "y_shift", "defocus_1",
        "defocus_2", "defocus_angle", "phase_shift", "image_is_active", "occupancy", "logp",
        "sigma", "score", "score_change",
    ]
    np.testing.assert_array_equal(table.get("position_in_stack"), [1, 2])
    np.testing.assert_allclose(table.get("phi"), [205.77, 33.3])
    np.testing.assert_allclose(table.get("y_shift"), [3.72, -2.10])
    np.testing.assert_array_equal(table.get("image_is_active"), [1, 0])
    np.testing.assert_allclose(table.get("phase_shift"), [0.0, 90.0])
    np.testing.assert_array_equal(table.get("logp"), [-10023, -9000])
    np.testing.assert_allclose(table.get("score_change"), [0.0, -1.1])


def test_reads_frealign9_sixteen_columns(tmp_path: Path) -> None:
    path = tmp_path / "f9.par"
    path.write_text(FREALIGN9_PAR)
    table = par.read(path)
    assert "phase_shift" not in table.columns
    np.testing.assert_array_equal(table.get("logp"), [-10023, -9000])  # -LogP undone
    np.testing.assert_array_equal(table.get("image_is_active"), [1, -1])  # negative FILM
    np.testing.assert_allclose(table.get("occupancy"), [100.0, 100.0])
    np.testing.assert_allclose(table.get("sigma"), [0.5, 0.5])
    # Without a header the column count decides the layout.
    path.write_text("\n".join(FREALIGN9_PAR.splitlines()[1:]) + "\n")
    assert "phase_shift" not in par.read(path).columns


def test_write_uses_the_reference_formats(tmp_path: Path) -> None:
    path = tmp_path / "w.par"
    source = tmp_path / "c.par"
    source.write_text(CISTEM_PAR)
    par.write(path, par.read(source))
    written = path.read_text().splitlines()
    assert written[0] == par.HEADER
    # Byte for byte the rows of the cisTEM example (MAG 0).
    assert written[1:] == CISTEM_PAR.splitlines()[1:3]


def test_round_trip_random(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n = 40
    table = ParticleParameters({
        "position_in_stack": np.arange(1, n + 1),
        "psi": rng.uniform(0, 360, n),
        "theta": rng.uniform(0, 180, n),
        "phi": rng.uniform(0, 360, n),
        "x_shift": rng.normal(0, 5, n),
        "y_shift": rng.normal(0, 5, n),
        "image_is_active": rng.integers(-1, 2, n),
        "defocus_1": rng.uniform(5000, 30000, n),
        "defocus_2": rng.uniform(5000, 30000, n),
        "defocus_angle": rng.uniform(-90, 90, n),
        "phase_shift": rng.uniform(0, 180, n),
        "occupancy": rng.uniform(0, 100, n),
        "logp": rng.integers(-100000, 0, n),
        "sigma": rng.uniform(0.1, 20, n),
        "score": rng.uniform(0, 60, n),
        "score_change": rng.normal(0, 2, n),
    })
    path = tmp_path / "r.par"
    par.write(path, table)
    back = par.read(path)
    assert back.active_names == table.active_names
    for name, places in (("psi", 2), ("x_shift", 2), ("defocus_1", 1), ("sigma", 4),
                         ("score_change", 2)):
        np.testing.assert_allclose(back.get(name), table.get(name), atol=0.5 * 10.0**-places
                                   + 1e-9, rtol=0)
    for name in ("position_in_stack", "image_is_active", "logp"):
        np.testing.assert_array_equal(back.get(name), table.get(name))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("C header\n", "no parameter lines"),
        ("1 2 3 4 5\n", "line 1 has 5 columns, expected 17"),
        (CISTEM_PAR.splitlines()[1] + "\n1 2 3\n", "line 2 has 3 columns, expected 17"),
        (CISTEM_PAR.replace("329.83", "nan"), "column PSI is nan"),
        (CISTEM_PAR.replace("329.83", "12,5"), r"line 2: '12,5' is not a number"),
        (CISTEM_PAR.replace("      1  329", "    1.5  329"), "column C is 1.5, not an integer"),
        (CISTEM_PAR.splitlines()[0] + "\n" + FREALIGN9_PAR.splitlines()[1] + "\n",
         "has 16 columns but the header names 17"),
    ],
)
def test_errors(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.par"
    path.write_text(body)
    with pytest.raises(InvalidInputError, match=message) as caught:
        par.read(path)
    assert str(caught.value).startswith(str(path))


def test_write_refuses_non_finite(tmp_path: Path) -> None:
    table = ParticleParameters({"position_in_stack": np.array([1]), "score": np.array([np.inf])})
    with pytest.raises(ValueError, match="score"):
        par.write(tmp_path / "x.par", table)
