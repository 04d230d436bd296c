"""The Align Movies action: defaults, planning, a task, recording, and a real daemon run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import daemon_fixtures as fx
import numpy as np
import pytest
from daemon_fixtures import read_db

from cistemd.actions.align_movies import AlignMovies
from cistemd.actions.base import TaskContext, get_action
from cistemd.errors import InvalidInputError
from cistemd.io import mrc
from cistemd.kernels import fourier
from cistemd.project import Project

daemon = fx.daemon
home = fx.home


def _write_movie(path: Path, seed: int, n_frames: int = 8, size: int = 160) -> np.ndarray:
    """A drifting Poisson movie; returns the drift (px, the specimen's displacement)."""
    rng = np.random.default_rng(seed)
    texture = fourier.fourier_crop(rng.normal(size=(4 * size, 4 * size)), (size, size))
    texture = 1.0 + 0.6 * texture / texture.std()
    drift = np.column_stack([np.linspace(0.0, 6.0, n_frames), np.linspace(0.0, 2.0, n_frames)])
    frames = np.stack([
        rng.poisson(np.clip(20.0 * fourier.fourier_shift(texture, drift[i]), 0, None))
        for i in range(n_frames)
    ]).astype(np.uint16)  # fmt: skip
    mrc.write(path, frames, voxel_size_angstroms=1.2, kind="stack")
    return drift


def test_registered_with_cistem_gui_defaults():
    action = get_action("align_movies")
    assert isinstance(action, AlignMovies)
    assert action.title == "Align Movies"
    values = action.validate({})
    assert values == {
        "movie_group": 0, "min_shift": 2.0, "max_shift": 40.0, "exposure_filter": True,
        "restore_power": True, "termination_threshold": 1.0, "max_iterations": 10,
        "bfactor": 1500.0, "mask_central_cross": True, "horizontal_mask": 1,
        "vertical_mask": 1, "pre_exposure": 0.0, "first_frame": 1, "last_frame": 0,
    }  # fmt: skip
    with pytest.raises(InvalidInputError, match="max_iterations"):
        action.validate({"max_iterations": 0})


def test_plan_run_and_record_in_a_project(tmp_path):
    movies = [tmp_path / "movies" / f"m{i}.mrc" for i in (1, 2)]
    movies[0].parent.mkdir()
    drifts = [_write_movie(path, seed) for seed, path in enumerate(movies)]
    action = AlignMovies()
    with Project.create(tmp_path / "proj") as project:
        with pytest.raises(InvalidInputError, match="no movies"):
            action.start(action.validate({}), project=project)
        ids = project.import_movies(
            movies, voltage_kv=300, spherical_aberration_mm=2.7, pixel_size_angstroms=1.2,
            exposure_per_frame=2.0,
        )  # fmt: skip
        group = project.create_group("movie", "second only")
        project.add_to_group("movie", group, [ids[1]])
        _, stage = action.start(action.validate({"movie_group": group}), project=project)
        assert [task.key for task in stage.tasks] == [str(ids[1])]
        with pytest.raises(InvalidInputError, match="movie_group"):
            action.start(action.validate({"movie_group": 99}), project=project)

        parameters = action.validate({"bfactor": 1000})
        plan, stage = action.start(parameters, project=project)
        assert plan == {"n_movies": 2} and stage.final
        payload = dict(stage.tasks[0].payload)
        assert payload["filename"] == str(movies[0]) and payload["pixel_size"] == 1.2
        assert payload["exposure_per_frame"] == 2.0 and payload["bfactor"] == 1000
        json.dumps(payload)  # self-contained and JSON-like
        scratch = project.layout.scratch_dir / "job_1"
        for n_run in range(2):
            for task in stage.tasks:
                context = TaskContext(task_id=task.key, attempt=1 + n_run, scratch_dir=scratch)
                result = action.run_task(task.payload, context)
                json.dumps(result)
                action.record(project, 1, task.key, result)
        alignments = project.query(
            "SELECT * FROM MOVIE_ALIGNMENT_LIST ORDER BY ALIGNMENT_ID"
        )
        assert len(alignments) == 4
        first = alignments[0]
        assert first["movie_asset_id"] == ids[0] and first["alignment_job_id"] == 1
        assert first["bfactor"] == 1000 and first["max_shift"] == 40.0
        assert first["should_dose_filter"] == 1 and first["should_include_all_frames_in_sum"] == 1
        assert first["pixel_size"] == 1.2 and first["final_pixel_size"] == pytest.approx(1.2)
        assert first["exposure_per_frame"] == 2.0 and first["voltage"] == 300
        assert Path(first["output_file"]) == project.layout.aligned_sum_path(movies[0], ids[0], 0)
        assert Path(alignments[2]["output_file"]).name == f"m1_{ids[0]}_1.mrc"
        shifts = project.query(
            f"SELECT * FROM MOVIE_ALIGNMENT_PARAMETERS_{first['alignment_id']} "
            "ORDER BY FRAME_NUMBER"
        )
        assert [row["frame_number"] for row in shifts] == list(range(1, 9))
        expected = -(drifts[0] - drifts[0][4]) * 1.2
        np.testing.assert_allclose([r["x_shift"] for r in shifts], expected[:, 0], atol=0.6)
        np.testing.assert_allclose([r["y_shift"] for r in shifts], expected[:, 1], atol=0.6)
        images = project.images()
        assert len(images) == 2  # re-aligning replaced each movie's image
        by_movie = {image["parent_movie_id"]: image for image in images}
        latest = by_movie[ids[0]]
        assert latest["alignment_id"] == alignments[2]["alignment_id"]
        assert latest["filename"] == alignments[2]["output_file"]
        assert (latest["x_size"], latest["y_size"]) == (160, 160)
        assert latest["pixel_size"] == pytest.approx(1.2)
        all_images = sorted(project.group_members("image", 0))
        assert all_images == sorted(i["image_asset_id"] for i in images)
        for n in (0, 1):
            assert project.layout.aligned_sum_path(movies[0], ids[0], n).is_file()
            spectrum = project.layout.amplitude_spectrum_path(movies[0], ids[0], n)
            assert mrc.read(spectrum).shape == (512, 512)
            assert project.layout.scaled_sum_path(movies[0], ids[0], n).is_file()
        assert not list(scratch.glob("*.mrc"))  # everything was moved out of Scratch


@pytest.fixture
def project_dir(daemon, tmp_path) -> Path:
    path = tmp_path / "proj"
    with daemon.client() as client:
        client.create_project(path)
    return path


def _cistem(home, *args: str, timeout: float = 300):
    env = {**os.environ, "CISTEM_HOME": str(home.root)}
    return subprocess.run(
        [sys.executable, "-m", "cistemd.cli.main", *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow
def test_align_movies_through_a_real_daemon(daemon, project_dir, home, tmp_path):
    movies = [tmp_path / f"movie_{i}.mrc" for i in (1, 2)]
    for seed, path in enumerate(movies):
        _write_movie(path, seed + 10)
    imported = _cistem(
        home, "import", "movies", *map(str, movies), "--pixel-size", "1.2",
        "--exposure-per-frame", "2", "--project", str(project_dir), "--json",
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    completed = _cistem(
        home, "run", "align_movies", "--profile", "local:2", "--project", str(project_dir),
        "--wait", "--json",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr + completed.stdout
    rows = read_db(
        project_dir,
        "SELECT ALIGNMENT_ID, MOVIE_ASSET_ID, OUTPUT_FILE, MAX_SHIFT, MAX_ITERATIONS "
        "FROM MOVIE_ALIGNMENT_LIST ORDER BY MOVIE_ASSET_ID",
    )
    assert [(r[1], r[3], r[4]) for r in rows] == [(1, 40.0, 10), (2, 40.0, 10)]
    for alignment_id, movie_id, output, _, _ in rows:
        images_dir = project_dir / "Assets" / "Images"
        assert Path(output) == images_dir / f"movie_{movie_id}_{movie_id}_0.mrc"
        assert Path(output).is_file()
        assert (project_dir / "Assets" / "Images" / "Spectra" / Path(output).name).is_file()
        assert (project_dir / "Assets" / "Images" / "Scaled" / Path(output).name).is_file()
        frames = read_db(
            project_dir,
            f"SELECT FRAME_NUMBER, X_SHIFT FROM MOVIE_ALIGNMENT_PARAMETERS_{alignment_id}",
        )
        assert len(frames) == 8
        assert frames[0][1] > 2.0 > -2.0 > frames[-1][1]  # drift to +x, shifts applied are -x
    images = read_db(
        project_dir,
        "SELECT PARENT_MOVIE_ID, ALIGNMENT_ID, FILENAME FROM IMAGE_ASSETS ORDER BY PARENT_MOVIE_ID",
    )
    assert [(r[0], r[1]) for r in images] == [(1, rows[0][0]), (2, rows[1][0])]
    listed = _cistem(home, "assets", "images", "--project", str(project_dir), "--json")
    if listed.returncode == 0:  # the assets listing shows them in "All Images"
        assert "movie_1_1_0" in listed.stdout
