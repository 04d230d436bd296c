"""Project directory layout and cisTEM's file-naming conventions.

A cistemd project is a directory laid out as cisTEM lays out its projects
(``src/core/project.cpp``; reference §3.2)::

    <project>/<name>.db                  the SQLite database (WAL mode)
    <project>/<name>.db.lock             single-writer lock file (see :mod:`.lock`)
    <project>/Assets/Movies/             movies are referenced in place, not copied
    <project>/Assets/Images/             aligned sums  <movie>_<movie id>_<n>.mrc
    <project>/Assets/Images/Spectra/     amplitude spectra of the sums (same names)
    <project>/Assets/Images/Scaled/      small sums (same names)
    <project>/Assets/CTF/                <image>_CTF_<n>.mrc (+ .txt, _avrot.txt)
    <project>/Assets/ParticlePosition/   <image>_COOS_<n>.mrc
    <project>/Assets/ParticleStacks/     particle_stack_<package id>.mrc
    <project>/Assets/ClassAverages/      class_averages_<classification id, 4 digits>.mrc
    <project>/Assets/Volumes/            volume_<refinement id>_<class>.mrc, startup_volume_..., ...
    <project>/Assets/Volumes/OrthViews/  orthogonal views, same file names as the volumes
    <project>/Assets/Parameters/         input_par_<refinement id>_<class>.cistem, ...
    <project>/Assets/TemplateMatching/
    <project>/Assets/PhaseDifferenceImages/
    <project>/Scratch/                   work in progress; renamed into Assets/ when recorded

``<n>`` is always the number of *previous* runs of that kind on that asset
(0 for the first run), as in cisTEM.

Everything here is pure path arithmetic except :func:`make_directories`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ASSET_SUBDIRECTORIES",
    "ProjectLayout",
    "adopt_file",
    "make_directories",
]

#: Sub-directories created in every project, relative to the project directory.
ASSET_SUBDIRECTORIES: tuple[str, ...] = (
    "Assets",
    "Assets/Movies",
    "Assets/Images",
    "Assets/Images/Spectra",
    "Assets/Images/Scaled",
    "Assets/CTF",
    "Assets/ParticlePosition",
    "Assets/ParticleStacks",
    "Assets/ClassAverages",
    "Assets/Volumes",
    "Assets/Volumes/OrthViews",
    "Assets/Parameters",
    "Assets/TemplateMatching",
    "Assets/PhaseDifferenceImages",
    "Scratch",
)


def _stem(filename: str | Path) -> str:
    """Return a file's name without its directory and last extension.

    cisTEM names derived files after ``wxFileName::GetName()``, which drops
    exactly one extension (``a.b.mrc`` -> ``a.b``).
    """
    name = Path(filename).name
    if not name:
        raise ValueError(f"cannot derive a file name from {str(filename)!r}")
    return Path(name).stem if Path(name).suffix else name


def _check_non_negative(**values: int) -> None:
    for key, value in values.items():
        if int(value) != value or value < 0:
            raise ValueError(f"{key} must be a non-negative integer, got {value!r}")


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")


@dataclass(frozen=True, slots=True)
class ProjectLayout:
    """Paths inside one project directory.

    Parameters
    ----------
    root
        The project directory (absolute paths are recommended; nothing is
        resolved here).
    name
        The project name; the database is ``root / f"{name}.db"``.
    """

    root: Path
    name: str

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name in {".", ".."}:
            raise ValueError(f"invalid project name {self.name!r}")
        object.__setattr__(self, "root", Path(self.root))

    # -- fixed locations ---------------------------------------------------
    @property
    def db_path(self) -> Path:
        """The database, ``<root>/<name>.db``."""
        return self.root / f"{self.name}.db"

    @property
    def lock_path(self) -> Path:
        """The single-writer lock file, ``<root>/<name>.db.lock``."""
        return self.root / f"{self.name}.db.lock"

    @property
    def assets_dir(self) -> Path:
        """``Assets/``."""
        return self.root / "Assets"

    @property
    def movies_dir(self) -> Path:
        """``Assets/Movies/`` (movies stay where they are; this stays empty)."""
        return self.root / "Assets" / "Movies"

    @property
    def images_dir(self) -> Path:
        """``Assets/Images/``: aligned movie sums."""
        return self.root / "Assets" / "Images"

    @property
    def spectra_dir(self) -> Path:
        """``Assets/Images/Spectra/``: amplitude spectra of aligned sums."""
        return self.images_dir / "Spectra"

    @property
    def scaled_dir(self) -> Path:
        """``Assets/Images/Scaled/``: small (scaled-down) sums."""
        return self.images_dir / "Scaled"

    @property
    def ctf_dir(self) -> Path:
        """``Assets/CTF/``: CTFFIND diagnostics."""
        return self.root / "Assets" / "CTF"

    @property
    def particle_position_dir(self) -> Path:
        """``Assets/ParticlePosition/``: picking output."""
        return self.root / "Assets" / "ParticlePosition"

    @property
    def particle_stacks_dir(self) -> Path:
        """``Assets/ParticleStacks/``."""
        return self.root / "Assets" / "ParticleStacks"

    @property
    def class_averages_dir(self) -> Path:
        """``Assets/ClassAverages/``."""
        return self.root / "Assets" / "ClassAverages"

    @property
    def volumes_dir(self) -> Path:
        """``Assets/Volumes/``."""
        return self.root / "Assets" / "Volumes"

    @property
    def orth_views_dir(self) -> Path:
        """``Assets/Volumes/OrthViews/``."""
        return self.volumes_dir / "OrthViews"

    @property
    def parameters_dir(self) -> Path:
        """``Assets/Parameters/``: parameter and statistics files given to jobs."""
        return self.root / "Assets" / "Parameters"

    @property
    def template_matching_dir(self) -> Path:
        """``Assets/TemplateMatching/``."""
        return self.root / "Assets" / "TemplateMatching"

    @property
    def phase_difference_dir(self) -> Path:
        """``Assets/PhaseDifferenceImages/``."""
        return self.root / "Assets" / "PhaseDifferenceImages"

    @property
    def scratch_dir(self) -> Path:
        """``Scratch/``: files being written; moved into ``Assets/`` when recorded."""
        return self.root / "Scratch"

    def directories(self) -> tuple[Path, ...]:
        """Every directory of the layout, parents before children."""
        return tuple(self.root / sub for sub in ASSET_SUBDIRECTORIES)

    # -- movie alignment (unblur) ------------------------------------------
    def aligned_sum_path(self, movie_filename: str | Path, movie_asset_id: int, n: int) -> Path:
        """Aligned sum of a movie: ``Assets/Images/<movie>_<movie id>_<n>.mrc``.

        Parameters
        ----------
        movie_filename
            The movie's file name or path; its directory and last extension
            are dropped.
        movie_asset_id
            ``MOVIE_ASSETS.MOVIE_ASSET_ID``.
        n
            Number of previous alignments of this movie (0 for the first).
        """
        _check_non_negative(movie_asset_id=movie_asset_id, n=n)
        return self.images_dir / f"{_stem(movie_filename)}_{movie_asset_id}_{n}.mrc"

    def amplitude_spectrum_path(
        self, movie_filename: str | Path, movie_asset_id: int, n: int
    ) -> Path:
        """Amplitude spectrum of an aligned sum: ``Assets/Images/Spectra/<same name>``."""
        return self.spectra_dir / self.aligned_sum_path(movie_filename, movie_asset_id, n).name

    def scaled_sum_path(self, movie_filename: str | Path, movie_asset_id: int, n: int) -> Path:
        """Small sum for display: ``Assets/Images/Scaled/<same name>``."""
        return self.scaled_dir / self.aligned_sum_path(movie_filename, movie_asset_id, n).name

    # -- CTF (ctffind) -----------------------------------------------------
    def ctf_diagnostic_path(self, image_filename: str | Path, n: int) -> Path:
        """CTFFIND diagnostic image: ``Assets/CTF/<image>_CTF_<n>.mrc``.

        ``n`` is the number of previous CTF estimations of this image.
        """
        _check_non_negative(n=n)
        return self.ctf_dir / f"{_stem(image_filename)}_CTF_{n}.mrc"

    def ctf_output_text_path(self, image_filename: str | Path, n: int) -> Path:
        """CTFFIND results text file next to the diagnostic: ``..._CTF_<n>.txt``."""
        return self.ctf_diagnostic_path(image_filename, n).with_suffix(".txt")

    def ctf_avrot_path(self, image_filename: str | Path, n: int) -> Path:
        """CTFFIND rotational-average text file: ``..._CTF_<n>_avrot.txt``."""
        diagnostic = self.ctf_diagnostic_path(image_filename, n)
        return diagnostic.with_name(diagnostic.stem + "_avrot.txt")

    # -- picking -----------------------------------------------------------
    def picked_particles_stack_path(self, image_filename: str | Path, n: int) -> Path:
        """Stack of picked boxes: ``Assets/ParticlePosition/<image>_COOS_<n>.mrc``."""
        _check_non_negative(n=n)
        return self.particle_position_dir / f"{_stem(image_filename)}_COOS_{n}.mrc"

    # -- refinement packages, classification, volumes ----------------------
    def particle_stack_path(self, refinement_package_id: int) -> Path:
        """Particle stack of a package: ``Assets/ParticleStacks/particle_stack_<id>.mrc``."""
        _check_positive(refinement_package_id=refinement_package_id)
        return self.particle_stacks_dir / f"particle_stack_{refinement_package_id}.mrc"

    def class_averages_path(self, classification_id: int) -> Path:
        """Class averages: ``Assets/ClassAverages/class_averages_%04d.mrc``.

        ``class_averages_0004.mrc`` belongs to classification #4.
        """
        _check_positive(classification_id=classification_id)
        return self.class_averages_dir / f"class_averages_{classification_id:04d}.mrc"

    def volume_path(self, refinement_id: int, class_number: int) -> Path:
        """Reconstruction of a refinement: ``Assets/Volumes/volume_<refinement>_<class>.mrc``."""
        _check_positive(refinement_id=refinement_id, class_number=class_number)
        return self.volumes_dir / f"volume_{refinement_id}_{class_number}.mrc"

    def startup_volume_path(self, startup_id: int, class_number: int) -> Path:
        """Ab-initio volume: ``Assets/Volumes/startup_volume_<startup>_<class>.mrc``."""
        _check_positive(startup_id=startup_id, class_number=class_number)
        return self.volumes_dir / f"startup_volume_{startup_id}_{class_number}.mrc"

    def generate3d_volume_path(
        self, job_number: int, refinement_id: int, class_number: int, half_map: int | None = None
    ) -> Path:
        """Generate-3D output: ``generate3d_volume_<job>_<refinement>_<class>[_map1|_map2].mrc``.

        Parameters
        ----------
        job_number
            1 + the number of previous Generate-3D jobs in the project.
        refinement_id, class_number
            The refinement and class reconstructed.
        half_map
            ``None`` for the filtered full map, 1 or 2 for a half map.
        """
        _check_positive(
            job_number=job_number, refinement_id=refinement_id, class_number=class_number
        )
        if half_map not in (None, 1, 2):
            raise ValueError(f"half_map must be None, 1 or 2, got {half_map!r}")
        suffix = "" if half_map is None else f"_map{half_map}"
        return (
            self.volumes_dir
            / f"generate3d_volume_{job_number}_{refinement_id}_{class_number}{suffix}.mrc"
        )

    def orth_view_path(self, volume_filename: str | Path) -> Path:
        """Orthogonal views of a volume: ``Assets/Volumes/OrthViews/<volume file name>``."""
        name = Path(volume_filename).name
        if not name:
            raise ValueError(f"cannot derive a file name from {str(volume_filename)!r}")
        return self.orth_views_dir / name

    # -- parameter files ---------------------------------------------------
    def parameters_path(
        self,
        refinement_id: int,
        class_number: int,
        *,
        prefix: str = "input_par",
        extension: str = ".cistem",
    ) -> Path:
        """Parameters for a refinement job: ``Parameters/<prefix>_<ref>_<class><ext>``.

        cisTEM's prefixes are ``input_par`` (manual refine), ``auto_input_par``
        (auto refine), ``startup_input_par`` (ab initio); ``.cistem`` is the
        binary star file the GUI always writes, ``.star``/``.par`` the text forms.
        """
        _check_positive(refinement_id=refinement_id, class_number=class_number)
        _check_prefix(prefix)
        if extension not in (".cistem", ".star", ".par"):
            raise ValueError(f"extension must be .cistem, .star or .par, got {extension!r}")
        return self.parameters_dir / f"{prefix}_{refinement_id}_{class_number}{extension}"

    def statistics_path(
        self, refinement_id: int, class_number: int, *, prefix: str = "input_stats"
    ) -> Path:
        """Resolution statistics for a job: ``Assets/Parameters/<prefix>_<ref>_<class>.txt``.

        Prefixes: ``input_stats``, ``auto_input_stats``, ``startup_input_stats``.
        """
        _check_positive(refinement_id=refinement_id, class_number=class_number)
        _check_prefix(prefix)
        return self.parameters_dir / f"{prefix}_{refinement_id}_{class_number}.txt"

    def classification_parameters_path(
        self,
        classification_id: int,
        *,
        prefix: str = "classification_input_star",
        extension: str = ".cistem",
    ) -> Path:
        """Parameters for a 2D classification: ``Assets/Parameters/<prefix>_<id><ext>``."""
        _check_positive(classification_id=classification_id)
        _check_prefix(prefix)
        if extension not in (".cistem", ".star", ".par"):
            raise ValueError(f"extension must be .cistem, .star or .par, got {extension!r}")
        return self.parameters_dir / f"{prefix}_{classification_id}{extension}"

    def scratch_path(self, *parts: str) -> Path:
        """Return a path under ``Scratch/`` (``parts`` must stay inside it)."""
        path = self.scratch_dir.joinpath(*parts)
        if any(part in ("..", "") for part in Path(*parts).parts) or Path(*parts).is_absolute():
            raise ValueError(f"scratch path {parts!r} must be relative and stay inside Scratch/")
        return path


def _check_prefix(prefix: str) -> None:
    if not prefix or "/" in prefix or prefix.startswith("."):
        raise ValueError(f"invalid file-name prefix {prefix!r}")


def make_directories(layout: ProjectLayout) -> None:
    """Create every directory of ``layout`` that does not exist yet."""
    for directory in layout.directories():
        directory.mkdir(parents=True, exist_ok=True)


def adopt_file(
    source: str | os.PathLike[str] | None, target: str | os.PathLike[str]
) -> Path | None:
    """Move a task's output from ``Scratch/`` to its asset name; return the new path.

    The target's folder is made if needed and the file is renamed atomically
    (same filesystem), so a half-written file is never an asset. An empty
    ``source`` or one that does not exist (an optional output the task did
    not write) is left alone and gives ``None``.
    """
    if not source or not os.path.exists(source):
        return None
    destination = Path(target)
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, destination)
    return destination
