"""``sharpen_map``: cisTEM's Sharpen 3D action, and the file-level helper it shares with the CLI.

One task sharpens one volume asset (:mod:`cistemd.kernels.sharpen`) and writes,
under the task's scratch directory, the sharpened map and an orthogonal-view
image (the three central sections side by side, ``(N, 3N)``: xy at the
centre z, xz at the centre y, yz at the centre x). When the result is recorded
the files move to::

    Assets/Volumes/sharpened_volume_<job id>_<input volume asset id>.mrc
    Assets/Volumes/OrthViews/sharpened_volume_<job id>_<input volume asset id>.mrc

and a ``VOLUME_ASSETS`` row is added (``RECONSTRUCTION_JOB_ID = -1``: the map
is not a reconstruction).

Defaults are those of cisTEM's Sharpen 3D panel (reference §1.4): flatten
from 12 Å, pre-cut-off B −90 Å², post-cut-off B 0, filter edge 20 Å, FOM
weighting on (when statistics are known), SSNR scale 1, inner radius 0, outer
radius half the box, auto-mask on, hand kept, gridding corrected. A
resolution cut-off of 0 means: the FSC = 0.143 resolution of the statistics,
or 3.5 Å without statistics (as the panel fills it in).

Statistics come from ``statistics_file`` (a cisTEM statistics file) or, when
that is empty, from the volume's reconstruction in the database
(``RECONSTRUCTION_LIST`` → ``REFINEMENT_RESOLUTION_STATISTICS_<refinement>_<class>``)
if there is one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cistemd.actions.base import Action, JSONLike, Parameter, Stage, TaskContext, TaskSpec
from cistemd.errors import InvalidInputError
from cistemd.project.layout import adopt_file

__all__ = [
    "ACTION",
    "GUI_DEFAULT_RESOLUTION_LIMIT_ANGSTROMS",
    "SharpenMap",
    "orthogonal_view_image",
    "sharpen_volume_file",
    "sharpened_volume_name",
]

#: Cut-off the Sharpen 3D panel proposes when the volume has no statistics, Å.
GUI_DEFAULT_RESOLUTION_LIMIT_ANGSTROMS = 3.5


def sharpened_volume_name(job_id: int, volume_asset_id: int) -> str:
    """Return ``sharpened_volume_<job id>_<volume asset id>.mrc``."""
    return f"sharpened_volume_{int(job_id)}_{int(volume_asset_id)}.mrc"


def orthogonal_view_image(volume: np.ndarray) -> np.ndarray:
    """Return the three central sections of a ``(N, N, N)`` map side by side.

    Returns
    -------
    numpy.ndarray
        float32 ``(N, 3N)``: ``[xy at z = N//2 | xz at y = N//2 | yz at x = N//2]``.
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3-D, got shape {vol.shape}")
    nz, ny, nx = vol.shape
    xy = vol[nz // 2]
    xz = vol[:, ny // 2, :]
    yz = vol[:, :, nx // 2]
    height = max(xy.shape[0], xz.shape[0], yz.shape[0])
    panels = []
    for panel in (xy, xz, yz):
        padded = np.zeros((height, panel.shape[1]), dtype=np.float32)
        padded[: panel.shape[0]] = panel
        panels.append(padded)
    return np.concatenate(panels, axis=1)


def _statistics_from_payload(value: Any) -> Any:
    if value is None:
        return None
    from cistemd.io.statistics import ResolutionStatistics

    try:
        return ResolutionStatistics(
            pixel_size_angstroms=value["pixel_size_angstroms"],
            box_size=value["box_size"],
            shell=value["shell"],
            fsc=value["fsc"],
            part_fsc=value["part_fsc"],
            part_ssnr=value["part_ssnr"],
            rec_ssnr=value["rec_ssnr"],
        )
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidInputError(f"sharpen_map payload: bad statistics ({error})") from None


def _statistics_to_payload(stats: Any) -> dict[str, Any]:
    return {
        "pixel_size_angstroms": float(stats.pixel_size_angstroms),
        "box_size": int(stats.box_size),
        "shell": [int(v) for v in stats.shell],
        "fsc": [float(v) for v in stats.fsc],
        "part_fsc": [float(v) for v in stats.part_fsc],
        "part_ssnr": [float(v) for v in stats.part_ssnr],
        "rec_ssnr": [float(v) for v in stats.rec_ssnr],
    }


def sharpen_volume_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    pixel_size_angstroms: float | None = None,
    resolution_limit_angstroms: float = 0.0,
    default_resolution_limit_angstroms: float | None = GUI_DEFAULT_RESOLUTION_LIMIT_ANGSTROMS,
    flatten_from_resolution_angstroms: float = 12.0,
    pre_cutoff_b_factor_angstroms2: float = -90.0,
    post_cutoff_b_factor_angstroms2: float = 0.0,
    filter_edge_angstroms: float = 20.0,
    statistics: Any = None,
    use_fom_weighting: bool = True,
    ssnr_scale: float = 1.0,
    inner_mask_radius_angstroms: float = 0.0,
    outer_mask_radius_angstroms: float | None = None,
    auto_mask: bool = True,
    mask_path: str | os.PathLike[str] | None = None,
    mask_edge_angstroms: float = 0.0,
    invert_hand: bool = False,
    correct_gridding: bool = True,
    orth_view_path: str | os.PathLike[str] | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """Sharpen the map in ``input_path`` and write it to ``output_path``.

    Parameters
    ----------
    input_path, output_path
        MRC maps (the input must be cubic).
    pixel_size_angstroms
        Voxel size; ``None`` takes it from the input header.
    resolution_limit_angstroms
        Cut-off; 0 = the statistics' FSC = 0.143 resolution, or
        ``default_resolution_limit_angstroms`` without statistics (``None``:
        no cut-off but Nyquist).
    default_resolution_limit_angstroms
        See above.
    flatten_from_resolution_angstroms, pre_cutoff_b_factor_angstroms2,
    post_cutoff_b_factor_angstroms2, filter_edge_angstroms, ssnr_scale,
    inner_mask_radius_angstroms, outer_mask_radius_angstroms, auto_mask,
    invert_hand, correct_gridding
        See :class:`cistemd.kernels.sharpen.SharpenParams`.
    statistics
        A :class:`cistemd.io.statistics.ResolutionStatistics`, or ``None``.
    use_fom_weighting
        Weight by ``SSNR/(1 + SSNR)`` when statistics are given.
    mask_path
        A user mask (MRC, same box) for the spectrum; overrides the auto-mask
        and the spherical shell.
    mask_edge_angstroms
        With ``mask_path``: 0 uses the mask's values (clipped to [0, 1]);
        > 0 binarises it at 0.5 and adds a cosine edge this wide.
    orth_view_path
        If given, an orthogonal-view image of the result is written here.
    threads
        FFT workers.

    Returns
    -------
    dict
        JSON-ready summary: paths, ``box_size``, ``pixel_size_angstroms``,
        ``resolution_limit_angstroms`` (``None`` = Nyquist only), ``mask``
        (``"user"``, ``"auto"`` or ``"sphere"``), ``fom_weighting``,
        ``spectrum`` (``spatial_frequency_per_angstrom``,
        ``original_amplitude``, ``sharpened_amplitude``, ``filter``) and
        ``seconds``.

    Raises
    ------
    InvalidInputError
        Unreadable or non-cubic input, a mask of another size, no pixel size,
        or a bad parameter (naming it).
    """
    from cistemd.io import mrc
    from cistemd.kernels import masks
    from cistemd.kernels.sharpen import SharpenParams, sharpen_map

    started = time.perf_counter()
    header = mrc.read_header(input_path)
    volume = np.asarray(mrc.read(input_path, mmap=False), dtype=np.float32)
    if volume.ndim != 3 or not volume.shape[0] == volume.shape[1] == volume.shape[2]:
        raise InvalidInputError(
            f"is {header.nx}×{header.ny}×{header.nz}; Sharpen Map needs a cubic 3-D map",
            path=input_path,
        )
    if pixel_size_angstroms is None or pixel_size_angstroms <= 0:
        pixel_size_angstroms = float(header.voxel_size_angstroms[0])
        if not pixel_size_angstroms > 0:
            raise InvalidInputError(
                "the header records no voxel size; give the pixel size", path=input_path
            )
    psize = float(pixel_size_angstroms)
    n = volume.shape[0]

    limit: float | None = float(resolution_limit_angstroms)
    if limit is not None and limit <= 0:
        if statistics is not None:
            estimate = float(statistics.resolution_at(0.143))
            limit = estimate if math.isfinite(estimate) and estimate > 0 else None
        else:
            limit = default_resolution_limit_angstroms
    weights = None
    mask_kind = "auto" if auto_mask else "sphere"
    if mask_path is not None and str(mask_path):
        mask_volume = np.asarray(mrc.read(mask_path, mmap=False), dtype=np.float32)
        if mask_volume.shape != volume.shape:
            raise InvalidInputError(
                f"the mask is {mask_volume.shape[::-1]} voxels (x, y, z), the map "
                f"{volume.shape[::-1]}; give a mask of the same box",
                path=mask_path,
            )
        try:
            if mask_edge_angstroms > 0:
                weights = masks.user_mask(
                    mask_volume, psize, edge_width_angstroms=mask_edge_angstroms
                )
            else:
                weights = np.clip(mask_volume, 0.0, 1.0)
                if not weights.any():
                    raise ValueError("the mask is empty (no voxel above 0)")
        except ValueError as error:
            raise InvalidInputError(str(error), path=mask_path) from None
        mask_kind = "user"
    try:
        params = SharpenParams(
            pixel_size_angstroms=psize,
            resolution_limit_angstroms=limit,
            flatten_from_resolution_angstroms=flatten_from_resolution_angstroms,
            pre_cutoff_b_factor_angstroms2=pre_cutoff_b_factor_angstroms2,
            post_cutoff_b_factor_angstroms2=post_cutoff_b_factor_angstroms2,
            filter_edge_angstroms=filter_edge_angstroms,
            ssnr_scale=ssnr_scale,
            inner_mask_radius_angstroms=inner_mask_radius_angstroms,
            outer_mask_radius_angstroms=outer_mask_radius_angstroms,
            auto_mask=auto_mask,
            invert_hand=invert_hand,
            correct_gridding=correct_gridding,
        )
    except ValueError as error:
        raise InvalidInputError(f"Sharpen Map parameters: {error}") from None
    fom = bool(use_fom_weighting and statistics is not None)
    result = sharpen_map(
        volume,
        params,
        mask=weights,
        statistics_resolution_angstroms=statistics.resolution_angstroms if fom else None,
        statistics_rec_ssnr=statistics.rec_ssnr if fom else None,
        threads=threads,
    )
    if mask_kind == "auto" and not (result.mask < 1).any():
        mask_kind = "sphere"
    mrc.write(output_path, result.volume, voxel_size_angstroms=psize, kind="volume")
    if orth_view_path is not None:
        mrc.write(
            orth_view_path,
            orthogonal_view_image(result.volume),
            voxel_size_angstroms=psize,
            kind="image",
        )
    return {
        "input": os.path.abspath(input_path),
        "output": os.path.abspath(output_path),
        "orth_view": None if orth_view_path is None else os.path.abspath(orth_view_path),
        "box_size": n,
        "pixel_size_angstroms": psize,
        "resolution_limit_angstroms": limit,
        "mask": mask_kind,
        "fom_weighting": fom,
        "spectrum": {
            "spatial_frequency_per_angstrom": [float(v) for v in result.spatial_frequency],
            "original_amplitude": [float(v) for v in result.original_amplitude],
            "sharpened_amplitude": [float(v) for v in result.sharpened_amplitude],
            "filter": [float(v) for v in result.filter],
        },
        "seconds": time.perf_counter() - started,
    }


def _statistics_from_database(project: Any, volume_asset_id: int) -> Any:
    """Return the statistics of the reconstruction that made this volume, if the DB has them.

    ``RECONSTRUCTION_LIST`` (newest row naming the volume) gives the refinement
    and class; their shells are in ``REFINEMENT_CLASS_STATISTICS`` (the table
    behind cisTEM's ``REFINEMENT_RESOLUTION_STATISTICS_<refinement>_<class>``),
    SSNRs not square-rooted.
    """
    from cistemd.io.statistics import ResolutionStatistics

    try:
        rows = project.query(
            "SELECT REFINEMENT_ID, CLASS_NUMBER FROM RECONSTRUCTION_LIST "
            "WHERE VOLUME_ASSET_ID = ? ORDER BY RECONSTRUCTION_ID DESC LIMIT 1",
            (int(volume_asset_id),),
        )
        if not rows:
            return None
        refinement_id = int(rows[0]["refinement_id"])
        class_number = int(rows[0]["class_number"])
        stats = project.query(
            "SELECT SHELL, FSC, PART_FSC, PART_SSNR, REC_SSNR FROM REFINEMENT_CLASS_STATISTICS "
            "WHERE REFINEMENT_ID = ? AND CLASS_NUMBER = ? ORDER BY SHELL",
            (refinement_id, class_number),
        )
        refinement = project.query(
            "SELECT RESOLUTION_STATISTICS_BOX_SIZE, RESOLUTION_STATISTICS_PIXEL_SIZE "
            "FROM REFINEMENT_LIST WHERE REFINEMENT_ID = ?",
            (refinement_id,),
        )
    except Exception:  # an older or foreign schema: no statistics
        return None
    if not stats or not refinement:
        return None
    try:
        return ResolutionStatistics(
            pixel_size_angstroms=refinement[0]["resolution_statistics_pixel_size"],
            box_size=refinement[0]["resolution_statistics_box_size"],
            shell=np.array([row["shell"] for row in stats]),
            fsc=np.array([row["fsc"] for row in stats]),
            part_fsc=np.array([row["part_fsc"] for row in stats]),
            part_ssnr=np.array([row["part_ssnr"] for row in stats]),
            rec_ssnr=np.array([row["rec_ssnr"] for row in stats]),
        )
    except (KeyError, TypeError, ValueError):
        return None


class SharpenMap(Action):
    """cisTEM's Sharpen 3D (see the module docstring)."""

    name = "sharpen_map"
    title = "Sharpen 3D"
    parameters = (
        Parameter("volume", "int", None, "VOLUME_ASSET_ID of the map to sharpen", minimum=1),
        Parameter(
            "flatten_from_resolution",
            "float",
            12.0,
            "whiten the spectrum beyond this resolution, Å",
            minimum=0.1,
        ),
        Parameter(
            "resolution_limit",
            "float",
            0.0,
            "resolution cut-off, Å (0 = FSC 0.143 from the statistics, else 3.5 Å)",
            minimum=0.0,
        ),
        Parameter(
            "pre_cutoff_b_factor", "float", -90.0, "B-factor up to the flattening resolution, Å²"
        ),
        Parameter(
            "post_cutoff_b_factor", "float", 0.0, "B-factor beyond the flattening resolution, Å²"
        ),
        Parameter(
            "filter_edge_width",
            "float",
            20.0,
            "cut-off cosine edge is 1/this wide, Å",
            minimum=0.1,
        ),
        Parameter(
            "use_fom_weighting",
            "bool",
            True,
            "weight by the figure of merit SSNR/(1+SSNR) (needs statistics)",
        ),
        Parameter(
            "ssnr_scale",
            "float",
            1.0,
            "scale of the SSNR used for the FOM",
            minimum=0.1,
            maximum=10.0,
        ),
        Parameter("inner_mask_radius", "float", 0.0, "inner mask radius, Å", minimum=0.0),
        Parameter(
            "outer_mask_radius",
            "float",
            0.0,
            "outer mask radius, Å (0 = half the box)",
            minimum=0.0,
        ),
        Parameter("auto_mask", "bool", True, "mask the density automatically for the spectrum"),
        Parameter(
            "mask_volume",
            "int",
            -1,
            "VOLUME_ASSET_ID of a 3-D mask to use instead (-1 = none)",
            minimum=-1,
        ),
        Parameter("invert_hand", "bool", False, "invert the handedness"),
        Parameter("correct_gridding", "bool", True, "correct the gridding (sinc²) attenuation"),
        Parameter(
            "statistics_file",
            "path",
            "",
            "cisTEM statistics file for FOM weighting ('' = from the database, if any)",
            expert=True,
        ),
    )

    def start(
        self, parameters: Mapping[str, JSONLike], *, project: Any = None
    ) -> tuple[JSONLike, Stage]:
        """Return one final stage with one task for the chosen volume.

        Parameters
        ----------
        parameters
            Validated parameters.
        project
            The open project (required: the volume is an asset).

        Returns
        -------
        tuple
            ``({}, stage)``.

        Raises
        ------
        InvalidInputError
            No project, an unknown volume or mask asset, a mask of another
            box, or an unreadable statistics file.
        """
        if project is None:
            raise InvalidInputError("sharpen_map runs on a project's volume asset; open a project")
        volume = self._volume(project, int(parameters["volume"]), "volume")
        mask_id = int(parameters["mask_volume"])
        mask_file = ""
        if mask_id > 0:
            mask = self._volume(project, mask_id, "mask_volume")
            if (mask["x_size"], mask["y_size"], mask["z_size"]) != (
                volume["x_size"],
                volume["y_size"],
                volume["z_size"],
            ):
                raise InvalidInputError(
                    f"parameter 'mask_volume': volume {mask_id} is "
                    f"{mask['x_size']}×{mask['y_size']}×{mask['z_size']}, the map "
                    f"{volume['x_size']}×{volume['y_size']}×{volume['z_size']}"
                )
            mask_file = str(mask["filename"])
        statistics = None
        statistics_file = str(parameters["statistics_file"])
        if statistics_file:
            from cistemd.io.statistics import read_statistics

            statistics = read_statistics(statistics_file)
        else:
            statistics = _statistics_from_database(project, int(volume["volume_asset_id"]))
        outer = float(parameters["outer_mask_radius"])
        payload = {
            "volume_asset_id": int(volume["volume_asset_id"]),
            "volume_name": str(volume["name"]),
            "filename": str(volume["filename"]),
            "pixel_size_angstroms": float(volume["pixel_size"]),
            "mask_file": mask_file,
            "statistics": None if statistics is None else _statistics_to_payload(statistics),
            "flatten_from_resolution": float(parameters["flatten_from_resolution"]),
            "resolution_limit": float(parameters["resolution_limit"]),
            "pre_cutoff_b_factor": float(parameters["pre_cutoff_b_factor"]),
            "post_cutoff_b_factor": float(parameters["post_cutoff_b_factor"]),
            "filter_edge_width": float(parameters["filter_edge_width"]),
            "use_fom_weighting": bool(parameters["use_fom_weighting"]),
            "ssnr_scale": float(parameters["ssnr_scale"]),
            "inner_mask_radius": float(parameters["inner_mask_radius"]),
            "outer_mask_radius": outer if outer > 0 else None,
            "auto_mask": bool(parameters["auto_mask"]) and not mask_file,
            "invert_hand": bool(parameters["invert_hand"]),
            "correct_gridding": bool(parameters["correct_gridding"]),
        }
        task = TaskSpec(
            key=str(payload["volume_asset_id"]), payload=payload, label=str(volume["name"])
        )
        return {}, Stage(tasks=(task,), final=True, label="sharpen")

    @staticmethod
    def _volume(project: Any, asset_id: int, field: str) -> dict[str, Any]:
        rows = project.query("SELECT * FROM VOLUME_ASSETS WHERE VOLUME_ASSET_ID = ?", (asset_id,))
        if not rows:
            raise InvalidInputError(
                f"parameter {field!r}: there is no volume asset {asset_id} in the project "
                "(see `cistem assets volumes`)"
            )
        return rows[0]

    def run_task(
        self, payload: Mapping[str, JSONLike], context: TaskContext
    ) -> dict[str, JSONLike]:
        """Sharpen one volume into ``context.scratch_dir``.

        Parameters
        ----------
        payload
            From :meth:`start`.
        context
            Task context (scratch directory, threads, progress).

        Returns
        -------
        dict
            The summary of :func:`sharpen_volume_file` (spectrum included)
            plus ``volume_asset_id``, ``volume_name``, ``scratch_volume`` and
            ``scratch_orth_view`` (absolute paths).
        """
        scratch = Path(context.scratch_dir)
        scratch.mkdir(parents=True, exist_ok=True)
        asset_id = int(payload["volume_asset_id"])
        stem = f"sharpened_{asset_id}_attempt_{int(context.attempt)}"
        output = scratch / f"{stem}.mrc"
        orth = scratch / f"{stem}_orth.mrc"
        context.report_progress(0.0, f"sharpening {payload['volume_name']}")
        mask_file = str(payload.get("mask_file") or "")
        summary = sharpen_volume_file(
            str(payload["filename"]),
            output,
            pixel_size_angstroms=float(payload["pixel_size_angstroms"]),
            resolution_limit_angstroms=float(payload["resolution_limit"]),
            flatten_from_resolution_angstroms=float(payload["flatten_from_resolution"]),
            pre_cutoff_b_factor_angstroms2=float(payload["pre_cutoff_b_factor"]),
            post_cutoff_b_factor_angstroms2=float(payload["post_cutoff_b_factor"]),
            filter_edge_angstroms=float(payload["filter_edge_width"]),
            statistics=_statistics_from_payload(payload.get("statistics")),
            use_fom_weighting=bool(payload["use_fom_weighting"]),
            ssnr_scale=float(payload["ssnr_scale"]),
            inner_mask_radius_angstroms=float(payload["inner_mask_radius"]),
            outer_mask_radius_angstroms=(
                None
                if payload.get("outer_mask_radius") is None
                else float(payload["outer_mask_radius"])
            ),
            auto_mask=bool(payload["auto_mask"]),
            mask_path=mask_file or None,
            invert_hand=bool(payload["invert_hand"]),
            correct_gridding=bool(payload["correct_gridding"]),
            orth_view_path=orth,
            threads=max(1, int(context.threads)),
        )
        context.report_progress(1.0, "done")
        summary.update(
            volume_asset_id=asset_id,
            volume_name=str(payload["volume_name"]),
            scratch_volume=str(output),
            scratch_orth_view=str(orth),
        )
        return summary

    def record(
        self, project: Any, job_id: int, task_key: str, result: Mapping[str, JSONLike]
    ) -> None:
        """Move the outputs into ``Assets/Volumes`` (+ ``OrthViews``) and add a volume asset.

        Parameters
        ----------
        project
            The open project.
        job_id
            The job; part of the output file name.
        task_key
            The task (the input volume's asset id).
        result
            From :meth:`run_task`.
        """
        layout = project.layout
        name = sharpened_volume_name(job_id, int(result["volume_asset_id"]))
        destination = Path(layout.volumes_dir) / name
        orth_destination = Path(layout.orth_view_path(name))
        if adopt_file(str(result["scratch_volume"]), destination) is None:
            raise FileNotFoundError(f"the sharpened volume {result['scratch_volume']} is missing")
        adopt_file(str(result["scratch_orth_view"]), orth_destination)
        box = int(result["box_size"])
        project.insert_row(
            "VOLUME_ASSETS",
            {
                "NAME": f"{result['volume_name']} (sharpened, job {int(job_id)})",
                "FILENAME": str(destination),
                "RECONSTRUCTION_JOB_ID": -1,
                "PIXEL_SIZE": float(result["pixel_size_angstroms"]),
                "X_SIZE": box,
                "Y_SIZE": box,
                "Z_SIZE": box,
                "HALF_MAP1_FILENAME": "",
                "HALF_MAP2_FILENAME": "",
            },
        )


ACTION = SharpenMap
"""The action class this module provides (see :data:`cistemd.actions.base.ACTION_MODULES`)."""
