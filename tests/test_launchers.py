"""Run profiles and launchers.

:class:`LauncherBehaviour` holds what every launcher must do; each launcher
kind's test class inherits it and so re-runs it (mrcfile's shared-test-class
trick), as the SSH and scheduler launchers will. The processes launched are
small Python scripts standing in for workers, plus one test with real
workers against a listening ROUTER socket.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from cistemd import protocol
from cistemd.errors import InvalidInputError
from cistemd.manager.launchers import (
    LAUNCH_FAILED_EXIT_CODE,
    STDERR_TAIL_BYTES,
    Launcher,
    LocalLauncher,
    WorkerExit,
    launcher_from_dict,
    process_start_ticks,
    read_tail,
    worker_command,
    worker_id_of,
)
from cistemd.manager.profiles import (
    DEFAULT_LOCAL_PROFILE_NAME,
    ProfileCommand,
    RunProfile,
    default_local_profile,
)
from cistemd.worker import ExitCode, describe_exit

FAKE_WORKER = textwrap.dedent('''
    import os, signal, subprocess, sys, time
    mode = sys.argv[sys.argv.index("--mode") + 1]
    print(f"fake worker {os.getpid()} mode {mode} argv {sys.argv[1:]!r}", file=sys.stderr,
          flush=True)
    if mode == "exit3":
        print("boom: something went wrong", file=sys.stderr)
        sys.exit(3)
    if mode == "selfkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "verbose":
        for line in range(2000):
            print(f"line {line:05d} " + "x" * 20, file=sys.stderr)
        print("the last line", file=sys.stderr)
        sys.exit(0)
    if mode == "usr1":
        signal.signal(signal.SIGUSR1, lambda *_: sys.exit(42))
        print("ready for SIGUSR1", file=sys.stderr, flush=True)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
        with open(sys.argv[sys.argv.index("--pid-file") + 1], "w") as handle:
            handle.write(str(child.pid))
    if mode == "env":
        print("FOO=" + os.environ.get("FOO", "<unset>"), file=sys.stderr)
        sys.exit(0)
    time.sleep(60)
''')


def fake(worker_id: str, mode: str = "sleep", *extra: str) -> list[str]:
    return [sys.executable, "-c", FAKE_WORKER, "--worker-id", worker_id, "--mode", mode, *extra]


def gone(pid: int) -> bool:
    """Whether ``pid`` has ended (no such process, or a zombie nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return process_start_ticks(pid) is None


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def poll_until(launcher: Launcher, count: int, timeout: float = 10.0) -> list[WorkerExit]:
    exits: list[WorkerExit] = []
    wait_until(lambda: len(exits.__iadd__(launcher.poll())) >= count, timeout)
    return exits


class LauncherBehaviour:
    """What every launcher does; subclasses say how to make one."""

    def make_launcher(self, log_dir: Path, delay_ms: int = 0) -> Any:
        """Return a launcher of the kind under test (Any: kinds add their own helpers)."""
        raise NotImplementedError

    @pytest.fixture
    def launcher(self, tmp_path):
        made = self.make_launcher(tmp_path / "logs")
        yield made
        made.kill()
        made.poll()

    def test_exits_are_polled_once_with_code_signal_and_log_tail(self, launcher):
        launcher.launch([fake("a", "exit3"), fake("b", "selfkill"), fake("c", "verbose")])
        exits = {item.worker_id: item for item in poll_until(launcher, 3)}
        assert set(exits) == {"a", "b", "c"}
        assert (exits["a"].exit_code, exits["a"].signal) == (3, None)
        assert "boom: something went wrong" in exits["a"].stderr_tail
        assert exits["a"].description == "exited with code 3"
        assert (exits["b"].exit_code, exits["b"].signal) == (None, signal.SIGKILL)
        assert exits["b"].description == "killed by SIGKILL"
        assert exits["c"].exit_code == 0
        assert len(exits["c"].stderr_tail.encode()) <= STDERR_TAIL_BYTES
        assert exits["c"].stderr_tail.rstrip().endswith("the last line")
        assert all(item.pid and item.log_path for item in exits.values())
        assert launcher.poll() == []
        assert not launcher.is_alive()

    def test_terminate_leaves_no_process_behind(self, launcher, tmp_path):
        pid_file = tmp_path / "grandchild.pid"
        launcher.launch([fake("s1", "stubborn", "--pid-file", str(pid_file)), fake("s2")])
        assert wait_until(pid_file.exists)
        assert wait_until(lambda: pid_file.read_text().strip() != "")
        grandchild = int(pid_file.read_text())
        pids = list(launcher.pids.values())
        assert len(pids) == 2 and launcher.is_alive()
        started = time.monotonic()
        launcher.terminate(grace_seconds=0.5)
        assert time.monotonic() - started < 10
        assert not launcher.is_alive()
        for pid in [*pids, grandchild]:
            assert wait_until(lambda pid=pid: gone(pid), 5), f"pid {pid} survived terminate()"
        exits = {item.worker_id: item for item in launcher.poll()}
        assert exits["s2"].signal == signal.SIGTERM  # went at once
        assert exits["s1"].signal == signal.SIGKILL  # ignored SIGTERM: killed after the grace

    def test_signal_reaches_every_worker(self, launcher):
        launcher.launch([fake("u1", "usr1"), fake("u2", "usr1")])
        logs = [item["log_path"] for item in launcher.to_dict()["processes"]]
        assert wait_until(lambda: all("ready for SIGUSR1" in read_tail(log) for log in logs))
        launcher.signal(signal.SIGUSR1)
        exits = poll_until(launcher, 2)
        assert [item.exit_code for item in exits] == [42, 42]

    def test_a_worker_that_cannot_start_is_reported_not_raised(self, launcher, tmp_path):
        launcher.launch([[str(tmp_path / "no-such-program"), "--worker-id", "ghost"]])
        (ghost,) = poll_until(launcher, 1)
        assert ghost.worker_id == "ghost"
        assert ghost.exit_code == LAUNCH_FAILED_EXIT_CODE
        assert "no-such-program" in ghost.stderr_tail

    def test_to_dict_from_dict_reattaches_to_live_workers(self, launcher):
        launcher.launch([fake("r1"), fake("r2")])
        pids = launcher.pids
        record = json.loads(json.dumps(launcher.to_dict()))
        logs = [item["log_path"] for item in record["processes"]]
        assert wait_until(lambda: all("fake worker" in read_tail(log) for log in logs))
        adopted: Any = launcher_from_dict(record)
        assert type(adopted) is type(launcher)
        assert adopted.is_alive()
        assert adopted.pids == pids
        adopted.terminate(grace_seconds=2.0)
        assert not adopted.is_alive()
        exits = {item.worker_id: item for item in adopted.poll()}
        assert set(exits) == {"r1", "r2"}
        # Not its children: it cannot know how they ended; the first launcher can.
        assert all(item.exit_code is None and item.signal is None for item in exits.values())
        assert all("fake worker" in item.stderr_tail for item in exits.values())
        assert {item.signal for item in poll_until(launcher, 2)} == {signal.SIGTERM}


class TestLocalLauncher(LauncherBehaviour):
    def make_launcher(self, log_dir: Path, delay_ms: int = 0) -> LocalLauncher:
        return LocalLauncher(log_dir, delay_ms=delay_ms, grace_seconds=2.0)

    def test_copies_start_the_profile_delay_apart(self, tmp_path):
        launcher = self.make_launcher(tmp_path / "logs", delay_ms=150)
        try:
            started = time.monotonic()
            launcher.launch([fake(f"d{i}") for i in range(3)])
            assert time.monotonic() - started >= 0.3  # two delays between three copies
            assert sorted(launcher.pids) == ["d0", "d1", "d2"]
            ticks = sorted([process_start_ticks(pid) or 0 for pid in launcher.pids.values()])
            hz = os.sysconf("SC_CLK_TCK")
            assert (ticks[-1] - ticks[0]) / hz >= 0.25
        finally:
            launcher.terminate()
            launcher.poll()

    def test_workers_get_their_own_session_devnull_stdin_and_a_private_log(self, tmp_path):
        launcher = self.make_launcher(tmp_path / "logs")
        try:
            launcher.launch([fake("w/../odd id")])
            (pid,) = launcher.pids.values()
            assert os.getsid(pid) == pid and os.getpgid(pid) == pid
            assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
            (log,) = (tmp_path / "logs").iterdir()
            assert log.name == "worker-w_.._odd_id.log"
            assert log.stat().st_mode & 0o777 == 0o600
            assert (tmp_path / "logs").stat().st_mode & 0o777 == 0o700
        finally:
            launcher.terminate()
            launcher.poll()

    def test_a_reused_pid_is_never_adopted_or_signalled(self, tmp_path):
        bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                     start_new_session=True)
        try:
            ticks = process_start_ticks(bystander.pid)
            assert ticks is not None
            record = {"kind": "local", "log_dir": str(tmp_path / "logs"),
                      "processes": [{"worker_id": "old", "pid": bystander.pid,
                                     "start_ticks": ticks - 1, "log_path": ""}]}
            adopted = LocalLauncher.from_dict(record)
            assert not adopted.is_alive()
            adopted.kill()
            adopted.terminate()
            assert bystander.poll() is None  # untouched
            (old,) = adopted.poll()
            assert (old.worker_id, old.exit_code, old.signal) == ("old", None, None)
            assert old.description == "exit status unknown"
        finally:
            bystander.kill()
            bystander.wait()

    def test_unpolled_exits_survive_a_round_trip(self, tmp_path):
        launcher = self.make_launcher(tmp_path / "logs")
        launcher.launch([fake("x", "exit3")])
        assert wait_until(lambda: not launcher.is_alive())
        adopted = LocalLauncher.from_dict(json.loads(json.dumps(launcher.to_dict())))
        (item,) = adopted.poll()
        assert (item.worker_id, item.exit_code) == ("x", 3)
        assert "boom" in item.stderr_tail

    def test_malformed_records_are_refused(self, tmp_path):
        for record in ({"kind": "ssh"}, {"kind": "local"},
                       {"kind": "local", "log_dir": "x", "processes": [{"pid": "x"}]}):
            with pytest.raises(InvalidInputError):
                launcher_from_dict(record)
        with pytest.raises(InvalidInputError, match=r"\$command"):
            LocalLauncher(tmp_path, command_template="nice")


