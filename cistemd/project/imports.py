"""Reading and checking what is imported into a project, before any database write.

Each ``prepare_*`` function reads file headers, validates the user's values
and returns the rows to insert (cisTEM column names) plus warnings; it never
touches the database, so a :class:`~cistemd.project.Project` can do the slow
file reading first and then write everything in one short transaction -- a
failed import changes nothing.

All errors are :class:`~cistemd.errors.ProjectError` with code
``"invalid_input"`` and a message that names the file or field and the fix;
errors of the file readers (:class:`~cistemd.errors.InvalidInputError`) are
re-raised as such.

Conventions (cisTEM's): pixel sizes in Å/pixel, voltage in kV, spherical
aberration in mm, exposure in e⁻/Å² per frame, magnification-distortion angle
in degrees, particle positions in Å from the image origin.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cistemd.errors import InvalidInputError, ProjectError

__all__ = [
    "CISTEM_IMPORT_DEFAULTS",
    "ImageImportParameters",
    "MovieImportParameters",
    "PreparedImport",
    "PreparedRefinementPackage",
    "absolute_path",
    "detect_parameters_format",
    "frealign_half_set",
    "image_dimensions",
    "prepare_images",
    "prepare_movies",
    "prepare_refinement_package",
    "prepare_volumes",
]

#: Default values of cisTEM's "Import refinement package" wizard.
CISTEM_IMPORT_DEFAULTS: Mapping[str, float] = {
    "voltage_kv": 300.0,
    "spherical_aberration_mm": 2.7,
    "amplitude_contrast": 0.07,
    "molecular_weight_kda": 400.0,
    "largest_dimension_angstroms": 150.0,
}

_STANDARD_VOLTAGES_KV = (100.0, 200.0, 300.0)
_SYMMETRY = re.compile(r"^(C[1-9]\d*|D[1-9]\d*|T|O|I[12]?)$")


def _invalid(message: str) -> ProjectError:
    return ProjectError(message, code="invalid_input")


def absolute_path(path: str | os.PathLike[str]) -> str:
    """Absolute, normalised path as stored in the database (symlinks kept)."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def _paths_to_import(
    paths: Iterable[str | os.PathLike[str]],
    existing_filenames: Iterable[str],
    warnings: list[str],
) -> Iterator[str]:
    """Yield each path as stored (absolute), skipping files already in the project.

    A skipped file gets a warning, as cisTEM's import dialogs do; a path given
    twice in one import is imported once.
    """
    seen = set(existing_filenames)
    for given in paths:
        path = absolute_path(given)
        if path in seen:
            warnings.append(f"{path} is already in the project; skipped")
            continue
        yield path
        seen.add(path)


def _require_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise _invalid(f"{path}: {what} does not exist; check the path")
    if not os.path.isfile(path):
        raise _invalid(f"{path}: {what} is not a regular file")
    if not os.access(path, os.R_OK):
        raise _invalid(f"{path}: {what} is not readable; check its permissions")


def _positive(name: str, value: float) -> float:
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise _invalid(f"{name} must be a positive number, got {value!r}")
    return number


def _non_negative(name: str, value: float) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise _invalid(f"{name} must be zero or positive, got {value!r}")
    return number


def _voltage_warning(voltage_kv: float) -> str | None:
    if any(abs(voltage_kv - v) <= 1.0 for v in _STANDARD_VOLTAGES_KV):
        return None
    return (
        f"voltage {voltage_kv:g} kV is accepted, but the exposure (dose) filter is calibrated "
        "for 100, 200 and 300 kV only"
    )


