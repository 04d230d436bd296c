"""The TUI's panels, one module each (as cisTEM's main window has them).

Overview, Assets, Actions, Results, Jobs and Settings; see :mod:`cistem_tui.app`
for what a panel may rely on.
"""

from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from textual.widget import Widget

__all__ = ["in_worker", "run_later"]


def in_worker(
    widget: Widget, make: Callable[[Any], Coroutine[Any, Any, Any]]
) -> Callable[[Any], None]:
    """Return a dialog callback that runs ``make(result)`` in a worker of ``widget``.

    Dialog results often lead to daemon requests; running them in a worker
    keeps the panel responsive while the daemon answers.
    """

    def callback(value: Any) -> None:
        run_later(widget, partial(make, value))

    return callback


def run_later(widget: Any, work: Any, **options: Any) -> None:
    """Run ``work`` (an async callable, made into a coroutine only when it starts) in a worker.

    Passing a callable rather than a coroutine means a worker cancelled before
    it starts (``exclusive=True``) leaves no never-awaited coroutine behind.

    Parameters
    ----------
    widget
        The widget that owns the worker.
    work
        An ``async def`` function or a :func:`functools.partial` of one.
    **options
        ``group``, ``exclusive`` ... as :meth:`textual.dom.DOMNode.run_worker` takes.
    """
    widget.run_worker(work, **options)
