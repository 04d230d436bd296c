"""The job tables: schema, writes, the UNIQUE result, and snapshots that rebuild the state."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cistemd.errors import ProjectError
from cistemd.manager import state as sm
from cistemd.manager.store import STORE_SCHEMA_VERSION, JobStore, TaskRow, wire_payload
from cistemd.project import Project

CONFIG = sm.StateConfig(heartbeat_interval=1.0, liveness=3, max_task_failures=3)


@pytest.fixture
def project(tmp_path):
    with Project.create(tmp_path / "proj") as opened:
        yield opened


def persist(store: JobStore, instructions: list[sm.Instruction]) -> None:
    """Write what the daemon writes for these instructions (one transaction)."""
    ended: list[int] = []
    with store.transaction():
        for ins in instructions:
            if isinstance(ins, sm.TaskStateChanged):
                store.apply_task_change(ins)
            elif isinstance(ins, sm.JobStateChanged):
                store.apply_job_change(ins)
                if ins.new.terminal:
                    ended.append(int(ins.job_id))
            elif isinstance(ins, sm.CommitResult):
                store.insert_result(
                    task_id=int(ins.task_id),
                    job_id=int(ins.job_id),
                    attempt=ins.attempt,
                    worker_id=ins.worker_id,
                    result_ref=ins.result_ref,
                    result={"ref": ins.result_ref},
                )
        for job_id in ended:
            store.record_task_counts(job_id)


def submit(
    store: JobStore, machine: sm.JobTaskState, job_id: int, n_tasks: int, *, final: bool = True
) -> list[str]:
    payloads = [{"i": i} for i in range(n_tasks)]
    with store.transaction():
        store.insert_job(
            job_id=job_id,
            action="selftest",
            parameters={"tasks": n_tasks},
            profile_name="local:2",
            profile={"name": "local:2", "commands": [{"number_of_copies": 2}]},
            n_workers=2,
            software_version="cistemd test",
            command_line=["cistem", "run", "selftest"],
            plan_state={"round": 0},
        )
        rows = store.insert_stage(
            job_id, 0, [TaskRow(str(i), p) for i, p in enumerate(payloads)], final=final
        )
        specs = [
            sm.TaskSpec(str(t), wire_payload("selftest", p))
            for t, p in zip(rows.task_ids, payloads, strict=True)
        ]
        out = machine.handle(sm.JobSubmitted(str(job_id), "selftest", 2, specs, 0.0, final=final))
        persist(store, out)
    return [str(t) for t in rows.task_ids]


def unfinished(snapshot: sm.Snapshot) -> sm.Snapshot:
    jobs = tuple(j for j in snapshot.jobs if not j.state.terminal)
    keep = {j.job_id for j in jobs}
    tasks = tuple(sorted((t for t in snapshot.tasks if t.job_id in keep), key=lambda t: t.task_id))
    return sm.Snapshot(jobs=jobs, tasks=tasks)


def same_as_machine(store: JobStore, machine: sm.JobTaskState) -> None:
    stored = store.load_snapshot()
    expected = unfinished(machine.snapshot())
    assert stored.jobs == expected.jobs
    assert sorted(stored.tasks, key=lambda t: t.task_id) == list(expected.tasks)


def test_schema_is_created_once_and_versioned(project):
    JobStore(project)
    JobStore(project)  # idempotent
    rows = project.query("SELECT COMPONENT, VERSION FROM CISTEMD_SCHEMA")
    assert rows == [{"component": "jobs", "version": STORE_SCHEMA_VERSION}]
    tables = {r["name"] for r in project.query("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {
        "CISTEMD_JOBS",
        "CISTEMD_STAGES",
        "CISTEMD_TASKS",
        "CISTEMD_RESULTS",
        "CISTEMD_EVENTS",
        "CISTEMD_WORKERS",
        "CISTEMD_LAUNCHERS",
    } <= tables
    assert project.integrity_check() == []
    with project.transaction() as conn:
        conn.execute("UPDATE CISTEMD_SCHEMA SET VERSION = 99")
    with pytest.raises(ProjectError, match="newer"):
        JobStore(project)


def test_writes_need_a_transaction(project):
    store = JobStore(project)
    with pytest.raises(RuntimeError, match="transaction"):
        store.add_event(1, None, "log", {"message": "x"}, "2024-01-01T00:00:00Z")


def test_one_result_per_task_is_enforced_by_sqlite(project):
    store = JobStore(project)
    machine = sm.JobTaskState(CONFIG)
    task_ids = submit(store, machine, 1, 2)
    with store.transaction():
        store.insert_result(
            task_id=int(task_ids[0]), job_id=1, attempt=1, worker_id="w", result_ref="r1",
            result={"x": 1},
        )  # fmt: skip
    with pytest.raises(sqlite3.IntegrityError), store.transaction():
        store.insert_result(
            task_id=int(task_ids[0]), job_id=1, attempt=2, worker_id="w2", result_ref="r2",
            result={"x": 2},
        )  # fmt: skip
    assert store.result(int(task_ids[0]))["result"] == {"x": 1}
    with pytest.raises(sqlite3.IntegrityError), store.transaction():
        store.insert_stage(1, 1, [TaskRow("0", {})], final=True)  # key reused in the job


def test_stage_order_is_checked(project):
    store = JobStore(project)
    submit(store, sm.JobTaskState(CONFIG), 5, 1, final=False)
    with pytest.raises(ProjectError, match="stage 3"), store.transaction():
        store.insert_stage(5, 3, [TaskRow("x", {})], final=True)
    with store.transaction():
        row = store.insert_stage(5, 1, [TaskRow("a", {"k": 1}), TaskRow("b", {})], final=True,
                                 plan_state={"round": 1})  # fmt: skip
    job = store.job(5)
    assert job["n_stages"] == 2 and job["n_tasks"] == 3 and job["plan_finished"]
    assert job["plan_state"] == {"round": 1}
    assert [t["key"] for t in store.tasks(5)] == ["0", "a", "b"]
    assert len(row.task_ids) == 2


def test_a_run_persisted_step_by_step_rebuilds_the_same_state(project):
    store = JobStore(project)
    machine = sm.JobTaskState(CONFIG)
    task_ids = submit(store, machine, 1, 3)
    same_as_machine(store, machine)
    for event in (
        sm.WorkerConnected("w1", "1", "node1", 1.0),
        sm.WorkerReady("w1", 1.0),
        sm.WorkerConnected("w2", "1", "node2", 1.0),
        sm.WorkerReady("w2", 1.0),
        sm.TaskResult("w1", task_ids[0], 1, "ref-a", 2.0),
        sm.WorkerDied("w2", 2.5, reason="killed by SIGKILL", exit_code=-9, stderr_tail="boom"),
    ):
        persist(store, machine.handle(event))
        same_as_machine(store, machine)
    stored = {t.task_id: t for t in store.load_snapshot().tasks}
    lost = stored[task_ids[1]]
    assert lost.failures == 1 and lost.evidence[0].exit_code == -9
    assert lost.evidence[0].stderr_tail == "boom" and lost.evidence[0].host == "node2"
    # a restart from the stored rows goes on from there
    rebuilt = sm.JobTaskState.from_snapshot(store.load_snapshot(), CONFIG)
    out = rebuilt.handle(sm.DaemonRestarted(10.0))
    persist(store, out)
    rebuilt.check_invariants()
    same_as_machine(store, rebuilt)
    assert [
        t.task_id for t in store.load_snapshot().tasks if t.state is sm.TaskState.COMPLETED
    ] == [task_ids[0]]


def test_ended_jobs_stay_out_of_the_snapshot_and_keep_their_counts(project):
    store = JobStore(project)
    machine = sm.JobTaskState(CONFIG)
    submit(store, machine, 1, 2)
    submit(store, machine, 2, 1)
    persist(store, machine.handle(sm.CancelJob("1", 1.0)))
    snapshot = store.load_snapshot()
    assert [j.job_id for j in snapshot.jobs] == ["2"]
    job = store.job(1)
    assert job["state"] == "cancelled" and job["task_counts"] == {"cancelled": 2}
    assert job["finished_at"] is not None
    jobs, total = store.jobs(states=["cancelled"])
    assert total == 1 and jobs[0]["job_id"] == 1
    jobs, total = store.jobs(limit=1)
    assert total == 2 and [j["job_id"] for j in jobs] == [2]
    assert store.integrity_problems() == []


def test_events_workers_and_launchers(project):
    store = JobStore(project)
    submit(store, sm.JobTaskState(CONFIG), 3, 1)
    with store.transaction():
        for event_id in range(1, 8):
            store.add_event(event_id, 3 if event_id % 2 else None, "log", {"n": event_id}, "t")
        store.record_worker_launch("w1", 3, "host")
        store.record_worker_hello("w1", 3, "host", 123)
        store.record_worker_hello("w9", 3, "other", 456)  # a survivor never launched here
        store.record_worker_end("w1", "exited", exit_code=-9, reason="killed by SIGKILL")
        store.save_launcher(3, 0, {"kind": "local", "processes": []})
        store.save_launcher(3, 1, {"kind": "local"}, done=True)
    assert [e["event_id"] for e in store.events(since_event_id=2, limit=3)] == [3, 4, 5]
    assert [e["event_id"] for e in store.events(job_id=3)] == [1, 3, 5, 7]
    assert store.max_event_id() == 7
    workers = {w["worker_id"]: w for w in store.workers(3)}
    assert workers["w1"]["state"] == "exited" and workers["w1"]["exit_code"] == -9
    assert workers["w9"]["pid"] == 456
    assert store.open_launchers() == [(3, 0, {"kind": "local", "processes": []})]
    with pytest.raises(ValueError):
        with store.transaction():
            store.record_worker_end("w1", "sleeping")


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["hello", "ready", "result", "error", "died", "tick", "cancel", "restart"]),
        st.integers(min_value=0, max_value=2),
        st.integers(min_value=0, max_value=4),
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=EVENTS)
def test_persisted_rows_always_match_the_machine(tmp_path_factory, events):
    """Whatever happens, what the store holds rebuilds exactly the machine's state."""
    with Project.create(tmp_path_factory.mktemp("p") / "proj") as project:
        store = JobStore(project)
        machine = sm.JobTaskState(CONFIG)
        task_ids = submit(store, machine, 1, 4)
        now = 0.0
        generation: dict[int, int] = {}
        for kind, worker, index in events:
            now += 0.5
            if "1" not in machine.job_ids():
                break  # ended before a restart: the job lives on in the database only
            wid = f"w{worker}-{generation.get(worker, 0)}"
            out: list[Any]
            if kind == "hello":
                generation[worker] = generation.get(worker, 0) + 1
                wid = f"w{worker}-{generation[worker]}"
                out = machine.handle(sm.WorkerConnected(wid, "1", f"host{worker}", now))
            elif kind == "ready":
                out = machine.handle(sm.WorkerReady(wid, now))
            elif kind == "result":
                task = task_ids[index % len(task_ids)]
                record = machine.task(task)
                out = machine.handle(
                    sm.TaskResult(wid, task, max(1, record.attempt), f"r{now}", now)
                )
            elif kind == "error":
                task = task_ids[index % len(task_ids)]
                record = machine.task(task)
                out = machine.handle(
                    sm.TaskError(wid, task, max(1, record.attempt), "boom", now, retriable=True)
                )
            elif kind == "died":
                out = machine.handle(sm.WorkerDied(wid, now, exit_code=-9))
            elif kind == "tick":
                now += 5.0
                out = machine.handle(sm.Tick(now))
            elif kind == "cancel":
                out = machine.handle(sm.CancelJob("1", now))
            else:
                machine = sm.JobTaskState.from_snapshot(store.load_snapshot(), CONFIG)
                out = machine.handle(sm.DaemonRestarted(now))
            persist(store, out)
            same_as_machine(store, machine)
            machine.check_invariants()
        results = project.query("SELECT TASK_ID, COUNT(*) AS n FROM CISTEMD_RESULTS GROUP BY 1")
        assert all(row["n"] == 1 for row in results)
        completed = project.query("SELECT COUNT(*) AS n FROM CISTEMD_TASKS WHERE STATE='completed'")
        assert completed[0]["n"] == len(results)
        assert store.integrity_problems() == []
        assert json.loads(
            project.query("SELECT PARAMETERS FROM CISTEMD_JOBS")[0]["parameters"]
        ) == {"tasks": 4}
