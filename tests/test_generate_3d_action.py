"""The ``generate_3d`` action in-process: plan, dump tasks, merge task, records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cistemd.actions.base import TaskContext, get_action
from cistemd.actions.generate_3d import Generate3D
from cistemd.cli.main import main
from cistemd.errors import InvalidInputError
from cistemd.io import mrc
from cistemd.io.statistics import read_statistics
from cistemd.kernels import simulate
from cistemd.project.project import Project


@pytest.fixture
def project_with_package(tmp_path: Path):
    model = simulate.asymmetric_protein_model(n_residues=300, seed=4)
    volume = simulate.coulomb_potential_map(model, box=40, pixel_size_angstroms=2.5,
                                            b_factor_angstroms2=40.0)
    data = tmp_path / "data"
    data.mkdir()
    mrc.write(data / "truth.mrc", volume, voxel_size_angstroms=2.5, kind="volume")
    assert main([
        "project3d", str(data / "truth.mrc"), "--random", "900", "--defocus", "12000",
        "--snr", "0.1", "--output", str(data / "stack.mrc"),
        "--write-parameters", str(data / "particles.star"),
    ]) == 0
    project = Project.create(tmp_path / "proj")
    package_id = project.import_refinement_package(
        stack_path=data / "stack.mrc",
        parameters_path=data / "particles.star",
        pixel_size_angstroms=2.5,
        molecular_weight_kda=35.0,
        largest_dimension_angstroms=70.0,
    )
    refinement_id = int(project.refinements(package_id)[0]["refinement_id"])
    yield project, refinement_id
    project.close()


def _run(action: Generate3D, project: Project, parameters: dict, tmp_path: Path) -> list[dict]:
    checked = action.validate(parameters)
    plan, stage = action.start(checked, project=project)
    job_id = 7
    results = {}
    for task in stage.tasks:
        scratch = tmp_path / "Scratch" / task.key
        context = TaskContext(task_id=task.key, attempt=1, scratch_dir=scratch)
        results[task.key] = action.run_task(task.payload, context)
        action.record(project, job_id, task.key, results[task.key])
    assert not stage.final
    plan, merge_stage = action.advance(checked, plan, results, project=project)
    assert merge_stage is not None and merge_stage.final and len(merge_stage.tasks) == 1
    merge = merge_stage.tasks[0]
    context = TaskContext(task_id="merge", attempt=1, scratch_dir=tmp_path / "Scratch" / "merge")
    result = action.run_task(merge.payload, context)
    action.record(project, job_id, merge.key, result)
    _, done = action.advance(checked, plan, {"merge": result}, project=project)
    assert done is None
    return [results[k] for k in sorted(results)] + [result]


def test_registered() -> None:
    action = get_action("generate_3d")
    assert isinstance(action, Generate3D) and action.title == "Generate 3D"
    defaults = action.validate({"refinement_id": 1})
    assert defaults["score_weight_conversion"] == 2.0 and defaults["adjust_scores"] is True
    with pytest.raises(InvalidInputError, match="refinement_id"):
        action.validate({})


def test_generate_3d_end_to_end(project_with_package, tmp_path: Path) -> None:
    project, refinement_id = project_with_package
    action = Generate3D()
    results = _run(
        action, project,
        {"refinement_id": refinement_id, "particles_per_task": 400, "save_half_maps": True},
        tmp_path,
    )
    dumps, merge = results[:-1], results[-1]
    assert len(dumps) == 3 and sum(d["n_particles"] for d in dumps) == 900
    assert all(not Path(d["dump"]).exists() for d in dumps)  # merged and removed
    layout = project.layout
    volume = layout.generate3d_volume_path(1, refinement_id, 1)
    assert volume.exists()
    assert layout.generate3d_volume_path(1, refinement_id, 1, half_map=1).exists()
    assert layout.generate3d_volume_path(1, refinement_id, 1, half_map=2).exists()
    assert layout.orth_view_path(volume.name).exists()
    assert mrc.read(layout.orth_view_path(volume.name)).shape == (40, 120)
    stats = read_statistics(
        layout.statistics_path(refinement_id, 1, prefix="generate3d_stats")
    )
    assert stats.box_size == 40
    volumes = project.volumes()
    assert len(volumes) == 1 and volumes[0]["filename"] == str(volume)
    assert volumes[0]["half_map1_filename"].endswith("_map1.mrc")
    rows = project.query(
        "SELECT * FROM REFINEMENT_CLASS_STATISTICS WHERE REFINEMENT_ID = ? ORDER BY SHELL",
        (refinement_id,),
    )
    assert len(rows) == len(stats) and rows[0]["fsc"] > 0.9
    np.testing.assert_allclose([r["fsc"] for r in rows], stats.fsc, atol=1e-4)
    recon = project.query("SELECT * FROM RECONSTRUCTION_LIST")
    assert len(recon) == 1 and recon[0]["volume_asset_id"] == volumes[0]["volume_asset_id"]
    assert recon[0]["outer_mask_radius"] == pytest.approx(0.6 * 70.0)
    refinement = project.refinements()[0]
    assert refinement["resolution_statistics_are_generated"] == 1
    details = project.query("SELECT * FROM REFINEMENT_CLASS_DETAILS WHERE REFINEMENT_ID = ?",
                            (refinement_id,))
    assert details[0]["estimated_resolution"] == pytest.approx(merge["resolution_0143"])
    assert details[0]["reconstructed_volume_asset_id"] == volumes[0]["volume_asset_id"]
    # A second run is job #2 in the file names.
    _run(action, project, {"refinement_id": refinement_id}, tmp_path / "again")
    assert layout.generate3d_volume_path(2, refinement_id, 1).exists()


def test_missing_refinement_is_reported(project_with_package) -> None:
    project, _ = project_with_package
    action = Generate3D()
    with pytest.raises(InvalidInputError, match="refinement 99"):
        action.start(action.validate({"refinement_id": 99}), project=project)


@pytest.mark.slow
def test_generate_3d_through_the_daemon(tmp_path: Path) -> None:
    import daemon_fixtures as fx

    data = tmp_path / "data"
    data.mkdir()
    model = simulate.asymmetric_protein_model(n_residues=200, seed=5)
    volume = simulate.coulomb_potential_map(model, box=32, pixel_size_angstroms=3.0,
                                            b_factor_angstroms2=40.0)
    mrc.write(data / "truth.mrc", volume, voxel_size_angstroms=3.0, kind="volume")
    assert main([
        "project3d", str(data / "truth.mrc"), "--random", "600", "--defocus", "15000",
        "--snr", "0.2", "--output", str(data / "stack.mrc"),
        "--write-parameters", str(data / "particles.star"),
    ]) == 0
    home = fx.CistemHome.at(tmp_path / "home")
    process = fx.DaemonProcess(home, tmp_path / "daemon.log")
    try:
        process.start()
        project = tmp_path / "proj"
        with process.client() as client:
            client.create_project(project)
            client.import_assets(
                project, "refinement_package", [data / "stack.mrc", data / "particles.star"],
                pixel_size_angstroms=3.0, molecular_weight_kda=25.0,
                largest_dimension_angstroms=60.0,
            )
            job_id = client.submit(
                project, "generate_3d",
                {"refinement_id": 1, "particles_per_task": 250, "save_half_maps": True},
                profile="local:2",
            )
            record = client.wait_for_job(job_id, timeout=240)
            assert record["state"] == "completed", record
            assert record["tasks"] == {"completed": 4}
    finally:
        process.cleanup()
    assets = project / "Assets" / "Volumes"
    assert (assets / "generate3d_volume_1_1_1.mrc").exists()
    assert (assets / "generate3d_volume_1_1_1_map1.mrc").exists()
    assert (assets / "OrthViews" / "generate3d_volume_1_1_1.mrc").exists()
    assert not list((project / "Scratch").rglob("generate3d_dump_*.npz"))
