"""Fourier-space helpers shared by the kernels: frequency grids, crop/pad, shifts.

Conventions
-----------
* Arrays are indexed in numpy order: a 2-D image is ``(ny, nx)`` with ``x``
  along axis ``-1`` (the fast axis of an MRC/TIFF file) and ``y`` along axis
  ``-2``; a volume is ``(nz, ny, nx)``.
* Spatial frequencies are in 1/Å (cycles per Ångström), never radians.
* Unless ``centered=True``, frequency grids follow numpy's FFT layout: the
  origin (zero frequency) is at index 0 of every axis, then positive
  frequencies, then negative ones (``numpy.fft.fftfreq``). With
  ``rfft=True`` the last axis holds only the ``n // 2 + 1`` non-negative
  frequencies of ``numpy.fft.rfftn`` (``numpy.fft.rfftfreq``). With
  ``centered=True`` the layout is ``numpy.fft.fftshift``-ed: the origin is at
  index ``n // 2`` of every axis (display layout).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "fourier_crop",
    "fourier_shift",
    "radial_frequency",
    "spatial_frequency_grid",
]


def _axis_frequencies(
    n: int, pixel_size_angstroms: float, *, half: bool, centered: bool
) -> np.ndarray:
    if half:
        return np.fft.rfftfreq(n, d=pixel_size_angstroms)
    freqs = np.fft.fftfreq(n, d=pixel_size_angstroms)
    return np.fft.fftshift(freqs) if centered else freqs


def _check_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {shape}")
    return shape


def spatial_frequency_grid(
    shape: tuple[int, ...],
    pixel_size_angstroms: float = 1.0,
    rfft: bool = False,
    *,
    centered: bool = False,
) -> tuple[np.ndarray, ...]:
    """Return the spatial-frequency coordinates of every Fourier pixel.

    Parameters
    ----------
    shape
        Real-space shape, numpy order: ``(ny, nx)`` or ``(nz, ny, nx)``.
    pixel_size_angstroms
        Real-space sampling in Å per pixel.
    rfft
        If true, the layout of ``numpy.fft.rfftn(image)``: the last axis has
        ``nx // 2 + 1`` entries (non-negative ``kx`` only).
    centered
        If true (and ``rfft`` is false), the ``fftshift``-ed layout with the
        origin at index ``n // 2`` of every axis. Ignored on the last axis
        when ``rfft`` is true.

    Returns
    -------
    tuple of numpy.ndarray
        One float64 array per axis, in numpy axis order -- ``(ky, kx)`` for a
        2-D shape, ``(kz, ky, kx)`` for 3-D -- each broadcast to the full
        Fourier shape, in 1/Å.
    """
    shape = _check_shape(shape)
    if pixel_size_angstroms <= 0:
        raise ValueError(f"pixel_size_angstroms must be positive, got {pixel_size_angstroms}")
    axes = []
    for index, n in enumerate(shape):
        last = index == len(shape) - 1
        axes.append(
            _axis_frequencies(
                n,
                pixel_size_angstroms,
                half=rfft and last,
                centered=centered and not (rfft and last),
            )
        )
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    full = np.broadcast_shapes(*(g.shape for g in grids))
    return tuple(np.broadcast_to(g, full) for g in grids)


def radial_frequency(
    shape: tuple[int, ...],
    pixel_size_angstroms: float = 1.0,
    rfft: bool = False,
    *,
    centered: bool = False,
) -> np.ndarray:
    """Return ``|k|`` in 1/Å for every Fourier pixel (layout as :func:`spatial_frequency_grid`)."""
    grids = spatial_frequency_grid(shape, pixel_size_angstroms, rfft=rfft, centered=centered)
    squared = np.zeros(grids[0].shape, dtype=np.float64)
    for g in grids:
        squared += g * g
    return np.sqrt(squared)


def _resize_axis(spectrum: np.ndarray, axis: int, old_n: int, new_n: int) -> np.ndarray:
    """Crop or zero-pad one axis of an unshifted full FFT, keeping Hermitian balance."""
    if new_n == old_n:
        return spectrum
    spectrum = np.moveaxis(spectrum, axis, 0)
    out_shape = (new_n, *spectrum.shape[1:])
    out = np.zeros(out_shape, dtype=spectrum.dtype)
    if new_n < old_n:
        # Keep frequencies -(new_n // 2) .. (new_n - 1) // 2. For an even new_n the
        # Nyquist bin receives +new_n/2 and -new_n/2 together (they alias onto the
        # same bin), which keeps a real input real and undoes the split of a pad.
        n_pos = (new_n - 1) // 2 + 1  # 0 .. (new_n-1)//2
        n_neg = new_n // 2  # -(new_n//2) .. -1
        out[:n_pos] = spectrum[:n_pos]
        if n_neg:
            out[new_n - n_neg :] = spectrum[old_n - n_neg :]
        if new_n % 2 == 0:
            out[new_n // 2] = spectrum[new_n // 2] + spectrum[old_n - new_n // 2]
    else:
        n_pos = (old_n - 1) // 2 + 1
        n_neg = old_n // 2
        out[:n_pos] = spectrum[:n_pos]
        if n_neg:
            out[new_n - n_neg :] = spectrum[old_n - n_neg :]
        if old_n % 2 == 0:
            # The old Nyquist bin stands for both +old_n/2 and -old_n/2: split it.
            nyquist = spectrum[old_n // 2]
            out[new_n - old_n // 2] = 0.5 * nyquist
            out[old_n // 2] = 0.5 * nyquist
    return np.moveaxis(out, 0, axis)


def fourier_crop(image: npt.ArrayLike, new_shape: tuple[int, ...]) -> np.ndarray:
    """Resample an image or volume by cropping (or zero-padding) its Fourier transform.

    Cropping is band-limited binning: the output pixel size is
    ``pixel_size * old_n / new_n`` along each axis. Padding interpolates
    (sinc). The real-space mean is preserved, as with averaging binning.

    Parameters
    ----------
    image
        Real array. Its trailing ``len(new_shape)`` axes are resampled; any
        leading axes (e.g. frames of a stack) are kept.
    new_shape
        New sizes of the trailing axes, numpy order (``(ny, nx)`` ...).

    Returns
    -------
    numpy.ndarray
        Float32 for float32/integer input, float64 for float64 input. The
        origin convention is the FFT's: pixel 0 stays at position 0, so an
        image whose centre is pixel ``n // 2`` keeps its centre at
        ``new_n // 2`` only up to sub-pixel rounding of odd/even sizes.
    """
    array = np.asarray(image)
    if np.iscomplexobj(array):
        raise ValueError("fourier_crop expects a real array")
    new_shape = _check_shape(new_shape)
    ndim = len(new_shape)
    if array.ndim < ndim:
        raise ValueError(f"image has {array.ndim} axes, cannot resample {ndim} trailing axes")
    old_shape = array.shape[array.ndim - ndim :]
    out_dtype = np.float64 if array.dtype == np.float64 else np.float32
    axes = tuple(range(array.ndim - ndim, array.ndim))
    spectrum = np.fft.fftn(array, axes=axes)
    for axis, old_n, new_n in zip(axes, old_shape, new_shape, strict=True):
        spectrum = _resize_axis(spectrum, axis, old_n, new_n)
    result = np.fft.ifftn(spectrum, axes=axes).real
    scale = float(np.prod(new_shape)) / float(np.prod(old_shape))
    return (result * scale).astype(out_dtype, copy=False)


def fourier_shift(image: npt.ArrayLike, shift_px: npt.ArrayLike) -> np.ndarray:
    """Translate 2-D images by sub-pixel amounts with a Fourier phase ramp (periodic).

    The content moves towards larger indices for positive shifts:
    ``out[y, x] = image[y - shift_y, x - shift_x]`` (circularly, with band-limited
    interpolation). To undo a shift, apply its negative.

    Parameters
    ----------
    image
        Real array ``(ny, nx)`` or a stack ``(n, ny, nx)``.
    shift_px
        ``(shift_x, shift_y)`` in pixels -- **x first**, x along axis ``-1`` --
        for one image, or an ``(n, 2)`` array of per-image ``(shift_x, shift_y)``
        for a stack (a single pair is applied to every image of a stack).

    Returns
    -------
    numpy.ndarray
        Shifted image(s), same shape; float32 unless the input is float64.
    """
    array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise ValueError(f"image must be (ny, nx) or (n, ny, nx), got shape {array.shape}")
    if np.iscomplexobj(array):
        raise ValueError("fourier_shift expects a real array")
    shifts = np.asarray(shift_px, dtype=np.float64)
    if shifts.shape == (2,):
        shifts_2d = shifts[None, :]
    elif array.ndim == 3 and shifts.shape == (array.shape[0], 2):
        shifts_2d = shifts
    else:
        raise ValueError(
            f"shift_px must be (2,) or (n_images, 2) = ({array.shape[0]}, 2) for a stack; "
            f"got shape {shifts.shape}"
        )
    out_dtype = np.float64 if array.dtype == np.float64 else np.float32
    ny, nx = array.shape[-2:]
    ky, kx = spatial_frequency_grid((ny, nx), 1.0, rfft=True)
    stack = array if array.ndim == 3 else array[None]
    spectrum = np.fft.rfft2(stack)
    sx = shifts_2d[:, 0][:, None, None]
    sy = shifts_2d[:, 1][:, None, None]
    ramp = np.exp(-2j * np.pi * (kx[None] * sx + ky[None] * sy))
    shifted = np.fft.irfft2(spectrum * ramp, s=(ny, nx))
    if array.ndim == 2:
        shifted = shifted[0]
    return shifted.astype(out_dtype, copy=False)
