"""Simulate a whole data set on disk -- movies or micrographs, gain, map, ground truth.

:func:`simulate_dataset` writes, under ``output_dir``::

    movies/sim_0001.tif ...       raw movies (LZW TIFF or MRC, integer counts), or
    micrographs/sim_0001.mrc ...  motion-free float32 micrographs (format "micrograph")
    gain_reference.mrc            g = 1 / sensitivity (only with a gain reference)
    reference_map.mrc             the particle's Coulomb potential (V), the 3-D truth
    truth.json                    every parameter (see :func:`simulate_dataset`)

The physics and every sign convention are those of
:mod:`cistemd.kernels.simulate`; ``truth.json`` repeats the conventions in
words under ``"conventions"``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cistemd.errors import InvalidInputError

__all__ = ["STRUCTURES", "SimulationSpec", "simulate_dataset"]

#: Built-in procedural structures (anything else is read as a PDB/mmCIF path).
STRUCTURES = ("apoferritin", "asymmetric")
FORMATS = ("tiff", "mrc", "micrograph")


@dataclass(frozen=True, slots=True)
class SimulationSpec:
    """Every parameter of a simulated data set.

    Attributes
    ----------
    structure
        ``"apoferritin"`` (procedural octahedral 24-mer), ``"asymmetric"``
        (procedural asymmetric chain) or a path to a PDB/mmCIF model.
    n_micrographs
        Number of movies (or micrographs) to write.
    size_px
        Edge of the square micrographs, pixels.
    pixel_size_angstroms
        Å per pixel.
    voltage_kv, spherical_aberration_mm, amplitude_contrast
        Microscope.
    defocus_min_angstroms, defocus_max_angstroms
        Range of the mean defocus ``(df1 + df2) / 2`` (uniform per micrograph).
    astigmatism_angstroms
        ``df1 − df2`` of every micrograph; the azimuth is uniform in (−90°, 90°].
    phase_shift_degrees
        Additional (phase-plate) phase shift.
    particles_per_micrograph
        Particles requested per micrograph (fewer if they do not fit).
    min_separation_angstroms
        Minimum centre-to-centre distance; ``None`` = the particle's diameter.
    edge_margin_angstroms
        Minimum distance of a centre from the border; ``None`` = radius + the
        largest drift + 10 Å.
    output_format
        ``"tiff"`` (LZW movies), ``"mrc"`` (MRC movies) or ``"micrograph"``
        (single motion-free MRC images of the whole exposure).
    n_frames
        Frames per movie.
    exposure_per_frame_e_per_a2
        Exposure per frame, e/Å². A ``"micrograph"`` gets the whole
        ``n_frames × exposure_per_frame_e_per_a2`` in one image.
    pre_exposure_e_per_a2
        Exposure before the first frame, e/Å².
    drift_angstroms
        Beam-induced drift path length over the movie, Å.
    ice_thickness_angstroms
        Amorphous-ice thickness, Å (0 = vacuum).
    envelope_b_factor_angstroms2
        CTF envelope B, Å².
    specimen_b_factor_angstroms2
        Global atomic B, Å².
    radiation_damage
        Attenuate the signal with the accumulated exposure.
    gain_reference
        Multiply movies by a detector sensitivity and write its gain reference.
    seed
        Seed of every random choice.
    """

    structure: str = "apoferritin"
    n_micrographs: int = 4
    size_px: int = 1024
    pixel_size_angstroms: float = 1.0
    voltage_kv: float = 300.0
    spherical_aberration_mm: float = 2.7
    amplitude_contrast: float = 0.07
    defocus_min_angstroms: float = 8000.0
    defocus_max_angstroms: float = 20000.0
    astigmatism_angstroms: float = 400.0
    phase_shift_degrees: float = 0.0
    particles_per_micrograph: int = 50
    min_separation_angstroms: float | None = None
    edge_margin_angstroms: float | None = None
    output_format: str = "tiff"
    n_frames: int = 16
    exposure_per_frame_e_per_a2: float = 2.5
    pre_exposure_e_per_a2: float = 0.0
    drift_angstroms: float = 10.0
    ice_thickness_angstroms: float = 300.0
    envelope_b_factor_angstroms2: float = 40.0
    specimen_b_factor_angstroms2: float = 20.0
    radiation_damage: bool = True
    gain_reference: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InvalidInputError(f"{name} must be a positive number, got {value!r}")

        def non_negative(name: str) -> None:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise InvalidInputError(f"{name} must be zero or positive, got {value!r}")

        for name in (
            "n_micrographs",
            "size_px",
            "pixel_size_angstroms",
            "voltage_kv",
            "n_frames",
            "exposure_per_frame_e_per_a2",
        ):
            positive(name)
        for name in (
            "spherical_aberration_mm",
            "astigmatism_angstroms",
            "particles_per_micrograph",
            "pre_exposure_e_per_a2",
            "drift_angstroms",
            "ice_thickness_angstroms",
            "envelope_b_factor_angstroms2",
            "specimen_b_factor_angstroms2",
        ):
            non_negative(name)
        for name in ("n_micrographs", "size_px", "n_frames", "particles_per_micrograph", "seed"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if self.size_px < 64:
            raise InvalidInputError(f"size_px must be at least 64, got {self.size_px}")
        if self.size_px > 16384:
            raise InvalidInputError(f"size_px must be at most 16384, got {self.size_px}")
        if not 0.0 <= self.amplitude_contrast < 1.0:
            raise InvalidInputError(
                f"amplitude_contrast must be in [0, 1), got {self.amplitude_contrast}"
            )
        if not math.isfinite(self.phase_shift_degrees):
            raise InvalidInputError("phase_shift_degrees must be finite")
        if self.defocus_min_angstroms > self.defocus_max_angstroms:
            raise InvalidInputError(
                f"defocus_min_angstroms ({self.defocus_min_angstroms}) is larger than "
                f"defocus_max_angstroms ({self.defocus_max_angstroms})"
            )
        if self.defocus_min_angstroms - self.astigmatism_angstroms / 2 <= 0:
            raise InvalidInputError(
                "defocus_min_angstroms minus half the astigmatism must stay positive (underfocus)"
            )
        if self.output_format not in FORMATS:
            raise InvalidInputError(
                f"output_format must be one of {', '.join(FORMATS)}, got {self.output_format!r}"
            )
        if self.gain_reference and self.output_format == "micrograph":
            raise InvalidInputError(
                "a gain reference only applies to movies (format tiff or mrc), "
                "micrographs are written gain-corrected"
            )
        for name in ("min_separation_angstroms", "edge_margin_angstroms"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise InvalidInputError(f"{name} must be zero or positive, got {value!r}")
        if not self.structure:
            raise InvalidInputError("structure must be 'apoferritin', 'asymmetric' or a model path")

    @property
    def is_movie(self) -> bool:
        """True unless the format is ``"micrograph"``."""
        return self.output_format != "micrograph"


def _load_structure(spec: SimulationSpec) -> tuple[Any, dict[str, Any]]:
    from cistemd.kernels import simulate

    if spec.structure == "apoferritin":
        model = simulate.apoferritin_like_model(seed=0)
        return model, {"kind": "procedural", "name": "apoferritin", "symmetry": "O"}
    if spec.structure == "asymmetric":
        model = simulate.asymmetric_protein_model(seed=0)
        return model, {"kind": "procedural", "name": "asymmetric", "symmetry": "C1"}
    from cistemd.io import atomic_model

    model, centre = atomic_model.read(spec.structure)
    return model, {
        "kind": "atomic_model",
        "name": model.name,
        "path": os.path.abspath(spec.structure),
        "centre_subtracted_angstroms": centre.tolist(),
        "n_chains": len(model.chain_names),
        "symmetry": "unknown",
    }


def _map_box(radius_angstroms: float, pixel_size_angstroms: float) -> int:
    box = math.ceil(2.0 * (radius_angstroms + 15.0) / pixel_size_angstroms)
    return box + (box % 2)


def _movie_dtype(frames: np.ndarray) -> type[np.unsignedinteger[Any]]:
    return np.uint8 if int(frames.max(initial=0)) <= 255 else np.uint16


def simulate_dataset(output_dir: str | os.PathLike[str], spec: SimulationSpec) -> dict[str, Any]:
    """Simulate ``spec.n_micrographs`` movies or micrographs and write them with their truth.

    Parameters
    ----------
    output_dir
        Directory to write into (created if missing; existing files with the
        same names are replaced).
    spec
        Every parameter.

    Returns
    -------
    dict
        The truth, also written as ``output_dir/truth.json``: ``software`` and
        ``version``, ``spec``, ``structure``, ``reference_map``, ``gain_reference``,
        ``conventions``, and ``micrographs`` -- one entry per file with
        ``filename`` (relative to ``output_dir``), ``ctf`` (``defocus_1_angstroms``,
        ``defocus_2_angstroms``, ``astigmatism_angle_degrees``,
        ``additional_phase_shift_radians``/``_degrees`` ...), ``frame_shifts_angstroms``
        (absolute) and ``frame_shifts_relative_to_middle_angstroms``, exposures,
        and ``particles`` (``x_angstroms``, ``y_angstroms``, ``phi``, ``theta``,
        ``psi`` ...).

    Raises
    ------
    InvalidInputError
        If the structure file cannot be read or the output directory cannot
        be created.
    """
    from cistemd import __version__
    from cistemd.io import mrc, tiff
    from cistemd.kernels import simulate
    from cistemd.kernels.ctf import CTFParams
    from cistemd.kernels.rotation import random_orientations

    root = Path(output_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidInputError(f"cannot create the output directory: {error}", path=root) from None

    model, structure_info = _load_structure(spec)
    structure_info.update(
        n_atoms=model.n_atoms,
        radius_angstroms=model.radius_angstroms,
        diameter_angstroms=2.0 * model.radius_angstroms,
    )
    psize = spec.pixel_size_angstroms
    shape = (spec.size_px, spec.size_px)
    n_frames = spec.n_frames if spec.is_movie else 1
    drift = spec.drift_angstroms if spec.is_movie and n_frames > 1 else 0.0
    separation = (
        spec.min_separation_angstroms
        if spec.min_separation_angstroms is not None
        else 2.0 * model.radius_angstroms
    )
    margin = (
        spec.edge_margin_angstroms
        if spec.edge_margin_angstroms is not None
        else model.radius_angstroms + drift + 10.0
    )

    seeds = np.random.SeedSequence(spec.seed).spawn(spec.n_micrographs + 1)
    detector_rng = np.random.default_rng(seeds[-1])
    sensitivity = None
    gain_info: dict[str, Any] | None = None
    if spec.gain_reference:
        sensitivity, gain, defects = simulate.detector_sensitivity(
            shape, detector_rng, n_dead_columns=1, n_hot_columns=1
        )
        mrc.write(root / "gain_reference.mrc", gain, voxel_size_angstroms=psize, kind="image")
        gain_info = {
            "filename": "gain_reference.mrc",
            "convention": "corrected = raw * gain; gain = 1 / sensitivity, 0 on dead columns",
            **defects,
        }

    box = _map_box(model.radius_angstroms, psize)
    reference = simulate.coulomb_potential_map(
        model,
        box=box,
        pixel_size_angstroms=psize,
        b_factor_angstroms2=spec.specimen_b_factor_angstroms2,
        solvent_exclusion=spec.ice_thickness_angstroms > 0,
    )
    mrc.write(root / "reference_map.mrc", reference, voxel_size_angstroms=psize, kind="volume")

    subdir = "movies" if spec.is_movie else "micrographs"
    (root / subdir).mkdir(exist_ok=True)
    micrographs: list[dict[str, Any]] = []
    for index in range(spec.n_micrographs):
        rng = np.random.default_rng(seeds[index])
        mean_defocus = rng.uniform(spec.defocus_min_angstroms, spec.defocus_max_angstroms)
        ctf = CTFParams(
            defocus_1_angstroms=mean_defocus + spec.astigmatism_angstroms / 2,
            defocus_2_angstroms=mean_defocus - spec.astigmatism_angstroms / 2,
            astigmatism_angle_degrees=float(rng.uniform(-90.0, 90.0)),
            voltage_kv=spec.voltage_kv,
            spherical_aberration_mm=spec.spherical_aberration_mm,
            amplitude_contrast=spec.amplitude_contrast,
            additional_phase_shift_radians=math.radians(spec.phase_shift_degrees),
        ).enforce_convention()
        positions = simulate.random_particle_positions(
            spec.particles_per_micrograph,
            shape,
            psize,
            min_separation_angstroms=separation,
            edge_margin_angstroms=margin,
            rng=rng,
        )
        angles = random_orientations(positions.shape[0], rng)
        shifts = (
            simulate.beam_induced_drift(n_frames, drift_angstroms=drift, rng=rng)
            if drift > 0
            else np.zeros((n_frames, 2))
        )
        exposure = (
            spec.exposure_per_frame_e_per_a2
            if spec.is_movie
            else spec.exposure_per_frame_e_per_a2 * spec.n_frames
        )
        frames, truth = simulate.simulate_movie(
            model,
            shape=shape,
            pixel_size_angstroms=psize,
            ctf=ctf,
            positions_angstroms=positions,
            euler_degrees=angles,
            n_frames=n_frames,
            exposure_per_frame_e_per_a2=exposure,
            rng=rng,
            frame_shifts_angstroms=shifts,
            pre_exposure_e_per_a2=spec.pre_exposure_e_per_a2,
            ice_thickness_angstroms=spec.ice_thickness_angstroms,
            envelope_b_factor_angstroms2=spec.envelope_b_factor_angstroms2,
            specimen_b_factor_angstroms2=spec.specimen_b_factor_angstroms2,
            detector_sensitivity_map=sensitivity,
            radiation_damage=spec.radiation_damage,
        )
        name = f"sim_{index + 1:04d}"
        if spec.output_format == "tiff":
            filename = f"{subdir}/{name}.tif"
            frames = frames.astype(_movie_dtype(frames))
            tiff.write(root / filename, frames, compression="lzw", pixel_size_angstroms=psize)
        elif spec.output_format == "mrc":
            filename = f"{subdir}/{name}.mrc"
            mrc.write(root / filename, frames, voxel_size_angstroms=psize, kind="stack")
        else:
            filename = f"{subdir}/{name}.mrc"
            image = frames[0].astype(np.float32)
            mrc.write(root / filename, image, voxel_size_angstroms=psize, kind="image")
        truth["kind"] = "movie" if spec.is_movie else "micrograph"
        truth["filename"] = filename
        truth["index"] = index + 1
        truth["particles_requested"] = spec.particles_per_micrograph
        micrographs.append(truth)

    dataset: dict[str, Any] = {
        "software": "cistemd",
        "version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "spec": asdict(spec),
        "structure": structure_info,
        "pixel_size_angstroms": psize,
        "dose": {
            "exposure_per_frame_e_per_a2": spec.exposure_per_frame_e_per_a2,
            "n_frames": n_frames,
            "pre_exposure_e_per_a2": spec.pre_exposure_e_per_a2,
            "total_exposure_e_per_a2": spec.pre_exposure_e_per_a2
            + spec.exposure_per_frame_e_per_a2 * spec.n_frames,
        },
        "particle_separation_angstroms": separation,
        "edge_margin_angstroms": margin,
        "reference_map": {
            "filename": "reference_map.mrc",
            "box_px": box,
            "pixel_size_angstroms": psize,
            "units": "volts (Coulomb potential"
            + (", relative to the surrounding ice)" if spec.ice_thickness_angstroms > 0 else ")"),
            "origin": "model origin (particle centre) at voxel box // 2 along each axis",
            "b_factor_angstroms2": spec.specimen_b_factor_angstroms2,
        },
        "gain_reference": gain_info,
        "conventions": dict(simulate.CONVENTIONS),
        "n_particles": int(sum(m["n_particles"] for m in micrographs)),
        "micrographs": micrographs,
    }
    text = json.dumps(dataset, indent=1)
    truth_path = root / "truth.json"
    temporary = truth_path.with_name(".truth.json.tmp")
    temporary.write_text(text + "\n", encoding="utf-8")
    os.replace(temporary, truth_path)
    return dataset
