"""Simulated cryo-EM data with known ground truth: structures, maps, micrographs, movies.

Everything here is pure (numpy/scipy/numba, no files) and deterministic given
a ``numpy.random.Generator``.

Image formation (weak-phase object, one defocus plane)
-------------------------------------------------------
1. **Specimen potential.** Each atom is a 3-D Gaussian-blurred point whose
   integrated Coulomb potential is ``K · f_e(0)`` (V·Å³), with
   ``K = h² / (2π m₀ e) = 47.878 V·Å²`` and ``f_e(0)`` the electron scattering
   factor at zero angle (Peng et al. 1996 sums; one implicit hydrogen per
   heavy atom when the model has none). Its profile is the carbon scattering
   factor shape times ``exp(−B k² / 4)`` (B = specimen B-factor). With ice,
   each heavy atom also displaces 17.3 Å³ of water (mean potential 4.57 V),
   a smoother negative blob, so particles have the right low-resolution
   contrast against the solvent.
2. **Ice.** Amorphous ice of thickness ``t`` is a Gaussian random field whose
   projected-potential power spectrum is that of water molecules
   (0.0314 Å⁻³, ``K (f_O + 2 f_H)`` each) with a structure factor ``S(k)``
   (:func:`water_structure_factor`: 0.06 at low k, a peak at 1/3.7 Å⁻¹).
   Particles and ice are in one projected potential and get the same CTF.
3. **Phase and image.** Phase ``Φ = σ V_proj`` (σ the relativistic interaction
   constant). Intensity ``I = 1 + (2 / sqrt(1 − A²)) · F⁻¹[CTF · E · D_i · Φ̂]``
   with the CTF of :mod:`cistemd.kernels.ctf` (``−sin χ``), the envelope
   ``E = exp(−B_env k² / 4)``, and (optionally) radiation damage ``D_i``. The
   zero-frequency term is removed so the mean intensity is exactly 1: the
   exposure is what the detector counts through the specimen. (Negative
   intensities, which the linear model could give in extreme cases, are
   clipped to 0.) Proteins (positive potential) look dark in underfocus.
4. **Radiation damage** (optional): the amplitude decays as ``exp(−N / (2 N_c(k)))``
   with the cumulative exposure ``N`` (pre-exposure included) and Grant &
   Grigorieff's critical exposure ``N_c = (0.24499 k^−1.6649 + 2.8141) s``
   (s = 1 / 0.8 / 0.532 at 300 / 200 / 100 kV, interpolated between). A frame
   integrates its exposure ``[N_i, N_i + e]``, so ``D_i(k)`` is that decay
   *averaged* over the frame: ``exp(−N_i r)·(1 − exp(−e r)) / (e r)`` with
   ``r = 1 / (2 N_c)``. (Taking the frame's midpoint instead underestimates a
   single long exposure's high-resolution power several-fold; for movie
   frames of a few e/Å² the two agree to < 0.3 %.)
5. **Drift.** Frame ``i`` shows the specimen displaced by
   ``frame_shifts_angstroms[i] = (dx, dy)``: ``frame_i(x, y) = still(x − dx, y − dy)``
   with ``still`` the image of the undisplaced specimen (Fourier phase shift,
   sub-pixel, no intra-frame blur). Aligning frame ``i``
   means shifting it by ``−(dx, dy)``. Shifts are relative to the specimen's
   position before the exposure, in whose frame the particle coordinates are
   given; :func:`beam_induced_drift` makes smooth trajectories.
6. **Counts.** ``counts ~ Poisson(exposure_per_frame · pixel_size² · I · s(r))``
   with ``s`` the detector sensitivity (1 if no gain). The gain reference
   is ``g = 1 / s`` (0 on dead columns) so ``counts · g`` is gain-corrected.

The simulation runs on a canvas padded by the largest drift plus 32 px and
is cropped, so content enters at the edges as the specimen moves.

Not modelled: per-particle heights (every particle is at the micrograph's
defocus), intra-frame motion blur, detector MTF/DQE, inelastic scattering
and thickness-dependent Thon-ring modulation, multiple scattering, beam tilt.

Coordinates
-----------
Images are ``(ny, nx)`` numpy arrays, x along axis 1 (fast axis). A particle
at ``(x_angstroms, y_angstroms)`` has its model origin projected onto pixel
position ``(x / pixel_size, y / pixel_size)`` counted from the *centre* of the
first pixel. Orientations are Euler ZYZ ``(φ, θ, ψ)`` in degrees, cisTEM
convention (:mod:`cistemd.kernels.rotation`): model point ``r`` appears at
``(R r)[:2]`` relative to the particle centre. Volumes are ``(nz, ny, nx)``
with the model origin at voxel ``(n // 2, n // 2, n // 2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cistemd.kernels.ctf import CTFParams, ctf_2d, electron_wavelength_angstroms
from cistemd.kernels.fourier import spatial_frequency_grid
from cistemd.kernels.rotation import euler_to_matrix, octahedral_rotation_matrices

__all__ = [
    "CONVENTIONS",
    "POTENTIAL_PER_SCATTERING_LENGTH",
    "AtomicModel",
    "apoferritin_like_model",
    "asymmetric_protein_model",
    "atomic_potential_weights",
    "beam_induced_drift",
    "coulomb_potential_map",
    "critical_exposure_e_per_a2",
    "density_from_atoms",
    "detector_sensitivity",
    "interaction_constant_rad_per_volt_angstrom",
    "project_model",
    "random_particle_positions",
    "simulate_micrograph",
    "simulate_movie",
    "water_structure_factor",
]

# --- physical constants (CODATA 2018) -----------------------------------------
_PLANCK = 6.62607015e-34
_ELECTRON_MASS = 9.1093837015e-31
_CHARGE = 1.602176634e-19
_LIGHT = 299792458.0

#: h² / (2π m₀ e) in V·Å²: integrated potential (V·Å³) per Å of f_e(0).
POTENTIAL_PER_SCATTERING_LENGTH = _PLANCK**2 / (2.0 * math.pi * _ELECTRON_MASS * _CHARGE) * 1e20

# Electron scattering factors f_e(0) in Å (sums of the a_i of Peng et al. 1996,
# Acta Cryst. A52, 257). Other elements fall back to 0.66 Z^(2/3) (approximate).
_F0_ANGSTROMS = {1: 0.5288, 6: 2.5092, 7: 2.2131, 8: 1.9834, 15: 5.4862, 16: 5.1597}
# Carbon's five-Gaussian electron scattering factor (Peng et al. 1996):
# f(q) = sum a_i exp(-b_i q² / 4), q = 1/d in 1/Å. Used as the shape of every atom.
_CARBON_A = np.array([0.0489, 0.2091, 0.7537, 1.1420, 0.3555])
_CARBON_B = np.array([0.1140, 1.0825, 5.4281, 17.8811, 51.1341])

_WATER_MOLECULES_PER_A3 = 0.0314  # amorphous ice, 0.94 g/cm³
_WATER_POTENTIAL_PER_MOLECULE = POTENTIAL_PER_SCATTERING_LENGTH * (
    _F0_ANGSTROMS[8] + 2 * _F0_ANGSTROMS[1]
)
_WATER_MEAN_POTENTIAL_V = _WATER_MOLECULES_PER_A3 * _WATER_POTENTIAL_PER_MOLECULE
_WATER_B_ANGSTROMS2 = 20.0
_DISPLACED_VOLUME_PER_HEAVY_ATOM_A3 = 17.3  # protein at 1.35 g/cm³, ~14 Da per heavy atom
_SOLVENT_EXCLUSION_B_ANGSTROMS2 = 64.0
_CANVAS_MARGIN_PX = 32

# Critical exposure (Grant & Grigorieff 2015).
_NC_A, _NC_B, _NC_C = 0.24499, -1.6649, 2.8141
_NC_VOLTAGE_SCALE = ((100.0, 0.532), (200.0, 0.8), (300.0, 1.0))


# ============================================================================ models


@dataclass(frozen=True, eq=False)
class AtomicModel:
    """A set of atoms, coordinates in Å.

    Attributes
    ----------
    coords_angstroms
        ``(n, 3)`` float64, columns x, y, z.
    atomic_numbers
        ``(n,)`` int.
    b_factors_angstroms2
        ``(n,)`` float64 (informational; simulations use one global B).
    occupancies
        ``(n,)`` float64 in [0, 1]; scales each atom's potential.
    chain_index
        ``(n,)`` int index into ``chain_names``.
    chain_names
        Chain identifiers.
    name
        Short description.
    """

    coords_angstroms: np.ndarray
    atomic_numbers: np.ndarray
    b_factors_angstroms2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    occupancies: np.ndarray = field(default_factory=lambda: np.zeros(0))
    chain_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    chain_names: tuple[str, ...] = ("A",)
    name: str = ""

    def __post_init__(self) -> None:
        coords = np.ascontiguousarray(self.coords_angstroms, dtype=np.float64)
        if coords.ndim != 2 or coords.shape[1] != 3:
            raise ValueError(f"coords_angstroms must be (n, 3), got {coords.shape}")
        n = coords.shape[0]
        if not np.all(np.isfinite(coords)):
            raise ValueError("coords_angstroms contains non-finite values")
        numbers = np.asarray(self.atomic_numbers, dtype=np.int64)
        if numbers.shape != (n,):
            raise ValueError(f"atomic_numbers must be ({n},), got {numbers.shape}")
        b = np.asarray(self.b_factors_angstroms2, dtype=np.float64)
        b = np.zeros(n) if b.size == 0 else b
        occupancy = np.asarray(self.occupancies, dtype=np.float64)
        occupancy = np.ones(n) if occupancy.size == 0 else occupancy
        chains = np.asarray(self.chain_index, dtype=np.int64)
        chains = np.zeros(n, dtype=np.int64) if chains.size == 0 else chains
        for label, array in (
            ("b_factors_angstroms2", b),
            ("occupancies", occupancy),
            ("chain_index", chains),
        ):
            if array.shape != (n,):
                raise ValueError(f"{label} must be ({n},), got {array.shape}")
        if n and (chains.min() < 0 or chains.max() >= len(self.chain_names)):
            raise ValueError("chain_index refers to chains outside chain_names")
        object.__setattr__(self, "coords_angstroms", coords)
        object.__setattr__(self, "atomic_numbers", numbers)
        object.__setattr__(self, "b_factors_angstroms2", b)
        object.__setattr__(self, "occupancies", occupancy)
        object.__setattr__(self, "chain_index", chains)
        object.__setattr__(self, "chain_names", tuple(self.chain_names))

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return int(self.coords_angstroms.shape[0])

    @property
    def radius_angstroms(self) -> float:
        """Largest distance of an atom from the origin, Å."""
        if self.n_atoms == 0:
            return 0.0
        return float(np.sqrt((self.coords_angstroms**2).sum(axis=1).max()))

    def centered(self) -> AtomicModel:
        """Return a copy translated so that the (unweighted) atom centroid is the origin."""
        shift = self.coords_angstroms.mean(axis=0) if self.n_atoms else np.zeros(3)
        return AtomicModel(
            self.coords_angstroms - shift,
            self.atomic_numbers,
            self.b_factors_angstroms2,
            self.occupancies,
            self.chain_index,
            self.chain_names,
            self.name,
        )


def _unit(v: npt.ArrayLike) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def _perpendicular(axis: np.ndarray) -> np.ndarray:
    trial = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    return _unit(np.cross(axis, trial))


# Cylindrical offsets (element, radius Å, phase degrees, rise Å) of the backbone
# atoms relative to the residue's CA phase in an ideal α-helix (3.6 residues per
# turn, 1.5 Å rise, CA radius 2.3 Å).
_HELIX_BACKBONE = (
    (7, 1.55, -28.0, -0.85),
    (6, 2.30, 0.0, 0.0),
    (6, 1.65, 28.0, 0.85),
    (8, 1.95, 35.0, 2.0),
)
_CLASH_DISTANCE_ANGSTROMS = 2.4


class _ChainBuilder:
    """Accumulates pseudo-atoms of a protein-like chain (α-helices joined by loops).

    Every atom records its residue number and whether it may be deleted to
    resolve a clash (side-chain and loop atoms may; helix backbone may not).
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.coords: list[np.ndarray] = []
        self.numbers: list[int] = []
        self.residue: list[int] = []
        self.removable: list[bool] = []
        self.n_residues = 0

    def _add(self, xyz: np.ndarray, element: int, removable: bool) -> None:
        self.coords.append(np.asarray(xyz, dtype=np.float64))
        self.numbers.append(element)
        self.residue.append(self.n_residues)
        self.removable.append(removable)

    def _side_chain(self, ca: np.ndarray, outward: np.ndarray, along: np.ndarray) -> None:
        rng = self.rng
        if rng.random() < 0.07:  # glycine
            return
        cb = ca + 1.53 * _unit(outward * 0.94 - along * 0.34)
        self._add(cb, 6, True)
        n_extra = int(rng.choice(5, p=[0.12, 0.2, 0.3, 0.23, 0.15]))
        sulfur_at = int(rng.integers(0, 2)) if rng.random() < 0.04 else -1
        position = cb
        direction = outward
        for index in range(n_extra):
            direction = _unit(direction + 0.6 * rng.normal(size=3) - 0.3 * along)
            position = position + 1.5 * direction
            if index == sulfur_at:
                element = 16
            elif index == n_extra - 1 and index > 0:
                element = int(rng.choice([6, 7, 8], p=[0.3, 0.35, 0.35]))
            else:
                element = 6
            self._add(position, element, True)

    def helix(
        self, start: np.ndarray, axis: npt.ArrayLike, n_residues: int, phase_degrees: float = 0.0
    ) -> np.ndarray:
        """Add an ideal α-helix whose axis starts at ``start``; return the axis end point."""
        a = _unit(axis)
        e1 = _perpendicular(a)
        e2 = np.cross(a, e1)
        for j in range(n_residues):
            base_angle = math.radians(phase_degrees + 100.0 * j)
            z = 1.5 * j
            ca = start
            for element, radius, dphi, dz in _HELIX_BACKBONE:
                angle = base_angle + math.radians(dphi)
                xyz = start + (z + dz) * a + radius * (math.cos(angle) * e1 + math.sin(angle) * e2)
                self._add(xyz, element, False)
                if dphi == 0.0:
                    ca = xyz
            radial = math.cos(base_angle) * e1 + math.sin(base_angle) * e2
            self._side_chain(ca, radial, a)
            self.n_residues += 1
        return start + 1.5 * (n_residues - 1) * a

    def loop(self, start: np.ndarray, end: np.ndarray, bulge: np.ndarray) -> None:
        """Add pseudo-residues (CA every ≈3.6 Å) on a quadratic Bezier from ``start`` to ``end``."""
        control = 0.5 * (start + end) + bulge
        samples = np.linspace(0.0, 1.0, 65)[:, None]
        curve = (
            (1 - samples) ** 2 * start + 2 * (1 - samples) * samples * control + samples**2 * end
        )
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(curve, axis=0), axis=1))])
        n_res = max(1, round(arc[-1] / 3.6) - 1)
        rng = self.rng
        for t in np.linspace(0.0, arc[-1], n_res + 2)[1:-1]:
            ca = np.array([np.interp(t, arc, curve[:, d]) for d in range(3)])
            index = min(int(np.searchsorted(arc, t)), len(curve) - 2)
            tangent = _unit(curve[index + 1] - curve[index])
            normal = _unit(np.cross(tangent, _perpendicular(tangent)) + 0.3 * rng.normal(size=3))
            self._add(ca - 1.2 * tangent + 0.5 * normal, 7, True)
            self._add(ca, 6, True)
            carbonyl = ca + 1.2 * tangent - 0.4 * normal
            self._add(carbonyl, 6, True)
            self._add(carbonyl + 1.23 * _unit(-normal + 0.2 * tangent), 8, True)
            self._side_chain(ca, _unit(np.cross(tangent, normal) + 0.5 * normal), tangent)
            self.n_residues += 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(coords, atomic_numbers, residue, removable)``."""
        return (
            np.asarray(self.coords, dtype=np.float64).reshape(-1, 3),
            np.asarray(self.numbers, dtype=np.int64),
            np.asarray(self.residue, dtype=np.int64),
            np.asarray(self.removable, dtype=bool),
        )


def _clashing_atoms(
    coords: np.ndarray, residue: np.ndarray, removable: np.ndarray, copy_index: np.ndarray
) -> np.ndarray:
    """Return a mask of removable atoms that clash with atoms of non-adjacent residues.

    Atoms of different copies always count as non-adjacent, and atoms closer
    than 1.1 Å always clash. When both atoms of a clashing pair are removable
    the one with the larger index goes.
    """
    from scipy.spatial import cKDTree

    pairs = cKDTree(coords).query_pairs(_CLASH_DISTANCE_ANGSTROMS, output_type="ndarray")
    if pairs.size == 0:
        return np.zeros(coords.shape[0], dtype=bool)
    i, j = pairs[:, 0], pairs[:, 1]
    different_copy = copy_index[i] != copy_index[j]
    far_in_chain = np.abs(residue[i] - residue[j]) >= 2
    # No two atoms, bonded or not, are closer than ~1.2 Å.
    overlapping = np.linalg.norm(coords[i] - coords[j], axis=1) < 1.1
    real = different_copy | far_in_chain | overlapping
    i, j = i[real], j[real]
    remove = np.zeros(coords.shape[0], dtype=bool)
    pick_j = removable[j]
    remove[j[pick_j]] = True
    remove[i[~pick_j & removable[i]]] = True
    return remove


def _ferritin_like_subunit(
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return one asymmetric 4+1-helix subunit in its frame (u, v, w) = (bundle, across, out)."""
    builder = _ChainBuilder(rng)
    u, v, w = np.eye(3)
    n_long = 26
    half = 1.5 * (n_long - 1) / 2
    spacing = 4.8
    lanes = {
        "A": (-spacing, spacing),
        "B": (spacing, spacing),
        "C": (spacing, -spacing),
        "D": (-spacing, -spacing),
    }

    def lane(name: str, sign: float) -> np.ndarray:
        dv, dw = lanes[name]
        return dv * v + dw * w - sign * half * u

    start_a = lane("A", 1.0)
    builder.loop(start_a - 12.0 * u + 6.0 * v + 3.0 * w, start_a, 3.0 * w)
    end_a = builder.helix(start_a, u, n_long, 0.0)
    start_b = lane("B", -1.0)
    builder.loop(end_a, start_b, 5.0 * u + 2.0 * w)
    end_b = builder.helix(start_b, -u, n_long, 40.0)
    start_c = lane("C", 1.0)
    builder.loop(end_b, start_c, -5.0 * u + 3.0 * v)
    end_c = builder.helix(start_c, u, n_long, 80.0)
    start_d = lane("D", -1.0)
    builder.loop(end_c, start_d, 5.0 * u - 2.0 * w)
    end_d = builder.helix(start_d, -u, n_long, 120.0)
    # Short E helix at the -u end, tilted into the shell towards the four-fold axis.
    e_axis = _unit(-0.2 * u - 0.85 * w + 0.5 * v)
    start_e = end_d - 3.0 * u + 4.0 * v - 2.0 * w
    builder.loop(end_d, start_e, -2.0 * u - 1.0 * v)
    builder.helix(start_e, e_axis, 8, 160.0)
    return builder.arrays()


