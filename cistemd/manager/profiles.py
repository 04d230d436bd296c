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
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cistemd.errors import InvalidInputError

__all__ = [
    "COMMAND_PLACEHOLDER",
    "DEFAULT_LOCAL_PROFILE_NAME",
    "ProfileCommand",
    "RunProfile",
    "default_local_profile",
    "render_template",
]

COMMAND_PLACEHOLDER: Final = "$command"
"""Stands for the shell-quoted worker command line in every template."""

DEFAULT_LOCAL_PROFILE_NAME: Final = "Default Local"
"""Name of the profile made by :func:`default_local_profile` (cisTEM's)."""

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
    return template.replace(COMMAND_PLACEHOLDER, shlex.join(argv))


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
        return {
            "command_to_run": self.command_to_run,
            "number_of_copies": self.number_of_copies,
            "threads_per_copy": self.threads_per_copy,
            "delay_ms": self.delay_ms,
            "override_total_copies": self.override_total_copies,
            "overridden_total_copies": self.overridden_total_copies,
        }

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


_COMMAND_DEFAULTS: Final = {
    name: spec.default for name, spec in ProfileCommand.__dataclass_fields__.items()
}


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
        uses it as the daemon's worker address for TCP launchers.
    controller_address
        cisTEM's manager address ("" = automatic); kept for import/export.
    commands
        The command lines, in order.

    Raises
    ------
    InvalidInputError
        An empty name, a manager command without ``$command`` or no command lines.
    """

    name: str
    manager_command: str = COMMAND_PLACEHOLDER
    gui_address: str = ""
    controller_address: str = ""
    commands: tuple[ProfileCommand, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InvalidInputError(f"a run profile needs a name, got {self.name!r}")
        _check_template(self.manager_command, f"run profile {self.name!r}: manager_command")
        object.__setattr__(self, "commands", tuple(self.commands))
        if not self.commands:
            raise InvalidInputError(f"run profile {self.name!r} has no command lines")
        for command in self.commands:
            if not isinstance(command, ProfileCommand):
                raise InvalidInputError(
                    f"run profile {self.name!r}: commands must be ProfileCommand, got {command!r}"
                )

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
        """Return the profile as a JSON-like map."""
        return {
            "name": self.name,
            "manager_command": self.manager_command,
            "gui_address": self.gui_address,
            "controller_address": self.controller_address,
            "commands": [command.to_dict() for command in self.commands],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunProfile:
        """Build a profile from :meth:`to_dict`'s map.

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
        known = {"name", "manager_command", "gui_address", "controller_address", "commands"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(
                f"run profile has unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}"
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
