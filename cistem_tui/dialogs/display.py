"""Display an asset as a picture (the Assets panel's "Display" button).

The daemon makes a small 8-bit picture of the asset (``Client.image_preview``:
a movie's sum, a micrograph, a volume's orthogonal views, a package's stack
file) and :class:`cistem_tui.widgets.picture.PictureView` draws it (terminal
graphics where the terminal has them, half-block characters where not). A
particle position is shown on its micrograph with a circle. The TUI itself
never reads the files.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from cistem_tui.panels import run_later

__all__ = ["DisplayScreen", "preview_request"]


def preview_request(kind: str, record: dict[str, Any]) -> dict[str, Any] | None:
    """Return the ``image_preview`` arguments for an asset row (None: nothing to draw).

    Parameters
    ----------
    kind
        The asset panel's key (``movies``, ``images``, ``positions``, ``volumes``,
        ``packages``).
    record
        The asset's row, as ``Client.assets_page`` gives it.

    Returns
    -------
    dict or None
        ``{"source", "asset_id", "path", "which"}``.
    """
    if kind == "movies":
        return {"source": "movie", "asset_id": int(record["movie_asset_id"]), "which": "image"}
    if kind == "images":
        return {"source": "image", "asset_id": int(record["image_asset_id"]), "which": "image"}
    if kind == "positions" and record.get("parent_image_asset_id"):
        return {
            "source": "image",
            "asset_id": int(record["parent_image_asset_id"]),
            "which": "image",
        }
    if kind == "volumes":
        return {
            "source": "volume",
            "asset_id": int(record["volume_asset_id"]),
            "which": "volume_orth",
        }
    if kind == "packages" and record.get("stack_filename"):
        return {"source": "file", "path": str(record["stack_filename"]), "which": "image"}
    return None


class DisplayScreen(ModalScreen[None]):
    """A large picture of one asset.

    Parameters
    ----------
    kind
        The asset panel's key.
    record
        The asset's row.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,d", "close", "Close")]

    def __init__(self, kind: str, record: dict[str, Any]) -> None:
        super().__init__(classes="dialog-screen")
        self.kind = kind
        self.record = dict(record)

    def compose(self) -> ComposeResult:
        """Show the title, the facts and the picture."""
        from cistem_tui.widgets.picture import PictureView

        path = self.record.get("filename") or self.record.get("stack_filename") or ""
        name = self.record.get("name") or (os.path.basename(str(path)) if path else "")
        if self.kind == "positions":
            name = (
                f"particle {self.record.get('particle_position_asset_id')} on image "
                f"{self.record.get('parent_image_asset_id')}"
            )
        with Vertical(id="display-box", classes="dialog"):
            yield Label(f"{name}  (Esc closes)", classes="dialog-title")
            facts = "  ".join(
                f"{key} {value}"
                for key, value in self.record.items()
                if key in ("x_size", "y_size", "z_size", "pixel_size", "number_of_frames")
            )
            yield Static(facts or str(path), id="display-facts")
            ssh_mode = bool(getattr(self.app, "ssh_mode", False))
            yield PictureView(ssh_mode=ssh_mode, id="display-picture")

    def on_mount(self) -> None:
        """Ask the daemon for the picture."""
        run_later(self, self._load, exclusive=True)

    async def _load(self) -> None:
        from cistem_tui.widgets.picture import Circle, GreyPicture, PictureView, picture_point
        from cistemd.client import ClientError

        view = self.query_one("#display-picture", PictureView)
        request = preview_request(self.kind, self.record)
        app: Any = self.app
        if request is None or not getattr(app, "project_path", None):
            view.clear("no picture for this asset")
            return
        view.clear("loading…")
        try:
            reply = await app.call("image_preview", app.project_path, max_size=384, **request)
        except (ClientError, AttributeError) as exc:
            view.clear(f"cannot display: {exc}")
            return
        picture = GreyPicture(int(reply["width"]), int(reply["height"]), bytes(reply["pixels"]))
        circles = []
        if self.kind == "positions" and reply.get("pixel_size_angstroms"):
            x, y = picture_point(
                float(self.record.get("x_position", 0.0)),
                float(self.record.get("y_position", 0.0)),
                pixel_size_angstroms=float(reply["pixel_size_angstroms"]),
                scale=float(reply.get("scale", 1.0)),
                original_height=int(reply.get("original_height", reply["height"])),
            )
            circles.append(Circle(x, y, max(2.0, reply["width"] / 40)))
        view.show(picture, circles=circles)

    def action_close(self) -> None:
        """Close the picture."""
        self.dismiss(None)