def apoferritin_like_model(*, seed: int = 0) -> AtomicModel:
    """Return a procedural octahedral 24-mer resembling apoferritin (≈130 Å across).

    One asymmetric, chiral subunit -- a four-helix bundle with a short fifth
    helix and connecting loops, ≈125 pseudo-residues or ≈760 C/N/O/S atoms --
    is placed in a shell of radius 52 Å (atoms at 42-65 Å around an 85 Å
    cavity) with its bundle axis along a face diagonal, next to a two-fold
    axis, and copied by the 24 rotations of O
    (:func:`cistemd.kernels.rotation.octahedral_rotation_matrices`). Side-chain
    and loop atoms that would clash with a neighbour are removed from every
    copy alike, so the result has exact O (432) symmetry about the origin,
    four-folds along x, y, z (cisTEM's "O"); its centroid is the origin.

    Parameters
    ----------
    seed
        Seed of the side-chain/loop details (the same seed gives the same model).
    """
    rng = np.random.default_rng(seed)
    local, numbers, residue, removable = _ferritin_like_subunit(rng)
    shell_radius = 52.0
    beta = 10.0 / shell_radius
    w = _unit(
        np.array([1.0, 1.0, 0.0]) / math.sqrt(2.0) * math.cos(beta)
        + np.array([0.0, 0.0, math.sin(beta)])
    )
    u = _unit(np.array([1.0, -1.0, 0.0]))
    v = np.cross(w, u)
    frame = np.stack([u, v, w], axis=1)  # columns: local axes in model coordinates
    subunit = local @ frame.T + shell_radius * w
    group = octahedral_rotation_matrices()
    n_copies = len(group)
    for _ in range(3):
        n_sub = subunit.shape[0]
        coords = np.concatenate([subunit @ g.T for g in group])
        clash = _clashing_atoms(
            coords,
            np.tile(residue, n_copies),
            np.tile(removable, n_copies),
            np.repeat(np.arange(n_copies), n_sub),
        )
        drop = clash.reshape(n_copies, n_sub).any(axis=0)
        if not drop.any():
            break
        keep = ~drop
        subunit, numbers, residue, removable = (
            subunit[keep],
            numbers[keep],
            residue[keep],
            removable[keep],
        )
    n_sub = subunit.shape[0]
    coords = np.concatenate([subunit @ g.T for g in group])
    return AtomicModel(
        coords,
        np.tile(numbers, n_copies),
        np.zeros(coords.shape[0]),
        np.ones(coords.shape[0]),
        np.repeat(np.arange(n_copies), n_sub),
        tuple("ABCDEFGHIJKLMNOPQRSTUVWX"),
        "apoferritin-like octahedral 24-mer (procedural)",
    )


