"""Scheduler launchers: the generated scripts and commands as text (SLURM, SGE, LSF, PBS),
and fault scenarios against a scripted fake scheduler (tests/fake_scheduler.py installed
as sbatch/squeue/scancel, qsub/qstat/qdel, bsub/bjobs/bkill): a submit that times out or
fails after queueing, a job that vanishes, a node failure, a queue that does not answer.
Nothing is submitted twice and every result is recorded once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import sys
import time
from pathlib import Path
from typing import Any

import fake_scheduler
import pytest
from daemon_fixtures import DaemonProcess, wait_until

from cistemd.manager.home import CistemHome
from cistemd.manager.launchers import (
    LAUNCH_FAILED_EXIT_CODE,
    launcher_from_dict,
    worker_command,
)
from cistemd.manager.profiles import ProfileCommand, RunProfile, SchedulerSettings
from cistemd.manager.schedulers import (
    LSF,
    PBS,
    SGE,
    SLURM,
    SchedulerLauncher,
    allocation_step_command,
    job_script,
    salloc_command,
    srun_command,
)

SETTINGS = {
    "queue": "short",
    "account": "cryo",
    "walltime": "01:30:00",
    "memory": "4G",
    "job_name": "cistem",
    "extra_directives": ["--gres=gpu:1"],
    "prologue": ["module load cuda", "source /opt/venv/bin/activate"],
}


def argv(worker_id: str = "w5-abc", **extra: Any) -> list[str]:
    return worker_command(
        endpoint="tcp://10.0.0.1:5555", job_id="5", worker_id=worker_id, threads=4,
        credentials_file="/home/u/.cistem/credentials/job-5.json", python="/opt/venv/bin/python",
        **extra,
    )  # fmt: skip


# --------------------------------------------------------------------------- text


def test_slurm_script_is_exactly_what_we_expect(tmp_path):
    settings = SchedulerSettings(kind="slurm", **SETTINGS)
    script = job_script(settings, argv(), threads=4, log_dir="/logs")
    assert script.splitlines() == [
        "#!/bin/sh",
        "#SBATCH --job-name=cistem-w5-abc",
        "#SBATCH --output=/logs/worker-w5-abc.log",
        "#SBATCH --open-mode=append",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --partition=short",
        "#SBATCH --account=cryo",
        "#SBATCH --time=01:30:00",
        "#SBATCH --mem=4G",
        "#SBATCH --gres=gpu:1",
        "# cistemd worker w5-abc (scheduler job name cistem-w5-abc)",
        "module load cuda",
        "source /opt/venv/bin/activate",
        "/opt/venv/bin/python -m cistemd.worker --connect tcp://10.0.0.1:5555 --job-id 5 "
        "--worker-id w5-abc --threads 4 --heartbeat-interval 1.0 --death-timeout 60.0 "
        "--credentials-file /home/u/.cistem/credentials/job-5.json",
        "status=$?",
        'echo "$status" > /logs/worker-w5-abc.exit',
        'exit "$status"',
    ]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("sge", ["#$ -N cistem-w5-abc", "#$ -S /bin/sh", "#$ -o /logs/worker-w5-abc.log",
                 "#$ -j y", "#$ -q short", "#$ -A cryo", "#$ -l h_rt=01:30:00",
                 "#$ -l h_vmem=4G", "#$ -pe smp 4"]),
        ("lsf", ["#BSUB -J cistem-w5-abc", "#BSUB -o /logs/worker-w5-abc.log",
                 "#BSUB -e /logs/worker-w5-abc.log", "#BSUB -n 4", '#BSUB -R "span[hosts=1]"',
                 "#BSUB -q short", "#BSUB -P cryo", "#BSUB -W 01:30", "#BSUB -M 4G",
                 "#BSUB -pe smp 4"]),
        ("pbs", ["#PBS -N cistem-w5-abc", "#PBS -o /logs/worker-w5-abc.log", "#PBS -j oe",
                 "#PBS -l nodes=1:ppn=4", "#PBS -q short", "#PBS -A cryo",
                 "#PBS -l walltime=01:30:00", "#PBS -l mem=4G", "#PBS -pe smp 4"]),
    ],
)  # fmt: skip
def test_sge_lsf_pbs_headers(kind, expected):
    settings = SchedulerSettings(kind=kind, **{**SETTINGS, "extra_directives": ["-pe smp 4"]})
    lines = job_script(settings, argv(), threads=4, log_dir="/logs").splitlines()
    assert lines[0] == "#!/bin/sh"
    assert lines[1 : 1 + len(expected)] == expected
    assert lines[-3:] == ["status=$?", 'echo "$status" > /logs/worker-w5-abc.exit',
                          'exit "$status"']  # fmt: skip


def test_commands_and_job_id_patterns():
    assert SLURM.submit_command == ("sbatch", "--parsable")
    assert SLURM().parse_job_id("1234;cluster\n") == "1234"
    assert SGE().parse_job_id('Your job 77 ("x") has been submitted') == "77"
    assert LSF().parse_job_id("Job <4242> is submitted to queue <normal>.") == "4242"
    assert PBS().parse_job_id("981.pbs-server.example.org\n") == "981.pbs-server.example.org"
    assert SLURM().parse_job_id("sbatch: error: Batch job submission failed") is None
    assert LSF.submit_via_stdin and not SGE.submit_via_stdin
    assert SLURM().queue_command("alice") == ["squeue", "-h", "-u", "alice", "-o", "%i|%j|%T"]
    assert SGE().parse_queue(
        "12 0.5 cistem-w5 alice r 01/01/2026 00:00:00 all.q@n1 1\n   Full jobname: cistem-w5-a\n"
    ) == {"12": ("cistem-w5-a", "r")}
    assert PBS().parse_queue("Job Id: 7.srv\n    Job_Name = n\n    job_state = Q\n") == {
        "7.srv": ("n", "Q")
    }


def test_srun_and_single_allocation_commands():
    settings = SchedulerSettings(kind="slurm", mode="allocation", queue="short",
                                 walltime="00:10:00")  # fmt: skip
    assert salloc_command(settings, name="cistem-a", workers=3, threads=2) == [
        "salloc", "--no-shell", "--ntasks=3", "--job-name=cistem-a", "--cpus-per-task=2",
        "--partition=short", "--time=00:10:00",
    ]  # fmt: skip
    step = allocation_step_command(settings, "88", [argv("w1"), argv("w2")], threads=2)
    assert step[:6] == ["srun", "--jobid=88", "--ntasks=2", "--cpus-per-task=2",
                        "--kill-on-bad-exit=0", "/bin/sh"]  # fmt: skip
    assert '0) /opt/venv/bin/python -m cistemd.worker' in step[-1]
    assert "--worker-id w2" in step[-1] and step[-1].startswith('case "$SLURM_PROCID" in')
    srun = srun_command(SchedulerSettings(kind="slurm", mode="srun"), argv(), threads=4)
    assert srun[:4] == ["srun", "--nodes=1", "--ntasks=1", "--job-name=cistem-worker-w5-abc"]


def test_quoting_is_safe_for_awkward_paths():
    settings = SchedulerSettings(kind="slurm")
    worker = argv(log_file="/data/my project/it's.log")
    script = job_script(settings, worker, log_dir="/logs")
    assert "'/data/my project/it'\"'\"'s.log'" in script


# --------------------------------------------------------------------------- fake scheduler


@pytest.fixture
def fake(tmp_path, monkeypatch) -> Path:
    """Install the fake scheduler first on PATH; return its state file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    source = Path(fake_scheduler.__file__)
    for name in ("sbatch", "squeue", "scancel", "qsub", "qstat", "qdel", "bsub", "bjobs",
                 "bkill"):  # fmt: skip
        target = bin_dir / name
        target.write_text(f"#!{sys.executable}\n" + source.read_text())
        target.chmod(0o755)
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"next_id": 100, "jobs": {}, "submits": [], "cancels": [],
                                 "faults": {}}))  # fmt: skip
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SCHED_STATE", str(state))
    return state


