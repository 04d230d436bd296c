"""Masks: spherical shells, auto-masks, user masks (cistemd.kernels.masks)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate

from cistemd.kernels.masks import (
    apply_mask,
    auto_mask,
    cosine_edge,
    lowpass_volume,
    mask_volume_voxels,
    soft_edge_mask,
    spherical_mask,
    user_mask,
)


def radius_grid(n):
    axis = np.arange(n) - n // 2
    return np.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2)


def analytic_volume(outer, inner, edge):
    """∫ 4π r² w(r) dr for the centred cosine edges, voxels."""

    def weight(r):
        w = cosine_edge((r - max(outer - edge / 2, 0)) / edge) if edge else float(r <= outer)
        if inner > 0:
            w *= cosine_edge((inner + edge / 2 - r) / edge) if edge else float(r >= inner)
        return float(w)

    value, _ = integrate.quad(lambda r: 4 * np.pi * r * r * weight(r), 0, outer + edge, limit=200)
    return value


def test_cosine_edge_shape():
    np.testing.assert_allclose(cosine_edge([-1, 0, 0.5, 1, 2]), [1, 1, 0.5, 0, 0], atol=1e-15)


@pytest.mark.parametrize(
    ("outer", "inner", "edge"), [(20.0, 0.0, 10.0), (24.0, 8.0, 6.0), (15.0, 0.0, 0.0)]
)
def test_spherical_mask_edges_and_volume(outer, inner, edge):
    n, psize = 64, 1.0
    w = spherical_mask(
        (n, n, n), psize, outer, inner_radius_angstroms=inner, edge_width_angstroms=edge
    )
    assert w.dtype == np.float32 and w.shape == (n, n, n)
    assert w.min() >= 0 and w.max() <= 1
    r = radius_grid(n)
    assert np.all(w[r > outer + edge / 2 + 1e-6] == 0)
    assert np.all(w[(r < outer - edge / 2 - 1e-6) & (r > inner + edge / 2 + 1e-6)] == 1)
    if edge:
        # 0.5 at the nominal radius, monotone across the edge
        on_radius = np.abs(r - outer) < 0.05
        if on_radius.any():
            np.testing.assert_allclose(w[on_radius], 0.5, atol=0.02)
        ring = (r > outer - edge / 2) & (r < outer + edge / 2)
        order = np.argsort(r[ring])
        assert np.all(np.diff(w[ring][order]) <= 1e-6)
    if inner:
        assert np.all(w[r < inner - edge / 2 - 1e-6] == 0)
    expected = analytic_volume(outer, inner, edge)
    assert mask_volume_voxels(w) == pytest.approx(expected, rel=0.01)


def test_spherical_mask_pixel_size_scales_radii():
    a = spherical_mask((40, 40, 40), 2.0, 30.0, edge_width_angstroms=8.0)
    b = spherical_mask((40, 40, 40), 1.0, 15.0, edge_width_angstroms=4.0)
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"outer_radius_angstroms": 0.0},
        {"outer_radius_angstroms": 10.0, "inner_radius_angstroms": 12.0},
        {"outer_radius_angstroms": 10.0, "edge_width_angstroms": -1.0},
        {"outer_radius_angstroms": float("nan")},
    ],
)
def test_spherical_mask_rejects_bad_radii(kwargs):
    with pytest.raises(ValueError):
        spherical_mask((16, 16, 16), 1.0, **kwargs)


def test_soft_edge_mask_dilates_and_softens():
    n = 48
    binary = np.zeros((n, n, n), bool)
    binary[n // 2, n // 2, n // 2] = True
    w = soft_edge_mask(binary, 1.5, dilation_angstroms=6.0, edge_width_angstroms=9.0)
    r = radius_grid(n) * 1.5
    assert np.all(w[r <= 6.0] == 1)
    assert np.all(w[r >= 15.0] == 0)
    between = (r > 6.5) & (r < 14.5)
    assert np.all((w[between] > 0) & (w[between] < 1))
    assert not soft_edge_mask(np.zeros((8, 8, 8), bool), 1.0).any()


def _two_blob_map(n=64, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) - n // 2,) * 3, indexing="ij")
    vol = np.exp(-((x - 4) ** 2 + y**2 + z**2) / (2 * 6.0**2))
    vol += 0.8 * np.exp(-((x + 8) ** 2 + (y - 3) ** 2 + z**2) / (2 * 4.0**2))
    vol += noise * rng.normal(size=vol.shape)
    return vol.astype(np.float32)


def test_auto_mask_covers_the_density_and_not_the_solvent():
    vol = _two_blob_map()
    clean = _two_blob_map(noise=0.0)
    w = auto_mask(
        vol, 1.0, outer_radius_angstroms=28.0, dilation_angstroms=3.0, edge_width_angstroms=6.0
    )
    assert w.dtype == np.float32 and 0 <= w.min() and w.max() <= 1
    strong = clean > 0.3
    assert np.all(w[strong] == 1.0)
    r = radius_grid(64)
    assert np.all(w[r > 28.0 + 3.0 + 6.0 + 1.0] == 0)
    # much smaller than the whole sphere, much larger than the strong core
    assert 1.5 * strong.sum() < w.sum() < 0.5 * (4 / 3 * np.pi * 28.0**3)
    # one connected region: the noise blobs are dropped
    assert np.count_nonzero(w > 0) < np.count_nonzero(r < 28)


def test_auto_mask_of_pure_noise_is_small_or_empty():
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(48, 48, 48)).astype(np.float32)
    w = auto_mask(noise, 1.0, outer_radius_angstroms=20.0)
    assert w.sum() < 0.05 * 48**3


def test_user_mask_threshold_and_edge():
    n = 40
    r = radius_grid(n)
    hard = (r <= 10).astype(np.float32)
    w = user_mask(hard, 1.0, edge_width_angstroms=5.0)
    assert np.all(w[r <= 10] == 1)
    assert np.all(w[r >= 16] == 0)
    assert user_mask(hard, 1.0, edge_width_angstroms=0.0).sum() == hard.sum()
    with pytest.raises(ValueError, match="no voxel"):
        user_mask(np.zeros((8, 8, 8)), 1.0)


def test_apply_mask_fill_and_outside_weight():
    n = 32
    rng = np.random.default_rng(2)
    vol = (rng.normal(size=(n, n, n)) + 3.0).astype(np.float32)
    w = spherical_mask((n, n, n), 1.0, 10.0, edge_width_angstroms=4.0)
    masked = apply_mask(vol, w)
    r = radius_grid(n)
    edge_mean = vol[(w > 0) & (w < 1)].mean()
    np.testing.assert_allclose(masked[r > 13], edge_mean, rtol=1e-5)
    np.testing.assert_allclose(masked[r < 7], vol[r < 7], rtol=1e-6)
    zero = apply_mask(vol, w, fill="zero")
    assert np.all(zero[r > 13] == 0)
    half = apply_mask(vol, w, fill="zero", outside_weight=0.5)
    np.testing.assert_allclose(half[r > 13], 0.5 * vol[r > 13], rtol=1e-5)
    smooth = apply_mask(
        vol,
        w,
        fill="zero",
        outside_weight=1.0,
        pixel_size_angstroms=1.0,
        lowpass_outside_resolution_angstroms=8.0,
    )
    # the kept outside density is low-passed: much less variance than the raw noise
    assert smooth[r > 13].std() < 0.5 * vol[r > 13].std()
    with pytest.raises(ValueError):
        apply_mask(vol, w, outside_weight=2.0)
    with pytest.raises(ValueError):
        apply_mask(vol, w[:-1])


def test_lowpass_volume_removes_high_frequencies():
    rng = np.random.default_rng(3)
    vol = rng.normal(size=(32, 32, 32)).astype(np.float32)
    out = lowpass_volume(vol, 1.0, 8.0, edge_width_fraction=0.02)
    spectrum = np.abs(np.fft.rfftn(out))
    kz = np.fft.fftfreq(32)[:, None, None]
    ky = np.fft.fftfreq(32)[None, :, None]
    kx = np.fft.rfftfreq(32)[None, None, :]
    k = np.sqrt(kz**2 + ky**2 + kx**2)
    assert spectrum[k > 1 / 8 + 0.011].max() < 1e-3
    np.testing.assert_allclose(
        spectrum[k < 1 / 8 - 0.011], np.abs(np.fft.rfftn(vol))[k < 1 / 8 - 0.011], rtol=1e-3
    )
