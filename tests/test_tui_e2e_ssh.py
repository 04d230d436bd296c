"""End to end in a real terminal: tmux runs ``ssh -t 127.0.0.1 cistem-tui PROJECT``.

A throwaway sshd listens on a free 127.0.0.1 port (its own host key and an
authorized key in temporary directories). The TUI, started over ssh, starts
the daemon itself (fully detached), a selftest job is started from the
Actions panel by keystrokes, then the ssh client is killed mid-job: the old
TUI process must be gone within 5 s, while the daemon and the job carry on.
A new ssh session in a new tmux window reattaches and must show the job's
progress and history as ``cistem jobs --json`` reports them.

Skipped when sshd, ssh, ssh-keygen or tmux are missing (CI installs
``openssh-server openssh-client tmux``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_fixtures import cmdline, process_alive, worker_pids

from cistemd.client import Client, ClientError
from cistemd.manager.home import CistemHome

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
NEEDED = {"ssh": shutil.which("ssh"), "ssh-keygen": shutil.which("ssh-keygen"),
          "tmux": shutil.which("tmux"), "sshd": SSHD}  # fmt: skip
TUI = Path(sys.executable).parent / "cistem-tui"
N_TASKS = 60
SLEEP_S = 0.4

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(NEEDED.values()),
        reason="needs " + ", ".join(name for name, path in NEEDED.items() if not path),
    ),
    pytest.mark.skipif(not TUI.exists(), reason=f"{TUI} is not installed"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Sshd:
    """A private sshd on 127.0.0.1 that lets this user in with a throwaway key."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(mode=0o700)
        self.folder = folder
        self.port = _free_port()
        self.key = folder / "client_key"
        for path in (folder / "host_key", self.key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                check=True,
                timeout=30,
            )
        authorized = folder / "authorized_keys"
        authorized.write_text((folder / "client_key.pub").read_text())
        authorized.chmod(0o600)
        config = folder / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\n"
            f"AuthorizedKeysFile {authorized}\nPidFile {folder / 'sshd.pid'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "PrintMotd no\nPrintLastLog no\nLogLevel ERROR\nAcceptEnv LANG LC_*\n"
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        self.log = open(folder / "sshd.log", "wb")
        assert SSHD is not None
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)], stdout=self.log, stderr=subprocess.STDOUT
        )

        def listening() -> bool:
            if self.proc.poll() is not None:  # e.g. not root and no /run/sshd
                self.log.close()
                pytest.skip(f"sshd cannot run here: {(folder / 'sshd.log').read_text()[-300:]}")
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        _wait(listening, 10, "sshd to listen")

    def command(self, remote: str) -> str:
        options = [
            "ssh", "-t", "-p", str(self.port), "-i", str(self.key),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "127.0.0.1", remote,
        ]  # fmt: skip
        return shlex.join(options)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.log.close()


class Tmux:
    """A private tmux server (its own socket) with one session."""

    def __init__(self, socket_path: Path, command: str) -> None:
        self.socket = str(socket_path)
        # The first window holds a shell so the server outlives the ssh we kill.
        self.run("new-session", "-d", "-s", "e2e", "-x", "120", "-y", "40", "sleep 3600")
        self.window = ""
        self.new_window(command)

    def run(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout

    def new_window(self, command: str) -> None:
        self.run("new-window", "-t", "e2e", command)
        self.window = "e2e:" + self.run("display-message", "-p", "-t", "e2e", "#I").strip()

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.window)

    def keys(self, *keys: str, pause: float = 0.3) -> None:
        for key in keys:
            self.run("send-keys", "-t", self.window, key)
            time.sleep(pause)

    def wait_for(self, text: str, timeout: float = 30) -> str:
        return _wait(lambda: self.screen() if text in self.screen() else "", timeout,
                     f"{text!r} on the screen")  # fmt: skip

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.run("kill-server")


def _tui_pids(project: Path) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            argv = cmdline(int(name))
            if any(a.endswith("cistem-tui") for a in argv) and str(project) in argv:
                if process_alive(int(name)):
                    found.append(int(name))
    return found


def _ssh_client_pids(port: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            argv = cmdline(int(name))
            if argv[:1] == ["ssh"] and str(port) in argv and process_alive(int(name)):
                found.append(int(name))
    return found


def _cli_jobs(home: Path) -> list[dict]:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "cistem"), "jobs", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CISTEM_HOME": str(home)},
        check=True,
    )
    return list(json.loads(done.stdout)["jobs"])


