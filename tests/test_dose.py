"""Exposure filter: cisTEM's console-test golden values, voltage scaling, restore power."""

from __future__ import annotations

import numpy as np
import pytest

from cistemd.kernels import dose

# cisTEM console_test TestElectronExposureFilter: ElectronDose(kV, pixel size)
# .CalculateDoseFilterAs1DArray(image, filter, 15, 30) on 1024² and 1025² images;
# filter values at 1-D indices {0, 13, 1024 / 3, 1023} of the half-plane layout
# (rows of n // 2 + 1 complex values), for kV in (300, 200, 100) x pixel size in
# (0.72, 1.0, 2.1). The console test reads the odd image at the even indices too.
GOLDEN_EVEN = [
    1.000000000, 0.929921567, 0.017324856, 0.010133515, 1.000000000, 0.958591580, 0.031609546,
    0.015432503, 1.000000000, 0.987710178, 0.155882418, 0.065504745, 1.000000000, 0.913183212,
    0.006285460, 0.003215143, 1.000000000, 0.948510230, 0.013328240, 0.005439333, 1.000000000,
    0.984661400, 0.097948194, 0.033139121, 1.000000000, 0.872345626, 0.000488910, 0.000178414,
    1.000000000, 0.923584640, 0.001513943, 0.000393374, 1.000000000, 0.977023780, 0.030387951,
    0.005955920,
]
GOLDEN_ODD = [
    1.000000000, 0.930029809, 0.017352197, 0.010144006, 1.000000000, 0.958656907, 0.031672075,
    0.015455280, 1.000000000, 0.987729967, 0.156189293, 0.065646693, 1.000000000, 0.913316071,
    0.006297863, 0.003219303, 1.000000000, 0.948590994, 0.013361209, 0.005449366, 1.000000000,
    0.984686077, 0.098189279, 0.033228900, 1.000000000, 0.872536480, 0.000490361, 0.000178761,
    1.000000000, 0.923702955, 0.001519577, 0.000394466, 1.000000000, 0.977060616, 0.030500494,
    0.005980202,
]  # fmt: skip


@pytest.mark.parametrize(("size", "golden"), [(1024, GOLDEN_EVEN), (1025, GOLDEN_ODD)])
def test_exposure_filter_matches_cistem_console_test(size, golden):
    indices = [0, 13, 1024 // 3, 1023]
    got = []
    for voltage in (300.0, 200.0, 100.0):
        for pixel_size in (0.72, 1.0, 2.1):
            filt = dose.exposure_filter_2d((size, size), pixel_size, 30.0, voltage)
            assert filt.shape == (size, size // 2 + 1)
            flat = filt.reshape(-1)
            got.extend(float(flat[i]) for i in indices)
    np.testing.assert_allclose(got, golden, atol=1e-4, rtol=0)


def test_critical_exposure_constants_and_voltage_scaling():
    k = np.array([0.05, 0.1, 0.25, 0.5])
    expected = 0.24499 * k**-1.6649 + 2.8141
    np.testing.assert_allclose(dose.critical_exposure(k, 300), expected, rtol=1e-12)
    np.testing.assert_allclose(dose.critical_exposure(k, 200.5), 0.8 * expected, rtol=1e-12)
    np.testing.assert_allclose(dose.critical_exposure(k, 99.2), 0.532 * expected, rtol=1e-12)
    assert np.isinf(dose.critical_exposure(0.0))
    assert dose.exposure_filter(0.0, 100.0) == 1.0
    with pytest.raises(ValueError, match="300, 200 or 100"):
        dose.voltage_scale(120.0)


def test_frame_exposures_and_restore_power_flatten_noise_power():
    exposures = dose.frame_exposures(10, 1.5, pre_exposure_e_per_a2=2.0)
    np.testing.assert_allclose(exposures, 2.0 + 1.5 * np.arange(1, 11))
    k = np.linspace(0.0, 0.5, 50)
    weights = dose.weighted_sum_weights(k, exposures, restore_power=True)
    # Independent unit-variance noise in every frame keeps unit variance in the sum.
    np.testing.assert_allclose(np.sum(weights**2, axis=0), 1.0, rtol=1e-12)
    plain = dose.weighted_sum_weights(k, exposures, restore_power=False)
    assert np.all(np.diff(plain[:, -1]) < 0)  # later frames weigh less at high resolution
    np.testing.assert_allclose(plain[:, 0], 1.0)


def test_cumulative_filter_is_the_mean_attenuation_over_the_frame_at_low_dose():
    k = np.array([0.0, 0.1, 0.3])
    value = dose.cumulative_exposure_filter(k, 0.0, 3.0)
    nc = dose.critical_exposure(k[1:])
    grid = np.linspace(0.0, 3.0, 20001)
    mean = np.trapezoid(np.exp(-grid[:, None] / (2 * nc)), grid, axis=0) / 3.0
    np.testing.assert_allclose(value[1:], mean, rtol=1e-6)
    assert value[0] == pytest.approx(1.0)
