"""Point-group symmetry: cisTEM's groups Cn, Dn, T, O, I, asymmetric units, search grids.

Conventions
-----------
* A symmetry matrix ``S`` acts on map coordinates ``r = (x, y, z)`` (Å or
  voxels from the map centre, x along the fast axis): a map with the symmetry
  satisfies ``map(S r) = map(r)`` for every ``S`` of the group.
* Axes as in cisTEM (``SymmetryMatrix``): ``Cn`` about z; ``Dn`` = ``Cn`` plus
  a two-fold along x (and the other two-folds in the xy plane);
  ``T``: two-folds along x, y, z, three-folds along the body diagonals;
  ``O``: four-folds along x, y, z, three-folds along the body diagonals,
  two-folds along the face diagonals; ``I``: two-folds along x, y, z,
  three-folds along ``(±1, ±1, ±1)``, five-folds along ``(0, ±1, ±τ)`` and its
  cyclic permutations (``τ`` the golden ratio; one five-fold lies in the yz
  plane, 31.72° from z). cisTEM's alternatives: ``T2`` (its RELION-style
  tetrahedral frame: a three-fold along z, a two-fold in the yz plane 54.74°
  from z) and ``I2`` (Crowther: ``I`` turned 90° about z, a five-fold in the
  xz plane). Each group is closed under transposition, so the same set
  serves whether a program rotates by ``S`` or ``Sᵀ``.
* Orientations are Euler angles ``(φ, θ, ψ)`` in degrees with
  ``R = Rz(ψ) Ry(θ) Rz(φ)`` (:mod:`cistemd.kernels.rotation`). The projection
  direction in map coordinates is ``d = Rᵀ e_z = (sin θ cos φ, sin θ sin φ,
  cos θ)``. With symmetry ``G`` the orientations ``R`` and ``R S`` give the
  same image, and ``d`` is equivalent to ``Sᵀ d``.
* Asymmetric unit of directions: the points of the sphere at least as close to
  +z as to any other point of the orbit ``{S e_z}`` (the Dirichlet cell of the
  z axis) with ``φ ∈ [0°, 360°/k)``, where ``k`` is the order of the rotation
  about z in the group. This gives cisTEM's search ranges: ``Cn``: ``φ < 360/n``,
  all ``θ``; ``Dn``: ``φ < 360/n``, ``θ ≤ 90``; ``T``: ``φ < 180``,
  ``θ ≤ 54.74``; ``O``: ``φ < 90``, ``θ ≤ 54.74``; ``I``: ``φ < 180``,
  ``θ ≤ 31.72`` -- but cut exactly to ``1/|G|`` of the sphere for T, O and I
  (``T2``: ``φ < 120``, ``θ ≤ 70.53``; ``I2`` as ``I``).
"""

from __future__ import annotations

import functools
import re

import numpy as np
import numpy.typing as npt

from cistemd.kernels.rotation import (
    euler_to_matrix,
    matrix_to_euler,
    octahedral_rotation_matrices,
    rotation_about_axis,
)

__all__ = [
    "GOLDEN_RATIO",
    "asymmetric_unit_theta_max",
    "in_asymmetric_unit",
    "parse_symmetry",
    "projection_directions",
    "search_grid",
    "symmetrize_volume",
    "symmetry_matrices",
    "symmetry_order",
    "to_asymmetric_unit",
]

GOLDEN_RATIO = (1.0 + np.sqrt(5.0)) / 2.0

_SYMBOL = re.compile(r"^\s*(?:([CD])\s*(\d+)|([TI])\s*([12]?)|(O))\s*$", re.IGNORECASE)
_BOUNDARY_TOLERANCE = 1e-9


def parse_symmetry(symbol: str) -> tuple[str, int]:
    """Split a symmetry symbol into its letter and number.

    Parameters
    ----------
    symbol
        ``"C1"``, ``"C7"``, ``"D2"``, ``"T"``, ``"O"``, ``"I"`` or the
        alternative orientations ``"T2"``, ``"I2"`` (``"T1"``, ``"I1"`` are
        ``"T"``, ``"I"``); case and surrounding spaces are ignored.

    Returns
    -------
    tuple
        ``(letter, n)``: upper-case letter and the number (0 for T, O, I; 2
        for T2, I2).

    Raises
    ------
    ValueError
        If the symbol is not one of these forms or ``n < 1``.
    """
    match = _SYMBOL.match(symbol) if isinstance(symbol, str) else None
    if match is None:
        raise ValueError(
            f"invalid symmetry symbol {symbol!r}: use C<n> or D<n> (n >= 1), T, T2, O, I or I2"
        )
    if match.group(5):
        return "O", 0
    if match.group(3):
        return match.group(3).upper(), 2 if match.group(4) == "2" else 0
    n = int(match.group(2))
    if n < 1:
        raise ValueError(f"invalid symmetry symbol {symbol!r}: n must be at least 1")
    return match.group(1).upper(), n