def _hexagonal_lattice(n: int, spacing: float) -> np.ndarray:
    """Return the ``n`` points of a 2-D hexagonal lattice nearest the origin, spiral-ordered."""
    reach = math.ceil(math.sqrt(n)) + 2
    points = []
    for i in range(-reach, reach + 1):
        for j in range(-reach, reach + 1):
            points.append((spacing * (i + 0.5 * j), spacing * (math.sqrt(3) / 2) * j))
    lattice = np.array(points)
    radius = np.round(np.linalg.norm(lattice, axis=1), 6)
    angle = np.arctan2(lattice[:, 1], lattice[:, 0])
    order = np.lexsort((angle, radius))
    return lattice[order[:n]]


def _segment_distances(
    p0: np.ndarray, p1: np.ndarray, q0: np.ndarray, q1: np.ndarray
) -> np.ndarray:
    """Return the shortest distances between segment ``p0-p1`` and each ``q0[i]-q1[i]``."""
    d1 = p1 - p0
    d2 = q1 - q0
    r = p0 - q0
    a = float(d1 @ d1)
    e = np.einsum("ij,ij->i", d2, d2)
    f = np.einsum("ij,ij->i", d2, r)
    c = r @ d1
    b = d2 @ d1
    denominator = a * e - b * b
    safe = np.where(denominator > 1e-12, denominator, 1.0)
    s = np.where(denominator > 1e-12, np.clip((b * f - c * e) / safe, 0.0, 1.0), 0.0)
    t = (b * s + f) / np.maximum(e, 1e-12)
    s = np.where(t < 0, np.clip(-c / a, 0, 1), np.where(t > 1, np.clip((b - c) / a, 0, 1), s))
    t = np.clip(t, 0.0, 1.0)
    return np.linalg.norm((p0 + s[:, None] * d1) - (q0 + t[:, None] * d2), axis=1)


