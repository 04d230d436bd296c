"""The help screen (F1 or ?): every key of the app and of each panel.

Built from the bindings themselves, so it never disagrees with them.
"""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

__all__ = ["HelpScreen", "help_text"]

_GENERAL = """\
Tab / Shift+Tab   move between fields, tables and buttons
Arrows            move in tables and lists;  Enter chooses;  Space marks (Assets)
Escape            close a dialog
1 … 6  [ ]        go to a panel;  previous / next panel (Alt+1 … 6 also in text boxes)
q  Ctrl+Q         detach: the daemon and its jobs go on; run cistem-tui again to reattach
Ctrl+R            reload every panel from the daemon
"""


def _describe(bindings: list[Any]) -> list[str]:
    lines: list[str] = []
    seen: set[str] = set()
    for item in bindings:
        binding = item if isinstance(item, Binding) else Binding(*item)
        if binding.action in seen or binding.description == "":
            continue
        seen.add(binding.action)
        keys = ", ".join(_key_name(key) for key in binding.key.split(","))
        lines.append(f"  {keys:<16}  {binding.description}")
    return lines


def _key_name(key: str) -> str:
    names = {
        "space": "Space",
        "asterisk": "*",
        "plus": "+",
        "minus": "-",
        "question_mark": "?",
        "greater_than_sign": ">",
        "less_than_sign": "<",
        "right_square_bracket": "]",
        "left_square_bracket": "[",
        "escape": "Esc",
    }
    key = key.strip()
    if key in names:
        return names[key]
    return key.replace("ctrl+", "Ctrl+").replace("f1", "F1")


def help_text() -> str:
    """Return the help page: general keys, then each panel's."""
    from cistem_tui.app import PANELS, CistemApp
    from cistem_tui.panels.assets import AssetsPanel
    from cistem_tui.panels.jobs import JobsPanel
    from cistem_tui.panels.overview import OverviewPanel
    from cistem_tui.panels.settings import SettingsPanel

    panels: dict[str, Any] = {
        "overview": OverviewPanel,
        "assets": AssetsPanel,
        "jobs": JobsPanel,
        "settings": SettingsPanel,
    }
    try:
        from cistem_tui.panels.actions import ActionsPanel
        from cistem_tui.panels.results import ResultsPanel

        panels["actions"] = ActionsPanel
        panels["results"] = ResultsPanel
    except ImportError:  # pragma: no cover - both ship with the app
        pass
    lines = ["cistem-tui keys", "", _GENERAL, "Everywhere", *_describe(CistemApp.BINDINGS), ""]
    for number, (panel_id, title) in enumerate(PANELS, start=1):
        panel = panels.get(panel_id)
        bindings = list(getattr(panel, "BINDINGS", []) or [])
        if not bindings:
            continue
        lines += [f"{number} {title}", *_describe(bindings), ""]
    return "\n".join(lines)


class HelpScreen(ModalScreen[None]):
    """The list of keys; any of Escape, q, F1 or ? closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,f1,question_mark", "dismiss_help", "Close"),
    ]

    def __init__(self) -> None:
        super().__init__(classes="dialog-screen")

    def compose(self) -> ComposeResult:
        """Show the key list in a scrollable box."""
        with VerticalScroll(id="help-box", classes="dialog"):
            yield Label("Help  (Esc closes)", classes="dialog-title")
            yield Static(help_text(), id="help-text")

    def action_dismiss_help(self) -> None:
        """Close the help."""
        self.dismiss(None)
