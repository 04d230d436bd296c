"""kill -9 of the daemon at random moments: jobs continue, nothing is lost or doubled."""

from __future__ import annotations

import random
import time
from pathlib import Path

import daemon_fixtures as fx
import pytest
from daemon_fixtures import (
    check_results_once,
    read_db,
    wait_until,
    worker_pids,
)

# fixtures of daemon_fixtures used here
home = fx.home
make_daemon = fx.make_daemon


def kill_and_restart_rounds(
    make_daemon, home, tmp_path: Path, *, rounds: int, tasks: int, seed: int
) -> dict:
    """kill -9 the daemon ``rounds`` times at random moments of running jobs, restart each time.

    When a job completes between two kills, the next kill hits a new job.
    """
    rng = random.Random(seed)
    process = make_daemon()
    process.start()
    project = tmp_path / "proj"

    def submit(client) -> str:
        return client.submit(
            project, "selftest", {"tasks": tasks, "sleep": 0.02}, profile="local:2"
        )

    with process.client() as client:
        client.create_project(project)
        jobs = [submit(client)]
    recoveries = []
    for _ in range(rounds):
        time.sleep(rng.uniform(0.05, 0.8))
        process.kill9()
        current = jobs[-1]
        # the acknowledged job is on disk whatever the moment of the kill
        assert read_db(project, "SELECT COUNT(*) FROM CISTEMD_JOBS WHERE JOB_ID = ?",
                       (int(current),)) == [(1,)]  # fmt: skip
        assert read_db(project, "PRAGMA integrity_check") == [("ok",)]
        started = time.monotonic()
        process.start()
        with process.client() as client:
            record = client.job(current)
            if record["state"] != "completed":
                done_before = record["tasks"].get("completed", 0)

                def moved(client=client, current=current, done_before=done_before) -> bool:
                    now = client.job(current)
                    return (
                        now["state"] == "completed"
                        or now["tasks"].get("completed", 0) > done_before
                    )

                wait_until(moved, 10.0, message="no progress within 10 s of the restart")
                recoveries.append(time.monotonic() - started)
            if client.job(current)["state"] == "completed":
                jobs.append(submit(client))
    with process.client() as client:
        for job_id in jobs:
            record = client.wait_for_job(job_id, timeout=120)
            assert record["state"] == "completed", (record, process.log())
    for job_id in jobs:
        check_results_once(project, job_id, tasks)
    wait_until(lambda: not worker_pids(home), 20, message="orphan workers after the jobs")
    process.stop()
    assert read_db(project, "PRAGMA integrity_check") == [("ok",)]
    return {"recoveries": recoveries, "jobs": jobs}


def test_kill9_daemon_mid_job_and_restart(make_daemon, home, tmp_path):
    outcome = kill_and_restart_rounds(make_daemon, home, tmp_path, rounds=3, tasks=100, seed=7)
    assert all(seconds < 10 for seconds in outcome["recoveries"])


@pytest.mark.slow
def test_kill9_daemon_twenty_times(make_daemon, home, tmp_path):
    outcome = kill_and_restart_rounds(make_daemon, home, tmp_path, rounds=20, tasks=100, seed=20)
    assert all(seconds < 10 for seconds in outcome["recoveries"])


def test_acknowledged_submissions_survive_kill9(make_daemon, home, tmp_path):
    process = make_daemon()
    process.start()
    project = tmp_path / "proj"
    with process.client() as client:
        client.create_project(project)
        acknowledged = [
            client.submit(project, "selftest", {"tasks": 5, "sleep": 0.01}, profile="local:1")
            for _ in range(6)
        ]
    process.kill9()
    process.start()
    with process.client() as client:
        listed = {job["job_id"] for job in client.jobs()}
        assert set(acknowledged) <= listed
        for job_id in acknowledged:
            assert client.wait_for_job(job_id, timeout=90)["state"] == "completed"
    for job_id in acknowledged:
        check_results_once(project, job_id, 5)
    wait_until(lambda: not worker_pids(home), 20)


def test_graceful_stop_and_start_continues_without_counting_failures(make_daemon, home, tmp_path):
    process = make_daemon()
    process.start()
    project = tmp_path / "proj"
    with process.client() as client:
        client.create_project(project)
        job_id = client.submit(project, "selftest", {"tasks": 12, "sleep": 0.3}, profile="local:2")
        wait_until(lambda: client.job(job_id)["tasks"].get("completed", 0) >= 2, 30)
    assert process.stop() == 0
    assert not home.pid_file.exists()
    wait_until(lambda: not worker_pids(home), 5, message="workers survived a graceful stop")
    in_flight = read_db(
        project, "SELECT COUNT(*) FROM CISTEMD_TASKS WHERE STATE IN ('assigned', 'running')"
    )
    process.start()
    with process.client() as client:
        record = client.wait_for_job(job_id, timeout=60)
    assert record["state"] == "completed"
    check_results_once(project, job_id, 12)
    failures = read_db(project, "SELECT MAX(FAILURES) FROM CISTEMD_TASKS")
    assert failures == [(0,)], (in_flight, failures)
