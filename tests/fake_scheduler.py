#!/usr/bin/env python3
"""A scripted fake batch scheduler: one program installed as sbatch, squeue, scancel, qsub,
qstat, qdel, bsub, bjobs, bkill (it looks at the name it was called by).

State lives in the JSON file ``$FAKE_SCHED_STATE``::

    {"next_id": 100, "jobs": {id: {"name", "state", "pid", "script", "hidden_until"}},
     "submits": [name, ...], "cancels": [id, ...],
     "faults": {"submit": ["timeout" | "fail_after" | "fail_before" | "late" | "ok", ...],
                "queue": ["fail", ...]}}

Each submit pops the next submit fault (default ``ok``): ``timeout`` queues the
job and then hangs, ``hang`` hangs without queueing anything, ``fail_after``
queues it and exits 1, ``fail_before`` queues nothing and exits 1, ``late``
exits 1 and queues the job hidden from the queue for 2 s. When ``run`` is true
in the state, a queued job's script runs in the background like a real job
(its state follows the process). Tests change the state (a job vanishes, a
node fails, a job is requeued) with :func:`mutate`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("FAKE_SCHED_STATE", "/nonexistent"))


@contextlib.contextmanager
def locked():
    with open(str(STATE) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(STATE.read_text()) if STATE.exists() else {}
        state.setdefault("next_id", 100)
        state.setdefault("jobs", {})
        state.setdefault("submits", [])
        state.setdefault("cancels", [])
        state.setdefault("faults", {})
        yield state
        tmp = STATE.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, STATE)


def mutate(path: Path, fn) -> dict:
    """Apply ``fn(state)`` to the state file at ``path`` under its lock (for tests)."""
    global STATE
    STATE = Path(path)
    with locked() as state:
        fn(state)
        return json.loads(json.dumps(state))


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rfind(")") + 2 :].split()[0] not in ("Z", "X")


def start_script(script: str) -> int:
    """Run ``script`` in the background in its own session, like a scheduler would."""
    null = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    return os.posix_spawn(
        "/bin/sh", ["/bin/sh", "-c", script], dict(os.environ), file_actions=null, setsid=True
    )


def refresh(state: dict) -> None:
    for job in state["jobs"].values():
        if job["state"] == "RUNNING" and job.get("pid") and not alive(job["pid"]):
            job["state"] = "COMPLETED"
            job["ended_at"] = time.time()
    for job_id, job in list(state["jobs"].items()):
        if job["state"] in ("COMPLETED", "CANCELLED", "NODE_FAIL") and (
            time.time() - job.get("ended_at", 0) > 0.5
        ):
            del state["jobs"][job_id]


def name_of(kind: str, script: str) -> str:
    patterns = {"slurm": r"#SBATCH --job-name=(\S+)", "sge": r"#\$ -N (\S+)",
                "lsf": r"#BSUB -J (\S+)", "pbs": r"#PBS -N (\S+)"}  # fmt: skip
    match = re.search(patterns[kind], script)
    return match.group(1) if match else "unnamed"


def submit(kind: str, argv: list[str]) -> int:
    script = sys.stdin.read() if kind == "lsf" else Path(argv[-1]).read_text()
    name = name_of(kind, script)
    with locked() as state:
        faults = state["faults"].get("submit", [])
        fault = faults.pop(0) if faults else "ok"
        state["submits"].append(name)
        job_id = str(state["next_id"])
        if fault not in ("fail_before", "hang"):
            state["next_id"] += 1
            job = {"name": name, "state": "RUNNING", "script": script, "pid": None}
            if fault == "late":
                job["hidden_until"] = time.time() + 2.0
            if state.get("run") and fault != "late":
                job["pid"] = start_script(script)
            state["jobs"][job_id] = job
    if fault in ("timeout", "hang"):
        time.sleep(60)
    if fault in ("fail_after", "fail_before", "late"):
        print("error: Socket timed out on send/recv operation", file=sys.stderr)
        return 1
    answers = {"slurm": f"{job_id}\n", "sge": f'Your job {job_id} ("{name}") has been submitted\n',
               "lsf": f"Job <{job_id}> is submitted to queue <normal>.\n",
               "pbs": f"{job_id}.fakeserver\n"}  # fmt: skip
    sys.stdout.write(answers[kind])
    return 0


def queue(kind: str) -> int:
    with locked() as state:
        faults = state["faults"].get("queue", [])
        if faults and faults.pop(0) == "fail":
            print("error: slurm_load_jobs error: Unable to contact controller", file=sys.stderr)
            return 1
        refresh(state)
        jobs = {
            job_id: job
            for job_id, job in state["jobs"].items()
            if job.get("hidden_until", 0) <= time.time()
        }
    for job_id, job in jobs.items():
        if kind == "slurm":
            print(f"{job_id}|{job['name']}|{job['state']}")
        elif kind == "lsf":
            stat = {"RUNNING": "RUN", "COMPLETED": "DONE"}.get(job["state"], job["state"])
            print(f"{job_id}|{job['name']}|{stat}")
        elif kind == "sge":
            print(f"{job_id} 0.55500 {job['name'][:10]} root r 01/01/2026 00:00:00 all.q@n1 1")
            print(f"       Full jobname:     {job['name']}")
        else:
            print(f"Job Id: {job_id}.fakeserver\n    Job_Name = {job['name']}\n"
                  f"    job_state = {'R' if job['state'] == 'RUNNING' else 'C'}\n")  # fmt: skip
    return 0


def cancel(argv: list[str]) -> int:
    ids = [item.split(".")[0] for item in argv[1:] if not item.startswith("-")]
    with locked() as state:
        for job_id in ids:
            state["cancels"].append(job_id)
            job = state["jobs"].get(job_id)
            if job is None:
                print(f"error: job {job_id} already gone", file=sys.stderr)
                continue
            if job.get("pid"):
                with contextlib.suppress(OSError):
                    os.killpg(job["pid"], signal.SIGTERM)
            job["state"] = "CANCELLED"
            job["ended_at"] = time.time()
    return 0


def main() -> int:
    name = os.path.basename(sys.argv[0])
    kinds = {"sbatch": "slurm", "qsub": os.environ.get("FAKE_QSUB_KIND", "sge"), "bsub": "lsf"}
    if name in kinds:
        return submit(kinds[name], sys.argv)
    if name in ("squeue", "qstat", "bjobs"):
        kind = {"squeue": "slurm", "bjobs": "lsf"}.get(name) or os.environ.get(
            "FAKE_QSUB_KIND", "sge"
        )
        return queue(kind)
    if name in ("scancel", "qdel", "bkill"):
        return cancel(sys.argv)
    print(f"fake scheduler: unknown command {name}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
