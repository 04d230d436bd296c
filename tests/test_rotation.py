"""Euler angles in the cisTEM/Frealign ZYZ convention."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from cistemd.kernels.rotation import (
    euler_to_matrix,
    matrix_to_euler,
    octahedral_rotation_matrices,
    random_orientations,
    rotation_about_axis,
)


def cistem_matrix(phi, theta, psi):
    """cisTEM's RotationMatrix::SetToEulerRotation (forward), written out from its formula."""
    cp, sp = math.cos(math.radians(phi)), math.sin(math.radians(phi))
    ct, st_ = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    cs, ss = math.cos(math.radians(psi)), math.sin(math.radians(psi))
    return np.array(
        [
            [cp * ct * cs - sp * ss, sp * ct * cs + cp * ss, -st_ * cs],
            [-cp * ct * ss - sp * cs, -sp * ct * ss + cp * cs, st_ * ss],
            [st_ * cp, st_ * sp, ct],
        ]
    )


@pytest.mark.parametrize(
    "angles", [(0, 0, 0), (30, 40, 50), (-120, 170, 10), (359, 1, -45), (90, 90, 90)]
)
def test_matches_cistem_formula(angles):
    np.testing.assert_allclose(euler_to_matrix(*angles), cistem_matrix(*angles), atol=1e-14)


def test_equals_transpose_of_scipy_intrinsic_zyz():
    rng = np.random.default_rng(0)
    angles = rng.uniform(-180, 180, size=(20, 3))
    ours = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    scipy = Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix()
    np.testing.assert_allclose(ours, np.transpose(scipy, (0, 2, 1)), atol=1e-12)


def test_known_matrices():
    np.testing.assert_allclose(euler_to_matrix(0, 0, 0), np.eye(3), atol=1e-15)
    # phi alone: Rz(phi) = [[c, s, 0], [-s, c, 0], [0, 0, 1]].
    np.testing.assert_allclose(
        euler_to_matrix(90, 0, 0), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], atol=1e-15
    )
    np.testing.assert_allclose(
        euler_to_matrix(0, 90, 0), [[0, 0, -1], [0, 1, 0], [1, 0, 0]], atol=1e-15
    )
    # phi and psi add when theta = 0.
    np.testing.assert_allclose(euler_to_matrix(20, 0, 25), euler_to_matrix(45, 0, 0), atol=1e-15)


def test_projection_geometry_of_points():
    # A map point r lands in the image at (R r)[:2].
    x_axis = np.array([10.0, 0.0, 0.0])
    z_axis = np.array([0.0, 0.0, 10.0])
    np.testing.assert_allclose((euler_to_matrix(90, 0, 0) @ x_axis)[:2], [0, -10], atol=1e-12)
    np.testing.assert_allclose((euler_to_matrix(0, 0, 90) @ x_axis)[:2], [0, -10], atol=1e-12)
    np.testing.assert_allclose((euler_to_matrix(0, 90, 0) @ z_axis)[:2], [-10, 0], atol=1e-12)
    # The projection direction in the map frame is R^T (0, 0, 1): (sin t cos p, sin t sin p, cos t).
    r = euler_to_matrix(30, 60, 77)
    direction = r.T @ [0, 0, 1]
    t, p = math.radians(60), math.radians(30)
    np.testing.assert_allclose(
        direction, [math.sin(t) * math.cos(p), math.sin(t) * math.sin(p), math.cos(t)]
    )


def test_shapes_and_broadcasting():
    assert euler_to_matrix(1.0, 2.0, 3.0).shape == (3, 3)
    assert euler_to_matrix([1.0, 2.0], 3.0, [4.0, 5.0]).shape == (2, 3, 3)
    assert matrix_to_euler(np.eye(3)).shape == (3,)
    assert matrix_to_euler(np.stack([np.eye(3)] * 4)).shape == (4, 3)
    with pytest.raises(ValueError):
        matrix_to_euler(np.eye(4))


@settings(max_examples=60, deadline=None)
@given(st.floats(-720, 720), st.floats(0, 180), st.floats(-720, 720))
def test_orthonormal_and_round_trip(phi, theta, psi):
    r = euler_to_matrix(phi, theta, psi)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-12)
    back = matrix_to_euler(r)
    assert 0.0 <= back[1] <= 180.0
    assert -180.0 < back[0] <= 180.0 and -180.0 < back[2] <= 180.0
    np.testing.assert_allclose(euler_to_matrix(*back), r, atol=1e-9)


@pytest.mark.parametrize("theta", [0.0, 180.0])
def test_round_trip_at_gimbal_lock(theta):
    r = euler_to_matrix(33.0, theta, -71.0)
    back = matrix_to_euler(r)
    assert back[1] == theta and back[2] == 0.0
    np.testing.assert_allclose(euler_to_matrix(*back), r, atol=1e-12)


def test_round_trip_recovers_regular_angles_exactly():
    angles = np.array([[10.0, 20.0, 30.0], [-170.0, 100.0, 45.0], [180.0, 90.0, -90.0]])
    back = matrix_to_euler(euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2]))
    np.testing.assert_allclose(back, angles, atol=1e-10)


def test_random_orientations_are_uniform_on_so3():
    rng = np.random.default_rng(42)
    n = 20000
    angles = random_orientations(n, rng)
    assert angles.shape == (n, 3)
    assert np.all((angles[:, 1] >= 0) & (angles[:, 1] <= 180))
    matrices = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    # Haar measure: E[R] = 0 and E[R_ij^2] = 1/3 for every entry.
    tolerance = 5.0 / math.sqrt(n)
    assert np.abs(matrices.mean(axis=0)).max() < tolerance
    np.testing.assert_allclose((matrices**2).mean(axis=0), 1 / 3, atol=3 * tolerance)
    # Uniform projection directions: cos(theta) is uniform on [-1, 1].
    cos_theta = np.cos(np.radians(angles[:, 1]))
    counts, _ = np.histogram(cos_theta, bins=10, range=(-1, 1))
    assert counts.min() > 0.9 * n / 10 and counts.max() < 1.1 * n / 10
    # Invariance: R0 @ R has the same distribution (compare the trace's histogram).
    r0 = euler_to_matrix(10, 70, -40)
    trace = np.trace(matrices, axis1=1, axis2=2)
    trace_rotated = np.trace(r0 @ matrices, axis1=1, axis2=2)
    assert abs(trace.mean() - trace_rotated.mean()) < 0.05


def test_rotation_about_axis_is_active_right_handed():
    r = rotation_about_axis((0, 0, 1), 90)
    np.testing.assert_allclose(r @ [1, 0, 0], [0, 1, 0], atol=1e-15)
    with pytest.raises(ValueError):
        rotation_about_axis((0, 0, 0), 10)


def test_octahedral_group():
    group = octahedral_rotation_matrices()
    assert group.shape == (24, 3, 3)
    np.testing.assert_array_equal(group[0], np.eye(3))
    for g in group:
        np.testing.assert_allclose(g @ g.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(g) == pytest.approx(1.0)
    flat = {tuple(np.round(g, 6).ravel()) for g in group}
    assert len(flat) == 24
    for a in group[::5]:
        for b in group[::3]:
            assert tuple(np.round(a @ b, 6).ravel()) in flat
    # Four-folds along the axes, three-folds along body diagonals.
    assert tuple(np.round(rotation_about_axis((1, 0, 0), 90), 6).ravel()) in flat
    assert tuple(np.round(rotation_about_axis((1, -1, 1), 120), 6).ravel()) in flat
