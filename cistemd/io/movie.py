"""Format-independent, streaming access to movies (MRC stacks or multi-page TIFFs).

:func:`open_movie` returns a :class:`MovieReader` that hands out one frame at a
time as ``float32`` with the dark reference subtracted and the gain reference
applied::

    corrected = (raw - dark) * gain

so a whole movie never has to be in memory. Gain and dark references may be
MRC or TIFF files (or arrays); :class:`GainTransform` rotates and flips them to
match the frames, as a gain reference written by a camera's software often
needs.

Orientation convention
----------------------
Images are ``(ny, nx)`` arrays whose row 0 is ``y = 0`` -- the MRC/IMOD
convention, displayed with x to the right and **y up**. A "counter-clockwise"
rotation below is counter-clockwise as seen in that display: the pixel at
``(x, y)`` relative to the centre moves to ``(-y, x)``. (With row 0 drawn at
the top, as matplotlib's ``imshow`` does by default, the same rotation looks
clockwise.) A flip is applied after the rotation: ``"x"`` mirrors left-right
(``x -> -x``), ``"y"`` mirrors up-down (``y -> -y``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cistemd.errors import InvalidInputError
from cistemd.io._guard import PathLike, file_size, invalid_input_on_error, raise_invalid

__all__ = [
    "GainTransform",
    "MovieHeader",
    "MovieReader",
    "detect_image_format",
    "open_movie",
    "read_gain_reference",
    "read_movie_header",
]


@dataclass(frozen=True)
class GainTransform:
    """Rotation and flip that bring a gain (or dark) reference onto the frames.

    Attributes
    ----------
    rotate_quarter_turns
        Number of 90° counter-clockwise rotations (y-up display, see the module
        docstring); any integer, taken modulo 4.
    flip
        ``"none"``, ``"x"`` (mirror left-right) or ``"y"`` (mirror up-down),
        applied after the rotation.
    """

    rotate_quarter_turns: int = 0
    flip: str = "none"

    def __post_init__(self) -> None:
        if self.flip not in ("none", "x", "y"):
            raise ValueError(f"flip must be 'none', 'x' or 'y', got {self.flip!r}")
        if not isinstance(self.rotate_quarter_turns, int | np.integer):
            raise ValueError(
                f"rotate_quarter_turns must be an integer, got {self.rotate_quarter_turns!r}"
            )

    @property
    def is_identity(self) -> bool:
        """Whether the transform leaves an image unchanged."""
        return self.rotate_quarter_turns % 4 == 0 and self.flip == "none"

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Return ``image`` (``(ny, nx)``, row 0 = ``y = 0``) rotated, then flipped.

        A rotation by an odd number of quarter turns swaps the output shape to
        ``(nx, ny)``.
        """
        if image.ndim != 2:
            raise ValueError(f"expected a 2-D image, got shape {image.shape}")
        # Counter-clockwise with y up: (x, y) -> (-y, x). np.rot90 turns from the
        # first axis (y) towards the second (x), i.e. clockwise in a y-up view,
        # hence the negative k.
        result = np.rot90(image, k=-(int(self.rotate_quarter_turns) % 4))
        if self.flip == "x":
            result = result[:, ::-1]
        elif self.flip == "y":
            result = result[::-1, :]
        return np.ascontiguousarray(result)


@dataclass(frozen=True)
class MovieHeader:
    """Dimensions of a movie, whatever its file format.

    Attributes
    ----------
    path
        The file, as given.
    format
        ``"mrc"`` or ``"tiff"``.
    nx, ny
        Frame width and height in pixels.
    n_frames
        Number of frames.
    dtype
        Element type of the raw frames in the file.
    pixel_size_angstroms
        Å per pixel if the file records it, else ``None``.
    """

    path: str
    format: str
    nx: int
    ny: int
    n_frames: int
    dtype: np.dtype[Any]
    pixel_size_angstroms: float | None


_MRC_SUFFIXES = {".mrc", ".mrcs", ".map", ".st", ".ali", ".rec", ".ccp4"}
_TIFF_SUFFIXES = {".tif", ".tiff", ".eer"}


