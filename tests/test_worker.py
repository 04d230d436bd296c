"""The worker process against a fake broker that speaks the protocol.

Each test starts ``python -m cistemd.worker`` as a real process (crashes,
exits and signals are the point) and plays the daemon on a ROUTER socket
bound to an ``ipc://`` endpoint in ``tmp_path``. Heartbeats are 0.1-0.2 s so
the suite stays fast; time bounds are those of the requirements (cancel
within 2 s, death after the death timeout), never tighter.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from cistemd import protocol
from cistemd.actions.selftest import CRASH_EXIT_CODE, SelfTest, attempt_file_name
from cistemd.manager.launchers import worker_command
from cistemd.worker import ExitCode
from cistemd.worker.__main__ import build_parser
from cistemd.worker.process import CredentialsError, Worker, WorkerConfig, load_credentials

HEARTBEAT = 0.1


@dataclass
class Received:
    identity: bytes
    message: protocol.Message
    at: float


@dataclass
class FakeBroker:
    """A daemon stand-in: a ROUTER that records what it gets and can heartbeat back."""

    endpoint: str
    heartbeat: float = HEARTBEAT
    liveness: int = 3
    beating: bool = True
    curve_secret: bytes | None = None
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if self.curve_secret is not None:
            self.socket.curve_server = True
            self.socket.curve_secretkey = self.curve_secret
        self.socket.bind(self.endpoint)
        self.peers: set[bytes] = set()
        self._next_beat = time.monotonic()

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()

    def send(self, identity: bytes, msg_type: str, content: dict[str, Any] | None = None,
             parent: protocol.Message | None = None) -> protocol.Message:
        message = protocol.new_message(msg_type, content, parent=parent, sender="cistemd")
        self.socket.send_multipart([identity, protocol.encode(message)])
        return message

    def send_raw(self, identity: bytes, payload: bytes) -> None:
        self.socket.send_multipart([identity, payload])

    def _beat(self) -> None:
        now = time.monotonic()
        if self.beating and now >= self._next_beat:
            for peer in self.peers:
                self.send(peer, "heartbeat")
            self._next_beat = now + self.heartbeat

    def pump(self, seconds: float) -> None:
        """Receive (and heartbeat) for ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._receive_one(deadline)

    def _receive_one(self, deadline: float) -> Received | None:
        self._beat()
        timeout = max(0.0, min(deadline, self._next_beat if self.beating else deadline)
                      - time.monotonic())
        if not self.socket.poll(max(1, int(timeout * 1000))):
            return None
        identity, payload = self.socket.recv_multipart()
        message = protocol.decode(payload, direction=protocol.Direction.WORKER_TO_DAEMON)
        item = Received(identity, message, time.monotonic())
        self.received.append(item)
        if message.msg_type == "worker_hello":
            self.peers.add(identity)
            if self.beating:
                self.send(identity, "worker_welcome",
                          {"heartbeat_interval_s": self.heartbeat, "liveness": self.liveness},
                          parent=message)
        return item

    def expect(self, msg_type: str, timeout: float = 10.0, **match: Any) -> Received:
        """Receive until a ``msg_type`` message whose content has ``match``; fail on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            item = self._receive_one(deadline)
            if item is None or item.message.msg_type != msg_type:
                continue
            if all(item.message.content.get(k) == v for k, v in match.items()):
                return item
        kinds = [r.message.msg_type for r in self.received[-20:]]
        raise AssertionError(f"no {msg_type} {match} within {timeout} s; last received: {kinds}")

    def saw(self, msg_type: str, timeout: float = 2.0, **match: Any) -> Received:
        """Like :meth:`expect`, but a message already received counts too."""
        for item in self.of_type(msg_type):
            if all(item.message.content.get(k) == v for k, v in match.items()):
                return item
        return self.expect(msg_type, timeout, **match)

    def until_exit(self, worker: WorkerProcess, timeout: float = 10.0) -> int:
        """Keep the conversation going (heartbeats) until ``worker`` exits; its code."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = worker.popen.poll()
            if code is not None:
                return code
            self._receive_one(min(deadline, time.monotonic() + 0.02))
        raise AssertionError(f"the worker did not exit within {timeout} s")

    def of_type(self, msg_type: str) -> list[Received]:
        return [r for r in self.received if r.message.msg_type == msg_type]


