"""Align Movies: cisTEM's Unblur on every movie of a group, one task per movie.

Defaults are those of cisTEM's Align Movies panel (reference §1.4): minimum
shift 2 Å, maximum shift 40 Å, exposure filter and restore power on,
termination threshold 1 Å, 10 iterations, B-factor 1500 Å², central-cross
mask on (1 / 1), all frames summed. Per-movie values (pixel size, kV, exposure
per frame, gain/dark references, output binning, magnification distortion)
come from the movie asset.

Each task writes, into its scratch directory, the aligned sum, the amplitude
spectrum of the unfiltered sum (512², as cisTEM's ``Spectra/`` images) and a
small scaled sum; :meth:`AlignMovies.record` moves them to
``Assets/Images/<movie>_<movie id>_<n>.mrc`` (and ``Spectra/``, ``Scaled/``),
records the alignment in ``MOVIE_ALIGNMENT_LIST`` with its per-frame shifts
(``MOVIE_ALIGNMENT_PARAMETERS_<id>``, Å, cisTEM's sign: the shift applied to
each frame) and the sum as an image asset whose ``PARENT_MOVIE_ID`` and
``ALIGNMENT_ID`` point back (it is in "All Images", group 0). Re-aligning a
movie replaces its image, as cisTEM does.

:func:`align_movie_file` is the whole per-movie computation; ``cistem
unblur`` uses it too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cistemd.actions.base import Action, JSONLike, Parameter, Stage, TaskContext, TaskSpec
from cistemd.errors import InvalidInputError
from cistemd.project.layout import adopt_file

__all__ = ["ACTION", "AlignMovies", "align_movie_file", "unblur_parameters"]

SHIFT_CONVENTION = (
    "shift applied to each frame to align it (content moved by +shift), in Å, relative "
    "to the middle frame (index n // 2, 0-based); x along MRC columns, y along rows"
)

# action parameter -> MOVIE_ALIGNMENT_LIST column (cisTEM's names)
_COLUMNS = {
    "min_shift": "MIN_SHIFT",
    "max_shift": "MAX_SHIFT",
    "exposure_filter": "SHOULD_DOSE_FILTER",
    "restore_power": "SHOULD_RESTORE_POWER",
    "termination_threshold": "TERMINATION_THRESHOLD",
    "max_iterations": "MAX_ITERATIONS",
    "bfactor": "BFACTOR",
    "mask_central_cross": "SHOULD_MASK_CENTRAL_CROSS",
    "horizontal_mask": "HORIZONTAL_MASK",
    "vertical_mask": "VERTICAL_MASK",
    "pre_exposure": "PRE_EXPOSURE_AMOUNT",
    "first_frame": "FIRST_FRAME_TO_SUM",
    "last_frame": "LAST_FRAME_TO_SUM",
}


def unblur_parameters(values: Mapping[str, Any]) -> Any:
    """Build :class:`cistemd.kernels.unblur.UnblurParameters` from a flat dict.

    Parameters
    ----------
    values
        Keys: ``exposure_per_frame``, ``voltage``, ``pre_exposure``,
        ``min_shift``, ``max_shift``, ``bfactor``, ``termination_threshold``,
        ``max_iterations``, ``mask_central_cross``, ``vertical_mask``,
        ``horizontal_mask``, ``exposure_filter``, ``restore_power``,
        ``first_frame``, ``last_frame``, ``output_binning_factor`` and
        optionally ``mag_distortion`` = ``[angle, major, minor]`` or ``None``.

    Returns
    -------
    UnblurParameters

    Raises
    ------
    InvalidInputError
        A value out of range (the message names it).
    """
    from cistemd.kernels.unblur import MagDistortion, UnblurParameters

    distortion = values.get("mag_distortion")
    try:
        return UnblurParameters(
            exposure_per_frame_e_per_a2=float(values["exposure_per_frame"]),
            voltage_kv=float(values["voltage"]),
            pre_exposure_e_per_a2=float(values.get("pre_exposure", 0.0)),
            min_shift_angstroms=float(values.get("min_shift", 2.0)),
            max_shift_angstroms=float(values.get("max_shift", 40.0)),
            bfactor_angstroms2=float(values.get("bfactor", 1500.0)),
            termination_threshold_angstroms=float(values.get("termination_threshold", 1.0)),
            max_iterations=int(values.get("max_iterations", 10)),
            mask_central_cross=bool(values.get("mask_central_cross", True)),
            vertical_mask=int(values.get("vertical_mask", 1)),
            horizontal_mask=int(values.get("horizontal_mask", 1)),
            exposure_filter=bool(values.get("exposure_filter", True)),
            restore_power=bool(values.get("restore_power", True)),
            first_frame=int(values.get("first_frame", 1)),
            last_frame=int(values.get("last_frame", 0)),
            output_binning_factor=float(values.get("output_binning_factor", 1.0)),
            mag_distortion=(
                None if not distortion else MagDistortion(*(float(v) for v in distortion))
            ),
        )
    except ValueError as error:
        raise InvalidInputError(f"unblur settings: {error}") from None


def align_movie_file(
    movie: str | os.PathLike[str],
    *,
    output: str | os.PathLike[str],
    params: Any,
    pixel_size_angstroms: float | None = None,
    gain: str | os.PathLike[str] | None = None,
    dark: str | os.PathLike[str] | None = None,
    gain_transform: Any = None,
    spectrum_output: str | os.PathLike[str] | None = None,
    scaled_output: str | os.PathLike[str] | None = None,
    shifts_output: str | os.PathLike[str] | None = None,
    threads: int = 1,
    progress: Callable[[float, str], None] | None = None,
) -> dict[str, Any]:
    """Align one movie file and write the sum (and optional extra outputs).

    Parameters
    ----------
    movie
        MRC stack or (LZW) TIFF.
    output
        Aligned sum, MRC (float32, output pixel size in the header).
    params
        :class:`~cistemd.kernels.unblur.UnblurParameters`.
    pixel_size_angstroms
        Å per pixel; ``None`` = from the movie's header.
    gain, dark
        Reference files (``corrected = (raw - dark) * gain``) or ``None``.
    gain_transform
        :class:`~cistemd.io.movie.GainTransform` for the references, or ``None``.
    spectrum_output, scaled_output
        Amplitude spectrum (512²) of the unfiltered sum, and the sum binned to
        at most 512 px, as MRC; ``None`` = not written.
    shifts_output
        Text file with two columns, x and y shift per frame in Å (cisTEM's
        shift file); ``None`` = not written.
    threads
        Threads for the FFTs and sums.
    progress
        ``progress(fraction, message)``.

    Returns
    -------
    dict
        JSON-ready: ``input``, ``output``, ``n_frames``, ``x_size``,
        ``y_size``, ``pixel_size_angstroms`` (input), ``output_pixel_size_angstroms``,
        ``shifts_x``, ``shifts_y`` (Å), ``shift_convention``, ``iterations``,
        ``seconds`` and the extra outputs written.

    Raises
    ------
    InvalidInputError
        An unreadable movie or reference, a missing pixel size, frames too
        small for the binning; the message names the file.
    """
    from cistemd.io import mrc
    from cistemd.io.movie import GainTransform, open_movie
    from cistemd.kernels import unblur

    started = time.monotonic()
    transform = gain_transform if gain_transform is not None else GainTransform()
    with open_movie(movie, gain=gain, dark=dark, gain_transform=transform) as reader:
        pixel = pixel_size_angstroms or reader.pixel_size_angstroms
        if not pixel or pixel <= 0:
            raise InvalidInputError(
                "the movie's header has no pixel size: give it (--pixel-size)", path=movie
            )
        try:
            unblur.check_movie_geometry(reader.shape, float(pixel), params)
        except ValueError as error:
            raise InvalidInputError(str(error), path=movie) from None
        last = params.last_frame or reader.n_frames
        if not 1 <= params.first_frame <= last <= reader.n_frames:
            raise InvalidInputError(
                f"frames to sum {params.first_frame}..{last} are outside the movie's "
                f"1..{reader.n_frames} frames (first/last frame)",
                path=movie,
            )
        result = unblur.align_movie(
            reader,
            pixel_size_angstroms=float(pixel),
            params=params,
            threads=threads,
            progress=progress,
        )
        n_frames = reader.n_frames
    out_pixel = result.pixel_size_angstroms
    mrc.write(output, result.sum, voxel_size_angstroms=out_pixel)
    summary: dict[str, Any] = {
        "input": os.fspath(movie),
        "output": os.fspath(output),
        "n_frames": int(n_frames),
        "x_size": int(result.sum.shape[1]),
        "y_size": int(result.sum.shape[0]),
        "pixel_size_angstroms": float(pixel),
        "output_pixel_size_angstroms": float(out_pixel),
        "shifts_x": [float(v) for v in result.shifts_x_angstroms],
        "shifts_y": [float(v) for v in result.shifts_y_angstroms],
        "shift_convention": SHIFT_CONVENTION,
        "iterations": dict(result.iterations),
        "prebinning_factor": int(result.prebinning_factor),
    }
    if spectrum_output is not None:
        spectrum = unblur.amplitude_spectrum_image(result.unfiltered_sum_spectrum, result.sum.shape)
        mrc.write(spectrum_output, spectrum, voxel_size_angstroms=out_pixel)
        summary["spectrum"] = os.fspath(spectrum_output)
    if scaled_output is not None:
        small = unblur.scaled_image(result.sum)
        scaled_pixel = out_pixel * result.sum.shape[1] / small.shape[1]
        mrc.write(scaled_output, small, voxel_size_angstroms=scaled_pixel)
        summary["scaled_sum"] = os.fspath(scaled_output)
    if shifts_output is not None:
        lines = [
            f"{x:12.4f} {y:12.4f}"
            for x, y in zip(summary["shifts_x"], summary["shifts_y"], strict=True)
        ]
        Path(shifts_output).write_text("\n".join(lines) + "\n")
        summary["shifts_file"] = os.fspath(shifts_output)
    summary["seconds"] = round(time.monotonic() - started, 3)
    return summary


class AlignMovies(Action):
    """cisTEM's Align Movies (module docstring)."""

    name = "align_movies"
    title = "Align Movies"
    parameters = (
        Parameter("movie_group", "int", 0, "movie group to align (0 = all movies)", minimum=0),
        Parameter(
            "min_shift", "float", 2.0, "minimum shift for the initial search (Å)",
            minimum=0.0, expert=True,
        ),
        Parameter(
            "max_shift", "float", 40.0, "outer shift limit per round (Å)",
            minimum=0.1, expert=True,
        ),
        Parameter("exposure_filter", "bool", True, "weight the sum by the exposure filter"),
        Parameter(
            "restore_power", "bool", True, "restore the noise power after exposure weighting",
            expert=True,
        ),
        Parameter(
            "termination_threshold", "float", 1.0, "stop when no frame moves more (Å)",
            minimum=0.0, expert=True,
        ),
        Parameter(
            "max_iterations", "int", 10, "maximum rounds per pass", minimum=1, maximum=1000,
            expert=True,
        ),
        Parameter(
            "bfactor", "float", 1500.0, "B-factor applied to the reference (Å²)",
            minimum=0.0, expert=True,
        ),
        Parameter(
            "mask_central_cross", "bool", True, "mask the central cross of the reference",
            expert=True,
        ),
        Parameter(
            "horizontal_mask", "int", 1, "half-width of the horizontal mask (Fourier px)",
            minimum=0, expert=True,
        ),
        Parameter(
            "vertical_mask", "int", 1, "half-width of the vertical mask (Fourier px)",
            minimum=0, expert=True,
        ),
        Parameter(
            "pre_exposure", "float", 0.0, "exposure before the first frame (e/Å²)",
            minimum=0.0, expert=True,
        ),
        Parameter("first_frame", "int", 1, "first frame to sum (from 1)", minimum=1, expert=True),
        Parameter(
            "last_frame", "int", 0, "last frame to sum (0 = the last)", minimum=0, expert=True
        ),
    )

    def start(
        self, parameters: Mapping[str, JSONLike], *, project: Any = None
    ) -> tuple[JSONLike, Stage]:
        """Return one final stage with a self-contained task per movie of the group.

        Parameters
        ----------
        parameters
            Validated parameters.
        project
            The open project (required: the movies come from it).

        Returns
        -------
        tuple
            ``({"n_movies": N}, stage)``; task keys are the movie asset ids.

        Raises
        ------
        InvalidInputError
            No project, an unknown group, or no movies to align.
        """
        if project is None:
            raise InvalidInputError("align_movies needs a project (its movies are aligned)")
        group = int(parameters["movie_group"])
        try:
            members = project.group_members("movie", group)
        except Exception as error:  # ProjectError for an unknown group
            raise InvalidInputError(f"parameter 'movie_group': {error}") from None
        movies = {int(m["movie_asset_id"]): m for m in project.movies()}
        settings = {name: parameters[name] for name in _COLUMNS}
        tasks = []
        for movie_id in members:
            movie = movies.get(int(movie_id))
            if movie is None:
                continue
            correct = bool(movie.get("correct_mag_distortion") or 0)
            payload = {
                "movie_asset_id": int(movie_id),
                "filename": str(movie["filename"]),
                "name": str(movie.get("name") or Path(str(movie["filename"])).stem),
                "pixel_size": float(movie["pixel_size"]),
                "voltage": float(movie["voltage"]),
                "spherical_aberration": float(movie.get("spherical_aberration") or 2.7),
                "exposure_per_frame": float(movie["dose_per_frame"]),
                "gain_filename": str(movie.get("gain_filename") or ""),
                "dark_filename": str(movie.get("dark_filename") or ""),
                "output_binning_factor": float(movie.get("output_binning_factor") or 1.0),
                "mag_distortion": (
                    [
                        float(movie.get("mag_distortion_angle") or 0.0),
                        float(movie.get("mag_distortion_major_scale") or 1.0),
                        float(movie.get("mag_distortion_minor_scale") or 1.0),
                    ]
                    if correct
                    else None
                ),
                "protein_is_white": bool(movie.get("protein_is_white") or 0),
                **settings,
            }
            tasks.append(
                TaskSpec(key=str(movie_id), payload=payload, label=f"align {payload['name']}")
            )
        if not tasks:
            raise InvalidInputError(
                f"movie group {group} has no movies to align; import movies first"
            )
        return {"n_movies": len(tasks)}, Stage(tasks=tuple(tasks), final=True, label="align")

    def run_task(
        self, payload: Mapping[str, JSONLike], context: TaskContext
    ) -> dict[str, JSONLike]:
        """Align one movie; write sum, spectrum and scaled sum into the scratch directory.

        Parameters
        ----------
        payload
            One payload from :meth:`start`.
        context
            Scratch directory, threads, progress.

        Returns
        -------
        dict
            The summary of :func:`align_movie_file` plus ``movie_asset_id``,
            ``voltage``, ``spherical_aberration``, ``protein_is_white``.
        """
        movie_id = int(payload["movie_asset_id"])
        scratch = Path(context.scratch_dir)
        scratch.mkdir(parents=True, exist_ok=True)
        stem = f"align_{movie_id}_{context.task_id}_{context.attempt}"
        params = unblur_parameters(payload)
        summary = align_movie_file(
            str(payload["filename"]),
            output=scratch / f"{stem}_sum.mrc",
            params=params,
            pixel_size_angstroms=float(payload["pixel_size"]),
            gain=str(payload["gain_filename"]) or None,
            dark=str(payload["dark_filename"]) or None,
            spectrum_output=scratch / f"{stem}_spectrum.mrc",
            scaled_output=scratch / f"{stem}_scaled.mrc",
            threads=context.threads,
            progress=context.report_progress,
        )
        summary.update(
            movie_asset_id=movie_id,
            movie_filename=str(payload["filename"]),
            voltage=float(payload["voltage"]),
            spherical_aberration=float(payload["spherical_aberration"]),
            protein_is_white=bool(payload["protein_is_white"]),
            settings={name: payload[name] for name in _COLUMNS},
        )
        return summary

    def record(
        self, project: Any, job_id: int, task_key: str, result: Mapping[str, JSONLike]
    ) -> None:
        """Move the outputs into ``Assets/Images`` and record the alignment and the image.

        Parameters
        ----------
        project
            The open project.
        job_id
            The job (``ALIGNMENT_JOB_ID``).
        task_key
            The movie asset id.
        result
            What :meth:`run_task` returned.
        """
        movie_id = int(result["movie_asset_id"])
        movie_filename = str(result["movie_filename"])
        n = project.previous_alignment_count(movie_id)
        layout = project.layout
        targets = {
            "output": layout.aligned_sum_path(movie_filename, movie_id, n),
            "spectrum": layout.amplitude_spectrum_path(movie_filename, movie_id, n),
            "scaled_sum": layout.scaled_sum_path(movie_filename, movie_id, n),
        }
        for key, target in targets.items():
            adopt_file(str(result.get(key) or ""), target)
        settings = dict(result.get("settings") or {})
        columns: dict[str, Any] = {}
        for name, column in _COLUMNS.items():
            value = settings.get(name)
            columns[column] = int(value) if isinstance(value, bool) else value
        last = int(settings.get("last_frame") or 0)
        columns["SHOULD_INCLUDE_ALL_FRAMES_IN_SUM"] = int(
            int(settings.get("first_frame") or 1) == 1 and last in (0, int(result["n_frames"]))
        )
        columns["PIXEL_SIZE"] = float(result["pixel_size_angstroms"])
        columns["FINAL_PIXEL_SIZE"] = float(result["output_pixel_size_angstroms"])
        columns["VOLTAGE"] = float(result["voltage"])
        alignment_id = project.add_movie_alignment(
            movie_id,
            output_file=targets["output"],
            x_shifts_angstroms=[float(v) for v in result["shifts_x"]],
            y_shifts_angstroms=[float(v) for v in result["shifts_y"]],
            job_id=int(job_id),
            parameters=columns,
        )
        project.add_image(
            targets["output"],
            pixel_size_angstroms=float(result["output_pixel_size_angstroms"]),
            voltage_kv=float(result["voltage"]),
            spherical_aberration_mm=float(result["spherical_aberration"]),
            parent_movie_id=movie_id,
            alignment_id=alignment_id,
            protein_is_white=bool(result["protein_is_white"]),
            x_size=int(result["x_size"]),
            y_size=int(result["y_size"]),
        )


ACTION = AlignMovies
"""The action class this module provides (see :data:`cistemd.actions.base.ACTION_MODULES`)."""
