"""Sharpen Map kernel (cistemd.kernels.sharpen)."""

from __future__ import annotations

import numpy as np
import pytest

from cistemd.kernels import simulate
from cistemd.kernels.sharpen import (
    SharpenParams,
    apply_b_factor,
    correct_gridding,
    fom_weights,
    invert_hand,
    radial_amplitude_spectrum,
    sharpen_map,
)

PIXEL = 2.0


@pytest.fixture(scope="module")
def test_map():
    """The project's asymmetric test structure, 2 Å/voxel, box 64, no B-factor."""
    model = simulate.asymmetric_protein_model(seed=0)
    return simulate.coulomb_potential_map(
        model, box=64, pixel_size_angstroms=PIXEL, b_factor_angstroms2=0.0
    )


@pytest.mark.parametrize("b_factor", [60.0, 150.0])
def test_opposite_b_factor_restores_the_amplitude_spectrum(test_map, b_factor):
    blurred = apply_b_factor(test_map, PIXEL, b_factor)
    shells, original = radial_amplitude_spectrum(test_map)
    _, damped = radial_amplitude_spectrum(blurred)
    cut_off, edge = 4.5, 20.0
    params = SharpenParams(
        pixel_size_angstroms=PIXEL,
        resolution_limit_angstroms=cut_off,
        filter_edge_angstroms=edge,
        flatten_from_resolution_angstroms=2 * PIXEL,  # no flattening: B alone
        pre_cutoff_b_factor_angstroms2=-b_factor,
        correct_gridding=False,
    )
    result = sharpen_map(blurred, params)
    _, restored = radial_amplitude_spectrum(result.volume)
    below = (shells > 0) & (shells <= PIXEL / cut_off - PIXEL / edge)
    ratio = restored[below] / original[below]
    assert np.all(np.abs(ratio - 1) < 0.05), ratio
    # the blur was real (so the test can fail) ...
    assert (damped[below] / original[below]).min() < 0.75
    # ... and beyond the cut-off nothing is left
    assert restored[shells > PIXEL / cut_off + 1e-9].max() < 1e-4 * original.max()


def test_b_factor_sign_and_units(test_map):
    shells, a0 = radial_amplitude_spectrum(test_map)
    _, a1 = radial_amplitude_spectrum(apply_b_factor(test_map, PIXEL, 100.0))
    s = shells[5] / PIXEL  # 1/Å
    assert a1[5] / a0[5] == pytest.approx(np.exp(-100.0 * s * s / 4), rel=0.02)


def test_flattening_whitens_beyond_the_flatten_resolution(test_map):
    blurred = apply_b_factor(test_map, PIXEL, 120.0)
    params = SharpenParams(
        pixel_size_angstroms=PIXEL,
        resolution_limit_angstroms=4.2,
        flatten_from_resolution_angstroms=10.0,
        pre_cutoff_b_factor_angstroms2=0.0,
        correct_gridding=False,
    )
    result = sharpen_map(blurred, params)
    shells = result.spatial_frequency * PIXEL
    band = (shells >= PIXEL / 10.0) & (shells <= PIXEL / 4.2 - PIXEL / 20.0)
    flat = result.sharpened_amplitude[band] / result.sharpened_amplitude[band][0]
    assert np.all(np.abs(flat - 1) < 0.1), flat
    before = result.original_amplitude[band] / result.original_amplitude[band][0]
    assert before.min() < 0.5  # the input was far from flat


def test_post_b_factor_acts_on_the_flattened_part(test_map):
    base = SharpenParams(
        pixel_size_angstroms=PIXEL,
        resolution_limit_angstroms=None,
        flatten_from_resolution_angstroms=10.0,
        pre_cutoff_b_factor_angstroms2=0.0,
        auto_mask=False,
        correct_gridding=False,
    )
    flat = sharpen_map(test_map, base)
    from dataclasses import replace

    damped = sharpen_map(test_map, replace(base, post_cutoff_b_factor_angstroms2=80.0))
    k = flat.spatial_frequency
    k_w = 1 / 10.0
    expected = np.where(k > k_w, np.exp(-80.0 * (k * k - k_w * k_w) / 4), 1.0)
    sel = (k > 0) & (k <= 0.25)
    np.testing.assert_allclose(damped.filter[sel] / flat.filter[sel], expected[sel], rtol=1e-6)


