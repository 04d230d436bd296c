"""Numba inner loops of :mod:`cistemd.kernels.ctffind` (private; call the wrappers there).

The astigmatic defocus is parametrised linearly,
``Δf(α) = m + a cos 2α + b sin 2α`` (``m`` the mean defocus, ``hypot(a, b)``
half the astigmatism, ``½ atan2(b, a)`` its azimuth), so that the score is a
smooth function of the parameters without an angle wrap-around.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = [
    "accumulate_power",
    "correlation_and_gradient",
    "ring_background_normal_equations",
    "sector_grid_search",
    "whittle_and_gradient",
]


@njit(cache=True, nogil=True, inline="always")
def _normalised_correlation(
    sum_s: float,
    sum_ss: float,
    sum_xs: float,
    g_s: np.ndarray,
    g_ss: np.ndarray,
    g_xs: np.ndarray,
    n: int,
) -> tuple[float, np.ndarray]:  # pragma: no cover - compiled
    """``r = Σxs / sqrt(Σs² − (Σs)²/n)`` and its gradient from the sums' gradients."""
    variance = sum_ss - sum_s * sum_s / n
    gradient = np.zeros(4)
    if variance <= 0.0:
        return 0.0, gradient
    root = math.sqrt(variance)
    r = sum_xs / root
    for j in range(4):
        d_variance = 2.0 * g_ss[j] - 2.0 * sum_s * g_s[j] / n
        gradient[j] = g_xs[j] / root - 0.5 * sum_xs * d_variance / (variance * root)
    return r, gradient


@njit(cache=True, nogil=True, inline="always")
def _chi(
    kk: float, cos2: float, sin2: float, m: float, a: float, b: float, offset: float,
    constants: np.ndarray,
) -> float:  # pragma: no cover - compiled
    """``χ = πλ k² (m + a cos 2α + b sin 2α) − ½πλ³Cs k⁴ + offset`` (see below)."""
    return constants[0] * kk * (m + a * cos2 + b * sin2) - constants[1] * kk * kk + offset


@njit(cache=True, nogil=True)
def correlation_and_gradient(
    k2: np.ndarray,
    cos2a: np.ndarray,
    sin2a: np.ndarray,
    data: np.ndarray,
    weight: np.ndarray,
    params: np.ndarray,
    constants: np.ndarray,
    power_model: bool = False,
) -> tuple[float, np.ndarray]:  # pragma: no cover - compiled
    """Pearson correlation of ``data`` with ``weight · |sin χ|`` and its gradient.

    With ``power_model`` the model is ``weight · (−cos 2χ)`` instead:
    ``−cos 2χ = 2 sin²χ − 1`` is the shape of the Thon-ring modulation of a
    power spectrum. ``data`` must be centred (zero mean) with unit sum of squares.
    ``params = (m, a, b, φ)`` (Å, Å, Å, rad); ``constants = (πλ, ½πλ³Cs, w)``
    with ``w`` the amplitude-contrast phase, so that
    ``χ = πλ k² Δf(α) − ½πλ³Cs k⁴ + φ + w``.

    Returns
    -------
    tuple
        ``(r, dr/dparams)``, the gradient a ``(4,)`` array.
    """
    n = k2.shape[0]
    pl = constants[0]
    offset = params[3] + constants[2]
    m, a, b = params[0], params[1], params[2]
    sum_s = 0.0
    sum_ss = 0.0
    sum_xs = 0.0
    g_xs = np.zeros(4)
    g_ss = np.zeros(4)
    g_s = np.zeros(4)
    for i in range(n):
        kk = k2[i]
        c = cos2a[i]
        s = sin2a[i]
        chi_value = _chi(kk, c, s, m, a, b, offset, constants)
        wi = weight[i]
        if power_model:
            model = -wi * math.cos(2.0 * chi_value)
            derivative = 2.0 * wi * math.sin(2.0 * chi_value)
        else:
            sine = math.sin(chi_value)
            cosine = math.cos(chi_value)
            model = wi * abs(sine)
            derivative = wi * cosine if sine >= 0.0 else -wi * cosine
        x = data[i]
        sum_s += model
        sum_ss += model * model
        sum_xs += x * model
        # dχ/d(m, a, b, φ) = (πλk², πλk² cos2α, πλk² sin2α, 1)
        base = pl * kk * derivative
        d0 = base
        d1 = base * c
        d2 = base * s
        d3 = derivative
        g_xs[0] += x * d0
        g_xs[1] += x * d1
        g_xs[2] += x * d2
        g_xs[3] += x * d3
        g_ss[0] += model * d0
        g_ss[1] += model * d1
        g_ss[2] += model * d2
        g_ss[3] += model * d3
        g_s[0] += d0
        g_s[1] += d1
        g_s[2] += d2
        g_s[3] += d3
    return _normalised_correlation(sum_s, sum_ss, sum_xs, g_s, g_ss, g_xs, n)


