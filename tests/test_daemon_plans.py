"""Multi-stage plans through an in-process daemon: advance, record, and a restart mid-plan.

The daemon runs in a thread of the test process (so a test action can be
registered); the job's profile launches processes that only sleep, and
protocol-speaking worker threads of the test do the tasks.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import zmq
from daemon_fixtures import read_db, wait_until

from cistemd import protocol
from cistemd.actions.base import ACTION_MODULES
from cistemd.client import Client, ClientError
from cistemd.manager.daemon import Daemon, DaemonConfig
from cistemd.manager.home import CistemHome


class InProcessDaemon:
    def __init__(self, home: CistemHome) -> None:
        self.home = home
        self.daemon: Daemon | None = None
        self.thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    def start(self) -> None:
        self.daemon = Daemon(self.home, DaemonConfig(heartbeat_interval_s=0.25))

        def serve() -> None:
            try:
                assert self.daemon is not None
                self.daemon.serve(install_signal_handlers=False)
            except BaseException as exc:  # reported by the test
                self.failure = exc

        self.thread = threading.Thread(target=serve)
        self.thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with Client(self.home, timeout=1.0) as client:
                    client.ping()
                return
            except ClientError:
                assert self.failure is None, self.failure
                time.sleep(0.05)
        raise AssertionError("in-process daemon did not start")

    def stop(self) -> None:
        if self.daemon is not None and self.thread is not None:
            self.daemon.request_stop("test")
            self.thread.join(timeout=30)
            assert not self.thread.is_alive()
            assert self.failure is None, self.failure
        self.daemon = self.thread = None


class ProtocolWorker(threading.Thread):
    """Speaks the worker protocol and runs the test action's tasks itself."""

    def __init__(self, home: CistemHome, job_id: str, worker_id: str) -> None:
        super().__init__()
        self.home, self.job_id, self.worker_id = home, job_id, worker_id
        self.done: list[str] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        context = zmq.Context()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, self.worker_id.encode())
        sock.connect(self.home.workers_endpoint)

        def send(msg_type: str, content: dict | None = None) -> None:
            sock.send(protocol.encode(protocol.new_message(msg_type, content)))

        try:
            send("worker_hello", {"worker_id": self.worker_id, "job_id": self.job_id,
                                  "host": "test", "pid": 1, "threads": 1,
                                  "protocol_version": protocol.PROTOCOL_VERSION})  # fmt: skip
            send("task_request")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not self.stopped.is_set():
                if not sock.poll(100):
                    send("heartbeat")
                    continue
                message = protocol.decode(
                    sock.recv(), direction=protocol.Direction.DAEMON_TO_WORKER
                )
                if message.msg_type == "worker_shutdown":
                    return
                if message.msg_type != "task_assign":
                    continue
                content = message.content
                value = content["parameters"]["payload"]["value"]
                time.sleep(0.1)  # a task takes a moment, so a test can stop the daemon mid-plan
                send("task_result", {"task_id": content["task_id"], "attempt": content["attempt"],
                                     "result": {"value": value + 1}})  # fmt: skip
                self.done.append(content["task_id"])
                send("task_request")
        finally:
            sock.close()
            context.term()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setitem(ACTION_MODULES, "threestages", "stage_action")
    home = CistemHome.at(tmp_path / "home")
    home.prepare()
    (home.root / "profiles").mkdir()
    (home.root / "profiles" / "idle.json").write_text(
        json.dumps({"name": "idle", "commands": [
            {"command_to_run": "exec sleep 60 # $command", "number_of_copies": 2}]})
    )  # fmt: skip
    return home


@pytest.fixture
def runner(home):
    made = InProcessDaemon(home)
    try:
        yield made
    finally:
        made.stop()


def workers(home, job_id: str, prefix: str) -> list[ProtocolWorker]:
    started = [ProtocolWorker(home, job_id, f"{prefix}-{i}") for i in range(2)]
    for worker in started:
        worker.start()
    return started


def stop_workers(started: list[ProtocolWorker]) -> None:
    for worker in started:
        worker.stopped.set()
        worker.join(timeout=30)


