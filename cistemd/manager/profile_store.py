"""Run profiles kept in ``$CISTEM_HOME/profiles/``, and cisTEM's text format.

Each profile is one file ``$CISTEM_HOME/profiles/NAME.json`` holding
:meth:`~cistemd.manager.profiles.RunProfile.to_dict` (mode 0600, written
through a temporary file and a rename, so a reader never sees half a
profile). The daemon reads them when a job is submitted
(:func:`cistemd.manager.daemon.resolve_profile`); clients list and edit them
through the daemon (``profiles_list``, ``profile_save`` ... in
:mod:`cistemd.protocol`) or with ``cistem profile``.

cisTEM's ``default_run_profiles.txt`` (reference §4) is read by
:func:`parse_cistem_profiles` and written by :func:`format_cistem_profiles`::

    number_of_profiles=1
    profile_0_name="Default Local"
    profile_0_manager_command="/opt/cistem/$command"
    profile_0_gui_address=""
    profile_0_controller_address=""
    profile_0_number_of_run_commands=1
    profile_0_command_0_command_to_run="/opt/cistem/$command"
    profile_0_command_0_number_of_copies=9
    profile_0_command_0_number_of_threads_per_copy=1
    profile_0_command_0_should_override_total_number_of_copies=0
    profile_0_command_0_overriden_total_number_of_copies=9
    profile_0_command_0_delay_time_in_ms=10

A cisTEM command ``ssh HOST $command`` (and ``ssh -p PORT user@HOST ...``)
becomes a command of an ``"ssh"`` profile on HOST, which cistemd runs through
paramiko; on export it is written back the same way. The cisTEM binaries'
directory glued to ``$command`` (``/opt/cistem/$command``) is dropped on
import -- it names where cisTEM's binaries are, while cistemd's ``$command`` is
a whole worker command line -- and the rest of the template is kept
(``nice $command``, ``sbatch ... $command``). Fields cisTEM does not know
(scheduler settings) are not exported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from cistemd.errors import InvalidInputError
from cistemd.manager.profiles import (
    COMMAND_PLACEHOLDER,
    DEFAULT_LOCAL_PROFILE_NAME,
    ProfileCommand,
    RunProfile,
    default_local_profile,
)

__all__ = [
    "ProfileStore",
    "format_cistem_profiles",
    "parse_cistem_profiles",
    "shipped_templates",
    "templates_dir",
]

logger = logging.getLogger(__name__)

_MAX_TEXT: Final = 1 << 20
_MAX_PROFILES: Final = 1000
_LINE: Final = re.compile(r"\s*([A-Za-z0-9_]+)\s*=\s*(.*?)\s*")
_BINARY_DIR: Final = re.compile(r"(?<![\w$])[^\s\"'=]*/\$command")
_SSH_COMMAND: Final = re.compile(
    r"\s*ssh\s+(?P<options>(?:-\S+\s+\S+\s+)*)(?P<host>[^\s-]\S*)\s+\$command\s*"
)


def templates_dir() -> Path:
    """Return the directory of the shipped profile templates (``run_profiles/``)."""
    return Path(__file__).resolve().parents[2] / "run_profiles"


def shipped_templates() -> dict[str, RunProfile]:
    """Return the shipped profile templates by file stem (``slurm-sbatch`` ...).

    Returns
    -------
    dict of str to RunProfile
        Every ``run_profiles/*.json``; a broken one is skipped with a warning.
    """
    found: dict[str, RunProfile] = {}
    directory = templates_dir()
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob("*.json")):
        try:
            found[path.stem] = RunProfile.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, InvalidInputError) as exc:
            logger.warning("skipping the profile template %s: %s", path, exc)
    return found


# --------------------------------------------------------------------------- cisTEM's text


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _int(values: Mapping[str, str], key: str, default: int | None = None) -> int:
    raw = values.get(key)
    if raw is None:
        if default is None:
            raise InvalidInputError(f"cisTEM run profiles: {key} is missing")
        return default
    try:
        return int(_unquote(raw))
    except ValueError:
        raise InvalidInputError(
            f"cisTEM run profiles: {key}={raw!r} is not an integer"
        ) from None


def _strip_binary_dir(template: str) -> str:
    """Drop the directory of cisTEM's binaries glued to ``$command`` (``/opt/cistem/$command``).

    cisTEM's ``$command`` is a program name run from that directory; cistemd's is
    a complete worker command line starting with its Python interpreter.
    """
    return _BINARY_DIR.sub(COMMAND_PLACEHOLDER, template)


def _ssh_host(template: str) -> str | None:
    """Return ``[user@]host[:port]`` of a cisTEM ``ssh ... HOST $command`` template."""
    match = _SSH_COMMAND.fullmatch(template)
    if match is None:
        return None
    host = match.group("host")
    options = shlex.split(match.group("options"))
    user = ""
    port = ""
    for flag, value in zip(options[::2], options[1::2], strict=False):
        if flag == "-p":
            port = value
        elif flag == "-l":
            user = value
        else:
            return None  # an option we cannot carry over: keep the command as it is
    if user and "@" not in host:
        host = f"{user}@{host}"
    return f"{host}:{port}" if port else host


def parse_cistem_profiles(text: str) -> list[RunProfile]:
    """Read cisTEM's ``default_run_profiles.txt``.

    Parameters
    ----------
    text
        The file's content.

    Returns
    -------
    list of RunProfile
        In file order. A profile whose every command is ``ssh HOST $command``
        becomes an ``"ssh"`` profile.

    Raises
    ------
    InvalidInputError
        A malformed file, naming the line or key.
    """
    if len(text) > _MAX_TEXT:
        raise InvalidInputError("cisTEM run profiles: the text is larger than 1 MiB")
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise InvalidInputError(
                f"cisTEM run profiles, line {number}: {line[:80]!r} is not key=value"
            )
        values[match.group(1)] = match.group(2)
    count = _int(values, "number_of_profiles")
    if not 0 <= count <= _MAX_PROFILES:
        raise InvalidInputError(f"cisTEM run profiles: number_of_profiles={count} is out of range")
    profiles: list[RunProfile] = []
    for index in range(count):
        prefix = f"profile_{index}_"
        if f"{prefix}name" not in values:
            raise InvalidInputError(f"cisTEM run profiles: {prefix}name is missing")
        n_commands = _int(values, f"{prefix}number_of_run_commands")
        commands: list[ProfileCommand] = []
        for number in range(n_commands):
            cprefix = f"{prefix}command_{number}_"
            template = _strip_binary_dir(
                _unquote(values.get(f"{cprefix}command_to_run", f'"{COMMAND_PLACEHOLDER}"'))
            )
            override = _int(values, f"{cprefix}should_override_total_number_of_copies", 0) != 0
            commands.append(
                ProfileCommand(
                    command_to_run=template,
                    number_of_copies=_int(values, f"{cprefix}number_of_copies", 2),
                    threads_per_copy=_int(values, f"{cprefix}number_of_threads_per_copy", 1),
                    delay_ms=_int(values, f"{cprefix}delay_time_in_ms", 10),
                    override_total_copies=override,
                    overridden_total_copies=(
                        _int(values, f"{cprefix}overriden_total_number_of_copies", 0)
                        if override
                        else 0
                    ),
                )
            )
        hosts = [_ssh_host(command.command_to_run) for command in commands]
        launcher = "local"
        if commands and all(hosts):
            launcher = "ssh"
            commands = [
                ProfileCommand(
                    command_to_run=COMMAND_PLACEHOLDER,
                    number_of_copies=command.number_of_copies,
                    threads_per_copy=command.threads_per_copy,
                    delay_ms=command.delay_ms,
                    override_total_copies=command.override_total_copies,
                    overridden_total_copies=command.overridden_total_copies,
                    host=str(host),
                )
                for command, host in zip(commands, hosts, strict=True)
            ]
        profiles.append(
            RunProfile(
                name=_unquote(values[f"{prefix}name"]),
                manager_command=_strip_binary_dir(
                    _unquote(values.get(f"{prefix}manager_command", f'"{COMMAND_PLACEHOLDER}"'))
                ),
                gui_address=_unquote(values.get(f"{prefix}gui_address", '""')),
                controller_address=_unquote(values.get(f"{prefix}controller_address", '""')),
                commands=tuple(commands),
                launcher=launcher,
            )
        )
    return profiles


def _export_template(profile: RunProfile, command: ProfileCommand) -> str:
    if profile.launcher != "ssh":
        return command.command_to_run
    host, _, port = command.host.partition(":")
    options = f"-p {port} " if port else ""
    if profile.ssh.user and "@" not in host:
        host = f"{profile.ssh.user}@{host}"
    return f"ssh {options}{host} {command.command_to_run}"


def format_cistem_profiles(profiles: Iterable[RunProfile]) -> str:
    """Write profiles in cisTEM's ``default_run_profiles.txt`` format.

    Parameters
    ----------
    profiles
        The profiles, in order.

    Returns
    -------
    str
        The text (``ssh`` profiles as ``ssh HOST $command`` commands).
    """
    items = list(profiles)
    lines = [f"number_of_profiles={len(items)}"]
    for index, profile in enumerate(items):
        prefix = f"profile_{index}_"
        lines += [
            f'{prefix}name="{profile.name}"',
            f'{prefix}manager_command="{profile.manager_command}"',
            f'{prefix}gui_address="{profile.gui_address}"',
            f'{prefix}controller_address="{profile.controller_address}"',
            f"{prefix}number_of_run_commands={len(profile.commands)}",
        ]
        for number, command in enumerate(profile.commands):
            cprefix = f"{prefix}command_{number}_"
            lines += [
                f'{cprefix}command_to_run="{_export_template(profile, command)}"',
                f"{cprefix}number_of_copies={command.number_of_copies}",
                f"{cprefix}number_of_threads_per_copy={command.threads_per_copy}",
                f"{cprefix}should_override_total_number_of_copies="
                f"{int(command.override_total_copies)}",
                f"{cprefix}overriden_total_number_of_copies="
                f"{command.overridden_total_copies if command.override_total_copies else command.number_of_copies}",  # noqa: E501
                f"{cprefix}delay_time_in_ms={command.delay_ms}",
            ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the store


def _check_name(name: str) -> str:
    if (
        not isinstance(name, str)
        or not name.strip()
        or len(name) > 200
        or any(ch in name for ch in "/\\\x00\n\"")
        or name.startswith(".")
    ):
        raise InvalidInputError(f"bad run profile name {name!r}")
    return name


class ProfileStore:
    """The run profiles of one ``$CISTEM_HOME`` (``profiles/NAME.json``).

    ``Default Local`` is always there: built in (CPU count + 1 workers) until a
    stored profile of that name replaces it; deleting that brings the built-in back.

    Parameters
    ----------
    directory
        ``$CISTEM_HOME/profiles`` (created 0700 when first written).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, name: str) -> Path:
        """Return the file of profile ``name``.

        Parameters
        ----------
        name
            The profile's name.

        Returns
        -------
        Path
        """
        return self.directory / f"{_check_name(name)}.json"

    def names(self) -> list[str]:
        """Return the names of the stored profiles and ``Default Local``, sorted (it first)."""
        stored = set()
        if self.directory.is_dir():
            stored = {path.stem for path in self.directory.glob("*.json")}
        stored.discard(DEFAULT_LOCAL_PROFILE_NAME)
        return [DEFAULT_LOCAL_PROFILE_NAME, *sorted(stored, key=str.lower)]

    def get(self, name: str) -> RunProfile:
        """Return profile ``name``.

        Parameters
        ----------
        name
            The profile's name.

        Returns
        -------
        RunProfile

        Raises
        ------
        InvalidInputError
            No such profile, or its file is not a profile (naming the file).
        """
        path = self.path(name)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            if name == DEFAULT_LOCAL_PROFILE_NAME:
                return default_local_profile()
            raise InvalidInputError(
                f"no run profile {name!r}; see `cistem profile list`", path=str(path)
            ) from None
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"{path}: not a run profile ({exc})", path=str(path)) from None
        profile = RunProfile.from_dict(data)
        if profile.name != name:
            profile = RunProfile.from_dict({**profile.to_dict(), "name": name})
        return profile

    def all(self) -> list[RunProfile]:
        """Return every profile (broken files are skipped with a warning)."""
        found = []
        for name in self.names():
            try:
                found.append(self.get(name))
            except InvalidInputError as exc:
                logger.warning("skipping run profile %r: %s", name, exc)
        return found

    def save(self, profile: RunProfile) -> Path:
        """Store ``profile`` (replacing one of the same name).

        Parameters
        ----------
        profile
            The profile.

        Returns
        -------
        Path
            Its file.
        """
        path = self.path(profile.name)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".profile.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(profile.to_dict(), handle, indent=1)
                handle.write("\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    def delete(self, name: str) -> None:
        """Delete profile ``name``.

        Parameters
        ----------
        name
            The profile's name.

        Raises
        ------
        InvalidInputError
            No such stored profile (the built-in Default Local cannot be deleted).
        """
        path = self.path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise InvalidInputError(
                f"no stored run profile {name!r} to delete; see `cistem profile list`"
            ) from None

    def import_text(self, text: str) -> list[str]:
        """Store every profile of a cisTEM ``default_run_profiles.txt``.

        Parameters
        ----------
        text
            The file's content.

        Returns
        -------
        list of str
            The names imported (profiles of the same name are replaced).
        """
        profiles = parse_cistem_profiles(text)
        for profile in profiles:
            self.save(profile)
        return [profile.name for profile in profiles]

    def export_text(self, names: Iterable[str] | None = None) -> str:
        """Return profiles in cisTEM's text format.

        Parameters
        ----------
        names
            The profiles to export (None: all).

        Returns
        -------
        str
        """
        profiles = self.all() if names is None else [self.get(name) for name in names]
        return format_cistem_profiles(profiles)