def test_fom_weighting_follows_ssnr(test_map):
    shell = np.arange(1, 60)
    resolution = PIXEL * 64 / shell
    rec_ssnr = 50.0 * np.exp(-shell / 6.0)
    params = SharpenParams(
        pixel_size_angstroms=PIXEL,
        resolution_limit_angstroms=None,
        flatten_from_resolution_angstroms=2 * PIXEL,
        pre_cutoff_b_factor_angstroms2=0.0,
        ssnr_scale=2.0,
        correct_gridding=False,
    )
    plain = sharpen_map(test_map, params)
    weighted = sharpen_map(
        test_map,
        params,
        statistics_resolution_angstroms=resolution,
        statistics_rec_ssnr=rec_ssnr,
    )
    _, a_plain = radial_amplitude_spectrum(plain.volume)
    _, a_weighted = radial_amplitude_spectrum(weighted.volume)
    index = np.arange(1, 30)
    ssnr = 2.0 * rec_ssnr[index - 1]
    np.testing.assert_allclose(a_weighted[index] / a_plain[index], ssnr / (1 + ssnr), rtol=0.02)
    np.testing.assert_allclose(
        weighted.filter[index] / plain.filter[index], ssnr / (1 + ssnr), rtol=1e-6
    )


def test_fom_weights_function():
    resolution = np.array([20.0, 10.0, 5.0])
    ssnr = np.array([9.0, 1.0, 0.0])
    w = fom_weights([1 / 20, 1 / 10, 1 / 5, 0.0, 1.0], resolution, ssnr)
    np.testing.assert_allclose(w, [0.9, 0.5, 0.0, 0.9, 0.0])
    np.testing.assert_allclose(fom_weights([1 / 10], resolution, ssnr, ssnr_scale=3), [0.75])
    w_mid = fom_weights([0.075], resolution, ssnr)  # halfway between 20 Å and 10 Å shells
    np.testing.assert_allclose(w_mid, [5 / 6])
    with pytest.raises(ValueError):
        fom_weights([0.1], [10.0, 5.0], [1.0])
    with pytest.raises(ValueError):
        sharpen_map(
            np.zeros((8, 8, 8)), SharpenParams(pixel_size_angstroms=1.0), statistics_rec_ssnr=[1.0]
        )


def test_invert_hand_mirrors_about_the_centre():
    for n in (8, 9):
        vol = np.zeros((n, n, n), np.float32)
        c = n // 2
        vol[c + 2, c + 1, c - 1] = 1.0
        vol[c, c, c] = 5.0
        out = invert_hand(vol)
        assert out[c - 2, c + 1, c - 1] == 1.0
        assert out[c, c, c] == 5.0
        np.testing.assert_array_equal(invert_hand(out), vol)


def test_hand_inversion_in_sharpen(test_map):
    params = SharpenParams(
        pixel_size_angstroms=PIXEL,
        resolution_limit_angstroms=None,
        flatten_from_resolution_angstroms=2 * PIXEL,
        pre_cutoff_b_factor_angstroms2=0.0,
        correct_gridding=False,
    )
    from dataclasses import replace

    a = sharpen_map(test_map, params).volume
    b = sharpen_map(test_map, replace(params, invert_hand=True)).volume
    np.testing.assert_allclose(b, invert_hand(a), atol=1e-5)
    assert not np.allclose(a, b, atol=1e-3)  # the structure is chiral


def test_gridding_correction():
    n = 32
    ones = np.ones((n, n, n), np.float32)
    out = correct_gridding(ones)
    c = n // 2
    assert out[c, c, c] == pytest.approx(1.0)
    assert out[c, c, 0] == pytest.approx(1 / np.sinc(0.5) ** 2, rel=1e-5)  # r = N/2 on an axis
    clamped = correct_gridding(ones, max_radius_voxels=4.0)
    assert clamped.max() == pytest.approx(1 / np.sinc(4 / n) ** 2, rel=1e-5)
    padded = correct_gridding(ones, padding_factor=2.0)
    assert padded[c, c, 0] == pytest.approx(1 / np.sinc(0.25) ** 2, rel=1e-5)


def test_user_mask_and_shell_are_used_for_the_spectrum(test_map):
    n = test_map.shape[0]
    custom = np.zeros_like(test_map)
    custom[16:48, 16:48, 16:48] = 1.0
    params = SharpenParams(pixel_size_angstroms=PIXEL, auto_mask=False)
    with_user = sharpen_map(test_map, params, mask=custom)
    np.testing.assert_array_equal(with_user.mask, custom)
    shell = sharpen_map(test_map, params)
    assert shell.mask[n // 2, n // 2, n // 2] == 1.0 and shell.mask[0, 0, 0] == 0.0
    auto = sharpen_map(test_map, SharpenParams(pixel_size_angstroms=PIXEL))
    assert 0 < auto.mask.sum() < shell.mask.sum()
    assert np.isfinite(auto.volume).all() and auto.volume.dtype == np.float32


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pixel_size_angstroms": 0.0},
        {"pixel_size_angstroms": 1.0, "resolution_limit_angstroms": -3.0},
        {"pixel_size_angstroms": 1.0, "ssnr_scale": -1.0},
        {"pixel_size_angstroms": 1.0, "flatten_from_resolution_angstroms": 0.0},
    ],
)
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        SharpenParams(**kwargs)


def test_non_cubic_volume_rejected():
    with pytest.raises(ValueError, match="cubic"):
        sharpen_map(np.zeros((8, 8, 10)), SharpenParams(pixel_size_angstroms=1.0))
