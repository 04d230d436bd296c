"""Unblur: align the frames of a movie and sum them with exposure weighting.

The algorithm of Grant & Grigorieff (2015, eLife 4:e06980) as cisTEM's
``unblur`` runs it (facts: cisTEM reference §2.1), written from the maths:

1. Every frame is gain/dark corrected, optionally corrected for anisotropic
   magnification, Fourier transformed **once** at full size (``rfft2``) and,
   for an output binning factor > 1, Fourier-cropped to the output pixel size.
   Only these half-plane spectra are kept (complex64: the size of the movie
   in float32); frames are never re-interpolated -- a shift is a phase ramp.
2. *Pre-binned passes*: the spectra are Fourier-cropped to about 5 Å/pixel
   (``pre_binning = round(5 / pixel_size)``). Each frame is cross-correlated
   with the sum of all the *other* frames, B-factor filtered
   (``exp(-B k² / 4)``, k in 1/Å) and with its central cross masked; the peak
   is located with a 3-point parabola per axis. One round with the minimum
   shift excluded (``min_shift``, at least 1.01 binned pixel) and a 4th-order
   polynomial fit of the shifts over frame index, then up to
   ``max_iterations`` rounds whose shift increments are smoothed over
   ``round(5 / exposure_per_frame)`` frames (made odd and >= 5; skipped when
   it is not shorter than the movie) -- cisTEM's Savitzky-Golay window, with
   triangular weights (see :func:`smooth_trajectory` for why). After each
   round the shifts are made relative to the middle frame (index ``n // 2``).
   A round stops the pass when no frame moved by more than the termination
   threshold (at least one binned pixel).
3. *Full-resolution pass*: up to ``max_iterations`` rounds more, on the
   spectra at the output pixel size. The cross-correlation is evaluated
   exactly (a direct Fourier sum, no interpolation) on a small grid of trial
   shifts with the output pixel spacing around the current alignment and
   refined with the same parabola fit. Frequencies where the B-factor weight
   is below 1e-3 are left out of the sums; they contribute nothing
   measurable to the peak.
4. The aligned sum over frames ``first_frame .. last_frame`` is built in one
   pass (numba): ``Σ q_i F_i`` with the exposure filter ``q_i`` of
   :mod:`cistemd.kernels.dose` (exposure at the end of frame ``i`` plus the
   pre-exposure), divided by ``sqrt(Σ q_i²)`` when restoring the noise power,
   or the plain sum ``Σ F_i`` when the filter is off. The plain (unfiltered)
   sum's spectrum is returned too, for the amplitude spectrum.

Sign convention of the shifts (cisTEM's)
----------------------------------------
``shifts_x_angstroms[i], shifts_y_angstroms[i]`` is the shift **applied to
frame i** to align it: the frame's content is moved by ``+shift``
(``aligned_i(x, y) = frame_i(x − sx_i, y − sy_i)``), and the middle frame
(index ``n // 2``) has shift (0, 0). x is along numpy axis 1 (MRC columns),
y along axis 0 (MRC rows, y up in the MRC display). A specimen that drifted
by ``(dx_i, dy_i)`` in frame i (the simulator's
``frame_i(x, y) = still(x − dx_i, y − dy_i)``) is recovered as
``shift_i = −(dx_i − dx_mid)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sized
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cistemd.kernels import dose as _dose

__all__ = [
    "MagDistortion",
    "UnblurParameters",
    "UnblurResult",
    "align_movie",
    "amplitude_spectrum_image",
    "check_movie_geometry",
    "crop_half_spectrum",
    "movie_geometry",
    "scaled_image",
    "smooth_trajectory",
    "sum_aligned_frames",
]

MIN_ALIGNMENT_SIZE_PX = 16
"""Smallest edge (pixels) of the pre-binned frames that the alignment accepts."""

_PREBIN_TARGET_ANGSTROMS = 5.0
_BFACTOR_CUTOFF = math.log(1e3)  # drop frequencies with exp(-B k^2 / 4) below 1e-3
_LOCAL_SEARCH_ANGSTROMS = 4.0


@dataclass(frozen=True, slots=True)
class MagDistortion:
    """Anisotropic magnification distortion to correct.

    The distortion stretched the image by ``major_scale`` along the direction at
    ``angle_degrees`` (counter-clockwise from x, y up) and by ``minor_scale``
    perpendicular to it, about the image centre. Correcting it resamples each
    frame with the inverse stretch (bilinear), keeping the pixel size.
    """

    angle_degrees: float = 0.0
    major_scale: float = 1.0
    minor_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (self.major_scale > 0 and self.minor_scale > 0):
            raise ValueError(
                f"mag distortion scales must be positive, got {self.major_scale}, "
                f"{self.minor_scale}"
            )

    def correct(self, frame: np.ndarray) -> np.ndarray:
        """Return ``frame`` (``(ny, nx)``) with the distortion undone (float32)."""
        from scipy import ndimage

        angle = math.radians(self.angle_degrees)
        c, s = math.cos(angle), math.sin(angle)
        rotation = np.array([[c, -s], [s, c]])  # (x, y) column vectors
        stretch = rotation @ np.diag([self.major_scale, self.minor_scale]) @ rotation.T
        # corrected(r) = distorted(stretch @ r) about the centre; numpy order is (y, x).
        matrix_xy = stretch
        matrix = np.array([[matrix_xy[1, 1], matrix_xy[1, 0]], [matrix_xy[0, 1], matrix_xy[0, 0]]])
        centre = (np.array(frame.shape, dtype=np.float64) - 1.0) / 2.0
        offset = centre - matrix @ centre
        return ndimage.affine_transform(
            frame, matrix, offset=offset, order=1, mode="nearest", output=np.float32
        )


@dataclass(frozen=True, slots=True)
class UnblurParameters:
    """Settings of one alignment (defaults: cisTEM's Align Movies panel, reference §1.4).

    Attributes
    ----------
    exposure_per_frame_e_per_a2
        Exposure per frame, e/Å² (also sets the smoothing window).
    voltage_kv
        300, 200 or 100 kV (the exposure filter knows only these).
    pre_exposure_e_per_a2
        Exposure before the first frame, e/Å².
    min_shift_angstroms
        Shifts smaller than this are excluded in the first (search) round.
    max_shift_angstroms
        Largest shift searched per round.
    bfactor_angstroms2
        B-factor applied to the reference, ``exp(-B k² / 4)``.
    termination_threshold_angstroms
        A pass ends when no frame moved by more than this in a round.
    max_iterations
        Rounds per pass.
    mask_central_cross
        Zero the reference's ``kx ≈ 0`` and ``ky ≈ 0`` lines (detector artefacts).
    vertical_mask, horizontal_mask
        Half-widths (Fourier pixels) of the vertical (``kx = 0``) and
        horizontal (``ky = 0``) lines of that cross.
    exposure_filter
        Weight the sum by the exposure filter; off = plain sum.
    restore_power
        Divide the weighted sum by ``sqrt(Σ q²)`` per frequency.
    first_frame, last_frame
        Frames to sum, 1-based and inclusive; ``last_frame = 0`` = the last.
        Every frame is aligned regardless.
    output_binning_factor
        Fourier-crop the frames by this factor (>= 1) before everything.
    mag_distortion
        Correct this magnification distortion first, or ``None``.
    """

    exposure_per_frame_e_per_a2: float = 1.0
    voltage_kv: float = 300.0
    pre_exposure_e_per_a2: float = 0.0
    min_shift_angstroms: float = 2.0
    max_shift_angstroms: float = 40.0
    bfactor_angstroms2: float = 1500.0
    termination_threshold_angstroms: float = 1.0
    max_iterations: int = 10
    mask_central_cross: bool = True
    vertical_mask: int = 1
    horizontal_mask: int = 1
    exposure_filter: bool = True
    restore_power: bool = True
    first_frame: int = 1
    last_frame: int = 0
    output_binning_factor: float = 1.0
    mag_distortion: MagDistortion | None = None

    def __post_init__(self) -> None:
        checks = {
            "exposure_per_frame_e_per_a2": self.exposure_per_frame_e_per_a2 > 0,
            "pre_exposure_e_per_a2": self.pre_exposure_e_per_a2 >= 0,
            "min_shift_angstroms": self.min_shift_angstroms >= 0,
            "max_shift_angstroms": self.max_shift_angstroms > 0,
            "bfactor_angstroms2": self.bfactor_angstroms2 >= 0,
            "termination_threshold_angstroms": self.termination_threshold_angstroms >= 0,
            "max_iterations": self.max_iterations >= 1,
            "vertical_mask": self.vertical_mask >= 0,
            "horizontal_mask": self.horizontal_mask >= 0,
            "first_frame": self.first_frame >= 1,
            "last_frame": self.last_frame >= 0,
            "output_binning_factor": self.output_binning_factor >= 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name} is out of range: {getattr(self, name)!r}")
        if self.exposure_filter:
            _dose.voltage_scale(self.voltage_kv)


@dataclass(slots=True)
class UnblurResult:
    """What :func:`align_movie` returns.

    Attributes
    ----------
    shifts_x_angstroms, shifts_y_angstroms
        ``(n_frames,)`` shift applied to each frame, Å (module docstring).
    sum
        ``(ny, nx)`` float32 aligned sum at the output pixel size
        (exposure-weighted unless the filter was off).
    pixel_size_angstroms
        Output pixel size (x), Å.
    unfiltered_sum_spectrum
        ``rfft2`` (complex64, unnormalised) of the plain aligned sum, for the
        amplitude spectrum (:func:`amplitude_spectrum_image`).
    prebinning_factor
        Pre-binning of the first passes.
    iterations
        Rounds run in the binned and the full-resolution passes.
    """

    shifts_x_angstroms: np.ndarray
    shifts_y_angstroms: np.ndarray
    sum: np.ndarray
    pixel_size_angstroms: float
    unfiltered_sum_spectrum: np.ndarray
    prebinning_factor: int = 1
    iterations: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MovieGeometry:
    """Sizes derived from a frame shape, pixel size and parameters."""

    input_shape: tuple[int, int]
    output_shape: tuple[int, int]
    output_pixel_size_angstroms: float
    prebinning_factor: int
    binned_shape: tuple[int, int]


def _fast_size(n: int, limit: int) -> int:
    """Smallest FFT-friendly even size >= n (at most ``limit``)."""
    from scipy.fft import next_fast_len

    size = int(next_fast_len(max(n, 1), real=True))
    while size % 2 and size < limit:
        size = int(next_fast_len(size + 1, real=True))
    return min(size, limit)


def movie_geometry(
    shape: tuple[int, int], pixel_size_angstroms: float, params: UnblurParameters
) -> MovieGeometry:
    """Return the output and pre-binned sizes of a movie, or raise ``ValueError``.

    Parameters
    ----------
    shape
        ``(ny, nx)`` of a frame.
    pixel_size_angstroms
        Å per pixel of the frames.
    params
        The alignment settings (output binning).

    Returns
    -------
    MovieGeometry

    Raises
    ------
    ValueError
        If the output or the pre-binned frames would be smaller than
        :data:`MIN_ALIGNMENT_SIZE_PX` pixels; the message gives the sizes and
        the fix.
    """
    ny, nx = int(shape[0]), int(shape[1])
    if not pixel_size_angstroms > 0:
        raise ValueError(f"pixel size must be positive, got {pixel_size_angstroms}")
    binning = float(params.output_binning_factor)
    out = (max(1, round(ny / binning)), max(1, round(nx / binning)))
    if min(out) < MIN_ALIGNMENT_SIZE_PX:
        raise ValueError(
            f"frames of {nx}×{ny} px binned by {binning:g} would be {out[1]}×{out[0]} px, "
            f"smaller than {MIN_ALIGNMENT_SIZE_PX} px: use a smaller output binning "
            "(larger frames are needed for this binning)"
        )
    out_pixel = pixel_size_angstroms * nx / out[1]
    prebin = max(1, round(_PREBIN_TARGET_ANGSTROMS / out_pixel))
    binned = (_fast_size(out[0] // prebin, out[0]), _fast_size(out[1] // prebin, out[1]))
    if min(binned) < MIN_ALIGNMENT_SIZE_PX:
        raise ValueError(
            f"frames of {out[1]}×{out[0]} px at {out_pixel:.3g} Å/px are pre-binned by "
            f"{prebin} to about {_PREBIN_TARGET_ANGSTROMS:g} Å/px for the first alignment "
            f"passes, giving {binned[1]}×{binned[0]} px, smaller than "
            f"{MIN_ALIGNMENT_SIZE_PX} px: the movie is too small to align at this pixel size "
            "(check the pixel size, or use larger frames)"
        )
    return MovieGeometry((ny, nx), out, out_pixel, prebin, binned)


def check_movie_geometry(
    shape: tuple[int, int], pixel_size_angstroms: float, params: UnblurParameters
) -> None:
    """Raise ``ValueError`` if :func:`align_movie` cannot align frames of this size."""
    movie_geometry(shape, pixel_size_angstroms, params)


# ------------------------------------------------------------------------------ spectra


def _crop_rows(n: int, new_n: int) -> np.ndarray:
    """Row indices (of an axis of length n) kept by a crop to new_n (numpy FFT order)."""
    if new_n >= n:
        return np.arange(n)
    n_pos = (new_n - 1) // 2 + 1 if new_n % 2 else new_n // 2
    n_neg = new_n - n_pos
    return np.concatenate([np.arange(n_pos), np.arange(n - n_neg, n)])


def crop_half_spectrum(spectrum: np.ndarray, shape: tuple[int, int], new_shape: tuple[int, int]):
    """Fourier-crop a half-plane (``rfft2``) spectrum from ``shape`` to ``new_shape``.

    Parameters
    ----------
    spectrum
        ``(..., ny, nx // 2 + 1)`` rfft2 of real images of shape ``shape``.
    shape, new_shape
        Real-space ``(ny, nx)`` before and after (each new size <= the old).

    Returns
    -------
    numpy.ndarray
        ``(..., new_ny, new_nx // 2 + 1)`` -- the rfft2 layout of ``new_shape``
        (for even sizes the Nyquist row comes from the negative frequencies).
        Not rescaled: ``irfft2(crop, new_shape)`` has a mean ``ny nx / (new_ny
        new_nx)`` times the original's.
    """
    ny, nx = shape
    new_ny, new_nx = new_shape
    if new_ny > ny or new_nx > nx:
        raise ValueError(f"cannot crop {shape} to the larger {new_shape}")
    rows = _crop_rows(ny, new_ny)
    cropped = spectrum[..., rows, : new_nx // 2 + 1]
    return np.ascontiguousarray(cropped)


def _half_frequencies(
    shape: tuple[int, int], crop_shape: tuple[int, int], pixel_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """(ky, kx) in 1/Å of a crop_shape rfft layout taken from a shape image."""
    ny, nx = shape
    cy, cx = crop_shape
    ky = np.fft.fftfreq(cy) * cy / (ny * pixel_size)
    kx = np.arange(cx // 2 + 1) / (nx * pixel_size)
    return ky, kx


def _band_crop(
    shape: tuple[int, int], pixel_size: float, k_max: float
) -> tuple[np.ndarray, int, bool]:
    """Rows and column count of the half plane within |ky|, |kx| <= k_max."""
    ny, nx = shape
    half_y = math.ceil(k_max * ny * pixel_size)
    half_x = math.ceil(k_max * nx * pixel_size)
    if 2 * half_y + 1 >= ny and 2 * half_x + 1 >= nx:
        return np.arange(ny), nx // 2 + 1, True
    if 2 * half_y + 1 >= ny:
        rows = np.arange(ny)
    else:
        rows = np.concatenate([np.arange(half_y + 1), np.arange(ny - half_y, ny)])
    return rows, min(nx // 2 + 1, half_x + 1), False


# ------------------------------------------------------------------------------ smoothing


def smooth_trajectory(values: np.ndarray, window: int) -> np.ndarray:
    """Smooth shift increments along axis 0 with a triangular window of ``window`` samples.

    cisTEM smooths each round's shift increments with an order-1
    Savitzky-Golay filter, i.e. a flat running mean of ``window`` samples.
    A flat window's frequency response dips to about −0.2, so a component of
    the residual motion that it inverts *grows* by ~20 % per round whenever
    the motion is not smooth (tiny or noisy movies). The triangular (Fejér)
    window of the same width used here has a response in [0, 1]: rounds can
    only shrink the residual. Near the ends the window shrinks symmetrically
    (to one sample at the first and last frame), so the fast motion at the
    start of an exposure is followed rather than flattened.

    Parameters
    ----------
    values
        ``(n, ...)`` samples.
    window
        Odd window length; if it is not shorter than ``n`` the values are
        returned unchanged (cisTEM's rule).

    Returns
    -------
    numpy.ndarray
        Smoothed copy (float64).
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    if window >= n or window < 3:
        return values.copy()
    half = window // 2
    out = np.empty(values.shape, dtype=np.float64)
    for i in range(n):
        h = min(half, i, n - 1 - i)
        weights = (h + 1.0) - np.abs(np.arange(-h, h + 1))
        weights /= weights.sum()
        out[i] = np.tensordot(weights, values[i - h : i + h + 1], axes=(0, 0))
    return out


def _polynomial_smooth(values: np.ndarray) -> np.ndarray:
    n = values.shape[0]
    degree = min(4, n - 1)
    if degree < 1:
        return values.copy()
    index = np.arange(n, dtype=np.float64)
    coefficients = np.polynomial.polynomial.polyfit(index, values, degree)
    return np.asarray(np.polynomial.polynomial.polyval(index, coefficients).T)


def _sg_window(exposure_per_frame: float) -> int:
    window = round(5.0 / exposure_per_frame)
    if window % 2 == 0:
        window += 1
    return max(window, 5)


# ------------------------------------------------------------------------------ peaks


def _parabola(minus: float, centre: float, plus: float) -> float:
    denominator = minus - 2.0 * centre + plus
    if denominator >= 0.0:
        return 0.0
    offset = 0.5 * (minus - plus) / denominator
    return float(min(max(offset, -1.0), 1.0))


def _peak_in_map(cc: np.ndarray, allowed: np.ndarray) -> tuple[float, float] | None:
    """Sub-pixel (y, x) grid position of the highest allowed value of a periodic map."""
    masked = np.where(allowed, cc, -np.inf)
    flat = int(np.argmax(masked))
    if not np.isfinite(masked.flat[flat]):
        return None
    ny, nx = cc.shape
    iy, ix = divmod(flat, nx)
    centre = float(cc[iy, ix])
    dy = _parabola(float(cc[(iy - 1) % ny, ix]), centre, float(cc[(iy + 1) % ny, ix]))
    dx = _parabola(float(cc[iy, (ix - 1) % nx]), centre, float(cc[iy, (ix + 1) % nx]))
    sy = iy if iy <= ny // 2 else iy - ny
    sx = ix if ix <= nx // 2 else ix - nx
    return sy + dy, sx + dx


# ------------------------------------------------------------------------------ passes


@dataclass(slots=True)
class _Level:
    """Spectra of every frame at one resolution, with their frequencies in 1/Å."""

    spectra: np.ndarray  # (n, h, w) complex64
    ky: np.ndarray  # (h,)
    kx: np.ndarray  # (w,)
    weight: np.ndarray  # (h, w) float32: B-factor x cross mask
    threads: int = 1
    _buffers: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def cross_power(self, shifts: np.ndarray) -> np.ndarray:
        """``(n, h, w)`` weighted cross-power spectra of each shifted frame vs the others' sum.

        The returned array is reused by the next call.
        """
        from cistemd.kernels._unblur_numba import reference_products, shift_and_total

        if self._buffers is None:
            self._buffers = (
                np.empty_like(self.spectra),
                np.empty(self.spectra.shape[1:], dtype=np.complex64),
                np.empty_like(self.spectra),
            )
        shifted, total, products = self._buffers
        ey = np.exp(-2j * np.pi * np.outer(shifts[:, 1], self.ky)).astype(np.complex64)
        ex = np.exp(-2j * np.pi * np.outer(shifts[:, 0], self.kx)).astype(np.complex64)
        _run_numba(self.threads, shift_and_total, self.spectra, ey, ex, shifted, total)
        _run_numba(self.threads, reference_products, shifted, total, self.weight, products)
        return products


def _reference_weight(
    ky: np.ndarray, kx: np.ndarray, params: UnblurParameters, fourier_px_y: float,
    fourier_px_x: float,
) -> np.ndarray:
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    weight = np.exp(-params.bfactor_angstroms2 * k2 / 4.0)
    if params.mask_central_cross:
        # vertical line: kx ~ 0 (width in Fourier pixels); horizontal line: ky ~ 0.
        weight[:, np.abs(kx) / fourier_px_x <= params.vertical_mask + 1e-9] = 0.0
        weight[np.abs(ky) / fourier_px_y <= params.horizontal_mask + 1e-9, :] = 0.0
    return weight.astype(np.float32)


def _finish_round(
    shifts: np.ndarray, deltas: np.ndarray, first_round: bool, params: UnblurParameters
) -> np.ndarray:
    """Smooth a round's increments, keep the middle frame fixed; return the change."""
    if first_round:
        smoothed = _polynomial_smooth(deltas)
    else:
        smoothed = smooth_trajectory(deltas, _sg_window(params.exposure_per_frame_e_per_a2))
    middle = deltas.shape[0] // 2
    updated = shifts + smoothed
    return np.asarray(updated - updated[middle] - shifts)


def _binned_pass(
    level: _Level,
    binned_shape: tuple[int, int],
    pixel_y: float,
    pixel_x: float,
    shifts: np.ndarray,
    params: UnblurParameters,
    threads: int,
    progress: Callable[[str], None],
) -> int:
    """Search rounds on the pre-binned spectra; updates ``shifts`` (Å) in place."""
    from scipy import fft

    ny, nx = binned_shape
    iy = np.fft.fftfreq(ny) * ny
    ix = np.fft.fftfreq(nx) * nx
    distance = np.sqrt((iy[:, None] * pixel_y) ** 2 + (ix[None, :] * pixel_x) ** 2)
    within = distance <= params.max_shift_angstroms
    min_shift = max(params.min_shift_angstroms, 1.01 * max(pixel_x, pixel_y))
    threshold = max(params.termination_threshold_angstroms, max(pixel_x, pixel_y))
    rounds = 0
    for round_index in range(1 + params.max_iterations):
        first_round = round_index == 0
        allowed = within & (distance >= min_shift) if first_round else within
        products = level.cross_power(shifts)
        maps = fft.irfft2(products, s=binned_shape, axes=(-2, -1), workers=threads)
        deltas = np.zeros_like(shifts)
        for i in range(shifts.shape[0]):
            peak = _peak_in_map(maps[i], allowed)
            if peak is not None:
                deltas[i] = (peak[1] * pixel_x, peak[0] * pixel_y)
        deltas = _finish_round(shifts, deltas, first_round, params)
        shifts += deltas
        rounds += 1
        largest = float(np.max(np.hypot(deltas[:, 0], deltas[:, 1])))
        progress(f"binned round {rounds}: largest change {largest:.2f} Å")
        if not first_round and largest <= threshold:
            break
    return rounds


def _local_pass(
    level: _Level,
    hermitian: np.ndarray,
    grid_step: float,
    shifts: np.ndarray,
    params: UnblurParameters,
    progress: Callable[[str], None],
) -> int:
    """Full-resolution rounds with an exact local cross-correlation; updates ``shifts``."""
    radius = int(min(16, max(4, math.ceil(_LOCAL_SEARCH_ANGSTROMS / grid_step))))
    offsets = np.arange(-radius, radius + 1) * grid_step
    ex = np.exp(2j * np.pi * np.outer(level.kx, offsets)).astype(np.complex64)
    ex *= hermitian[:, None].astype(np.float32)
    ey = np.exp(2j * np.pi * np.outer(offsets, level.ky)).astype(np.complex64)
    rounds = 0
    for _ in range(params.max_iterations):
        products = level.cross_power(shifts)
        maps = np.matmul(ey, np.matmul(products, ex)).real  # (n, y offsets, x offsets)
        deltas = np.zeros_like(shifts)
        for i in range(shifts.shape[0]):
            cc = maps[i]
            iy, ix = divmod(int(np.argmax(cc)), cc.shape[1])
            dy = dx = 0.0
            if 0 < iy < cc.shape[0] - 1:
                dy = _parabola(float(cc[iy - 1, ix]), float(cc[iy, ix]), float(cc[iy + 1, ix]))
            if 0 < ix < cc.shape[1] - 1:
                dx = _parabola(float(cc[iy, ix - 1]), float(cc[iy, ix]), float(cc[iy, ix + 1]))
            deltas[i] = (offsets[ix] + dx * grid_step, offsets[iy] + dy * grid_step)
        deltas = _finish_round(shifts, deltas, False, params)
        shifts += deltas
        rounds += 1
        largest = float(np.max(np.hypot(deltas[:, 0], deltas[:, 1])))
        progress(f"full-resolution round {rounds}: largest change {largest:.3f} Å")
        if largest <= params.termination_threshold_angstroms:
            break
    return rounds


# ------------------------------------------------------------------------------ main


def _frame_count(frames: Any) -> int:
    if isinstance(frames, np.ndarray):
        if frames.ndim != 3:
            raise ValueError(f"frames must be (n, ny, nx), got shape {frames.shape}")
        return int(frames.shape[0])
    if isinstance(frames, Sized):
        return len(frames)
    raise ValueError("frames must be an (n, ny, nx) array or a sized iterable of 2-D frames")


@dataclass(slots=True)
class _Captured:
    spectra: list[np.ndarray]  # n x (h, w) complex64 at the output pixel size
    geometry: MovieGeometry
    pixel_y: float  # output pixel size along y, Å


def _last_frame(params: UnblurParameters, n_frames: int) -> int:
    last = params.last_frame if params.last_frame > 0 else n_frames
    if not 1 <= params.first_frame <= last <= n_frames:
        raise ValueError(
            f"frames to sum {params.first_frame}..{last} are not within 1..{n_frames}"
        )
    return last


def _capture(
    frames: Any,
    pixel_size_angstroms: float,
    params: UnblurParameters,
    threads: int,
    gain: np.ndarray | None,
    dark: np.ndarray | None,
    report: Callable[[float, str], None],
) -> _Captured:
    """Correct, transform and Fourier-crop every frame once (streaming)."""
    from scipy import fft

    n_frames = _frame_count(frames)
    if n_frames < 1:
        raise ValueError("the movie has no frames")
    _last_frame(params, n_frames)
    geometry: MovieGeometry | None = None
    spectra: list[np.ndarray] = []
    scale = 1.0
    count = 0
    for index, raw in enumerate(frames):
        if index >= n_frames:
            raise ValueError(f"frames yielded more than the {n_frames} it claims to have")
        frame = np.asarray(raw)
        if frame.ndim != 2:
            raise ValueError(f"frame {index + 1} must be 2-D, got shape {frame.shape}")
        if geometry is None:
            geometry = movie_geometry(frame.shape, pixel_size_angstroms, params)
            out = geometry.output_shape
            scale = (out[0] * out[1]) / float(frame.shape[0] * frame.shape[1])
        elif frame.shape != geometry.input_shape:
            raise ValueError(
                f"frame {index + 1} is {frame.shape}, the first frame was {geometry.input_shape}"
            )
        image = frame.astype(np.float32, copy=gain is not None or dark is not None)
        if dark is not None:
            image -= dark
        if gain is not None:
            image *= gain
        if params.mag_distortion is not None:
            image = params.mag_distortion.correct(image)
        spectrum = fft.rfft2(image, workers=threads)
        if geometry.output_shape != geometry.input_shape:
            spectrum = crop_half_spectrum(spectrum, geometry.input_shape, geometry.output_shape)
            spectrum *= np.float32(scale)
        spectra.append(np.ascontiguousarray(spectrum, dtype=np.complex64))
        count = index + 1
        report(0.5 * count / n_frames, f"read frame {count} of {n_frames}")
    if geometry is None or count != n_frames:
        raise ValueError(f"frames yielded {count} frames, expected {n_frames}")
    pixel_y = pixel_size_angstroms * geometry.input_shape[0] / geometry.output_shape[0]
    return _Captured(spectra, geometry, pixel_y)


def _align(
    captured: _Captured,
    params: UnblurParameters,
    threads: int,
    report: Callable[[float, str], None],
) -> tuple[np.ndarray, dict[str, int]]:
    """Return the (n, 2) shifts (x, y) in Å and the rounds run per pass."""
    spectra, geometry = captured.spectra, captured.geometry
    n_frames = len(spectra)
    out_shape = geometry.output_shape
    pixel = geometry.output_pixel_size_angstroms
    pixel_y = captured.pixel_y
    fourier_px_y = 1.0 / (out_shape[0] * pixel_y)
    fourier_px_x = 1.0 / (out_shape[1] * pixel)
    shifts = np.zeros((n_frames, 2))
    iterations: dict[str, int] = {}
    if n_frames < 2:
        return shifts, iterations

    def note(message: str) -> None:
        report(0.6, message)

    # -- pre-binned search passes
    binned = geometry.binned_shape
    binned_spectra = np.stack([crop_half_spectrum(s, out_shape, binned) for s in spectra])
    ky = np.fft.fftfreq(binned[0]) * binned[0] / (out_shape[0] * pixel_y)
    kx = np.arange(binned[1] // 2 + 1) / (out_shape[1] * pixel)
    weight = _reference_weight(ky, kx, params, fourier_px_y, fourier_px_x)
    level = _Level(binned_spectra, ky, kx, weight, threads)
    iterations["binned"] = _binned_pass(
        level,
        binned,
        pixel_y * out_shape[0] / binned[0],
        pixel * out_shape[1] / binned[1],
        shifts,
        params,
        threads,
        note,
    )
    del binned_spectra, level
    # -- full-resolution rounds on the band where the B-factor leaves signal
    k_max = (
        math.sqrt(4.0 * _BFACTOR_CUTOFF / params.bfactor_angstroms2)
        if params.bfactor_angstroms2 > 0
        else 1e9
    )
    rows, n_columns, whole = _band_crop(out_shape, min(pixel, pixel_y), k_max)
    band = np.stack(spectra) if whole else np.stack([s[rows, :n_columns] for s in spectra])
    ky = (np.fft.fftfreq(out_shape[0]) / pixel_y)[rows]
    kx = np.arange(n_columns) / (out_shape[1] * pixel)
    weight = _reference_weight(ky, kx, params, fourier_px_y, fourier_px_x)
    hermitian = np.full(n_columns, 2.0)
    hermitian[0] = 1.0
    if out_shape[1] % 2 == 0 and n_columns == out_shape[1] // 2 + 1:
        hermitian[-1] = 1.0
    level = _Level(band, ky, kx, weight, threads)
    iterations["full"] = _local_pass(level, hermitian, pixel, shifts, params, note)
    shifts -= shifts[n_frames // 2]
    return shifts, iterations


def _sums(
    captured: _Captured,
    shifts: np.ndarray,
    params: UnblurParameters,
    threads: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the real-space weighted sum and the plain sum's half-plane spectrum."""
    from numba.typed import List
    from scipy import fft

    from cistemd.kernels._unblur_numba import weighted_sums

    spectra, geometry = captured.spectra, captured.geometry
    n_frames = len(spectra)
    last = _last_frame(params, n_frames)
    out_shape = geometry.output_shape
    pixel = geometry.output_pixel_size_angstroms
    ky = np.fft.fftfreq(out_shape[0]) / captured.pixel_y
    kx = np.arange(out_shape[1] // 2 + 1) / (out_shape[1] * pixel)
    ey = np.exp(-2j * np.pi * np.outer(shifts[:, 1], ky)).astype(np.complex64)
    ex = np.exp(-2j * np.pi * np.outer(shifts[:, 0], kx)).astype(np.complex64)
    plain = np.empty(spectra[0].shape, dtype=np.complex64)
    filtered = np.empty_like(plain)
    first = params.first_frame - 1
    voltage_scale = _dose.voltage_scale(params.voltage_kv) if params.exposure_filter else 1.0
    _run_numba(
        threads,
        weighted_sums,
        List(spectra),
        ex,
        ey,
        first,
        last - 1,
        (kx * kx).astype(np.float64),
        (ky * ky).astype(np.float64),
        _dose.CRITICAL_EXPOSURE_A,
        _dose.CRITICAL_EXPOSURE_B / 2.0,
        _dose.CRITICAL_EXPOSURE_C,
        voltage_scale,
        float((first + 1) * params.exposure_per_frame_e_per_a2 + params.pre_exposure_e_per_a2),
        float(params.exposure_per_frame_e_per_a2),
        bool(params.exposure_filter),
        bool(params.restore_power),
        plain,
        filtered,
    )
    summed = fft.irfft2(filtered, s=out_shape, workers=threads).astype(np.float32, copy=False)
    return summed, plain


def align_movie(
    frames: Any,
    *,
    pixel_size_angstroms: float,
    params: UnblurParameters,
    threads: int = 1,
    gain: np.ndarray | None = None,
    dark: np.ndarray | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> UnblurResult:
    """Align a movie's frames and return the shifts and the (exposure-weighted) sum.

    Parameters
    ----------
    frames
        ``(n, ny, nx)`` array or a sized iterable of ``(ny, nx)`` frames
        (e.g. a :class:`cistemd.io.movie.MovieReader`), consumed once, one frame
        at a time.
    pixel_size_angstroms
        Å per pixel of the frames.
    params
        Alignment and sum settings.
    threads
        Threads for the FFTs (scipy ``workers``) and the numba sum.
    gain, dark
        Optional ``(ny, nx)`` references: ``frame = (raw - dark) * gain``.
    progress
        ``progress(fraction, message)`` callback.

    Returns
    -------
    UnblurResult
        Shifts in Å (sign convention in the module docstring) and the sum.

    Raises
    ------
    ValueError
        Frames too small for the binning (see :func:`movie_geometry`), no
        frames, inconsistent shapes, or a bad frame range.
    """
    report = progress or (lambda fraction, message: None)
    threads = max(1, int(threads))
    captured = _capture(frames, pixel_size_angstroms, params, threads, gain, dark, report)
    shifts, iterations = _align(captured, params, threads, report)
    report(0.9, "summing")
    summed, plain = _sums(captured, shifts, params, threads)
    report(1.0, "done")
    return UnblurResult(
        shifts_x_angstroms=shifts[:, 0].copy(),
        shifts_y_angstroms=shifts[:, 1].copy(),
        sum=summed,
        pixel_size_angstroms=float(captured.geometry.output_pixel_size_angstroms),
        unfiltered_sum_spectrum=plain,
        prebinning_factor=captured.geometry.prebinning_factor,
        iterations=iterations,
    )


def sum_aligned_frames(
    frames: Any,
    shifts_angstroms: npt.ArrayLike,
    *,
    pixel_size_angstroms: float,
    params: UnblurParameters,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Sum frames with given shifts exactly as :func:`align_movie` sums its own.

    Parameters
    ----------
    frames
        As for :func:`align_movie`.
    shifts_angstroms
        ``(n, 2)`` shift ``(x, y)`` applied to each frame, Å (module docstring).
    pixel_size_angstroms
        Å per pixel of the frames.
    params
        Sum settings (exposure filter, frame range, output binning).
    threads
        Threads.

    Returns
    -------
    tuple
        The real-space sum (float32) and the plain sum's half-plane spectrum.
    """
    captured = _capture(
        frames, pixel_size_angstroms, params, max(1, int(threads)), None, None,
        lambda fraction, message: None,
    )
    shifts = np.asarray(shifts_angstroms, dtype=np.float64)
    if shifts.shape != (len(captured.spectra), 2):
        raise ValueError(
            f"shifts_angstroms must be ({len(captured.spectra)}, 2), got {shifts.shape}"
        )
    return _sums(captured, shifts, params, max(1, int(threads)))


def _run_numba(threads: int, function: Callable[..., None], *args: Any) -> None:
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads, int(numba.config.NUMBA_NUM_THREADS))))  # type: ignore[attr-defined]
    try:
        function(*args)
    finally:
        numba.set_num_threads(previous)


# ------------------------------------------------------------------------------ display


def amplitude_spectrum_image(
    spectrum: np.ndarray, shape: tuple[int, int], size: int = 512
) -> np.ndarray:
    """Return a ``size²`` display image of the amplitude spectrum of a half-plane spectrum.

    As cisTEM's Align Movies does for its ``Spectra/`` images: the 2-D
    amplitude spectrum (origin at the centre, ``(size // 2, size // 2)``),
    averaged into ``size²`` bins in power, normalised to zero mean and unit
    standard deviation, central cross set to the maximum, clipped to
    ``[mean − 1, mean + 3]``.

    Parameters
    ----------
    spectrum
        ``(ny, nx // 2 + 1)`` rfft2 of an image of real shape ``shape``.
    shape
        ``(ny, nx)``.
    size
        Edge of the output image.

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` float32.
    """
    ny, nx = shape
    power = (spectrum.real.astype(np.float64) ** 2 + spectrum.imag.astype(np.float64) ** 2)
    power[0, 0] = 0.0
    ky = np.fft.fftfreq(ny)  # cycles per pixel, -0.5 .. 0.5
    kx = np.arange(nx // 2 + 1) / nx
    by = np.clip(((ky + 0.5) * size).astype(np.int64), 0, size - 1)
    bx_pos = np.clip(((kx + 0.5) * size).astype(np.int64), 0, size - 1)
    bx_neg = np.clip(((-kx + 0.5) * size).astype(np.int64), 0, size - 1)
    by_neg = np.clip(((-ky + 0.5) * size).astype(np.int64), 0, size - 1)
    total = np.zeros(size * size)
    counts = np.zeros(size * size)
    index_pos = (by[:, None] * size + bx_pos[None, :]).ravel()
    index_neg = (by_neg[:, None] * size + bx_neg[None, :]).ravel()  # Hermitian mirror
    flat = power.ravel()
    total += np.bincount(index_pos, weights=flat, minlength=size * size)
    total += np.bincount(index_neg, weights=flat, minlength=size * size)
    counts += np.bincount(index_pos, minlength=size * size)
    counts += np.bincount(index_neg, minlength=size * size)
    amplitude = np.sqrt(total / np.maximum(counts, 1)).reshape(size, size)
    centre = size // 2
    amplitude[centre, centre] = 0.0
    values = amplitude[counts.reshape(size, size) > 0]
    mean, sd = float(values.mean()), float(values.std()) or 1.0
    image = (amplitude - mean) / sd
    image = np.clip(image, -1.0, 3.0)
    image[centre, :] = 3.0
    image[:, centre] = 3.0
    return image.astype(np.float32)


def scaled_image(image: np.ndarray, max_size: int = 512) -> np.ndarray:
    """Return ``image`` Fourier-binned so that its longer edge is at most ``max_size``.

    Parameters
    ----------
    image
        ``(ny, nx)`` real image.
    max_size
        Longest edge of the result.

    Returns
    -------
    numpy.ndarray
        float32, the same mean as ``image``.
    """
    from scipy import fft

    ny, nx = image.shape
    factor = max(ny, nx) / float(max_size)
    if factor <= 1.0:
        return image.astype(np.float32, copy=True)
    new = (max(1, round(ny / factor)), max(1, round(nx / factor)))
    spectrum = crop_half_spectrum(fft.rfft2(image.astype(np.float32)), (ny, nx), new)
    small = fft.irfft2(spectrum, s=new) * (new[0] * new[1] / float(ny * nx))
    return small.astype(np.float32)
