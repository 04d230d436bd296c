r"""The daemon's job/task state machine: pure, ``handle(event) -> [instructions]``.

:class:`JobTaskState` holds every job, task and worker the daemon knows and
decides what happens next. It has no sockets, no clock, no database and no
randomness: the daemon turns what it hears (a client's submit, a worker's
message, a launcher's report, the passing of time) into an :class:`Event`,
calls :meth:`JobTaskState.handle`, and carries out the :class:`Instruction`\ s
it gets back *in order*: it persists the state changes, sends messages to
workers, launches workers, asks an action's plan for its next stage, publishes
progress. Time enters only as the ``now`` field of events (seconds, any
monotonic origin), so every scenario replays exactly in a unit test.

Jobs, stages, tasks
-------------------
A **job** is one run of an action with its parameters and run profile. It is a
sequence of **stages**; a stage is a set of independent **tasks**. The first
stage comes with :class:`JobSubmitted`. When every task of the last stage has
ended, the machine emits :class:`PlanNextStage`; the daemon asks the action's
plan (the cycle schedule of ab-initio, auto-refine, 2D classification) and
answers with :class:`StageAdded` or :class:`PlanFinished`. A stage (or the
submit) flagged ``final=True`` tells the machine that no stage will follow, so
it needs no :class:`PlanNextStage` round trip and can release idle workers as
soon as nothing is left to hand out (cisTEM's ``time_to_die``).

Task attempts carry ``(task_id, attempt)``: attempt ``n`` is the ``n``-th
assignment of the task. Execution is at-least-once, a result is committed
exactly once: a :class:`TaskResult` is committed only if the task has not
ended, names the task's *current* attempt and comes from the worker that
attempt was given to. That worker may have been declared dead in between (a
``SIGSTOP``-ed worker that wakes up, a worker that survived a daemon restart):
if nobody took the task over, its result is good and is committed; once the
task is reassigned, the old attempt is stale and its result is refused
(:class:`RejectResult`, reason ``"stale attempt"``, counted).

Task states (``*`` = terminal)::

    (new) -> queued      stage added
    queued -> assigned   given to a worker as attempt+1, or re-adopted (same attempt)
    assigned -> running  the holder reported a start or progress
    assigned | running -> queued     attempt lost: worker lost, lease expired,
                                     retriable error, daemon restart
    assigned | running -> completed* result of the current attempt committed
    queued -> completed*             late result of the last attempt, not reassigned
    assigned | running -> failed*    deterministic error, or the 3rd lost attempt
    queued -> failed*                late deterministic error of the last attempt
    queued | assigned | running -> cancelled*   job cancelled or out of workers

Job states::

    (new) --> queued --first assignment--> running --> completed | failed | cancelled
                 '--> completed | failed | cancelled  (before any task was assigned)

Worker states (not persisted; workers do not survive a daemon restart)::

    (hello) -> connected
    connected -> waiting             asked for work, none queued yet
    connected | waiting -> busy      given a task (or re-adopted one)
    busy -> connected                reported the result or error of the last task it held
    connected | waiting | busy -> stopping -> stopped*   told to stop; exited or silent
    connected | waiting | busy -> dead*                  crash, disconnect, missed beats

Terminal states are absorbing: ``completed``, ``failed``, ``cancelled`` for
tasks and jobs, ``dead`` and ``stopped`` for workers. Every allowed change is
listed in :data:`TASK_TRANSITIONS`, :data:`JOB_TRANSITIONS` and
:data:`WORKER_TRANSITIONS`; anything else is a bug in this module and raises
:class:`InvalidTransition` (``strict=True``, the default, for tests) or is
refused and counted (``strict=False``, for the daemon; the event's handling
stops at the refused change, the changes already made and emitted stand).

Decisions
---------
* **Worker loss.** A worker is lost when the daemon reports it gone
  (:class:`WorkerDied`: disconnect, crash, ``worker_bye`` while holding a task)
  or when it has been silent for ``liveness`` heartbeat intervals at a
  :class:`Tick`. Its task goes back to the *front* of its job's queue; the
  next assignment is ``attempt + 1``. A task that loses
  ``max_task_failures`` (3) attempts is failed with the evidence of every loss
  (host, exit code, stderr tail, traceback) and the job carries on with its
  other tasks (dask's ``allowed-failures``). A worker id once dead stays dead
  for this daemon's lifetime; a process that comes back must say hello under a
  new id, and any message from a dead worker is answered with
  :class:`StopWorker`.
* **Task errors.** A :class:`TaskError` (an ordinary exception in the kernel)
  is deterministic unless flagged ``retriable``: the task fails at once with
  the traceback as evidence (dask semantics -- the same input fails the same
  way). A retriable error counts as a lost attempt and re-queues the task
  (failing it on the ``max_task_failures``-th).
* **Task lease.** An assignment holds a lease of ``lease_seconds``, renewed by
  every message from the holder that names the attempt (a heartbeat carrying
  its ``task_id``/``attempt``, :class:`TaskStarted`, :class:`TaskProgress`).
  A lease that runs out while the worker still heartbeats means the worker no
  longer has the task it was given: the attempt is lost (counted), the worker
  gets :class:`CancelTask` and :class:`StopWorker`.
* **Job outcome.** A job whose plan has finished and whose tasks have all
  ended is ``completed`` when every task completed, else ``failed`` with the
  reason "k of n tasks failed" -- the committed results of the other tasks stay
  recorded, but a script that waits for ``completed`` is never told a partial
  run is a full one. :class:`PlanFinished` may also carry an ``error`` (the plan
  could not go on) which fails the job. A job with work left, no live worker,
  no launch outstanding and no launch budget left is failed ("no workers
  left"); its open tasks are cancelled.
* **Workers per job.** A job wants ``min(n_workers, open tasks)`` workers. The
  machine emits :class:`LaunchWorkers` to keep live + outstanding launches at
  that number -- at submit, when a larger stage arrives, after a loss. Only
  *losses* (workers that died, failed launches) spend the budget of
  ``n_workers * worker_restarts_allowed`` per job and daemon lifetime, so a
  worker that dies on start-up cannot loop forever; replacing a worker that
  was stopped because it was idle (work re-queued later, e.g. from a crashed
  worker's prefetch) costs nothing. Workers are stopped when their job ends,
  and idle workers as soon as the plan has finished and nothing is queued.
* **Prefetch.** A worker that says hello with ``prefetch`` K > 1 may hold up
  to K attempts at once; it runs them in the order they were sent, so the
  oldest one it holds is the one running. How many it is given (its *depth*)
  adapts to the job's mean task time (``elapsed_s`` of results):
  1 until that is known, then enough to cover :data:`PREFETCH_WINDOW_SECONDS`
  of work, at most K -- long tasks are not hoarded, no-op tasks do not each
  wait a round trip. Such a worker does not ask for each task: when a held
  attempt ends it is topped up, and when it holds nothing it is served as if
  it had asked (given work, told to wait, or stopped). Each attempt is still
  ``(task_id, attempt)``-checked and has its own lease, which starts when the
  attempt becomes the oldest held (a heartbeat naming any held attempt renews
  it). When the worker is lost or its running attempt's lease runs out, only
  the running (oldest) attempt counts as lost; the prefetched ones never
  started, so they are withdrawn: back to the front of the queue, in order,
  without evidence, without a step towards ``max_task_failures``, and with
  ``attempt`` (and the worker a late result must come from) back to what they
  were, as if never assigned -- a task's attempt numbers count the attempts
  that may have run (they get :class:`CancelTask` if the worker is still
  there; a result of a withdrawn attempt is refused as an unknown attempt or
  a wrong worker). Held attempts are not
  taken back for an idle worker (that would make a new attempt of a task
  that never failed); the depth bounds what one worker holds to about
  :data:`PREFETCH_WINDOW_SECONDS` of mean task time. A worker without
  ``prefetch`` (K = 1) is served exactly as before: one attempt, one
  ``task_request`` each.
* **Re-delivery.** A :class:`WorkerReady` (or a new hello without the task)
  from a worker that holds a task re-sends the same :class:`AssignTask` (same
  attempt, same lease; every attempt it holds, in order): the assignment may
  have been lost in a reconnection.
* **Re-adoption.** A worker that names (in its hello or a heartbeat) the
  current attempt of a queued task that was given to it -- typically a worker
  that outlived a daemon restart -- takes that task back without a new attempt.
  Any other attempt it names is stale and gets :class:`CancelTask`.
* **Daemon restart.** :class:`DaemonRestarted` (on a live object, or after
  :meth:`JobTaskState.from_snapshot` on persisted rows; the two agree) forgets
  every worker, re-queues every assigned or running task with its attempt kept
  (the next assignment is ``attempt + 1``; the old attempt can still be
  re-adopted or its result committed until then), re-asks the plan of every
  job that was waiting for one (:class:`PlanNextStage` again -- the plan state
  is in the DB, the daemon must answer idempotently), and launches workers for
  every unfinished job with work left, after ``restart_grace_seconds`` (default
  0: at once) so surviving workers can say hello first. A job whose
  :class:`JobSubmitted` was handled is in every later snapshot.
* **Unknown senders.** Worker messages are untrusted input: one that does not
  fit (unknown worker, unknown task, stale attempt) is refused, counted and
  never raises. A worker never seen in this daemon lifetime must say hello
  first; anything else it sends gets :class:`StopWorker` (except that its
  result is still committed if it is the current attempt's owner). Events from
  the daemon itself that contradict the state (a second submit of a job id, a
  stage nobody asked for) are bugs and raise :class:`InvalidEvent`.

The daemon applies the persistence instructions of one :meth:`handle` call in
one SQLite transaction before it acts on the others; state changes are emitted
before the actions they justify. Persisting :class:`JobStateChanged`,
:class:`TaskStateChanged`, :class:`CommitResult` and the submitted stages is
enough to rebuild the state with :meth:`JobTaskState.from_snapshot`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar, Final

from cistemd.errors import CistemError

__all__ = [
    "JOB_TRANSITIONS",
    "PREFETCH_WINDOW_SECONDS",
    "TASK_TRANSITIONS",
    "WORKER_TRANSITIONS",
    "AssignTask",
    "CancelJob",
    "CancelTask",
    "CommitResult",
    "Counters",
    "DaemonRestarted",
    "Event",
    "FailureKind",
    "FailureRecord",
    "Heartbeat",
    "Instruction",
    "InvalidEvent",
    "InvalidTransition",
    "InvariantViolation",
    "JobRecord",
    "JobState",
    "JobStateChanged",
    "JobSubmitted",
    "JobTaskState",
    "LaunchFailed",
    "LaunchWorkers",
    "PlanFinished",
    "PlanNextStage",
    "PublishProgress",
    "RejectReason",
    "RejectResult",
    "Snapshot",
    "StageAdded",
    "StateConfig",
    "StateMachineError",
    "StopWorker",
    "TaskAttempt",
    "TaskError",
    "TaskProgress",
    "TaskRecord",
    "TaskResult",
    "TaskSpec",
    "TaskStarted",
    "TaskState",
    "TaskStateChanged",
    "Tick",
    "WorkerConnected",
    "WorkerDied",
    "WorkerReady",
    "WorkerRecord",
    "WorkerState",
    "WorkerStateChanged",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- errors


class StateMachineError(CistemError):
    """Base class of the errors raised by :class:`JobTaskState`."""

    code = "state_machine_error"


class InvalidTransition(StateMachineError):
    """A state change that is not in the allow-list: a bug in the state machine.

    Parameters
    ----------
    message
        Which entity, from which state to which.
    """

    code = "invalid_transition"


class InvalidEvent(StateMachineError, ValueError):
    """A daemon-side event or snapshot that contradicts the state (a daemon bug).

    Parameters
    ----------
    message
        What is wrong with the event, naming the job or task.
    """

    code = "invalid_event"


class InvariantViolation(StateMachineError, AssertionError):
    """Raised by :meth:`JobTaskState.check_invariants` when the state is inconsistent.

    Parameters
    ----------
    message
        Every broken invariant, one per line.
    """

    code = "invariant_violation"


# --------------------------------------------------------------------------- states


class TaskState(StrEnum):
    """Where a task is in its life."""

    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Whether the state is absorbing (``completed``, ``failed``, ``cancelled``)."""
        return self in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED)

    @property
    def in_flight(self) -> bool:
        """Whether a worker holds the task (``assigned`` or ``running``)."""
        return self in (TaskState.ASSIGNED, TaskState.RUNNING)


