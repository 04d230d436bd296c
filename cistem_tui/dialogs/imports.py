"""The import dialogs of the Assets panel, with every field of cisTEM's.

* Movies: files, voltage, Cs, pixel size, exposure per frame, protein is white,
  gain and dark references, resampling (desired pixel size), magnification
  distortion correction (angle, major and minor scale), EER super-resolution
  factor and frames per image.
* Images: files, voltage, Cs, pixel size, protein is white.
* Particle positions: one text file (``<image id or file> <x Å> <y Å>`` per line).
* 3D volumes: files, pixel size (blank: from the MRC header).
* Refinement package: particle stack, parameter file (Frealign ``.par``,
  cisTEM or RELION ``.star``), name, pixel size, symmetry, molecular weight,
  largest dimension, amplitude contrast, Cs, voltage, protein is white.

Files may be typed as paths, shell patterns (``/data/raw/*.tif``) or a
directory, several separated by spaces or commas; they are expanded on this
host, which is the daemon's. The dialog returns an :class:`ImportRequest`; the
panel sends it with ``Client.import_assets``, and the daemon checks the files.
"""

from __future__ import annotations

import glob
import os
import shlex
from dataclasses import dataclass, field
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

__all__ = ["FIELDS", "Field", "ImportDialog", "ImportRequest", "expand_paths", "parse_fields"]

_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "movies": (".mrc", ".mrcs", ".tif", ".tiff", ".eer"),
    "images": (".mrc", ".tif", ".tiff"),
    "volumes": (".mrc", ".map", ".ccp4"),
    "positions": (".txt", ".plt"),
}


@dataclass(frozen=True)
class Field:
    """One field of an import dialog.

    Parameters
    ----------
    name
        The option name (``Client.import_assets`` keyword), or ``paths``/``stack``/
        ``parameters`` for files.
    label
        What the dialog shows (cisTEM's wording).
    kind
        ``float``, ``int``, ``bool``, ``text``, ``path``, ``paths`` or ``choice``.
    default
        The dialog's default (cisTEM's); None: blank.
    required
        Refuse to import while it is blank.
    enabled_by
        Name of a ``bool`` field that must be on for this one to be sent.
    choices
        For ``choice``: ``(label, value)`` pairs.
    """

    name: str
    label: str
    kind: str
    default: Any = None
    required: bool = False
    enabled_by: str = ""
    choices: tuple[tuple[str, str], ...] = ()


_VOLTAGE = Field("voltage_kv", "Voltage (kV)", "float", 300.0, True)
_CS = Field("spherical_aberration_mm", "Spherical aberration (mm)", "float", 2.7, True)
_PIXEL = Field("pixel_size_angstroms", "Pixel size (Å)", "float", 1.0, True)
_WHITE = Field("protein_is_white", "Protein is white", "bool", False)

FIELDS: dict[str, tuple[Field, ...]] = {
    "movies": (
        Field("paths", "Movie files, patterns or directory", "paths", required=True),
        _VOLTAGE,
        _CS,
        _PIXEL,
        Field("exposure_per_frame", "Exposure per frame (e⁻/Å²)", "float", 1.0, True),
        _WHITE,
        Field("use_gain", "Apply gain reference", "bool", False),
        Field("gain_filename", "Gain reference file", "path", enabled_by="use_gain"),
        Field("use_dark", "Apply dark reference", "bool", False),
        Field("dark_filename", "Dark reference file", "path", enabled_by="use_dark"),
        Field("resample", "Resample movies", "bool", False),
        Field(
            "desired_pixel_size_angstroms",
            "Desired pixel size (Å)",
            "float",
            1.0,
            enabled_by="resample",
        ),
        Field("correct_mag_distortion", "Correct magnification distortion", "bool", False),
        Field(
            "mag_distortion_angle",
            "Distortion angle (°)",
            "float",
            0.0,
            enabled_by="correct_mag_distortion",
        ),
        Field(
            "mag_distortion_major_scale",
            "Major scale",
            "float",
            1.0,
            enabled_by="correct_mag_distortion",
        ),
        Field(
            "mag_distortion_minor_scale",
            "Minor scale",
            "float",
            1.0,
            enabled_by="correct_mag_distortion",
        ),
        Field("eer_super_res_factor", "EER super-resolution factor", "int", 1),
        Field("eer_frames_per_image", "EER frames per image (0: all)", "int", 0),
    ),
    "images": (
        Field("paths", "Image files, patterns or directory", "paths", required=True),
        _VOLTAGE,
        _CS,
        _PIXEL,
        _WHITE,
    ),
    "positions": (
        Field("paths", "Positions text file (image, x Å, y Å)", "paths", required=True),
    ),
    "volumes": (
        Field("paths", "Volume files, patterns or directory", "paths", required=True),
        Field("pixel_size_angstroms", "Pixel size (Å; blank: from header)", "float", None),
    ),
    "refinement_package": (
        Field("stack", "Particle stack (MRC)", "path", required=True),
        Field("parameters", "Parameters (.par or .star)", "path", required=True),
        Field(
            "parameters_format",
            "Parameter format",
            "choice",
            "",
            choices=(
                ("detect from file", ""),
                ("Frealign .par", "frealign"),
                ("cisTEM .star", "cistem"),
                ("RELION .star", "relion"),
            ),
        ),
        Field("name", "Package name (blank: automatic)", "text", ""),
        Field("pixel_size_angstroms", "Pixel size (Å; blank: from stack)", "float", None),
        Field("symmetry", "Symmetry", "text", "C1"),
        Field("molecular_weight_kda", "Molecular weight (kDa)", "float", 400.0),
        Field("largest_dimension_angstroms", "Largest dimension (Å)", "float", 150.0),
        Field("amplitude_contrast", "Amplitude contrast", "float", 0.07),
        _CS,
        _VOLTAGE,
        _WHITE,
    ),
}
"""The fields of each import dialog, in cisTEM's order, with its defaults."""

