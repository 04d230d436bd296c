"""Real services for the remote-worker tests: sshd, network namespaces, munge + SLURM.

Everything lives in a temporary directory and on ports or addresses the
helpers create; every ``stop()`` kills what its ``start()`` started, by pid.
``./dev test`` installs the Debian packages (openssh-server, slurm-wlm, munge,
iproute2); a helper whose program is missing (or that cannot run, e.g. not
root for namespaces) raises :class:`ServiceUnavailable`, which the tests turn
into a skip that says why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


class ServiceUnavailable(Exception):
    """A real component cannot be started here; the message says why."""


def free_port(address: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _kill_pid_file(path: Path, signum: int = signal.SIGTERM) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(path.read_text().strip()), signum)


def _wait_port(address: str, port: int, timeout: float, netns: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if netns is None:
            with contextlib.suppress(OSError), socket.create_connection((address, port), 0.5):
                return
        else:
            probe = subprocess.run(
                ["ip", "netns", "exec", netns, sys.executable, "-c",
                 f"import socket; socket.create_connection(('{address}', {port}), 0.5)"],
                capture_output=True,
                check=False,
            )  # fmt: skip
            if probe.returncode == 0:
                return
        time.sleep(0.05)
    raise ServiceUnavailable(f"nothing listens on {address}:{port} after {timeout} s")


# --------------------------------------------------------------------------- ssh


class SshKeys:
    """A throwaway client key pair and a known_hosts file, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        if shutil.which("ssh-keygen") is None:
            raise ServiceUnavailable("ssh-keygen is not installed (apt-get install openssh-client)")
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.client_key = directory / "client_key"
        self.known_hosts = directory / "known_hosts"
        self.authorized_keys = directory / "authorized_keys"
        _keygen(self.client_key)
        self.authorized_keys.write_text((directory / "client_key.pub").read_text())
        self.authorized_keys.chmod(0o600)
        self.known_hosts.write_text("")


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cistemd-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )


class Sshd:
    """One ``sshd -D`` on ``address:port`` (optionally inside a network namespace).

    Its host key is made here; :meth:`trust` writes it into the known_hosts file.
    """

    def __init__(
        self, directory: Path, keys: SshKeys, *, address: str = "127.0.0.1",
        port: int | None = None, netns: str | None = None, hostname: str | None = None,
    ) -> None:  # fmt: skip
        if not os.path.exists(SSHD):
            raise ServiceUnavailable("sshd is not installed (apt-get install openssh-server)")
        self.directory = directory
        self.keys = keys
        self.address = address
        self.netns = netns
        self.hostname = hostname
        self.port = port or (22 if netns else free_port(address))
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.host_key = directory / "host_key"
        _keygen(self.host_key)
        self.log = directory / "sshd.log"

    @property
    def host_spec(self) -> str:
        user = os.environ.get("USER") or "root"
        return f"{user}@{self.address}:{self.port}"

    def known_hosts_line(self, key_file: Path | None = None) -> str:
        public = (key_file or self.host_key).with_suffix(".pub").read_text().split()
        host = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{host} {public[0]} {public[1]}\n"

    def trust(self) -> None:
        with open(self.keys.known_hosts, "a") as handle:
            handle.write(self.known_hosts_line())

    def start(self) -> Sshd:
        with contextlib.suppress(OSError):  # privilege separation directory (as root)
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        config = self.directory / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.address}",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {self.keys.authorized_keys}",
                    f"PidFile {self.directory / 'sshd.pid'}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",
                    "UsePAM no",
                    "MaxSessions 100",
                    "MaxStartups 100:30:200",
                    "ClientAliveInterval 0",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        argv = [SSHD, "-D", "-e", "-f", str(config)]
        if self.hostname:  # its own UTS namespace: workers there report this host name
            argv = ["unshare", "--uts", "/bin/sh", "-c",
                    f'hostname {self.hostname} && exec "$@"', "sh", *argv]  # fmt: skip
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        _wait_port(self.address, self.port, 10.0, self.netns)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


# --------------------------------------------------------------------------- namespaces