def _start_from_actions_panel(tmux: Tmux) -> None:
    """Keystrokes: Actions panel, choose Self-test, 60 tasks of 0.4 s, Start (F5)."""
    tmux.keys("3")
    tmux.wait_for("Default Local", timeout=15)
    tmux.keys("Enter", "S", "e", "l", "Enter", pause=0.4)
    tmux.wait_for("Tasks", timeout=10)
    tmux.keys("Tab", "Tab", "Tab")  # profile choice, the form, its first field (Tasks)
    tmux.keys(*str(N_TASKS), "Tab")
    tmux.keys(*str(SLEEP_S))
    tmux.keys("F5", pause=1.0)


def test_job_survives_hangup_and_reattach_shows_it(tmp_path: Path):
    home = tmp_path / "home"
    project = tmp_path / "proj"
    from cistemd.project import Project

    Project.create(project).close()
    sshd = Sshd(tmp_path / "ssh")
    remote = (
        f"cd {shlex.quote(str(Path.cwd()))} && exec env CISTEM_HOME={shlex.quote(str(home))} "
        f"TERM=xterm-256color {shlex.quote(str(TUI))} {shlex.quote(str(project))}"
    )
    where = CistemHome.at(home)
    daemon_pid = None
    tmux: Tmux | None = None
    try:
        tmux = Tmux(tmp_path / "tmux.sock", sshd.command(remote))
        tmux.wait_for("project proj open", timeout=40)  # the TUI started the daemon
        daemon_pid = where.running_pid()
        assert daemon_pid is not None
        (old_tui,) = _wait(lambda: _tui_pids(project), 10, "the TUI process")

        _start_from_actions_panel(tmux)
        with Client(home) as client:

            def submitted() -> list[dict]:
                return [j for j in client.jobs(project=project) if j["action"] == "selftest"]

            jobs = _wait(submitted, 15, "the job started from the Actions panel")
            assert int(jobs[0]["parameters"]["tasks"]) == N_TASKS, (
                f"the Actions form did not take the typed values: {jobs[0]['parameters']}\n"
                + tmux.screen()
            )
            job_id = jobs[0]["job_id"]

            def some_done() -> bool:
                record = client.job(job_id)
                return record["state"] == "running" and record["tasks"].get("completed", 0) >= 3

            _wait(some_done, 30, "the job to be under way")
            done_at_hangup = client.job(job_id)["tasks"].get("completed", 0)

            # Hang up: kill the ssh client as a dropped link would.
            for pid in _ssh_client_pids(sshd.port):
                os.kill(pid, signal.SIGKILL)
            hangup = time.monotonic()
            _wait(lambda: not process_alive(old_tui), 5.0, "the old TUI to exit", 0.05)
            gone_after = time.monotonic() - hangup
            print(f"old TUI gone {gone_after:.2f} s after the hangup")
            assert gone_after <= 5.0

            # The daemon and the job carry on.
            assert where.running_pid() == daemon_pid and process_alive(daemon_pid)
            _wait(
                lambda: client.job(job_id)["tasks"].get("completed", 0) > done_at_hangup,
                20,
                "the job to progress after the hangup",
            )
            final = client.wait_for_job(job_id, timeout=120)
            assert final["state"] == "completed"

        # Reattach in a new window and compare with `cistem jobs --json`.
        tmux.new_window(sshd.command(remote))
        tmux.wait_for("project proj open", timeout=30)
        tmux.keys("5")
        listed = {j["job_id"]: j for j in _cli_jobs(home)}[job_id]
        total = sum(listed["tasks"].values())
        screen = tmux.wait_for(f"{total}/{total}", timeout=15)
        row = next(
            line for line in screen.splitlines() if line.split()[:2] == [job_id, "selftest"]
        )
        assert listed["state"] in row and "100%" in row and f"{total}/{total}" in row
        assert total == N_TASKS
        assert "→ completed" in tmux.wait_for("→ completed", timeout=10)
        assert "queued → running" in tmux.screen()
        tmux.keys("q", pause=0.5)
        _wait(lambda: not _tui_pids(project), 10, "the reattached TUI to detach")
        assert where.running_pid() == daemon_pid  # detaching left the daemon running
    finally:
        if tmux is not None:
            tmux.kill()
        sshd.stop()
        subprocess.run(
            [sys.executable, "-m", "cistemd.cli.daemon", "--home", str(home), "stop", "--force"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        for pid in worker_pids(where) + _tui_pids(project):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ClientError, OSError):
            if daemon_pid and process_alive(daemon_pid):
                os.kill(daemon_pid, signal.SIGKILL)