def detect_image_format(path: PathLike) -> str:
    """Return ``"mrc"`` or ``"tiff"`` from the file's first bytes (or its suffix).

    Raises
    ------
    InvalidInputError
        If the file cannot be read or is neither.
    """
    size = file_size(path)
    with invalid_input_on_error(path, "cannot read the file"), open(path, "rb") as handle:
        head = handle.read(216)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if len(head) >= 212 and head[208:211] == b"MAP":
        return "mrc"
    suffix = Path(path).suffix.lower()
    if suffix in _MRC_SUFFIXES and size >= 1024:
        return "mrc"
    if suffix in _TIFF_SUFFIXES:
        return "tiff"
    raise_invalid(path, "neither an MRC nor a TIFF file")


def read_movie_header(path: PathLike) -> MovieHeader:
    """Read a movie's dimensions from an MRC stack or a multi-page TIFF.

    Raises
    ------
    InvalidInputError
        If the file is not a usable MRC or TIFF file.
    """
    from cistemd.io import mrc, tiff

    kind = detect_image_format(path)
    if kind == "mrc":
        header = mrc.read_header(path)
        pixel = header.voxel_size_angstroms[0]
        return MovieHeader(
            path=os.fspath(path),
            format="mrc",
            nx=header.nx,
            ny=header.ny,
            n_frames=header.nz,
            dtype=header.dtype,
            pixel_size_angstroms=pixel if pixel > 0 else None,
        )
    theader = tiff.read_header(path)
    return MovieHeader(
        path=os.fspath(path),
        format="tiff",
        nx=theader.nx,
        ny=theader.ny,
        n_frames=theader.n_frames,
        dtype=theader.dtype,
        pixel_size_angstroms=theader.pixel_size_angstroms,
    )


def _read_reference(path: PathLike, what: str) -> np.ndarray:
    from cistemd.io import mrc, tiff

    kind = detect_image_format(path)
    if kind == "mrc":
        header = mrc.read_header(path)
        if header.nz != 1:
            raise_invalid(path, f"a {what} reference must be a single image, "
                                f"this file has {header.nz} sections")
        image = mrc.read(path, mmap=False)
    else:
        with tiff.open_tiff(path) as opened:
            if opened.header.n_frames != 1:
                raise_invalid(path, f"a {what} reference must be a single image, "
                                    f"this file has {opened.header.n_frames} pages")
            image = opened.frame(0)
    if np.iscomplexobj(image):
        raise_invalid(path, f"a {what} reference must be real-valued, not complex")
    reference = np.asarray(image, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(reference)))
    if bad:
        raise_invalid(path, f"{what} reference has {bad} non-finite (NaN/inf) pixels")
    return reference


def read_gain_reference(
    path: PathLike, *, transform: GainTransform = GainTransform()
) -> np.ndarray:
    """Read a gain reference (MRC or TIFF) as ``float32`` ``(ny, nx)``, transformed.

    Parameters
    ----------
    path
        A single-image MRC or TIFF file, multiplicative (``corrected = raw * gain``).
    transform
        Rotation/flip applied after reading (see :class:`GainTransform`).

    Raises
    ------
    InvalidInputError
        If the file is unusable, holds more than one image, or has NaN/inf pixels.
    """
    return transform.apply(_read_reference(path, "gain"))


def _as_reference(
    value: Any, what: str, transform: GainTransform
) -> tuple[np.ndarray | None, str]:
    if value is None:
        return None, ""
    if isinstance(value, str | os.PathLike):
        return transform.apply(_read_reference(value, what)), os.fspath(value)
    array = np.asarray(value)
    if array.ndim != 2 or np.iscomplexobj(array):
        raise ValueError(f"{what} reference must be a real 2-D array, got shape {array.shape}")
    reference = transform.apply(np.asarray(array, dtype=np.float32))
    if not np.all(np.isfinite(reference)):
        raise ValueError(f"{what} reference array has non-finite values")
    return reference, f"<{what} array>"