class TestLocalLauncherThroughAShellTemplate(LauncherBehaviour):
    """The same behaviour when the profile's command is a shell template."""

    def make_launcher(self, log_dir: Path, delay_ms: int = 0) -> LocalLauncher:
        return LocalLauncher(log_dir, command_template="FOO='a b' exec $command",
                             delay_ms=delay_ms, grace_seconds=2.0)

    def test_template_is_rendered_with_the_command_quoted(self, tmp_path):
        launcher = self.make_launcher(tmp_path / "logs")
        awkward = "it's \"quoted\" $HOME; rm -rf /"
        launcher.launch([fake("e", "env", awkward)])
        (item,) = poll_until(launcher, 1)
        assert item.exit_code == 0, item.stderr_tail
        assert "FOO=a b" in item.stderr_tail
        assert repr(awkward) in item.stderr_tail  # reached the worker as one argument


# --------------------------------------------------------------------------- real workers


def test_local_launcher_runs_real_workers_and_terminate_stops_them(tmp_path):
    endpoint = f"ipc://{tmp_path}/workers.sock"
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    launcher = LocalLauncher(tmp_path / "logs", delay_ms=10, grace_seconds=5.0)
    try:
        profile = default_local_profile()
        command = profile.commands[0]
        argvs = [worker_command(endpoint=endpoint, job_id="j1", worker_id=f"w{i}",
                                threads=command.threads_per_copy, heartbeat_interval_s=0.2,
                                death_timeout_s=30) for i in range(2)]
        launcher.launch(argvs)
        hellos: dict[bytes, int] = {}
        deadline = time.monotonic() + 20
        while len(hellos) < 2 and time.monotonic() < deadline:
            if router.poll(100):
                identity, frame = router.recv_multipart()
                message = protocol.decode(frame, direction=protocol.Direction.WORKER_TO_DAEMON)
                if message.msg_type == "worker_hello":
                    hellos[identity] = message.content["pid"]
                    router.send_multipart([identity, protocol.encode(protocol.new_message(
                        "worker_welcome", {"heartbeat_interval_s": 0.2, "liveness": 3}))])
        assert set(hellos) == {b"w0", b"w1"}
        assert set(hellos.values()) == set(launcher.pids.values())
        launcher.terminate()
        exits = {item.worker_id: item for item in launcher.poll()}
        assert {item.exit_code for item in exits.values()} == {128 + signal.SIGTERM}
        assert exits["w0"].description == "exited with code 143 (stopped on SIGTERM)"
        assert all(gone(pid) for pid in hellos.values())
        assert "starting" in read_tail(exits["w0"].log_path)
    finally:
        launcher.kill()
        launcher.poll()
        router.close(linger=0)
        context.term()


