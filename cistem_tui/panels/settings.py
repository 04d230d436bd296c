"""The Settings panel: run profiles, as cisTEM's "Run Profiles" page.

The list of profiles on the left (``Default Local`` first); the chosen one on
the right: name, launcher (local processes, an SSH cluster, a batch
scheduler), manager command, the addresses workers connect back to, the worker
Python, and its command lines with copies, threads, launch delay and host.
Profiles live in the daemon (``Client.profiles``, ``save_profile``,
``delete_profile``); cisTEM's ``default_run_profiles.txt`` is imported and
exported as text (``import_profiles``, ``export_profiles``).

Keys: ``a`` new profile, ``y`` duplicate, ``D`` delete, ``ctrl+s`` save,
``e`` export to a file, ``i`` import from a file, ``+`` add a command line,
``enter`` on a command line edits it, ``-`` removes it, ``l`` edits the SSH
or scheduler settings of the chosen launcher (user, port, known_hosts, key;
scheduler, mode, queue, account, wall time, memory, directives, prologue).
"""

from __future__ import annotations

import copy
import os
from functools import partial
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, DataTable, Input, Label, Select, TextArea

from cistem_tui.messages import DaemonStatus
from cistem_tui.panels import in_worker, run_later

__all__ = ["CommandDialog", "LauncherDialog", "SettingsPanel", "new_profile"]

_LAUNCHERS = (
    ("local processes", "local"),
    ("SSH cluster", "ssh"),
    ("batch scheduler", "scheduler"),
)
_COMMAND_FIELDS = (
    ("command_to_run", "Command ($command = the worker)", "text"),
    ("number_of_copies", "Number of copies", "int"),
    ("threads_per_copy", "Threads per copy", "int"),
    ("delay_ms", "Delay between copies (ms)", "int"),
    ("host", "Host (SSH: [user@]host[:port])", "text"),
    ("override_total_copies", "Override total copies", "bool"),
    ("overridden_total_copies", "Overridden total copies", "int"),
)
# The launchers' own settings (RunProfile.ssh / .scheduler): name, label, kind.
_LAUNCHER_FIELDS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "ssh": (
        ("user", "User (when a host has no user@)", "text"),
        ("port", "Port (when a host has no :port)", "int"),
        ("known_hosts", "known_hosts file (empty = ~/.ssh/known_hosts)", "text"),
        ("identity_file", "Key file (empty = agent and ~/.ssh/id_*)", "text"),
        ("keepalive_s", "Keepalive (s)", "float"),
        ("connect_timeout_s", "Connect timeout (s)", "float"),
        ("remote_dir", "Remote directory (empty = ~/.cistem/remote)", "text"),
    ),
    "scheduler": (
        ("kind", "Scheduler", "slurm|sge|lsf|pbs"),
        ("mode", "Mode", "batch|srun|allocation"),
        ("queue", "Partition / queue", "text"),
        ("account", "Account", "text"),
        ("walltime", "Wall time (HH:MM:SS)", "text"),
        ("memory", "Memory per worker (e.g. 4G)", "text"),
        ("job_name", "Job name", "text"),
        ("extra_directives", "Extra directives (one per line, no prefix)", "lines"),
        ("prologue", "Prologue (shell lines before the worker)", "lines"),
        ("submit_options", "Submit command options", "text"),
        ("submit_timeout_s", "Submit timeout (s)", "float"),
    ),
}
_PROFILE_INPUTS = (
    ("name", "Name"),
    ("manager_command", "Manager command"),
    ("gui_address", "GUI address (workers connect to)"),
    ("controller_address", "Controller address"),
    ("worker_python", "Worker Python"),
)


def new_profile(name: str) -> dict[str, Any]:
    """Return a new profile map as cisTEM makes one: one local command, 2 copies."""
    return {
        "name": name,
        "manager_command": "$command",
        "gui_address": "",
        "controller_address": "",
        "commands": [
            {
                "command_to_run": "$command",
                "number_of_copies": 2,
                "threads_per_copy": 1,
                "delay_ms": 10,
                "override_total_copies": False,
                "overridden_total_copies": 0,
                "host": "",
            }
        ],
        "launcher": "local",
        "worker_python": "",
    }


def _workers(profile: dict[str, Any]) -> int:
    total = 0
    for command in profile.get("commands", []):
        if command.get("override_total_copies"):
            total += int(command.get("overridden_total_copies", 0))
        else:
            total += int(command.get("number_of_copies", 0))
    return total


