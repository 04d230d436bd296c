"""cisTEM .star parameter files: layout, formats, round trip, errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from cistemd.errors import InvalidInputError
from cistemd.io import cistem_star
from cistemd.io.parameters import COLUMNS, ParticleParameters


def random_table(n: int, seed: int = 0) -> ParticleParameters:
    rng = np.random.default_rng(seed)
    table = ParticleParameters.with_defaults(n)
    for column in COLUMNS:
        if column.name == "position_in_stack":
            continue
        if column.dtype is object:
            table.set(column.name, np.array([f"/data/run_{i}/{column.name}.mrc" for i in range(n)],
                                            dtype=object))
        elif np.dtype(column.dtype).kind == "i":
            table.set(column.name, rng.integers(-5, 50, n))
        else:
            table.set(column.name, rng.uniform(-180, 360, n))
    return table


def decimals(fmt: str) -> int:
    match = re.search(r"\.(\d+)f", fmt)
    return int(match.group(1)) if match else 0


def assert_tables_match_to_format(read: ParticleParameters, written: ParticleParameters,
                                  names: list[str]) -> None:
    assert read.active_names == names
    assert len(read) == len(written)
    for column in COLUMNS:
        if column.name not in names:
            continue
        got, want = read.get(column.name), written.get(column.name)
        if column.dtype is object:
            assert list(got) == list(want)
        elif np.dtype(column.dtype).kind == "i":
            np.testing.assert_array_equal(got, want)
        else:
            places = decimals(column.fmt)
            np.testing.assert_allclose(got, want, atol=0.5 * 10.0**-places + 1e-9, rtol=0)


def test_round_trip_every_column(tmp_path: Path) -> None:
    table = random_table(50)
    path = tmp_path / "p.star"
    cistem_star.write(path, table)
    assert_tables_match_to_format(cistem_star.read(path), table, [c.name for c in COLUMNS])


def test_layout_matches_cistem(tmp_path: Path) -> None:
    table = ParticleParameters({
        "position_in_stack": np.array([1, 2]),
        "psi": np.array([12.345, -0.5]),
        "defocus_1": np.array([15000.04, 9000.0]),
        "stack_filename": np.array(["stack.mrc", "s2.mrc"], dtype=object),
    })
    path = tmp_path / "l.star"
    cistem_star.write(path, table, header_comments=["Input parameters: demo"])
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# Written by cistemd Version ")
    assert lines[1] == "# Input parameters: demo"
    assert lines[2:6] == [" ", "data_", " ", "loop_"]
    assert lines[6:10] == [
        "_cisTEMPositionInStack #1",
        "_cisTEMAnglePsi #2",
        "_cisTEMDefocus1 #3",
        "_cisTEMStackFilename #4",
    ]
    assert lines[10].startswith("#") and "POS" in lines[10] and "STACK_FILENAME" in lines[10]
    # %8u %7.2f %8.1f %50s, each followed by a space; strings quoted.
    assert lines[11] == "       1   12.35  15000.0 " + "'stack.mrc'".rjust(50) + " "
    assert lines[12] == "       2   -0.50   9000.0 " + "'s2.mrc'".rjust(50) + " "


LABELS = [
    "PositionInStack",
    "AnglePsi",
    "AngleTheta",
    "AnglePhi",
    "XShift",
    "YShift",
    "Defocus1",
    "Defocus2",
    "DefocusAngle",
    "PhaseShift",
    "ImageActivity",
    "Occupancy",
    "LogP",
    "Sigma",
    "Score",
    "ScoreChange",
    "PixelSize",
    "MicroscopeVoltagekV",
    "MicroscopeCsMM",
    "AmplitudeContrast",
    "StackFilename",
    "FutureColumn",
]

# As cisTEM writes it: lines holding one space around data_, every value followed by
# a space, a "#" line of column titles, and a label this version does not know.
CISTEM_WRITTEN = "\n".join(
    [
        "# Written by cisTEM Version 2.0.0-alpha on 2024-01-01 12:00:00",
        "# Refine3D: input_star = 'refine_in.star'",
        " ",
        "data_",
        " ",
        "loop_",
    ]
    + [f"_cisTEM{label} #{number}" for number, label in enumerate(LABELS, start=1)]
    + [
        "#    POS     PSI   THETA     PHI       SHX       SHY      DF1      DF2  ANGAST  PSHIFT"
        "  STAT     OCC      LogP      SIGMA   SCORE  CHANGE    PSIZE    VOLT      Cs    AmpC"
        "          STACK_FILENAME FUTURE",
        "       1  329.83   78.32  205.77     -1.67      3.72  21234.5  20765.1  -44.10    0.00"
        "     1  100.00    -10023    10.0000   25.18    0.00  1.06000  300.00    2.70  0.0700"
        " 'particle_stack_1.mrc' 7 ",
        "       2    4.50  120.00   33.30      0.00     -2.10  19000.0  18500.5   12.00   90.00"
        "    -1  100.00     -9000     9.5000   18.20   -1.10  1.06000  300.00    2.70  0.0700"
        " 'particle_stack_1.mrc' 8 ",
        "",
    ]
)


def test_reads_a_file_as_cistem_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "refine.star"
    path.write_text(CISTEM_WRITTEN)
    table = cistem_star.read(path)
    assert len(table) == 2
    assert "best_2d_class" not in table.columns  # absent columns are absent ...
    np.testing.assert_array_equal(table.get("best_2d_class"), [0, 0])  # ... with defaults
    np.testing.assert_array_equal(table.get("position_in_stack"), [1, 2])
    np.testing.assert_allclose(table.get("psi"), [329.83, 4.5])
    np.testing.assert_allclose(table.get("x_shift"), [-1.67, 0.0])
    np.testing.assert_allclose(table.get("defocus_2"), [20765.1, 18500.5])
    np.testing.assert_allclose(table.get("phase_shift"), [0.0, 90.0])  # degrees, as in the file
    np.testing.assert_array_equal(table.get("image_is_active"), [1, -1])
    np.testing.assert_array_equal(table.get("logp"), [-10023, -9000])
    assert list(table.get("stack_filename")) == ["particle_stack_1.mrc"] * 2


def test_columns_in_any_order_and_unknown_labels(tmp_path: Path) -> None:
    path = tmp_path / "o.star"
    path.write_text("data_\nloop_\n_cisTEMScore\n_rlnSomething\n_cisTEMPositionInStack\n"
                    "3.5 x 7\n4.5 y 8\n")
    table = cistem_star.read(path)
    assert table.active_names == ["position_in_stack", "score"]
    np.testing.assert_array_equal(table.get("position_in_stack"), [7, 8])


def test_empty_table(tmp_path: Path) -> None:
    path = tmp_path / "e.star"
    cistem_star.write(path, ParticleParameters.with_defaults(0, ["position_in_stack", "psi"]))
    table = cistem_star.read(path)
    assert len(table) == 0 and table.active_names == ["position_in_stack", "psi"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("data_\nloop_\n_cisTEMPositionInStack\n_cisTEMAnglePsi\n1 2.0\n2\n",
         "line 6 has 1 columns, expected 2"),
        ("data_\nloop_\n_cisTEMPositionInStack\n_cisTEMAnglePsi\n1 abc\n",
         r"line 5: _cisTEMAnglePsi is 'abc', not a number"),
        ("data_\nloop_\n_cisTEMPositionInStack\n_cisTEMAnglePsi\n1 nan\n",
         "line 5: _cisTEMAnglePsi is nan, not a finite number"),
        ("data_\nloop_\n_cisTEMPositionInStack\n1.5\n", "not an integer"),
        ("data_\nloop_\n_rlnImageName\nx@y\n", "no _cisTEM"),
        ("", "no data_ block"),
        ("hello world\n", "before any data_ block"),
        ("data_\nloop_\n_cisTEMPositionInStack\n_cisTEMPositionInStack\n1 1\n", "appears twice"),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.star"
    path.write_text(body)
    with pytest.raises(InvalidInputError, match=message) as caught:
        cistem_star.read(path)
    assert str(caught.value).startswith(str(path))


def test_binary_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "bin.star"
    path.write_bytes(b"data_\n\x00\x01\x02")
    with pytest.raises(InvalidInputError, match="binary data"):
        cistem_star.read(path)
    path.write_bytes(b"data_\nloop_\n_cisTEMAnglePsi\n\xff\xfe\n")
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        cistem_star.read(path)
    with pytest.raises(InvalidInputError, match="no such file"):
        cistem_star.read(tmp_path / "missing.star")


def test_write_refuses_what_cannot_be_read_back(tmp_path: Path) -> None:
    table = ParticleParameters({"position_in_stack": np.array([1]), "psi": np.array([np.nan])})
    with pytest.raises(ValueError, match="psi of row 1"):
        cistem_star.write(tmp_path / "x.star", table)
    table = ParticleParameters({"stack_filename": np.array(["it's.mrc"], dtype=object)})
    with pytest.raises(ValueError, match="quote"):
        cistem_star.write(tmp_path / "x.star", table)
    with pytest.raises(ValueError, match="unknown"):
        cistem_star.write(tmp_path / "x.star", table, columns=["nonsense"])
    assert not (tmp_path / "x.star").exists()


def test_filenames_with_spaces_round_trip(tmp_path: Path) -> None:
    table = ParticleParameters({"position_in_stack": np.array([1]),
                                "stack_filename": np.array(["my data/stack 1.mrc"], dtype=object)})
    cistem_star.write(tmp_path / "s.star", table)
    assert list(cistem_star.read(tmp_path / "s.star").get("stack_filename")) == [
        "my data/stack 1.mrc"
    ]
