"""One writer per project, and a warning for network filesystems.

Single writer
    The process that writes a project holds an exclusive, non-blocking
    ``flock`` on ``<name>.db.lock`` for as long as it has the project open.
    The kernel drops the lock when that process exits -- however it exits --
    so a lock file left behind by a crashed process never blocks anyone; the
    file's content (``pid host``) only serves to name the holder in the error
    a second writer gets. ``flock`` locks belong to an open file description,
    so a second open for writing in the *same* process is refused too.

Network filesystems
    SQLite's WAL mode keeps its index in a shared-memory file that needs
    working, coherent locks on one host; on NFS, Lustre, CephFS, GPFS,
    BeeGFS, GlusterFS, SMB or sshfs that is not guaranteed and the database
    can be corrupted. :func:`network_filesystem_warning` finds the filesystem
    holding a path in ``/proc/self/mountinfo`` (a table that tests can replace)
    and returns a warning to show the user.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cistemd.errors import ProjectError, ProjectLockedError

__all__ = [
    "NETWORK_FILESYSTEM_TYPES",
    "MountEntry",
    "WriterLock",
    "filesystem_of",
    "is_network_filesystem",
    "network_filesystem_warning",
    "parse_mountinfo",
    "read_mount_table",
]

#: Filesystem types (as in ``/proc/self/mountinfo``) on which SQLite's WAL locking
#: cannot be trusted.
NETWORK_FILESYSTEM_TYPES: frozenset[str] = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "ceph",
        "cifs",
        "smb",
        "smb2",
        "smb3",
        "smbfs",
        "gpfs",
        "beegfs",
        "glusterfs",
        "ocfs2",
        "gfs2",
        "afs",
        "9p",
        "panfs",
        "pvfs2",
        "orangefs",
        "wekafs",
        "davfs",
    }
)

#: ``fuse.<name>`` sub-types that are network filesystems.
_NETWORK_FUSE_PREFIXES: tuple[str, ...] = (
    "fuse.ceph",
    "fuse.sshfs",
    "fuse.glusterfs",
    "fuse.gpfs",
    "fuse.beegfs",
    "fuse.s3fs",
    "fuse.gcsfuse",
    "fuse.rclone",
    "fuse.juicefs",
    "fuse.lustre",
)

_MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One mounted filesystem.

    Attributes
    ----------
    mount_point
        Where it is mounted.
    fs_type
        Filesystem type, e.g. ``"ext4"``, ``"nfs4"``, ``"fuse.sshfs"``.
    source
        What is mounted (device or ``server:/export``).
    """

    mount_point: Path
    fs_type: str
    source: str


def _unescape(field: str) -> str:
    r"""Undo the kernel's octal escapes in mountinfo (``\040`` is a space)."""
    if "\\" not in field:
        return field
    out: list[str] = []
    i = 0
    while i < len(field):
        digits = field[i + 1 : i + 4]
        if field[i] == "\\" and len(digits) == 3 and digits.isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse the text of ``/proc/<pid>/mountinfo``.

    Each line is ``id parent major:minor root mount_point options
    [optional fields...] - fs_type source super_options``; malformed lines
    are skipped.
    """
    entries: list[MountEntry] = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        # six mandatory fields precede the optional ones and the separator
        if separator < 6 or separator + 1 >= len(fields):
            continue
        fs_type = fields[separator + 1]
        source = fields[separator + 2] if separator + 2 < len(fields) else ""
        entries.append(MountEntry(Path(_unescape(fields[4])), fs_type, _unescape(source)))
    return entries


def read_mount_table(path: Path = _MOUNTINFO) -> list[MountEntry]:
    """Read the mount table of this process; empty where there is none (non-Linux)."""
    try:
        return parse_mountinfo(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return []


def filesystem_of(
    path: str | Path, mounts: Iterable[MountEntry] | None = None
) -> MountEntry | None:
    """Return the mount that holds ``path`` (the longest mount point above it).

    Parameters
    ----------
    path
        Any path; it is made absolute and symlinks are resolved as far as
        they exist.
    mounts
        The mount table; default :func:`read_mount_table`. Later entries win
        over earlier ones at the same mount point (a mount on top of another).
    """
    table = list(read_mount_table() if mounts is None else mounts)
    target = Path(os.path.realpath(Path(path).expanduser().absolute()))
    best: MountEntry | None = None
    best_depth = -1
    for entry in table:
        mount_point = entry.mount_point
        if target == mount_point or mount_point in target.parents:
            depth = len(mount_point.parts)
            if depth >= best_depth:
                best, best_depth = entry, depth
    return best


def is_network_filesystem(fs_type: str) -> bool:
    """Whether a mountinfo filesystem type is a network/cluster filesystem."""
    kind = fs_type.lower()
    return kind in NETWORK_FILESYSTEM_TYPES or kind.startswith(_NETWORK_FUSE_PREFIXES)


def network_filesystem_warning(
    path: str | Path, mounts: Iterable[MountEntry] | None = None
) -> str | None:
    """Return a warning if ``path`` is on a network filesystem, else ``None``."""
    entry = filesystem_of(path, mounts)
    if entry is None or not is_network_filesystem(entry.fs_type):
        return None
    return (
        f"{path} is on a {entry.fs_type} filesystem ({entry.source} mounted at "
        f"{entry.mount_point}). The project database uses SQLite's WAL mode, which needs "
        "local file locking: open the project from one host only, never from two at once, "
        "and prefer a project directory on a local disk (movies and images may stay on the "
        "network filesystem; they are referenced in place)."
    )


class WriterLock:
    """Exclusive, non-blocking ``flock`` on a project's lock file.

    Parameters
    ----------
    lock_path
        The lock file (created if missing; never deleted, see module notes).
    project_name
        Used in the error message.
    """

    def __init__(self, lock_path: str | Path, project_name: str) -> None:
        self.lock_path = Path(lock_path)
        self.project_name = project_name
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`ProjectLockedError` at once.

        Raises
        ------
        ProjectLockedError
            Another process (or another open in this one) holds it.
        ProjectError
            The lock file cannot be created or locked for another reason.
        """
        if self._fd is not None:
            return
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ProjectError(
                f"cannot create the lock file {self.lock_path}: {exc.strerror}; "
                "check that the project directory is writable"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                pid, host = holder
                raise ProjectLockedError(
                    f"project {self.project_name} is open for writing by pid {pid} on host "
                    f"{host}; close it there (or stop that cistemd) first. "
                    "It can still be opened read-only.",
                    code="project_locked",
                ) from exc
            raise ProjectError(
                f"cannot lock {self.lock_path}: {exc.strerror}; the filesystem may not "
                "support file locks"
            ) from exc
        record = f"{os.getpid()} {socket.gethostname()}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd

    def release(self) -> None:
        """Release the lock (the file stays; its content is cleared)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_holder(fd: int) -> tuple[str, str]:
    """Read ``pid host`` written by the lock holder; placeholders when unknown."""
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", errors="replace").split()
    except OSError:
        text = []
    pid = text[0] if text else "?"
    host = text[1] if len(text) > 1 else "unknown host"
    return pid, host
