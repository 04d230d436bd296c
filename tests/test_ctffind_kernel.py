"""CTF estimation (cistemd.kernels.ctffind): conventions, accuracy, robustness.

Two kinds of test data:

* **Ring fields** (:func:`ring_field`): white noise filtered by a known CTF
  and envelope plus white noise -- the Thon-ring pattern of a real
  micrograph's ice/carbon background, with a controlled ring SNR and a
  signal-to-noise ratio per frequency known in closed form. Fast; used for
  precision, conventions, large astigmatism and the fit resolution.
* **The project's simulator** (particles in ice, shot noise, 30–50 e/Å²).
  Its rings are weak beyond ~10 Å (the simulated ice has little power below
  its 3.7 Å peak): the Cramér–Rao bound of the mean defocus from a 2048²
  micrograph at 40 e/Å² is ≈ 20 Å (1.0 Å/px, all frequencies) to ≈ 37 Å
  (30–5 Å band), so these tests use bounds well above the issue's 5 Å,
  which no estimator can reach on such data (see the report); the median
  |error| of an efficient estimator is 0.67 × the bound.

Truth is only used here, never inside the kernel.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cistemd.kernels import ctffind
from cistemd.kernels.ctf import CTFParams, ctf_2d, electron_wavelength_angstroms
from cistemd.kernels.ctffind import CTFFindSettings, estimate_ctf


def ring_field(
    shape: tuple[int, int],
    pixel_size: float,
    ctf: CTFParams,
    *,
    envelope_b: float,
    signal_to_noise: float,
    seed: int,
) -> np.ndarray:
    """White noise × CTF × envelope (power ``snr · E² sin²χ``) plus unit white noise."""
    rng = np.random.default_rng(seed)
    transfer = ctf_2d(shape, pixel_size, ctf, envelope_b_factor_angstroms2=envelope_b, rfft=True)
    signal = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * transfer, s=shape)
    return (math.sqrt(signal_to_noise) * signal + rng.standard_normal(shape)).astype(np.float32)


def angle_error(a: float, b: float) -> float:
    return abs((a - b + 90.0) % 180.0 - 90.0)


def errors(estimate: CTFParams, truth: CTFParams) -> tuple[float, float, float]:
    mean = estimate.mean_defocus_angstroms - truth.mean_defocus_angstroms
    astig_e = estimate.defocus_1_angstroms - estimate.defocus_2_angstroms
    astig_t = truth.defocus_1_angstroms - truth.defocus_2_angstroms
    return (
        abs(mean),
        abs(astig_e - astig_t),
        angle_error(estimate.astigmatism_angle_degrees, truth.astigmatism_angle_degrees),
    )


# --------------------------------------------------------------------------- conventions


def test_score_model_is_minus_sin_chi_of_the_published_formula():
    """|CTF| used by the fit equals CTFFIND's formula evaluated by hand."""
    truth = CTFParams(
        defocus_1_angstroms=16000.0,
        defocus_2_angstroms=14000.0,
        astigmatism_angle_degrees=30.0,
        voltage_kv=300.0,
        spherical_aberration_mm=2.7,
        amplitude_contrast=0.07,
        additional_phase_shift_radians=0.4,
    )
    # Published formula (Rohou & Grigorieff 2015, eqs. 1-4), by hand:
    wavelength = 12.2639 / math.sqrt(300e3 + 0.97845e-6 * 300e3**2)
    assert electron_wavelength_angstroms(300.0) == pytest.approx(wavelength, rel=3e-5)
    k, azimuth = 0.2, math.radians(75.0)
    defocus = 0.5 * (16000 + 14000 + 2000 * math.cos(2 * (azimuth - math.radians(30.0))))
    chi = (
        math.pi * wavelength * k**2 * defocus
        - 0.5 * math.pi * wavelength**3 * 2.7e7 * k**4
        + 0.4
        + math.atan(0.07 / math.sqrt(1 - 0.07**2))
    )
    # The kernel's parametrisation (m, a, b) gives the same χ.
    p = ctffind._ctf_to_params(truth)
    constants = ctffind._constants(truth)
    wavelength_k = electron_wavelength_angstroms(300.0)
    chi_kernel = (
        constants[0] * k**2 * (p[0] + p[1] * math.cos(2 * azimuth) + p[2] * math.sin(2 * azimuth))
        - constants[1] * k**4
        + constants[2]
        + p[3]
    )
    assert chi_kernel == pytest.approx(chi, rel=1e-4)
    assert math.pi * wavelength_k == pytest.approx(constants[0])
    back = ctffind._params_to_ctf(p, truth)
    assert back.defocus_1_angstroms == pytest.approx(16000.0)
    assert back.defocus_2_angstroms == pytest.approx(14000.0)
    assert back.astigmatism_angle_degrees == pytest.approx(30.0)