def _close(generators: list[np.ndarray], expected: int) -> np.ndarray:
    """All products of ``generators``, identity first (breadth-first closure)."""
    elements = [np.eye(3)]
    frontier = [np.eye(3)]
    while frontier:
        new_frontier = []
        for g in frontier:
            for h in generators:
                candidate = h @ g
                stacked = np.asarray(elements)
                if not np.any(np.all(np.abs(stacked - candidate) < 1e-9, axis=(1, 2))):
                    elements.append(candidate)
                    new_frontier.append(candidate)
        frontier = new_frontier
        if len(elements) > expected:
            raise RuntimeError("symmetry group closure exceeded its order")
    if len(elements) != expected:
        raise RuntimeError(f"symmetry group closure gave {len(elements)}, expected {expected}")
    return np.asarray(elements)


def _clean(matrices: np.ndarray) -> np.ndarray:
    """Snap entries within 1e-12 of 0 or ±1 and re-orthonormalise the rest."""
    u, _, vt = np.linalg.svd(matrices)
    m = u @ vt
    for value in (0.0, 1.0, -1.0):
        m = np.where(np.abs(m - value) < 1e-12, value, m)
    return m + 0.0


@functools.lru_cache(maxsize=64)
def _matrices(letter: str, n: int) -> np.ndarray:
    z = (0.0, 0.0, 1.0)
    if letter == "C":
        mats = np.array([rotation_about_axis(z, 360.0 * i / n) for i in range(n)])
    elif letter == "D":
        cyclic = np.array([rotation_about_axis(z, 360.0 * i / n) for i in range(n)])
        two_fold_x = np.diag([1.0, -1.0, -1.0])
        mats = np.concatenate([cyclic, cyclic @ two_fold_x])
    elif letter == "T" and n == 2:  # three-fold on z, a two-fold in the yz plane
        mats = _close(
            [
                rotation_about_axis(z, 120.0),
                rotation_about_axis((0.0, np.sqrt(2.0 / 3.0), np.sqrt(1.0 / 3.0)), 180.0),
            ],
            12,
        )
    elif letter == "T":
        mats = _close(
            [rotation_about_axis(z, 180.0), rotation_about_axis((1.0, 1.0, 1.0), 120.0)], 12
        )
    elif letter == "O":
        mats = octahedral_rotation_matrices()
    else:  # "I": a five-fold along (0, 1, τ); "I2" (Crowther): along (1, 0, τ)
        five_fold = (1.0, 0.0, GOLDEN_RATIO) if n == 2 else (0.0, 1.0, GOLDEN_RATIO)
        mats = _close(
            [
                rotation_about_axis(z, 180.0),
                rotation_about_axis((1.0, 1.0, 1.0), 120.0),
                rotation_about_axis(five_fold, 72.0),
            ],
            60,
        )
    out = _clean(np.asarray(mats, dtype=np.float64))
    out.setflags(write=False)
    return out


def symmetry_matrices(symbol: str) -> np.ndarray:
    """Return the rotations of a point group in cisTEM's orientation.

    Parameters
    ----------
    symbol
        ``C<n>``, ``D<n>``, ``T``, ``O`` or ``I`` (case-insensitive).

    Returns
    -------
    numpy.ndarray
        float64 ``(n, 3, 3)`` proper rotations, identity first; ``n`` = 1..N
        for ``C<N>``, ``2N`` for ``D<N>``, 12, 24, 60 for T, O, I. For ``Dn`` the
        first ``n`` are the rotations about z (by ``360·i/n``), the next ``n``
        those times the two-fold about x. See the module docstring for axes.

    Raises
    ------
    ValueError
        On an invalid symbol.
    """
    letter, n = parse_symmetry(symbol)
    return _matrices(letter, n).copy()


