"""The worker process: connect to the daemon, heartbeat, pull tasks, run them.

``python -m cistemd.worker`` (:mod:`cistemd.worker.__main__`) is what a
launcher starts; :mod:`cistemd.worker.process` holds the logic (threads,
conversation, liveness, stopping) and :mod:`cistemd.worker.exit_codes` the
exit codes. Importing this package loads neither ZeroMQ nor any action; the
names below are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cistemd.worker.exit_codes import ExitCode, describe_exit, exit_code_for_signal

if TYPE_CHECKING:
    from cistemd.worker.process import (
        CredentialsError,
        CurveCredentials,
        Worker,
        WorkerConfig,
        load_credentials,
    )

__all__ = [
    "CredentialsError",
    "CurveCredentials",
    "ExitCode",
    "Worker",
    "WorkerConfig",
    "describe_exit",
    "exit_code_for_signal",
    "load_credentials",
]

_LAZY = frozenset(
    {"CredentialsError", "CurveCredentials", "Worker", "WorkerConfig", "load_credentials"}
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("cistemd.worker.process"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
