"""``python -m cistemd.worker``: the worker process a launcher starts.

Command line (the daemon builds it with
:func:`cistemd.manager.launchers.worker_command`)::

    python -m cistemd.worker --connect ENDPOINT --job-id JOB_ID --worker-id WORKER_ID
        --threads N --heartbeat-interval SECONDS --death-timeout SECONDS
        [--prefetch K] [--credentials-file PATH] [--log-file PATH]

Keys never appear here: ``--credentials-file`` names a 0600 file that holds
them. The exit codes are listed in :mod:`cistemd.worker.process`.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from cistemd.worker.process import (
    MAX_PREFETCH,
    CredentialsError,
    CurveCredentials,
    ExitCode,
    Worker,
    WorkerConfig,
    load_credentials,
)

__all__ = ["build_parser", "main"]

logger = logging.getLogger("cistemd.worker")

DEFAULT_PREFETCH = 64
"""Tasks a worker started from the command line may hold at once (see ``--prefetch``)."""

# Environment variables that size the thread pools of numpy's BLAS, OpenMP and numba;
# set before any of them is imported so that N copies × T threads fit the machine.
_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the worker's argument parser.

    Returns
    -------
    argparse.ArgumentParser
        The parser; a bad command line exits with status 2.
    """
    parser = argparse.ArgumentParser(
        prog="python -m cistemd.worker",
        description="A cistemd worker: connects to the daemon, pulls tasks, runs them.",
    )
    parser.add_argument("--connect", required=True, metavar="ENDPOINT", help="ipc://… or tcp://…")
    parser.add_argument("--job-id", required=True, help="the job this worker serves ('' = any)")
    parser.add_argument("--worker-id", required=True, help="this worker's id and socket identity")
    parser.add_argument("--threads", type=_positive_int, default=1, help="threads per task")
    parser.add_argument(
        "--heartbeat-interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="heartbeat period until the daemon sets its own (default 1)",
    )
    parser.add_argument(
        "--death-timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="exit after this long without a word from the daemon (default 60)",
    )
    parser.add_argument(
        "--prefetch",
        type=_positive_int,
        default=DEFAULT_PREFETCH,
        metavar="K",
        help=f"hold up to K tasks at once, 1..{MAX_PREFETCH}; the daemon adapts how many "
        f"to the task time (default {DEFAULT_PREFETCH})",
    )
    parser.add_argument(
        "--credentials-file",
        metavar="PATH",
        help="0600 JSON/msgpack file with the CURVE keys (tcp:// endpoints)",
    )
    parser.add_argument(
        "--log-file", metavar="PATH", help="append the log here instead of to stderr"
    )
    return parser


def _configure_logging(log_file: str | None, worker_id: str) -> None:
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s worker {worker_id} [%(process)d] %(name)s: %(message)s"
        )
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Python-level handler: the byte in the wake-up pipe is what counts."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run a worker process and return its exit code.

    Parameters
    ----------
    argv
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        An exit code of :class:`~cistemd.worker.process.ExitCode` or 128 + signal.
    """
    args = build_parser().parse_args(argv)
    for name in _THREAD_VARIABLES:
        os.environ[name] = str(args.threads)
    try:
        _configure_logging(args.log_file, args.worker_id)
    except OSError as exc:
        print(f"cistemd worker: cannot open the log file: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    # A segfault in a kernel prints the Python stack to stderr, the launcher's log.
    faulthandler.enable()

    credentials: CurveCredentials | None = None
    if args.credentials_file:
        try:
            credentials = load_credentials(args.credentials_file)
        except CredentialsError as exc:
            logger.error("%s", exc)
            return ExitCode.CREDENTIALS
    try:
        config = WorkerConfig(
            endpoint=args.connect,
            worker_id=args.worker_id,
            job_id=args.job_id,
            threads=args.threads,
            heartbeat_interval_s=args.heartbeat_interval,
            death_timeout_s=args.death_timeout,
            credentials=credentials,
            prefetch=args.prefetch,
        )
    except ValueError as exc:
        logger.error("bad command line: %s", exc)
        return ExitCode.USAGE

    # Signals are written to a pipe by the C-level handler at once; the link thread
    # reads it, so SIGTERM works even while a kernel holds the main thread in C code.
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    previous = {signum: signal.signal(signum, _ignore) for signum in _STOP_SIGNALS}
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    logger.info(
        "worker %s (pid %d) for job %s starting; daemon at %s",
        config.worker_id,
        os.getpid(),
        config.job_id or "(any)",
        config.endpoint,
    )
    try:
        code = Worker(config).run(signal_fd=read_fd)
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for fd in (read_fd, write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
    logger.info("worker %s exits with code %d", config.worker_id, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
