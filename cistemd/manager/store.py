"""Job persistence in the project database: cistemd's own tables, beside cisTEM's.

The daemon keeps every job of a project in that project's SQLite database, so
a project directory carries its whole history and a restarted daemon rebuilds
its :class:`~cistemd.manager.state.JobTaskState` from it. The tables are
cistemd's, versioned on their own (row ``jobs`` of ``CISTEMD_SCHEMA``) and
created idempotently whenever the daemon opens a project, so they never touch
the project module's migrations:

``CISTEMD_JOBS``
    one row per job: action, parameters (JSON), run profile (name and the
    resolved profile as JSON), software version, the equivalent ``cistem run``
    command line, state and reason, plan state (JSON) and position, task counts
    once it has ended, times.
``CISTEMD_STAGES``
    one row per stage of a job: label, ``FINAL`` (no stage follows), the plan
    state stored with it.
``CISTEMD_TASKS``
    one row per task: stage and position, key (unique in its job), payload
    (JSON), state, attempt, holder and last worker, lost attempts with their
    evidence (JSON), result reference, reason.
``CISTEMD_RESULTS``
    the committed result of a task -- ``UNIQUE(TASK_ID)``: SQLite itself
    refuses a second result for a task.
``CISTEMD_EVENTS``
    the story told to clients (state changes, progress, log lines), with the
    daemon-wide event ids clients resume from.
``CISTEMD_WORKERS``
    every worker of a job: host, pid, state, exit code, reason.
``CISTEMD_LAUNCHERS``
    the launcher handles of a job (``Launcher.to_dict()``, one per command
    line of its run profile), so a restarted daemon re-attaches to the
    processes a previous one started, watches them and stops them.

Writes happen inside the caller's ``BEGIN IMMEDIATE`` transaction
(``project.transaction()``); the daemon groups everything one event caused
into one short transaction. Reads use the same connection.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from cistemd.errors import ProjectError
from cistemd.manager.state import (
    FailureKind,
    FailureRecord,
    JobRecord,
    JobState,
    JobStateChanged,
    Snapshot,
    TaskRecord,
    TaskState,
    TaskStateChanged,
)

if TYPE_CHECKING:
    from cistemd.project import Project

__all__ = [
    "STORE_SCHEMA_VERSION",
    "JobStore",
    "StageRow",
    "TaskRow",
    "dumps",
    "utc_now",
    "wire_payload",
]

logger = logging.getLogger(__name__)

STORE_SCHEMA_VERSION: Final = 1
"""Version of cistemd's job tables (row ``jobs`` of ``CISTEMD_SCHEMA``)."""

