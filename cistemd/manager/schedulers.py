r"""Workers as batch-scheduler jobs: SLURM, SGE, LSF and PBS/Torque.

Each scheduler is a small declarative class (after dask-jobqueue): its
submit, cancel and queue commands, the pattern that finds the job id in the
submit command's answer, its directive prefix and how the profile's settings
become header directives. All of them fill one worker-script template::

    #!/bin/sh
    <header: one directive per line, then the profile's extra directives>
    # cistemd worker <worker id> (job name <name>)
    <prologue lines>
    <the profile command, $command = the worker command line>
    status=$?
    echo "$status" > <log dir>/<worker id>.exit
    exit "$status"

:func:`job_script` returns that script -- ``cistem profile script NAME``
prints it -- and :class:`SchedulerLauncher` writes it (mode 0600) next to the
worker's log and submits it. The worker finds its CURVE keys in a 0600
credentials file on the shared filesystem; the script only names the file,
so neither the script nor any command line holds a secret.

Modes (:attr:`~cistemd.manager.profiles.SchedulerSettings.mode`):

* ``batch`` -- one scheduler job per worker (``sbatch``, ``qsub``, ``bsub``);
* ``srun`` (SLURM) -- one ``srun`` process per worker, run from the daemon's host;
* ``allocation`` (SLURM) -- one ``salloc --no-shell`` allocation for all the
  copies of a command, then one ``srun --jobid`` step that starts every worker
  in it (each picks its worker id by ``$SLURM_PROCID``).

Faults, and why nothing is submitted twice
------------------------------------------
Every submission carries a unique job name (``<job_name>-<worker id>``).

* a submit command that times out, exits non-zero or prints no job id may
  still have queued the job: the queue is asked for that name, and a job found
  there is adopted; one not found is reported as a failed launch (the daemon
  decides whether to launch a replacement, with a new name) and its name is
  remembered: a job of that name that shows up later is cancelled, never run
  next to its replacement;
* a job that leaves the queue (finished, cancelled, node failure, or simply
  vanished) is reported once as an ended worker, with the exit status its
  script recorded if it got that far; the daemon re-queues its task;
* a queue command that fails or times out decides nothing: the jobs are
  taken as they were until the queue answers again, and a job must be missing
  from two answers in a row before it counts as gone;
* :meth:`SchedulerLauncher.terminate` cancels every job it knows (an "already
  gone" answer is fine) and waits until the queue no longer shows them.

:meth:`SchedulerLauncher.to_dict` records every job id, the names in limbo
and the local ``srun`` processes, so a restarted daemon re-attaches and
reconciles them against the queue.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import re
import shlex
import signal as signals
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

from cistemd.errors import InvalidInputError
from cistemd.manager.launchers import (
    _LAUNCHERS,
    LAUNCH_FAILED_EXIT_CODE,
    Launcher,
    LocalLauncher,
    WorkerExit,
    read_tail,
    worker_id_of,
)
from cistemd.manager.profiles import COMMAND_PLACEHOLDER, SchedulerSettings, render_template

__all__ = [
    "LSF",
    "PBS",
    "SCHEDULERS",
    "SGE",
    "SLURM",
    "CommandResult",
    "Scheduler",
    "SchedulerLauncher",
    "job_script",
]

logger = logging.getLogger(__name__)

_ENDED: Final = "ended"
_MISSING_ROUNDS: Final = 2  # answers without a job before it counts as gone
_SAFE_NAME: Final = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a scheduler command did.

    Parameters
    ----------
    returncode
        Its exit status; None if it timed out or could not start.
    stdout, stderr
        Its output.
    """

    returncode: int | None
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """Whether it exited with status 0."""
        return self.returncode == 0


Runner = Callable[[Sequence[str], str | None, float], CommandResult]
"""Runs ``argv`` with optional stdin text and a timeout (tests substitute their own)."""