def read_state(path: Path) -> dict[str, Any]:
    return fake_scheduler.mutate(path, lambda state: None)


def make(tmp_path: Path, kind: str = "slurm", **settings: Any) -> SchedulerLauncher:
    return SchedulerLauncher(
        SchedulerSettings(kind=kind, submit_timeout_s=settings.pop("submit_timeout_s", 5.0),
                          **settings),
        log_dir=tmp_path / "logs", poll_interval_s=0.0, grace_seconds=0.5,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["slurm", "sge", "lsf", "pbs"])
def test_submit_poll_and_cancel_with_each_kind(fake, tmp_path, monkeypatch, kind):
    monkeypatch.setenv("FAKE_QSUB_KIND", "pbs" if kind == "pbs" else "sge")
    launcher = make(tmp_path, kind)
    launcher.launch([argv("w1"), argv("w2")])
    assert launcher.submissions == 2 and len(launcher.job_ids) == 2 and launcher.is_alive()
    state = read_state(fake)
    assert state["submits"] == ["cistem-worker-w1", "cistem-worker-w2"]
    scripts = sorted((tmp_path / "logs").glob("*.sh"))
    assert [stat.S_IMODE(path.stat().st_mode) for path in scripts] == [0o600, 0o600]
    launcher.terminate(grace_seconds=0.5)
    assert not launcher.is_alive()
    exits = launcher.poll()
    assert sorted(item.worker_id for item in exits) == ["w1", "w2"]
    assert sorted(read_state(fake)["cancels"]) == sorted(
        job_id.split(".")[0] for job_id in {item for item in state["jobs"]}
    )


