"""Exit codes of a worker process, and how to describe any process exit.

Kept apart from :mod:`cistemd.worker.process` so that launchers and the
daemon can name an exit without importing ZeroMQ.

==== ============== ==========================================================
code name           meaning
==== ============== ==========================================================
0    OK             told to stop (``worker_shutdown``)
2    USAGE          bad command line
70   INTERNAL       a bug in the worker itself (traceback in its log)
75   DAEMON_GONE    no word from the daemon for ``--death-timeout`` seconds
76   REFUSED        the daemon refused the hello, or speaks another protocol version
77   CREDENTIALS    the credentials file is missing, unsafe (not 0600) or invalid
79   TASK_STUCK     a cancelled or aborted task did not return within the grace
128+n (signal)      stopped by signal n (143 = SIGTERM, 130 = SIGINT, 129 = SIGHUP)
==== ============== ==========================================================

A process killed by a signal it does not handle (SIGKILL, SIGSEGV) has no exit
code; the launcher reports the signal instead.
"""

from __future__ import annotations

import enum
import signal

__all__ = ["ExitCode", "describe_exit", "exit_code_for_signal"]


class ExitCode(enum.IntEnum):
    """Exit status of a worker process; see the module docstring's table."""

    OK = 0
    USAGE = 2
    INTERNAL = 70
    DAEMON_GONE = 75
    REFUSED = 76
    CREDENTIALS = 77
    TASK_STUCK = 79


_MEANINGS = {
    ExitCode.OK: "stopped when told to",
    ExitCode.USAGE: "bad command line",
    ExitCode.INTERNAL: "internal error in the worker",
    ExitCode.DAEMON_GONE: "no word from the daemon for the death timeout",
    ExitCode.REFUSED: "refused by the daemon",
    ExitCode.CREDENTIALS: "unusable credentials file",
    ExitCode.TASK_STUCK: "a cancelled task did not stop in time",
}


def exit_code_for_signal(signum: int) -> int:
    """Return the exit code of a worker that stopped on signal ``signum`` (128 + n).

    Parameters
    ----------
    signum
        The signal number.

    Returns
    -------
    int
        ``128 + signum``.
    """
    return 128 + int(signum)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_exit(exit_code: int | None, signum: int | None = None) -> str:
    """Describe how a worker process ended, for logs and failure evidence.

    Parameters
    ----------
    exit_code
        Its exit status, or None (killed by a signal, or unknown).
    signum
        The signal that killed it, if any.

    Returns
    -------
    str
        E.g. ``"exited with code 75 (no word from the daemon for the death
        timeout)"``, ``"killed by SIGSEGV"``, ``"exit status unknown"``.
    """
    if signum is not None:
        return f"killed by {_signal_name(signum)}"
    if exit_code is None:
        return "exit status unknown"
    if exit_code in _MEANINGS:
        return f"exited with code {exit_code} ({_MEANINGS[ExitCode(exit_code)]})"
    if 128 < exit_code < 128 + 65:
        return f"exited with code {exit_code} (stopped on {_signal_name(exit_code - 128)})"
    return f"exited with code {exit_code}"
