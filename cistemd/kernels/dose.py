"""Electron-exposure (dose) weighting of Grant & Grigorieff (2015, eLife 4:e06980).

Radiation damage fades a specimen's high-resolution signal with the
accumulated exposure ``N`` (e/Å²). Its *critical exposure* -- the exposure
that attenuates the amplitude at spatial frequency ``k`` to ``1/e`` -- was
measured on rotavirus VP6 at 300 kV as

    N_c(k) = (a · k^b + c) · s,   a = 0.24499, b = −1.6649, c = 2.8141

with ``k`` in 1/Å and ``s`` a voltage scale: 1.0 at 300 kV, 0.8 at 200 kV and
0.532 at 100 kV (cisTEM accepts exactly these three voltages, within ±1 kV).
The filter of a frame whose exposure ends at ``N`` is

    q(k) = exp(−N / (2 N_c(k)))

(the amplitude attenuation; cisTEM's ``ElectronDose::ReturnDoseFilter``), with
the zero-frequency term set to 1. An exposure-weighted sum is ``Σ q_i F_i``;
with *restore power* it is divided by ``sqrt(Σ q_i²)`` per Fourier pixel so
the sum's noise power is flat again. The cumulative (matched-filter) variant
``2 N_c (exp(−N₀/(2N_c)) − exp(−N₁/(2N_c))) / N₁`` is also provided.

Everything is pure numpy; grids follow :mod:`cistemd.kernels.fourier`
(``(ny, nx)`` numpy order, ``rfft=True`` half-plane layout by default).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cistemd.kernels.fourier import spatial_frequency_grid

__all__ = [
    "CRITICAL_EXPOSURE_A",
    "CRITICAL_EXPOSURE_B",
    "CRITICAL_EXPOSURE_C",
    "critical_exposure",
    "cumulative_exposure_filter",
    "exposure_filter",
    "exposure_filter_2d",
    "frame_exposures",
    "voltage_scale",
    "weighted_sum_weights",
]

CRITICAL_EXPOSURE_A = 0.24499
"""Coefficient ``a`` of the critical-exposure curve (Grant & Grigorieff 2015)."""
CRITICAL_EXPOSURE_B = -1.6649
"""Exponent ``b`` of the critical-exposure curve."""
CRITICAL_EXPOSURE_C = 2.8141
"""Offset ``c`` of the critical-exposure curve, e/Å²."""

_VOLTAGE_SCALES = ((300.0, 1.0), (200.0, 0.8), (100.0, 0.532))


def voltage_scale(voltage_kv: float) -> float:
    """Return the critical-exposure scale ``s`` for an accelerating voltage.

    Parameters
    ----------
    voltage_kv
        300, 200 or 100 kV (each accepted within ±1 kV, as cisTEM does).

    Returns
    -------
    float
        1.0, 0.8 or 0.532.

    Raises
    ------
    ValueError
        For any other voltage (the curve was only measured/scaled for these).
    """
    for nominal, scale in _VOLTAGE_SCALES:
        if abs(float(voltage_kv) - nominal) < 1.0:
            return scale
    raise ValueError(
        f"voltage_kv must be 300, 200 or 100 kV for the exposure filter, got {voltage_kv}"
    )


def critical_exposure(
    spatial_frequency_per_angstrom: npt.ArrayLike, voltage_kv: float = 300.0
) -> np.ndarray:
    """Return the critical exposure ``N_c(k)`` in e/Å².

    Parameters
    ----------
    spatial_frequency_per_angstrom
        ``|k|`` in 1/Å, any shape. ``k = 0`` gives ``inf`` (no damage at DC).
    voltage_kv
        300, 200 or 100 kV (see :func:`voltage_scale`).

    Returns
    -------
    numpy.ndarray
        ``(a k^b + c) s``, float64, same shape.
    """
    k = np.asarray(spatial_frequency_per_angstrom, dtype=np.float64)
    scale = voltage_scale(voltage_kv)
    with np.errstate(divide="ignore"):
        powered = np.where(k > 0, np.power(np.where(k > 0, k, 1.0), CRITICAL_EXPOSURE_B), np.inf)
    return (CRITICAL_EXPOSURE_A * powered + CRITICAL_EXPOSURE_C) * scale


def exposure_filter(
    spatial_frequency_per_angstrom: npt.ArrayLike,
    exposure_e_per_a2: float,
    voltage_kv: float = 300.0,
) -> np.ndarray:
    """Return the amplitude filter ``exp(−N / (2 N_c(k)))`` of an exposure ``N``.

    Parameters
    ----------
    spatial_frequency_per_angstrom
        ``|k|`` in 1/Å, any shape; ``k = 0`` gives exactly 1.
    exposure_e_per_a2
        Accumulated exposure at the *end* of the frame (including any
        pre-exposure), e/Å², as cisTEM uses it.
    voltage_kv
        300, 200 or 100 kV.

    Returns
    -------
    numpy.ndarray
        float64 in (0, 1], same shape.
    """
    nc = critical_exposure(spatial_frequency_per_angstrom, voltage_kv)
    return np.exp(-0.5 * float(exposure_e_per_a2) / nc)


def cumulative_exposure_filter(
    spatial_frequency_per_angstrom: npt.ArrayLike,
    exposure_start_e_per_a2: float,
    exposure_end_e_per_a2: float,
    voltage_kv: float = 300.0,
) -> np.ndarray:
    """Return the matched filter ``2 N_c (e^{−N₀/2N_c} − e^{−N₁/2N_c}) / N₁``.

    Parameters
    ----------
    spatial_frequency_per_angstrom
        ``|k|`` in 1/Å; ``k = 0`` gives ``(N₁ − N₀) / N₁``.
    exposure_start_e_per_a2, exposure_end_e_per_a2
        ``N₀`` and ``N₁`` (``N₁ > 0``).
    voltage_kv
        300, 200 or 100 kV.

    Returns
    -------
    numpy.ndarray
        float64, same shape.
    """
    n0, n1 = float(exposure_start_e_per_a2), float(exposure_end_e_per_a2)
    if n1 <= 0:
        raise ValueError(f"exposure_end_e_per_a2 must be positive, got {n1}")
    nc = critical_exposure(spatial_frequency_per_angstrom, voltage_kv)
    finite = np.isfinite(nc)
    safe = np.where(finite, nc, 1.0)
    value = 2.0 * safe * (np.exp(-0.5 * n0 / safe) - np.exp(-0.5 * n1 / safe)) / n1
    return np.where(finite, value, (n1 - n0) / n1)


def frame_exposures(
    n_frames: int, exposure_per_frame_e_per_a2: float, pre_exposure_e_per_a2: float = 0.0
) -> np.ndarray:
    """Return the accumulated exposure at the end of each frame, ``(i + 1) · dose + pre``.

    Parameters
    ----------
    n_frames
        Number of frames.
    exposure_per_frame_e_per_a2
        Exposure per frame, e/Å².
    pre_exposure_e_per_a2
        Exposure before the first frame, e/Å².

    Returns
    -------
    numpy.ndarray
        ``(n_frames,)`` float64.
    """
    return (np.arange(n_frames) + 1.0) * float(exposure_per_frame_e_per_a2) + float(
        pre_exposure_e_per_a2
    )


def exposure_filter_2d(
    shape: tuple[int, int],
    pixel_size_angstroms: float,
    exposure_e_per_a2: float,
    voltage_kv: float = 300.0,
    *,
    rfft: bool = True,
) -> np.ndarray:
    """Return the exposure filter of one frame on a 2-D Fourier grid.

    Parameters
    ----------
    shape
        Real-space ``(ny, nx)``.
    pixel_size_angstroms
        Å per pixel.
    exposure_e_per_a2
        Accumulated exposure at the end of the frame, e/Å².
    voltage_kv
        300, 200 or 100 kV.
    rfft
        Half-plane ``rfft2`` layout (default) or the full ``fft2`` layout.

    Returns
    -------
    numpy.ndarray
        float64 filter, DC = 1.
    """
    ky, kx = spatial_frequency_grid(shape, pixel_size_angstroms, rfft=rfft)
    return exposure_filter(np.sqrt(kx * kx + ky * ky), exposure_e_per_a2, voltage_kv)


def weighted_sum_weights(
    spatial_frequency_per_angstrom: npt.ArrayLike,
    exposures_e_per_a2: npt.ArrayLike,
    voltage_kv: float = 300.0,
    *,
    restore_power: bool = True,
) -> np.ndarray:
    """Return the per-frame weights of an exposure-weighted sum.

    Parameters
    ----------
    spatial_frequency_per_angstrom
        ``|k|`` in 1/Å, shape ``S``.
    exposures_e_per_a2
        ``(n,)`` accumulated exposure at the end of each summed frame.
    voltage_kv
        300, 200 or 100 kV.
    restore_power
        Divide by ``sqrt(Σ q_i²)`` per frequency (cisTEM's "restore noise power").

    Returns
    -------
    numpy.ndarray
        ``(n, *S)`` weights ``w_i(k)``; the sum is ``Σ w_i F_i``.
    """
    exposures = np.asarray(exposures_e_per_a2, dtype=np.float64).reshape(-1)
    weights = np.stack([exposure_filter(spatial_frequency_per_angstrom, e, voltage_kv)
                        for e in exposures])
    if restore_power:
        weights = weights / np.sqrt(np.sum(weights * weights, axis=0))
    return weights
