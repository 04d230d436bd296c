"""The headless ``cistem`` commands driven as a user would, against a real isolated daemon.

Project create/open/info, the five imports, groups, asset listings, results
and per-task states of ``job show --json`` -- every write goes through the
daemon (the only writer); bad input is one line on stderr, exit 2, and the
daemon stays up.
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

from cistemd.actions.simulate import SimulationSpec, simulate_dataset
from cistemd.io import mrc

daemon = fx.daemon
home = fx.home

PARTICLES = Path("/work/shared/data/particles")


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


def ok(completed: subprocess.CompletedProcess[str]) -> str:
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def as_json(completed: subprocess.CompletedProcess[str]):
    return json.loads(ok(completed))


def refused(completed: subprocess.CompletedProcess[str], *names: str) -> None:
    """Exit 2 with one line on stderr naming each of ``names``."""
    assert completed.returncode == 2, (completed.stdout, completed.stderr)
    assert completed.stderr.count("\n") == 1, completed.stderr
    for name in names:
        assert name in completed.stderr, completed.stderr


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Two tiny simulated movies with a gain reference, a micrograph and a map."""
    root = tmp_path_factory.mktemp("data")
    spec = SimulationSpec(
        structure="asymmetric",
        n_micrographs=2,
        size_px=128,
        pixel_size_angstroms=3.0,
        particles_per_micrograph=2,
        n_frames=2,
        output_format="mrc",
        gain_reference=True,
        seed=3,
    )
    simulate_dataset(root, spec)
    rng = np.random.default_rng(0)
    micrograph = rng.normal(size=(96, 128)).astype(np.float32)
    mrc.write(root / "micrograph.mrc", micrograph, voxel_size_angstroms=2.0)
    (root / "positions.txt").write_text(
        "# image x y (Å)\nmicrograph.mrc 40.0 60.0\nmicrograph.mrc 100.0 80.0\n"
    )
    (root / "bad_positions.txt").write_text("# image x y\nno_such_micrograph.mrc 1.0 2.0\n")
    (root / "broken.mrc").write_bytes(b"\x00" * 100)
    return root


@pytest.fixture
def project(daemon, home, tmp_path) -> Path:
    path = tmp_path / "MyProject"
    created = as_json(cistem(home, "project", "create", str(path), "--json"))
    assert created["name"] == "MyProject" and created["path"] == str(path)
    return path


def test_project_create_open_info_through_the_daemon(daemon, home, project):
    # The daemon holds the project: a direct writer would be refused, the CLI is not.
    info = as_json(cistem(home, "project", "info", "--json", cwd=project / "Assets"))
    assert info["path"] == str(project) and info["movies"] == 0
    opened = as_json(cistem(home, "project", "open", str(project), "--json"))
    assert opened["name"] == "MyProject"
    with daemon.client() as client:
        assert str(project) in client.status()["projects"]
    again = cistem(home, "project", "create", str(project))
    refused(again, str(project))
    elsewhere = cistem(home, "project", "info", cwd=project.parent)
    refused(elsewhere, "--project")


