"""cisTEM's text ``.star`` particle-parameter files (reference §5.1).

Layout, as cisTEM writes it::

    # Written by cisTEM Version ... on <date>
    # <program header comments>
    (a line holding one space)
    data_
    (a line holding one space)
    loop_
    _cisTEMPositionInStack #1
    _cisTEMAnglePsi #2
    ...
    #    POS     PSI   THETA ...            <- a comment naming the columns
           1  123.45   67.89 ...

Only the *active* columns are written, each with its printf format from
:data:`cistemd.io.parameters.COLUMNS`; strings are written ``'quoted'`` and
right-aligned in 50 characters. On reading, columns may come in any order,
unknown labels are ignored (as cisTEM does), and missing columns are simply
absent from the returned :class:`~cistemd.io.parameters.ParticleParameters`
(``get`` supplies cisTEM's defaults). Angles are degrees, shifts Å, defocus Å,
phase shift **degrees** (as in the file).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from cistemd.io._guard import PathLike, atomic_output, invalid_input_on_error, raise_invalid
from cistemd.io._star import StarBlock, read_star
from cistemd.io.parameters import COLUMNS, Column, ParticleParameters

__all__ = ["LABEL_PREFIX", "SHORT_NAMES", "read", "write"]

LABEL_PREFIX = "cisTEM"
_BY_LABEL: dict[str, Column] = {c.star_label: c for c in COLUMNS}
_BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}

#: Short column titles for the ``#`` comment line above the rows (cisTEM's own).
SHORT_NAMES: dict[str, str] = {
    "position_in_stack": "POS",
    "psi": "PSI",
    "theta": "THETA",
    "phi": "PHI",
    "x_shift": "SHX",
    "y_shift": "SHY",
    "defocus_1": "DF1",
    "defocus_2": "DF2",
    "defocus_angle": "ANGAST",
    "phase_shift": "PSHIFT",
    "image_is_active": "STAT",
    "occupancy": "OCC",
    "logp": "LogP",
    "sigma": "SIGMA",
    "score": "SCORE",
    "score_change": "CHANGE",
    "pixel_size": "PSIZE",
    "microscope_voltage_kv": "VOLT",
    "microscope_spherical_aberration_mm": "Cs",
    "amplitude_contrast": "AmpC",
    "beam_tilt_x": "BTILTX",
    "beam_tilt_y": "BTILTY",
    "image_shift_x": "ISHFTX",
    "image_shift_y": "ISHFTY",
    "best_2d_class": "2DCLS",
    "beam_tilt_group": "TGRP",
    "stack_filename": "STACK_FILENAME",
    "original_image_filename": "ORIGINAL_IMAGE_FILENAME",
    "reference_3d_filename": "REFERENCE_3D_FILENAME",
    "particle_group": "PaGRP",
    "assigned_subset": "SUBSET",
    "pre_exposure": "PREEXP",
    "total_exposure": "TOTEXP",
    "original_x_position": "ORIGX",
    "original_y_position": "ORIGY",
}


def _column_kind(block: str, label: str) -> str | None:
    if not label.startswith(LABEL_PREFIX):
        return None
    column = _BY_LABEL.get(label[len(LABEL_PREFIX):])
    if column is None:
        return None
    if column.dtype is object:
        return "str"
    return "int" if np.dtype(column.dtype).kind == "i" else "float"


def _cistem_block(path: PathLike, blocks: list[StarBlock]) -> StarBlock:
    for block in blocks:
        if any(label.startswith(LABEL_PREFIX) for label in block.labels):
            return block
    raise_invalid(path, "not a cisTEM star file: no _cisTEM... column labels")


def read(path: PathLike) -> ParticleParameters:
    """Read a cisTEM ``.star`` parameter file.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    ParticleParameters
        One column per known ``_cisTEM`` label in the file.

    Raises
    ------
    InvalidInputError
        If the file is unreadable, is not a cisTEM star file, or has a bad row.
    """
    blocks = read_star(path, _column_kind, what="cisTEM star file")
    block = _cistem_block(path, blocks)
    columns: dict[str, Any] = {}
    for label, values in block.columns.items():
        column = _BY_LABEL[label[len(LABEL_PREFIX):]]
        if column.dtype is object:
            values = np.array(values, dtype=object)
        columns[column.name] = values
    with invalid_input_on_error(path, "inconsistent cisTEM star columns"):
        return ParticleParameters(columns)


def _check_writable(params: ParticleParameters, names: Sequence[str]) -> None:
    for name in names:
        column = _BY_NAME[name]
        values = params.get(name)
        if column.dtype is object:
            for row, text in enumerate(values):
                text = str(text)
                if "'" in text or "\n" in text or "\r" in text:
                    raise ValueError(
                        f"{name} of row {row + 1} ({text!r}) contains a quote or line break"
                    )
        elif np.dtype(column.dtype).kind == "f":
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                raise ValueError(
                    f"{name} of row {int(bad[0]) + 1} is {values[bad[0]]}; "
                    "cisTEM star files hold finite numbers only"
                )


def _header_line(names: Sequence[str]) -> str:
    # One title per column, right-aligned to the column's printed width.
    parts = []
    for name in names:
        column = _BY_NAME[name]
        width = int("".join(ch for ch in column.fmt.split(".")[0] if ch.isdigit()) or "0")
        parts.append(SHORT_NAMES[name].rjust(width))
    line = " ".join(parts)
    return "#" + line[1:] if line.startswith(" ") else "#" + line


def write(
    path: PathLike,
    params: ParticleParameters,
    *,
    columns: Iterable[str] | None = None,
    header_comments: Iterable[str] = (),
    overwrite: bool = True,
) -> None:
    """Write a cisTEM ``.star`` parameter file.

    Parameters
    ----------
    path
        Destination (written under a temporary name and renamed into place).
    params
        The table.
    columns
        Column names to write, in any order (they are written in cisTEM's
        order); default: the columns present in ``params``. Absent ones are
        written with their defaults.
    header_comments
        Extra comment lines for the header (``"# "`` is prefixed if missing).
    overwrite
        If false and ``path`` exists, raise :class:`FileExistsError`.

    Raises
    ------
    ValueError
        For unknown column names, non-finite numbers, or strings with quotes
        or line breaks.
    """
    from cistemd import __version__

    wanted = list(columns) if columns is not None else params.active_names
    unknown = [name for name in wanted if name not in _BY_NAME]
    if unknown:
        raise ValueError(f"unknown particle-parameter columns {unknown}")
    names = [c.name for c in COLUMNS if c.name in set(wanted)]
    if not names:
        raise ValueError("no columns to write")
    _check_writable(params, names)

    now = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
    lines = [f"# Written by cistemd Version {__version__} on {now}"]
    for comment in header_comments:
        comment = comment.rstrip()
        lines.append(comment if comment.startswith("#") else f"# {comment}")
    lines += [" ", "data_", " ", "loop_"]
    lines += [
        f"_{LABEL_PREFIX}{_BY_NAME[name].star_label} #{number}"
        for number, name in enumerate(names, start=1)
    ]
    lines.append(_header_line(names))
    row_format = " ".join(
        "%50s" if _BY_NAME[name].dtype is object else _BY_NAME[name].fmt for name in names
    ) + " "
    values = []
    for name in names:
        column = _BY_NAME[name]
        data = params.get(name)
        if column.dtype is object:
            values.append([f"'{text}'" for text in data])
        elif np.dtype(column.dtype).kind == "i":
            values.append(np.asarray(data, dtype=np.int64).tolist())
        else:
            values.append(np.asarray(data, dtype=np.float64).tolist())
    with atomic_output(path, overwrite=overwrite) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
            handle.writelines(row_format % row + "\n" for row in zip(*values, strict=True))
