"""Tests of the wire protocol: round trips, schemas, limits and hostile input."""

from __future__ import annotations

import ast
import inspect
import logging
import math
import random
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cistemd import protocol as P
from cistemd.errors import CistemError
from cistemd.protocol import (
    DEFAULT_LIMITS,
    PROTOCOL_ERROR_CODES,
    PROTOCOL_VERSION,
    REGISTRY,
    Direction,
    Header,
    Limits,
    Message,
    ProtocolError,
    ProtocolStats,
    decode,
    encode,
    error_message,
    join_router_frames,
    new_message,
    split_router_frames,
)

# ---------------------------------------------------------------- helpers


def _wire(
    content: Any = None,
    *,
    msg_type: str = "ping",
    header: Any = None,
    parent: Any = None,
    **header_changes: Any,
) -> dict[str, Any]:
    """A wire map built by hand, so tests can break any part of it."""
    if header is None:
        header = {
            "msg_id": "a1b2",
            "msg_type": msg_type,
            "version": PROTOCOL_VERSION,
            "date": "2024-05-01T12:00:00.000001Z",
            "sender": "test",
        }
        header.update(header_changes)
    return {
        "header": header,
        "parent_header": {} if parent is None else parent,
        "content": {} if content is None else dict(content),
    }


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _reject(frame: Any, **kwargs: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(frame, **kwargs)
    assert info.value.code in PROTOCOL_ERROR_CODES
    assert info.value.code != "internal", info.value.reason
    return info.value


def _valid_frames() -> list[bytes]:
    return [encode(new_message(t, spec.example)) for t, spec in sorted(REGISTRY.items())]


ENVELOPE_HEAD = b"\x83\xa6header" + _pack(_wire()["header"]) + b"\xadparent_header\x80\xa7content"


def _best_time(function: Callable[[], object], repeat: int = 5) -> float:
    """Best CPU time of ``repeat`` calls: bounds the work, not the machine's load."""
    best = math.inf
    for _ in range(repeat):
        start = time.process_time()
        function()
        best = min(best, time.process_time() - start)
    return best


# ---------------------------------------------------------------- registry and round trips


@pytest.mark.parametrize("msg_type", sorted(REGISTRY))
def test_every_type_round_trips_its_example(msg_type: str) -> None:
    spec = REGISTRY[msg_type]
    message = new_message(msg_type, spec.example, sender="tester")
    frame = encode(message)
    decoded = decode(frame)
    assert decoded == message
    assert decoded.msg_type == msg_type
    assert decoded.spec is spec
    assert decoded.header.version == PROTOCOL_VERSION
    assert decoded.header.sender == "tester"
    # Every field of the example survives; absent optional ones get their default.
    for key, value in spec.example.items():
        assert decoded.content[key] == value
    assert set(decoded.content) == set(spec.content.fields)
    assert len(frame) <= DEFAULT_LIMITS.max_frame_bytes


@pytest.mark.parametrize("msg_type", sorted(REGISTRY))
def test_every_type_decodes_on_its_own_direction_only(msg_type: str) -> None:
    spec = REGISTRY[msg_type]
    frame = encode(new_message(msg_type, spec.example))
    for direction in Direction:
        if direction in spec.directions:
            assert decode(frame, direction=direction).msg_type == msg_type
        else:
            assert _reject(frame, direction=direction).code == "wrong_direction"


def test_registry_is_consistent() -> None:
    answers = {
        Direction.CLIENT_TO_DAEMON: Direction.DAEMON_TO_CLIENT,
        Direction.WORKER_TO_DAEMON: Direction.DAEMON_TO_WORKER,
    }
    for msg_type, spec in REGISTRY.items():
        assert spec.msg_type == msg_type
        assert spec.directions, msg_type
        assert spec.doc.strip(), msg_type
        for reply in spec.replies:
            assert reply in REGISTRY, (msg_type, reply)
            for direction in spec.directions:
                assert answers[direction] in REGISTRY[reply].directions, (msg_type, reply)
        # Any valid content fits the decoder's depth limit (envelope map + content).
        assert 1 + spec.content.depth() <= DEFAULT_LIMITS.max_depth, msg_type
    assert "error" in REGISTRY and "event" in REGISTRY


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        REGISTRY["bogus"] = REGISTRY["ping"]  # type: ignore[index]


def test_module_docstring_documents_every_type() -> None:
    doc = P.__doc__ or ""
    missing = [t for t in REGISTRY if f"``{t}``" not in doc]
    assert not missing, f"add these to the message spec in the docstring: {missing}"


def test_defining_a_type_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        P._define("ping", [Direction.CLIENT_TO_DAEMON], {}, example={}, doc="again")
    assert REGISTRY["ping"].doc == "Is the daemon alive?"


def test_optional_fields_are_filled_with_fresh_defaults() -> None:
    first = new_message("job_submit", {"project": "/p", "action": "ctffind"})
    second = new_message("job_submit", {"project": "/p", "action": "ctffind"})
    assert first.content["parameters"] == {} and first.content["profile"] == ""
    first.content["parameters"]["x"] = 1
    assert second.content["parameters"] == {}
    assert REGISTRY["job_submit"].content.fields["parameters"].default == {}  # type: ignore[union-attr]
    decoded = decode(_pack(_wire({"job_id": "j1"}, msg_type="job_log")))
    assert decoded.content == {"job_id": "j1", "since_event_id": 0, "limit": 500}


def test_float_fields_accept_ints() -> None:
    decoded = decode(
        _pack(_wire({"heartbeat_interval_s": 2, "liveness": 3}, msg_type="worker_welcome"))
    )
    assert decoded.content["heartbeat_interval_s"] == 2.0
    assert isinstance(decoded.content["heartbeat_interval_s"], float)


def test_decode_accepts_bytearray_and_memoryview() -> None:
    frame = encode(new_message("ping"))
    assert decode(bytearray(frame)).msg_type == "ping"
    assert decode(memoryview(frame)).msg_type == "ping"


def test_header_fields_are_fresh_and_well_formed() -> None:
    first, second = new_message("ping"), new_message("ping")
    assert first.msg_id != second.msg_id
    assert P.Timestamp().check(first.header.date, "date") == first.header.date
    assert first.header.date.endswith("Z")


# ---------------------------------------------------------------- replies


def test_reply_links_to_its_request_through_parent_header() -> None:
    request = decode(encode(new_message("job_show", {"job_id": "j7"}, sender="tui")))
    reply = new_message("job_reply", REGISTRY["job_reply"].example, parent=request)
    decoded = decode(encode(reply))
    assert decoded.parent_header == request.header
    assert decoded.is_reply_to(request)
    assert not request.is_reply_to(decoded)
    assert decode(encode(new_message("ping"))).parent_header is None


def test_error_reply_to_a_bad_request_names_the_request() -> None:
    frame = _pack(_wire({"job_id": 7}, msg_type="job_show", msg_id="req-1"))
    error = _reject(frame)
    assert error.code == "schema"
    assert error.header is not None and error.header.msg_id == "req-1"
    reply = decode(encode(error_message(error.code, error.reason, parent=error.header)))
    assert reply.msg_type == "error"
    assert reply.content == {"code": "schema", "reason": error.reason}
    assert reply.parent_header is not None and reply.parent_header.msg_id == "req-1"


def test_error_message_clips_long_reasons_and_checks_codes() -> None:
    message = error_message("no_such_job", "x" * 10_000)
    assert len(message.content["reason"]) == 4096
    decode(encode(message))
    with pytest.raises(ProtocolError) as info:
        error_message("Not A Code", "reason")
    assert info.value.code == "schema"
    assert "content.code" in info.value.reason


def test_protocol_error_is_a_cistem_error() -> None:
    error = ProtocolError("content.x: bad", code="schema")
    assert isinstance(error, CistemError)
    assert error.code == "schema" and error.reason == "content.x: bad"
    assert error.header is None and error.identity is None


# ---------------------------------------------------------------- every error code


def _unknown_type() -> bytes:
    return _pack(_wire(msg_type="frobnicate"))


ERROR_CASES: dict[str, tuple[Callable[[], Any], str, dict[str, Any]]] = {
    # code: (frame factory, fragment of the reason, decode kwargs)
    "frame_too_large": (lambda: b"\x00" * (DEFAULT_LIMITS.max_frame_bytes + 1), "limit", {}),
    "undecodable": (lambda: b"\xc1", "never used", {}),
    "too_deep": (lambda: b"\x91" * 100 + b"\xc0", "nested deeper than 16", {}),
    "too_large": (lambda: b"\xdb\xff\xff\xff\xff", "declares 4294967295 bytes", {}),
    "bad_envelope": (lambda: _pack({"header": {}, "content": {}}), "exactly the keys", {}),
    "version_mismatch": (lambda: _pack(_wire(version=99)), "version 99", {}),
    "unknown_type": (_unknown_type, "'frobnicate'", {}),
    "wrong_direction": (
        lambda: _pack(_wire(REGISTRY["task_result"].example, msg_type="task_result")),
        "client->daemon",
        {"direction": Direction.CLIENT_TO_DAEMON},
    ),
    "schema": (
        lambda: _pack(
            _wire({"task_id": "t1", "attempt": "x", "fraction": 0.5}, msg_type="task_progress")
        ),
        "content.attempt: expected int in [1, 1000000], got str 'x'",
        {},
    ),
}


@pytest.mark.parametrize("code", sorted(ERROR_CASES))
def test_every_peer_error_code_is_reachable(code: str) -> None:
    make, fragment, kwargs = ERROR_CASES[code]
    stats = ProtocolStats()
    error = _reject(make(), stats=stats, **kwargs)
    assert error.code == code
    assert fragment in error.reason
    assert stats.errors == {code: 1}
    # The reason always fits in an error reply.
    decode(encode(error_message(error.code, error.reason, parent=error.header)))


def test_error_cases_cover_every_code() -> None:
    assert set(ERROR_CASES) | {"internal"} == PROTOCOL_ERROR_CODES


def test_internal_errors_are_contained_logged_and_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(frame: bytes, limits: Limits) -> None:
        raise RuntimeError("boom")

    frame = encode(new_message("ping"))
    monkeypatch.setattr(P, "_scan", broken)
    stats = ProtocolStats()
    with caplog.at_level(logging.ERROR, logger="cistemd.protocol"):
        with pytest.raises(ProtocolError) as info:
            decode(frame, stats=stats)
    assert info.value.code == "internal"
    assert "RuntimeError" in info.value.reason
    assert stats.errors == {"internal": 1}
    assert any("internal error" in record.message for record in caplog.records)


@pytest.mark.parametrize(
    ("content", "msg_type", "fragment"),
    [
        ({"job_id": ""}, "job_show", "content.job_id: expected id"),
        ({"job_id": "j1", "extra": 1}, "job_show", "content.extra: unknown field"),
        ({}, "job_show", "content.job_id: required field is missing"),
        ({"job_id": b"j1"}, "job_show", "content.job_id: expected id, got bytes"),
        ({"task_id": "t", "attempt": True, "fraction": 0.5}, "task_progress", "got bool True"),
        (
            {"task_id": "t", "attempt": 1, "fraction": 1.5},
            "task_progress",
            "content.fraction: expected finite float in [0.0, 1.0], got 1.5",
        ),
        ({"task_id": "t", "attempt": 1, "fraction": math.nan}, "task_progress", "got nan"),
        ({"task_id": "t", "attempt": 1, "fraction": math.inf}, "task_progress", "got inf"),
        (
            {"project": "/p", "action": "ctffind", "parameters": {"a": [1, math.nan]}},
            "job_submit",
            "content.parameters.a[1]: expected a finite float",
        ),
        (
            {"project": "/p", "action": "ctffind", "parameters": {"a": [[[[[[[1]]]]]]]}},
            "job_submit",
            "nested deeper than 6",
        ),
        (
            {"project": "/p", "action": "ctffind", "parameters": {"a": b"raw"}},
            "job_submit",
            "content.parameters.a: expected a JSON-like value",
        ),
        (
            {"project": "/p\x00", "action": "ctffind"},
            "job_submit",
            "content.project: expected path",
        ),
        (
            {"project": "/p", "action": "CTFfind"},
            "job_submit",
            "content.action: expected snake_case",
        ),
        (
            {"heartbeat_interval_s": 0, "liveness": 3},
            "worker_welcome",
            "content.heartbeat_interval_s: expected finite float > 0.0",
        ),
        (
            {"jobs": [{"job_id": "j"}], "total": 1},
            "jobs_reply",
            "content.jobs[0].project: required field is missing",
        ),
        (
            {
                "event_id": 1,
                "job_id": "j",
                "kind": "gossip",
                "payload": {},
                "time": "2024-05-01T00:00:00Z",
            },
            "event",
            "content.kind: expected one of 'state', 'progress', 'log', got str 'gossip'",
        ),
        (
            {
                "event_id": 1,
                "job_id": "j",
                "kind": "log",
                "payload": {},
                "time": "2024-13-01T00:00:00Z",
            },
            "event",
            "content.time: expected a real date",
        ),
        (
            {"event_id": 1, "job_id": "j", "kind": "log", "payload": {}, "time": "yesterday"},
            "event",
            "content.time: expected ISO-8601",
        ),
        (
            {"code": "x", "reason": "r" * 5000},
            "error",
            "content.reason: expected str of at most 4096",
        ),
        (
            {
                "jobs": {"running": -1},
                "pid": 1,
                "version": "v",
                "protocol_version": 1,
                "uptime_s": 0,
                "projects": [],
                "workers": 0,
            },
            "status_reply",
            "content.jobs.running: expected int ≥ 0, got -1",
        ),
    ],
)
def test_schema_errors_name_the_field(
    content: dict[str, Any], msg_type: str, fragment: str
) -> None:
    error = _reject(_pack(_wire(content, msg_type=msg_type)))
    assert error.code == "schema"
    assert fragment in error.reason, error.reason
    # Outgoing messages are checked by the same rules.
    with pytest.raises(ProtocolError) as info:
        new_message(msg_type, content)
    assert info.value.code == "schema"
    assert info.value.reason == error.reason


@pytest.mark.parametrize(
    ("wire", "fragment"),
    [
        ([1, 2, 3], "a message is a map"),
        ({"header": {}, "parent_header": {}, "content": {}, "x": 1}, "exactly the keys"),
        (_wire(header=[]), "header: expected header"),
        (_wire(msg_id=""), "header.msg_id: expected id"),
        (_wire(msg_id="a b"), "header.msg_id: expected id"),
        (_wire(msg_type="Ping"), "header.msg_type: expected snake_case name"),
        (_wire(version="1"), "header.version: expected int"),
        (_wire(version=True), "header.version: expected int"),
        (_wire(date="2024-05-01 12:00:00"), "header.date: expected ISO-8601"),
        (_wire(sender="tab\there"), "header.sender: expected printable ASCII"),
        (_wire(colour="blue"), "header.colour: unknown field"),
        (_wire(parent=[]), "parent_header: expected header"),
        (_wire(parent={"msg_id": "x"}), "parent_header.msg_type: required field is missing"),
    ],
)
def test_envelope_errors(wire: Any, fragment: str) -> None:
    error = _reject(_pack(wire))
    assert error.code == "bad_envelope"
    assert fragment in error.reason, error.reason


def test_bad_parent_header_still_reports_the_header() -> None:
    error = _reject(_pack(_wire(parent={"msg_id": "x"}, msg_id="me")))
    assert error.header is not None and error.header.msg_id == "me"


def test_version_mismatch_keeps_a_readable_header_for_the_reply() -> None:
    error = _reject(_pack(_wire(version=2, msg_id="future")))
    assert error.code == "version_mismatch"
    assert error.header is not None and error.header.msg_id == "future"
    assert "run the same cistemd release" in error.reason
    # A future header we cannot read is still a version mismatch, without a header.
    error = _reject(_pack(_wire(header={"version": 2, "id": 5})))
    assert error.code == "version_mismatch" and error.header is None


def test_parent_header_of_another_version_is_accepted() -> None:
    old = _wire(msg_id="old", version=0)["header"]
    decoded = decode(
        _pack(
            _wire(msg_type="error", parent=old, content={"code": "version_mismatch", "reason": "r"})
        )
    )
    assert decoded.parent_header == Header(**old)


def test_unknown_type_keeps_the_header() -> None:
    error = _reject(_unknown_type())
    assert error.header is not None and error.header.msg_type == "frobnicate"


# ---------------------------------------------------------------- hostile frames

# A valid envelope around a hostile content, and bare hostile frames.
HOSTILE: dict[str, tuple[bytes, str]] = {
    "huge array32 header": (b"\xdd\xff\xff\xff\xff", "too_large"),
    "huge map32 header": (b"\xdf\xff\xff\xff\xff", "too_large"),
    "huge array16 in content": (ENVELOPE_HEAD + b"\xdc\xff\xff", "too_large"),
    "array16 longer than the frame": (
        ENVELOPE_HEAD + b"\xdc\x10\x00" + b"\x00" * 100,
        "undecodable",
    ),
    "map16 longer than the frame": (
        ENVELOPE_HEAD + b"\xde\x00\x40" + b"\xa1a\x00" * 40,
        "undecodable",
    ),
    "huge str32 header": (b"\xdb\xff\xff\xff\xff", "too_large"),
    "huge bin32 header": (b"\xc6\xff\xff\xff\xff", "too_large"),
    "str32 longer than the frame": (b"\xdb\x00\x00\x10\x00abc", "undecodable"),
    "preallocation bomb (nested array16)": (b"\xdc\xff\xff" * 1000, "undecodable"),
    "preallocation bomb in content": (ENVELOPE_HEAD + b"\xdc\x00\x10" * 20_000, "too_deep"),
    "million-deep arrays": (b"\x91" * 1_000_000 + b"\xc0", "too_deep"),
    "million-deep maps": (b"\x81\xa1k" * 300_000 + b"\xc0", "too_deep"),
    "deep inside content": (ENVELOPE_HEAD + b"\x81\xa1a" + b"\x91" * 50 + b"\xc0", "too_deep"),
    "fixext": (b"\xd4\x01\x00", "undecodable"),
    "ext8 in content": (ENVELOPE_HEAD + b"\x81\xa1a\xc7\x01\x05\x00", "undecodable"),
    "msgpack timestamp": (ENVELOPE_HEAD + b"\x81\xa1a\xd6\xff\x00\x00\x00\x00", "undecodable"),
    "int map key": (b"\x81\x01\x01", "undecodable"),
    "bin map key": (b"\x81\xc4\x01a\x01", "undecodable"),
    "nil map key": (b"\x81\xc0\x01", "undecodable"),
    "array map key": (b"\x81\x90\x01", "undecodable"),
    "non-str key in content": (ENVELOPE_HEAD + b"\x81\x01\x01", "undecodable"),
    "reserved byte 0xc1": (b"\xc1", "undecodable"),
    "empty frame": (b"", "undecodable"),
    "trailing garbage": (encode(new_message("ping")) + b"\x00", "undecodable"),
    "truncated": (encode(new_message("ping"))[:-3], "undecodable"),
    "invalid utf-8": (
        _pack(_wire(msg_type="ping"))[:-1].replace(b"\xa4ping", b"\xa4p\xffng") + b"\x80",
        "undecodable",
    ),
    "duplicate header key": (
        b"\x83\xa6header\x86"
        + _pack(_wire(msg_type="task_result")["header"])[1:]
        + b"\xa8msg_type\xa4ping\xadparent_header\x80\xa7content\x80",
        "undecodable",
    ),
    "65k tiny items": (ENVELOPE_HEAD + b"\xdc\xff\xff" + b"\x00" * 65_535, "too_large"),
    "61k tiny items that pass the scan": (
        ENVELOPE_HEAD + b"\xdc\xf0\x00" + b"\x00" * 61_440,
        "schema",
    ),
    "20k small maps that pass the scan": (
        ENVELOPE_HEAD + b"\xdc\x50\x00" + b"\x81\xa1a\xc0" * 20_480,
        "schema",
    ),
    "60k-entry parameters map": (
        _pack(_wire({"project": "/p", "action": "a"}, msg_type="job_submit")).replace(
            b"\x82\xa7project", b"\x83\xa7project"
        )
        + b"\xaaparameters\xde\x75\x30"
        + b"".join(_pack(f"k{i}") + b"\x00" for i in range(30_000)),
        "schema",
    ),
    "deep inside parameters": (
        _pack(
            _wire({"project": "/p", "action": "a", "parameters": {"x": 0}}, msg_type="job_submit")
        )[:-1]
        + b"\x91" * 12
        + b"\x00",
        "schema",
    ),
    "many small maps": (ENVELOPE_HEAD + b"\xdc\x80\x00" + b"\x81\xa1a\xc0" * 32_768, "too_large"),
    "NaN where a float is expected": (
        _pack(
            _wire({"task_id": "t", "attempt": 1, "fraction": math.nan}, msg_type="task_progress")
        ),
        "schema",
    ),
    "float32 NaN in parameters": (
        _pack(
            _wire({"project": "/p", "action": "a", "parameters": {"x": 1.5}}, msg_type="job_submit")
        ).replace(b"\xcb" + struct.pack(">d", 1.5), b"\xca\x7f\xc0\x00\x00"),
        "schema",
    ),
    "bytes where str expected": (_pack(_wire({"job_id": b"j1"}, msg_type="job_show")), "schema"),
    "unknown verb": (_pack(_wire(msg_type="rm_rf")), "unknown_type"),
    "bare scalar": (b"\x01", "bad_envelope"),
    "oversize frame": (b"\x80" * (DEFAULT_LIMITS.max_frame_bytes + 1), "frame_too_large"),
    "1 MiB of random bytes": (random.Random(7).randbytes(DEFAULT_LIMITS.max_frame_bytes), ""),
    "1 MiB str": (
        ENVELOPE_HEAD + b"\x81\xa1a\xdb" + (2**20 - 200).to_bytes(4, "big") + b"a" * (2**20 - 200),
        "too_large",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_frame_is_rejected_fast_and_small(name: str) -> None:
    frame, code = HOSTILE[name]
    error = _reject(frame)
    if code:
        assert error.code == code, error.reason
    assert _best_time(lambda: _reject(frame)) < 0.05
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        _reject(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The frame itself may be copied once (memoryview/bytearray input); nothing else big.
    assert peak < len(frame) + 4 * 2**20, f"{name}: peak {peak} bytes"


def test_msgpack_alone_would_preallocate_the_bomb() -> None:
    """Why the pre-scan exists: the C unpacker allocates declared lengths up front."""
    bomb = b"\xdc\xff\xff" * 1000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError):
            msgpack.unpackb(bomb, max_array_len=65_535)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak > 50 * 2**20
    assert _reject(bomb).code == "undecodable"


def test_largest_valid_messages_decode_quickly() -> None:
    event = dict(REGISTRY["event"].example)
    big = new_message(
        "subscribed",
        {"pub_endpoint": "ipc:///x", "events": [event] * 2000, "last_event_id": 42, "more": True},
    )
    frame = encode(big)
    assert decode(frame) == big
    assert _best_time(lambda: decode(frame)) < 0.25


def test_item_and_length_limits_are_exact() -> None:
    limits = Limits(max_items=10, max_container_len=4, max_str_bytes=3, max_depth=3)
    P._scan(_pack([1, 2, 3, 4]), limits)
    P._scan(_pack([[1, 2, 3], [4, 5]]), limits)  # 1 + 2 + 5 = 8 objects
    P._scan(_pack("abc"), limits)
    P._scan(_pack([[[1]]]), limits)
    P._scan(_pack([[[]]]), limits)
    P._scan(_pack([1, 2, 3, {"a": {}}]), limits)
    for obj, code in [
        ([1, 2, 3, 4, 5], "too_large"),
        ([[1, 2, 3], [4, 5, 6, 7], 8], "too_large"),  # 11 objects
        ("abcd", "too_large"),
        ([[[[1]]]], "too_deep"),
        ([[[[]]]], "too_deep"),  # an empty container is a level too
        ([[[{}]]], "too_deep"),
        ({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}, "too_large"),
        ({"a": 1, 2: 3}, "undecodable"),
    ]:
        with pytest.raises(ProtocolError) as info:
            P._scan(_pack(obj), limits)
        assert info.value.code == code, obj


# ---------------------------------------------------------------- fuzzing

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _decode_only_protocol_errors(frame: bytes) -> None:
    start = time.process_time()
    try:
        message = decode(frame)
    except ProtocolError as error:
        assert error.code in PROTOCOL_ERROR_CODES - {"internal"}, error.reason
        assert error.reason
    else:
        assert isinstance(message, Message)
        encode(message)  # anything accepted can be sent back
    assert time.process_time() - start < 0.5


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(frame: bytes) -> None:
    _decode_only_protocol_errors(frame)


@st.composite
def _mutated_frame(draw: st.DrawFn) -> bytes:
    frames = _valid_frames()
    frame = bytearray(draw(st.sampled_from(frames)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
        index = draw(st.integers(0, max(len(frame) - 1, 0)))
        if op == "flip" and frame:
            frame[index] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and frame:
            frame[index] = draw(
                st.sampled_from(
                    [
                        0x00,
                        0x7F,
                        0x80,
                        0x90,
                        0xC0,
                        0xC1,
                        0xC4,
                        0xC7,
                        0xCB,
                        0xD4,
                        0xD9,
                        0xDC,
                        0xDD,
                        0xDE,
                        0xDF,
                        0xFF,
                    ]
                )
            )
        elif op == "insert":
            frame[index:index] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del frame[index : index + draw(st.integers(1, 8))]
        elif op == "truncate":
            del frame[index:]
        elif op == "splice":
            other = draw(st.sampled_from(frames))
            frame[index:] = other[draw(st.integers(0, len(other) - 1)) :]
    return bytes(frame)


@FUZZ
@given(_mutated_frame())
def test_fuzz_mutated_valid_frames(frame: bytes) -> None:
    _decode_only_protocol_errors(frame)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10) | st.integers(0, 5), children, max_size=5)
    ),
    max_leaves=40,
)


@FUZZ
@given(
    st.sampled_from(sorted(REGISTRY)),
    st.dictionaries(st.text(max_size=12), _json, max_size=6),
    st.booleans(),
)
def test_fuzz_random_content_for_every_type(
    msg_type: str, content: dict[str, Any], merge: bool
) -> None:
    if merge:
        content = {**REGISTRY[msg_type].example, **content}
    _decode_only_protocol_errors(_pack(_wire(content, msg_type=msg_type)))


@FUZZ
@given(_json)
def test_fuzz_random_envelopes(obj: Any) -> None:
    _decode_only_protocol_errors(_pack(obj))
    _decode_only_protocol_errors(_pack({"header": obj, "parent_header": obj, "content": obj}))


def _conforms(obj: Any, limits: Limits) -> bool:
    """Whether a value decoded by plain msgpack meets the scan's rules."""
    stack = [(obj, 1)]
    items = 0
    while stack:
        item, depth = stack.pop()
        items += 1
        if isinstance(item, msgpack.ExtType | msgpack.Timestamp):
            return False
        if (
            isinstance(item, str)
            and len(item.encode("utf-8", "surrogateescape")) > limits.max_str_bytes
        ):
            return False
        if isinstance(item, list | dict):
            if depth > limits.max_depth or len(item) > limits.max_container_len:
                return False
            if isinstance(item, dict):
                if not all(isinstance(key, str) for key in item):
                    return False
                stack.extend((value, depth + 1) for value in item.values())
                items += len(item)
            else:
                stack.extend((value, depth + 1) for value in item)
    return items <= limits.max_items


@FUZZ
@given(_mutated_frame())
def test_scan_agrees_with_msgpack(frame: bytes) -> None:
    """The pre-scan refuses exactly the frames msgpack cannot read or that break our rules."""
    limits = Limits(max_depth=8, max_items=200, max_container_len=50, max_str_bytes=64)
    try:
        P._scan(frame, limits)
        scan_ok = True
    except ProtocolError:
        scan_ok = False
    try:
        obj = msgpack.unpackb(
            frame, raw=False, unicode_errors="surrogateescape", strict_map_key=False
        )
        unpack_ok = True
    except (ValueError, TypeError, msgpack.UnpackException):
        unpack_ok = False
    if scan_ok:
        # Whatever the scan lets through, msgpack reads, and it meets the limits.
        assert unpack_ok and _conforms(obj, limits)
    elif unpack_ok and _conforms(obj, limits):
        # A readable, conforming frame is refused only if a map repeated a key
        # (the repeats collapsed in ``obj``, so _conforms could not see them).
        with pytest.raises(ValueError, match="repeats"):
            msgpack.unpackb(
                frame,
                raw=False,
                unicode_errors="surrogateescape",
                object_pairs_hook=P._pairs_to_dict,
            )


def test_ten_thousand_mutations_never_escape() -> None:
    rng = random.Random(1234)
    frames = _valid_frames()
    outcomes: dict[str, int] = {}
    for _ in range(10_000):
        frame = bytearray(rng.choice(frames))
        for _ in range(rng.randint(1, 3)):
            index = rng.randrange(len(frame)) if frame else 0
            choice = rng.random()
            if choice < 0.5 and frame:
                frame[index] = rng.randrange(256)
            elif choice < 0.7:
                del frame[index:]
            else:
                frame[index:index] = rng.randbytes(rng.randint(1, 6))
        try:
            decode(bytes(frame))
            outcome = "ok"
        except ProtocolError as error:
            outcome = error.code
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert "internal" not in outcomes
    assert sum(outcomes.values()) == 10_000
    assert len(outcomes) >= 4, outcomes  # the mutations reach several checks


def test_decode_refuses_non_bytes() -> None:
    for thing in ["text", 5, None, [b"x"], memoryview(b"abcd").cast("B", (2, 2))]:
        assert _reject(thing).code == "undecodable"


# ---------------------------------------------------------------- outgoing checks


def test_encode_checks_hand_built_messages() -> None:
    good = new_message("job_show", {"job_id": "j1"})
    bad_content = Message(good.header, None, {"job_id": 5})
    with pytest.raises(ProtocolError) as info:
        encode(bad_content)
    assert info.value.code == "schema"
    bad_header = Message(Header("id", "job_show", PROTOCOL_VERSION, "now"), None, {"job_id": "j"})
    with pytest.raises(ProtocolError) as info:
        encode(bad_header)
    assert info.value.code == "bad_envelope" and "header.date" in info.value.reason
    old = Message(Header("id", "ping", 0, good.header.date), None, {})
    with pytest.raises(ProtocolError) as info:
        encode(old)
    assert info.value.code == "version_mismatch"
    with pytest.raises(ProtocolError) as info:
        new_message("frobnicate")
    assert info.value.code == "unknown_type"
    with pytest.raises(ProtocolError) as info:
        new_message("ping", sender="é")
    assert info.value.code == "bad_envelope"


def test_encode_refuses_what_the_peer_would_refuse() -> None:
    def result_of(blob: str) -> Message:
        content = {"task_id": "t", "attempt": 1, "result": {"blob": blob}}
        return new_message("task_result", content)

    encode(result_of("x" * 200_000))
    cases = [
        (result_of("x" * DEFAULT_LIMITS.max_frame_bytes), DEFAULT_LIMITS, "frame_too_large"),
        (result_of("x" * (DEFAULT_LIMITS.max_str_bytes + 1)), DEFAULT_LIMITS, "too_large"),
        (
            new_message(
                "job_submit",
                {"project": "/p", "action": "a", "parameters": {"values": list(range(50))}},
            ),
            Limits(max_items=20),
            "too_large",
        ),
    ]
    for message, limits, code in cases:
        with pytest.raises(ProtocolError) as info:
            encode(message, limits=limits)
        assert info.value.code == code


def test_outgoing_values_that_msgpack_cannot_carry_are_schema_errors() -> None:
    numpy = pytest.importorskip("numpy")
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    shared: list[Any] = [0]
    for _ in range(5):
        shared = [shared] * 16  # 16**5 leaves if walked naively
    cases = {
        "numpy scalar": ({"x": numpy.int64(3)}, ".item()"),
        "cycle": ({"x": cyclic}, "nested deeper"),
        "shared sub-lists": ({"x": shared}, "more than 65536 items"),
        "huge int": ({"x": 2**70}, "64-bit"),
        "set": ({"x": {1, 2}}, "JSON-like"),
        "tuple": ({"x": (1, 2)}, "JSON-like"),
        "int key": ({"x": {1: 2}}, "map keys must be str"),
    }
    for name, (params, fragment) in cases.items():
        with pytest.raises(ProtocolError) as info:
            new_message("job_submit", {"project": "/p", "action": "a", "parameters": params})
        assert info.value.code == "schema", name
        assert fragment in info.value.reason, (name, info.value.reason)
    # A lone surrogate passes the str check but cannot be UTF-8 encoded.
    message = new_message("worker_shutdown", {"reason": "bad \ud800 text"})
    with pytest.raises(ProtocolError) as info:
        encode(message)
    assert info.value.code == "schema" and "cannot be packed" in info.value.reason


# ---------------------------------------------------------------- schema language


def test_schema_language_basics() -> None:
    schema = P.Schema(
        {
            "name": P.Str(min_len=1, max_len=5, pattern=r"[a-z]+"),
            "count": P.Opt(P.Int(min=0, max=9), 1),
            "ratio": P.Opt(P.Float(min=0.0, max=1.0, min_exclusive=True), 0.5),
            "flag": P.Opt(P.Bool(), False),
            "blob": P.Opt(P.Bytes(max_len=3), b""),
            "tags": P.Opt(P.List(P.Str(choices=("a", "b")), max_len=2), []),
            "sub": P.Opt(P.Schema({"x": P.Int()}), {"x": 0}),
        }
    )
    assert schema.check({"name": "ab"}, "c") == {
        "name": "ab",
        "count": 1,
        "ratio": 0.5,
        "flag": False,
        "blob": b"",
        "tags": [],
        "sub": {"x": 0},
    }
    assert schema.depth() == 2
    bad = [
        ({"name": "ABC"}, "c.name: expected str of 1 to 5 characters matching [a-z]+"),
        ({"name": "abcdef"}, "got a str of 6 characters"),
        ({"name": "a", "count": 10}, "c.count: expected int in [0, 9], got 10"),
        ({"name": "a", "ratio": 0}, "c.ratio: expected finite float > 0.0, ≤ 1.0, got 0.0"),
        ({"name": "a", "flag": 1}, "c.flag: expected bool, got int 1"),
        ({"name": "a", "blob": b"abcd"}, "c.blob: expected bytes of at most 3, got 4 bytes"),
        ({"name": "a", "tags": ["a", "c"]}, "c.tags[1]: expected one of 'a', 'b'"),
        ({"name": "a", "tags": ["a", "a", "a"]}, "c.tags: expected a list of 0 to 2 items"),
        ({"name": "a", "sub": {"x": "1"}}, "c.sub.x: expected int"),
        ({"name": "a", "weird key!": 1}, "c['weird key!']: unknown field"),
        ([], "c: expected map with fields name"),
    ]
    for value, fragment in bad:
        with pytest.raises(P._Invalid) as info:
            schema.check(value, "c")
        assert fragment in str(info.value), (value, str(info.value))


def test_schema_extra_allow_and_bad_declarations() -> None:
    loose = P.Schema({"a": P.Int()}, extra="allow", extra_depth=1)
    assert loose.check({"a": 1, "b": [1, 2]}, "c") == {"a": 1, "b": [1, 2]}
    with pytest.raises(P._Invalid, match="nested deeper than 1"):
        loose.check({"a": 1, "b": [[1]]}, "c")
    assert loose.depth() == 2
    with pytest.raises(ValueError, match="default of field"):
        P.Schema({"a": P.Opt(P.Int(min=1), 0)})
    with pytest.raises(ValueError, match="snake_case"):
        P.Schema({"Bad": P.Int()})
    strict_keys = P.Dict(P.Int(), key=P.Str(pattern="[a-z]+", what="lower-case key"), max_len=2)
    with pytest.raises(P._Invalid, match=r"c\.ABC \(key\): expected lower-case key"):
        strict_keys.check({"ABC": 1}, "c")
    with pytest.raises(P._Invalid, match="got 3 entries"):
        strict_keys.check({"a": 1, "b": 2, "c": 3}, "c")


def test_value_checks_deep_input_without_recursion() -> None:
    deep: Any = 0
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(P._Invalid, match="nested deeper than 6"):
        P.Value().check(deep, "v")
    assert P.Value(max_depth=3).check({"a": [1, {"b": None}]}, "v") == {"a": [1, {"b": None}]}


# ---------------------------------------------------------------- ROUTER frames


def test_router_frames_round_trip() -> None:
    payload = encode(new_message("ping"))
    frames = join_router_frames(b"peer-1", payload)
    assert frames == [b"peer-1", payload]
    assert split_router_frames(frames) == (b"peer-1", payload)
    assert split_router_frames([memoryview(b"id"), bytearray(b"x")]) == (b"id", b"x")  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("frames", "identity"),
    [
        ([], None),
        ([b"id"], b"id"),
        ([b"id", b"", b"payload"], b"id"),
        ([b"a", b"b", b"c", b"d"], b"a"),
    ],
)
def test_router_frame_count_errors(frames: list[bytes], identity: bytes | None) -> None:
    with pytest.raises(ProtocolError) as info:
        split_router_frames(frames)
    assert info.value.code == "bad_envelope"
    assert "DEALER" in info.value.reason
    assert info.value.identity == identity


