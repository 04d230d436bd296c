"""The Find CTF action: planning, a task, recording; and a real daemon end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import daemon_fixtures as fx
import numpy as np
import pytest
from daemon_fixtures import read_db

from cistemd.actions.base import TaskContext, get_action
from cistemd.errors import InvalidInputError
from cistemd.io import ctffind_text, mrc
from cistemd.kernels.ctf import CTFParams, ctf_2d
from cistemd.project import Project

daemon = fx.daemon
home = fx.home

TRUTHS = (
    CTFParams(
        defocus_1_angstroms=15400.0, defocus_2_angstroms=14600.0, astigmatism_angle_degrees=20
    ),
    CTFParams(
        defocus_1_angstroms=22300.0, defocus_2_angstroms=21700.0, astigmatism_angle_degrees=-50
    ),
)


def write_images(directory: Path, size: int = 1024, pixel: float = 1.5) -> list[Path]:
    """Two small images with Thon rings of known defocus (CTF-filtered noise + noise)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, truth in enumerate(TRUTHS):
        rng = np.random.default_rng(index)
        transfer = ctf_2d((size, size), pixel, truth, envelope_b_factor_angstroms2=60.0, rfft=True)
        signal = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * transfer)
        image = (signal + rng.standard_normal((size, size)) + 5.0).astype(np.float32)
        path = directory / f"micrograph_{index + 1}.mrc"
        mrc.write(path, image, voxel_size_angstroms=pixel)
        paths.append(path)
    return paths


def test_parameters_have_cistem_gui_defaults_and_are_checked():
    action = get_action("find_ctf")
    assert action.title == "Find CTF"
    defaults = action.validate({})
    assert defaults["frames_to_average"] == 3
    assert defaults["box_size"] == 512
    assert (defaults["min_resolution"], defaults["max_resolution"]) == (30.0, 5.0)
    assert (defaults["min_defocus"], defaults["max_defocus"], defaults["defocus_step"]) == (
        5000.0, 50000.0, 100.0,
    )  # fmt: skip
    assert defaults["astigmatism_tolerance"] == 500.0 and not defaults["restrain_astigmatism"]
    assert (defaults["min_phase_shift"], defaults["max_phase_shift"]) == (0.0, 180.0)
    assert defaults["phase_shift_step"] == 10.0 and defaults["image_group"] == 0
    with pytest.raises(InvalidInputError, match="max_resolution"):
        action.validate({"max_resolution": 40.0})
    with pytest.raises(InvalidInputError, match="min_defocus"):
        action.validate({"min_defocus": 60000.0})


def test_plan_run_and_record_in_a_project(tmp_path):
    images = write_images(tmp_path / "data")
    action = get_action("find_ctf")
    with Project.create(tmp_path / "proj") as project:
        ids = project.import_images(
            images, voltage_kv=300.0, spherical_aberration_mm=2.7, pixel_size_angstroms=1.5
        )
        parameters = action.validate({})
        _, stage = action.start(parameters, project=project)
        assert stage.final and [t.key for t in stage.tasks] == [str(i) for i in ids]
        for _repeat in range(2):  # a second run gets the next file number
            for task in stage.tasks:
                context = TaskContext(
                    task_id=task.key, attempt=1, scratch_dir=tmp_path / "proj" / "Scratch" / "j"
                )
                result = action.run_task(dict(task.payload), context)
                json.dumps(result)  # JSON-like
                action.record(project, 7, task.key, result)
        estimates = project.ctf_estimates()
        assert len(estimates) == 4
        for image_id, truth in zip(ids, TRUTHS, strict=True):
            rows = project.ctf_estimates(image_id)
            row = rows[-1]
            mean = 0.5 * (row["defocus1"] + row["defocus2"])
            assert abs(mean - truth.mean_defocus_angstroms) < 50.0
            assert row["ctf_estimation_job_id"] == 7
            assert row["box_size"] == 512 and row["number_of_frames_averaged"] == 1
            assert row["tolerated_astigmatism"] == 500.0
            assert row["phase_shift_step"] == pytest.approx(math.radians(10.0))
            diagnostic = Path(row["output_diagnostic_file"])
            assert diagnostic.parent == tmp_path / "proj" / "Assets" / "CTF"
            assert diagnostic.name == f"micrograph_{ids.index(image_id) + 1}_CTF_1.mrc"
            assert diagnostic.exists()
            assert ctffind_text.read_results(diagnostic.with_suffix(".txt"))
            assert diagnostic.with_name(diagnostic.stem + "_avrot.txt").exists()
        current = {row["image_asset_id"]: row for row in project.images()}
        for image_id in ids:
            assert (
                current[image_id]["ctf_estimation_id"]
                == project.ctf_estimates(image_id)[-1]["ctf_estimation_id"]
            )


