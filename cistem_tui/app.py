"""The cistem-tui application: cisTEM's panels in a terminal, as a client of cistemd.

Contract for panels (every module under ``cistem_tui.panels``):

* A panel is a :class:`textual.containers.Container` subclass built with no
  arguments besides ``id``/``classes``; the app mounts one of each in a
  :class:`~textual.widgets.TabbedContent`: Overview, Assets, Actions, Results,
  Jobs, Settings (tab pane ids ``tab-overview`` ... ``tab-settings``; panel ids
  ``overview`` ... ``settings``; every panel also gets the class ``panel``).
  A panel is built the first time it is shown (``app.panel(id)`` builds it on
  demand) and then gets ``DaemonStatus`` and ``ProjectChanged`` at once, so it
  must load what it shows from the daemon when it gets them (or on mount).
* ``self.app.project_path: str | None`` is the open project (absolute path);
  ``self.app.ssh_mode: bool`` asks for a light screen (no animations, few
  repaints).
* ``await self.app.call("method", *args, **kwargs)`` runs
  ``cistemd.client.Client.method`` on the app's one client in a worker thread,
  under a lock, and returns its result; a :class:`cistemd.client.ClientError`
  (refused request, daemon away) is raised to the caller, who shows it, e.g.
  with ``self.app.report_error(exc)``. Calls never block the screen.
* Messages (:mod:`cistem_tui.messages`): the app posts a fresh
  :class:`~cistem_tui.messages.DaemonEvent` to every panel for each event of
  the daemon's stream, :class:`~cistem_tui.messages.ProjectChanged` after the
  open project changes, and :class:`~cistem_tui.messages.DaemonStatus` when the
  link goes up or down. A panel handles them with ``on_daemon_event``,
  ``on_project_changed``, ``on_daemon_status``.
* ``self.app.show_panel("jobs")`` switches tabs (e.g. to follow a started job).
  A panel may define ``focus_default()``: called whenever it is shown, to put
  the focus on its main widget (so its key bindings work at once).

Tests give the app a fake client: ``CistemApp(client_factory=lambda: fake)``
where ``fake`` has the :class:`~cistemd.client.Client` methods the screens
use (see ``tests/tui_fakes.py``) and ``subscribe()`` returns an object with
``get(timeout)`` and ``close()``.

The app never opens a project database and never imports kernels: it talks to
the daemon only (``tests/test_tui_app.py`` checks the imports).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.widgets import Footer, Header, TabbedContent, TabPane

from cistem_tui.connection import ClientFactory, Connection
from cistem_tui.messages import DaemonEvent, DaemonStatus, ProjectChanged
from cistem_tui.panels import run_later

__all__ = ["PANELS", "CistemApp", "panel_class"]

logger = logging.getLogger(__name__)

_BACKGROUND_DELAY_S = 0.3

PANELS: tuple[tuple[str, str], ...] = (
    ("overview", "Overview"),
    ("assets", "Assets"),
    ("actions", "Actions"),
    ("results", "Results"),
    ("jobs", "Jobs"),
    ("settings", "Settings"),
)
"""``(id, title)`` of each panel, in tab order (keys 1-6)."""

_PANEL_CLASSES: dict[str, tuple[str, str]] = {
    "overview": ("cistem_tui.panels.overview", "OverviewPanel"),
    "assets": ("cistem_tui.panels.assets", "AssetsPanel"),
    "actions": ("cistem_tui.panels.actions", "ActionsPanel"),
    "results": ("cistem_tui.panels.results", "ResultsPanel"),
    "jobs": ("cistem_tui.panels.jobs", "JobsPanel"),
    "settings": ("cistem_tui.panels.settings", "SettingsPanel"),
}
"""Where each panel's class lives; imported when the panel is first shown (fast start)."""


def panel_class(panel_id: str) -> Callable[..., Any]:
    """Return the class of a panel (``overview`` ... ``settings``), importing its module."""
    import importlib

    module, name = _PANEL_CLASSES[panel_id]
    panel: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return panel