TITLES = {
    "movies": "Import movies",
    "images": "Import images",
    "positions": "Import particle positions",
    "volumes": "Import 3D volumes",
    "refinement_package": "Import refinement package",
}


@dataclass
class ImportRequest:
    """What an import dialog asks for: ``Client.import_assets(project, kind, paths, **options)``."""

    kind: str
    paths: list[str]
    options: dict[str, Any] = field(default_factory=dict)


def expand_paths(text: str, kind: str) -> list[str]:
    """Expand typed files, shell patterns and directories into sorted absolute paths.

    Parameters
    ----------
    text
        Paths separated by spaces or commas (quote names with spaces).
    kind
        The import kind; a directory contributes its files with that kind's
        extensions.

    Returns
    -------
    list of str
        The files, without duplicates, in order.

    Raises
    ------
    ValueError
        A pattern or name matches nothing.
    """
    try:
        words = shlex.split(text.replace(",", " "))
    except ValueError as exc:
        raise ValueError(f"cannot read the file list: {exc}") from None
    found: list[str] = []
    for word in words:
        expanded = os.path.expanduser(word)
        if os.path.isdir(expanded):
            wanted = _EXTENSIONS.get(kind, ())
            matches = [
                os.path.join(expanded, name)
                for name in sorted(os.listdir(expanded))
                if name.lower().endswith(wanted) and os.path.isfile(os.path.join(expanded, name))
            ]
        elif any(ch in expanded for ch in "*?["):
            matches = sorted(glob.glob(expanded))
        else:
            matches = [expanded] if os.path.exists(expanded) else []
        if not matches:
            raise ValueError(f"{word}: no such file (or nothing matches)")
        found += [os.path.abspath(m) for m in matches]
    return list(dict.fromkeys(found))


def parse_fields(kind: str, values: dict[str, Any]) -> ImportRequest:
    """Check the dialog's raw values and build the request.

    Parameters
    ----------
    kind
        ``movies``, ``images``, ``positions``, ``volumes`` or ``refinement_package``.
    values
        Field name -> the widget's value (str for inputs, bool for check boxes,
        str for choices).

    Returns
    -------
    ImportRequest

    Raises
    ------
    ValueError
        A field is blank, not a number, or names no file; the message names the field.
    """
    fields = FIELDS[kind]
    switches = {f.name: bool(values.get(f.name)) for f in fields if f.kind == "bool"}
    paths: list[str] = []
    options: dict[str, Any] = {}
    for spec in fields:
        if spec.enabled_by and not switches.get(spec.enabled_by, False):
            continue
        raw = values.get(spec.name)
        if spec.kind == "bool":
            if spec.name in ("use_gain", "use_dark", "resample"):
                continue  # switches of the dialog only
            options[spec.name] = bool(raw)
            continue
        text = "" if raw is None else str(raw).strip()
        if not text:
            if spec.required or spec.enabled_by:
                raise ValueError(f"{spec.label}: required")
            continue
        if spec.kind == "paths":
            paths = expand_paths(text, kind)
            if kind == "positions" and len(paths) != 1:
                raise ValueError(f"{spec.label}: give exactly one text file")
        elif spec.kind == "path":
            path = os.path.abspath(os.path.expanduser(text))
            if not os.path.isfile(path):
                raise ValueError(f"{spec.label}: no such file {text}")
            if spec.name in ("stack", "parameters"):
                paths.append(path)
            else:
                options[spec.name] = path
        elif spec.kind == "float":
            try:
                options[spec.name] = float(text)
            except ValueError:
                raise ValueError(f"{spec.label}: expected a number, got {text!r}") from None
        elif spec.kind == "int":
            try:
                options[spec.name] = int(text)
            except ValueError:
                raise ValueError(f"{spec.label}: expected a whole number, got {text!r}") from None
        else:
            options[spec.name] = text
    if kind == "movies" and "correct_mag_distortion" not in options:
        options["correct_mag_distortion"] = False
    return ImportRequest(kind=kind, paths=paths, options=options)