def symmetry_order(symbol: str) -> int:
    """Return the number of rotations in the group named by ``symbol`` (1 for C1)."""
    letter, n = parse_symmetry(symbol)
    return {"C": n, "D": 2 * n, "T": 12, "O": 24, "I": 60}[letter]


@functools.lru_cache(maxsize=64)
def _unit_geometry(letter: str, n: int) -> tuple[np.ndarray, int]:
    """Other orbit points of e_z (unit vectors) and the order of the z-axis stabiliser."""
    mats = _matrices(letter, n)
    images = mats[:, :, 2]  # S e_z
    stabiliser = int(np.sum(images[:, 2] > 1.0 - 1e-9))
    others: list[np.ndarray] = []
    for p in images:
        if p[2] > 1.0 - 1e-9:
            continue
        if not any(np.allclose(p, q, atol=1e-9) for q in others):
            others.append(p)
    orbit = np.asarray(others, dtype=np.float64).reshape(-1, 3)
    orbit.setflags(write=False)
    return orbit, stabiliser


def asymmetric_unit_theta_max(symbol: str) -> float:
    """Return the largest ``θ`` (degrees) inside the asymmetric unit of directions.

    180 for ``Cn``, 90 for ``Dn``, ``arccos(1/√3) = 54.74`` for T and O,
    ``arctan(1/τ) = 31.72`` for I and I2 (cisTEM rounds these to 54.7 and
    31.7), ``arccos(1/3) = 70.53`` for T2.
    """
    letter, n = parse_symmetry(symbol)
    if letter == "C":
        return 180.0
    if letter == "D":
        return 90.0
    if letter == "T" and n == 2:
        return float(np.rad2deg(np.arccos(1.0 / 3.0)))
    if letter in ("T", "O"):
        return float(np.rad2deg(np.arccos(1.0 / np.sqrt(3.0))))
    return float(np.rad2deg(np.arctan(1.0 / GOLDEN_RATIO)))


def _directions(phi: np.ndarray, theta: np.ndarray) -> np.ndarray:
    p = np.deg2rad(phi)
    t = np.deg2rad(theta)
    return np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], axis=-1)


def _in_unit_vectors(d: np.ndarray, letter: str, n: int, tolerance: float) -> np.ndarray:
    orbit, k = _unit_geometry(letter, n)
    inside = np.ones(d.shape[:-1], dtype=bool)
    if orbit.shape[0]:
        inside &= d[..., 2] >= np.max(d @ orbit.T, axis=-1) - tolerance
    if k > 1:
        on_axis = np.hypot(d[..., 0], d[..., 1]) < 1e-12
        phi = np.rad2deg(np.arctan2(d[..., 1], d[..., 0]))
        phi = np.mod(phi, 360.0)
        phi = np.where(phi > 360.0 - 1e-9 - np.rad2deg(tolerance), 0.0, phi)
        wedge = 360.0 / k
        inside &= on_axis | (phi < wedge - 1e-9 + np.rad2deg(tolerance))
    return inside


def in_asymmetric_unit(
    phi: npt.ArrayLike,
    theta: npt.ArrayLike,
    symbol: str,
    *,
    tolerance: float = _BOUNDARY_TOLERANCE,
) -> np.ndarray:
    """Tell whether projection directions ``(φ, θ)`` lie in the asymmetric unit.

    Parameters
    ----------
    phi, theta
        Euler angles ``φ, θ`` in degrees (``ψ`` does not change the direction);
        broadcastable arrays or scalars.
    symbol
        Symmetry symbol (see :func:`symmetry_matrices`).
    tolerance
        Slack (in units of the direction's dot products, about radians) with
        which points on the unit's boundary count as inside; with 0 each
        boundary point belongs to one unit only up to rounding.

    Returns
    -------
    numpy.ndarray
        bool array of the broadcast shape: the unit described in the module
        docstring, ``φ`` taken modulo 360°.
    """
    letter, n = parse_symmetry(symbol)
    p, t = np.broadcast_arrays(np.asarray(phi, dtype=np.float64), np.asarray(theta, np.float64))
    return _in_unit_vectors(_directions(p, t), letter, n, tolerance)


