"""Frealign ``.par`` parameter files (reference §5.2).

cisTEM/FrealignX write 17 whitespace-separated columns under a ``C`` comment
header (:data:`HEADER`)::

    C  PSI THETA PHI SHX SHY MAG INCLUDE DF1 DF2 ANGAST PSHIFT OCC LogP SIGMA SCORE CHANGE

(spaced to align with the numbers) and the row format :data:`ROW_FORMAT`
(``%7i %7.2f %7.2f %7.2f %9.2f %9.2f %7.0f %5i %8.1f %8.1f %7.2f %7.2f %7.2f %9i
%10.4f %7.2f %7.2f``). Shifts are in Å, angles and the
phase shift in degrees, defocus in Å.

Reading also accepts Frealign 9's 16-column layout (``... MAG FILM DF1 DF2
ANGAST OCC LogP SIGMA SCORE CHANGE``: no PSHIFT column; releases before 9.09
wrote ``-LogP``, negated, which is undone when the header says so). When a
header line names the columns, it decides the layout; otherwise the column
count does. ``MAG`` is not kept. ``INCLUDE`` becomes ``image_is_active``; a
``FILM`` column (Frealign, cisTEM classification files) gives
``image_is_active = -1`` for negative film numbers (Frealign's "exclude") and 1
otherwise. Lines starting with ``C`` (or ``#``) are comments.
"""

from __future__ import annotations

import array
from typing import Any

import numpy as np

from cistemd.io._guard import (
    MAX_TEXT_ROWS,
    PathLike,
    atomic_output,
    raise_invalid,
    text_lines,
)
from cistemd.io.parameters import ParticleParameters

__all__ = ["HEADER", "ROW_FORMAT", "read", "write"]

HEADER = (
    "C           PSI   THETA     PHI       SHX       SHY     MAG  INCLUDE   DF1      DF2  "
    "ANGAST  PSHIFT     OCC      LogP      SIGMA   SCORE  CHANGE"
)
ROW_FORMAT = (
    "%7i %7.2f %7.2f %7.2f %9.2f %9.2f %7.0f %5i %8.1f %8.1f %7.2f %7.2f %7.2f %9i "
    "%10.4f %7.2f %7.2f"
)

# File title -> ParticleParameters column (None: read and dropped).
_TITLES: dict[str, str | None] = {
    "C": "position_in_stack",
    "PSI": "psi",
    "THETA": "theta",
    "PHI": "phi",
    "SHX": "x_shift",
    "SHY": "y_shift",
    "MAG": None,
    "INCLUDE": "image_is_active",
    "FILM": "image_is_active",
    "DF1": "defocus_1",
    "DF2": "defocus_2",
    "ANGAST": "defocus_angle",
    "PSHIFT": "phase_shift",
    "OCC": "occupancy",
    "LOGP": "logp",
    "-LOGP": "logp",
    "SIGMA": "sigma",
    "SCORE": "score",
    "CHANGE": "score_change",
}
_LAYOUT_17 = HEADER.split()
_LAYOUT_16 = [
    "C", "PSI", "THETA", "PHI", "SHX", "SHY", "MAG", "FILM", "DF1", "DF2", "ANGAST",
    "OCC", "LogP", "SIGMA", "SCORE", "CHANGE",
]
_INTEGER_COLUMNS = {"position_in_stack", "image_is_active", "logp"}


def _header_titles(line: str) -> list[str] | None:
    titles = line.split()
    upper = [t.upper() for t in titles]
    if len(titles) in (16, 17) and upper[0] == "C" and all(t in _TITLES for t in upper):
        return titles
    return None