class JobState(StrEnum):
    """Where a job is in its life (exactly these five)."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Whether the state is absorbing (``completed``, ``failed``, ``cancelled``)."""
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


class WorkerState(StrEnum):
    """Where a worker connection is, as far as the daemon knows."""

    CONNECTED = "connected"
    WAITING = "waiting"
    BUSY = "busy"
    STOPPING = "stopping"
    DEAD = "dead"
    STOPPED = "stopped"

    @property
    def live(self) -> bool:
        """Whether the worker can take or holds work (``connected``, ``waiting``, ``busy``)."""
        return self in (WorkerState.CONNECTED, WorkerState.WAITING, WorkerState.BUSY)

    @property
    def gone(self) -> bool:
        """Whether the worker is gone for good (``dead`` or ``stopped``)."""
        return self in (WorkerState.DEAD, WorkerState.STOPPED)


_T = TaskState
_J = JobState
_W = WorkerState

TASK_TRANSITIONS: Final[Mapping[tuple[TaskState | None, TaskState], str]] = MappingProxyType(
    {
        (None, _T.QUEUED): "created with its stage",
        (_T.QUEUED, _T.ASSIGNED): "given to a worker (a new attempt) or re-adopted by it",
        (_T.ASSIGNED, _T.RUNNING): "the worker reported a start or progress",
        (_T.ASSIGNED, _T.QUEUED): "attempt lost (worker lost, lease, retriable error, restart)",
        (_T.RUNNING, _T.QUEUED): "attempt lost (worker lost, lease, retriable error, restart)",
        (_T.ASSIGNED, _T.COMPLETED): "result committed",
        (_T.RUNNING, _T.COMPLETED): "result committed",
        (_T.QUEUED, _T.COMPLETED): "late result of the last attempt, not yet reassigned",
        (_T.ASSIGNED, _T.FAILED): "deterministic error, or the last allowed attempt lost",
        (_T.RUNNING, _T.FAILED): "deterministic error, or the last allowed attempt lost",
        (_T.QUEUED, _T.FAILED): "late deterministic error of the last attempt",
        (_T.QUEUED, _T.CANCELLED): "job cancelled or out of workers",
        (_T.ASSIGNED, _T.CANCELLED): "job cancelled or out of workers",
        (_T.RUNNING, _T.CANCELLED): "job cancelled or out of workers",
    }
)
"""Every allowed ``(old, new)`` task state change, with why it happens."""

JOB_TRANSITIONS: Final[Mapping[tuple[JobState | None, JobState], str]] = MappingProxyType(
    {
        (None, _J.QUEUED): "submitted",
        (_J.QUEUED, _J.RUNNING): "first task assigned",
        (_J.QUEUED, _J.COMPLETED): "plan finished before any task was assigned",
        (_J.QUEUED, _J.FAILED): "plan failed or no workers before any task was assigned",
        (_J.QUEUED, _J.CANCELLED): "cancelled",
        (_J.RUNNING, _J.COMPLETED): "plan finished, every task completed",
        (_J.RUNNING, _J.FAILED): "plan finished with failed tasks, plan failed, or no workers",
        (_J.RUNNING, _J.CANCELLED): "cancelled",
    }
)
"""Every allowed ``(old, new)`` job state change, with why it happens."""

WORKER_TRANSITIONS: Final[Mapping[tuple[WorkerState | None, WorkerState], str]] = MappingProxyType(
    {
        (None, _W.CONNECTED): "said hello",
        (_W.CONNECTED, _W.WAITING): "asked for work, none queued",
        (_W.CONNECTED, _W.BUSY): "given a task, or re-adopted one",
        (_W.WAITING, _W.BUSY): "given a task",
        (_W.BUSY, _W.CONNECTED): "reported the result or error of its task",
        (_W.CONNECTED, _W.STOPPING): "told to stop",
        (_W.WAITING, _W.STOPPING): "told to stop",
        (_W.BUSY, _W.STOPPING): "told to stop",
        (_W.CONNECTED, _W.DEAD): "lost",
        (_W.WAITING, _W.DEAD): "lost",
        (_W.BUSY, _W.DEAD): "lost",
        (_W.STOPPING, _W.STOPPED): "exited or went silent after being told to stop",
    }
)
"""Every allowed ``(old, new)`` worker state change, with why it happens."""


class FailureKind(StrEnum):
    """How an attempt was lost."""

    WORKER_LOST = "worker lost"
    LEASE_EXPIRED = "lease expired"
    TASK_ERROR = "task error"


class RejectReason(StrEnum):
    """Why a :class:`TaskResult` was not committed."""

    UNKNOWN_TASK = "unknown task"
    UNKNOWN_ATTEMPT = "unknown attempt"
    STALE_ATTEMPT = "stale attempt"
    DUPLICATE = "duplicate result"
    TASK_CANCELLED = "task cancelled"
    TASK_FAILED = "task failed"
    WRONG_WORKER = "wrong worker"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task of a stage, as the action's plan produced it.

    Parameters
    ----------
    task_id
        Unique across the daemon (not only the job).
    payload
        What the worker needs to run the task (action, parameters, file
        paths); opaque to the state machine, handed to :class:`AssignTask`.
    """

    task_id: str
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TaskAttempt:
    """One attempt of one task, as named by a worker."""

    task_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """Evidence of one lost or failed attempt.

    Parameters
    ----------
    attempt
        The attempt that was lost.
    worker_id, host
        Where it ran (``host`` is ``""`` when the worker never said hello).
    kind
        How it was lost.
    reason
        One line a user can read (the exception message for task errors).
    time
        ``now`` of the event that revealed the loss.
    exit_code, stderr_tail
        The worker process's exit code and last lines of stderr, when the
        launcher knows them.
    traceback
        The tail of the kernel's traceback, for task errors.
    """

    attempt: int
    worker_id: str
    host: str
    kind: FailureKind
    reason: str
    time: float
    exit_code: int | None = None
    stderr_tail: str = ""
    traceback: str = ""


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as it is persisted and as :meth:`JobTaskState.job` shows it.

    Parameters
    ----------
    job_id, action
        Identity and the action it runs.
    n_workers
        Workers wanted (the run profile's copies).
    state
        Its :class:`JobState`.
    n_stages
        Stages added so far (the plan position).
    plan_finished
        Whether no further stage will come (plan said so, or the job ended).
    reason
        Why it is in its state.
    """

    job_id: str
    action: str
    n_workers: int
    state: JobState
    n_stages: int
    plan_finished: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A task as it is persisted and as :meth:`JobTaskState.task` shows it.

    Parameters
    ----------
    task_id, job_id
        Identity and owner.
    stage_index, position
        Its stage and its index within the stage (the queue order).
    payload
        As in :class:`TaskSpec`.
    state
        Its :class:`TaskState`.
    attempt
        Number of the last assignment (0: never assigned).
    worker_id
        The holder while ``assigned``/``running``, else ``None``.
    last_worker_id
        The worker the last attempt was given to.
    failures
        Attempts lost so far (``<= max_task_failures``).
    result_ref
        The committed result (``completed`` only).
    reason
        Why it is in its state.
    evidence
        One :class:`FailureRecord` per lost attempt.
    """

    task_id: str
    job_id: str
    stage_index: int
    position: int
    payload: Mapping[str, Any]
    state: TaskState
    attempt: int = 0
    worker_id: str | None = None
    last_worker_id: str | None = None
    failures: int = 0
    result_ref: str | None = None
    reason: str = ""
    evidence: tuple[FailureRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A worker as :meth:`JobTaskState.worker` shows it (workers are not persisted)."""

    worker_id: str
    job_id: str
    host: str
    state: WorkerState
    task_id: str | None
    last_seen: float
    reason: str
    held: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything needed to rebuild a :class:`JobTaskState` after a restart.

    Parameters
    ----------
    jobs
        One record per job.
    tasks
        One record per task, of any job, in any order.
    """

    jobs: tuple[JobRecord, ...]
    tasks: tuple[TaskRecord, ...]


@dataclass(slots=True)
class Counters:
    """Running totals for ``cistemd status`` (reset by a daemon restart)."""

    results_committed: int = 0
    results_rejected: dict[str, int] = field(default_factory=dict)
    stale_reports: int = 0
    requeues: int = 0
    tasks_failed: int = 0
    worker_deaths: int = 0
    launch_failures: int = 0
    assignments_resent: int = 0
    readoptions: int = 0
    unknown_worker_messages: int = 0
    dead_worker_messages: int = 0
    protocol_errors: int = 0
    late_plan_events: int = 0
    transitions_refused: int = 0

    @property
    def stale_results_rejected(self) -> int:
        """Results refused because a newer attempt of the task exists."""
        return self.results_rejected.get(RejectReason.STALE_ATTEMPT.value, 0)

    def as_dict(self) -> dict[str, int]:
        """Flatten to ``{name: count}``; rejections become ``results_rejected.<reason>``."""
        flat: dict[str, int] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, dict):
                for reason, count in sorted(value.items()):
                    flat[f"{item.name}.{reason}"] = count
            else:
                flat[item.name] = value
        return flat


# --------------------------------------------------------------------------- events


class Event:
    """Base class of everything :meth:`JobTaskState.handle` accepts."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class JobSubmitted(Event):
    """A client's job was accepted; once handled it is never lost.

    Parameters
    ----------
    job_id, action
        Identity (new) and the action it runs.
    n_workers
        Workers wanted (``>= 1``).
    tasks
        The first stage (may be empty).
    now
        Current time, seconds.
    final
        Whether this is the only stage (no :class:`PlanNextStage` will be asked).
    """

    job_id: str
    action: str
    n_workers: int
    tasks: Sequence[TaskSpec]
    now: float
    final: bool = False


