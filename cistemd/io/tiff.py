"""Multi-page TIFF movies and images, as SerialEM and most detectors write them.

One page per frame, greyscale, any of ``uint8``/``int8``/``uint16``/``int16``/
``uint32``/``int32``/``float16``/``float32``/``float64``, uncompressed or
compressed with any codec :mod:`tifffile` can decode through
:mod:`imagecodecs` (SerialEM's LZW included). Arrays come back in the file's
element type, shaped ``(n_frames, ny, nx)``.

Every page is checked before anything is decoded: same shape and type as the
first page, pixel data inside the file, and a declared frame size in proportion
to the bytes actually stored (:data:`MAX_COMPRESSION_RATIO`), so that a small
damaged file can never ask for gigabytes of memory. A broken page chain (a
truncated file, a loop of IFDs) is an error, not a silently shorter movie.

Pixel size is taken from ``XResolution``/``YResolution`` when the resolution
unit is centimetre or inch (or an ImageJ ``unit`` of micron/nm/Å) and the value
is plausible for electron microscopy (0.01-1000 Å/px); otherwise it is
``None``. :func:`write` stores it in pixels per centimetre.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cistemd.io._guard import (
    PathLike,
    atomic_output,
    file_size,
    invalid_input_on_error,
    raise_invalid,
)

__all__ = [
    "MAX_COMPRESSION_RATIO",
    "MAX_FRAMES",
    "TiffHeader",
    "open_tiff",
    "read",
    "read_frame",
    "read_header",
    "write",
]

#: Pages beyond this are refused (EER-style fractionations reach a few thousand).
MAX_FRAMES = 100_000
#: Largest image side accepted.
MAX_AXIS = 1 << 17
#: A compressed frame may declare at most this many times its stored bytes
#: (LZW's own limit for 12-bit codes is about 1 300; deflate's is 1 032) ...
MAX_COMPRESSION_RATIO = 4096
#: ... or this many bytes, whichever is larger (a 64 MiB frame is always allowed).
SMALL_FRAME_ALLOWANCE_BYTES = 64 * 1024**2
#: The whole movie may decode to at most MAX_COMPRESSION_RATIO times the file size,
#: or this many bytes, whichever is larger -- so many tiny IFDs sharing (or faking)
#: pixel data cannot add up to gigabytes.
SMALL_MOVIE_ALLOWANCE_BYTES = 256 * 1024**2
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_READABLE_DTYPES = {
    np.dtype(t)
    for t in (
        np.uint8,
        np.int8,
        np.uint16,
        np.int16,
        np.uint32,
        np.int32,
        np.float16,
        np.float32,
        np.float64,
    )
}
_WRITABLE_DTYPES = _READABLE_DTYPES
_UNIT_ANGSTROMS = {
    "micron": 1e4,
    "microns": 1e4,
    "um": 1e4,
    "\u00b5m": 1e4,
    "\u03bcm": 1e4,
    "nm": 10.0,
    "nanometer": 10.0,
    "nanometers": 10.0,
    "a": 1.0,
    "\u00e5": 1.0,
    "angstrom": 1.0,
    "angstroms": 1.0,
}
_PLAUSIBLE_PIXEL_SIZE_ANGSTROMS = (0.01, 1000.0)


@dataclass(frozen=True)
class TiffHeader:
    """What :func:`read_header` learns about a TIFF file.

    Attributes
    ----------
    path
        The file, as given.
    nx, ny
        Frame width and height in pixels.
    n_frames
        Number of pages (frames).
    dtype
        Element type of the decoded frames.
    compression
        Codec name in lower case (``"none"``, ``"lzw"``, ``"zstd"`` ...).
    pixel_size_angstroms
        Å per pixel from the resolution tags, or ``None`` (see module docstring).
    bits_per_sample
        ``BitsPerSample`` of the first page.
    byte_order
        ``"<"`` or ``">"``.
    is_bigtiff
        Whether the file is BigTIFF.
    software
        The ``Software`` tag, ``""`` if absent.
    file_size_bytes
        Size of the file on disk.
    """

    path: str
    nx: int
    ny: int
    n_frames: int
    dtype: np.dtype[Any]
    compression: str
    pixel_size_angstroms: float | None
    bits_per_sample: int = 0
    byte_order: str = "<"
    is_bigtiff: bool = False
    software: str = ""
    file_size_bytes: int = 0

    @property
    def frame_bytes(self) -> int:
        """Bytes of one decoded frame."""
        return self.nx * self.ny * self.dtype.itemsize


# -- capture of tifffile's log messages ------------------------------------------------------------
# tifffile reports damaged page chains through logging rather than exceptions. A
# filter on its logger hands those records to the reader running in the same
# thread (and keeps them off the user's terminal); other threads are untouched.

_capture = threading.local()
_filter_lock = threading.Lock()
_filter_installed = False


class _CaptureFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        records = getattr(_capture, "records", None)
        if records is None:
            return True
        records.append(record)
        return False


@contextlib.contextmanager
def _captured_tifffile_log() -> Iterator[list[logging.LogRecord]]:
    global _filter_installed
    with _filter_lock:
        if not _filter_installed:
            logging.getLogger("tifffile").addFilter(_CaptureFilter())
            _filter_installed = True
    previous = getattr(_capture, "records", None)
    records: list[logging.LogRecord] = []
    _capture.records = records
    try:
        yield records
    finally:
        _capture.records = previous


def _first_error(records: list[logging.LogRecord]) -> str | None:
    for record in records:
        if record.levelno >= logging.ERROR:
            message = record.getMessage()
            # tifffile prefixes messages with an object repr; keep what follows.
            return message.split("> ", 1)[-1] if message.startswith("<") else message
    return None


# -- reading ---------------------------------------------------------------------------------------


def _check_magic(path: PathLike) -> int:
    size = file_size(path)
    if size < 8:
        raise_invalid(path, f"not a TIFF file: only {size} bytes")
    with invalid_input_on_error(path, "cannot read the file"), open(path, "rb") as handle:
        magic = handle.read(4)
    if magic not in _TIFF_MAGICS:
        raise_invalid(path, "not a TIFF file: bad magic number (expected II*\\0 or MM\\0*)")
    return size


def _pixel_size_angstroms(tiff: Any, page: Any) -> float | None:
    tags = page.tags
    if "XResolution" not in tags:
        return None
    try:
        x_resolution = float(page.resolution[0])
        y_resolution = float(page.resolution[1])
        unit = int(page.resolutionunit)
    except (TypeError, ValueError, ZeroDivisionError, IndexError):
        return None
    if not (np.isfinite(x_resolution) and x_resolution > 0):
        return None
    angstroms_per_unit = {2: 2.54e8, 3: 1e8, 4: 1e7, 5: 1e4}.get(unit)
    if angstroms_per_unit is None and getattr(tiff, "is_imagej", False):
        metadata = tiff.imagej_metadata or {}
        unit_name = str(metadata.get("unit", "")).strip().lower()
        angstroms_per_unit = _UNIT_ANGSTROMS.get(unit_name)
    if angstroms_per_unit is None:
        return None
    pixel_size = angstroms_per_unit / x_resolution
    if np.isfinite(y_resolution) and y_resolution > 0:
        pixel_size = 0.5 * (pixel_size + angstroms_per_unit / y_resolution)
    low, high = _PLAUSIBLE_PIXEL_SIZE_ANGSTROMS
    return float(pixel_size) if low <= pixel_size <= high else None


def _compression_name(page: Any) -> str:
    compression = page.compression
    name = getattr(compression, "name", str(compression))
    return "none" if name.upper() == "NONE" else name.lower()


def _check_page(path: PathLike, index: int, page: Any, first: Any, size: int) -> None:
    label = f"frame {index + 1}"
    if int(getattr(page, "samplesperpixel", 1)) != 1:
        raise_invalid(path, f"{label} has {page.samplesperpixel} samples per pixel; "
                            "only greyscale images are supported")
    shape = tuple(int(n) for n in page.shape)
    if len(shape) != 2:
        raise_invalid(path, f"{label} has shape {shape}; expected a 2-D greyscale image")
    if page is not first and (shape != tuple(first.shape) or page.dtype != first.dtype):
        raise_invalid(
            path,
            f"{label} is {shape[1]}×{shape[0]} {page.dtype} but frame 1 is "
            f"{first.shape[1]}×{first.shape[0]} {first.dtype}; not a movie of equal frames",
        )
    offsets = [int(o) for o in page.dataoffsets]
    counts = [int(c) for c in page.databytecounts]
    if len(offsets) != len(counts) or not offsets:
        raise_invalid(path, f"{label} has no pixel-data offsets")
    for offset, count in zip(offsets, counts, strict=True):
        if offset < 0 or count < 0 or offset + count > size:
            raise_invalid(
                path,
                f"{label}: pixel data at byte {offset} (+{count}) lies beyond the end of the "
                f"{size}-byte file (truncated?)",
            )
    stored = sum(counts)
    frame_bytes = shape[0] * shape[1] * page.dtype.itemsize
    if _compression_name(page) == "none":
        needed = (shape[0] * shape[1] * int(page.bitspersample) + 7) // 8
        if stored < needed:
            raise_invalid(
                path, f"{label} stores {stored} bytes of pixel data; its size needs {needed}"
            )
    elif frame_bytes > max(SMALL_FRAME_ALLOWANCE_BYTES, MAX_COMPRESSION_RATIO * stored):
        raise_invalid(
            path,
            f"{label} declares {shape[1]}×{shape[0]} {page.dtype} "
            f"({frame_bytes} bytes) from only {stored} compressed bytes; refusing",
        )


def _check_total_size(path: PathLike, pages: list[Any], size: int) -> None:
    first = pages[0]
    shape = tuple(int(n) for n in first.shape)
    frame_bytes = shape[0] * shape[1] * np.dtype(first.dtype).itemsize
    total = frame_bytes * len(pages)
    if _compression_name(first) == "none":
        stored_per_frame = (shape[0] * shape[1] * int(first.bitspersample) + 7) // 8
        if stored_per_frame * len(pages) > size:
            raise_invalid(
                path,
                f"{len(pages)} uncompressed frames of {shape[1]}×{shape[0]} need "
                f"{stored_per_frame * len(pages)} bytes but the file has {size}",
            )
    elif total > max(SMALL_MOVIE_ALLOWANCE_BYTES, MAX_COMPRESSION_RATIO * size):
        raise_invalid(
            path,
            f"{len(pages)} frames of {shape[1]}×{shape[0]} {first.dtype} would decode to "
            f"{total} bytes from a {size}-byte file; refusing",
        )


def _lzw_decode(data: bytes, out: int | None = None) -> np.ndarray:
    """tifffile-compatible LZW decompressor backed by our bounds-checked decoder.

    ``out`` is the decoded size tifffile expects for the strip or tile.
    """
    from cistemd.io._lzw import LZW_CORRUPT, lzw_decode_into

    src = np.frombuffer(data, dtype=np.uint8)
    if out is None:  # tifffile always passes the size; keep a sane bound anyway
        out = max(1024, 64 * src.size)
    dst = np.empty(int(out), dtype=np.uint8)
    written = lzw_decode_into(src, dst)
    if written == LZW_CORRUPT:
        raise ValueError("corrupt LZW data (a code that is not in the table)")
    if written < dst.size:
        raise ValueError(f"LZW strip decodes to {written} bytes, expected {dst.size}")
    return dst


def _use_safe_lzw_decoder() -> None:
    """Make tifffile decode LZW with :func:`_lzw_decode` instead of imagecodecs'.

    imagecodecs' LZW decoder crashed the interpreter on damaged strips in our
    fuzz test; ours is bounds-checked and as fast. tifffile looks decoders up in
    ``TIFF.DECOMPRESSORS`` (a lazy table); we pre-fill its LZW entry, once per
    process, before any TIFF is read. Writing still uses imagecodecs' encoder.
    """
    import tifffile

    codecs: dict[int, Any] = getattr(tifffile.TIFF.DECOMPRESSORS, "_codecs")  # noqa: B009
    if codecs.get(5) is not _lzw_decode:
        codecs[5] = _lzw_decode


class _OpenTiff:
    """An open, fully checked TIFF file (see :func:`open_tiff`)."""

    def __init__(self, path: PathLike) -> None:
        import tifffile

        _use_safe_lzw_decoder()
        size = _check_magic(path)
        self.path = path
        with _captured_tifffile_log() as records, invalid_input_on_error(
            path, "not a readable TIFF file"
        ):
            self._tiff = tifffile.TiffFile(path)
            try:
                pages = self._tiff.pages
                pages.useframes = False
                n_pages = len(pages)
                error = _first_error(records)
                if error:
                    raise_invalid(path, f"damaged TIFF: {error}")
                if n_pages < 1:
                    raise_invalid(path, "TIFF file has no images")
                if n_pages > MAX_FRAMES:
                    raise_invalid(path, f"TIFF file has {n_pages} pages; at most "
                                        f"{MAX_FRAMES} are supported")
                first = pages.first
                if first.dtype is None or np.dtype(first.dtype) not in _READABLE_DTYPES:
                    raise_invalid(
                        path,
                        f"unsupported pixel type (BitsPerSample {first.bitspersample}, "
                        f"SampleFormat {int(first.sampleformat)})",
                    )
                ny_nx = tuple(int(n) for n in first.shape)
                if len(ny_nx) == 2 and not all(0 < n <= MAX_AXIS for n in ny_nx):
                    raise_invalid(path, f"absurd image size {ny_nx[1]}×{ny_nx[0]}")
                self.pages = []
                for index in range(n_pages):
                    page = pages[index]
                    _check_page(path, index, page, first, size)
                    self.pages.append(page)
                error = _first_error(records)
                if error:
                    raise_invalid(path, f"damaged TIFF: {error}")
                _check_total_size(path, self.pages, size)
                self.header = TiffHeader(
                    path=os.fspath(path),
                    nx=ny_nx[1],
                    ny=ny_nx[0],
                    n_frames=n_pages,
                    dtype=np.dtype(first.dtype),
                    compression=_compression_name(first),
                    pixel_size_angstroms=_pixel_size_angstroms(self._tiff, first),
                    bits_per_sample=int(first.bitspersample),
                    byte_order=self._tiff.byteorder,
                    is_bigtiff=bool(self._tiff.is_bigtiff),
                    software=str(getattr(first, "software", "") or ""),
                    file_size_bytes=size,
                )
            except BaseException:
                self._tiff.close()
                raise

    def frame(self, index: int) -> np.ndarray:
        """Decode frame ``index`` (0-based; negative counts from the end)."""
        n = self.header.n_frames
        if not -n <= index < n:
            raise IndexError(f"{os.fspath(self.path)}: frame {index} out of range ({n} frames)")
        page = self.pages[index % n]
        with _captured_tifffile_log() as records, invalid_input_on_error(
            self.path, f"cannot decode frame {index % n + 1}"
        ):
            data = page.asarray(maxworkers=1)
            error = _first_error(records)
        if error:
            raise_invalid(self.path, f"frame {index % n + 1}: {error}")
        return self._checked(data, index % n)

    def _checked(self, data: np.ndarray, index: int) -> np.ndarray:
        expected = (self.header.ny, self.header.nx)
        if data.shape != expected:
            raise_invalid(
                self.path, f"frame {index + 1} decoded to shape {data.shape}, expected {expected}"
            )
        if not data.dtype.isnative:
            data = data.byteswap().view(data.dtype.newbyteorder("="))
        return data

    def all_frames(self) -> np.ndarray:
        """Decode every frame into one ``(n_frames, ny, nx)`` array."""
        header = self.header
        out = np.empty((header.n_frames, header.ny, header.nx), dtype=header.dtype)
        # One page at a time, each into a buffer of its own that is checked
        # before it is copied. Decoding pages of one open file from several
        # threads (tifffile's ``stack_pages``) crashed the interpreter inside
        # the LZW codec on damaged files in the fuzz test (tests/test_fuzz_readers.py).
        for index in range(header.n_frames):
            out[index] = self.frame(index)
        return out

    def close(self) -> None:
        """Close the underlying file."""
        self._tiff.close()

    def __enter__(self) -> _OpenTiff:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_tiff(path: PathLike) -> _OpenTiff:
    """Open and check a TIFF file for repeated frame access.

    The returned object has ``header`` (:class:`TiffHeader`), ``frame(index)``,
    ``all_frames()`` and ``close()``, and is a context manager.

    Raises
    ------
    InvalidInputError
        If the file is not a usable greyscale TIFF (see module docstring).
    """
    return _OpenTiff(path)


def read_header(path: PathLike) -> TiffHeader:
    """Read and check the structure of a TIFF file without decoding pixels.

    Raises
    ------
    InvalidInputError
        If the file is not a usable greyscale TIFF.
    """
    with _OpenTiff(path) as tiff:
        return tiff.header


def read(path: PathLike) -> np.ndarray:
    """Read every frame of a TIFF file.

    Returns
    -------
    numpy.ndarray
        ``(n_frames, ny, nx)`` in the file's element type (native byte order).
        A single-page file gives ``n_frames == 1``.

    Raises
    ------
    InvalidInputError
        If the file is not a usable greyscale TIFF or a frame cannot be decoded.
    """
    with _OpenTiff(path) as tiff:
        return tiff.all_frames()


def read_frame(path: PathLike, index: int) -> np.ndarray:
    """Read one frame (0-based; negative counts from the end) as ``(ny, nx)``.

    Raises
    ------
    InvalidInputError
        If the file is not a usable TIFF or the frame cannot be decoded.
    IndexError
        If ``index`` is out of range.
    """
    with _OpenTiff(path) as tiff:
        return tiff.frame(index)


def write(
    path: PathLike,
    frames: Any,
    *,
    compression: str | None = "lzw",
    pixel_size_angstroms: float | None = None,
    overwrite: bool = True,
) -> None:
    """Write frames as a multi-page greyscale TIFF, one page per frame (like SerialEM).

    Parameters
    ----------
    path
        Destination; written under a temporary name and renamed into place.
    frames
        ``(n_frames, ny, nx)`` or a single ``(ny, nx)`` image.
    compression
        ``"lzw"`` (default), ``"none"``/``None``, or any other codec name
        tifffile accepts (``"zlib"``, ``"zstd"`` ...).
    pixel_size_angstroms
        Stored as pixels per centimetre in ``XResolution``/``YResolution``.
    overwrite
        If false and ``path`` exists, raise :class:`FileExistsError`.

    Raises
    ------
    ValueError
        For data of the wrong shape or dtype or a bad pixel size.
    """
    import tifffile

    array = np.asarray(frames)
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3 or 0 in array.shape:
        raise ValueError(f"frames must be (n, ny, nx) or (ny, nx), got shape {array.shape}")
    if array.dtype.newbyteorder("=") not in _WRITABLE_DTYPES:
        raise ValueError(f"cannot write TIFF frames of dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    codec = None if compression in (None, "none", "None", "") else compression
    options: dict[str, Any] = {}
    if pixel_size_angstroms is not None:
        low, high = _PLAUSIBLE_PIXEL_SIZE_ANGSTROMS
        if not (np.isfinite(pixel_size_angstroms) and low <= pixel_size_angstroms <= high):
            raise ValueError(
                f"pixel_size_angstroms must be within {low}-{high} Å, got {pixel_size_angstroms}"
            )
        per_centimetre = 1e8 / float(pixel_size_angstroms)
        options["resolution"] = (per_centimetre, per_centimetre)
        options["resolutionunit"] = "CENTIMETER"
    with atomic_output(path, overwrite=overwrite) as temporary:
        tifffile.imwrite(
            temporary,
            array,
            photometric="minisblack",
            compression=codec,
            metadata=None,
            software="cistemd",
            **options,
        )