class CommandDialog(ModalScreen[dict[str, Any] | None]):
    """Edit one command line of a run profile.

    Parameters
    ----------
    command
        The command's map (``ProfileCommand.to_dict()``).
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "OK"),
    ]

    def __init__(self, command: dict[str, Any]) -> None:
        super().__init__(classes="dialog-screen")
        self.command = dict(command)

    def compose(self) -> ComposeResult:
        """One field per command setting, OK / Cancel."""
        with VerticalScroll(classes="dialog"):
            yield Label("Run profile command", classes="dialog-title")
            for name, label, kind in _COMMAND_FIELDS:
                wid = f"command-{name.replace('_', '-')}"
                if kind == "bool":
                    yield Checkbox(label, bool(self.command.get(name)), id=wid, compact=True)
                    continue
                with Horizontal(classes="field-row"):
                    yield Label(label, classes="field-label")
                    yield Input(str(self.command.get(name, "")), id=wid, compact=True)
            with Horizontal(classes="dialog-buttons"):
                yield Button("OK", variant="primary", id="command-ok", compact=True)
                yield Button("Cancel", id="command-cancel", compact=True)

    def values(self) -> dict[str, Any]:
        """Return the edited command.

        Raises
        ------
        ValueError
            A number field holds no whole number (the message names it).
        """
        out = dict(self.command)
        for name, label, kind in _COMMAND_FIELDS:
            widget: Any = self.query_one(f"#command-{name.replace('_', '-')}")
            if kind == "bool":
                out[name] = bool(widget.value)
            elif kind == "int":
                try:
                    out[name] = int(str(widget.value).strip() or 0)
                except ValueError:
                    raise ValueError(f"{label}: expected a whole number") from None
            else:
                out[name] = str(widget.value).strip()
        if "$command" not in out["command_to_run"]:
            raise ValueError("the command must contain $command (where the worker goes)")
        return out

    @on(Button.Pressed, "#command-ok")
    @on(Input.Submitted)
    def action_save(self) -> None:
        """Return the edited command."""
        try:
            self.dismiss(self.values())
        except ValueError as exc:
            self.app.notify(str(exc), severity="error")

    @on(Button.Pressed, "#command-cancel")
    def action_cancel(self) -> None:
        """Close unchanged."""
        self.dismiss(None)


class LauncherDialog(ModalScreen[dict[str, Any] | None]):
    """Edit the settings of a profile's SSH or scheduler launcher.

    Parameters
    ----------
    kind
        ``"ssh"`` or ``"scheduler"``.
    settings
        The current map (``SshSettings.to_dict()`` / ``SchedulerSettings.to_dict()``);
        the daemon checks the values when the profile is saved.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "OK"),
    ]

    def __init__(self, kind: str, settings: dict[str, Any]) -> None:
        super().__init__(classes="dialog-screen")
        self.kind = kind
        self.settings = dict(settings)

    def compose(self) -> ComposeResult:
        """One field per setting, OK / Cancel."""
        title = "SSH cluster settings" if self.kind == "ssh" else "Batch scheduler settings"
        with VerticalScroll(classes="dialog"):
            yield Label(title, classes="dialog-title")
            for name, label, kind in _LAUNCHER_FIELDS[self.kind]:
                wid = f"launcher-{name.replace('_', '-')}"
                value = self.settings.get(name, "")
                if kind == "lines":
                    yield Label(label, classes="field-label")
                    yield TextArea("\n".join(value or ()), id=wid, classes="launcher-lines")
                    continue
                with Horizontal(classes="field-row"):
                    yield Label(label, classes="field-label")
                    if "|" in kind:
                        choices = [(choice, choice) for choice in kind.split("|")]
                        yield Select(choices, value=str(value or choices[0][1]),
                                     allow_blank=False, id=wid, compact=True)
                    else:
                        yield Input(str(value), id=wid, compact=True)
            with Horizontal(classes="dialog-buttons"):
                yield Button("OK", variant="primary", id="launcher-ok", compact=True)
                yield Button("Cancel", id="launcher-cancel", compact=True)

    def values(self) -> dict[str, Any]:
        """Return the edited settings.

        Raises
        ------
        ValueError
            A number field holds no number (the message names it).
        """
        out = dict(self.settings)
        for name, label, kind in _LAUNCHER_FIELDS[self.kind]:
            widget: Any = self.query_one(f"#launcher-{name.replace('_', '-')}")
            if kind == "lines":
                out[name] = [line.strip() for line in widget.text.splitlines() if line.strip()]
            elif kind in ("int", "float"):
                text = str(widget.value).strip()
                try:
                    out[name] = int(text) if kind == "int" else float(text)
                except ValueError:
                    raise ValueError(f"{label}: expected a number, got {text!r}") from None
            else:
                out[name] = str(widget.value).strip()
        return out

    @on(Button.Pressed, "#launcher-ok")
    def action_save(self) -> None:
        """Return the edited settings."""
        try:
            self.dismiss(self.values())
        except ValueError as exc:
            self.app.notify(str(exc), severity="error")

    @on(Button.Pressed, "#launcher-cancel")
    def action_cancel(self) -> None:
        """Close unchanged."""
        self.dismiss(None)