@dataclass(slots=True)
class PreparedImport:
    """Rows ready to insert, and what the user should be told.

    Attributes
    ----------
    rows
        One mapping per new asset, keyed by cisTEM column name.
    warnings
        Human-readable notes (skipped duplicates, suspicious values ...).
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# -- movies ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MovieImportParameters:
    """What cisTEM's movie-import dialog asks for.

    Attributes
    ----------
    voltage_kv
        Accelerating voltage, kV (> 0; the exposure filter knows 100/200/300).
    spherical_aberration_mm
        Cs in mm (>= 0).
    pixel_size_angstroms
        Movie pixel size, Å (> 0).
    exposure_per_frame
        Exposure per frame, e⁻/Å² (> 0).
    gain_filename, dark_filename
        Gain / dark reference (MRC or TIFF, one image the size of a frame, or
        its transpose); ``None`` if the movies are already corrected.
    desired_pixel_size_angstroms
        Output pixel size after Fourier cropping; stored as
        ``OUTPUT_BINNING_FACTOR = desired / pixel size`` (>= 1). ``None``: no cropping.
    correct_mag_distortion, mag_distortion_angle, mag_distortion_major_scale,
    mag_distortion_minor_scale
        Anisotropic magnification correction: angle of the major axis in
        degrees, and the two scale factors (> 0).
    protein_is_white
        Whether protein is bright in the images.
    eer_super_res_factor, eer_frames_per_image
        EER rendering (1 and 0 for other formats).
    """

    voltage_kv: float
    spherical_aberration_mm: float
    pixel_size_angstroms: float
    exposure_per_frame: float
    gain_filename: str | None = None
    dark_filename: str | None = None
    desired_pixel_size_angstroms: float | None = None
    correct_mag_distortion: bool = False
    mag_distortion_angle: float = 0.0
    mag_distortion_major_scale: float = 1.0
    mag_distortion_minor_scale: float = 1.0
    protein_is_white: bool = False
    eer_super_res_factor: int = 1
    eer_frames_per_image: int = 0

    def output_binning_factor(self) -> float:
        """``desired / pixel size`` (1.0 when no desired size is given).

        Raises
        ------
        ProjectError
            If the desired pixel size is smaller than the movie's (Fourier
            cropping can only make pixels larger).
        """
        if self.desired_pixel_size_angstroms is None:
            return 1.0
        desired = _positive("desired output pixel size", self.desired_pixel_size_angstroms)
        factor = desired / self.pixel_size_angstroms
        if factor < 1.0 - 1e-6:
            raise _invalid(
                f"desired output pixel size {desired:g} Å is smaller than the movie pixel size "
                f"{self.pixel_size_angstroms:g} Å; Fourier cropping can only make pixels larger "
                "-- give a value >= the movie pixel size, or none"
            )
        return max(1.0, factor)

    def check(self) -> list[str]:
        """Validate the values; return warnings (raise on errors)."""
        _positive("voltage_kv", self.voltage_kv)
        _non_negative("spherical_aberration_mm", self.spherical_aberration_mm)
        _positive("pixel_size_angstroms", self.pixel_size_angstroms)
        _positive("exposure_per_frame (e/Å² per frame)", self.exposure_per_frame)
        self.output_binning_factor()
        if self.correct_mag_distortion:
            _positive("mag_distortion_major_scale", self.mag_distortion_major_scale)
            _positive("mag_distortion_minor_scale", self.mag_distortion_minor_scale)
            if not math.isfinite(float(self.mag_distortion_angle)):
                raise _invalid(
                    f"mag_distortion_angle must be finite, got {self.mag_distortion_angle!r}"
                )
        if int(self.eer_super_res_factor) not in (1, 2, 4):
            raise _invalid(
                f"eer_super_res_factor must be 1, 2 or 4, got {self.eer_super_res_factor!r}"
            )
        if int(self.eer_frames_per_image) < 0:
            raise _invalid(f"eer_frames_per_image must be >= 0, got {self.eer_frames_per_image!r}")
        warning = _voltage_warning(float(self.voltage_kv))
        return [warning] if warning else []


def _reference_dimensions(path: str, what: str) -> tuple[int, int]:
    from cistemd.io.movie import read_movie_header

    _require_file(path, f"the {what} reference")
    try:
        header = read_movie_header(path)
    except InvalidInputError as exc:
        raise _invalid(f"{exc} (reading it as a {what} reference)") from exc
    if header.n_frames != 1:
        raise _invalid(
            f"{path}: a {what} reference must be a single image, this file has "
            f"{header.n_frames} frames"
        )
    return header.nx, header.ny


def _check_reference(
    ref_path: str, ref_dims: tuple[int, int], movie_path: str, movie_dims: tuple[int, int],
    what: str, eer_factor: int, noted: set[str],
) -> str | None:
    nx, ny = movie_dims
    accepted = {(nx, ny)}
    if movie_path.lower().endswith(".eer") and eer_factor > 1:
        accepted |= {(nx * eer_factor, ny * eer_factor)}
    if ref_dims in accepted:
        return None
    transposed = {(b, a) for a, b in accepted}
    if ref_dims in transposed:
        if ref_path in noted:
            return None
        noted.add(ref_path)
        return (
            f"{what} reference {ref_path} is {ref_dims[0]}×{ref_dims[1]}, the transpose of the "
            f"movie frames ({nx}×{ny}) in {movie_path}: it must be rotated by 90° (or "
            "transposed) before use -- check the detector's gain orientation"
        )
    raise _invalid(
        f"{what} reference {ref_path} is {ref_dims[0]}×{ref_dims[1]} pixels but the frames of "
        f"{movie_path} are {nx}×{ny}; use the reference recorded for this detector and mode"
    )


def prepare_movies(
    paths: Iterable[str | os.PathLike[str]],
    parameters: MovieImportParameters,
    existing_filenames: Iterable[str] = (),
) -> PreparedImport:
    """Read movie headers and build ``MOVIE_ASSETS`` rows.

    Parameters
    ----------
    paths
        Movie files (MRC stacks, TIFF, EER); referenced in place.
    parameters
        The import dialog's values.
    existing_filenames
        ``FILENAME`` values already in the project; these files are skipped
        with a warning (as cisTEM does), as are repeats within ``paths``.

    Returns
    -------
    PreparedImport
        Rows without ``MOVIE_ASSET_ID``.
    """
    from cistemd.io.movie import read_movie_header

    result = PreparedImport(warnings=parameters.check())
    binning = parameters.output_binning_factor()
    references: list[tuple[str, tuple[int, int], str]] = []
    gain = dark = None
    if parameters.gain_filename:
        gain = absolute_path(parameters.gain_filename)
        references.append((gain, _reference_dimensions(gain, "gain"), "gain"))
    if parameters.dark_filename:
        dark = absolute_path(parameters.dark_filename)
        references.append((dark, _reference_dimensions(dark, "dark"), "dark"))
    noted: set[str] = set()
    for path in _paths_to_import(paths, existing_filenames, result.warnings):
        _require_file(path, "the movie")
        try:
            header = read_movie_header(path)
        except InvalidInputError as exc:
            raise _invalid(f"{exc} (importing it as a movie)") from exc
        if header.n_frames < 2:
            result.warnings.append(
                f"{path} has a single frame; it is imported as a movie, but it may be an "
                "image (import it with import_images instead)"
            )
        if header.pixel_size_angstroms and not math.isclose(
            header.pixel_size_angstroms, parameters.pixel_size_angstroms, rel_tol=0.01
        ):
            result.warnings.append(
                f"{path}: its header says {header.pixel_size_angstroms:g} Å/pixel; using the "
                f"{parameters.pixel_size_angstroms:g} Å/pixel given"
            )
        for ref, dims, what in references:
            note = _check_reference(
                ref, dims, path, (header.nx, header.ny), what,
                int(parameters.eer_super_res_factor), noted,
            )
            if note:
                result.warnings.append(note)
        result.rows.append(
            {
                "NAME": Path(path).stem,
                "FILENAME": path,
                "POSITION_IN_STACK": 1,
                "X_SIZE": header.nx,
                "Y_SIZE": header.ny,
                "NUMBER_OF_FRAMES": header.n_frames,
                "VOLTAGE": float(parameters.voltage_kv),
                "PIXEL_SIZE": float(parameters.pixel_size_angstroms),
                "DOSE_PER_FRAME": float(parameters.exposure_per_frame),
                "SPHERICAL_ABERRATION": float(parameters.spherical_aberration_mm),
                "GAIN_FILENAME": gain or "",
                "DARK_FILENAME": dark or "",
                "OUTPUT_BINNING_FACTOR": binning,
                "CORRECT_MAG_DISTORTION": int(bool(parameters.correct_mag_distortion)),
                "MAG_DISTORTION_ANGLE": float(parameters.mag_distortion_angle),
                "MAG_DISTORTION_MAJOR_SCALE": float(parameters.mag_distortion_major_scale),
                "MAG_DISTORTION_MINOR_SCALE": float(parameters.mag_distortion_minor_scale),
                "PROTEIN_IS_WHITE": int(bool(parameters.protein_is_white)),
                "EER_SUPER_RES_FACTOR": int(parameters.eer_super_res_factor),
                "EER_FRAMES_PER_IMAGE": int(parameters.eer_frames_per_image),
            }
        )
    return result


# -- images ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageImportParameters:
    """What cisTEM's image-import dialog asks for (units as in :class:`MovieImportParameters`)."""

    voltage_kv: float
    spherical_aberration_mm: float
    pixel_size_angstroms: float
    protein_is_white: bool = False

    def check(self) -> list[str]:
        """Validate the values; return warnings (raise on errors)."""
        _positive("voltage_kv", self.voltage_kv)
        _non_negative("spherical_aberration_mm", self.spherical_aberration_mm)
        _positive("pixel_size_angstroms", self.pixel_size_angstroms)
        warning = _voltage_warning(float(self.voltage_kv))
        return [warning] if warning else []


