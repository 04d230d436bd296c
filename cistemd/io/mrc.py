"""MRC images, stacks and volumes (MRC2014, with the older variants seen in practice).

Reading is done here, from the 1024-byte header that :mod:`mrcfile` defines
(``mrcfile.dtypes.HEADER_DTYPE``), so that every declared size is checked
against the real file size *before* anything is allocated; writing goes through
:func:`mrcfile.new`. Arrays are returned in the file's native element type --
mode 0 ``int8`` (``uint8`` when IMOD's "unsigned bytes" flag is set), 1
``int16``, 2 ``float32``, 4 ``complex64``, 6 ``uint16``, 12 ``float16`` -- in
native byte order, shaped ``(ny, nx)`` for a single image and ``(nz, ny, nx)``
for stacks and volumes (sections along the first axis, as stored).

Strict and permissive reading
-----------------------------
Strict (the default) means *the header must describe the file*: a known mode,
positive dimensions, an extended header and data block that fit in the file.
A missing ``MAP`` word or an unrecognised machine stamp is tolerated only when
the header is otherwise plausible and the file size matches it exactly (the
pre-2000 MRC layout some programs still write, e.g. RELION-era ``.mrcs``).
``permissive=True`` additionally accepts a missing ``MAP`` word with a size
mismatch and a truncated data block (the complete sections are returned).

Voxel size is ``cella / (mx, my, mz)`` in Å, ``0.0`` on an axis where the
header leaves it unset.
"""

from __future__ import annotations

import os
import warnings
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
    "HEADER_BYTES",
    "MMAP_THRESHOLD_BYTES",
    "MODE_DTYPES",
    "MrcHeader",
    "read",
    "read_header",
    "read_slice",
    "write",
]

#: Size of the fixed MRC header.
HEADER_BYTES = 1024
#: ``read(mmap=None)`` memory-maps files larger than this (256 MiB).
MMAP_THRESHOLD_BYTES = 256 * 1024**2
#: MRC mode -> numpy element type (native byte order).
MODE_DTYPES: dict[int, np.dtype[Any]] = {
    0: np.dtype(np.int8),
    1: np.dtype(np.int16),
    2: np.dtype(np.float32),
    4: np.dtype(np.complex64),
    6: np.dtype(np.uint16),
    12: np.dtype(np.float16),
}
# Any one axis beyond this is not an image a microscope or a map produces.
_MAX_AXIS = 1 << 24
_IMOD_STAMP = 1146047817
_IMOD_FLAG_UNSIGNED_BYTES = 1


