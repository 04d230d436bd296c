"""Rotations: Euler angles in the cisTEM/Frealign ZYZ convention, and group helpers.

Convention
----------
Angles ``(φ, θ, ψ)`` are in degrees (cisTEM ``.star`` columns ``AnglePhi``,
``AngleTheta``, ``AnglePsi``). The rotation matrix is::

    R(φ, θ, ψ) = Rz(ψ) · Ry(θ) · Rz(φ)

    Rz(a) = [[ cos a, sin a, 0],      Ry(a) = [[cos a, 0, −sin a],
             [−sin a, cos a, 0],               [    0, 1,      0],
             [     0,     0, 1]]               [sin a, 0,  cos a]]

i.e., written out (c = cos, s = sin)::

    R = [[ cψ cθ cφ − sψ sφ,   cψ cθ sφ + sψ cφ,  −cψ sθ],
         [−sψ cθ cφ − cψ sφ,  −sψ cθ sφ + cψ cφ,   sψ sθ],
         [          sθ cφ,              sθ sφ,      cθ ]]

Meaning (how a particle image is formed from a map in these angles):

* a point ``r = (x, y, z)`` of the map (Å, relative to the map centre, x
  along the map's fast axis) lands in the particle image at
  ``(x', y') = (R r)[:2]`` relative to the particle centre; the projection
  integrates along ``z' = (R r)[2]``. So ``image(x', y') = ∫ map(Rᵀ (x', y', z')) dz'``.
* In Fourier space the image's transform at ``(kx, ky)`` is the map's 3-D
  transform at ``Rᵀ (kx, ky, 0)`` -- ``Rᵀ`` is the matrix cisTEM's
  ``AnglesAndShifts::euler_matrix`` holds and ``ExtractSlice`` applies.
* ``R`` equals RELION's ``Euler_angles2matrix(rot=φ, tilt=θ, psi=ψ)``, so the
  angles carry over unchanged between cisTEM and RELION (shifts do not:
  cisTEM ``x_shift = −rlnOriginXAngst``).

``θ`` is the tilt of the projection direction from +z, ``φ`` its azimuth, ``ψ``
the final in-plane rotation.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "euler_to_matrix",
    "matrix_to_euler",
    "octahedral_rotation_matrices",
    "random_orientations",
    "rotation_about_axis",
]

_GIMBAL_SIN_THETA = 1e-12


def euler_to_matrix(phi: npt.ArrayLike, theta: npt.ArrayLike, psi: npt.ArrayLike) -> np.ndarray:
    """Return ``R(φ, θ, ψ)`` (module docstring) for angles in degrees.

    Parameters
    ----------
    phi, theta, psi
        Euler angles in degrees; scalars or arrays broadcastable together.

    Returns
    -------
    numpy.ndarray
        float64, shape ``broadcast(phi, theta, psi).shape + (3, 3)``: ``(3, 3)``
        for scalars, ``(n, 3, 3)`` for length-``n`` arrays.
    """
    p, t, s = np.broadcast_arrays(
        np.deg2rad(np.asarray(phi, dtype=np.float64)),
        np.deg2rad(np.asarray(theta, dtype=np.float64)),
        np.deg2rad(np.asarray(psi, dtype=np.float64)),
    )
    cp, sp = np.cos(p), np.sin(p)
    ct, st = np.cos(t), np.sin(t)
    cs, ss = np.cos(s), np.sin(s)
    out = np.empty((*p.shape, 3, 3), dtype=np.float64)
    out[..., 0, 0] = cs * ct * cp - ss * sp
    out[..., 0, 1] = cs * ct * sp + ss * cp
    out[..., 0, 2] = -cs * st
    out[..., 1, 0] = -ss * ct * cp - cs * sp
    out[..., 1, 1] = -ss * ct * sp + cs * cp
    out[..., 1, 2] = ss * st
    out[..., 2, 0] = st * cp
    out[..., 2, 1] = st * sp
    out[..., 2, 2] = ct
    return out


def _wrap_degrees(angle: np.ndarray) -> np.ndarray:
    """Map degrees to (−180, 180]."""
    wrapped = np.mod(angle + 180.0, 360.0) - 180.0
    return np.where(wrapped == -180.0, 180.0, wrapped)


def matrix_to_euler(matrices: npt.ArrayLike) -> np.ndarray:
    """Return the Euler angles ``(φ, θ, ψ)`` of rotation matrices (see :func:`euler_to_matrix`).

    Parameters
    ----------
    matrices
        ``(3, 3)`` or ``(..., 3, 3)`` proper rotation matrices.

    Returns
    -------
    numpy.ndarray
        float64 ``(..., 3)``: columns ``φ, θ, ψ`` in degrees with
        ``θ ∈ [0, 180]`` and ``φ, ψ ∈ (−180, 180]``. When ``θ`` is 0 or 180
        (only ``φ ± ψ`` is defined) ``ψ = 0`` is returned.
    """
    m = np.asarray(matrices, dtype=np.float64)
    if m.shape[-2:] != (3, 3):
        raise ValueError(f"matrices must have shape (..., 3, 3), got {m.shape}")
    sin_theta = np.hypot(m[..., 2, 0], m[..., 2, 1])
    theta = np.arctan2(sin_theta, m[..., 2, 2])  # accurate near 0 and 180, unlike arccos
    regular = sin_theta > _GIMBAL_SIN_THETA
    phi = np.arctan2(m[..., 2, 1], m[..., 2, 0])
    psi = np.arctan2(m[..., 1, 2], -m[..., 0, 2])
    # Degenerate: R = Rz(ψ ± φ) about z (θ = 0) or with a flip (θ = 180); take ψ = 0.
    upright = m[..., 2, 2] > 0
    phi_degenerate = np.where(
        upright,
        np.arctan2(m[..., 0, 1], m[..., 0, 0]),
        np.arctan2(-m[..., 0, 1], -m[..., 0, 0]),
    )
    phi = np.where(regular, phi, phi_degenerate)
    psi = np.where(regular, psi, 0.0)
    theta = np.where(regular, theta, np.where(upright, 0.0, np.pi))
    out = np.stack([np.rad2deg(phi), np.rad2deg(theta), np.rad2deg(psi)], axis=-1)
    out[..., 0] = _wrap_degrees(out[..., 0])
    out[..., 2] = _wrap_degrees(out[..., 2])
    return out


def random_orientations(n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` orientations uniformly (Haar measure) on SO(3).

    For ``R = Rz(ψ) Ry(θ) Rz(φ)`` the Haar measure is ``sin θ dφ dθ dψ``, so
    ``φ, ψ`` are uniform and ``cos θ`` is uniform in [−1, 1].

    Returns
    -------
    numpy.ndarray
        float64 ``(n, 3)``: columns ``φ, θ, ψ`` in degrees, ``φ, ψ ∈ [0, 360)``,
        ``θ ∈ [0, 180]``.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    phi = rng.uniform(0.0, 360.0, n)
    psi = rng.uniform(0.0, 360.0, n)
    theta = np.rad2deg(np.arccos(rng.uniform(-1.0, 1.0, n)))
    return np.stack([phi, theta, psi], axis=-1)


def rotation_about_axis(axis: npt.ArrayLike, angle_degrees: float) -> np.ndarray:
    """Return the active (right-handed) rotation by ``angle_degrees`` about ``axis``, ``(3, 3)``.

    ``R @ v`` rotates the vector ``v`` counter-clockwise when looking down
    ``axis`` towards the origin (Rodrigues' formula).
    """
    u = np.asarray(axis, dtype=np.float64)
    norm = np.linalg.norm(u)
    if u.shape != (3,) or norm == 0:
        raise ValueError(f"axis must be a non-zero 3-vector, got {axis!r}")
    u = u / norm
    a = np.deg2rad(angle_degrees)
    cross = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    return np.cos(a) * np.eye(3) + np.sin(a) * cross + (1.0 - np.cos(a)) * np.outer(u, u)


def _close_group(generators: list[np.ndarray], expected: int) -> np.ndarray:
    elements = [np.eye(3)]
    frontier = [np.eye(3)]
    while frontier:
        new_frontier = []
        for g in frontier:
            for h in generators:
                candidate = h @ g
                if not any(np.allclose(candidate, e, atol=1e-9) for e in elements):
                    elements.append(candidate)
                    new_frontier.append(candidate)
        frontier = new_frontier
        if len(elements) > expected:
            raise RuntimeError("group closure exceeded its expected order")
    if len(elements) != expected:
        raise RuntimeError(f"group closure gave {len(elements)} elements, expected {expected}")
    # Snap to exact values (entries of O are 0 and ±1).
    return np.round(np.asarray(elements), 12) + 0.0


def octahedral_rotation_matrices() -> np.ndarray:
    """Return the 24 rotations of the octahedral group O (432), ``(24, 3, 3)``.

    Axes as in cisTEM's "O" symmetry: four-folds along x, y, z; three-folds
    along the body diagonals; two-folds along the face diagonals. The first
    element is the identity.
    """
    four_fold_z = rotation_about_axis((0.0, 0.0, 1.0), 90.0)
    three_fold = rotation_about_axis((1.0, 1.0, 1.0), 120.0)
    return _close_group([four_fold_z, three_fold], 24)
