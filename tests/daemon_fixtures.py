"""Helpers for tests that run real cistemd daemons (imported by tests/test_daemon_*.py).

Every test gets its own ``CISTEM_HOME`` under ``tmp_path``; daemons run as real
subprocesses (``python -m cistemd.cli.daemon serve``) with short heartbeats,
and the finalizer stops them and kills any worker left behind, so no test
leaks a process into the next.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cistemd.client import Client, ClientError
from cistemd.manager.home import CistemHome

HEARTBEAT_S = 0.25
"""Heartbeat interval of test daemons (liveness 3: a silent worker is dead after 0.75 s)."""


def process_alive(pid: int) -> bool:
    """Return whether ``pid`` runs (zombies count as gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return False
    fields = text[text.rfind(")") + 2 :].split()
    return bool(fields) and fields[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    """Return the argv of ``pid`` ([] if gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def worker_pids(home: CistemHome) -> list[int]:
    """Pids of live worker processes of the daemon of ``home``."""
    endpoint = home.workers_endpoint
    found = []
    for pid in all_pids():
        argv = cmdline(pid)
        if "cistemd.worker" in argv and endpoint in argv and process_alive(pid):
            found.append(pid)
    return found


def wait_until(predicate, timeout: float, interval: float = 0.05, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout} s")
        time.sleep(interval)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class DaemonProcess:
    """One ``cistemd serve`` subprocess of a test home."""

    def __init__(self, home: CistemHome, log_path: Path, extra: tuple[str, ...] = ()) -> None:
        self.home = home
        self.log_path = log_path
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def argv(self, *more: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "cistemd.cli.daemon",
            "--home",
            str(self.home.root),
            "serve",
            "--heartbeat-interval",
            str(HEARTBEAT_S),
            "--worker-death-timeout",
            "15",
            *self.extra,
            *more,
        ]

    def start(self, *more: str, wait: bool = True) -> DaemonProcess:
        assert self.proc is None or self.proc.poll() is not None
        if self.proc is not None:
            self.proc.wait()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(*more),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited at start:\n{self.log()}")
            try:
                with Client(self.home, timeout=1.0) as client:
                    client.ping()
                return
            except ClientError:
                time.sleep(0.05)
        raise AssertionError(f"daemon not ready within {timeout} s:\n{self.log()}")

    def client(self, timeout: float = 15.0) -> Client:
        return Client(self.home, timeout=timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"daemon did not stop within {timeout} s:\n{self.log()}") from None

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(AssertionError):
                self.stop(timeout=15)
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.proc.kill()
            with contextlib.suppress(Exception):
                self.proc.wait(timeout=10)
        for pid in worker_pids(self.home):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def home(tmp_path: Path) -> CistemHome:
    return CistemHome.at(tmp_path / "home")


@pytest.fixture
def daemon(home: CistemHome, tmp_path: Path) -> Iterator[DaemonProcess]:
    """A running daemon of a fresh home (stopped, and its workers killed, afterwards)."""
    process = DaemonProcess(home, tmp_path / "daemon.log")
    try:
        process.start()
        yield process
    finally:
        process.cleanup()


@pytest.fixture
def make_daemon(home: CistemHome, tmp_path: Path) -> Iterator:
    """Factory of (not yet started) daemons of the test's home."""
    made: list[DaemonProcess] = []

    def factory(*extra: str, log_name: str = "daemon.log") -> DaemonProcess:
        process = DaemonProcess(home, tmp_path / log_name, extra)
        made.append(process)
        return process

    try:
        yield factory
    finally:
        for process in made:
            process.cleanup()


def db_path(project: Path) -> Path:
    return project / f"{project.name}.db"


def read_db(project: Path, sql: str, parameters: tuple = ()) -> list[tuple]:
    """Read the project DB as an external reader would (read-only)."""
    uri = f"{db_path(project).absolute().as_uri()}?mode=ro"
    connection = sqlite3.connect(uri, uri=True, timeout=10)
    try:
        return connection.execute(sql, parameters).fetchall()
    finally:
        connection.close()


def check_results_once(project: Path, job_id: str, n_tasks: int) -> None:
    """Every task of the job completed, each with exactly one recorded result."""
    states = dict(
        read_db(
            project,
            "SELECT STATE, COUNT(*) FROM CISTEMD_TASKS WHERE JOB_ID = ? GROUP BY STATE",
            (int(job_id),),
        )
    )
    assert states == {"completed": n_tasks}, states
    per_task = read_db(
        project,
        "SELECT t.TASK_ID, COUNT(r.RESULT_ID) FROM CISTEMD_TASKS t LEFT JOIN CISTEMD_RESULTS r "
        "ON r.TASK_ID = t.TASK_ID WHERE t.JOB_ID = ? GROUP BY t.TASK_ID",
        (int(job_id),),
    )
    assert len(per_task) == n_tasks
    assert all(count == 1 for _, count in per_task), [p for p in per_task if p[1] != 1]
    assert read_db(project, "PRAGMA integrity_check") == [("ok",)]
