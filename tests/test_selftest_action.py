"""The ``selftest`` diagnostic action, run in-process (crashes in a subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cistemd.actions import selftest
from cistemd.actions.base import TaskContext, get_action
from cistemd.actions.selftest import (
    CRASH_EXIT_CODE,
    SelfTest,
    SelfTestFailure,
    attempt_file_name,
)
from cistemd.errors import InvalidInputError


class Crashed(Exception):
    """Stands in for the end of the process in in-process tests."""


@pytest.fixture
def no_crash(monkeypatch):
    modes: list[str] = []

    def fake_crash(mode: str) -> None:
        modes.append(mode)
        raise Crashed(mode)

    monkeypatch.setattr(selftest, "_crash", fake_crash)
    return modes


def context(tmp_path: Path, attempt: int = 1, **kwargs) -> TaskContext:
    return TaskContext(task_id="t", attempt=attempt, scratch_dir=tmp_path / "Scratch", **kwargs)


def stage(**parameters):
    action = SelfTest()
    _, first = action.start(action.validate(parameters))
    return first


def test_registered_under_its_name():
    assert isinstance(get_action("selftest"), SelfTest)


def test_defaults_and_bounds():
    action = SelfTest()
    checked = action.validate({})
    assert checked == {"tasks": 10, "sleep": 0.1, "work": "sleep", "crash_every": 0,
                       "poison": -1, "crash_mode": "exit", "fail_task": -1}
    for bad in ({"tasks": 0}, {"sleep": -1}, {"crash_every": -1}, {"crash_mode": "explode"},
                {"work": "gpu"}, {"poison": 10}, {"fail_task": 10}, {"tasks": 2, "poison": 2},
                {"colour": "red"}):
        with pytest.raises(InvalidInputError):
            action.validate(bad)
    assert action.validate({"tasks": "3", "poison": 2})["tasks"] == 3


def test_start_makes_one_final_stage_with_the_misbehaving_tasks_marked():
    first = stage(tasks=7, crash_every=3, poison=5, fail_task=6, crash_mode="segfault")
    assert first.final
    assert [task.key for task in first.tasks] == [str(i) for i in range(7)]
    crash = [task.payload["crash"] for task in first.tasks]
    assert crash == ["never", "never", "first_attempt", "never", "never", "always", "never"]
    assert [task.payload["fail"] for task in first.tasks] == [False] * 6 + [True]
    assert {task.payload["crash_mode"] for task in first.tasks} == {"segfault"}
    for task in first.tasks:  # payloads must travel through msgpack / JSON
        assert json.loads(json.dumps(task.payload)) == task.payload


def test_a_task_writes_its_attempt_file_reports_progress_and_returns(tmp_path):
    reports: list[tuple[float, str]] = []
    task = stage(tasks=2, sleep=0.3).tasks[1]
    result = SelfTest().run_task(
        task.payload,
        context(tmp_path, attempt=2, report_progress=lambda f, m: reports.append((f, m))),
    )
    assert result["task_index"] == 1 and result["attempt"] == 2
    assert result["pid"] == os.getpid()
    assert result["slept"] >= 0.3
    assert "cancelled" not in result
    record = json.loads((tmp_path / "Scratch" / attempt_file_name(1, 2)).read_text())
    assert record["task_index"] == 1 and record["attempt"] == 2 and record["pid"] == os.getpid()
    fractions = [fraction for fraction, _ in reports]
    assert len(fractions) >= 3 and fractions == sorted(fractions) and fractions[-1] == 1.0


def test_a_noop_task_returns_at_once_and_leaves_no_file(tmp_path):
    task = stage(tasks=1, sleep=5.0, work="noop").tasks[0]
    result = SelfTest().run_task(task.payload, context(tmp_path, attempt=1))
    assert result["slept"] == 0.0 and result["task_index"] == 0  # the 5 s were not spent
    assert not list((tmp_path / "Scratch").glob("selftest_task_*"))


@pytest.mark.parametrize("work", ["sleep", "python", "numpy"])
def test_a_cancelled_task_returns_at_once(tmp_path, work):
    cancelled = threading.Event()
    timer = threading.Timer(0.3, cancelled.set)
    timer.start()
    started = time.monotonic()
    try:
        result = SelfTest().run_task(stage(sleep=30.0, work=work).tasks[0].payload,
                                     context(tmp_path, is_cancelled=cancelled.is_set))
    finally:
        timer.cancel()
    assert result["cancelled"] is True
    assert time.monotonic() - started < 2.0
    assert 0.3 <= result["slept"] < 2.0


def test_crash_every_crashes_only_the_first_attempt(tmp_path, no_crash):
    task = stage(tasks=2, sleep=0.0, crash_every=2).tasks[1]
    with pytest.raises(Crashed):
        SelfTest().run_task(task.payload, context(tmp_path, attempt=1))
    assert SelfTest().run_task(task.payload, context(tmp_path, attempt=2))["attempt"] == 2
    assert sorted(p.name for p in (tmp_path / "Scratch").iterdir()) == [
        attempt_file_name(1, 1), attempt_file_name(1, 2)]
    assert no_crash == ["exit"]


def test_poison_crashes_every_attempt_and_fail_task_raises(tmp_path, no_crash):
    first = stage(tasks=3, sleep=0.0, poison=0, fail_task=1, crash_mode="sigkill")
    for attempt in (1, 2, 3):
        with pytest.raises(Crashed):
            SelfTest().run_task(first.tasks[0].payload, context(tmp_path, attempt=attempt))
    assert no_crash == ["sigkill"] * 3
    with pytest.raises(SelfTestFailure, match="fails on purpose"):
        SelfTest().run_task(first.tasks[1].payload, context(tmp_path))
    assert SelfTest().run_task(first.tasks[2].payload, context(tmp_path))["task_index"] == 2


def test_malformed_payload_is_refused(tmp_path):
    payload = dict(stage().tasks[0].payload)
    for key, value in (("task_index", "0"), ("sleep", -1.0), ("work", "gpu"), ("crash", "x")):
        with pytest.raises(InvalidInputError, match=key):
            SelfTest().run_task({**payload, key: value}, context(tmp_path))


CRASH_SCRIPT = textwrap.dedent('''
    import faulthandler, sys
    from pathlib import Path
    from cistemd.actions.base import TaskContext
    from cistemd.actions.selftest import SelfTest
    faulthandler.enable()
    action = SelfTest()
    _, stage = action.start(action.validate({"tasks": 1, "sleep": 0, "poison": 0,
                                             "crash_mode": sys.argv[1]}))
    action.run_task(stage.tasks[0].payload,
                    TaskContext(task_id="t", attempt=3, scratch_dir=Path(sys.argv[2])))
    print("still alive")
''')


@pytest.mark.parametrize(("mode", "returncode"), [
    ("exit", CRASH_EXIT_CODE), ("sigkill", -signal.SIGKILL), ("segfault", -signal.SIGSEGV)])
def test_crash_modes_end_the_process(tmp_path, mode, returncode):
    completed = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, mode, str(tmp_path)],
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == returncode
    assert "still alive" not in completed.stdout
    assert "kills its worker" in completed.stderr
    assert (tmp_path / attempt_file_name(0, 3)).is_file()