@njit(cache=True, nogil=True)
def sector_grid_search(
    sector_scores: np.ndarray,
    defocus_start: float,
    defocus_step: float,
    sector_cos2: np.ndarray,
    sector_sin2: np.ndarray,
    mean_defocus: np.ndarray,
    astigmatism: np.ndarray,
    angles_radians: np.ndarray,
) -> np.ndarray:  # pragma: no cover - compiled
    """Score every ``(mean defocus, astigmatism, azimuth)`` on a grid from per-sector scores.

    ``sector_scores[s, j]`` is the score of sector ``s`` for the defocus
    ``defocus_start + j · defocus_step`` (linear interpolation in between,
    ``−inf`` outside). A sector at azimuth ``α_s`` sees the defocus
    ``m + ½A cos 2(α_s − θ)``.

    Returns
    -------
    numpy.ndarray
        ``(n_mean, n_astigmatism, n_angles)`` summed scores.
    """
    n_sectors, n_defocus = sector_scores.shape
    out = np.empty((mean_defocus.shape[0], astigmatism.shape[0], angles_radians.shape[0]))
    for t in range(angles_radians.shape[0]):
        c2 = math.cos(2.0 * angles_radians[t])
        s2 = math.sin(2.0 * angles_radians[t])
        for ia in range(astigmatism.shape[0]):
            half = 0.5 * astigmatism[ia]
            for im in range(mean_defocus.shape[0]):
                m = mean_defocus[im]
                total = 0.0
                for s in range(n_sectors):
                    # cos 2(α − θ) = cos2α cos2θ + sin2α sin2θ
                    defocus = m + half * (sector_cos2[s] * c2 + sector_sin2[s] * s2)
                    position = (defocus - defocus_start) / defocus_step
                    if position < 0.0 or position > n_defocus - 1:
                        total = -np.inf
                        break
                    j = int(position)
                    if j >= n_defocus - 1:
                        j = n_defocus - 2
                    f = position - j
                    total += (1.0 - f) * sector_scores[s, j] + f * sector_scores[s, j + 1]
                out[im, ia, t] = total
    return out


@njit(cache=True, nogil=True)
def accumulate_power(total: np.ndarray, spectra: np.ndarray) -> None:  # pragma: no cover
    """``total += Σ_i |spectra[i]|²`` for a ``(n, ny, nx)`` complex stack (in place)."""
    n, ny, nx = spectra.shape
    for i in range(n):
        for y in range(ny):
            for x in range(nx):
                value = spectra[i, y, x]
                total[y, x] += value.real * value.real + value.imag * value.imag


@njit(cache=True, nogil=True)
def whittle_and_gradient(
    k2: np.ndarray,
    cos2a: np.ndarray,
    sin2a: np.ndarray,
    power: np.ndarray,
    background: np.ndarray,
    amplitude: np.ndarray,
    params: np.ndarray,
    constants: np.ndarray,
) -> tuple[float, np.ndarray]:  # pragma: no cover - compiled
    """Whittle negative log-likelihood ``Σ log M + P / M`` and its gradient.

    ``M = background + amplitude · sin²χ`` is the expected power of each
    pixel (``background > 0``, ``amplitude ≥ 0``); other arguments as
    :func:`correlation_and_gradient`.
    """
    n = k2.shape[0]
    pl = constants[0]
    offset = params[3] + constants[2]
    m, a, b = params[0], params[1], params[2]
    total = 0.0
    gradient = np.zeros(4)
    for i in range(n):
        kk = k2[i]
        c = cos2a[i]
        s = sin2a[i]
        chi_value = _chi(kk, c, s, m, a, b, offset, constants)
        sine = math.sin(chi_value)
        model = background[i] + amplitude[i] * sine * sine
        ratio = power[i] / model
        total += math.log(model) + ratio
        # d/dχ: (1 − P/M) / M · S sin 2χ
        common = (1.0 - ratio) / model * amplitude[i] * 2.0 * sine * math.cos(chi_value)
        base = common * pl * kk
        gradient[0] += base
        gradient[1] += base * c
        gradient[2] += base * s
        gradient[3] += common
    return total, gradient


@njit(cache=True, nogil=True)
def ring_background_normal_equations(
    knot: np.ndarray,
    fraction: np.ndarray,
    ring: np.ndarray,
    power: np.ndarray,
    weight: np.ndarray,
    n_knots: int,
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Build the normal equations of ``P ≈ Σ_j h_j(r) (b_j + s_j · ring)`` (weighted LSQ).

    ``h_j`` are the piecewise-linear hat functions on the knots: pixel ``i``
    lies between knots ``knot[i]`` and ``knot[i] + 1`` at ``fraction[i]``.
    Unknowns are ordered ``(b_0 … b_{K−1}, s_0 … s_{K−1})``.
    """
    size = 2 * n_knots
    lhs = np.zeros((size, size))
    rhs = np.zeros(size)
    for i in range(knot.shape[0]):
        j = knot[i]
        h = (1.0 - fraction[i], fraction[i])
        q = ring[i]
        w = weight[i]
        p = power[i]
        for u in range(2):
            row = j + u
            hu = h[u] * w
            rhs[row] += hu * p
            rhs[n_knots + row] += hu * q * p
            for v in range(2):
                col = j + v
                value = hu * h[v]
                lhs[row, col] += value
                lhs[row, n_knots + col] += value * q
                lhs[n_knots + row, col] += value * q
                lhs[n_knots + row, n_knots + col] += value * q * q
    return lhs, rhs