def to_asymmetric_unit(
    phi: npt.ArrayLike, theta: npt.ArrayLike, psi: npt.ArrayLike, symbol: str
) -> tuple[np.ndarray, np.ndarray]:
    """Map orientations to their symmetry mates whose direction lies in the asymmetric unit.

    Parameters
    ----------
    phi, theta, psi
        Euler angles in degrees (ZYZ, cisTEM), broadcastable.
    symbol
        Symmetry symbol.

    Returns
    -------
    angles : numpy.ndarray
        float64 ``(..., 3)`` ``(φ, θ, ψ)`` of ``R S`` with ``φ ∈ [0, 360)``,
        ``θ ∈ [0, 180]``, ``ψ ∈ (−180, 180]``, where ``S`` is the first group
        element (in :func:`symmetry_matrices` order) that puts the direction
        ``Sᵀ d`` into the unit. The projection image is unchanged.
    index : numpy.ndarray
        int ``(...)``: the index of ``S`` in :func:`symmetry_matrices`.
    """
    letter, n = parse_symmetry(symbol)
    mats = _matrices(letter, n)
    r = euler_to_matrix(phi, theta, psi)
    shape = r.shape[:-2]
    r = r.reshape(-1, 3, 3)
    d = r[:, 2, :]  # Rᵀ e_z = third row of R
    # candidates[m, g] = S_gᵀ d_m
    candidates = np.einsum("gji,mj->mgi", mats, d)
    inside = _in_unit_vectors(candidates, letter, n, _BOUNDARY_TOLERANCE)
    best = np.argmax(inside, axis=1)
    missing = ~np.any(inside, axis=1)
    if np.any(missing):  # rounding at a boundary: take the mate closest to +z
        best[missing] = np.argmax(candidates[missing, :, 2], axis=1)
    rotated = r @ mats[best]
    angles = matrix_to_euler(rotated)
    angles[:, 0] = np.mod(angles[:, 0], 360.0)
    angles[:, 0] = np.where(angles[:, 0] >= 360.0 - 1e-9, 0.0, angles[:, 0])
    return angles.reshape(*shape, 3), best.reshape(shape)


def projection_directions(
    symbol: str,
    angular_step_degrees: float,
    *,
    theta_offset: float = 0.0,
) -> np.ndarray:
    """Return evenly spaced projection directions covering the asymmetric unit.

    Rings of constant ``θ`` from 0 to the unit's ``θ_max`` in steps of
    ``θ_max / round(θ_max / step)``; on each ring ``φ`` in steps of about
    ``step / sin θ``, rounded so that they divide the unit's ``φ`` range (the
    SPIDER "VOEA" scheme cisTEM's ``EulerSearch`` uses); for T, O and I,
    directions more than half a step outside the unit are dropped (those
    within half a step are kept so that no gap opens along the unit's edges).

    Parameters
    ----------
    symbol
        Symmetry symbol.
    angular_step_degrees
        Target spacing between neighbouring directions (> 0).
    theta_offset
        Fraction of a ``θ`` step in ``[0, 1)`` by which the rings are shifted
        (refinement draws it at random so that searches do not share one grid).

    Returns
    -------
    numpy.ndarray
        float64 ``(m, 2)``: columns ``φ, θ`` in degrees.
    """
    letter, n = parse_symmetry(symbol)
    if not np.isfinite(angular_step_degrees) or angular_step_degrees <= 0:
        raise ValueError(f"angular_step_degrees must be > 0, got {angular_step_degrees}")
    if not 0.0 <= theta_offset < 1.0:
        raise ValueError(f"theta_offset must be in [0, 1), got {theta_offset}")
    theta_max = asymmetric_unit_theta_max(symbol)
    _, k = _unit_geometry(letter, n)
    phi_max = 360.0 / k
    rings = max(1, int(theta_max / angular_step_degrees + 0.5))
    theta_step = theta_max / rings
    thetas = (np.arange(rings + 1) + theta_offset) * theta_step
    thetas = thetas[thetas <= theta_max + 1e-9]
    phis_all: list[np.ndarray] = []
    thetas_all: list[np.ndarray] = []
    for theta in thetas:
        sin_theta = np.sin(np.deg2rad(theta))
        if sin_theta < 1e-9:
            count = 1
        else:
            count = max(1, int(phi_max * sin_theta / angular_step_degrees + 0.5))
        phis = np.arange(count) * (phi_max / count)
        phis_all.append(phis)
        thetas_all.append(np.full(count, theta))
    phi_arr = np.concatenate(phis_all)
    theta_arr = np.concatenate(thetas_all)
    # Keep directions up to half a step outside the unit: their symmetry mates
    # fill the gaps the rings leave along the unit's slanted edges (T, O, I).
    margin = 0.5 * np.deg2rad(angular_step_degrees) if letter in ("T", "O", "I") else 1e-6
    keep = in_asymmetric_unit(phi_arr, theta_arr, symbol, tolerance=margin)
    return np.stack([phi_arr[keep], theta_arr[keep]], axis=-1)


