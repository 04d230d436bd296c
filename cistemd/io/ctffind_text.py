"""CTFFIND's text outputs: the results ``.txt`` and the 1-D curves ``_avrot.txt``.

Results file (reference §2.2): ``#`` header lines, then one row per
micrograph of 10 whitespace-separated numbers -- micrograph number, defocus 1
(Å), defocus 2 (Å), azimuth of astigmatism (°), additional phase shift (rad),
cross-correlation, spacing up to which the CTF rings were fit (Å), tilt axis
angle (°), tilt angle (°), sample thickness (Å). Classic CTFFIND4 files have
only the first 7 columns; :func:`read_results` accepts both.

Curves file: ``#`` header lines, then 6 lines per micrograph, each with one
value per radial bin -- spatial frequency (1/Å), rotational average assuming
no astigmatism, rotational average (along equi-phase contours), CTF fit,
quality of fit (cross-correlation), 2σ of the noise correlation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cistemd.errors import InvalidInputError
from cistemd.io._guard import PathLike

__all__ = [
    "AVROT_LINES",
    "RESULT_COLUMNS",
    "read_avrot",
    "read_results",
    "write_avrot",
    "write_results",
]

RESULT_COLUMNS = (
    "micrograph_number",
    "defocus_1",
    "defocus_2",
    "astigmatism_angle",
    "phase_shift",
    "score",
    "fit_resolution",
    "tilt_axis_angle",
    "tilt_angle",
    "sample_thickness",
)
"""Keys of the rows :func:`read_results` returns (file column order)."""

AVROT_LINES = (
    "spatial_frequency",
    "rotational_average",
    "equiphase_average",
    "ctf_fit",
    "quality_of_fit",
    "noise_two_sigma",
)
"""Keys of the per-micrograph curves :func:`read_avrot` returns (line order)."""


def _header(
    program: str, input_file: str, n_micrographs: int, settings: Mapping[str, Any]
) -> list[str]:
    def number(key: str, default: float = 0.0) -> float:
        return float(settings.get(key, default))

    return [
        f"# Output from {program}",
        f"# Input file: {input_file} ; Number of micrographs: {n_micrographs}",
        f"# Pixel size: {number('pixel_size'):.3f} Angstroms ; acceleration voltage: "
        f"{number('voltage'):.1f} keV ; spherical aberration: {number('spherical_aberration'):.2f}"
        f" mm ; amplitude contrast: {number('amplitude_contrast'):.2f}",
        f"# Box size: {int(number('box_size', 512))} pixels ; min. res.: "
        f"{number('min_resolution'):.1f} Angstroms ; max. res.: {number('max_resolution'):.1f} "
        f"Angstroms ; min. def.: {number('min_defocus'):.1f} um; max. def. "
        f"{number('max_defocus'):.1f} um",
    ]


def write_results(
    path: PathLike,
    rows: Sequence[Mapping[str, float]],
    *,
    input_file: str = "",
    settings: Mapping[str, Any] | None = None,
    program: str = "cistemd ctffind",
) -> None:
    """Write a CTFFIND results ``.txt``.

    Parameters
    ----------
    path
        Destination.
    rows
        One mapping per micrograph with the keys of :data:`RESULT_COLUMNS`
        (``micrograph_number`` defaults to the row's position from 1; tilt and
        thickness to 0).
    input_file
        Shown in the header.
    settings
        Header values: ``pixel_size``, ``voltage``, ``spherical_aberration``,
        ``amplitude_contrast``, ``box_size``, ``min_resolution``,
        ``max_resolution``, ``min_defocus``, ``max_defocus``.
    program
        Program name and version for the first header line.
    """
    lines = _header(program, input_file, len(rows), settings or {})
    lines.append(
        "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; "
        "#4 - azimuth of astigmatism; #5 - additional phase shift [radians]; "
        "#6 - cross correlation; #7 - spacing (in Angstroms) up to which CTF rings were fit "
        "successfully; #8 - Estimated tilt axis angle; #9 - Estimated tilt angle ; "
        "#10 Estimated sample thickness (in Angstroms)"
    )
    for index, row in enumerate(rows, start=1):
        values = [float(row.get(key, 0.0)) for key in RESULT_COLUMNS]
        if "micrograph_number" not in row:
            values[0] = float(index)
        lines.append(" ".join(f"{v:.6f}" for v in values))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def _data_lines(path: PathLike) -> list[list[float]]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"cannot read the file: {error}", path=path) from None
    rows: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            values = [float(token) for token in stripped.split()]
        except ValueError:
            raise InvalidInputError(
                f"line {number} is not a list of numbers: {stripped[:60]!r}", path=path
            ) from None
        if not all(math.isfinite(v) for v in values):
            raise InvalidInputError(f"line {number} holds a non-finite number", path=path)
        rows.append(values)
    return rows


def read_results(path: PathLike) -> list[dict[str, float]]:
    """Read a CTFFIND results ``.txt`` (7 or 10 columns).

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    list of dict
        One dict per micrograph, keys :data:`RESULT_COLUMNS` (missing tilt and
        thickness columns read as 0).

    Raises
    ------
    InvalidInputError
        If a data line is not 7 or 10 numbers.
    """
    results = []
    for values in _data_lines(path):
        if len(values) not in (7, 10):
            raise InvalidInputError(
                f"a CTFFIND results row has 7 or 10 columns, found {len(values)}", path=path
            )
        padded = values + [0.0] * (len(RESULT_COLUMNS) - len(values))
        results.append(dict(zip(RESULT_COLUMNS, padded, strict=True)))
    return results


def write_avrot(
    path: PathLike,
    curves: Sequence[Mapping[str, Any]],
    *,
    input_file: str = "",
    settings: Mapping[str, Any] | None = None,
    program: str = "cistemd ctffind",
) -> None:
    """Write CTFFIND's ``_avrot.txt``: 6 lines per micrograph.

    Parameters
    ----------
    path
        Destination.
    curves
        One mapping per micrograph with the keys of :data:`AVROT_LINES`, each
        a 1-D sequence of the same length.
    input_file, settings, program
        Header, as :func:`write_results`.

    Raises
    ------
    ValueError
        If a micrograph's curves differ in length.
    """
    lines = _header(program, input_file, len(curves), settings or {})
    lines.append(
        "# 6 lines per micrograph: #1 - spatial frequency (1/Angstroms); #2 - 1D rotational "
        "average of spectrum (assuming no astigmatism); #3 - 1D rotational average of "
        "spectrum; #4 - CTF fit; #5 - cross-correlation between spectrum and CTF fit; "
        "#6 - 2sigma of expected cross correlation of noise"
    )
    for entry in curves:
        arrays = [np.asarray(entry[key], dtype=np.float64).ravel() for key in AVROT_LINES]
        if len({a.size for a in arrays}) != 1:
            raise ValueError("every curve of a micrograph must have the same length")
        for array in arrays:
            lines.append(" ".join(f"{v:.6f}" for v in array))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def read_avrot(path: PathLike) -> list[dict[str, np.ndarray]]:
    """Read an ``_avrot.txt``.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    list of dict
        One dict of float64 arrays per micrograph, keys :data:`AVROT_LINES`.

    Raises
    ------
    InvalidInputError
        If the data lines are not a multiple of 6 or a micrograph's lines differ in length.
    """
    lines = _data_lines(path)
    if len(lines) % len(AVROT_LINES):
        raise InvalidInputError(
            f"an _avrot.txt file has 6 lines per micrograph, found {len(lines)} data lines",
            path=path,
        )
    out = []
    for first in range(0, len(lines), len(AVROT_LINES)):
        group = lines[first : first + len(AVROT_LINES)]
        if len({len(line) for line in group}) != 1:
            raise InvalidInputError(
                f"micrograph {first // 6 + 1}: its 6 lines differ in length", path=path
            )
        out.append({key: np.asarray(line) for key, line in zip(AVROT_LINES, group, strict=True)})
    return out