def test_imports_groups_and_listings(daemon, home, project, dataset):
    pid = daemon.pid
    movies = sorted(str(p) for p in (dataset / "movies").glob("*.mrc"))
    imported = as_json(
        cistem(
            home, "import", "movies", *movies, "--pixel-size", "3.0",
            "--exposure-per-frame", "2.5", "--voltage", "300", "--cs", "2.7",
            "--gain", str(dataset / "gain_reference.mrc"), "--desired-pixel-size", "6.0",
            "--mag-distortion-angle", "30", "--mag-distortion-major", "1.02",
            "--mag-distortion-minor", "0.98", "--batch", "1", "--json",
            cwd=project,
        )
    )  # fmt: skip
    assert imported == {"kind": "movies", "ids": [1, 2], "count": 2, "warnings": []}
    rows = as_json(cistem(home, "assets", "movies", "--json", cwd=project))
    assert rows["total"] == 2
    first = rows["assets"][0]
    assert first["filename"] == movies[0]
    assert first["gain_filename"] == str(dataset / "gain_reference.mrc")
    assert first["output_binning_factor"] == pytest.approx(2.0)
    assert first["correct_mag_distortion"] == 1
    assert first["mag_distortion_major_scale"] == pytest.approx(1.02)
    # the same movies again: skipped with a warning, nothing added
    again = as_json(
        cistem(
            home, "import", "movies", movies[0], "--pixel-size", "3", "--exposure-per-frame",
            "2.5", "--json", "--project", str(project),
        )
    )  # fmt: skip
    assert again["count"] == 0 and "already in the project" in again["warnings"][0]

    images = as_json(
        cistem(
            home, "import", "images", str(dataset / "micrograph.mrc"), "--pixel-size", "2.0",
            "--protein-is-white", "--json", cwd=project,
        )
    )  # fmt: skip
    assert images["ids"] == [1]
    positions = as_json(
        cistem(home, "import", "positions", str(dataset / "positions.txt"), "--json", cwd=project)
    )
    assert positions["count"] == 2
    listed = as_json(cistem(home, "assets", "positions", "--json", cwd=project))
    assert [row["parent_image_asset_id"] for row in listed["assets"]] == [1, 1]
    volumes = as_json(
        cistem(
            home, "import", "volumes", str(dataset / "reference_map.mrc"), "--pixel-size", "3.0",
            "--json", cwd=project,
        )
    )  # fmt: skip
    assert volumes["ids"] == [1]
    assert "reference_map.mrc" in ok(cistem(home, "assets", "volumes", cwd=project))

    # groups round trip
    created = as_json(cistem(home, "groups", "create", "movies", "good", "--json", cwd=project))
    group = created["group_id"]
    assert group == 1
    added = as_json(cistem(home, "groups", "add", "movies", "1", "2", "1", "--json", cwd=project))
    assert added["changed"] == 2
    members = as_json(
        cistem(home, "groups", "list", "movies", "--members", "1", "--json", cwd=project)
    )
    assert members["members"] == [2, 1]
    assert [(g["group_id"], g["name"], g["count"]) for g in members["groups"]] == [
        (0, "All Movies", 2),
        (1, "good", 2),
    ]
    ok(cistem(home, "groups", "rename", "movies", "1", "best", cwd=project))
    removed = as_json(cistem(home, "groups", "remove", "movie", "1", "2", "--json", cwd=project))
    assert removed["changed"] == 1
    in_group = as_json(cistem(home, "assets", "movies", "--group", "1", "--json", cwd=project))
    assert [row["movie_asset_id"] for row in in_group["assets"]] == [1]
    image_group = as_json(
        cistem(home, "groups", "from-movie-group", "1", "aligned", "--json", cwd=project)
    )
    assert image_group["kind"] == "image" and image_group["changed"] == 0  # nothing aligned yet
    position_group = as_json(
        cistem(home, "groups", "create", "positions", "picked", "--json", cwd=project)
    )
    assert position_group["kind"] == "particle_position"
    ok(cistem(home, "groups", "delete", "movies", "1", cwd=project))
    after = as_json(cistem(home, "groups", "list", "movies", "--json", cwd=project))
    assert [g["group_id"] for g in after["groups"]] == [0]
    refused(cistem(home, "groups", "delete", "movies", "0", cwd=project), "All Movies")

    summary = as_json(cistem(home, "project", "info", "--json", cwd=project))
    assert (summary["movies"], summary["images"], summary["volumes"]) == (2, 1, 1)
    assert summary["particle_positions"] == 2
    assert daemon.pid == pid and fx.process_alive(pid)


