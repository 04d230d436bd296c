"""The installed entry points, driven as a user would (subprocesses)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


def cistem(
    *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cistemd.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
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


@pytest.mark.slow
def test_demo_runs_the_pipeline_through_a_private_daemon(tmp_path):
    demo_dir = tmp_path / "demo"
    completed = cistem(
        "demo", "--dir", str(demo_dir), "--movies", "2", "--size", "1024", "--frames", "8",
        "--json", timeout=900,
    )
    assert completed.returncode == 0, completed.stderr + completed.stdout[-3000:]
    report = json.loads(completed.stdout)
    assert [job["action"] for job in report["jobs"]] == [
        "align_movies", "find_ctf", "find_particles", "create_refinement_package"
    ]
    assert all(job["state"] == "completed" for job in report["jobs"]), report["jobs"]
    assert report["project"]["movies"] == 2
    assert report["project"]["images"] == 2
    assert report["project"]["refinement_packages"] == 1
    assert report["project_integrity"] == []
    accuracy = report["accuracy_against_truth"]
    assert accuracy["drift_rms_error_angstroms_median"] < 1.0
    assert accuracy["picking_precision"] > 0.8
    assert accuracy["particles_in_packages"][0] > 0

    db = demo_dir / "CistemDemo" / "CistemDemo.db"
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT FILENAME, NUMBER_OF_FRAMES, GAIN_FILENAME FROM MOVIE_ASSETS ORDER BY 1"
        ).fetchall()
        estimates = connection.execute("SELECT COUNT(*) FROM ESTIMATED_CTF_PARAMETERS").fetchone()
    assert [Path(row[0]).name for row in rows] == ["sim_0001.tif", "sim_0002.tif"]
    assert all(row[1] == 8 and row[2].endswith("gain_reference.mrc") for row in rows)
    assert estimates[0] == 2
    # the private daemon and its workers are gone when the demo returns
    processes = subprocess.run(
        ["ps", "axww", "-o", "args"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert not [line for line in processes if str(demo_dir / ".cistemd") in line]


def test_demo_import_only_rebuilds_its_directory(tmp_path):
    demo_dir = tmp_path / "demo"
    for movies in (2, 1):
        completed = cistem(
            "demo", "--dir", str(demo_dir), "--movies", str(movies), "--size", "256",
            "--frames", "4", "--import-only", "--json",
        )
        assert completed.returncode == 0, completed.stderr
        report = json.loads(completed.stdout)
        # running it again replaces the demo directory rather than failing or appending
        assert report["project"]["movies"] == movies
        assert report["jobs"] == []


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