def test_spectrum_layout_matches_ctf_2d_azimuth_convention():
    """A ring field's spectrum has its zeros where ctf_2d has them (x = axis 1)."""
    truth = CTFParams(
        defocus_1_angstroms=20000.0, defocus_2_angstroms=12000.0, astigmatism_angle_degrees=20.0
    )
    image = ring_field((1024, 1024), 1.4, truth, envelope_b=0.0, signal_to_noise=50.0, seed=3)
    power, pixel, _ = ctffind.power_spectrum(image, pixel_size_angstroms=1.4, box_size=256)
    expected = ctf_2d((256, 256), pixel, truth, centered=True).astype(np.float64) ** 2
    radius = np.hypot(*np.meshgrid(np.arange(256) - 128, np.arange(256) - 128))
    band = (radius > 20) & (radius < 120)
    correlation = np.corrcoef(power[band], expected[band])[0, 1]
    swapped = replace_angle(truth, -20.0)
    wrong = ctf_2d((256, 256), pixel, swapped, centered=True).astype(np.float64) ** 2
    assert correlation > 0.5
    assert correlation > np.corrcoef(power[band], wrong[band])[0, 1] + 0.3


def replace_angle(params: CTFParams, angle: float) -> CTFParams:
    from dataclasses import replace

    return replace(params, astigmatism_angle_degrees=angle)


def test_tiles_cover_the_image_and_resampling_keeps_the_pixel_exact():
    assert list(ctffind.tile_starts(4096, 720)) == [0, 675, 1350, 2026, 2701, 3376]
    starts = ctffind.tile_starts(2048, 720)
    assert starts[0] == 0 and starts[-1] == 2048 - 720 and len(starts) == 5
    assert ctffind.tile_size_for(1.0, 512) == 720
    assert ctffind.tile_size_for(1.5, 512) == 512
    assert ctffind.tile_size_for(1.0, 512, resample=False) == 512
    image = np.random.default_rng(0).standard_normal((800, 800)).astype(np.float32)
    spectrum, pixel, n_tiles = ctffind.amplitude_spectrum(image, pixel_size_angstroms=1.0)
    assert spectrum.shape == (512, 512)
    assert pixel == pytest.approx(720 / 512)
    assert n_tiles == 4
    assert spectrum[256, 256] == 0.0


def test_movie_frames_are_summed_in_blocks_before_the_spectrum():
    rng = np.random.default_rng(5)
    frames = rng.standard_normal((5, 256, 256)).astype(np.float32)
    power, _, n_tiles = ctffind.power_spectrum(
        frames, pixel_size_angstroms=2.0, box_size=128, frames_to_average=3
    )
    blocks = [frames[:3].sum(axis=0), frames[3:].sum(axis=0)]
    expected = sum(
        ctffind.power_spectrum(b, pixel_size_angstroms=2.0, box_size=128)[0] for b in blocks
    )
    assert n_tiles == 2 * 9  # 3 × 3 half-overlapping tiles per block
    np.testing.assert_allclose(power, expected / 2, rtol=1e-4)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="box_size"):
        CTFFindSettings(box_size=100)
    with pytest.raises(ValueError, match="max_resolution"):
        CTFFindSettings(min_resolution_angstroms=5.0, max_resolution_angstroms=10.0)
    with pytest.raises(ValueError, match="defocus"):
        CTFFindSettings(min_defocus_angstroms=9000.0, max_defocus_angstroms=8000.0)


# --------------------------------------------------------------------------- ring fields

