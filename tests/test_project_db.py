"""The project database: creation, opening, groups, cisTEM's sqlite3 recipes, relocation,
single writer, read-only access."""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cistemd.errors import ProjectError, ProjectLockedError
from cistemd.io import mrc
from cistemd.project import LATEST_VERSION, MountEntry, Project
from cistemd.project.schema import ASSET_KINDS, STATIC_TABLES

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MICROGRAPHS = DATA / "real_micrographs"


RealProject = tuple[Project, dict[str, Any]]


def write_movie(path: Path, n_frames: int = 4, shape: tuple[int, int] = (48, 64)) -> Path:
    rng = np.random.default_rng(len(str(path)))
    frames = rng.poisson(1.0, size=(n_frames, *shape)).astype(np.uint16)
    mrc.write(path, frames, voxel_size_angstroms=1.0, kind="stack")
    return path


def write_image(path: Path, shape: tuple[int, int] = (64, 64), pixel: float = 1.0) -> Path:
    rng = np.random.default_rng(len(str(path)))
    mrc.write(path, rng.normal(size=shape).astype(np.float32), voxel_size_angstroms=pixel)
    return path


def dump(db_path: Path) -> str:
    with closing(sqlite3.connect(db_path)) as conn:
        return "\n".join(conn.iterdump())


def external(db_path: Path, sql: str) -> list[tuple]:
    """Run SQL on a separate connection, as a user's sqlite3 session would."""
    with closing(sqlite3.connect(db_path, timeout=5)) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def project(tmp_path: Path):
    with Project.create(tmp_path / "proj") as opened:
        yield opened


# -- creating and opening --------------------------------------------------------------------


def test_create_lays_out_directory_and_database(tmp_path: Path) -> None:
    with Project.create(tmp_path / "apoferritin") as project:
        root = tmp_path / "apoferritin"
        assert project.path == root and project.name == "apoferritin"
        assert project.db_path == root / "apoferritin.db"
        for sub in ("Assets/Movies", "Assets/Images/Spectra", "Assets/Volumes/OrthViews",
                    "Assets/ParticleStacks", "Scratch"):
            assert (root / sub).is_dir()
        conn = project.connection
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
        assert project.schema_version == LATEST_VERSION
        master = project.query("SELECT * FROM MASTER_SETTINGS")
        assert master == [{
            "number": 1, "project_directory": str(root), "project_name": "apoferritin",
            "current_version": LATEST_VERSION, "total_cpu_hours": 0.0, "total_jobs_run": 0,
            "cistem_version_text": master[0]["cistem_version_text"],
            "current_workflow": "Single Particle",
        }]
        assert master[0]["cistem_version_text"].startswith("cistemd ")
        lock = external(project.db_path, "SELECT ACTIVE_PROCESS, ACTIVE_HOST FROM PROCESS_LOCK")
        assert lock[0][0] == os.getpid()
        assert external(project.db_path, "PRAGMA integrity_check") == [("ok",)]
        assert project.integrity_check() == []
        assert project.warnings == []
    assert project.closed
    assert external(root / "apoferritin.db", "SELECT COUNT(*) FROM PROCESS_LOCK") == [(0,)]
    project.close()  # idempotent


def test_every_cistem_table_has_cistems_columns(project: Project) -> None:
    for table, columns in STATIC_TABLES.items():
        info = project.connection.execute(f"PRAGMA table_info({table})").fetchall()
        assert [row[1] for row in info] == [name for name, _ in columns], table
        expected_types = {"p": "INTEGER", "P": "INTEGER", "i": "INTEGER", "l": "INTEGER",
                          "r": "REAL", "t": "TEXT"}
        assert [row[2] for row in info] == [expected_types[code] for _, code in columns]
        primary = [row[1] for row in info if row[5]]
        assert primary == [name for name, code in columns if code in "pP"], table


def test_create_refuses_an_existing_project_and_takes_names(tmp_path: Path) -> None:
    Project.create(tmp_path / "a").close()
    with pytest.raises(ProjectError, match="already holds a project"):
        Project.create(tmp_path / "a")
    with Project.create(tmp_path / "b", name="ribosome") as named:
        assert named.db_path == tmp_path / "b" / "ribosome.db"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ProjectError, match="not a directory"):
        Project.create(tmp_path / "file")


def test_open_by_directory_or_database_file(tmp_path: Path) -> None:
    Project.create(tmp_path / "p").close()
    for target in (tmp_path / "p", tmp_path / "p" / "p.db", str(tmp_path / "p")):
        with Project.open(target) as project:
            assert project.db_path == tmp_path / "p" / "p.db" and not project.read_only
    with pytest.raises(ProjectError, match="no such project directory"):
        Project.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProjectError, match="no project database"):
        Project.open(tmp_path / "empty")


