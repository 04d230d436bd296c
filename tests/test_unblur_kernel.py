"""Unblur kernel: shift recovery and sign, sums, exposure weighting, sizes, and accuracy
on the project's simulator (slow)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cistemd.kernels import dose, fourier, unblur

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cistem_console_test"


def _hiv_tile() -> np.ndarray:
    path = DATA / "hiv_image_80x80x1.mrc"
    if path.exists():
        from cistemd.io import mrc

        image = mrc.read(path).astype(np.float32)
    else:  # a smooth random texture keeps the test meaningful without the data folder
        rng = np.random.default_rng(5)
        image = fourier.fourier_crop(rng.normal(size=(320, 320)), (80, 80)).astype(np.float32)
    return np.tile(image, (3, 3))


def _drifting_movie(drift_px: np.ndarray, noise: float, seed: int = 0) -> np.ndarray:
    image = _hiv_tile()
    rng = np.random.default_rng(seed)
    frames = [
        fourier.fourier_shift(image, drift_px[i]) + rng.normal(0.0, noise, image.shape)
        for i in range(drift_px.shape[0])
    ]
    return np.stack(frames).astype(np.float32)


def test_recovers_a_smooth_drift_with_cistem_sign_relative_to_the_middle_frame():
    n = 12
    frame_index = np.arange(n)
    # the specimen moves by +d: frame_i(x, y) = still(x - dx_i, y - dy_i)
    drift = np.column_stack(
        [np.linspace(0, 6, n) + 0.3 * np.sin(frame_index), -np.linspace(0, 4, n)]
    )
    frames = _drifting_movie(drift, noise=1.5)
    params = unblur.UnblurParameters(exposure_per_frame_e_per_a2=1.0)
    result = unblur.align_movie(frames, pixel_size_angstroms=1.0, params=params)
    recovered = np.column_stack([result.shifts_x_angstroms, result.shifts_y_angstroms])
    expected = -(drift - drift[n // 2])  # the shift applied to each frame to align it
    assert recovered[n // 2].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(recovered, expected, atol=0.45)
    assert np.sqrt(np.mean(np.sum((recovered - expected) ** 2, axis=1))) < 0.25
    # sign check on its own: frames move to +x, so the shifts applied decrease
    assert result.shifts_x_angstroms[0] > 2.0 > -2.0 > result.shifts_x_angstroms[-1]


def test_same_shifts_in_angstroms_at_another_pixel_size_and_deterministic():
    n = 10
    drift = np.column_stack([np.linspace(0, 5, n), np.linspace(0, 3, n)])
    frames = _drifting_movie(drift, noise=1.0, seed=1)
    params = unblur.UnblurParameters(exposure_per_frame_e_per_a2=1.0)
    at_1 = unblur.align_movie(frames, pixel_size_angstroms=1.0, params=params)
    at_2 = unblur.align_movie(frames, pixel_size_angstroms=2.0, params=params)
    again = unblur.align_movie(frames, pixel_size_angstroms=2.0, params=params, threads=2)
    np.testing.assert_allclose(at_2.shifts_x_angstroms, 2.0 * at_1.shifts_x_angstroms, atol=0.6)
    np.testing.assert_allclose(again.shifts_x_angstroms, at_2.shifts_x_angstroms, atol=1e-4)
    np.testing.assert_allclose(again.sum, at_2.sum, rtol=1e-4, atol=1e-3)


def test_identical_frames_give_zero_shifts_and_the_plain_sum():
    frames = np.stack([_hiv_tile()] * 6)
    params = unblur.UnblurParameters(exposure_per_frame_e_per_a2=2.0, exposure_filter=False)
    result = unblur.align_movie(frames, pixel_size_angstroms=1.0, params=params)
    assert np.abs(result.shifts_x_angstroms).max() < 1e-3
    assert np.abs(result.shifts_y_angstroms).max() < 1e-3
    np.testing.assert_allclose(result.sum, frames.sum(axis=0), rtol=1e-4, atol=1e-3)
    assert result.sum.dtype == np.float32


def test_exposure_weighted_sum_uses_the_dose_module_weights():
    rng = np.random.default_rng(3)
    frames = rng.normal(size=(5, 96, 96)).astype(np.float32)
    shifts = np.zeros((5, 2))
    for restore in (True, False):
        params = unblur.UnblurParameters(
            exposure_per_frame_e_per_a2=3.0, pre_exposure_e_per_a2=1.0, voltage_kv=200.0,
            restore_power=restore, first_frame=2, last_frame=4,
        )  # fmt: skip
        summed, plain = unblur.sum_aligned_frames(
            frames, shifts, pixel_size_angstroms=1.3, params=params
        )
        k = fourier.radial_frequency((96, 96), 1.3, rfft=True)
        exposures = dose.frame_exposures(5, 3.0, 1.0)[1:4]
        weights = dose.weighted_sum_weights(k, exposures, 200.0, restore_power=restore)
        spectra = np.fft.rfft2(frames[1:4].astype(np.float64))
        expected = np.fft.irfft2(np.sum(weights * spectra, axis=0), s=(96, 96))
        np.testing.assert_allclose(summed, expected, atol=2e-4 * np.abs(expected).max())
        np.testing.assert_allclose(plain, spectra.sum(axis=0), rtol=1e-4, atol=1e-2)


def test_output_binning_is_a_fourier_crop_with_the_mean_kept():
    frames = np.stack([_hiv_tile() + 5.0] * 4)
    params = unblur.UnblurParameters(exposure_filter=False, output_binning_factor=2.0)
    result = unblur.align_movie(frames, pixel_size_angstroms=1.0, params=params)
    assert result.sum.shape == (120, 120)
    assert result.pixel_size_angstroms == pytest.approx(2.0)
    expected = fourier.fourier_crop(frames.sum(axis=0), (120, 120))
    assert result.sum.mean() == pytest.approx(frames.sum(axis=0).mean(), rel=1e-4)
    # the shared crop, up to how the Nyquist lines are taken
    assert np.corrcoef(result.sum.ravel(), expected.ravel())[0, 1] > 0.995


def test_crop_half_spectrum_matches_fourier_crop_for_odd_sizes():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(64, 50))
    spectrum = np.fft.rfft2(image)
    cropped = unblur.crop_half_spectrum(spectrum, (64, 50), (31, 25))
    ours = np.fft.irfft2(cropped, s=(31, 25)) * (31 * 25) / (64 * 50)
    np.testing.assert_allclose(ours, fourier.fourier_crop(image, (31, 25)), atol=1e-5)


def test_smoothing_is_exact_on_lines_and_never_amplifies():
    line = np.column_stack([np.linspace(-3, 5, 20), np.linspace(2, 1, 20)])
    np.testing.assert_allclose(unblur.smooth_trajectory(line, 5), line, atol=1e-12)
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(20, 2))
    residual = noise.copy()
    for _ in range(30):  # the fixed-point rounds of the alignment
        residual = residual - unblur.smooth_trajectory(residual, 5)
        assert np.linalg.norm(residual) <= np.linalg.norm(noise) + 1e-9
    short = rng.normal(size=(5, 2))
    np.testing.assert_array_equal(unblur.smooth_trajectory(short, 5), short)


def test_too_small_for_the_binning_raises_a_clear_error():
    params = unblur.UnblurParameters()
    with pytest.raises(ValueError, match="too small to align"):
        unblur.check_movie_geometry((64, 64), 1.0, params)
    with pytest.raises(ValueError, match="smaller output binning"):
        unblur.check_movie_geometry((64, 64), 1.0, unblur.UnblurParameters(output_binning_factor=8))
    unblur.check_movie_geometry((80, 80), 1.0, params)  # 80 / 5 = 16 px: still fine
    unblur.check_movie_geometry((64, 64), 5.0, params)  # no pre-binning at 5 Å/px
    with pytest.raises(ValueError, match="frames to sum"):
        unblur.align_movie(
            np.zeros((3, 80, 80), np.float32), pixel_size_angstroms=1.0,
            params=unblur.UnblurParameters(last_frame=4),
        )  # fmt: skip
    with pytest.raises(ValueError, match="300, 200 or 100"):
        unblur.UnblurParameters(voltage_kv=120.0)


def test_single_frame_and_gain_dark_and_mag_distortion_identity():
    rng = np.random.default_rng(2)
    frame = rng.poisson(3.0, size=(1, 64, 64)).astype(np.uint16)
    params = unblur.UnblurParameters(exposure_filter=False)
    plain = unblur.align_movie(frame, pixel_size_angstroms=5.0, params=params)
    assert plain.shifts_x_angstroms.tolist() == [0.0]
    np.testing.assert_allclose(plain.sum, frame[0], atol=1e-3)
    gain = np.full((64, 64), 2.0, np.float32)
    dark = np.ones((64, 64), np.float32)
    corrected = unblur.align_movie(
        frame, pixel_size_angstroms=5.0, params=params, gain=gain, dark=dark
    )
    np.testing.assert_allclose(corrected.sum, (frame[0] - 1.0) * 2.0, atol=1e-3)
    identity = unblur.MagDistortion(angle_degrees=30.0, major_scale=1.0, minor_scale=1.0)
    np.testing.assert_allclose(identity.correct(frame[0].astype(np.float32)), frame[0], atol=1e-4)
    stretched = unblur.MagDistortion(angle_degrees=0.0, major_scale=1.1, minor_scale=1.0)
    assert not np.allclose(stretched.correct(frame[0].astype(np.float32)), frame[0])


def test_display_images():
    rng = np.random.default_rng(4)
    image = rng.normal(size=(300, 200)).astype(np.float32) + 3.0
    small = unblur.scaled_image(image, max_size=100)
    assert small.shape == (150, 100) or small.shape == (100, 67)
    assert small.mean() == pytest.approx(image.mean(), rel=1e-3)
    spectrum = unblur.amplitude_spectrum_image(np.fft.rfft2(image), image.shape, size=64)
    assert spectrum.shape == (64, 64)
    assert spectrum.max() <= 3.0 and spectrum.min() >= -1.0
    assert np.all(spectrum[32, :] == 3.0)


# ----------------------------------------------------------------------------- accuracy


def _ring_extent(image: np.ndarray, pixel_size: float, ctf_truth: dict) -> float:
    """Highest spatial frequency (1/Å) where the 1-D power spectrum follows the CTF rings."""
    from cistemd.kernels.ctf import CTFParams, ctf_1d

    ny, nx = image.shape
    power = np.abs(np.fft.rfft2(image - image.mean())) ** 2
    k = fourier.radial_frequency((ny, nx), pixel_size, rfft=True)
    step = 1.0 / (nx * pixel_size)
    bins = np.round(k / step).astype(int)
    valid = bins < nx // 2
    radial = np.bincount(bins[valid], weights=power[valid]) / np.maximum(
        np.bincount(bins[valid]), 1
    )
    freqs = np.arange(radial.size) * step
    mean_defocus = 0.5 * (ctf_truth["defocus_1_angstroms"] + ctf_truth["defocus_2_angstroms"])
    ctf = CTFParams(
        defocus_1_angstroms=mean_defocus,
        defocus_2_angstroms=mean_defocus,
        voltage_kv=ctf_truth["voltage_kv"],
        spherical_aberration_mm=ctf_truth["spherical_aberration_mm"],
        amplitude_contrast=ctf_truth["amplitude_contrast"],
    )
    model = ctf_1d(freqs, ctf) ** 2
    half = int(0.02 / step)
    extent = 0.0
    for centre in range(int(0.05 / step), radial.size - half, max(1, half // 4)):
        window = slice(centre - half, centre + half + 1)
        x = np.log(radial[window])
        y = model[window]
        t = np.arange(x.size)
        x = x - np.polyval(np.polyfit(t, x, 2), t)
        y = y - np.polyval(np.polyfit(t, y, 2), t)
        if np.corrcoef(x, y)[0, 1] > 0.3:
            extent = freqs[centre]
    return extent


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12])
def test_accuracy_on_simulated_2048_movies(seed):
    from cistemd.kernels import simulate
    from cistemd.kernels.ctf import CTFParams

    n, n_frames, dose_per_frame = 2048, 24, 1.5
    rng = np.random.default_rng(seed)
    model = simulate.apoferritin_like_model(seed=0)
    positions = simulate.random_particle_positions(
        60, (n, n), 1.0, min_separation_angstroms=2 * model.radius_angstroms,
        edge_margin_angstroms=model.radius_angstroms + 50, rng=rng,
    )  # fmt: skip
    angles = np.column_stack([
        rng.uniform(0, 360, len(positions)),
        np.degrees(np.arccos(rng.uniform(-1, 1, len(positions)))),
        rng.uniform(0, 360, len(positions)),
    ])  # fmt: skip
    drift = simulate.realistic_beam_induced_motion(n_frames, rng=rng)
    path = float(np.sum(np.linalg.norm(np.diff(drift, axis=0), axis=1)))
    assert 8.0 <= path <= 40.0
    ctf = CTFParams(defocus_1_angstroms=14000, defocus_2_angstroms=13600,
                    astigmatism_angle_degrees=30.0)
    frames, truth = simulate.simulate_movie(
        model, shape=(n, n), pixel_size_angstroms=1.0, ctf=ctf, positions_angstroms=positions,
        euler_degrees=angles, n_frames=n_frames, exposure_per_frame_e_per_a2=dose_per_frame,
        rng=rng, frame_shifts_angstroms=drift,
    )  # fmt: skip
    params = unblur.UnblurParameters(exposure_per_frame_e_per_a2=dose_per_frame)
    result = unblur.align_movie(frames, pixel_size_angstroms=1.0, params=params, threads=2)
    recovered = np.column_stack([result.shifts_x_angstroms, result.shifts_y_angstroms])
    error = recovered - (-drift)
    error -= error.mean(axis=0)  # a common offset is not an error
    rms = math.sqrt(float(np.mean(np.sum(error**2, axis=1))))
    print(f"seed {seed}: path {path:.1f} Å, RMS error {rms:.3f} Å")
    assert rms <= 0.35

    true_sum, _ = unblur.sum_aligned_frames(
        frames, -(drift - drift[n_frames // 2]), pixel_size_angstroms=1.0, params=params
    )
    # the sum without alignment: the ring measure must notice the blur
    unaligned, _ = unblur.sum_aligned_frames(
        frames, np.zeros((n_frames, 2)), pixel_size_angstroms=1.0, params=params
    )
    rings_truth = _ring_extent(true_sum, 1.0, truth["ctf"])
    rings_aligned = _ring_extent(result.sum, 1.0, truth["ctf"])
    rings_unaligned = _ring_extent(unaligned, 1.0, truth["ctf"])
    print(f"Thon rings to {1 / rings_truth:.2f} Å (truth), {1 / rings_aligned:.2f} Å (aligned), "
          f"{1 / max(rings_unaligned, 1e-3):.2f} Å (not aligned)")
    assert rings_truth > 0.2
    assert 1.0 / rings_aligned <= 1.1 / rings_truth
    assert 1.0 / max(rings_unaligned, 1e-3) > 1.05 / rings_truth  # the comparison can fail
