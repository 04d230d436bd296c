"""``cistem info FILE…``: what a user needs to know about any file this suite reads.

:func:`describe` recognises the format from the file's content (and its name
where content is ambiguous), checks it with the same reader the pipeline uses,
and returns a JSON-serialisable dict::

    {"path": ..., "format": "mrc" | "tiff" | "cistem_star" | "par" | "relion_star"
                           | "positions", ...format-specific fields}

:func:`format_description` renders that dict as a few aligned lines. The
command itself is :mod:`cistemd.cli.commands.info` (``--json`` prints a JSON
list for scripts; a bad file gives a one-line message on stderr and exit
status 2), in the spirit of IMOD's ``header``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cistemd.errors import InvalidInputError
from cistemd.io._guard import PathLike, file_size, invalid_input_on_error, raise_invalid

__all__ = ["FORMATS", "describe", "detect_format", "format_description"]

#: Format names :func:`describe` reports.
FORMATS = ("mrc", "tiff", "cistem_star", "par", "relion_star", "positions")

_MRC_SUFFIXES = {".mrc", ".mrcs", ".map", ".st", ".ali", ".rec", ".ccp4", ".mrcx"}
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_SNIFF_BYTES = 64 * 1024


def _json_value(value: Any) -> Any:
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.dtype):
        return str(value)
    return value


def detect_format(path: PathLike) -> str:
    """Return one of :data:`FORMATS` for ``path``, from content first, then name.

    Raises
    ------
    InvalidInputError
        If the file cannot be read or its format is not recognised.
    """
    size = file_size(path)
    with invalid_input_on_error(path, "cannot read the file"), open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    suffix = Path(path).suffix.lower()
    if head[:4] in _TIFF_MAGICS:
        return "tiff"
    if len(head) >= 212 and head[208:211] == b"MAP":
        return "mrc"
    if suffix in _MRC_SUFFIXES:
        return "mrc"
    if suffix == ".cistem":
        raise_invalid(path, "binary cisTEM parameter files (.cistem) are not supported; "
                            "convert them to .star with cisTEM")
    if size == 0:
        raise_invalid(path, "empty file")
    if b"\x00" in head:
        raise_invalid(path, "unrecognised binary file (not MRC or TIFF)")
    text = head.decode("utf-8", errors="replace")
    if "_cisTEM" in text:
        return "cistem_star"
    if "_rln" in text:
        return "relion_star"
    if suffix == ".star" or any(line.strip().startswith("data_") for line in text.splitlines()):
        raise_invalid(path, "STAR file with neither _cisTEM nor _rln labels in its first "
                            f"{_SNIFF_BYTES // 1024} kB")
    first = next((line.strip() for line in text.splitlines()
                  if line.strip() and not line.strip().startswith("#")), "")
    tokens = first.split()
    if suffix == ".par":
        return "par"
    if suffix in (".txt", ".plt", ".coords", ".pos"):
        return "positions"
    if first[:1] in ("C", "c") and (len(tokens) == 1 or "PSI" in first.upper()):
        return "par"
    if len(tokens) in (16, 17) and all(_is_number(token) for token in tokens):
        return "par"
    if len(tokens) >= 3:
        return "positions"
    raise_invalid(path, "unrecognised file format (not MRC, TIFF, STAR, .par or positions)")


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _ranges(params: Any, names: Sequence[str]) -> dict[str, list[float]]:
    import numpy as np

    ranges = {}
    for name in names:
        values = params.get(name)
        if values.dtype == object or len(values) == 0:
            continue
        ranges[name] = [float(np.min(values)), float(np.max(values))]
    return ranges


def _describe_mrc(path: PathLike) -> dict[str, Any]:
    from cistemd.io import mrc

    header = mrc.read_header(path)
    notes = []
    if not header.has_map_word:
        notes.append("no MAP word (pre-2000 MRC layout)")
    trailing = header.file_size_bytes - header.data_offset - header.data_bytes
    if trailing > 0:
        notes.append(f"{trailing} bytes after the data block")
    if header.axis_order != (1, 2, 3) and header.nz > 1:
        notes.append(f"axis order (mapc, mapr, maps) = {header.axis_order}")
    return {
        "nx": header.nx,
        "ny": header.ny,
        "nz": header.nz,
        "mode": header.mode,
        "dtype": str(header.dtype),
        "kind": header.kind,
        "voxel_size_angstroms": list(header.voxel_size_angstroms),
        "pixel_size_angstroms": header.voxel_size_angstroms[0] or None,
        "extended_header_bytes": header.extended_header_bytes,
        "extended_header_type": header.extended_header_type,
        "minimum": header.minimum,
        "maximum": header.maximum,
        "mean": header.mean,
        "rms": header.rms,
        "space_group": header.space_group,
        "mrc_version": header.version,
        "byte_order": "little-endian" if header.byte_order == "<" else "big-endian",
        "labels": list(header.labels),
        "data_bytes": header.data_bytes,
        "file_size_bytes": header.file_size_bytes,
        "notes": notes,
    }


def _describe_tiff(path: PathLike) -> dict[str, Any]:
    from cistemd.io import tiff

    header = tiff.read_header(path)
    decoded = header.frame_bytes * header.n_frames
    return {
        "nx": header.nx,
        "ny": header.ny,
        "n_frames": header.n_frames,
        "dtype": str(header.dtype),
        "bits_per_sample": header.bits_per_sample,
        "compression": header.compression,
        "compression_ratio": round(decoded / max(1, header.file_size_bytes), 2),
        "pixel_size_angstroms": header.pixel_size_angstroms,
        "byte_order": "little-endian" if header.byte_order == "<" else "big-endian",
        "bigtiff": header.is_bigtiff,
        "software": header.software,
        "file_size_bytes": header.file_size_bytes,
    }


_SUMMARY_COLUMNS = ("defocus_1", "defocus_2", "pixel_size", "microscope_voltage_kv", "score",
                    "occupancy", "x_shift", "y_shift")


def _describe_cistem_star(path: PathLike) -> dict[str, Any]:
    import numpy as np

    from cistemd.io import cistem_star

    params = cistem_star.read(path)
    active = params.get("image_is_active") if "image_is_active" in params.columns else None
    return {
        "n_particles": len(params),
        "n_active": int(np.count_nonzero(active >= 0)) if active is not None else len(params),
        "columns": params.active_names,
        "ranges": _ranges(params, [n for n in _SUMMARY_COLUMNS if n in params.columns]),
        "file_size_bytes": file_size(path),
    }


def _describe_par(path: PathLike) -> dict[str, Any]:
    from cistemd.io import par

    params = par.read(path)
    return {
        "n_particles": len(params),
        "n_columns": 17 if "phase_shift" in params.columns else 16,
        "columns": params.active_names,
        "ranges": _ranges(params, [n for n in _SUMMARY_COLUMNS if n in params.columns]),
        "file_size_bytes": file_size(path),
    }


def _describe_relion(path: PathLike) -> dict[str, Any]:
    from cistemd.io import relion_star

    try:
        particles = relion_star.read(path)
        pixel_note = None
    except InvalidInputError as error:
        if "no pixel size" not in str(error):
            raise
        # A 3.0 file without a pixel size is still worth describing.
        particles = relion_star.read(path, pixel_size_angstroms=1.0)
        pixel_note = "no pixel size in the file (shifts shown for 1 Å/px)"
    params = particles.params
    stacks = {str(s) for s in params.get("stack_filename")}
    description: dict[str, Any] = {
        "relion_version": particles.version,
        "n_particles": len(particles),
        "n_stacks": len(stacks),
        "n_micrographs": len(set(particles.micrograph_names or [])),
        "optics_groups": [
            {
                "number": g.number,
                "name": g.name,
                "pixel_size_angstroms": g.pixel_size_angstroms,
                "voltage_kv": g.voltage_kv,
                "spherical_aberration_mm": g.spherical_aberration_mm,
                "amplitude_contrast": g.amplitude_contrast,
                "image_size": g.image_size,
            }
            for g in particles.optics_groups
        ],
        "pixel_sizes_angstroms": sorted({round(float(v), 6) for v in params.get("pixel_size")})
        if pixel_note is None else [],
        "ranges": _ranges(params, ["defocus_1", "defocus_2", "x_shift", "y_shift"]),
        "file_size_bytes": file_size(path),
    }
    if pixel_note:
        description["notes"] = [pixel_note]
    return description


def _describe_positions(path: PathLike) -> dict[str, Any]:
    from cistemd.io import positions

    found, warnings = positions.read_with_warnings(path)
    images = {p.image for p in found}
    xs = [p.x_angstroms for p in found]
    ys = [p.y_angstroms for p in found]
    return {
        "n_particles": len(found),
        "n_images": len(images),
        "images_are": "asset ids" if all(isinstance(i, int) for i in images) else (
            "file names" if all(isinstance(i, str) for i in images) else "mixed"
        ),
        "ranges": {"x_angstroms": [min(xs), max(xs)], "y_angstroms": [min(ys), max(ys)]}
        if found else {},
        "notes": warnings[:5],
        "file_size_bytes": file_size(path),
    }


_DESCRIBERS = {
    "mrc": _describe_mrc,
    "tiff": _describe_tiff,
    "cistem_star": _describe_cistem_star,
    "par": _describe_par,
    "relion_star": _describe_relion,
    "positions": _describe_positions,
}


def describe(path: PathLike) -> dict[str, Any]:
    """Describe a file the suite can read.

    Returns
    -------
    dict
        JSON-serialisable: ``path``, ``format`` (one of :data:`FORMATS`) and
        format-specific fields (dimensions, mode, pixel size, frames, columns,
        particle counts ...). Non-finite header values are ``None``.

    Raises
    ------
    InvalidInputError
        If the file is unreadable, of an unknown format, or invalid.
    """
    kind = detect_format(path)
    details = _DESCRIBERS[kind](path)
    result: dict[str, Any] = {"path": os.fspath(path), "format": kind}
    result.update(details)
    return _json_value(result)


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit} ({count} bytes)"
    return f"{count} bytes"


def format_description(info: dict[str, Any]) -> str:
    """Render :func:`describe`'s dict as human-readable lines (first line: the path)."""
    rows: list[tuple[str, str]] = []
    kind = info.get("format")
    if kind == "mrc":
        rows += [
            ("format", f"MRC mode {info['mode']} ({info['dtype']}), {info['kind']}"),
            ("dimensions", f"{info['nx']} × {info['ny']} × {info['nz']}"),
            ("voxel size", " × ".join(_number(v, 6) for v in info["voxel_size_angstroms"])
             + " Å"),
            ("min / max / mean", " / ".join(_number(info[k], 6)
                                           for k in ("minimum", "maximum", "mean"))),
        ]
        if info["extended_header_bytes"]:
            rows.append(("extended header", f"{info['extended_header_bytes']} bytes"
                         + (f" ({info['extended_header_type']})"
                            if info["extended_header_type"] else "")))
        rows += [("space group", str(info["space_group"])),
                 ("MRC version", str(info["mrc_version"] or "pre-2014")),
                 ("byte order", info["byte_order"])]
        rows += [("label", label) for label in info["labels"]]
    elif kind == "tiff":
        rows += [
            ("format", f"TIFF, {info['compression']} compression, {info['dtype']}"
             + (" (BigTIFF)" if info["bigtiff"] else "")),
            ("dimensions", f"{info['nx']} × {info['ny']}"),
            ("frames", str(info["n_frames"])),
            ("pixel size", f"{_number(info['pixel_size_angstroms'], 6)} Å"
             if info["pixel_size_angstroms"] else "not recorded"),
            ("compression ratio", f"{info['compression_ratio']}"),
        ]
        if info["software"]:
            rows.append(("software", info["software"]))
    elif kind in ("cistem_star", "par"):
        label = "cisTEM star" if kind == "cistem_star" else (
            f".par ({info['n_columns']} columns)"
        )
        rows += [("format", label), ("particles", str(info["n_particles"]))]
        if "n_active" in info:
            rows.append(("active (≥ 0)", str(info["n_active"])))
        rows.append(("columns", ", ".join(info["columns"])))
    elif kind == "relion_star":
        rows += [("format", f"RELION {info['relion_version']} star"),
                 ("particles", str(info["n_particles"])),
                 ("stacks / micrographs", f"{info['n_stacks']} / {info['n_micrographs']}")]
        for group in info["optics_groups"]:
            rows.append((
                f"optics group {group['number']}",
                f"{group['name']}: {_number(group['pixel_size_angstroms'], 6)} Å/px, "
                f"{_number(group['voltage_kv'])} kV, Cs {_number(group['spherical_aberration_mm'])}"
                f" mm, AC {_number(group['amplitude_contrast'])}",
            ))
        if info["pixel_sizes_angstroms"]:
            rows.append(("pixel size", ", ".join(_number(v, 6)
                                                 for v in info["pixel_sizes_angstroms"]) + " Å"))
    elif kind == "positions":
        rows += [("format", "particle positions (Å)"),
                 ("particles", str(info["n_particles"])),
                 ("images", f"{info['n_images']} ({info['images_are']})")]
    for name, (low, high) in info.get("ranges", {}).items():
        rows.append((name, f"{_number(low, 6)} … {_number(high, 6)}"))
    if "file_size_bytes" in info:
        rows.append(("file size", _size(int(info["file_size_bytes"]))))
    rows += [("note", note) for note in info.get("notes", [])]
    width = max((len(name) for name, _ in rows), default=0)
    return "\n".join([str(info.get("path", ""))] + [f"  {name.ljust(width)}  {value}"
                                                    for name, value in rows])