def test_open_refuses_foreign_databases_without_touching_them(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    with closing(sqlite3.connect(other / "other.db")) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
    before = (other / "other.db").read_bytes()
    with pytest.raises(ProjectError, match="not a cistemd project"):
        Project.open(other)
    assert (other / "other.db").read_bytes() == before  # not switched to WAL
    cistem = tmp_path / "cistem"
    cistem.mkdir()
    with closing(sqlite3.connect(cistem / "cistem.db")) as conn:
        conn.execute("CREATE TABLE MASTER_SETTINGS (NUMBER INTEGER PRIMARY KEY)")
        conn.commit()
    with pytest.raises(ProjectError, match="cisTEM project database"):
        Project.open(cistem)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "garbage.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ProjectError, match=r"garbage\.db"):
        Project.open(garbage)
    # a failed open leaves no lock behind
    Project.create(tmp_path / "fine").close()
    with Project.open(tmp_path / "fine"):
        pass


def test_network_filesystem_is_warned_about(tmp_path: Path) -> None:
    fake = [MountEntry(Path("/"), "ext4", "/dev/sda1"), MountEntry(tmp_path, "nfs4", "srv:/x")]
    with Project.create(tmp_path / "p", mount_table=fake) as project:
        assert len(project.warnings) == 1 and "nfs4" in project.warnings[0]
        assert "WAL" in project.warnings[0]
    with Project.open(tmp_path / "p", mount_table=fake, read_only=True) as project:
        assert any("nfs4" in w for w in project.warnings)
    local = [MountEntry(Path("/"), "xfs", "/dev/sda1")]
    with Project.open(tmp_path / "p", mount_table=local) as project:
        assert project.warnings == []


def test_transaction_is_all_or_nothing(project: Project, tmp_path: Path) -> None:
    image = write_image(tmp_path / "i.mrc")
    before = dump(project.db_path)
    with pytest.raises(RuntimeError), project.transaction():
        project.import_images([image], voltage_kv=300, spherical_aberration_mm=2.7,
                              pixel_size_angstroms=1.0)
        project.create_group("image", "g")
        raise RuntimeError("boom")
    assert dump(project.db_path) == before
    with project.transaction():
        project.import_images([image], voltage_kv=300, spherical_aberration_mm=2.7,
                              pixel_size_angstroms=1.0)
        project.create_group("image", "g")
    assert project.summary()["images"] == 1 and project.summary()["groups"]["image"] == 1


# -- groups ----------------------------------------------------------------------------------


def test_groups_follow_cistem(project: Project, tmp_path: Path) -> None:
    images = project.import_images(
        [write_image(tmp_path / f"m{i}.mrc") for i in range(4)],
        voltage_kv=300, spherical_aberration_mm=2.7, pixel_size_angstroms=1.0,
    )
    groups = project.list_groups("image")
    assert groups == [{"group_id": 0, "name": "All Images", "count": 4, "implicit": True}]
    assert project.group_members("image", 0) == images
    good = project.create_group("image", "good")
    bad = project.create_group("image", "bad")
    assert (good, bad) == (1, 2)
    assert project.add_to_group("image", good, [images[2], images[0], images[2]]) == 2
    assert project.add_to_group("image", good, [images[0], images[3]]) == 1  # 0 already in
    assert project.group_members("image", good) == [images[2], images[0], images[3]]
    # cisTEM's per-group table: MEMBER_NUMBER 1.. in insertion order
    assert external(project.db_path, "SELECT * FROM IMAGE_GROUP_1 ORDER BY MEMBER_NUMBER") == [
        (1, images[2]), (2, images[0]), (3, images[3])
    ]
    # ... and, as in cisTEM's tables, that is also the order without ORDER BY
    assert external(project.db_path, "SELECT IMAGE_ASSET_ID FROM IMAGE_GROUP_1") == [
        (images[2],), (images[0],), (images[3],)
    ]
    assert external(project.db_path, "SELECT * FROM IMAGE_GROUP_LIST") == [
        (1, "good", 1), (2, "bad", 2)
    ]
    assert project.remove_from_group("image", good, [images[0], images[1]]) == 1
    assert project.group_members("image", good) == [images[2], images[3]]
    project.rename_group("image", bad, "junk")
    assert [g["name"] for g in project.list_groups("image")] == ["All Images", "good", "junk"]
    assert [g["count"] for g in project.list_groups("image")] == [4, 2, 0]
    # deleting an asset removes it from every group
    project.delete_assets("image", [images[3]])
    assert project.group_members("image", good) == [images[2]]
    project.delete_group("image", bad)
    assert external(project.db_path,
                    "SELECT name FROM sqlite_master WHERE name LIKE 'IMAGE_GROUP_2%'") == []
    assert project.create_group("image", "again") == 2  # max + 1, as cisTEM
    assert project.group_members("image", 2) == []


def test_group_errors(project: Project, tmp_path: Path) -> None:
    [image] = project.import_images([write_image(tmp_path / "a.mrc")], voltage_kv=300,
                                    spherical_aberration_mm=2.7, pixel_size_angstroms=1.0)
    with pytest.raises(ProjectError, match="All Images"):
        project.rename_group("image", 0, "x")
    with pytest.raises(ProjectError, match="All Images"):
        project.delete_group("image", 0)
    with pytest.raises(ProjectError, match="All Images"):
        project.add_to_group("image", 0, [image])
    with pytest.raises(ProjectError, match="no image group with id 9"):
        project.add_to_group("image", 9, [image])
    with pytest.raises(ProjectError, match="no image group with id 9"):
        project.group_members("image", 9)
    group = project.create_group("image", "g")
    before = dump(project.db_path)
    with pytest.raises(ProjectError, match=r"id \[77\]"):
        project.add_to_group("image", group, [image, 77])
    assert dump(project.db_path) == before
    with pytest.raises(ProjectError, match="unknown asset kind"):
        project.create_group("micrograph", "x")
    with pytest.raises(ProjectError, match="needs a name"):
        project.create_group("image", "  ")


def test_every_kind_has_groups_and_views(project: Project) -> None:
    for kind, spec in ASSET_KINDS.items():
        group = project.create_group(kind, f"{kind} group")
        assert project.list_groups(kind)[0]["name"] == spec.all_group_name
        columns = [r[1] for r in project.connection.execute(
            f"PRAGMA table_info({spec.view_prefix}{group})")]
        assert columns[:2] == ["MEMBER_NUMBER", spec.view_member_column]
    # cisTEM's own column name for volume groups, plus the expected one
    columns = [r[1] for r in project.connection.execute("PRAGMA table_info(VOLUME_GROUP_1)")]
    assert columns == ["MEMBER_NUMBER", "VOLUME_POSITION_ASSET_ID", "VOLUME_ASSET_ID"]


def test_image_group_from_movie_group(project: Project, tmp_path: Path) -> None:
    movies = project.import_movies(
        [write_movie(tmp_path / f"mov{i}.mrc") for i in range(4)],
        voltage_kv=300, spherical_aberration_mm=2.7, pixel_size_angstroms=1.0,
        exposure_per_frame=1.2,
    )
    sums = {}
    for movie in (movies[3], movies[0], movies[1]):  # movie 2 not aligned yet
        path = write_image(project.layout.aligned_sum_path(f"mov{movie}.mrc", movie, 0))
        sums[movie] = project.add_image(path, pixel_size_angstroms=1.0, voltage_kv=300,
                                        spherical_aberration_mm=2.7, parent_movie_id=movie)
    movie_group = project.create_group("movie", "selected")
    project.add_to_group("movie", movie_group, [movies[3], movies[2], movies[1]])
    group = project.image_group_from_movie_group(movie_group, "selected sums")
    assert project.group_members("image", group) == [sums[movies[3]], sums[movies[1]]]
    everything = project.image_group_from_movie_group(0, "all sums")
    assert project.group_members("image", everything) == [
        sums[movies[0]], sums[movies[1]], sums[movies[3]]
    ]
    assert [g["name"] for g in project.list_groups("image")] == [
        "All Images", "selected sums", "all sums"
    ]


# -- cisTEM's sqlite3 recipes ------------------------------------------------------------------


@pytest.fixture
def real_project(tmp_path: Path):
    """A project as cisTEM users have them: movies, aligned sums with CTF, picks, a group."""
    if not MICROGRAPHS.is_dir():
        pytest.skip(f"real micrographs not found in {MICROGRAPHS}")
    project = Project.create(tmp_path / "real")
    movies = project.import_movies(
        [write_movie(tmp_path / f"movie_{i}.mrc") for i in range(2)],
        voltage_kv=300, spherical_aberration_mm=2.7, pixel_size_angstroms=1.0,
        exposure_per_frame=1.0, gain_filename=write_image(tmp_path / "gain.mrc", (48, 64)),
    )
    sums = [
        project.add_image(
            write_image(project.layout.aligned_sum_path(f"movie_{i}.mrc", m, 0)),
            pixel_size_angstroms=1.0, voltage_kv=300, spherical_aberration_mm=2.7,
            parent_movie_id=m,
        )
        for i, m in enumerate(movies)
    ]
    real = project.import_images(
        [MICROGRAPHS / "fei-extended.mrc", MICROGRAPHS / "epu2.9_example.mrc"],
        voltage_kv=300, spherical_aberration_mm=2.7, pixel_size_angstroms=0.8538,
    )
    images = sums + real
    defocus = {}
    for k, image in enumerate(images[:3]):  # the last image has no CTF estimate
        defocus[image] = (10500.0 + 100 * k, 10300.0 + 100 * k, 30.0 + k, 90.0 * k)
        project.add_ctf_estimate(
            image, defocus1_angstroms=defocus[image][0], defocus2_angstroms=defocus[image][1],
            defocus_angle_degrees=defocus[image][2],
            additional_phase_shift_degrees=defocus[image][3], score=0.1 + k,
            detected_ring_resolution_angstroms=4.0 + k,
            output_diagnostic_file=project.layout.ctf_diagnostic_path(f"img{image}.mrc", 0),
            parameters={"AMPLITUDE_CONTRAST": 0.07, "BOX_SIZE": 512},
        )
    project.add_particle_positions(real[0], [100.0, 2000.0], [150.0, 2500.0],
                                   peak_heights=[3.0, 4.0])
    project.add_particle_positions(sums[1], [10.0], [20.0])
    group = project.create_group("image", "good ones")
    project.add_to_group("image", group, [real[1], sums[0]])
    facts = {"movies": movies, "sums": sums, "real": real, "defocus": defocus, "group": group}
    yield project, facts
    project.close()


def _recipe_targets() -> list[str]:
    return ["python"] + (["sqlite3-cli"] if shutil.which("sqlite3") else [])


def run_recipe(db_path: Path, sql: str, target: str) -> list[tuple[str, ...]]:
    """Run a recipe as a user would, while cistemd holds the project open."""
    if target == "sqlite3-cli":
        completed = subprocess.run(["sqlite3", "-separator", "|", str(db_path), sql],
                                   capture_output=True, text=True, check=True, timeout=60)
        return [tuple(line.split("|")) for line in completed.stdout.splitlines()]
    return [tuple("" if v is None else str(v) for v in row) for row in external(db_path, sql)]


@pytest.mark.parametrize("target", _recipe_targets())
def test_recipe_filenames_of_an_image_group(real_project: RealProject, target: str) -> None:
    project, facts = real_project
    db = project.db_path
    group_name = "good ones"
    # From cisTEM's scripts/filter_template_matches_to_group.sh (timothygrant80/cisTEM):
    #   GROUP_ID=$(sqlite3 "$DATABASE_PATH" "SELECT GROUP_ID FROM IMAGE_GROUP_LIST WHERE
    #   GROUP_NAME='$GROUP_NAME';")
    [(group_id,)] = run_recipe(
        db, f"SELECT GROUP_ID FROM IMAGE_GROUP_LIST WHERE GROUP_NAME='{group_name}';", target)
    assert int(group_id) == facts["group"]
    # ... and scripts/list_template_match_info.sh:
    #   sqlite3 "$DATABASE_PATH" "SELECT GROUP_ID, GROUP_NAME FROM IMAGE_GROUP_LIST ORDER BY
    #   GROUP_ID;"   and   "SELECT COUNT(*) FROM IMAGE_GROUP_$group_id;"
    assert run_recipe(db, "SELECT GROUP_ID, GROUP_NAME FROM IMAGE_GROUP_LIST ORDER BY GROUP_ID;",
                      target) == [(group_id, group_name)]
    assert run_recipe(db, f"SELECT COUNT(*) FROM IMAGE_GROUP_{group_id};", target) == [("2",)]
    #   "SELECT COALESCE(MAX(MEMBER_NUMBER), 0) FROM IMAGE_GROUP_$GROUP_ID;"
    assert run_recipe(db, f"SELECT COALESCE(MAX(MEMBER_NUMBER), 0) FROM IMAGE_GROUP_{group_id};",
                      target) == [("2",)]
    #   "SELECT COUNT(*) FROM IMAGE_GROUP_$GROUP_ID WHERE IMAGE_ASSET_ID=$IMAGE_ASSET_ID;"
    member = facts["real"][1]
    assert run_recipe(db, f"SELECT COUNT(*) FROM IMAGE_GROUP_{group_id} WHERE "
                          f"IMAGE_ASSET_ID={member};", target) == [("1",)]
    #   "SELECT NAME FROM IMAGE_ASSETS WHERE IMAGE_ASSET_ID=$IMAGE_ASSET_ID;"
    assert run_recipe(db, f"SELECT NAME FROM IMAGE_ASSETS WHERE IMAGE_ASSET_ID={member};",
                      target) == [("epu2.9_example",)]
    # The file names of a group's images -- the join of IMAGE_ASSETS with IMAGE_GROUP_<n>
    # on IMAGE_ASSET_ID that cisTEM's documented tables are queried with (written here from
    # the table and column names; the verbatim documentation page was not retrievable).
    rows = run_recipe(
        db,
        "SELECT IMAGE_ASSETS.FILENAME FROM IMAGE_ASSETS, IMAGE_GROUP_1 WHERE "
        "IMAGE_ASSETS.IMAGE_ASSET_ID = IMAGE_GROUP_1.IMAGE_ASSET_ID "
        "ORDER BY IMAGE_GROUP_1.MEMBER_NUMBER;",
        target,
    )
    expected = [str(MICROGRAPHS / "epu2.9_example.mrc"),
                str(project.layout.aligned_sum_path("movie_0.mrc", facts["movies"][0], 0))]
    assert [r[0] for r in rows] == expected


@pytest.mark.parametrize("target", _recipe_targets())
def test_recipe_particle_positions_with_image_filenames(real_project: RealProject,
                                                        target: str) -> None:
    project, facts = real_project
    db = project.db_path
    # Particle positions (Å) with the file name of the image they were picked on.
    rows = run_recipe(
        db,
        "SELECT IMAGE_ASSETS.FILENAME, PARTICLE_POSITION_ASSETS.X_POSITION, "
        "PARTICLE_POSITION_ASSETS.Y_POSITION FROM PARTICLE_POSITION_ASSETS, IMAGE_ASSETS "
        "WHERE PARTICLE_POSITION_ASSETS.PARENT_IMAGE_ASSET_ID = IMAGE_ASSETS.IMAGE_ASSET_ID "
        "ORDER BY PARTICLE_POSITION_ASSETS.PARTICLE_POSITION_ASSET_ID;",
        target,
    )
    fei = str(MICROGRAPHS / "fei-extended.mrc")
    sum_1 = str(project.layout.aligned_sum_path("movie_1.mrc", facts["movies"][1], 0))
    assert [(r[0], float(r[1]), float(r[2])) for r in rows] == [
        (fei, 100.0, 150.0), (fei, 2000.0, 2500.0), (sum_1, 10.0, 20.0)
    ]
    # From cisTEM's scripts/new_group_from_classes.sh:
    #   sqlite3 $db_fn "select particle_position_asset_id from particle_position_assets;"
    assert run_recipe(db, "select particle_position_asset_id from particle_position_assets;",
                      target) == [("1",), ("2",), ("3",)]
    #   new_group_id=$( sqlite3 $db_fn "select max(group_id) from particle_position_group_list;" )
    assert run_recipe(db, "select max(group_id) from particle_position_group_list;",
                      target) == [("",)]


@pytest.mark.parametrize("target", _recipe_targets())
def test_recipe_defocus_of_all_images(real_project: RealProject, target: str) -> None:
    project, facts = real_project
    db = project.db_path
    # pycistem's examples/applyctf.py selects image_assets.filename with
    # estimated_ctf_parameters.defocus1/defocus2/defocus_angle/additional_phase_shift; the
    # tables are joined through IMAGE_ASSETS.CTF_ESTIMATION_ID:
    rows = run_recipe(
        db,
        "select image_assets.filename, estimated_ctf_parameters.defocus1, "
        "estimated_ctf_parameters.defocus2, estimated_ctf_parameters.defocus_angle, "
        "estimated_ctf_parameters.additional_phase_shift from image_assets, "
        "estimated_ctf_parameters where image_assets.ctf_estimation_id = "
        "estimated_ctf_parameters.ctf_estimation_id order by image_assets.image_asset_id;",
        target,
    )
    images = facts["sums"] + facts["real"]
    assert len(rows) == 3
    for row, image in zip(rows, images, strict=False):
        df1, df2, angle, phase_degrees = facts["defocus"][image]
        assert (float(row[1]), float(row[2]), float(row[3])) == (df1, df2, angle)
        assert math.isclose(float(row[4]), math.radians(phase_degrees))  # radians, as cisTEM
    # pycistem/database/__init__.py, get_image_info_from_db:
    info = run_recipe(
        db,
        "SELECT IMAGE_ASSET_ID,MOVIE_ASSET_ID,IMAGE_ASSETS.FILENAME, MOVIE_ASSETS.FILENAME as "
        "movie_filename, MOVIE_ASSETS.GAIN_FILENAME, CTF_ESTIMATION_ID , ALIGNMENT_ID, "
        "IMAGE_ASSETS.PIXEL_SIZE as image_pixel_size, IMAGE_ASSETS.VOLTAGE, "
        "IMAGE_ASSETS.SPHERICAL_ABERRATION, MOVIE_ASSETS.PIXEL_SIZE as movie_pixel_size, "
        "IMAGE_ASSETS.X_SIZE, IMAGE_ASSETS.Y_SIZE FROM IMAGE_ASSETS LEFT OUTER JOIN "
        "MOVIE_ASSETS ON MOVIE_ASSETS.MOVIE_ASSET_ID == IMAGE_ASSETS.PARENT_MOVIE_ID",
        target,
    )
    by_image = {int(r[0]): r for r in info}
    assert len(by_image) == 4
    sum_row = by_image[facts["sums"][0]]
    assert int(sum_row[1]) == facts["movies"][0] and sum_row[3].endswith("movie_0.mrc")
    assert sum_row[4].endswith("gain.mrc")
    fei_row = by_image[facts["real"][0]]
    assert fei_row[1] == "" and (int(fei_row[11]), int(fei_row[12])) == (3710, 3838)
    ctf = run_recipe(
        db,
        "SELECT CTF_ESTIMATION_ID,DEFOCUS1,DEFOCUS2,DEFOCUS_ANGLE,OUTPUT_DIAGNOSTIC_FILE,SCORE, "
        "DETECTED_RING_RESOLUTION, AMPLITUDE_CONTRAST FROM ESTIMATED_CTF_PARAMETERS",
        target,
    )
    merged = [(r, c) for r in info for c in ctf if r[5] == c[0]]  # pd.merge on CTF_ESTIMATION_ID
    assert len(merged) == 3
    assert all(c[4].endswith(".mrc") and float(c[7]) == 0.07 for _, c in merged)
    #   cur.execute("SELECT COUNT(1) FROM IMAGE_ASSETS WHERE CTF_ESTIMATION_ID IS NOT -1")
    assert run_recipe(db, "SELECT COUNT(1) FROM IMAGE_ASSETS WHERE CTF_ESTIMATION_ID IS NOT -1",
                      target) == [("3",)]
    # cisTEM's scripts/plot_ctf_parameters.py:
    #   c.execute('SELECT defocus1,detected_ring_resolution FROM estimated_ctf_parameters;')
    assert [tuple(map(float, r)) for r in run_recipe(
        db, "SELECT defocus1,detected_ring_resolution FROM estimated_ctf_parameters;", target
    )] == [(10500.0, 4.0), (10600.0, 5.0), (10700.0, 6.0)]


def test_cistem_script_writes_to_group_views(real_project: RealProject) -> None:
    """cisTEM's filter_template_matches_to_group.sh inserts into IMAGE_GROUP_<n> directly."""
    project, facts = real_project
    db = project.db_path
    project.close()
    new_member = facts["real"][0]
    # the script's batch: "BEGIN TRANSACTION;" ... "INSERT INTO IMAGE_GROUP_$GROUP_ID
    # (MEMBER_NUMBER, IMAGE_ASSET_ID) VALUES ($NEXT_MEMBER_NUM, $IMAGE_ASSET_ID);" ... "COMMIT;"
    with closing(sqlite3.connect(db)) as conn:
        conn.executescript(
            "BEGIN TRANSACTION;\n"
            f"INSERT INTO IMAGE_GROUP_1 (MEMBER_NUMBER, IMAGE_ASSET_ID) VALUES (3, {new_member});\n"
            "COMMIT;\n"
        )
        with pytest.raises(sqlite3.IntegrityError):  # no such image: refused by foreign key
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("INSERT INTO IMAGE_GROUP_1 (MEMBER_NUMBER, IMAGE_ASSET_ID) VALUES (4, 99)")
    with Project.open(db) as project:
        assert project.group_members("image", 1) == [facts["real"][1], facts["sums"][0],
                                                     new_member]


def test_cistem_script_creating_a_group_table_is_adopted(real_project: RealProject) -> None:
    """cisTEM's new_group_from_classes.sh creates PARTICLE_POSITION_GROUP_<n> as a table."""
    project, _ = real_project
    db = project.db_path
    project.close()
    with closing(sqlite3.connect(db)) as conn:
        # "insert into particle_position_group_list (group_id,group_name,list_id) values
        #  (${new_group_id},'group from classes',${new_group_id});"
        conn.execute("insert into particle_position_group_list (group_id,group_name,list_id) "
                     "values (1,'group from classes',1);")
        # "create table particle_position_group_${new_group_id} (member_number INTEGER,
        #  particle_position_asset_id INTEGER);"
        conn.execute("create table particle_position_group_1 (member_number INTEGER, "
                     "particle_position_asset_id INTEGER);")
        conn.executescript(
            "begin transaction;\n"
            "insert into particle_position_group_1 (member_number,particle_position_asset_id) "
            "values (1,3);\n"
            "insert into particle_position_group_1 (member_number,particle_position_asset_id) "
            "values (2,1);\n"
            "commit;\n"
        )
    with Project.open(db) as project:
        assert any("particle_position_group_1" in w for w in project.warnings)
        assert project.group_members("particle_position", 1) == [3, 1]
        kinds = external(db, "SELECT type FROM sqlite_master "
                             "WHERE name = 'PARTICLE_POSITION_GROUP_1'")
        assert kinds == [("view",)]
        assert project.integrity_check() == []


# -- relocation ------------------------------------------------------------------------------


def test_moving_the_project_rewrites_paths_inside_it(tmp_path: Path) -> None:
    outside = write_movie(tmp_path / "movie_outside.mrc")
    with Project.create(tmp_path / "old" / "proj") as project:
        [movie] = project.import_movies([outside], voltage_kv=300, spherical_aberration_mm=2.7,
                                        pixel_size_angstroms=1.0, exposure_per_frame=1.0)
        inside_sum = write_image(project.layout.aligned_sum_path("movie_outside.mrc", movie, 0))
        image = project.add_image(inside_sum, pixel_size_angstroms=1.0, voltage_kv=300,
                                  spherical_aberration_mm=2.7, parent_movie_id=movie)
        project.add_ctf_estimate(image, defocus1_angstroms=1.0e4, defocus2_angstroms=1.0e4,
                                 defocus_angle_degrees=0.0,
                                 output_diagnostic_file=project.layout.ctf_diagnostic_path(
                                     inside_sum, 0))
        # a file whose name merely starts with the project directory's name is not inside it
        lookalike = write_image(tmp_path / "old" / "proj_other.mrc")
        project.import_images([lookalike], voltage_kv=300, spherical_aberration_mm=2.7,
                              pixel_size_angstroms=1.0)
    new_root = tmp_path / "new" / "renamed"
    new_root.parent.mkdir()
    shutil.move(str(tmp_path / "old" / "proj"), str(new_root))
    with Project.open(new_root, read_only=True) as viewer:
        assert any("moved" in w for w in viewer.warnings)
    with Project.open(new_root) as project:
        assert project.path == new_root and any("moved" in w for w in project.warnings)
        assert project.query("SELECT PROJECT_DIRECTORY FROM MASTER_SETTINGS")[0][
            "project_directory"] == str(new_root)
        files = {row["filename"] for row in project.images()}
        assert files == {str(new_root / "Assets/Images/movie_outside_1_0.mrc"), str(lookalike)}
        assert project.movies()[0]["filename"] == str(outside)  # outside: unchanged
        diagnostic = project.ctf_estimates()[0]["output_diagnostic_file"]
        assert diagnostic == str(new_root / "Assets/CTF/movie_outside_1_0_CTF_0.mrc")
        assert all(Path(f).exists() for f in files)
    with Project.open(new_root) as project:  # second open: nothing to do
        assert not any("moved" in w for w in project.warnings)


# -- one writer, many readers ----------------------------------------------------------------

HOLDER = """
import sys
from cistemd.project import Project
project = Project.open(sys.argv[1])
project.create_group("image", "from the holder")
print("open", flush=True)
sys.stdin.readline()
project.close()
print("closed", flush=True)
"""


def test_second_writer_is_refused_at_once_and_readers_still_read(tmp_path: Path) -> None:
    Project.create(tmp_path / "p").close()
    with subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "p")],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None and holder.stdin is not None
            assert holder.stdout.readline().strip() == "open"
            start = time.monotonic()
            with pytest.raises(ProjectLockedError) as info:
                Project.open(tmp_path / "p")
            assert time.monotonic() - start < 1.0  # refused at once, not after a timeout
            message = str(info.value)
            assert f"pid {holder.pid}" in message and "on host" in message
            assert "close it there" in message
            with Project.open(tmp_path / "p", read_only=True) as viewer:
                assert viewer.read_only
                assert [g["name"] for g in viewer.list_groups("image")] == [
                    "All Images", "from the holder"]
                with pytest.raises(ProjectError, match="read-only"):
                    viewer.create_group("image", "x")
                lock = viewer.query("SELECT ACTIVE_PROCESS FROM PROCESS_LOCK")
                assert lock == [{"active_process": holder.pid}]
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "closed"
            holder.wait(timeout=30)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
    with Project.open(tmp_path / "p") as project:  # free again
        assert project.list_groups("image")[1]["name"] == "from the holder"