class NetnsCluster:
    """``n`` network namespaces, each a "workstation" with a veth link to this host.

    Namespace ``i`` (1-based) has address ``10.213.i.2`` and reaches the
    daemon's address ``10.213.0.1`` (added to this host's ``lo`` for the
    test) through its link; :meth:`cut` takes a link down (a node failure).
    """

    daemon_address = "10.213.0.1"

    def __init__(self, n: int) -> None:
        if os.geteuid() != 0:
            raise ServiceUnavailable("network namespaces need root")
        if shutil.which("ip") is None:
            raise ServiceUnavailable("ip is not installed (apt-get install iproute2)")
        tag = f"{os.getpid() % 100000}"
        self.names = [f"cistem{tag}n{i}" for i in range(1, n + 1)]
        self.links = [f"cv{tag}h{i}" for i in range(1, n + 1)]
        self.peers = [f"cv{tag}p{i}" for i in range(1, n + 1)]
        self.addresses = [f"10.213.{i}.2" for i in range(1, n + 1)]
        self._lo_added = False

    def _ip(self, *args: str, netns: str | None = None) -> None:
        argv = ["ip", *args] if netns is None else ["ip", "-n", netns, *args]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ServiceUnavailable(f"{' '.join(argv)}: {done.stderr.strip()}")

    def start(self) -> NetnsCluster:
        try:
            self._ip("addr", "add", f"{self.daemon_address}/32", "dev", "lo")
            self._lo_added = True
            for i, (name, link, peer) in enumerate(
                zip(self.names, self.links, self.peers, strict=True), start=1
            ):
                self._ip("netns", "add", name)
                self._ip("link", "add", link, "type", "veth", "peer", "name", peer)
                self._ip("link", "set", peer, "netns", name)
                self._ip("addr", "add", f"10.213.{i}.1/24", "dev", link)
                self._ip("link", "set", link, "up")
                self._ip("link", "set", "lo", "up", netns=name)
                self._ip("addr", "add", f"10.213.{i}.2/24", "dev", peer, netns=name)
                self._ip("link", "set", peer, "up", netns=name)
                self._ip("route", "add", "default", "via", f"10.213.{i}.1", netns=name)
        except ServiceUnavailable:
            self.stop()
            raise
        return self

    def cut(self, index: int) -> None:
        """Take the link of namespace ``index`` (0-based) down."""
        self._ip("link", "set", self.links[index], "down")

    def pids(self, index: int) -> list[int]:
        done = subprocess.run(
            ["ip", "netns", "pids", self.names[index]], capture_output=True, text=True, check=False
        )
        return [int(item) for item in done.stdout.split() if item.isdigit()]

    def stop(self) -> None:
        for index, name in enumerate(self.names):
            for pid in self.pids(index):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "link", "del", self.links[index]], capture_output=True)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        if self._lo_added:
            subprocess.run(
                ["ip", "addr", "del", f"{self.daemon_address}/32", "dev", "lo"], capture_output=True
            )
            self._lo_added = False


# --------------------------------------------------------------------------- munge + SLURM


class SlurmCluster:
    """A single-node SLURM (slurmctld + slurmd + munged) configured in a temporary directory.

    Use :attr:`env` (``SLURM_CONF``) for every SLURM command and for the
    daemon that runs them. The node declares 8 CPUs whatever the machine has
    (``SlurmdParameters=config_overrides``), so 8 one-core jobs run at once.
    """

    node = "cistemnode"

    def __init__(self) -> None:
        for program in ("slurmctld", "slurmd", "munged", "mungekey", "sbatch", "squeue"):
            if shutil.which(program) is None:
                raise ServiceUnavailable(
                    f"{program} is not installed (apt-get install slurm-wlm munge)"
                )
        if os.geteuid() != 0:
            raise ServiceUnavailable("the test SLURM runs its daemons as root")
        self.root = Path(tempfile.mkdtemp(prefix="cslurm"))
        self.root.chmod(0o755)
        self.conf = self.root / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}

    def _run(self, *argv: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False,
            env={**os.environ, **self.env},
        )  # fmt: skip

    def start(self) -> SlurmCluster:
        root = self.root
        for name in ("etc", "lib", "log"):
            (root / name).mkdir(mode=0o700)
        for name in ("run", "state", "spool"):
            (root / name).mkdir(mode=0o755)
        key = root / "etc" / "munge.key"
        subprocess.run(["mungekey", "-c", "-k", str(key), "-b", "1024"], check=True)
        socket_path = root / "run" / "munge.socket"
        munged = subprocess.run(
            ["munged", "--force", f"--key-file={key}", f"--socket={socket_path}",
             f"--pid-file={root / 'run' / 'munged.pid'}",
             f"--log-file={root / 'log' / 'munged.log'}",
             f"--seed-file={root / 'lib' / 'munged.seed'}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if munged.returncode != 0:
            raise ServiceUnavailable(f"munged did not start: {munged.stderr.strip()}")
        ctl_port, node_port = free_port(), free_port()
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=cistemtest",
                    "SlurmctldHost=localhost(127.0.0.1)",
                    f"SlurmctldPort={ctl_port}",
                    f"SlurmdPort={node_port}",
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={socket_path}",
                    "CredType=cred/munge",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"StateSaveLocation={root / 'state'}",
                    f"SlurmdSpoolDir={root / 'spool'}",
                    f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
                    f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
                    f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "JobCompType=jobcomp/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "SchedulerType=sched/builtin",
                    "SlurmdParameters=config_overrides",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "KillWait=2",
                    "MinJobAge=2",
                    "InactiveLimit=0",
                    "SlurmctldTimeout=30",
                    "SlurmdTimeout=30",
                    f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs=8 RealMemory=4000 State=UNKNOWN",
                    f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        for argv in (["slurmctld", "-i"], ["slurmd", "-N", self.node]):
            done = self._run(*argv)
            if done.returncode != 0:
                self.stop()
                raise ServiceUnavailable(f"{argv[0]} did not start: {done.stderr.strip()}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = self._run("sinfo", "-h", "-o", "%T", timeout=5).stdout.strip()
            if state == "idle":
                return self
            time.sleep(0.2)
        log = (root / "log" / "slurmctld.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise ServiceUnavailable(f"the SLURM node did not become idle: {state!r}\n{log}")

    def queue(self) -> list[str]:
        """Return ``squeue`` lines ``id|name|state`` of every job."""
        done = self._run("squeue", "-h", "-o", "%i|%j|%T")
        return [line for line in done.stdout.splitlines() if line.strip()]

    def cancel_all(self) -> None:
        self._run("scancel", "-u", os.environ.get("USER") or "root")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.cancel_all()
        for name in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            _kill_pid_file(self.root / "run" / name)
        time.sleep(0.3)
        for name in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            _kill_pid_file(self.root / "run" / name, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
