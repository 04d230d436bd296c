"""The CTF model against the published CTFFIND/cisTEM formula, and its symmetries."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cistemd.kernels.ctf import (
    CTFParams,
    amplitude_contrast_phase_radians,
    chi,
    ctf_1d,
    ctf_2d,
    ctf_zero_frequencies,
    defocus_at_azimuth,
    electron_wavelength_angstroms,
)

# --- an independent, by-hand evaluation of the published formula --------------
# Rohou & Grigorieff 2015 (CTFFIND4), cisTEM src/core/ctf.cpp:
#   lambda = h / sqrt(2 m0 e U (1 + e U / (2 m0 c^2)))
#   df(a) = 0.5 (df1 + df2 + (df1 - df2) cos 2(a - a_ast))
#   chi = pi lambda k^2 (df - 0.5 lambda^2 k^2 Cs) + phase + atan(A / sqrt(1 - A^2))
#   CTF = -sin(chi)
H, M0, E, C = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0


def hand_wavelength(kv):
    u = kv * 1e3
    return H / math.sqrt(2 * M0 * E * u * (1 + E * u / (2 * M0 * C * C))) * 1e10


def hand_ctf(k, azimuth_deg, df1, df2, ast_deg, kv, cs_mm, ac, phase):
    lam = hand_wavelength(kv)
    df = 0.5 * (df1 + df2 + (df1 - df2) * math.cos(2 * math.radians(azimuth_deg - ast_deg)))
    w = math.atan(ac / math.sqrt(1 - ac * ac))
    x = math.pi * lam * k * k * (df - 0.5 * lam * lam * k * k * cs_mm * 1e7) + phase + w
    return -math.sin(x)


@pytest.mark.parametrize(
    "kv, expected",
    [(300.0, 0.019687), (200.0, 0.025079), (100.0, 0.037014), (120.0, 0.033492)],
)
def test_wavelength_matches_textbook_values(kv, expected):
    assert electron_wavelength_angstroms(kv) == pytest.approx(expected, abs=2e-6)
    # cisTEM's rounded constants agree to better than 5e-5 relative.
    cistem = 12.2639 / math.sqrt(kv * 1000 + 0.97845e-6 * (kv * 1000) ** 2)
    assert electron_wavelength_angstroms(kv) == pytest.approx(cistem, rel=5e-5)


def test_amplitude_contrast_phase():
    assert amplitude_contrast_phase_radians(0.07) == pytest.approx(math.asin(0.07), rel=1e-12)
    assert amplitude_contrast_phase_radians(0.0) == 0.0


POINTS = [
    # k (1/A), azimuth (deg), df1, df2, angle, kV, Cs, AC, phase (rad)
    (0.05, 0.0, 15000.0, 15000.0, 0.0, 300.0, 2.7, 0.07, 0.0),
    (0.12, 30.0, 20000.0, 18000.0, 45.0, 300.0, 2.7, 0.07, 0.0),
    (0.31, -75.0, 8000.0, 7200.0, -20.0, 200.0, 2.0, 0.1, 0.0),
    (0.21, 200.0, 5000.0, 4800.0, 80.0, 300.0, 0.01, 0.07, math.pi / 2),
    (0.40, 135.0, 25000.0, 24000.0, 10.0, 100.0, 1.4, 0.15, 0.3),
]


@pytest.mark.parametrize("point", POINTS)
def test_ctf_agrees_with_hand_evaluation(point):
    k, azimuth, df1, df2, angle, kv, cs, ac, phase = point
    params = CTFParams(
        defocus_1_angstroms=df1,
        defocus_2_angstroms=df2,
        astigmatism_angle_degrees=angle,
        voltage_kv=kv,
        spherical_aberration_mm=cs,
        amplitude_contrast=ac,
        additional_phase_shift_radians=phase,
    )
    expected = hand_ctf(k, azimuth, df1, df2, angle, kv, cs, ac, phase)
    assert float(ctf_1d(k, params, azimuth_degrees=azimuth)) == pytest.approx(expected, abs=1e-9)
    assert float(-np.sin(chi(k, params, azimuth_degrees=azimuth))) == pytest.approx(
        expected, abs=1e-9
    )


def test_ctf_at_zero_frequency_is_minus_amplitude_contrast():
    params = CTFParams(
        defocus_1_angstroms=15000.0, defocus_2_angstroms=14000.0, amplitude_contrast=0.07
    )
    assert float(ctf_1d(0.0, params)) == pytest.approx(-0.07, abs=1e-12)
    with_plate = CTFParams(
        defocus_1_angstroms=15000.0,
        defocus_2_angstroms=14000.0,
        additional_phase_shift_radians=math.pi / 2,
    )
    assert float(ctf_1d(0.0, with_plate)) == pytest.approx(-math.sqrt(1 - 0.07**2), abs=1e-12)


def test_underfocus_first_lobe_is_negative():
    params = CTFParams(defocus_1_angstroms=20000.0, defocus_2_angstroms=20000.0)
    zeros = ctf_zero_frequencies(params, azimuth_degrees=None, max_frequency_per_angstrom=0.5)
    first_zero = zeros[0]
    k = np.linspace(0.001, first_zero * 0.99, 50)
    assert np.all(ctf_1d(k, params) < 0)


def test_defocus_at_azimuth_follows_the_convention():
    params = CTFParams(
        defocus_1_angstroms=20000.0, defocus_2_angstroms=18000.0, astigmatism_angle_degrees=30.0
    )
    assert float(defocus_at_azimuth(params, 30.0)) == pytest.approx(20000.0)
    assert float(defocus_at_azimuth(params, 120.0)) == pytest.approx(18000.0)
    assert float(defocus_at_azimuth(params, 75.0)) == pytest.approx(19000.0)


def test_ctf_2d_pixels_agree_with_hand_evaluation():
    shape, psize = (48, 64), 1.3
    params = CTFParams(
        defocus_1_angstroms=12000.0,
        defocus_2_angstroms=10000.0,
        astigmatism_angle_degrees=25.0,
        voltage_kv=300.0,
        spherical_aberration_mm=2.7,
        amplitude_contrast=0.07,
        additional_phase_shift_radians=0.4,
    )
    image = ctf_2d(shape, psize, params)
    for iy, ix in [(0, 1), (5, 0), (7, 9), (40, 20), (30, 31), (24, 32)]:
        ky = np.fft.fftfreq(shape[0], psize)[iy]
        kx = np.fft.fftfreq(shape[1], psize)[ix]
        azimuth = math.degrees(math.atan2(ky, kx))
        k = math.hypot(kx, ky)
        expected = hand_ctf(k, azimuth, 12000.0, 10000.0, 25.0, 300.0, 2.7, 0.07, 0.4)
        assert image[iy, ix] == pytest.approx(expected, abs=2e-6)


def test_ctf_2d_layouts_agree():
    shape = (40, 50)
    params = CTFParams(
        defocus_1_angstroms=9000.0, defocus_2_angstroms=8000.0, astigmatism_angle_degrees=-33.0
    )
    full = ctf_2d(shape, 1.1, params)
    half = ctf_2d(shape, 1.1, params, rfft=True)
    centred = ctf_2d(shape, 1.1, params, centered=True)
    assert full.dtype == np.float32 and half.shape == (40, 26)
    np.testing.assert_array_equal(half[:, :25], full[:, :25])
    # The rfft's last column is kx = +Nyquist, i.e. the mirror of the full plane's -Nyquist
    # (except the corner, where ky is the Nyquist too and has no mirror on the grid).
    rows = np.r_[0:20, 21:40]
    np.testing.assert_array_equal(half[rows, 25], full[(-rows) % 40, 25])
    np.testing.assert_array_equal(centred, np.fft.fftshift(full))
    assert centred[20, 25] == pytest.approx(-0.07, abs=1e-6)
    with pytest.raises(ValueError):
        ctf_2d(shape, 1.1, params, rfft=True, centered=True)


def test_envelope_multiplies_by_exp_minus_b_k2_over_4():
    params = CTFParams(defocus_1_angstroms=15000.0, defocus_2_angstroms=15000.0)
    plain = ctf_2d((32, 32), 1.0, params)
    damped = ctf_2d((32, 32), 1.0, params, envelope_b_factor_angstroms2=80.0)
    k2 = np.add.outer(np.fft.fftfreq(32) ** 2, np.fft.fftfreq(32) ** 2)
    np.testing.assert_allclose(damped, plain * np.exp(-80.0 * k2 / 4), atol=1e-6)
    np.testing.assert_allclose(
        ctf_1d(0.3, params, envelope_b_factor_angstroms2=80.0),
        ctf_1d(0.3, params) * math.exp(-80 * 0.09 / 4),
    )


defocus = st.floats(3000.0, 40000.0)
angles = st.floats(-180.0, 180.0)


@settings(max_examples=30, deadline=None)
@given(defocus, defocus, angles, st.floats(0.0, 3.0))
def test_ctf_2d_symmetries(df1, df2, angle, phase):
    shape = (33, 31)  # odd: every k has its -k on the grid
    params = CTFParams(
        defocus_1_angstroms=df1,
        defocus_2_angstroms=df2,
        astigmatism_angle_degrees=angle,
        additional_phase_shift_radians=phase,
    )
    image = ctf_2d(shape, 1.0, params).astype(np.float64)
    # Friedel symmetry: CTF(k) = CTF(-k).
    flipped = image[(-np.arange(33)) % 33][:, (-np.arange(31)) % 31]
    np.testing.assert_allclose(flipped, image, atol=1e-6)
    # The astigmatism azimuth is defined modulo 180 degrees.
    turned = CTFParams(
        defocus_1_angstroms=df1,
        defocus_2_angstroms=df2,
        astigmatism_angle_degrees=angle + 180.0,
        additional_phase_shift_radians=phase,
    )
    np.testing.assert_allclose(ctf_2d(shape, 1.0, turned), image, atol=1e-5)
    # Swapping df1/df2 and adding 90 degrees describes the same CTF.
    swapped = CTFParams(
        defocus_1_angstroms=df2,
        defocus_2_angstroms=df1,
        astigmatism_angle_degrees=angle + 90.0,
        additional_phase_shift_radians=phase,
    )
    np.testing.assert_allclose(ctf_2d(shape, 1.0, swapped), image, atol=1e-5)
    conventional = params.enforce_convention()
    assert conventional.defocus_1_angstroms >= conventional.defocus_2_angstroms
    assert -90.0 < conventional.astigmatism_angle_degrees <= 90.0
    np.testing.assert_allclose(ctf_2d(shape, 1.0, conventional), image, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    defocus,
    defocus,
    angles,
    angles,
    st.sampled_from([100.0, 200.0, 300.0]),
    st.floats(0.0, 6.0),
    st.floats(0.0, 0.3),
    st.floats(0.0, 3.0),
)
def test_zero_frequencies_are_zeros_and_are_all_of_them(df1, df2, angle, azimuth, kv, cs, ac, ph):
    params = CTFParams(
        defocus_1_angstroms=df1,
        defocus_2_angstroms=df2,
        astigmatism_angle_degrees=angle,
        voltage_kv=kv,
        spherical_aberration_mm=cs,
        amplitude_contrast=ac,
        additional_phase_shift_radians=ph,
    )
    k_max = 0.5
    zeros = ctf_zero_frequencies(params, azimuth_degrees=azimuth, max_frequency_per_angstrom=k_max)
    assert np.all(np.diff(zeros) > 0) and np.all((zeros > 0) & (zeros <= k_max))
    np.testing.assert_allclose(ctf_1d(zeros, params, azimuth_degrees=azimuth), 0.0, atol=1e-7)
    # Count sign changes on a fine grid between the zeros: there must be none left over.
    k = np.linspace(1e-6, k_max, 400_001)
    values = ctf_1d(k, params, azimuth_degrees=azimuth)
    changes = np.count_nonzero(np.signbit(values[1:]) != np.signbit(values[:-1]))
    # A double root (chi touching n*pi at its extremum) is a zero without a sign change.
    assert changes <= zeros.size <= changes + 1


def test_zero_frequencies_beyond_the_chi_extremum():
    # Low defocus, large Cs: chi peaks inside the band and the rings turn back.
    params = CTFParams(
        defocus_1_angstroms=2000.0,
        defocus_2_angstroms=2000.0,
        spherical_aberration_mm=6.0,
        amplitude_contrast=0.0,
    )
    zeros = ctf_zero_frequencies(params, azimuth_degrees=None, max_frequency_per_angstrom=0.6)
    lam = hand_wavelength(300.0)
    k_extremum = math.sqrt(2000.0 / (lam**2 * 6.0e7))
    assert np.any(zeros < k_extremum) and np.any(zeros > k_extremum)
    np.testing.assert_allclose(ctf_1d(zeros, params), 0.0, atol=1e-9)


def test_first_zero_by_hand():
    # No Cs, no amplitude contrast: chi = pi lambda df k^2 = pi  ->  k = 1/sqrt(lambda df).
    params = CTFParams(
        defocus_1_angstroms=10000.0,
        defocus_2_angstroms=10000.0,
        spherical_aberration_mm=0.0,
        amplitude_contrast=0.0,
    )
    zeros = ctf_zero_frequencies(params, azimuth_degrees=0.0, max_frequency_per_angstrom=0.2)
    lam = hand_wavelength(300.0)
    np.testing.assert_allclose(zeros[:3], np.sqrt(np.arange(1, 4) / (lam * 10000.0)), rtol=1e-12)


def test_params_validation_and_units():
    params = CTFParams(
        defocus_1_angstroms=15000,
        defocus_2_angstroms=14000,
        additional_phase_shift_radians=math.pi / 2,
    )
    assert isinstance(params.defocus_1_angstroms, float)
    assert params.additional_phase_shift_degrees == pytest.approx(90.0)
    assert params.spherical_aberration_angstroms == pytest.approx(2.7e7)
    with pytest.raises(TypeError):
        CTFParams(15000.0, 14000.0)  # type: ignore[misc]  # keyword-only: no mix-ups
    with pytest.raises(ValueError, match="amplitude_contrast"):
        CTFParams(defocus_1_angstroms=1.0, defocus_2_angstroms=1.0, amplitude_contrast=1.0)
    with pytest.raises(ValueError, match="voltage"):
        CTFParams(defocus_1_angstroms=1.0, defocus_2_angstroms=1.0, voltage_kv=0.0)
    with pytest.raises(ValueError, match="finite"):
        CTFParams(defocus_1_angstroms=float("nan"), defocus_2_angstroms=1.0)
