"""``selftest``: a diagnostic action that checks a run profile and the job machinery.

``cistem run selftest --tasks N --sleep SECONDS [--crash-every K] [--poison I]``
runs ``N`` tasks in one final stage. Each task

1. writes ``selftest_task_<index>_attempt_<attempt>.txt`` (a small JSON
   record: pid, host, start time) under its ``context.scratch_dir``, first,
   so that every attempt -- even one that kills its worker -- leaves a trace
   a test or a person can count;
2. spends ``sleep`` seconds -- idle (``work="sleep"``), spinning the CPU in
   pure Python (``"python"``) or in numpy array arithmetic (``"numpy"``) --
   reporting progress and checking ``context.is_cancelled()`` at least every
   0.1 s (a cancelled task returns at once, with ``"cancelled": True``);
3. then, when told to, kills its worker (``crash_mode``: ``"exit"`` =
   ``os._exit(13)``, ``"sigkill"`` = SIGKILL to itself, ``"segfault"`` = a
   read of address 0) or raises an exception (a deterministic task error);
4. else returns ``{"task_index", "attempt", "pid", "host", "slept"}``.

Which tasks misbehave: with ``crash_every = K > 0`` the first attempt of the
K-th, 2K-th, ... task (index ``i`` with ``(i + 1) % K == 0``) crashes and later
attempts succeed; task ``poison`` crashes on every attempt; task ``fail_task``
raises on every attempt.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from cistemd.actions.base import Action, JSONLike, Parameter, Stage, TaskContext, TaskSpec
from cistemd.errors import InvalidInputError

__all__ = [
    "ACTION",
    "CRASH_EXIT_CODE",
    "CRASH_MODES",
    "WORK_MODES",
    "SelfTest",
    "SelfTestFailure",
    "attempt_file_name",
]

CRASH_MODES: Final = ("exit", "sigkill", "segfault")
"""How a crashing task kills its worker."""

WORK_MODES: Final = ("sleep", "python", "numpy", "noop")
"""How a task spends its ``sleep`` seconds: idle, pure-Python CPU, numpy CPU."""

CRASH_EXIT_CODE: Final = 13
"""Exit status of a worker killed by a task with ``crash_mode="exit"``."""

_CHECK_EVERY_S: Final = 0.05  # cancellation and progress checks while busy
_MAX_TASKS: Final = 1_000_000


class SelfTestFailure(RuntimeError):
    """The deliberate error of the ``fail_task`` task."""


def attempt_file_name(task_index: int, attempt: int) -> str:
    """Return the name of the file one attempt of one task writes.

    Parameters
    ----------
    task_index
        The task's index in the job, from 0.
    attempt
        The attempt number, from 1.

    Returns
    -------
    str
        ``selftest_task_<task_index>_attempt_<attempt>.txt``.
    """
    return f"selftest_task_{task_index}_attempt_{attempt}.txt"


def _crash(mode: str) -> None:
    """End this process the way ``mode`` says; never returns."""
    sys.stderr.flush()
    if mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "segfault":
        import ctypes

        ctypes.string_at(0)  # a read of address 0: SIGSEGV
    os._exit(CRASH_EXIT_CODE)  # mode "exit", and the fallback should a signal not kill


def _spend(
    seconds: float,
    work: str,
    is_cancelled: Callable[[], bool],
    report: Callable[[float, str], None],
) -> tuple[float, bool]:
    """Spend ``seconds`` as ``work`` says; return (seconds spent, cancelled)."""
    start = time.monotonic()
    end = start + seconds
    step: Callable[[float], None]
    if work == "sleep":

        def step(until: float) -> None:
            time.sleep(max(0.0, min(until, end) - time.monotonic()))

    elif work == "python":

        def step(until: float) -> None:
            total = 0
            while time.monotonic() < min(until, end):
                for value in range(2000):
                    total += value * value

    else:
        import numpy as np

        state = np.random.default_rng(0).standard_normal((128, 128))

        def step(until: float) -> None:
            nonlocal state
            while time.monotonic() < min(until, end):
                state = np.tanh(state @ state.T * 1e-2)

    while True:
        now = time.monotonic()
        if is_cancelled():
            return now - start, True
        if now >= end:
            return now - start, False
        report((now - start) / seconds, f"{work}: {now - start:.1f} of {seconds:.1f} s")
        step(now + _CHECK_EVERY_S)


def _payload_int(payload: Mapping[str, JSONLike], name: str) -> int:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"selftest task payload: {name!r} must be an int, got {value!r}")
    return value


def _payload_choice(payload: Mapping[str, JSONLike], name: str, choices: tuple[str, ...]) -> str:
    value = payload.get(name)
    if value not in choices:
        raise InvalidInputError(
            f"selftest task payload: {name!r} must be one of {', '.join(choices)}, got {value!r}"
        )
    return str(value)


class SelfTest(Action):
    """The ``selftest`` diagnostic action (see the module docstring)."""

    name = "selftest"
    title = "Self-test"
    parameters = (
        Parameter("tasks", "int", 10, "number of tasks", minimum=1, maximum=_MAX_TASKS),
        Parameter(
            "sleep", "float", 0.1, "seconds each task takes", minimum=0.0, maximum=7 * 86400.0
        ),
        Parameter(
            "work",
            "str",
            "sleep",
            "how a task spends its time: sleep, python (CPU), numpy (CPU), "
            "noop (no time and no trace file: measures the broker alone)",
            choices=WORK_MODES,
            expert=True,
        ),
        Parameter(
            "crash_every",
            "int",
            0,
            "the first attempt of every K-th task kills its worker (0 = never)",
            minimum=0,
        ),
        Parameter(
            "poison",
            "int",
            -1,
            "this task kills its worker on every attempt (-1 = none)",
            minimum=-1,
        ),
        Parameter(
            "crash_mode",
            "str",
            "exit",
            "how a task kills its worker: exit (status 13), sigkill, segfault",
            choices=CRASH_MODES,
        ),
        Parameter(
            "fail_task",
            "int",
            -1,
            "this task raises an exception, a task error (-1 = none)",
            minimum=-1,
        ),
    )

    def validate(self, values: Mapping[str, JSONLike]) -> dict[str, JSONLike]:
        """Check the parameters; ``poison`` and ``fail_task`` must name a task or be -1.

        Parameters
        ----------
        values
            The parameters given.

        Returns
        -------
        dict
            Every parameter, defaults filled in.

        Raises
        ------
        InvalidInputError
            Naming the bad parameter.
        """
        checked = super().validate(values)
        for name in ("poison", "fail_task"):
            if checked[name] >= checked["tasks"]:
                raise InvalidInputError(
                    f"parameter {name!r}: there is no task {checked[name]} in a job of "
                    f"{checked['tasks']} tasks (tasks are numbered from 0; -1 = none)"
                )
        return checked

    def start(
        self, parameters: Mapping[str, JSONLike], *, project: Any = None
    ) -> tuple[JSONLike, Stage]:
        """Return one final stage of ``tasks`` tasks.

        Parameters
        ----------
        parameters
            Validated parameters.

        Returns
        -------
        tuple
            ``({}, stage)``; task ``i`` has key ``str(i)`` and a payload with
            everything :meth:`run_task` needs.
        """
        every = int(parameters["crash_every"])
        tasks = []
        for index in range(int(parameters["tasks"])):
            if index == parameters["poison"]:
                crash = "always"
            elif every > 0 and (index + 1) % every == 0:
                crash = "first_attempt"
            else:
                crash = "never"
            payload = {
                "task_index": index,
                "sleep": float(parameters["sleep"]),
                "work": str(parameters["work"]),
                "crash": crash,
                "crash_mode": str(parameters["crash_mode"]),
                "fail": index == parameters["fail_task"],
            }
            tasks.append(TaskSpec(key=str(index), payload=payload, label=f"task {index}"))
        return {}, Stage(tasks=tuple(tasks), final=True, label="selftest")

    def run_task(
        self, payload: Mapping[str, JSONLike], context: TaskContext
    ) -> dict[str, JSONLike]:
        """Run one task: leave a trace, spend the time, then crash, fail or return.

        Parameters
        ----------
        payload
            One payload from :meth:`start`.
        context
            The task's context; ``context.attempt`` is written into the file name.

        Returns
        -------
        dict
            ``{"task_index", "attempt", "pid", "host", "slept"}`` (plus
            ``"cancelled": True`` when the task was cancelled).

        Raises
        ------
        SelfTestFailure
            For the ``fail_task`` task.
        InvalidInputError
            For a malformed payload.
        """
        index = _payload_int(payload, "task_index")
        seconds = payload.get("sleep")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
            raise InvalidInputError(f"selftest task payload: bad 'sleep' {seconds!r}")
        work = _payload_choice(payload, "work", WORK_MODES)
        crash = _payload_choice(payload, "crash", ("never", "first_attempt", "always"))
        crash_mode = _payload_choice(payload, "crash_mode", CRASH_MODES)
        attempt = int(context.attempt)
        pid, host = os.getpid(), socket.gethostname()

        scratch = context.scratch_dir
        if not scratch.is_dir():  # the worker makes it; a standalone run may not
            scratch.mkdir(parents=True, exist_ok=True)
        record = {
            "task_index": index,
            "task_id": str(context.task_id),
            "attempt": attempt,
            "pid": pid,
            "host": host,
            "started": datetime.now(UTC).isoformat(),
        }
        if work == "noop":
            slept, cancelled = 0.0, False
        else:
            (scratch / attempt_file_name(index, attempt)).write_text(json.dumps(record) + "\n")
            slept, cancelled = _spend(
                float(seconds), work, context.is_cancelled, context.report_progress
            )
        result: dict[str, JSONLike] = {
            "task_index": index,
            "attempt": attempt,
            "pid": pid,
            "host": host,
            "slept": slept,
        }
        if cancelled:
            result["cancelled"] = True
            return result
        if crash == "always" or (crash == "first_attempt" and attempt == 1):
            print(
                f"selftest: task {index} attempt {attempt} kills its worker (pid {pid}, "
                f"crash mode {crash_mode})",
                file=sys.stderr,
            )
            _crash(crash_mode)
        if payload.get("fail") is True:
            raise SelfTestFailure(f"selftest task {index} fails on purpose (fail_task={index})")
        context.report_progress(1.0, "done")
        return result


ACTION = SelfTest
"""The action class this module provides (see :data:`cistemd.actions.base.ACTION_MODULES`)."""
