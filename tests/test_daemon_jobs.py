"""Jobs through a real daemon and real local workers: complete, cancel, crash, poison."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import daemon_fixtures as fx
import pytest
from daemon_fixtures import (
    check_results_once,
    cmdline,
    process_alive,
    read_db,
    wait_until,
    worker_pids,
)

from cistemd.actions.selftest import attempt_file_name

# fixtures of daemon_fixtures used here
daemon = fx.daemon
home = fx.home
make_daemon = fx.make_daemon


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


@pytest.fixture
def project(daemon, tmp_path) -> Path:
    path = tmp_path / "proj"
    with daemon.client() as client:
        reply = client.create_project(path)
    assert reply["path"] == str(path)
    return path


def test_selftest_job_completes_with_one_result_per_task(daemon, project, home):
    completed = cistem(
        home, "run", "selftest", "--tasks", "24", "--sleep", "0.02", "--profile", "local:2",
        "--project", str(project), "--json",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    job_id = json.loads(completed.stdout)["job_id"]
    with daemon.client() as client:
        record = client.wait_for_job(job_id, timeout=60)
        assert record["state"] == "completed", record
        assert record["tasks"] == {"completed": 24}
        assert record["progress"] == 1.0
        events = client.job_events(job_id)
    check_results_once(project, job_id, 24)
    states = [e["payload"]["state"] for e in events if e["kind"] == "state"]
    assert states == ["queued", "running", "completed"]
    workers = read_db(
        project, "SELECT COUNT(*) FROM CISTEMD_WORKERS WHERE JOB_ID = ?", (int(job_id),)
    )
    assert workers == [(2,)]
    scratch = project / "Scratch" / f"job_{job_id}"
    assert sorted(p.name for p in scratch.iterdir()) == sorted(
        attempt_file_name(i, 1) for i in range(24)
    )
    shown = cistem(home, "job", "show", job_id, "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["state"] == "completed"
    assert record["task_counts"] == {"completed": 24}
    assert [task["state"] for task in record["tasks"]] == ["completed"] * 24
    wait_until(lambda: not worker_pids(home), 10, message="workers still running after the job")
    job_row = read_db(
        project,
        "SELECT ACTION, PARAMETERS, SOFTWARE_VERSION, COMMAND_LINE, PROFILE_NAME FROM CISTEMD_JOBS",
    )[0]
    assert job_row[0] == "selftest"
    assert json.loads(job_row[1])["tasks"] == 24
    assert job_row[2].startswith("cistemd ")
    assert json.loads(job_row[3])[:3] == ["cistem", "run", "selftest"]
    assert job_row[4] == "local:2"


def test_job_commands_and_errors(daemon, project, home):
    bad = cistem(home, "run", "selftest", "--tasks", "zero", "--project", str(project))
    assert bad.returncode == 2
    assert "tasks" in bad.stderr
    unknown = cistem(home, "run", "no_such_action", "--project", str(project))
    assert unknown.returncode != 0
    assert "unknown action" in unknown.stderr
    missing = cistem(home, "job", "show", "999")
    assert missing.returncode == 2
    assert "no_such_job" in missing.stderr
    helped = cistem(home, "run", "selftest", "--help")
    assert helped.returncode == 0 and "--crash-every" in helped.stdout
    # --project defaults to the project of the current directory
    done = cistem(
        home, "run", "selftest", "--tasks", "3", "--sleep", "0", "--profile", "local:1", "--wait",
        "--json", cwd=project / "Assets",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["state"] == "completed" and record["project"] == str(project)
    listed = cistem(home, "jobs", "--json", cwd=project)
    assert listed.returncode == 0, listed.stderr
    assert [job["job_id"] for job in json.loads(listed.stdout)["jobs"]] == [record["job_id"]]
    log = cistem(home, "job", "log", record["job_id"])
    assert log.returncode == 0 and "completed" in log.stdout


def test_cancel_stops_tasks_within_two_seconds_and_leaves_no_worker(daemon, project, home):
    with daemon.client() as client:
        job_id = client.submit(project, "selftest", {"tasks": 6, "sleep": 30}, profile="local:2")
        wait_until(lambda: client.job(job_id)["tasks"].get("running", 0) == 2, 20)
        pids = worker_pids(home)
        assert len(pids) == 2
        started = time.monotonic()
        record = client.cancel(job_id)
        assert record["state"] == "cancelled"
        wait_until(lambda: not any(process_alive(p) for p in pids), 2.0,
                   message="workers alive 2 s after cancel")  # fmt: skip
        elapsed = time.monotonic() - started
        record = client.job(job_id)
    assert elapsed < 2.0
    assert record["tasks"] == {"cancelled": 6}
    assert not worker_pids(home)
    # a cancelled job stays cancelled; cancelling again is harmless
    with daemon.client() as client:
        assert client.cancel(job_id)["state"] == "cancelled"


def test_worker_killed_with_sigkill_its_task_is_requeued(daemon, project, home):
    with daemon.client() as client:
        job_id = client.submit(project, "selftest", {"tasks": 8, "sleep": 0.5}, profile="local:2")
        wait_until(lambda: client.job(job_id)["tasks"].get("running", 0) >= 1, 20)
        victim = worker_pids(home)[0]
        os.kill(victim, signal.SIGKILL)
        record = client.wait_for_job(job_id, timeout=60)
        events = client.job_events(job_id)
    assert record["state"] == "completed", record
    check_results_once(project, job_id, 8)
    requeued = [e for e in events if e["payload"].get("task_state") == "queued"]
    assert len(requeued) == 1
    evidence = requeued[0]["payload"]["evidence"]
    assert "SIGKILL" in evidence["reason"] or evidence["exit_code"] == -9


def test_poison_task_fails_after_exactly_three_attempts(daemon, project, home):
    with daemon.client() as client:
        job_id = client.submit(
            project,
            "selftest",
            {"tasks": 10, "sleep": 0.01, "poison": 4, "crash_mode": "segfault"},
            profile="local:2",
        )
        record = client.wait_for_job(job_id, timeout=90)
        events = client.job_events(job_id)
    assert record["state"] == "failed", record
    assert record["tasks"] == {"completed": 9, "failed": 1}
    assert "1 of 10 tasks failed" in record["message"]
    scratch = project / "Scratch" / f"job_{job_id}"
    poison_files = sorted(p.name for p in scratch.glob("selftest_task_4_attempt_*"))
    assert poison_files == [attempt_file_name(4, n) for n in (1, 2, 3)]
    rows = read_db(
        project,
        "SELECT STATE, ATTEMPT, FAILURES, EVIDENCE FROM CISTEMD_TASKS WHERE JOB_ID = ? "
        "AND TASK_KEY = '4'",
        (int(job_id),),
    )
    state, attempt, failures, evidence = rows[0]
    assert (state, attempt, failures) == ("failed", 3, 3)
    evidence = json.loads(evidence)
    assert len(evidence) == 3
    assert all("SIGSEGV" in item["reason"] for item in evidence), evidence
    assert all(item["host"] for item in evidence)
    results = read_db(
        project, "SELECT COUNT(*) FROM CISTEMD_RESULTS WHERE JOB_ID = ?", (int(job_id),)
    )
    assert results == [(9,)]
    failed_event = [e for e in events if e["payload"].get("task_state") == "failed"]
    assert len(failed_event) == 1
    wait_until(lambda: not worker_pids(home), 10)


def test_task_error_fails_the_task_at_once_with_its_traceback(daemon, project):
    with daemon.client() as client:
        job_id = client.submit(project, "selftest", {"tasks": 4, "sleep": 0, "fail_task": 2},
                               profile="local:1")  # fmt: skip
        record = client.wait_for_job(job_id, timeout=60)
    assert record["state"] == "failed"
    assert record["tasks"] == {"completed": 3, "failed": 1}
    evidence = json.loads(
        read_db(project, "SELECT EVIDENCE FROM CISTEMD_TASKS WHERE TASK_KEY = '2'")[0][0]
    )
    assert len(evidence) == 1 and "SelfTestFailure" in evidence[0]["traceback"]


def test_no_secret_in_any_spawned_process_argv(make_daemon, home, tmp_path):
    from cistemd.manager.keys import load_keypair

    process = make_daemon("--tcp-workers", "tcp://127.0.0.1:0").start()
    secret = load_keypair(home.keys_dir / "server.key_secret").secret
    assert secret is not None
    project = tmp_path / "proj"
    with process.client() as client:
        client.create_project(project)
        job_id = client.submit(project, "selftest", {"tasks": 4, "sleep": 2}, profile="local:2")
        wait_until(lambda: len(worker_pids(home)) == 2, 20)
        argvs = [cmdline(pid) for pid in worker_pids(home)] + [cmdline(process.pid)]
        environments = [Path(f"/proc/{pid}/environ").read_bytes() for pid in worker_pids(home)]
        client.cancel(job_id)
    for argv in argvs:
        assert argv, "process vanished"
        assert not any(secret.decode() in part for part in argv), argv
    for environment in environments:
        assert secret not in environment


def test_external_sqlite_readers_while_the_daemon_writes_at_full_rate(daemon, project):
    """WAL: readers polling the database never see 'database is locked'."""
    import sqlite3
    import threading

    from daemon_fixtures import db_path

    errors: list[str] = []
    reads = [0]
    stop = threading.Event()

    def reader() -> None:
        connection = sqlite3.connect(f"{db_path(project).as_uri()}?mode=ro", uri=True)
        try:
            while not stop.is_set():
                try:
                    connection.execute(
                        "SELECT STATE, COUNT(*) FROM CISTEMD_TASKS GROUP BY STATE"
                    ).fetchall()
                    connection.execute("SELECT COUNT(*) FROM CISTEMD_EVENTS").fetchall()
                    reads[0] += 1
                except sqlite3.OperationalError as exc:
                    errors.append(str(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        with daemon.client() as client:
            job_id = client.submit(
                project, "selftest", {"tasks": 600, "sleep": 0}, profile="local:2"
            )
            record = client.wait_for_job(job_id, timeout=120)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert record["state"] == "completed"
    assert errors == []
    assert reads[0] > 10
    check_results_once(project, job_id, 600)


@pytest.mark.slow
def test_random_worker_kills_and_a_poison_task_in_a_thousand_task_job(daemon, project, home):
    """Issue 3, test 3: crashes of every kind; the rest completes once, the poison fails at 3."""
    import random

    rng = random.Random(3)
    with daemon.client() as client:
        job_id = client.submit(
            project,
            "selftest",
            {"tasks": 1000, "sleep": 0.01, "crash_every": 250, "poison": 500,
             "crash_mode": "segfault"},
            profile="local:4",
        )  # fmt: skip
        kills: list[float] = []
        while len(kills) < 4:
            time.sleep(rng.uniform(0.3, 0.8))
            pids = worker_pids(home)
            if client.job(job_id)["state"] != "running" or not pids:
                break
            os.kill(rng.choice(pids), signal.SIGKILL)
            kills.append(time.time())
        record = client.wait_for_job(job_id, timeout=180)
        events = client.job_events(job_id)
    assert record["state"] == "failed", record
    assert record["tasks"] == {"completed": 999, "failed": 1}
    rows = read_db(
        project,
        "SELECT TASK_KEY, ATTEMPT, FAILURES FROM CISTEMD_TASKS WHERE STATE = 'failed'",
    )
    assert rows == [("500", 3, 3)]
    results = read_db(project, "SELECT COUNT(*), COUNT(DISTINCT TASK_ID) FROM CISTEMD_RESULTS")
    assert results == [(999, 999)]
    scratch = project / "Scratch" / f"job_{job_id}"
    assert len(list(scratch.glob("selftest_task_500_attempt_*"))) == 3
    # every crash of a first attempt was followed by a second, successful one
    for index in (249, 749, 999):
        assert (scratch / attempt_file_name(index, 2)).exists()
    # a killed worker's task is re-queued within heartbeat timeout + 1 s
    from datetime import datetime

    requeues = [
        datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()
        for e in events
        if e["payload"].get("task_state") == "queued"
    ]
    timeout = fx.HEARTBEAT_S * 3 + 1.0
    for killed in kills:
        later = [t - killed for t in requeues if t >= killed - 0.01]
        if later:  # the victim may have been idle (no task to re-queue)
            assert min(later) < timeout, (min(later), timeout)
    wait_until(lambda: not worker_pids(home), 10)
