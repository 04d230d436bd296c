"""Single-writer lock and network-filesystem detection."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cistemd.errors import ProjectLockedError
from cistemd.project.lock import (
    MountEntry,
    WriterLock,
    filesystem_of,
    is_network_filesystem,
    network_filesystem_warning,
    parse_mountinfo,
    read_mount_table,
)

MOUNTINFO = textwrap.dedent(
    r"""
    22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
    30 22 0:45 / /home rw,relatime shared:20 - nfs4 fileserver:/export/home rw,vers=4.2
    31 22 0:46 / /lustre/scratch rw,relatime - lustre 10.0.0.1@o2ib:/scratch rw
    32 22 0:47 / /mnt/ceph\040data rw - fuse.ceph-fuse ceph-fuse rw
    33 30 8:2 / /home/local rw,relatime - xfs /dev/sdb1 rw
    34 22 0:48 / /sshfs rw - fuse.sshfs user@host:/ rw
    garbage line without separator
    """
).strip()


def test_parse_mountinfo_reads_types_sources_and_escapes() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert [e.fs_type for e in entries] == [
        "ext4", "nfs4", "lustre", "fuse.ceph-fuse", "xfs", "fuse.sshfs"
    ]
    assert entries[1] == MountEntry(Path("/home"), "nfs4", "fileserver:/export/home")
    assert entries[3].mount_point == Path("/mnt/ceph data")


def test_longest_mount_point_wins() -> None:
    table = parse_mountinfo(MOUNTINFO)

    def fs_type(path: str) -> str | None:
        entry = filesystem_of(path, table)
        return None if entry is None else entry.fs_type

    assert fs_type("/home/alice/project") == "nfs4"
    assert fs_type("/home/local/project") == "xfs"
    assert fs_type("/home") == "nfs4"
    assert fs_type("/homework") == "ext4"
    assert filesystem_of("/tmp/x", []) is None


@pytest.mark.parametrize(
    ("fs_type", "network"),
    [("nfs", True), ("nfs4", True), ("lustre", True), ("ceph", True), ("fuse.cephfs", True),
     ("cifs", True), ("smb3", True), ("gpfs", True), ("beegfs", True), ("glusterfs", True),
     ("fuse.sshfs", True), ("ext4", False), ("xfs", False), ("btrfs", False), ("tmpfs", False),
     ("zfs", False), ("fuse.portal", False)],
)
def test_network_filesystem_types(fs_type: str, network: bool) -> None:
    assert is_network_filesystem(fs_type) is network


def test_warning_names_the_filesystem() -> None:
    table = parse_mountinfo(MOUNTINFO)
    warning = network_filesystem_warning("/lustre/scratch/me/proj", table)
    assert warning is not None
    assert "lustre" in warning and "/lustre/scratch" in warning and "WAL" in warning
    assert network_filesystem_warning("/home/local/proj", table) is None


def test_real_mount_table_is_readable(tmp_path: Path) -> None:
    table = read_mount_table()
    if not table:
        pytest.skip("no /proc/self/mountinfo on this system")
    assert filesystem_of(tmp_path, table) is not None
    assert read_mount_table(tmp_path / "missing") == []


def test_second_lock_in_same_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.db.lock"
    with WriterLock(path, "p") as first:
        assert first.held
        second = WriterLock(path, "p")
        with pytest.raises(ProjectLockedError) as info:
            second.acquire()
        message = str(info.value)
        assert f"pid {os.getpid()}" in message and "project p is open for writing" in message
        assert info.value.code == "project_locked"
    # released: can be taken again
    with WriterLock(path, "p"):
        pass


HOLD = """
import sys
from cistemd.project.lock import WriterLock
lock = WriterLock(sys.argv[1], "p")
lock.acquire()
print("locked", flush=True)
sys.stdin.readline()
"""


def test_lock_of_a_dead_process_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "p.db.lock"
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "locked"
            with pytest.raises(ProjectLockedError, match=f"pid {child.pid} on host"):
                WriterLock(path, "p").acquire()
            child.send_signal(signal.SIGKILL)  # no clean-up at all
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert path.read_text().split()[0] == str(child.pid)  # stale content left behind
    lock = WriterLock(path, "p")
    lock.acquire()
    assert path.read_text().split()[0] == str(os.getpid())
    lock.release()
