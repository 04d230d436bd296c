"""Find Particles and refinement packages end to end: real daemon, real workers, the CLI.

Two simulated micrographs are imported into a project with their CTF (the
simulator's values stand in for a CTF estimation, which is another action's
job); then, through cistemd: a preview pick (nothing recorded), a Find
Particles job (positions and picking rows), manual edits of picks, a new
refinement package (stack + rows + per-package views) and a package made
from it. The standalone ``cistem find-particles`` runs on the same image.
"""

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

from cistemd.io import mrc
from cistemd.kernels import simulate
from cistemd.kernels.ctf import CTFParams
from cistemd.kernels.rotation import random_orientations
from cistemd.project import Project

daemon = fx.daemon
home = fx.home

PIXEL = 1.5
SIZE = 1024


def cistem(home, *args: str, timeout: float = 180):
    env = {**os.environ, "CISTEM_HOME": str(home.root)}
    return subprocess.run(
        [sys.executable, "-m", "cistemd.cli.main", *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )


@pytest.fixture
def picked_project(tmp_path: Path):
    """A project with two simulated micrographs and their CTF; returns (path, truths)."""
    model = simulate.apoferritin_like_model(seed=0)
    rng = np.random.default_rng(11)
    files, truths = [], []
    for index, defocus in enumerate((16000.0, 21000.0)):
        positions = simulate.random_particle_positions(
            40, (SIZE, SIZE), PIXEL, min_separation_angstroms=175.0,
            edge_margin_angstroms=140.0 * PIXEL, rng=rng,
        )
        ctf = CTFParams(defocus_1_angstroms=defocus + 150, defocus_2_angstroms=defocus - 150,
                        astigmatism_angle_degrees=25.0)
        image, _ = simulate.simulate_micrograph(
            model, shape=(SIZE, SIZE), pixel_size_angstroms=PIXEL, ctf=ctf,
            positions_angstroms=positions, euler_degrees=random_orientations(len(positions), rng),
            exposure_e_per_a2=40.0, rng=rng,
        )
        path = tmp_path / f"micrograph_{index}.mrc"
        mrc.write(path, image.astype(np.float32), voxel_size_angstroms=PIXEL)
        files.append(path)
        truths.append((positions, ctf))
    project_dir = tmp_path / "proj"
    project = Project.create(project_dir)
    ids = project.import_images(files, voltage_kv=300.0, spherical_aberration_mm=2.7,
                                pixel_size_angstroms=PIXEL)
    for image_id, (_, ctf) in zip(ids, truths, strict=True):
        project.add_ctf_estimate(image_id, defocus1_angstroms=ctf.defocus_1_angstroms,
                                 defocus2_angstroms=ctf.defocus_2_angstroms,
                                 defocus_angle_degrees=ctf.astigmatism_angle_degrees)
    project.close()
    return project_dir, files, truths


def _recall(found: np.ndarray, truth: np.ndarray, tolerance: float) -> float:
    distance = np.sqrt(((found[:, None] - truth[None]) ** 2).sum(-1))
    return float((distance.min(axis=0) < tolerance).mean())


@pytest.mark.slow
def test_pick_edit_and_package_through_the_daemon(daemon, home, picked_project):
    project_dir, files, truths = picked_project
    project = str(project_dir)
    with daemon.client() as client:
        # preview: one image, positions in the result, nothing recorded
        preview_id = client.submit(project, "find_particles", {"preview_image": 2})
        job = client.wait_for_job(preview_id, timeout=120)
        assert job["state"] == "completed", job
        (result,), _ = client.job_results(preview_id)
        preview = result["result"]
        assert preview["preview"] is True and len(preview["x"]) >= 20
        assert read_db(project_dir, "SELECT COUNT(*) FROM PARTICLE_POSITION_ASSETS")[0][0] == 0

        # the real job: both images
        job_id = client.submit(project, "find_particles", {"threshold": 6.0})
        job = client.wait_for_job(job_id, timeout=120)
        assert job["state"] == "completed", job

    rows = read_db(project_dir, "SELECT PICKING_ID, PICKING_JOB_ID, PARENT_IMAGE_ASSET_ID, "
                                "CHARACTERISTIC_RADIUS, MAXIMUM_RADIUS, THRESHOLD_PEAK_HEIGHT, "
                                "MANUAL_EDIT FROM PARTICLE_PICKING_LIST ORDER BY "
                                "PARENT_IMAGE_ASSET_ID")
    assert [r[2] for r in rows] == [1, 2]
    assert all(r[3:7] == (80.0, 120.0, 6.0, 0) for r in rows)
    for image_id, (truth, _) in zip((1, 2), truths, strict=True):
        picks = np.array(read_db(
            project_dir, "SELECT X_POSITION, Y_POSITION FROM PARTICLE_POSITION_ASSETS WHERE "
                         "PARENT_IMAGE_ASSET_ID = ? AND PICK_JOB_ID = ?",
            (image_id, int(job_id)),
        ))
        assert _recall(picks, truth, 27.0) >= 0.85
    total = read_db(project_dir, "SELECT COUNT(*) FROM PARTICLE_POSITION_ASSETS")[0][0]

    # manual edits through the CLI
    added = cistem(home, "picks", "add", "1", "100.0", "200.0", "--project", project, "--json")
    assert added.returncode == 0, added.stderr
    reply = json.loads(added.stdout)
    assert reply["operation"] == "add" and len(reply["position_ids"]) == 1
    new_id = reply["position_ids"][0]
    removed = cistem(home, "picks", "remove", "1", "--at", "103", "198", "--project", project,
                     "--json")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout)["position_ids"] == [new_id]
    missing = cistem(home, "picks", "remove", "1", "--id", "999999", "--project", project)
    assert missing.returncode == 2 and "not on image" in missing.stderr
    assert read_db(project_dir, "SELECT MANUAL_EDIT FROM PARTICLE_PICKING_LIST WHERE "
                                "PARENT_IMAGE_ASSET_ID = 1")[0][0] == 1
    listing = cistem(home, "picks", "list", "--image", "2", "--project", project, "--json")
    assert json.loads(listing.stdout)["total"] == read_db(
        project_dir, "SELECT COUNT(*) FROM PARTICLE_POSITION_ASSETS WHERE "
                     "PARENT_IMAGE_ASSET_ID = 2")[0][0]

    # a refinement package from every position
    created = cistem(home, "packages", "create", "--largest-dimension", "135",
                     "--symmetry", "O", "--molecular-weight", "480", "--project", project,
                     "--json")
    assert created.returncode == 0, created.stderr + created.stdout
    package = json.loads(created.stdout)["package"]
    package_id = int(package["refinement_package_asset_id"])
    assert package["symmetry"] == "O" and int(package["stack_box_size"]) == 216
    stack_path = project_dir / "Assets" / "ParticleStacks" / f"particle_stack_{package_id}.mrc"
    assert package["stack_filename"] == str(stack_path)
    stack = mrc.read(stack_path)
    assert stack.shape == (total, 216, 216)
    contained = read_db(
        project_dir,
        f"SELECT PARENT_IMAGE_ASSET_ID, DEFOCUS_1, DEFOCUS_2, DEFOCUS_ANGLE "
        f"FROM REFINEMENT_PACKAGE_CONTAINED_PARTICLES_{package_id} ORDER BY POSITION_IN_STACK",
    )
    assert len(contained) == total
    for image_id, (_, ctf) in zip((1, 2), truths, strict=True):
        assert {r[1:] for r in contained if r[0] == image_id} == {
            (ctf.defocus_1_angstroms, ctf.defocus_2_angstroms, ctf.astigmatism_angle_degrees)
        }
    assert not list((project_dir / "Scratch").rglob("*.mrc"))

    # a package from that one, without re-extracting
    derived = cistem(home, "packages", "from-package", str(package_id), "--symmetry", "C1",
                     "--project", project, "--json")
    assert derived.returncode == 0, derived.stderr + derived.stdout
    child = json.loads(derived.stdout)["package"]
    assert child["stack_filename"] == str(stack_path) and child["symmetry"] == "C1"
    listed = cistem(home, "packages", "list", "--project", project)
    assert listed.returncode == 0 and "Refinement Package #2" in listed.stdout

    # the standalone program on the same micrograph
    _, ctf = truths[0]
    standalone = cistem(home, "find-particles", str(files[0]), "--pixel-size", str(PIXEL),
                        "--defocus-1", str(ctf.defocus_1_angstroms), "--defocus-2",
                        str(ctf.defocus_2_angstroms), "--astigmatism-angle", "25", "--json")
    assert standalone.returncode == 0, standalone.stderr
    picked = json.loads(standalone.stdout)
    assert len(picked["x"]) == len(picked["y"]) == len(picked["peak_height"]) > 20
    assert _recall(np.column_stack([picked["x"], picked["y"]]), truths[0][0], 27.0) >= 0.85


def test_find_particles_cli_rejects_bad_input(home, tmp_path):
    missing = cistem(home, "find-particles", str(tmp_path / "nope.mrc"), "--pixel-size", "1",
                     "--defocus-1", "10000", "--defocus-2", "10000")
    assert missing.returncode == 2 and "find-particles" in missing.stderr
    path = tmp_path / "flat.mrc"
    mrc.write(path, np.zeros((128, 128), np.float32), voxel_size_angstroms=1.0)
    bad = cistem(home, "find-particles", str(path), "--pixel-size", "-1",
                 "--defocus-1", "10000", "--defocus-2", "10000")
    assert bad.returncode == 2 and "pixel-size" in bad.stderr
