"""RELION 3.0 and 3.1 particle ``.star`` files: import and export (reference §5.3).

Conventions (RELION -> cisTEM, as cisTEM's import wizard does):

* angles: ``phi = _rlnAngleRot``, ``theta = _rlnAngleTilt``,
  ``psi = _rlnAnglePsi`` (both ZYZ, degrees, same sense);
* shifts: ``x_shift = -_rlnOriginXAngst`` (3.1, Å) or
  ``x_shift = -_rlnOriginX * pixel_size`` (3.0, pixels); likewise y. RELION's
  origin is where the particle centre *is*; cisTEM's shift is the shift that
  *centres* it, hence the sign;
* CTF: ``defocus_1 = _rlnDefocusU``, ``defocus_2 = _rlnDefocusV`` (Å),
  ``defocus_angle = _rlnDefocusAngle``, ``phase_shift = _rlnPhaseShift``
  (degrees in both);
* pixel size, voltage, Cs, amplitude contrast (and beam tilt, mrad) come from
  the particle's optics group (3.1: ``data_optics``, ``_rlnImagePixelSize``)
  or from per-particle columns (3.0: ``_rlnDetectorPixelSize`` µm ×
  10⁴ / ``_rlnMagnification``, or ``_rlnImagePixelSize``/``_rlnPixelSize``);
* ``position_in_stack`` is the number before ``@`` in ``_rlnImageName``,
  ``stack_filename`` the part after it; ``original_image_filename`` is
  ``_rlnMicrographName``; ``assigned_subset`` is ``_rlnRandomSubset``;
* cisTEM-only columns are set as the import wizard sets them: occupancy 100,
  sigma 10, score 0, logp 0, image active 1.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cistemd.errors import InvalidInputError
from cistemd.io._guard import PathLike, atomic_output, raise_invalid
from cistemd.io._star import StarBlock, format_star_value, read_star
from cistemd.io.parameters import ParticleParameters

__all__ = ["RelionOpticsGroup", "RelionParticles", "read", "write"]


@dataclass(frozen=True)
class RelionOpticsGroup:
    """One RELION 3.1 optics group (or the implied single group of a 3.0 file).

    Attributes
    ----------
    number
        ``_rlnOpticsGroup`` (1-based).
    name
        ``_rlnOpticsGroupName``.
    pixel_size_angstroms
        ``_rlnImagePixelSize``, or ``None`` when absent.
    voltage_kv, spherical_aberration_mm, amplitude_contrast
        Optics, or ``None`` when absent.
    image_size
        ``_rlnImageSize`` (box, pixels), or ``None``.
    """

    number: int
    name: str
    pixel_size_angstroms: float | None
    voltage_kv: float | None
    spherical_aberration_mm: float | None
    amplitude_contrast: float | None
    image_size: int | None = None


@dataclass(frozen=True)
class RelionParticles:
    """Particles read from a RELION ``.star`` file, in cisTEM conventions.

    Attributes
    ----------
    params
        The particle table (see the module docstring for the mapping).
    image_names
        ``_rlnImageName`` per particle, e.g. ``"000001@Extract/job007/stack.mrcs"``.
    micrograph_names
        ``_rlnMicrographName`` per particle, or ``None`` if the file has none.
    version
        ``"3.1"`` (has ``data_optics``) or ``"3.0"``.
    optics_groups
        The optics groups (3.1), empty for 3.0 files.
    optics_group
        ``_rlnOpticsGroup`` per particle (all 1 for 3.0 files).
    coordinates_pixels
        ``(n, 2)`` ``_rlnCoordinateX/Y`` (micrograph pixels), or ``None``.
    """

    params: ParticleParameters
    image_names: list[str]
    micrograph_names: list[str] | None
    version: str
    optics_groups: tuple[RelionOpticsGroup, ...] = ()
    optics_group: np.ndarray | None = None
    coordinates_pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.image_names)


_STRING_LABELS = {"rlnImageName", "rlnMicrographName", "rlnOpticsGroupName"}
_INT_LABELS = {"rlnOpticsGroup", "rlnRandomSubset", "rlnImageSize"}
_FLOAT_LABELS = {
    "rlnCoordinateX", "rlnCoordinateY", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
    "rlnOriginX", "rlnOriginY", "rlnOriginXAngst", "rlnOriginYAngst", "rlnDefocusU",
    "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnVoltage",
    "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnMagnification",
    "rlnDetectorPixelSize", "rlnImagePixelSize", "rlnPixelSize", "rlnBeamTiltX",
    "rlnBeamTiltY",
}


def _column_kind(block: str, label: str) -> str | None:
    if label in _STRING_LABELS:
        return "str"
    if label in _INT_LABELS:
        return "int"
    if label in _FLOAT_LABELS:
        return "float"
    return None


_IMAGE_NAME = re.compile(r"^\s*(\d+)\s*@(.+)$")


def _split_image_names(path: PathLike, block: StarBlock, names: list[str]) -> tuple[
    np.ndarray, list[str]
]:
    positions = np.ones(len(names), dtype=np.int64)
    stacks: list[str] = []
    for row, name in enumerate(names):
        match = _IMAGE_NAME.match(name)
        if match is None:
            if "@" in name:
                raise_invalid(path, f"line {int(block.line_numbers[row])}: image name "
                                    f"{name[:60]!r} is not NUMBER@FILE")
            stacks.append(name)
            continue
        number = int(match.group(1))
        if not 1 <= number < 2**62:
            raise_invalid(path, f"line {int(block.line_numbers[row])}: image number "
                                f"{match.group(1)[:20]} in {name[:60]!r} must be ≥ 1")
        positions[row] = number
        stacks.append(match.group(2))
    return positions, stacks


def _positive(path: PathLike, block: StarBlock, values: np.ndarray, label: str) -> None:
    bad = np.flatnonzero(~(values > 0))
    if bad.size:
        raise_invalid(path, f"line {int(block.line_numbers[bad[0]])}: {label} is "
                            f"{values[bad[0]]}; it must be positive")


def _optics_groups(path: PathLike, block: StarBlock) -> list[RelionOpticsGroup]:
    columns = block.columns
    if "rlnOpticsGroup" not in columns:
        raise_invalid(path, "data_optics has no _rlnOpticsGroup column")
    groups = []
    for row in range(block.n_rows):
        def value(label: str, row: int = row) -> float | None:
            return float(columns[label][row]) if label in columns else None

        number = int(columns["rlnOpticsGroup"][row])
        name = columns["rlnOpticsGroupName"][row] if "rlnOpticsGroupName" in columns else (
            f"opticsGroup{number}"
        )
        size = int(columns["rlnImageSize"][row]) if "rlnImageSize" in columns else None
        groups.append(RelionOpticsGroup(
            number=number,
            name=name,
            pixel_size_angstroms=value("rlnImagePixelSize"),
            voltage_kv=value("rlnVoltage"),
            spherical_aberration_mm=value("rlnSphericalAberration"),
            amplitude_contrast=value("rlnAmplitudeContrast"),
            image_size=size,
        ))
    numbers = [g.number for g in groups]
    if len(set(numbers)) != len(numbers):
        raise_invalid(path, "data_optics lists the same _rlnOpticsGroup twice")
    return groups


def _per_particle(
    path: PathLike,
    particles: StarBlock,
    optics: StarBlock | None,
    group_index: np.ndarray | None,
    label: str,
) -> np.ndarray | None:
    """Return a value from the particle's own column, else from its optics group."""
    if label in particles.columns:
        return np.asarray(particles.columns[label], dtype=np.float64)
    if optics is not None and group_index is not None and label in optics.columns:
        return np.asarray(optics.columns[label], dtype=np.float64)[group_index]
    return None


