"""Partial-reconstruction dump files (cisTEM's ``reconstruct3d`` dump / ``merge3d``).

A dump holds one :class:`~cistemd.kernels.reconstruct.Reconstruction`
accumulator as an uncompressed NumPy ``.npz`` archive (no pickled objects):

* ``accumulator`` float32 ``(2, N, N, N // 2 + 1, 3)`` (Re and Im of
  ``Σ X·CTF·w`` and ``Σ CTF²·w`` per half set and voxel), ``particle_counts``
  int64 ``(2,)``;
* ``meta`` float64 ``[format version, box size, pixel size, padding]``;
* ``symmetry`` the point-group symbol as a 0-d unicode array.

Many workers each dump a chunk of particles; merging adds the accumulators.
"""

from __future__ import annotations

import zipfile

import numpy as np

from cistemd.errors import InvalidInputError
from cistemd.io._guard import PathLike, atomic_output, file_size, raise_invalid
from cistemd.kernels.reconstruct import Reconstruction

__all__ = ["FORMAT_VERSION", "read_dump", "write_dump"]

FORMAT_VERSION = 2


def write_dump(path: PathLike, reconstruction: Reconstruction, *, symmetry: str = "C1") -> None:
    """Write ``reconstruction`` to ``path`` (renamed into place when complete)."""
    reconstruction.check()
    meta = np.array(
        [
            FORMAT_VERSION,
            reconstruction.box_size,
            reconstruction.pixel_size_angstroms,
            reconstruction.padding,
        ],
        dtype=np.float64,
    )
    with atomic_output(path) as temporary, open(temporary, "wb") as handle:
        np.savez(
            handle,
            meta=meta,
            symmetry=np.array(symmetry),
            accumulator=reconstruction.accumulator,
            particle_counts=reconstruction.particle_counts,
        )


def read_dump(path: PathLike) -> tuple[Reconstruction, str]:
    """Read a dump file.

    Returns
    -------
    reconstruction : Reconstruction
    symmetry : str

    Raises
    ------
    InvalidInputError
        If the file is missing, not a dump, of another format version, or its
        arrays do not match its declared geometry.
    """
    file_size(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            wanted = {"meta", "symmetry", "accumulator", "particle_counts"}
            if not wanted <= names:
                raise_invalid(path, f"not a reconstruction dump: missing {sorted(wanted - names)}")
            meta = archive["meta"]
            symmetry = str(archive["symmetry"])
            if meta.shape != (4,) or int(meta[0]) != FORMAT_VERSION:
                raise_invalid(
                    path,
                    f"dump format {meta[0] if meta.size else '?'} is not version "
                    f"{FORMAT_VERSION}; rerun reconstruct3d with --dump",
                )
            reconstruction = Reconstruction(
                box_size=int(meta[1]),
                pixel_size_angstroms=float(meta[2]),
                padding=int(meta[3]),
                accumulator=np.ascontiguousarray(archive["accumulator"]),
                particle_counts=archive["particle_counts"].astype(np.int64),
            )
    except InvalidInputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise_invalid(path, f"not a readable reconstruction dump ({error})")
    try:
        reconstruction.check()
    except ValueError as error:
        raise_invalid(path, f"inconsistent reconstruction dump: {error}")
    return reconstruction, symmetry
