"""Refinement packages: the rows cisTEM's "New Refinement Package" wizard writes.

Facts from cisTEM's wizard (``MyNewRefinementPackageWizard.cpp``; reference
§3.3), implemented here on a :class:`~cistemd.project.Project`:

* New package from particle positions: one stack image per position, ordered
  by parent image then position id; each particle gets its parent image's
  *active* CTF estimate (defocus 1/2, angle, phase shift, amplitude contrast)
  and the image's voltage, Cs and pixel size. The package's first refinement
  is "Random Parameters": per class, random φ, ψ uniform in (−180°, 180°) and
  θ = acos(2u − 1) (u uniform in [0, 1)), zero shifts, sigma 1, score 0,
  occupancy 100 with one class else ``|U(−1, 1)|·200/K``; half-sets
  alternate when there are fewer than 500 particles, follow ten blocks of
  the stack with fewer than 20 micrographs, else follow the parity of the
  parent image id. Name ``Refinement Package #<id>``.
* Default box: the smallest even size with prime factors 2 and 3 at least
  ``2.2 × largest dimension / pixel size``.
* New package from an existing one, without re-extracting: keep all its
  particles (the stack is shared) or only those whose highest-occupancy class
  is among chosen classes (a new stack is written with those images); each new
  class takes its parameters from one old class, or from the best-occupancy
  (or a random) one of several merged classes; occupancies 100 or randomised.
  Its refinement is named "Starting Parameters".
* From a selection of 2D classes: :func:`create_from_class_selection` is the
  hook; it raises until 2D classification exists.

Symmetry must be a point group C<n>, D<n>, T, O or I.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cistemd.errors import ProjectError
from cistemd.project.schema import create_views_for

__all__ = [
    "PackageParticle",
    "assigned_subsets",
    "copy_stack_images",
    "create_from_class_selection",
    "create_from_existing_package",
    "default_box_size",
    "next_package_id",
    "package_particles_from_positions",
    "positions_kept_by_classes",
    "random_initial_results",
    "record_new_package",
    "validate_symmetry",
]

_SYMMETRY = re.compile(r"^(C[1-9]\d*|D[1-9]\d*|T|O|I[12]?)$")


def _error(message: str) -> ProjectError:
    return ProjectError(message, code="invalid_input")


def validate_symmetry(symmetry: str) -> str:
    """Return ``symmetry`` upper-cased if it is a point group (C<n>, D<n>, T, O, I), else raise."""
    name = str(symmetry).strip().upper()
    if not _SYMMETRY.match(name):
        raise _error(
            f"symmetry {symmetry!r} is not a point group; use C<n>, D<n> (n >= 1), T, O or I"
        )
    return name


def default_box_size(largest_dimension_angstroms: float, pixel_size_angstroms: float) -> int:
    """Return cisTEM's default box: even, factors 2 and 3 only, >= 2.2 × largest dimension (px)."""
    if not (largest_dimension_angstroms > 0 and pixel_size_angstroms > 0):
        raise _error("largest dimension and pixel size must be positive")
    n = max(int(2.2 * largest_dimension_angstroms / pixel_size_angstroms), 2)
    while True:
        if n % 2 == 0:
            m = n
            for prime in (2, 3):
                while m % prime == 0:
                    m //= prime
            if m == 1:
                return n
        n += 1


