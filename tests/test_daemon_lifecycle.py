"""cistemd start/status/stop/serve, one daemon per home, private runtime dir and keys."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import daemon_fixtures as fx
import pytest
import zmq
from daemon_fixtures import process_alive, read_db, wait_until

from cistemd.client import Client, DaemonNotRunning, DaemonTimeout
from cistemd.manager.home import CistemHome, DaemonLock, DaemonRunningError, check_private_dir
from cistemd.manager.keys import (
    InsecureKeyError,
    authorize_public_key,
    ensure_server_keys,
    generate_keypair,
    load_keypair,
    read_credentials_file,
    write_credentials_file,
)

# fixtures of daemon_fixtures used here
home = fx.home
daemon = fx.daemon
make_daemon = fx.make_daemon


def cistemd(home: CistemHome, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "CISTEM_HOME": str(home.root)}
    return subprocess.run(
        [sys.executable, "-m", "cistemd.cli.daemon", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_start_status_stop(home):
    started = cistemd(home, "start", "--heartbeat-interval", "0.25")
    try:
        assert started.returncode == 0, started.stderr
        status = cistemd(home, "status", "--json")
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        pid = info["pid"]
        assert info["running"] is True
        assert pid == home.read_pid_file()
        # fully detached: not in our session, not a session leader, stdin /dev/null
        assert os.getsid(pid) != os.getsid(0)
        assert os.getsid(pid) != pid
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        assert os.readlink(f"/proc/{pid}/fd/2") == str(home.daemon_log)
        assert mode(home.run_dir) == 0o700
        assert mode(home.root) == 0o700
        for path in (home.client_socket, home.events_socket, home.workers_socket):
            assert stat.S_ISSOCK(os.lstat(path).st_mode)
        again = cistemd(home, "start")
        assert again.returncode == 1
        assert "already running" in again.stderr
        text = cistemd(home, "status")
        assert text.returncode == 0 and f"pid {pid}" in text.stdout
    finally:
        stopped = cistemd(home, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not process_alive(pid)
    assert not home.pid_file.exists()
    assert not home.client_socket.exists()
    status = cistemd(home, "status", "--json")
    assert status.returncode == 3
    assert json.loads(status.stdout)["running"] is False
    assert "cistemd stopped" in home.daemon_log.read_text()
    assert cistemd(home, "stop").returncode == 0  # nothing to stop is fine


def test_second_daemon_on_the_same_home_exits_nonzero_fast(daemon, home, tmp_path):
    started = time.monotonic()
    second = subprocess.run(
        daemon.argv(), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    elapsed = time.monotonic() - started
    assert second.returncode != 0
    assert elapsed < 2.0, elapsed
    assert "already running" in second.stderr and str(daemon.pid) in second.stderr
    with daemon.client() as client:  # the first one is untouched
        assert client.status()["pid"] == daemon.pid
    assert home.read_pid_file() == daemon.pid


def test_second_daemon_on_the_same_project_exits_nonzero(daemon, tmp_path):
    project = tmp_path / "proj"
    with daemon.client() as client:
        client.create_project(project)
    before = read_db(project, "SELECT COUNT(*) FROM CISTEMD_EVENTS")
    other_home = CistemHome.at(tmp_path / "other-home")
    other = fx.DaemonProcess(other_home, tmp_path / "other.log")
    started = time.monotonic()
    try:
        proc = subprocess.run(
            other.argv("--project", str(project)),
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    finally:
        other.cleanup()
    assert proc.returncode != 0
    assert time.monotonic() - started < 2.0
    assert f"pid {daemon.pid}" in proc.stderr  # names the holder
    assert read_db(project, "SELECT COUNT(*) FROM CISTEMD_EVENTS") == before
    with daemon.client() as client:
        assert client.project_info(project)["path"] == str(project)


def test_client_without_daemon_says_how_to_start_one(home):
    with pytest.raises(DaemonNotRunning) as raised:
        Client(home)
    assert f"CISTEM_HOME={home.root}" in str(raised.value)
    assert "cistemd start" in str(raised.value)


def test_runtime_dir_and_key_files_are_private(make_daemon, home):
    home.root.mkdir(mode=0o755)
    os.chmod(home.root, 0o755)  # a home that was too open is tightened
    make_daemon("--tcp-clients", f"tcp://127.0.0.1:{free_port()}").start()
    assert mode(home.root) == 0o700
    for directory in (home.run_dir, home.keys_dir, home.authorized_dir, home.logs_dir):
        assert mode(directory) == 0o700, directory
    for key_file in home.keys_dir.glob("server.key*"):
        assert mode(key_file) == 0o600, key_file
    assert {p.name for p in home.keys_dir.glob("server.key*")} == {
        "server.key",
        "server.key_secret",
    }


def test_daemon_refuses_a_world_readable_secret_key(make_daemon, home, tmp_path):
    home.prepare()
    ensure_server_keys(home.keys_dir)
    secret_file = home.keys_dir / "server.key_secret"
    os.chmod(secret_file, 0o644)
    process = make_daemon("--tcp-workers", f"tcp://127.0.0.1:{free_port()}")
    refused = subprocess.run(process.argv(), capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert str(secret_file) in refused.stderr
    assert f"chmod 600 {secret_file}" in refused.stderr
    assert not home.pid_file.exists()
    with pytest.raises(InsecureKeyError):
        load_keypair(secret_file)
    os.chmod(secret_file, 0o600)
    assert load_keypair(secret_file).secret is not None


def test_curve_endpoint_admits_only_allow_listed_keys(make_daemon, home, tmp_path):
    home.prepare()
    server = ensure_server_keys(home.keys_dir)
    allowed = generate_keypair()
    authorize_public_key(home.authorized_dir, "alice", allowed.public)
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    process = make_daemon("--tcp-clients", endpoint).start()
    project = tmp_path / "proj"
    with process.client() as client:
        client.create_project(project)
    jobs_before = read_db(project, "SELECT COUNT(*) FROM CISTEMD_JOBS")
    stranger = generate_keypair()
    refused_clients = [
        {},  # no key at all
        {  # a key not in the allow-list
            "server_public_key": server.public,
            "public_key": stranger.public,
            "secret_key": stranger.secret,
        },
        {  # an allowed key, but the wrong server key
            "server_public_key": generate_keypair().public,
            "public_key": allowed.public,
            "secret_key": allowed.secret,
        },
    ]
    for keys in refused_clients:
        with Client(home, endpoint=endpoint, timeout=1.0, **keys) as client:
            with pytest.raises(DaemonTimeout):
                client.submit(project, "selftest", {"tasks": 1}, profile="local:1")
    assert read_db(project, "SELECT COUNT(*) FROM CISTEMD_JOBS") == jobs_before
    with Client(
        home,
        endpoint=endpoint,
        timeout=5.0,
        server_public_key=server.public,
        public_key=allowed.public,
        secret_key=allowed.secret,
    ) as client:
        assert client.status()["pid"] == process.pid
    assert "refused a CURVE connection" in process.log()


def test_home_helpers(tmp_path):
    home = CistemHome.at(tmp_path / ("deep-" * 30) / "home")
    assert len(str(home.workers_socket)) <= 100  # long homes move the sockets under /tmp
    assert home.run_dir != home.root / "run"
    assert CistemHome.at(tmp_path / "h").run_dir == tmp_path / "h" / "run"
    home.prepare()
    assert mode(home.run_dir) == 0o700
    lock = DaemonLock(home)
    lock.acquire()
    try:
        home.write_pid_file()
        with pytest.raises(DaemonRunningError) as raised:
            DaemonLock(home).acquire()
        assert str(os.getpid()) in str(raised.value)
    finally:
        lock.release()
        home.remove_pid_file()
    DaemonLock(home).acquire()  # free again (released on purpose above)
    os.chmod(home.logs_dir, 0o755)
    check_private_dir(home.logs_dir)
    assert mode(home.logs_dir) == 0o700
    link = tmp_path / "link"
    link.symlink_to(home.logs_dir)
    with pytest.raises(Exception, match="symbolic link"):
        check_private_dir(link)
    home.remember_project("/data/a", open_=True)
    home.remember_project("/data/b", open_=True)
    home.remember_project("/data/a", open_=False)
    assert [(p["path"], p["open"]) for p in home.known_projects()] == [
        ("/data/b", True),
        ("/data/a", False),
    ]
    assert mode(home.projects_file) == 0o600


def test_credentials_file_is_private(tmp_path):
    keys = generate_keypair()
    path = write_credentials_file(
        tmp_path / "worker.cred",
        server_public=generate_keypair().public,
        client=keys,
        endpoint="tcp://10.0.0.1:5555",
    )
    assert mode(path) == 0o600
    assert read_credentials_file(path)["secret_key"] == keys.secret
    assert "hidden" in repr(keys) and keys.secret.decode() not in repr(keys)
    os.chmod(path, 0o640)
    with pytest.raises(InsecureKeyError, match="chmod 600"):
        read_credentials_file(path)


def test_zap_handler_is_polled_without_threads(tmp_path):
    """A ZAP request is answered from the socket the daemon polls (allow-listed key)."""
    from cistemd.manager.keys import ZapAllowList

    allowed = generate_keypair()
    (tmp_path / "authorized").mkdir()
    authorize_public_key(tmp_path / "authorized", "bob", allowed.public)
    context = zmq.Context()
    try:
        zap = ZapAllowList(context, tmp_path / "authorized")
        requester = context.socket(zmq.REQ)
        requester.setsockopt(zmq.LINGER, 0)
        requester.connect("inproc://zeromq.zap.01")
        raw = zmq.utils.z85.decode(allowed.public)
        for key, expected in ((raw, b"200"), (b"\0" * 32, b"400")):
            requester.send_multipart(
                [b"1.0", b"7", b"cistemd", b"127.0.0.1", b"", b"CURVE", key]
            )
            wait_until(lambda: zap.socket.poll(0) != 0, 5)
            zap.handle()
            reply = requester.recv_multipart()
            assert reply[:3] == [b"1.0", b"7", expected]
        requester.send_multipart([b"1.0", b"8", b"cistemd", b"127.0.0.1", b"", b"NULL"])
        wait_until(lambda: zap.socket.poll(0) != 0, 5)
        zap.handle()
        assert requester.recv_multipart()[2] == b"400"
        assert (zap.admitted, zap.refused) == (1, 2)
        requester.close()
        zap.close()
    finally:
        context.term()