@dataclass(frozen=True, slots=True)
class StageAdded(Event):
    """The plan's answer to :class:`PlanNextStage`: the next stage's tasks.

    ``stage_index`` must be the number of stages so far. ``final`` says no
    stage will follow.
    """

    job_id: str
    stage_index: int
    tasks: Sequence[TaskSpec]
    now: float
    final: bool = False


@dataclass(frozen=True, slots=True)
class PlanFinished(Event):
    """The plan's answer to :class:`PlanNextStage`: no more stages.

    ``error`` (the plan cannot go on) fails the job.
    """

    job_id: str
    now: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CancelJob(Event):
    """A client cancels a job; a no-op on a job that has already ended."""

    job_id: str
    now: float
    reason: str = "cancelled by user"


@dataclass(frozen=True, slots=True)
class WorkerConnected(Event):
    """A worker said hello (``worker_hello``).

    ``running`` is the attempt it is still working on, if any (a worker that
    reconnects, or outlived a daemon restart).
    """

    worker_id: str
    job_id: str
    host: str
    now: float
    running: TaskAttempt | None = None
    prefetch: int = 1


@dataclass(frozen=True, slots=True)
class WorkerReady(Event):
    """A worker asks for a task (``task_request``)."""

    worker_id: str
    now: float


@dataclass(frozen=True, slots=True)
class Heartbeat(Event):
    """A worker's heartbeat; ``task_id``/``attempt`` name what it is running, if anything."""

    worker_id: str
    now: float
    task_id: str | None = None
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class TaskStarted(Event):
    """A worker began running an attempt (optional; progress implies it)."""

    worker_id: str
    task_id: str
    attempt: int
    now: float


@dataclass(frozen=True, slots=True)
class TaskProgress(Event):
    """Progress or a log line of a running attempt, to publish."""

    worker_id: str
    task_id: str
    attempt: int
    now: float
    fraction: float | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class TaskResult(Event):
    """A worker finished an attempt; ``result_ref`` points at its stored result."""

    worker_id: str
    task_id: str
    attempt: int
    result_ref: str
    now: float
    elapsed_s: float | None = None


@dataclass(frozen=True, slots=True)
class TaskError(Event):
    """An attempt raised in its kernel; deterministic unless ``retriable``."""

    worker_id: str
    task_id: str
    attempt: int
    reason: str
    now: float
    retriable: bool = False
    traceback: str = ""


@dataclass(frozen=True, slots=True)
class WorkerDied(Event):
    """The daemon or a launcher saw a worker go (disconnect, crash, exit, goodbye).

    ``exit_code`` and ``stderr_tail`` are the evidence the launcher has.
    """

    worker_id: str
    now: float
    reason: str = "connection lost"
    exit_code: int | None = None
    stderr_tail: str = ""


@dataclass(frozen=True, slots=True)
class LaunchFailed(Event):
    """``n`` of a job's :class:`LaunchWorkers` will never connect (the launcher says why)."""

    job_id: str
    n: int
    reason: str
    now: float


@dataclass(frozen=True, slots=True)
class Tick(Event):
    """Time passes: check heartbeats and leases, top up workers."""

    now: float


@dataclass(frozen=True, slots=True)
class DaemonRestarted(Event):
    """The daemon process started again (after :meth:`JobTaskState.from_snapshot`)."""

    now: float


# --------------------------------------------------------------------------- instructions