class CistemApp(App[int]):
    """The terminal UI of cistemd.

    Parameters
    ----------
    project
        Project directory to open at start.
    home
        The ``$CISTEM_HOME`` of the daemon (default: the environment's).
    client_factory
        Makes clients (default: a real :class:`cistemd.client.Client` of ``home``).
    ssh_mode
        Light mode for slow links: no animations, fewer repaints.
    follow_events
        Follow the daemon's event stream (tests of single screens may turn it off).
    notices
        Messages to show once the screen is up (daemon started, logind warning).
    initial_panel
        The panel shown first (``overview`` ... ``settings``).
    """

    CSS_PATH = "app.tcss"
    TITLE = "cisTEM"
    SUB_TITLE = "no project"
    ENABLE_COMMAND_PALETTE = False

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f1", "help", "Help", key_display="F1"),
        Binding("question_mark", "help", "Help", show=False),
        Binding("q", "detach", "Detach"),
        Binding("ctrl+q", "detach", "Detach", show=False, priority=True),
        *[
            Binding(str(n), f"panel_key('{panel}')", title, show=False, priority=True)
            for n, (panel, title) in enumerate(PANELS, start=1)
        ],
        *[
            Binding(f"alt+{n}", f"show_panel('{panel}')", title, show=False, priority=True)
            for n, (panel, title) in enumerate(PANELS, start=1)
        ],
        Binding("right_square_bracket", "next_panel", "Next panel", show=False),
        Binding("left_square_bracket", "previous_panel", "Previous panel", show=False),
        Binding("ctrl+r", "refresh_panels", "Refresh", show=False),
    ]

    def __init__(
        self,
        project: str | None = None,
        *,
        home: str | os.PathLike[str] | None = None,
        client_factory: ClientFactory | None = None,
        ssh_mode: bool = False,
        follow_events: bool = True,
        notices: Iterable[tuple[str, str]] = (),
        initial_panel: str = "overview",
    ) -> None:
        super().__init__()
        self.home = None if home is None else os.fspath(home)
        self.connection = Connection(client_factory, home=self.home)
        self.project_path: str | None = None
        self.project_info: dict[str, Any] = {}
        self.ssh_mode = bool(ssh_mode)
        self.connected = False
        self._initial_project = project
        self._follow_events = follow_events
        self._notices = list(notices)
        self._initial_panel = initial_panel if initial_panel in dict(PANELS) else "overview"
        self._event_thread: threading.Thread | None = None
        self.initial_path_hint: str | None = None
        self._pending_loads: dict[str, Callable[[], Any]] = {}
        self._focus_tries = 0
        if self.ssh_mode:
            self.animation_level = "none"

    # -- layout ------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        """Lay out the header, the tabs of the six panels and the key bar.

        Only the first panel is built now; each other one is built the first
        time it is shown (:meth:`panel`), so the first screen comes up fast.
        """
        yield Header(show_clock=False, icon="≡")
        with TabbedContent(id="panels", initial=f"tab-{self._initial_panel}"):
            for number, (panel_id, title) in enumerate(PANELS, start=1):
                with TabPane(f"{number} {title}", id=f"tab-{panel_id}"):
                    if panel_id == self._initial_panel:
                        yield panel_class(panel_id)(id=panel_id, classes="panel")
        yield Footer()

    def panel(self, panel_id: str) -> Any:
        """Return a panel, building it (and bringing it up to date) if it was never shown.

        Parameters
        ----------
        panel_id
            ``overview``, ``assets``, ``actions``, ``results``, ``jobs`` or ``settings``.

        Returns
        -------
        Container
            The panel (mounting may finish at the next refresh).
        """
        found = self.query(f"#{panel_id}")
        if found:
            return found.first()
        widget = panel_class(panel_id)(id=panel_id, classes="panel")
        self.query_one(f"#tab-{panel_id}", TabPane).mount(widget)
        if self.connected:
            widget.post_message(DaemonStatus(True, "attached"))
        if self.project_path:
            widget.post_message(ProjectChanged(self.project_path))
        return widget

    async def on_mount(self) -> None:
        """Attach: follow events, open the project given on the command line."""
        for severity, text in self._notices:
            self.notify(text, severity=severity, timeout=15)  # type: ignore[arg-type]
        if self._follow_events:
            self._event_thread = threading.Thread(
                target=self._follow, name="cistem-tui-events", daemon=True
            )
            self._event_thread.start()
        self._focus_active_panel()  # keys typed ahead go to the panel
        if self._initial_project:
            run_later(self, partial(self.open_project, self._initial_project), exclusive=False)

    # -- the daemon --------------------------------------------------------------------------------

    async def call(self, method_name: str, *args: Any, **kwargs: Any) -> Any:
        """Run a :class:`cistemd.client.Client` method in a thread; return its result.

        Parameters
        ----------
        method_name
            The method (``assets_page``, ``submit``, ``jobs_page`` ...).
        *args, **kwargs
            Its arguments.

        Returns
        -------
        Any
            The method's result.

        Raises
        ------
        cistemd.client.ClientError
            Refused, unanswered, or no daemon.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)

        def run() -> None:
            value: Any = None
            error: BaseException | None = None
            try:
                value = self.connection.call(method_name, *args, **kwargs)
            except BaseException as exc:  # handed to the awaiting coroutine
                error = exc
            try:
                loop.call_soon_threadsafe(settle, value, error)
            except RuntimeError:  # the loop closed: the app has exited
                pass

        # A daemon thread per call (serialised by the connection's lock): a request
        # still waiting for a slow daemon never holds up quitting.
        threading.Thread(target=run, name=f"cistem-call-{method_name}", daemon=True).start()
        return await future

    def report_error(self, exc: BaseException, *, title: str = "") -> None:
        """Show an error from the daemon (or a bad entry) as a notification.

        Parameters
        ----------
        exc
            The error; its message is shown.
        title
            What was being done.
        """
        self.notify(str(exc) or type(exc).__name__, title=title, severity="error", timeout=10)

    def _follow(self) -> None:
        def on_event(event: dict[str, Any]) -> None:
            self.post_message(DaemonEvent(event))

        def on_status(connected: bool, detail: str) -> None:
            self.post_message(DaemonStatus(connected, detail))

        self.connection.follow_events(on_event, on_status)

    def on_daemon_event(self, message: DaemonEvent) -> None:
        """Hand each daemon event to every panel."""
        for panel in self.query(".panel"):
            panel.post_message(DaemonEvent(message.event))

    def on_daemon_status(self, message: DaemonStatus) -> None:
        """Tell the user and the panels when the daemon goes away or comes back."""
        was = self.connected
        self.connected = message.connected
        if was and not message.connected:
            self.notify(f"lost the daemon: {message.detail}", severity="warning", timeout=10)
        elif not was and message.connected and self.project_path:
            run_later(self, partial(self.open_project, self.project_path, quiet=True))
        self._update_subtitle()
        for panel in self.query(".panel"):
            panel.post_message(DaemonStatus(message.connected, message.detail))

    # -- projects ----------------------------------------------------------------------------------

    async def open_project(
        self, path: str, *, create: bool = False, name: str = "", quiet: bool = False
    ) -> bool:
        """Open (or create) a project in the daemon and make it the TUI's project.

        Parameters
        ----------
        path
            The project directory.
        create
            Create it (``name``: the project name; default the directory's).
        name
            Name of a new project.
        quiet
            Do not announce it (a reattach after the daemon came back).

        Returns
        -------
        bool
            Whether it is open.
        """
        from cistemd.client import ClientError

        path = os.path.abspath(os.path.expanduser(path))
        try:
            if create:
                info = await self.call("create_project", path, name)
            else:
                info = await self.call("open_project", path)
        except ClientError as exc:
            self.report_error(exc, title="Create project" if create else "Open project")
            return False
        self.connected = True
        self.project_info = dict(info)
        self.project_path = str(info.get("path", path))
        self._update_subtitle()
        if not quiet:
            self.notify(f"project {info.get('name', '')} open", timeout=3)
        # The panel on screen loads first; the others a moment later, so their
        # requests do not queue in front of the one the user is waiting for.
        path = self.project_path
        for panel in self.query(".panel"):
            if panel.id == self.active_panel:
                panel.post_message(ProjectChanged(path))
            else:
                message = ProjectChanged(path)
                self.set_timer(_BACKGROUND_DELAY_S, partial(panel.post_message, message))
        return True

    @property
    def active_panel(self) -> str:
        """The id of the panel on screen (``overview`` ... ``settings``)."""
        try:
            return self.query_one("#panels", TabbedContent).active.removeprefix("tab-")
        except Exception:  # before compose
            return self._initial_panel

    def load_soon(self, panel: Any, load: Callable[[], Any]) -> None:
        """Run a panel's first load now if it is on screen, else a moment later.

        Parameters
        ----------
        panel
            The panel.
        load
            What loads it (called with no arguments).
        """
        panel_id = str(getattr(panel, "id", ""))
        if panel_id == self.active_panel:
            load()
            return

        def later() -> None:
            if self._pending_loads.pop(panel_id, None) is not None:
                load()

        self._pending_loads[panel_id] = load
        self.set_timer(_BACKGROUND_DELAY_S, later)

    def _run_pending_load(self, panel_id: str) -> None:
        load = self._pending_loads.pop(panel_id, None)
        if load is not None:
            load()

    def _update_subtitle(self) -> None:
        name = self.project_info.get("name") or "no project"
        where = self.project_path or ""
        link = "" if self.connected or not self._follow_events else "  [daemon away]"
        self.sub_title = f"{name}  {where}{link}".strip()

    # -- actions -----------------------------------------------------------------------------------

    def action_help(self) -> None:
        """Show the keys."""
        from cistem_tui.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def show_panel(self, panel: str) -> None:
        """Switch to a panel by id (``overview``, ``assets``, ... ``settings``)."""
        tabs = self.query_one("#panels", TabbedContent)
        self.panel(panel)
        # Leave the old panel first: focus left in a hidden pane pulls the tabs back.
        self.set_focus(None)
        self._focus_tries = 0
        tabs.active = f"tab-{panel}"
        self._run_pending_load(panel)
        self.call_after_refresh(self._focus_active_panel)

    def _retry_focus(self) -> None:
        self._focus_tries += 1
        if self._focus_tries <= 50:  # a few frames; never a loop
            self.call_after_refresh(self._focus_active_panel)

    def _focus_active_panel(self) -> None:
        active = self.query_one("#panels", TabbedContent).active.removeprefix("tab-")
        self._run_pending_load(active)  # shown now: load it now
        panel = self.panel(active)
        if not panel.is_mounted:  # built just now: focus it once it is composed
            self._retry_focus()
            return
        if self.focused is not None and panel in self.focused.ancestors_with_self:
            return  # already inside it
        focus = getattr(panel, "focus_default", None)
        if callable(focus):
            try:
                focus()
            except NoMatches:
                self._retry_focus()
            return
        # Focus must not stay in a hidden panel: the tabs would switch back to it.
        focusable = [w for w in panel.query("*") if w.focusable]
        if focusable:
            focusable[0].focus()
        else:
            self.set_focus(None)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        """Build a panel shown for the first time; put the focus into it."""
        if event.tabbed_content.id == "panels":
            self.panel(event.pane.id.removeprefix("tab-") if event.pane.id else "overview")
            self._focus_tries = 0
            self.call_after_refresh(self._focus_active_panel)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Let digits reach a text box being typed in; elsewhere they switch panels."""
        if action == "panel_key":
            from textual.widgets import Input, TextArea

            return not isinstance(self.focused, Input | TextArea)
        return True

    def action_panel_key(self, panel: str) -> None:
        """Switch to a panel with its number key (not while typing in a text box)."""
        self.show_panel(panel)

    def action_show_panel(self, panel: str) -> None:
        """Switch to a panel by id."""
        self.show_panel(panel)

    def _step_panel(self, step: int) -> None:
        ids = [panel for panel, _ in PANELS]
        current = self.query_one("#panels", TabbedContent).active.removeprefix("tab-")
        index = ids.index(current) if current in ids else 0
        self.show_panel(ids[(index + step) % len(ids)])

    def action_next_panel(self) -> None:
        """Go to the next panel."""
        self._step_panel(1)

    def action_previous_panel(self) -> None:
        """Go to the previous panel."""
        self._step_panel(-1)

    def action_refresh_panels(self) -> None:
        """Reload what every panel shows from the daemon."""
        if self.project_path:
            for panel in self.query(".panel"):
                panel.post_message(ProjectChanged(self.project_path))

    async def action_detach(self) -> None:
        """Leave: the daemon and its jobs go on."""
        self.connection.close()
        self.exit(0)

    def detach_now(self) -> None:
        """Detach from a signal handler or another thread (SIGHUP: the terminal is gone)."""
        self.connection.close()
        try:
            self.call_from_thread(self.exit, 0)
        except RuntimeError:
            self.exit(0)
