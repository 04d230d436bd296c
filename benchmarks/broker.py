"""Broker figures: no-op tasks per second, dispatch latency, client replies under load.

Starts a real ``cistemd serve`` in a temporary ``CISTEM_HOME`` and measures

0. **reference**: the ceiling of this machine, measured in the same run: a
   bare ZeroMQ ROUTER process echoing msgpack maps to two DEALER processes
   that keep ``--prefetch`` messages in flight each (no validation, no
   state, no database): round trips per second. Rates below are also given
   as a fraction of it, so figures from a noisy machine stay comparable;
1. **throughput with real workers**: a ``selftest`` job of ``--tasks`` tasks
   that do nothing (``sleep 0``; each still writes its small trace file) on
   two local workers (``--profile local:2``, which prefetch): tasks per
   second from the first to the last recorded result (the results' own
   timestamps in the DB);
2. **broker throughput and dispatch latency**: the same job served by two
   protocol workers (separate processes) that do no work at all and
   prefetch like real ones (the launched processes of the job's profile
   just sleep): tasks per second, and the dispatch latency -- the time from
   a worker's ``task_request`` or ``task_result`` to the ``task_assign`` it
   brings (which includes the daemon's commit of the result), p50 / p99;
3. **client replies under load**: while a ``--big``-task job runs on two real
   workers, a client sends ``ping``, ``job_show`` and ``status_request`` in a
   loop: reply time p50 / p99 / max of each.

Prints figures; never fails on a time. Run::

    .venv/bin/python benchmarks/broker.py [--tasks 20000] [--big 100000] [--skip-big]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import zmq

from cistemd import protocol
from cistemd.client import Client, ClientError
from cistemd.manager.home import CistemHome

NOOP = {"sleep": 0, "work": "noop"}  # a task that does nothing: the broker alone is timed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def start_daemon(home: CistemHome, log: Path) -> subprocess.Popen[bytes]:
    profile = os.environ.get("CISTEMD_BENCH_PROFILE")  # write a cProfile of the daemon here
    prefix = ["-m", "cProfile", "-o", profile] if profile else []
    argv = [sys.executable, *prefix, "-m", "cistemd.cli.daemon", "--home", str(home.root), "serve"]
    with open(log, "ab") as handle:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with Client(home, timeout=1.0) as client:
                client.ping()
            return proc
        except ClientError:
            time.sleep(0.05)
    raise SystemExit(f"daemon did not start; see {log}")


def recorded_rate(project: Path, job_id: str) -> tuple[int, float]:
    """Results recorded and their rate, from the first to the last result's timestamp."""
    connection = sqlite3.connect(f"{(project / (project.name + '.db')).as_uri()}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "SELECT MIN(RECORDED_AT), MAX(RECORDED_AT), COUNT(*) FROM CISTEMD_RESULTS "
            "WHERE JOB_ID = ?",
            (int(job_id),),
        ).fetchone()
    finally:
        connection.close()
    first, last, count = rows

    def parse(text: str) -> float:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    span = max(1e-9, parse(last) - parse(first))
    return int(count), (count - 1) / span


PREFETCH = 64  # what `python -m cistemd.worker` declares by default


def echo_server(endpoint: str, messages: int) -> None:
    """The reference's ROUTER: echo ``messages`` msgpack maps back, decoded and re-packed."""
    import msgpack

    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    try:
        for _ in range(messages):
            identity, frame = sock.recv_multipart()
            sock.send_multipart([identity, msgpack.packb(msgpack.unpackb(frame))])
    finally:
        sock.close()
        context.term()


def echo_client(endpoint: str, messages: int, window: int) -> None:
    """The reference's DEALER: keep ``window`` maps in flight until ``messages`` came back."""
    import msgpack

    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    body = protocol.new_message(
        "task_result", {"task_id": "0", "attempt": 1, "result": {}}
    ).to_dict()
    sent = received = 0
    try:
        while sent < min(window, messages):
            sock.send(msgpack.packb(body))
            sent += 1
        while received < messages:
            msgpack.unpackb(sock.recv())
            received += 1
            if sent < messages:
                sock.send(msgpack.packb(body))
                sent += 1
    finally:
        sock.close()
        context.term()


def reference_rate(root: Path, messages: int) -> float:
    """Round trips per second of a bare msgpack echo with two windowed clients."""
    endpoint = f"ipc://{root / 'echo.sock'}"
    spawn = multiprocessing.get_context("spawn")
    server = spawn.Process(target=echo_server, args=(endpoint, 2 * messages))
    server.start()
    clients = [
        spawn.Process(target=echo_client, args=(endpoint, messages, PREFETCH)) for _ in range(2)
    ]
    time.sleep(0.3)  # let the server bind (the clients would wait anyway)
    started = time.perf_counter()
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    wall = time.perf_counter() - started
    server.join()
    rate = 2 * messages / wall
    print(
        f"[0] reference (bare ROUTER echo of msgpack maps, 2 DEALERs × {PREFETCH} in flight): "
        f"{rate:,.0f} round trips/s"
    )
    return rate


def real_workers(client: Client, project: Path, tasks: int, reference: float) -> None:
    started = time.monotonic()
    job_id = client.submit(project, "selftest", NOOP | {"tasks": tasks}, profile="local:2")
    record = client.wait_for_job(job_id, timeout=3600, interval=0.5)
    wall = time.monotonic() - started
    count, rate = recorded_rate(project, job_id)
    print(
        f"[1] real workers (2 × selftest, work noop): {count} tasks {record['state']}, "
        f"{rate:,.0f} tasks/s between first and last result = {rate / reference:.2f} × "
        f"reference ({wall:.1f} s from submit to end)"
    )


