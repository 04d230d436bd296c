"""Refinement packages: the wizard's rows, stacks and the per-package views (no daemon).

The actions' three roles are driven in-process here (start, run_task in a
scratch directory, advance, record); tests/test_find_particles_action.py runs
the same through a real daemon.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from cistemd.actions.base import TaskContext, get_action
from cistemd.errors import InvalidInputError, ProjectError
from cistemd.io import mrc
from cistemd.project import Project, packages

PIXEL = 1.5


def _run_job(project: Project, action_name: str, parameters: dict, job_id: int = 1) -> dict:
    """Plan, run and record a whole job in-process; return {task key: result}."""
    action = get_action(action_name)
    checked = action.validate(parameters)
    state, stage = action.start(checked, project=project)
    every: dict = {}
    while stage is not None:
        results = {}
        for task in stage.tasks:
            context = TaskContext(task_id=task.key, attempt=1,
                                  scratch_dir=project.layout.scratch_dir / f"job_{job_id}")
            result = action.run_task(task.payload, context)
            action.record(project, job_id, task.key, result)
            results[task.key] = result
        every.update(results)
        if stage.final:
            break
        state, stage = action.advance(checked, state, results, project=project)
    return every


@pytest.fixture
def project(tmp_path: Path):
    """Two noisy 512² images with a CTF estimate each and picked positions."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(2):
        image = rng.normal(100.0, 5.0, size=(512, 600)).astype(np.float32)
        image[200:220, 300:320] -= 15.0  # a dark "particle" (3σ: not an outlier)
        path = tmp_path / f"image_{index}.mrc"
        mrc.write(path, image, voxel_size_angstroms=PIXEL)
        paths.append(path)
    proj = Project.create(tmp_path / "proj")
    ids = proj.import_images(paths, voltage_kv=300.0, spherical_aberration_mm=2.7,
                             pixel_size_angstroms=PIXEL)
    for image_id, defocus in zip(ids, (12000.0, 18000.0), strict=True):
        proj.add_ctf_estimate(image_id, defocus1_angstroms=defocus + 100,
                              defocus2_angstroms=defocus - 100, defocus_angle_degrees=33.0,
                              additional_phase_shift_degrees=0.0)
    proj.add_particle_positions(ids[0], [310 * PIXEL, 100.0, 800.0], [210 * PIXEL, 90.0, 500.0])
    proj.add_particle_positions(ids[1], [450.0, 30.0], [300.0, 700.0])
    yield proj
    proj.close()


def test_new_package_from_positions(project):
    results = _run_job(project, "create_refinement_package",
                       {"largest_dimension": 100.0, "symmetry": "o", "number_of_classes": 3,
                        "molecular_weight": 480.0, "seed": 7})
    assert set(results) == {"image-1", "image-2", "assemble"}
    (package,) = project.refinement_packages()
    package_id = int(package["refinement_package_asset_id"])
    # default box: even, 2^a 3^b, >= 2.2 * 100 / 1.5 = 146.7 -> 162
    assert int(package["stack_box_size"]) == 162
    assert package["symmetry"] == "O"
    assert package["name"] == f"Refinement Package #{package_id}"
    assert package["stack_filename"] == str(project.layout.particle_stack_path(package_id))
    stack = mrc.read(package["stack_filename"])
    assert stack.shape == (5, 162, 162)
    assert np.allclose(stack.mean(axis=(1, 2)), 0.0, atol=1e-4)
    # the dark particle sits at the centre of the first box
    assert stack[0, 81, 81] < -2.0

    conn = sqlite3.connect(project.db_path)
    rows = conn.execute(
        f"SELECT ORIGINAL_PARTICLE_POSITION_ASSET_ID, PARENT_IMAGE_ASSET_ID, POSITION_IN_STACK, "
        f"DEFOCUS_1, DEFOCUS_2, DEFOCUS_ANGLE, PIXEL_SIZE, ASSIGNED_SUBSET "
        f"FROM REFINEMENT_PACKAGE_CONTAINED_PARTICLES_{package_id} ORDER BY POSITION_IN_STACK"
    ).fetchall()
    assert [r[2] for r in rows] == [1, 2, 3, 4, 5]
    assert [r[1] for r in rows] == [1, 1, 1, 2, 2]
    assert rows[0][3:6] == (12100.0, 11900.0, 33.0) and rows[4][3] == 18100.0
    assert {r[6] for r in rows} == {PIXEL}
    assert [r[7] for r in rows] == [1, 2, 1, 2, 1]
    refinement_id = conn.execute(
        f"SELECT REFINEMENT_ID FROM REFINEMENT_PACKAGE_REFINEMENTS_LIST_{package_id}"
    ).fetchone()[0]
    name, n_classes = conn.execute(
        "SELECT NAME, NUMBER_OF_CLASSES FROM REFINEMENT_LIST WHERE REFINEMENT_ID = ?",
        (refinement_id,),
    ).fetchone()
    assert (name, n_classes) == ("Random Parameters", 3)
    for class_number in (1, 2, 3):
        result = conn.execute(
            f"SELECT PHI, THETA, PSI, OCCUPANCY, SIGMA, IMAGE_IS_ACTIVE, DEFOCUS1 "
            f"FROM REFINEMENT_RESULT_{refinement_id}_{class_number}"
        ).fetchall()
        assert len(result) == 5
        for phi, theta, psi, occupancy, sigma, active, _defocus in result:
            assert -180 <= phi <= 180 and 0 <= theta <= 180 and -180 <= psi <= 180
            assert 0 <= occupancy <= 200 / 3 and sigma == 1.0 and active == 1
        assert result[0][6] == 12100.0
    references = conn.execute(
        f"SELECT CLASS_NUMBER, VOLUME_ASSET_ID FROM REFINEMENT_PACKAGE_CURRENT_REFERENCES_"
        f"{package_id}"
    ).fetchall()
    assert references == [(1, -1), (2, -1), (3, -1)]
    conn.close()
    assert project.integrity_check() == []