@dataclass(frozen=True)
class MrcHeader:
    """What :func:`read_header` learns about an MRC file.

    Attributes
    ----------
    path
        The file, as given.
    nx, ny, nz
        Columns, rows and sections (x fastest in the file).
    mode
        MRC mode number.
    dtype
        numpy element type :func:`read` returns (native byte order).
    voxel_size_angstroms
        ``(x, y, z)`` voxel size in Å from ``cella / (mx, my, mz)``; ``0.0`` on
        an axis the header leaves unset.
    kind
        ``"image"`` (``nz == 1``), ``"stack"`` (space group 0 with ``nz > 1``)
        or ``"volume"`` (any other 3-D file, including volume stacks).
    extended_header_bytes
        ``nsymbt``: bytes of extended header between the header and the data.
    extended_header_type
        ``exttyp`` (``"FEI1"``, ``"FEI2"``, ``"SERI"``, ``"CCP4"`` ...), ``""`` if unset.
    minimum, maximum, mean
        Header statistics ``dmin``, ``dmax``, ``dmean`` (not recomputed).
    rms
        Header ``rms``.
    space_group
        ``ispg``.
    axis_order
        ``(mapc, mapr, maps)``; ``(1, 2, 3)`` for images. Data are returned in
        file order whatever this says.
    origin_angstroms
        Header ``origin`` (x, y, z).
    version
        ``nversion`` (20140 for MRC2014, 0 for older files).
    byte_order
        ``"<"`` or ``">"``: the byte order the file was written in.
    has_map_word
        Whether bytes 208-211 hold ``"MAP "``.
    labels
        The non-empty text labels.
    data_offset
        Byte offset of the first data value (``1024 + nsymbt``).
    file_size_bytes
        Size of the file on disk.
    """

    path: str
    nx: int
    ny: int
    nz: int
    mode: int
    dtype: np.dtype[Any]
    voxel_size_angstroms: tuple[float, float, float]
    kind: str
    extended_header_bytes: int
    extended_header_type: str
    minimum: float
    maximum: float
    mean: float
    rms: float = 0.0
    space_group: int = 0
    axis_order: tuple[int, int, int] = (1, 2, 3)
    origin_angstroms: tuple[float, float, float] = (0.0, 0.0, 0.0)
    version: int = 0
    byte_order: str = "<"
    has_map_word: bool = True
    labels: tuple[str, ...] = ()
    data_offset: int = HEADER_BYTES
    file_size_bytes: int = 0

    @property
    def section_bytes(self) -> int:
        """Bytes in one section (``nx * ny`` values)."""
        return self.nx * self.ny * self.dtype.itemsize

    @property
    def data_bytes(self) -> int:
        """Bytes the header says the data block holds."""
        return self.section_bytes * self.nz

    @property
    def file_dtype(self) -> np.dtype[Any]:
        """Element type with the file's byte order (what is on disk)."""
        return self.dtype.newbyteorder(">" if self.byte_order == ">" else "<")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape :func:`read` returns: ``(ny, nx)`` or ``(nz, ny, nx)``."""
        return (self.ny, self.nx) if self.nz == 1 else (self.nz, self.ny, self.nx)


def _stamp_byte_order(stamp: bytes) -> str | None:
    if stamp[0] == 0x44 and stamp[1] in (0x44, 0x41):
        return "<"
    if stamp[0] == 0x11 and stamp[1] == 0x11:
        return ">"
    return None


def _plausible(fields: dict[str, int]) -> bool:
    return (
        fields["mode"] in MODE_DTYPES
        and all(0 < fields[axis] <= _MAX_AXIS for axis in ("nx", "ny", "nz"))
        and fields["nsymbt"] >= 0
    )


def _int_fields(raw: bytes, order: str) -> dict[str, int]:
    values = np.frombuffer(raw, dtype=f"{order}i4", count=24)
    return {
        "nx": int(values[0]),
        "ny": int(values[1]),
        "nz": int(values[2]),
        "mode": int(values[3]),
        "nsymbt": int(values[23]),
    }


def _text(value: bytes) -> str:
    return value.decode("ascii", errors="replace").replace("\x00", "").strip()


def _finite(value: Any) -> float:
    number = float(value)
    return number if np.isfinite(number) else float("nan")


def _parse_header(path: PathLike, raw: bytes, size: int, *, permissive: bool) -> MrcHeader:
    from mrcfile.dtypes import HEADER_DTYPE

    stamp_order = _stamp_byte_order(raw[212:216])
    candidates = [stamp_order] if stamp_order else []
    candidates += [order for order in ("<", ">") if order not in candidates]
    order = next((o for o in candidates if _plausible(_int_fields(raw, o))), None)
    fields = _int_fields(raw, order or candidates[0])
    has_map_word = raw[208:211] == b"MAP"

    if order is None:
        if not has_map_word:
            raise_invalid(path, "not an MRC file: no MAP word and no plausible MRC header")
        if fields["mode"] not in MODE_DTYPES:
            raise_invalid(
                path,
                f"unsupported MRC mode {fields['mode']} "
                f"(supported: {', '.join(map(str, sorted(MODE_DTYPES)))})",
            )
        for axis in ("nx", "ny", "nz"):
            if not 0 < fields[axis] <= _MAX_AXIS:
                raise_invalid(path, f"header has absurd dimension {axis} = {fields[axis]}")
        raise_invalid(path, f"header has negative extended-header size {fields['nsymbt']}")

    header = np.frombuffer(raw, dtype=HEADER_DTYPE.newbyteorder(order), count=1)[0]
    nx, ny, nz, mode, nsymbt = (fields[k] for k in ("nx", "ny", "nz", "mode", "nsymbt"))
    dtype = MODE_DTYPES[mode]
    if mode == 0:
        imod_stamp, imod_flags = np.frombuffer(raw[152:160], dtype=f"{order}i4")
        if int(imod_stamp) == _IMOD_STAMP and int(imod_flags) & _IMOD_FLAG_UNSIGNED_BYTES:
            dtype = np.dtype(np.uint8)

    data_offset = HEADER_BYTES + nsymbt
    data_bytes = nx * ny * nz * dtype.itemsize
    expected = data_offset + data_bytes
    if data_offset > size:
        raise_invalid(
            path,
            f"header declares a {nsymbt}-byte extended header but the file has only "
            f"{size} bytes",
        )
    if not has_map_word and not permissive and expected != size:
        raise_invalid(
            path,
            f"not an MRC file: bad MAP word, and the header ({nx}×{ny}×{nz} mode {mode}) "
            f"does not match the file size ({size} bytes, expected {expected})",
        )
    if expected > size and not permissive:
        raise_invalid(
            path,
            f"header says {nx}×{ny}×{nz} mode {mode} = {_human_bytes(data_bytes)} of data "
            f"but the file has {_human_bytes(size - data_offset)} after the header "
            f"(truncated or not an MRC file)",
        )

    mx, my, mz = (int(header["mx"]), int(header["my"]), int(header["mz"]))
    cella = header["cella"]
    voxel = tuple(
        float(length) / grid if grid > 0 and np.isfinite(length) and length > 0 else 0.0
        for length, grid in ((cella["x"], mx), (cella["y"], my), (cella["z"], mz))
    )
    ispg = int(header["ispg"])
    if nz == 1:
        kind = "image"
    elif ispg == 0:
        kind = "stack"
    else:
        kind = "volume"
    labels_count = max(0, min(10, int(header["nlabl"])))
    labels = tuple(
        text for text in (_text(bytes(label)) for label in header["label"][:labels_count]) if text
    )
    origin = header["origin"]
    return MrcHeader(
        path=os.fspath(path),
        nx=nx,
        ny=ny,
        nz=nz,
        mode=mode,
        dtype=dtype,
        voxel_size_angstroms=(voxel[0], voxel[1], voxel[2]),
        kind=kind,
        extended_header_bytes=nsymbt,
        extended_header_type=_text(bytes(header["exttyp"])) if nsymbt > 0 else "",
        minimum=_finite(header["dmin"]),
        maximum=_finite(header["dmax"]),
        mean=_finite(header["dmean"]),
        rms=_finite(header["rms"]),
        space_group=ispg,
        axis_order=(int(header["mapc"]), int(header["mapr"]), int(header["maps"])),
        origin_angstroms=(_finite(origin["x"]), _finite(origin["y"]), _finite(origin["z"])),
        version=int(header["nversion"]),
        byte_order=order,
        has_map_word=has_map_word,
        labels=labels,
        data_offset=data_offset,
        file_size_bytes=size,
    )


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} bytes"  # pragma: no cover


def _read_raw_header(path: PathLike) -> tuple[bytes, int]:
    size = file_size(path)
    if size < HEADER_BYTES:
        raise_invalid(
            path, f"not an MRC file: {size} bytes is shorter than the 1024-byte MRC header"
        )
    with invalid_input_on_error(path, "cannot read the MRC header"), open(path, "rb") as handle:
        raw = handle.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise_invalid(path, "file shrank while being read")
    return raw, size


def read_header(path: PathLike, *, permissive: bool = False) -> MrcHeader:
    """Read and check the header of an MRC file.

    Parameters
    ----------
    path
        The file.
    permissive
        Accept a truncated data block and a missing ``MAP`` word (see the
        module docstring).

    Returns
    -------
    MrcHeader

    Raises
    ------
    InvalidInputError
        If the file is not an MRC file or its header does not describe it.
    """
    raw, size = _read_raw_header(path)
    with invalid_input_on_error(path, "unreadable MRC header"):
        return _parse_header(path, raw, size, permissive=permissive)


def _to_native(data: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    if not data.dtype.isnative:
        data = data.byteswap().view(data.dtype.newbyteorder("="))
    return data.view(dtype) if data.dtype != dtype else data


def read(path: PathLike, *, mmap: bool | None = None, permissive: bool = False) -> np.ndarray:
    """Read the data of an MRC file.

    Parameters
    ----------
    path
        The file.
    mmap
        ``True`` returns a read-only :class:`numpy.memmap`; ``False`` reads into
        memory; ``None`` memory-maps files larger than
        :data:`MMAP_THRESHOLD_BYTES`. Big-endian files are always read into
        memory (byte-swapped to native order).
    permissive
        See the module docstring. With a truncated data block, the complete
        sections are returned.

    Returns
    -------
    numpy.ndarray
        ``(ny, nx)`` for a single image, ``(nz, ny, nx)`` otherwise, in the
        mode's element type (see :data:`MODE_DTYPES`).

    Raises
    ------
    InvalidInputError
        If the file is not a usable MRC file.
    """
    header = read_header(path, permissive=permissive)
    available = (header.file_size_bytes - header.data_offset) // header.section_bytes
    n_sections = min(header.nz, available)
    if n_sections < 1:
        raise_invalid(path, "the file does not hold even one complete section of data")
    shape: tuple[int, ...] = (n_sections, header.ny, header.nx)
    if header.nz == 1:
        shape = (header.ny, header.nx)
    file_dtype = header.file_dtype
    native = file_dtype.isnative
    if mmap is None:
        mmap = header.data_bytes > MMAP_THRESHOLD_BYTES
    count = n_sections * header.nx * header.ny
    with invalid_input_on_error(path, "cannot read the MRC data"):
        if mmap and native:
            return np.memmap(path, dtype=header.dtype, mode="r", offset=header.data_offset,
                             shape=shape)
        with open(path, "rb") as handle:
            handle.seek(header.data_offset)
            data = np.fromfile(handle, dtype=file_dtype, count=count)
        if data.size != count:
            raise_invalid(path, "file shrank while being read")
        return _to_native(data.reshape(shape), header.dtype)


def read_slice(path: PathLike, index: int, *, permissive: bool = False) -> np.ndarray:
    """Read one section (image, frame, z-slice) without reading the rest.

    Parameters
    ----------
    path
        The file.
    index
        0-based section number; negative values count from the end.
    permissive
        See :func:`read`.

    Returns
    -------
    numpy.ndarray
        ``(ny, nx)`` array in the mode's element type.

    Raises
    ------
    InvalidInputError
        If the file is not a usable MRC file or the section is not in the file.
    IndexError
        If ``index`` is outside ``[-nz, nz)``.
    """
    header = read_header(path, permissive=permissive)
    if not -header.nz <= index < header.nz:
        raise IndexError(f"{os.fspath(path)}: section {index} out of range (nz = {header.nz})")
    index = index % header.nz
    start = header.data_offset + index * header.section_bytes
    if start + header.section_bytes > header.file_size_bytes:
        raise_invalid(path, f"section {index} lies beyond the end of the (truncated) file")
    file_dtype = header.file_dtype
    with invalid_input_on_error(path, "cannot read the MRC data"), open(path, "rb") as handle:
        handle.seek(start)
        data = np.fromfile(handle, dtype=file_dtype, count=header.nx * header.ny)
    if data.size != header.nx * header.ny:
        raise_invalid(path, "file shrank while being read")
    return _to_native(data.reshape(header.ny, header.nx), header.dtype)


_WRITABLE = {
    np.dtype(np.int8),
    np.dtype(np.int16),
    np.dtype(np.float32),
    np.dtype(np.complex64),
    np.dtype(np.uint16),
    np.dtype(np.float16),
}


def _writable_array(data: Any) -> np.ndarray:
    array = np.asarray(data)
    if array.dtype.kind not in "biufc":
        raise ValueError(f"cannot write MRC data of dtype {array.dtype}")
    native = array.dtype.newbyteorder("=")
    if native in _WRITABLE:
        return np.ascontiguousarray(array, dtype=native)
    if native == np.dtype(np.uint8):
        return array.astype(np.uint16)  # mode 6; MRC has no portable unsigned-byte mode
    if native == np.dtype(np.float64):
        finite = array[np.isfinite(array)]
        if finite.size and np.abs(finite).max() > np.finfo(np.float32).max:
            raise ValueError("float64 data exceed the float32 range of MRC mode 2")
        return array.astype(np.float32)
    if native == np.dtype(np.complex128):
        return array.astype(np.complex64)
    raise ValueError(
        f"cannot write MRC data of dtype {array.dtype}; use int8, int16, uint16, "
        "float16, float32 (or uint8/float64, converted to uint16/float32)"
    )


def _set_header_statistics(header: Any, array: np.ndarray) -> None:
    """Set dmin, dmax, dmean and rms, ignoring NaN/inf (mrcfile would warn on them)."""
    values = np.abs(array) if np.iscomplexobj(array) else array
    with np.errstate(all="ignore"):
        minimum = values.min()
        maximum = values.max()
        if np.isfinite(minimum) and np.isfinite(maximum):
            mean = values.mean(dtype=np.float64)
            rms = values.std(dtype=np.float64)
        else:
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                # MRC2014: dmax < dmin and rms < 0 mean "not determined".
                minimum, maximum, mean, rms = 0.0, -1.0, -2.0, -1.0
            else:
                minimum, maximum = finite.min(), finite.max()
                mean, rms = finite.mean(dtype=np.float64), finite.std(dtype=np.float64)
    header.dmin = np.float32(minimum)
    header.dmax = np.float32(maximum)
    header.dmean = np.float32(mean)
    header.rms = np.float32(rms)


def write(
    path: PathLike,
    data: Any,
    *,
    voxel_size_angstroms: float | tuple[float, float, float] = 1.0,
    kind: str | None = None,
    overwrite: bool = True,
) -> None:
    """Write an image, stack or volume as an MRC2014 file.

    The file is written under a temporary name in the same directory and
    renamed into place, so readers never see a partial file. Header statistics
    (min, max, mean, rms) are computed from ``data``, ignoring NaN/inf values
    (of ``abs(data)`` for complex data).

    Parameters
    ----------
    path
        Destination.
    data
        ``(ny, nx)`` image or ``(nz, ny, nx)`` stack/volume; ``int8``,
        ``int16``, ``uint16``, ``float16``, ``float32`` or ``complex64``
        (``uint8`` is widened to ``uint16``, ``float64`` narrowed to ``float32``).
    voxel_size_angstroms
        One value for all axes or ``(x, y, z)`` in Å.
    kind
        ``None``: 2-D -> ``"image"``, 3-D -> ``"stack"``. ``"stack"`` sets space
        group 0 (and ``mz = 1``), ``"volume"`` sets space group 1 (``mz = nz``).
    overwrite
        If false and ``path`` exists, raise :class:`FileExistsError`.

    Raises
    ------
    ValueError
        For data of the wrong shape or dtype, a bad ``kind`` or voxel size.
    """
    import mrcfile

    array = _writable_array(data)
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise ValueError(f"MRC data must be a non-empty 2-D or 3-D array, got shape {array.shape}")
    if kind is None:
        kind = "image" if array.ndim == 2 else "stack"
    if kind not in ("image", "stack", "volume"):
        raise ValueError(f"kind must be 'image', 'stack' or 'volume', got {kind!r}")
    if kind == "image" and array.ndim == 3 and array.shape[0] != 1:
        raise ValueError(f"kind='image' needs 2-D data, got shape {array.shape}")
    if isinstance(voxel_size_angstroms, tuple | list):
        voxel = tuple(float(v) for v in voxel_size_angstroms)
        if len(voxel) != 3:
            raise ValueError("voxel_size_angstroms must be one number or (x, y, z)")
    else:
        voxel = (float(voxel_size_angstroms),) * 3
    if not all(np.isfinite(v) and v >= 0 for v in voxel):
        raise ValueError(f"voxel size must be finite and non-negative, got {voxel}")

    with atomic_output(path, overwrite=overwrite) as temporary:
        with mrcfile.new(temporary, overwrite=False) as mrc:
            with warnings.catch_warnings():
                # set_data computes statistics and warns about NaN; ours follow below.
                warnings.filterwarnings("ignore", "Data array contains NaN", RuntimeWarning)
                mrc.set_data(array)
            if kind == "stack" and array.ndim == 3:
                mrc.set_image_stack()
            elif kind == "volume" and array.ndim == 3:
                mrc.set_volume()
            else:
                mrc.header.ispg = 0 if kind != "volume" else 1
            mrc.voxel_size = voxel
            _set_header_statistics(mrc.header, array)
