"""Tests of the pure job/task state machine (cistemd.manager.state).

Unit tests assert on the instruction lists of each scenario; a hypothesis
``RuleBasedStateMachine`` drives random lifecycles (workers that crash, go
silent, send stale or duplicate results, cancels and daemon restarts) and
checks the invariants after every step, then drains every job to its end.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cistemd.manager.state import (
    JOB_TRANSITIONS,
    TASK_TRANSITIONS,
    WORKER_TRANSITIONS,
    AssignTask,
    CancelJob,
    CancelTask,
    CommitResult,
    DaemonRestarted,
    FailureKind,
    FailureRecord,
    Heartbeat,
    Instruction,
    InvalidEvent,
    InvalidTransition,
    JobRecord,
    JobState,
    JobStateChanged,
    JobSubmitted,
    JobTaskState,
    LaunchFailed,
    LaunchWorkers,
    PlanFinished,
    PlanNextStage,
    PublishProgress,
    RejectReason,
    RejectResult,
    Snapshot,
    StageAdded,
    StateConfig,
    StopWorker,
    TaskAttempt,
    TaskError,
    TaskProgress,
    TaskRecord,
    TaskResult,
    TaskSpec,
    TaskStarted,
    TaskState,
    TaskStateChanged,
    Tick,
    WorkerConnected,
    WorkerDied,
    WorkerReady,
    WorkerState,
    WorkerStateChanged,
)

CFG = StateConfig(
    heartbeat_interval=1.0,
    liveness=3,
    max_task_failures=3,
    lease_seconds=30.0,
    worker_restarts_allowed=3,
)

Q, A, R = TaskState.QUEUED, TaskState.ASSIGNED, TaskState.RUNNING
DONE, FAIL, CANC = TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED
STATE_CHANGES = (TaskStateChanged, JobStateChanged, WorkerStateChanged)
InstructionT = TypeVar("InstructionT", bound=Instruction)


def specs(*task_ids: str) -> list[TaskSpec]:
    return [TaskSpec(t, {"movie": f"{t}.mrc"}) for t in task_ids]


def only(out: Sequence[Instruction], kind: type[InstructionT]) -> list[InstructionT]:
    return [i for i in out if isinstance(i, kind)]


def actions(out: Sequence[Instruction]) -> list[Instruction]:
    """The instructions that are not state-change records."""
    return [i for i in out if not isinstance(i, STATE_CHANGES)]


def task_moves(out: Sequence[Instruction]) -> list[tuple[str, TaskState | None, TaskState]]:
    return [(i.task_id, i.old, i.new) for i in out if isinstance(i, TaskStateChanged)]


def job_moves(out: Sequence[Instruction]) -> list[tuple[str, JobState | None, JobState]]:
    return [(i.job_id, i.old, i.new) for i in out if isinstance(i, JobStateChanged)]


def start(
    sm: JobTaskState,
    job_id: str,
    task_ids: Sequence[str],
    *,
    n_workers: int = 1,
    final: bool = True,
    now: float = 0.0,
) -> list[Instruction]:
    return sm.handle(
        JobSubmitted(job_id, "ctffind", n_workers, specs(*task_ids), now=now, final=final)
    )


def join(sm: JobTaskState, worker_id: str, job_id: str, now: float = 0.0) -> list[Instruction]:
    """Connect a worker and ask for work; return the instructions of both."""
    out = sm.handle(WorkerConnected(worker_id, job_id, f"host-{worker_id}", now=now))
    return out + sm.handle(WorkerReady(worker_id, now=now))


def assigned(out: Sequence[Instruction]) -> list[tuple[str, str, int]]:
    return [(i.worker_id, i.task_id, i.attempt) for i in out if isinstance(i, AssignTask)]


# ------------------------------------------------------------------ basic life


def test_normal_run_instruction_by_instruction() -> None:
    sm = JobTaskState(CFG)
    out = start(sm, "J1", ["t1", "t2"], n_workers=2)
    assert out == [
        JobStateChanged("J1", None, JobState.QUEUED, "submitted (ctffind)", 0.0),
        TaskStateChanged("t1", "J1", None, Q, 0, None, 0, "stage 0", 0.0),
        TaskStateChanged("t2", "J1", None, Q, 0, None, 0, "stage 0", 0.0),
        LaunchWorkers("J1", 2, "start"),
    ]
    assert sm.pending_launches("J1") == 2

    out = sm.handle(WorkerConnected("w1", "J1", "node1", now=1.0))
    assert out == [
        WorkerStateChanged("w1", "J1", None, WorkerState.CONNECTED, "hello from node1", 1.0)
    ]
    assert sm.pending_launches("J1") == 1

    out = sm.handle(WorkerReady("w1", now=1.0))
    assert out == [
        JobStateChanged("J1", JobState.QUEUED, JobState.RUNNING, "first task assigned", 1.0),
        TaskStateChanged("t1", "J1", Q, A, 1, "w1", 0, "attempt 1 on w1 (node1)", 1.0),
        WorkerStateChanged("w1", "J1", WorkerState.CONNECTED, WorkerState.BUSY, "running t1", 1.0),
        AssignTask("w1", "t1", 1, {"movie": "t1.mrc"}, 31.0),
    ]

    sm.handle(WorkerConnected("w2", "J1", "node2", now=1.5))
    out = sm.handle(WorkerReady("w2", now=1.5))
    assert actions(out) == [AssignTask("w2", "t2", 1, {"movie": "t2.mrc"}, 31.5)]

    assert sm.handle(TaskStarted("w1", "t1", 1, now=2.0)) == [
        TaskStateChanged("t1", "J1", A, R, 1, "w1", 0, "started", 2.0)
    ]
    assert sm.handle(TaskProgress("w1", "t1", 1, now=2.5, fraction=0.5, message="fit")) == [
        PublishProgress("J1", "t1", 1, "w1", 0.5, "fit", 2.5)
    ]

    out = sm.handle(TaskResult("w1", "t1", 1, "res/t1", now=3.0))
    assert out == [
        CommitResult("t1", 1, "res/t1", "J1", "w1"),
        TaskStateChanged("t1", "J1", R, DONE, 1, "w1", 0, "result of attempt 1 committed", 3.0),
        WorkerStateChanged("w1", "J1", WorkerState.BUSY, WorkerState.CONNECTED, "finished t1", 3.0),
    ]
    # Nothing left to hand out and the plan is final: the idle worker is released.
    out = sm.handle(WorkerReady("w1", now=3.0))
    assert out == [
        WorkerStateChanged(
            "w1",
            "J1",
            WorkerState.CONNECTED,
            WorkerState.STOPPING,
            "no more work for this job",
            3.0,
        ),
        StopWorker("w1", "no more work for this job"),
    ]

    out = sm.handle(TaskResult("w2", "t2", 1, "res/t2", now=4.0))
    assert out == [
        CommitResult("t2", 1, "res/t2", "J1", "w2"),
        TaskStateChanged("t2", "J1", A, DONE, 1, "w2", 0, "result of attempt 1 committed", 4.0),
        WorkerStateChanged("w2", "J1", WorkerState.BUSY, WorkerState.CONNECTED, "finished t2", 4.0),
        JobStateChanged("J1", JobState.RUNNING, JobState.COMPLETED, "all 2 tasks completed", 4.0),
        WorkerStateChanged(
            "w2", "J1", WorkerState.CONNECTED, WorkerState.STOPPING, "job completed", 4.0
        ),
        StopWorker("w2", "job completed"),
    ]
    assert sm.handle(WorkerDied("w1", now=5.0, reason="bye", exit_code=0)) == [
        WorkerStateChanged(
            "w1", "J1", WorkerState.STOPPING, WorkerState.STOPPED, "exited: bye", 5.0
        )
    ]
    assert sm.job("J1") == JobRecord(
        "J1", "ctffind", 2, JobState.COMPLETED, 1, True, "all 2 tasks completed"
    )
    assert sm.task("t2").result_ref == "res/t2"
    assert sm.counters.results_committed == 2
    assert sm.status()["tasks"] == {"completed": 2}
    sm.check_invariants()


def test_multi_stage_plan() -> None:
    sm = JobTaskState(CFG)
    out = start(sm, "J", ["a1", "a2"], n_workers=2, final=False)
    assert only(out, LaunchWorkers) == [LaunchWorkers("J", 2, "start")]
    join(sm, "w1", "J")
    join(sm, "w2", "J")
    assert sm.handle(TaskResult("w1", "a1", 1, "r/a1", now=1.0))[-1] == WorkerStateChanged(
        "w1", "J", WorkerState.BUSY, WorkerState.CONNECTED, "finished a1", 1.0
    )
    # A worker with nothing queued waits: the plan may still add a stage.
    out = sm.handle(WorkerReady("w1", now=1.0))
    assert actions(out) == [] and sm.worker("w1").state is WorkerState.WAITING
    out = sm.handle(TaskResult("w2", "a2", 1, "r/a2", now=2.0))
    assert actions(out) == [CommitResult("a2", 1, "r/a2", "J", "w2"), PlanNextStage("J", 0)]
    sm.handle(WorkerReady("w2", now=2.0))

    with pytest.raises(InvalidEvent, match="stage 2 was not asked"):
        sm.handle(StageAdded("J", 2, specs("x"), now=3.0))
    out = sm.handle(StageAdded("J", 1, specs("b1", "b2", "b3"), now=3.0))
    assert assigned(out) == [("w1", "b1", 1), ("w2", "b2", 1)]
    assert not only(out, LaunchWorkers)  # two workers wanted, two present
    assert sm.queued_task_ids("J") == ["b3"]
    with pytest.raises(InvalidEvent, match="was not asked"):
        sm.handle(PlanFinished("J", now=3.0))

    sm.handle(TaskResult("w1", "b1", 1, "r/b1", now=4.0))
    assert assigned(sm.handle(WorkerReady("w1", now=4.0))) == [("w1", "b3", 1)]
    sm.handle(TaskResult("w2", "b2", 1, "r/b2", now=5.0))
    sm.handle(WorkerReady("w2", now=5.0))
    out = sm.handle(TaskResult("w1", "b3", 1, "r/b3", now=6.0))
    assert only(out, PlanNextStage) == [PlanNextStage("J", 1)]
    assert sm.job("J").state is JobState.RUNNING

    out = sm.handle(PlanFinished("J", now=7.0))
    assert job_moves(out) == [("J", JobState.RUNNING, JobState.COMPLETED)]
    assert only(out, StopWorker) == [
        StopWorker("w1", "job completed"),
        StopWorker("w2", "job completed"),
    ]
    assert sm.job("J").n_stages == 2
    sm.check_invariants()


def test_empty_stages_and_plan_outcomes() -> None:
    sm = JobTaskState(CFG)
    out = start(sm, "E", [], final=False)
    assert actions(out) == [PlanNextStage("E", 0)]  # no workers for no work
    out = sm.handle(PlanFinished("E", now=1.0))
    assert job_moves(out) == [("E", JobState.QUEUED, JobState.COMPLETED)]

    out = start(sm, "F", [], final=True)
    assert job_moves(out)[-1] == ("F", JobState.QUEUED, JobState.COMPLETED)

    start(sm, "P", ["p1"], final=False)
    join(sm, "w", "P")
    sm.handle(TaskResult("w", "p1", 1, "r", now=1.0))
    out = sm.handle(PlanFinished("P", now=2.0, error="no particles survived"))
    assert out[0] == JobStateChanged(
        "P", JobState.RUNNING, JobState.FAILED, "plan failed: no particles survived", 2.0
    )
    sm.check_invariants()


def test_daemon_side_bugs_raise_invalid_event() -> None:
    sm = JobTaskState(CFG)
    start(sm, "J", ["t1"])
    with pytest.raises(InvalidEvent, match="already submitted"):
        start(sm, "J", ["t9"])
    with pytest.raises(InvalidEvent, match="'t1' is not new"):
        start(sm, "K", ["t1"])
    with pytest.raises(InvalidEvent, match="'u' is not new"):
        start(sm, "K", ["u", "u"])
    with pytest.raises(InvalidEvent, match="n_workers"):
        sm.handle(JobSubmitted("K", "ctffind", 0, [], now=0.0))
    with pytest.raises(InvalidEvent, match="unknown job"):
        sm.handle(CancelJob("nope", now=0.0))
    with pytest.raises(TypeError):
        sm.handle("not an event")  # type: ignore[arg-type]
    assert sm.job_ids() == ["J"]  # nothing half-created
    sm.check_invariants()


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="liveness"):
        StateConfig(liveness=0)
    with pytest.raises(ValueError, match="lease_seconds"):
        StateConfig(lease_seconds=0.0)
    with pytest.raises(ValueError, match="heartbeat_interval"):
        StateConfig(heartbeat_interval=-1.0)
    assert StateConfig(heartbeat_interval=2.0, liveness=3).liveness_period == 6.0


def test_allow_lists_cover_exactly_the_documented_states() -> None:
    assert {new for _, new in TASK_TRANSITIONS} == set(TaskState)
    assert set(JobState) == {"queued", "running", "completed", "failed", "cancelled"}
    for table in (TASK_TRANSITIONS, JOB_TRANSITIONS, WORKER_TRANSITIONS):
        for old, _new in table:
            assert old is None or not (old.terminal if hasattr(old, "terminal") else old.gone)


# ------------------------------------------------------------------ worker loss


def test_worker_crash_requeues_with_evidence_and_replaces_the_worker() -> None:
    sm = JobTaskState(CFG)
    start(sm, "J", ["t1", "t2"], n_workers=2)
    sm.handle(WorkerConnected("w1", "J", "node1", now=0.0))
    sm.handle(WorkerReady("w1", now=0.0))
    join(sm, "w2", "J")
    sm.handle(TaskStarted("w1", "t1", 1, now=1.0))

    out = sm.handle(
        WorkerDied("w1", now=5.0, reason="connection lost", exit_code=137, stderr_tail="Killed")
    )
    record = FailureRecord(
        1, "w1", "node1", FailureKind.WORKER_LOST, "connection lost", 5.0, 137, "Killed"
    )
    assert out == [
        TaskStateChanged(
            "t1", "J", R, Q, 1, "w1", 1, "attempt 1 lost: connection lost", 5.0, (record,)
        ),
        WorkerStateChanged("w1", "J", WorkerState.BUSY, WorkerState.DEAD, "connection lost", 5.0),
        LaunchWorkers(
            "J", 1, "top up to 2 workers; last loss: worker w1 on node1: connection lost"
        ),
    ]
    assert sm.task("t1").attempt == 1  # kept; the next assignment is attempt 2
    out = join(sm, "w3", "J", now=6.0)
    assert assigned(out) == [("w3", "t1", 2)]
    assert sm.task("t1").evidence == (record,)
    c = sm.counters
    assert (c.requeues, c.worker_deaths) == (1, 1)
    sm.check_invariants()


def test_three_deaths_fail_the_task_and_the_rest_of_the_job_completes() -> None:
    sm = JobTaskState(CFG)
    out = start(sm, "J", ["poison", "good"], n_workers=1)
    launches = only(out, LaunchWorkers)
    for k in (1, 2, 3):
        out = join(sm, f"k{k}", "J", now=float(k))
        assert assigned(out) == [(f"k{k}", "poison", k)]  # re-queued at the front
        out = sm.handle(
            WorkerDied(
                f"k{k}",
                now=k + 0.5,
                reason="process exited",
                exit_code=139,
                stderr_tail=f"Segmentation fault (attempt {k})",
            )
        )
        launches += only(out, LaunchWorkers)
    failed = [i for i in out if isinstance(i, TaskStateChanged) and i.new is FAIL]
    assert len(failed) == 1
    evidence = failed[0].evidence
    assert [(e.attempt, e.host, e.exit_code) for e in evidence] == [
        (1, "host-k1", 139),
        (2, "host-k2", 139),
        (3, "host-k3", 139),
    ]
    assert evidence[2].stderr_tail == "Segmentation fault (attempt 3)"
    assert sm.task("poison").state is FAIL and sm.task("poison").failures == 3
    assert sm.job("J").state is JobState.RUNNING  # the job goes on

    out = join(sm, "k4", "J", now=5.0)
    assert assigned(out) == [("k4", "good", 1)]
    out = sm.handle(TaskResult("k4", "good", 1, "r/good", now=6.0))
    assert job_moves(out) == [("J", JobState.RUNNING, JobState.FAILED)]
    assert sm.job("J").reason == "1 of 2 tasks failed (poison); 1 results recorded"
    assert sm.task("good").state is DONE
    assert sum(x.n for x in launches) == 4  # 1 wanted, 3 replacements
    assert sm.counters.tasks_failed == 1
    sm.check_invariants()


def test_heartbeat_loss_via_tick() -> None:
    sm = JobTaskState(CFG)
    start(sm, "J", ["t1"])
    join(sm, "w1", "J", now=0.0)
    for t in (1.0, 2.0, 3.0):
        assert sm.handle(Heartbeat("w1", now=t, task_id="t1", attempt=1)) == []
    assert sm.handle(Tick(now=5.9)) == []  # last beat 3.0, dead after 6.0
    out = sm.handle(Tick(now=6.5))
    reason = "missed 3 heartbeats (silent for 3.5 s)"
    assert task_moves(out) == [("t1", A, Q)]
    assert only(out, TaskStateChanged)[0].evidence[0].kind is FailureKind.WORKER_LOST
    assert only(out, TaskStateChanged)[0].evidence[0].reason == reason
    assert actions(out) == [
        StopWorker("w1", f"declared dead: {reason}"),
        LaunchWorkers("J", 1, f"top up to 1 workers; last loss: worker w1 on host-w1: {reason}"),
    ]
    # The dead worker wakes up: anything it says is answered with a stop.
    out = sm.handle(Heartbeat("w1", now=7.0))
    assert out == [StopWorker("w1", f"worker is dead ({reason})")]
    assert sm.counters.dead_worker_messages == 1
    sm.check_invariants()


def test_one_tick_buries_all_silent_workers_before_handing_out_work() -> None:
    sm = JobTaskState(CFG)
    start(sm, "J", ["t1"], n_workers=3, final=False)
    join(sm, "w1", "J")
    join(sm, "w2", "J")  # waiting for a next stage
    out = sm.handle(Tick(now=10.0))  # a partition: both silent
    # t1 must not be handed to w2, which is as dead as w1.
    assert assigned(out) == []
    assert sm.task("t1").failures == 1
    assert sm.worker("w2").state is WorkerState.DEAD
    sm.check_invariants()


def test_lease_expires_without_word_about_the_attempt() -> None:
    sm = JobTaskState(StateConfig(heartbeat_interval=1.0, lease_seconds=10.0))
    start(sm, "J", ["t1"])
    join(sm, "w1", "J", now=0.0)
    for t in range(1, 11):  # alive, but its beats never name t1
        sm.handle(Heartbeat("w1", now=float(t)))
    out = sm.handle(Tick(now=10.5))
    assert task_moves(out) == [("t1", A, Q)]
    assert only(out, TaskStateChanged)[0].evidence[0].kind is FailureKind.LEASE_EXPIRED
    reason = "lease of 10.0 s expired without word from the worker about this attempt"
    assert actions(out)[:2] == [CancelTask("w1", "t1", 1), StopWorker("w1", reason)]
    assert sm.worker("w1").state is WorkerState.STOPPING

    # Beats that name the attempt renew the lease.
    sm2 = JobTaskState(StateConfig(heartbeat_interval=1.0, lease_seconds=10.0))
    start(sm2, "J", ["t1"])
    join(sm2, "w1", "J", now=0.0)
    for t in range(1, 30):
        sm2.handle(Heartbeat("w1", now=float(t), task_id="t1", attempt=1))
        assert sm2.handle(Tick(now=float(t) + 0.5)) == []
    sm.check_invariants()
    sm2.check_invariants()


# ------------------------------------------------------------------ results


def test_sigstop_past_lease_then_late_result_is_rejected_as_stale() -> None:
    sm = JobTaskState(CFG)
    start(sm, "J", ["t1"], n_workers=2, final=False)
    join(sm, "w1", "J", now=0.0)
    join(sm, "w2", "J", now=0.0)  # waiting for a next stage
    sm.handle(Heartbeat("w2", now=3.0))
    out = sm.handle(Tick(now=3.5))  # w1 was SIGSTOP-ed at 0
    assert assigned(out) == [("w2", "t1", 2)]
    assert StopWorker("w1", "declared dead: missed 3 heartbeats (silent for 3.5 s)") in out

    out = sm.handle(TaskResult("w1", "t1", 1, "r/late", now=4.0))  # SIGCONT
    assert actions(out) == [
        RejectResult("t1", 1, "w1", RejectReason.STALE_ATTEMPT),
        StopWorker("w1", "worker is dead (missed 3 heartbeats (silent for 3.5 s))"),
    ]
    assert sm.counters.stale_results_rejected == 1
    assert sm.task("t1").state is A

    commits = only(sm.handle(TaskResult("w2", "t1", 2, "r/t1", now=5.0)), CommitResult)
    assert commits == [CommitResult("t1", 2, "r/t1", "J", "w2")]
    # Any later copy of either attempt is refused.
    assert only(sm.handle(TaskResult("w2", "t1", 2, "r/t1", now=6.0)), RejectResult) == [
        RejectResult("t1", 2, "w2", RejectReason.DUPLICATE)
    ]
    assert only(sm.handle(TaskResult("w1", "t1", 1, "r/late", now=6.0)), RejectResult) == [
        RejectResult("t1", 1, "w1", RejectReason.STALE_ATTEMPT)
    ]
    assert sm.counters.results_committed == 1
    assert sm.counters.results_rejected == {"stale attempt": 2, "duplicate result": 1}
    sm.check_invariants()


def test_duplicate_result_for_the_same_attempt() -> None:
    sm = JobTaskState(CFG)
    start(sm, "J", ["t1", "t2"])
    join(sm, "w1", "J")
    sm.handle(TaskResult("w1", "t1", 1, "r/1", now=1.0))
    out = sm.handle(TaskResult("w1", "t1", 1, "r/1-again", now=1.1))
    assert out == [RejectResult("t1", 1, "w1", RejectReason.DUPLICATE)]
    assert sm.task("t1").result_ref == "r/1"
    sm.check_invariants()


def test_late_result_of_a_lost_attempt_is_committed_if_not_reassigned() -> None:
    sm = JobTaskState(CFG)
    start(sm, "J", ["t1"])
    join(sm, "w1", "J")
    sm.handle(WorkerDied("w1", now=1.0))
    assert sm.task("t1").state is Q
    out = sm.handle(TaskResult("w1", "t1", 1, "r/t1", now=2.0))
    assert task_moves(out) == [("t1", Q, DONE)]
    assert actions(out) == [
        CommitResult("t1", 1, "r/t1", "J", "w1"),
        StopWorker("w1", "worker is dead (connection lost)"),
    ]
    assert sm.job("J").state is JobState.COMPLETED
    assert sm.queued_task_ids("J") == []
    # The replacement launched for t1 arrives too late and is sent home.
    assert sm.handle(WorkerConnected("w2", "J", "n", now=3.0)) == [
        StopWorker("w2", "job is completed: J")
    ]
    sm.check_invariants()


def test_results_from_unknown_workers_and_for_unknown_things() -> None:
    sm = JobTaskState(CFG)
    start(sm, "J", ["t1"])
    join(sm, "w1", "J")
    out = sm.handle(TaskResult("ghost", "t1", 1, "r", now=1.0))
    assert out == [
        RejectResult("t1", 1, "ghost", RejectReason.WRONG_WORKER),
        StopWorker("ghost", "unknown worker: it must say hello first"),
    ]
    assert sm.handle(TaskResult("w1", "nope", 1, "r", now=1.0)) == [
        RejectResult("nope", 1, "w1", RejectReason.UNKNOWN_TASK)
    ]
    assert sm.handle(TaskResult("w1", "t1", 7, "r", now=1.0)) == [
        RejectResult("t1", 7, "w1", RejectReason.UNKNOWN_ATTEMPT)
    ]
    assert sm.handle(WorkerReady("ghost", now=1.0)) == [
        StopWorker("ghost", "unknown worker: it must say hello first")
    ]
    assert sm.handle(WorkerDied("ghost", now=1.0)) == []
    assert sm.counters.unknown_worker_messages == 3
    assert sm.task("t1").state is A
    sm.check_invariants()


def test_task_error_is_deterministic_unless_retriable() -> None:
    sm = JobTaskState(CFG)
    start(sm, "J", ["bad", "flaky", "ok"], n_workers=1)
    join(sm, "w1", "J")
    out = sm.handle(
        TaskError("w1", "bad", 1, "ValueError: empty movie", now=1.0, traceback="Traceback ...")
    )
    assert task_moves(out) == [("bad", A, FAIL)]
    (change,) = only(out, TaskStateChanged)
    assert change.reason == "error: ValueError: empty movie"
    assert change.evidence[0].traceback == "Traceback ..."
    assert change.evidence[0].kind is FailureKind.TASK_ERROR
    assert sm.worker("w1").state is WorkerState.CONNECTED  # the worker is fine

    for attempt in (1, 2, 3):
        out = sm.handle(WorkerReady("w1", now=2.0))
        assert assigned(out) == [("w1", "flaky", attempt)]
        out = sm.handle(TaskError("w1", "flaky", attempt, "OSError: NFS", now=2.0, retriable=True))
    assert task_moves(out) == [("flaky", A, FAIL)]
    assert sm.task("flaky").failures == 3
    assert assigned(sm.handle(WorkerReady("w1", now=3.0))) == [("w1", "ok", 1)]
    sm.handle(TaskResult("w1", "ok", 1, "r", now=4.0))
    assert sm.job("J").state is JobState.FAILED
    assert sm.job("J").reason.startswith("2 of 3 tasks failed (bad, flaky)")
    # A stale error is dropped and counted.
    assert sm.handle(TaskError("w1", "flaky", 1, "late", now=5.0)) == []
    assert sm.counters.stale_reports == 1
    sm.check_invariants()


def test_progress_from_a_non_holder_is_dropped() -> None:
    sm = JobTaskState(CFG)
    start(sm, "J", ["t1"])
    join(sm, "w1", "J")
    assert sm.handle(TaskProgress("w1", "t1", 2, now=1.0, fraction=0.1)) == []
    assert sm.handle(TaskStarted("w1", "t9", 1, now=1.0)) == []
    assert sm.counters.stale_reports == 2
    out = sm.handle(TaskProgress("w1", "t1", 1, now=1.0, message="frame 3/40"))
    assert task_moves(out) == [("t1", A, R)]  # progress implies start
    assert actions(out) == [PublishProgress("J", "t1", 1, "w1", None, "frame 3/40", 1.0)]


# ------------------------------------------------------------------ re-delivery, claims


def test_ready_or_hello_from_a_busy_worker_resends_the_same_assignment() -> None:
    sm = JobTaskState(CFG)
    start(sm, "J", ["t1", "t2"])
    (first,) = only(join(sm, "w1", "J"), AssignTask)
    assert sm.handle(WorkerReady("w1", now=5.0)) == [first]
    assert sm.handle(WorkerConnected("w1", "J", "host-w1", now=6.0)) == [first]
    # Hello naming the held attempt: all is well.
    assert sm.handle(WorkerConnected("w1", "J", "h", now=6.0, running=TaskAttempt("t1", 1))) == []
    assert sm.counters.assignments_resent == 2
    assert sm.task("t1").attempt == 1
    sm.check_invariants()


def test_heartbeat_naming_a_stale_attempt_gets_a_cancel() -> None:
    sm = JobTaskState(CFG)
    start(sm, "J", ["t1", "t2"], n_workers=2)
    join(sm, "w1", "J")
    sm.handle(TaskResult("w1", "t1", 1, "r", now=1.0))
    assert sm.handle(Heartbeat("w1", now=1.5, task_id="t1", attempt=1)) == [
        CancelTask("w1", "t1", 1)
    ]


def test_worker_identity_rules() -> None:
    sm = JobTaskState(CFG)
    start(sm, "J", ["t1"], n_workers=2)
    start(sm, "K", ["k1"])
    assert sm.handle(WorkerConnected("x", "nojob", "h", now=0.0)) == [
        StopWorker("x", "unknown job: nojob")
    ]
    join(sm, "w1", "J")
    sm.handle(WorkerDied("w1", now=1.0))
    assert actions(sm.handle(WorkerConnected("w1", "J", "h", now=2.0))) == [
        StopWorker("w1", "worker id w1 is dead (connection lost); a new process must use a new id")
    ]
    # The same id saying hello for another job is a clash: the old one is lost.
    join(sm, "w2", "J", now=2.0)
    out = sm.handle(WorkerConnected("w2", "K", "h", now=3.0))
    assert sm.worker("w2").state is WorkerState.DEAD
    assert task_moves(out) == [("t1", A, Q)]
    assert sm.counters.protocol_errors == 2
    sm.check_invariants()


# ------------------------------------------------------------------ prefetch


def _prefetching(tasks: int = 8, prefetch: int = 4) -> JobTaskState:
    """One prefetching worker on a job of ``tasks`` short tasks, after its first result."""
    sm = JobTaskState(CFG)
    start(sm, "J", [f"t{i}" for i in range(tasks)])
    sm.handle(WorkerConnected("w1", "J", "h", now=0.0, prefetch=prefetch))
    out = sm.handle(WorkerReady("w1", now=0.0))
    assert assigned(out) == [("w1", "t0", 1)]  # depth 1 until task times are known
    out = sm.handle(TaskResult("w1", "t0", 1, "r0", now=0.1, elapsed_s=0.001))
    assert assigned(out) == [("w1", f"t{i}", 1) for i in range(1, 1 + prefetch)]
    assert sm.worker("w1").held == tuple(f"t{i}" for i in range(1, 1 + prefetch))
    sm.check_invariants()
    return sm


def test_prefetching_worker_is_topped_up_without_asking() -> None:
    sm = _prefetching()
    out = sm.handle(TaskResult("w1", "t1", 1, "r1", now=0.2, elapsed_s=0.001))
    assert assigned(out) == [("w1", "t5", 1)]
    assert sm.worker("w1").state is WorkerState.BUSY
    for i, now in zip(range(2, 8), range(3, 9), strict=True):
        sm.handle(TaskResult("w1", f"t{i}", 1, f"r{i}", now=now / 10, elapsed_s=0.001))
        sm.check_invariants()
    assert sm.job("J").state is JobState.COMPLETED
    assert sm.worker("w1").state is WorkerState.STOPPING


def test_long_tasks_are_not_prefetched() -> None:
    sm = JobTaskState(CFG)
    start(sm, "J", ["t0", "t1", "t2"])
    sm.handle(WorkerConnected("w1", "J", "h", now=0.0, prefetch=8))
    sm.handle(WorkerReady("w1", now=0.0))
    out = sm.handle(TaskResult("w1", "t0", 1, "r0", now=2.0, elapsed_s=2.0))
    assert assigned(out) == [("w1", "t1", 1)]


def test_only_the_running_attempt_of_a_lost_prefetching_worker_counts() -> None:
    sm = _prefetching()
    out = sm.handle(WorkerDied("w1", now=1.0, exit_code=-11, stderr_tail="segfault"))
    moves = task_moves(out)
    assert moves[:4] == [("t4", A, Q), ("t3", A, Q), ("t2", A, Q), ("t1", A, Q)]
    assert [sm.task(f"t{i}").failures for i in range(1, 5)] == [1, 0, 0, 0]
    assert [sm.task(f"t{i}").attempt for i in range(1, 5)] == [1, 0, 0, 0]  # withdrawn
    assert sm.task("t1").evidence[0].exit_code == -11
    assert sm.queued_task_ids("J")[:5] == ["t1", "t2", "t3", "t4", "t5"]  # order kept
    sm.check_invariants()


def test_lease_expiry_of_a_prefetching_worker_releases_its_queue() -> None:
    sm = _prefetching(prefetch=3)
    sm.handle(Heartbeat("w1", now=20.0, task_id="t1", attempt=1))
    out = sm.handle(Heartbeat("w1", now=50.0))  # alive, but says nothing of t1
    out += sm.handle(Tick(now=50.5))
    cancels = only(out, CancelTask)
    assert {(c.task_id, c.attempt) for c in cancels} == {("t1", 1), ("t2", 1), ("t3", 1)}
    assert [sm.task(t).failures for t in ("t1", "t2", "t3")] == [1, 0, 0]
    assert sm.worker("w1").state is WorkerState.STOPPING
    sm.check_invariants()


def test_prefetched_attempts_are_resent_in_order_and_checked() -> None:
    sm = _prefetching(prefetch=3)
    out = sm.handle(WorkerReady("w1", now=0.5))  # e.g. after a reconnection
    assert assigned(out) == [("w1", "t1", 1), ("w1", "t2", 1), ("w1", "t3", 1)]
    # A result of a prefetched attempt out of order is still that worker's to give.
    out = sm.handle(TaskResult("w1", "t3", 1, "r3", now=0.6, elapsed_s=0.001))
    assert only(out, CommitResult)
    out = sm.handle(TaskResult("w2", "t2", 1, "x", now=0.6))
    assert only(out, RejectResult)
    sm.check_invariants()


def test_cancel_reaches_every_prefetched_attempt() -> None:
    sm = _prefetching(prefetch=3)
    out = sm.handle(CancelJob("J", now=1.0))
    cancels = {(c.task_id, c.attempt) for c in only(out, CancelTask)}
    assert cancels == {("t1", 1), ("t2", 1), ("t3", 1)}
    assert sm.job("J").state is JobState.CANCELLED
    sm.check_invariants()


# ------------------------------------------------------------------ cancel


def test_cancel_mid_run() -> None:
    sm = JobTaskState(CFG)
    start(sm, "J", ["t1", "t2", "t3"], n_workers=2, final=False)
    join(sm, "w1", "J")
    join(sm, "w2", "J")
    sm.handle(TaskStarted("w1", "t1", 1, now=1.0))
    out = sm.handle(CancelJob("J", now=2.0))
    assert out == [
        JobStateChanged("J", JobState.RUNNING, JobState.CANCELLED, "cancelled by user", 2.0),
        TaskStateChanged("t1", "J", R, CANC, 1, "w1", 0, "job cancelled: cancelled by user", 2.0),
        CancelTask("w1", "t1", 1),
        TaskStateChanged("t2", "J", A, CANC, 1, "w2", 0, "job cancelled: cancelled by user", 2.0),
        CancelTask("w2", "t2", 1),
        TaskStateChanged("t3", "J", Q, CANC, 0, None, 0, "job cancelled: cancelled by user", 2.0),
        WorkerStateChanged(
            "w1",
            "J",
            WorkerState.BUSY,
            WorkerState.STOPPING,
            "job cancelled: cancelled by user",
            2.0,
        ),
        StopWorker("w1", "job cancelled: cancelled by user"),
        WorkerStateChanged(
            "w2",
            "J",
            WorkerState.BUSY,
            WorkerState.STOPPING,
            "job cancelled: cancelled by user",
            2.0,
        ),
        StopWorker("w2", "job cancelled: cancelled by user"),
    ]
    assert sm.handle(TaskResult("w1", "t1", 1, "r", now=3.0)) == [
        RejectResult("t1", 1, "w1", RejectReason.TASK_CANCELLED)
    ]
    assert sm.handle(CancelJob("J", now=3.0)) == []  # absorbing
    assert sm.handle(PlanFinished("J", now=3.0)) == []  # late plan answer ignored
    assert sm.handle(StageAdded("J", 1, specs("late"), now=3.0)) == []
    assert sm.counters.late_plan_events == 2
    assert sm.handle(WorkerReady("w1", now=3.0)) == [
        StopWorker("w1", "job cancelled: cancelled by user")
    ]
    assert sm.handle(Tick(now=100.0)) == [  # silent after being told to stop: gone, quietly
        WorkerStateChanged(
            "w1",
            "J",
            WorkerState.STOPPING,
            WorkerState.STOPPED,
            "silent for 97.0 s after stop",
            100.0,
        ),
        WorkerStateChanged(
            "w2",
            "J",
            WorkerState.STOPPING,
            WorkerState.STOPPED,
            "silent for 100.0 s after stop",
            100.0,
        ),
    ]
    assert [sm.task(t).state for t in ("t1", "t2", "t3")] == [CANC] * 3
    sm.check_invariants()


def test_job_fails_when_no_worker_can_be_launched() -> None:
    sm = JobTaskState(StateConfig(worker_restarts_allowed=0))
    start(sm, "J", ["t1", "t2"])
    out = sm.handle(LaunchFailed("J", 1, "sbatch: invalid partition", now=1.0))
    assert job_moves(out) == [("J", JobState.QUEUED, JobState.FAILED)]
    assert sm.job("J").reason == (
        "no workers left after 1 launches; last loss: launch failed: sbatch: invalid partition"
    )
    assert task_moves(out)[1:] == [("t1", Q, CANC), ("t2", Q, CANC)][1:]
    assert {sm.task(t).state for t in ("t1", "t2")} == {CANC}

    # With budget left, a failed launch is retried.
    sm2 = JobTaskState(StateConfig(worker_restarts_allowed=1))
    start(sm2, "J", ["t1"])
    out = sm2.handle(LaunchFailed("J", 1, "node down", now=1.0))
    assert actions(out) == [
        LaunchWorkers("J", 1, "top up to 1 workers; last loss: launch failed: node down")
    ]
    sm.check_invariants()
    sm2.check_invariants()


def test_replacing_idle_stopped_workers_does_not_spend_the_restart_budget() -> None:
    # Regression (seen in CI with a poison task): a crashed prefetching worker's
    # withdrawn tasks need two workers again while the other one was already
    # stopped as idle. Only the two losses count, not the six launches.
    sm = JobTaskState(StateConfig(worker_restarts_allowed=1))
    start(sm, "J", ["t0", "t1", "t2", "t3"], n_workers=2)
    sm.handle(WorkerConnected("w1", "J", "h1", now=0.0, prefetch=4))
    sm.handle(WorkerReady("w1", now=0.0))
    sm.handle(WorkerConnected("w2", "J", "h2", now=0.0))
    sm.handle(WorkerReady("w2", now=0.0))
    assert assigned(sm.handle(TaskResult("w1", "t0", 1, "r", now=0.1, elapsed_s=0.001))) == [
        ("w1", "t2", 1), ("w1", "t3", 1)]
    sm.handle(TaskResult("w2", "t1", 1, "r", now=0.1, elapsed_s=0.001))
    assert actions(sm.handle(WorkerReady("w2", now=0.1))) == [
        StopWorker("w2", "no more work for this job")]
    assert only(sm.handle(WorkerDied("w1", now=0.2)), LaunchWorkers)[0].n == 2
    sm.handle(WorkerConnected("w3", "J", "h3", now=0.3, prefetch=4))
    sm.handle(WorkerReady("w3", now=0.3))
    sm.handle(WorkerConnected("w4", "J", "h4", now=0.3))
    assert only(sm.handle(WorkerReady("w4", now=0.3)), StopWorker)  # idle again
    out = sm.handle(WorkerDied("w3", now=0.4))
    assert sm.job("J").state is JobState.RUNNING
    assert only(out, LaunchWorkers)[0].n == 2
    sm.handle(WorkerConnected("w5", "J", "h5", now=0.5))
    out = sm.handle(WorkerReady("w5", now=0.5))
    for now in (0.6, 0.7):
        [(worker, task, attempt)] = assigned(out)
        out = sm.handle(TaskResult(worker, task, attempt, "r", now=now, elapsed_s=0.001))
        out += sm.handle(WorkerReady(worker, now=now))
    assert sm.job("J").state is JobState.COMPLETED
    assert [sm.task(t).failures for t in ("t2", "t3")] == [2, 0]
    sm.check_invariants()


# ------------------------------------------------------------------ restart


def _mid_second_stage() -> JobTaskState:
    """Job J in its second stage: b1 running on w1 (attempt 1), b2 queued."""
    sm = JobTaskState(CFG)
    start(sm, "J", ["a1"], n_workers=1, final=False)
    join(sm, "w1", "J")
    sm.handle(TaskResult("w1", "a1", 1, "r/a1", now=1.0))
    sm.handle(WorkerReady("w1", now=1.0))
    sm.handle(StageAdded("J", 1, specs("b1", "b2"), now=2.0))
    sm.handle(TaskStarted("w1", "b1", 1, now=2.0))
    return sm


def test_restart_requeues_in_flight_and_keeps_the_plan_position() -> None:
    live = _mid_second_stage()
    rebuilt = JobTaskState.from_snapshot(live.snapshot(), CFG)
    with pytest.raises(InvalidEvent, match="before DaemonRestarted"):
        rebuilt.handle(Tick(now=100.0))
    out = rebuilt.handle(DaemonRestarted(now=100.0))
    assert out == [
        TaskStateChanged(
            "b1",
            "J",
            R,
            Q,
            1,
            "w1",
            0,
            "daemon restarted; attempt 1 is no longer waited for",
            100.0,
        ),
        LaunchWorkers("J", 1, "start"),
    ]
    assert rebuilt.job("J").n_stages == 2 and rebuilt.job("J").state is JobState.RUNNING
    assert rebuilt.task("a1").result_ref == "r/a1"
    assert rebuilt.queued_task_ids("J") == ["b1", "b2"]
    # The in-place path and the snapshot path agree.
    in_place = copy.deepcopy(live)
    assert in_place.handle(DaemonRestarted(now=100.0)) == out
    assert in_place.snapshot() == rebuilt.snapshot()

    # The next assignment of b1 is attempt 2; the stage then ends and the plan is asked.
    assert assigned(join(rebuilt, "n1", "J", now=101.0)) == [("n1", "b1", 2)]
    rebuilt.handle(TaskResult("n1", "b1", 2, "r/b1", now=102.0))
    rebuilt.handle(WorkerReady("n1", now=102.0))
    out = rebuilt.handle(TaskResult("n1", "b2", 1, "r/b2", now=103.0))
    assert only(out, PlanNextStage) == [PlanNextStage("J", 1)]
    rebuilt.check_invariants()


def test_restart_while_waiting_for_the_plan_asks_again() -> None:
    sm = JobTaskState(CFG)
    start(sm, "J", ["a1"], final=False)
    join(sm, "w1", "J")
    assert only(sm.handle(TaskResult("w1", "a1", 1, "r", now=1.0)), PlanNextStage)
    rebuilt = JobTaskState.from_snapshot(sm.snapshot(), CFG)
    assert rebuilt.handle(DaemonRestarted(now=50.0)) == [PlanNextStage("J", 0)]
    out = rebuilt.handle(StageAdded("J", 1, specs("b1"), now=51.0))
    assert only(out, LaunchWorkers) == [LaunchWorkers("J", 1, "start")]
    rebuilt.check_invariants()


def test_a_submitted_job_survives_a_restart_before_any_worker() -> None:
    sm = JobTaskState(CFG)
    start(sm, "J", ["t1", "t2"], n_workers=4)
    rebuilt = JobTaskState.from_snapshot(sm.snapshot(), CFG)
    assert rebuilt.handle(DaemonRestarted(now=9.0)) == [LaunchWorkers("J", 2, "start")]
    assert rebuilt.job("J").state is JobState.QUEUED
    assert rebuilt.task_ids() == ["t1", "t2"]


def test_surviving_worker_readopts_its_attempt_after_restart() -> None:
    live = _mid_second_stage()
    sm = JobTaskState.from_snapshot(live.snapshot(), CFG)
    sm.handle(DaemonRestarted(now=100.0))
    out = sm.handle(WorkerConnected("w1", "J", "host-w1", now=100.5, running=TaskAttempt("b1", 1)))
    assert task_moves(out) == [("b1", Q, A)]
    assert only(out, AssignTask) == []  # it already has it
    assert sm.task("b1").attempt == 1 and sm.counters.readoptions == 1
    assert only(sm.handle(TaskResult("w1", "b1", 1, "r/b1", now=101.0)), CommitResult) == [
        CommitResult("b1", 1, "r/b1", "J", "w1")
    ]
    sm.check_invariants()


def test_surviving_worker_result_without_hello_is_committed_and_it_is_stopped() -> None:
    sm = JobTaskState.from_snapshot(_mid_second_stage().snapshot(), CFG)
    sm.handle(DaemonRestarted(now=100.0))
    out = sm.handle(TaskResult("w1", "b1", 1, "r/b1", now=100.5))
    assert actions(out) == [
        CommitResult("b1", 1, "r/b1", "J", "w1"),
        StopWorker("w1", "unknown worker: it must say hello first"),
    ]


def test_restart_grace_lets_survivors_say_hello_before_launching() -> None:
    cfg = StateConfig(heartbeat_interval=1.0, restart_grace_seconds=5.0)
    live = _mid_second_stage()
    sm = JobTaskState.from_snapshot(live.snapshot(), cfg)
    out = sm.handle(DaemonRestarted(now=100.0))
    assert only(out, LaunchWorkers) == []
    sm.handle(WorkerConnected("w1", "J", "h", now=101.0, running=TaskAttempt("b1", 1)))
    sm.handle(Heartbeat("w1", now=104.0, task_id="b1", attempt=1))
    assert sm.handle(Tick(now=104.0)) == []  # still in the grace period
    assert sm.handle(Tick(now=105.5)) == []  # w1 covers min(n_workers=1, open=2)


def test_snapshot_validation() -> None:
    sm = JobTaskState(CFG)
    start(sm, "J", ["t1"])
    snap = sm.snapshot()
    orphan = TaskRecord("x", "nojob", 0, 0, {}, Q)
    with pytest.raises(InvalidEvent, match="unknown job"):
        JobTaskState.from_snapshot(Snapshot(snap.jobs, (*snap.tasks, orphan)))
    with pytest.raises(InvalidEvent, match="appears twice"):
        JobTaskState.from_snapshot(Snapshot(snap.jobs, snap.tasks * 2))
    bad = TaskRecord("t1", "J", 0, 0, {}, DONE, attempt=1)
    with pytest.raises(InvalidEvent, match="no result"):
        JobTaskState.from_snapshot(Snapshot(snap.jobs, (bad,)))


# ------------------------------------------------------------------ the transition guard


def _narrowed(missing: tuple[TaskState, TaskState]) -> type[JobTaskState]:
    class Narrowed(JobTaskState):
        task_transitions: ClassVar[Mapping[tuple[TaskState | None, TaskState], str]] = {
            k: v for k, v in TASK_TRANSITIONS.items() if k != missing
        }

    return Narrowed


GUARD_CASES = {
    "result": ((R, DONE), TaskResult("w1", "t1", 1, "r", now=2.0)),
    "assignment": ((Q, A), WorkerReady("w2", now=2.0)),
    "requeue on death": ((R, Q), WorkerDied("w1", now=2.0)),
    "deterministic error": ((R, FAIL), TaskError("w1", "t1", 1, "boom", now=2.0)),
}


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
@pytest.mark.parametrize("case", list(GUARD_CASES))
def test_disallowed_transition_raises_or_is_refused_without_corruption(
    case: str, strict: bool
) -> None:
    missing, event = GUARD_CASES[case]
    sm = JobTaskState(StateConfig(strict=strict))
    start(sm, "J", ["t1", "t2"], n_workers=2)
    join(sm, "w1", "J")
    sm.handle(TaskStarted("w1", "t1", 1, now=1.0))
    sm.handle(WorkerConnected("w2", "J", "h", now=1.0))
    sm.__class__ = _narrowed(missing)  # the "bug": one needed transition is not allowed
    before = sm.snapshot()
    if strict:
        with pytest.raises(InvalidTransition, match=f"{missing[0]} -> {missing[1]}"):
            sm.handle(event)
    else:
        sm.handle(event)
        assert sm.counters.transitions_refused == 1
    # The refused change happened before anything was touched.
    assert sm.snapshot() == before
    assert sm.counters.results_committed == 0
    sm.check_invariants()


# ------------------------------------------------------------------ the lifecycle machine

TERMINAL_TASK = {DONE, FAIL, CANC}
TERMINAL_JOB = {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}
MACHINE_CFG = StateConfig(
    heartbeat_interval=1.0,
    liveness=3,
    max_task_failures=2,  # lower than the default so the failure path is common
    lease_seconds=8.0,
    worker_restarts_allowed=2,
)


class Lifecycle(RuleBasedStateMachine):
    """Random lifecycles; checks the invariants and replays the story after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.sm = JobTaskState(MACHINE_CFG)
        self.now = 0.0
        self.serial = 0
        self.jobs: list[str] = []
        self.workers: list[str] = ["ghost"]
        self.attempts: list[tuple[str, str, int]] = []  # (worker, task, attempt) ever assigned
        self.plan_asked: dict[str, int] = {}
        self.commits: Counter[str] = Counter()
        self.task_story: dict[str, TaskState] = {}
        self.job_story: dict[str, JobState] = {}
        self.seen_terminal_task: dict[str, TaskState] = {}
        self.seen_terminal_job: dict[str, JobState] = {}

    # -- plumbing

    def new_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    def apply(self, event: object) -> list[Instruction]:
        before = {t: self.sm.task(t).state for t in self.sm.task_ids()}
        failures = {t: self.sm.task(t).failures for t in self.sm.task_ids()}
        held_before = {w: self.sm.worker(w).held for w in self.sm.worker_ids()}
        out = self.sm.handle(event)  # type: ignore[arg-type]
        # Only a running attempt counts as lost: a prefetched attempt (not the oldest
        # its worker held) never started, so its loss adds no failure -- unless the
        # worker itself reported an error for it.
        for worker_id, held in held_before.items():
            for task_id in held[1:]:
                if self.sm.task(task_id).failures > failures[task_id]:
                    assert isinstance(event, TaskError) and event.task_id == task_id, (
                        f"{task_id}, prefetched by {worker_id}, counted a lost attempt on {event}"
                    )
        for ins in out:
            if isinstance(ins, TaskStateChanged):
                assert (ins.old, ins.new) in TASK_TRANSITIONS
                assert self.task_story.get(ins.task_id) == ins.old, ins
                self.task_story[ins.task_id] = ins.new
            elif isinstance(ins, JobStateChanged):
                assert (ins.old, ins.new) in JOB_TRANSITIONS
                assert self.job_story.get(ins.job_id) == ins.old, ins
                self.job_story[ins.job_id] = ins.new
            elif isinstance(ins, WorkerStateChanged):
                assert (ins.old, ins.new) in WORKER_TRANSITIONS
            elif isinstance(ins, AssignTask):
                self.attempts.append((ins.worker_id, ins.task_id, ins.attempt))
            elif isinstance(ins, PlanNextStage):
                self.plan_asked[ins.job_id] = ins.stage_index
            elif isinstance(ins, CommitResult):
                self.commits[ins.task_id] += 1
                assert before.get(ins.task_id) not in TERMINAL_TASK
                assert ins.attempt == self.sm.task(ins.task_id).attempt
        for ins in only(out, AssignTask):
            # Every assignment goes to a live worker of the task's job that holds it.
            worker = self.sm.worker(ins.worker_id)
            task = self.sm.task(ins.task_id)
            assert worker.state is WorkerState.BUSY and ins.task_id in worker.held
            assert worker.job_id == task.job_id and task.attempt == ins.attempt
        return out

    def pick(self, data: st.DataObject, items: Sequence[str]) -> str:
        return data.draw(st.sampled_from(list(items)))

    def step(self, data: st.DataObject) -> None:
        self.now += data.draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))

    # -- client and plan

    def open_jobs(self) -> list[str]:
        return [j for j in self.jobs if self.sm.job(j).state not in TERMINAL_JOB]

    @precondition(lambda self: len(self.open_jobs()) < 3)
    @rule(n_tasks=st.integers(0, 4), n_workers=st.integers(1, 3), final=st.booleans())
    def submit(self, n_tasks: int, n_workers: int, final: bool) -> None:
        job_id = self.new_id("J")
        tasks = [TaskSpec(self.new_id("t"), {"i": i}) for i in range(n_tasks)]
        self.apply(JobSubmitted(job_id, "a", n_workers, tasks, now=self.now, final=final))
        self.jobs.append(job_id)

    @precondition(lambda self: bool(self.plan_asked))
    @rule(
        data=st.data(),
        n_tasks=st.integers(0, 3),
        answer=st.sampled_from(["stage", "stage", "finish", "error"]),
    )
    def answer_plan(self, data: st.DataObject, n_tasks: int, answer: str) -> None:
        job_id = self.pick(data, sorted(self.plan_asked))
        stage = self.plan_asked.pop(job_id)
        if answer == "stage":
            tasks = [TaskSpec(self.new_id("t")) for _ in range(n_tasks)]
            final = data.draw(st.booleans())
            self.apply(StageAdded(job_id, stage + 1, tasks, now=self.now, final=final))
        else:
            error = "plan gave up" if answer == "error" else None
            self.apply(PlanFinished(job_id, now=self.now, error=error))

    # -- workers
    # Each rule mostly does what a healthy worker would and sometimes misbehaves
    # (unknown or dead ids, stale attempts, wrong jobs), so both paths are explored.

    def present(self, *states: WorkerState) -> list[str]:
        return [w for w in self.sm.worker_ids() if self.sm.worker(w).state in states]

    def chaos(self, data: st.DataObject) -> bool:
        return data.draw(st.integers(0, 4)) == 0

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data())
    def connect(self, data: st.DataObject) -> None:
        open_jobs = self.open_jobs()
        running = None
        if open_jobs and not self.chaos(data):
            worker_id, job_id = self.new_id("w"), self.pick(data, open_jobs)
        else:
            worker_id = (
                self.new_id("w") if data.draw(st.booleans()) else self.pick(data, self.workers)
            )
            job_id = data.draw(st.sampled_from([*self.jobs, "nojob"]))
            if bool(self.attempts) and data.draw(st.booleans()):
                _, task_id, attempt = data.draw(st.sampled_from(self.attempts))
                running = TaskAttempt(task_id, attempt)
        prefetch = data.draw(st.sampled_from([1, 1, 3]))
        out = self.apply(
            WorkerConnected(
                worker_id, job_id, "h", now=self.now, running=running, prefetch=prefetch
            )
        )
        if worker_id not in self.workers:
            self.workers.append(worker_id)
        if out and not self.chaos(data):  # a worker asks for work right after its hello
            self.apply(WorkerReady(worker_id, now=self.now))

    @rule(data=st.data())
    def ready(self, data: st.DataObject) -> None:
        self.step(data)
        idle = self.present(WorkerState.CONNECTED, WorkerState.WAITING)
        pool = idle if idle and not self.chaos(data) else self.workers
        self.apply(WorkerReady(self.pick(data, pool), now=self.now))

    @precondition(lambda self: bool(self.survivors()))
    @rule(data=st.data())
    def survivor_returns(self, data: st.DataObject) -> None:
        """A worker that outlived a restart says hello naming the attempt it still runs."""
        worker_id, task_id, attempt = data.draw(st.sampled_from(self.survivors()))
        job_id = self.sm.task(task_id).job_id
        running = TaskAttempt(task_id, attempt)
        self.apply(WorkerConnected(worker_id, job_id, "h", now=self.now, running=running))

    def survivors(self) -> list[tuple[str, str, int]]:
        known = set(self.sm.worker_ids())
        found = []
        for worker_id, task_id, attempt in self.attempts:
            task = self.sm.task(task_id)
            if (
                worker_id not in known
                and task.state is Q
                and task.attempt == attempt
                and task.last_worker_id == worker_id
            ):
                found.append((worker_id, task_id, attempt))
        return found

    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        alive = self.present(WorkerState.CONNECTED, WorkerState.WAITING, WorkerState.BUSY)
        pool = alive if alive and not self.chaos(data) else self.workers
        worker_id = self.pick(data, pool)
        if bool(self.attempts) and data.draw(st.booleans()):
            _, task_id, attempt = data.draw(st.sampled_from(self.attempts))
            self.apply(Heartbeat(worker_id, now=self.now, task_id=task_id, attempt=attempt))
        else:
            self.apply(Heartbeat(worker_id, now=self.now))

    @rule()
    def everyone_beats(self) -> None:
        for worker_id in self.sm.worker_ids():
            rec = self.sm.worker(worker_id)
            if not rec.state.gone:
                held = self.sm.task(rec.task_id).attempt if rec.task_id else 0
                self.apply(Heartbeat(worker_id, now=self.now, task_id=rec.task_id, attempt=held))

    @precondition(lambda self: bool(self.present(WorkerState.BUSY)))
    @rule(data=st.data(), kind=st.sampled_from(["result", "result", "progress", "error"]))
    def work(self, data: st.DataObject, kind: str) -> None:
        """A busy worker reports on the attempt it holds."""
        worker_id = self.pick(data, self.present(WorkerState.BUSY))
        task_id = self.sm.worker(worker_id).task_id
        assert task_id is not None
        self.report_on(data, kind, worker_id, task_id, self.sm.task(task_id).attempt)

    @precondition(lambda self: bool(self.present(WorkerState.BUSY)))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        """A busy worker delivers its result."""
        self.work(data, "result")

    @precondition(lambda self: bool(self.attempts))
    @rule(data=st.data(), kind=st.sampled_from(["started", "progress", "result", "error"]))
    def replay(self, data: st.DataObject, kind: str) -> None:
        """Any attempt ever assigned reports again: stale, duplicate, late or from a stranger."""
        worker_id, task_id, attempt = data.draw(st.sampled_from(self.attempts))
        if self.chaos(data):
            worker_id = self.pick(data, self.workers)
        self.report_on(data, kind, worker_id, task_id, attempt)

    def report_on(
        self, data: st.DataObject, kind: str, worker_id: str, task_id: str, attempt: int
    ) -> None:
        self.step(data)
        if kind == "started":
            self.apply(TaskStarted(worker_id, task_id, attempt, now=self.now))
        elif kind == "progress":
            self.apply(TaskProgress(worker_id, task_id, attempt, now=self.now, fraction=0.5))
        elif kind == "result":
            ref = self.new_id("r")
            elapsed = data.draw(st.sampled_from([None, 0.001, 0.001, 1.0]))
            self.apply(
                TaskResult(worker_id, task_id, attempt, ref, now=self.now, elapsed_s=elapsed)
            )
        else:
            retriable = data.draw(st.booleans())
            self.apply(
                TaskError(worker_id, task_id, attempt, "boom", now=self.now, retriable=retriable)
            )

    @rule(data=st.data(), exit_code=st.sampled_from([None, 0, 1, 137]))
    def died(self, data: st.DataObject, exit_code: int | None) -> None:
        alive = self.present(
            WorkerState.CONNECTED, WorkerState.WAITING, WorkerState.BUSY, WorkerState.STOPPING
        )
        pool = alive if alive and not self.chaos(data) else self.workers
        self.apply(
            WorkerDied(self.pick(data, pool), now=self.now, exit_code=exit_code, stderr_tail="tail")
        )

    @rule(dt=st.sampled_from([0.5, 0.5, 1.0, 2.0, 3.5, 40.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.apply(Tick(now=self.now))

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data(), kind=st.sampled_from(["cancel", "launch_failed", "restart"]))
    def disrupt(self, data: st.DataObject, kind: str) -> None:
        """The rarer events: a client cancels, a launch fails, the daemon restarts."""
        if kind == "cancel":
            self.apply(CancelJob(self.pick(data, self.jobs), now=self.now))
        elif kind == "launch_failed":
            n = data.draw(st.integers(1, 2))
            self.apply(LaunchFailed(self.pick(data, self.jobs), n, "no node", now=self.now))
        else:
            self.restart(via_snapshot=data.draw(st.booleans()))

    def restart(self, via_snapshot: bool) -> None:
        self.now += 1.0
        rebuilt = JobTaskState.from_snapshot(self.sm.snapshot(), MACHINE_CFG)
        in_place = copy.deepcopy(self.sm)
        out_rebuilt = rebuilt.handle(DaemonRestarted(now=self.now))
        out_in_place = in_place.handle(DaemonRestarted(now=self.now))
        assert out_rebuilt == out_in_place
        assert rebuilt.snapshot() == in_place.snapshot()
        self.sm = rebuilt if via_snapshot else in_place
        for job_id in self.jobs:  # jobs acknowledged to a client are never lost
            assert self.sm.job(job_id).state is not None
        # Replay the restart's story as apply() does.
        for ins in out_rebuilt:
            if isinstance(ins, TaskStateChanged):
                assert self.task_story.get(ins.task_id) == ins.old
                self.task_story[ins.task_id] = ins.new
            elif isinstance(ins, PlanNextStage):
                self.plan_asked[ins.job_id] = ins.stage_index

    # -- invariants

    @invariant()
    def consistent(self) -> None:
        self.sm.check_invariants()
        holders: dict[str, str] = {}
        for job_id in self.sm.job_ids():
            job = self.sm.job(job_id)
            tasks = [self.sm.task(t) for t in self.sm.task_ids(job_id)]
            all_ended = all(t.state in TERMINAL_TASK for t in tasks)
            assert (job.state in TERMINAL_JOB) == (all_ended and job.plan_finished)
            assert self.job_story[job_id] is job.state
            if job_id in self.seen_terminal_job:
                assert job.state is self.seen_terminal_job[job_id]
            elif job.state in TERMINAL_JOB:
                self.seen_terminal_job[job_id] = job.state
            for task in tasks:
                assert self.task_story[task.task_id] is task.state  # the story replays
                assert task.failures <= MACHINE_CFG.max_task_failures
                assert self.commits[task.task_id] == (1 if task.state is DONE else 0)
                if task.task_id in self.seen_terminal_task:
                    assert task.state is self.seen_terminal_task[task.task_id]
                elif task.state in TERMINAL_TASK:
                    self.seen_terminal_task[task.task_id] = task.state
                if task.state in (A, R):
                    assert task.worker_id is not None
                    worker = self.sm.worker(task.worker_id)
                    assert worker.state is WorkerState.BUSY and worker.job_id == job_id
                    assert task.task_id in worker.held  # a worker may hold several
                    assert task.task_id not in holders  # but no task is on two workers
                    holders[task.task_id] = task.worker_id
        for worker_id in self.sm.worker_ids():
            held = self.sm.worker(worker_id).held
            assert len(held) == len(set(held)) <= 3
            assert all(holders.get(t) == worker_id for t in held)

    def teardown(self) -> None:
        """Let every worker behave: every job must reach a terminal state."""
        for _ in range(300):
            if all(self.sm.job(j).state in TERMINAL_JOB for j in self.sm.job_ids()):
                break
            self.now += 0.5
            for job_id in list(self.plan_asked):
                self.plan_asked.pop(job_id)
                self.apply(PlanFinished(job_id, now=self.now))
            for job_id in self.sm.job_ids():
                for _ in range(self.sm.pending_launches(job_id)):
                    self.apply(WorkerConnected(self.new_id("d"), job_id, "h", now=self.now))
            for worker_id in self.sm.worker_ids():
                rec = self.sm.worker(worker_id)
                if rec.state is WorkerState.CONNECTED:
                    self.apply(WorkerReady(worker_id, now=self.now))
                elif rec.state is WorkerState.BUSY and rec.task_id is not None:
                    attempt = self.sm.task(rec.task_id).attempt
                    self.apply(TaskResult(worker_id, rec.task_id, attempt, "r", now=self.now))
                if not self.sm.worker(worker_id).state.gone:
                    self.apply(Heartbeat(worker_id, now=self.now))
            self.apply(Tick(now=self.now))
            self.consistent()
        unfinished = [j for j in self.sm.job_ids() if self.sm.job(j).state not in TERMINAL_JOB]
        assert unfinished == [], f"jobs that never end: {unfinished}"


TestLifecycle = Lifecycle.TestCase
TestLifecycle.settings = settings(
    max_examples=200,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.slow
def test_lifecycle_long() -> None:
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        Lifecycle,
        settings=settings(
            max_examples=1500,
            stateful_step_count=120,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
