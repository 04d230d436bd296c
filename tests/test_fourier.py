"""Fourier helpers: frequency grids, band-limited crop/pad, sub-pixel shifts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cistemd.kernels.fourier import (
    fourier_crop,
    fourier_shift,
    radial_frequency,
    spatial_frequency_grid,
)


def test_grid_matches_numpy_fft_layout():
    ky, kx = spatial_frequency_grid((6, 8), 2.0)
    assert ky.shape == kx.shape == (6, 8)
    np.testing.assert_allclose(ky[:, 0], np.fft.fftfreq(6, d=2.0))
    np.testing.assert_allclose(kx[0], np.fft.fftfreq(8, d=2.0))
    ky_r, kx_r = spatial_frequency_grid((6, 8), 2.0, rfft=True)
    assert kx_r.shape == (6, 5)
    np.testing.assert_allclose(kx_r[0], np.fft.rfftfreq(8, d=2.0))
    np.testing.assert_allclose(ky_r[:, 0], np.fft.fftfreq(6, d=2.0))


def test_centered_grid_has_origin_at_half_size():
    for shape in [(7, 8), (8, 7)]:
        k = radial_frequency(shape, 1.0, centered=True)
        assert k[shape[0] // 2, shape[1] // 2] == 0.0
        assert np.count_nonzero(k == 0) == 1


def test_three_dimensional_grid_order_is_z_y_x():
    kz, ky, kx = spatial_frequency_grid((4, 6, 8), 1.0, rfft=True)
    assert kz.shape == (4, 6, 5)
    assert kz[1, 0, 0] == 0.25 and ky[0, 1, 0] == pytest.approx(1 / 6) and kx[0, 0, 1] == 0.125


def test_bad_grid_arguments_raise():
    with pytest.raises(ValueError, match="shape"):
        spatial_frequency_grid((0, 4))
    with pytest.raises(ValueError, match="pixel_size"):
        spatial_frequency_grid((4, 4), 0.0)


def test_integer_shift_equals_roll():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(16, 20))
    shifted = fourier_shift(image, (3, -2))  # x first
    np.testing.assert_allclose(shifted, np.roll(image, (-2, 3), axis=(0, 1)), atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    st.floats(-5, 5, allow_nan=False),
    st.floats(-5, 5, allow_nan=False),
    st.sampled_from([(16, 16), (15, 18), (17, 17)]),
)
def test_subpixel_shift_round_trip(shift_x, shift_y, shape):
    rng = np.random.default_rng(1)
    # Band-limited content (no energy at Nyquist) shifts losslessly.
    image = fourier_crop(rng.normal(size=(shape[0] // 2, shape[1] // 2)), shape).astype(np.float64)
    back = fourier_shift(fourier_shift(image, (shift_x, shift_y)), (-shift_x, -shift_y))
    np.testing.assert_allclose(back, image, atol=1e-9)


def test_subpixel_shift_moves_a_gaussian_blob():
    yy, xx = np.mgrid[:64, :64]
    blob = np.exp(-((xx - 30.0) ** 2 + (yy - 33.0) ** 2) / (2 * 3.0**2))
    shifted = fourier_shift(blob, (2.25, -1.5))
    centroid_x = (shifted * xx).sum() / shifted.sum()
    centroid_y = (shifted * yy).sum() / shifted.sum()
    assert centroid_x == pytest.approx(32.25, abs=1e-6)
    assert centroid_y == pytest.approx(31.5, abs=1e-6)


def test_stack_shift_with_per_image_shifts():
    rng = np.random.default_rng(2)
    stack = rng.normal(size=(3, 12, 12)).astype(np.float32)
    shifts = np.array([[1, 0], [0, 2], [-3, -1]])
    out = fourier_shift(stack, shifts)
    assert out.dtype == np.float32 and out.shape == stack.shape
    for image, result, (sx, sy) in zip(stack, out, shifts, strict=True):
        np.testing.assert_allclose(result, np.roll(image, (sy, sx), axis=(0, 1)), atol=1e-5)
    with pytest.raises(ValueError, match="shift_px"):
        fourier_shift(stack, np.zeros((2, 2)))


def test_crop_preserves_mean_and_band_limited_content():
    yy, xx = np.mgrid[:64, :64]
    wave = 3.0 + np.cos(2 * np.pi * (3 * xx / 64 + 2 * yy / 64))
    small = fourier_crop(wave, (32, 32))
    yy2, xx2 = np.mgrid[:32, :32]
    expected = 3.0 + np.cos(2 * np.pi * (3 * xx2 / 32 + 2 * yy2 / 32))
    np.testing.assert_allclose(small, expected, atol=1e-9)
    assert small.dtype == np.float64
    assert fourier_crop(wave.astype(np.float32), (32, 32)).dtype == np.float32


@pytest.mark.parametrize("shape, big", [((20, 20), (32, 40)), ((21, 19), (33, 30))])
def test_pad_then_crop_is_identity(shape, big):
    rng = np.random.default_rng(3)
    image = rng.normal(size=shape)
    np.testing.assert_allclose(fourier_crop(fourier_crop(image, big), shape), image, atol=1e-5)
    assert fourier_crop(image, big).mean() == pytest.approx(image.mean(), abs=1e-6)


def test_crop_of_a_stack_keeps_leading_axis():
    stack = np.ones((4, 16, 16))
    out = fourier_crop(stack, (8, 8))
    assert out.shape == (4, 8, 8)
    np.testing.assert_allclose(out, 1.0)
