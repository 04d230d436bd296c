"""Manual editing of picks: the daemon-side ``positions_edit`` operation (client_ops).

The message itself round-trips in tests/test_protocol.py (its example) and runs
through a real daemon in tests/test_find_particles_action.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cistemd.errors import InvalidInputError
from cistemd.io import mrc
from cistemd.manager.client_ops import edit_positions
from cistemd.project import Project
from cistemd.protocol import REGISTRY


@pytest.fixture
def project(tmp_path: Path):
    path = tmp_path / "image.mrc"
    mrc.write(path, np.zeros((64, 64), np.float32), voxel_size_angstroms=2.0)
    proj = Project.create(tmp_path / "proj")
    proj.import_images([path], voltage_kv=300.0, spherical_aberration_mm=2.7,
                       pixel_size_angstroms=2.0)
    yield proj
    proj.close()


def test_add_then_remove_by_id_and_by_nearest_point(project):
    with project.transaction() as conn:
        conn.execute("INSERT INTO PARTICLE_PICKING_LIST (PARENT_IMAGE_ASSET_ID, MANUAL_EDIT) "
                     "VALUES (1, 0)")
    with project.transaction():
        added = edit_positions(project, "add", 1, x_angstroms=[10.0, 50.0, 90.0],
                               y_angstroms=[20.0, 60.0, 100.0])
    assert added["operation"] == "add" and len(added["position_ids"]) == 3
    assert added["total"] == 3
    rows = project.particle_positions(1)
    assert [(r["x_position"], r["y_position"], r["picking_id"]) for r in rows] == [
        (10.0, 20.0, 1), (50.0, 60.0, 1), (90.0, 100.0, 1)]
    assert project.query("SELECT MANUAL_EDIT FROM PARTICLE_PICKING_LIST")[0]["manual_edit"] == 1
    first, second, third = added["position_ids"]
    with project.transaction():
        removed = edit_positions(project, "remove", 1, position_ids=[first],
                                 x_angstroms=[52.0, 300.0], y_angstroms=[57.0, 300.0],
                                 radius_angstroms=10.0)
    # (300, 300) is farther than 10 Å from any position: nothing removed for it
    assert removed["position_ids"] == [first, second] and removed["total"] == 1
    assert [r["particle_position_asset_id"] for r in project.particle_positions(1)] == [third]


def test_bad_edits_are_refused(project):
    with project.transaction(), pytest.raises(InvalidInputError, match="no image asset"):
        edit_positions(project, "add", 7, x_angstroms=[1.0], y_angstroms=[1.0])
    with project.transaction(), pytest.raises(InvalidInputError, match="differ in length"):
        edit_positions(project, "add", 1, x_angstroms=[1.0], y_angstroms=[])
    with project.transaction(), pytest.raises(InvalidInputError, match="not on image"):
        edit_positions(project, "remove", 1, position_ids=[12345])
    with project.transaction(), pytest.raises(InvalidInputError, match="add or remove"):
        edit_positions(project, "move", 1)


def test_message_schema():
    request = REGISTRY["positions_edit"]
    assert request.replies == ("positions_reply",) or list(request.replies) == ["positions_reply"]
    assert {"project", "operation", "image_asset_id"} <= set(request.example)