def protocol_worker(endpoint: str, job_id: str, worker_id: str) -> list[float]:
    """A worker process that speaks the protocol and does nothing: pure broker load.

    It is a load generator, not a protocol implementation under test: it
    decodes assignments with plain msgpack and answers each with a prepared
    ``task_result``. Like a real worker it declares :data:`PREFETCH`, asks
    once and is then topped up by the daemon. Returns the dispatch latencies:
    from each ``task_request`` or ``task_result`` sent to the next
    ``task_assign`` received, in order.
    """
    from collections import deque

    import msgpack

    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, worker_id.encode())
    sock.connect(endpoint)
    hello = {
        "worker_id": worker_id,
        "job_id": job_id,
        "host": "bench",
        "pid": os.getpid(),
        "protocol_version": protocol.PROTOCOL_VERSION,
        "threads": 1,
        "prefetch": PREFETCH,
    }
    sock.send(protocol.encode(protocol.new_message("worker_hello", hello)))
    request = protocol.encode(protocol.new_message("task_request"))
    template = protocol.new_message(
        "task_result", {"task_id": "0", "attempt": 1, "result": {}}
    ).to_dict()
    latencies: list[float] = []
    asked: deque[float] = deque([time.perf_counter()])
    sock.send(request)
    try:
        while sock.poll(30_000):
            message = msgpack.unpackb(sock.recv())
            kind = message["header"]["msg_type"]
            if kind == "worker_shutdown":
                break
            if kind != "task_assign":
                continue
            now = time.perf_counter()
            if asked:
                latencies.append(now - asked.popleft())
            content = message["content"]
            template["header"]["msg_id"] = os.urandom(12).hex()
            template["content"] = {
                "task_id": content["task_id"],
                "attempt": content["attempt"],
                "result": {},
            }
            sock.send(msgpack.packb(template))
            asked.append(time.perf_counter())
    finally:
        sock.close()
        context.term()
    return latencies


def protocol_workers(
    client: Client, home: CistemHome, project: Path, tasks: int, reference: float
) -> None:
    profiles = home.root / "profiles"
    profiles.mkdir(exist_ok=True)
    (profiles / "idle.json").write_text(
        json.dumps(
            {
                "name": "idle",
                "commands": [
                    {"command_to_run": "exec sleep 3600 # $command", "number_of_copies": 2}
                ],
            }
        )
    )
    job_id = client.submit(project, "selftest", NOOP | {"tasks": tasks}, profile="idle")
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(2) as pool:
        started = time.perf_counter()
        runs = pool.starmap(
            protocol_worker, [(home.workers_endpoint, job_id, f"bench-{i}") for i in range(2)]
        )
        wall = time.perf_counter() - started
    record = client.wait_for_job(job_id, timeout=60)
    latencies = [value for run in runs for value in run]
    count, rate = recorded_rate(project, job_id)
    print(
        f"[2] broker only (2 protocol workers, no work): {count} tasks {record['state']}, "
        f"{rate:,.0f} tasks/s = {rate / reference:.2f} × reference "
        f"({len(latencies) / wall:,.0f}/s wall); dispatch "
        f"latency p50 {1000 * percentile(latencies, 0.5):.2f} ms, "
        f"p99 {1000 * percentile(latencies, 0.99):.2f} ms"
    )


def replies_under_load(client: Client, project: Path, tasks: int) -> None:
    started = time.monotonic()
    job_id = client.submit(project, "selftest", NOOP | {"tasks": tasks}, profile="local:2")
    submitted = time.monotonic() - started
    timings: dict[str, list[float]] = {"ping": [], "job_show": [], "status": []}
    calls = {
        "ping": lambda: client.ping(),
        "job_show": lambda: client.job(job_id),
        "status": lambda: client.status(),
    }
    state = "queued"
    while state not in ("completed", "failed", "cancelled"):
        for name, call in calls.items():
            begin = time.perf_counter()
            result = call()
            timings[name].append(time.perf_counter() - begin)
            if name == "job_show":
                state = result["state"]  # type: ignore[index]
        time.sleep(0.01)
    wall = time.monotonic() - started
    count, rate = recorded_rate(project, job_id)
    print(
        f"[3] {tasks:,}-task job on 2 real workers: {count} results, {rate:,.0f} tasks/s, "
        f"{wall:.0f} s (submit acknowledged in {submitted:.2f} s); client replies meanwhile:"
    )
    for name, values in timings.items():
        print(
            f"      {name:<9} n={len(values):<6} p50 {1000 * percentile(values, 0.5):6.2f} ms   "
            f"p99 {1000 * percentile(values, 0.99):6.2f} ms   max {1000 * max(values):6.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks of runs 1 and 2")
    parser.add_argument("--big", type=int, default=100_000, help="tasks of run 3")
    parser.add_argument("--skip-big", action="store_true", help="skip run 3")
    parser.add_argument("--dir", default=None, help="where to put the temporary home")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cistemd-bench-", dir=args.dir))
    home = CistemHome.at(root / "home")
    print(f"cistemd {sys.version.split()[0]}, {os.cpu_count()} CPUs, home {root / 'home'}")
    reference = reference_rate(root, max(args.tasks, 20_000))
    proc = start_daemon(home, root / "daemon.log")
    try:
        with Client(home, timeout=120) as client:
            project = root / "bench"
            client.create_project(project)
            real_workers(client, project, args.tasks, reference)
            protocol_workers(client, home, project, args.tasks, reference)
            if not args.skip_big:
                replies_under_load(client, project, args.big)
        print(f"    daemon RSS at the end: {rss_mib(proc.pid):.0f} MiB")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()