def read(path: PathLike) -> ParticleParameters:
    """Read a Frealign/cisTEM ``.par`` file (16 or 17 columns).

    Returns
    -------
    ParticleParameters
        Columns ``position_in_stack, psi, theta, phi, x_shift, y_shift,
        image_is_active, defocus_1, defocus_2, defocus_angle, [phase_shift],
        occupancy, logp, sigma, score, score_change``.

    Raises
    ------
    InvalidInputError
        If the file is unreadable, has no data rows, rows of the wrong width,
        or values that are not finite numbers.
    """
    titles: list[str] | None = None
    width = 0
    stores: list[Any] = []
    lines = array.array("q")
    for number, line in text_lines(path, what="parameter (.par) file"):
        stripped = line.lstrip()
        if not stripped:
            continue
        if stripped[0] in "Cc#":
            if titles is None and not stores:
                titles = _header_titles(stripped)
            continue
        tokens = stripped.split()
        if not stores:
            width = len(tokens)
            if titles is not None and len(titles) != width:
                raise_invalid(path, f"line {number} has {width} columns but the header "
                                    f"names {len(titles)}")
            if width not in (16, 17):
                raise_invalid(path, f"line {number} has {width} columns, expected 17 "
                                    "(cisTEM/FrealignX) or 16 (Frealign 9)")
            stores = [array.array("d") for _ in range(width)]
        elif len(tokens) != width:
            raise_invalid(path, f"line {number} has {len(tokens)} columns, expected {width}")
        if len(lines) >= MAX_TEXT_ROWS:
            raise_invalid(path, f"more than {MAX_TEXT_ROWS} rows; refusing")
        lines.append(number)
        for store, token in zip(stores, tokens, strict=True):
            try:
                store.append(float(token))
            except ValueError:
                raise_invalid(path, f"line {number}: {token[:40]!r} is not a number")
    if not stores:
        raise_invalid(path, "no parameter lines (not a .par file?)")
    if titles is None:
        titles = _LAYOUT_17 if width == 17 else _LAYOUT_16

    line_numbers = np.frombuffer(lines, dtype=np.int64)
    columns: dict[str, np.ndarray] = {}
    for title, store in zip(titles, stores, strict=True):
        name = _TITLES[title.upper()]
        values = np.frombuffer(store, dtype=np.float64).copy()
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise_invalid(path, f"line {int(line_numbers[bad[0]])}: column {title} is "
                                f"{values[bad[0]]}, not a finite number")
        if name is None:
            continue
        if title.upper() == "-LOGP":
            values = -values
        if title.upper() == "FILM":
            values = np.where(values < 0, -1.0, 1.0)
        if name in _INTEGER_COLUMNS:
            if np.any(np.abs(values) > 2**62):
                row = int(np.flatnonzero(np.abs(values) > 2**62)[0])
                raise_invalid(path, f"line {int(line_numbers[row])}: column {title} is out "
                                    "of range")
            if name != "logp":
                fractional = np.flatnonzero(values != np.round(values))
                if fractional.size:
                    raise_invalid(path, f"line {int(line_numbers[fractional[0]])}: column "
                                        f"{title} is {values[fractional[0]]}, not an integer")
            values = np.round(values).astype(np.int64)
        columns[name] = values
    return ParticleParameters(columns)


def write(
    path: PathLike,
    params: ParticleParameters,
    *,
    magnification: float = 0.0,
    overwrite: bool = True,
) -> None:
    """Write a 17-column cisTEM/FrealignX ``.par`` file with its ``C`` header.

    Parameters
    ----------
    path
        Destination (written under a temporary name and renamed into place).
    params
        The table; absent columns are written with their defaults.
    magnification
        Value of the MAG column (cisTEM does not use it).
    overwrite
        If false and ``path`` exists, raise :class:`FileExistsError`.

    Raises
    ------
    ValueError
        If a value is not finite.
    """
    names = [_TITLES[t.upper()] for t in _LAYOUT_17]
    values: list[list[Any]] = []
    for title, name in zip(_LAYOUT_17, names, strict=True):
        if name is None:
            values.append([float(magnification)] * len(params))
            continue
        data = np.asarray(params.get(name), dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(data))
        if bad.size:
            raise ValueError(f"{name} of row {int(bad[0]) + 1} is {data[bad[0]]}; "
                             f".par files hold finite numbers only ({title})")
        values.append(np.round(data).astype(np.int64).tolist() if name in _INTEGER_COLUMNS
                      else data.tolist())
    if not np.isfinite(magnification):
        raise ValueError("magnification must be finite")
    with atomic_output(path, overwrite=overwrite) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(HEADER + "\n")
            handle.writelines(ROW_FORMAT % row + "\n" for row in zip(*values, strict=True))