def search_grid(
    symbol: str,
    angular_step_degrees: float,
    psi_step_degrees: float | None = None,
    *,
    psi_max_degrees: float = 360.0,
    theta_offset: float = 0.0,
    psi_start_degrees: float = 0.0,
) -> np.ndarray:
    """Return a global-search grid of orientations over the asymmetric unit.

    Parameters
    ----------
    symbol
        Symmetry symbol.
    angular_step_degrees
        Spacing of projection directions (see :func:`projection_directions`).
    psi_step_degrees
        In-plane step; defaults to ``angular_step_degrees``. The ``ψ`` range is
        divided into ``round(psi_max / step)`` equal steps.
    psi_max_degrees
        Range of ``ψ`` (360 unless the in-plane search is restricted).
    theta_offset
        Fraction of a ``θ`` step by which the rings are shifted, in ``[0, 1)``.
    psi_start_degrees
        First ``ψ`` (cisTEM draws a random start).

    Returns
    -------
    numpy.ndarray
        float64 ``(m · p, 3)``: ``(φ, θ, ψ)`` in degrees, direction-major (all
        ``ψ`` of the first direction first).
    """
    step = angular_step_degrees if psi_step_degrees is None else psi_step_degrees
    if not np.isfinite(step) or step <= 0:
        raise ValueError(f"psi_step_degrees must be > 0, got {psi_step_degrees}")
    if not np.isfinite(psi_max_degrees) or psi_max_degrees <= 0:
        raise ValueError(f"psi_max_degrees must be > 0, got {psi_max_degrees}")
    directions = projection_directions(symbol, angular_step_degrees, theta_offset=theta_offset)
    count = max(1, int(psi_max_degrees / step + 0.5))
    psis = psi_start_degrees + np.arange(count) * (psi_max_degrees / count)
    out = np.empty((directions.shape[0], count, 3), dtype=np.float64)
    out[:, :, 0] = directions[:, None, 0]
    out[:, :, 1] = directions[:, None, 1]
    out[:, :, 2] = psis[None, :]
    return out.reshape(-1, 3)


def symmetrize_volume(volume: npt.ArrayLike, symbol: str, *, order: int = 1) -> np.ndarray:
    """Average a map over the rotations of a group about the box centre.

    Parameters
    ----------
    volume
        ``(nz, ny, nx)`` map, rotation centre at ``(nz // 2, ny // 2, nx // 2)``;
        map coordinates ``(x, y, z)`` are the reversed array axes.
    symbol
        Symmetry symbol.
    order
        Spline order of the interpolation (1 = trilinear, 3 = cubic).

    Returns
    -------
    numpy.ndarray
        float32 map ``mean_S map(S r)``; values from outside the box are 0.
    """
    import scipy.ndimage as ndi

    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3-D, got shape {vol.shape}")
    mats = symmetry_matrices(symbol)
    if mats.shape[0] == 1:
        return vol.copy()
    nz, ny, nx = vol.shape
    centre = np.array([nx // 2, ny // 2, nz // 2], dtype=np.float64)
    zz, yy, xx = np.meshgrid(
        np.arange(nz) - centre[2],
        np.arange(ny) - centre[1],
        np.arange(nx) - centre[0],
        indexing="ij",
    )
    points = np.stack([xx.ravel(), yy.ravel(), zz.ravel()]).astype(np.float64)
    # Spline coefficients once, not once per rotation.
    coefficients = ndi.spline_filter(vol, order=order, mode="constant") if order > 1 else vol
    total = np.zeros(vol.size, dtype=np.float64)
    for s in mats:
        moved = s @ points + centre[:, None]
        total += ndi.map_coordinates(
            coefficients, moved[::-1], order=order, mode="constant", cval=0.0, prefilter=False
        )
    return (total / mats.shape[0]).reshape(vol.shape).astype(np.float32)
