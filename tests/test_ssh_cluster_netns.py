"""An "SSH cluster" of three workstations on one machine: three network namespaces, each
with a veth link to this host and its own sshd (and host name). A 1,000-task job spreads
over all three; one namespace's link is cut mid-job (a node failure), its tasks are
re-queued, and the job completes with every result recorded once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from ci_services import NetnsCluster, ServiceUnavailable, Sshd, SshKeys
from daemon_fixtures import DaemonProcess, wait_until

from cistemd.manager.home import CistemHome
from cistemd.manager.profiles import ProfileCommand, RunProfile, SshSettings

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path) -> Iterator[Any]:
    servers: list[Sshd] = []
    try:
        net = NetnsCluster(3)
        keys = SshKeys(tmp_path / "keys")
        net.start()
    except ServiceUnavailable as exc:
        pytest.skip(f"network namespaces or ssh unavailable: {exc}")
    try:
        for index, (name, address) in enumerate(zip(net.names, net.addresses, strict=True)):
            server = Sshd(tmp_path / f"sshd{index}", keys, address=address, netns=name,
                          hostname=f"ws{index + 1}")  # fmt: skip
            servers.append(server.start())
            server.trust()
        yield net, keys, servers
    finally:
        for server in servers:
            server.stop()
        net.stop()


def test_a_1000_task_job_spreads_over_three_hosts_and_survives_a_cut_link(cluster, tmp_path):
    net, keys, servers = cluster
    profile = RunProfile(
        name="workstations",
        launcher="ssh",
        gui_address=net.daemon_address,
        commands=tuple(
            ProfileCommand(host=server.host_spec, number_of_copies=2, delay_ms=0)
            for server in servers
        ),
        ssh=SshSettings(
            known_hosts=str(keys.known_hosts),
            identity_file=str(keys.client_key),
            keepalive_s=1.0,
            connect_timeout_s=5.0,
            remote_dir=str(tmp_path / "remote"),
        ),
    )
    daemon = DaemonProcess(CistemHome.at(tmp_path / "home"), tmp_path / "daemon.log").start()
    try:
        with daemon.client() as client:
            client.create_project(tmp_path / "project")
            client.save_profile(profile.to_dict())
            job_id = client.submit(
                tmp_path / "project", "selftest", {"tasks": 1000, "sleep": 0.01},
                profile="workstations",
            )  # fmt: skip

            def hosts_busy() -> set[str]:
                tasks, _ = client.job_tasks(job_id, states=["running", "completed"])
                return {task["host"] for task in tasks if task["host"]}

            wait_until(lambda: hosts_busy() >= {"ws1", "ws2", "ws3"}, 60,
                       message=f"not all hosts got work:\n{daemon.log()}")  # fmt: skip
            done_before = client.job(job_id)["tasks"].get("completed", 0)
            assert done_before < 900, "the job ran too fast to cut a link mid-job"
            net.cut(1)  # ws2 disappears from the network
            job = client.wait_for_job(job_id, timeout=120)
            assert job["state"] == "completed", daemon.log()
            results, total = client.job_results(job_id)
            tasks, _ = client.job_tasks(job_id)
        assert total == 1000 and len({r["task_id"] for r in results}) == 1000
        hosts = Counter(task["host"] for task in tasks)
        assert set(hosts) == {"ws1", "ws2", "ws3"}, hosts
        # ws2's workers were declared lost, and what they held ran again elsewhere
        requeued = [t for t in tasks if t["attempt"] >= 2]
        assert requeued and all(t["host"] in ("ws1", "ws3") for t in requeued)
        assert any("ws2" in str(t["evidence"]) for t in requeued), requeued[:2]
    finally:
        daemon.cleanup()
