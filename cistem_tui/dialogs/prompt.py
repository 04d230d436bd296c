"""Small modal prompts: a line of text, a choice from a list, a yes/no question."""

from __future__ import annotations

from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList
from textual.widgets.option_list import Option

__all__ = ["ChoicePrompt", "ConfirmPrompt", "TextPrompt"]


class TextPrompt(ModalScreen[str | None]):
    """Ask for one line of text; Enter accepts, Escape cancels.

    Parameters
    ----------
    title
        The question.
    value
        The text to start with.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, value: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.value = value

    def compose(self) -> ComposeResult:
        """Show the question, the box, the buttons."""
        with Vertical(classes="dialog small-dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Input(self.value, id="prompt-input", compact=True)
            with Horizontal(classes="dialog-buttons"):
                yield Button("OK", variant="primary", id="prompt-ok", compact=True)
                yield Button("Cancel", id="prompt-cancel", compact=True)

    @on(Input.Submitted)
    @on(Button.Pressed, "#prompt-ok")
    def _accept(self) -> None:
        text = self.query_one("#prompt-input", Input).value.strip()
        self.dismiss(text or None)

    @on(Button.Pressed, "#prompt-cancel")
    def action_cancel(self) -> None:
        """Close without an answer."""
        self.dismiss(None)


class ChoicePrompt(ModalScreen[Any]):
    """Pick one item of a list; Enter picks, Escape cancels.

    Parameters
    ----------
    title
        The question.
    choices
        ``(label, value)`` pairs.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, choices: list[tuple[str, Any]]) -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.choices = list(choices)

    def compose(self) -> ComposeResult:
        """Show the question and the list."""
        with Vertical(classes="dialog small-dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield OptionList(
                *[Option(label, id=str(i)) for i, (label, _) in enumerate(self.choices)],
                id="choice-list",
            )

    @on(OptionList.OptionSelected)
    def _picked(self, event: OptionList.OptionSelected) -> None:
        index = int(event.option.id or 0)
        self.dismiss(self.choices[index][1])

    def action_cancel(self) -> None:
        """Close without a choice."""
        self.dismiss(None)


class ConfirmPrompt(ModalScreen[bool]):
    """Ask yes or no (y / n keys, Escape = no).

    Parameters
    ----------
    question
        What to confirm.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__(classes="dialog-screen")
        self.question = question

    def compose(self) -> ComposeResult:
        """Show the question and Yes / No."""
        with Vertical(classes="dialog small-dialog"):
            yield Label(self.question, classes="dialog-title")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Yes", variant="error", id="confirm-yes", compact=True)
                yield Button("No", id="confirm-no", compact=True)

    @on(Button.Pressed, "#confirm-yes")
    def _yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#confirm-no")
    def _no(self) -> None:
        self.dismiss(False)

    def action_answer(self, yes: bool) -> None:
        """Answer by key."""
        self.dismiss(yes)