RING_CASES = [
    # (pixel, kV, Cs, mean, astigmatism, azimuth, phase)
    (1.0, 300.0, 2.7, 15000.0, 800.0, 35.0, 0.0),
    (1.5, 200.0, 0.01, 8000.0, 1200.0, -60.0, 0.0),
    (1.0, 300.0, 0.01, 28000.0, 400.0, 80.0, 0.0),
    (1.5, 300.0, 2.7, 21000.0, 0.0, 0.0, 0.0),
]


@pytest.fixture(scope="module")
def ring_results():
    out = []
    for index, (pixel, kv, cs, mean, astig, angle, phase) in enumerate(RING_CASES):
        truth = CTFParams(
            defocus_1_angstroms=mean + astig / 2,
            defocus_2_angstroms=mean - astig / 2,
            astigmatism_angle_degrees=angle,
            voltage_kv=kv,
            spherical_aberration_mm=cs,
            additional_phase_shift_radians=phase,
        ).enforce_convention()
        image = ring_field(
            (2048, 2048), pixel, truth, envelope_b=60.0, signal_to_noise=1.0, seed=index
        )
        result = estimate_ctf(
            image, pixel_size_angstroms=pixel, voltage_kv=kv, spherical_aberration_mm=cs
        )
        out.append((truth, result))
    return out


def test_ring_fields_are_fitted_to_a_few_angstroms(ring_results):
    mean_errors, astig_errors = [], []
    for truth, result in ring_results:
        mean_error, astig_error, angle_err = errors(result.ctf, truth)
        mean_errors.append(mean_error)
        astig_errors.append(astig_error)
        assert result.confident, result.warnings
        if truth.defocus_1_angstroms - truth.defocus_2_angstroms > 300:
            assert angle_err <= 1.0, (truth, result.ctf)
    assert np.median(mean_errors) <= 5.0, mean_errors
    assert max(mean_errors) <= 20.0, mean_errors
    assert np.median(astig_errors) <= 10.0, astig_errors


def test_outputs_have_ctffind_conventions(ring_results):
    for _, result in ring_results:
        ctf = result.ctf
        assert ctf.defocus_1_angstroms >= ctf.defocus_2_angstroms
        assert -90.0 < ctf.astigmatism_angle_degrees <= 90.0
        curves = result.curves
        n = curves.spatial_frequency.size
        assert n == 256
        for array in (curves.rotational_average, curves.equiphase_average, curves.ctf_fit,
                      curves.quality_of_fit, curves.noise_two_sigma):  # fmt: skip
            assert array.shape == (n,) and np.all(np.isfinite(array))
        assert 0.0 < result.score < 1.0
        image = ctffind.diagnostic_image(
            result.filtered_spectrum,
            ctf,
            spectrum_pixel_size_angstroms=result.spectrum_pixel_size_angstroms,
            min_resolution_angstroms=30.0,
        )
        assert image.shape == (512, 512) and image.dtype == np.float32


def test_large_astigmatism_is_found_by_the_default_search():
    for seed, (astig, angle) in enumerate([(2500.0, 40.0), (3000.0, -15.0)]):
        truth = CTFParams(
            defocus_1_angstroms=18000.0 + astig / 2,
            defocus_2_angstroms=18000.0 - astig / 2,
            astigmatism_angle_degrees=angle,
        ).enforce_convention()
        image = ring_field(
            (2048, 2048), 1.2, truth, envelope_b=60.0, signal_to_noise=1.0, seed=50 + seed
        )
        result = estimate_ctf(image, pixel_size_angstroms=1.2)
        mean_error, astig_error, angle_err = errors(result.ctf, truth)
        # Found (not a side lobe): within 1 % of the astigmatism, angle within 1°.
        assert mean_error <= 20.0 and astig_error <= 30.0 and angle_err <= 1.0, result.ctf


