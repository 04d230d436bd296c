"""Read atomic models (PDB or mmCIF) into :class:`cistemd.kernels.simulate.AtomicModel`.

Parsing is gemmi's (imported lazily). Only the first model is read; waters
are skipped unless asked for; of alternative conformations only the first
(blank or ``A``) is kept, with its occupancy. The unit cell and symmetry
records are ignored -- cryo-EM models often carry a placeholder 1×1×1 cell --
so coordinates are taken as Cartesian Å in a P1 box. The model is translated
so that its atom centroid is the origin (the shift is returned).
"""

from __future__ import annotations

import os

import numpy as np

from cistemd.errors import InvalidInputError
from cistemd.io._guard import PathLike, file_size, invalid_input_on_error, raise_invalid
from cistemd.kernels.simulate import AtomicModel

__all__ = ["MAX_MODEL_BYTES", "read"]

#: Larger coordinate files are refused (1 GiB; the largest PDB entries are ~0.5 GiB as mmCIF).
MAX_MODEL_BYTES = 1024**3

_WATER_NAMES = frozenset({"HOH", "WAT", "H2O", "DOD", "SOL"})


def read(
    path: PathLike, *, include_waters: bool = False, include_hydrogens: bool = True
) -> tuple[AtomicModel, np.ndarray]:
    """Read a PDB or mmCIF file (also gzipped) and centre it.

    Parameters
    ----------
    path
        ``.pdb``/``.ent``/``.cif``/``.mmcif`` file, optionally ``.gz``.
    include_waters
        Keep water molecules (default: drop them, the simulator adds ice).
    include_hydrogens
        Keep explicit hydrogens (the simulator then adds no implicit ones).

    Returns
    -------
    model
        Atoms of the first model, centroid at the origin, ``name`` = file stem.
    centre_angstroms
        ``(3,)`` the centroid subtracted, Å (add it back for the file's frame).

    Raises
    ------
    InvalidInputError
        If the file is missing, too large, not a coordinate file gemmi can
        parse, or has no atoms.
    """
    size = file_size(path)
    if size == 0:
        raise_invalid(path, "is empty, not a PDB/mmCIF file")
    if size > MAX_MODEL_BYTES:
        raise_invalid(path, f"is {size / 1024**3:.1f} GiB; refusing coordinate files over 1 GiB")
    import gemmi

    with invalid_input_on_error(path, "not a readable PDB/mmCIF file"):
        structure = gemmi.read_structure(os.fspath(path))
    if len(structure) == 0:
        raise_invalid(path, "contains no models (not a PDB/mmCIF file?)")
    coords: list[tuple[float, float, float]] = []
    numbers: list[int] = []
    b_factors: list[float] = []
    occupancies: list[float] = []
    chain_index: list[int] = []
    chain_names: list[str] = []
    with invalid_input_on_error(path, "could not read the atoms"):
        for chain in structure[0]:
            chain_number = len(chain_names)
            used = False
            for residue in chain:
                if not include_waters and residue.name in _WATER_NAMES:
                    continue
                for atom in residue:
                    if atom.altloc not in ("\0", "A"):
                        continue
                    z = int(atom.element.atomic_number)
                    if z <= 0 or (z == 1 and not include_hydrogens):
                        continue
                    position = atom.pos
                    coords.append((position.x, position.y, position.z))
                    numbers.append(z)
                    b_factors.append(float(atom.b_iso))
                    occupancies.append(float(atom.occ))
                    chain_index.append(chain_number)
                    used = True
            if used:
                chain_names.append(chain.name)
    if not coords:
        raise_invalid(path, "contains no atoms")
    xyz = np.asarray(coords, dtype=np.float64)
    if not np.all(np.isfinite(xyz)):
        raise_invalid(path, "has non-finite coordinates")
    occupancy = np.clip(np.asarray(occupancies, dtype=np.float64), 0.0, 1.0)
    centre = xyz.mean(axis=0)
    try:
        model = AtomicModel(
            xyz - centre,
            np.asarray(numbers, dtype=np.int64),
            np.asarray(b_factors, dtype=np.float64),
            occupancy,
            np.asarray(chain_index, dtype=np.int64),
            tuple(chain_names),
            os.path.basename(os.fspath(path)).split(".")[0],
        )
    except ValueError as error:
        raise InvalidInputError(str(error), path=os.fspath(path)) from error
    return model, centre
