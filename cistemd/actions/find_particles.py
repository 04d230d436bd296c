"""``find_particles``: cisTEM's Find Particles action (matched-filter picking).

One task per image of an image group, using the image's *active* CTF
estimate. Each task runs :func:`cistemd.kernels.picking.find_particles` and
returns the positions (Å) and peak heights; :meth:`FindParticles.record`
writes a ``PARTICLE_PICKING_LIST`` row with the parameters, replaces the
image's earlier positions (as cisTEM does when an image is picked again) and
adds the new ones to ``PARTICLE_POSITION_ASSETS`` with the picking id and the
job id.

Preview mode (``preview_image`` > 0, for the TUI's live preview): one task on
that image, nothing is recorded, and the positions are in the task's result.

Parameter defaults are those of cisTEM's Find Particles panel (reference §1.4):
exclusion (maximum) radius 120 Å, characteristic radius 80 Å, threshold 6,
highest resolution 30 Å, minimum edge distance 128 px, avoid high variance
off, avoid abnormal local mean on, 50 background boxes, algorithm "lowest".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cistemd.actions.base import Action, JSONLike, Parameter, Stage, TaskContext, TaskSpec
from cistemd.errors import InvalidInputError

__all__ = ["ACTION", "FindParticles", "read_micrograph"]

_PICKING_ALGORITHM_DISC_TEMPLATE = 0


def read_micrograph(path: str) -> Any:
    """Return the first image of an MRC/TIFF file as a 2-D float32 array.

    Raises
    ------
    InvalidInputError
        When the file cannot be read as an image.
    """
    import numpy as np

    from cistemd.errors import InvalidInputError
    from cistemd.io import mrc, tiff

    lowered = path.lower()
    try:
        if lowered.endswith((".tif", ".tiff")):
            data = np.asarray(tiff.read(path))
        else:
            data = np.asarray(mrc.read(path))
    except InvalidInputError:
        raise
    except (OSError, ValueError) as error:
        raise InvalidInputError(f"cannot read the micrograph: {error}", path=path) from None
    if data.ndim == 3:
        data = data[0]
    if data.ndim != 2:
        raise InvalidInputError(f"expected a 2-D image, got shape {data.shape}", path=path)
    return np.asarray(data, dtype=np.float32)


class FindParticles(Action):
    """Pick particles in every image of a group (see the module docstring)."""

    name = "find_particles"
    title = "Find Particles"
    parameters = (
        Parameter("image_group", "int", 0, "image group to pick in (0 = all images)", 0),
        Parameter("maximum_radius", "float", 120.0, "exclusion radius (Å)", 1.0, 5000.0),
        Parameter("characteristic_radius", "float", 80.0, "typical particle radius (Å)", 1.0,
                  5000.0),
        Parameter("threshold", "float", 6.0, "threshold peak height (σ)", 0.0, 1000.0),
        Parameter("highest_resolution", "float", 30.0, "highest resolution used (Å)", 1.0,
                  1000.0, expert=True),
        Parameter("minimum_distance_from_edges", "int", 128,
                  "minimum distance from the edges (px)", 0, 100000, expert=True),
        Parameter("avoid_high_variance", "bool", False, "avoid high-variance areas",
                  expert=True),
        Parameter("avoid_low_variance", "bool", True, "avoid low-variance areas", expert=True),
        Parameter("avoid_abnormal_local_mean", "bool", True,
                  "avoid areas with abnormal local mean", expert=True),
        Parameter("number_of_background_boxes", "int", 50, "background boxes", 1, 100000,
                  expert=True),
        Parameter("background_algorithm", "str", "lowest",
                  "background boxes: lowest local variance or typical variance",
                  choices=("lowest", "mean"), expert=True),
        Parameter("preview_image", "int", 0,
                  "preview: pick this image asset only and record nothing (0 = off)", 0),
    )

    def start(
        self, parameters: Mapping[str, JSONLike], *, project: Any = None
    ) -> tuple[JSONLike, Stage]:
        """Return one final stage with a task per image (or the preview image).

        Raises
        ------
        InvalidInputError
            Without a project, for an empty group, or an image without a CTF estimate.
        """
        if project is None:
            raise InvalidInputError("find_particles needs a project (its images and CTFs)")
        preview = int(parameters["preview_image"])
        if preview:
            members = [preview]
        else:
            members = project.group_members("image", int(parameters["image_group"]))
        images = {int(row["image_asset_id"]): row for row in project.images()}
        estimates = {int(r["ctf_estimation_id"]): r for r in project.ctf_estimates()}
        tasks = []
        missing_ctf = []
        for image_id in members:
            image = images.get(int(image_id))
            if image is None:
                if preview:
                    raise InvalidInputError(
                        f"parameter 'preview_image': no image asset with id {image_id}"
                    )
                continue
            estimate = estimates.get(int(image.get("ctf_estimation_id") or -1))
            if estimate is None:
                missing_ctf.append(str(image["name"]))
                continue
            payload: dict[str, JSONLike] = {
                "image_asset_id": int(image_id),
                "image_filename": str(image["filename"]),
                "pixel_size": float(image["pixel_size"]),
                "voltage": float(image["voltage"]),
                "spherical_aberration": float(image["spherical_aberration"]),
                "protein_is_white": bool(image.get("protein_is_white") or 0),
                "defocus_1": float(estimate["defocus1"]),
                "defocus_2": float(estimate["defocus2"]),
                "defocus_angle": float(estimate["defocus_angle"]),
                "phase_shift_radians": float(estimate.get("additional_phase_shift") or 0.0),
                "amplitude_contrast": float(estimate.get("amplitude_contrast") or 0.07),
                "preview": bool(preview),
                **{p.name: parameters[p.name] for p in self.parameters
                   if p.name not in ("image_group", "preview_image")},
            }
            tasks.append(TaskSpec(key=str(image_id), payload=payload,
                                  label=Path(str(image["filename"])).name))
        if missing_ctf:
            raise InvalidInputError(
                f"{len(missing_ctf)} image(s) have no CTF estimate (e.g. {missing_ctf[0]!r}); "
                "run find_ctf first"
            )
        if not tasks:
            raise InvalidInputError(
                f"parameter 'image_group': group {parameters['image_group']} holds no image"
            )
        label = "find particles (preview)" if preview else "find particles"
        return {}, Stage(tasks=tuple(tasks), final=True, label=label)

    def run_task(
        self, payload: Mapping[str, JSONLike], context: TaskContext
    ) -> dict[str, JSONLike]:
        """Pick one image; return its positions (Å), peak heights and the time taken."""
        import time

        from cistemd.kernels.ctf import CTFParams
        from cistemd.kernels.picking import PickingParams, find_particles

        started = time.monotonic()
        context.report_progress(0.0, "reading")
        image = read_micrograph(str(payload["image_filename"]))
        ctf = CTFParams(
            defocus_1_angstroms=float(payload["defocus_1"]),
            defocus_2_angstroms=float(payload["defocus_2"]),
            astigmatism_angle_degrees=float(payload["defocus_angle"]),
            voltage_kv=float(payload["voltage"]),
            spherical_aberration_mm=float(payload["spherical_aberration"]),
            amplitude_contrast=float(payload["amplitude_contrast"]),
            additional_phase_shift_radians=float(payload["phase_shift_radians"]),
        )
        params = PickingParams(
            characteristic_radius_angstroms=float(payload["characteristic_radius"]),
            maximum_radius_angstroms=float(payload["maximum_radius"]),
            threshold_sigma=float(payload["threshold"]),
            highest_resolution_angstroms=float(payload["highest_resolution"]),
            minimum_distance_from_edges_px=int(payload["minimum_distance_from_edges"]),
            avoid_high_variance=bool(payload["avoid_high_variance"]),
            avoid_low_variance=bool(payload["avoid_low_variance"]),
            avoid_abnormal_local_mean=bool(payload["avoid_abnormal_local_mean"]),
            number_of_background_boxes=int(payload["number_of_background_boxes"]),
            background_algorithm=str(payload["background_algorithm"]),
            particles_are_white=bool(payload["protein_is_white"]),
        )
        context.report_progress(0.2, "picking")
        picks = find_particles(image, pixel_size_angstroms=float(payload["pixel_size"]),
                               ctf=ctf, params=params, threads=context.threads)
        context.report_progress(1.0, f"{len(picks)} particles")
        return {
            "image_asset_id": int(payload["image_asset_id"]),
            "preview": bool(payload.get("preview")),
            "x": [float(v) for v in picks.x_angstroms],
            "y": [float(v) for v in picks.y_angstroms],
            "peak_height": [float(v) for v in picks.peak_height],
            "parameters": {k: payload[k] for k in (
                "characteristic_radius", "maximum_radius", "threshold", "highest_resolution",
                "minimum_distance_from_edges", "avoid_high_variance", "avoid_low_variance",
                "avoid_abnormal_local_mean", "number_of_background_boxes")},
            "seconds": time.monotonic() - started,
        }

    def record(
        self, project: Any, job_id: int, task_key: str, result: Mapping[str, JSONLike]
    ) -> None:
        """Write the picking row and replace the image's positions (nothing for a preview)."""
        if result.get("preview"):
            return
        image_id = int(result["image_asset_id"])
        used = result["parameters"]
        xs = [float(v) for v in result["x"]]
        ys = [float(v) for v in result["y"]]
        heights = [float(v) for v in result["peak_height"]]
        if not all(math.isfinite(v) for v in xs + ys + heights):
            raise InvalidInputError(f"find_particles result for image {image_id}: non-finite")
        with project.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO PARTICLE_PICKING_LIST (DATETIME_OF_RUN, PICKING_JOB_ID, "
                "PARENT_IMAGE_ASSET_ID, PICKING_ALGORITHM, CHARACTERISTIC_RADIUS, "
                "MAXIMUM_RADIUS, THRESHOLD_PEAK_HEIGHT, HIGHEST_RESOLUTION_USED_IN_PICKING, "
                "MIN_DIST_FROM_EDGES, AVOID_HIGH_VARIANCE, AVOID_HIGH_LOW_MEAN, "
                "NUM_BACKGROUND_BOXES, MANUAL_EDIT) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (
                    int(datetime.now(UTC).timestamp()), int(job_id), image_id,
                    _PICKING_ALGORITHM_DISC_TEMPLATE, float(used["characteristic_radius"]),
                    float(used["maximum_radius"]), float(used["threshold"]),
                    float(used["highest_resolution"]), int(used["minimum_distance_from_edges"]),
                    int(bool(used["avoid_high_variance"])),
                    int(bool(used["avoid_abnormal_local_mean"])),
                    int(used["number_of_background_boxes"]),
                ),
            )
            picking_id = int(cursor.lastrowid or 0)
            conn.execute(
                "DELETE FROM PARTICLE_POSITION_ASSETS WHERE PARENT_IMAGE_ASSET_ID = ?",
                (image_id,),
            )
            project.add_particle_positions(
                image_id, xs, ys, peak_heights=heights, picking_id=picking_id,
                pick_job_id=int(job_id),
            )


ACTION = FindParticles
"""The action class this module provides (see :data:`cistemd.actions.base.ACTION_MODULES`)."""
