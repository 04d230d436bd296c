"""Refinement reads and reconstruction records (functions on an open :class:`Project`).

* :func:`refinement_particle_parameters` -- a refinement class's particles as
  :class:`~cistemd.io.parameters.ParticleParameters` plus its package row;
* :func:`record_generate3d` -- the rows and files of a finished Generate 3D
  job: the maps moved from ``Scratch/`` into ``Assets/Volumes`` with cisTEM's
  names, a ``VOLUME_ASSETS`` row, a ``RECONSTRUCTION_LIST`` row, and (when
  asked) the class's resolution statistics (``REFINEMENT_CLASS_STATISTICS``,
  the table behind cisTEM's ``REFINEMENT_RESOLUTION_STATISTICS_<ref>_<class>``;
  SSNRs stored un-square-rooted).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cistemd.errors import InvalidInputError
from cistemd.io.parameters import ParticleParameters
from cistemd.project.layout import adopt_file
from cistemd.project.schema import create_views_for

__all__ = ["record_generate3d", "refinement_particle_parameters"]

# REFINEMENT_RESULTS column -> ParticleParameters column.
_RESULT_COLUMNS = {
    "position_in_stack": "position_in_stack",
    "psi": "psi",
    "theta": "theta",
    "phi": "phi",
    "xshift": "x_shift",
    "yshift": "y_shift",
    "defocus1": "defocus_1",
    "defocus2": "defocus_2",
    "defocus_angle": "defocus_angle",
    "phase_shift": "phase_shift",
    "occupancy": "occupancy",
    "logp": "logp",
    "sigma": "sigma",
    "score": "score",
    "image_is_active": "image_is_active",
    "pixel_size": "pixel_size",
    "microscope_voltage": "microscope_voltage_kv",
    "microscope_cs": "microscope_spherical_aberration_mm",
    "amplitude_contrast": "amplitude_contrast",
    "beam_tilt_x": "beam_tilt_x",
    "beam_tilt_y": "beam_tilt_y",
    "image_shift_x": "image_shift_x",
    "image_shift_y": "image_shift_y",
    "assigned_subset": "assigned_subset",
}


def refinement_particle_parameters(
    project: Any, refinement_id: int, class_number: int
) -> tuple[dict[str, Any], ParticleParameters]:
    """Return ``(package row, parameters)`` of one class of a refinement.

    Raises
    ------
    InvalidInputError
        If the refinement, its package or the class's results do not exist.
    """
    refinements = project.query(
        "SELECT * FROM REFINEMENT_LIST WHERE REFINEMENT_ID = ?", (int(refinement_id),)
    )
    if not refinements:
        raise InvalidInputError(f"refinement {refinement_id} does not exist in this project")
    package_id = int(refinements[0]["refinement_package_asset_id"])
    packages = project.query(
        "SELECT * FROM REFINEMENT_PACKAGE_ASSETS WHERE REFINEMENT_PACKAGE_ASSET_ID = ?",
        (package_id,),
    )
    if not packages:
        raise InvalidInputError(
            f"refinement {refinement_id}: its refinement package {package_id} does not exist"
        )
    rows = project.query(
        "SELECT * FROM REFINEMENT_RESULTS WHERE REFINEMENT_ID = ? AND CLASS_NUMBER = ? "
        "ORDER BY POSITION_IN_STACK",
        (int(refinement_id), int(class_number)),
    )
    if not rows:
        raise InvalidInputError(
            f"refinement {refinement_id} has no results for class {class_number}"
        )
    columns = {
        name: np.array([row[key] for row in rows])
        for key, name in _RESULT_COLUMNS.items()
        if key in rows[0]
    }
    return dict(packages[0]), ParticleParameters(columns)


def _previous_generate3d_jobs(project: Any) -> int:
    rows = project.query(
        "SELECT COUNT(*) AS N FROM RECONSTRUCTION_LIST WHERE NAME LIKE 'Generate 3D%'"
    )
    return int(rows[0]["n"]) if rows else 0


def record_generate3d(project: Any, job_id: int, result: Mapping[str, Any]) -> int:
    """Record a Generate 3D merge result; return the new ``VOLUME_ASSET_ID``.

    ``result`` is the merge task's result: ``files`` (scratch paths of
    ``volume``, ``orth_view``, ``statistics`` and optionally ``half_map_1/2``),
    ``record`` (refinement id, class, and the job's reconstruction settings),
    ``statistics`` curves, ``box_size``, ``pixel_size_angstroms`` and
    ``resolution_0143``.
    """
    settings = dict(result["record"])
    refinement_id = int(settings["refinement_id"])
    class_number = int(settings["class_number"])
    layout = project.layout
    job_number = _previous_generate3d_jobs(project) + 1
    files = dict(result["files"])
    volume_path = layout.generate3d_volume_path(job_number, refinement_id, class_number)
    if adopt_file(files["volume"], volume_path) is None:
        raise FileNotFoundError(f"the reconstructed volume {files['volume']} is missing")
    half_paths = ["", ""]
    for half in (1, 2):
        target = layout.generate3d_volume_path(
            job_number, refinement_id, class_number, half_map=half
        )
        if adopt_file(files.get(f"half_map_{half}"), target) is not None:
            half_paths[half - 1] = str(target)
    adopt_file(files.get("orth_view"), layout.orth_view_path(volume_path.name))
    adopt_file(
        files.get("statistics"),
        layout.statistics_path(refinement_id, class_number, prefix="generate3d_stats"),
    )
    box = int(result["box_size"])
    psize = float(result["pixel_size_angstroms"])
    stats = result["statistics"]
    resolution = result.get("resolution_0143") or 0.0
    with project.transaction() as conn:

        def insert(table: str, values: Mapping[str, Any]) -> int:
            rowid = int(project._insert(conn, table, values))
            create_views_for(conn, table, rowid)
            return rowid

        volume_id = insert(
            "VOLUME_ASSETS",
            {
                "NAME": f"Generate 3D #{job_number} - refinement {refinement_id}, "
                f"class {class_number}",
                "FILENAME": str(volume_path),
                "RECONSTRUCTION_JOB_ID": int(job_id),
                "PIXEL_SIZE": psize,
                "X_SIZE": box,
                "Y_SIZE": box,
                "Z_SIZE": box,
                "HALF_MAP1_FILENAME": half_paths[0],
                "HALF_MAP2_FILENAME": half_paths[1],
            },
        )
        packages = conn.execute(
            "SELECT REFINEMENT_PACKAGE_ASSET_ID FROM REFINEMENT_LIST WHERE REFINEMENT_ID = ?",
            (refinement_id,),
        ).fetchone()
        reconstruction_id = insert(
            "RECONSTRUCTION_LIST",
            {
                "REFINEMENT_PACKAGE_ID": int(packages[0]) if packages else -1,
                "REFINEMENT_ID": refinement_id,
                "NAME": f"Generate 3D #{job_number}",
                "INNER_MASK_RADIUS": float(settings["inner_mask_radius"]),
                "OUTER_MASK_RADIUS": float(settings["outer_mask_radius"]),
                "RESOLUTION_LIMIT": float(settings["resolution_limit"]),
                "SCORE_WEIGHT_CONVERSION": float(settings["score_weight_conversion"]),
                "SHOULD_ADJUST_SCORES": int(bool(settings["adjust_scores"])),
                "SHOULD_CROP_IMAGES": int(bool(settings["crop_images"])),
                "SHOULD_SAVE_HALF_MAPS": int(bool(settings["save_half_maps"])),
                "SHOULD_LIKELIHOOD_BLUR": 0,
                "SMOOTHING_FACTOR": 1.0,
                "CLASS_NUMBER": class_number,
                "VOLUME_ASSET_ID": volume_id,
            },
        )
        if settings.get("overwrite_statistics", True):
            conn.execute(
                "DELETE FROM REFINEMENT_CLASS_STATISTICS WHERE REFINEMENT_ID = ? "
                "AND CLASS_NUMBER = ?",
                (refinement_id, class_number),
            )
            conn.executemany(
                "INSERT INTO REFINEMENT_CLASS_STATISTICS (REFINEMENT_ID, CLASS_NUMBER, SHELL, "
                "RESOLUTION, FSC, PART_FSC, PART_SSNR, REC_SSNR) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (refinement_id, class_number, int(s), float(r), float(f), float(pf),
                     float(ps), float(rs))
                    for s, r, f, pf, ps, rs in zip(
                        stats["shell"], stats["resolution_angstroms"], stats["fsc"],
                        stats["part_fsc"], stats["part_ssnr"], stats["rec_ssnr"], strict=True,
                    )
                ],
            )
            conn.execute(
                "UPDATE REFINEMENT_LIST SET RESOLUTION_STATISTICS_ARE_GENERATED = 1, "
                "RESOLUTION_STATISTICS_BOX_SIZE = ?, RESOLUTION_STATISTICS_PIXEL_SIZE = ? "
                "WHERE REFINEMENT_ID = ?",
                (int(result.get("statistics_box_size", box)), psize, refinement_id),
            )
            conn.execute(
                "UPDATE REFINEMENT_CLASS_DETAILS SET ESTIMATED_RESOLUTION = ?, "
                "RECONSTRUCTED_VOLUME_ASSET_ID = ?, RECONSTRUCTION_ID = ? "
                "WHERE REFINEMENT_ID = ? AND CLASS_NUMBER = ?",
                (float(resolution), volume_id, reconstruction_id, refinement_id, class_number),
            )
    return volume_id
