"""Forms generated from an action's parameter list (``Client.actions()``).

Each parameter is a map ``{name, kind, default, help, minimum, maximum,
choices, expert}`` as the daemon lists it, so the TUI never imports action
modules. :class:`ActionForm` lays them out as cisTEM does: "Program Options"
visible, "Expert Options" in a collapsed section, each field filled with
cisTEM's default. Numbers are typed into inputs and checked as you type (kind,
bounds); ``bool`` parameters are switches; ``choices`` are drop-downs;
parameters that name an input group, volume or refinement package are
drop-downs filled by the panel (:meth:`ActionForm.set_options`).

:func:`check_value` is the one place values are converted and checked; it
mirrors the daemon's ``Parameter.coerce`` (the daemon checks again).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widget import Widget
from textual.widgets import Collapsible, Input, Label, Select, Static, Switch

__all__ = [
    "ActionForm",
    "FieldError",
    "SafeSelect",
    "asset_selector_kind",
    "check_value",
    "label_for",
]

_GROUP_NAME = re.compile(r"(?:^|_)(movie|image|particle_position|position|volume)?_?group(?:_id)?$")


class SafeSelect(Select[Any]):
    """A drop-down that tolerates getting a value before its parts are composed.

    Textual's ``Select`` updates its label from its value watcher; when the value
    arrives while the select's own children are still being built (a form
    mounted while the screen is busy), the label is not there yet and the
    watcher raises. Here the update is retried after the next refresh instead.
    """

    def _watch_value(self, value: Any) -> None:
        try:
            super()._watch_value(value)
        except NoMatches:
            self.call_after_refresh(self._retry_value)

    def _retry_value(self) -> None:
        if self.is_attached and self.query("SelectOverlay") and self.query("#label"):
            super()._watch_value(self.value)


class FieldError(ValueError):
    """A value a parameter refuses; the message says why, in words for the form."""


def label_for(name: str) -> str:
    """Return a form label for a snake_case parameter name (``box_size`` -> ``Box size``)."""
    words = name.replace("_", " ").strip()
    for unit, shown in ((" angstroms", " (Å)"), (" degrees", " (°)"), (" kv", " (kV)"),
                        (" mm", " (mm)"), (" kda", " (kDa)")):
        if words.endswith(unit):
            words = words[: -len(unit)] + shown
    return words[:1].upper() + words[1:]


def asset_selector_kind(parameter: Mapping[str, Any], action: str = "") -> str | None:
    """Return what a parameter selects, or None for a plain field.

    Parameters
    ----------
    parameter
        The parameter map.
    action
        The action's name (decides the group kind when the name does not).

    Returns
    -------
    str or None
        ``"group:<kind>"`` (``movie``, ``image``, ``particle_position``,
        ``volume``), ``"volume"``, ``"package"`` or ``"refinement"``; None otherwise.
    """
    if parameter.get("kind") not in ("int", "str") or parameter.get("choices"):
        return None
    name = str(parameter.get("name", ""))
    match = _GROUP_NAME.search(name)
    if match:
        kind = match.group(1) or ("movie" if "movie" in action or "align" in action else "image")
        return f"group:{'particle_position' if kind == 'position' else kind}"
    if parameter.get("kind") != "int":
        return None
    if name.endswith(("volume_asset_id", "volume_id")) or name in ("volume", "reference_volume"):
        return "volume"
    if name.startswith("refinement_package") or name in ("package", "package_id"):
        return "package"
    if name in ("refinement_id", "refinement", "input_refinement_id", "starting_refinement_id"):
        return "refinement"
    return None


def check_value(parameter: Mapping[str, Any], text: str | bool) -> Any:
    """Convert a form value to the parameter's kind and check its bounds.

    Parameters
    ----------
    parameter
        The parameter map.
    text
        What the field holds (a switch gives a bool).

    Returns
    -------
    Any
        The value to submit; None when the field is empty and has a default
        (the daemon fills it in).

    Raises
    ------
    FieldError
        The value is not of the kind, out of bounds, or missing but required.
    """
    kind = parameter.get("kind", "str")
    if isinstance(text, bool):
        return text
    stripped = text.strip()
    if not stripped:
        if parameter.get("default") is None:
            raise FieldError("required")
        return None
    value: Any
    if kind == "int":
        try:
            value = int(stripped)
        except ValueError:
            raise FieldError(f"expected a whole number, got {stripped!r}") from None
    elif kind == "float":
        try:
            value = float(stripped)
        except ValueError:
            raise FieldError(f"expected a number, got {stripped!r}") from None
        if not math.isfinite(value):
            raise FieldError("expected a finite number")
    elif kind == "bool":
        lowered = stripped.lower()
        if lowered not in ("yes", "no", "true", "false", "1", "0", "on", "off"):
            raise FieldError("expected yes or no")
        value = lowered in ("yes", "true", "1", "on")
    else:
        value = stripped
    minimum, maximum = parameter.get("minimum"), parameter.get("maximum")
    if kind in ("int", "float"):
        if minimum is not None and value < minimum:
            raise FieldError(f"must be at least {minimum:g}")
        if maximum is not None and value > maximum:
            raise FieldError(f"must be at most {maximum:g}")
    choices = parameter.get("choices")
    if choices and value not in choices:
        raise FieldError(f"must be one of {', '.join(map(str, choices))}")
    return value


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class ActionForm(Vertical):
    """The form of one action.

    Parameters
    ----------
    action
        ``{name, title, parameters}`` from ``Client.actions()``.
    options
        ``(label, value)`` choices of the selector parameters (:attr:`selectors`:
        input groups, volumes, packages, refinements), from the project.
    values
        Values to show instead of the defaults (e.g. what was typed before).
    **kwargs
        Textual's widget arguments.
    """

    DEFAULT_CSS = """
    ActionForm { height: auto; }
    ActionForm .field { height: auto; }
    ActionForm .field-row { height: auto; }
    ActionForm .field-label { width: 24; padding: 0 1 0 0; }
    ActionForm .field Input { width: 1fr; }
    ActionForm .field Select { width: 1fr; }
    ActionForm .field Switch { height: 1; border: none; padding: 0; }
    ActionForm .field-error { color: $error; padding: 0 0 0 24; height: auto; }
    ActionForm .field-error.empty { display: none; }
    ActionForm .section { text-style: bold; }
    ActionForm Collapsible { padding: 0; border: none; }
    ActionForm CollapsibleTitle { padding: 0; }
    """

    def __init__(
        self,
        action: Mapping[str, Any],
        options: Mapping[str, Sequence[tuple[str, Any]]] | None = None,
        values: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.action = dict(action)
        self.options = {name: list(choices) for name, choices in (options or {}).items()}
        self.initial = dict(values or {})
        self.parameters: list[dict[str, Any]] = [dict(p) for p in action.get("parameters", [])]
        self.by_name = {p["name"]: p for p in self.parameters}
        self.selectors = {
            p["name"]: kind
            for p in self.parameters
            if (kind := asset_selector_kind(p, str(action.get("name", "")))) is not None
        }

    @property
    def program_parameters(self) -> list[dict[str, Any]]:
        """Parameters shown under "Program Options"."""
        return [p for p in self.parameters if not p.get("expert")]

    @property
    def expert_parameters(self) -> list[dict[str, Any]]:
        """Parameters under the collapsed "Expert Options"."""
        return [p for p in self.parameters if p.get("expert")]

    def _field(self, parameter: Mapping[str, Any]) -> Widget:
        name = parameter["name"]
        field_id = f"field-{name}"
        default = self.initial.get(name, parameter.get("default"))
        editor: Widget
        if name in self.selectors:
            options = self.options.get(name, [])
            values = [value for _, value in options]
            initial = default if default in values else (
                values[0] if values and default is None else Select.NULL
            )
            editor = SafeSelect(options, id=field_id, prompt="(choose)", allow_blank=True,
                                 value=initial, compact=True)
        elif parameter.get("kind") == "bool":
            editor = Switch(value=bool(default), id=field_id)
        elif parameter.get("choices"):
            options = [(str(c), c) for c in parameter["choices"]]
            editor = SafeSelect(
                options, id=field_id, value=default if default in parameter["choices"] else
                Select.NULL, allow_blank=default is None, compact=True,
            )
        else:
            editor = Input(
                _shown(default),
                id=field_id,
                placeholder="required" if default is None else _shown(default),
                tooltip=str(parameter.get("help", "")) or None,
                compact=True,
            )
        return Vertical(
            Horizontal(
                Label(label_for(name), classes="field-label"), editor, classes="field-row"
            ),
            Static("", id=f"error-{name}", classes="field-error empty"),
            classes="field",
        )

    def compose(self) -> ComposeResult:
        """Program Options, then the collapsed Expert Options."""
        yield Label("Program Options", classes="section")
        for parameter in self.program_parameters:
            yield self._field(parameter)
        if self.expert_parameters:
            with Collapsible(title="Expert Options", collapsed=True, id="expert-options"):
                for parameter in self.expert_parameters:
                    yield self._field(parameter)

    def set_options(self, name: str, options: Sequence[tuple[str, Any]]) -> None:
        """Fill the drop-down of a selector parameter (groups, volumes, packages)."""
        found = self.query(f"#field-{name}")
        if not found:
            return  # the form is not composed yet (or was replaced)
        select = found.first(Select)
        select.set_options(list(options))
        default = self.by_name[name].get("default")
        values = [value for _, value in options]
        if default in values:
            select.value = default
        elif values and default is None:
            select.value = values[0]

    def raw_value(self, name: str) -> str | bool:
        """Return what the field of ``name`` holds now."""
        widget = self.query_one(f"#field-{name}")
        if isinstance(widget, Switch):
            return bool(widget.value)
        if isinstance(widget, Select):
            return "" if widget.is_blank() else str(widget.value)
        assert isinstance(widget, Input)
        return widget.value

    def set_value(self, name: str, value: Any) -> None:
        """Put ``value`` into the field of ``name``."""
        widget = self.query_one(f"#field-{name}")
        if isinstance(widget, Switch):
            widget.value = bool(value)
        elif isinstance(widget, Select):
            widget.value = value
        elif isinstance(widget, Input):
            widget.value = _shown(value)

    def check(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Check every field; show the messages; return ``(values, errors)``.

        ``values`` holds every field with a value (empty fields with a default
        are left to the daemon); ``errors`` maps names to messages.
        """
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for parameter in self.parameters:
            name = parameter["name"]
            try:
                value = check_value(parameter, self.raw_value(name))
            except FieldError as exc:
                errors[name] = str(exc)
                value = None
            if value is not None:
                values[name] = value
            self._show_error(name, errors.get(name, ""))
        if any(p.get("expert") for p in self.parameters if p["name"] in errors):
            self.query_one("#expert-options", Collapsible).collapsed = False
        return values, errors

    def on_input_changed(self, event: Input.Changed) -> None:
        """Check a field as it is typed into."""
        name = (event.input.id or "").removeprefix("field-")
        parameter = self.by_name.get(name)
        if parameter is None:
            return
        try:
            check_value(parameter, event.value)
            message = ""
        except FieldError as exc:
            message = str(exc)
        self._show_error(name, message)

    def _show_error(self, name: str, message: str) -> None:
        error = self.query_one(f"#error-{name}", Static)
        error.update(message)
        error.set_class(not message, "empty")

    def fill(self, values: Mapping[str, Any]) -> None:
        """Set several fields (e.g. a previous job's parameters)."""
        for name, value in values.items():
            if name in self.by_name:
                self.set_value(name, value)

    def names(self) -> Iterable[str]:
        """Return the parameter names, in form order."""
        return (p["name"] for p in self.parameters)
