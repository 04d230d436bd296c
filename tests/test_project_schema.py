"""Schema: per-id views, migrations, adoption of tables written by cisTEM's scripts."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from cistemd.errors import ProjectError
from cistemd.project import LATEST_VERSION, Project
from cistemd.project.schema import (
    DYNAMIC_TABLES,
    MIGRATIONS,
    Migration,
    MigrationError,
    create_views_for,
    drop_views_for,
    dynamic_view_name,
    migrate,
    schema_version,
    sync_dynamic_views,
)


def memory() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def views(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'")}


def test_migrate_builds_every_version_in_order() -> None:
    conn = memory()
    assert schema_version(conn) == 0
    assert migrate(conn, target=1) == [1]
    assert schema_version(conn) == 1
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "PARTICLE_POSITION_ASSETS_PARENT" not in indexes
    assert migrate(conn) == list(range(2, LATEST_VERSION + 1))
    assert migrate(conn) == []
    assert schema_version(conn) == LATEST_VERSION == MIGRATIONS[-1].version
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1  # restored
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_lookup_indexes_serve_lookups_but_not_scans() -> None:
    conn = memory()
    migrate(conn)
    plan = " ".join(str(r) for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM PARTICLE_POSITION_ASSETS "
        "WHERE PARENT_IMAGE_ASSET_ID = 3"))
    assert "PARTICLE_POSITION_ASSETS_PARENT" in plan
    plan = " ".join(str(r) for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT PARTICLE_POSITION_ASSET_ID FROM PARTICLE_POSITION_ASSETS"))
    assert "PARTICLE_POSITION_ASSETS_PARENT" not in plan
    plan = " ".join(str(r) for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT MOVIE_ASSET_ID FROM MOVIE_ASSETS WHERE FILENAME = 'x'"))
    assert "MOVIE_ASSETS_FILENAME" in plan
    plan = " ".join(str(r) for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM IMAGE_GROUP_MEMBERS WHERE IMAGE_ASSET_ID = 3"))
    assert "IMAGE_GROUP_MEMBERS_ASSET" in plan


def test_project_opened_at_version_1_is_migrated(tmp_path: Path) -> None:
    """A v1 database made by hand (as the first release wrote it) is upgraded on open."""
    root = tmp_path / "old"
    root.mkdir()
    with closing(sqlite3.connect(root / "old.db", isolation_level=None)) as conn:
        migrate(conn, target=1)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(
            "INSERT INTO MASTER_SETTINGS VALUES (1, ?, 'old', 1, 2.5, 3, 'cistemd 0.0.1', "
            "'Single Particle')", (str(root),))
        conn.execute("INSERT INTO IMAGE_ASSETS (IMAGE_ASSET_ID, NAME, FILENAME, PARENT_MOVIE_ID, "
                     "CTF_ESTIMATION_ID) VALUES (5, 'a', '/data/a.mrc', -1, -1)")
        conn.execute("INSERT INTO IMAGE_GROUP_LIST VALUES (1, 'kept', 1)")
        conn.execute("INSERT INTO IMAGE_GROUP_MEMBERS VALUES (1, 1, 5)")
        sync_dynamic_views(conn)
        assert schema_version(conn) == 1
    with Project.open(root, read_only=True) as viewer:
        assert viewer.schema_version == 1
        assert any("schema version 1" in w for w in viewer.warnings)
        assert viewer.group_members("image", 1) == [5]
    with Project.open(root) as project:
        assert project.schema_version == LATEST_VERSION
        master = project.query("SELECT CURRENT_VERSION, TOTAL_CPU_HOURS FROM MASTER_SETTINGS")
        assert master == [{"current_version": LATEST_VERSION, "total_cpu_hours": 2.5}]
        assert project.group_members("image", 1) == [5]
        assert project.images()[0]["filename"] == "/data/a.mrc"
        indexes = {r["name"] for r in project.query(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "IMAGE_ASSETS_FILENAME" in indexes
        assert project.integrity_check() == []


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    Project.create(tmp_path / "p").close()
    with closing(sqlite3.connect(tmp_path / "p" / "p.db")) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    for read_only in (False, True):
        with pytest.raises(ProjectError, match="upgrade cistemd"):
            Project.open(tmp_path / "p", read_only=read_only)
    with closing(sqlite3.connect(":memory:", isolation_level=None)) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
        with pytest.raises(MigrationError, match="newer"):
            migrate(conn)


def test_a_failing_step_is_rolled_back_and_earlier_steps_stay() -> None:
    def add_table(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE JOBS (JOB_ID INTEGER PRIMARY KEY)")

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE HALF_DONE (X INTEGER)")
        conn.execute("INSERT INTO NO_SUCH_TABLE VALUES (1)")

    chain = (*MIGRATIONS, Migration(LATEST_VERSION + 1, "jobs", add_table),
             Migration(LATEST_VERSION + 2, "broken", broken))
    conn = memory()
    with pytest.raises(MigrationError, match=f"version {LATEST_VERSION + 2} .broken. failed"):
        migrate(conn, migrations=chain)
    assert schema_version(conn) == LATEST_VERSION + 1
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "JOBS" in tables and "HALF_DONE" not in tables
    assert not conn.in_transaction


def test_a_step_breaking_foreign_keys_is_refused() -> None:
    def orphan(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO IMAGE_GROUP_MEMBERS VALUES (1, 1, 42)")  # no group, no image

    conn = memory()
    with pytest.raises(MigrationError, match="broken foreign keys"):
        migrate(conn, migrations=(*MIGRATIONS, Migration(LATEST_VERSION + 1, "orphan", orphan)))
    assert schema_version(conn) == LATEST_VERSION
    assert conn.execute("SELECT COUNT(*) FROM IMAGE_GROUP_MEMBERS").fetchone()[0] == 0


def test_migration_chain_must_be_consecutive() -> None:
    with pytest.raises(MigrationError, match="1, 2, 3"):
        migrate(memory(), migrations=(MIGRATIONS[0], Migration(3, "gap", lambda c: None)))
    with pytest.raises(MigrationError, match="target version"):
        migrate(memory(), target=LATEST_VERSION + 5)


def test_views_follow_parent_rows() -> None:
    conn = memory()
    migrate(conn)
    conn.execute("INSERT INTO REFINEMENT_PACKAGE_ASSETS (REFINEMENT_PACKAGE_ASSET_ID, NAME) "
                 "VALUES (4, 'p')")
    conn.execute("INSERT INTO REFINEMENT_LIST (REFINEMENT_ID, REFINEMENT_PACKAGE_ASSET_ID, "
                 "NUMBER_OF_CLASSES) VALUES (7, 4, 3)")
    created = create_views_for(conn, "REFINEMENT_LIST", 7)
    assert {f"REFINEMENT_RESULT_7_{c}" for c in (1, 2, 3)} <= set(created)
    assert {"REFINEMENT_DETAILS_7", "REFINEMENT_RESOLUTION_STATISTICS_7_3",
            "REFINEMENT_ANGULAR_DISTRIBUTION_7_1"} <= set(created)
    assert create_views_for(conn, "REFINEMENT_LIST", 7) == []  # already there
    create_views_for(conn, "REFINEMENT_PACKAGE_ASSETS", 4)
    assert "REFINEMENT_PACKAGE_CONTAINED_PARTICLES_4" in views(conn)
    conn.execute("INSERT INTO REFINEMENT_RESULTS (REFINEMENT_ID, CLASS_NUMBER, POSITION_IN_STACK, "
                 "PSI) VALUES (7, 2, 2, 20.0), (7, 2, 1, 10.0), (7, 1, 1, 5.0)")
    assert conn.execute("SELECT POSITION_IN_STACK, PSI FROM REFINEMENT_RESULT_7_2").fetchall() == [
        (1, 10.0), (2, 20.0)]
    # deleting the package cascades to the refinement and its results ...
    conn.execute("DELETE FROM REFINEMENT_PACKAGE_ASSETS WHERE REFINEMENT_PACKAGE_ASSET_ID = 4")
    assert conn.execute("SELECT COUNT(*) FROM REFINEMENT_RESULTS").fetchone()[0] == 0
    # ... and sync drops the views left without a parent
    created, dropped = sync_dynamic_views(conn)
    assert created == [] and "REFINEMENT_RESULT_7_3" in dropped
    assert views(conn) == set()


def test_sync_repairs_missing_and_changed_views_and_keeps_foreign_ones() -> None:
    conn = memory()
    migrate(conn)
    conn.execute("INSERT INTO IMAGE_GROUP_LIST VALUES (3, 'g', 3)")
    conn.execute("INSERT INTO REFINEMENT_PACKAGE_ASSETS (REFINEMENT_PACKAGE_ASSET_ID) VALUES (1)")
    conn.execute("INSERT INTO CLASSIFICATION_LIST (CLASSIFICATION_ID, "
                 "REFINEMENT_PACKAGE_ASSET_ID) VALUES (2, 1)")
    conn.execute("CREATE VIEW MY_OWN_VIEW AS SELECT 1")
    conn.execute("CREATE VIEW CLASSIFICATION_RESULT_2 AS SELECT 1 AS STALE")
    created, dropped = sync_dynamic_views(conn)
    assert set(created) >= {"IMAGE_GROUP_3", "CLASSIFICATION_RESULT_2"}
    assert dropped == []
    assert "MY_OWN_VIEW" in views(conn)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(CLASSIFICATION_RESULT_2)")]
    assert columns[:3] == ["POSITION_IN_STACK", "PSI", "XSHIFT"]
    assert drop_views_for(conn, "IMAGE_GROUP_LIST", 3) == ["IMAGE_GROUP_3"]
    assert sync_dynamic_views(conn)[0] == ["IMAGE_GROUP_3"]


def test_dynamic_view_names() -> None:
    by_prefix = {spec.view_prefix: spec for spec in DYNAMIC_TABLES}
    assert dynamic_view_name(by_prefix["REFINEMENT_RESULT_"], 7, 2) == "REFINEMENT_RESULT_7_2"
    assert dynamic_view_name(by_prefix["MOVIE_ALIGNMENT_PARAMETERS_"], 3) == (
        "MOVIE_ALIGNMENT_PARAMETERS_3")
    with pytest.raises(ValueError):
        dynamic_view_name(by_prefix["REFINEMENT_RESULT_"], 7)
    with pytest.raises(ValueError):
        drop_views_for(memory(), "IMAGE_ASSETS", 1)
