"""Soak: kill -9 the daemon at random moments of running jobs, hundreds of times.

The full count of the reliability test ``tests/test_daemon_restart.py`` (which
runs 3 rounds quickly and 20 in its ``slow`` variant): each round kills the
daemon with SIGKILL at a random moment of a running 100-task ``selftest`` job
on two local workers and starts it again; a job that completes is followed by
a new one. At the end every job must have completed with exactly one recorded
result per task, ``PRAGMA integrity_check`` must be ``ok`` and no worker may
be left. Prints the time from each restart to the first progress (max, p50,
p99) and the totals; exits non-zero if a check fails (a correctness check,
not a timing one).

Run: ``.venv/bin/python benchmarks/soak_daemon_restart.py [--rounds 200] [--seed 1]``
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from daemon_fixtures import DaemonProcess, worker_pids  # noqa: E402
from test_daemon_restart import kill_and_restart_rounds  # noqa: E402

from cistemd.manager.home import CistemHome  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cistemd-soak-"))
    home = CistemHome.at(root / "home")
    made: list[DaemonProcess] = []

    def make_daemon(*extra: str) -> DaemonProcess:
        process = DaemonProcess(home, root / "daemon.log", extra)
        made.append(process)
        return process

    started = time.monotonic()
    try:
        outcome = kill_and_restart_rounds(
            make_daemon, home, root, rounds=args.rounds, tasks=args.tasks, seed=args.seed
        )
    except AssertionError as failure:
        print(f"FAILED: {failure}\nlogs in {root}")
        args.keep = True
        return 1
    finally:
        for process in made:
            process.cleanup()
        leftovers = worker_pids(home)
        if not args.keep and not leftovers:
            shutil.rmtree(root, ignore_errors=True)
    if leftovers:
        print(f"FAILED: workers left behind: {leftovers}")
        return 1
    recoveries = outcome["recoveries"]
    print(
        f"{args.rounds} kill -9 / restart rounds, {len(outcome['jobs'])} jobs of {args.tasks} "
        f"tasks, all completed with one result per task, integrity ok, no orphan workers "
        f"({time.monotonic() - started:.0f} s)"
    )
    print(
        f"restart to first progress: p50 {percentile(recoveries, 0.5):.2f} s, "
        f"p99 {percentile(recoveries, 0.99):.2f} s, max {max(recoveries, default=0):.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