class SettingsPanel(Container):
    """Run profiles: list, add, edit, delete, import, export."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "new_profile", "New profile"),
        Binding("y", "duplicate_profile", "Duplicate", show=False),
        Binding("D", "delete_profile", "Delete", show=False),
        Binding("ctrl+s", "save_profile", "Save"),
        Binding("i", "import_profiles", "Import"),
        Binding("e", "export_profiles", "Export"),
        Binding("plus", "add_command", "Add command", show=False),
        Binding("minus", "remove_command", "Remove command", show=False),
        Binding("l", "launcher_settings", "Launcher settings", show=False),
    ]

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.profiles: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None
        self.original_name: str | None = None
        self.loaded = False

    def compose(self) -> ComposeResult:
        """Lay out the list, the form and the buttons."""
        with Horizontal(id="settings-body"):
            with Vertical(id="profiles-box"):
                yield Label("Run profiles", classes="section-title")
                yield DataTable(id="profiles-table", cursor_type="row")
                with Horizontal(classes="button-row"):
                    yield Button("New", id="profile-new", compact=True)
                    yield Button("Delete", id="profile-delete", compact=True)
                with Horizontal(classes="button-row"):
                    yield Button("Import", id="profiles-import", compact=True)
                    yield Button("Export", id="profiles-export", compact=True)
            with VerticalScroll(id="profile-form"):
                for name, label in _PROFILE_INPUTS:
                    with Horizontal(classes="field-row"):
                        yield Label(label, classes="field-label")
                        yield Input("", id=f"profile-{name.replace('_', '-')}", compact=True)
                with Horizontal(classes="field-row"):
                    yield Label("Launcher", classes="field-label")
                    yield Select(
                        list(_LAUNCHERS),
                        value="local",
                        allow_blank=False,
                        id="profile-launcher",
                        compact=True,
                    )
                with Horizontal(classes="button-row"):
                    yield Button("SSH / scheduler settings (l)", id="launcher-settings",
                                 compact=True)
                yield Label(
                    "Commands (Enter edits, + adds, - removes)", classes="section-title"
                )
                yield DataTable(id="profile-commands", cursor_type="row")
                with Horizontal(classes="button-row"):
                    yield Button("Add command", id="command-add", compact=True)
                    yield Button("Remove command", id="command-remove", compact=True)
                    yield Button("Save", variant="primary", id="profile-save", compact=True)

    def on_mount(self) -> None:
        """Set the columns and load the profiles."""
        table = self.query_one("#profiles-table", DataTable)
        for title, width in (("Name", 16), ("Launcher", 9), ("Workers", 7)):
            table.add_column(title, width=width)
        commands = self.query_one("#profile-commands", DataTable)
        for title, width in (
            ("#", 2),
            ("Command", 28),
            ("Copies", 6),
            ("Threads", 7),
            ("Delay ms", 8),
            ("Host", 16),
            ("Override", 8),
        ):
            commands.add_column(title, width=width)
        app: Any = self.app
        app.load_soon(self, self.reload)

    def focus_default(self) -> None:
        """Focus the profile list."""
        self.query_one("#profiles-table", DataTable).focus()

    def on_daemon_status(self, message: DaemonStatus) -> None:
        """Load the profiles once the daemon answers."""
        if message.connected and not self.loaded:
            self.reload()

    def reload(self, select: str | None = None) -> None:
        """Fetch the profiles again (keeping ``select`` chosen)."""
        run_later(self, partial(self._load, select), group="profiles", exclusive=True)

    async def _load(self, select: str | None) -> None:
        from cistemd.client import ClientError

        app: Any = self.app
        try:
            self.profiles = list(await app.call("profiles"))
        except ClientError as exc:
            if self.loaded:
                app.report_error(exc, title="Run profiles")
            return
        self.loaded = True
        table = self.query_one("#profiles-table", DataTable)
        table.clear()
        chosen = 0
        for index, profile in enumerate(self.profiles):
            table.add_row(
                profile["name"],
                profile.get("launcher", "local"),
                str(_workers(profile)),
                key=profile["name"],
            )
            if profile["name"] == (select or self.original_name):
                chosen = index
        if self.profiles:
            table.move_cursor(row=chosen)
            self.edit(self.profiles[chosen])

    def edit(self, profile: dict[str, Any]) -> None:
        """Put a profile into the form."""
        self.current = copy.deepcopy(profile)
        self.original_name = str(profile.get("name", "")) or None
        for name, _ in _PROFILE_INPUTS:
            widget = self.query_one(f"#profile-{name.replace('_', '-')}", Input)
            widget.value = str(profile.get(name, ""))
        launcher = str(profile.get("launcher", "local"))
        self.query_one("#profile-launcher", Select).value = launcher
        self._fill_commands()

    def _fill_commands(self) -> None:
        table = self.query_one("#profile-commands", DataTable)
        row = table.cursor_row
        table.clear()
        for index, command in enumerate((self.current or {}).get("commands", [])):
            override = (
                str(command.get("overridden_total_copies", 0))
                if command.get("override_total_copies")
                else ""
            )
            table.add_row(
                str(index + 1),
                str(command.get("command_to_run", "")),
                str(command.get("number_of_copies", "")),
                str(command.get("threads_per_copy", "")),
                str(command.get("delay_ms", "")),
                str(command.get("host", "")),
                override,
                key=str(index),
            )
        if table.row_count:
            table.move_cursor(row=min(max(row, 0), table.row_count - 1))

    def form_profile(self) -> dict[str, Any]:
        """Return the profile as the form shows it."""
        profile = copy.deepcopy(self.current or new_profile(""))
        for name, _ in _PROFILE_INPUTS:
            widget = self.query_one(f"#profile-{name.replace('_', '-')}", Input)
            profile[name] = widget.value.strip()
        launcher = self.query_one("#profile-launcher", Select).value
        profile["launcher"] = str(launcher) if isinstance(launcher, str) else "local"
        return profile

    # -- events ------------------------------------------------------------------------------------

    @on(DataTable.RowHighlighted, "#profiles-table")
    def _profile_chosen(self, event: DataTable.RowHighlighted) -> None:
        name = event.row_key.value
        for profile in self.profiles:
            if profile["name"] == name and name != self.original_name:
                self.edit(profile)

    @on(DataTable.RowSelected, "#profile-commands")
    def _command_chosen(self, event: DataTable.RowSelected) -> None:
        self._edit_command(int(event.row_key.value or 0))

    @on(Button.Pressed, "#profile-new")
    def _new_pressed(self) -> None:
        self.action_new_profile()

    @on(Button.Pressed, "#profile-delete")
    def _delete_pressed(self) -> None:
        self.action_delete_profile()

    @on(Button.Pressed, "#profile-save")
    def _save_pressed(self) -> None:
        self.action_save_profile()

    @on(Button.Pressed, "#profiles-import")
    def _import_pressed(self) -> None:
        self.action_import_profiles()

    @on(Button.Pressed, "#profiles-export")
    def _export_pressed(self) -> None:
        self.action_export_profiles()

    @on(Button.Pressed, "#launcher-settings")
    def _launcher_pressed(self) -> None:
        self.action_launcher_settings()

    @on(Button.Pressed, "#command-add")
    def _add_command_pressed(self) -> None:
        self.action_add_command()

    @on(Button.Pressed, "#command-remove")
    def _remove_command_pressed(self) -> None:
        self.action_remove_command()

    # -- actions -----------------------------------------------------------------------------------

    def _unique_name(self, base: str) -> str:
        names = {p["name"] for p in self.profiles}
        if base not in names:
            return base
        number = 2
        while f"{base} {number}" in names:
            number += 1
        return f"{base} {number}"

    def action_new_profile(self) -> None:
        """Start a new profile in the form (saved with Save)."""
        self.edit(new_profile(self._unique_name("New Profile")))
        self.original_name = None
        self.query_one("#profile-name", Input).focus()

    def action_duplicate_profile(self) -> None:
        """Copy the chosen profile under a new name."""
        profile = self.form_profile()
        profile["name"] = self._unique_name(f"{profile['name']} copy")
        self.edit(profile)
        self.original_name = None

    def action_save_profile(self) -> None:
        """Store the form's profile in the daemon (renaming replaces the old one)."""
        run_later(self, partial(self._save, self.form_profile()))

    async def _save(self, profile: dict[str, Any]) -> None:
        from cistemd.client import ClientError

        app: Any = self.app
        try:
            await app.call("save_profile", profile)
            old = self.original_name
            if old and old != profile["name"]:
                await app.call("delete_profile", old)
        except ClientError as exc:
            app.report_error(exc, title="Save run profile")
            return
        app.notify(f"run profile {profile['name']} saved")
        self.original_name = profile["name"]
        self.reload(select=profile["name"])

    def action_delete_profile(self) -> None:
        """Delete the chosen profile (after a yes)."""
        from cistem_tui.dialogs.prompt import ConfirmPrompt

        name = self.original_name
        if not name:
            return

        async def delete(yes: bool | None) -> None:
            from cistemd.client import ClientError

            if not yes:
                return
            app: Any = self.app
            try:
                await app.call("delete_profile", name)
            except ClientError as exc:
                app.report_error(exc, title="Delete run profile")
                return
            app.notify(f"run profile {name} deleted")
            self.original_name = None
            self.reload()

        self.app.push_screen(
            ConfirmPrompt(f"Delete run profile {name}?"), in_worker(self, delete)
        )

    def action_add_command(self) -> None:
        """Add a command line (edited in a dialog)."""
        if self.current is None:
            self.current = new_profile(self._unique_name("New Profile"))
            self.current["commands"] = []
        self._edit_command(len(self.current.get("commands", [])))

    def _edit_command(self, index: int) -> None:
        if self.current is None:
            return
        self.current = self.form_profile()
        commands = self.current.setdefault("commands", [])
        existing = commands[index] if index < len(commands) else new_profile("")["commands"][0]

        def done(command: dict[str, Any] | None) -> None:
            if command is None or self.current is None:
                return
            if index < len(commands):
                commands[index] = command
            else:
                commands.append(command)
            self._fill_commands()

        self.app.push_screen(CommandDialog(existing), done)

    def action_launcher_settings(self) -> None:
        """Edit the SSH or scheduler settings of the chosen launcher (kept on save)."""
        profile = self.form_profile()
        kind = profile.get("launcher", "local")
        if kind not in _LAUNCHER_FIELDS:
            self.app.notify("local processes have no launcher settings; choose SSH cluster "
                            "or batch scheduler first")
            return
        self.current = profile

        def done(settings: dict[str, Any] | None) -> None:
            if settings is not None and self.current is not None:
                self.current[kind] = settings

        from cistemd.manager.profiles import SchedulerSettings, SshSettings

        defaults = (SshSettings() if kind == "ssh" else SchedulerSettings()).to_dict()
        settings = {**defaults, **(profile.get(kind) or {})}
        self.app.push_screen(LauncherDialog(kind, settings), done)

    def action_remove_command(self) -> None:
        """Remove the highlighted command line."""
        if self.current is None:
            return
        table = self.query_one("#profile-commands", DataTable)
        commands = self.current.get("commands", [])
        if table.row_count and 0 <= table.cursor_row < len(commands):
            self.current = self.form_profile()
            del self.current["commands"][table.cursor_row]
            self._fill_commands()

    def action_import_profiles(self) -> None:
        """Import cisTEM's default_run_profiles.txt from a file path."""
        from cistem_tui.dialogs.prompt import TextPrompt

        async def run(path: str | None) -> None:
            from cistemd.client import ClientError

            if not path:
                return
            app: Any = self.app
            try:
                with open(os.path.expanduser(path), encoding="utf-8") as handle:
                    text = handle.read()
                names = await app.call("import_profiles", text)
            except OSError as exc:
                app.report_error(exc, title="Import run profiles")
                return
            except ClientError as exc:
                app.report_error(exc, title="Import run profiles")
                return
            app.notify(f"imported {len(names)} run profile(s): {', '.join(names)}")
            self.reload(select=names[0] if names else None)

        self.app.push_screen(
            TextPrompt("Import run profiles from (cisTEM default_run_profiles.txt)", ""),
            in_worker(self, run),
        )

    def action_export_profiles(self) -> None:
        """Export every profile to a file in cisTEM's format."""
        from cistem_tui.dialogs.prompt import TextPrompt

        async def run(path: str | None) -> None:
            from cistemd.client import ClientError

            if not path:
                return
            app: Any = self.app
            target = os.path.abspath(os.path.expanduser(path))
            try:
                text = await app.call("export_profiles", None)
                with open(target, "w", encoding="utf-8") as handle:
                    handle.write(text)
            except OSError as exc:
                app.report_error(exc, title="Export run profiles")
                return
            except ClientError as exc:
                app.report_error(exc, title="Export run profiles")
                return
            app.notify(f"run profiles written to {target}")

        default = os.path.join(os.getcwd(), "default_run_profiles.txt")
        self.app.push_screen(
            TextPrompt("Export run profiles to", default), in_worker(self, run)
        )
