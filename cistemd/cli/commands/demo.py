"""Run the cistemd demo: a simulated dataset taken from movies to a particle stack.

Simulates movies of an apoferritin-like 24-mer (LZW TIFF, beam-induced drift,
CTF, shot noise, a detector gain reference) with known truth, then runs the
pipeline as a user would, through a cistemd daemon and its local workers:

1. create a project with cisTEM's layout in DIR/CistemDemo and import the
   movies with their gain reference;
2. Align Movies (Unblur) -- the aligned sums become images;
3. Find CTF (CTFFIND) on the aligned sums;
4. Find Particles (matched filter) with each image's estimated CTF;
5. a refinement package (boxed, normalised particle stack, O symmetry).

Every step is a job of a private daemon (its CISTEM_HOME is DIR/.cistemd, so
your own daemon and projects are never touched; it stops when the demo ends).
At the end the demo compares the results with the simulator's truth: drift
error, defocus error, picking recall/precision. DIR (default ./cistem-demo) is
recreated on every run; a directory that was not made by the demo is never
touched. Open the result with `cistem-tui DIR/CistemDemo`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

NAME = "demo"
HELP = "simulate a small dataset and import it into a new project"

MARKER = ".cistem-demo"
PROJECT_NAME = "CistemDemo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem demo`` arguments."""
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("cistem-demo"),
        help="demo directory (default ./cistem-demo)",
    )
    parser.add_argument("--movies", type=int, default=4, help="number of movies (default 4)")
    parser.add_argument(
        "--size", type=int, default=1024, help="movie edge in pixels (default 1024)"
    )
    parser.add_argument("--frames", type=int, default=16, help="frames per movie (default 16)")
    parser.add_argument("--seed", type=int, default=2024, help="random seed (default 2024)")
    parser.add_argument(
        "--import-only",
        action="store_true",
        help="stop after importing the movies (no daemon, no jobs)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _prepare_directory(directory: Path) -> None:
    from cistemd.errors import InvalidInputError

    if directory.exists():
        if not directory.is_dir():
            raise InvalidInputError(
                "exists and is not a directory; choose another --dir", path=directory
            )
        if any(directory.iterdir()) and not (directory / MARKER).exists():
            raise InvalidInputError(
                "exists, is not empty and was not made by `cistem demo`; choose another --dir",
                path=directory,
            )
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text("made by `cistem demo`; deleted and remade on every run\n")


def run(args: argparse.Namespace) -> int:
    """Simulate, create the project, run the pipeline through a private daemon, summarise."""
    from cistemd.actions.simulate import SimulationSpec, simulate_dataset

    started = time.perf_counter()
    directory: Path = args.dir.resolve()
    _prepare_directory(directory)
    data_dir = directory / "data"
    spec = SimulationSpec(
        structure="apoferritin",
        n_micrographs=args.movies,
        size_px=args.size,
        n_frames=args.frames,
        output_format="tiff",
        gain_reference=True,
        # 1.5-2.5 µm underfocus: Thon rings for CTFFIND and contrast for the picker
        defocus_min_angstroms=15000.0,
        defocus_max_angstroms=25000.0,
        seed=args.seed,
    )
    say = (lambda text: None) if args.json else print
    say(f"Simulating {spec.n_micrographs} movies of {spec.size_px}² px × {spec.n_frames} frames …")
    truth = simulate_dataset(data_dir, spec)
    seconds: dict[str, float] = {"simulate": round(time.perf_counter() - started, 2)}
    movie_paths = [data_dir / m["filename"] for m in truth["micrographs"]]
    project_dir = directory / PROJECT_NAME
    import_options = {
        "voltage_kv": spec.voltage_kv,
        "spherical_aberration_mm": spec.spherical_aberration_mm,
        "pixel_size_angstroms": spec.pixel_size_angstroms,
        "exposure_per_frame": spec.exposure_per_frame_e_per_a2,
        "gain_filename": data_dir / truth["gain_reference"]["filename"],
    }
    jobs: list[dict[str, Any]] = []
    if args.import_only:
        _import_directly(project_dir, movie_paths, import_options)
    else:
        _run_pipeline(directory, project_dir, movie_paths, import_options, truth, jobs, say)
    seconds["pipeline"] = round(time.perf_counter() - started - seconds["simulate"], 2)
    report = _report(directory, project_dir, data_dir, spec, truth, jobs, seconds)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_report(report, project_dir)
    failed = [job for job in jobs if job["state"] != "completed"]
    return 1 if failed else 0


def _import_directly(project_dir: Path, movie_paths: list[Path], options: dict[str, Any]) -> None:
    from cistemd.project import Project

    with Project.create(project_dir) as project:
        movie_ids = project.import_movies(movie_paths, **options)
        group_id = project.create_group("movie", GROUP_NAME)
        project.add_to_group("movie", group_id, movie_ids)


GROUP_NAME = "Simulated apoferritin"

# (action, title, parameters) in pipeline order; parameters not given take
# cisTEM's GUI defaults. The particle is ~135 Å across (radius ~67 Å).
PIPELINE: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("align_movies", "Align Movies", {}),
    ("find_ctf", "Find CTF", {}),
    (
        "find_particles",
        "Find Particles",
        {"characteristic_radius": 65.0, "maximum_radius": 70.0, "minimum_distance_from_edges": 64},
    ),
    (
        "create_refinement_package",
        "New Refinement Package",
        {
            "symmetry": "O",
            "molecular_weight": 480.0,
            "largest_dimension": 135.0,
            "name": "Demo apoferritin",
            "seed": 1,
        },
    ),
)


