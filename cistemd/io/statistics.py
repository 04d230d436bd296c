"""cisTEM/Frealign resolution-statistics text files (reference §2.6).

Seven whitespace-separated columns under a ``C`` comment header
(:data:`HEADER`; spacing shortened here)::

    C  SHELL  RESOLUTION  RING_RADIUS     FSC  Part_FSC  Part_SSNR^0.5  Rec_SSNR^0.5
           1    192.0000     0.007812  1.0000    1.0000        42.1234       96.0000
           2     96.0000     0.015625  ...

* ``SHELL`` ``i`` is the Fourier shell, in pixels of a ``box``-voxel map
  (shells beyond Nyquist reach the corners of the 3-D transform, up to about
  ``√3 · box / 2``); shell 0 (the origin) is not written;
* ``RESOLUTION`` = ``pixel_size · box / i`` in Å (cisTEM's reader checks it to
  within 0.1 Å);
* ``RING_RADIUS`` = ``i / box``, the spatial frequency in cycles per pixel
  (0.5 = Nyquist);
* ``FSC`` between the two half maps, ``Part_FSC`` the volume-normalised
  (particle) FSC;
* ``Part_SSNR^0.5`` and ``Rec_SSNR^0.5`` are the **square roots** of the
  particle and reconstruction SSNRs. In memory
  (:class:`ResolutionStatistics`) the SSNRs are kept un-square-rooted.

Lines starting with ``C`` or ``#`` are comments; this writer adds a
``C Pixel size:`` line and the reader derives pixel size and box from the
rows themselves (``pixel size = resolution · ring radius``,
``box = shell / ring radius``), so files written by cisTEM read as well.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from cistemd.io._guard import (
    PathLike,
    atomic_output,
    parse_finite_float,
    parse_int,
    raise_invalid,
    text_lines,
)

__all__ = ["HEADER", "ResolutionStatistics", "read_statistics", "write_statistics"]

HEADER = (
    "C        SHELL     RESOLUTION    RING_RADIUS            FSC       Part_FSC"
    "  Part_SSNR^0.5   Rec_SSNR^0.5"
)
_ROW_FORMAT = "%14i %14.4f %14.6f %14.4f %14.4f %14.4f %14.4f"
_MAX_SHELLS = 100_000
# cisTEM's reader tolerance on the resolution column, Å.
_RESOLUTION_TOLERANCE_ANGSTROMS = 0.1


@dataclass
class ResolutionStatistics:
    """Resolution statistics of a reconstruction, one entry per Fourier shell.

    Attributes
    ----------
    pixel_size_angstroms
        Voxel size of the map the statistics belong to, Å.
    box_size
        Edge of that (cubic) map in voxels; shell ``i`` is at ``i / box_size``
        cycles per pixel.
    shell
        ``(n,)`` int shell numbers (1, 2, ... as written to the file).
    resolution_angstroms
        ``(n,)`` ``pixel_size · box / shell``, Å.
    ring_radius
        ``(n,)`` ``shell / box``, cycles per pixel.
    fsc
        ``(n,)`` half-map FSC.
    part_fsc
        ``(n,)`` volume-normalised (particle) FSC.
    part_ssnr
        ``(n,)`` particle SSNR (not square-rooted).
    rec_ssnr
        ``(n,)`` reconstruction SSNR (not square-rooted).
    """

    pixel_size_angstroms: float
    box_size: int
    shell: np.ndarray
    resolution_angstroms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ring_radius: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fsc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    part_fsc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    part_ssnr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rec_ssnr: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        self.pixel_size_angstroms = float(self.pixel_size_angstroms)
        self.box_size = int(self.box_size)
        if not self.pixel_size_angstroms > 0:
            raise ValueError(
                f"pixel_size_angstroms must be positive, got {self.pixel_size_angstroms}"
            )
        if self.box_size < 2:
            raise ValueError(f"box_size must be at least 2, got {self.box_size}")
        self.shell = np.asarray(self.shell, dtype=np.int64).reshape(-1)
        n = self.shell.shape[0]
        if np.any(self.shell < 1):
            raise ValueError("shell numbers must be >= 1 (shell 0 is not stored)")
        derived = {
            "resolution_angstroms": self.pixel_size_angstroms * self.box_size / self.shell,
            "ring_radius": self.shell / float(self.box_size),
        }
        for name in (
            "resolution_angstroms",
            "ring_radius",
            "fsc",
            "part_fsc",
            "part_ssnr",
            "rec_ssnr",
        ):
            values = np.asarray(getattr(self, name), dtype=np.float64).reshape(-1)
            if values.shape[0] == 0 and n and name in derived:
                values = derived[name].astype(np.float64)
            if values.shape[0] != n:
                raise ValueError(f"{name} has {values.shape[0]} entries, shell has {n}")
            setattr(self, name, values)

    def __len__(self) -> int:
        return int(self.shell.shape[0])

    def resolution_at(self, threshold: float = 0.143, *, use_part_fsc: bool = False) -> float:
        """Return the resolution (Å) where the FSC first drops below ``threshold``.

        Only shells up to Nyquist count. Linear interpolation between the last
        shell at or above the threshold and the first one below it. Returns
        the last shell's resolution if the curve never drops below, and
        ``inf`` if it starts below.
        """
        within = self.ring_radius <= 0.5 + 1e-9  # only shells up to Nyquist
        curve = (self.part_fsc if use_part_fsc else self.fsc)[within]
        rings = self.ring_radius[within]
        below = np.nonzero(curve < threshold)[0]
        if len(curve) == 0:
            return float("inf")
        if below.size == 0:
            return float(self.pixel_size_angstroms / rings[-1])
        first = int(below[0])
        if first == 0:
            return float("inf")
        f0, f1 = curve[first - 1], curve[first]
        r0, r1 = rings[first - 1], rings[first]
        t = (f0 - threshold) / (f0 - f1) if f0 != f1 else 0.0
        ring = r0 + t * (r1 - r0)
        return float(self.pixel_size_angstroms / ring)


def write_statistics(
    path: PathLike, stats: ResolutionStatistics, *, comments: Iterable[str] = ()
) -> None:
    """Write ``stats`` as a cisTEM statistics file (see the module docstring).

    Parameters
    ----------
    path
        Destination; written under a temporary name and renamed into place.
    stats
        The statistics; negative SSNRs are written as 0 (their square root).
    comments
        Extra comment lines (``"C "`` is prefixed).
    """
    lines = [f"C Pixel size: {stats.pixel_size_angstroms:.5f} A; box: {stats.box_size}"]
    lines += [f"C {text}".rstrip() for text in comments]
    lines.append(HEADER)
    part = np.sqrt(np.clip(stats.part_ssnr, 0.0, None))
    rec = np.sqrt(np.clip(stats.rec_ssnr, 0.0, None))
    for index in range(len(stats)):
        lines.append(
            _ROW_FORMAT
            % (
                stats.shell[index],
                stats.resolution_angstroms[index],
                stats.ring_radius[index],
                stats.fsc[index],
                stats.part_fsc[index],
                part[index],
                rec[index],
            )
        )
    with atomic_output(path) as temporary:
        temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_statistics(path: PathLike) -> ResolutionStatistics:
    """Read a cisTEM statistics file.

    Returns
    -------
    ResolutionStatistics
        SSNR columns squared back (the file holds their square roots).

    Raises
    ------
    InvalidInputError
        If the file is missing or unreadable, has a row without 7 numeric
        columns, no rows, shells that do not increase, or a resolution column
        that disagrees with ``pixel_size · box / shell`` by more than 0.1 Å.
    """
    rows: list[tuple[int, list[float], int]] = []
    for number, line in text_lines(path, what="statistics file"):
        stripped = line.strip()
        if not stripped or stripped[0] in "C#c":
            continue
        tokens = stripped.split()
        if len(tokens) != 7:
            raise_invalid(
                path,
                f"line {number}: expected 7 columns (SHELL RESOLUTION RING_RADIUS FSC "
                f"Part_FSC Part_SSNR^0.5 Rec_SSNR^0.5), got {len(tokens)}",
            )
        shell = parse_int(tokens[0], path, number, "SHELL")
        values = [
            parse_finite_float(token, path, number, label)
            for token, label in zip(
                tokens[1:],
                ("RESOLUTION", "RING_RADIUS", "FSC", "Part_FSC", "Part_SSNR^0.5", "Rec_SSNR^0.5"),
                strict=True,
            )
        ]
        rows.append((shell, values, number))
        if len(rows) > _MAX_SHELLS:
            raise_invalid(path, f"more than {_MAX_SHELLS} shells; not a statistics file")
    if not rows:
        raise_invalid(path, "no statistics rows (expected 7 numeric columns per shell)")
    shells = np.array([row[0] for row in rows], dtype=np.int64)
    data = np.array([row[1] for row in rows], dtype=np.float64)
    if shells[0] < 1 or np.any(np.diff(shells) <= 0):
        raise_invalid(path, "SHELL numbers must be positive and increasing")
    if not (np.all(data[:, 0] > 0) and np.all(data[:, 1] > 0)):
        raise_invalid(path, "RESOLUTION and RING_RADIUS must be positive in every row")
    # The outermost shell carries the most digits of box = shell / ring radius.
    box = int(np.rint(shells[-1] / data[-1, 1]))
    if box < 2:
        raise_invalid(path, f"line {rows[-1][2]}: RING_RADIUS implies a box of {box} voxels")
    pixel_size = float(data[0, 0] * shells[0] / box)
    expected = pixel_size * box / shells
    bad = np.nonzero(np.abs(expected - data[:, 0]) > _RESOLUTION_TOLERANCE_ANGSTROMS)[0]
    if bad.size:
        index = int(bad[0])
        raise_invalid(
            path,
            f"line {rows[index][2]}: RESOLUTION {data[index, 0]:.4f} A does not match "
            f"pixel size x box / shell = {expected[index]:.4f} A (pixel size "
            f"{pixel_size:.4f} A, box {box}); the file is inconsistent",
        )
    if np.any(data[:, 4:] < 0):
        raise_invalid(path, "Part_SSNR^0.5 and Rec_SSNR^0.5 must not be negative")
    return ResolutionStatistics(
        pixel_size_angstroms=pixel_size,
        box_size=box,
        shell=shells,
        resolution_angstroms=data[:, 0],
        ring_radius=data[:, 1],
        fsc=data[:, 2],
        part_fsc=data[:, 3],
        part_ssnr=data[:, 4] ** 2,
        rec_ssnr=data[:, 5] ** 2,
    )
