"""The installed entry points, driven as a user would (subprocesses)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


def cistem(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cistemd.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.parametrize(
    "module",
    ["cistemd.cli.main", "cistemd.cli.daemon", "cistem_tui"],
)
def test_entry_points_have_help(module):
    completed = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    assert "usage:" in completed.stdout


@pytest.mark.parametrize("command", ["demo", "simulate", "info", "project"])
def test_every_command_has_help(command):
    completed = cistem(command, "--help")
    assert completed.returncode == 0, completed.stderr
    assert f"cistem {command}" in completed.stdout


def test_demo_builds_a_project_with_the_simulated_movies(tmp_path):
    demo_dir = tmp_path / "demo"
    completed = cistem(
        "demo", "--dir", str(demo_dir), "--movies", "2", "--size", "256", "--frames", "4", "--json"
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["project"]["movies"] == 2
    assert report["project_integrity"] == []
    truth = json.loads((demo_dir / "data" / "truth.json").read_text())
    assert len(truth["micrographs"]) == 2

    db = demo_dir / "CistemDemo" / "CistemDemo.db"
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT FILENAME, NUMBER_OF_FRAMES, GAIN_FILENAME FROM MOVIE_ASSETS ORDER BY 1"
        ).fetchall()
    assert [Path(row[0]).name for row in rows] == ["sim_0001.tif", "sim_0002.tif"]
    assert all(row[1] == 4 and row[2].endswith("gain_reference.mrc") for row in rows)

    # running it again replaces the demo directory rather than failing or appending
    again = cistem(
        "demo", "--dir", str(demo_dir), "--movies", "1", "--size", "256", "--frames", "4", "--json"
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["project"]["movies"] == 1


def test_demo_never_touches_a_directory_it_did_not_make(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.mrc").write_bytes(b"keep me")
    completed = cistem("demo", "--dir", str(precious), "--movies", "1", "--size", "256")
    assert completed.returncode == 2
    assert "not made by `cistem demo`" in completed.stderr
    assert (precious / "data.mrc").read_bytes() == b"keep me"


def test_project_create_and_info(tmp_path):
    created = cistem("project", "create", str(tmp_path / "MyProject"), "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["name"] == "MyProject"
    info = cistem("project", "info", str(tmp_path / "MyProject"), "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["movies"] == 0
    again = cistem("project", "create", str(tmp_path / "MyProject"))
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1


def test_info_reports_bad_files_in_one_line_and_goes_on(tmp_path):
    good = tmp_path / "positions.txt"
    good.write_text("# image x y\n1 100.0 200.0\n")
    bad = tmp_path / "broken.mrc"
    bad.write_bytes(b"\x00" * 100)
    completed = cistem("info", str(bad), str(good), "--json")
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1 and "broken.mrc" in completed.stderr
    described = json.loads(completed.stdout)
    assert "error" in described[0] and "error" not in described[1]