def test_same_process_second_writer_is_refused(project: Project) -> None:
    with pytest.raises(ProjectLockedError, match=f"pid {os.getpid()}"):
        Project.open(project.path)


def test_external_reader_is_not_blocked_by_an_open_write_transaction(
    project: Project, tmp_path: Path
) -> None:
    project.import_images([write_image(tmp_path / "a.mrc")], voltage_kv=300,
                          spherical_aberration_mm=2.7, pixel_size_angstroms=1.0)
    with project.transaction():
        project.import_images([write_image(tmp_path / "b.mrc")], voltage_kv=300,
                              spherical_aberration_mm=2.7, pixel_size_angstroms=1.0)
        start = time.monotonic()
        # WAL: the reader sees the last committed state, immediately
        assert external(project.db_path, "SELECT COUNT(*) FROM IMAGE_ASSETS") == [(1,)]
        assert time.monotonic() - start < 1.0
    assert external(project.db_path, "SELECT COUNT(*) FROM IMAGE_ASSETS") == [(2,)]


def test_read_only_handle_cannot_write(tmp_path: Path) -> None:
    Project.create(tmp_path / "p").close()
    with Project.open(tmp_path / "p", read_only=True) as viewer:
        for call in (
            lambda: viewer.create_group("movie", "x"),
            lambda: viewer.import_volumes([tmp_path / "v.mrc"]),
            lambda: viewer.insert_row("RUNNING_JOBS", {"JOB_CODE": "x"}),
        ):
            with pytest.raises(ProjectError, match="read-only"):
                call()
        assert viewer.summary()["read_only"] is True
    # a closed project refuses everything
    with pytest.raises(ProjectError, match="closed"):
        viewer.summary()


