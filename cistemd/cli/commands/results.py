"""Show what jobs recorded: per-task results and output files, through cistemd.

  cistem results [--project PATH] [--json]      the project's jobs with how many
                                                results each recorded
  cistem results JOB_ID [--limit N] [--json]    one job's results: task key, attempt,
                                                worker, elapsed time, result values,
                                                output files

A result is recorded once per completed task (a stale attempt's late result
is rejected), so a job of N tasks that completed has N results. Actions that
add assets (aligned micrographs, CTF estimates, class averages, maps) list
them with ``cistem assets``; ``results`` shows the raw per-task record. ``--json``
prints ``{"job_id", "results", "total"}`` (or ``{"jobs": [...]}`` without JOB_ID).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from cistemd.cli.commands._daemon import add_common, project_path, with_client

NAME = "results"
HELP = "show the results jobs recorded"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem results`` arguments."""
    parser.add_argument("job_id", nargs="?", metavar="JOB_ID", help="one job (default: list jobs)")
    parser.add_argument(
        "--limit", type=int, default=None, help="at most this many results (default: all)"
    )
    add_common(parser)


def format_result(result: Mapping[str, Any]) -> str:
    """Render one RESULT record on one line (output files on the next lines)."""
    values = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result["result"].items()
    )
    line = (
        f"{result['key']:<16} attempt {result['attempt']}  {result['elapsed_s']:7.2f} s  "
        f"{result['worker_id']:<20} {values}"
    )
    files = "".join(f"\n    {path}" for path in result["output_files"])
    return line + files


def run(args: argparse.Namespace) -> int:
    """Execute ``cistem results [JOB_ID]``."""
    project = None if args.job_id else project_path(args.project)

    def body(client: Any) -> int:
        if args.job_id:
            results, total = client.job_results(args.job_id, limit=args.limit)
            if args.json:
                print(json.dumps({"job_id": args.job_id, "results": results, "total": total}))
                return 0
            print(f"job {args.job_id}: {total} result(s)")
            for result in results:
                print(format_result(result))
            if total > len(results):
                print(f"({total - len(results)} more not shown; --limit)")
            return 0
        jobs, _ = client.jobs_page(project=project, limit=50)
        listed = []
        for job in jobs:
            _, n_results = client.job_results(job["job_id"], limit=1)
            listed.append({**job, "results": n_results})
        if args.json:
            print(json.dumps({"jobs": listed}))
            return 0
        if not listed:
            print("no jobs")
        for job in listed:
            print(
                f"{job['job_id']:>6}  {job['state']:<9}  {job['action']:<12}  "
                f"{job['results']} result(s)"
            )
        return 0

    return with_client("results", body)