class MovieReader:
    """Frame-by-frame access to a movie with gain and dark correction.

    Parameters
    ----------
    path
        MRC stack or multi-page TIFF.
    gain
        Gain reference: ``None``, a ``(ny, nx)`` array, or a path to an MRC/TIFF.
    dark
        Dark reference, likewise; subtracted before the gain is applied.
    gain_transform
        Rotation/flip applied to the gain **and** dark references (both come
        from the same detector orientation) before use.

    Attributes
    ----------
    n_frames
        Number of frames.
    shape
        ``(ny, nx)`` of one frame.
    pixel_size_angstroms
        From the movie's header, or ``None``.
    header
        The :class:`MovieHeader`.

    Raises
    ------
    InvalidInputError
        If the movie or a reference file is unusable, or a reference's shape
        differs from the frames' (the message names both files).

    Examples
    --------
    >>> with open_movie("movie.tif", gain="gain.mrc") as movie:  # doctest: +SKIP
    ...     total = sum(movie)
    """

    def __init__(
        self,
        path: PathLike,
        *,
        gain: Any = None,
        dark: Any = None,
        gain_transform: GainTransform = GainTransform(),
    ) -> None:
        from cistemd.io import mrc, tiff

        self._tiff: Any = None
        self._mrc: Any = None
        self.path = os.fspath(path)
        self.header = read_movie_header(path)
        self.n_frames = self.header.n_frames
        self.shape = (self.header.ny, self.header.nx)
        self.pixel_size_angstroms = self.header.pixel_size_angstroms
        self._gain, gain_name = _as_reference(gain, "gain", gain_transform)
        self._dark, dark_name = _as_reference(dark, "dark", gain_transform)
        for reference, name in ((self._gain, gain_name), (self._dark, dark_name)):
            if reference is not None and reference.shape != self.shape:
                raise InvalidInputError(
                    f"{name} is {reference.shape[1]}×{reference.shape[0]} but the movie "
                    f"{self.path} has {self.shape[1]}×{self.shape[0]} frames"
                    + ("" if gain_transform.is_identity else " (after the gain transform)"),
                    path=name,
                )
        if self.header.format == "tiff":
            self._tiff = tiff.open_tiff(path)
        else:
            mrc_header = mrc.read_header(path)
            self._mrc_header = mrc_header
            with invalid_input_on_error(path, "cannot map the MRC data"):
                if mrc_header.file_dtype.isnative:
                    self._mrc = np.memmap(
                        path,
                        dtype=mrc_header.dtype,
                        mode="r",
                        offset=mrc_header.data_offset,
                        shape=(mrc_header.nz, mrc_header.ny, mrc_header.nx),
                    )

    def __len__(self) -> int:
        return self.n_frames

    def raw_frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as stored (file element type), without corrections."""
        from cistemd.io import mrc

        if not -self.n_frames <= index < self.n_frames:
            raise IndexError(f"{self.path}: frame {index} out of range ({self.n_frames} frames)")
        index %= self.n_frames
        if self._tiff is not None:
            return np.asarray(self._tiff.frame(index))
        if self._mrc is not None:
            with invalid_input_on_error(self.path, f"cannot read frame {index + 1}"):
                return np.array(self._mrc[index])
        return mrc.read_slice(self.path, index)

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as ``float32`` ``(ny, nx)`` with ``(raw - dark) * gain`` applied."""
        raw = self.raw_frame(index)
        if np.iscomplexobj(raw):
            raise_invalid(self.path, "movie frames are complex-valued")
        frame = raw.astype(np.float32, copy=True)
        if self._dark is not None:
            frame -= self._dark
        if self._gain is not None:
            frame *= self._gain
        return frame

    def __iter__(self) -> Iterator[np.ndarray]:
        for index in range(self.n_frames):
            yield self.frame(index)

    def close(self) -> None:
        """Release the open file (TIFF handle or memory map)."""
        if self._tiff is not None:
            self._tiff.close()
            self._tiff = None
        if self._mrc is not None:
            mapping = getattr(self._mrc, "_mmap", None)
            self._mrc = None
            if mapping is not None:
                try:
                    mapping.close()
                except BufferError:
                    pass  # a caller still holds a view; the map closes when it is dropped

    def __enter__(self) -> MovieReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # best effort during interpreter shutdown
            pass


def open_movie(
    path: PathLike,
    *,
    gain: Any = None,
    dark: Any = None,
    gain_transform: GainTransform = GainTransform(),
) -> MovieReader:
    """Open a movie for frame-by-frame reading; see :class:`MovieReader`.

    Parameters
    ----------
    path
        MRC stack or multi-page TIFF.
    gain, dark
        References (array or MRC/TIFF path); ``corrected = (raw - dark) * gain``.
    gain_transform
        Rotation/flip applied to the references before use.

    Returns
    -------
    MovieReader
    """
    return MovieReader(path, gain=gain, dark=dark, gain_transform=gain_transform)
