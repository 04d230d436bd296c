"""A private cistemd for one command's lifetime (used by ``cistem demo``; not a command).

:func:`embedded_daemon` runs ``cistemd serve`` as a child process with its own
``CISTEM_HOME`` (so it never meets the user's daemon or their projects), waits
until it answers, yields a connected :class:`~cistemd.client.Client`, and on
the way out stops the daemon the way ``cistemd stop`` does (SIGTERM, then
SIGKILL after a grace period), so no daemon or worker outlives the command.
Jobs run exactly as they would in the user's daemon: real broker, real local
workers started through the Default Local run profile.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cistemd.client import Client

__all__ = ["embedded_daemon"]

_START_TIMEOUT_S = 60.0
_STOP_GRACE_S = 20.0


@contextlib.contextmanager
def embedded_daemon(home_dir: Path, *, timeout: float = 120.0) -> Iterator[Client]:
    """Run a private daemon under ``home_dir`` and yield a client connected to it.

    Parameters
    ----------
    home_dir
        Its ``CISTEM_HOME`` (created; logs in ``home_dir/daemon.log``).
    timeout
        Request timeout of the yielded client, in seconds.

    Raises
    ------
    CistemError
        The daemon exited or did not answer within a minute; the message
        quotes the end of its log.
    """
    from cistemd.client import Client, ClientError
    from cistemd.errors import CistemError
    from cistemd.manager.home import CistemHome
    from cistemd.manager.launchers import read_tail

    home = CistemHome.at(home_dir)
    home.prepare()
    log_path = home.root / "daemon.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cistemd.cli.daemon", "--home", str(home.root), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise CistemError(
                    f"the demo's daemon exited at start (status {process.returncode}); "
                    f"end of {log_path}:\n{read_tail(log_path, 2000)}"
                )
            if home.running_pid() == process.pid:
                try:
                    with Client(home, timeout=1.0) as probe:
                        probe.ping()
                    break
                except ClientError:
                    pass
            if time.monotonic() > deadline:
                raise CistemError(f"the demo's daemon did not answer in time; see {log_path}")
            time.sleep(0.05)
        with Client(home, timeout=timeout) as client:
            yield client
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
