"""Run profiles: how and where a job's workers are started, as in cisTEM.

A :class:`RunProfile` is cisTEM's model kept as it is: a *manager command* and
a list of :class:`ProfileCommand` lines, each run ``number_of_copies`` times
with ``delay_ms`` between copies and ``threads_per_copy`` threads per worker.
In every command ``$command`` stands for the worker's command line (see
:func:`cistemd.manager.launchers.worker_command`), shell-quoted, so one
template serves every place a worker can run::

    $command                                   a local process
    nice -n 10 $command                        a local process, niced
    ssh node07 $command                        a workstation of an "SSH cluster"
    sbatch --cpus-per-task=4 --wrap="$command" a SLURM job (also qsub, bsub, srun ...)

The field names are cisTEM's (``default_run_profiles.txt``, reference §4):
``command_to_run``, ``number_of_copies``, ``number_of_threads_per_copy`` (here
``threads_per_copy``), ``should_override_total_number_of_copies`` /
``overriden_total_number_of_copies`` (here ``override_total_copies`` /
``overridden_total_copies``) and ``delay_time_in_ms`` (here ``delay_ms``).
The override is for a command that starts several workers per copy (an
``srun -n 64 $command`` inside an allocation): the copies launched stay
``number_of_copies``, the workers counted are ``overridden_total_copies``
(cisTEM's ``RunProfile::ReturnTotalJobs``).

:func:`default_local_profile` is cisTEM's "Default Local": one command,
CPU count + 1 copies, 1 thread each, 10 ms between copies.

Where the workers run
---------------------
``launcher`` says who starts the copies (cistemd's addition to cisTEM's model):

* ``"local"`` -- processes on the daemon's machine (each command line is run
  through ``/bin/sh`` unless it is exactly ``$command``);
* ``"ssh"`` -- each command's copies run on the command's ``host``
  (``[user@]host[:port]``) over SSH (:mod:`cistemd.manager.ssh`; options in
  :class:`SshSettings`): the "SSH cluster" of workstations;
* ``"scheduler"`` -- each copy is a batch job of a SLURM, SGE, LSF or PBS
  scheduler (:mod:`cistemd.manager.schedulers`; options in
  :class:`SchedulerSettings`); in the job script ``$command`` is replaced by
  the worker command line.

Workers that are not local connect back over TCP with CURVE to the address
``gui_address`` names (cisTEM's field): ``""`` picks the address of the
interface that routes to the first remote host (or this host's name),
``"10.0.0.1"`` or ``"10.0.0.1:5555"`` is explicit, ``"eth0"`` (or
``"interface:eth0"``) means that interface's address.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final

from cistemd.errors import InvalidInputError

__all__ = [
    "COMMAND_PLACEHOLDER",
    "DEFAULT_LOCAL_PROFILE_NAME",
    "LAUNCHER_KINDS",
    "PROGRAM_NAME_PLACEHOLDER",
    "SCHEDULER_KINDS",
    "SCHEDULER_MODES",
    "ProfileCommand",
    "RunProfile",
    "SchedulerSettings",
    "SshSettings",
    "default_local_profile",
    "render_template",
]

COMMAND_PLACEHOLDER: Final = "$command"
"""Stands for the shell-quoted worker command line in every template."""

DEFAULT_LOCAL_PROFILE_NAME: Final = "Default Local"
"""Name of the profile made by :func:`default_local_profile` (cisTEM's)."""

PROGRAM_NAME_PLACEHOLDER: Final = "$program_name"
"""Stands for the worker program's name (``cistemd.worker``), as cisTEM's ``$program_name``."""

LAUNCHER_KINDS: Final = ("local", "ssh", "scheduler")
"""Values of :attr:`RunProfile.launcher`."""

SCHEDULER_KINDS: Final = ("slurm", "sge", "lsf", "pbs")
"""Values of :attr:`SchedulerSettings.kind`."""

SCHEDULER_MODES: Final = ("batch", "srun", "allocation")
"""Values of :attr:`SchedulerSettings.mode`: one batch job per worker; one ``srun``
per worker from the daemon's host; one allocation (``salloc``) running every
worker with ``srun``."""

WORKER_PROGRAM_NAME: Final = "cistemd.worker"

_MAX_COPIES: Final = 100_000
_MAX_THREADS: Final = 65_536
_MAX_DELAY_MS: Final = 3_600_000


def _int_field(data: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"run profile field {name!r}: expected an int, got {value!r}")
    if not low <= value <= high:
        raise InvalidInputError(f"run profile field {name!r}: {value} is outside {low}..{high}")
    return value


def _str_field(data: Mapping[str, Any], name: str, default: str) -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise InvalidInputError(f"run profile field {name!r}: expected a str, got {value!r}")
    return value


def _check_template(template: str, what: str) -> None:
    if COMMAND_PLACEHOLDER not in template:
        raise InvalidInputError(
            f"{what} {template!r} does not contain {COMMAND_PLACEHOLDER}, so it would not "
            "start a worker; write e.g. '$command' or 'ssh node07 $command'"
        )


def render_template(template: str, argv: Sequence[str]) -> str:
    """Replace ``$command`` in ``template`` with the shell-quoted ``argv``.

    Parameters
    ----------
    template
        A command line containing ``$command`` (every occurrence is replaced).
    argv
        The worker's command line.

    Returns
    -------
    str
        A shell command line.
    """
    return template.replace(PROGRAM_NAME_PLACEHOLDER, WORKER_PROGRAM_NAME).replace(
        COMMAND_PLACEHOLDER, shlex.join(argv)
    )


def _field_map(settings: Any) -> dict[str, Any]:
    """Return a settings dataclass as a JSON-like map: its fields, tuples as lists."""
    return {
        spec.name: list(value) if isinstance(value, tuple) else value
        for spec in fields(settings)
        for value in (getattr(settings, spec.name),)
    }


@dataclass(frozen=True, slots=True)
class ProfileCommand:
    """One command line of a run profile, run ``number_of_copies`` times.

    Parameters
    ----------
    command_to_run
        The template; ``$command`` is replaced by the worker's shell-quoted
        command line (e.g. ``"$command"``, ``"ssh node07 $command"``,
        ``'sbatch --wrap="$command"'``).
    number_of_copies
        How many times to run it for one job (cisTEM's default for a new
        command: 2).
    threads_per_copy
        Threads each worker may use (``--threads``).
    delay_ms
        Milliseconds to wait between two copies.
    override_total_copies
        Whether one copy starts several workers (``srun -n 64 $command``).
    overridden_total_copies
        The workers this command yields in all, when ``override_total_copies``.
    host
        For the ``"ssh"`` launcher: where the copies run, ``[user@]host[:port]``.

    Raises
    ------
    InvalidInputError
        If the template lacks ``$command`` or a number is out of range.
    """

    command_to_run: str = COMMAND_PLACEHOLDER
    number_of_copies: int = 2
    threads_per_copy: int = 1
    delay_ms: int = 10
    override_total_copies: bool = False
    overridden_total_copies: int = 0
    host: str = ""

    def __post_init__(self) -> None:
        _check_command(self.to_dict())

    @property
    def workers(self) -> int:
        """Workers this command yields when all its copies run."""
        return self.overridden_total_copies if self.override_total_copies else self.number_of_copies

    def render(self, worker_argv: Sequence[str]) -> str:
        """Return the shell command line that starts one copy of ``worker_argv``.

        Parameters
        ----------
        worker_argv
            The worker's command line.

        Returns
        -------
        str
            ``command_to_run`` with ``$command`` replaced by the quoted ``worker_argv``.
        """
        return render_template(self.command_to_run, worker_argv)

    def to_dict(self) -> dict[str, Any]:
        """Return the command as a JSON-like map (the field names of this class)."""
        return _field_map(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProfileCommand:
        """Build a command from :meth:`to_dict`'s map; absent fields take the defaults.

        Parameters
        ----------
        data
            The map.

        Returns
        -------
        ProfileCommand
            The command.

        Raises
        ------
        InvalidInputError
            A field of the wrong type or out of range, or an unknown field.
        """
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"a run profile command must be a map, got {data!r}")
        unknown = sorted(set(data) - set(_COMMAND_DEFAULTS))
        if unknown:
            raise InvalidInputError(
                f"run profile command has unknown field {unknown[0]!r}; "
                f"known: {', '.join(sorted(_COMMAND_DEFAULTS))}"
            )
        return cls(**{**_COMMAND_DEFAULTS, **data})


def _check_command(values: Mapping[str, Any]) -> None:
    """Check the fields of one :class:`ProfileCommand`, naming the bad one."""
    command = _str_field(values, "command_to_run", COMMAND_PLACEHOLDER)
    _check_template(command, "command_to_run")
    _int_field(values, "number_of_copies", 2, 1, _MAX_COPIES)
    _int_field(values, "threads_per_copy", 1, 1, _MAX_THREADS)
    _int_field(values, "delay_ms", 10, 0, _MAX_DELAY_MS)
    overridden = _int_field(values, "overridden_total_copies", 0, 0, _MAX_COPIES)
    override = values.get("override_total_copies", False)
    if not isinstance(override, bool):
        raise InvalidInputError(
            f"run profile field 'override_total_copies': expected a bool, got {override!r}"
        )
    if override and overridden < 1:
        raise InvalidInputError(
            "run profile field 'overridden_total_copies' must be ≥ 1 when "
            "override_total_copies is set"
        )
    host = _str_field(values, "host", "")
    if host and _HOST_PATTERN.fullmatch(host) is None:
        raise InvalidInputError(
            f"run profile field 'host': {host!r} is not [user@]host[:port] "
            "(letters, digits, '.', '-', '_' only)"
        )


_HOST_PATTERN: Final = re.compile(
    r"(?:[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}@)?[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}(?::[0-9]{1,5})?"
)


_COMMAND_DEFAULTS: Final = {
    name: spec.default for name, spec in ProfileCommand.__dataclass_fields__.items()
}


def _float_field(
    data: Mapping[str, Any], name: str, default: float, low: float, high: float
) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"run profile field {name!r}: expected a number, got {value!r}")
    if not low <= float(value) <= high:
        raise InvalidInputError(f"run profile field {name!r}: {value} is outside {low}..{high}")
    return float(value)