_COMPONENT: Final = "jobs"
_TERMINAL: Final = ("completed", "failed", "cancelled")
_JOB_STATES_SQL: Final = "('queued','running','completed','failed','cancelled')"
_TASK_STATES_SQL: Final = "('queued','assigned','running','completed','failed','cancelled')"

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS CISTEMD_SCHEMA (
        COMPONENT TEXT PRIMARY KEY,
        VERSION INTEGER NOT NULL,
        UPDATED_AT TEXT NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS CISTEMD_JOBS (
        JOB_ID INTEGER PRIMARY KEY,
        ACTION TEXT NOT NULL,
        PARAMETERS TEXT NOT NULL,
        PROFILE_NAME TEXT NOT NULL,
        PROFILE TEXT NOT NULL,
        N_WORKERS INTEGER NOT NULL CHECK (N_WORKERS >= 1),
        STATE TEXT NOT NULL CHECK (STATE IN {_JOB_STATES_SQL}),
        REASON TEXT NOT NULL DEFAULT '',
        PLAN_STATE TEXT NOT NULL DEFAULT 'null',
        N_STAGES INTEGER NOT NULL DEFAULT 0,
        PLAN_FINISHED INTEGER NOT NULL DEFAULT 0,
        N_TASKS INTEGER NOT NULL DEFAULT 0,
        TASK_COUNTS TEXT,
        SOFTWARE_VERSION TEXT NOT NULL,
        COMMAND_LINE TEXT NOT NULL,
        SUBMITTED_AT TEXT NOT NULL,
        STARTED_AT TEXT,
        FINISHED_AT TEXT,
        UPDATED_AT TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS CISTEMD_JOBS_BY_STATE ON CISTEMD_JOBS (STATE)",
    """CREATE TABLE IF NOT EXISTS CISTEMD_STAGES (
        JOB_ID INTEGER NOT NULL REFERENCES CISTEMD_JOBS (JOB_ID),
        STAGE_INDEX INTEGER NOT NULL CHECK (STAGE_INDEX >= 0),
        LABEL TEXT NOT NULL DEFAULT '',
        FINAL INTEGER NOT NULL DEFAULT 0,
        N_TASKS INTEGER NOT NULL,
        PLAN_STATE TEXT NOT NULL DEFAULT 'null',
        CREATED_AT TEXT NOT NULL,
        PRIMARY KEY (JOB_ID, STAGE_INDEX))""",
    f"""CREATE TABLE IF NOT EXISTS CISTEMD_TASKS (
        TASK_ID INTEGER PRIMARY KEY,
        JOB_ID INTEGER NOT NULL REFERENCES CISTEMD_JOBS (JOB_ID),
        STAGE_INDEX INTEGER NOT NULL,
        POSITION INTEGER NOT NULL,
        TASK_KEY TEXT NOT NULL,
        LABEL TEXT NOT NULL DEFAULT '',
        PAYLOAD TEXT NOT NULL,
        STATE TEXT NOT NULL CHECK (STATE IN {_TASK_STATES_SQL}),
        ATTEMPT INTEGER NOT NULL DEFAULT 0,
        WORKER_ID TEXT,
        LAST_WORKER_ID TEXT,
        FAILURES INTEGER NOT NULL DEFAULT 0,
        RESULT_REF TEXT,
        REASON TEXT NOT NULL DEFAULT '',
        EVIDENCE TEXT NOT NULL DEFAULT '[]',
        UPDATED_AT TEXT NOT NULL,
        UNIQUE (JOB_ID, STAGE_INDEX, POSITION),
        UNIQUE (JOB_ID, TASK_KEY))""",
    "CREATE INDEX IF NOT EXISTS CISTEMD_TASKS_BY_STATE ON CISTEMD_TASKS (JOB_ID, STATE)",
    """CREATE TABLE IF NOT EXISTS CISTEMD_RESULTS (
        RESULT_ID INTEGER PRIMARY KEY,
        TASK_ID INTEGER NOT NULL UNIQUE REFERENCES CISTEMD_TASKS (TASK_ID),
        JOB_ID INTEGER NOT NULL,
        ATTEMPT INTEGER NOT NULL CHECK (ATTEMPT >= 1),
        WORKER_ID TEXT NOT NULL,
        RESULT_REF TEXT NOT NULL,
        RESULT TEXT NOT NULL,
        OUTPUT_FILES TEXT NOT NULL DEFAULT '[]',
        ELAPSED_S REAL NOT NULL DEFAULT 0,
        RECORDED_AT TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS CISTEMD_RESULTS_BY_JOB ON CISTEMD_RESULTS (JOB_ID)",
    """CREATE TABLE IF NOT EXISTS CISTEMD_EVENTS (
        EVENT_ID INTEGER PRIMARY KEY,
        JOB_ID INTEGER,
        KIND TEXT NOT NULL CHECK (KIND IN ('state', 'progress', 'log')),
        PAYLOAD TEXT NOT NULL,
        TIME TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS CISTEMD_EVENTS_BY_JOB ON CISTEMD_EVENTS (JOB_ID, EVENT_ID)",
    """CREATE TABLE IF NOT EXISTS CISTEMD_WORKERS (
        WORKER_ID TEXT PRIMARY KEY,
        JOB_ID INTEGER NOT NULL,
        HOST TEXT NOT NULL DEFAULT '',
        PID INTEGER,
        STATE TEXT NOT NULL,
        LAUNCHED_AT TEXT NOT NULL,
        ENDED_AT TEXT,
        EXIT_CODE INTEGER,
        REASON TEXT NOT NULL DEFAULT '')""",
    "CREATE INDEX IF NOT EXISTS CISTEMD_WORKERS_BY_JOB ON CISTEMD_WORKERS (JOB_ID, STATE)",
    """CREATE TABLE IF NOT EXISTS CISTEMD_LAUNCHERS (
        JOB_ID INTEGER NOT NULL,
        COMMAND_INDEX INTEGER NOT NULL,
        HANDLE TEXT NOT NULL,
        DONE INTEGER NOT NULL DEFAULT 0,
        UPDATED_AT TEXT NOT NULL,
        PRIMARY KEY (JOB_ID, COMMAND_INDEX))""",
)

_WORKER_ENDED: Final = ("exited", "gone")


def utc_now() -> str:
    """Return the current time as ISO-8601 UTC with a ``Z`` (the protocol's date format)."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def dumps(value: Any) -> str:
    """Encode a JSON-like value compactly; NaN and infinities are refused.

    Parameters
    ----------
    value
        The value.

    Returns
    -------
    str
    """
    return json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def _evidence_to_json(record: FailureRecord) -> dict[str, Any]:
    return {
        "attempt": record.attempt,
        "worker_id": record.worker_id,
        "host": record.host,
        "kind": record.kind.value,
        "reason": record.reason,
        "time": record.time,
        "exit_code": record.exit_code,
        "stderr_tail": record.stderr_tail,
        "traceback": record.traceback,
    }


def _evidence_from_json(item: Mapping[str, Any]) -> FailureRecord:
    return FailureRecord(
        attempt=int(item["attempt"]),
        worker_id=str(item["worker_id"]),
        host=str(item.get("host", "")),
        kind=FailureKind(item["kind"]),
        reason=str(item.get("reason", "")),
        time=float(item.get("time", 0.0)),
        exit_code=None if item.get("exit_code") is None else int(item["exit_code"]),
        stderr_tail=str(item.get("stderr_tail", "")),
        traceback=str(item.get("traceback", "")),
    )


@dataclass(frozen=True, slots=True)
class TaskRow:
    """A task to insert with its stage.

    Parameters
    ----------
    key
        Unique within the job (the action's :class:`~cistemd.actions.base.TaskSpec` key).
    payload
        JSON-like payload handed to the worker.
    label
        Free text for displays.
    """

    key: str
    payload: Mapping[str, Any]
    label: str = ""


@dataclass(frozen=True, slots=True)
class StageRow:
    """A stage as inserted: its tasks' database ids in position order.

    Parameters
    ----------
    job_id, stage_index
        Which stage.
    task_ids
        The new tasks' ids, in position order.
    """

    job_id: int
    stage_index: int
    task_ids: tuple[int, ...]


def wire_payload(action: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Return the payload the state machine carries for a task (action + parameters).

    Parameters
    ----------
    action
        The job's action name.
    payload
        The task's own payload.

    Returns
    -------
    dict
        ``{"action": action, "parameters": payload}``.
    """
    return {"action": action, "parameters": payload}


class JobStore:
    """cistemd's job tables in one open project.

    Parameters
    ----------
    project
        The project, open for writing (the daemon holds it).

    Raises
    ------
    ProjectError
        The project is read-only, or its job tables are newer than this cistemd.
    """

    def __init__(self, project: Project) -> None:
        self.project = project
        self.ensure_schema()

    # -- schema --------------------------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        """The project's connection."""
        return self.project.connection

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """Return the project's ``BEGIN IMMEDIATE`` transaction context (nestable)."""
        return self.project.transaction()

    def ensure_schema(self) -> None:
        """Create the job tables if missing and check their version (idempotent).

        Raises
        ------
        ProjectError
            The tables were written by a newer cistemd.
        """
        with self.transaction() as conn:
            conn.execute(_SCHEMA[0])
            row = conn.execute(
                "SELECT VERSION FROM CISTEMD_SCHEMA WHERE COMPONENT = ?", (_COMPONENT,)
            ).fetchone()
            version = 0 if row is None else int(row[0])
            if version > STORE_SCHEMA_VERSION:
                raise ProjectError(
                    f"{self.project.db_path}: its job tables have version {version}, newer "
                    f"than this cistemd understands ({STORE_SCHEMA_VERSION}); upgrade cistemd"
                )
            for statement in _SCHEMA[1:]:
                conn.execute(statement)
            if version < STORE_SCHEMA_VERSION:
                conn.execute(
                    "INSERT OR REPLACE INTO CISTEMD_SCHEMA (COMPONENT, VERSION, UPDATED_AT) "
                    "VALUES (?, ?, ?)",
                    (_COMPONENT, STORE_SCHEMA_VERSION, utc_now()),
                )

    def _writing(self) -> sqlite3.Connection:
        conn = self.conn
        if not conn.in_transaction:
            raise RuntimeError("JobStore writes must run inside project.transaction()")
        return conn

    # -- jobs and stages -----------------------------------------------------------------------

    def max_job_id(self) -> int:
        """Return the largest job id in this project (0 if none)."""
        row = self.conn.execute("SELECT COALESCE(MAX(JOB_ID), 0) FROM CISTEMD_JOBS").fetchone()
        return int(row[0])

    def job_ids(self) -> list[int]:
        """Return every job id in this project, ascending."""
        return [int(r[0]) for r in self.conn.execute("SELECT JOB_ID FROM CISTEMD_JOBS ORDER BY 1")]

    def insert_job(
        self,
        *,
        job_id: int,
        action: str,
        parameters: Mapping[str, Any],
        profile_name: str,
        profile: Mapping[str, Any],
        n_workers: int,
        software_version: str,
        command_line: Sequence[str],
        plan_state: Any,
    ) -> None:
        """Insert a new job in state ``queued`` (inside a transaction).

        Parameters
        ----------
        job_id
            Its id (chosen by the daemon, unique across its projects).
        action, parameters
            The action and its validated parameters.
        profile_name, profile
            The run profile as asked and as resolved (JSON-like).
        n_workers
            Workers the job wants.
        software_version
            ``cistemd x.y.z``.
        command_line
            The equivalent ``cistem run`` command, as argv.
        plan_state
            The action's plan state after ``start``.
        """
        now = utc_now()
        self._writing().execute(
            "INSERT INTO CISTEMD_JOBS (JOB_ID, ACTION, PARAMETERS, PROFILE_NAME, PROFILE, "
            "N_WORKERS, STATE, REASON, PLAN_STATE, SOFTWARE_VERSION, COMMAND_LINE, "
            "SUBMITTED_AT, UPDATED_AT) VALUES (?, ?, ?, ?, ?, ?, 'queued', 'submitted', ?, ?, ?, "
            "?, ?)",
            (
                job_id,
                action,
                dumps(dict(parameters)),
                profile_name,
                dumps(dict(profile)),
                n_workers,
                dumps(plan_state),
                software_version,
                dumps(list(command_line)),
                now,
                now,
            ),
        )

    def insert_stage(
        self,
        job_id: int,
        stage_index: int,
        tasks: Sequence[TaskRow],
        *,
        final: bool,
        label: str = "",
        plan_state: Any = None,
    ) -> StageRow:
        """Insert a stage and its tasks (state ``queued``), and the job's plan state.

        Parameters
        ----------
        job_id
            The job.
        stage_index
            Must equal the job's number of stages so far.
        tasks
            The tasks, in queue order; keys must be new in the job.
        final
            Whether no stage follows.
        label
            Free text.
        plan_state
            The plan state after producing this stage (stored on the job too).

        Returns
        -------
        StageRow
            The new tasks' ids.

        Raises
        ------
        ProjectError
            ``stage_index`` is not the next stage of the job.
        """
        conn = self._writing()
        row = conn.execute(
            "SELECT N_STAGES FROM CISTEMD_JOBS WHERE JOB_ID = ?", (job_id,)
        ).fetchone()
        if row is None or int(row[0]) != stage_index:
            raise ProjectError(
                f"job {job_id}: cannot add stage {stage_index} "
                f"(it has {None if row is None else row[0]} stages)"
            )
        now = utc_now()
        last = conn.execute("SELECT COALESCE(MAX(TASK_ID), 0) FROM CISTEMD_TASKS").fetchone()
        first = int(last[0]) + 1
        conn.execute(
            "INSERT INTO CISTEMD_STAGES (JOB_ID, STAGE_INDEX, LABEL, FINAL, N_TASKS, PLAN_STATE, "
            "CREATED_AT) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job_id, stage_index, label, int(final), len(tasks), dumps(plan_state), now),
        )
        conn.executemany(
            "INSERT INTO CISTEMD_TASKS (TASK_ID, JOB_ID, STAGE_INDEX, POSITION, TASK_KEY, LABEL, "
            "PAYLOAD, STATE, REASON, UPDATED_AT) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
            [
                (
                    first + position,
                    job_id,
                    stage_index,
                    position,
                    task.key,
                    task.label,
                    dumps(dict(task.payload)),
                    f"stage {stage_index}",
                    now,
                )
                for position, task in enumerate(tasks)
            ],
        )
        conn.execute(
            "UPDATE CISTEMD_JOBS SET N_STAGES = N_STAGES + 1, N_TASKS = N_TASKS + ?, "
            "PLAN_FINISHED = ?, PLAN_STATE = ?, UPDATED_AT = ? WHERE JOB_ID = ?",
            (len(tasks), int(final), dumps(plan_state), now, job_id),
        )
        return StageRow(job_id, stage_index, tuple(range(first, first + len(tasks))))

    def set_plan_finished(self, job_id: int, plan_state: Any = None) -> None:
        """Record that no further stage will come (inside a transaction).

        Parameters
        ----------
        job_id
            The job.
        plan_state
            The final plan state.
        """
        self._writing().execute(
            "UPDATE CISTEMD_JOBS SET PLAN_FINISHED = 1, PLAN_STATE = ?, UPDATED_AT = ? "
            "WHERE JOB_ID = ?",
            (dumps(plan_state), utc_now(), job_id),
        )

    # -- applying state-machine instructions ---------------------------------------------------

    def apply_task_change(self, change: TaskStateChanged) -> None:
        """Persist a :class:`~cistemd.manager.state.TaskStateChanged` (inside a transaction).

        A change to ``completed`` must follow :meth:`insert_result` of the task
        (the state machine emits ``CommitResult`` first); the task row then
        points at that result.

        Parameters
        ----------
        change
            The change; creations (``old is None``) were written by :meth:`insert_stage`.
        """
        if change.old is None:
            return
        conn = self._writing()
        holder = change.worker_id if change.new.in_flight else None
        if change.new is TaskState.FAILED:
            evidence_sql, evidence_arg = "?", dumps([_evidence_to_json(e) for e in change.evidence])
        elif change.evidence:
            evidence_sql = "json_insert(EVIDENCE, '$[#]', json(?))"
            evidence_arg = dumps(_evidence_to_json(change.evidence[-1]))
        else:
            evidence_sql, evidence_arg = "EVIDENCE", None
        params: list[Any] = [
            change.new.value,
            change.attempt,
            holder,
            change.worker_id,
            change.failures,
            change.reason,
            utc_now(),
        ]
        if evidence_arg is not None:
            params.append(evidence_arg)
        task_id = int(change.task_id)
        # A completed task points at its result, recorded just before (CommitResult).
        result_sql = ""
        if change.new is TaskState.COMPLETED:
            result_sql = (
                ", RESULT_REF = (SELECT RESULT_REF FROM CISTEMD_RESULTS WHERE TASK_ID = ?)"
            )
            params.append(task_id)
        params.append(task_id)
        conn.execute(
            "UPDATE CISTEMD_TASKS SET STATE = ?, ATTEMPT = ?, WORKER_ID = ?, LAST_WORKER_ID = ?, "
            f"FAILURES = ?, REASON = ?, UPDATED_AT = ?, EVIDENCE = {evidence_sql}{result_sql} "
            "WHERE TASK_ID = ?",
            params,
        )

    def apply_job_change(self, change: JobStateChanged) -> None:
        """Persist a :class:`~cistemd.manager.state.JobStateChanged` (inside a transaction).

        A job that ends gets its final task counts from :meth:`record_task_counts`,
        to be called once every instruction of the same event has been applied
        (the state machine announces a cancel before it cancels the tasks).

        Parameters
        ----------
        change
            The change; creation (``old is None``) was written by :meth:`insert_job`.
        """
        conn = self._writing()
        now = utc_now()
        if change.new is JobState.RUNNING:
            conn.execute(
                "UPDATE CISTEMD_JOBS SET STATE = ?, REASON = ?, UPDATED_AT = ?, "
                "STARTED_AT = COALESCE(STARTED_AT, ?) WHERE JOB_ID = ?",
                (change.new.value, change.reason, now, now, int(change.job_id)),
            )
        elif change.new.terminal:
            conn.execute(
                "UPDATE CISTEMD_JOBS SET STATE = ?, REASON = ?, UPDATED_AT = ?, FINISHED_AT = ?, "
                "PLAN_FINISHED = 1 WHERE JOB_ID = ?",
                (change.new.value, change.reason, now, now, int(change.job_id)),
            )
        else:
            conn.execute(
                "UPDATE CISTEMD_JOBS SET STATE = ?, REASON = ?, UPDATED_AT = ? WHERE JOB_ID = ?",
                (change.new.value, change.reason, now, int(change.job_id)),
            )

    def record_task_counts(
        self, job_id: int, counts: Mapping[str, int] | None = None
    ) -> dict[str, int]:
        """Keep an ended job's task counts on its row (inside a transaction).

        Parameters
        ----------
        job_id
            The job.
        counts
            Its tasks by state; ``None`` counts them in the table.

        Returns
        -------
        dict
            The counts stored.
        """
        final = dict(counts) if counts is not None else self.task_counts(job_id)
        self._writing().execute(
            "UPDATE CISTEMD_JOBS SET TASK_COUNTS = ? WHERE JOB_ID = ?", (dumps(final), job_id)
        )
        return final

    def insert_result(
        self,
        *,
        task_id: int,
        job_id: int,
        attempt: int,
        worker_id: str,
        result_ref: str,
        result: Mapping[str, Any],
        output_files: Sequence[str] = (),
        elapsed_s: float = 0.0,
    ) -> int:
        """Record the committed result of a task (inside a transaction).

        Parameters
        ----------
        task_id, job_id, attempt, worker_id
            Whose result.
        result_ref
            The reference the state machine holds.
        result
            The JSON-like result.
        output_files
            Files the attempt wrote.
        elapsed_s
            Time the attempt took in the worker.

        Returns
        -------
        int
            The result's row id.

        Raises
        ------
        sqlite3.IntegrityError
            The task already has a result (``UNIQUE(TASK_ID)``).
        """
        conn = self._writing()
        cursor = conn.execute(
            "INSERT INTO CISTEMD_RESULTS (TASK_ID, JOB_ID, ATTEMPT, WORKER_ID, RESULT_REF, RESULT, "
            "OUTPUT_FILES, ELAPSED_S, RECORDED_AT) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                task_id,
                job_id,
                attempt,
                worker_id,
                result_ref,
                dumps(dict(result)),
                dumps(list(output_files)),
                float(elapsed_s),
                utc_now(),
            ),
        )
        return int(cursor.lastrowid or 0)

    # -- events --------------------------------------------------------------------------------

    def max_event_id(self) -> int:
        """Return the largest event id stored in this project (0 if none)."""
        row = self.conn.execute("SELECT COALESCE(MAX(EVENT_ID), 0) FROM CISTEMD_EVENTS").fetchone()
        return int(row[0])

    def add_event(
        self, event_id: int, job_id: int | None, kind: str, payload: Mapping[str, Any], time: str
    ) -> None:
        """Store one event (inside a transaction).

        Parameters
        ----------
        event_id
            Daemon-wide increasing id.
        job_id
            Its job, or ``None`` for daemon/project events.
        kind
            ``"state"``, ``"progress"`` or ``"log"``.
        payload
            JSON-like details.
        time
            ISO-8601 UTC.
        """
        self._writing().execute(
            "INSERT INTO CISTEMD_EVENTS (EVENT_ID, JOB_ID, KIND, PAYLOAD, TIME) "
            "VALUES (?, ?, ?, ?, ?)",
            (event_id, job_id, kind, dumps(dict(payload)), time),
        )

    def events(
        self, *, since_event_id: int = 0, job_id: int | None = None, limit: int = 500
    ) -> list[dict[str, Any]]:
        """Return stored events after ``since_event_id``, oldest first.

        Parameters
        ----------
        since_event_id
            Return events with a larger id.
        job_id
            Only this job's events (default: all).
        limit
            At most this many.

        Returns
        -------
        list of dict
            ``{event_id, job_id (int or None), kind, payload, time}``.
        """
        if job_id is None:
            cursor = self.conn.execute(
                "SELECT EVENT_ID, JOB_ID, KIND, PAYLOAD, TIME FROM CISTEMD_EVENTS "
                "WHERE EVENT_ID > ? ORDER BY EVENT_ID LIMIT ?",
                (since_event_id, limit),
            )
        else:
            cursor = self.conn.execute(
                "SELECT EVENT_ID, JOB_ID, KIND, PAYLOAD, TIME FROM CISTEMD_EVENTS "
                "WHERE JOB_ID = ? AND EVENT_ID > ? ORDER BY EVENT_ID LIMIT ?",
                (job_id, since_event_id, limit),
            )
        return [
            {
                "event_id": int(row[0]),
                "job_id": None if row[1] is None else int(row[1]),
                "kind": str(row[2]),
                "payload": json.loads(row[3]),
                "time": str(row[4]),
            }
            for row in cursor
        ]

    # -- workers and launchers -----------------------------------------------------------------

    def record_worker_launch(self, worker_id: str, job_id: int, host: str = "") -> None:
        """Record a launched worker (inside a transaction).

        Parameters
        ----------
        worker_id, job_id
            The worker and its job.
        host
            Where it was launched, if known.
        """
        self._writing().execute(
            "INSERT OR REPLACE INTO CISTEMD_WORKERS (WORKER_ID, JOB_ID, HOST, STATE, LAUNCHED_AT) "
            "VALUES (?, ?, ?, 'launched', ?)",
            (worker_id, job_id, host, utc_now()),
        )

    def record_worker_hello(self, worker_id: str, job_id: int, host: str, pid: int) -> None:
        """Record that a worker said hello (inside a transaction).

        Parameters
        ----------
        worker_id, job_id
            The worker and its job.
        host, pid
            Where it runs.
        """
        conn = self._writing()
        updated = conn.execute(
            "UPDATE CISTEMD_WORKERS SET HOST = ?, PID = ?, STATE = 'connected' "
            "WHERE WORKER_ID = ? AND STATE NOT IN ('exited', 'gone')",
            (host, pid, worker_id),
        ).rowcount
        if not updated:
            conn.execute(
                "INSERT OR IGNORE INTO CISTEMD_WORKERS (WORKER_ID, JOB_ID, HOST, PID, STATE, "
                "LAUNCHED_AT) VALUES (?, ?, ?, ?, 'connected', ?)",
                (worker_id, job_id, host, pid, utc_now()),
            )

    def record_worker_end(
        self, worker_id: str, state: str, *, exit_code: int | None = None, reason: str = ""
    ) -> None:
        """Record that a worker exited (``"exited"``) or is gone for good (``"gone"``).

        Parameters
        ----------
        worker_id
            The worker.
        state
            ``"exited"`` (the launcher saw it end) or ``"gone"`` (no process to watch).
        exit_code
            Its exit status (negative: killed by that signal).
        reason
            One line.
        """
        if state not in _WORKER_ENDED:
            raise ValueError(f"state must be one of {_WORKER_ENDED}, got {state!r}")
        self._writing().execute(
            "UPDATE CISTEMD_WORKERS SET STATE = ?, ENDED_AT = ?, EXIT_CODE = ?, REASON = ? "
            "WHERE WORKER_ID = ?",
            (state, utc_now(), exit_code, reason, worker_id),
        )

    def workers(self, job_id: int) -> list[dict[str, Any]]:
        """Return every worker of a job, in launch order.

        Parameters
        ----------
        job_id
            The job.

        Returns
        -------
        list of dict
            ``{worker_id, host, pid, state, exit_code, reason, launched_at, ended_at}``.
        """
        rows = self.conn.execute(
            "SELECT WORKER_ID, HOST, PID, STATE, EXIT_CODE, REASON, LAUNCHED_AT, ENDED_AT "
            "FROM CISTEMD_WORKERS WHERE JOB_ID = ? ORDER BY LAUNCHED_AT, WORKER_ID",
            (job_id,),
        ).fetchall()
        keys = (
            "worker_id",
            "host",
            "pid",
            "state",
            "exit_code",
            "reason",
            "launched_at",
            "ended_at",
        )
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def save_launcher(
        self, job_id: int, command_index: int, handle: Mapping[str, Any], *, done: bool = False
    ) -> None:
        """Store a launcher's handle (``Launcher.to_dict()``) so a restart can re-attach.

        Parameters
        ----------
        job_id
            The job it serves.
        command_index
            Which command line of the run profile it runs.
        handle
            The serialised launcher.
        done
            Whether every process it started is known to have ended.
        """
        self._writing().execute(
            "INSERT OR REPLACE INTO CISTEMD_LAUNCHERS (JOB_ID, COMMAND_INDEX, HANDLE, DONE, "
            "UPDATED_AT) VALUES (?, ?, ?, ?, ?)",
            (job_id, command_index, dumps(dict(handle)), int(done), utc_now()),
        )

    def open_launchers(self) -> list[tuple[int, int, dict[str, Any]]]:
        """Return the handles of launchers that may still have live processes.

        Returns
        -------
        list of tuple
            ``(job_id, command_index, handle)``.
        """
        rows = self.conn.execute(
            "SELECT JOB_ID, COMMAND_INDEX, HANDLE FROM CISTEMD_LAUNCHERS WHERE DONE = 0 "
            "ORDER BY JOB_ID, COMMAND_INDEX"
        ).fetchall()
        return [(int(r[0]), int(r[1]), json.loads(r[2])) for r in rows]

    # -- reads ---------------------------------------------------------------------------------

    def job(self, job_id: int) -> dict[str, Any] | None:
        """Return one job as a dict (JSON columns decoded), or ``None``.

        Parameters
        ----------
        job_id
            The job.

        Returns
        -------
        dict or None
            Keys are the lower-case column names.
        """
        cursor = self.conn.execute("SELECT * FROM CISTEMD_JOBS WHERE JOB_ID = ?", (job_id,))
        row = cursor.fetchone()
        if row is None:
            return None
        return self._job_dict(cursor.description, row)

    @staticmethod
    def _job_dict(description: Any, row: Sequence[Any]) -> dict[str, Any]:
        names = [d[0].lower() for d in description]
        job = dict(zip(names, row, strict=True))
        for key in ("parameters", "profile", "plan_state", "command_line"):
            job[key] = json.loads(job[key])
        job["task_counts"] = None if job["task_counts"] is None else json.loads(job["task_counts"])
        job["plan_finished"] = bool(job["plan_finished"])
        return job

    def jobs(
        self, *, states: Iterable[str] = (), limit: int = 200, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """Return a page of jobs, newest first, and how many match.

        Parameters
        ----------
        states
            Only jobs in these states (default: all).
        limit, offset
            The page.

        Returns
        -------
        tuple
            ``(jobs, total)``.
        """
        wanted = list(states)
        where = f"WHERE STATE IN ({', '.join('?' for _ in wanted)})" if wanted else ""
        total = int(
            self.conn.execute(f"SELECT COUNT(*) FROM CISTEMD_JOBS {where}", wanted).fetchone()[0]
        )
        cursor = self.conn.execute(
            f"SELECT * FROM CISTEMD_JOBS {where} ORDER BY JOB_ID DESC LIMIT ? OFFSET ?",
            [*wanted, limit, offset],
        )
        rows = cursor.fetchall()
        return [self._job_dict(cursor.description, row) for row in rows], total

    def task_counts(self, job_id: int) -> dict[str, int]:
        """Count a job's tasks by state.

        Parameters
        ----------
        job_id
            The job.

        Returns
        -------
        dict
            ``{state: n}`` for the states that occur.
        """
        return {
            str(state): int(n)
            for state, n in self.conn.execute(
                "SELECT STATE, COUNT(*) FROM CISTEMD_TASKS WHERE JOB_ID = ? GROUP BY STATE",
                (job_id,),
            )
        }

    def tasks(self, job_id: int, *, limit: int = 100_000, offset: int = 0) -> list[dict[str, Any]]:
        """Return a job's tasks in stage and position order.

        Parameters
        ----------
        job_id
            The job.
        limit, offset
            A page.

        Returns
        -------
        list of dict
            ``{task_id, stage_index, position, key, label, state, attempt, failures,
            worker_id, last_worker_id, reason, evidence}``.
        """
        rows = self.conn.execute(
            "SELECT TASK_ID, STAGE_INDEX, POSITION, TASK_KEY, LABEL, STATE, ATTEMPT, FAILURES, "
            "WORKER_ID, LAST_WORKER_ID, REASON, EVIDENCE FROM CISTEMD_TASKS WHERE JOB_ID = ? "
            "ORDER BY STAGE_INDEX, POSITION LIMIT ? OFFSET ?",
            (job_id, limit, offset),
        ).fetchall()
        return [
            {
                "task_id": int(r[0]),
                "stage_index": int(r[1]),
                "position": int(r[2]),
                "key": str(r[3]),
                "label": str(r[4]),
                "state": str(r[5]),
                "attempt": int(r[6]),
                "failures": int(r[7]),
                "worker_id": r[8],
                "last_worker_id": r[9],
                "reason": str(r[10]),
                "evidence": json.loads(r[11]),
            }
            for r in rows
        ]

    def task_key(self, task_id: int) -> str | None:
        """Return a task's key, or ``None`` for an unknown task."""
        row = self.conn.execute(
            "SELECT TASK_KEY FROM CISTEMD_TASKS WHERE TASK_ID = ?", (task_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def stage_results(self, job_id: int, stage_index: int) -> dict[str, Any]:
        """Return the committed results of a stage, by task key (failed tasks are absent).

        Parameters
        ----------
        job_id, stage_index
            The stage.

        Returns
        -------
        dict
            ``{task_key: result}``.
        """
        rows = self.conn.execute(
            "SELECT t.TASK_KEY, r.RESULT FROM CISTEMD_RESULTS r JOIN CISTEMD_TASKS t "
            "ON t.TASK_ID = r.TASK_ID WHERE t.JOB_ID = ? AND t.STAGE_INDEX = ? "
            "ORDER BY t.POSITION",
            (job_id, stage_index),
        )
        return {str(key): json.loads(result) for key, result in rows}

    def result(self, task_id: int) -> dict[str, Any] | None:
        """Return the committed result row of a task, or ``None``.

        Parameters
        ----------
        task_id
            The task.

        Returns
        -------
        dict or None
            ``{task_id, job_id, attempt, worker_id, result_ref, result, output_files,
            elapsed_s, recorded_at}``.
        """
        row = self.conn.execute(
            "SELECT TASK_ID, JOB_ID, ATTEMPT, WORKER_ID, RESULT_REF, RESULT, OUTPUT_FILES, "
            "ELAPSED_S, RECORDED_AT FROM CISTEMD_RESULTS WHERE TASK_ID = ?",
            (task_id,),
        ).fetchone()
        if row is None:
            return None
        return {
            "task_id": int(row[0]),
            "job_id": int(row[1]),
            "attempt": int(row[2]),
            "worker_id": str(row[3]),
            "result_ref": str(row[4]),
            "result": json.loads(row[5]),
            "output_files": json.loads(row[6]),
            "elapsed_s": float(row[7]),
            "recorded_at": str(row[8]),
        }

    # -- restart -------------------------------------------------------------------------------

    def load_snapshot(self) -> Snapshot:
        """Return the unfinished jobs and their tasks as a state-machine snapshot.

        Ended jobs stay in the database only: the state machine never needs
        them again, and a project's history can be large.

        Returns
        -------
        Snapshot
        """
        cursor = self.conn.execute(
            "SELECT JOB_ID, ACTION, N_WORKERS, STATE, N_STAGES, PLAN_FINISHED, REASON "
            f"FROM CISTEMD_JOBS WHERE STATE NOT IN {_TERMINAL!r} ORDER BY JOB_ID"
        )
        jobs: list[JobRecord] = []
        actions: dict[int, str] = {}
        for job_id, action, n_workers, state, n_stages, plan_finished, reason in cursor:
            actions[int(job_id)] = str(action)
            jobs.append(
                JobRecord(
                    job_id=str(job_id),
                    action=str(action),
                    n_workers=int(n_workers),
                    state=JobState(state),
                    n_stages=int(n_stages),
                    plan_finished=bool(plan_finished),
                    reason=str(reason),
                )
            )
        tasks: list[TaskRecord] = []
        if actions:
            marks = ", ".join("?" for _ in actions)
            rows = self.conn.execute(
                "SELECT TASK_ID, JOB_ID, STAGE_INDEX, POSITION, PAYLOAD, STATE, ATTEMPT, "
                "WORKER_ID, LAST_WORKER_ID, FAILURES, RESULT_REF, REASON, EVIDENCE "
                "FROM CISTEMD_TASKS "
                f"WHERE JOB_ID IN ({marks}) ORDER BY TASK_ID",
                list(actions),
            )
            for row in rows:
                job_id = int(row[1])
                tasks.append(
                    TaskRecord(
                        task_id=str(row[0]),
                        job_id=str(job_id),
                        stage_index=int(row[2]),
                        position=int(row[3]),
                        payload=wire_payload(actions[job_id], json.loads(row[4])),
                        state=TaskState(row[5]),
                        attempt=int(row[6]),
                        worker_id=row[7],
                        last_worker_id=row[8],
                        failures=int(row[9]),
                        result_ref=row[10],
                        reason=str(row[11]),
                        evidence=tuple(_evidence_from_json(e) for e in json.loads(row[12])),
                    )
                )
        return Snapshot(jobs=tuple(jobs), tasks=tuple(tasks))

    def integrity_problems(self) -> list[str]:
        """Check the job tables' own invariants (beyond ``PRAGMA integrity_check``).

        Returns
        -------
        list of str
            One line per problem; empty when all is well.
        """
        problems: list[str] = []
        for (task_id,) in self.conn.execute(
            "SELECT t.TASK_ID FROM CISTEMD_TASKS t LEFT JOIN CISTEMD_RESULTS r "
            "ON r.TASK_ID = t.TASK_ID WHERE t.STATE = 'completed' AND r.TASK_ID IS NULL"
        ):
            problems.append(f"task {task_id}: completed without a result")
        for (task_id,) in self.conn.execute(
            "SELECT r.TASK_ID FROM CISTEMD_RESULTS r JOIN CISTEMD_TASKS t "
            "ON r.TASK_ID = t.TASK_ID WHERE t.STATE != 'completed'"
        ):
            problems.append(f"task {task_id}: has a result but is not completed")
        for (job_id,) in self.conn.execute(
            f"SELECT j.JOB_ID FROM CISTEMD_JOBS j WHERE j.STATE IN {_TERMINAL!r} AND EXISTS "
            f"(SELECT 1 FROM CISTEMD_TASKS t WHERE t.JOB_ID = j.JOB_ID AND t.STATE NOT IN "
            f"{_TERMINAL!r})"
        ):
            problems.append(f"job {job_id}: ended with unfinished tasks")
        return problems
