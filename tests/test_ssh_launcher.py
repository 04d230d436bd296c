"""The SSH launcher against a real sshd on 127.0.0.1 (throwaway keys and known_hosts).

The shared launcher behaviour (``LauncherBehaviour`` of test_launchers.py) runs
again over SSH; then what only SSH has: refused host keys (a marker file
proves that no remote command ran), 10 MiB on stdout and stderr without a
deadlock, credentials through the SSH channel, and a 200-task job whose
workers were started over SSH and connected back over TCP + CURVE.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from ci_services import ServiceUnavailable, Sshd, SshKeys
from daemon_fixtures import DaemonProcess
from test_launchers import LauncherBehaviour, fake, poll_until, wait_until

from cistemd.manager.launchers import launcher_from_dict, read_tail
from cistemd.manager.profiles import ProfileCommand, RunProfile, SshSettings
from cistemd.manager.ssh import HostKeyRefused, SshLauncher, connect

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sshd(tmp_path_factory) -> Any:
    root = tmp_path_factory.mktemp("sshd")
    try:
        keys = SshKeys(root / "keys")
        server = Sshd(root / "server", keys).start()
    except ServiceUnavailable as exc:
        pytest.skip(f"real sshd unavailable: {exc}")
    server.trust()
    yield server
    server.stop()


def settings_for(server: Sshd, **extra: Any) -> SshSettings:
    return SshSettings(
        known_hosts=str(server.keys.known_hosts),
        identity_file=str(server.keys.client_key),
        keepalive_s=1.0,
        connect_timeout_s=5.0,
        **extra,
    )


class TestSshLauncher(LauncherBehaviour):
    """Every launcher behaviour, with the workers started over SSH."""

    @pytest.fixture(autouse=True)
    def _server(self, sshd):
        self.server = sshd

    def make_launcher(self, log_dir: Path, delay_ms: int = 0) -> SshLauncher:
        return SshLauncher(
            self.server.host_spec,
            settings_for(self.server),
            log_dir=log_dir,
            delay_ms=delay_ms,
            grace_seconds=2.0,
            wait_for_start=True,
        )

    def test_a_round_trip_record_names_the_host(self, launcher):
        record = json.loads(json.dumps(launcher.to_dict()))
        assert record["kind"] == "ssh" and record["host"] == self.server.host_spec
        assert type(launcher_from_dict(record)) is SshLauncher


class TestSshLauncherThroughAShellTemplate(TestSshLauncher):
    """The same over SSH when the profile's command is a shell template."""

    def make_launcher(self, log_dir: Path, delay_ms: int = 0) -> SshLauncher:
        return SshLauncher(
            self.server.host_spec,
            settings_for(self.server),
            log_dir=log_dir,
            command_template="FOO='a b' exec $command",
            delay_ms=delay_ms,
            grace_seconds=2.0,
            wait_for_start=True,
        )

    def test_template_is_rendered_with_the_command_quoted(self, launcher):
        awkward = "it's \"quoted\" $HOME; rm -rf /"
        launcher.launch([fake("e", "env", awkward)])
        (item,) = poll_until(launcher, 1)
        assert item.exit_code == 0, item.stderr_tail
        assert "FOO=a b" in item.stderr_tail
        assert repr(awkward) in item.stderr_tail  # reached the remote worker as one argument


@pytest.mark.parametrize("fault", ["unknown", "changed"])
def test_unknown_and_changed_host_keys_are_refused_before_any_command(sshd, tmp_path, fault):
    known = tmp_path / "known_hosts"
    if fault == "unknown":
        known.write_text("")
    else:
        other = tmp_path / "other_key"
        os.system(f"ssh-keygen -q -t ed25519 -N '' -f {other}")
        known.write_text(sshd.known_hosts_line(other))
    settings = SshSettings(
        known_hosts=str(known), identity_file=str(sshd.keys.client_key), connect_timeout_s=5.0
    )
    marker = tmp_path / "marker"
    with pytest.raises(HostKeyRefused, match="unknown" if fault == "unknown" else "CHANGED"):
        connect(sshd.host_spec, settings)
    launcher = SshLauncher(
        sshd.host_spec, settings, log_dir=tmp_path / "logs", command_template="touch "
        f"{marker}; $command", wait_for_start=True,
    )  # fmt: skip
    launcher.launch([["true", "--worker-id", "k1"]])
    (item,) = poll_until(launcher, 1)
    assert item.exit_code == 127 and "refusing" in item.stderr_tail
    time.sleep(0.3)
    assert not marker.exists()  # no remote command ran
    # the known_hosts file was not changed either
    assert ("" if fault == "unknown" else sshd.known_hosts_line(tmp_path / "other_key")) == (
        known.read_text()
    )
    launcher.close()