def test_empty_group_is_refused(tmp_path):
    action = get_action("find_ctf")
    with Project.create(tmp_path / "proj") as project:
        with pytest.raises(InvalidInputError, match="holds no image"):
            action.start(action.validate({}), project=project)


def cistem(home, *args: str, cwd: Path | None = None, timeout: float = 180):
    env = {**os.environ, "CISTEM_HOME": str(home.root)}
    return subprocess.run(
        [sys.executable, "-m", "cistemd.cli.main", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow
def test_find_ctf_through_a_real_daemon(daemon, home, tmp_path):
    images = write_images(tmp_path / "data")
    project = tmp_path / "proj"
    created = cistem(home, "project", "create", str(project))
    assert created.returncode == 0, created.stderr
    imported = cistem(
        home, "import", "images", *map(str, images), "--pixel-size", "1.5",
        "--project", str(project), "--json",
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    submitted = cistem(
        home, "run", "find_ctf", "--profile", "local:2", "--project", str(project), "--json",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    with daemon.client() as client:
        record = client.wait_for_job(job_id, timeout=150)
    assert record["state"] == "completed", record
    rows = read_db(
        project,
        "SELECT IMAGE_ASSET_ID, DEFOCUS1, DEFOCUS2, OUTPUT_DIAGNOSTIC_FILE, "
        "CTF_ESTIMATION_JOB_ID FROM ESTIMATED_CTF_PARAMETERS ORDER BY IMAGE_ASSET_ID",
    )
    assert len(rows) == 2
    for (_, df1, df2, diagnostic, job), truth in zip(rows, TRUTHS, strict=True):
        assert abs(0.5 * (df1 + df2) - truth.mean_defocus_angstroms) < 50.0
        assert Path(diagnostic).exists() and "/Assets/CTF/" in diagnostic
        assert str(job) == str(job_id)
    pointers = read_db(project, "SELECT CTF_ESTIMATION_ID FROM IMAGE_ASSETS ORDER BY 1")
    assert all(p[0] > 0 for p in pointers)


def test_estimation_on_the_parent_movie_frames(tmp_path):
    """An aligned sum with a parent movie is estimated from the movie, 3 frames per block."""
    truth = TRUTHS[0]
    size, pixel, n_frames = 1024, 1.5, 6
    rng = np.random.default_rng(11)
    transfer = ctf_2d((size, size), pixel, truth, envelope_b_factor_angstroms2=60.0, rfft=True)
    signal = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * transfer)
    frames = np.stack(
        [signal + rng.standard_normal((size, size)) * math.sqrt(n_frames) + 5.0
         for _ in range(n_frames)]
    ).astype(np.float32)  # fmt: skip
    movie_path = tmp_path / "movie.mrc"
    mrc.write(movie_path, frames, voxel_size_angstroms=pixel, kind="stack")
    sum_path = tmp_path / "movie_sum.mrc"
    mrc.write(sum_path, frames.sum(axis=0), voxel_size_angstroms=pixel)
    action = get_action("find_ctf")
    with Project.create(tmp_path / "proj") as project:
        (movie_id,) = project.import_movies(
            [movie_path], voltage_kv=300.0, spherical_aberration_mm=2.7,
            pixel_size_angstroms=pixel, exposure_per_frame=1.0,
        )  # fmt: skip
        image_id = project.add_image(
            sum_path, pixel_size_angstroms=pixel, voltage_kv=300.0,
            spherical_aberration_mm=2.7, parent_movie_id=movie_id,
        )  # fmt: skip
        _, stage = action.start(action.validate({}), project=project)
        (task,) = stage.tasks
        assert task.payload["is_movie"] is True
        assert task.payload["input"] == str(movie_path.resolve())
        context = TaskContext(task_id="1", attempt=1, scratch_dir=tmp_path / "proj" / "Scratch")
        result = action.run_task(dict(task.payload), context)
        assert result["n_frames"] == n_frames
        action.record(project, 1, task.key, result)
        (row,) = project.ctf_estimates(image_id)
        assert row["estimated_on_movie_frames"] == 1
        assert row["number_of_frames_averaged"] == 3
        assert abs(0.5 * (row["defocus1"] + row["defocus2"]) - truth.mean_defocus_angstroms) < 50
        _, image_stage = action.start(action.validate({"input_is_movie": False}), project=project)
        assert image_stage.tasks[0].payload["is_movie"] is False