def _run_pipeline(
    directory: Path,
    project_dir: Path,
    movie_paths: list[Path],
    import_options: dict[str, Any],
    truth: dict[str, Any],
    jobs: list[dict[str, Any]],
    say: Any,
) -> None:
    from cistemd.cli.commands._embedded import embedded_daemon

    say(f"Starting a private cistemd (CISTEM_HOME={directory / '.cistemd'}) …")
    with embedded_daemon(directory / ".cistemd") as client:
        client.create_project(project_dir, PROJECT_NAME)
        imported = client.import_assets(project_dir, "movies", movie_paths, **import_options)
        group_id = client.create_group(project_dir, "movie", GROUP_NAME)
        client.edit_group(
            project_dir, "movie", "add", group_id=group_id, asset_ids=imported["ids"]
        )
        say(f"Imported {imported['count']} movies into {project_dir}")
        for action, title, parameters in PIPELINE:
            step_started = time.perf_counter()
            if action == "align_movies":
                parameters = {**parameters, "movie_group": group_id}
            job_id = client.submit(project_dir, action, parameters)
            say(f"{title:<24} job {job_id} …")
            record = client.wait_for_job(job_id, timeout=3600.0, interval=0.25)
            elapsed = round(time.perf_counter() - step_started, 2)
            jobs.append(
                {
                    "action": action,
                    "title": title,
                    "job_id": job_id,
                    "state": record["state"],
                    "tasks": record.get("tasks"),
                    "seconds": elapsed,
                    "error": record.get("error", ""),
                }
            )
            say(f"{'':<24} {record['state']} in {elapsed} s")
            if record["state"] != "completed":
                logs = [e for e in client.job_events(job_id) if e.get("kind") == "log"]
                for event in logs[-10:]:
                    say(f"    {event.get('payload', {}).get('message', '')}")
                break


def _report(
    directory: Path,
    project_dir: Path,
    data_dir: Path,
    spec: Any,
    truth: dict[str, Any],
    jobs: list[dict[str, Any]],
    seconds: dict[str, float],
) -> dict[str, Any]:
    from cistemd.project import Project

    with Project.open(project_dir, read_only=True) as project:
        summary = project.summary()
        integrity = project.integrity_check()
        warnings = list(project.warnings)
        accuracy = _accuracy(project, truth)
    defoci = [
        0.5 * (m["ctf"]["defocus_1_angstroms"] + m["ctf"]["defocus_2_angstroms"])
        for m in truth["micrographs"]
    ]
    return {
        "demo_directory": str(directory),
        "project": summary,
        "project_integrity": integrity,
        "warnings": warnings,
        "jobs": jobs,
        "accuracy_against_truth": accuracy,
        "dataset": {
            "directory": str(data_dir),
            "truth": str(data_dir / "truth.json"),
            "movies": len(truth["micrographs"]),
            "frames_per_movie": spec.n_frames,
            "size_px": spec.size_px,
            "pixel_size_angstroms": spec.pixel_size_angstroms,
            "exposure_per_frame_e_per_a2": spec.exposure_per_frame_e_per_a2,
            "particles": truth["n_particles"],
            "mean_defocus_range_angstroms": [round(min(defoci)), round(max(defoci))],
        },
        "seconds": seconds,
    }