def run_command(argv: Sequence[str], stdin: str | None, timeout: float) -> CommandResult:
    """Run a scheduler command and return its result (never raises for its failure).

    Parameters
    ----------
    argv
        The command line.
    stdin
        Text for its standard input (None: ``/dev/null``).
    timeout
        Seconds it may take; then it is killed and the result has ``returncode`` None.

    Returns
    -------
    CommandResult
    """
    try:
        completed = subprocess.run(
            list(argv),
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        return CommandResult(
            None, _text(exc.stdout), _text(exc.stderr) + f"\ntimed out after {timeout:g} s"
        )
    except OSError as exc:
        return CommandResult(None, "", f"cannot run {argv[0]}: {exc.strerror or exc}")
    return CommandResult(completed.returncode, completed.stdout, completed.stderr)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else ""


# --------------------------------------------------------------------------- the schedulers


class Scheduler:
    """What differs between batch schedulers; subclasses only declare.

    Attributes are class-level: ``kind``, ``directive_prefix``,
    ``submit_command`` (the script path is appended, or the script goes to
    stdin when ``submit_via_stdin``), ``cancel_command``, ``job_id_pattern``
    (group 1 = the id), ``ended_states`` (queue states of jobs that are over),
    ``resource_options`` (the directive of each optional setting --
    ``queue``, ``account``, ``walltime``, ``memory`` -- with ``{}`` for its value).
    """

    kind: ClassVar[str] = ""
    resource_options: ClassVar[tuple[tuple[str, str], ...]] = ()
    directive_prefix: ClassVar[str] = "#"
    submit_command: ClassVar[tuple[str, ...]] = ()
    submit_via_stdin: ClassVar[bool] = False
    cancel_command: ClassVar[tuple[str, ...]] = ()
    job_id_pattern: ClassVar[re.Pattern[str]] = re.compile(r"(\d+)")
    ended_states: ClassVar[frozenset[str]] = frozenset()

    def header(
        self, settings: SchedulerSettings, *, name: str, threads: int, log_path: str
    ) -> list[str]:
        """Return the header directives (without the prefix) for one worker job.

        Parameters
        ----------
        settings
            The profile's scheduler settings.
        name
            The job's name.
        threads
            CPU cores the worker uses.
        log_path
            Where the job's stdout and stderr go.

        Returns
        -------
        list of str
        """
        raise NotImplementedError

    def resource_lines(self, settings: SchedulerSettings) -> list[str]:
        """Return the directives of the optional settings that are set (``resource_options``)."""
        return [
            template.format(self.setting_value(settings, name))
            for name, template in self.resource_options
            if getattr(settings, name)
        ]

    def setting_value(self, settings: SchedulerSettings, name: str) -> str:
        """Return a setting as this scheduler writes it (as given, by default)."""
        return str(getattr(settings, name))

    def queue_command(self, user: str) -> list[str]:
        """Return the command that lists ``user``'s jobs.

        Parameters
        ----------
        user
            The user name.

        Returns
        -------
        list of str
        """
        raise NotImplementedError

    def parse_queue(self, text: str) -> dict[str, tuple[str, str]]:
        """Parse the queue command's output.

        Parameters
        ----------
        text
            Its stdout.

        Returns
        -------
        dict
            ``{job_id: (name, state)}``.
        """
        raise NotImplementedError

    def signal_command(self, signum: int) -> list[str] | None:
        """Return the command that sends ``signum`` to jobs (ids appended), if there is one."""
        return None

    def parse_job_id(self, text: str) -> str | None:
        """Return the job id in the submit command's output, if any.

        Parameters
        ----------
        text
            stdout and stderr of the submit command.

        Returns
        -------
        str or None
        """
        match = self.job_id_pattern.search(text)
        return match.group(1) if match else None


class SLURM(Scheduler):
    """SLURM: ``sbatch --parsable``, ``scancel``, ``squeue``."""

    kind = "slurm"
    resource_options = (("queue", "--partition={}"), ("account", "--account={}"),
                        ("walltime", "--time={}"), ("memory", "--mem={}"))
    directive_prefix = "#SBATCH"
    submit_command = ("sbatch", "--parsable")
    cancel_command = ("scancel",)
    job_id_pattern = re.compile(r"^\s*(\d+)(?:;\S*)?\s*$", re.MULTILINE)
    ended_states = frozenset(
        {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL",
         "OUT_OF_MEMORY", "PREEMPTED", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
    )  # fmt: skip

    def header(
        self, settings: SchedulerSettings, *, name: str, threads: int, log_path: str
    ) -> list[str]:
        """Return SLURM directives (see :meth:`Scheduler.header`)."""
        lines = [
            f"--job-name={name}",
            f"--output={log_path}",
            "--open-mode=append",
            "--nodes=1",
            "--ntasks=1",
            f"--cpus-per-task={threads}",
        ]
        return lines + self.resource_lines(settings)

    def queue_command(self, user: str) -> list[str]:
        """Return ``squeue -h -u USER -o '%i|%j|%T'``."""
        return ["squeue", "-h", "-u", user, "-o", "%i|%j|%T"]

    def parse_queue(self, text: str) -> dict[str, tuple[str, str]]:
        """Parse ``id|name|STATE`` lines."""
        return _parse_pipes(text)

    def signal_command(self, signum: int) -> list[str] | None:
        """Return ``scancel --signal=N --full``."""
        return ["scancel", f"--signal={int(signum)}", "--full"]


class SGE(Scheduler):
    """Sun/Son of/Univa Grid Engine: ``qsub``, ``qdel``, ``qstat -r``."""

    kind = "sge"
    resource_options = (("queue", "-q {}"), ("account", "-A {}"),
                        ("walltime", "-l h_rt={}"), ("memory", "-l h_vmem={}"))
    directive_prefix = "#$"
    submit_command = ("qsub",)
    cancel_command = ("qdel",)
    job_id_pattern = re.compile(r"Your job(?:-array)? (\d+)")

    def header(
        self, settings: SchedulerSettings, *, name: str, threads: int, log_path: str
    ) -> list[str]:
        """Return SGE directives (threads: add ``-pe <your pe> N`` as an extra directive)."""
        return [f"-N {name}", "-S /bin/sh", f"-o {log_path}", "-j y",
                *self.resource_lines(settings)]  # fmt: skip

    def queue_command(self, user: str) -> list[str]:
        """Return ``qstat -u USER -r`` (``-r`` prints each job's full name)."""
        return ["qstat", "-u", user, "-r"]

    def parse_queue(self, text: str) -> dict[str, tuple[str, str]]:
        """Parse ``qstat -r``: job lines (id, prio, name, user, state ...), 'Full jobname:'."""
        jobs: dict[str, tuple[str, str]] = {}
        current: str | None = None
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[0].isdigit():
                current = fields[0]
                jobs[current] = (fields[2], fields[4])
            elif current is not None and line.strip().startswith("Full jobname:"):
                jobs[current] = (line.split(":", 1)[1].strip(), jobs[current][1])
        return jobs


class LSF(Scheduler):
    """IBM Spectrum LSF: ``bsub < script``, ``bkill``, ``bjobs``."""

    kind = "lsf"
    resource_options = (("queue", "-q {}"), ("account", "-P {}"),
                        ("walltime", "-W {}"), ("memory", "-M {}"))
    directive_prefix = "#BSUB"
    submit_command = ("bsub",)
    submit_via_stdin = True
    cancel_command = ("bkill",)
    job_id_pattern = re.compile(r"Job <(\d+)>")
    ended_states = frozenset({"DONE", "EXIT", "ZOMBI"})

    def header(
        self, settings: SchedulerSettings, *, name: str, threads: int, log_path: str
    ) -> list[str]:
        """Return LSF directives (walltime as ``[HH:]MM``)."""
        return [f"-J {name}", f"-o {log_path}", f"-e {log_path}", f"-n {threads}",
                '-R "span[hosts=1]"', *self.resource_lines(settings)]  # fmt: skip

    def setting_value(self, settings: SchedulerSettings, name: str) -> str:
        """Return a setting as LSF writes it: the wall time as ``HH:MM``."""
        parts = settings.walltime.split(":")
        if name == "walltime" and len(parts) == 3:
            return ":".join(parts[:2])
        return super().setting_value(settings, name)

    def queue_command(self, user: str) -> list[str]:
        """Return ``bjobs -u USER -noheader -o 'jobid job_name stat delimiter="|"'``."""
        return ["bjobs", "-u", user, "-noheader", "-o", 'jobid job_name stat delimiter="|"']

    def parse_queue(self, text: str) -> dict[str, tuple[str, str]]:
        """Parse ``id|name|STAT`` lines."""
        return _parse_pipes(text)

    def signal_command(self, signum: int) -> list[str] | None:
        """Return ``bkill -s N``."""
        return ["bkill", "-s", str(int(signum))]


class PBS(Scheduler):
    """PBS Pro and Torque: ``qsub``, ``qdel``, ``qstat -f``."""

    kind = "pbs"
    resource_options = (("queue", "-q {}"), ("account", "-A {}"),
                        ("walltime", "-l walltime={}"), ("memory", "-l mem={}"))
    directive_prefix = "#PBS"
    submit_command = ("qsub",)
    cancel_command = ("qdel",)
    job_id_pattern = re.compile(r"^\s*(\d+(?:\[\d*\])?(?:\.[A-Za-z0-9_.-]+)?)\s*$", re.MULTILINE)
    ended_states = frozenset({"C", "F"})

    def header(
        self, settings: SchedulerSettings, *, name: str, threads: int, log_path: str
    ) -> list[str]:
        """Return PBS directives."""
        return [f"-N {name}", f"-o {log_path}", "-j oe", f"-l nodes=1:ppn={threads}",
                *self.resource_lines(settings)]  # fmt: skip

    def queue_command(self, user: str) -> list[str]:
        """Return ``qstat -f`` (full records: ``Job Id``, ``Job_Name``, ``job_state``)."""
        return ["qstat", "-f"]

    def parse_queue(self, text: str) -> dict[str, tuple[str, str]]:
        """Parse ``qstat -f`` records."""
        jobs: dict[str, tuple[str, str]] = {}
        current: str | None = None
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("Job Id:"):
                current = stripped.split(":", 1)[1].strip()
                jobs[current] = ("", "")
            elif current is not None and "=" in stripped:
                key, _, value = (part.strip() for part in stripped.partition("="))
                if key == "Job_Name":
                    jobs[current] = (value, jobs[current][1])
                elif key == "job_state":
                    jobs[current] = (jobs[current][0], value)
        return jobs

    def signal_command(self, signum: int) -> list[str] | None:
        """Return ``qsig -s N``."""
        return ["qsig", "-s", str(int(signum))]


def _parse_pipes(text: str) -> dict[str, tuple[str, str]]:
    jobs = {}
    for line in text.splitlines():
        parts = [part.strip() for part in line.strip().split("|")]
        if len(parts) >= 3 and parts[0]:
            jobs[parts[0]] = (parts[1], parts[2])
    return jobs


SCHEDULERS: Final[Mapping[str, Scheduler]] = {
    "slurm": SLURM(),
    "sge": SGE(),
    "lsf": LSF(),
    "pbs": PBS(),
}
"""One instance per scheduler kind."""


# --------------------------------------------------------------------------- the script


def job_name(settings: SchedulerSettings, worker_id: str) -> str:
    """Return the scheduler job name of one worker (unique: it carries the worker id).

    Parameters
    ----------
    settings
        The profile's scheduler settings.
    worker_id
        The worker's id.

    Returns
    -------
    str
    """
    return _SAFE_NAME.sub("_", f"{settings.job_name or 'cistem'}-{worker_id}")[:200]


def job_script(
    settings: SchedulerSettings,
    worker_argv: Sequence[str],
    *,
    command_template: str = COMMAND_PLACEHOLDER,
    threads: int = 1,
    log_dir: str | os.PathLike[str] = ".",
) -> str:
    """Return the batch script that runs one worker (the exact text that is submitted).

    Parameters
    ----------
    settings
        The profile's scheduler settings.
    worker_argv
        The worker's command line (:func:`~cistemd.manager.launchers.worker_command`).
    command_template
        The profile command; ``$command`` = the worker command line.
    threads
        CPU cores per worker.
    log_dir
        Where the job's log and exit-status file go.

    Returns
    -------
    str
        The script.
    """
    scheduler = SCHEDULERS[settings.kind]
    worker_id = worker_id_of(worker_argv) or "worker"
    safe_id = _SAFE_NAME.sub("_", worker_id)
    log_path = os.path.join(os.fspath(log_dir), f"worker-{safe_id}.log")
    exit_path = os.path.join(os.fspath(log_dir), f"worker-{safe_id}.exit")
    name = job_name(settings, worker_id)
    header = scheduler.header(settings, name=name, threads=threads, log_path=log_path)
    lines = ["#!/bin/sh"]
    lines += [f"{scheduler.directive_prefix} {item}" for item in header]
    lines += [f"{scheduler.directive_prefix} {item}" for item in settings.extra_directives]
    lines.append(f"# cistemd worker {worker_id} (scheduler job name {name})")
    lines += list(settings.prologue)
    lines.append(render_template(command_template, worker_argv))
    lines.append("status=$?")
    lines.append(f'echo "$status" > {shlex.quote(exit_path)}')
    lines.append('exit "$status"')
    return "\n".join(lines) + "\n"


def _srun_options(settings: SchedulerSettings, *, name: str, threads: int) -> list[str]:
    options = [f"--job-name={name}", f"--cpus-per-task={threads}"]
    options += SLURM().resource_lines(settings)
    for directive in settings.extra_directives:
        options += shlex.split(directive)
    options += shlex.split(settings.submit_options)
    return options


def srun_command(
    settings: SchedulerSettings,
    worker_argv: Sequence[str],
    *,
    command_template: str = COMMAND_PLACEHOLDER,
    threads: int = 1,
) -> list[str]:
    """Return the ``srun`` command line that runs one worker (mode ``srun``).

    Parameters
    ----------
    settings
        The profile's scheduler settings.
    worker_argv
        The worker's command line.
    command_template
        The profile command.
    threads
        CPU cores per worker.

    Returns
    -------
    list of str
    """
    name = job_name(settings, worker_id_of(worker_argv) or "worker")
    body = render_template(command_template, worker_argv)
    return ["srun", "--nodes=1", "--ntasks=1", *_srun_options(settings, name=name, threads=threads),
            "/bin/sh", "-c", _with_prologue(settings, body)]  # fmt: skip


def _with_prologue(settings: SchedulerSettings, body: str) -> str:
    return "\n".join([*settings.prologue, body])


def salloc_command(
    settings: SchedulerSettings, *, name: str, workers: int, threads: int
) -> list[str]:
    """Return the ``salloc --no-shell`` command of one allocation (mode ``allocation``).

    Parameters
    ----------
    settings
        The profile's scheduler settings.
    name
        The allocation's job name.
    workers
        Tasks in the allocation (one per worker).
    threads
        CPU cores per worker.

    Returns
    -------
    list of str
    """
    return ["salloc", "--no-shell", f"--ntasks={workers}",
            *_srun_options(settings, name=name, threads=threads)]  # fmt: skip


def allocation_step_command(
    settings: SchedulerSettings,
    allocation_id: str,
    workers_argv: Sequence[Sequence[str]],
    *,
    command_template: str = COMMAND_PLACEHOLDER,
    threads: int = 1,
) -> list[str]:
    """Return the ``srun --jobid`` step that starts every worker of an allocation.

    Each task picks its worker command line by ``$SLURM_PROCID``.

    Parameters
    ----------
    settings
        The profile's scheduler settings.
    allocation_id
        The allocation's job id.
    workers_argv
        One worker command line per task.
    command_template
        The profile command.
    threads
        CPU cores per worker.

    Returns
    -------
    list of str
    """
    cases = [
        f"  {index}) {render_template(command_template, argv)} ;;"
        for index, argv in enumerate(workers_argv)
    ]
    body = "\n".join(['case "$SLURM_PROCID" in', *cases, "esac"])
    return [
        "srun",
        f"--jobid={allocation_id}",
        f"--ntasks={len(workers_argv)}",
        f"--cpus-per-task={threads}",
        "--kill-on-bad-exit=0",
        "/bin/sh",
        "-c",
        _with_prologue(settings, body),
    ]


# --------------------------------------------------------------------------- the launcher


@dataclass(slots=True)
class _SchedulerJob:
    job_id: str
    name: str
    worker_ids: list[str]
    log_path: str
    exit_path: str
    state: str = "SUBMITTED"
    missing: int = 0
    local_id: str = ""  # the local srun process (modes srun and allocation)


class SchedulerLauncher(Launcher):
    """Runs workers as batch-scheduler jobs (see the module docstring).

    Parameters
    ----------
    settings
        The profile's scheduler settings.
    log_dir
        Directory of the job scripts, the workers' logs and exit files (on the
        shared filesystem; created 0700).
    command_template
        The profile command; ``$command`` = the worker command line.
    threads
        CPU cores per worker.
    delay_ms
        Milliseconds between two submissions.
    grace_seconds
        How long :meth:`terminate` waits for cancelled jobs to leave the queue.
    tag
        Unique to this job and command; names the allocation.
    poll_interval_s
        Least time between two queue queries.
    runner
        Runs the scheduler's commands (default :func:`run_command`).
    user
        Whose queue to read (default: this user).
    """

    kind = "scheduler"

    def __init__(
        self,
        settings: SchedulerSettings,
        *,
        log_dir: str | os.PathLike[str],
        command_template: str = COMMAND_PLACEHOLDER,
        threads: int = 1,
        delay_ms: int = 0,
        grace_seconds: float = 2.0,
        tag: str = "",
        poll_interval_s: float = 1.0,
        runner: Runner | None = None,
        user: str | None = None,
    ) -> None:
        if COMMAND_PLACEHOLDER not in command_template:
            raise InvalidInputError(
                f"command template {command_template!r} does not contain {COMMAND_PLACEHOLDER}"
            )
        self.settings = settings
        self.scheduler = SCHEDULERS[settings.kind]
        self.log_dir = Path(log_dir)
        self.command_template = command_template
        self.threads = int(threads)
        self.delay_ms = int(delay_ms)
        self.grace_seconds = float(grace_seconds)
        self.tag = tag or "cistem"
        self.poll_interval_s = float(poll_interval_s)
        self.runner: Runner = runner or run_command
        self.user = user or getpass.getuser()
        self._jobs: dict[str, _SchedulerJob] = {}
        self._limbo: set[str] = set()
        self._exited: list[WorkerExit] = []
        self._local = LocalLauncher(self.log_dir, grace_seconds=grace_seconds)
        self._next_query = 0.0
        self.submissions = 0
        """Submit commands run by this launcher (tests count them)."""

    # ----------------------------------------------------------------- commands

    def _run(self, argv: Sequence[str], stdin: str | None = None) -> CommandResult:
        result = self.runner(list(argv), stdin, self.settings.submit_timeout_s)
        if not result.ok:
            logger.info(
                "%s answered %s: %s",
                shlex.join(argv)[:200],
                "nothing in time" if result.returncode is None else f"status {result.returncode}",
                (result.stderr or result.stdout).strip()[-500:],
            )
        return result

    def _query(self) -> dict[str, tuple[str, str]] | None:
        """Return the queue (``{id: (name, state)}``), or None if it did not answer."""
        result = self._run(self.scheduler.queue_command(self.user))
        if not result.ok:
            return None
        return self.scheduler.parse_queue(result.stdout)

    def _find(self, name: str) -> str | None:
        queue = self._query()
        if queue is None:
            return None
        for job_id, (found, _state) in queue.items():
            if found == name:
                return job_id
        return None

    # ----------------------------------------------------------------- launching

    def script(self, worker_argv: Sequence[str]) -> str:
        """Return the batch script of one worker (mode ``batch``).

        Parameters
        ----------
        worker_argv
            The worker command line.

        Returns
        -------
        str
        """
        return job_script(
            self.settings,
            worker_argv,
            command_template=self.command_template,
            threads=self.threads,
            log_dir=self.log_dir,
        )

    def launch(self, commands: Sequence[Sequence[str]]) -> None:
        """Submit the workers (see the module docstring for what a failure does).

        Parameters
        ----------
        commands
            Worker command lines.
        """
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.settings.mode == "allocation":
            self._launch_allocation(commands)
            return
        for index, argv in enumerate(commands):
            if index and self.delay_ms:
                time.sleep(self.delay_ms / 1000)
            if self.settings.mode == "srun":
                self._launch_srun(argv)
            elif not self._submit(argv):
                # The scheduler neither answered nor queued the job: do not make the
                # daemon wait a timeout per copy; the rest fail now, to be retried later.
                rest = [worker_id_of(item) or "worker" for item in commands[index + 1 :]]
                self._failed(rest, f"not submitted: {self.scheduler.kind} did not answer")
                return

    def _paths(self, worker_id: str) -> tuple[str, str]:
        safe = _SAFE_NAME.sub("_", worker_id)
        return str(self.log_dir / f"worker-{safe}.log"), str(self.log_dir / f"worker-{safe}.exit")

    def _failed(self, worker_ids: Sequence[str], why: str, log_path: str = "") -> None:
        for worker_id in worker_ids:
            self._exited.append(
                WorkerExit(
                    worker_id=worker_id,
                    pid=None,
                    exit_code=LAUNCH_FAILED_EXIT_CODE,
                    signal=None,
                    stderr_tail=why[-4000:],
                    log_path=log_path,
                )
            )

    def _submit(self, argv: Sequence[str]) -> bool:
        """Submit one worker; return False when the scheduler timed out and queued nothing."""
        worker_id = worker_id_of(argv) or f"worker-{self.submissions + 1}"
        name = job_name(self.settings, worker_id)
        log_path, exit_path = self._paths(worker_id)
        script = self.script(argv)
        script_path = self.log_dir / f"worker-{_SAFE_NAME.sub('_', worker_id)}.sh"
        _write_private(script_path, script)
        argv_submit = [*self.scheduler.submit_command, *shlex.split(self.settings.submit_options)]
        stdin = None
        if self.scheduler.submit_via_stdin:
            stdin = script
        else:
            argv_submit.append(str(script_path))
        self.submissions += 1
        result = self._run(argv_submit, stdin)
        job_id = None
        if result.ok:
            job_id = self.scheduler.parse_job_id(result.stdout + "\n" + result.stderr)
        if job_id is None:
            # It may have been queued all the same: look for its name before giving up.
            job_id = self._find(name)
            if job_id is not None:
                logger.warning(
                    "submitting %s reported a failure, but job %s of that name is queued; adopted",
                    name,
                    job_id,
                )
        if job_id is None:
            self._limbo.add(name)
            what = "timed out" if result.returncode is None else f"exited {result.returncode}"
            self._failed(
                [worker_id],
                f"{shlex.join(argv_submit)} {what}: {(result.stderr or result.stdout).strip()}",
                log_path,
            )
            return result.returncode is not None
        self._jobs[job_id] = _SchedulerJob(job_id, name, [worker_id], log_path, exit_path)
        logger.info("submitted %s as %s job %s", worker_id, self.scheduler.kind, job_id)
        return True

    def _launch_srun(self, argv: Sequence[str]) -> None:
        worker_id = worker_id_of(argv) or f"worker-{self.submissions + 1}"
        name = job_name(self.settings, worker_id)
        log_path, exit_path = self._paths(worker_id)
        self.submissions += 1
        srun = srun_command(
            self.settings, argv, command_template=self.command_template, threads=self.threads
        )
        self._local._start(worker_id, srun, dict(os.environ))
        self._jobs[f"srun:{worker_id}"] = _SchedulerJob(
            f"srun:{worker_id}", name, [worker_id], log_path, exit_path, local_id=worker_id
        )

    def _launch_allocation(self, commands: Sequence[Sequence[str]]) -> None:
        if not commands:
            return
        worker_ids = [worker_id_of(argv) or f"worker-{i}" for i, argv in enumerate(commands)]
        name = job_name(self.settings, f"{self.tag}-{worker_ids[0]}")
        log_path, exit_path = self._paths(f"allocation-{worker_ids[0]}")
        self.submissions += 1
        salloc = salloc_command(
            self.settings, name=name, workers=len(commands), threads=self.threads
        )
        result = self._run(salloc)
        match = re.search(r"job allocation (\d+)", result.stderr + result.stdout)
        allocation_id = match.group(1) if match else self._find(name)
        if allocation_id is None:
            self._limbo.add(name)
            self._failed(
                worker_ids, f"{shlex.join(salloc)}: {(result.stderr or result.stdout).strip()}"
            )
            return
        step = allocation_step_command(
            self.settings,
            allocation_id,
            commands,
            command_template=self.command_template,
            threads=self.threads,
        )
        local_id = f"allocation-{allocation_id}"
        self._local._start(local_id, step, dict(os.environ))
        self._jobs[allocation_id] = _SchedulerJob(
            allocation_id, name, worker_ids, log_path, exit_path, local_id=local_id
        )
        logger.info("allocation %s runs %d worker(s)", allocation_id, len(worker_ids))

    # ----------------------------------------------------------------- watching

    def _reconcile(self, force: bool = False) -> None:
        """Compare the jobs with the queue (at most every ``poll_interval_s``)."""
        now = time.monotonic()
        local_exits = {item.worker_id: item for item in self._local.poll()}
        for key, job in list(self._jobs.items()):
            if job.local_id and job.local_id in local_exits:
                item = local_exits[job.local_id]
                if not key.startswith("srun:"):
                    self._run([*self.scheduler.cancel_command, job.job_id])  # end the allocation
                self._end(key, item.exit_code, item.signal, f"srun {item.description}")
        if not self._jobs and not self._limbo:
            return
        if not force and now < self._next_query:
            return
        self._next_query = now + self.poll_interval_s
        queue = self._query()
        if queue is None:
            return  # a queue that does not answer decides nothing
        names = {name: job_id for job_id, (name, _state) in queue.items()}
        for name in list(self._limbo):
            if name in names:
                logger.warning(
                    "job %s (%s) appeared after its submission was reported failed; cancelling it",
                    names[name],
                    name,
                )
                self._run([*self.scheduler.cancel_command, names[name]])
            else:
                continue
            self._limbo.discard(name)
        for key, job in list(self._jobs.items()):
            if key.startswith("srun:"):
                continue  # an srun process is watched as a process
            entry = queue.get(job.job_id)
            if entry is not None and entry[1] not in self.scheduler.ended_states:
                job.state, job.missing = entry[1], 0
                continue
            if entry is not None:
                job.state = entry[1]
                job.missing = _MISSING_ROUNDS
            else:
                job.missing += 1
            if job.missing >= _MISSING_ROUNDS:
                # (an allocation's srun step ends with it; its exit then finds no job)
                self._end(
                    key, None, None, f"job {job.job_id} left the queue (last state {job.state})"
                )

    def _end(self, key: str, exit_code: int | None, signum: int | None, why: str) -> None:
        job = self._jobs.pop(key)
        recorded = _read_exit(job.exit_path)
        code = recorded if recorded is not None else exit_code
        tail = read_tail(job.log_path)
        for worker_id in job.worker_ids:
            self._exited.append(
                WorkerExit(
                    worker_id=worker_id,
                    pid=None,
                    exit_code=code,
                    signal=signum if code is None else None,
                    stderr_tail=(tail + f"\n[cistemd] {self.scheduler.kind} {why}")[-4000:],
                    log_path=job.log_path,
                )
            )

    def poll(self) -> list[WorkerExit]:
        """Return the workers whose jobs ended since the last call (each once).

        Returns
        -------
        list of WorkerExit
        """
        self._reconcile()
        exited, self._exited = self._exited, []
        return exited

    def is_alive(self) -> bool:
        """Return whether any job is still queued or running."""
        self._reconcile()
        return bool(self._jobs)

    @property
    def job_ids(self) -> list[str]:
        """The scheduler job ids it watches."""
        return [job.job_id for job in self._jobs.values() if not job.job_id.startswith("srun:")]

    # ----------------------------------------------------------------- stopping

    def _cancel_all(self) -> None:
        ids = self.job_ids
        if ids:
            self._run([*self.scheduler.cancel_command, *ids])  # "already gone" is fine
        names = [job.name for job in self._jobs.values() if job.job_id.startswith("srun:")]
        if names and self.scheduler.kind == "slurm":
            for name in names:
                self._run(["scancel", f"--name={name}", f"--user={self.user}"])

    def signal(self, signum: int) -> None:
        """Send ``signum`` to every job; SIGTERM, SIGINT and SIGKILL cancel them.

        Parameters
        ----------
        signum
            The signal.
        """
        if signum in (signals.SIGTERM, signals.SIGINT, signals.SIGKILL):
            self._cancel_all()
            self._local.signal(signum)
            return
        command = self.scheduler.signal_command(signum)
        if command is not None and self.job_ids:
            self._run([*command, *self.job_ids])
        self._local.signal(signum)

    def terminate(self, grace_seconds: float | None = None) -> None:
        """Cancel every job and wait (up to the grace period + 10 s) until the queue lets go.

        Parameters
        ----------
        grace_seconds
            Extra wait (None: :attr:`grace_seconds`).
        """
        grace = self.grace_seconds if grace_seconds is None else max(0.0, grace_seconds)
        self._cancel_all()
        self._local.terminate(grace)
        deadline = time.monotonic() + grace + 10.0
        while self._jobs and time.monotonic() < deadline:
            self._reconcile(force=True)
            if self._jobs:
                time.sleep(0.2)

    def kill(self) -> None:
        """Cancel every job at once and stop the local ``srun`` processes."""
        self._cancel_all()
        self._local.kill()
        self._reconcile(force=True)

    # ----------------------------------------------------------------- persistence

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-like map from which :meth:`from_dict` re-attaches.

        Returns
        -------
        dict
            Settings, every job (id, name, worker ids, log and exit paths,
            state), the names in limbo, the local ``srun`` processes and the
            exits not yet polled.
        """
        return {
            "kind": self.kind,
            "endpoint": self.endpoint,
            "settings": self.settings.to_dict(),
            "log_dir": str(self.log_dir),
            "command_template": self.command_template,
            "threads": self.threads,
            "delay_ms": self.delay_ms,
            "grace_seconds": self.grace_seconds,
            "tag": self.tag,
            "poll_interval_s": self.poll_interval_s,
            "user": self.user,
            "submissions": self.submissions,
            "jobs": [
                {
                    "job_id": job.job_id,
                    "name": job.name,
                    "worker_ids": list(job.worker_ids),
                    "log_path": job.log_path,
                    "exit_path": job.exit_path,
                    "state": job.state,
                    "local_id": job.local_id,
                }
                for job in self._jobs.values()
            ],
            "limbo": sorted(self._limbo),
            "local": self._local.to_dict(),
            "exited": [item.to_dict() for item in self._exited],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SchedulerLauncher:
        """Re-attach to the jobs a previous daemon submitted (reconciled at the next poll).

        Parameters
        ----------
        data
            :meth:`to_dict`'s map.

        Returns
        -------
        SchedulerLauncher

        Raises
        ------
        InvalidInputError
            A malformed map.
        """
        if not isinstance(data, Mapping) or data.get("kind") != cls.kind:
            raise InvalidInputError(f"not a {cls.kind!r} launcher record: {data!r:.200}")
        try:
            launcher = cls(
                SchedulerSettings.from_dict(data["settings"]),
                log_dir=data["log_dir"],
                command_template=str(data.get("command_template", COMMAND_PLACEHOLDER)),
                threads=int(data.get("threads", 1)),
                delay_ms=int(data.get("delay_ms", 0)),
                grace_seconds=float(data.get("grace_seconds", 2.0)),
                tag=str(data.get("tag", "")),
                poll_interval_s=float(data.get("poll_interval_s", 1.0)),
                user=str(data.get("user") or getpass.getuser()),
            )
            launcher.endpoint = str(data.get("endpoint", ""))
            launcher.submissions = int(data.get("submissions", 0))
            for item in data.get("jobs", []):
                job = _SchedulerJob(
                    job_id=str(item["job_id"]),
                    name=str(item["name"]),
                    worker_ids=[str(w) for w in item["worker_ids"]],
                    log_path=str(item["log_path"]),
                    exit_path=str(item["exit_path"]),
                    state=str(item.get("state", "")),
                    local_id=str(item.get("local_id", "")),
                )
                key = job.job_id
                launcher._jobs[key] = job
            launcher._limbo = {str(name) for name in data.get("limbo", [])}
            launcher._local = LocalLauncher.from_dict(data["local"])
            launcher._exited = [WorkerExit.from_dict(item) for item in data.get("exited", [])]
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed scheduler launcher record: {exc}") from None
        return launcher


def _read_exit(path: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(Path(path).read_text(encoding="ascii").strip())
    return None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the start (replacing it)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


_LAUNCHERS[SchedulerLauncher.kind] = SchedulerLauncher
