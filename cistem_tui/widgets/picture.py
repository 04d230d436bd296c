"""``PictureView``: an 8-bit grey picture from the daemon, drawn in the terminal.

The daemon makes the picture (``Client.image_preview``: ``width · height``
bytes, top row first); this widget only scales and draws it, so the TUI never
reads MRC files or imports numpy. Two ways to draw:

* **half blocks** (everywhere, the default): each character cell shows two
  picture pixels, the upper as the foreground of ``▀`` and the lower as its
  background, so pixels come out square on a terminal whose cells are twice
  as tall as wide. Grey levels are quantised to 32 steps so that runs of equal
  cells share one escape sequence (fewer bytes over ssh).
* **terminal graphics** (kitty's graphics protocol or sixel) through
  textual-image, when :func:`prepare_terminal_graphics` was called before the
  app started (textual-image must query the terminal before Textual takes it
  over) and found a graphics-capable terminal, and the view is not in
  ``ssh_mode``.

Overlays are drawn in picture pixel coordinates: :class:`Circle` (particle
picks) and :class:`Mark` (CTF zeros). :func:`picture_point` converts a position
in Å of the original file to picture coordinates.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget

__all__ = [
    "Circle",
    "GreyPicture",
    "Mark",
    "PictureView",
    "half_block_rows",
    "picture_point",
    "prepare_terminal_graphics",
    "scale_picture",
]

_LEVELS = 32  # grey levels drawn in half-block mode
_GRAPHICS: str | None = None  # "tgp" / "sixel" once prepare_terminal_graphics found one


def prepare_terminal_graphics() -> str | None:
    """Detect a graphics-capable terminal; call before ``App.run`` (it queries the tty).

    Returns
    -------
    str or None
        ``"tgp"`` (kitty graphics protocol) or ``"sixel"`` when pictures can be
        drawn as real images, None for half blocks.
    """
    global _GRAPHICS
    if not sys.stdout.isatty():
        return None
    try:
        import textual_image.renderable as renderable
        import textual_image.widget  # noqa: F401  (its import measures the cell size)
    except Exception:  # no terminal answer, no PIL: half blocks do
        return None
    if renderable.Image is renderable.tgp.Image:
        _GRAPHICS = "tgp"
    elif renderable.Image is renderable.sixel.Image:
        _GRAPHICS = "sixel"
    return _GRAPHICS


@dataclass(frozen=True, slots=True)
class GreyPicture:
    """An 8-bit grey picture, ``height`` rows of ``width`` bytes, top row first."""

    width: int
    height: int
    pixels: bytes

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1 or len(self.pixels) != self.width * self.height:
            raise ValueError(
                f"a {self.width}x{self.height} picture needs {self.width * self.height} bytes, "
                f"got {len(self.pixels)}"
            )

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> GreyPicture:
        """Build from an ``image_reply`` (``Client.image_preview``)."""
        return cls(int(reply["width"]), int(reply["height"]), bytes(reply["pixels"]))

    def row(self, y: int) -> bytes:
        """Return row ``y`` (0 = top)."""
        return self.pixels[y * self.width : (y + 1) * self.width]


@dataclass(frozen=True, slots=True)
class Circle:
    """A circle outline in picture pixels (centre ``x``, ``y`` from the top left)."""

    x: float
    y: float
    radius: float
    color: tuple[int, int, int] = (0, 230, 0)


@dataclass(frozen=True, slots=True)
class Mark:
    """One marked picture pixel (e.g. a CTF zero)."""

    x: float
    y: float
    color: tuple[int, int, int] = (255, 60, 60)


def picture_point(
    x_angstroms: float,
    y_angstroms: float,
    *,
    pixel_size_angstroms: float,
    scale: float,
    original_height: int,
) -> tuple[float, float]:
    """Convert a position in Å (origin at the file's first pixel, y up) to picture pixels.

    Parameters
    ----------
    x_angstroms, y_angstroms
        The position, as cisTEM stores particle positions.
    pixel_size_angstroms
        The file's pixel size.
    scale
        Picture pixels per file pixel (``image_reply["scale"]``).
    original_height
        The file's height in pixels (the picture's rows run top to bottom).

    Returns
    -------
    tuple of float
        ``(x, y)`` in picture pixels from the top left.
    """
    column = x_angstroms / pixel_size_angstroms
    row_from_bottom = y_angstroms / pixel_size_angstroms
    return column * scale, (original_height - row_from_bottom) * scale


def _bins(source: int, target: int) -> list[tuple[int, int]]:
    """Split ``range(source)`` into ``target`` contiguous, non-empty-where-possible bins."""
    out = []
    for index in range(target):
        start = index * source // target
        stop = max(start + 1, (index + 1) * source // target)
        out.append((min(start, source - 1), min(stop, source)))
    return out


def scale_picture(picture: GreyPicture, width: int, height: int) -> list[list[int]]:
    """Area-average ``picture`` to ``height`` rows of ``width`` grey values (pure Python).

    Parameters
    ----------
    picture
        The picture.
    width, height
        The target size in pixels (≥ 1).

    Returns
    -------
    list of list of int
        ``height`` rows of ``width`` values 0..255.
    """
    width, height = max(1, width), max(1, height)
    columns = _bins(picture.width, width)
    narrowed = []
    for y in range(picture.height):
        row = picture.row(y)
        narrowed.append([sum(row[a:b]) / (b - a) for a, b in columns])
    out = []
    for a, b in _bins(picture.height, height):
        block = narrowed[a:b]
        count = len(block)
        out.append([round(sum(values) / count) for values in zip(*block, strict=True)])
    return out


def fit_size(picture: GreyPicture, cells: Size) -> tuple[int, int]:
    """Return the largest ``(width, height)`` in pixels (2 per cell row) keeping the aspect."""
    max_width, max_height = max(1, cells.width), max(2, 2 * cells.height)
    factor = min(max_width / picture.width, max_height / picture.height)
    return max(1, int(picture.width * factor)), max(1, int(picture.height * factor))


def _overlay_pixels(
    circles: Iterable[Circle], marks: Iterable[Mark], factor: float, width: int, height: int
) -> dict[tuple[int, int], tuple[int, int, int]]:
    painted: dict[tuple[int, int], tuple[int, int, int]] = {}

    def put(x: float, y: float, color: tuple[int, int, int]) -> None:
        column, row = int(x), int(y)
        if 0 <= column < width and 0 <= row < height:
            painted[(column, row)] = color

    import math

    for circle in circles:
        radius = circle.radius * factor
        cx, cy = circle.x * factor, circle.y * factor
        steps = max(8, int(2 * math.pi * radius * 1.5))
        for step in range(steps):
            angle = 2 * math.pi * step / steps
            put(cx + radius * math.cos(angle), cy + radius * math.sin(angle), circle.color)
    for mark in marks:
        put(mark.x * factor, mark.y * factor, mark.color)
    return painted


@lru_cache(maxsize=4096)
def _cell_style(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Style:
    return Style(color=Color.from_rgb(*top), bgcolor=Color.from_rgb(*bottom))


def _quantise(value: int) -> tuple[int, int, int]:
    step = 256 // _LEVELS
    level = min(255, (value // step) * step + step // 2)
    return (level, level, level)


def half_block_rows(
    picture: GreyPicture,
    cells: Size,
    *,
    circles: Sequence[Circle] = (),
    marks: Sequence[Mark] = (),
) -> list[list[Segment]]:
    """Render ``picture`` (and overlays) as rows of ``▀`` segments fitting ``cells``.

    Parameters
    ----------
    picture
        The picture.
    cells
        Room in character cells.
    circles, marks
        Overlays in picture pixels.

    Returns
    -------
    list of list of Segment
        One list of segments per cell row, consecutive equal cells merged.
    """
    width, height = fit_size(picture, cells)
    grey = scale_picture(picture, width, height)
    factor = width / picture.width
    painted = _overlay_pixels(circles, marks, factor, width, height)
    rows: list[list[Segment]] = []
    for cell_row in range((height + 1) // 2):
        top_y, bottom_y = 2 * cell_row, 2 * cell_row + 1
        segments: list[Segment] = []
        run_style: Style | None = None
        run = 0
        for x in range(width):
            top = painted.get((x, top_y)) or _quantise(grey[top_y][x])
            if bottom_y < height:
                bottom = painted.get((x, bottom_y)) or _quantise(grey[bottom_y][x])
            else:
                bottom = (0, 0, 0)
            style = _cell_style(top, bottom)
            if style is run_style:
                run += 1
                continue
            if run_style is not None:
                segments.append(Segment("▀" * run, run_style))
            run_style, run = style, 1
        if run_style is not None:
            segments.append(Segment("▀" * run, run_style))
        rows.append(segments)
    return rows


class PictureView(Widget, can_focus=True):
    """Shows one :class:`GreyPicture` with optional pick circles and marks.

    Parameters
    ----------
    ssh_mode
        Never use terminal graphics (half blocks send fewer bytes).
    **kwargs
        Textual's widget arguments (``id``, ``classes`` ...).
    """

    DEFAULT_CSS = """
    PictureView {
        width: 1fr;
        height: 1fr;
        min-height: 4;
    }
    """

    def __init__(self, *, ssh_mode: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ssh_mode = ssh_mode
        self.picture: GreyPicture | None = None
        self.circles: tuple[Circle, ...] = ()
        self.marks: tuple[Mark, ...] = ()
        self.message = "no picture"
        self._rows: list[list[Segment]] = []
        self._rows_for: tuple[int, int] | None = None
        self._graphics_child: Widget | None = None

    @property
    def uses_graphics(self) -> bool:
        """Whether pictures go out through a terminal graphics protocol."""
        return _GRAPHICS is not None and not self.ssh_mode

    def show(
        self,
        picture: GreyPicture | None,
        *,
        circles: Iterable[Circle] = (),
        marks: Iterable[Mark] = (),
        message: str = "",
    ) -> None:
        """Show ``picture`` (None: show ``message`` instead) with overlays."""
        self.picture = picture
        self.circles = tuple(circles)
        self.marks = tuple(marks)
        self.message = message or ("" if picture is not None else "no picture")
        self._rows_for = None
        if self.uses_graphics:
            self._show_graphics()
        self.refresh()

    def clear(self, message: str = "no picture") -> None:
        """Show ``message`` instead of a picture."""
        self.show(None, message=message)

    def _show_graphics(self) -> None:  # pragma: no cover - needs a graphics terminal
        from PIL import Image as PILImage
        from PIL import ImageDraw
        from textual_image.widget import Image as ImageWidget

        if self._graphics_child is not None:
            self._graphics_child.remove()
            self._graphics_child = None
        if self.picture is None:
            return
        image = PILImage.frombytes(
            "L", (self.picture.width, self.picture.height), self.picture.pixels
        ).convert("RGB")
        draw = ImageDraw.Draw(image)
        for circle in self.circles:
            box = (circle.x - circle.radius, circle.y - circle.radius,
                   circle.x + circle.radius, circle.y + circle.radius)
            draw.ellipse(box, outline=circle.color)
        for mark in self.marks:
            draw.point((mark.x, mark.y), fill=mark.color)
        self._graphics_child = ImageWidget(image)
        self.mount(self._graphics_child)

    def render_line(self, y: int) -> Strip:
        """Draw one cell row (half-block mode)."""
        width = self.size.width
        if self.picture is None or self.uses_graphics:
            text = self.message if y == self.size.height // 2 else ""
            return Strip([Segment(text[:width].center(width))]) if text else Strip.blank(width)
        key = (self.size.width, self.size.height)
        if self._rows_for != key:
            self._rows = half_block_rows(
                self.picture, self.size, circles=self.circles, marks=self.marks
            )
            self._rows_for = key
        if y >= len(self._rows):
            return Strip.blank(width)
        return Strip(self._rows[y]).extend_cell_length(width)