def test_router_identity_bounds() -> None:
    for identity in [b"", b"x" * 256]:
        with pytest.raises(ProtocolError):
            split_router_frames([identity, b"payload"])
        with pytest.raises(ProtocolError):
            join_router_frames(identity, b"payload")
    with pytest.raises(ProtocolError):
        join_router_frames("peer", b"payload")  # type: ignore[arg-type]


def test_limits_transport_size_and_validation() -> None:
    assert DEFAULT_LIMITS.max_frame_bytes == P.MAX_FRAME_BYTES == 2**20
    assert DEFAULT_LIMITS.transport_max_bytes == 2**21
    for bad in [0, -1, 1.5, True]:
        with pytest.raises(ValueError, match="max_depth"):
            Limits(max_depth=bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- statistics


def test_stats_count_accepted_and_refused() -> None:
    stats = ProtocolStats(keep_last=2)
    decode(encode(new_message("ping")), stats=stats)
    decode(encode(new_message("ping")), stats=stats)
    for frame in [b"", b"\xc1", _unknown_type()]:
        _reject(frame, stats=stats)
    stats.record_error("schema", "content.x: bad")
    assert stats.accepted == {"ping": 2}
    assert stats.errors == {"undecodable": 2, "unknown_type": 1, "schema": 1}
    assert stats.total_errors == 4
    assert [code for code, _ in stats.recent_errors] == ["unknown_type", "schema"]
    snapshot = stats.snapshot()
    assert snapshot["errors"] == stats.errors
    # The snapshot is something a status_reply can carry.
    new_message(
        "status_reply", {**REGISTRY["status_reply"].example, "protocol_errors": snapshot["errors"]}
    )


def test_stats_are_thread_safe() -> None:
    stats = ProtocolStats()

    def work() -> None:
        for _ in range(2000):
            stats.record_error("schema")
            stats.record_ok("ping")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stats.errors == {"schema": 16_000}
    assert stats.accepted == {"ping": 16_000}


# ---------------------------------------------------------------- hygiene


def test_no_pickle_anywhere() -> None:
    source = inspect.getsource(P)
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Name):
            assert node.id not in {"eval", "exec", "__import__"}, node.id
    assert not imported & {"pickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"}
    assert "object_hook=" not in source and "ext_hook" not in source
    code = (
        "import sys, cistemd.protocol as p\n"
        "p.decode(p.encode(p.new_message('ping')))\n"
        "bad = sorted(m for m in ('pickle', '_pickle', 'shelve', 'dill', 'cloudpickle', 'zmq',"
        " 'numpy', 'textual') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


def test_struct_sanity_of_handmade_frames() -> None:
    # The hostile-frame table relies on these encodings of msgpack headers.
    assert _pack([0] * 65_535)[:3] == b"\xdc\xff\xff"
    assert _pack("a" * 70_000)[:5] == b"\xdb" + struct.pack(">I", 70_000)
    assert ENVELOPE_HEAD + b"\x80" == _pack(_wire())