def image_dimensions(path: str) -> tuple[int, int, float | None]:
    """``(nx, ny, pixel size or None)`` of a single 2-D image (MRC or TIFF).

    Raises
    ------
    ProjectError
        If the file is unreadable or holds more than one section.
    """
    from cistemd.io.movie import detect_image_format, read_movie_header
    from cistemd.io.mrc import read_header

    _require_file(path, "the image")
    try:
        if detect_image_format(path) == "mrc":
            header = read_header(path)
            if header.nz != 1:
                raise _invalid(
                    f"{path}: is a {header.kind} of {header.nz} sections ({header.nx}×"
                    f"{header.ny}×{header.nz}); images must be single 2-D micrographs -- import "
                    "movies with import_movies and maps with import_volumes"
                )
            pixel = header.voxel_size_angstroms[0]
            return header.nx, header.ny, (pixel if pixel > 0 else None)
        movie = read_movie_header(path)
    except InvalidInputError as exc:
        raise _invalid(f"{exc} (importing it as an image)") from exc
    if movie.n_frames != 1:
        raise _invalid(
            f"{path}: has {movie.n_frames} frames; images must be single 2-D micrographs -- "
            "import movies with import_movies"
        )
    return movie.nx, movie.ny, movie.pixel_size_angstroms


def prepare_images(
    paths: Iterable[str | os.PathLike[str]],
    parameters: ImageImportParameters,
    existing_filenames: Iterable[str] = (),
) -> PreparedImport:
    """Read image headers and build ``IMAGE_ASSETS`` rows (duplicates skipped, with a warning)."""
    result = PreparedImport(warnings=parameters.check())
    for path in _paths_to_import(paths, existing_filenames, result.warnings):
        nx, ny, header_pixel = image_dimensions(path)
        if header_pixel and not math.isclose(
            header_pixel, parameters.pixel_size_angstroms, rel_tol=0.01
        ):
            result.warnings.append(
                f"{path}: its header says {header_pixel:g} Å/pixel; using the "
                f"{parameters.pixel_size_angstroms:g} Å/pixel given"
            )
        result.rows.append(
            {
                "NAME": Path(path).stem,
                "FILENAME": path,
                "POSITION_IN_STACK": 1,
                "PARENT_MOVIE_ID": -1,
                "ALIGNMENT_ID": -1,
                "CTF_ESTIMATION_ID": -1,
                "X_SIZE": nx,
                "Y_SIZE": ny,
                "PIXEL_SIZE": float(parameters.pixel_size_angstroms),
                "VOLTAGE": float(parameters.voltage_kv),
                "SPHERICAL_ABERRATION": float(parameters.spherical_aberration_mm),
                "PROTEIN_IS_WHITE": int(bool(parameters.protein_is_white)),
            }
        )
    return result