# -- records that actions add ----------------------------------------------------------------


def test_alignment_image_and_ctf_records(project: Project, tmp_path: Path) -> None:
    [movie] = project.import_movies([write_movie(tmp_path / "m.mrc", n_frames=3)],
                                    voltage_kv=300, spherical_aberration_mm=2.7,
                                    pixel_size_angstroms=1.0, exposure_per_frame=1.0,
                                    desired_pixel_size_angstroms=2.0)
    assert project.previous_alignment_count(movie) == 0
    first = project.layout.aligned_sum_path("m.mrc", movie, 0)
    alignment = project.add_movie_alignment(
        movie, output_file=first, x_shifts_angstroms=[0.0, 1.5, 2.5],
        y_shifts_angstroms=[0.0, -0.5, -1.0], job_id=1, parameters={"BFACTOR": 1500.0})
    assert project.previous_alignment_count(movie) == 1
    assert external(project.db_path, f"SELECT * FROM MOVIE_ALIGNMENT_PARAMETERS_{alignment}") == [
        (1, 0.0, 0.0), (2, 1.5, -0.5), (3, 2.5, -1.0)]
    row = project.query("SELECT * FROM MOVIE_ALIGNMENT_LIST")[0]
    assert row["final_pixel_size"] == 2.0 and row["bfactor"] == 1500.0
    image = project.add_image(write_image(first, (24, 32)), pixel_size_angstroms=2.0,
                              voltage_kv=300, spherical_aberration_mm=2.7,
                              parent_movie_id=movie, alignment_id=alignment)
    estimate = project.add_ctf_estimate(image, defocus1_angstroms=12000.0,
                                        defocus2_angstroms=11000.0, defocus_angle_degrees=45.0)
    project.create_group("image", "g")
    project.add_to_group("image", 1, [image])
    project.add_particle_positions(image, [5.0], [6.0])
    # re-aligning the movie replaces its sum in place
    second = write_image(project.layout.aligned_sum_path("m.mrc", movie, 1), (24, 32))
    alignment_2 = project.add_movie_alignment(movie, output_file=second)
    again = project.add_image(second, pixel_size_angstroms=2.0, voltage_kv=300,
                              spherical_aberration_mm=2.7, parent_movie_id=movie,
                              alignment_id=alignment_2)
    assert again == image
    [record] = project.images()
    assert record["filename"] == str(second) and record["alignment_id"] == alignment_2
    assert (record["x_size"], record["y_size"]) == (32, 24)
    assert record["ctf_estimation_id"] == estimate and record["defocus1"] == 12000.0
    assert project.group_members("image", 1) == [image]
    assert project.previous_ctf_estimation_count(image) == 1
    assert project.previous_picking_count(image) == 0
    with pytest.raises(ProjectError, match="no movie asset with id 42"):
        project.add_movie_alignment(42, output_file=second)
    with pytest.raises(ProjectError, match="no image asset with id 42"):
        project.add_ctf_estimate(42, defocus1_angstroms=1, defocus2_angstroms=1,
                                 defocus_angle_degrees=0)
    with pytest.raises(ProjectError, match="no column"):
        project.add_ctf_estimate(image, defocus1_angstroms=1, defocus2_angstroms=1,
                                 defocus_angle_degrees=0, parameters={"NOT_A_COLUMN": 1})
    assert project.previous_ctf_estimation_count(image) == 1


def test_generic_insert_creates_views_for_parent_rows(project: Project) -> None:
    classification = project.insert_row("CLASSIFICATION_LIST", {
        "REFINEMENT_PACKAGE_ASSET_ID": project.insert_row("REFINEMENT_PACKAGE_ASSETS",
                                                          {"NAME": "pkg"}),
        "NAME": "2D", "NUMBER_OF_CLASSES": 50})
    assert project.insert_rows("CLASSIFICATION_RESULTS", [
        {"CLASSIFICATION_ID": classification, "POSITION_IN_STACK": i, "PSI": 10.0 * i,
         "BEST_CLASS": i % 3}
        for i in range(1, 4)
    ]) == 3
    assert external(project.db_path,
                    f"SELECT POSITION_IN_STACK, BEST_CLASS FROM CLASSIFICATION_RESULT_"
                    f"{classification}") == [(1, 1), (2, 2), (3, 0)]
    with pytest.raises(ProjectError, match="no column"):
        project.insert_row("CLASSIFICATION_LIST", {"NAME": "x", "BOGUS; DROP TABLE x": 1})
    with pytest.raises(ProjectError, match="no table"):
        project.insert_rows("NOT_A_TABLE", [{"A": 1}])
