"""The TUI's own messages (one module, as Textual apps by toolong and posting do).

Contract used by every panel:

* :class:`DaemonEvent` — one event of the daemon's event stream
  (:meth:`cistemd.client.Client.subscribe`): ``.event`` is the EVENT record
  ``{event_id, job_id, kind, payload, time}`` with ``kind`` ``state``,
  ``progress`` or ``log`` (and whatever the daemon adds later). The app's
  event thread posts it to the app, which posts a fresh copy to every panel
  (``on_daemon_event`` in a panel receives it). Live job-progress events of the
  same job coalesce in a busy queue (``can_replace``), so a 1,000-task job never
  floods the screen.
* :class:`ProjectChanged` — the open project changed (``.path``, None when
  closed); posted to every panel after ``app.project_path`` is set.
* :class:`DaemonStatus` — the connection went up or down (``.connected``,
  ``.detail``), posted to every panel.

None of them bubble: the app forwards them explicitly, so a panel's copy never
comes back up to the app.
"""

from __future__ import annotations

from typing import Any

from textual.message import Message

__all__ = ["DaemonEvent", "DaemonStatus", "ProjectChanged"]


class DaemonEvent(Message, bubble=False):
    """One event from the daemon.

    Parameters
    ----------
    event
        The EVENT record: ``{event_id, job_id, kind, payload, time}``.
    """

    def __init__(self, event: dict[str, Any]) -> None:
        super().__init__()
        self.event = event

    @property
    def job_id(self) -> str:
        """The event's job id (``""`` for daemon-wide events)."""
        return str(self.event.get("job_id", ""))

    @property
    def kind(self) -> str:
        """``state``, ``progress``, ``log``, ..."""
        return str(self.event.get("kind", ""))

    def can_replace(self, message: Message) -> bool:
        """Whether this event makes a queued ``message`` redundant.

        Job-level progress (no ``task_id``) supersedes older job-level progress
        of the same job; task-level progress supersedes the same task's.
        """
        if not isinstance(message, DaemonEvent):
            return False
        if self.kind != "progress" or message.kind != "progress":
            return False
        if self.job_id != message.job_id:
            return False
        mine = self.event.get("payload", {}).get("task_id")
        theirs = message.event.get("payload", {}).get("task_id")
        return bool(mine == theirs)


class ProjectChanged(Message, bubble=False):
    """The open project changed.

    Parameters
    ----------
    path
        The project directory now open, or None.
    """

    def __init__(self, path: str | None) -> None:
        super().__init__()
        self.path = path


class DaemonStatus(Message, bubble=False):
    """The connection to the daemon went up or down.

    Parameters
    ----------
    connected
        Whether the daemon answers.
    detail
        Words for the user (why it is down, or the daemon's pid and version).
    """

    def __init__(self, connected: bool, detail: str = "") -> None:
        super().__init__()
        self.connected = connected
        self.detail = detail
