"""Remote-worker figures: Start-to-connected over SSH and SLURM, and TCP + CURVE throughput.

Runs a real ``cistemd serve`` in a temporary ``CISTEM_HOME`` and measures

1. **SSH start-up**: time from a job's submit to all its workers connected,
   for 3 SSH hosts × 2 workers (three real sshd, on 127.0.0.1 or -- as root
   with ``--netns`` -- in three network namespaces), against the same 6
   workers started locally (``local:6``) in the same run;
2. **SLURM start-up**: the same for 4 workers submitted with ``sbatch`` to a
   real single-node SLURM (slurmctld + slurmd + munged, set up for the run),
   and for the single-allocation (salloc + srun) profile, against ``local:4``;
3. **TCP + CURVE throughput**: no-op tasks per second (first to last recorded
   result) on 4 local workers connected over ``tcp://127.0.0.1`` with CURVE,
   against the same 4 workers over ``ipc://`` -- the ratio is the figure
   (aim: ≥ 50 % of ipc).

Medians over ``--repeats`` runs. Prints figures; never fails on a time. Run::

    .venv/bin/python benchmarks/remote_workers.py [--repeats 3] [--tasks 4000] [--netns]
                                                  [--skip-ssh] [--skip-slurm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ci_services import NetnsCluster, ServiceUnavailable, SlurmCluster, Sshd, SshKeys
from daemon_fixtures import DaemonProcess

from cistemd.manager.home import CistemHome
from cistemd.manager.profiles import (
    ProfileCommand,
    RunProfile,
    SchedulerSettings,
    SshSettings,
)

NOOP = {"sleep": 0, "work": "noop"}


def start_to_connected(client: Any, project: Path, profile: str, workers: int) -> float:
    """Submit a long job; return seconds until ``workers`` workers said hello; cancel it."""
    started = time.perf_counter()
    job_id = client.submit(project, "selftest", {"tasks": 1000, "sleep": 1.0}, profile=profile)
    deadline = started + 120
    while time.perf_counter() < deadline:
        if client.status()["workers"] >= workers:
            elapsed = time.perf_counter() - started
            break
        time.sleep(0.01)
    else:
        elapsed = float("nan")
    client.cancel(job_id)
    client.wait_for_job(job_id, timeout=60)
    deadline = time.perf_counter() + 60
    while client.status()["workers"] and time.perf_counter() < deadline:
        time.sleep(0.05)
    return elapsed


def throughput(client: Any, project: Path, profile: str, tasks: int) -> float:
    """Run ``tasks`` no-op tasks; return tasks per second from first to last recorded result."""
    job_id = client.submit(project, "selftest", {"tasks": tasks, **NOOP}, profile=profile)
    job = client.wait_for_job(job_id, timeout=600)
    if job["state"] != "completed":
        raise RuntimeError(f"job {job_id} ended {job['state']}")
    results, _total = client.job_results(job_id)
    stamps = sorted(
        datetime.fromisoformat(r["recorded_at"].replace("Z", "+00:00")).timestamp()
        for r in results
    )
    return (len(stamps) - 1) / max(1e-9, stamps[-1] - stamps[0])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--netns", action="store_true", help="SSH hosts in network namespaces")
    parser.add_argument("--skip-ssh", action="store_true")
    parser.add_argument("--skip-slurm", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cistem-remote-bench"))
    home = CistemHome.at(tmp / "home")
    cleanups: list[Any] = []
    print(f"machine: {os.cpu_count()} CPU(s); medians of {args.repeats} run(s)")
    try:
        servers: list[Sshd] = []
        address = "127.0.0.1"
        if not args.skip_ssh:
            try:
                keys = SshKeys(tmp / "keys")
                if args.netns:
                    net = NetnsCluster(3).start()
                    cleanups.append(net.stop)
                    address = net.daemon_address
                    hosts = list(zip(net.names, net.addresses, strict=True))
                else:
                    hosts = [(None, "127.0.0.1")] * 3
                for index, (netns, host) in enumerate(hosts):
                    server = Sshd(tmp / f"sshd{index}", keys, address=host, netns=netns).start()
                    cleanups.append(server.stop)
                    server.trust()
                    servers.append(server)
            except ServiceUnavailable as exc:
                print(f"SSH figures skipped: {exc}")
                servers = []
        slurm = None
        if not args.skip_slurm:
            try:
                slurm = SlurmCluster().start()
                cleanups.append(slurm.stop)
                os.environ.update(slurm.env)
            except ServiceUnavailable as exc:
                print(f"SLURM figures skipped: {exc}")
        daemon = DaemonProcess(home, tmp / "daemon.log").start()
        cleanups.append(daemon.cleanup)
        project = tmp / "project"
        with daemon.client(timeout=60) as client:
            client.create_project(project)
            client.save_profile(
                RunProfile(
                    name="tcp4",
                    gui_address="127.0.0.1",
                    commands=(ProfileCommand(number_of_copies=4, delay_ms=0),),
                ).to_dict()
            )
            if servers:
                client.save_profile(
                    RunProfile(
                        name="ssh3x2",
                        launcher="ssh",
                        gui_address=address,
                        commands=tuple(
                            ProfileCommand(host=s.host_spec, number_of_copies=2, delay_ms=0)
                            for s in servers
                        ),
                        ssh=SshSettings(
                            known_hosts=str(servers[0].keys.known_hosts),
                            identity_file=str(servers[0].keys.client_key),
                            remote_dir=str(tmp / "remote"),
                        ),
                    ).to_dict()
                )
            if slurm is not None:
                for name, mode in (("slurm4", "batch"), ("salloc4", "allocation")):
                    client.save_profile(
                        RunProfile(
                            name=name,
                            launcher="scheduler",
                            gui_address="127.0.0.1",
                            commands=(ProfileCommand(number_of_copies=4, delay_ms=0),),
                            scheduler=SchedulerSettings(kind="slurm", mode=mode),
                        ).to_dict()
                    )
            figures: dict[str, list[float]] = {}

            def measure(label: str, fn: Any) -> None:
                figures.setdefault(label, []).append(fn())

            for _ in range(args.repeats):
                measure("local:6 start", lambda: start_to_connected(client, project, "local:6", 6))
                if servers:
                    measure(
                        "ssh 3x2 start", lambda: start_to_connected(client, project, "ssh3x2", 6)
                    )
                measure("local:4 start", lambda: start_to_connected(client, project, "local:4", 4))
                if slurm is not None:
                    measure(
                        "slurm 4 start", lambda: start_to_connected(client, project, "slurm4", 4)
                    )
                    measure(
                        "salloc 4 start", lambda: start_to_connected(client, project, "salloc4", 4)
                    )
                measure("ipc rate", lambda: throughput(client, project, "local:4", args.tasks))
                measure("tcp rate", lambda: throughput(client, project, "tcp4", args.tasks))

        def line(label: str, reference: str | None = None, unit: str = "s") -> None:
            if label not in figures:
                return
            value = median(figures[label])
            text = f"  {label:<16} {value:9.3f} {unit}"
            if reference and reference in figures:
                text += f"   ({value / median(figures[reference]):.2f} × {reference})"
            print(text)

        print("start to all workers connected (submit -> last hello):")
        line("local:6 start")
        line("ssh 3x2 start", "local:6 start")
        line("local:4 start")
        line("slurm 4 start", "local:4 start")
        line("salloc 4 start", "local:4 start")
        print(f"no-op task throughput, 4 workers, {args.tasks} tasks (first to last result):")
        line("ipc rate", unit="tasks/s")
        line("tcp rate", "ipc rate", unit="tasks/s")
    finally:
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as exc:  # keep cleaning up
                print(f"cleanup: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