def test_bad_input_is_one_line_exit_2_and_the_daemon_stays_up(daemon, home, project, dataset):
    pid = daemon.pid
    broken = dataset / "broken.mrc"
    refused(
        cistem(
            home, "import", "movies", str(broken), "--pixel-size", "1", "--exposure-per-frame",
            "1", cwd=project,
        ),
        "broken.mrc",
    )  # fmt: skip
    refused(
        cistem(home, "import", "images", str(broken), "--pixel-size", "1", cwd=project),
        "broken.mrc",
    )
    refused(
        cistem(home, "import", "volumes", str(dataset / "missing.mrc"), cwd=project),
        "missing.mrc",
    )
    refused(
        cistem(home, "import", "positions", str(dataset / "bad_positions.txt"), cwd=project),
        "bad_positions.txt",
    )
    refused(
        cistem(
            home, "import", "refinement-package", "--stack", str(broken), "--parameters",
            str(dataset / "positions.txt"), cwd=project,
        ),
    )  # fmt: skip
    refused(
        cistem(
            home, "import", "movies", str(dataset / "movies" / "sim_0001.mrc"), "--pixel-size",
            "1", "--exposure-per-frame", "1", "--gain", str(broken), cwd=project,
        ),
        "broken.mrc",
    )  # fmt: skip
    refused(cistem(home, "groups", "add", "movies", "7", "1", cwd=project), "7")
    refused(cistem(home, "job", "show", "1", "--tasks", "many", cwd=project), "--tasks")
    # nothing was imported, and the daemon answers as before
    summary = as_json(cistem(home, "project", "info", "--json", cwd=project))
    assert (summary["movies"], summary["images"], summary["volumes"]) == (0, 0, 0)
    assert summary["particle_positions"] == summary["refinement_packages"] == 0
    assert daemon.pid == pid and fx.process_alive(pid)
    with daemon.client() as client:
        assert client.status()["pid"] == pid


def test_refinement_package_from_relion_star(daemon, home, project):
    star, stack = PARTICLES / "relion31.star", PARTICLES / "relion31.mrcs"
    if not (star.is_file() and stack.is_file()):
        pytest.skip(f"the shared particle data ({star}, {stack}) is not on this machine")
    imported = as_json(
        cistem(
            home, "import", "refinement-package", "--stack", str(stack), "--parameters",
            str(star), "--name", "relion", "--symmetry", "C2", "--molecular-weight", "300",
            "--largest-dimension", "120", "--amplitude-contrast", "0.1", "--json", cwd=project,
        )
    )  # fmt: skip
    assert imported["ids"] == [1] and imported["kind"] == "refinement_package"
    packages = as_json(cistem(home, "assets", "packages", "--json", cwd=project))
    package = packages["assets"][0]
    assert package["name"] == "relion" and package["symmetry"] == "C2"
    assert package["molecular_weight"] == pytest.approx(300.0)
    assert package["particle_size"] == pytest.approx(120.0)
    assert package["number_of_particles"] > 0
    refinements = as_json(cistem(home, "assets", "refinements", "--json", cwd=project))
    assert refinements["total"] == 1


def test_job_show_json_has_per_task_states_and_results(daemon, home, project):
    waited = cistem(
        home, "run", "selftest", "--tasks", "6", "--sleep", "0", "--fail-task", "2",
        "--profile", "local:2", "--wait", "--json", cwd=project,
    )  # fmt: skip
    assert waited.returncode == 1, waited.stderr  # --wait: 0 only if the job completed
    job_id = json.loads(waited.stdout)["job_id"]
    shown = as_json(cistem(home, "job", "show", job_id, "--json", cwd=project))
    assert shown["state"] == "failed"
    assert shown["task_counts"] == {"completed": 5, "failed": 1}
    assert shown["tasks_total"] == 6
    by_key = {task["key"]: task for task in shown["tasks"]}
    assert len(by_key) == 6
    failed = [task for task in shown["tasks"] if task["state"] == "failed"]
    assert len(failed) == 1 and failed[0]["reason"]
    assert failed[0]["evidence"], failed[0]
    assert all(task["attempt"] >= 1 and task["host"] for task in shown["tasks"])
    capped = as_json(cistem(home, "job", "show", job_id, "--json", "--tasks", "2"))
    assert len(capped["tasks"]) == 2 and capped["tasks_total"] == 6
    none = as_json(cistem(home, "job", "show", job_id, "--json", "--tasks", "0"))
    assert none["tasks"] == [] and none["task_counts"] == {"completed": 5, "failed": 1}
    assert "failed" in ok(cistem(home, "job", "show", job_id))
    results = as_json(cistem(home, "results", job_id, "--json"))
    assert results["total"] == 5 and len(results["results"]) == 5
    assert all(r["attempt"] == 1 for r in results["results"])
    listing = as_json(cistem(home, "results", "--json", cwd=project))
    assert [(j["job_id"], j["results"]) for j in listing["jobs"]] == [(job_id, 5)]
