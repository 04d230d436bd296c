"""Point groups, asymmetric units and search grids (cistemd.kernels.symmetry)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cistemd.kernels.rotation import (
    euler_to_matrix,
    octahedral_rotation_matrices,
    random_orientations,
    rotation_about_axis,
)
from cistemd.kernels.symmetry import (
    GOLDEN_RATIO,
    asymmetric_unit_theta_max,
    in_asymmetric_unit,
    parse_symmetry,
    projection_directions,
    search_grid,
    symmetrize_volume,
    symmetry_matrices,
    symmetry_order,
    to_asymmetric_unit,
)

GROUPS = [
    ("C1", 1),
    ("C2", 2),
    ("C7", 7),
    ("D1", 2),
    ("D2", 4),
    ("D5", 10),
    ("T", 12),
    ("T2", 12),
    ("O", 24),
    ("I", 60),
    ("I2", 60),
]


def contains(group: np.ndarray, matrix: np.ndarray, atol: float = 1e-9) -> bool:
    return bool(np.any(np.all(np.abs(group - matrix) < atol, axis=(1, 2))))


def same_set(a: np.ndarray, b: np.ndarray, atol: float = 1e-6) -> bool:
    return len(a) == len(b) and all(contains(b, m, atol) for m in a)


@pytest.mark.parametrize(("symbol", "order"), GROUPS)
def test_groups_are_groups(symbol, order):
    g = symmetry_matrices(symbol)
    assert g.shape == (order, 3, 3)
    assert g.dtype == np.float64
    assert symmetry_order(symbol) == order
    np.testing.assert_allclose(g[0], np.eye(3), atol=0)
    # proper rotations
    np.testing.assert_allclose(
        g @ np.transpose(g, (0, 2, 1)), np.broadcast_to(np.eye(3), g.shape), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(g), 1.0, atol=1e-12)
    # distinct, closed under products and inverses
    for i in range(order):
        assert not contains(np.delete(g, i, axis=0), g[i])
        assert contains(g, g[i].T)
    products = np.einsum("aij,bjk->abik", g, g).reshape(-1, 3, 3)
    for m in products:
        assert contains(g, m)


def test_cyclic_and_dihedral_axes():
    c4 = symmetry_matrices("C4")
    assert contains(c4, rotation_about_axis((0, 0, 1), 90))
    assert np.allclose(c4[:, 2, 2], 1.0)  # every element fixes z
    d3 = symmetry_matrices("D3")
    two_fold_x = np.diag([1.0, -1.0, -1.0])
    assert contains(d3, two_fold_x)  # cisTEM: the D two-fold along x
    np.testing.assert_allclose(d3[:3], symmetry_matrices("C3"), atol=1e-15)
    assert not contains(symmetry_matrices("D2"), rotation_about_axis((1, 1, 0), 180))


def test_octahedral_matches_rotation_module():
    assert same_set(symmetry_matrices("O"), octahedral_rotation_matrices(), atol=1e-12)
    # O contains T
    assert all(contains(symmetry_matrices("O"), m) for m in symmetry_matrices("T"))


def test_tetrahedral_axes():
    t = symmetry_matrices("T")
    for axis in [(1, 0, 0), (0, 1, 0), (0, 0, 1)]:
        assert contains(t, rotation_about_axis(axis, 180))
        assert not contains(t, rotation_about_axis(axis, 90))
    assert contains(t, rotation_about_axis((1, 1, 1), 120))
    assert contains(t, rotation_about_axis((1, -1, -1), 120))


def test_icosahedral_axes_match_cistem():
    g = symmetry_matrices("I")
    for axis in [(1, 0, 0), (0, 1, 0), (0, 0, 1)]:
        assert contains(g, rotation_about_axis(axis, 180))
    assert contains(g, rotation_about_axis((1, 1, 1), 120))
    for axis in [(0, 1, GOLDEN_RATIO), (GOLDEN_RATIO, 0, 1), (1, GOLDEN_RATIO, 0)]:
        assert contains(g, rotation_about_axis(axis, 72))
    assert not contains(g, rotation_about_axis((0, GOLDEN_RATIO, 1), 72))
    # A few of cisTEM's SymmetryMatrix "I" entries (printed to 6 decimals).
    cistem_entries = [
        [-0.5, -0.309017, -0.809017, -0.309017, -0.809017, 0.5, -0.809017, 0.5, 0.309017],
        [0.809017, -0.5, 0.309017, 0.5, 0.309017, -0.809017, 0.309017, 0.809017, 0.5],
        [0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    ]
    for entry in cistem_entries:
        m = np.reshape(entry, (3, 3))
        assert contains(g, m, atol=1e-5) and contains(g, m.T, atol=1e-5)


def test_alternative_orientations_match_cistem():
    t2 = symmetry_matrices("T2")
    assert contains(t2, rotation_about_axis((0, 0, 1), 120))  # three-fold on z
    assert not same_set(t2, symmetry_matrices("T"))
    i2 = symmetry_matrices("I2")
    assert contains(i2, rotation_about_axis((1, 0, GOLDEN_RATIO), 72))
    quarter = rotation_about_axis((0, 0, 1), 90)
    assert same_set(i2, quarter @ symmetry_matrices("I") @ quarter.T)
    assert same_set(symmetry_matrices("I1"), symmetry_matrices("I"))
    # entries of cisTEM's SymmetryMatrix "T2" and "I2" (6 decimals)
    for group, entry in [
        (t2, [-0.500005, -0.288678, -0.816495, 0.288671, 0.833331, -0.471411, 0.816493,
              -0.471410, -0.333332]),
        (t2, [-1.0, 0.0, 0.0, 0.0, 0.333330, 0.942810, 0.0, 0.942810, -0.333330]),
        (i2, [0.5, -0.809017, -0.309017, -0.809017, -0.309017, -0.5, 0.309017, 0.5,
              -0.809017]),
    ]:  # fmt: skip
        m = np.reshape(entry, (3, 3))
        assert contains(group, m, atol=1e-5) and contains(group, m.T, atol=1e-5)


@pytest.mark.parametrize(
    "bad", ["", "C", "C0", "D0", "X3", "T3", "I3", "O2", "C-2", "Cn", "II", None, 3]
)
def test_bad_symbols_raise(bad):
    with pytest.raises(ValueError):
        symmetry_matrices(bad)


def test_symbol_parsing_is_lenient_about_case():
    assert parse_symmetry(" c3 ") == ("C", 3)
    assert parse_symmetry("i") == ("I", 0)
    assert same_set(symmetry_matrices("d6"), symmetry_matrices("D6"))


@pytest.mark.parametrize("symbol", ["C1", "C3", "D2", "D7", "T", "T2", "O", "I", "I2"])
def test_asymmetric_unit_times_group_covers_sphere_once(symbol):
    rng = np.random.default_rng(1)
    v = rng.normal(size=(4000, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    g = symmetry_matrices(symbol)
    images = np.einsum("gij,nj->ngi", g, v)  # S v for every S: the orbit of v
    theta = np.rad2deg(np.arccos(np.clip(images[..., 2], -1, 1)))
    phi = np.rad2deg(np.arctan2(images[..., 1], images[..., 0]))
    inside = in_asymmetric_unit(phi, theta, symbol, tolerance=0.0)
    np.testing.assert_array_equal(inside.sum(axis=1), 1)


@pytest.mark.parametrize(
    ("symbol", "theta_max", "phi_max"),
    [
        ("C4", 180.0, 90.0),
        ("D3", 90.0, 120.0),
        ("T", 54.7356, 180.0),
        ("T2", 70.5288, 120.0),
        ("O", 54.7356, 90.0),
        ("I", 31.7175, 180.0),
        ("I2", 31.7175, 180.0),
    ],
)
def test_unit_ranges_match_cistem_search_ranges(symbol, theta_max, phi_max):
    assert asymmetric_unit_theta_max(symbol) == pytest.approx(theta_max, abs=1e-3)
    dirs = projection_directions(symbol, 2.0)
    assert dirs[:, 1].max() <= theta_max + 1e-3
    assert dirs[:, 0].min() >= 0 and dirs[:, 0].max() < phi_max
    # just beyond the ranges is outside
    assert not in_asymmetric_unit(phi_max + 1.0, min(theta_max, 90.0) / 2, symbol)
    if theta_max < 180:
        assert not in_asymmetric_unit(phi_max / 2, theta_max + 1.0, symbol)


@settings(max_examples=30, deadline=None)
@given(
    symbol=st.sampled_from(["C2", "C5", "D2", "D6", "T", "T2", "O", "I", "I2"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_to_asymmetric_unit_preserves_the_image(symbol, seed):
    angles = random_orientations(50, np.random.default_rng(seed))
    mapped, index = to_asymmetric_unit(angles[:, 0], angles[:, 1], angles[:, 2], symbol)
    assert mapped.shape == (50, 3) and index.shape == (50,)
    assert np.all(in_asymmetric_unit(mapped[:, 0], mapped[:, 1], symbol, tolerance=1e-6))
    g = symmetry_matrices(symbol)
    r = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    r_mapped = euler_to_matrix(mapped[:, 0], mapped[:, 1], mapped[:, 2])
    # R' = R S with S in the group: same projection of a symmetric map
    np.testing.assert_allclose(r_mapped, r @ g[index], atol=1e-9)


def test_to_asymmetric_unit_is_identity_inside():
    dirs = projection_directions("O", 7.0)
    mapped, index = to_asymmetric_unit(dirs[:, 0], dirs[:, 1], 30.0, "O")
    interior = in_asymmetric_unit(dirs[:, 0], dirs[:, 1], "O", tolerance=-1e-6)
    interior &= dirs[:, 1] > 0  # at the pole only φ + ψ is defined
    assert np.all(index[interior] == 0)
    np.testing.assert_allclose(mapped[interior, :2], dirs[interior], atol=1e-9)


@pytest.mark.parametrize("symbol", ["C1", "C6", "D4", "T", "T2", "O", "I", "I2"])
def test_grid_is_even_and_covers_the_unit(symbol):
    step = 6.0
    dirs = projection_directions(symbol, step)
    # inside the unit, or (T, O, I) within half a step of it
    margin = np.deg2rad(step) / 2 if symbol[0] in "TOI" else 1e-6
    assert np.all(in_asymmetric_unit(dirs[:, 0], dirs[:, 1], symbol, tolerance=margin))
    # Roughly one direction per step² of the unit's solid angle.
    expected = 4 * np.pi / symmetry_order(symbol) / np.deg2rad(step) ** 2
    assert 0.9 * expected <= len(dirs) <= 1.6 * expected + 3
    # Every direction on the sphere is within 0.85 step of a symmetry mate of the grid.
    rng = np.random.default_rng(2)
    v = rng.normal(size=(3000, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    p, t = np.deg2rad(dirs[:, 0]), np.deg2rad(dirs[:, 1])
    grid = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], axis=1)
    grid = np.einsum("gij,nj->gni", symmetry_matrices(symbol), grid).reshape(-1, 3)
    nearest = np.rad2deg(np.arccos(np.clip(np.max(v @ grid.T, axis=1), -1, 1)))
    assert nearest.max() < 0.85 * step


def test_search_grid_psi_and_offsets():
    grid = search_grid("C1", 30.0, 90.0)
    dirs = projection_directions("C1", 30.0)
    assert grid.shape == (len(dirs) * 4, 3)
    np.testing.assert_allclose(grid[:4, 2], [0, 90, 180, 270])
    shifted = projection_directions("D2", 10.0, theta_offset=0.5)
    assert np.isclose(shifted[:, 1].min(), 5.0)
    with pytest.raises(ValueError):
        projection_directions("C1", 0.0)
    with pytest.raises(ValueError):
        search_grid("C1", 10.0, -1.0)


def _blob_map(points: np.ndarray, size: int = 32, sigma: float = 1.5) -> np.ndarray:
    c = size // 2
    z, y, x = np.meshgrid(*(np.arange(size) - c,) * 3, indexing="ij")
    vol = np.zeros((size, size, size))
    for px, py, pz in points:
        vol += np.exp(-((x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2) / (2 * sigma**2))
    return vol


@pytest.mark.parametrize("symbol", ["C3", "D2", "O", "I"])
def test_symmetric_maps_are_invariant(symbol):
    rng = np.random.default_rng(3)
    g = symmetry_matrices(symbol)
    seeds = rng.uniform(-6, 6, size=(2, 3))
    symmetric = _blob_map(np.concatenate([seeds @ s.T for s in g]))
    # The analytic symmetric map is a fixed point of symmetrisation ...
    sym = symmetrize_volume(symmetric, symbol, order=3)
    inner = np.s_[6:-6, 6:-6, 6:-6]
    err = np.abs(sym - symmetric)[inner].max() / symmetric.max()
    assert err < 0.02
    # ... and an asymmetric map is not, but becomes one.
    asym = _blob_map(seeds)
    once = symmetrize_volume(asym, symbol, order=3)
    assert np.abs(once - asym).max() > 0.3 * asym.max()
    twice = symmetrize_volume(once, symbol, order=3)
    assert np.abs(twice - once)[inner].max() < 0.02 * once.max()


def test_symmetrize_c1_is_copy():
    vol = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    out = symmetrize_volume(vol, "C1")
    np.testing.assert_array_equal(out, vol)
    assert out is not vol