def asymmetric_protein_model(*, n_residues: int = 1200, seed: int = 0) -> AtomicModel:
    """Return a procedural, asymmetric, globular protein-like chain (no symmetry).

    The chain folds into several α-helical domains of unequal size (each a
    bundle of antiparallel helices on a hexagonal lattice, 10 Å apart, taller
    in the middle) with random orientations. Each new domain is docked at the
    free position closest to the centroid of those already placed (helix
    axes at least 9 Å from every other helix), giving a compact, irregular
    particle; consecutive helices and domains are joined by loops. Side-chain
    and loop atoms that would clash are removed. At the default size it has
    ≈6000 heavy atoms (≈85 kDa) and is ≈100 × 80 × 85 Å. The centroid is the
    origin.

    Parameters
    ----------
    n_residues
        Number of residues the helices are sized for (loops add some, clash
        removal takes side chains away).
    seed
        Seed; the same seed gives the same model.
    """
    if n_residues < 40:
        raise ValueError(f"n_residues must be at least 40, got {n_residues}")
    rng = np.random.default_rng(seed)
    n_domains = max(1, round(n_residues / 180))
    fractions = rng.dirichlet(np.full(n_domains, 3.0))
    helix_length = 18
    # Helix axes (start, end, n_residues) of every domain, in the domain's own frame.
    placed_starts: list[np.ndarray] = []
    placed_ends: list[np.ndarray] = []
    helices: list[tuple[np.ndarray, np.ndarray, int]] = []
    for fraction in fractions:
        n_helices = max(2, round(fraction * n_residues * 0.85 / helix_length))
        lattice = _hexagonal_lattice(n_helices, 10.0)
        lattice_radius = float(np.linalg.norm(lattice, axis=1).max()) or 1.0
        axis = _unit(rng.normal(size=3))
        e1 = _perpendicular(axis)
        e2 = np.cross(axis, e1)
        local: list[tuple[np.ndarray, np.ndarray, int]] = []
        for index, (px, py) in enumerate(lattice):
            taper = 1.0 - 0.3 * (math.hypot(px, py) / lattice_radius) ** 2
            length = max(7, round(helix_length * taper) + int(rng.integers(-2, 3)))
            direction = axis if index % 2 == 0 else -axis
            base = px * e1 + py * e2
            half = direction * 0.75 * (length - 1)
            local.append((base - half, base + half, length))
        starts = np.array([s for s, _, _ in local])
        ends = np.array([e for _, e, _ in local])
        if placed_starts:
            existing_starts = np.array(placed_starts)
            existing_ends = np.array(placed_ends)
            centroid = 0.5 * (existing_starts + existing_ends).mean(axis=0)
            reach = float(
                np.linalg.norm(0.5 * (existing_starts + existing_ends) - centroid, axis=1).max()
            )
            best: tuple[float, np.ndarray] | None = None
            for _ in range(200):
                trial = centroid + _unit(rng.normal(size=3)) * rng.uniform(0.3, 1.0) * (
                    reach + lattice_radius + 20.0
                )
                closest = min(
                    float(
                        _segment_distances(
                            s + trial, e + trial, existing_starts, existing_ends
                        ).min()
                    )
                    for s, e in zip(starts, ends, strict=True)
                )
                if closest < 9.5:
                    continue
                score = float(np.linalg.norm(trial - centroid))
                if best is None or score < best[0]:
                    best = (score, trial)
            offset = (
                best[1]
                if best is not None
                else centroid + (reach + 3 * lattice_radius + 30.0) * _unit(rng.normal(size=3))
            )
        else:
            offset = np.zeros(3)
        for start, end, length in local:
            placed_starts.append(start + offset)
            placed_ends.append(end + offset)
            helices.append((start + offset, end + offset, length))
    builder = _ChainBuilder(rng)
    all_centres = 0.5 * (np.array(placed_starts) + np.array(placed_ends))
    centroid = all_centres.mean(axis=0)
    previous_end: np.ndarray | None = None
    for start, end, length in helices:
        direction = _unit(end - start)
        if previous_end is not None:
            gap = float(np.linalg.norm(start - previous_end))
            outward = previous_end - centroid + 1e-6 * rng.normal(size=3)
            bulge = -direction * 3.0 if gap < 16.0 else _unit(outward) * (3.0 + 0.3 * gap)
            builder.loop(previous_end, start, bulge)
        previous_end = builder.helix(start, direction, length, float(rng.uniform(0, 360)))
    coords, numbers, residue, removable = builder.arrays()
    for _ in range(3):
        clash = _clashing_atoms(
            coords, residue, removable, np.zeros(coords.shape[0], dtype=np.int64)
        )
        if not clash.any():
            break
        keep = ~clash
        coords, numbers, residue, removable = (
            coords[keep],
            numbers[keep],
            residue[keep],
            removable[keep],
        )
    model = AtomicModel(coords, numbers, name="asymmetric protein-like chain (procedural)")
    return model.centered()


# ======================================================================= physics


def interaction_constant_rad_per_volt_angstrom(voltage_kv: float) -> float:
    """Return the relativistic interaction constant σ = 2π m λ e / h², rad / (V·Å).

    6.526·10⁻⁴ at 300 kV, 7.288·10⁻⁴ at 200 kV. Phase = σ × projected potential (V·Å).
    """
    wavelength_m = electron_wavelength_angstroms(voltage_kv) * 1e-10
    gamma = 1.0 + _CHARGE * voltage_kv * 1000.0 / (_ELECTRON_MASS * _LIGHT**2)
    return 2.0 * math.pi * gamma * _ELECTRON_MASS * wavelength_m * _CHARGE / _PLANCK**2 * 1e-10


def _f0_angstroms(atomic_numbers: np.ndarray) -> np.ndarray:
    z = np.asarray(atomic_numbers, dtype=np.int64)
    out = 0.66 * np.maximum(z, 1).astype(np.float64) ** (2.0 / 3.0)
    for number, value in _F0_ANGSTROMS.items():
        out[z == number] = value
    return out


def atomic_potential_weights(
    atomic_numbers: npt.ArrayLike, *, implicit_hydrogens: bool = True
) -> np.ndarray:
    """Return each atom's integrated Coulomb potential, V·Å³ (``K · f_e(0)``).

    Parameters
    ----------
    atomic_numbers
        ``(n,)`` atomic numbers.
    implicit_hydrogens
        Add one hydrogen's scattering (``f_e(0)`` = 0.529 Å) to every heavy
        atom, for models without explicit hydrogens.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` float64. Carbon: 120.1 (145.4 with its implicit hydrogen).
    """
    z = np.asarray(atomic_numbers, dtype=np.int64)
    f0 = _f0_angstroms(z)
    if implicit_hydrogens:
        f0 = f0 + np.where(z > 1, _F0_ANGSTROMS[1], 0.0)
    return POTENTIAL_PER_SCATTERING_LENGTH * f0


def _atom_shape(k_squared: np.ndarray) -> np.ndarray:
    """Normalised carbon electron scattering factor, as a function of k² (1/Å²)."""
    out = np.zeros_like(k_squared)
    for a, b in zip(_CARBON_A, _CARBON_B, strict=True):
        out += a * np.exp(-b * k_squared / 4.0)
    return out / _CARBON_A.sum()


def water_structure_factor(spatial_frequency_per_angstrom: npt.ArrayLike) -> np.ndarray:
    """Return a model structure factor S(k) of amorphous ice (k in 1/Å, k = 1/d).

    ``S → 0.06`` at low k (water's compressibility limit), a peak of height
    ≈1.8 at ``k = 1 / 3.7 Å⁻¹`` (the amorphous-ice diffraction ring), and
    ``S → 1`` beyond it. A plausible shape, not a fit to measurements.
    """
    k = np.asarray(spatial_frequency_per_angstrom, dtype=np.float64)
    k_peak = 1.0 / 3.7
    step = 1.0 / (1.0 + np.exp(-(k - k_peak) / 0.02))
    return 0.06 + 0.94 * step + 1.3 * np.exp(-0.5 * ((k - k_peak) / 0.025) ** 2)


def critical_exposure_e_per_a2(
    spatial_frequency_per_angstrom: npt.ArrayLike, voltage_kv: float
) -> np.ndarray:
    """Return Grant & Grigorieff's critical exposure ``N_c(k)`` in e/Å².

    ``N_c = (0.24499 k^−1.6649 + 2.8141) · s`` with ``s`` = 1.0, 0.8, 0.532 at
    300, 200, 100 kV (linearly interpolated between, clamped outside). ``k = 0``
    gives ``inf``.
    """
    k = np.asarray(spatial_frequency_per_angstrom, dtype=np.float64)
    volts, scales = zip(*_NC_VOLTAGE_SCALE, strict=True)
    scale = float(np.interp(voltage_kv, volts, scales))
    with np.errstate(divide="ignore"):
        return np.where(
            k > 0, (_NC_A * np.power(np.where(k > 0, k, 1.0), _NC_B) + _NC_C) * scale, np.inf
        )


# ===================================================================== densities


def _interpolation_correction(shape: tuple[int, ...], rfft: bool) -> np.ndarray:
    """Return 1 / Π sinc²(k_axis) (k in cycles/pixel), undoing linear splatting's blur."""
    grids = spatial_frequency_grid(shape, 1.0, rfft=rfft)
    out = np.ones(grids[0].shape, dtype=np.float64)
    for g in grids:
        out = out / np.sinc(g) ** 2
    return out


def _splat_3d(
    coords_px: np.ndarray, weights: np.ndarray, shape: tuple[int, int, int]
) -> np.ndarray:
    from cistemd.kernels._simulate_numba import splat_trilinear

    grid = np.zeros(shape, dtype=np.float64)
    splat_trilinear(
        np.ascontiguousarray(coords_px[:, 0]),
        np.ascontiguousarray(coords_px[:, 1]),
        np.ascontiguousarray(coords_px[:, 2]),
        np.ascontiguousarray(weights, dtype=np.float64),
        grid,
    )
    return grid