def test_three_stage_plan_survives_a_restart_mid_plan(home, runner, tmp_path):
    runner.start()
    project = tmp_path / "proj"
    with Client(home) as client:
        client.create_project(project)
        job_id = client.submit(project, "threestages", {"width": 3}, profile="idle")
    first = workers(home, job_id, "a")
    try:
        wait_until(lambda: read_db(project, "SELECT COUNT(*) FROM CISTEMD_STAGES")[0][0] >= 2, 30)
    finally:
        runner.stop()  # a graceful stop between stages: the plan is in the database
        stop_workers(first)
    assert read_db(project, "SELECT STATE FROM CISTEMD_JOBS") == [("running",)]
    runner.start()
    second = workers(home, job_id, "b")
    try:
        with Client(home) as client:
            record = client.wait_for_job(job_id, timeout=60)
    finally:
        stop_workers(second)
    assert record["state"] == "completed", record
    assert record["tasks"] == {"completed": 9}
    stages = read_db(project, "SELECT STAGE_INDEX, N_TASKS, FINAL FROM CISTEMD_STAGES ORDER BY 1")
    assert stages == [(0, 3, 0), (1, 3, 0), (2, 3, 0)]
    plan = json.loads(read_db(project, "SELECT PLAN_STATE FROM CISTEMD_JOBS")[0][0])
    assert plan["done"] is True and len(plan["history"]) == 3
    lines = (project / "recorded.txt").read_text().split("\n")[:-1]
    keys = sorted(line.split()[1] for line in lines)
    assert keys == sorted(f"r{r}-{i}" for r in range(3) for i in range(3))  # each once
    assert {line.split()[2] for line in lines if line.split()[1].startswith("r2")} == {"3"}
    counts = read_db(project, "SELECT COUNT(*), COUNT(DISTINCT TASK_ID) FROM CISTEMD_RESULTS")
    assert counts == [(9, 9)]


def test_a_plan_that_raises_fails_the_job(home, runner, tmp_path):
    runner.start()
    project = tmp_path / "proj"
    with Client(home) as client:
        client.create_project(project)
        job_id = client.submit(project, "threestages", {"width": 2, "explode_at": 1},
                               profile="idle")  # fmt: skip
        started = workers(home, job_id, "w")
        try:
            record = client.wait_for_job(job_id, timeout=60)
        finally:
            stop_workers(started)
    assert record["state"] == "failed"
    assert "plan failed" in record["message"] and "explodes after round 1" in record["message"]
    assert record["tasks"] == {"completed": 4}


def test_late_result_of_a_silent_worker_is_rejected_after_reassignment(home, runner, tmp_path):
    """A worker that went silent (as under SIGSTOP) loses its task; its late result is refused."""
    runner.start()
    project = tmp_path / "proj"
    context = zmq.Context()
    sockets: list[zmq.Socket] = []

    def connect(worker_id: str) -> zmq.Socket:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, worker_id.encode())
        sock.connect(home.workers_endpoint)
        sockets.append(sock)
        return sock

    def send(sock: zmq.Socket, msg_type: str, content: dict | None = None) -> None:
        sock.send(protocol.encode(protocol.new_message(msg_type, content)))

    def hello(sock: zmq.Socket, worker_id: str, job_id: str) -> None:
        send(sock, "worker_hello", {"worker_id": worker_id, "job_id": job_id, "host": "test",
                                    "pid": 1, "threads": 1,
                                    "protocol_version": protocol.PROTOCOL_VERSION})  # fmt: skip
        send(sock, "task_request")

    def wait_for(sock: zmq.Socket, msg_type: str, keepalive: bool) -> protocol.Message:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if sock.poll(100):
                message = protocol.decode(
                    sock.recv(), direction=protocol.Direction.DAEMON_TO_WORKER
                )
                if message.msg_type == msg_type:
                    return message
            elif keepalive:
                send(sock, "heartbeat")
        raise AssertionError(f"no {msg_type}")

    try:
        with Client(home) as client:
            client.create_project(project)
            job_id = client.submit(project, "threestages", {"width": 1}, profile="idle")
            silent = connect("silent")
            hello(silent, "silent", job_id)
            first = wait_for(silent, "task_assign", keepalive=False)
            task_id = first.content["task_id"]
            assert first.content["attempt"] == 1
            other = connect("other")
            hello(other, "other", job_id)
            second = wait_for(other, "task_assign", keepalive=True)  # after "silent" is dead
            assert (second.content["task_id"], second.content["attempt"]) == (task_id, 2)
            send(other, "task_result", {"task_id": task_id, "attempt": 2, "result": {"value": 1}})
            wait_for(silent, "worker_shutdown", keepalive=False)  # it wakes up: told to stop
            send(silent, "task_result", {"task_id": task_id, "attempt": 1, "result": {"value": 99}})
            wait_until(
                lambda: any(e["payload"].get("rejected") == "stale attempt"
                            for e in client.job_events(job_id)),
                10,
            )  # fmt: skip
            events = client.job_events(job_id)
    finally:
        for sock in sockets:
            sock.close()
        context.term()
    rows = read_db(project, "SELECT ATTEMPT, WORKER_ID, RESULT FROM CISTEMD_RESULTS")
    assert rows == [(2, "other", '{"value":1}')]
    dead = [e for e in events if e["payload"].get("worker_state") == "dead"]
    assert [e["payload"]["worker_id"] for e in dead] == ["silent"]
    assert "missed 3 heartbeats" in dead[0]["payload"]["message"]
