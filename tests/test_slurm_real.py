"""Workers through a real single-node SLURM (slurmctld + slurmd + munged, set up here).

sbatch (one job per worker) and salloc + srun (one allocation for all): a
100-task job completes; Terminate leaves nothing in ``squeue``; kill -9 of
the daemon while SLURM workers run, a restart, and the job completes with
every result once and the scheduler's state reconciled (no job left, none
submitted twice).
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ci_services import ServiceUnavailable, SlurmCluster
from daemon_fixtures import DaemonProcess, wait_until

from cistemd.manager.home import CistemHome
from cistemd.manager.profiles import ProfileCommand, RunProfile, SchedulerSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    try:
        cluster = SlurmCluster().start()
    except ServiceUnavailable as exc:
        pytest.skip(f"real SLURM unavailable: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture
def run(slurm, tmp_path, monkeypatch) -> Iterator[Any]:
    """A daemon (SLURM_CONF in its environment) with a project and the two SLURM profiles."""
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    daemon = DaemonProcess(CistemHome.at(tmp_path / "home"), tmp_path / "daemon.log").start()
    settings = {"walltime": "00:10:00", "job_name": "cistem-test", "prologue": ["true"]}
    profiles = [
        RunProfile(
            name="sbatch",
            launcher="scheduler",
            gui_address="127.0.0.1",
            commands=(ProfileCommand(number_of_copies=4, delay_ms=0),),
            scheduler=SchedulerSettings(kind="slurm", mode="batch", **settings),
        ),
        RunProfile(
            name="srun",
            launcher="scheduler",
            gui_address="127.0.0.1",
            commands=(ProfileCommand(number_of_copies=4, delay_ms=0),),
            scheduler=SchedulerSettings(kind="slurm", mode="srun", **settings),
        ),
        RunProfile(
            name="salloc",
            launcher="scheduler",
            gui_address="127.0.0.1",
            commands=(ProfileCommand(number_of_copies=4, delay_ms=0),),
            scheduler=SchedulerSettings(kind="slurm", mode="allocation", **settings),
        ),
    ]
    with daemon.client() as client:
        client.create_project(tmp_path / "project")
        for profile in profiles:
            client.save_profile(profile.to_dict())
    try:
        yield daemon
    finally:
        daemon.cleanup()
        slurm.cancel_all()
        wait_until(lambda: not slurm.queue(), 20)


def ours(slurm: SlurmCluster) -> list[str]:
    return [line for line in slurm.queue() if "cistem-test" in line]


@pytest.mark.parametrize("profile", ["sbatch", "srun", "salloc"])
def test_a_100_task_job_completes_and_leaves_no_job(run, slurm, tmp_path, profile):
    with run.client() as client:
        job_id = client.submit(
            tmp_path / "project", "selftest", {"tasks": 100, "sleep": 0.01}, profile=profile
        )
        assert wait_until(lambda: ours(slurm), 20) is None
        credentials = tmp_path / "home" / "credentials" / f"job-{job_id}.json"
        secret = json.loads(credentials.read_text())["secret_key"]
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
        job = client.wait_for_job(job_id, timeout=60)
        assert job["state"] == "completed", run.log()
        results, total = client.job_results(job_id)
        assert total == 100 and len({r["task_id"] for r in results}) == 100
    wait_until(lambda: not ours(slurm), 20, message=f"jobs left: {ours(slurm)}")
    logs = tmp_path / "home" / "logs" / "workers" / f"job-{job_id}"
    if profile == "sbatch":
        scripts = sorted(logs.glob("*.sh"))
        assert len(scripts) >= 4
        for script in scripts:
            assert stat.S_IMODE(script.stat().st_mode) == 0o600
            text = script.read_text()
            assert text.startswith("#!/bin/sh\n#SBATCH --job-name=cistem-test-w")
            assert "--credentials-file" in text and secret not in text
    credentials = tmp_path / "home" / "credentials"
    assert wait_until(lambda: not any(credentials.glob("*.json")), 10) is None


@pytest.mark.parametrize("profile", ["sbatch", "salloc"])
def test_terminate_leaves_no_job_in_squeue(run, slurm, tmp_path, profile):
    with run.client() as client:
        job_id = client.submit(
            tmp_path / "project", "selftest", {"tasks": 100, "sleep": 5.0}, profile=profile
        )
        wait_until(lambda: client.job(job_id)["tasks"].get("running", 0) >= 2, 30)
        assert ours(slurm)
        client.cancel(job_id)
        assert client.wait_for_job(job_id, timeout=20)["state"] == "cancelled"
    wait_until(lambda: not ours(slurm), 20, message=f"left after Terminate: {ours(slurm)}")


@pytest.mark.parametrize("profile", ["sbatch", "salloc"])
def test_kill9_restart_reconciles_and_completes(run, slurm, tmp_path, profile):
    with run.client() as client:
        job_id = client.submit(
            tmp_path / "project", "selftest", {"tasks": 100, "sleep": 0.15}, profile=profile
        )
        wait_until(lambda: client.job(job_id)["tasks"].get("completed", 0) >= 10, 40)
    before = {line.split("|")[0] for line in ours(slurm)}
    assert before, "no SLURM job while the workers run"
    run.kill9()
    time.sleep(0.5)
    # the workers outlive the daemon, waiting for it
    assert {line.split("|")[0] for line in ours(slurm)} == before
    run.start()
    with run.client() as client:
        job = client.wait_for_job(job_id, timeout=90)
        assert job["state"] == "completed", run.log()
        results, total = client.job_results(job_id)
        assert total == 100 and len({r["task_id"] for r in results}) == 100
        assert len({(r["task_id"], r["attempt"]) for r in results}) == 100
    wait_until(lambda: not ours(slurm), 25, message=f"jobs left: {ours(slurm)}")
    logs = Path(tmp_path / "home" / "logs" / "workers" / f"job-{job_id}")
    if profile == "sbatch":
        names = [path.name for path in logs.glob("*.sh")]
        assert len(names) == len(set(names))
    assert "re-attach" not in run.log() or "cannot re-attach" not in run.log()
    assert os.path.exists(tmp_path / "home" / "tcp_workers.json")


def test_workers_that_lose_the_daemon_exit_and_free_the_allocation(slurm, tmp_path, monkeypatch):
    """kill -9 of the daemon and no restart: the SLURM workers exit after their death timeout."""
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    daemon = DaemonProcess(
        CistemHome.at(tmp_path / "home"), tmp_path / "daemon.log",
        extra=("--worker-death-timeout", "2"),
    )  # fmt: skip
    daemon.start()
    profile = RunProfile(
        name="sbatch",
        launcher="scheduler",
        gui_address="127.0.0.1",
        commands=(ProfileCommand(number_of_copies=2, delay_ms=0),),
        scheduler=SchedulerSettings(kind="slurm", job_name="cistem-test"),
    )
    try:
        with daemon.client() as client:
            client.create_project(tmp_path / "project")
            client.save_profile(profile.to_dict())
            job_id = client.submit(
                tmp_path / "project", "selftest", {"tasks": 20, "sleep": 0.5}, profile="sbatch"
            )
            wait_until(lambda: client.job(job_id)["tasks"].get("completed", 0) >= 2, 30)
        assert len(ours(slurm)) == 2
        daemon.kill9()
        started = time.monotonic()
        wait_until(lambda: not ours(slurm), 20, message=f"still queued: {ours(slurm)}")
        assert time.monotonic() - started < 15
        logs = tmp_path / "home" / "logs" / "workers" / f"job-{job_id}"
        codes = {path.read_text().strip() for path in logs.glob("*.exit")}
        assert codes == {"75"}  # ExitCode.DAEMON_GONE
        assert all("death timeout" in path.read_text() for path in logs.glob("*.log"))
    finally:
        daemon.cleanup()
        slurm.cancel_all()