def read(path: PathLike, *, pixel_size_angstroms: float | None = None) -> RelionParticles:
    """Read particles from a RELION 3.0 or 3.1 ``.star`` file.

    Parameters
    ----------
    path
        The file.
    pixel_size_angstroms
        Particle pixel size in Å; overrides the file's. Required for RELION 3.0
        files that carry neither ``_rlnDetectorPixelSize``/``_rlnMagnification``
        nor ``_rlnImagePixelSize``.

    Returns
    -------
    RelionParticles

    Raises
    ------
    InvalidInputError
        If the file is unreadable, is not a RELION particle file, lacks the
        pixel size, voltage, Cs, amplitude contrast or defocus, or has a bad row.
    """
    if pixel_size_angstroms is not None and not (
        np.isfinite(pixel_size_angstroms) and pixel_size_angstroms > 0
    ):
        raise ValueError(f"pixel_size_angstroms must be positive, got {pixel_size_angstroms}")
    blocks = read_star(path, _column_kind, what="RELION star file")
    by_name = {block.name: block for block in blocks}
    optics = by_name.get("optics")
    particles = by_name.get("particles") if optics is not None else None
    if particles is None:
        particles = next((b for b in blocks if "rlnImageName" in b.labels), None)
    if particles is None or "rlnImageName" not in particles.labels:
        raise_invalid(path, "not a RELION particle star file: no _rlnImageName column")
    version = "3.1" if optics is not None else "3.0"
    n = particles.n_rows
    columns = particles.columns
    image_names = list(columns["rlnImageName"])
    positions, stacks = _split_image_names(path, particles, image_names)

    groups: list[RelionOpticsGroup] = []
    group_of_particle = np.ones(n, dtype=np.int64)
    group_index: np.ndarray | None = None
    if optics is not None:
        groups = _optics_groups(path, optics)
        if "rlnOpticsGroup" in columns:
            group_of_particle = np.asarray(columns["rlnOpticsGroup"], dtype=np.int64)
        elif len(groups) != 1:
            raise_invalid(path, "data_particles has no _rlnOpticsGroup column but "
                                f"data_optics lists {len(groups)} groups")
        else:
            group_of_particle = np.full(n, groups[0].number, dtype=np.int64)
        lookup = {g.number: i for i, g in enumerate(groups)}
        group_index = np.empty(n, dtype=np.int64)
        for row, number in enumerate(group_of_particle.tolist()):
            if number not in lookup:
                raise_invalid(path, f"line {int(particles.line_numbers[row])}: optics group "
                                    f"{number} is not in data_optics")
            group_index[row] = lookup[number]

    def needed(label: str, what: str) -> np.ndarray:
        values = _per_particle(path, particles, optics, group_index, label)
        if values is None:
            raise_invalid(path, f"no _{label} ({what}) for the particles")
        return values

    # Pixel size.
    if pixel_size_angstroms is not None:
        pixel_size = np.full(n, float(pixel_size_angstroms))
    else:
        found = None
        for label in ("rlnImagePixelSize", "rlnPixelSize"):
            found = _per_particle(path, particles, optics, group_index, label)
            if found is not None:
                break
        if found is None:
            detector = _per_particle(path, particles, optics, group_index,
                                     "rlnDetectorPixelSize")
            magnification = _per_particle(path, particles, optics, group_index,
                                          "rlnMagnification")
            if detector is None or magnification is None:
                raise_invalid(
                    path,
                    f"RELION {version} file has no pixel size (no _rlnImagePixelSize, nor "
                    "_rlnDetectorPixelSize with _rlnMagnification); pass "
                    "pixel_size_angstroms=",
                )
            _positive(path, particles, magnification, "_rlnMagnification")
            found = detector * 1e4 / magnification
        pixel_size = found
    _positive(path, particles, pixel_size, "the pixel size")

    defocus_u = needed("rlnDefocusU", "defocus")
    defocus_v = _per_particle(path, particles, optics, group_index, "rlnDefocusV")
    table: dict[str, Any] = {
        "position_in_stack": None,
        "psi": columns.get("rlnAnglePsi", np.zeros(n)),
        "theta": columns.get("rlnAngleTilt", np.zeros(n)),
        "phi": columns.get("rlnAngleRot", np.zeros(n)),
        "defocus_1": defocus_u,
        "defocus_2": defocus_v if defocus_v is not None else defocus_u,
        "defocus_angle": columns.get("rlnDefocusAngle", np.zeros(n)),
        "phase_shift": columns.get("rlnPhaseShift", np.zeros(n)),
        "image_is_active": np.ones(n, dtype=np.int64),
        "occupancy": np.full(n, 100.0),
        "logp": np.zeros(n, dtype=np.int64),
        "sigma": np.full(n, 10.0),
        "score": np.zeros(n),
        "pixel_size": pixel_size,
        "microscope_voltage_kv": needed("rlnVoltage", "voltage"),
        "microscope_spherical_aberration_mm": needed("rlnSphericalAberration",
                                                     "spherical aberration"),
        "amplitude_contrast": needed("rlnAmplitudeContrast", "amplitude contrast"),
    }
    if "rlnOriginXAngst" in columns or "rlnOriginYAngst" in columns:
        origin_x = np.asarray(columns.get("rlnOriginXAngst", np.zeros(n)))
        origin_y = np.asarray(columns.get("rlnOriginYAngst", np.zeros(n)))
    else:
        origin_x = np.asarray(columns.get("rlnOriginX", np.zeros(n))) * pixel_size
        origin_y = np.asarray(columns.get("rlnOriginY", np.zeros(n))) * pixel_size
    # "0.0 -" rather than unary minus: no negative zeros in the table.
    table["x_shift"] = 0.0 - origin_x
    table["y_shift"] = 0.0 - origin_y
    for label, name in (("rlnBeamTiltX", "beam_tilt_x"), ("rlnBeamTiltY", "beam_tilt_y")):
        values = _per_particle(path, particles, optics, group_index, label)
        if values is not None:
            table[name] = values
    if "rlnRandomSubset" in columns:
        table["assigned_subset"] = columns["rlnRandomSubset"]

    table["position_in_stack"] = positions
    table["stack_filename"] = np.array(stacks, dtype=object)
    micrographs = list(columns["rlnMicrographName"]) if "rlnMicrographName" in columns else None
    if micrographs is not None:
        table["original_image_filename"] = np.array(micrographs, dtype=object)
    coordinates = None
    if "rlnCoordinateX" in columns and "rlnCoordinateY" in columns:
        coordinates = np.stack([columns["rlnCoordinateX"], columns["rlnCoordinateY"]], axis=1)
    try:
        params = ParticleParameters(table)
    except ValueError as error:  # pragma: no cover - shapes are consistent by construction
        raise InvalidInputError(str(error), path=os.fspath(path)) from error
    return RelionParticles(
        params=params,
        image_names=image_names,
        micrograph_names=micrographs,
        version=version,
        optics_groups=tuple(groups),
        optics_group=group_of_particle,
        coordinates_pixels=coordinates,
    )


