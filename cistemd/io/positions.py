"""Particle-position text files (reference §5.4).

One particle per line::

    # comments and blank lines are skipped
    12   1534.5   2210.0          <- image asset ID, x (Å), y (Å)
    micrograph_0007.mrc  800.0  96.25   <- or an image file name

An integer first token is an image asset ID; anything else is a file name
(names with spaces are not supported, as in cisTEM). Coordinates are in Å from
the image origin. Extra tokens are ignored with a warning (cisTEM does the
same); :func:`read_with_warnings` returns those warnings, :func:`read` logs them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from cistemd.io._guard import (
    MAX_TEXT_ROWS,
    PathLike,
    atomic_output,
    parse_finite_float,
    raise_invalid,
    text_lines,
)

__all__ = ["ParticlePosition", "read", "read_with_warnings", "write"]

logger = logging.getLogger(__name__)

_MAX_WARNINGS = 100


@dataclass(frozen=True)
class ParticlePosition:
    """One picked particle.

    Attributes
    ----------
    image
        Image asset ID (``int``) or image file name (``str``).
    x_angstroms, y_angstroms
        Position in Å from the image origin (pixel ``(0, 0)``).
    """

    image: int | str
    x_angstroms: float
    y_angstroms: float


def read_with_warnings(path: PathLike) -> tuple[list[ParticlePosition], list[str]]:
    """Read a particle-position file and report ignored extra tokens.

    Returns
    -------
    positions : list of ParticlePosition
        In file order.
    warnings : list of str
        One message per line with extra tokens (at most 100, then a summary).

    Raises
    ------
    InvalidInputError
        If the file is unreadable, has a line with fewer than 3 tokens, or a
        coordinate that is not a finite number.
    """
    positions: list[ParticlePosition] = []
    warnings: list[str] = []
    extra_lines = 0
    for number, line in text_lines(path, what="particle-position file"):
        stripped = line.strip()
        if not stripped or stripped[0] == "#":
            continue
        tokens = stripped.split()
        if len(tokens) < 3:
            raise_invalid(path, f"line {number} has {len(tokens)} values; expected "
                                "'IMAGE X_Å Y_Å' (asset ID or file name, then x and y in Å)")
        if len(positions) >= MAX_TEXT_ROWS:
            raise_invalid(path, f"more than {MAX_TEXT_ROWS} positions; refusing")
        first = tokens[0]
        image: int | str
        try:
            image = int(first)
        except ValueError:
            image = first
        else:
            if image < 0 or image >= 2**63:
                raise_invalid(path, f"line {number}: image asset ID {first[:20]} out of range")
        x = parse_finite_float(tokens[1], path, number, "x")
        y = parse_finite_float(tokens[2], path, number, "y")
        if len(tokens) > 3:
            extra_lines += 1
            if extra_lines <= _MAX_WARNINGS:
                warnings.append(f"{os.fspath(path)}: line {number}: ignored "
                                f"{len(tokens) - 3} extra value(s)")
        positions.append(ParticlePosition(image, x, y))
    if extra_lines > _MAX_WARNINGS:
        warnings.append(f"{os.fspath(path)}: {extra_lines - _MAX_WARNINGS} more lines had "
                        "extra values")
    return positions, warnings


def read(path: PathLike) -> list[ParticlePosition]:
    """Read a particle-position file (extra tokens are logged and ignored).

    Raises
    ------
    InvalidInputError
        See :func:`read_with_warnings`.
    """
    positions, warnings = read_with_warnings(path)
    for warning in warnings:
        logger.warning(warning)
    return positions


def write(
    path: PathLike, positions: Iterable[ParticlePosition], *, overwrite: bool = True
) -> None:
    """Write particle positions, one ``IMAGE X Y`` line each, with a comment header.

    Raises
    ------
    ValueError
        For a file name containing whitespace, a name that reads as an integer
        (it would come back as an asset ID), or non-finite coordinates.
    """
    lines = ["# particle positions written by cistemd: image (asset ID or file), x (Å), y (Å)"]
    for index, position in enumerate(positions):
        image = position.image
        if isinstance(image, bool) or not isinstance(image, int | np.integer | str):
            raise ValueError(f"position {index}: image must be an int or str, got {image!r}")
        if isinstance(image, str):
            if not image or any(c.isspace() for c in image) or image.startswith("#"):
                raise ValueError(f"position {index}: file name {image!r} cannot be written "
                                 "(empty, whitespace, or starts with #)")
            try:
                int(image)
            except ValueError:
                pass
            else:
                raise ValueError(f"position {index}: file name {image!r} would read back as "
                                 "an asset ID")
        x, y = float(position.x_angstroms), float(position.y_angstroms)
        if not (np.isfinite(x) and np.isfinite(y)):
            raise ValueError(f"position {index}: coordinates must be finite, got ({x}, {y})")
        lines.append(f"{image} {x!r} {y!r}")
    with atomic_output(path, overwrite=overwrite) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