def _widget_id(name: str) -> str:
    return f"import-{name.replace('_', '-')}"


class ImportDialog(ModalScreen[ImportRequest | None]):
    """A modal import dialog for one kind of asset.

    Parameters
    ----------
    kind
        ``movies``, ``images``, ``positions``, ``volumes`` or ``refinement_package``.
    defaults
        Values to put in the fields instead of cisTEM's defaults (the last import's).
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "Import"),
    ]

    def __init__(self, kind: str, defaults: dict[str, Any] | None = None) -> None:
        super().__init__(classes="dialog-screen")
        self.kind = kind
        self.defaults = dict(defaults or {})

    def compose(self) -> ComposeResult:
        """One labelled widget per field, then Import / Cancel."""
        with VerticalScroll(classes="dialog", id="import-dialog"):
            yield Label(TITLES[self.kind], classes="dialog-title")
            for spec in FIELDS[self.kind]:
                value = self.defaults.get(spec.name, spec.default)
                wid = _widget_id(spec.name)
                if spec.kind == "bool":
                    yield Checkbox(spec.label, bool(value), id=wid, classes="field", compact=True)
                    continue
                with Horizontal(classes="field-row"):
                    yield Label(spec.label, classes="field-label")
                    if spec.kind == "choice":
                        yield Select(
                            list(spec.choices),
                            value=value if value is not None else "",
                            allow_blank=False,
                            id=wid,
                            classes="field",
                            compact=True,
                        )
                    else:
                        yield Input(
                            "" if value is None else str(value),
                            id=wid,
                            classes="field",
                            type="text",
                            compact=True,
                        )
            yield Static("", id="import-preview", classes="dialog-note")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Import", variant="primary", id="import-ok", compact=True)
                yield Button("Cancel", id="import-cancel", compact=True)

    def on_mount(self) -> None:
        """Grey out fields whose switch is off; focus the first field."""
        self._sync_enabled()
        first = self.query(".field").first()
        first.focus()

    def _values(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for spec in FIELDS[self.kind]:
            widget = self.query_one(f"#{_widget_id(spec.name)}")
            values[spec.name] = getattr(widget, "value", None)
        return values

    def _sync_enabled(self) -> None:
        values = self._values()
        for spec in FIELDS[self.kind]:
            if spec.enabled_by:
                widget = self.query_one(f"#{_widget_id(spec.name)}")
                widget.disabled = not bool(values.get(spec.enabled_by))

    @on(Checkbox.Changed)
    def _switch(self) -> None:
        self._sync_enabled()

    @on(Input.Changed, "#import-paths")
    def _preview(self, event: Input.Changed) -> None:
        note = self.query_one("#import-preview", Static)
        if not event.value.strip():
            note.update("")
            return
        try:
            found = expand_paths(event.value, self.kind)
        except ValueError as exc:
            note.update(str(exc))
            return
        first = os.path.basename(found[0]) if found else ""
        note.update(f"{len(found)} file(s): {first}{' …' if len(found) > 1 else ''}")

    @on(Button.Pressed, "#import-ok")
    @on(Input.Submitted)
    def action_submit(self) -> None:
        """Check the fields and return the request (or say what is wrong)."""
        try:
            request = parse_fields(self.kind, self._values())
        except ValueError as exc:
            self.query_one("#import-preview", Static).update(f"[b]{exc}[/b]")
            self.app.notify(str(exc), severity="error")
            return
        self.dismiss(request)

    @on(Button.Pressed, "#import-cancel")
    def action_cancel(self) -> None:
        """Close without importing."""
        self.dismiss(None)