def test_phase_shift_is_found():
    truth = CTFParams(
        defocus_1_angstroms=6200.0,
        defocus_2_angstroms=5800.0,
        astigmatism_angle_degrees=10.0,
        additional_phase_shift_radians=1.2,
    )
    image = ring_field((2048, 2048), 1.0, truth, envelope_b=60.0, signal_to_noise=1.0, seed=9)
    settings = CTFFindSettings(
        find_phase_shift=True,
        min_phase_shift_radians=0.0,
        max_phase_shift_radians=math.pi,
        phase_shift_step_radians=math.radians(10.0),
    )
    result = estimate_ctf(image, pixel_size_angstroms=1.0, settings=settings)
    assert abs(result.phase_shift_radians - 1.2) <= math.radians(3.0)
    assert errors(result.ctf, truth)[0] <= 40.0


def test_blank_image_gives_a_low_score_and_a_warning():
    rng = np.random.default_rng(4)
    image = rng.poisson(40.0, size=(2048, 2048)).astype(np.float32)
    result = estimate_ctf(image, pixel_size_angstroms=1.0)
    assert not result.confident
    assert result.score < 0.05
    assert any("no reliable Thon rings" in w for w in result.warnings)


def true_fade_resolution(
    pixel: float, ctf: CTFParams, envelope_b: float, snr: float, n_tiles: int, box: int
) -> float:
    """Where the rings truly fade, from the ring field's known signal and noise.

    Per frequency the tile-averaged power is ``1 + snr E² sin²χ`` with
    ``E = exp(−B k²/4)``; its ring modulation has amplitude ``snr E² / 2``.
    Averaging the spectrum over the pixels of one ring period (half plane,
    ``n_tiles`` *independent* tiles = image area / tile area, overlapping
    tiles add no information) leaves a standard error
    ``(1 + snr E²/2) / sqrt(N_ring)``. The rings *truly fade* where the
    modulation falls below 2 standard errors.
    """
    dk = 1.0 / (box * pixel)
    wavelength = ctf.wavelength_angstroms
    for index in range(20, box // 2):
        k = index * dk
        slope = 2 * math.pi * wavelength * ctf.mean_defocus_angstroms * k
        period = math.pi / slope
        n_ring = math.pi * k * period / dk**2 * n_tiles
        e2 = math.exp(-envelope_b * k * k / 2.0)
        modulation = snr * e2 / 2.0
        if modulation < 2.0 * (1.0 + modulation) / math.sqrt(n_ring):
            return 1.0 / k
    return 1.0 / ((box // 2 - 1) * dk)


def test_fit_resolution_is_where_the_rings_fade():
    for seed, envelope_b in enumerate((300.0, 600.0)):
        truth = CTFParams(
            defocus_1_angstroms=15200.0, defocus_2_angstroms=14800.0, astigmatism_angle_degrees=30
        )
        image = ring_field(
            (2048, 2048), 1.4, truth, envelope_b=envelope_b, signal_to_noise=0.5, seed=70 + seed
        )
        result = estimate_ctf(image, pixel_size_angstroms=1.4)
        independent_tiles = (2048 // 512) ** 2
        fade = true_fade_resolution(1.4, truth, envelope_b, 0.5, independent_tiles, 512)
        assert abs(result.fit_resolution_angstroms - fade) <= 1.0, (
            envelope_b,
            result.fit_resolution_angstroms,
            fade,
        )


# --------------------------------------------------------------------------- simulator


def simulated_micrograph(
    index: int, pixel: float, truth: CTFParams, dose: float, *, shot_noise: bool = True
) -> np.ndarray:
    """2048² apoferritin-in-ice micrograph from the project's simulator (seeded per case)."""
    from cistemd.kernels import simulate
    from cistemd.kernels.rotation import random_orientations

    model = simulate.apoferritin_like_model(seed=0)
    rng = np.random.default_rng(500 + index)
    shape = (2048, 2048)
    positions = simulate.random_particle_positions(
        80,
        shape,
        pixel,
        min_separation_angstroms=2 * model.radius_angstroms,
        edge_margin_angstroms=model.radius_angstroms + 10,
        rng=rng,
    )
    image, _ = simulate.simulate_micrograph(
        model,
        shape=shape,
        pixel_size_angstroms=pixel,
        ctf=truth,
        positions_angstroms=positions,
        euler_degrees=random_orientations(positions.shape[0], rng),
        exposure_e_per_a2=dose,
        rng=rng,
        shot_noise=shot_noise,
    )
    return image


def cramer_rao_bounds(
    noise_free: np.ndarray, mean_counts: float, pixel: float, truth: CTFParams, band: tuple,
    *, phase: bool = False,
) -> np.ndarray:
    """Cramér–Rao bounds (σ) of (mean defocus Å, astigmatism Å, azimuth rad[, phase rad]).

    Whittle likelihood of the periodogram of the whole micrograph: mean
    ``N + S(k) sin²χ`` (``N`` the Poisson noise = mean counts, ``S`` twice the
    radially smoothed power of the noise-free image), variance its mean
    squared; Fisher matrix ``Σ (∂P/∂θᵢ)(∂P/∂θⱼ) / P²`` over the half-plane
    pixels of the band, inverted (the parameters are estimated together).
    The median |error| of an efficient estimator is 0.67 × these.
    """
    from scipy.ndimage import uniform_filter1d

    ny, nx = noise_free.shape
    power = np.abs(np.fft.rfft2(noise_free - noise_free.mean())) ** 2 / noise_free.size
    ky = np.fft.fftfreq(ny, pixel)[:, None]
    kx = np.fft.rfftfreq(nx, pixel)[None, :]
    k = np.sqrt(kx**2 + ky**2)
    bins = np.rint(k * nx * pixel).astype(int)
    profile = np.bincount(bins.ravel(), power.ravel()) / np.maximum(np.bincount(bins.ravel()), 1)
    envelope = 2 * uniform_filter1d(profile, 31)[bins]
    azimuth = np.arctan2(np.broadcast_to(ky, k.shape), np.broadcast_to(kx, k.shape))
    theta = math.radians(truth.astigmatism_angle_degrees)
    astigmatism = truth.defocus_1_angstroms - truth.defocus_2_angstroms
    cos2, sin2 = np.cos(2 * (azimuth - theta)), np.sin(2 * (azimuth - theta))
    wavelength = truth.wavelength_angstroms
    chi = (
        math.pi * wavelength * k**2 * (truth.mean_defocus_angstroms + 0.5 * astigmatism * cos2)
        - 0.5 * math.pi * wavelength**3 * truth.spherical_aberration_angstroms * k**4
        + math.asin(truth.amplitude_contrast)
        + truth.additional_phase_shift_radians
    )
    relative = envelope * np.sin(2 * chi) / (mean_counts + envelope * np.sin(chi) ** 2)
    g = math.pi * wavelength * k**2
    derivatives = [relative * g, relative * g * 0.5 * cos2, relative * g * astigmatism * sin2]
    if phase:
        derivatives.append(relative)
    inside = (k >= 1 / band[0]) & (k <= 1 / band[1])
    d = np.array([x[inside] for x in derivatives])
    return np.sqrt(np.diag(np.linalg.inv(d @ d.T)))


def sweep_case(index: int, rng: np.random.Generator, phase_plate: bool) -> tuple:
    pixel = (1.0, 1.5)[index % 2]
    kv = (300.0, 200.0)[(index // 2) % 2]
    cs = (2.7, 0.01)[(index // 4) % 2]
    mean = rng.uniform(6000, 32000)
    astig = rng.uniform(0, 1200)
    truth = CTFParams(
        defocus_1_angstroms=mean + astig / 2,
        defocus_2_angstroms=mean - astig / 2,
        astigmatism_angle_degrees=rng.uniform(-90, 90),
        voltage_kv=kv,
        spherical_aberration_mm=cs,
        additional_phase_shift_radians=rng.uniform(0.2, 1.8) if phase_plate else 0.0,
    ).enforce_convention()
    return pixel, truth, rng.uniform(30, 50)


def test_simulated_micrographs_fast():
    rng = np.random.default_rng(7)
    for index in range(1):
        pixel, truth, dose = sweep_case(index, rng, False)
        image = simulated_micrograph(index, pixel, truth, dose)
        result = estimate_ctf(
            image,
            pixel_size_angstroms=pixel,
            voltage_kv=truth.voltage_kv,
            spherical_aberration_mm=truth.spherical_aberration_mm,
        )
        assert result.confident, result.warnings
        assert errors(result.ctf, truth)[0] <= 250.0, (truth, result.ctf)


@pytest.mark.slow
def test_simulator_sweep_statistics():
    """11 simulated micrographs (8 without, 3 with a phase plate); statistics printed.

    Bounds: the estimator's errors relative to the Cramér–Rao bound of each
    micrograph (computed here from a noise-free twin), plus absolute bounds
    far below what a wrong ring assignment gives (≥ 500 Å).
    """
    rng = np.random.default_rng(2024)
    plain, phase_rows = [], []
    for index in range(11):
        phase_plate = index >= 8
        pixel, truth, dose = sweep_case(index, rng, phase_plate)
        image = simulated_micrograph(index, pixel, truth, dose)
        settings = CTFFindSettings(
            find_phase_shift=phase_plate,
            max_phase_shift_radians=math.pi,
            phase_shift_step_radians=math.radians(10.0),
        )
        result = estimate_ctf(
            image,
            pixel_size_angstroms=pixel,
            voltage_kv=truth.voltage_kv,
            spherical_aberration_mm=truth.spherical_aberration_mm,
            settings=settings,
        )
        mean_error, astig_error, angle_err = errors(result.ctf, truth)
        astig = truth.defocus_1_angstroms - truth.defocus_2_angstroms
        if phase_plate:
            phase_error = abs(
                math.degrees(result.phase_shift_radians - truth.additional_phase_shift_radians)
            )
            phase_rows.append((mean_error, phase_error))
        else:
            noise_free = simulated_micrograph(index, pixel, truth, dose, shot_noise=False)
            bound = cramer_rao_bounds(
                noise_free.astype(np.float64), dose * pixel * pixel, pixel, truth, (30.0, 5.0)
            )[0]
            plain.append((mean_error, astig_error, angle_err, astig, bound))
    table = np.array(plain)
    big = table[:, 3] > 300
    phases = np.array(phase_rows)
    print(
        f"\nsimulator, no phase plate ({len(table)}): median |mean defocus error| "
        f"{np.median(table[:, 0]):.1f} Å, worst {table[:, 0].max():.1f} Å; "
        f"median |error| / Cramér–Rao {np.median(table[:, 0] / table[:, 4]):.2f} "
        f"(median bound {np.median(table[:, 4]):.1f} Å); median astigmatism error "
        f"{np.median(table[:, 1]):.1f} Å; azimuth error (astig > 300 Å) median "
        f"{np.median(table[big, 2]):.2f}°, worst {table[big, 2].max():.2f}°\n"
        f"phase plate ({len(phases)}): median |mean defocus error| "
        f"{np.median(phases[:, 0]):.1f} Å; phase error median {np.median(phases[:, 1]):.2f}°, "
        f"worst {phases[:, 1].max():.2f}°"
    )
    # An efficient estimator has a median |error| of 0.67 × the bound (Gaussian).
    assert np.median(table[:, 0]) <= 30.0
    assert table[:, 0].max() <= 150.0
    assert np.median(table[:, 0] / table[:, 4]) <= 1.0
    assert np.median(table[:, 1]) <= 150.0
    assert np.median(phases[:, 1]) <= 6.0
    assert np.median(phases[:, 0]) <= 300.0


def test_astigmatism_restraint_and_exhaustive_search():
    truth = CTFParams(
        defocus_1_angstroms=16000.0, defocus_2_angstroms=13000.0, astigmatism_angle_degrees=-35.0
    )
    image = ring_field((2048, 2048), 1.4, truth, envelope_b=60.0, signal_to_noise=1.0, seed=81)
    exhaustive = estimate_ctf(
        image, pixel_size_angstroms=1.4, settings=CTFFindSettings(exhaustive_search=True)
    )
    mean_error, astig_error, angle_err = errors(exhaustive.ctf, truth)
    assert mean_error <= 20.0 and astig_error <= 30.0 and angle_err <= 1.0
    restrained = estimate_ctf(
        image,
        pixel_size_angstroms=1.4,
        settings=CTFFindSettings(astigmatism_tolerance_angstroms=200.0),
    )
    astig = restrained.defocus_1_angstroms - restrained.defocus_2_angstroms
    # The restraint keeps the astigmatism near the tolerance, at the cost of the fit.
    assert astig <= 800.0
    assert restrained.score < exhaustive.score