def _accuracy(project: Any, truth: dict[str, Any]) -> dict[str, Any]:
    """Compare what the jobs recorded with the simulator's truth (the demo's scorecard)."""
    import numpy as np

    by_name = {Path(m["filename"]).name: m for m in truth["micrographs"]}
    movies = {int(m["movie_asset_id"]): m for m in project.movies()}
    drift_rms: list[float] = []
    defocus_errors: list[float] = []
    true_picks = found_picks = matched = 0
    position_errors: list[float] = []
    for image in project.images():
        movie = movies.get(int(image.get("parent_movie_id", -1)))
        if movie is None:
            continue
        sim = by_name.get(Path(movie["filename"]).name)
        if sim is None:
            continue
        shifts = project.query(
            "SELECT X_SHIFT, Y_SHIFT FROM MOVIE_ALIGNMENT_SHIFTS WHERE ALIGNMENT_ID = ? "
            "ORDER BY FRAME_NUMBER",
            (int(image["alignment_id"]),),
        )
        if shifts:
            # cisTEM reports the shift applied to each frame: minus the simulated displacement
            found = np.array([[row["x_shift"], row["y_shift"]] for row in shifts], dtype=float)
            expected = -np.asarray(sim["frame_shifts_angstroms"], dtype=float)
            error = (found - expected) - (found - expected).mean(axis=0)
            drift_rms.append(float(np.sqrt((error**2).sum(axis=1).mean())))
        estimate = project.query(
            "SELECT DEFOCUS1, DEFOCUS2 FROM ESTIMATED_CTF_PARAMETERS WHERE CTF_ESTIMATION_ID = ?",
            (int(image["ctf_estimation_id"]),),
        )
        if estimate:
            ctf = sim["ctf"]
            true_mean = 0.5 * (ctf["defocus_1_angstroms"] + ctf["defocus_2_angstroms"])
            found_mean = 0.5 * (estimate[0]["defocus1"] + estimate[0]["defocus2"])
            defocus_errors.append(abs(found_mean - true_mean))
        picks = project.query(
            "SELECT X_POSITION, Y_POSITION FROM PARTICLE_POSITION_ASSETS "
            "WHERE PARENT_IMAGE_ASSET_ID = ?",
            (int(image["image_asset_id"]),),
        )
        # an aligned sum shows particle p at its position plus the middle frame's displacement
        middle = sim["frame_shifts_angstroms"][sim["middle_frame_index"]]
        centres = np.array(
            [[p["x_angstroms"] + middle[0], p["y_angstroms"] + middle[1]] for p in sim["particles"]]
        ).reshape(-1, 2)
        true_picks += len(centres)
        found_picks += len(picks)
        if picks and len(centres):
            xy = np.array([[row["x_position"], row["y_position"]] for row in picks], dtype=float)
            distance = np.linalg.norm(xy[:, None, :] - centres[None, :, :], axis=2)
            nearest = distance.min(axis=0)
            radius = 0.2 * 2.0 * float(sim["model"]["radius_angstroms"])
            matched += int((nearest <= radius).sum())
            position_errors += [float(d) for d in nearest[nearest <= radius]]
    packages = project.refinement_packages()

    def median(values: list[float]) -> float | None:
        return round(float(np.median(values)), 3) if values else None

    return {
        "drift_rms_error_angstroms_median": median(drift_rms),
        "mean_defocus_error_angstroms_median": median(defocus_errors),
        "picking_recall": round(matched / true_picks, 3) if true_picks else None,
        "picking_precision": round(matched / found_picks, 3) if found_picks else None,
        "pick_position_error_angstroms_median": median(position_errors),
        "particles_in_packages": [int(p.get("number_of_particles", 0)) for p in packages],
    }


def _print_report(report: dict[str, Any], project_dir: Path) -> None:
    dataset: dict[str, Any] = report["dataset"]
    summary: dict[str, Any] = report["project"]
    print(
        f"\nSimulated {dataset['movies']} movies, {dataset['particles']} particles, "
        f"defocus {dataset['mean_defocus_range_angstroms'][0]}–"
        f"{dataset['mean_defocus_range_angstroms'][1]} Å; truth in {dataset['truth']}"
    )
    print(f"\nProject {summary.get('name', PROJECT_NAME)} at {project_dir}")
    if report["jobs"]:
        print(f"{'step':<24}{'job':>5}  {'state':<10}{'seconds':>8}")
        for job in report["jobs"]:
            print(f"{job['title']:<24}{job['job_id']:>5}  {job['state']:<10}{job['seconds']:>8}")
    kinds = ("movies", "images", "particle_positions", "volumes", "refinement_packages")
    print("\nAssets: " + ", ".join(f"{kind.replace('_', ' ')} {summary[kind]}" for kind in kinds))
    accuracy = report["accuracy_against_truth"]
    if report["jobs"]:
        print("Against the simulator's truth:")
        labels = {
            "drift_rms_error_angstroms_median": "drift RMS error (Å, median)",
            "mean_defocus_error_angstroms_median": "mean-defocus error (Å, median)",
            "picking_recall": "picking recall",
            "picking_precision": "picking precision",
            "pick_position_error_angstroms_median": "pick position error (Å, median)",
            "particles_in_packages": "particles in the refinement package",
        }
        for key, label in labels.items():
            print(f"  {label:<36} {accuracy[key]}")
    integrity = report["project_integrity"]
    print(f"Database integrity check: {'ok' if not integrity else '; '.join(integrity)}")
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    db = project_dir / f"{PROJECT_NAME}.db"
    print(
        "\nTry:\n"
        f"  .venv/bin/cistem-tui {project_dir}\n"
        f"  .venv/bin/cistem project info {project_dir}\n"
        f"  sqlite3 {db} 'SELECT IMAGE_ASSET_ID, DEFOCUS1, DEFOCUS2, SCORE, "
        "DETECTED_RING_RESOLUTION FROM ESTIMATED_CTF_PARAMETERS;'"
    )