@dataclass(frozen=True, slots=True)
class PackageParticle:
    """One particle of a new package, with its image's CTF (cisTEM's particle info)."""

    position_asset_id: int
    parent_image_asset_id: int
    x_angstroms: float
    y_angstroms: float
    pixel_size_angstroms: float
    voltage_kv: float
    spherical_aberration_mm: float
    amplitude_contrast: float
    defocus_1_angstroms: float
    defocus_2_angstroms: float
    defocus_angle_degrees: float
    phase_shift_degrees: float

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the fields."""
        return {name: getattr(self, name) for name in self.__slots__}


def package_particles_from_positions(
    project: Any, position_ids: Iterable[int] | None = None
) -> list[PackageParticle]:
    """Return the particles of a new package, in stack order, with per-particle CTF.

    Parameters
    ----------
    project
        An open :class:`~cistemd.project.Project`.
    position_ids
        ``PARTICLE_POSITION_ASSET_ID`` values; ``None`` = every position.

    Raises
    ------
    ProjectError
        No positions, unknown ids, or an image without an active CTF estimate.
    """
    rows = project.query(
        "SELECT p.PARTICLE_POSITION_ASSET_ID, p.PARENT_IMAGE_ASSET_ID, p.X_POSITION, "
        "p.Y_POSITION, i.PIXEL_SIZE, i.VOLTAGE, i.SPHERICAL_ABERRATION, i.CTF_ESTIMATION_ID, "
        "i.NAME, c.DEFOCUS1, c.DEFOCUS2, c.DEFOCUS_ANGLE, c.ADDITIONAL_PHASE_SHIFT, "
        "c.AMPLITUDE_CONTRAST FROM PARTICLE_POSITION_ASSETS p "
        "JOIN IMAGE_ASSETS i ON i.IMAGE_ASSET_ID = p.PARENT_IMAGE_ASSET_ID "
        "LEFT JOIN ESTIMATED_CTF_PARAMETERS c ON c.CTF_ESTIMATION_ID = i.CTF_ESTIMATION_ID "
        "ORDER BY p.PARENT_IMAGE_ASSET_ID, p.PARTICLE_POSITION_ASSET_ID"
    )
    if position_ids is not None:
        wanted = {int(i) for i in position_ids}
        rows = [r for r in rows if int(r["particle_position_asset_id"]) in wanted]
        missing = wanted - {int(r["particle_position_asset_id"]) for r in rows}
        if missing:
            raise _error(
                f"no particle position(s) with id {sorted(missing)[:5]} "
                "(see `cistem picks list`)"
            )
    if not rows:
        raise _error("there are no particle positions to build a refinement package from; "
                     "run find_particles or import positions first")
    without_ctf = sorted({str(r["name"]) for r in rows if r["defocus1"] is None})
    if without_ctf:
        raise _error(
            f"{len(without_ctf)} image(s) have no CTF estimate, e.g. {without_ctf[0]!r}; "
            "estimate the CTF first (every particle takes its image's CTF)"
        )
    return [
        PackageParticle(
            position_asset_id=int(r["particle_position_asset_id"]),
            parent_image_asset_id=int(r["parent_image_asset_id"]),
            x_angstroms=float(r["x_position"]),
            y_angstroms=float(r["y_position"]),
            pixel_size_angstroms=float(r["pixel_size"]),
            voltage_kv=float(r["voltage"]),
            spherical_aberration_mm=float(r["spherical_aberration"]),
            amplitude_contrast=float(r["amplitude_contrast"] if r["amplitude_contrast"]
                                     is not None else 0.07),
            defocus_1_angstroms=float(r["defocus1"]),
            defocus_2_angstroms=float(r["defocus2"]),
            defocus_angle_degrees=float(r["defocus_angle"]),
            phase_shift_degrees=math.degrees(float(r["additional_phase_shift"] or 0.0)),
        )
        for r in rows
    ]


def assigned_subsets(parent_image_ids: Sequence[int]) -> list[int]:
    """Half-set (1 or 2) of each particle, by cisTEM's rule (module docstring)."""
    n = len(parent_image_ids)
    if n < 500:
        return [1 if i % 2 == 0 else 2 for i in range(n)]
    if len(set(parent_image_ids)) < 20:
        block = max(1, n // 10)
        return [1 if (i // block) % 2 else 2 for i in range(n)]
    return [1 if int(image_id) % 2 else 2 for image_id in parent_image_ids]


def random_initial_results(
    particles: Sequence[Mapping[str, Any]], number_of_classes: int, rng: np.random.Generator
) -> list[list[dict[str, Any]]]:
    """``REFINEMENT_RESULT`` rows per class with cisTEM's random start (module docstring).

    ``particles`` are ``REFINEMENT_PACKAGE_CONTAINED_PARTICLES`` rows.
    """
    n = len(particles)
    per_class = []
    for _ in range(number_of_classes):
        phi = rng.uniform(-1.0, 1.0, n) * 180.0
        theta = np.degrees(np.arccos(2.0 * rng.uniform(0.0, 1.0, n) - 1.0))
        psi = rng.uniform(-1.0, 1.0, n) * 180.0
        if number_of_classes == 1:
            occupancy = np.full(n, 100.0)
        else:
            occupancy = np.abs(rng.uniform(-1.0, 1.0, n) * (200.0 / number_of_classes))
        rows = []
        for i, particle in enumerate(particles):
            rows.append({
                "POSITION_IN_STACK": int(particle["POSITION_IN_STACK"]),
                "PSI": float(psi[i]), "THETA": float(theta[i]), "PHI": float(phi[i]),
                "XSHIFT": 0.0, "YSHIFT": 0.0,
                "DEFOCUS1": particle["DEFOCUS_1"], "DEFOCUS2": particle["DEFOCUS_2"],
                "DEFOCUS_ANGLE": particle["DEFOCUS_ANGLE"],
                "PHASE_SHIFT": particle["PHASE_SHIFT"],
                "OCCUPANCY": float(occupancy[i]), "LOGP": 0.0, "SIGMA": 1.0, "SCORE": 0.0,
                "IMAGE_IS_ACTIVE": 1, "PIXEL_SIZE": particle["PIXEL_SIZE"],
                "MICROSCOPE_VOLTAGE": particle["MICROSCOPE_VOLTAGE"],
                "MICROSCOPE_CS": particle["SPHERICAL_ABERRATION"],
                "AMPLITUDE_CONTRAST": particle["AMPLITUDE_CONTRAST"],
                "BEAM_TILT_X": 0.0, "BEAM_TILT_Y": 0.0, "IMAGE_SHIFT_X": 0.0,
                "IMAGE_SHIFT_Y": 0.0, "ASSIGNED_SUBSET": particle["ASSIGNED_SUBSET"],
            })
        per_class.append(rows)
    return per_class


def _check_common(
    number_of_classes: int, molecular_weight_kda: float, largest_dimension_angstroms: float
) -> None:
    if int(number_of_classes) != number_of_classes or number_of_classes < 1:
        raise _error(f"number of classes must be a positive integer, got {number_of_classes!r}")
    if not molecular_weight_kda > 0:
        raise _error(f"molecular weight must be > 0 kDa, got {molecular_weight_kda!r}")
    if not largest_dimension_angstroms > 0:
        raise _error(f"largest dimension must be > 0 Å, got {largest_dimension_angstroms!r}")


def next_package_id(project: Any) -> int:
    """Return the ``REFINEMENT_PACKAGE_ASSET_ID`` the next package will get."""
    rows = project.query(
        "SELECT COALESCE(MAX(REFINEMENT_PACKAGE_ASSET_ID), 0) + 1 AS n FROM "
        "REFINEMENT_PACKAGE_ASSETS"
    )
    return int(rows[0]["n"])


def _write_package(
    project: Any,
    *,
    package: dict[str, Any],
    particles: list[dict[str, Any]],
    results_per_class: list[list[dict[str, Any]]],
    refinement_name: str,
    box_size: int,
    pixel_size_angstroms: float,
    package_id: int | None = None,
) -> int:
    number_of_classes = len(results_per_class)
    with project.transaction() as conn:
        if package_id is not None:
            package = {"REFINEMENT_PACKAGE_ASSET_ID": int(package_id), **package}
        new_id = project._insert(conn, "REFINEMENT_PACKAGE_ASSETS", package)
        refinement_id = project._insert(conn, "REFINEMENT_LIST", {
            "REFINEMENT_PACKAGE_ASSET_ID": new_id,
            "NAME": refinement_name,
            "RESOLUTION_STATISTICS_ARE_GENERATED": 1,
            "DATETIME_OF_RUN": int(time.time()),
            "STARTING_REFINEMENT_ID": -1,
            "NUMBER_OF_PARTICLES": len(particles),
            "NUMBER_OF_CLASSES": number_of_classes,
            "RESOLUTION_STATISTICS_BOX_SIZE": int(box_size),
            "RESOLUTION_STATISTICS_PIXEL_SIZE": float(pixel_size_angstroms),
            "PERCENT_USED": 100.0,
        })
        conn.execute(
            "UPDATE REFINEMENT_PACKAGE_ASSETS SET LAST_REFINEMENT_ID = ? "
            "WHERE REFINEMENT_PACKAGE_ASSET_ID = ?",
            (refinement_id, new_id),
        )
        project._insert_many(conn, "REFINEMENT_PACKAGE_PARTICLES", particles,
                             {"REFINEMENT_PACKAGE_ASSET_ID": new_id})
        for class_number, rows in enumerate(results_per_class, start=1):
            project._insert_many(conn, "REFINEMENT_RESULTS", rows,
                                 {"REFINEMENT_ID": refinement_id, "CLASS_NUMBER": class_number})
            conn.execute(
                "INSERT INTO REFINEMENT_PACKAGE_REFERENCES (REFINEMENT_PACKAGE_ASSET_ID, "
                "CLASS_NUMBER, VOLUME_ASSET_ID) VALUES (?, ?, -1)",
                (new_id, class_number),
            )
            conn.execute(
                "INSERT INTO REFINEMENT_CLASS_DETAILS (REFINEMENT_ID, CLASS_NUMBER, "
                "REFERENCE_VOLUME_ASSET_ID, AVERAGE_OCCUPANCY, ESTIMATED_RESOLUTION, "
                "RECONSTRUCTED_VOLUME_ASSET_ID, RECONSTRUCTION_ID, MASK_ASSET_ID) "
                "VALUES (?, ?, -1, ?, 0.0, -1, -1, -1)",
                (refinement_id, class_number, 100.0 / number_of_classes),
            )
        conn.execute(
            "INSERT INTO REFINEMENT_PACKAGE_REFINEMENTS (REFINEMENT_PACKAGE_ASSET_ID, "
            "REFINEMENT_NUMBER, REFINEMENT_ID) VALUES (?, 1, ?)",
            (new_id, refinement_id),
        )
        create_views_for(conn, "REFINEMENT_PACKAGE_ASSETS", new_id)
        create_views_for(conn, "REFINEMENT_LIST", refinement_id)
        return int(new_id)


def record_new_package(
    project: Any,
    particles: Sequence[PackageParticle],
    *,
    stack_filename: str,
    box_size: int,
    symmetry: str = "C1",
    molecular_weight_kda: float = 300.0,
    largest_dimension_angstroms: float = 150.0,
    number_of_classes: int = 1,
    stack_has_white_protein: bool = False,
    name: str | None = None,
    seed: int | None = None,
    package_id: int | None = None,
) -> int:
    """Write a new package whose stack holds ``particles`` in order; return its id.

    Parameters
    ----------
    project
        The open project (writable).
    particles
        From :func:`package_particles_from_positions`; stack position = index + 1.
    stack_filename
        The stack (``Assets/ParticleStacks/particle_stack_<id>.mrc``).
    box_size, symmetry, molecular_weight_kda, largest_dimension_angstroms, number_of_classes
        The wizard's values.
    stack_has_white_protein
        Always false for extracted stacks (white protein is inverted when boxing).
    name
        ``None`` = ``Refinement Package #<id>``.
    seed
        Seed of the random initial parameters (``None`` = fresh entropy).
    package_id
        The id to use (it must be the next free one); ``None`` = next.
    """
    symmetry_name = validate_symmetry(symmetry)
    _check_common(number_of_classes, molecular_weight_kda, largest_dimension_angstroms)
    if not particles:
        raise _error("a refinement package needs at least one particle")
    new_id = next_package_id(project) if package_id is None else int(package_id)
    subsets = assigned_subsets([p.parent_image_asset_id for p in particles])
    rows = [
        {
            "ORIGINAL_PARTICLE_POSITION_ASSET_ID": p.position_asset_id,
            "PARENT_IMAGE_ASSET_ID": p.parent_image_asset_id,
            "POSITION_IN_STACK": index + 1,
            "X_POSITION": p.x_angstroms,
            "Y_POSITION": p.y_angstroms,
            "PIXEL_SIZE": p.pixel_size_angstroms,
            "DEFOCUS_1": p.defocus_1_angstroms,
            "DEFOCUS_2": p.defocus_2_angstroms,
            "DEFOCUS_ANGLE": p.defocus_angle_degrees,
            "PHASE_SHIFT": p.phase_shift_degrees,
            "SPHERICAL_ABERRATION": p.spherical_aberration_mm,
            "MICROSCOPE_VOLTAGE": p.voltage_kv,
            "AMPLITUDE_CONTRAST": p.amplitude_contrast,
            "ASSIGNED_SUBSET": subsets[index],
        }
        for index, p in enumerate(particles)
    ]
    rng = np.random.default_rng(seed)
    results = random_initial_results(rows, int(number_of_classes), rng)
    pixel = particles[0].pixel_size_angstroms
    package = {
        "NAME": name or f"Refinement Package #{new_id}",
        "STACK_FILENAME": str(stack_filename),
        "STACK_BOX_SIZE": int(box_size),
        "OUTPUT_PIXEL_SIZE": float(pixel),
        "SYMMETRY": symmetry_name,
        "MOLECULAR_WEIGHT": float(molecular_weight_kda),
        "PARTICLE_SIZE": float(largest_dimension_angstroms),
        "NUMBER_OF_CLASSES": int(number_of_classes),
        "NUMBER_OF_REFINEMENTS": 0,
        "STACK_HAS_WHITE_PROTEIN": int(bool(stack_has_white_protein)),
    }
    return _write_package(
        project, package=package, particles=rows, results_per_class=results,
        refinement_name="Random Parameters", box_size=box_size, pixel_size_angstroms=pixel,
        package_id=new_id,
    )


def create_from_existing_package(
    project: Any,
    parent_package_id: int,
    *,
    refinement_id: int | None = None,
    carry_over_all_particles: bool = True,
    selected_classes: Sequence[int] | None = None,
    class_sources: Sequence[Sequence[int]] | None = None,
    assignment: str = "best_occupancy",
    randomise_occupancies: bool = False,
    number_of_classes: int | None = None,
    symmetry: str | None = None,
    molecular_weight_kda: float | None = None,
    largest_dimension_angstroms: float | None = None,
    name: str | None = None,
    seed: int | None = None,
    prepared_stack: str | None = None,
) -> int:
    """Create a package from an existing one without re-extracting (module docstring).

    Parameters
    ----------
    project
        The open project (writable).
    parent_package_id
        The package to start from.
    refinement_id
        Its refinement whose parameters are taken; ``None`` = its last one.
    carry_over_all_particles
        Keep every particle and share the parent's stack. If false, keep the
        particles whose highest-occupancy class is in ``selected_classes`` and
        write a new stack ``particle_stack_<id>.mrc`` with their images.
    selected_classes
        Old classes (from 1) whose particles are kept when not carrying over all.
    class_sources
        For each new class, the old classes it takes parameters from (from 1);
        ``None`` = new class ``c`` from old class ``c`` (or old class 1 when the
        parent has one class). Several old classes = merge: the particle's
        parameters come from the one with the highest occupancy
        (``assignment="best_occupancy"``) or a random one (``"random"``).
    randomise_occupancies
        ``|U(−1, 1)|·200/K`` occupancies instead of 100 (with K > 1 classes).
    number_of_classes, symmetry, molecular_weight_kda, largest_dimension_angstroms
        New values; ``None`` keeps the parent's (classes: ``len(class_sources)``).
    name
        ``None`` = ``Refinement Package #<id>``.
    seed
        Seed for random choices.
    prepared_stack
        When particles are selected: a stack already holding the kept images in
        order (written by a worker with :func:`copy_stack_images` from
        :func:`positions_kept_by_classes`); it is renamed into place. ``None``
        copies the images here.

    Returns
    -------
    int
        The new package's id.
    """
    parents = project.query(
        "SELECT * FROM REFINEMENT_PACKAGE_ASSETS WHERE REFINEMENT_PACKAGE_ASSET_ID = ?",
        (int(parent_package_id),),
    )
    if not parents:
        raise _error(f"no refinement package with id {parent_package_id}")
    parent = parents[0]
    if refinement_id is None:
        refinement_id = int(parent["last_refinement_id"])
    refinements = project.query(
        "SELECT NUMBER_OF_CLASSES FROM REFINEMENT_LIST WHERE REFINEMENT_ID = ? AND "
        "REFINEMENT_PACKAGE_ASSET_ID = ?",
        (int(refinement_id), int(parent_package_id)),
    )
    if not refinements:
        raise _error(f"package {parent_package_id} has no refinement {refinement_id}")
    old_classes = int(refinements[0]["number_of_classes"])
    if class_sources is None:
        k = int(number_of_classes or parent["number_of_classes"])
        class_sources = [[c if old_classes > 1 and c <= old_classes else 1] for c in
                         range(1, k + 1)]
    sources = [[int(c) for c in group] for group in class_sources]
    if number_of_classes is not None and number_of_classes != len(sources):
        raise _error(
            f"{len(sources)} class source lists given for {number_of_classes} classes"
        )
    k = len(sources)
    for group in sources:
        if not group or any(c < 1 or c > old_classes for c in group):
            raise _error(
                f"class sources must name old classes 1..{old_classes}, got {group}"
            )
    if assignment not in ("best_occupancy", "random"):
        raise _error(f"assignment must be best_occupancy or random, got {assignment!r}")
    symmetry_name = validate_symmetry(symmetry if symmetry is not None else parent["symmetry"])
    weight = float(molecular_weight_kda if molecular_weight_kda is not None
                   else parent["molecular_weight"])
    size = float(largest_dimension_angstroms if largest_dimension_angstroms is not None
                 else parent["particle_size"])
    _check_common(k, weight, size)

    particles = project.query(
        "SELECT * FROM REFINEMENT_PACKAGE_PARTICLES WHERE REFINEMENT_PACKAGE_ASSET_ID = ? "
        "ORDER BY POSITION_IN_STACK",
        (int(parent_package_id),),
    )
    results: dict[int, dict[int, dict[str, Any]]] = {}
    for row in project.query(
        "SELECT * FROM REFINEMENT_RESULTS WHERE REFINEMENT_ID = ?", (int(refinement_id),)
    ):
        results.setdefault(int(row["class_number"]), {})[int(row["position_in_stack"])] = row

    def best_class(position: int, classes: Iterable[int]) -> int:
        return max(classes, key=lambda c: (results.get(c, {}).get(position, {}).get(
            "occupancy", -math.inf), -c))

    if carry_over_all_particles or old_classes == 1:
        kept = particles
    else:
        chosen = {int(c) for c in (selected_classes or [])}
        if not chosen:
            raise _error("choose at least one class whose particles to keep")
        kept = [p for p in particles
                if best_class(int(p["position_in_stack"]), range(1, old_classes + 1)) in chosen]
        if not kept:
            raise _error(f"no particle has its highest occupancy in class(es) {sorted(chosen)}")

    rng = np.random.default_rng(seed)
    new_id = next_package_id(project)
    share_stack = carry_over_all_particles or old_classes == 1
    if share_stack:
        stack_filename = str(parent["stack_filename"])
    else:
        stack_filename = str(project.layout.particle_stack_path(new_id))
        if prepared_stack is not None:
            from cistemd.io import mrc

            depth = mrc.read_header(prepared_stack).nz
            if depth != len(kept):
                raise _error(f"the prepared stack holds {depth} images for {len(kept)} particles; "
                             "the parent package changed since the job was planned")
            Path(stack_filename).parent.mkdir(parents=True, exist_ok=True)
            os.replace(prepared_stack, stack_filename)
        else:
            copy_stack_images(str(parent["stack_filename"]), stack_filename,
                              [int(p["position_in_stack"]) for p in kept])
    new_particles = []
    per_class: list[list[dict[str, Any]]] = [[] for _ in range(k)]
    columns = ("PSI THETA PHI XSHIFT YSHIFT DEFOCUS1 DEFOCUS2 DEFOCUS_ANGLE PHASE_SHIFT LOGP "
               "SIGMA SCORE IMAGE_IS_ACTIVE PIXEL_SIZE MICROSCOPE_VOLTAGE MICROSCOPE_CS "
               "AMPLITUDE_CONTRAST BEAM_TILT_X BEAM_TILT_Y IMAGE_SHIFT_X IMAGE_SHIFT_Y "
               "ASSIGNED_SUBSET").split()
    for index, particle in enumerate(kept):
        old_position = int(particle["position_in_stack"])
        new_position = old_position if share_stack else index + 1
        row = {key.upper(): value for key, value in particle.items()
               if key != "refinement_package_asset_id"}
        row["POSITION_IN_STACK"] = new_position
        new_particles.append(row)
        for class_index, group in enumerate(sources):
            if len(group) == 1:
                source = group[0]
            elif assignment == "best_occupancy":
                source = best_class(old_position, group)
            else:
                source = group[int(rng.integers(len(group)))]
            old = results.get(source, {}).get(old_position)
            if old is None:
                raise _error(f"refinement {refinement_id} has no class {source} result for "
                             f"particle {old_position}")
            result = {c: old[c.lower()] for c in columns}
            result["POSITION_IN_STACK"] = new_position
            if randomise_occupancies and k > 1:
                result["OCCUPANCY"] = float(abs(rng.uniform(-1.0, 1.0)) * 200.0 / k)
            else:
                result["OCCUPANCY"] = 100.0
            per_class[class_index].append(result)
    package = {
        "NAME": name or f"Refinement Package #{new_id}",
        "STACK_FILENAME": stack_filename,
        "STACK_BOX_SIZE": int(parent["stack_box_size"]),
        "OUTPUT_PIXEL_SIZE": float(parent["output_pixel_size"]),
        "SYMMETRY": symmetry_name,
        "MOLECULAR_WEIGHT": weight,
        "PARTICLE_SIZE": size,
        "NUMBER_OF_CLASSES": k,
        "NUMBER_OF_REFINEMENTS": 0,
        "STACK_HAS_WHITE_PROTEIN": int(parent["stack_has_white_protein"] or 0),
    }
    return _write_package(
        project, package=package, particles=new_particles, results_per_class=per_class,
        refinement_name="Starting Parameters", box_size=int(parent["stack_box_size"]),
        pixel_size_angstroms=float(parent["output_pixel_size"]), package_id=new_id,
    )


def positions_kept_by_classes(
    project: Any, parent_package_id: int, refinement_id: int | None,
    selected_classes: Sequence[int],
) -> list[int]:
    """Stack positions of a package's particles whose highest-occupancy class is selected.

    ``refinement_id`` ``None`` = the package's last refinement. Ties go to the
    lower class number.
    """
    parents = project.query(
        "SELECT LAST_REFINEMENT_ID FROM REFINEMENT_PACKAGE_ASSETS WHERE "
        "REFINEMENT_PACKAGE_ASSET_ID = ?", (int(parent_package_id),))
    if not parents:
        raise _error(f"no refinement package with id {parent_package_id}")
    refinement = int(refinement_id or parents[0]["last_refinement_id"])
    best: dict[int, tuple[float, int]] = {}
    for row in project.query(
        "SELECT POSITION_IN_STACK, CLASS_NUMBER, OCCUPANCY FROM REFINEMENT_RESULTS WHERE "
        "REFINEMENT_ID = ?", (refinement,)
    ):
        position, klass = int(row["position_in_stack"]), int(row["class_number"])
        candidate = (float(row["occupancy"]), -klass)
        if position not in best or candidate > best[position]:
            best[position] = candidate
    chosen = {int(c) for c in selected_classes}
    return sorted(p for p, (_, negative_class) in best.items() if -negative_class in chosen)


def copy_stack_images(source: str, destination: str, positions: Sequence[int]) -> None:
    """Write the images ``positions`` (from 1) of the MRC stack ``source`` as a new stack."""
    from cistemd.io import mrc

    data = np.asarray(mrc.read(source, mmap=True))
    if data.ndim == 2:
        data = data[None]
    picked = np.array(data[[p - 1 for p in positions]], dtype=np.float32)
    voxel = mrc.read_header(source).voxel_size_angstroms[0] or 1.0
    os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
    mrc.write(destination, picked, voxel_size_angstroms=voxel, kind="stack")


def create_from_class_selection(project: Any, selection_id: int, **_: Any) -> int:
    """Create a package from a selection of 2D classes (hook; not available yet).

    Raises
    ------
    ProjectError
        Always, until 2D classification is implemented.
    """
    raise _error(
        f"creating a refinement package from 2D class selection {selection_id} needs 2D "
        "classification, which cistemd does not have yet; create the package from particle "
        "positions or from an existing package"
    )
