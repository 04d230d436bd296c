"""Run the cistemd demo: a simulated dataset with known truth in a new project.

Simulates movies of an apoferritin-like 24-mer (LZW TIFF, beam-induced drift,
CTF, shot noise, a detector gain reference), creates a project with cisTEM's
layout in DIR/CistemDemo, imports the movies with their gain reference and
prints a summary. DIR (default ./cistem-demo) is recreated on every run; a
directory that was not made by the demo is never touched.

Later releases extend the demo through the pipeline (align movies, find CTF,
pick particles, 2D classes, ab-initio, refinement, sharpening) on the daemon.
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
    """Simulate, create the project, import, summarise."""
    from cistemd.actions.simulate import SimulationSpec, simulate_dataset
    from cistemd.project import Project

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
        seed=args.seed,
    )
    if not args.json:
        print(
            f"Simulating {spec.n_micrographs} movies of {spec.size_px}² px × "
            f"{spec.n_frames} frames …"
        )
    truth = simulate_dataset(data_dir, spec)
    simulated = time.perf_counter()

    movie_paths = [data_dir / m["filename"] for m in truth["micrographs"]]
    with Project.create(directory / PROJECT_NAME) as project:
        movie_ids = project.import_movies(
            movie_paths,
            voltage_kv=spec.voltage_kv,
            spherical_aberration_mm=spec.spherical_aberration_mm,
            pixel_size_angstroms=spec.pixel_size_angstroms,
            exposure_per_frame=spec.exposure_per_frame_e_per_a2,
            gain_filename=data_dir / truth["gain_reference"]["filename"],
        )
        group_name = "Simulated apoferritin"
        group_id = project.create_group("movie", group_name)
        project.add_to_group("movie", group_id, movie_ids)
        summary = project.summary()
        movies = project.movies()
        integrity = project.integrity_check()
        warnings = list(project.warnings)
    finished = time.perf_counter()

    defoci = [
        0.5 * (m["ctf"]["defocus_1_angstroms"] + m["ctf"]["defocus_2_angstroms"])
        for m in truth["micrographs"]
    ]
    report: dict[str, Any] = {
        "demo_directory": str(directory),
        "project": summary,
        "project_integrity": integrity,
        "warnings": warnings,
        "dataset": {
            "directory": str(data_dir),
            "truth": str(data_dir / "truth.json"),
            "movies": len(movie_paths),
            "frames_per_movie": spec.n_frames,
            "size_px": spec.size_px,
            "pixel_size_angstroms": spec.pixel_size_angstroms,
            "exposure_per_frame_e_per_a2": spec.exposure_per_frame_e_per_a2,
            "particles": truth["n_particles"],
            "mean_defocus_range_angstroms": [round(min(defoci)), round(max(defoci))],
        },
        "seconds": {
            "simulate": round(simulated - started, 2),
            "project": round(finished - simulated, 2),
        },
    }
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0

    dataset: dict[str, Any] = report["dataset"]
    print(
        f"Simulated {dataset['movies']} movies, {dataset['particles']} particles, "
        f"defocus {dataset['mean_defocus_range_angstroms'][0]}–"
        f"{dataset['mean_defocus_range_angstroms'][1]} Å "
        f"({report['seconds']['simulate']} s); truth in {dataset['truth']}"
    )
    print(f"\nProject {summary.get('name', PROJECT_NAME)} at {directory / PROJECT_NAME}")
    print(f"{'movie':<14}{'frames':>7}{'size':>12}{'Å/px':>7}{'e/Å²/frame':>12}  gain reference")
    for movie in movies:
        print(
            f"{Path(movie['filename']).name:<14}{movie['number_of_frames']:>7}"
            f"{movie['x_size']:>6}×{movie['y_size']:<5}{movie['pixel_size']:>7.3f}"
            f"{movie['dose_per_frame']:>12.2f}  {Path(movie['gain_filename']).name}"
        )
    kinds = ("movies", "images", "particle_positions", "volumes", "refinement_packages")
    print("\nAssets: " + ", ".join(f"{kind.replace('_', ' ')} {summary[kind]}" for kind in kinds))
    print(f"Movie groups: All Movies, {group_name} ({len(movie_ids)} movies)")
    print(f"Database integrity check: {'ok' if not integrity else '; '.join(integrity)}")
    for warning in warnings:
        print(f"warning: {warning}")
    db = directory / PROJECT_NAME / f"{PROJECT_NAME}.db"
    print(
        "\nTry:\n"
        f"  .venv/bin/cistem info {movie_paths[0]}\n"
        f"  .venv/bin/cistem project info {directory / PROJECT_NAME}\n"
        f"  sqlite3 {db} 'SELECT FILENAME, NUMBER_OF_FRAMES FROM MOVIE_ASSETS;'"
    )
    return 0
