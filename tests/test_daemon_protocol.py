"""Hostile input on the daemon's sockets: answered with errors, counted, never harmful."""

from __future__ import annotations

import random
import struct
import time

import daemon_fixtures as fx
import msgpack
import pytest
import zmq
from daemon_fixtures import process_alive, read_db, rss_bytes, wait_until

from cistemd import protocol

# fixtures of daemon_fixtures used here
home = fx.home
daemon = fx.daemon


def _envelope(msg_type: str, content: object, *, version: int = protocol.PROTOCOL_VERSION) -> dict:
    return {
        "header": {
            "msg_id": "m1",
            "msg_type": msg_type,
            "version": version,
            "date": "2024-05-01T12:00:00.000000Z",
            "sender": "flood",
        },
        "parent_header": {},
        "content": content,
    }


def hostile_frames(rng: random.Random) -> list[tuple[str, list[bytes]]]:
    """One of each kind of bad message; the flood cycles through them."""
    valid = protocol.encode(protocol.new_message("ping"))
    deep: bytes = b"\x91" * 5000 + b"\xc0"  # 5000 nested one-element arrays
    kinds: list[tuple[str, list[bytes]]] = [
        ("random", [rng.randbytes(rng.randint(1, 300))]),
        ("empty", [b""]),
        ("truncated", [valid[: rng.randint(1, len(valid) - 1)]]),
        ("huge_array", [b"\xdd" + struct.pack(">I", 2**31) + b"\x00" * 8]),
        ("huge_map", [b"\xdf" + struct.pack(">I", 2**31 - 1)]),
        ("huge_str", [b"\xdb" + struct.pack(">I", 2**31) + b"x"]),
        ("deep", [deep]),
        ("ext", [msgpack.packb(msgpack.ExtType(5, b"boom"))]),
        ("not_a_map", [msgpack.packb([1, 2, 3])]),
        ("wrong_types", [msgpack.packb(_envelope("job_show", {"job_id": 12345}))]),
        ("missing_field", [msgpack.packb(_envelope("job_submit", {"action": "selftest"}))]),
        ("unknown_verb", [msgpack.packb(_envelope("frobnicate", {}))]),
        ("wrong_direction", [msgpack.packb(_envelope("pong", {}))]),
        ("worker_verb", [msgpack.packb(_envelope("task_result", {"task_id": "1"}))]),
        ("bad_version", [msgpack.packb(_envelope("ping", {}, version=99))]),
        ("nan", [msgpack.packb(_envelope("jobs_list", {"limit": float("nan")}))]),
        ("three_frames", [valid, valid, valid]),
        ("oversize", [b"\xc4" * (protocol.MAX_FRAME_BYTES + 1000)]),
        ("error_message", [msgpack.packb(_envelope("error", {"code": "x", "reason": "y"}))]),
    ]
    return kinds


def flood(daemon, home, project, count: int) -> dict:
    rng = random.Random(1234)
    context = zmq.Context()
    attacker = context.socket(zmq.DEALER)
    attacker.setsockopt(zmq.LINGER, 0)
    attacker.setsockopt(zmq.SNDHWM, 100_000)
    attacker.connect(home.client_endpoint)
    worker_side = context.socket(zmq.DEALER)
    worker_side.setsockopt(zmq.LINGER, 0)
    worker_side.connect(home.workers_endpoint)
    replies: dict[str, int] = {}
    try:
        with daemon.client(timeout=5.0) as client:
            jobs_before = read_db(project, "SELECT COUNT(*), MAX(JOB_ID) FROM CISTEMD_JOBS")
            for _ in range(200):  # warm up before measuring memory
                attacker.send_multipart(hostile_frames(rng)[0][1])
            time.sleep(0.5)
            rss_before = rss_bytes(daemon.pid)
            ping_worst = 0.0
            sent = 0
            while sent < count:
                for _kind, frames in hostile_frames(rng):
                    target = worker_side if sent % 7 == 0 else attacker
                    target.send_multipart(frames)
                    sent += 1
                    if sent % 250 == 0:
                        ping_worst = max(ping_worst, client.ping(timeout=5.0))
                        _drain(attacker, replies)
                    if sent >= count:
                        break
            # a ping behind the flood on the same connection: when it is answered,
            # the daemon has read everything the attacker sent
            attacker.send(protocol.encode(protocol.new_message("ping")))
            _drain(attacker, replies, until_pong=True)
            status = client.status()
            assert client.ping() < 1.0
        rss_after = rss_bytes(daemon.pid)
        jobs_after = read_db(project, "SELECT COUNT(*), MAX(JOB_ID) FROM CISTEMD_JOBS")
    finally:
        attacker.close()
        worker_side.close()
        context.term()
    return {
        "replies": replies,
        "status": status,
        "rss_growth": rss_after - rss_before,
        "jobs": (jobs_before, jobs_after),
        "ping_worst": ping_worst,
    }