@pytest.mark.parametrize("fault", ["timeout", "fail_after"])
def test_a_submit_that_fails_after_queueing_is_adopted_not_resubmitted(fake, tmp_path, fault):
    fake_scheduler.mutate(fake, lambda s: s["faults"].update(submit=[fault]))
    launcher = make(tmp_path, submit_timeout_s=1.0)
    started = time.monotonic()
    launcher.launch([argv("w1")])
    assert time.monotonic() - started < 10
    assert launcher.poll() == []  # not reported failed: it is queued
    assert launcher.job_ids == ["100"]
    state = read_state(fake)
    assert state["submits"] == ["cistem-worker-w1"] and list(state["jobs"]) == ["100"]
    launcher.kill()


def test_a_submit_that_queued_nothing_fails_and_a_late_job_is_cancelled(fake, tmp_path):
    fake_scheduler.mutate(fake, lambda s: s["faults"].update(submit=["fail_before", "late"]))
    launcher = make(tmp_path)
    launcher.launch([argv("w1"), argv("w2")])
    exits = {item.worker_id: item for item in launcher.poll()}
    assert set(exits) == {"w1", "w2"}
    assert all(item.exit_code == LAUNCH_FAILED_EXIT_CODE for item in exits.values())
    assert "Socket timed out" in exits["w1"].stderr_tail
    # w2's job shows up 2 s later: it is cancelled, never run next to a replacement
    record = json.loads(json.dumps(launcher.to_dict()))
    assert record["limbo"] == ["cistem-worker-w1", "cistem-worker-w2"]
    adopted = launcher_from_dict(record)
    assert isinstance(adopted, SchedulerLauncher)
    wait_until(lambda: "100" in read_state(fake)["cancels"] or adopted.poll() != [], 10)
    assert read_state(fake)["cancels"] == ["100"]
    assert read_state(fake)["submits"] == ["cistem-worker-w1", "cistem-worker-w2"]


def test_a_hung_scheduler_costs_one_timeout_not_one_per_copy(fake, tmp_path):
    fake_scheduler.mutate(fake, lambda s: s["faults"].update(submit=["hang"]))
    launcher = make(tmp_path, submit_timeout_s=1.0)
    started = time.monotonic()
    launcher.launch([argv("w1"), argv("w2"), argv("w3")])
    assert time.monotonic() - started < 5
    exits = launcher.poll()
    assert sorted(item.worker_id for item in exits) == ["w1", "w2", "w3"]
    assert all(item.exit_code == LAUNCH_FAILED_EXIT_CODE for item in exits)
    assert launcher.submissions == 1 and read_state(fake)["submits"] == ["cistem-worker-w1"]
    assert not launcher.is_alive()


def test_a_vanished_job_is_reported_once_and_a_silent_queue_decides_nothing(fake, tmp_path):
    launcher = make(tmp_path)
    launcher.launch([argv("w1"), argv("w2")])
    fake_scheduler.mutate(fake, lambda s: s["faults"].update(queue=["fail"] * 4))
    fake_scheduler.mutate(fake, lambda s: s["jobs"].pop("100"))  # w1's job vanishes
    for _ in range(4):  # the queue does not answer: nothing is decided
        assert launcher.poll() == []
    (tmp_path / "logs" / "worker-w1.exit").write_text("75\n")
    exits: list[Any] = []
    wait_until(lambda: bool(exits.__iadd__(launcher.poll())), 5)
    assert [(item.worker_id, item.exit_code) for item in exits] == [("w1", 75)]
    assert "left the queue" in exits[0].stderr_tail
    assert launcher.poll() == [] and launcher.job_ids == ["101"]
    launcher.kill()


