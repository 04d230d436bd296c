"""``generate_3d`` (cisTEM's "Generate 3D"): reconstruct a refinement's class from its particles.

cisTEM runs ``reconstruct3d`` with dump files over particle chunks, then
``merge3d`` (reference §2.6, defaults §1.4). So does this action:

1. :meth:`Generate3D.start` reads the refinement (its particles' poses, CTF,
   scores) and its package (stack, pixel size, symmetry, mass), writes the
   parameters to ``Assets/Parameters/generate3d_input_par_<ref>_<class>.star``
   and plans one *dump* task per chunk of particles. Everything computed over
   all particles -- score threshold, mean occupancy/sigma/score, the
   score-vs-defocus slope -- goes into every payload, so chunks are weighted
   exactly as one pass would weight them.
2. Each dump task inserts its chunk (:func:`insert_particles`) and writes a
   dump file (:mod:`cistemd.io.dump`) under its scratch directory.
3. One *merge* task adds the dumps and writes the filtered map, the half maps,
   an orthogonal-view image and the statistics file (:func:`finalize`).
4. :meth:`Generate3D.record` moves the maps to
   ``Assets/Volumes/generate3d_volume_<job>_<ref>_<class>[_map1|_map2].mrc``
   (orthogonal views to ``Assets/Volumes/OrthViews``) and writes the volume
   asset, ``RECONSTRUCTION_LIST`` and the class's resolution statistics.

The same functions drive ``cistem reconstruct3d`` and ``cistem merge3d``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cistemd.actions.base import Action, JSONLike, Parameter, Stage, TaskContext, TaskSpec
from cistemd.errors import InvalidInputError

__all__ = [
    "ACTION",
    "Generate3D",
    "SelectionStatistics",
    "finalize",
    "insert_particles",
    "orthogonal_view_image",
    "read_parameters",
    "selection_statistics",
]

logger = logging.getLogger(__name__)

_BATCH = 256  # particles read and inserted at a time


def read_parameters(path: str | os.PathLike[str]) -> Any:
    """Read a cisTEM ``.star`` or Frealign ``.par`` parameter file (by extension/content)."""
    from cistemd.io import cistem_star, par

    name = os.fspath(path).lower()
    if name.endswith(".par"):
        return par.read(path)
    return cistem_star.read(path)


@dataclass(frozen=True, slots=True)
class SelectionStatistics:
    """Values computed over *all* selected particles, shared by every chunk.

    Attributes
    ----------
    score_minimum
        Particles with a (defocus-adjusted) score below this are skipped.
    mean_occupancy, mean_sigma, mean_score
        Means over the selected particles (weights are relative to them).
    score_defocus_slope
        Slope of score vs mean defocus removed by "adjust scores" (0 = off).
    mean_defocus
        Mean defocus the slope is taken about, Å.
    half_block
        Even/odd half sets alternate in blocks of this many stack positions.
    n_selected
        Number of particles selected.
    """

    score_minimum: float
    mean_occupancy: float
    mean_sigma: float
    mean_score: float
    score_defocus_slope: float
    mean_defocus: float
    half_block: int
    n_selected: int


def _adjusted_scores(params: Any, slope: float, mean_defocus: float) -> np.ndarray:
    defocus = 0.5 * (params.get("defocus_1") + params.get("defocus_2"))
    return np.asarray(params.get("score"), dtype=np.float64) - slope * (defocus - mean_defocus)


def _eligible(params: Any, first: int, last: int) -> np.ndarray:
    positions = params.get("position_in_stack")
    keep = (params.get("occupancy") != 0) & (params.get("image_is_active") >= 0)
    keep &= positions >= first
    if last > 0:
        keep &= positions <= last
    return np.asarray(keep, dtype=bool)


def selection_statistics(
    params: Any,
    *,
    score_threshold: float = 0.0,
    adjust_scores: bool = True,
) -> SelectionStatistics:
    """Select particles as cisTEM does and return the values every chunk needs.

    Parameters
    ----------
    params
        :class:`~cistemd.io.parameters.ParticleParameters` of all particles.
    score_threshold
        cisTEM's score threshold (:func:`~cistemd.kernels.reconstruct.score_threshold_value`).
    adjust_scores
        Remove the linear score-vs-defocus dependence first.

    Every value (means, threshold, half-set blocks) is taken over the whole
    file, so that chunks inserted separately (``--first/--last``, dump tasks)
    are weighted and split exactly as one pass would.
    """
    from cistemd.kernels.reconstruct import score_threshold_value

    eligible = _eligible(params, 1, 0)
    defocus = 0.5 * (params.get("defocus_1") + params.get("defocus_2"))
    scores = np.asarray(params.get("score"), dtype=np.float64)
    slope, mean_defocus = 0.0, float(defocus[eligible].mean()) if eligible.any() else 0.0
    if adjust_scores and eligible.sum() >= 3 and np.ptp(defocus[eligible]) > 0:
        centred = defocus[eligible] - mean_defocus
        slope = float(np.dot(centred, scores[eligible] - scores[eligible].mean())
                      / np.dot(centred, centred))
    adjusted = _adjusted_scores(params, slope, mean_defocus)
    minimum = score_threshold_value(adjusted[eligible], score_threshold)
    selected = eligible & (adjusted >= minimum)
    if not selected.any():
        raise InvalidInputError(
            "no particle is selected for reconstruction (all have occupancy 0, are inactive, "
            "lie outside the first/last range or fall below the score threshold)"
        )
    sigma = np.asarray(params.get("sigma"), dtype=np.float64)[selected]
    positive = sigma[sigma > 0]
    return SelectionStatistics(
        score_minimum=float(minimum),
        mean_occupancy=float(np.asarray(params.get("occupancy"))[selected].mean()),
        mean_sigma=float(positive.mean()) if positive.size else 1.0,
        mean_score=float(adjusted[selected].mean()),
        score_defocus_slope=slope,
        mean_defocus=mean_defocus,
        half_block=max(1, len(params) // 100),
        n_selected=int(selected.sum()),
    )


def _normalize(images: np.ndarray, radius_px: float) -> np.ndarray:
    """Subtract the mean outside ``radius_px`` and divide by its standard deviation.

    Images whose background is (numerically) noise-free are only shifted.
    """
    n = images.shape[-1]
    coords = np.arange(n) - n // 2
    outside = (coords[:, None] ** 2 + coords[None, :] ** 2) > min(radius_px, n / 2 - 1) ** 2
    if outside.sum() < 16:
        outside = (coords[:, None] ** 2 + coords[None, :] ** 2) > (0.45 * n) ** 2
    background = images[:, outside]
    mean = background.mean(axis=1)
    std = background.std(axis=1)
    # Noise-free images (simulations) have no background noise to scale by.
    overall = images.reshape(images.shape[0], -1).std(axis=1)
    std = np.where(std > 1e-3 * overall, std, 1.0)
    return ((images - mean[:, None, None]) / std[:, None, None]).astype(np.float32)


def insert_particles(
    reconstruction: Any,
    stack_path: str | os.PathLike[str],
    params: Any,
    selection: SelectionStatistics,
    *,
    positions: tuple[int, int] | None = None,
    pixel_size_angstroms: float,
    symmetry: str = "C1",
    score_weight_conversion: float = 2.0,
    resolution_limit_angstroms: float = 0.0,
    normalize_radius_angstroms: float = 0.0,
    invert: bool = False,
    threads: int = 1,
    progress: Any = None,
) -> int:
    """Insert the selected particles (optionally only stack positions in ``positions``).

    Parameters
    ----------
    reconstruction
        :class:`~cistemd.kernels.reconstruct.Reconstruction` to add to (its box
        may be smaller than the stack's: images are then cropped centrally).
    stack_path
        MRC particle stack; ``position_in_stack`` is 1-based.
    params
        All particles' parameters.
    selection
        From :func:`selection_statistics` over all particles.
    positions
        ``(first, last)`` stack positions of this chunk (inclusive).
    pixel_size_angstroms, symmetry, score_weight_conversion, resolution_limit_angstroms
        As in ``reconstruct3d``.
    normalize_radius_angstroms
        Normalise each image by the mean and standard deviation outside this
        radius (0 = no normalisation).
    invert
        Multiply the images by −1 (white protein).
    threads
        FFT threads.
    progress
        Optional ``progress(fraction)`` callable.

    Returns
    -------
    int
        Particles inserted.
    """
    from cistemd.io import mrc
    from cistemd.kernels.reconstruct import ParticleBatch
    from cistemd.kernels.symmetry import symmetry_matrices

    try:
        operators = symmetry_matrices(symmetry)
    except ValueError as error:
        raise InvalidInputError(f"symmetry {symmetry!r}: {error}") from None
    stack = mrc.read(stack_path, mmap=True)
    if stack.ndim == 2:
        stack = stack[None]
    n_stack, box = stack.shape[0], stack.shape[-1]
    if stack.shape[-2] != box:
        raise InvalidInputError(f"particles must be square, got {stack.shape[1:]}", path=stack_path)
    adjusted = _adjusted_scores(params, selection.score_defocus_slope, selection.mean_defocus)
    keep = _eligible(params, 1, 0) & (adjusted >= selection.score_minimum)
    stack_positions = params.get("position_in_stack")
    if positions is not None:
        keep &= (stack_positions >= positions[0]) & (stack_positions <= positions[1])
    indices = np.nonzero(keep)[0]
    wanted = stack_positions[indices]
    if indices.size and (wanted.max() > n_stack or wanted.min() < 1):
        raise InvalidInputError(
            f"the parameters refer to stack position {int(stack_positions[indices].max())} but "
            f"the stack holds {n_stack} images",
            path=stack_path,
        )
    n = reconstruction.box_size
    if n > box:
        raise InvalidInputError(f"reconstruction box {n} is larger than the stack box {box}")
    start = box // 2 - n // 2
    sigma = np.asarray(params.get("sigma"), dtype=np.float64)
    occupancy = np.asarray(params.get("occupancy"), dtype=np.float64)
    halves_all = _half_sets(params, selection.half_block)
    for begin in range(0, indices.size, _BATCH):
        chunk = indices[begin : begin + _BATCH]
        images = np.asarray(stack[stack_positions[chunk] - 1], dtype=np.float32)
        if n != box:
            images = images[:, start : start + n, start : start + n]
        if invert:
            images = -images
        if normalize_radius_angstroms > 0:
            images = _normalize(images, normalize_radius_angstroms / pixel_size_angstroms)
        chunk_sigma = np.where(sigma[chunk] > 0, sigma[chunk], selection.mean_sigma)
        weights = (occupancy[chunk] / selection.mean_occupancy) / (
            chunk_sigma / selection.mean_sigma
        ) ** 2
        b_factors = (adjusted[chunk] - selection.mean_score) * score_weight_conversion
        batch = ParticleBatch(
            images=images,
            euler_degrees=np.stack(
                [params.get("phi")[chunk], params.get("theta")[chunk], params.get("psi")[chunk]],
                axis=1,
            ),
            shifts_angstroms=np.stack(
                [params.get("x_shift")[chunk], params.get("y_shift")[chunk]], axis=1
            ),
            defocus=np.stack(
                [
                    params.get("defocus_1")[chunk],
                    params.get("defocus_2")[chunk],
                    params.get("defocus_angle")[chunk],
                ],
                axis=1,
            ),
            phase_shift_degrees=params.get("phase_shift")[chunk],
            voltage_kv=params.get("microscope_voltage_kv")[chunk],
            spherical_aberration_mm=params.get("microscope_spherical_aberration_mm")[chunk],
            amplitude_contrast=params.get("amplitude_contrast")[chunk],
            weights=weights,
            score_b_factors=b_factors,
            halves=halves_all[chunk],
        )
        use_ctf = bool(np.any(batch.defocus[:, :2] != 0))
        reconstruction.insert(
            batch,
            symmetry_matrices=operators,
            use_ctf=use_ctf,
            resolution_limit_angstroms=resolution_limit_angstroms,
            workers=threads,
        )
        if progress is not None:
            progress(min(1.0, (begin + len(chunk)) / max(1, indices.size)))
    return int(indices.size)


def _half_sets(params: Any, block: int) -> np.ndarray:
    from cistemd.kernels.reconstruct import assign_half_sets

    subset = params.columns.get("assigned_subset")
    return assign_half_sets(params.get("position_in_stack"), subset, block_size=block)


def orthogonal_view_image(volume: np.ndarray) -> np.ndarray:
    """Return the three central sections of a cube side by side, ``(n, 3n)`` float32."""
    vol = np.asarray(volume, dtype=np.float32)
    n = vol.shape[0]
    return np.concatenate([vol[n // 2], vol[:, n // 2, :], vol[:, :, n // 2]], axis=1)


def _pad_to(volume: np.ndarray, box: int) -> np.ndarray:
    n = volume.shape[0]
    if n == box:
        return volume
    out = np.zeros((box, box, box), dtype=np.float32)
    start = box // 2 - n // 2
    out[start : start + n, start : start + n, start : start + n] = volume
    return out


def finalize(
    reconstruction: Any,
    *,
    output_path: str | os.PathLike[str],
    statistics_path: str | os.PathLike[str] | None,
    half_map_paths: tuple[str, str] | None = None,
    orth_view_path: str | os.PathLike[str] | None = None,
    molecular_mass_kda: float,
    inner_mask_radius_angstroms: float = 0.0,
    outer_mask_radius_angstroms: float,
    output_box: int | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """Compute statistics and maps of merged accumulators and write them (``merge3d``).

    Returns
    -------
    dict
        JSON-like summary: files, particle counts, ``resolution_0143``,
        ``resolution_05`` (Å) and the ``statistics`` curves.
    """
    from cistemd.io import mrc
    from cistemd.io.statistics import ResolutionStatistics, write_statistics
    from cistemd.kernels import resolution

    if reconstruction.particle_counts.min() == 0:
        raise InvalidInputError(
            f"both half sets need particles (got {reconstruction.particle_counts.tolist()}); "
            "use more particles or check ASSIGNED_SUBSET"
        )
    shell_stats, half_1, half_2 = resolution.compute_statistics(
        reconstruction,
        molecular_mass_kda=molecular_mass_kda,
        outer_mask_radius_angstroms=outer_mask_radius_angstroms,
        inner_mask_radius_angstroms=inner_mask_radius_angstroms,
        workers=threads,
    )
    filtered = resolution.filtered_map(reconstruction, shell_stats.part_ssnr, workers=threads)
    box = output_box or reconstruction.box_size
    psize = reconstruction.pixel_size_angstroms
    volume = _pad_to(filtered, box)
    mrc.write(output_path, volume, voxel_size_angstroms=psize, kind="volume")
    written = {"volume": os.path.abspath(output_path)}
    if half_map_paths is not None:
        for path, half in zip(half_map_paths, (half_1, half_2), strict=True):
            mrc.write(path, _pad_to(half, box), voxel_size_angstroms=psize, kind="volume")
        written["half_map_1"] = os.path.abspath(half_map_paths[0])
        written["half_map_2"] = os.path.abspath(half_map_paths[1])
    if orth_view_path is not None:
        mrc.write(orth_view_path, orthogonal_view_image(volume), voxel_size_angstroms=psize)
        written["orth_view"] = os.path.abspath(orth_view_path)
    stats = ResolutionStatistics(**asdict(shell_stats))
    if statistics_path is not None:
        write_statistics(
            statistics_path,
            stats,
            comments=[
                f"cistemd reconstruction: {int(reconstruction.particle_counts.sum())} particles, "
                f"mass {molecular_mass_kda:g} kDa, mask {inner_mask_radius_angstroms:g}-"
                f"{outer_mask_radius_angstroms:g} A"
            ],
        )
        written["statistics"] = os.path.abspath(statistics_path)
    return {
        "files": written,
        "box_size": int(box),
        "statistics_box_size": int(reconstruction.box_size),
        "pixel_size_angstroms": psize,
        "particles_per_half": [int(c) for c in reconstruction.particle_counts],
        "resolution_0143": _finite(shell_stats.resolution(0.143)),
        "resolution_05": _finite(shell_stats.resolution(0.5)),
        "statistics": {
            "shell": [int(s) for s in stats.shell],
            "resolution_angstroms": [round(float(v), 4) for v in stats.resolution_angstroms],
            "fsc": [round(float(v), 5) for v in stats.fsc],
            "part_fsc": [round(float(v), 5) for v in stats.part_fsc],
            "part_ssnr": [float(f"{v:.6g}") for v in stats.part_ssnr],
            "rec_ssnr": [float(f"{v:.6g}") for v in stats.rec_ssnr],
        },
    }


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def crop_box(box: int, pixel_size_angstroms: float, outer_mask_radius_angstroms: float) -> int:
    """Return cisTEM-style auto-crop box: even, ≥ 2 × (outer radius + 10 Å), ≤ ``box``."""
    wanted = 2.0 * (outer_mask_radius_angstroms + 10.0) / pixel_size_angstroms
    size = int(np.ceil(wanted))
    size += size % 2
    return int(min(box, max(size, 16)))


# ============================================================================ the action


def _chunk_ranges(positions: np.ndarray, per_task: int) -> list[tuple[int, int]]:
    ordered = np.sort(positions)
    ranges = []
    for begin in range(0, ordered.size, per_task):
        part = ordered[begin : begin + per_task]
        ranges.append((int(part[0]), int(part[-1])))
    return ranges


class Generate3D(Action):
    """cisTEM's Generate 3D (see the module docstring)."""

    name = "generate_3d"
    title = "Generate 3D"
    parameters = (
        Parameter("refinement_id", "int", None, "refinement whose parameters are used", minimum=1),
        Parameter("class_number", "int", 1, "class to reconstruct", minimum=1),
        Parameter(
            "outer_mask_radius",
            "float",
            0.0,
            "outer mask radius, Å (0 = 0.6 × the package's particle size)",
            minimum=0.0,
        ),
        Parameter("inner_mask_radius", "float", 0.0, "inner mask radius, Å", minimum=0.0),
        Parameter(
            "score_weight_conversion",
            "float",
            2.0,
            "score-to-weight B-factor conversion, Å² (0 = no score weighting)",
            minimum=0.0,
            expert=True,
        ),
        Parameter(
            "adjust_scores", "bool", True, "remove the score-vs-defocus trend", expert=True
        ),
        Parameter(
            "score_threshold",
            "float",
            0.0,
            "keep the best fraction (0-1) or particles above this score (>1); 0 = all",
            minimum=0.0,
            expert=True,
        ),
        Parameter(
            "resolution_limit",
            "float",
            0.0,
            "reconstruction resolution limit, Å (0 = Nyquist)",
            minimum=0.0,
            expert=True,
        ),
        Parameter("crop_images", "bool", False, "crop images to the mask (faster)", expert=True),
        Parameter("save_half_maps", "bool", False, "also keep the two half maps", expert=True),
        Parameter(
            "overwrite_statistics",
            "bool",
            True,
            "replace the class's resolution statistics with the new ones",
            expert=True,
        ),
        Parameter(
            "particles_per_task",
            "int",
            5000,
            "particles per dump task",
            minimum=1,
            expert=True,
        ),
        Parameter(
            "padding", "int", 1, "3-D Fourier oversampling (1 as cisTEM, 2 = more accurate)",
            minimum=1, maximum=2, expert=True,
        ),
    )

    def start(
        self, parameters: Mapping[str, JSONLike], *, project: Any = None
    ) -> tuple[JSONLike, Stage]:
        """Write the class's parameters and plan one dump task per particle chunk."""
        from cistemd.io import cistem_star
        from cistemd.project.refinements import refinement_particle_parameters

        if project is None:
            raise InvalidInputError("generate_3d needs a project")
        refinement_id = int(parameters["refinement_id"])
        class_number = int(parameters["class_number"])
        package, params = refinement_particle_parameters(project, refinement_id, class_number)
        psize = float(package["output_pixel_size"])
        outer = float(parameters["outer_mask_radius"]) or 0.6 * float(package["particle_size"])
        outer = min(outer, 0.5 * int(package["stack_box_size"]) * psize)
        selection = selection_statistics(
            params,
            score_threshold=float(parameters["score_threshold"]),
            adjust_scores=bool(parameters["adjust_scores"]),
        )
        params_path = project.layout.parameters_path(
            refinement_id, class_number, prefix="generate3d_input_par", extension=".star"
        )
        params_path.parent.mkdir(parents=True, exist_ok=True)
        cistem_star.write(params_path, params)
        box = int(package["stack_box_size"])
        recon_box = (
            crop_box(box, psize, outer) if bool(parameters["crop_images"]) else box
        )
        common = {
            "stack": str(package["stack_filename"]),
            "parameters_file": str(params_path),
            "pixel_size": psize,
            "symmetry": str(package["symmetry"] or "C1"),
            "molecular_mass_kda": float(package["molecular_weight"]),
            "outer_mask_radius": outer,
            "inner_mask_radius": float(parameters["inner_mask_radius"]),
            "score_weight_conversion": float(parameters["score_weight_conversion"]),
            "resolution_limit": float(parameters["resolution_limit"]),
            "invert": bool(package.get("stack_has_white_protein") or 0),
            "box": box,
            "reconstruction_box": recon_box,
            "padding": int(parameters["padding"]),
            "selection": asdict(selection),
            "record": {
                "refinement_id": refinement_id,
                "class_number": class_number,
                "inner_mask_radius": float(parameters["inner_mask_radius"]),
                "outer_mask_radius": outer,
                "resolution_limit": float(parameters["resolution_limit"]),
                "score_weight_conversion": float(parameters["score_weight_conversion"]),
                "adjust_scores": bool(parameters["adjust_scores"]),
                "crop_images": bool(parameters["crop_images"]),
                "save_half_maps": bool(parameters["save_half_maps"]),
                "overwrite_statistics": bool(parameters["overwrite_statistics"]),
            },
        }
        adjusted = _adjusted_scores(
            params, selection.score_defocus_slope, selection.mean_defocus
        )
        selected = _eligible(params, 1, 0) & (adjusted >= selection.score_minimum)
        selected_positions = params.get("position_in_stack")[selected]
        ranges = _chunk_ranges(selected_positions, int(parameters["particles_per_task"]))
        tasks = tuple(
            TaskSpec(
                key=f"dump_{index}",
                payload={**common, "kind": "dump", "index": index, "first": a, "last": b},
                label=f"insert particles {a}-{b}",
            )
            for index, (a, b) in enumerate(ranges)
        )
        plan = {"common": common, "refinement_id": refinement_id, "class_number": class_number}
        return plan, Stage(tasks=tasks, final=False, label="reconstruct3d (dump)")

    def advance(
        self,
        parameters: Mapping[str, JSONLike],
        plan_state: JSONLike,
        results: Mapping[str, JSONLike],
        *,
        project: Any = None,
    ) -> tuple[JSONLike, Stage | None]:
        """After the dump stage: one merge task over every dump; after the merge: done."""
        if plan_state.get("merged"):
            return plan_state, None
        dumps = [str(r["dump"]) for _, r in sorted(results.items()) if r.get("dump")]
        if not dumps:
            raise InvalidInputError("generate_3d: every dump task failed; nothing to merge")
        payload = {
            **plan_state["common"],
            "kind": "merge",
            "dumps": dumps,
            "save_half_maps": bool(parameters["save_half_maps"]),
        }
        state = {**plan_state, "merged": True}
        return state, Stage(
            tasks=(TaskSpec(key="merge", payload=payload, label="merge3d"),),
            final=True,
            label="merge3d",
        )

    def run_task(
        self, payload: Mapping[str, JSONLike], context: TaskContext
    ) -> dict[str, JSONLike]:
        """Insert a chunk and dump it, or merge every dump and finalise."""
        from cistemd.io.dump import read_dump, write_dump
        from cistemd.kernels.reconstruct import Reconstruction

        scratch = Path(context.scratch_dir)
        scratch.mkdir(parents=True, exist_ok=True)
        if payload["kind"] == "dump":
            params = read_parameters(str(payload["parameters_file"]))
            selection = SelectionStatistics(**payload["selection"])
            rec = Reconstruction.empty(
                int(payload["reconstruction_box"]),
                float(payload["pixel_size"]),
                padding=int(payload["padding"]),
            )
            count = insert_particles(
                rec,
                str(payload["stack"]),
                params,
                selection,
                positions=(int(payload["first"]), int(payload["last"])),
                pixel_size_angstroms=float(payload["pixel_size"]),
                symmetry=str(payload["symmetry"]),
                score_weight_conversion=float(payload["score_weight_conversion"]),
                resolution_limit_angstroms=float(payload["resolution_limit"]),
                normalize_radius_angstroms=float(payload["outer_mask_radius"]),
                invert=bool(payload["invert"]),
                threads=context.threads,
                progress=lambda f: context.report_progress(f, "inserting particles"),
            )
            dump = scratch / f"generate3d_dump_{int(payload['index'])}.npz"
            write_dump(dump, rec, symmetry=str(payload["symmetry"]))
            return {"kind": "dump", "dump": str(dump), "n_particles": count}
        dumps = [str(d) for d in payload["dumps"]]
        merged, _ = read_dump(dumps[0])
        for path in dumps[1:]:
            merged.merge(read_dump(path)[0])
        stem = "generate3d_volume"
        outputs = {
            "output_path": scratch / f"{stem}.mrc",
            "statistics_path": scratch / f"{stem}_statistics.txt",
            "orth_view_path": scratch / f"{stem}_orth.mrc",
        }
        halves = None
        if payload.get("save_half_maps"):
            halves = (str(scratch / f"{stem}_map1.mrc"), str(scratch / f"{stem}_map2.mrc"))
        summary = finalize(
            merged,
            output_path=outputs["output_path"],
            statistics_path=outputs["statistics_path"],
            half_map_paths=halves,
            orth_view_path=outputs["orth_view_path"],
            molecular_mass_kda=float(payload["molecular_mass_kda"]),
            inner_mask_radius_angstroms=float(payload["inner_mask_radius"]),
            outer_mask_radius_angstroms=float(payload["outer_mask_radius"]),
            output_box=int(payload["box"]),
            threads=context.threads,
        )
        # The dumps stay until the result is recorded: a retried merge needs them.
        return {"kind": "merge", **summary, "record": payload["record"], "dumps": dumps}

    def record(
        self, project: Any, job_id: int, task_key: str, result: Mapping[str, JSONLike]
    ) -> None:
        """Move the merge task's maps into ``Assets/Volumes`` and write the rows."""
        if result.get("kind") != "merge":
            return
        from cistemd.project.refinements import record_generate3d

        record_generate3d(project, job_id, result)
        for path in result.get("dumps", ()):
            try:
                os.remove(str(path))
            except OSError:
                logger.warning("could not remove dump %s", path)


ACTION = Generate3D
"""The action class this module provides (see :data:`cistemd.actions.base.ACTION_MODULES`)."""