class WorkerProcess:
    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self.log = open(log_path, "ab")  # closed in close()
        self.started = time.monotonic()
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        self.log.close()


@pytest.fixture
def endpoint(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/workers.sock"


@pytest.fixture
def broker(endpoint: str) -> Iterator[FakeBroker]:
    fake = FakeBroker(endpoint)
    yield fake
    fake.close()


@pytest.fixture
def start_worker(tmp_path: Path, endpoint: str) -> Iterator[Any]:
    started: list[WorkerProcess] = []

    def start(worker_id: str = "w1", *, death_timeout: float = 20.0, heartbeat: float = HEARTBEAT,
              extra: list[str] | None = None, prefix: list[str] | None = None,
              prefetch: int = 1) -> WorkerProcess:
        argv = worker_command(endpoint=endpoint, job_id="j1", worker_id=worker_id, threads=1,
                              heartbeat_interval_s=heartbeat, death_timeout_s=death_timeout)
        argv += ["--prefetch", str(prefetch)]
        if prefix is not None:
            argv = prefix + argv[3:]  # replace "python -m cistemd.worker" with a wrapper
        process = WorkerProcess(argv + (extra or []), tmp_path / f"{worker_id}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


def selftest_assignment(tmp_path: Path, index: int = 0, attempt: int = 1,
                        **parameters: Any) -> dict[str, Any]:
    action = SelfTest()
    checked = action.validate({"tasks": max(index + 1, 1), **parameters})
    _, stage = action.start(checked)
    task = stage.tasks[index]
    return {
        "task_id": f"j1.t{index}",
        "attempt": attempt,
        "action": "selftest",
        "parameters": {"scratch_dir": str(tmp_path / "Scratch"), "payload": dict(task.payload)},
        "lease_s": 60.0,
    }


# --------------------------------------------------------------------------- conversation


def test_hello_request_progress_results_and_shutdown(tmp_path, broker, start_worker):
    worker = start_worker("w-main")
    hello = broker.expect("worker_hello")
    assert hello.identity == b"w-main"
    content = hello.message.content
    assert content["worker_id"] == "w-main"
    assert content["job_id"] == "j1"
    assert content["pid"] == worker.popen.pid
    assert content["protocol_version"] == protocol.PROTOCOL_VERSION
    assert content["threads"] == 1

    for index in range(3):
        request = broker.expect("task_request")
        seconds = 0.6 if index == 0 else 0.05
        assignment = selftest_assignment(tmp_path, index, tasks=3, sleep=seconds)
        broker.send(b"w-main", "task_assign", assignment, parent=request.message)
        result = broker.expect("task_result", task_id=f"j1.t{index}")
        body = result.message.content["result"]
        assert body["task_index"] == index
        assert body["attempt"] == 1
        assert body["pid"] == worker.popen.pid
        assert result.message.content["elapsed_s"] >= body["slept"]
        assert (tmp_path / "Scratch" / attempt_file_name(index, 1)).is_file()

    progress = [r for r in broker.of_type("task_progress")
                if r.message.content["task_id"] == "j1.t0"]
    assert progress, "a 0.6 s task reported no progress"
    fractions = [r.message.content["fraction"] for r in progress]
    assert fractions == sorted(fractions)
    # ≤ 5 per second: 0.6 s of work allows at most 4 (one at once, then every 0.2 s).
    assert len(progress) <= 5

    broker.expect("task_request")
    broker.send(b"w-main", "worker_shutdown", {"reason": "job finished"})
    bye = broker.expect("worker_bye")
    assert bye.message.content["reason"]
    assert broker.until_exit(worker) == ExitCode.OK


def test_prefetching_worker_runs_what_it_holds_in_order(tmp_path, broker, start_worker):
    worker = start_worker("w-pre", prefetch=4)
    hello = broker.expect("worker_hello")
    assert hello.message.content["prefetch"] == 4
    request = broker.expect("task_request")
    # Four held at once; the first runs long enough for the cancel of the third to
    # reach the worker before it starts, and one is delivered twice.
    assignments = [
        selftest_assignment(tmp_path, index, tasks=4, sleep=0.5 if index == 0 else 0.0)
        for index in range(4)
    ]
    for assignment in assignments:
        broker.send(b"w-pre", "task_assign", assignment, parent=request.message)
    broker.send(b"w-pre", "task_assign", assignments[1])
    broker.send(b"w-pre", "task_cancel", {"task_id": "j1.t2", "attempt": 1, "reason": "test"})
    for index in (0, 1, 3):
        broker.expect("task_result", task_id=f"j1.t{index}")
    # A re-delivery of a finished attempt is not run again.
    broker.send(b"w-pre", "task_assign", assignments[0])
    broker.send(b"w-pre", "worker_shutdown", {"reason": "job finished"})
    broker.expect("worker_bye")
    assert broker.until_exit(worker) == ExitCode.OK
    results = [r.message.content["task_id"] for r in broker.of_type("task_result")]
    assert results == ["j1.t0", "j1.t1", "j1.t3"]  # in order, once each, t2 never ran
    assert not (tmp_path / "Scratch" / attempt_file_name(2, 1)).exists()
    assert len(broker.of_type("task_request")) == 1  # it does not ask for each task
    assert not broker.of_type("error")


def test_task_error_carries_the_traceback_tail_and_the_worker_goes_on(
        tmp_path, broker, start_worker):
    start_worker()
    broker.expect("task_request")
    broker.send(b"w1", "task_assign", selftest_assignment(tmp_path, 1, tasks=2, sleep=0.0,
                                                          fail_task=1))
    error = broker.expect("task_error", task_id="j1.t1")
    assert "fails on purpose" in error.message.content["reason"]
    assert "SelfTestFailure" in error.message.content["traceback"]
    assert len(error.message.content["traceback"]) <= 4096
    broker.expect("task_request")  # still serving

    # An assignment the worker cannot run (no scratch_dir) is a task error, not a crash.
    bad = selftest_assignment(tmp_path, 0, attempt=2)
    del bad["parameters"]["scratch_dir"]
    broker.send(b"w1", "task_assign", bad)
    error = broker.expect("task_error", task_id="j1.t0", attempt=2)
    assert "scratch_dir" in error.message.content["reason"]
    broker.expect("task_request")


def test_busy_worker_refuses_a_second_task_and_ignores_a_redelivery(
        tmp_path, broker, start_worker):
    start_worker()
    broker.expect("task_request")
    first = selftest_assignment(tmp_path, 0, sleep=1.0)
    broker.send(b"w1", "task_assign", first)
    broker.expect("task_progress", task_id="j1.t0")
    broker.send(b"w1", "task_assign", first)  # re-delivery: no effect
    other = selftest_assignment(tmp_path, 1, tasks=2, sleep=0.0)
    broker.send(b"w1", "task_assign", other)
    error = broker.expect("error")
    assert error.message.content["code"] == "worker_busy"
    broker.expect("task_result", task_id="j1.t0")
    broker.pump(0.3)
    assert len(broker.of_type("task_result")) == 1
    assert not (tmp_path / "Scratch" / attempt_file_name(1, 1)).exists()
    assert [p.name for p in (tmp_path / "Scratch").iterdir()] == [attempt_file_name(0, 1)]


def test_malformed_messages_are_answered_and_counted_not_fatal(tmp_path, broker, start_worker):
    worker = start_worker()
    broker.expect("task_request")
    broker.send_raw(b"w1", b"\xc1 not msgpack")
    assert broker.expect("error").message.content["code"] == "undecodable"
    wrong_way = protocol.encode(protocol.new_message("task_request"))  # a W>D type
    broker.send_raw(b"w1", wrong_way)
    assert broker.expect("error").message.content["code"] == "wrong_direction"
    broker.send(b"w1", "task_assign", selftest_assignment(tmp_path, 0, sleep=0.0))
    broker.expect("task_result", task_id="j1.t0")
    assert worker.popen.poll() is None


# --------------------------------------------------------------------------- heartbeats


@pytest.mark.parametrize("work", ["python", "numpy"])
def test_heartbeats_continue_while_a_task_hogs_the_cpu(tmp_path, endpoint, start_worker, work):
    interval, liveness = 0.2, 3
    broker = FakeBroker(endpoint, heartbeat=interval, liveness=liveness)
    try:
        start_worker(heartbeat=interval)
        broker.expect("task_request")
        broker.send(b"w1", "task_assign", selftest_assignment(tmp_path, 0, sleep=1.6, work=work))
        result = broker.expect("task_result", task_id="j1.t0", timeout=20)
        assert result.message.content["result"]["slept"] >= 1.6
        beats = [r.at for r in broker.of_type("heartbeat")
                 if r.message.content["task_id"] == "j1.t0"]
        # 1.6 s of work at 0.2 s: about 8 beats naming the task; the daemon declares a
        # worker dead after `liveness` silent intervals, so no gap may reach that.
        assert len(beats) >= 5
        gaps = [b - a for a, b in itertools.pairwise(beats)]
        assert max(gaps) < interval * liveness, gaps
        assert all(r.message.content["attempt"] == 1 for r in broker.of_type("heartbeat")
                   if r.message.content["task_id"])
    finally:
        broker.close()


def test_worker_exits_after_the_death_timeout_and_reconnects_before(
        tmp_path, endpoint, start_worker):
    silent = FakeBroker(endpoint, beating=False)  # hears but never answers
    try:
        worker = start_worker(death_timeout=2.0)
        code = None
        deadline = time.monotonic() + 15
        while code is None and time.monotonic() < deadline:
            silent.pump(0.1)
            code = worker.popen.poll()
        elapsed = time.monotonic() - worker.started
        assert code == ExitCode.DAEMON_GONE
        assert elapsed >= 2.0
        # After 3 silent beats (0.3 s) and the 1 s back-off it said hello on a new socket.
        assert len(silent.of_type("worker_hello")) >= 2
        assert "death timeout" in worker.log_text()
    finally:
        silent.close()


def test_reconnect_back_off_doubles_up_to_its_cap(tmp_path, endpoint):
    """In-process (a thread): back-off 0.05 s doubling to a 0.1 s cap, then the death timeout."""
    silent = FakeBroker(endpoint, beating=False)
    config = WorkerConfig(endpoint=endpoint, worker_id="w-backoff", heartbeat_interval_s=0.05,
                          liveness=2, death_timeout_s=1.5, reconnect_initial_s=0.05,
                          reconnect_max_s=0.1)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(Worker(config).run()))
    try:
        thread.start()
        while thread.is_alive():
            silent.pump(0.05)
        thread.join()
    finally:
        silent.close()
    assert codes == [ExitCode.DAEMON_GONE]
    hellos = [r.at for r in silent.of_type("worker_hello")]
    gaps = [b - a for a, b in itertools.pairwise(hellos)]
    silence = 0.05 * 2
    # Each reconnection waits for the silence, then the back-off: 0.05, 0.1, 0.1 (capped)...
    for gap, back_off in zip(gaps, [0.05, 0.1, 0.1, 0.1, 0.1], strict=False):
        assert gap >= silence + back_off - 0.01, gaps
    # ...not 0.2, 0.4, 0.8: uncapped, a fifth reconnection would come after 2 s, past the
    # 1.5 s death timeout.
    assert len(gaps) >= 5, gaps
    assert max(gaps[2:5]) < silence + 0.4, gaps


def test_worker_with_no_daemon_at_all_exits_after_the_death_timeout(start_worker):
    worker = start_worker(death_timeout=1.0)
    assert worker.wait(15) == ExitCode.DAEMON_GONE


def test_reconnects_to_a_restarted_daemon_and_resends_its_result(
        tmp_path, endpoint, start_worker):
    first = FakeBroker(endpoint)
    start_worker(death_timeout=20.0)
    first.expect("task_request")
    first.send(b"w1", "task_assign", selftest_assignment(tmp_path, 0, sleep=0.8))
    first.expect("task_progress")
    first.close()  # the daemon dies while the task runs
    time.sleep(1.0)  # the task ends and its result goes nowhere
    second = FakeBroker(endpoint)
    try:
        hello = second.expect("worker_hello", timeout=10)
        assert hello.identity == b"w1"
        result = second.expect("task_result", task_id="j1.t0", timeout=10)
        assert result.message.content["result"]["task_index"] == 0
        second.expect("task_request")
        second.send(b"w1", "task_assign", selftest_assignment(tmp_path, 1, tasks=2, sleep=0.0))
        second.expect("task_result", task_id="j1.t1")
    finally:
        second.close()


# --------------------------------------------------------------------------- stopping


def test_cancel_stops_a_sleeping_task_within_2_s(tmp_path, broker, start_worker):
    worker = start_worker()
    broker.expect("task_request")
    assignment = selftest_assignment(tmp_path, 0, sleep=60.0)
    broker.send(b"w1", "task_assign", assignment)
    broker.expect("task_progress", task_id="j1.t0")
    broker.send(b"w1", "task_cancel", {"task_id": "j1.t0", "attempt": 1, "reason": "job cancelled"})
    sent = time.monotonic()
    broker.expect("task_request", timeout=5)
    assert time.monotonic() - sent < 2.0
    broker.expect("heartbeat", task_id="")  # idle again
    assert not broker.of_type("task_result")
    assert not broker.of_type("task_error")
    assert worker.popen.poll() is None


def test_cancel_of_another_attempt_is_ignored(tmp_path, broker, start_worker):
    start_worker()
    broker.expect("task_request")
    broker.send(b"w1", "task_assign", selftest_assignment(tmp_path, 0, attempt=2, sleep=0.5))
    broker.send(b"w1", "task_cancel", {"task_id": "j1.t0", "attempt": 1})
    broker.expect("task_result", task_id="j1.t0", attempt=2)


STUBBORN_ACTION = textwrap.dedent('''
    import time
    from cistemd.actions.base import Action

    class Stubborn(Action):
        name = "stubborn"

        def run_task(self, payload, context):
            context.report_progress(0.0, "ignoring cancels")
            time.sleep(60)  # never looks at context.is_cancelled()
            return {}

    ACTION = Stubborn
''')

WRAPPER = textwrap.dedent('''
    import sys
    sys.path.insert(0, sys.argv.pop(1))
    from cistemd.actions.base import ACTION_MODULES
    ACTION_MODULES["stubborn"] = "stubborn_action"
    from cistemd.worker.__main__ import main
    sys.exit(main(sys.argv[1:]))
''')


def test_a_task_that_ignores_cancel_takes_its_worker_down_within_2_s(
        tmp_path, broker, start_worker):
    (tmp_path / "stubborn_action.py").write_text(STUBBORN_ACTION)
    worker = start_worker(prefix=[sys.executable, "-c", WRAPPER, str(tmp_path)])
    broker.expect("task_request")
    broker.send(b"w1", "task_assign", {"task_id": "s1", "attempt": 1, "action": "stubborn",
                                       "parameters": {"scratch_dir": str(tmp_path)},
                                       "lease_s": 60.0})
    broker.expect("task_progress", task_id="s1")
    broker.send(b"w1", "task_cancel", {"task_id": "s1", "attempt": 1})
    sent = time.monotonic()
    assert broker.until_exit(worker) == ExitCode.TASK_STUCK
    assert time.monotonic() - sent < 2.0
    bye = broker.saw("worker_bye")
    assert "did not stop" in bye.message.content["reason"]


def test_sigterm_stops_the_task_says_bye_and_exits_143(tmp_path, broker, start_worker):
    worker = start_worker()
    broker.expect("task_request")
    broker.send(b"w1", "task_assign", selftest_assignment(tmp_path, 0, sleep=60.0, work="python"))
    broker.expect("task_progress", task_id="j1.t0")
    worker.popen.send_signal(signal.SIGTERM)
    assert broker.until_exit(worker) == 128 + signal.SIGTERM
    broker.saw("worker_bye")
    assert not broker.of_type("task_result")


def test_shutdown_while_busy_aborts_the_task_and_exits_0(tmp_path, broker, start_worker):
    worker = start_worker()
    broker.expect("task_request")
    broker.send(b"w1", "task_assign", selftest_assignment(tmp_path, 0, sleep=60.0))
    broker.expect("task_progress", task_id="j1.t0")
    broker.send(b"w1", "worker_shutdown", {"reason": "job cancelled"})
    broker.expect("worker_bye", timeout=5)
    assert broker.until_exit(worker) == ExitCode.OK
    assert not broker.of_type("task_result")


@pytest.mark.parametrize(
    ("mode", "returncode"),
    [("exit", CRASH_EXIT_CODE), ("sigkill", -signal.SIGKILL), ("segfault", -signal.SIGSEGV)],
)
def test_a_crash_task_kills_its_worker(tmp_path, broker, start_worker, mode, returncode):
    worker = start_worker()
    broker.expect("task_request")
    broker.send(b"w1", "task_assign",
                selftest_assignment(tmp_path, 0, sleep=0.0, crash_every=1, crash_mode=mode))
    assert broker.until_exit(worker) == returncode
    assert (tmp_path / "Scratch" / attempt_file_name(0, 1)).is_file()
    log = worker.log_text()
    assert "kills its worker" in log
    if mode == "segfault":
        assert "Segmentation fault" in log  # faulthandler's Python stack
    assert not broker.of_type("task_result")


def test_second_attempt_of_a_crash_every_task_succeeds(tmp_path, broker, start_worker):
    start_worker()
    broker.expect("task_request")
    broker.send(b"w1", "task_assign",
                selftest_assignment(tmp_path, 0, attempt=2, sleep=0.0, crash_every=1))
    result = broker.expect("task_result", task_id="j1.t0", attempt=2)
    assert result.message.content["result"]["attempt"] == 2


# --------------------------------------------------------------------------- command line, keys


def test_worker_command_is_what_the_worker_parses(tmp_path):
    argv = worker_command(endpoint="tcp://10.0.0.1:5555", job_id="j9", worker_id="w-3",
                          threads=4, heartbeat_interval_s=0.5, death_timeout_s=120,
                          credentials_file=tmp_path / "keys.json", log_file=tmp_path / "w.log")
    assert argv[:3] == [sys.executable, "-m", "cistemd.worker"]
    args = build_parser().parse_args(argv[3:])
    assert (args.connect, args.job_id, args.worker_id) == ("tcp://10.0.0.1:5555", "j9", "w-3")
    assert (args.threads, args.heartbeat_interval, args.death_timeout) == (4, 0.5, 120.0)
    assert args.credentials_file == str(tmp_path / "keys.json")
    assert args.log_file == str(tmp_path / "w.log")


@pytest.mark.parametrize("bad", [["--threads", "0"], ["--death-timeout", "-1"],
                                 ["--heartbeat-interval", "nan"]])
def test_bad_command_lines_exit_2(endpoint, bad):
    argv = worker_command(endpoint=endpoint, job_id="j1", worker_id="w1")[3:] + bad
    completed = subprocess.run([sys.executable, "-m", "cistemd.worker", *argv],
                               capture_output=True, timeout=30)
    assert completed.returncode == ExitCode.USAGE


def test_bad_ids_and_endpoints_are_refused_by_the_config():
    for kwargs in ({"worker_id": "has space"}, {"worker_id": ""}, {"job_id": "é"},
                   {"endpoint": "http://x"}, {"threads": 0}, {"heartbeat_interval_s": 0.0},
                   {"death_timeout_s": -1.0}):
        values: dict[str, Any] = {"endpoint": "ipc:///tmp/x", "worker_id": "w1", **kwargs}
        with pytest.raises(ValueError):
            WorkerConfig(**values)


def _write_keys(path: Path, data: dict[str, Any], *, mode: int = 0o600, as_msgpack: bool = False):
    raw = msgpack.packb(data) if as_msgpack else json.dumps(data).encode()
    path.write_bytes(raw)
    path.chmod(mode)


def test_credentials_file_rules(tmp_path):
    server_public, _ = zmq.curve_keypair()
    public, secret = zmq.curve_keypair()
    keys = {"server_public_key": server_public.decode(), "public_key": public.decode(),
            "secret_key": secret.decode()}
    path = tmp_path / "keys.json"
    _write_keys(path, keys)
    loaded = load_credentials(path)
    assert loaded.secret_key == secret and loaded.server_public_key == server_public
    assert secret.decode() not in repr(loaded)

    packed = tmp_path / "keys.msgpack"
    raw_keys = {name: zmq.utils.z85.decode(value.encode()) for name, value in keys.items()}
    _write_keys(packed, raw_keys, as_msgpack=True)
    assert load_credentials(packed) == loaded

    _write_keys(path, keys, mode=0o640)
    with pytest.raises(CredentialsError, match="chmod 600"):
        load_credentials(path)
    _write_keys(path, {**keys, "public_key": zmq.curve_keypair()[0].decode()})
    with pytest.raises(CredentialsError, match="does not belong"):
        load_credentials(path)
    _write_keys(path, {**keys, "secret_key": "short"})
    with pytest.raises(CredentialsError, match="secret_key"):
        load_credentials(path)
    link = tmp_path / "link.json"
    link.symlink_to(packed)
    with pytest.raises(CredentialsError):
        load_credentials(link)
    with pytest.raises(CredentialsError, match="cannot open"):
        load_credentials(tmp_path / "missing.json")


def test_the_daemons_credentials_files_are_what_the_worker_reads(tmp_path):
    from cistemd.manager.keys import generate_keypair, write_credentials_file

    server, client = generate_keypair(), generate_keypair()
    path = write_credentials_file(tmp_path / "w1.credentials", server_public=server.public,
                                  client=client, endpoint="tcp://127.0.0.1:5555")
    loaded = load_credentials(path)
    assert loaded.server_public_key == server.public
    assert (loaded.public_key, loaded.secret_key) == (client.public, client.secret)


def test_unsafe_credentials_file_exits_77(tmp_path, start_worker):
    path = tmp_path / "keys.json"
    public, secret = zmq.curve_keypair()
    _write_keys(path, {"server_public_key": public.decode(), "public_key": public.decode(),
                       "secret_key": secret.decode()}, mode=0o644)
    worker = start_worker(extra=["--credentials-file", str(path)])
    assert worker.wait(15) == ExitCode.CREDENTIALS
    assert "chmod 600" in worker.log_text()


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_curve_worker_talks_to_the_right_server_only(tmp_path, endpoint, start_worker):
    server_public, server_secret = zmq.curve_keypair()
    public, secret = zmq.curve_keypair()
    path = tmp_path / "keys.json"
    _write_keys(path, {"server_public_key": server_public.decode(),
                       "public_key": public.decode(), "secret_key": secret.decode()})
    broker = FakeBroker(endpoint, curve_secret=server_secret)
    try:
        worker = start_worker("w-curve", extra=["--credentials-file", str(path)])
        worker_cmdline = Path(f"/proc/{worker.popen.pid}/cmdline").read_bytes()
        assert secret not in worker_cmdline
        broker.expect("worker_hello")
    finally:
        broker.close()

    _, impostor_secret = zmq.curve_keypair()
    impostor = FakeBroker(endpoint, curve_secret=impostor_secret)
    try:
        worker = start_worker("w-wrong", death_timeout=1.5,
                              extra=["--credentials-file", str(path)])
        impostor.pump(1.0)
        assert not impostor.received  # the handshake fails: nothing gets through
        assert worker.wait(15) == ExitCode.DAEMON_GONE
    finally:
        impostor.close()