def test_reattach_reconciles_against_the_queue(fake, tmp_path):
    launcher = make(tmp_path)
    launcher.launch([argv("w1"), argv("w2")])
    record = json.loads(json.dumps(launcher.to_dict()))
    fake_scheduler.mutate(fake, lambda s: s["jobs"].pop("101"))  # ended while no daemon ran
    adopted = launcher_from_dict(record)
    assert isinstance(adopted, SchedulerLauncher) and adopted.job_ids == ["100", "101"]
    exits: list[Any] = []
    wait_until(lambda: bool(exits.__iadd__(adopted.poll())), 5)
    assert [item.worker_id for item in exits] == ["w2"]
    assert adopted.job_ids == ["100"] and adopted.is_alive()
    adopted.terminate(grace_seconds=0.2)
    assert not adopted.is_alive()


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sge", "lsf"])
def test_job_completes_once_through_faults(fake, tmp_path, monkeypatch, kind):
    """Submit timeout, non-zero exit after queueing, a node failure and a requeue."""
    fake_scheduler.mutate(
        fake, lambda s: s.update(run=True, faults={"submit": ["timeout", "fail_after"]})
    )
    daemon = DaemonProcess(CistemHome.at(tmp_path / "home"), tmp_path / "daemon.log").start()
    profile = RunProfile(
        name="fake",
        launcher="scheduler",
        gui_address="127.0.0.1",
        commands=(ProfileCommand(number_of_copies=3, delay_ms=0),),
        scheduler=SchedulerSettings(kind=kind, submit_timeout_s=1.0, queue="all.q"),
    )
    try:
        with daemon.client() as client:
            client.create_project(tmp_path / "project")
            client.save_profile(profile.to_dict())
            job_id = client.submit(
                tmp_path / "project", "selftest", {"tasks": 60, "sleep": 0.1}, profile="fake"
            )
            busy: dict[str, str] = {}  # worker id -> task id, for workers running a task

            def two_busy_workers() -> bool:
                tasks, _ = client.job_tasks(job_id, states=["running"])
                busy.update({t["worker_id"]: t["task_id"] for t in tasks if t["worker_id"]})
                return len(busy) >= 2

            wait_until(two_busy_workers, 30)
            victim, requeued = sorted(busy)[:2]
            jobs = {job["name"]: job_id for job_id, job in read_state(fake)["jobs"].items()}

            # Freeze the victim first, so what the daemon says it holds cannot change
            # between looking and killing (a 0.1 s task may finish in between).
            victim_pid = read_state(fake)["jobs"][jobs[f"cistem-worker-{victim}"]]["pid"]
            os.killpg(victim_pid, signal.SIGSTOP)
            time.sleep(0.5)  # messages already sent by the victim reach the daemon
            tasks, _ = client.job_tasks(job_id, states=["assigned", "running"])
            held = [t["task_id"] for t in tasks if t["worker_id"] == victim]
            assert held, "the frozen victim holds no task (it always has one prefetched)"

            def node_failure(state: dict[str, Any]) -> None:
                job = state["jobs"][jobs[f"cistem-worker-{victim}"]]
                os.killpg(job["pid"], 9)
                job.update(state="NODE_FAIL", ended_at=time.time())

            def requeue(state: dict[str, Any]) -> None:  # same job id and name, run again
                job = state["jobs"][jobs[f"cistem-worker-{requeued}"]]
                os.killpg(job["pid"], 9)
                job["pid"] = fake_scheduler.start_script(job["script"])

            fake_scheduler.mutate(fake, node_failure)
            fake_scheduler.mutate(fake, requeue)
            job = client.wait_for_job(job_id, timeout=90)
            assert job["state"] == "completed", daemon.log()
            results, total = client.job_results(job_id)
            assert total == 60 and len({r["task_id"] for r in results}) == 60
            by_task = {r["task_id"]: r for r in results}
            # every task the lost worker held ran again (attempt 2) on another worker
            for task_id in held:
                assert by_task[task_id]["attempt"] >= 2, (task_id, daemon.log())
                assert by_task[task_id]["worker_id"] != victim
        state = read_state(fake)
        assert len(state["submits"]) == len(set(state["submits"]))  # nothing submitted twice
        assert len(state["submits"]) >= 3
    finally:
        daemon.cleanup()
        for job in read_state(fake)["jobs"].values():
            if job.get("pid"):
                with contextlib.suppress(OSError):
                    os.killpg(job["pid"], 9)
