"""The ``sharpen_map`` action: planning in process, and one job through a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import daemon_fixtures as fx
import numpy as np
import pytest
from daemon_fixtures import read_db, wait_until, worker_pids

from cistemd.actions.base import TaskContext, get_action
from cistemd.actions.sharpen_map import SharpenMap, orthogonal_view_image, sharpened_volume_name
from cistemd.errors import InvalidInputError
from cistemd.io import mrc
from cistemd.kernels import simulate
from cistemd.kernels.sharpen import apply_b_factor, radial_amplitude_spectrum

daemon = fx.daemon
home = fx.home

PIXEL = 2.0


def cistem(home, *args: str, cwd: Path | None = None, timeout: float = 120):
    env = {**os.environ, "CISTEM_HOME": str(home.root)}
    return subprocess.run(
        [sys.executable, "-m", "cistemd.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharpen_action")
    model = simulate.asymmetric_protein_model(seed=0)
    truth = simulate.coulomb_potential_map(model, box=64, pixel_size_angstroms=PIXEL)
    blurred = apply_b_factor(truth, PIXEL, 90.0)
    mrc.write(root / "blurred.mrc", blurred, voxel_size_angstroms=PIXEL, kind="volume")
    mrc.write(root / "small.mrc", blurred[:32, :32, :32], voxel_size_angstroms=PIXEL,
              kind="volume")  # fmt: skip
    return {"root": root, "truth": truth, "blurred": blurred}


def test_registered_with_gui_defaults():
    action = get_action("sharpen_map")
    assert isinstance(action, SharpenMap) and action.title == "Sharpen 3D"
    checked = action.validate({"volume": 1})
    assert checked["flatten_from_resolution"] == 12.0
    assert checked["pre_cutoff_b_factor"] == -90.0 and checked["post_cutoff_b_factor"] == 0.0
    assert checked["filter_edge_width"] == 20.0 and checked["ssnr_scale"] == 1.0
    assert checked["auto_mask"] and checked["correct_gridding"] and not checked["invert_hand"]
    assert checked["use_fom_weighting"] and checked["resolution_limit"] == 0.0
    with pytest.raises(InvalidInputError, match="volume"):
        action.validate({})
    with pytest.raises(InvalidInputError, match="ssnr_scale"):
        action.validate({"volume": 1, "ssnr_scale": 50})
    with pytest.raises(InvalidInputError):
        action.start(checked)  # no project


def test_run_task_in_process(maps, tmp_path):
    action = SharpenMap()
    payload = {
        "volume_asset_id": 3,
        "volume_name": "blurred",
        "filename": str(maps["root"] / "blurred.mrc"),
        "pixel_size_angstroms": PIXEL,
        "mask_file": "",
        "statistics": None,
        "flatten_from_resolution": 2 * PIXEL,
        "resolution_limit": 5.0,
        "pre_cutoff_b_factor": -90.0,
        "post_cutoff_b_factor": 0.0,
        "filter_edge_width": 20.0,
        "use_fom_weighting": True,
        "ssnr_scale": 1.0,
        "inner_mask_radius": 0.0,
        "outer_mask_radius": None,
        "auto_mask": True,
        "invert_hand": False,
        "correct_gridding": False,
    }
    context = TaskContext(task_id="1", attempt=1, scratch_dir=tmp_path / "Scratch")
    result = action.run_task(payload, context)
    assert json.loads(json.dumps(result)) == result  # travels as msgpack/JSON
    volume = mrc.read(result["scratch_volume"])
    shells, a_truth = radial_amplitude_spectrum(maps["truth"])
    _, a_out = radial_amplitude_spectrum(volume)
    below = (shells > 0) & (shells <= PIXEL / 5 - PIXEL / 20)
    np.testing.assert_allclose(a_out[below] / a_truth[below], 1.0, atol=0.05)
    assert result["mask"] == "auto" and result["fom_weighting"] is False
    np.testing.assert_array_equal(
        mrc.read(result["scratch_orth_view"]), orthogonal_view_image(volume)
    )


def test_orthogonal_view_layout():
    vol = np.zeros((6, 6, 6), np.float32)
    vol[3, 1, 2] = 1.0  # z=3 (centre), y=1, x=2
    image = orthogonal_view_image(vol)
    assert image.shape == (6, 18)
    assert image[1, 2] == 1.0  # xy section at z = 3
    assert image.sum() == 1.0  # not on the centre y or x sections
    assert sharpened_volume_name(7, 2) == "sharpened_volume_7_2.mrc"


def test_sharpen_job_through_the_daemon(daemon, home, maps, tmp_path):
    project = tmp_path / "proj"
    with daemon.client() as client:
        client.create_project(project)
    imported = cistem(
        home, "import", "volumes", str(maps["root"] / "blurred.mrc"),
        str(maps["root"] / "small.mrc"), "--project", str(project), "--json",
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    volume_id, small_id = json.loads(imported.stdout)["ids"]

    # a mask of another box is refused when the job is submitted, naming the parameter
    refused = cistem(
        home, "run", "sharpen_map", "--volume", str(volume_id), "--mask-volume", str(small_id),
        "--project", str(project), "--json",
    )  # fmt: skip
    assert refused.returncode != 0 and "mask_volume" in refused.stderr

    submitted = cistem(
        home, "run", "sharpen_map", "--volume", str(volume_id), "--resolution-limit", "4.5",
        "--invert-hand", "yes", "--profile", "local:1", "--project", str(project), "--json",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    with daemon.client() as client:
        record = client.wait_for_job(job_id, timeout=90)
    assert record["state"] == "completed", record
    assert record["tasks"] == {"completed": 1}

    rows = read_db(
        project,
        "SELECT VOLUME_ASSET_ID, NAME, FILENAME, RECONSTRUCTION_JOB_ID, PIXEL_SIZE, X_SIZE, "
        "Y_SIZE, Z_SIZE FROM VOLUME_ASSETS ORDER BY VOLUME_ASSET_ID",
    )
    assert len(rows) == 3
    new = rows[-1]
    name = sharpened_volume_name(int(job_id), volume_id)
    expected = project / "Assets" / "Volumes" / name
    assert new[2] == str(expected) and expected.exists()
    assert new[3] == -1 and new[4] == pytest.approx(PIXEL) and new[5:] == (64, 64, 64)
    assert "sharpened" in new[1]
    orth = project / "Assets" / "Volumes" / "OrthViews" / name
    assert mrc.read(orth).shape == (64, 192)
    sharp = mrc.read(expected)
    assert mrc.read_header(expected).voxel_size_angstroms[0] == pytest.approx(PIXEL)
    # the hand was inverted: the map correlates with the mirrored input, not the input
    blurred = maps["blurred"]
    mirrored = np.roll(blurred[::-1], 1, axis=0)
    assert np.corrcoef(sharp.ravel(), mirrored.ravel())[0, 1] > 0.8
    assert np.corrcoef(sharp.ravel(), blurred.ravel())[0, 1] < 0.5
    # nothing left behind in Scratch but the job's directory
    leftovers = [p for p in (project / "Scratch").rglob("*.mrc")]
    assert leftovers == []
    listed = cistem(home, "assets", "volumes", "--json", cwd=project)
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout
    wait_until(lambda: not worker_pids(home), 15, message="workers still running after the job")


class FakeProject:
    """Just enough of Project for start(): query() on an in-memory SQLite DB."""

    def __init__(self, volume_file: Path):
        import sqlite3

        self.conn = sqlite3.connect(":memory:")
        self.conn.executescript(
            """
            CREATE TABLE VOLUME_ASSETS (VOLUME_ASSET_ID INTEGER PRIMARY KEY, NAME TEXT,
                FILENAME TEXT, RECONSTRUCTION_JOB_ID INTEGER, PIXEL_SIZE REAL, X_SIZE INTEGER,
                Y_SIZE INTEGER, Z_SIZE INTEGER, HALF_MAP1_FILENAME TEXT, HALF_MAP2_FILENAME TEXT);
            CREATE TABLE RECONSTRUCTION_LIST (RECONSTRUCTION_ID INTEGER PRIMARY KEY,
                REFINEMENT_ID INTEGER, CLASS_NUMBER INTEGER, VOLUME_ASSET_ID INTEGER);
            CREATE TABLE REFINEMENT_LIST (REFINEMENT_ID INTEGER PRIMARY KEY,
                RESOLUTION_STATISTICS_BOX_SIZE INTEGER, RESOLUTION_STATISTICS_PIXEL_SIZE REAL);
            CREATE TABLE REFINEMENT_CLASS_STATISTICS (REFINEMENT_ID INTEGER,
                CLASS_NUMBER INTEGER, SHELL INTEGER, RESOLUTION REAL, FSC REAL, PART_FSC REAL,
                PART_SSNR REAL, REC_SSNR REAL);
            """
        )
        self.conn.execute(
            "INSERT INTO VOLUME_ASSETS VALUES (1, 'vol', ?, 4, 2.0, 64, 64, 64, '', '')",
            (str(volume_file),),
        )
        self.conn.execute("INSERT INTO RECONSTRUCTION_LIST VALUES (4, 7, 1, 1)")
        self.conn.execute("INSERT INTO REFINEMENT_LIST VALUES (7, 64, 2.0)")
        for shell in range(1, 40):
            ssnr = 30.0 * np.exp(-shell / 5.0)
            fsc = ssnr / (2 + ssnr)
            self.conn.execute(
                "INSERT INTO REFINEMENT_CLASS_STATISTICS VALUES (7, 1, ?, ?, ?, ?, ?, ?)",
                (shell, 128.0 / shell, fsc, fsc, ssnr, ssnr),
            )

    def query(self, sql, parameters=()):
        cursor = self.conn.execute(sql, parameters)
        names = [d[0].lower() for d in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def test_start_takes_statistics_from_the_database(maps, tmp_path):
    action = SharpenMap()
    project = FakeProject(maps["root"] / "blurred.mrc")
    _, stage = action.start(action.validate({"volume": 1}), project=project)
    (task,) = stage.tasks
    assert stage.final and task.key == "1"
    stats = task.payload["statistics"]
    assert stats["box_size"] == 64 and stats["shell"][:3] == [1, 2, 3]
    assert stats["rec_ssnr"][0] == pytest.approx(30.0 * np.exp(-0.2))
    assert json.loads(json.dumps(task.payload)) == dict(task.payload)
    with pytest.raises(InvalidInputError, match="no volume asset 9"):
        action.start(action.validate({"volume": 9}), project=project)
    context = TaskContext(task_id="1", attempt=1, scratch_dir=tmp_path)
    result = action.run_task(task.payload, context)
    assert result["fom_weighting"] is True
    # cut-off 0 = the statistics' FSC 0.143 resolution
    fsc = [30.0 * np.exp(-s / 5.0) / (2 + 30.0 * np.exp(-s / 5.0)) for s in range(1, 40)]
    first_below = next(i for i, f in enumerate(fsc, start=1) if f < 0.143)
    assert 128.0 / first_below <= result["resolution_limit_angstroms"] <= 128.0 / (first_below - 1)
