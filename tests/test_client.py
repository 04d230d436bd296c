"""The Python client: every operation, errors, timeouts, and the event subscription."""

from __future__ import annotations

import threading
import time

import daemon_fixtures as fx
import pytest
import zmq

from cistemd import protocol
from cistemd.cli.commands.run import parse_parameters
from cistemd.client import (
    Client,
    DaemonRequestError,
    DaemonTimeout,
    find_project,
)
from cistemd.errors import InvalidInputError

# fixtures of daemon_fixtures used here
home = fx.home
daemon = fx.daemon


def test_operations_against_a_daemon(daemon, tmp_path):
    project = tmp_path / "proj"
    with daemon.client() as client:
        assert client.ping() < 1.0
        created = client.create_project(project, name="")
        assert created["name"] == "proj" and created["counts"]["movies"] == 0
        assert client.open_project(project)["path"] == str(project)
        assert client.project_info(project)["counts"]["movies"] == 0
        with pytest.raises(DaemonRequestError) as raised:
            client.create_project(project)
        assert raised.value.code == "project_error"
        job_id = client.submit(project, "selftest", {"tasks": 3, "sleep": 0}, profile="local:1")
        record = client.wait_for_job(job_id, timeout=30)
        assert record["state"] == "completed" and record["tasks"] == {"completed": 3}
        assert record["parameters"]["tasks"] == 3 and record["parameters"]["sleep"] == 0.0
        assert record["profile"] == "local:1"
        assert [job["job_id"] for job in client.jobs()] == [job_id]
        assert client.jobs(states=["failed"]) == []
        page, total = client.jobs_page(project=project, limit=1)
        assert total == 1 and page[0]["project"] == str(project)
        log = client.job_log(job_id, limit=2)
        assert len(log["events"]) == 2 and log["more"]
        events = client.job_events(job_id)
        assert events[0]["payload"]["state"] == "queued"
        assert events[-1]["payload"] == {
            "state": "completed",
            "old": "running",
            "reason": "all 3 tasks completed",
            "tasks": {"completed": 3},
        }
        ids = [event["event_id"] for event in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        status = client.status()
        assert status["projects"] == [str(project)] and status["jobs"] == {"completed": 1}
        for bad, code in (
            (lambda: client.job("nope"), "no_such_job"),
            (lambda: client.submit(project, "selftest", {"tasks": -1}), "invalid_input"),
            (lambda: client.submit(project, "selftest", {"bogus": 1}), "invalid_input"),
            (lambda: client.submit(project, "no_action"), "invalid_input"),
            (lambda: client.submit(project, "selftest", profile="nonexistent"), "invalid_input"),
            (lambda: client.submit(tmp_path / "missing", "selftest"), "project_error"),
            (lambda: client.request("project_open", {"path": "relative/path"}), "invalid_input"),
        ):
            with pytest.raises(DaemonRequestError) as raised:
                bad()
            assert raised.value.code == code, raised.value


def test_subscription_replays_history_then_follows_live_events(daemon, tmp_path):
    project = tmp_path / "proj"
    with daemon.client() as client:
        client.create_project(project)
        first = client.submit(project, "selftest", {"tasks": 2, "sleep": 0}, profile="local:1")
        client.wait_for_job(first, timeout=30)
        history = client.job_events(first)
        assert client.events(job_id=first) == history
        assert client.events(history[1]["event_id"], job_id=first) == history[2:]
        with client.subscribe() as stream:
            replayed = [stream.get(timeout=1.0) for _ in history]
            assert [e["event_id"] for e in replayed] == [e["event_id"] for e in history]
            second = client.submit(project, "selftest", {"tasks": 2, "sleep": 0}, profile="local:1")
            seen = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                event = stream.get(timeout=1.0)
                if event is None:
                    continue
                seen.append(event)
                if event["kind"] == "state" and event["payload"]["state"] == "completed":
                    break
        assert {e["job_id"] for e in seen} == {second}
        live_ids = [e["event_id"] for e in seen]
        assert live_ids == sorted(live_ids) and len(set(live_ids)) == len(live_ids)
        stored = [e["event_id"] for e in client.job_events(second)]
        assert set(live_ids) <= set(stored)
        with client.subscribe(since_event_id=history[-1]["event_id"], job_id=first) as stream:
            assert stream.get(timeout=0.3) is None  # nothing after the end of that job


def test_timeout_and_stale_replies_with_a_silent_server(tmp_path):
    context = zmq.Context()
    server = context.socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/fake.ipc"
    server.bind(endpoint)
    requests: list[protocol.Message] = []

    def answer_late() -> None:
        # answer the first request only after the client gave up, then the second at once
        identity, frame = server.recv_multipart()
        requests.append(protocol.decode(frame, direction=protocol.Direction.CLIENT_TO_DAEMON))
        identity2, frame2 = server.recv_multipart()
        second = protocol.decode(frame2, direction=protocol.Direction.CLIENT_TO_DAEMON)
        for request, ident in ((requests[0], identity), (second, identity2)):
            reply = protocol.new_message("pong", parent=request)
            server.send_multipart([ident, protocol.encode(reply)])

    thread = threading.Thread(target=answer_late)
    thread.start()
    try:
        with Client(tmp_path / "home", endpoint=endpoint, timeout=0.3) as client:
            with pytest.raises(DaemonTimeout, match="did not answer a ping"):
                client.ping()
            assert client.ping(timeout=5.0) < 5.0  # the late pong is not taken for this one
    finally:
        thread.join(timeout=10)
        server.close()
        context.term()


def test_parse_run_parameters():
    parameters, options = parse_parameters(
        ["--tasks", "5", "--sleep=0.5", "--poison", "-1", "--crash-mode", "sigkill", "--json",
         "--profile", "local:2", "--dry"]
    )  # fmt: skip
    assert parameters == {
        "tasks": "5",
        "sleep": "0.5",
        "poison": "-1",
        "crash_mode": "sigkill",
        "dry": "yes",
    }
    assert options == {"json": "yes", "profile": "local:2"}
    with pytest.raises(InvalidInputError):
        parse_parameters(["stray"])
    with pytest.raises(InvalidInputError):
        parse_parameters(["--tasks", "1", "--tasks", "2"])


def test_find_project(tmp_path):
    from cistemd.project import Project

    with Project.create(tmp_path / "alpha"):
        pass
    assert find_project(tmp_path / "alpha" / "Assets" / "Movies") == str(tmp_path / "alpha")
    assert find_project(tmp_path / "alpha") == str(tmp_path / "alpha")
    assert find_project(tmp_path) is None