# --------------------------------------------------------------------------- helpers, profiles


def test_worker_id_of_and_exit_descriptions():
    assert worker_id_of(["x", "--worker-id", "w7"]) == "w7"
    assert worker_id_of(["x", "--worker-id=w8"]) == "w8"
    assert worker_id_of(["x", "--worker-id"]) is None
    assert describe_exit(ExitCode.DAEMON_GONE).startswith("exited with code 75 (no word")
    assert describe_exit(None, signal.SIGSEGV) == "killed by SIGSEGV"


def test_read_tail_of_a_missing_file_is_empty(tmp_path):
    assert read_tail(tmp_path / "nope") == ""
    assert read_tail(None) == ""


def test_default_local_profile_is_cistems():
    profile = default_local_profile()
    assert profile.name == DEFAULT_LOCAL_PROFILE_NAME == "Default Local"
    (command,) = profile.commands
    assert command.number_of_copies == (os.cpu_count() or 1) + 1
    assert (command.threads_per_copy, command.delay_ms) == (1, 10)
    assert command.command_to_run == profile.manager_command == "$command"
    assert profile.total_copies == command.number_of_copies


def test_profile_round_trip_total_copies_and_launch_plan():
    local = ProfileCommand("$command", number_of_copies=4, threads_per_copy=2, delay_ms=0)
    srun = ProfileCommand("srun -n 64 $command", number_of_copies=1,
                          override_total_copies=True, overridden_total_copies=64)
    profile = RunProfile(name="mixed", commands=(local, srun))
    assert RunProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile
    assert profile.total_copies == 4 + 64  # cisTEM's ReturnTotalJobs
    assert profile.launch_plan(3) == [(local, 3)]
    assert profile.launch_plan(10) == [(local, 4), (srun, 1)]
    assert profile.launch_plan() == [(local, 4), (srun, 1)]
    assert profile.launch_plan(0) == []