def density_from_atoms(
    coords_angstroms: npt.ArrayLike,
    weights: npt.ArrayLike,
    *,
    box: int,
    pixel_size_angstroms: float,
    b_factor: float = 0.0,
    atomic_form_factor: bool = True,
) -> np.ndarray:
    """Return a cubic map of Gaussian-blurred atoms (weight per Å³).

    Each atom contributes ``w · g(r − r_atom)`` where ``g`` integrates to 1
    and has the Fourier transform ``shape(k) · exp(−b_factor · k² / 4)``
    (``shape`` = the normalised carbon electron scattering factor if
    ``atomic_form_factor``, else 1). Atoms are spread onto the grid with
    trilinear weights and the spreading blur is divided out in Fourier space.

    Parameters
    ----------
    coords_angstroms
        ``(n, 3)`` atom positions, Å, relative to the map centre; columns x, y, z.
    weights
        ``(n,)`` integrated value of each atom (e.g. V·Å³ for a potential map).
    box
        Edge of the cubic map in voxels.
    pixel_size_angstroms
        Voxel size, Å.
    b_factor
        Isotropic B in Å² (``exp(−B k²/4)``, B = 8π²⟨u²⟩).
    atomic_form_factor
        Include the atomic scattering-factor shape.

    Returns
    -------
    numpy.ndarray
        float32 ``(box, box, box)`` indexed ``[z, y, x]``, map centre at voxel
        ``box // 2`` along each axis. ``map.sum() · pixel_size³ = Σ weights``
        for atoms inside the box; atoms within one voxel of the box edge or
        outside it are left out, and the blur wraps around periodically.
    """
    coords = np.asarray(coords_angstroms, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords_angstroms must be (n, 3), got {coords.shape}")
    if w.shape != (coords.shape[0],):
        raise ValueError(f"weights must be ({coords.shape[0]},), got {w.shape}")
    if box < 2:
        raise ValueError(f"box must be at least 2, got {box}")
    if pixel_size_angstroms <= 0:
        raise ValueError(f"pixel_size_angstroms must be positive, got {pixel_size_angstroms}")
    shape = (box, box, box)
    coords_px = coords / pixel_size_angstroms + box // 2
    grid = _splat_3d(coords_px, w, shape)
    spectrum = np.fft.rfftn(grid)
    kz, ky, kx = spatial_frequency_grid(shape, pixel_size_angstroms, rfft=True)
    k_squared = kx * kx + ky * ky + kz * kz
    transfer = np.exp(-b_factor * k_squared / 4.0) * _interpolation_correction(shape, True)
    if atomic_form_factor:
        transfer *= _atom_shape(k_squared)
    result = np.fft.irfftn(spectrum * transfer, s=shape, axes=(0, 1, 2)) / pixel_size_angstroms**3
    return result.astype(np.float32)


def _solvent_weights(model: AtomicModel) -> np.ndarray:
    heavy = (model.atomic_numbers > 1).astype(np.float64)
    return heavy * model.occupancies * _DISPLACED_VOLUME_PER_HEAVY_ATOM_A3 * _WATER_MEAN_POTENTIAL_V


def _model_potential_weights(model: AtomicModel) -> np.ndarray:
    explicit_h = bool(np.any(model.atomic_numbers == 1))
    return (
        atomic_potential_weights(model.atomic_numbers, implicit_hydrogens=not explicit_h)
        * model.occupancies
    )


def coulomb_potential_map(
    model: AtomicModel,
    *,
    box: int,
    pixel_size_angstroms: float,
    b_factor_angstroms2: float = 0.0,
    solvent_exclusion: bool = True,
) -> np.ndarray:
    """Return the model's Coulomb potential (V) on a cubic grid, as the simulator sees it.

    The same atom profiles as :func:`simulate_movie` uses (carbon form factor,
    global B); with ``solvent_exclusion`` the displaced water potential is
    subtracted, i.e. the map is the potential *relative to the surrounding ice*.
    Layout as :func:`density_from_atoms`.
    """
    potential = density_from_atoms(
        model.coords_angstroms,
        _model_potential_weights(model),
        box=box,
        pixel_size_angstroms=pixel_size_angstroms,
        b_factor=b_factor_angstroms2,
    )
    if solvent_exclusion:
        potential = potential - density_from_atoms(
            model.coords_angstroms,
            _solvent_weights(model),
            box=box,
            pixel_size_angstroms=pixel_size_angstroms,
            b_factor=b_factor_angstroms2 + _SOLVENT_EXCLUSION_B_ANGSTROMS2,
            atomic_form_factor=False,
        )
    return potential.astype(np.float32)


def _splat_particles_2d(
    coords_px: np.ndarray,
    centres_px: np.ndarray,
    euler_degrees: np.ndarray,
    shape: tuple[int, int],
    channels: np.ndarray,
) -> np.ndarray:
    """Spread every particle's rotated atoms (model in px) onto ``(n_channels, ny, nx)``."""
    from cistemd.kernels._simulate_numba import splat_bilinear

    grid = np.zeros((channels.shape[0], *shape), dtype=np.float64)
    if centres_px.shape[0] == 0:
        return grid
    rotations = euler_to_matrix(euler_degrees[:, 0], euler_degrees[:, 1], euler_degrees[:, 2])
    coords_t = np.ascontiguousarray(coords_px.T)
    for rotation, (cx, cy) in zip(rotations, centres_px, strict=True):
        projected = rotation[:2] @ coords_t  # (2, n_atoms) in Å
        splat_bilinear(projected[0] + cx, projected[1] + cy, channels, grid)
    return grid


def _projected_potential_spectrum(
    model: AtomicModel,
    centres_px: np.ndarray,
    euler_degrees: np.ndarray,
    shape: tuple[int, int],
    pixel_size_angstroms: float,
    b_factor_angstroms2: float,
    solvent_exclusion: bool,
) -> np.ndarray:
    """rfft2 of the particles' projected potential (V·Å) on ``shape``."""
    weights = [_model_potential_weights(model)]
    if solvent_exclusion:
        weights.append(_solvent_weights(model))
    channels = np.ascontiguousarray(np.stack(weights))
    coords_px = model.coords_angstroms / pixel_size_angstroms
    grid = _splat_particles_2d(coords_px, centres_px, euler_degrees, shape, channels)
    spectra = np.fft.rfft2(grid)
    ky, kx = spatial_frequency_grid(shape, pixel_size_angstroms, rfft=True)
    k_squared = kx * kx + ky * ky
    correction = _interpolation_correction(shape, True)
    total = spectra[0] * (_atom_shape(k_squared) * np.exp(-b_factor_angstroms2 * k_squared / 4.0))
    if solvent_exclusion:
        total -= spectra[1] * np.exp(
            -(b_factor_angstroms2 + _SOLVENT_EXCLUSION_B_ANGSTROMS2) * k_squared / 4.0
        )
    return total * correction / pixel_size_angstroms**2


def project_model(
    model: AtomicModel,
    euler_degrees: npt.ArrayLike,
    *,
    shape: tuple[int, int],
    pixel_size_angstroms: float,
    b_factor_angstroms2: float = 0.0,
    solvent_exclusion: bool = False,
) -> np.ndarray:
    """Return the projected Coulomb potential (V·Å) of one model in one orientation.

    Parameters
    ----------
    model
        The atoms.
    euler_degrees
        ``(φ, θ, ψ)`` degrees, cisTEM ZYZ (:mod:`cistemd.kernels.rotation`).
    shape
        ``(ny, nx)`` of the output; the model origin projects onto pixel
        ``(ny // 2, nx // 2)``.
    pixel_size_angstroms
        Å per pixel.
    b_factor_angstroms2
        Global B.
    solvent_exclusion
        Subtract the displaced water potential (as in an ice-embedded particle).

    Returns
    -------
    numpy.ndarray
        float32 ``(ny, nx)``. Equals the sum along z of :func:`coulomb_potential_map`
        (times the voxel size) rotated by ``R(φ, θ, ψ)``.
    """
    angles = np.asarray(euler_degrees, dtype=np.float64).reshape(1, 3)
    centre = np.array([[shape[1] // 2, shape[0] // 2]], dtype=np.float64)
    spectrum = _projected_potential_spectrum(
        model, centre, angles, shape, pixel_size_angstroms, b_factor_angstroms2, solvent_exclusion
    )
    return np.fft.irfft2(spectrum, s=shape).astype(np.float32)


# ================================================================ micrograph parts


def random_particle_positions(
    n: int,
    shape: tuple[int, int],
    pixel_size_angstroms: float,
    *,
    min_separation_angstroms: float,
    edge_margin_angstroms: float,
    rng: np.random.Generator,
    max_attempts: int = 50_000,
) -> np.ndarray:
    """Draw up to ``n`` particle centres uniformly, apart and away from the edges.

    Returns
    -------
    numpy.ndarray
        ``(m, 2)`` float64 ``(x_angstroms, y_angstroms)`` from the first pixel's
        centre, ``m ≤ n`` (fewer if the area is too crowded after
        ``max_attempts`` draws). Every centre is at least
        ``edge_margin_angstroms`` from the image border and pairs are at least
        ``min_separation_angstroms`` apart.
    """
    ny, nx = shape
    x_max = (nx - 1) * pixel_size_angstroms - edge_margin_angstroms
    y_max = (ny - 1) * pixel_size_angstroms - edge_margin_angstroms
    if n <= 0 or x_max < edge_margin_angstroms or y_max < edge_margin_angstroms:
        return np.zeros((0, 2))
    chosen = np.zeros((n, 2))
    count = 0
    attempts = 0
    limit_sq = min_separation_angstroms**2
    while count < n and attempts < max_attempts:
        batch = min(1024, max_attempts - attempts)
        attempts += batch
        candidates = np.column_stack(
            [
                rng.uniform(edge_margin_angstroms, x_max, batch),
                rng.uniform(edge_margin_angstroms, y_max, batch),
            ]
        )
        if count:
            d_sq = ((candidates[:, None, :] - chosen[None, :count, :]) ** 2).sum(axis=2)
            candidates = candidates[d_sq.min(axis=1) >= limit_sq]
        for candidate in candidates:
            if count and np.min(((chosen[:count] - candidate) ** 2).sum(axis=1)) < limit_sq:
                continue
            chosen[count] = candidate
            count += 1
            if count == n:
                break
    return chosen[:count].copy()


def beam_induced_drift(
    n_frames: int,
    *,
    drift_angstroms: float,
    rng: np.random.Generator,
    jitter_angstroms: float = 0.1,
    decay_fraction: float = 0.25,
) -> np.ndarray:
    """Return a smooth beam-induced-motion trajectory sampled at each frame's mid-exposure.

    The specimen moves along a gently curving path whose speed decays
    exponentially (most motion early in the exposure, time constant
    ``decay_fraction`` of the exposure), plus a slower linear creep, plus
    independent Gaussian jitter of ``jitter_angstroms`` per axis per frame.

    Parameters
    ----------
    n_frames
        Number of frames.
    drift_angstroms
        Path length from the start of the exposure to the end, Å (before jitter).
    rng
        Random generator.
    jitter_angstroms
        Standard deviation of the per-frame jitter, Å.
    decay_fraction
        Time constant of the early fast motion as a fraction of the exposure.

    Returns
    -------
    numpy.ndarray
        ``(n_frames, 2)`` float64 ``(dx, dy)`` in Å: displacement of the
        specimen in frame ``i`` relative to its position before the exposure
        (module docstring, item 5).
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    if drift_angstroms < 0:
        raise ValueError(f"drift_angstroms must be non-negative, got {drift_angstroms}")
    times = (np.arange(n_frames) + 0.5) / n_frames
    tau = max(decay_fraction, 1e-3)
    fast = (1.0 - np.exp(-times / tau)) / (1.0 - math.exp(-1.0 / tau))
    progress = 0.7 * fast + 0.3 * times  # fraction of the path covered
    start_angle = rng.uniform(0.0, 2.0 * math.pi)
    turn = rng.uniform(-math.pi / 3, math.pi / 3)
    # Integrate the direction along the path for a smoothly curving trajectory.
    fine = np.linspace(0.0, 1.0, 1025)
    angles = start_angle + turn * fine
    steps = np.column_stack([np.cos(angles), np.sin(angles)]) / (len(fine) - 1)
    path = np.vstack([[0.0, 0.0], np.cumsum(0.5 * (steps[1:] + steps[:-1]), axis=0)])
    length = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    path /= max(length[-1], 1e-12)
    length /= max(length[-1], 1e-12)
    x = np.interp(progress, length, path[:, 0]) * drift_angstroms
    y = np.interp(progress, length, path[:, 1]) * drift_angstroms
    shifts = np.column_stack([x, y])
    if jitter_angstroms > 0:
        shifts = shifts + rng.normal(0.0, jitter_angstroms, size=shifts.shape)
    return shifts


def detector_sensitivity(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    n_dead_columns: int = 0,
    n_hot_columns: int = 0,
    pixel_variation: float = 0.02,
) -> tuple[np.ndarray, np.ndarray, dict[str, list[int]]]:
    """Return a detector sensitivity map, its gain reference and the defect columns.

    The sensitivity is a smooth field (a few long-wavelength cosines) in
    [0.8, 1.2] times a per-pixel fixed pattern (``1 ± pixel_variation``).
    Dead columns have sensitivity 0; hot columns 3.

    Returns
    -------
    sensitivity
        ``(ny, nx)`` float32 ``s``: the expected counts are multiplied by it.
    gain_reference
        ``(ny, nx)`` float32 ``g = 1 / s`` (0 where ``s = 0``): multiply raw
        frames by it to correct them (cisTEM/Unblur convention).
    defects
        ``{"dead_columns": [...], "hot_columns": [...]}`` (x indices).
    """
    ny, nx = shape
    yy, xx = np.meshgrid(np.arange(ny) / ny, np.arange(nx) / nx, indexing="ij")
    smooth = np.zeros(shape)
    for _ in range(4):
        fx, fy = rng.uniform(0.3, 2.0, size=2)
        phase = rng.uniform(0, 2 * math.pi)
        smooth += np.cos(2 * math.pi * (fx * xx + fy * yy) + phase)
    smooth = smooth / max(np.abs(smooth).max(), 1e-12)
    sensitivity = (1.0 + 0.17 * smooth) * (
        1.0 + rng.uniform(-pixel_variation, pixel_variation, size=shape)
    )
    sensitivity = np.clip(sensitivity, 0.8, 1.2)
    columns = rng.choice(nx, size=min(nx, n_dead_columns + n_hot_columns), replace=False)
    dead = sorted(int(c) for c in columns[:n_dead_columns])
    hot = sorted(int(c) for c in columns[n_dead_columns:])
    sensitivity[:, dead] = 0.0
    sensitivity[:, hot] = 3.0
    gain = np.zeros(shape)
    np.divide(1.0, sensitivity, out=gain, where=sensitivity > 0)
    return (
        sensitivity.astype(np.float32),
        gain.astype(np.float32),
        {"dead_columns": dead, "hot_columns": hot},
    )


def _ice_spectrum(
    shape: tuple[int, int],
    pixel_size_angstroms: float,
    thickness_angstroms: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """rfft2 of the fluctuating part of an amorphous-ice slab's projected potential (V·Å)."""
    if thickness_angstroms <= 0:
        return np.zeros((shape[0], shape[1] // 2 + 1), dtype=np.complex128)
    molecules_per_pixel = _WATER_MOLECULES_PER_A3 * thickness_angstroms * pixel_size_angstroms**2
    white = rng.normal(0.0, math.sqrt(molecules_per_pixel), size=shape)
    ky, kx = spatial_frequency_grid(shape, pixel_size_angstroms, rfft=True)
    k_squared = kx * kx + ky * ky
    transfer = (
        np.sqrt(water_structure_factor(np.sqrt(k_squared)))
        * _atom_shape(k_squared)
        * np.exp(-_WATER_B_ANGSTROMS2 * k_squared / 4.0)
        * _WATER_POTENTIAL_PER_MOLECULE
        / pixel_size_angstroms**2
    )
    spectrum = np.fft.rfft2(white) * transfer
    spectrum[0, 0] = 0.0
    return spectrum


def _ctf_dict(ctf: CTFParams) -> dict[str, float]:
    return {
        "defocus_1_angstroms": ctf.defocus_1_angstroms,
        "defocus_2_angstroms": ctf.defocus_2_angstroms,
        "astigmatism_angle_degrees": ctf.astigmatism_angle_degrees,
        "additional_phase_shift_radians": ctf.additional_phase_shift_radians,
        "additional_phase_shift_degrees": ctf.additional_phase_shift_degrees,
        "voltage_kv": ctf.voltage_kv,
        "spherical_aberration_mm": ctf.spherical_aberration_mm,
        "amplitude_contrast": ctf.amplitude_contrast,
        "wavelength_angstroms": ctf.wavelength_angstroms,
    }


CONVENTIONS: dict[str, str] = {
    "coordinates": (
        "x along the fast axis (numpy axis 1, MRC columns), y along numpy axis 0; "
        "positions in Angstrom from the centre of the first pixel (x = column * pixel_size)"
    ),
    "euler_angles": (
        "phi, theta, psi in degrees, ZYZ, cisTEM/Frealign/RELION convention: "
        "R = Rz(psi) Ry(theta) Rz(phi) (Rz(a) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]); "
        "model point r appears at (R r)[:2] relative to the particle centre"
    ),
    "ctf": (
        "CTFFIND: chi = pi*lambda*k^2*(df(alpha) - 0.5*lambda^2*k^2*Cs) + phase_shift "
        "+ atan(AC/sqrt(1-AC^2)); CTF = -sin(chi); defocus positive = underfocus; "
        "df(alpha) = 0.5*(df1 + df2 + (df1 - df2)*cos(2*(alpha - angle))); angle in degrees "
        "from the x axis; df1 >= df2"
    ),
    "frame_shifts": (
        "frame_shifts_angstroms[i] = (dx, dy): the specimen in frame i is displaced by "
        "(dx, dy) relative to the particle coordinates (its position before the exposure), "
        "frame_i(x, y) = reference(x - dx, y - dy); aligning frame i means shifting it "
        "by (-dx, -dy). frame_shifts_relative_to_middle_angstroms[i] = shifts[i] - "
        "shifts[n_frames // 2] (Unblur's reference frame); a sum aligned to the middle "
        "frame shows particle p at (x + shifts[mid][0], y + shifts[mid][1])"
    ),
    "counts": (
        "counts ~ Poisson(exposure_per_frame * pixel_size^2 * I * s) with mean intensity "
        "I = 1 and detector sensitivity s; gain reference g = 1/s (0 on dead columns), "
        "corrected = counts * g"
    ),
}


def _pad_canvas(shape: tuple[int, int], margin_px: int) -> tuple[int, int]:
    from scipy.fft import next_fast_len

    return (
        int(next_fast_len(shape[0] + 2 * margin_px, real=True)),
        int(next_fast_len(shape[1] + 2 * margin_px, real=True)),
    )


def simulate_movie(
    model: AtomicModel,
    *,
    shape: tuple[int, int],
    pixel_size_angstroms: float,
    ctf: CTFParams,
    positions_angstroms: npt.ArrayLike,
    euler_degrees: npt.ArrayLike,
    n_frames: int,
    exposure_per_frame_e_per_a2: float,
    rng: np.random.Generator,
    frame_shifts_angstroms: npt.ArrayLike | None = None,
    pre_exposure_e_per_a2: float = 0.0,
    ice_thickness_angstroms: float = 300.0,
    envelope_b_factor_angstroms2: float = 40.0,
    specimen_b_factor_angstroms2: float = 20.0,
    detector_sensitivity_map: npt.ArrayLike | None = None,
    shot_noise: bool = True,
    radiation_damage: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Simulate a dose-fractionated movie of particles in ice (physics in the module docstring).

    Parameters
    ----------
    model
        The particle's atoms (origin = particle centre).
    shape
        ``(ny, nx)`` of each frame.
    pixel_size_angstroms
        Å per pixel.
    ctf
        The CTF of the micrograph (every particle at the same defocus).
    positions_angstroms
        ``(n, 2)`` particle centres ``(x, y)`` in Å (module docstring).
    euler_degrees
        ``(n, 3)`` ``(φ, θ, ψ)`` in degrees.
    n_frames
        Number of frames.
    exposure_per_frame_e_per_a2
        Electrons per Å² per frame.
    rng
        Random generator (ice and shot noise).
    frame_shifts_angstroms
        ``(n_frames, 2)`` ``(dx, dy)`` per frame in Å (sign in the module
        docstring); ``None`` = no drift.
    pre_exposure_e_per_a2
        Exposure before the first frame (radiation damage only).
    ice_thickness_angstroms
        Thickness of the amorphous-ice slab; 0 = vacuum (no solvent either).
    envelope_b_factor_angstroms2
        B of the CTF envelope ``exp(−B k²/4)``.
    specimen_b_factor_angstroms2
        Global B of the atoms.
    detector_sensitivity_map
        ``(ny, nx)`` sensitivity ``s`` (:func:`detector_sensitivity`) or ``None``.
    shot_noise
        If false, return the expected counts (float32) instead of Poisson draws.
    radiation_damage
        Attenuate the specimen's signal with the cumulative exposure.

    Returns
    -------
    frames
        ``(n_frames, ny, nx)``: uint16 counts, or float32 expected counts.
    truth
        JSON-ready dict of every parameter (keys listed in :data:`CONVENTIONS`
        and ``ctf``, ``particles``, ``frame_shifts_angstroms`` ...).
    """
    ny, nx = (int(shape[0]), int(shape[1]))
    if ny < 8 or nx < 8:
        raise ValueError(f"shape must be at least 8x8, got {shape}")
    if pixel_size_angstroms <= 0:
        raise ValueError(f"pixel_size_angstroms must be positive, got {pixel_size_angstroms}")
    if n_frames < 1:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    if exposure_per_frame_e_per_a2 <= 0:
        raise ValueError(
            f"exposure_per_frame_e_per_a2 must be positive, got {exposure_per_frame_e_per_a2}"
        )
    if ice_thickness_angstroms < 0:
        raise ValueError(
            f"ice_thickness_angstroms must be non-negative, got {ice_thickness_angstroms}"
        )
    positions = np.asarray(positions_angstroms, dtype=np.float64).reshape(-1, 2)
    angles = np.asarray(euler_degrees, dtype=np.float64).reshape(-1, 3)
    if positions.shape[0] != angles.shape[0]:
        raise ValueError(
            f"positions_angstroms has {positions.shape[0]} rows but "
            f"euler_degrees has {angles.shape[0]}"
        )
    if frame_shifts_angstroms is None:
        shifts = np.zeros((n_frames, 2))
    else:
        shifts = np.asarray(frame_shifts_angstroms, dtype=np.float64)
        if shifts.shape != (n_frames, 2):
            raise ValueError(f"frame_shifts_angstroms must be ({n_frames}, 2), got {shifts.shape}")
    sensitivity = None
    if detector_sensitivity_map is not None:
        sensitivity = np.asarray(detector_sensitivity_map, dtype=np.float64)
        if sensitivity.shape != (ny, nx):
            raise ValueError(
                f"detector_sensitivity_map must be ({ny}, {nx}), got {sensitivity.shape}"
            )

    margin = math.ceil(float(np.abs(shifts).max()) / pixel_size_angstroms) + _CANVAS_MARGIN_PX
    canvas = _pad_canvas((ny, nx), margin)
    offset_y = (canvas[0] - ny) // 2
    offset_x = (canvas[1] - nx) // 2
    centres_px = positions / pixel_size_angstroms + np.array([offset_x, offset_y])

    specimen = _projected_potential_spectrum(
        model,
        centres_px,
        angles,
        canvas,
        pixel_size_angstroms,
        specimen_b_factor_angstroms2,
        ice_thickness_angstroms > 0,
    )
    specimen = specimen + _ice_spectrum(canvas, pixel_size_angstroms, ice_thickness_angstroms, rng)
    specimen[0, 0] = 0.0
    sigma = interaction_constant_rad_per_volt_angstrom(ctf.voltage_kv)
    contrast_scale = 2.0 / math.sqrt(1.0 - ctf.amplitude_contrast**2)
    transfer = ctf_2d(
        canvas,
        pixel_size_angstroms,
        ctf,
        envelope_b_factor_angstroms2=envelope_b_factor_angstroms2,
        rfft=True,
    )
    phase_spectrum = specimen * (sigma * contrast_scale) * transfer

    ky, kx = spatial_frequency_grid(canvas, pixel_size_angstroms, rfft=True)
    k = np.sqrt(kx * kx + ky * ky)
    critical = critical_exposure_e_per_a2(k, ctf.voltage_kv) if radiation_damage else None
    mean_counts = exposure_per_frame_e_per_a2 * pixel_size_angstroms**2
    frames_out = np.empty((n_frames, ny, nx), dtype=np.float32 if not shot_noise else np.uint16)
    for i in range(n_frames):
        spectrum = phase_spectrum
        if critical is not None:
            # the decay averaged over the frame's exposure [start, start + e]
            rate = 0.5 / critical
            start = pre_exposure_e_per_a2 + i * exposure_per_frame_e_per_a2
            x = rate * exposure_per_frame_e_per_a2
            tiny = x < 1e-8
            average = np.where(tiny, 1.0, -np.expm1(-x) / np.where(tiny, 1.0, x))
            spectrum = spectrum * (np.exp(-rate * start) * average)
        dx, dy = shifts[i]
        if dx or dy:
            spectrum = spectrum * np.exp(-2j * np.pi * (kx * dx + ky * dy))
        contrast = np.fft.irfft2(spectrum, s=canvas)[
            offset_y : offset_y + ny, offset_x : offset_x + nx
        ]
        expected = mean_counts * np.maximum(1.0 + contrast, 0.0)
        if sensitivity is not None:
            expected = expected * sensitivity
        if shot_noise:
            counts = rng.poisson(expected)
            frames_out[i] = np.minimum(counts, np.iinfo(np.uint16).max)
        else:
            frames_out[i] = expected
    middle = n_frames // 2
    relative = shifts - shifts[middle]
    particles = [
        {
            "x_angstroms": float(x),
            "y_angstroms": float(y),
            "x_middle_frame_angstroms": float(x + shifts[middle, 0]),
            "y_middle_frame_angstroms": float(y + shifts[middle, 1]),
            "phi": float(a[0]),
            "theta": float(a[1]),
            "psi": float(a[2]),
            "defocus_1_angstroms": ctf.defocus_1_angstroms,
            "defocus_2_angstroms": ctf.defocus_2_angstroms,
            "astigmatism_angle_degrees": ctf.astigmatism_angle_degrees,
        }
        for (x, y), a in zip(positions, angles, strict=True)
    ]
    truth: dict[str, Any] = {
        "width_px": nx,
        "height_px": ny,
        "pixel_size_angstroms": float(pixel_size_angstroms),
        "ctf": _ctf_dict(ctf),
        "envelope_b_factor_angstroms2": float(envelope_b_factor_angstroms2),
        "specimen_b_factor_angstroms2": float(specimen_b_factor_angstroms2),
        "ice_thickness_angstroms": float(ice_thickness_angstroms),
        "n_frames": int(n_frames),
        "exposure_per_frame_e_per_a2": float(exposure_per_frame_e_per_a2),
        "pre_exposure_e_per_a2": float(pre_exposure_e_per_a2),
        "total_exposure_e_per_a2": float(
            pre_exposure_e_per_a2 + n_frames * exposure_per_frame_e_per_a2
        ),
        "mean_counts_per_pixel_per_frame": float(mean_counts),
        "radiation_damage": bool(radiation_damage),
        "shot_noise": bool(shot_noise),
        "gain_applied": sensitivity is not None,
        "middle_frame_index": middle,
        "frame_shifts_angstroms": shifts.tolist(),
        "frame_shifts_relative_to_middle_angstroms": relative.tolist(),
        "frame_shifts_px": (shifts / pixel_size_angstroms).tolist(),
        "particles": particles,
        "n_particles": len(particles),
        "model": {
            "name": model.name,
            "n_atoms": model.n_atoms,
            "radius_angstroms": model.radius_angstroms,
        },
        "conventions": dict(CONVENTIONS),
    }
    return frames_out, truth


def simulate_micrograph(
    model: AtomicModel,
    *,
    shape: tuple[int, int],
    pixel_size_angstroms: float,
    ctf: CTFParams,
    positions_angstroms: npt.ArrayLike,
    euler_degrees: npt.ArrayLike,
    exposure_e_per_a2: float,
    rng: np.random.Generator,
    pre_exposure_e_per_a2: float = 0.0,
    ice_thickness_angstroms: float = 300.0,
    envelope_b_factor_angstroms2: float = 40.0,
    specimen_b_factor_angstroms2: float = 20.0,
    detector_sensitivity_map: npt.ArrayLike | None = None,
    shot_noise: bool = True,
    radiation_damage: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Simulate a single (already motion-free) micrograph; see :func:`simulate_movie`.

    One frame of ``exposure_e_per_a2`` without drift. Returns ``(ny, nx)``
    counts (uint16 with shot noise, float32 expected counts without) and the
    truth dict (``n_frames = 1``).
    """
    frames, truth = simulate_movie(
        model,
        shape=shape,
        pixel_size_angstroms=pixel_size_angstroms,
        ctf=ctf,
        positions_angstroms=positions_angstroms,
        euler_degrees=euler_degrees,
        n_frames=1,
        exposure_per_frame_e_per_a2=exposure_e_per_a2,
        rng=rng,
        pre_exposure_e_per_a2=pre_exposure_e_per_a2,
        ice_thickness_angstroms=ice_thickness_angstroms,
        envelope_b_factor_angstroms2=envelope_b_factor_angstroms2,
        specimen_b_factor_angstroms2=specimen_b_factor_angstroms2,
        detector_sensitivity_map=detector_sensitivity_map,
        shot_noise=shot_noise,
        radiation_damage=radiation_damage,
    )
    return frames[0], truth


def realistic_beam_induced_motion(
    n_frames: int,
    *,
    rng: np.random.Generator,
    jump_angstroms: float = 12.0,
    jump_decay_frames: float = 2.0,
    stage_drift_angstroms_per_frame: float = 0.3,
    jitter_angstroms: float = 0.15,
) -> np.ndarray:
    """Return a beam-induced-motion trajectory with a fast initial jump, stage drift and jitter.

    Motion measured in real movies has three parts, all modelled here: a fast
    jump when the beam first hits the ice, whose speed decays over the first
    few frames (``jump_angstroms · (1 − exp(−t / τ))`` with ``t`` the
    mid-exposure time of each frame in frames and ``τ = jump_decay_frames``,
    along a random direction that turns by up to ±30° during the jump);
    a slow, constant stage drift in an independent random direction; and
    independent Gaussian jitter of ``jitter_angstroms`` per axis per frame.

    Parameters
    ----------
    n_frames
        Number of frames.
    rng
        Random generator (directions, jitter).
    jump_angstroms
        Length of the initial jump, Å.
    jump_decay_frames
        Time constant of the jump's decay, frames.
    stage_drift_angstroms_per_frame
        Speed of the stage drift, Å per frame.
    jitter_angstroms
        Standard deviation of the per-frame jitter, Å (sub-Ångström in practice).

    Returns
    -------
    numpy.ndarray
        ``(n_frames, 2)`` float64 ``(dx, dy)`` in Å, the specimen displacement
        of each frame relative to its position before the exposure (module
        docstring, item 5), like :func:`beam_induced_drift`.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    if jump_decay_frames <= 0:
        raise ValueError(f"jump_decay_frames must be positive, got {jump_decay_frames}")
    for name, value in (
        ("jump_angstroms", jump_angstroms),
        ("stage_drift_angstroms_per_frame", stage_drift_angstroms_per_frame),
        ("jitter_angstroms", jitter_angstroms),
    ):
        if value < 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
    times = np.arange(n_frames) + 0.5
    progress = 1.0 - np.exp(-times / jump_decay_frames)
    start_angle = rng.uniform(0.0, 2.0 * math.pi)
    turn = rng.uniform(-math.pi / 6, math.pi / 6)
    # Integrate the jump along a direction that turns smoothly with its progress.
    fine = np.linspace(0.0, 1.0, 513)
    angles = start_angle + turn * fine
    steps = np.column_stack([np.cos(angles), np.sin(angles)]) / (len(fine) - 1)
    path = np.vstack([[0.0, 0.0], np.cumsum(0.5 * (steps[1:] + steps[:-1]), axis=0)])
    jump = np.column_stack(
        [np.interp(progress, fine, path[:, 0]), np.interp(progress, fine, path[:, 1])]
    ) * jump_angstroms
    drift_angle = rng.uniform(0.0, 2.0 * math.pi)
    drift = np.outer(times * stage_drift_angstroms_per_frame,
                     [math.cos(drift_angle), math.sin(drift_angle)])
    shifts = jump + drift
    if jitter_angstroms > 0:
        shifts = shifts + rng.normal(0.0, jitter_angstroms, size=shifts.shape)
    return np.asarray(shifts)
