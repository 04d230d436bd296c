"""Find CTF: CTFFIND4-class estimation of every image of a group (cisTEM's Find CTF panel).

One task per image. A task reads the image -- or, when ``input_is_movie`` is
on and the image has a parent movie, that movie's frames summed in blocks of
``frames_to_average`` (dark/gain applied) -- runs
:func:`cistemd.kernels.ctffind.estimate_ctf`, and writes under its scratch
directory the diagnostic MRC, the results ``.txt`` and the ``_avrot.txt``
curves. :meth:`FindCTF.record` moves them to ``Assets/CTF/<image>_CTF_<n>.*``
(``n`` = previous estimations of the image) and adds a row to
``ESTIMATED_CTF_PARAMETERS`` with cisTEM's column names, which becomes the
image's current CTF.

:func:`run_ctffind_on_file` is the same work for one file, shared with
``cistem ctffind``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cistemd.actions.base import Action, JSONLike, Parameter, Stage, TaskContext, TaskSpec
from cistemd.errors import InvalidInputError
from cistemd.project.layout import adopt_file

__all__ = ["ACTION", "FindCTF", "read_image_or_movie", "run_ctffind_on_file"]


def read_image_or_movie(
    path: str | os.PathLike[str],
    *,
    gain: str | None = None,
    dark: str | None = None,
    frames_to_average: int = 1,
) -> tuple[Any, int]:
    """Return a 2-D image, or a movie's frames summed in blocks, from an MRC or TIFF file.

    Parameters
    ----------
    path
        Micrograph (MRC) or movie (MRC stack, TIFF).
    gain, dark
        Optional references for movies (``corrected = (raw − dark) · gain``).
    frames_to_average
        Movie frames summed per block (read one at a time, so only the block
        sums are in memory).

    Returns
    -------
    tuple
        ``(data, n_frames)``: ``(ny, nx)`` float32 for single images,
        ``(n_blocks, ny, nx)`` block sums for movies.

    Raises
    ------
    InvalidInputError
        If the file cannot be read.
    """
    import numpy as np

    from cistemd.io import movie

    block = max(1, int(frames_to_average))
    with movie.open_movie(path, gain=gain or None, dark=dark or None) as reader:
        n_frames = len(reader)
        if n_frames == 1:
            return np.asarray(reader.frame(0), dtype=np.float32), 1
        n_blocks = -(-n_frames // block)
        sums = np.zeros((n_blocks, *reader.shape), dtype=np.float32)
        for index in range(n_frames):
            sums[index // block] += reader.frame(index)
        return sums, n_frames


def _settings_from(parameters: Mapping[str, Any]) -> Any:
    from cistemd.kernels.ctffind import CTFFindSettings

    return CTFFindSettings(
        box_size=int(parameters["box_size"]),
        min_resolution_angstroms=float(parameters["min_resolution"]),
        max_resolution_angstroms=float(parameters["max_resolution"]),
        min_defocus_angstroms=float(parameters["min_defocus"]),
        max_defocus_angstroms=float(parameters["max_defocus"]),
        defocus_step_angstroms=float(parameters["defocus_step"]),
        exhaustive_search=bool(parameters["large_astigmatism_expected"]),
        astigmatism_tolerance_angstroms=(
            float(parameters["astigmatism_tolerance"])
            if parameters["restrain_astigmatism"]
            else -100.0
        ),
        find_phase_shift=bool(parameters["find_phase_shift"]),
        min_phase_shift_radians=math.radians(float(parameters["min_phase_shift"])),
        max_phase_shift_radians=math.radians(float(parameters["max_phase_shift"])),
        phase_shift_step_radians=math.radians(float(parameters["phase_shift_step"])),
        resample=bool(parameters.get("resample", True)),
    )


def run_ctffind_on_file(
    input_path: str | os.PathLike[str],
    *,
    parameters: Mapping[str, Any],
    diagnostic_path: str | os.PathLike[str] | None = None,
    gain: str | None = None,
    dark: str | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """Estimate the CTF of one file and write CTFFIND's three outputs next to the diagnostic.

    Parameters
    ----------
    input_path
        Image or movie.
    parameters
        ``pixel_size``, ``voltage``, ``spherical_aberration``,
        ``amplitude_contrast``, ``frames_to_average`` and the search
        parameters of :class:`FindCTF` (``box_size`` ... ``phase_shift_step``
        in degrees).
    diagnostic_path
        Where to write the diagnostic MRC; the ``.txt`` and ``_avrot.txt``
        go next to it. ``None`` writes nothing.
    gain, dark
        Movie references.
    threads
        FFT workers.

    Returns
    -------
    dict
        ``defocus_1``, ``defocus_2``, ``astigmatism_angle``, ``phase_shift``
        (rad), ``score``, ``fit_resolution``, ``aliasing_resolution``,
        ``confident``, ``warnings``, ``n_frames`` and the output paths.
    """
    from cistemd.io import ctffind_text, mrc
    from cistemd.kernels.ctffind import diagnostic_image, estimate_ctf

    data, n_frames = read_image_or_movie(
        input_path,
        gain=gain,
        dark=dark,
        frames_to_average=int(parameters.get("frames_to_average", 1)),
    )
    settings = _settings_from(parameters)
    result = estimate_ctf(
        data,
        pixel_size_angstroms=float(parameters["pixel_size"]),
        voltage_kv=float(parameters["voltage"]),
        spherical_aberration_mm=float(parameters["spherical_aberration"]),
        amplitude_contrast=float(parameters["amplitude_contrast"]),
        settings=settings,
        threads=threads,
    )
    summary: dict[str, Any] = {
        "input": os.path.abspath(input_path),
        "defocus_1": result.defocus_1_angstroms,
        "defocus_2": result.defocus_2_angstroms,
        "astigmatism_angle": result.astigmatism_angle_degrees,
        "phase_shift": result.phase_shift_radians,
        "score": result.score,
        "fit_resolution": result.fit_resolution_angstroms,
        "aliasing_resolution": result.aliasing_resolution_angstroms,
        "confident": result.confident,
        "significance": result.significance,
        "warnings": list(result.warnings),
        "n_frames": n_frames,
        "spectrum_pixel_size": result.spectrum_pixel_size_angstroms,
        "n_tiles": result.n_tiles,
    }
    if diagnostic_path is None:
        return summary
    diagnostic = Path(diagnostic_path)
    text_path = diagnostic.with_suffix(".txt")
    avrot_path = diagnostic.with_name(diagnostic.stem + "_avrot.txt")
    image = diagnostic_image(
        result.filtered_spectrum,
        result.ctf,
        spectrum_pixel_size_angstroms=result.spectrum_pixel_size_angstroms,
        min_resolution_angstroms=settings.min_resolution_angstroms,
    )
    mrc.write(diagnostic, image, voxel_size_angstroms=result.spectrum_pixel_size_angstroms)
    header = {
        "pixel_size": result.spectrum_pixel_size_angstroms,
        "voltage": parameters["voltage"],
        "spherical_aberration": parameters["spherical_aberration"],
        "amplitude_contrast": parameters["amplitude_contrast"],
        "box_size": settings.box_size,
        "min_resolution": settings.min_resolution_angstroms,
        "max_resolution": settings.max_resolution_angstroms,
        "min_defocus": settings.min_defocus_angstroms,
        "max_defocus": settings.max_defocus_angstroms,
    }
    from cistemd import __version__

    program = f"cistemd ctffind {__version__}"
    ctffind_text.write_results(
        text_path,
        [
            {
                "micrograph_number": 1,
                "defocus_1": result.defocus_1_angstroms,
                "defocus_2": result.defocus_2_angstroms,
                "astigmatism_angle": result.astigmatism_angle_degrees,
                "phase_shift": result.phase_shift_radians,
                "score": result.score,
                "fit_resolution": result.fit_resolution_angstroms,
            }
        ],
        input_file=str(input_path),
        settings=header,
        program=program,
    )
    curves = result.curves
    ctffind_text.write_avrot(
        avrot_path,
        [
            {
                "spatial_frequency": curves.spatial_frequency,
                "rotational_average": curves.rotational_average,
                "equiphase_average": curves.equiphase_average,
                "ctf_fit": curves.ctf_fit,
                "quality_of_fit": curves.quality_of_fit,
                "noise_two_sigma": curves.noise_two_sigma,
            }
        ],
        input_file=str(input_path),
        settings=header,
        program=program,
    )
    summary.update(
        diagnostic=str(diagnostic.resolve()),
        text=str(text_path.resolve()),
        avrot=str(avrot_path.resolve()),
    )
    return summary


_SEARCH_PARAMETERS = (
    Parameter("amplitude_contrast", "float", 0.07, "amplitude contrast fraction", 0.0, 0.99),
    Parameter("box_size", "int", 512, "spectrum box, pixels", 128, 4096),
    Parameter("min_resolution", "float", 30.0, "lowest resolution fitted, Å", 1.0, 50000.0),
    Parameter("max_resolution", "float", 5.0, "highest resolution fitted, Å", 0.5, 1000.0),
    Parameter("min_defocus", "float", 5000.0, "lowest defocus searched, Å", 1.0),
    Parameter("max_defocus", "float", 50000.0, "highest defocus searched, Å", 1.0),
    Parameter("defocus_step", "float", 100.0, "defocus search step, Å", 1.0),
    Parameter(
        "large_astigmatism_expected",
        "bool",
        False,
        "slower, exhaustive search (large astigmatism expected)",
        expert=True,
    ),
    Parameter("restrain_astigmatism", "bool", False, "restrain the astigmatism", expert=True),
    Parameter(
        "astigmatism_tolerance", "float", 500.0, "tolerated astigmatism, Å", 1.0, expert=True
    ),
    Parameter("find_phase_shift", "bool", False, "find an additional phase shift (phase plate)"),
    Parameter("min_phase_shift", "float", 0.0, "minimum phase shift, degrees", -360.0, 360.0),
    Parameter("max_phase_shift", "float", 180.0, "maximum phase shift, degrees", -360.0, 360.0),
    Parameter("phase_shift_step", "float", 10.0, "phase shift step, degrees", 0.1, 180.0),
)


class FindCTF(Action):
    """cisTEM's Find CTF action (module docstring)."""

    name = "find_ctf"
    title = "Find CTF"
    parameters = (
        Parameter("image_group", "int", 0, "image group to process (0 = all images)", 0),
        Parameter(
            "input_is_movie",
            "bool",
            True,
            "estimate from the parent movie's frames when the image has one",
        ),
        Parameter("frames_to_average", "int", 3, "movie frames summed per spectrum", 1, 1000),
        *_SEARCH_PARAMETERS,
    )

    def validate(self, values: Mapping[str, JSONLike]) -> dict[str, JSONLike]:
        """Check the parameters; the limits must be ordered.

        Parameters
        ----------
        values
            The parameters given.

        Returns
        -------
        dict
            Every parameter, defaults filled in.

        Raises
        ------
        InvalidInputError
            Naming the bad parameter.
        """
        checked = super().validate(values)
        if checked["max_resolution"] >= checked["min_resolution"]:
            raise InvalidInputError(
                "parameter 'max_resolution' must be finer (smaller, in Å) than 'min_resolution'"
            )
        if checked["min_defocus"] > checked["max_defocus"]:
            raise InvalidInputError("parameter 'min_defocus' is larger than 'max_defocus'")
        if checked["box_size"] % 2:
            raise InvalidInputError("parameter 'box_size' must be even")
        if checked["find_phase_shift"] and checked["max_phase_shift"] < checked["min_phase_shift"]:
            raise InvalidInputError("parameter 'max_phase_shift' is below 'min_phase_shift'")
        return checked

    def start(
        self, parameters: Mapping[str, JSONLike], *, project: Any = None
    ) -> tuple[JSONLike, Stage]:
        """Return one final stage with a task per image of the group.

        Parameters
        ----------
        parameters
            Validated parameters.
        project
            The open project (required).

        Returns
        -------
        tuple
            ``({}, stage)``; task keys are the image asset ids.

        Raises
        ------
        InvalidInputError
            Without a project, or when the group holds no image.
        """
        if project is None:
            raise InvalidInputError("find_ctf needs a project (its image assets)")
        members = project.group_members("image", int(parameters["image_group"]))
        images = {int(row["image_asset_id"]): row for row in project.images()}
        movies = {int(row["movie_asset_id"]): row for row in project.movies()}
        tasks = []
        for image_id in members:
            image = images.get(image_id)
            if image is None:
                continue
            movie = movies.get(int(image.get("parent_movie_id") or -1))
            use_movie = bool(parameters["input_is_movie"]) and movie is not None
            payload: dict[str, JSONLike] = {
                "image_asset_id": image_id,
                "image_filename": str(image["filename"]),
                "input": str(movie["filename"]) if use_movie and movie else str(image["filename"]),
                "is_movie": use_movie,
                "gain": str(movie.get("gain_filename") or "") if use_movie and movie else "",
                "dark": str(movie.get("dark_filename") or "") if use_movie and movie else "",
                "pixel_size": float(
                    movie["pixel_size"] if use_movie and movie else image["pixel_size"]
                ),
                "voltage": float(image["voltage"]),
                "spherical_aberration": float(image["spherical_aberration"]),
                "frames_to_average": int(parameters["frames_to_average"]) if use_movie else 1,
                **{p.name: parameters[p.name] for p in _SEARCH_PARAMETERS},
            }
            tasks.append(
                TaskSpec(key=str(image_id), payload=payload, label=Path(payload["input"]).name)
            )
        if not tasks:
            raise InvalidInputError(
                f"parameter 'image_group': group {parameters['image_group']} holds no image; "
                "import or align images first"
            )
        return {}, Stage(tasks=tuple(tasks), final=True, label="find CTF")

    def run_task(
        self, payload: Mapping[str, JSONLike], context: TaskContext
    ) -> dict[str, JSONLike]:
        """Estimate one image's CTF; write its outputs under the scratch directory.

        Parameters
        ----------
        payload
            One payload from :meth:`start`.
        context
            Scratch directory and threads.

        Returns
        -------
        dict
            The estimate (see :func:`run_ctffind_on_file`) and ``image_asset_id``.
        """
        scratch = Path(context.scratch_dir)
        scratch.mkdir(parents=True, exist_ok=True)
        image_id = int(payload["image_asset_id"])
        diagnostic = scratch / f"ctf_{image_id}_attempt_{context.attempt}.mrc"
        context.report_progress(0.0, f"estimating the CTF of {payload['input']}")
        summary = run_ctffind_on_file(
            str(payload["input"]),
            parameters=payload,
            diagnostic_path=diagnostic,
            gain=str(payload.get("gain") or "") or None,
            dark=str(payload.get("dark") or "") or None,
            threads=max(1, int(context.threads)),
        )
        context.report_progress(1.0, "done")
        summary["image_asset_id"] = image_id
        summary["is_movie"] = bool(payload.get("is_movie"))
        summary["image_filename"] = str(payload["image_filename"])
        summary["parameters"] = {
            key: payload[key]
            for key in (
                "pixel_size", "voltage", "spherical_aberration", "frames_to_average",
                *(p.name for p in _SEARCH_PARAMETERS),
            )
        }  # fmt: skip
        return summary

    def record(
        self, project: Any, job_id: int, task_key: str, result: Mapping[str, JSONLike]
    ) -> None:
        """Move the outputs into ``Assets/CTF`` and add the ``ESTIMATED_CTF_PARAMETERS`` row.

        Parameters
        ----------
        project
            The open project.
        job_id
            The job.
        task_key
            The image asset id.
        result
            :meth:`run_task`'s result.
        """
        image_id = int(result["image_asset_id"])
        n = project.previous_ctf_estimation_count(image_id)
        layout = project.layout
        image_filename = str(result["image_filename"])
        targets = {
            "diagnostic": layout.ctf_diagnostic_path(image_filename, n),
            "text": layout.ctf_output_text_path(image_filename, n),
            "avrot": layout.ctf_avrot_path(image_filename, n),
        }
        for key, target in targets.items():
            if adopt_file(str(result[key]), target) is None:
                raise FileNotFoundError(f"the task's {key} output {result[key]} is missing")
        used: Mapping[str, Any] = result["parameters"]
        columns = {
            "ESTIMATED_ON_MOVIE_FRAMES": int(bool(result.get("is_movie"))),
            "AMPLITUDE_CONTRAST": float(used["amplitude_contrast"]),
            "BOX_SIZE": int(used["box_size"]),
            "MIN_RESOLUTION": float(used["min_resolution"]),
            "MAX_RESOLUTION": float(used["max_resolution"]),
            "MIN_DEFOCUS": float(used["min_defocus"]),
            "MAX_DEFOCUS": float(used["max_defocus"]),
            "DEFOCUS_STEP": float(used["defocus_step"]),
            "RESTRAIN_ASTIGMATISM": int(bool(used["restrain_astigmatism"])),
            "TOLERATED_ASTIGMATISM": float(used["astigmatism_tolerance"]),
            "FIND_ADDITIONAL_PHASE_SHIFT": int(bool(used["find_phase_shift"])),
            "MIN_PHASE_SHIFT": math.radians(float(used["min_phase_shift"])),
            "MAX_PHASE_SHIFT": math.radians(float(used["max_phase_shift"])),
            "PHASE_SHIFT_STEP": math.radians(float(used["phase_shift_step"])),
            "NUMBER_OF_FRAMES_AVERAGED": int(used["frames_to_average"]),
            "LARGE_ASTIGMATISM_EXPECTED": int(bool(used["large_astigmatism_expected"])),
            "RESAMPLE_IF_NESCESSARY": 1,
            "TARGET_PIXEL_SIZE": 1.4,
            "DETERMINE_TILT": 0,
            "FIT_NODES": 0,
        }
        project.add_ctf_estimate(
            image_id,
            defocus1_angstroms=float(result["defocus_1"]),
            defocus2_angstroms=float(result["defocus_2"]),
            defocus_angle_degrees=float(result["astigmatism_angle"]),
            additional_phase_shift_degrees=math.degrees(float(result["phase_shift"])),
            score=float(result["score"]),
            detected_ring_resolution_angstroms=float(result["fit_resolution"]),
            detected_alias_resolution_angstroms=float(result["aliasing_resolution"]),
            output_diagnostic_file=targets["diagnostic"],
            job_id=int(job_id),
            parameters=columns,
        )


ACTION = FindCTF
"""The action class this module provides (see :data:`cistemd.actions.base.ACTION_MODULES`)."""