# -- volumes -----------------------------------------------------------------------------------


def prepare_volumes(
    paths: Iterable[str | os.PathLike[str]],
    pixel_size_angstroms: float | None = None,
    existing_filenames: Iterable[str] = (),
) -> PreparedImport:
    """Read MRC headers of 3-D maps and build ``VOLUME_ASSETS`` rows.

    Parameters
    ----------
    paths
        MRC maps.
    pixel_size_angstroms
        Voxel size to record; ``None`` takes it from each header (an error if
        the header has none).
    existing_filenames
        Files already in the project (skipped with a warning).
    """
    from cistemd.io.mrc import read_header

    result = PreparedImport()
    if pixel_size_angstroms is not None:
        _positive("pixel_size_angstroms", pixel_size_angstroms)
    for path in _paths_to_import(paths, existing_filenames, result.warnings):
        _require_file(path, "the volume")
        try:
            header = read_header(path)
        except InvalidInputError as exc:
            raise _invalid(f"{exc} (importing it as a volume)") from exc
        if header.nz < 2:
            raise _invalid(
                f"{path}: is a 2-D image ({header.nx}×{header.ny}); volumes must be 3-D maps -- "
                "import micrographs with import_images"
            )
        if not header.nx == header.ny == header.nz:
            result.warnings.append(
                f"{path}: is {header.nx}×{header.ny}×{header.nz}, not cubic; refinement and "
                "reconstruction need cubic boxes"
            )
        header_pixel = header.voxel_size_angstroms[0]
        if pixel_size_angstroms is None:
            if header_pixel <= 0:
                raise _invalid(
                    f"{path}: the header records no voxel size; give pixel_size_angstroms"
                )
            pixel = header_pixel
        else:
            pixel = float(pixel_size_angstroms)
            if header_pixel > 0 and not math.isclose(header_pixel, pixel, rel_tol=0.01):
                result.warnings.append(
                    f"{path}: its header says {header_pixel:g} Å/voxel; using the {pixel:g} "
                    "Å/voxel given"
                )
        result.rows.append(
            {
                "NAME": Path(path).stem,
                "FILENAME": path,
                "RECONSTRUCTION_JOB_ID": -1,
                "PIXEL_SIZE": pixel,
                "X_SIZE": header.nx,
                "Y_SIZE": header.ny,
                "Z_SIZE": header.nz,
                "HALF_MAP1_FILENAME": "",
                "HALF_MAP2_FILENAME": "",
            }
        )
    return result