class Instruction:
    """Base class of everything :meth:`JobTaskState.handle` returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class TaskStateChanged(Instruction):
    """Persist: a task changed state.

    Parameters
    ----------
    task_id, job_id
        The task and its job.
    old, new
        The change (``old`` is ``None`` on creation).
    attempt
        The task's attempt number after the change.
    worker_id
        The worker of that attempt (the holder, for ``assigned``/``running``).
    failures
        Attempts lost so far, after the change.
    reason
        Why.
    time
        ``now`` of the event.
    evidence
        On a lost attempt, its :class:`FailureRecord`; on ``failed``, all of them.
    """

    task_id: str
    job_id: str
    old: TaskState | None
    new: TaskState
    attempt: int
    worker_id: str | None
    failures: int
    reason: str
    time: float
    evidence: tuple[FailureRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class JobStateChanged(Instruction):
    """Persist: a job changed state (``old`` is ``None`` on submit)."""

    job_id: str
    old: JobState | None
    new: JobState
    reason: str
    time: float


@dataclass(frozen=True, slots=True)
class WorkerStateChanged(Instruction):
    """Log: a worker changed state (for the Jobs panel and the job's story)."""

    worker_id: str
    job_id: str
    old: WorkerState | None
    new: WorkerState
    reason: str
    time: float


@dataclass(frozen=True, slots=True)
class AssignTask(Instruction):
    """Send ``task_assign`` to a worker; ``lease_deadline`` is absolute (``None``: no lease)."""

    worker_id: str
    task_id: str
    attempt: int
    payload: Mapping[str, Any]
    lease_deadline: float | None


@dataclass(frozen=True, slots=True)
class CommitResult(Instruction):
    """Persist the result of a task (exactly once per task); move its files into Assets."""

    task_id: str
    attempt: int
    result_ref: str
    job_id: str
    worker_id: str


@dataclass(frozen=True, slots=True)
class RejectResult(Instruction):
    """A result that is not committed (log it, discard its Scratch files)."""

    task_id: str
    attempt: int
    worker_id: str
    reason: RejectReason


@dataclass(frozen=True, slots=True)
class CancelTask(Instruction):
    """Send ``task_cancel`` to a worker for one attempt."""

    worker_id: str
    task_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class StopWorker(Instruction):
    """Send ``worker_shutdown``; a launcher may also terminate the process."""

    worker_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class LaunchWorkers(Instruction):
    """Start ``n`` more workers for a job through its run profile."""

    job_id: str
    n: int
    reason: str


@dataclass(frozen=True, slots=True)
class PlanNextStage(Instruction):
    """Stage ``stage_index`` of a job has ended: ask the plan what comes next."""

    job_id: str
    stage_index: int


@dataclass(frozen=True, slots=True)
class PublishProgress(Instruction):
    """Store and publish a progress/log event of a task."""

    job_id: str
    task_id: str
    attempt: int
    worker_id: str
    fraction: float | None
    message: str
    time: float


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Parameters of the state machine.

    Parameters
    ----------
    heartbeat_interval
        Seconds between a worker's heartbeats.
    liveness
        Heartbeat intervals of silence after which a worker is dead (3).
    max_task_failures
        Lost attempts after which a task is failed (3: the 3rd loss fails it).
    lease_seconds
        Lease of an assignment, renewed by every message of the holder that
        names the attempt; ``None`` for no lease.
    worker_restarts_allowed
        Per job and daemon lifetime, worker losses (deaths, failed launches)
        allowed per wanted worker; after that no replacement is launched.
    restart_grace_seconds
        After a daemon restart, seconds to wait for surviving workers to say
        hello before launching new ones (at a :class:`Tick`).
    strict
        Raise :class:`InvalidTransition` on a disallowed state change (tests)
        instead of refusing it and counting (the daemon).
    """

    heartbeat_interval: float = 2.0
    liveness: int = 3
    max_task_failures: int = 3
    lease_seconds: float | None = 30.0
    worker_restarts_allowed: int = 3
    restart_grace_seconds: float = 0.0
    strict: bool = True

    def __post_init__(self) -> None:
        if not self.heartbeat_interval > 0:
            raise ValueError(f"heartbeat_interval must be > 0, got {self.heartbeat_interval}")
        if self.liveness < 1:
            raise ValueError(f"liveness must be >= 1, got {self.liveness}")
        if self.max_task_failures < 1:
            raise ValueError(f"max_task_failures must be >= 1, got {self.max_task_failures}")
        if self.lease_seconds is not None and not self.lease_seconds > 0:
            raise ValueError(f"lease_seconds must be > 0 or None, got {self.lease_seconds}")
        if self.worker_restarts_allowed < 0:
            raise ValueError(
                f"worker_restarts_allowed must be >= 0, got {self.worker_restarts_allowed}"
            )
        if self.restart_grace_seconds < 0:
            raise ValueError(
                f"restart_grace_seconds must be >= 0, got {self.restart_grace_seconds}"
            )

    @property
    def liveness_period(self) -> float:
        """Seconds of silence after which a worker is declared dead."""
        return self.heartbeat_interval * self.liveness


PREFETCH_WINDOW_SECONDS: Final = 0.05
"""Work a prefetching worker is given ahead: ``depth = window / mean task time``."""


# --------------------------------------------------------------------------- internals


@dataclass(slots=True)
class _Task:
    task_id: str
    job_id: str
    stage_index: int
    position: int
    payload: Mapping[str, Any]
    state: TaskState | None = None
    attempt: int = 0
    worker_id: str | None = None
    last_worker_id: str | None = None
    prev_worker_id: str | None = None  # last_worker_id before the current attempt
    lease_deadline: float | None = None
    failures: int = 0
    result_ref: str | None = None
    reason: str = ""
    evidence: list[FailureRecord] = field(default_factory=list)


@dataclass(slots=True)
class _Job:
    job_id: str
    action: str
    n_workers: int
    state: JobState | None = None
    reason: str = ""
    stages: list[list[str]] = field(default_factory=list)
    plan_finished: bool = False
    plan_requested: bool = False
    open_tasks: int = 0
    queue: deque[str] = field(default_factory=deque)
    workers: dict[str, None] = field(default_factory=dict)  # live + stopping, hello order
    waiting: dict[str, None] = field(default_factory=dict)  # waiting, in the order they asked
    live_workers: int = 0
    pending_launches: int = 0
    launched: int = 0
    losses: int = 0  # workers lost (died, failed to launch): spends the restart budget
    retired: int = 0  # workers stopped on purpose (idle, job ended)
    last_worker_loss: str = ""
    task_seconds: float | None = None  # running mean of the attempts' elapsed_s

    def ended(self) -> bool:
        return self.state is not None and self.state.terminal


@dataclass(slots=True)
class _Worker:
    worker_id: str
    job_id: str
    host: str
    last_seen: float
    state: WorkerState | None = None
    held: list[str] = field(default_factory=list)  # attempts held, in the order sent
    reason: str = ""
    prefetch: int = 1

    @property
    def task_id(self) -> str | None:
        """The running attempt's task: the oldest held (a worker runs in order)."""
        return self.held[0] if self.held else None


# --------------------------------------------------------------------------- the machine


class JobTaskState:
    """All jobs, tasks and workers of the daemon, driven by events.

    Parameters
    ----------
    config
        Timing and limits; defaults to :class:`StateConfig()`.

    Notes
    -----
    ``task_transitions``, ``job_transitions`` and ``worker_transitions`` are
    class attributes (the module's allow-lists) so a test can narrow them.
    """

    task_transitions: ClassVar[Mapping[tuple[TaskState | None, TaskState], str]] = TASK_TRANSITIONS
    job_transitions: ClassVar[Mapping[tuple[JobState | None, JobState], str]] = JOB_TRANSITIONS
    worker_transitions: ClassVar[Mapping[tuple[WorkerState | None, WorkerState], str]] = (
        WORKER_TRANSITIONS
    )

    def __init__(self, config: StateConfig | None = None) -> None:
        self.config = StateConfig() if config is None else config
        self._jobs: dict[str, _Job] = {}
        self._tasks: dict[str, _Task] = {}
        self._workers: dict[str, _Worker] = {}
        self._counters = Counters()
        self._launch_hold_until = float("-inf")
        self._awaiting_restart = False

    # ------------------------------------------------------------------ public API

    def handle(self, event: Event) -> list[Instruction]:
        """Apply one event; return what the daemon must do, in order.

        Parameters
        ----------
        event
            Any :class:`Event`.

        Returns
        -------
        list of Instruction
            State changes first, then the actions they justify.

        Raises
        ------
        InvalidEvent
            A daemon-side event that contradicts the state, or any event but
            :class:`DaemonRestarted` right after :meth:`from_snapshot`.
        InvalidTransition
            A disallowed state change, with ``strict=True``.
        TypeError
            Not an event.
        """
        if self._awaiting_restart and not isinstance(event, DaemonRestarted):
            raise InvalidEvent(
                f"{type(event).__name__} before DaemonRestarted: a state rebuilt from a "
                "snapshot must first handle DaemonRestarted(now)"
            )
        out: list[Instruction] = []
        try:
            self._handle(event, out)
        except InvalidTransition:
            if self.config.strict:
                raise
            self._counters.transitions_refused += 1
            logger.exception("state machine refused a transition while handling %r", event)
        return out

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot, config: StateConfig | None = None) -> JobTaskState:
        """Rebuild the state from persisted rows, with no workers.

        The returned state accepts only :class:`DaemonRestarted` next, which
        re-queues in-flight tasks and emits the launches and plan requests.

        Parameters
        ----------
        snapshot
            Jobs and tasks as persisted (see :meth:`snapshot`).
        config
            As for the constructor.

        Returns
        -------
        JobTaskState

        Raises
        ------
        InvalidEvent
            Rows that contradict each other (a task of an unknown job or
            stage, a repeated id or position, a finished job with unfinished
            tasks, a completed task without a result, more failures than allowed).
        """
        state = cls(config)
        for record in snapshot.jobs:
            if record.job_id in state._jobs:
                raise InvalidEvent(f"snapshot: job {record.job_id!r} appears twice")
            if record.n_workers < 1 or record.n_stages < 0:
                raise InvalidEvent(f"snapshot: job {record.job_id!r} has bad counts")
            state._jobs[record.job_id] = _Job(
                job_id=record.job_id,
                action=record.action,
                n_workers=record.n_workers,
                state=JobState(record.state),
                reason=record.reason,
                stages=[[] for _ in range(record.n_stages)],
                plan_finished=record.plan_finished or JobState(record.state).terminal,
            )
        positions: dict[tuple[str, int], dict[int, str]] = {}
        for rec in snapshot.tasks:
            job = state._jobs.get(rec.job_id)
            if job is None:
                raise InvalidEvent(f"snapshot: task {rec.task_id!r} of unknown job {rec.job_id!r}")
            if rec.task_id in state._tasks:
                raise InvalidEvent(f"snapshot: task {rec.task_id!r} appears twice")
            if not 0 <= rec.stage_index < len(job.stages):
                raise InvalidEvent(f"snapshot: task {rec.task_id!r} has stage {rec.stage_index}")
            slot = positions.setdefault((rec.job_id, rec.stage_index), {})
            if rec.position in slot:
                raise InvalidEvent(
                    f"snapshot: tasks {slot[rec.position]!r} and {rec.task_id!r} "
                    f"share position {rec.position}"
                )
            slot[rec.position] = rec.task_id
            task_state = TaskState(rec.state)
            if task_state is TaskState.COMPLETED and rec.result_ref is None:
                raise InvalidEvent(f"snapshot: completed task {rec.task_id!r} has no result")
            if rec.attempt < 0 or (task_state.in_flight and rec.attempt < 1):
                raise InvalidEvent(f"snapshot: task {rec.task_id!r} has attempt {rec.attempt}")
            if not 0 <= rec.failures <= state.config.max_task_failures:
                raise InvalidEvent(f"snapshot: task {rec.task_id!r} has {rec.failures} failures")
            if job.ended() and not task_state.terminal:
                raise InvalidEvent(
                    f"snapshot: job {job.job_id!r} ended but task {rec.task_id!r} is {task_state}"
                )
            state._tasks[rec.task_id] = _Task(
                task_id=rec.task_id,
                job_id=rec.job_id,
                stage_index=rec.stage_index,
                position=rec.position,
                payload=rec.payload,
                state=task_state,
                attempt=rec.attempt,
                worker_id=rec.worker_id if task_state.in_flight else None,
                last_worker_id=rec.last_worker_id,
                failures=rec.failures,
                result_ref=rec.result_ref,
                reason=rec.reason,
                evidence=list(rec.evidence),
            )
            if not task_state.terminal:
                job.open_tasks += 1
        for (job_id, stage_index), slot in positions.items():
            state._jobs[job_id].stages[stage_index] = [slot[p] for p in sorted(slot)]
        for job in state._jobs.values():
            job.queue = deque(
                t
                for stage in job.stages
                for t in stage
                if state._tasks[t].state is TaskState.QUEUED
            )
        state._awaiting_restart = True
        return state

    def snapshot(self) -> Snapshot:
        """Return the persisted view: every job and task (no workers).

        Returns
        -------
        Snapshot
            Tasks ordered by job, stage and position.
        """
        jobs = tuple(self._job_record(job) for job in self._jobs.values())
        tasks = tuple(
            self._task_record(self._tasks[task_id])
            for job in self._jobs.values()
            for stage in job.stages
            for task_id in stage
        )
        return Snapshot(jobs=jobs, tasks=tasks)

    @property
    def counters(self) -> Counters:
        """A copy of the running totals."""
        return dataclasses.replace(
            self._counters, results_rejected=dict(self._counters.results_rejected)
        )

    def status(self) -> dict[str, Any]:
        """Count jobs, tasks, workers by state, plus the counters, for ``cistemd status``.

        Returns
        -------
        dict
            ``{"jobs": {state: n}, "tasks": {state: n}, "workers": {state: n},
            "counters": {name: n}}``.
        """

        def tally(states: Iterable[StrEnum | None]) -> dict[str, int]:
            counts: dict[str, int] = {}
            for value in states:
                key = "" if value is None else value.value
                counts[key] = counts.get(key, 0) + 1
            return counts

        return {
            "jobs": tally(job.state for job in self._jobs.values()),
            "tasks": tally(task.state for task in self._tasks.values()),
            "workers": tally(w.state for w in self._workers.values()),
            "counters": self._counters.as_dict(),
        }

    def job(self, job_id: str) -> JobRecord:
        """Return the record of one job (``KeyError`` if unknown)."""
        return self._job_record(self._jobs[job_id])

    def task(self, task_id: str) -> TaskRecord:
        """Return the record of one task (``KeyError`` if unknown)."""
        return self._task_record(self._tasks[task_id])

    def worker(self, worker_id: str) -> WorkerRecord:
        """Return one worker known in this daemon lifetime (``KeyError`` if unknown)."""
        w = self._workers[worker_id]
        assert w.state is not None
        return WorkerRecord(
            w.worker_id, w.job_id, w.host, w.state, w.task_id, w.last_seen, w.reason,
            tuple(w.held),
        )

    def job_ids(self) -> list[str]:
        """Every job id, in submission order."""
        return list(self._jobs)

    def task_ids(self, job_id: str | None = None) -> list[str]:
        """Task ids of one job (stage and position order) or of all jobs."""
        jobs = self._jobs.values() if job_id is None else [self._jobs[job_id]]
        return [task_id for job in jobs for stage in job.stages for task_id in stage]

    def worker_ids(self, job_id: str | None = None) -> list[str]:
        """Ids of the workers known in this daemon lifetime (of one job, if given)."""
        return [w.worker_id for w in self._workers.values() if job_id is None or w.job_id == job_id]

    def queued_task_ids(self, job_id: str) -> list[str]:
        """Return a job's queue, in the order its tasks will be handed out."""
        return list(self._jobs[job_id].queue)

    def pending_launches(self, job_id: str) -> int:
        """Workers launched for a job that have not said hello yet."""
        return self._jobs[job_id].pending_launches

    def check_invariants(self) -> None:
        """Check the state's internal consistency.

        Raises
        ------
        InvariantViolation
            Listing every broken invariant.
        """
        problems: list[str] = []
        add = problems.append
        limit = self.config.max_task_failures
        holders: dict[str, str] = {}
        queued = {job.job_id: Counter(job.queue) for job in self._jobs.values()}
        for task in self._tasks.values():
            tid = task.task_id
            job = self._jobs.get(task.job_id)
            if job is None or tid not in job.stages[task.stage_index]:
                add(f"task {tid}: not listed in its job's stage")
                continue
            if task.state is None:
                add(f"task {tid}: no state")
                continue
            in_queue = queued[task.job_id][tid]
            if in_queue != (1 if task.state is TaskState.QUEUED else 0):
                add(f"task {tid}: {task.state} but {in_queue} times in the queue")
            if not 0 <= task.failures <= limit:
                add(f"task {tid}: {task.failures} failures, limit {limit}")
            if task.failures != len(task.evidence):
                add(f"task {tid}: {task.failures} failures but {len(task.evidence)} records")
            if (task.state is TaskState.COMPLETED) != (task.result_ref is not None):
                add(f"task {tid}: {task.state} with result_ref {task.result_ref!r}")
            if task.state is TaskState.FAILED and task.failures < 1:
                add(f"task {tid}: failed without evidence")
            if task.state.in_flight and not self._awaiting_restart:
                worker = self._workers.get(task.worker_id or "")
                if worker is None or worker.state is not WorkerState.BUSY:
                    add(f"task {tid}: {task.state} on a worker that is not busy")
                elif tid not in worker.held or worker.job_id != task.job_id:
                    add(f"task {tid}: its worker {worker.worker_id} holds {worker.held}")
                if task.attempt < 1 or task.last_worker_id != task.worker_id:
                    add(f"task {tid}: in flight with attempt {task.attempt}")
                if tid in holders:
                    add(f"task {tid}: held by {task.worker_id} and {holders[tid]}")
                holders[tid] = task.worker_id or ""
            elif not task.state.in_flight and task.worker_id is not None:
                add(f"task {tid}: {task.state} but held by {task.worker_id}")
        for job in self._jobs.values():
            jid = job.job_id
            if job.state is None:
                add(f"job {jid}: no state")
                continue
            open_tasks = [t for s in job.stages for t in s if not self._task_state(t).terminal]
            if len(open_tasks) != job.open_tasks:
                add(f"job {jid}: open_tasks {job.open_tasks} but {len(open_tasks)} open")
            if job.state.terminal != (not open_tasks and job.plan_finished):
                add(
                    f"job {jid}: {job.state} with {len(open_tasks)} open tasks, "
                    f"plan_finished={job.plan_finished}"
                )
            if job.plan_requested and (open_tasks or job.plan_finished or job.ended()):
                add(f"job {jid}: plan requested while it cannot be")
            if job.state is JobState.QUEUED and any(
                self._tasks[t].attempt for s in job.stages for t in s
            ):
                add(f"job {jid}: queued but a task was assigned")
            if job.pending_launches < 0:
                add(f"job {jid}: negative pending launches")
            # Every launch beyond the first n_workers replaces a loss or a retired worker.
            bound = job.n_workers + job.losses + job.retired
            if job.launched > bound:
                add(f"job {jid}: launched {job.launched} > {bound} (n + losses + retired)")
            members = [self._workers.get(wid) for wid in job.workers]
            live = [w.worker_id for w in members if w and w.state and w.state.live]
            waiting = [w.worker_id for w in members if w and w.state is WorkerState.WAITING]
            if job.live_workers != len(live) or set(job.waiting) != set(waiting):
                add(
                    f"job {jid}: live/waiting bookkeeping {job.live_workers}/{list(job.waiting)} "
                    f"but {live}/{waiting}"
                )
            for wid in job.workers:
                worker = self._workers.get(wid)
                if (
                    worker is None
                    or worker.job_id != jid
                    or worker.state is None
                    or worker.state.gone
                ):
                    add(f"job {jid}: lists worker {wid} which is not present")
                elif job.ended() and worker.state.live:
                    add(f"job {jid}: {job.state} but worker {wid} is {worker.state}")
                elif worker.state is WorkerState.WAITING and job.queue:
                    add(f"job {jid}: worker {wid} waits while tasks are queued")
        for worker in self._workers.values():
            wid = worker.worker_id
            present = worker.state is not None and not worker.state.gone
            job = self._jobs.get(worker.job_id)
            if job is None or (wid in job.workers) != present:
                add(f"worker {wid}: job membership does not match state {worker.state}")
            if (worker.state is WorkerState.BUSY) != bool(worker.held):
                add(f"worker {wid}: {worker.state} holding {worker.held}")
            if len(worker.held) > max(1, worker.prefetch) or len(set(worker.held)) != len(
                worker.held
            ):
                add(f"worker {wid}: holds {worker.held} with prefetch {worker.prefetch}")
            for held_id in worker.held:
                held = self._tasks.get(held_id)
                if (
                    held is None
                    or held.worker_id != wid
                    or not held.state
                    or not held.state.in_flight
                ):
                    add(f"worker {wid}: holds {held_id} which is not held by it")
        if problems:
            raise InvariantViolation("\n".join(problems))

    # ------------------------------------------------------------------ dispatch

    def _handle(self, event: Event, out: list[Instruction]) -> None:
        match event:
            case JobSubmitted():
                self._on_job_submitted(event, out)
            case StageAdded():
                self._on_stage_added(event, out)
            case PlanFinished():
                self._on_plan_finished(event, out)
            case CancelJob():
                self._on_cancel_job(event, out)
            case WorkerConnected():
                self._on_worker_connected(event, out)
            case WorkerReady():
                self._on_worker_ready(event, out)
            case Heartbeat():
                self._on_heartbeat(event, out)
            case TaskStarted():
                self._on_task_started(event, out)
            case TaskProgress():
                self._on_task_progress(event, out)
            case TaskResult():
                self._on_task_result(event, out)
            case TaskError():
                self._on_task_error(event, out)
            case WorkerDied():
                self._on_worker_died(event, out)
            case LaunchFailed():
                self._on_launch_failed(event, out)
            case Tick():
                self._on_tick(event, out)
            case DaemonRestarted():
                self._on_daemon_restarted(event, out)
            case _:
                raise TypeError(f"not a state machine event: {event!r}")

    # ------------------------------------------------------------------ job events

    def _on_job_submitted(self, event: JobSubmitted, out: list[Instruction]) -> None:
        if event.job_id in self._jobs:
            raise InvalidEvent(f"job {event.job_id!r} was already submitted")
        if event.n_workers < 1:
            raise InvalidEvent(
                f"job {event.job_id!r}: n_workers must be >= 1, got {event.n_workers}"
            )
        self._check_new_tasks(event.job_id, event.tasks)
        job = _Job(job_id=event.job_id, action=event.action, n_workers=event.n_workers)
        self._jobs[job.job_id] = job
        self._set_job_state(job, JobState.QUEUED, f"submitted ({event.action})", event.now, out)
        self._add_stage(job, event.tasks, event.final, event.now, out)

    def _on_stage_added(self, event: StageAdded, out: list[Instruction]) -> None:
        job = self._job_or_raise(event.job_id)
        if job.ended():
            self._counters.late_plan_events += 1
            return
        if not job.plan_requested or event.stage_index != len(job.stages):
            raise InvalidEvent(
                f"job {job.job_id!r}: stage {event.stage_index} was not asked for "
                f"(stages so far {len(job.stages)}, plan asked: {job.plan_requested})"
            )
        self._check_new_tasks(job.job_id, event.tasks)
        job.plan_requested = False
        self._add_stage(job, event.tasks, event.final, event.now, out)

    def _on_plan_finished(self, event: PlanFinished, out: list[Instruction]) -> None:
        job = self._job_or_raise(event.job_id)
        if job.ended():
            self._counters.late_plan_events += 1
            return
        if not job.plan_requested:
            raise InvalidEvent(f"job {job.job_id!r}: PlanFinished but the plan was not asked")
        job.plan_requested = False
        job.plan_finished = True
        self._finish_job(job, event.now, out, plan_error=event.error)

    def _on_cancel_job(self, event: CancelJob, out: list[Instruction]) -> None:
        job = self._job_or_raise(event.job_id)
        if job.ended():
            return
        self._terminate_job(job, JobState.CANCELLED, event.reason, event.now, out)

    def _on_launch_failed(self, event: LaunchFailed, out: list[Instruction]) -> None:
        job = self._job_or_raise(event.job_id)
        self._counters.launch_failures += max(event.n, 0)
        if job.ended():
            return
        job.pending_launches -= min(max(event.n, 0), job.pending_launches)
        job.losses += max(event.n, 0)
        job.last_worker_loss = f"launch failed: {event.reason}"
        self._ensure_workers(job, event.now, out)

    # ------------------------------------------------------------------ worker events

    def _on_worker_connected(self, event: WorkerConnected, out: list[Instruction]) -> None:
        wid = event.worker_id
        known = self._workers.get(wid)
        if known is not None:
            assert known.state is not None
            if known.state.gone:
                self._counters.dead_worker_messages += 1
                out.append(
                    StopWorker(
                        wid,
                        f"worker id {wid} is {known.state} ({known.reason}); "
                        "a new process must use a new id",
                    )
                )
                return
            known.last_seen = max(known.last_seen, event.now)
            if known.job_id != event.job_id:
                self._counters.protocol_errors += 1
                reason = f"said hello for job {event.job_id} while bound to job {known.job_id}"
                if known.state.live:
                    self._lose_worker(known, reason, event.now, out, send_stop=True)
                else:
                    out.append(StopWorker(wid, reason))
                return
            if known.state is WorkerState.STOPPING:
                out.append(StopWorker(wid, known.reason))
                return
            known.host = event.host
            self._reconcile_claim(known, event.running, event.now, out, resend_if_busy=True)
            return
        job = self._jobs.get(event.job_id)
        if job is None or job.ended():
            if job is None:
                self._counters.protocol_errors += 1
            why = "unknown job" if job is None else f"job is {job.state}"
            out.append(StopWorker(wid, f"{why}: {event.job_id}"))
            return
        worker = _Worker(
            worker_id=wid,
            job_id=job.job_id,
            host=event.host,
            last_seen=event.now,
            prefetch=max(1, event.prefetch),
        )
        self._workers[wid] = worker
        job.pending_launches = max(0, job.pending_launches - 1)
        self._set_worker_state(
            worker, WorkerState.CONNECTED, f"hello from {event.host}", event.now, out
        )
        self._reconcile_claim(worker, event.running, event.now, out, resend_if_busy=True)

    def _on_worker_ready(self, event: WorkerReady, out: list[Instruction]) -> None:
        worker = self._sender(event.worker_id, event.now, out)
        if worker is None:
            return
        if worker.state is WorkerState.STOPPING:
            out.append(StopWorker(worker.worker_id, worker.reason))
        elif worker.state is WorkerState.BUSY:
            self._resend_assignment(worker, out)
        elif worker.state is WorkerState.CONNECTED:
            self._serve(worker, event.now, out)
        # WAITING: a repeated request, nothing to do.

    def _on_heartbeat(self, event: Heartbeat, out: list[Instruction]) -> None:
        worker = self._sender(event.worker_id, event.now, out)
        if worker is None or event.task_id is None:
            return
        if worker.state is WorkerState.STOPPING:
            return
        self._reconcile_claim(
            worker, TaskAttempt(event.task_id, event.attempt), event.now, out, resend_if_busy=False
        )

    def _on_task_started(self, event: TaskStarted, out: list[Instruction]) -> None:
        worker = self._sender(event.worker_id, event.now, out)
        task = self._held_attempt(worker, event.task_id, event.attempt)
        if task is None:
            if worker is not None:
                self._counters.stale_reports += 1
            return
        self._renew_lease(task, event.now)
        if task.state is TaskState.ASSIGNED:
            self._set_task_state(task, TaskState.RUNNING, "started", event.now, out)

    def _on_task_progress(self, event: TaskProgress, out: list[Instruction]) -> None:
        worker = self._sender(event.worker_id, event.now, out)
        task = self._held_attempt(worker, event.task_id, event.attempt)
        if task is None:
            if worker is not None:
                self._counters.stale_reports += 1
            return
        self._renew_lease(task, event.now)
        if task.state is TaskState.ASSIGNED:
            self._set_task_state(task, TaskState.RUNNING, "progress reported", event.now, out)
        out.append(
            PublishProgress(
                task.job_id,
                task.task_id,
                task.attempt,
                event.worker_id,
                event.fraction,
                event.message,
                event.now,
            )
        )

    def _on_task_result(self, event: TaskResult, out: list[Instruction]) -> None:
        worker = self._workers.get(event.worker_id)
        live = worker is not None and worker.state is not None and not worker.state.gone
        if worker is not None and live:
            worker.last_seen = max(worker.last_seen, event.now)
        refusal = self._check_report(event.worker_id, event.task_id, event.attempt)
        if refusal is not None:
            rejected = self._counters.results_rejected
            rejected[refusal.value] = rejected.get(refusal.value, 0) + 1
            out.append(RejectResult(event.task_id, event.attempt, event.worker_id, refusal))
        else:
            if event.elapsed_s is not None and event.elapsed_s >= 0:
                job = self._jobs[self._tasks[event.task_id].job_id]
                mean = job.task_seconds
                job.task_seconds = (
                    event.elapsed_s if mean is None else 0.8 * mean + 0.2 * event.elapsed_s
                )
            self._commit(self._tasks[event.task_id], event, out)
        if not live:
            self._stop_gone_sender(event.worker_id, out)

    def _on_task_error(self, event: TaskError, out: list[Instruction]) -> None:
        worker = self._workers.get(event.worker_id)
        live = worker is not None and worker.state is not None and not worker.state.gone
        if worker is not None and live:
            worker.last_seen = max(worker.last_seen, event.now)
        refusal = self._check_report(event.worker_id, event.task_id, event.attempt)
        task = self._tasks.get(event.task_id)
        if refusal is not None or task is None:
            self._counters.stale_reports += 1
        elif task.state is TaskState.QUEUED and event.retriable:
            self._counters.stale_reports += 1  # that attempt was already lost and counted
        else:
            record = FailureRecord(
                attempt=event.attempt,
                worker_id=event.worker_id,
                host=worker.host if worker is not None else "",
                kind=FailureKind.TASK_ERROR,
                reason=event.reason,
                time=event.now,
                traceback=event.traceback,
            )
            job = self._jobs[task.job_id]
            if event.retriable:
                holder = self._lose_attempt(task, record, event.now, out)
            else:
                holder = self._fail_task(task, record, f"error: {event.reason}", event.now, out)
            if holder is not None:
                self._after_release(holder, "reported an error", event.now, out)
            self._after_task_change(job, event.now, out)
        if not live:
            self._stop_gone_sender(event.worker_id, out)

    def _on_worker_died(self, event: WorkerDied, out: list[Instruction]) -> None:
        worker = self._workers.get(event.worker_id)
        if worker is None:
            self._counters.unknown_worker_messages += 1
            return
        assert worker.state is not None
        if worker.state.gone:
            return
        if worker.state is WorkerState.STOPPING:
            self._set_worker_state(
                worker, WorkerState.STOPPED, f"exited: {event.reason}", event.now, out
            )
            return
        self._lose_worker(
            worker,
            event.reason,
            event.now,
            out,
            send_stop=False,
            exit_code=event.exit_code,
            stderr_tail=event.stderr_tail,
        )

    def _on_tick(self, event: Tick, out: list[Instruction]) -> None:
        now = event.now
        period = self.config.liveness_period
        present = [w for w in self._workers.values() if w.state is not None and not w.state.gone]
        # Declare every silent worker dead before re-queued work is handed out, so a
        # task is not given to a worker that this same tick is about to bury.
        unsettled: dict[str, _Job] = {}
        for worker in present:
            if now <= worker.last_seen + period:
                continue
            silence = f"silent for {now - worker.last_seen:.1f} s"
            if worker.state is WorkerState.STOPPING:
                self._set_worker_state(
                    worker, WorkerState.STOPPED, f"{silence} after stop", now, out
                )
            else:
                reason = f"missed {self.config.liveness} heartbeats ({silence})"
                self._lose_worker(worker, reason, now, out, send_stop=True, settle=False)
                unsettled[worker.job_id] = self._jobs[worker.job_id]
        for job in unsettled.values():
            self._after_task_change(job, now, out)
        for worker in present:
            if worker.state is not WorkerState.BUSY or worker.task_id is None:
                continue
            task = self._tasks[worker.task_id]
            if task.lease_deadline is not None and now > task.lease_deadline:
                self._expire_lease(worker, task, now, out)
        for job in self._jobs.values():
            if not job.ended():
                self._ensure_workers(job, now, out)

    def _on_daemon_restarted(self, event: DaemonRestarted, out: list[Instruction]) -> None:
        now = event.now
        self._awaiting_restart = False
        self._workers.clear()
        self._launch_hold_until = now + self.config.restart_grace_seconds
        for job in self._jobs.values():
            job.workers.clear()
            job.waiting.clear()
            job.live_workers = 0
            job.pending_launches = 0
            job.launched = 0
            job.losses = 0
            job.retired = 0
            job.plan_requested = False
            if job.ended():
                continue
            for task_id in [t for stage in job.stages for t in stage]:
                task = self._tasks[task_id]
                assert task.state is not None
                if task.state.in_flight:
                    self._check_task(task, TaskState.QUEUED)
                    task.worker_id = None
                    task.lease_deadline = None
                    self._counters.requeues += 1
                    self._set_task_state(
                        task,
                        TaskState.QUEUED,
                        f"daemon restarted; attempt {task.attempt} is no longer waited for",
                        now,
                        out,
                    )
            job.queue = deque(
                t for stage in job.stages for t in stage if self._tasks[t].state is TaskState.QUEUED
            )
            self._advance(job, now, out)
            self._ensure_workers(job, now, out)

    # ------------------------------------------------------------------ helpers: checks

    def _job_or_raise(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise InvalidEvent(f"unknown job {job_id!r}")
        return job

    def _check_new_tasks(self, job_id: str, specs: Sequence[TaskSpec]) -> None:
        seen: set[str] = set()
        for spec in specs:
            if spec.task_id in self._tasks or spec.task_id in seen:
                raise InvalidEvent(f"job {job_id!r}: task id {spec.task_id!r} is not new")
            seen.add(spec.task_id)

    def _task_state(self, task_id: str) -> TaskState:
        state = self._tasks[task_id].state
        assert state is not None
        return state

    def _sender(self, worker_id: str, now: float, out: list[Instruction]) -> _Worker | None:
        """Return the live or stopping sender; tell any other sender to stop."""
        worker = self._workers.get(worker_id)
        if worker is None or worker.state is None or worker.state.gone:
            self._stop_gone_sender(worker_id, out)
            return None
        worker.last_seen = max(worker.last_seen, now)
        return worker

    def _stop_gone_sender(self, worker_id: str, out: list[Instruction]) -> None:
        worker = self._workers.get(worker_id)
        if worker is None:
            self._counters.unknown_worker_messages += 1
            out.append(StopWorker(worker_id, "unknown worker: it must say hello first"))
        else:
            self._counters.dead_worker_messages += 1
            out.append(StopWorker(worker_id, f"worker is {worker.state} ({worker.reason})"))

    def _held_attempt(self, worker: _Worker | None, task_id: str, attempt: int) -> _Task | None:
        """Return the task if ``worker`` holds exactly this attempt of it, else ``None``."""
        if worker is None or worker.state is not WorkerState.BUSY or task_id not in worker.held:
            return None
        task = self._tasks[task_id]
        return task if task.attempt == attempt else None

    def _check_report(self, worker_id: str, task_id: str, attempt: int) -> RejectReason | None:
        """Why a result/error for this attempt cannot be accepted, or ``None``."""
        task = self._tasks.get(task_id)
        if task is None:
            return RejectReason.UNKNOWN_TASK
        if attempt < 1 or attempt > task.attempt:
            return RejectReason.UNKNOWN_ATTEMPT
        if attempt < task.attempt:
            return RejectReason.STALE_ATTEMPT
        if task.state is TaskState.COMPLETED:
            return RejectReason.DUPLICATE
        if task.state is TaskState.CANCELLED:
            return RejectReason.TASK_CANCELLED
        if task.state is TaskState.FAILED:
            return RejectReason.TASK_FAILED
        if worker_id != task.last_worker_id:
            return RejectReason.WRONG_WORKER
        return None

    # ------------------------------------------------------------------ helpers: transitions

    def _check_task(self, task: _Task, new: TaskState) -> None:
        if (task.state, new) not in self.task_transitions:
            raise InvalidTransition(f"task {task.task_id}: {task.state} -> {new} is not allowed")

    def _set_task_state(
        self,
        task: _Task,
        new: TaskState,
        reason: str,
        now: float,
        out: list[Instruction],
        evidence: tuple[FailureRecord, ...] = (),
    ) -> None:
        self._check_task(task, new)
        old = task.state
        job = self._jobs[task.job_id]
        if old is None:
            job.open_tasks += 1
        if new.terminal and (old is None or not old.terminal):
            job.open_tasks -= 1
        task.state = new
        task.reason = reason
        out.append(
            TaskStateChanged(
                task.task_id,
                task.job_id,
                old,
                new,
                task.attempt,
                task.last_worker_id,
                task.failures,
                reason,
                now,
                evidence,
            )
        )

    def _set_job_state(
        self, job: _Job, new: JobState, reason: str, now: float, out: list[Instruction]
    ) -> None:
        if (job.state, new) not in self.job_transitions:
            raise InvalidTransition(f"job {job.job_id}: {job.state} -> {new} is not allowed")
        old = job.state
        job.state = new
        job.reason = reason
        out.append(JobStateChanged(job.job_id, old, new, reason, now))

    def _set_worker_state(
        self, worker: _Worker, new: WorkerState, reason: str, now: float, out: list[Instruction]
    ) -> None:
        if (worker.state, new) not in self.worker_transitions:
            raise InvalidTransition(
                f"worker {worker.worker_id}: {worker.state} -> {new} is not allowed"
            )
        old = worker.state
        worker.state = new
        worker.reason = reason
        job = self._jobs[worker.job_id]
        if new.gone:
            job.workers.pop(worker.worker_id, None)
        else:
            job.workers[worker.worker_id] = None
        if old is not None and old.live:
            job.live_workers -= 1
        if new.live:
            job.live_workers += 1
        if old is WorkerState.WAITING:
            del job.waiting[worker.worker_id]
        if new is WorkerState.WAITING:
            job.waiting[worker.worker_id] = None
        out.append(WorkerStateChanged(worker.worker_id, worker.job_id, old, new, reason, now))

    # ------------------------------------------------------------------ helpers: tasks

    def _add_stage(
        self, job: _Job, specs: Sequence[TaskSpec], final: bool, now: float, out: list[Instruction]
    ) -> None:
        stage_index = len(job.stages)
        ids: list[str] = []
        job.stages.append(ids)
        for position, spec in enumerate(specs):
            task = _Task(
                task_id=spec.task_id,
                job_id=job.job_id,
                stage_index=stage_index,
                position=position,
                payload=spec.payload,
            )
            self._tasks[task.task_id] = task
            ids.append(task.task_id)
            self._set_task_state(task, TaskState.QUEUED, f"stage {stage_index}", now, out)
            job.queue.append(task.task_id)
        job.plan_finished = final
        self._after_task_change(job, now, out)

    def _assign(self, task_id: str, worker: _Worker, now: float, out: list[Instruction]) -> None:
        """Give a queued task to a worker as a new attempt."""
        task = self._tasks[task_id]
        job = self._jobs[task.job_id]
        self._check_task(task, TaskState.ASSIGNED)
        job.queue.remove(task_id)
        if job.state is JobState.QUEUED:
            self._set_job_state(job, JobState.RUNNING, "first task assigned", now, out)
        task.attempt += 1
        task.prev_worker_id = task.last_worker_id
        task.worker_id = task.last_worker_id = worker.worker_id
        self._renew_lease(task, now)
        self._set_task_state(
            task,
            TaskState.ASSIGNED,
            f"attempt {task.attempt} on {worker.worker_id} ({worker.host})",
            now,
            out,
        )
        worker.held.append(task_id)
        if worker.state is not WorkerState.BUSY:
            self._set_worker_state(worker, WorkerState.BUSY, f"running {task_id}", now, out)
        out.append(
            AssignTask(worker.worker_id, task_id, task.attempt, task.payload, task.lease_deadline)
        )

    def _depth(self, worker: _Worker) -> int:
        """How many attempts ``worker`` should hold: adaptive prefetch.

        One until the job's attempts have reported how long they take; then
        enough to cover :data:`PREFETCH_WINDOW_SECONDS` of work, within the
        worker's declared ``prefetch``. Long tasks are never hoarded by one
        worker while another idles; short ones do not wait a round trip each.
        """
        if worker.prefetch <= 1:
            return 1
        mean = self._jobs[worker.job_id].task_seconds
        if mean is None:
            return 1
        return max(1, min(worker.prefetch, int(PREFETCH_WINDOW_SECONDS / max(mean, 1e-6))))

    def _top_up(self, worker: _Worker, now: float, out: list[Instruction]) -> None:
        """Give a busy worker more queued attempts, up to its depth."""
        job = self._jobs[worker.job_id]
        if worker.state is not WorkerState.BUSY or job.ended():
            return
        depth = self._depth(worker)
        while job.queue and len(worker.held) < depth:
            self._assign(job.queue[0], worker, now, out)

    def _serve(self, worker: _Worker, now: float, out: list[Instruction]) -> None:
        """Give a connected worker that holds nothing work, or let it wait, or stop it."""
        job = self._jobs[worker.job_id]
        if job.queue:
            self._assign(job.queue[0], worker, now, out)
            self._top_up(worker, now, out)
        elif job.plan_finished:
            self._stop_worker(worker, "no more work for this job", now, out)
        else:
            self._set_worker_state(worker, WorkerState.WAITING, "nothing queued yet", now, out)

    def _after_release(
        self, holder: _Worker, reason: str, now: float, out: list[Instruction]
    ) -> None:
        """Move ``holder`` on after one of its held attempts ended (result or error).

        A worker that still holds prefetched attempts stays busy and is topped
        up; one that holds nothing is ``connected`` again and, if it prefetches,
        served at once (it does not ask for each task).
        """
        if holder.held:
            if holder.prefetch > 1:
                self._top_up(holder, now, out)
            return
        self._set_worker_state(holder, WorkerState.CONNECTED, reason, now, out)
        if holder.prefetch > 1 and not self._jobs[holder.job_id].ended():
            self._serve(holder, now, out)

    def _resend_assignment(self, worker: _Worker, out: list[Instruction]) -> None:
        assert worker.held
        for task_id in worker.held:
            task = self._tasks[task_id]
            self._counters.assignments_resent += 1
            out.append(
                AssignTask(
                    worker.worker_id, task.task_id, task.attempt, task.payload, task.lease_deadline
                )
            )

    def _renew_lease(self, task: _Task, now: float) -> None:
        lease = self.config.lease_seconds
        task.lease_deadline = None if lease is None else now + lease

    def _reconcile_claim(
        self,
        worker: _Worker,
        claim: TaskAttempt | None,
        now: float,
        out: list[Instruction],
        *,
        resend_if_busy: bool,
    ) -> None:
        """Match what a worker says it runs against what the state says it holds."""
        held = self._tasks[worker.task_id] if worker.task_id is not None else None
        if claim is not None and claim.task_id in worker.held:
            claimed = self._tasks[claim.task_id]
            if claim.attempt == claimed.attempt:
                self._renew_lease(claimed, now)
                return
        if claim is not None:
            task = self._tasks.get(claim.task_id)
            if (
                held is None
                and task is not None
                and task.job_id == worker.job_id
                and task.state is TaskState.QUEUED
                and claim.attempt == task.attempt >= 1
                and task.last_worker_id == worker.worker_id
            ):
                self._readopt(task, worker, now, out)
                return
            self._counters.stale_reports += 1
            out.append(CancelTask(worker.worker_id, claim.task_id, claim.attempt))
        if held is not None and resend_if_busy:
            self._resend_assignment(worker, out)

    def _readopt(self, task: _Task, worker: _Worker, now: float, out: list[Instruction]) -> None:
        job = self._jobs[task.job_id]
        self._check_task(task, TaskState.ASSIGNED)
        if job.state is JobState.QUEUED:
            self._set_job_state(job, JobState.RUNNING, "a task was re-adopted", now, out)
        job.queue.remove(task.task_id)
        task.worker_id = worker.worker_id
        self._renew_lease(task, now)
        self._counters.readoptions += 1
        self._set_task_state(
            task,
            TaskState.ASSIGNED,
            f"attempt {task.attempt} re-adopted by {worker.worker_id}",
            now,
            out,
        )
        worker.held.append(task.task_id)
        self._set_worker_state(worker, WorkerState.BUSY, f"re-adopted {task.task_id}", now, out)

    def _free_holder(self, task: _Task, now: float | None = None) -> _Worker | None:
        """Detach a task from its holder (if any); returns the holder, still ``busy``.

        When the task was the holder's running (oldest) attempt, the next one
        it holds starts now: its lease is renewed from ``now``.
        """
        holder = self._workers.get(task.worker_id) if task.worker_id is not None else None
        task.worker_id = None
        task.lease_deadline = None
        if holder is not None and task.task_id in holder.held:
            was_head = holder.held[0] == task.task_id
            holder.held.remove(task.task_id)
            if was_head and holder.held and now is not None:
                self._renew_lease(self._tasks[holder.held[0]], now)
        return holder

    def _commit(self, task: _Task, event: TaskResult, out: list[Instruction]) -> None:
        job = self._jobs[task.job_id]
        self._check_task(task, TaskState.COMPLETED)
        late = task.state is TaskState.QUEUED
        if late:
            job.queue.remove(task.task_id)
        holder = self._free_holder(task, event.now)
        task.result_ref = event.result_ref
        self._counters.results_committed += 1
        out.append(
            CommitResult(
                task.task_id, event.attempt, event.result_ref, task.job_id, event.worker_id
            )
        )
        reason = (
            f"late result of attempt {event.attempt} committed"
            if late
            else f"result of attempt {event.attempt} committed"
        )
        self._set_task_state(task, TaskState.COMPLETED, reason, event.now, out)
        if holder is not None:
            self._after_release(holder, f"finished {task.task_id}", event.now, out)
        self._after_task_change(job, event.now, out)

    def _fail_task(
        self, task: _Task, record: FailureRecord, reason: str, now: float, out: list[Instruction]
    ) -> _Worker | None:
        """Fail a task with ``record`` as its last evidence; return its former holder."""
        self._check_task(task, TaskState.FAILED)
        if task.state is TaskState.QUEUED:
            self._jobs[task.job_id].queue.remove(task.task_id)
        holder = self._free_holder(task, now)
        task.failures += 1
        task.evidence.append(record)
        self._counters.tasks_failed += 1
        self._set_task_state(task, TaskState.FAILED, reason, now, out, tuple(task.evidence))
        return holder

    def _lose_attempt(
        self, task: _Task, record: FailureRecord, now: float, out: list[Instruction]
    ) -> _Worker | None:
        """Re-queue a task whose attempt was lost, or fail it on the last; return its holder.

        The holder comes back detached but still ``busy``; the caller moves it on.
        """
        if task.failures + 1 >= self.config.max_task_failures:
            return self._fail_task(
                task, record, f"{task.failures + 1} attempts lost; last: {record.reason}", now, out
            )
        self._check_task(task, TaskState.QUEUED)
        holder = self._free_holder(task, now)
        task.failures += 1
        task.evidence.append(record)
        self._counters.requeues += 1
        self._jobs[task.job_id].queue.appendleft(task.task_id)
        self._set_task_state(
            task,
            TaskState.QUEUED,
            f"attempt {record.attempt} lost: {record.reason}",
            now,
            out,
            (record,),
        )
        return holder

    def _expire_lease(
        self, worker: _Worker, task: _Task, now: float, out: list[Instruction]
    ) -> None:
        lease = self.config.lease_seconds
        reason = f"lease of {lease} s expired without word from the worker about this attempt"
        record = FailureRecord(
            task.attempt, worker.worker_id, worker.host, FailureKind.LEASE_EXPIRED, reason, now
        )
        attempt = task.attempt
        self._release_unstarted(worker, f"its worker lost the lease of {task.task_id}", now, out)
        self._lose_attempt(task, record, now, out)
        out.append(CancelTask(worker.worker_id, task.task_id, attempt))
        self._stop_worker(worker, reason, now, out)
        self._after_task_change(self._jobs[task.job_id], now, out)

    # ------------------------------------------------------------------ helpers: workers

    def _stop_worker(
        self, worker: _Worker, reason: str, now: float, out: list[Instruction]
    ) -> None:
        self._set_worker_state(worker, WorkerState.STOPPING, reason, now, out)
        self._jobs[worker.job_id].retired += 1
        out.append(StopWorker(worker.worker_id, reason))

    def _lose_worker(
        self,
        worker: _Worker,
        reason: str,
        now: float,
        out: list[Instruction],
        *,
        send_stop: bool,
        exit_code: int | None = None,
        stderr_tail: str = "",
        settle: bool = True,
    ) -> None:
        job = self._jobs[worker.job_id]
        self._release_unstarted(worker, reason, now, out, cancel=False)
        task = self._tasks[worker.task_id] if worker.task_id is not None else None
        self._counters.worker_deaths += 1
        job.losses += 1
        job.last_worker_loss = f"worker {worker.worker_id} on {worker.host}: {reason}"
        if task is not None:
            record = FailureRecord(
                task.attempt,
                worker.worker_id,
                worker.host,
                FailureKind.WORKER_LOST,
                reason,
                now,
                exit_code,
                stderr_tail,
            )
            self._lose_attempt(task, record, now, out)
        self._set_worker_state(worker, WorkerState.DEAD, reason, now, out)
        if send_stop:
            out.append(StopWorker(worker.worker_id, f"declared dead: {reason}"))
        if settle:
            self._after_task_change(job, now, out)

    def _release_unstarted(
        self,
        worker: _Worker,
        reason: str,
        now: float,
        out: list[Instruction],
        *,
        cancel: bool = True,
        keep: int = 1,
    ) -> None:
        """Re-queue the prefetched attempts of ``worker`` that never started.

        ``keep`` of its oldest attempts stay with it (at least the running one).

        Only the oldest attempt a worker holds can be running (it runs them in
        order); the others never started, so losing them is not counted against
        their task (no evidence, no step towards ``max_task_failures``). They
        go back to the front of the queue in their order; ``cancel`` tells a
        worker that is still there to drop them.
        """
        job = self._jobs[worker.job_id]
        for task_id in reversed(worker.held[max(1, keep) :]):
            task = self._tasks[task_id]
            self._check_task(task, TaskState.QUEUED)
            attempt = task.attempt
            self._free_holder(task)
            # Withdrawn as if never given: the next assignment gets the same number.
            task.attempt -= 1
            task.last_worker_id = task.prev_worker_id
            self._counters.requeues += 1
            job.queue.appendleft(task_id)
            self._set_task_state(
                task,
                TaskState.QUEUED,
                f"attempt {attempt} never started ({reason}); withdrawn, not counted",
                now,
                out,
            )
            if cancel:
                out.append(CancelTask(worker.worker_id, task_id, attempt))

    def _feed_waiting(self, job: _Job, now: float, out: list[Instruction]) -> None:
        """Give queued work to waiting workers: one each, the last one topped up."""
        while job.waiting and job.queue:
            worker = self._workers[next(iter(job.waiting))]
            self._assign(job.queue[0], worker, now, out)
            if not job.waiting:  # one each first; only the last is given more
                self._top_up(worker, now, out)

    def _stop_idle_workers(
        self, job: _Job, reason: str, now: float, out: list[Instruction]
    ) -> None:
        for wid in list(job.waiting):
            self._stop_worker(self._workers[wid], reason, now, out)

    def _ensure_workers(self, job: _Job, now: float, out: list[Instruction]) -> None:
        """Launch workers up to ``min(n_workers, open tasks)``; fail the job if none can come."""
        if job.ended() or now < self._launch_hold_until:
            return
        wanted = min(job.n_workers, job.open_tasks)
        have = job.live_workers + job.pending_launches
        if have >= wanted:
            return
        spent = job.losses > job.n_workers * self.config.worker_restarts_allowed
        n = 0 if spent else wanted - have
        if n > 0:
            reason = (
                "start"
                if job.launched == 0
                else f"top up to {wanted} workers"
                + (f"; last loss: {job.last_worker_loss}" if job.last_worker_loss else "")
            )
            job.pending_launches += n
            job.launched += n
            out.append(LaunchWorkers(job.job_id, n, reason))
        elif have == 0:
            self._terminate_job(
                job,
                JobState.FAILED,
                f"no workers left after {job.launched} launches; last loss: "
                f"{job.last_worker_loss or 'none'}",
                now,
                out,
            )

    # ------------------------------------------------------------------ helpers: jobs

    def _after_task_change(self, job: _Job, now: float, out: list[Instruction]) -> None:
        """Hand out queued work, keep workers up, move the plan on."""
        if job.ended():
            return
        self._feed_waiting(job, now, out)
        if not job.queue and job.plan_finished:
            self._stop_idle_workers(job, "no more work for this job", now, out)
        self._ensure_workers(job, now, out)
        self._advance(job, now, out)

    def _advance(self, job: _Job, now: float, out: list[Instruction]) -> None:
        if job.ended() or job.open_tasks > 0 or job.plan_requested:
            return
        if job.plan_finished:
            self._finish_job(job, now, out, plan_error=None)
        else:
            job.plan_requested = True
            out.append(PlanNextStage(job.job_id, len(job.stages) - 1))

    def _finish_job(
        self, job: _Job, now: float, out: list[Instruction], *, plan_error: str | None
    ) -> None:
        all_ids = [t for stage in job.stages for t in stage]
        failed = [t for t in all_ids if self._tasks[t].state is TaskState.FAILED]
        if plan_error is not None:
            new, reason = JobState.FAILED, f"plan failed: {plan_error}"
        elif failed:
            shown = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
            new, reason = (
                JobState.FAILED,
                (
                    f"{len(failed)} of {len(all_ids)} tasks failed ({shown}); "
                    f"{len(all_ids) - len(failed)} results recorded"
                ),
            )
        else:
            new, reason = JobState.COMPLETED, f"all {len(all_ids)} tasks completed"
        self._set_job_state(job, new, reason, now, out)
        self._stop_job_workers(job, f"job {new}", now, out)

    def _terminate_job(
        self, job: _Job, new: JobState, reason: str, now: float, out: list[Instruction]
    ) -> None:
        """End a job early (cancel, out of workers): its open tasks are cancelled."""
        if (job.state, new) not in self.job_transitions:
            raise InvalidTransition(f"job {job.job_id}: {job.state} -> {new} is not allowed")
        job.plan_finished = True
        job.plan_requested = False
        self._set_job_state(job, new, reason, now, out)
        for task_id in [t for stage in job.stages for t in stage]:
            task = self._tasks[task_id]
            assert task.state is not None
            if task.state.terminal:
                continue
            self._check_task(task, TaskState.CANCELLED)
            attempt = task.attempt
            holder = self._free_holder(task, now)
            self._set_task_state(task, TaskState.CANCELLED, f"job {new}: {reason}", now, out)
            if holder is not None:
                out.append(CancelTask(holder.worker_id, task_id, attempt))
        job.queue.clear()
        self._stop_job_workers(job, f"job {new}: {reason}", now, out)

    def _stop_job_workers(self, job: _Job, reason: str, now: float, out: list[Instruction]) -> None:
        for wid in list(job.workers):
            worker = self._workers[wid]
            if worker.state is not None and worker.state.live:
                self._stop_worker(worker, reason, now, out)

    # ------------------------------------------------------------------ helpers: records

    def _job_record(self, job: _Job) -> JobRecord:
        assert job.state is not None
        return JobRecord(
            job.job_id,
            job.action,
            job.n_workers,
            job.state,
            len(job.stages),
            job.plan_finished,
            job.reason,
        )

    def _task_record(self, task: _Task) -> TaskRecord:
        assert task.state is not None
        return TaskRecord(
            task_id=task.task_id,
            job_id=task.job_id,
            stage_index=task.stage_index,
            position=task.position,
            payload=task.payload,
            state=task.state,
            attempt=task.attempt,
            worker_id=task.worker_id,
            last_worker_id=task.last_worker_id,
            failures=task.failures,
            result_ref=task.result_ref,
            reason=task.reason,
            evidence=tuple(task.evidence),
        )