def _loop(name: str, labels: list[str], rows: list[list[str]], version_line: bool) -> list[str]:
    lines = []
    if version_line:
        lines += ["", "# version 30001"]
    lines += ["", f"data_{name}", "", "loop_"]
    lines += [f"_{label} #{number}" for number, label in enumerate(labels, start=1)]
    lines += [" ".join(row) for row in rows]
    lines.append("")
    return lines


def _finite_column(params: ParticleParameters, name: str) -> np.ndarray:
    values = np.asarray(params.get(name), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"{name} of row {int(bad[0]) + 1} is {values[bad[0]]}; "
                         "STAR files hold finite numbers only")
    return values


def write(
    path: PathLike,
    params: ParticleParameters,
    *,
    image_names: Sequence[str],
    version: str = "3.1",
    optics_group_name: str = "opticsGroup1",
    micrograph_names: Sequence[str] | None = None,
    image_size: int | None = None,
    overwrite: bool = True,
) -> None:
    """Export particles to a RELION ``.star`` file.

    Parameters
    ----------
    path
        Destination (written under a temporary name and renamed into place).
    params
        The table, in cisTEM conventions (see the module docstring).
    image_names
        ``_rlnImageName`` per particle (``"000001@stack.mrcs"``).
    version
        ``"3.1"`` (``data_optics`` + ``data_particles``, shifts in Å) or
        ``"3.0"`` (one block, shifts in pixels, pixel size as
        ``_rlnDetectorPixelSize`` with ``_rlnMagnification`` 10000).
    optics_group_name
        Name of the optics group (3.1). Particles with different pixel size,
        voltage, Cs or amplitude contrast get one group each, named by this
        name with a trailing number replaced by the group number.
    micrograph_names
        ``_rlnMicrographName`` per particle; default: ``original_image_filename``
        when ``params`` has it, else none.
    image_size
        Box size for ``_rlnImageSize`` (3.1), if known.
    overwrite
        If false and ``path`` exists, raise :class:`FileExistsError`.

    Raises
    ------
    ValueError
        For a length mismatch, a bad version, non-positive pixel sizes or
        non-finite values.
    """
    n = len(params)
    if len(image_names) != n:
        raise ValueError(f"{len(image_names)} image names for {n} particles")
    if version not in ("3.0", "3.1"):
        raise ValueError(f"version must be '3.0' or '3.1', got {version!r}")
    if micrograph_names is None and "original_image_filename" in params.columns:
        micrograph_names = [str(m) for m in params.columns["original_image_filename"]]
    if micrograph_names is not None and len(micrograph_names) != n:
        raise ValueError(f"{len(micrograph_names)} micrograph names for {n} particles")
    pixel_size = _finite_column(params, "pixel_size")
    if np.any(pixel_size <= 0):
        raise ValueError("pixel_size must be positive for every particle")
    voltage = _finite_column(params, "microscope_voltage_kv")
    cs = _finite_column(params, "microscope_spherical_aberration_mm")
    ac = _finite_column(params, "amplitude_contrast")
    x_shift = _finite_column(params, "x_shift")
    y_shift = _finite_column(params, "y_shift")

    def f(values: np.ndarray) -> list[str]:
        return [f"{v:12.6f}" for v in values.tolist()]

    names = [format_star_value(str(name)) for name in image_names]
    columns: list[tuple[str, list[str]]] = [("rlnImageName", names)]
    if micrograph_names is not None:
        columns.append(("rlnMicrographName", [format_star_value(str(m))
                                              for m in micrograph_names]))
    for label, name in (("rlnAngleRot", "phi"), ("rlnAngleTilt", "theta"),
                        ("rlnAnglePsi", "psi")):
        columns.append((label, f(_finite_column(params, name))))
    if version == "3.1":
        columns += [("rlnOriginXAngst", f(-x_shift)), ("rlnOriginYAngst", f(-y_shift))]
    else:
        columns += [("rlnOriginX", f(-x_shift / pixel_size)),
                    ("rlnOriginY", f(-y_shift / pixel_size))]
    for label, name in (("rlnDefocusU", "defocus_1"), ("rlnDefocusV", "defocus_2"),
                        ("rlnDefocusAngle", "defocus_angle"), ("rlnPhaseShift", "phase_shift")):
        columns.append((label, f(_finite_column(params, name))))
    if "assigned_subset" in params.columns:
        columns.append(("rlnRandomSubset",
                        [str(v) for v in params.columns["assigned_subset"].tolist()]))

    lines: list[str] = []
    if version == "3.1":
        optics_keys = np.stack([pixel_size, voltage, cs, ac], axis=1)
        unique, group_index = np.unique(optics_keys, axis=0, return_inverse=True)
        group_index = group_index.reshape(-1)
        base = optics_group_name if len(unique) == 1 else optics_group_name.rstrip("0123456789")
        group_names = [base if len(unique) == 1 else f"{base}{k + 1}" for k in range(len(unique))]
        optics_labels = ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographOriginalPixelSize",
                         "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                         "rlnImagePixelSize"]
        if image_size is not None:
            optics_labels += ["rlnImageSize", "rlnImageDimensionality"]
        optics_rows = []
        for k, (psize, kv, cs_mm, amplitude) in enumerate(unique.tolist()):
            row = [format_star_value(group_names[k]), str(k + 1), f"{psize:.6f}", f"{kv:.6f}",
                   f"{cs_mm:.6f}", f"{amplitude:.6f}", f"{psize:.6f}"]
            if image_size is not None:
                row += [str(int(image_size)), "2"]
            optics_rows.append(row)
        columns.append(("rlnOpticsGroup", [str(k + 1) for k in group_index.tolist()]))
        lines += _loop("optics", optics_labels, optics_rows, version_line=True)
        block_name = "particles"
    else:
        columns += [("rlnVoltage", f(voltage)), ("rlnSphericalAberration", f(cs)),
                    ("rlnAmplitudeContrast", f(ac)),
                    ("rlnMagnification", f(np.full(n, 10000.0))),
                    ("rlnDetectorPixelSize", f(pixel_size))]
        block_name = ""
    labels = [label for label, _ in columns]
    rows = [list(row) for row in zip(*(values for _, values in columns), strict=True)]
    lines += _loop(block_name, labels, rows, version_line=version == "3.1")
    with atomic_output(path, overwrite=overwrite) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