def _lines_field(data: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = data.get(name, ())
    if isinstance(value, str):
        value = [value] if value else []
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise InvalidInputError(
            f"run profile field {name!r}: expected a list of str, got {value!r}"
        )
    for item in value:
        if "\n" in item or "\x00" in item:
            raise InvalidInputError(
                f"run profile field {name!r}: {item!r} must be one line (no newline)"
            )
    return tuple(value)


def _with_defaults(settings_class: Any, data: Mapping[str, Any]) -> dict[str, Any]:
    """Return a settings dataclass's fields from a checked map, absent ones at their defaults.

    Fields declared ``float`` are converted (JSON may give ints); line lists
    (``tuple[str, ...]``) become tuples.
    """
    merged: dict[str, Any] = {}
    for spec in fields(settings_class):
        if spec.name not in data:
            merged[spec.name] = spec.default
        elif spec.type == "float":
            merged[spec.name] = float(data[spec.name])
        elif spec.type == "tuple[str, ...]":
            merged[spec.name] = _lines_field(data, spec.name)
        else:
            merged[spec.name] = data[spec.name]
    return merged


def _check_known(data: Mapping[str, Any], known: Sequence[str], what: str) -> None:
    if not isinstance(data, Mapping):
        raise InvalidInputError(f"{what} must be a map, got {data!r}")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InvalidInputError(
            f"{what} has unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}"
        )


@dataclass(frozen=True, slots=True)
class SshSettings:
    """How the ``"ssh"`` launcher reaches its hosts (paramiko).

    Parameters
    ----------
    user
        Login name when a command's host does not say ``user@`` ("" = yours).
    port
        SSH port when a host does not say ``:port``.
    known_hosts
        The known_hosts file host keys are checked against ("" =
        ``~/.ssh/known_hosts``); unknown and changed keys are refused, never added.
    identity_file
        A private key file ("" = the SSH agent and ``~/.ssh/id_*``).
    keepalive_s
        Seconds between SSH keepalives: an unreachable host is noticed after a
        few missed ones.
    connect_timeout_s
        Seconds to wait for a host to answer.
    remote_dir
        Directory on the hosts for the workers' credentials files and logs
        ("" = ``~/.cistem/remote``); created 0700.
    """

    user: str = ""
    port: int = 22
    known_hosts: str = ""
    identity_file: str = ""
    keepalive_s: float = 5.0
    connect_timeout_s: float = 10.0
    remote_dir: str = ""

    def __post_init__(self) -> None:
        _check_ssh(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-like map."""
        return _field_map(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SshSettings:
        """Build from :meth:`to_dict`'s map; absent fields take the defaults.

        Parameters
        ----------
        data
            The map.

        Returns
        -------
        SshSettings
            The settings.
        """
        _check_known(data, [spec.name for spec in fields(cls)], "run profile 'ssh'")
        _check_ssh(data)
        return cls(**_with_defaults(cls, data))



def _check_ssh(values: Mapping[str, Any]) -> None:
    for name in ("user", "known_hosts", "identity_file", "remote_dir"):
        _str_field(values, name, "")
    _int_field(values, "port", 22, 1, 65535)
    _float_field(values, "keepalive_s", 5.0, 0.1, 3600.0)
    _float_field(values, "connect_timeout_s", 10.0, 0.1, 3600.0)


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    """How the ``"scheduler"`` launcher submits workers (dask-jobqueue's knobs).

    Parameters
    ----------
    kind
        ``"slurm"``, ``"sge"``, ``"lsf"`` or ``"pbs"`` (also Torque).
    mode
        ``"batch"``: one batch job per worker copy (``sbatch``, ``qsub``,
        ``bsub``); ``"srun"`` (SLURM): one ``srun`` per copy, run from the
        daemon's host; ``"allocation"`` (SLURM): one ``salloc`` allocation
        for all the copies of a command, whose workers ``srun`` starts.
    queue
        Partition / queue ("" = the scheduler's default).
    account
        Account or project to charge ("" = none).
    walltime
        Time limit, ``HH:MM:SS`` ("" = the scheduler's default).
    memory
        Memory per worker job, e.g. ``"4G"`` ("" = default).
    job_name
        Name of the scheduler jobs.
    extra_directives
        More header lines, without the prefix (``--gres=gpu:1`` for SLURM,
        ``-l h_vmem=4G`` for SGE).
    prologue
        Shell lines run before the worker (``module load cuda``, ``source venv``).
    submit_options
        Extra options of the submit command (a shell-quoted string).
    submit_timeout_s
        Seconds a submit / cancel / queue command may take.
    """

    kind: str = "slurm"
    mode: str = "batch"
    queue: str = ""
    account: str = ""
    walltime: str = ""
    memory: str = ""
    job_name: str = "cistem-worker"
    extra_directives: tuple[str, ...] = ()
    prologue: tuple[str, ...] = ()
    submit_options: str = ""
    submit_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra_directives", tuple(self.extra_directives))
        object.__setattr__(self, "prologue", tuple(self.prologue))
        _check_scheduler(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-like map."""
        return _field_map(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SchedulerSettings:
        """Build from :meth:`to_dict`'s map; absent fields take the defaults.

        Parameters
        ----------
        data
            The map.

        Returns
        -------
        SchedulerSettings
            The settings.
        """
        _check_known(data, [spec.name for spec in fields(cls)], "run profile 'scheduler'")
        _check_scheduler(data)
        return cls(**_with_defaults(cls, data))


_SAFE_VALUE: Final = re.compile(r"[A-Za-z0-9_.:+=@,/-]*")


def _check_scheduler(values: Mapping[str, Any]) -> None:
    kind = _str_field(values, "kind", "slurm")
    if kind not in SCHEDULER_KINDS:
        raise InvalidInputError(
            f"run profile field 'scheduler.kind': {kind!r} is not one of "
            f"{', '.join(SCHEDULER_KINDS)}"
        )
    mode = _str_field(values, "mode", "batch")
    if mode not in SCHEDULER_MODES:
        raise InvalidInputError(
            f"run profile field 'scheduler.mode': {mode!r} is not one of "
            f"{', '.join(SCHEDULER_MODES)}"
        )
    if mode != "batch" and kind != "slurm":
        raise InvalidInputError(
            f"run profile field 'scheduler.mode': {mode!r} is for SLURM only; "
            f"use 'batch' for {kind}"
        )
    for name in ("queue", "account", "walltime", "memory", "job_name"):
        value = _str_field(values, name, "")
        if _SAFE_VALUE.fullmatch(value) is None:
            raise InvalidInputError(
                f"run profile field 'scheduler.{name}': {value!r} may hold only letters, digits "
                "and _.:+=@,/- (it goes into a job script header)"
            )
    _lines_field(values, "extra_directives")
    _lines_field(values, "prologue")
    options = _str_field(values, "submit_options", "")
    try:
        shlex.split(options)
    except ValueError as exc:
        raise InvalidInputError(
            f"run profile field 'scheduler.submit_options': {options!r} ({exc})"
        ) from None
    _float_field(values, "submit_timeout_s", 30.0, 0.5, 3600.0)


_PROFILE_FIELDS: Final = (
    "name",
    "manager_command",
    "gui_address",
    "controller_address",
    "commands",
    "launcher",
    "worker_python",
    "ssh",
    "scheduler",
)


@dataclass(frozen=True, slots=True)
class RunProfile:
    """A named way to start workers: cisTEM's run profile.

    Parameters
    ----------
    name
        Shown in forms and given to ``cistem run --profile NAME``.
    manager_command
        cisTEM's manager template (``$command``, ``ssh host $command``); kept
        for import and export of cisTEM profiles -- cistemd's manager is the
        daemon itself.
    gui_address
        cisTEM's address workers connect back to ("" = automatic). cistemd
        uses it as the daemon's worker address for remote workers: an IP
        address or host name, optionally ``:PORT``, or an interface name
        (``eth0`` / ``interface:eth0``).
    controller_address
        cisTEM's manager address ("" = automatic); kept for import/export.
    commands
        The command lines, in order.
    launcher
        ``"local"``, ``"ssh"`` or ``"scheduler"`` (see the module docstring).
    worker_python
        The Python interpreter (with cistemd installed) on the machines the
        workers run on ("" = the daemon's own, right on a shared filesystem).
    ssh
        Settings of the ``"ssh"`` launcher.
    scheduler
        Settings of the ``"scheduler"`` launcher.

    Raises
    ------
    InvalidInputError
        An empty name, a manager command without ``$command``, no command
        lines, an unknown launcher, or an SSH profile with a command lacking a host.
    """

    name: str
    manager_command: str = COMMAND_PLACEHOLDER
    gui_address: str = ""
    controller_address: str = ""
    commands: tuple[ProfileCommand, ...] = field(default_factory=tuple)
    launcher: str = "local"
    worker_python: str = ""
    ssh: SshSettings = field(default_factory=SshSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InvalidInputError(f"a run profile needs a name, got {self.name!r}")
        if len(self.name) > 200 or any(ch in self.name for ch in "/\\\x00\n\"") or (
            self.name.startswith(".")
        ):
            raise InvalidInputError(
                f"run profile name {self.name!r}: at most 200 characters, no '/', '\\', "
                "quote or newline, not starting with '.'"
            )
        _check_template(self.manager_command, f"run profile {self.name!r}: manager_command")
        object.__setattr__(self, "commands", tuple(self.commands))
        if not self.commands:
            raise InvalidInputError(f"run profile {self.name!r} has no command lines")
        for command in self.commands:
            if not isinstance(command, ProfileCommand):
                raise InvalidInputError(
                    f"run profile {self.name!r}: commands must be ProfileCommand, got {command!r}"
                )
        if self.launcher not in LAUNCHER_KINDS:
            raise InvalidInputError(
                f"run profile {self.name!r}: launcher {self.launcher!r} is not one of "
                f"{', '.join(LAUNCHER_KINDS)}"
            )
        if self.launcher == "ssh":
            for number, command in enumerate(self.commands):
                if not command.host:
                    raise InvalidInputError(
                        f"run profile {self.name!r}: command {number} has no host; an SSH "
                        "profile names the host of every command line ([user@]host[:port])"
                    )
        if not isinstance(self.worker_python, str) or "\n" in self.worker_python:
            raise InvalidInputError(f"run profile {self.name!r}: bad worker_python")
        if not isinstance(self.ssh, SshSettings) or not isinstance(
            self.scheduler, SchedulerSettings
        ):
            raise InvalidInputError(f"run profile {self.name!r}: bad ssh or scheduler settings")

    @property
    def remote(self) -> bool:
        """Whether the workers connect over TCP (anything but plain local processes)."""
        return self.launcher != "local" or bool(self.gui_address)

    @property
    def total_copies(self) -> int:
        """Workers the profile yields in all (cisTEM's ``ReturnTotalJobs``)."""
        return sum(command.workers for command in self.commands)

    def launch_plan(self, wanted: int | None = None) -> list[tuple[ProfileCommand, int]]:
        """Say how many copies of each command to run to get ``wanted`` workers.

        Commands are used in order; a plain command gives one worker per copy,
        so it is run only as often as needed; an overriding command is run
        with all its copies (one copy may be a whole allocation).

        Parameters
        ----------
        wanted
            Workers wanted; None means :attr:`total_copies`.

        Returns
        -------
        list of (ProfileCommand, int)
            Each command with its number of copies to run (> 0), in order; the
            workers they yield are at least ``min(wanted, total_copies)``.

        Raises
        ------
        ValueError
            If ``wanted`` is negative.
        """
        remaining = self.total_copies if wanted is None else wanted
        if remaining < 0:
            raise ValueError(f"wanted must be ≥ 0, got {remaining}")
        plan: list[tuple[ProfileCommand, int]] = []
        for command in self.commands:
            if remaining <= 0:
                break
            if command.override_total_copies:
                plan.append((command, command.number_of_copies))
                remaining -= command.overridden_total_copies
            else:
                copies = min(command.number_of_copies, remaining)
                plan.append((command, copies))
                remaining -= copies
        return plan

    def to_dict(self) -> dict[str, Any]:
        """Return the profile as a JSON-like map (what clients and profile files hold).

        Returns
        -------
        dict
            ``name``, ``manager_command``, ``gui_address``, ``controller_address``,
            ``commands`` (:meth:`ProfileCommand.to_dict` maps: template, copies,
            threads, delay, override, host), ``launcher``, ``worker_python``,
            ``ssh`` (:meth:`SshSettings.to_dict`) and ``scheduler``
            (:meth:`SchedulerSettings.to_dict`).
        """
        return {
            "name": self.name,
            "manager_command": self.manager_command,
            "gui_address": self.gui_address,
            "controller_address": self.controller_address,
            "commands": [command.to_dict() for command in self.commands],
            "launcher": self.launcher,
            "worker_python": self.worker_python,
            "ssh": self.ssh.to_dict(),
            "scheduler": self.scheduler.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunProfile:
        """Build a profile from :meth:`to_dict`'s map (absent fields take defaults).

        Parameters
        ----------
        data
            The map.

        Returns
        -------
        RunProfile
            The profile.

        Raises
        ------
        InvalidInputError
            A missing, unknown or malformed field, naming it.
        """
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"a run profile must be a map, got {data!r}")
        unknown = sorted(set(data) - set(_PROFILE_FIELDS))
        if unknown:
            raise InvalidInputError(
                f"run profile has unknown field {unknown[0]!r}; "
                f"known: {', '.join(sorted(_PROFILE_FIELDS))}"
            )
        if "name" not in data:
            raise InvalidInputError("run profile field 'name' is missing")
        commands = data.get("commands", [])
        if not isinstance(commands, list | tuple):
            raise InvalidInputError(
                f"run profile field 'commands': expected a list, got {commands!r}"
            )
        return cls(
            name=_str_field(data, "name", ""),
            manager_command=_str_field(data, "manager_command", COMMAND_PLACEHOLDER),
            gui_address=_str_field(data, "gui_address", ""),
            controller_address=_str_field(data, "controller_address", ""),
            commands=tuple(ProfileCommand.from_dict(item) for item in commands),
            launcher=_str_field(data, "launcher", "local"),
            worker_python=_str_field(data, "worker_python", ""),
            ssh=SshSettings.from_dict(data.get("ssh") or {}),
            scheduler=SchedulerSettings.from_dict(data.get("scheduler") or {}),
        )


def default_local_profile() -> RunProfile:
    """Return cisTEM's "Default Local" profile for this machine.

    Returns
    -------
    RunProfile
        One command ``$command`` with ``os.cpu_count() + 1`` copies, 1 thread
        per copy and 10 ms between copies; manager command ``$command``.
    """
    copies = (os.cpu_count() or 1) + 1
    return RunProfile(
        name=DEFAULT_LOCAL_PROFILE_NAME,
        manager_command=COMMAND_PLACEHOLDER,
        commands=(
            ProfileCommand(
                command_to_run=COMMAND_PLACEHOLDER,
                number_of_copies=copies,
                threads_per_copy=1,
                delay_ms=10,
            ),
        ),
    )
