"""The daemon's asset/group/result operations, on a Project without a daemon."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cistemd import protocol
from cistemd.errors import CistemError, InvalidInputError
from cistemd.io import mrc
from cistemd.manager import client_ops
from cistemd.project import Project


@pytest.fixture
def project(tmp_path: Path):
    with Project.create(tmp_path / "P") as opened:
        yield opened


@pytest.fixture
def volume(tmp_path: Path) -> str:
    path = tmp_path / "map.mrc"
    mrc.write(path, np.zeros((8, 8, 8), np.float32), voxel_size_angstroms=2.5)
    return str(path)


def test_unknown_and_missing_options_are_named(project, volume):
    with pytest.raises(
        InvalidInputError, match=r"unknown option 'pixel_size'.*pixel_size_angstroms"
    ):
        client_ops.import_assets(project, "volumes", [volume], {"pixel_size": 2.0})
    with pytest.raises(InvalidInputError, match=r"missing option.*exposure_per_frame"):
        client_ops.import_assets(
            project,
            "movies",
            [volume],
            {"voltage_kv": 300, "spherical_aberration_mm": 2.7, "pixel_size_angstroms": 1.0},
        )
    with pytest.raises(InvalidInputError, match="option voltage_kv: expected a number"):
        client_ops.import_assets(project, "images", [volume], {"voltage_kv": "high"})
    with pytest.raises(InvalidInputError, match="must be absolute"):
        client_ops.import_assets(project, "volumes", ["map.mrc"], {})
    with pytest.raises(InvalidInputError, match="one text file"):
        client_ops.import_assets(project, "positions", [volume, volume], {})


def test_replies_match_the_protocol(project, volume):
    imported = client_ops.import_assets(project, "volumes", [volume], {})
    assert imported == {"kind": "volumes", "ids": [1], "count": 1, "warnings": []}
    protocol.new_message("assets_imported", imported)
    listed = client_ops.list_assets(project, "volumes")
    assert listed["total"] == 1 and listed["assets"][0]["pixel_size"] == pytest.approx(2.5)
    protocol.new_message("assets_reply", listed)
    created = client_ops.edit_groups(project, "volume", "create", name="maps")
    added = client_ops.edit_groups(
        project, "volume", "add", group_id=created["group_id"], asset_ids=[1]
    )
    assert added["changed"] == 1
    protocol.new_message("groups_reply", added)
    groups = client_ops.list_groups(project, "volume", group_id=created["group_id"])
    assert groups["members"] == [1] and groups["members_total"] == 1
    protocol.new_message("groups_reply", groups)
    in_group = client_ops.list_assets(project, "volumes", group_id=created["group_id"])
    assert [row["volume_asset_id"] for row in in_group["assets"]] == [1]
    with pytest.raises(InvalidInputError, match="no groups"):
        client_ops.list_assets(project, "packages", group_id=1)
    with pytest.raises(CistemError):
        client_ops.edit_groups(project, "volume", "delete", group_id=0)


def test_pages_stay_under_the_frame_size():
    rows = [{"filename": "x" * 10_000} for _ in range(200)]
    page = client_ops._page(rows)
    assert 0 < len(page) < 200
    assert len(json.dumps(page)) <= client_ops.PAGE_BYTES + 20_000
    assert client_ops._page([{"filename": "y" * (2 * client_ops.PAGE_BYTES)}])  # never empty