def _drain(sock: zmq.Socket, replies: dict[str, int], *, until_pong: bool = False) -> None:
    deadline = time.monotonic() + (60.0 if until_pong else 0.0)
    while True:
        if not sock.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
            assert not until_pong, "the ping behind the flood was not answered"
            return
        frame = sock.recv()
        message = protocol.decode(frame, direction=protocol.Direction.DAEMON_TO_CLIENT)
        if message.msg_type == "pong" and until_pong:
            return
        key = message.content.get("code", message.msg_type)
        replies[key] = replies.get(key, 0) + 1


def _check(outcome: dict, daemon, count: int) -> None:
    assert process_alive(daemon.pid)
    assert outcome["rss_growth"] < 50 * 2**20, outcome["rss_growth"]
    before, after = outcome["jobs"]
    assert before == after  # no job was added or changed by the flood
    errors = outcome["status"]["protocol_errors"]
    assert sum(errors.values()) >= count * 0.8, errors
    for code in ("undecodable", "too_large", "too_deep", "unknown_type", "wrong_direction",
                 "schema", "bad_envelope", "version_mismatch", "frame_too_large"):  # fmt: skip
        assert errors.get(code, 0) > 0, (code, errors)
    replies = outcome["replies"]
    assert "pong" not in replies and "error" not in replies  # only error codes come back
    assert sum(replies.values()) >= count * 0.5, replies
    assert "internal" not in replies and "internal" not in errors


@pytest.fixture
def project(daemon, tmp_path):
    path = tmp_path / "proj"
    with daemon.client() as client:
        client.create_project(path)
        job_id = client.submit(path, "selftest", {"tasks": 2, "sleep": 0}, profile="local:1")
        client.wait_for_job(job_id, timeout=30)
    return path


def test_flood_of_malformed_messages(daemon, home, project):
    count = 1500
    outcome = flood(daemon, home, project, count)
    _check(outcome, daemon, count)
    assert "internal error" not in daemon.log()


@pytest.mark.slow
def test_flood_of_ten_thousand_malformed_messages(daemon, home, project):
    count = 10_000
    outcome = flood(daemon, home, project, count)
    _check(outcome, daemon, count)
    print(
        f"\n10,000 hostile messages: RSS growth {outcome['rss_growth'] / 2**20:.1f} MiB, "
        f"worst ping {1000 * outcome['ping_worst']:.1f} ms"
    )


def test_error_messages_are_never_answered(daemon, home):
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(home.client_endpoint)
    try:
        error = protocol.encode(protocol.error_message("whatever", "a client sending an error"))
        for _ in range(20):
            sock.send(error)
        sock.send(protocol.encode(protocol.new_message("ping")))
        wait_until(lambda: sock.poll(0) != 0, 5)
        frames = []
        while sock.poll(300):
            frames.append(sock.recv())
        types = [protocol.decode(f, direction=protocol.Direction.DAEMON_TO_CLIENT).msg_type
                 for f in frames]  # fmt: skip
        assert types == ["pong"]
    finally:
        sock.close()
        context.term()
    with daemon.client() as client:
        assert client.status()["protocol_errors"].get("wrong_direction", 0) >= 20