def test_profile_command_render_quotes_the_worker_command():
    command = ProfileCommand('sbatch --wrap="$command"')
    assert command.render(["python", "-m", "cistemd.worker", "--job-id", "a b"]) == (
        "sbatch --wrap=\"python -m cistemd.worker --job-id 'a b'\"")


@pytest.mark.parametrize("bad", [
    {"command_to_run": "no placeholder"},
    {"number_of_copies": 0},
    {"threads_per_copy": "1"},
    {"delay_ms": -1},
    {"override_total_copies": 1},
    {"override_total_copies": True, "overridden_total_copies": 0},
    {"copies": 2},
])
def test_bad_profile_commands_are_refused(bad):
    with pytest.raises(InvalidInputError):
        ProfileCommand.from_dict(bad)


def test_bad_profiles_are_refused():
    for bad in ({}, {"name": ""}, {"name": "x", "commands": []},
                {"name": "x", "manager_command": "ssh", "commands": [{}]},
                {"name": "x", "commands": [{}], "colour": "red"}):
        with pytest.raises(InvalidInputError):
            RunProfile.from_dict(bad)


def test_launchers_and_the_worker_package_import_without_zmq_or_numpy():
    code = ("import sys, cistemd.worker, cistemd.manager.launchers, cistemd.actions.selftest; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'zmq', 'numpy', 'msgpack'}))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True, timeout=60)
    assert completed.stdout.strip() == "[]"
