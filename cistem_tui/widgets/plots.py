"""Terminal plots of results (textual-plotext): drift, CTF 1-D fit, FSC.

Each widget takes plain lists from the daemon's result queries
(``Client.results``) and keeps them, so a resize redraws without asking the
daemon again. ``ssh_mode`` draws with plain dots instead of braille (fewer
distinct characters, easier on slow links and odd fonts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual_plotext import PlotextPlot

__all__ = ["CtfFitPlot", "DriftPlot", "FscPlot", "ResultPlot"]


class ResultPlot(PlotextPlot):
    """A plot of named series; subclasses say how their data maps to series.

    Parameters
    ----------
    ssh_mode
        Use ``dot`` markers instead of braille.
    **kwargs
        Textual's widget arguments.
    """

    DEFAULT_CSS = """
    ResultPlot {
        width: 1fr;
        height: 1fr;
        min-height: 6;
    }
    """

    def __init__(self, *, ssh_mode: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ssh_mode = ssh_mode
        self.series: list[tuple[str, list[float], list[float], str]] = []
        self.vertical_lines: list[float] = []
        self.horizontal_lines: list[float] = []
        self.title = ""
        self.x_label = ""
        self.y_label = ""
        self.note = ""

    @property
    def marker(self) -> str:
        """Plotext marker used for lines."""
        return "dot" if self.ssh_mode else "braille"

    def set_series(
        self,
        series: Sequence[tuple[str, Sequence[float], Sequence[float], str]],
        *,
        title: str = "",
        x_label: str = "",
        y_label: str = "",
        vertical_lines: Sequence[float] = (),
        horizontal_lines: Sequence[float] = (),
    ) -> None:
        """Replace the plot's data and redraw.

        Parameters
        ----------
        series
            ``(label, xs, ys, color)`` per line.
        title, x_label, y_label
            Texts.
        vertical_lines, horizontal_lines
            Reference lines (CTF zeros, FSC thresholds).
        """
        self.series = [(label, list(xs), list(ys), color) for label, xs, ys, color in series]
        self.title, self.x_label, self.y_label = title, x_label, y_label
        self.vertical_lines = list(vertical_lines)
        self.horizontal_lines = list(horizontal_lines)
        self._draw()

    def clear_plot(self, note: str = "") -> None:
        """Remove the data (and show ``note`` as the title)."""
        self.series = []
        self.vertical_lines, self.horizontal_lines = [], []
        self.title = note
        self._draw()

    def _draw(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.title)
        plt.xlabel(self.x_label)
        plt.ylabel(self.y_label)
        for label, xs, ys, color in self.series:
            if xs and len(xs) == len(ys):
                plt.plot(xs, ys, label=label, marker=self.marker, color=color)
        for x in self.vertical_lines:
            plt.vline(x, "gray")
        for y in self.horizontal_lines:
            plt.hline(y, "gray")
        self.refresh()


class DriftPlot(ResultPlot):
    """Drift trajectory of a movie: y shift against x shift (Å), frame 1 marked."""

    def show_shifts(self, shifts: Sequence[dict[str, Any]], *, title: str = "") -> None:
        """Plot ``alignment_shifts`` rows ``{frame, x, y}`` (Å)."""
        xs = [float(row["x"]) for row in shifts]
        ys = [float(row["y"]) for row in shifts]
        series = [("drift", xs, ys, "cyan")]
        if xs:
            series.append(("frame 1", xs[:1], ys[:1], "red"))
        self.set_series(series, title=title or "Drift", x_label="x (Å)", y_label="y (Å)")


class CtfFitPlot(ResultPlot):
    """CTFFIND's 1-D fit: rotational average, fit and fit quality against 1/Å."""

    def show_fit(self, data: dict[str, Any], *, title: str = "", max_zeros: int = 12) -> None:
        """Plot a ``ctf_fit`` query's data (curves from ``_avrot.txt``, zeros)."""
        frequency = [float(v) for v in data.get("spatial_frequency", [])]
        if not frequency:
            self.clear_plot(str(data.get("note") or "no 1D fit"))
            return
        series = [
            ("spectrum", frequency, data.get("rotational_average", []), "white"),
            ("CTF fit", frequency, data.get("ctf_fit", []), "red"),
            ("quality", frequency, data.get("cross_correlation", []), "cyan"),
        ]
        zeros = [k for k in data.get("zeros_mean_defocus", []) if k <= frequency[-1]]
        self.set_series(
            series,
            title=title or "CTF 1D fit",
            x_label="spatial frequency (1/Å)",
            vertical_lines=zeros[:max_zeros],
        )


class FscPlot(ResultPlot):
    """Fourier shell correlation against spatial frequency, 0.143 marked."""

    def show_fsc(self, rows: Sequence[dict[str, Any]], *, title: str = "") -> None:
        """Plot ``fsc`` query rows ``{resolution, fsc, part_fsc}``."""
        usable = [r for r in rows if r.get("resolution") and r.get("fsc") is not None]
        if not usable:
            self.clear_plot("no FSC statistics")
            return
        frequency = [1.0 / float(r["resolution"]) for r in usable]
        series = [("FSC", frequency, [float(r["fsc"]) for r in usable], "cyan")]
        if all(r.get("part_fsc") is not None for r in usable):
            series.append(("Part FSC", frequency, [float(r["part_fsc"]) for r in usable], "green"))
        self.set_series(
            series,
            title=title or "FSC",
            x_label="spatial frequency (1/Å)",
            horizontal_lines=[0.143],
        )