def test_unknown_worker_gets_nothing_and_hello_for_unknown_job_is_refused(daemon, home):
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, b"intruder")
    sock.connect(home.workers_endpoint)
    try:
        sock.send(protocol.encode(protocol.new_message("task_request")))
        result = {"task_id": "1", "attempt": 1, "result": {"forged": True}}
        sock.send(protocol.encode(protocol.new_message("task_result", result)))
        assert not sock.poll(500)  # silence: it must say hello first
        hello = protocol.new_message(
            "worker_hello",
            {"worker_id": "intruder", "job_id": "77", "host": "h", "pid": 1,
             "protocol_version": protocol.PROTOCOL_VERSION, "threads": 1},
        )  # fmt: skip
        sock.send(protocol.encode(hello))
        assert sock.poll(5000)
        reply = protocol.decode(sock.recv(), direction=protocol.Direction.DAEMON_TO_WORKER)
        assert reply.msg_type == "error" and reply.content["code"] == "no_such_job"
        assert reply.is_reply_to(hello)
    finally:
        sock.close()
        context.term()


def _exchange(home, messages: list[protocol.Message], n_replies: int) -> list[protocol.Message]:
    """Send ``messages`` back to back on one connection; return the replies in arrival order."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(home.client_endpoint)
    try:
        for message in messages:
            sock.send(protocol.encode(message))
        replies = []
        while len(replies) < n_replies and sock.poll(60_000):
            replies.append(protocol.decode(sock.recv(),
                                           direction=protocol.Direction.DAEMON_TO_CLIENT))
        return replies
    finally:
        sock.close()
        context.term()


def test_previews_are_drawn_without_holding_up_other_requests(daemon, home, project):
    # Ten previews of a 4096² float32 micrograph take the daemon ~0.5-1 s to read and
    # shrink; a ping from another client sent meanwhile must not wait for them.
    import numpy as np

    from cistemd.io import mrc
    from cistemd.manager import client_ops

    big = project / "Assets" / "big.mrc"
    big.parent.mkdir(parents=True, exist_ok=True)
    mrc.write(big, np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32),
              voxel_size_angstroms=1.1)
    requests = [
        protocol.new_message("image_preview", {
            "project": str(project), "source": "file", "asset_id": 0, "path": str(big),
            "which": "image", "max_size": 128,
        })
        for _ in range(10)
    ]
    context = zmq.Context()
    viewer = context.socket(zmq.DEALER)
    other = context.socket(zmq.DEALER)
    try:
        for sock in (viewer, other):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(home.client_endpoint)
        for request in requests:
            viewer.send(protocol.encode(request))
        time.sleep(0.05)
        sent_at = time.monotonic()
        other.send(protocol.encode(protocol.new_message("ping")))
        assert other.poll(60_000)
        latency = time.monotonic() - sent_at
        other.recv()
        replies = []
        while len(replies) < len(requests) and viewer.poll(60_000):
            replies.append(protocol.decode(viewer.recv(),
                                           direction=protocol.Direction.DAEMON_TO_CLIENT))
    finally:
        viewer.close()
        other.close()
        context.term()
    # One picture, drawn here under the same load, for scale: held up behind the
    # queued previews, the pong would take several of them.
    start = time.monotonic()
    client_ops.render_preview(str(big), "2d", max_size=128)
    one_picture = time.monotonic() - start
    assert latency < max(0.05, 1.5 * one_picture), (latency, one_picture)
    picture = replies[-1].content
    assert replies[-1].msg_type == "image_reply"
    assert (picture["width"], picture["height"]) == (128, 128)
    assert picture["original_width"] == 4096 and len(picture["pixels"]) == 128 * 128
    assert replies[-1].parent_header.msg_id == requests[-1].header.msg_id

    # A damaged file: a clear error naming it, in answer to that request; the daemon stays up.
    broken = project / "Assets" / "broken.mrc"
    broken.write_bytes(big.read_bytes()[:2048])
    bad = protocol.new_message("image_preview", {
        "project": str(project), "source": "file", "asset_id": 0, "path": str(broken),
        "which": "image", "max_size": 64,
    })
    (error,) = _exchange(home, [bad], 1)
    assert error.msg_type == "error" and "broken.mrc" in error.content["reason"]
    assert error.parent_header.msg_id == bad.header.msg_id
    with daemon.client() as client:
        assert client.ping() >= 0
