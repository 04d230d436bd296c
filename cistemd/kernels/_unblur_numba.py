"""Numba inner loop of :mod:`cistemd.kernels.unblur`: the shifted, exposure-weighted sums.

One pass over the stored frame spectra builds, for every Fourier pixel, both
the plain aligned sum and the exposure-weighted one, with the phase ramps and
the per-frame filters generated on the fly (no per-frame temporary arrays):

* ramp of frame i at pixel (y, x): ``ey[i, y] * ex[i, x]`` (separable);
* filter ``q_i(k) = exp(-N_i / (2 N_c(k)))`` with ``N_i`` the exposure at the
  end of frame i; over consecutive frames ``q_{i+1} = q_i * exp(-dose / (2 N_c))``,
  so only two exponentials per pixel are evaluated, not one per frame.

Called through :func:`cistemd.kernels.unblur.align_movie`, which checks shapes
and dtypes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, prange

__all__ = ["reference_products", "shift_and_total", "weighted_sums"]


@njit(cache=True, parallel=True, fastmath=True)
def weighted_sums(
    spectra: Any,
    ex: np.ndarray,
    ey: np.ndarray,
    first: int,
    last: int,
    kx2: np.ndarray,
    ky2: np.ndarray,
    critical_a: float,
    critical_half_b: float,
    critical_c: float,
    voltage_scale: float,
    first_exposure: float,
    exposure_per_frame: float,
    apply_filter: bool,
    restore_power: bool,
    out_plain: np.ndarray,
    out_filtered: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Accumulate ``Σ F_i ramp_i`` and ``Σ q_i F_i ramp_i (/ sqrt(Σ q_i²))``, frames first..last.

    ``spectra`` is a typed list of n ``(h, w)`` complex64 spectra (rfft
    layout; a list, so the frames' transforms are kept without copying them
    into one array), ``ex`` ``(n, w)`` and ``ey`` ``(n, h)`` complex64 phase
    factors, ``kx2`` ``(w,)`` and ``ky2`` ``(h,)`` squared frequencies in
    1/Å², outputs ``(h, w)`` complex64.
    """
    h = spectra[0].shape[0]
    w = spectra[0].shape[1]
    for y in prange(h):
        q = np.empty(w, dtype=np.float32)
        r = np.empty(w, dtype=np.float32)
        q2 = np.zeros(w, dtype=np.float32)
        plain = np.zeros(w, dtype=np.complex64)
        filtered = np.zeros(w, dtype=np.complex64)
        for x in range(w):
            k2 = ky2[y] + kx2[x]
            if apply_filter and k2 > 0.0:
                rate = -0.5 / ((critical_a * k2**critical_half_b + critical_c) * voltage_scale)
                r[x] = math.exp(rate * exposure_per_frame)
                if first_exposure == exposure_per_frame:
                    q[x] = r[x]
                else:
                    q[x] = math.exp(rate * first_exposure)
            else:
                q[x] = 1.0
                r[x] = 1.0
        for i in range(first, last + 1):
            frame = spectra[i]
            phase_y = ey[i, y]
            for x in range(w):
                value = frame[y, x] * (phase_y * ex[i, x])
                plain[x] += value
                filtered[x] += q[x] * value
                q2[x] += q[x] * q[x]
                q[x] *= r[x]
        for x in range(w):
            out_plain[y, x] = plain[x]
            if restore_power and apply_filter:
                out_filtered[y, x] = filtered[x] / math.sqrt(q2[x])
            else:
                out_filtered[y, x] = filtered[x]


@njit(cache=True, parallel=True, fastmath=True)
def shift_and_total(
    spectra: np.ndarray, ey: np.ndarray, ex: np.ndarray, shifted: np.ndarray, total: np.ndarray
) -> None:  # pragma: no cover - compiled
    """``shifted[i] = spectra[i] · ey[i, y] · ex[i, x]`` and ``total = Σ_i shifted[i]``.

    ``spectra``/``shifted`` ``(n, h, w)`` complex64, ``ey`` ``(n, h)``, ``ex``
    ``(n, w)`` complex64, ``total`` ``(h, w)`` complex64 (overwritten).
    """
    n, h, w = spectra.shape
    for y in prange(h):
        for x in range(w):
            total[y, x] = 0.0
        for i in range(n):
            phase_y = ey[i, y]
            for x in range(w):
                value = spectra[i, y, x] * (phase_y * ex[i, x])
                shifted[i, y, x] = value
                total[y, x] += value


@njit(cache=True, parallel=True, fastmath=True)
def reference_products(
    shifted: np.ndarray, total: np.ndarray, weight: np.ndarray, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    """``out[i] = weight · (total − shifted[i]) · conj(shifted[i])``: cross-power spectra.

    The inverse transform of ``out[i]`` is the cross-correlation of frame ``i``
    with the (filtered) sum of the other frames; its peak is the shift to apply.
    """
    n, h, w = shifted.shape
    for i in prange(n):
        for y in range(h):
            for x in range(w):
                value = shifted[i, y, x]
                out[i, y, x] = weight[y, x] * (total[y, x] - value) * np.conj(value)