# -- refinement packages -----------------------------------------------------------------------


def detect_parameters_format(path: str) -> str:
    """Tell a parameter file's kind: ``"frealign"``, ``"cistem"`` or ``"relion"``.

    ``.par`` is Frealign; a ``.star`` file with ``_cisTEM`` labels is cisTEM's,
    one with ``_rln`` labels RELION's.

    Raises
    ------
    ProjectError
        If the kind cannot be told.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".par":
        return "frealign"
    _require_file(path, "the parameter file")
    with open(path, encoding="utf-8", errors="replace") as handle:
        head = handle.read(1 << 16)
    labels = re.findall(r"^\s*_(\w+)", head, flags=re.MULTILINE)
    if any(label.startswith("cisTEM") for label in labels):
        return "cistem"
    if any(label.startswith("rln") for label in labels):
        return "relion"
    if suffix == ".cistem":
        raise _invalid(
            f"{path}: binary .cistem files cannot be imported; convert it to a cisTEM .star file"
        )
    raise _invalid(
        f"{path}: not a Frealign .par, cisTEM .star or RELION .star file (no _cisTEM or _rln "
        "labels found)"
    )


def frealign_half_set(index: int, count: int) -> int:
    """Half-set (1 or 2) cisTEM assigns to particle ``index`` (0-based) of ``count``.

    cisTEM's Frealign import splits the stack into ten contiguous blocks and
    alternates: block 0 -> 2, block 1 -> 1, block 2 -> 2, ...
    """
    block = max(1, count // 10)
    return 1 if (index // block) % 2 else 2


@dataclass(slots=True)
class PreparedRefinementPackage:
    """Everything :meth:`Project.import_refinement_package` writes.

    Attributes
    ----------
    package
        ``REFINEMENT_PACKAGE_ASSETS`` row (no id, no ``LAST_REFINEMENT_ID``).
    particles
        ``REFINEMENT_PACKAGE_CONTAINED_PARTICLES`` rows.
    results
        ``REFINEMENT_RESULT_<id>_1`` rows.
    refinement
        ``REFINEMENT_LIST`` row (no ids).
    micrograph_names
        Per particle, the micrograph it came from (``None`` where unknown), for
        linking particles to image assets.
    coordinates_pixels
        Per particle, its position in micrograph pixels where the file gives
        one (RELION ``_rlnCoordinateX/Y``), else ``None``; converted to Å once
        the micrograph (and so its pixel size) is known.
    warnings
        Notes for the user.
    """

    package: dict[str, Any]
    particles: list[dict[str, Any]]
    results: list[dict[str, Any]]
    refinement: dict[str, Any]
    micrograph_names: list[str | None]
    coordinates_pixels: list[tuple[float, float] | None]
    warnings: list[str] = field(default_factory=list)


def _choose(
    explicit: float | None, params: Any, column: str, default: float, n: int
) -> Sequence[float]:
    """Explicit value > the file's column > cisTEM's default, per particle."""
    if explicit is not None:
        return [float(explicit)] * n
    if column in params.columns:
        return [float(v) for v in params.columns[column]]
    return [float(default)] * n


def prepare_refinement_package(
    *,
    stack_path: str | os.PathLike[str],
    parameters_path: str | os.PathLike[str],
    name: str | None,
    package_number: int,
    pixel_size_angstroms: float | None = None,
    symmetry: str = "C1",
    molecular_weight_kda: float = CISTEM_IMPORT_DEFAULTS["molecular_weight_kda"],
    largest_dimension_angstroms: float = CISTEM_IMPORT_DEFAULTS["largest_dimension_angstroms"],
    amplitude_contrast: float | None = None,
    spherical_aberration_mm: float | None = None,
    voltage_kv: float | None = None,
    protein_is_white: bool = False,
    parameters_format: str | None = None,
) -> PreparedRefinementPackage:
    """Read a stack and its parameters and build the rows of an imported package.

    Follows cisTEM's import wizard (reference §5.3): one class, a refinement
    named "Imported Parameters" holding the imported poses; RELION imports get
    score 0, sigma 10, occupancy 100, LogP 0 and active 1, and shifts
    ``-rlnOrigin`` in Å; Frealign imports get the half-sets cisTEM assigns
    (:func:`frealign_half_set`), as do files without half-set columns.

    Parameters
    ----------
    stack_path
        One MRC stack of square particle images (referenced in place).
    parameters_path
        Frealign ``.par``, cisTEM ``.star`` or RELION 3.0/3.1 ``.star``; one
        row per stack image, in stack order.
    name
        Package name; ``None`` gives cisTEM's "Refinement Package #N (... Import)".
    package_number
        The id the package will get (for the default name).
    pixel_size_angstroms, voltage_kv, spherical_aberration_mm, amplitude_contrast
        Given values override the file's; ``None`` takes the file's value,
        else the stack header's pixel size, else cisTEM's defaults (300 kV,
        2.7 mm, 0.07). A pixel size is required for ``.par`` files.
    symmetry
        Point group (C<n>, D<n>, T, O, I).
    molecular_weight_kda, largest_dimension_angstroms
        Particle estimates stored with the package (> 0).
    protein_is_white
        Whether protein is bright in the stack.
    parameters_format
        ``"frealign"``, ``"cistem"`` or ``"relion"``; ``None`` detects it.

    Raises
    ------
    ProjectError
        Unreadable files, a non-square stack, a particle count that differs
        from the stack depth, bad values.
    """
    from cistemd.io.mrc import read_header

    stack = absolute_path(stack_path)
    par_path = absolute_path(parameters_path)
    _require_file(stack, "the particle stack")
    _require_file(par_path, "the parameter file")
    kind = parameters_format or detect_parameters_format(par_path)
    if kind not in ("frealign", "cistem", "relion"):
        raise _invalid(f"parameters_format must be frealign, cistem or relion, got {kind!r}")
    symmetry_name = symmetry.strip().upper()
    if not _SYMMETRY.match(symmetry_name):
        raise _invalid(f"symmetry {symmetry!r} is not a point group (C<n>, D<n>, T, O or I)")
    _positive("molecular_weight_kda", molecular_weight_kda)
    _positive("largest_dimension_angstroms", largest_dimension_angstroms)
    warnings: list[str] = []

    try:
        header = read_header(stack)
    except InvalidInputError as exc:
        raise _invalid(f"{exc} (reading it as a particle stack)") from exc
    if header.nx != header.ny:
        raise _invalid(
            f"{stack}: particle images are {header.nx}×{header.ny}; only square images are "
            "supported"
        )
    n_stack = header.nz
    header_pixel = header.voxel_size_angstroms[0]

    micrographs: list[str | None]
    coordinates: list[tuple[float, float] | None] | None = None
    referenced_stacks: set[str] = set()
    try:
        if kind == "frealign":
            if pixel_size_angstroms is None:
                raise _invalid(
                    f"{par_path}: Frealign .par files carry no pixel size; give "
                    "pixel_size_angstroms"
                )
            from cistemd.io import par

            params = par.read(par_path)
            micrographs = [None] * len(params)
        elif kind == "cistem":
            from cistemd.io import cistem_star

            params = cistem_star.read(par_path)
            names = params.columns.get("original_image_filename")
            micrographs = (
                [str(v) or None for v in names] if names is not None else [None] * len(params)
            )
        else:
            from cistemd.io import relion_star

            relion = relion_star.read(par_path, pixel_size_angstroms=pixel_size_angstroms)
            params = relion.params
            micrographs = (
                [str(m) or None for m in relion.micrograph_names]
                if relion.micrograph_names is not None
                else [None] * len(params)
            )
            if relion.coordinates_pixels is not None:
                coordinates = [(float(x), float(y)) for x, y in relion.coordinates_pixels]
            if "stack_filename" in params.columns:
                referenced_stacks = {os.path.basename(str(s)) for s in params.columns[
                    "stack_filename"]}
    except InvalidInputError as exc:
        raise _invalid(f"{exc} (reading the parameters of a refinement package)") from exc

    n = len(params)
    if referenced_stacks and referenced_stacks != {os.path.basename(stack)}:
        shown = ", ".join(sorted(referenced_stacks)[:3])
        warnings.append(
            f"{par_path} refers to image stack(s) {shown}; its particles are taken as the images "
            f"of {stack}, by their positions in the stack"
        )
    if n != n_stack:
        raise _invalid(
            f"{par_path} describes {n} particles but the stack {stack} holds {n_stack} images; "
            "they must match one to one, in stack order"
        )
    if n == 0:
        raise _invalid(f"{par_path}: no particles")

    if pixel_size_angstroms is not None:
        pixel = _positive("pixel_size_angstroms", pixel_size_angstroms)
    elif "pixel_size" in params.columns:
        pixel = _positive(f"{par_path}: pixel size", float(params.columns["pixel_size"][0]))
    elif header_pixel > 0:
        pixel = header_pixel
    else:
        raise _invalid(
            f"neither {par_path} nor the header of {stack} gives a pixel size; give "
            "pixel_size_angstroms"
        )
    if header_pixel > 0 and not math.isclose(header_pixel, pixel, rel_tol=0.01):
        warnings.append(
            f"{stack}: its header says {header_pixel:g} Å/pixel; using {pixel:g} Å/pixel"
        )

    voltages = _choose(voltage_kv, params, "microscope_voltage_kv",
                       CISTEM_IMPORT_DEFAULTS["voltage_kv"], n)
    cs = _choose(spherical_aberration_mm, params, "microscope_spherical_aberration_mm",
                 CISTEM_IMPORT_DEFAULTS["spherical_aberration_mm"], n)
    ac = _choose(amplitude_contrast, params, "amplitude_contrast",
                 CISTEM_IMPORT_DEFAULTS["amplitude_contrast"], n)
    pixels = (
        [float(v) for v in params.columns["pixel_size"]]
        if pixel_size_angstroms is None and "pixel_size" in params.columns
        else [pixel] * n
    )
    for label, values, check in (
        ("voltage_kv", voltages, _positive), ("spherical_aberration_mm", cs, _non_negative),
        ("amplitude_contrast", ac, _non_negative), ("pixel size", pixels, _positive),
    ):
        check(label, min(values))
        check(label, max(values))
    warning = _voltage_warning(voltages[0])
    if warning:
        warnings.append(warning)

    # Stack positions: the file's, if they number the stack 1..n; else row order.
    positions = list(range(1, n + 1))
    if "position_in_stack" in params.columns:
        given = [int(v) for v in params.columns["position_in_stack"]]
        if sorted(given) == positions:
            positions = given
        else:
            warnings.append(
                f"{par_path}: its particle numbers do not run 1..{n} over this stack; "
                "particles are taken in row order"
            )

    subsets = [int(v) for v in params.get("assigned_subset")]
    if kind == "frealign" or "assigned_subset" not in params.columns or not any(subsets):
        subsets = [frealign_half_set(i, n) for i in range(n)]

    def column(name: str) -> list[float]:
        return [float(v) for v in params.get(name)]

    psi, theta, phi = column("psi"), column("theta"), column("phi")
    xshift, yshift = column("x_shift"), column("y_shift")
    df1, df2, ast = column("defocus_1"), column("defocus_2"), column("defocus_angle")
    phase = column("phase_shift")
    x_pos, y_pos = column("original_x_position"), column("original_y_position")
    if kind == "relion":
        occupancy, logp, sigma, score = [100.0] * n, [0.0] * n, [10.0] * n, [0.0] * n
        active = [1] * n
    else:
        occupancy, sigma, score = column("occupancy"), column("sigma"), column("score")
        logp = column("logp")
        active = [int(v) for v in params.get("image_is_active")]
    beam_x, beam_y = column("beam_tilt_x"), column("beam_tilt_y")
    shift_x, shift_y = column("image_shift_x"), column("image_shift_y")

    particles = []
    results = []
    for i in range(n):
        particles.append(
            {
                "ORIGINAL_PARTICLE_POSITION_ASSET_ID": positions[i],
                "PARENT_IMAGE_ASSET_ID": -1,
                "POSITION_IN_STACK": positions[i],
                "X_POSITION": x_pos[i],
                "Y_POSITION": y_pos[i],
                "PIXEL_SIZE": pixels[i],
                "DEFOCUS_1": df1[i],
                "DEFOCUS_2": df2[i],
                "DEFOCUS_ANGLE": ast[i],
                "PHASE_SHIFT": phase[i],
                "SPHERICAL_ABERRATION": cs[i],
                "MICROSCOPE_VOLTAGE": voltages[i],
                "AMPLITUDE_CONTRAST": ac[i],
                "ASSIGNED_SUBSET": subsets[i],
            }
        )
        results.append(
            {
                "POSITION_IN_STACK": positions[i],
                "PSI": psi[i],
                "THETA": theta[i],
                "PHI": phi[i],
                "XSHIFT": xshift[i],
                "YSHIFT": yshift[i],
                "DEFOCUS1": df1[i],
                "DEFOCUS2": df2[i],
                "DEFOCUS_ANGLE": ast[i],
                "PHASE_SHIFT": phase[i],
                "OCCUPANCY": occupancy[i],
                "LOGP": logp[i],
                "SIGMA": sigma[i],
                "SCORE": score[i],
                "IMAGE_IS_ACTIVE": active[i],
                "PIXEL_SIZE": pixels[i],
                "MICROSCOPE_VOLTAGE": voltages[i],
                "MICROSCOPE_CS": cs[i],
                "AMPLITUDE_CONTRAST": ac[i],
                "BEAM_TILT_X": beam_x[i],
                "BEAM_TILT_Y": beam_y[i],
                "IMAGE_SHIFT_X": shift_x[i],
                "IMAGE_SHIFT_Y": shift_y[i],
                "ASSIGNED_SUBSET": subsets[i],
            }
        )

    label = {"frealign": "Frealign", "cistem": "cisTEM", "relion": "Relion"}[kind]
    package = {
        "NAME": name if name else f"Refinement Package #{package_number} ({label} Import)",
        "STACK_FILENAME": stack,
        "STACK_BOX_SIZE": header.nx,
        "OUTPUT_PIXEL_SIZE": pixel,
        "SYMMETRY": symmetry_name,
        "MOLECULAR_WEIGHT": float(molecular_weight_kda),
        "PARTICLE_SIZE": float(largest_dimension_angstroms),
        "NUMBER_OF_CLASSES": 1,
        "NUMBER_OF_REFINEMENTS": 0,
        "STACK_HAS_WHITE_PROTEIN": int(bool(protein_is_white)),
    }
    refinement = {
        "NAME": "Imported Parameters",
        "RESOLUTION_STATISTICS_ARE_GENERATED": 0,
        "STARTING_REFINEMENT_ID": -1,
        "NUMBER_OF_PARTICLES": n,
        "NUMBER_OF_CLASSES": 1,
        "RESOLUTION_STATISTICS_BOX_SIZE": header.nx,
        "RESOLUTION_STATISTICS_PIXEL_SIZE": pixel,
        "PERCENT_USED": 100.0,
    }
    return PreparedRefinementPackage(
        package=package,
        particles=particles,
        results=results,
        refinement=refinement,
        micrograph_names=micrographs,
        coordinates_pixels=coordinates if coordinates is not None else [None] * n,
        warnings=warnings,
    )