def test_random_angles_are_uniform_on_the_sphere():
    particles = [{"POSITION_IN_STACK": i + 1, "DEFOCUS_1": 1.0, "DEFOCUS_2": 1.0,
                  "DEFOCUS_ANGLE": 0.0, "PHASE_SHIFT": 0.0, "PIXEL_SIZE": 1.0,
                  "MICROSCOPE_VOLTAGE": 300.0, "SPHERICAL_ABERRATION": 2.7,
                  "AMPLITUDE_CONTRAST": 0.07, "ASSIGNED_SUBSET": 1} for i in range(20000)]
    (rows,) = packages.random_initial_results(particles, 1, np.random.default_rng(1))
    cos_theta = np.cos(np.radians([r["THETA"] for r in rows]))
    # uniform on the sphere: cos θ uniform in [-1, 1]
    assert abs(float(np.mean(cos_theta))) < 0.02
    assert abs(float(np.mean(cos_theta**2)) - 1 / 3) < 0.01
    assert {r["OCCUPANCY"] for r in rows} == {100.0}


def test_box_size_symmetry_and_subsets():
    assert packages.default_box_size(150.0, 1.0) == 384  # 2^7·3 >= 330
    assert packages.default_box_size(100.0, 1.5) == 162
    for value in ("C1", "c7", "D2", "T", "O", "I", "I2"):
        assert packages.validate_symmetry(value) == value.upper()
    for bad in ("C0", "X", "D", "O1", ""):
        with pytest.raises(ProjectError, match="point group"):
            packages.validate_symmetry(bad)
    assert packages.assigned_subsets([1] * 4) == [1, 2, 1, 2]
    many = packages.assigned_subsets([1] * 600)
    assert many[:60] == [2] * 60 and many[60:120] == [1] * 60
    spread = packages.assigned_subsets([i // 30 for i in range(900)])
    assert spread[0] == 2 and spread[30] == 1
    with pytest.raises(ProjectError, match="2D classification"):
        packages.create_from_class_selection(None, 1)


def test_from_existing_package_without_reextracting(project):
    _run_job(project, "create_refinement_package",
             {"largest_dimension": 100.0, "number_of_classes": 2, "seed": 3})
    (parent,) = project.refinement_packages()
    parent_id = int(parent["refinement_package_asset_id"])
    refinement_id = int(parent["last_refinement_id"])
    # make class 2 the best for particles 1 and 4
    with project.transaction() as conn:
        conn.execute("UPDATE REFINEMENT_RESULTS SET OCCUPANCY = 10 WHERE REFINEMENT_ID = ?",
                     (refinement_id,))
        conn.execute("UPDATE REFINEMENT_RESULTS SET OCCUPANCY = 90, PSI = 42 WHERE REFINEMENT_ID"
                     " = ? AND CLASS_NUMBER = 2 AND POSITION_IN_STACK IN (1, 4)",
                     (refinement_id,))

    # carry over everything, merge both classes into one (best occupancy), new symmetry
    _run_job(project, "create_refinement_package",
             {"source": "package", "parent_package": parent_id, "class_sources": "1+2",
              "symmetry": "D7"}, job_id=2)
    merged = project.refinement_packages()[-1]
    assert merged["stack_filename"] == parent["stack_filename"]
    assert int(merged["number_of_classes"]) == 1 and merged["symmetry"] == "D7"
    assert int(merged["number_of_particles"]) == 5
    rows = project.query(
        "SELECT POSITION_IN_STACK, PSI, OCCUPANCY FROM REFINEMENT_RESULTS WHERE REFINEMENT_ID = ?"
        " ORDER BY POSITION_IN_STACK", (int(merged["last_refinement_id"]),))
    assert [r["psi"] for r in rows if r["position_in_stack"] in (1, 4)] == [42.0, 42.0]
    assert {r["occupancy"] for r in rows} == {100.0}
    assert project.query("SELECT NAME FROM REFINEMENT_LIST WHERE REFINEMENT_ID = ?",
                         (int(merged["last_refinement_id"]),))[0]["name"] == "Starting Parameters"

    # keep only the particles best in class 2: a new stack with those two images
    _run_job(project, "create_refinement_package",
             {"source": "package", "parent_package": parent_id,
              "carry_over_all_particles": False, "selected_classes": "2",
              "number_of_classes": 2, "randomise_occupancies": True, "seed": 1}, job_id=3)
    subset = project.refinement_packages()[-1]
    subset_id = int(subset["refinement_package_asset_id"])
    assert subset["stack_filename"] == str(project.layout.particle_stack_path(subset_id))
    new_stack = mrc.read(subset["stack_filename"])
    old_stack = mrc.read(parent["stack_filename"])
    assert new_stack.shape[0] == 2
    assert np.allclose(new_stack[0], old_stack[0]) and np.allclose(new_stack[1], old_stack[3])
    kept = project.query(
        "SELECT ORIGINAL_PARTICLE_POSITION_ASSET_ID, POSITION_IN_STACK FROM "
        "REFINEMENT_PACKAGE_PARTICLES WHERE REFINEMENT_PACKAGE_ASSET_ID = ? "
        "ORDER BY POSITION_IN_STACK", (subset_id,))
    assert [r["position_in_stack"] for r in kept] == [1, 2]
    occupancies = [r["occupancy"] for r in project.query(
        "SELECT OCCUPANCY FROM REFINEMENT_RESULTS WHERE REFINEMENT_ID = ?",
        (int(subset["last_refinement_id"]),))]
    assert len(occupancies) == 4 and all(0 <= o <= 100 for o in occupancies)
    assert not math.isclose(occupancies[0], 100.0)
    assert project.integrity_check() == []


def test_errors_name_the_problem(project, tmp_path):
    action = get_action("create_refinement_package")
    with pytest.raises(InvalidInputError, match="symmetry"):
        action.validate({"symmetry": "Q3"})
    with pytest.raises(InvalidInputError, match="parent_package"):
        action.validate({"source": "package"})
    with pytest.raises(InvalidInputError, match="selected_classes"):
        action.validate({"source": "package", "parent_package": 1,
                         "carry_over_all_particles": False})
    with pytest.raises(InvalidInputError, match="class_sources"):
        action.validate({"source": "package", "parent_package": 1, "class_sources": "1+x"})
    bare = Project.create(tmp_path / "bare")
    path = tmp_path / "lonely.mrc"
    mrc.write(path, np.zeros((64, 64), np.float32), voxel_size_angstroms=1.0)
    (image_id,) = bare.import_images([path], voltage_kv=300, spherical_aberration_mm=2.7,
                                     pixel_size_angstroms=1.0)
    with pytest.raises(InvalidInputError, match="no particle positions"):
        action.start(action.validate({}), project=bare)
    bare.add_particle_positions(image_id, [10.0], [10.0])
    with pytest.raises(InvalidInputError, match="no CTF estimate"):
        action.start(action.validate({}), project=bare)
    bare.close()