def test_ten_mebibytes_on_stdout_and_stderr_do_not_deadlock(sshd, tmp_path):
    launcher = SshLauncher(
        sshd.host_spec, settings_for(sshd), log_dir=tmp_path / "logs", wait_for_start=True
    )
    script = (
        "import sys\n"
        "chunk = b'x' * 65535 + b'\\n'\n"
        "for _ in range(160):\n"
        "    sys.stdout.buffer.write(chunk); sys.stderr.buffer.write(chunk)\n"
        "sys.stderr.buffer.write(b'done\\n')\n"
    )
    started = time.monotonic()
    launcher.launch([[sys.executable, "-c", script, "--worker-id", "chatty"]])
    (item,) = poll_until(launcher, 1, timeout=60)
    assert item.exit_code == 0, item.stderr_tail
    size = Path(item.log_path).stat().st_size
    assert size >= 2 * 160 * 65536
    assert read_tail(item.log_path).rstrip().endswith(("done", "x"))
    assert time.monotonic() - started < 60
    launcher.close()


def test_credentials_travel_through_the_channel_into_a_0600_file(sshd, tmp_path):
    remote_dir = tmp_path / "remote"
    launcher = SshLauncher(
        sshd.host_spec, settings_for(sshd, remote_dir=str(remote_dir)),
        log_dir=tmp_path / "logs", wait_for_start=True,
    )  # fmt: skip
    local = tmp_path / "job-7.json"
    fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b'{"secret_key": "s3cr3t"}\n')
    os.close(fd)
    launcher.deliver_credentials(str(local))
    path = launcher.worker_credentials_path(str(local))
    launcher.launch([["/bin/sh", "-c", 'cat "$0"', path, "--worker-id", "c1"]])
    (item,) = poll_until(launcher, 1)
    assert item.exit_code == 0 and "s3cr3t" in read_tail(item.log_path)
    remote = remote_dir / "job-7.json"
    assert stat.S_IMODE(remote.stat().st_mode) == 0o600
    assert stat.S_IMODE(remote_dir.stat().st_mode) == 0o700
    assert remote.read_text() == local.read_text()
    launcher.close()


def worker_cmdlines(marker: str) -> list[list[str]]:
    """argv of every live worker process whose command line mentions ``marker``."""
    from daemon_fixtures import all_pids, cmdline

    found = []
    for pid in all_pids():
        argv = cmdline(pid)
        if "cistemd.worker" in argv and any(marker in item for item in argv):
            found.append(argv)
    return found


def test_a_200_task_job_runs_on_workers_started_over_ssh(sshd, tmp_path):
    from cistemd.manager.home import CistemHome

    home_dir = tmp_path / "home"
    remote_dir = tmp_path / "remote"
    daemon = DaemonProcess(CistemHome.at(home_dir), tmp_path / "daemon.log").start()
    try:
        profile = RunProfile(
            name="ssh-local",
            launcher="ssh",
            gui_address="127.0.0.1",
            commands=(ProfileCommand(host=sshd.host_spec, number_of_copies=2, delay_ms=0),),
            ssh=settings_for(sshd, remote_dir=str(remote_dir)),
        )
        with daemon.client() as client:
            client.create_project(tmp_path / "project")
            client.save_profile(profile.to_dict())
            job_id = client.submit(
                tmp_path / "project", "selftest", {"tasks": 200, "sleep": 0.01},
                profile="ssh-local",
            )  # fmt: skip
            seen: list[list[str]] = []
            wait_until(lambda: len(seen.__iadd__(worker_cmdlines(str(remote_dir)))) >= 2, 20)
            credentials = home_dir / "credentials" / f"job-{job_id}.json"
            secret = json.loads(credentials.read_text())["secret_key"]
            (remote_file,) = remote_dir.iterdir()  # delivered through the SSH channel
            assert stat.S_IMODE(remote_file.stat().st_mode) == 0o600
            assert remote_file.read_text() == credentials.read_text()
            job = client.wait_for_job(job_id, timeout=90)
            assert job["state"] == "completed", daemon.log()
            results, total = client.job_results(job_id)
            assert total == 200 and len({r["task_id"] for r in results}) == 200
        # Workers were started by sshd (their parent chain is not the daemon) and
        # connected over TCP + CURVE with keys from a 0600 file, never from argv.
        assert seen and all(argv[argv.index("--connect") + 1].startswith("tcp://127.0.0.1:")
                            for argv in seen)  # fmt: skip
        assert all(secret not in " ".join(argv) for argv in seen)
        assert all(argv[argv.index("--credentials-file") + 1].startswith(str(remote_dir))
                   for argv in seen)  # fmt: skip
        # ... and deleted from the host once its workers are gone
        assert wait_until(lambda: not remote_file.exists(), 15)
        assert "listening for remote workers on tcp://127.0.0.1" in daemon.log()
        logs = list((home_dir / "logs" / "workers" / f"job-{job_id}").glob("*.log"))
        assert logs and any("welcomed by the daemon" in log.read_text() for log in logs)
        # once the job is over its key leaves the allow-list
        assert wait_until(lambda: not credentials.exists(), 10)
        assert not (home_dir / "keys" / "authorized" / f"job-{job_id}.key").exists()
    finally:
        daemon.cleanup()
