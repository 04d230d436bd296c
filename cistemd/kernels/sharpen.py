"""Sharpen Map: B-factors, spectral flattening, FOM weighting, cut-off, hand, gridding.

The steps (cisTEM's ``Image::SharpenMap`` as described in the reference §2.9;
spatial frequency ``k`` in cycles per voxel, ``B`` in Å² converted to voxel²
as ``B / pixel_size²``):

1. A masked copy of the map (an auto-mask, a user mask, or a spherical shell
   with a 10 Å cosine edge) gives the radial amplitude spectrum ``A(k)``
   (root-mean-square ``|F|`` per one-voxel shell).
2. The unmasked map's transform is multiplied by

   * ``exp(−B_low k² / 4)`` for ``k ≤ k_w`` (``k_w = pixel_size / flatten_from``);
   * ``A(k_w) exp(−(B_low k_w² + B_high (k² − k_w²)) / 4) / A(k)`` for
     ``k_w < k ≤ 0.5`` -- the spectrum is flattened (whitened) beyond ``k_w``
     and the "post" B-factor applied on top;
   * 0 beyond Nyquist (``k > 0.5``).
3. With resolution statistics, by the figure of merit ``SSNR / (1 + SSNR)``
   with ``SSNR = rec_SSNR × ssnr_scale`` interpolated at each frequency.
4. A cosine low-pass whose edge of width ``pixel_size / filter_edge`` ends at
   ``pixel_size / resolution_limit`` (centred at ``pixel_size / resolution_limit
   − pixel_size / (2 filter_edge)``).
5. Optionally the hand is inverted (``z → −z`` about the box centre) and the
   real-space attenuation of trilinear gridding is divided out
   (``sinc²(r / N)``, with ``r`` clamped at the outer mask radius so the
   noise at the box corners is not amplified).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cistemd.kernels import masks

__all__ = [
    "SharpenParams",
    "SharpenResult",
    "apply_b_factor",
    "correct_gridding",
    "fom_weights",
    "invert_hand",
    "radial_amplitude_spectrum",
    "sharpen_map",
]

#: Edge of the spherical mask applied before measuring the spectrum (cisTEM: 10 Å).
SPECTRUM_MASK_EDGE_ANGSTROMS = 10.0


@dataclass(frozen=True, slots=True)
class SharpenParams:
    """Parameters of :func:`sharpen_map` (defaults: cisTEM's Sharpen 3D panel).

    Attributes
    ----------
    pixel_size_angstroms
        Voxel size, Å.
    resolution_limit_angstroms
        Resolution cut-off (the low-pass reaches 0 here); ``None`` = none
        (only the Nyquist limit).
    flatten_from_resolution_angstroms
        Whitening starts at this resolution (GUI 12 Å; ``sharpen_map`` 8 Å).
    pre_cutoff_b_factor_angstroms2
        ``B_low``, applied up to the flattening resolution (GUI −90 Å²).
    post_cutoff_b_factor_angstroms2
        ``B_high``, applied beyond it on the flattened spectrum (0).
    filter_edge_angstroms
        The cut-off's cosine edge is ``pixel_size / filter_edge`` wide (20 Å).
    ssnr_scale
        Multiplies the statistics' SSNR before the FOM is formed (1.0).
    inner_mask_radius_angstroms, outer_mask_radius_angstroms
        Spherical shell for the spectrum (and the gridding correction's
        clamp); ``None`` outer = half the box.
    auto_mask
        Use an auto-mask (within the outer radius) rather than the shell.
    invert_hand
        Mirror the map (``z → −z``).
    correct_gridding
        Divide out the trilinear-interpolation attenuation.
    """

    pixel_size_angstroms: float
    resolution_limit_angstroms: float | None = 3.5
    flatten_from_resolution_angstroms: float = 12.0
    pre_cutoff_b_factor_angstroms2: float = -90.0
    post_cutoff_b_factor_angstroms2: float = 0.0
    filter_edge_angstroms: float = 20.0
    ssnr_scale: float = 1.0
    inner_mask_radius_angstroms: float = 0.0
    outer_mask_radius_angstroms: float | None = None
    auto_mask: bool = True
    invert_hand: bool = False
    correct_gridding: bool = True

    def __post_init__(self) -> None:
        def positive(name: str, value: float | None) -> None:
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")

        positive("pixel_size_angstroms", self.pixel_size_angstroms)
        positive("resolution_limit_angstroms", self.resolution_limit_angstroms)
        positive("flatten_from_resolution_angstroms", self.flatten_from_resolution_angstroms)
        positive("filter_edge_angstroms", self.filter_edge_angstroms)
        positive("outer_mask_radius_angstroms", self.outer_mask_radius_angstroms)
        for name in ("pre_cutoff_b_factor_angstroms2", "post_cutoff_b_factor_angstroms2"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        if not (np.isfinite(self.ssnr_scale) and self.ssnr_scale >= 0):
            raise ValueError(f"ssnr_scale must be zero or positive, got {self.ssnr_scale!r}")
        if not (
            np.isfinite(self.inner_mask_radius_angstroms) and self.inner_mask_radius_angstroms >= 0
        ):
            raise ValueError(
                f"inner_mask_radius_angstroms must be >= 0, got {self.inner_mask_radius_angstroms}"
            )


@dataclass(frozen=True, slots=True)
class SharpenResult:
    """What :func:`sharpen_map` returns.

    Attributes
    ----------
    volume
        float32 ``(nz, ny, nx)`` sharpened map.
    spatial_frequency
        ``(m,)`` shell centres in 1/Å (shell ``i`` at ``i / N``, up to Nyquist).
    original_amplitude
        ``(m,)`` radial amplitude spectrum of the masked input.
    sharpened_amplitude
        ``(m,)`` radial amplitude spectrum of the masked output.
    filter
        ``(m,)`` the radial filter applied (before hand/gridding).
    mask
        float32 mask used for the spectrum.
    """

    volume: np.ndarray
    spatial_frequency: np.ndarray
    original_amplitude: np.ndarray
    sharpened_amplitude: np.ndarray
    filter: np.ndarray
    mask: np.ndarray


def _frequency_magnitude(shape: tuple[int, ...]) -> np.ndarray:
    """``|k|`` in cycles per voxel on the ``rfftn`` grid of a real ``shape``."""
    kz = np.fft.fftfreq(shape[0])[:, None, None]
    ky = np.fft.fftfreq(shape[1])[None, :, None]
    kx = np.fft.rfftfreq(shape[2])[None, None, :]
    return np.sqrt(kz * kz + ky * ky + kx * kx)


def _rfft_multiplicity(shape: tuple[int, ...]) -> np.ndarray:
    """How often each ``rfftn`` coefficient stands for itself and its Friedel mate."""
    nx = shape[2]
    counts = np.full(nx // 2 + 1, 2.0)
    counts[0] = 1.0
    if nx % 2 == 0:
        counts[-1] = 1.0
    return np.broadcast_to(counts[None, None, :], (shape[0], shape[1], nx // 2 + 1))


def _check_cubic(volume: npt.ArrayLike) -> np.ndarray:
    vol = np.asarray(volume)
    if vol.ndim != 3 or not vol.shape[0] == vol.shape[1] == vol.shape[2] or vol.shape[0] < 4:
        raise ValueError(f"volume must be a cubic 3-D map (N, N, N) with N >= 4, got {vol.shape}")
    if np.iscomplexobj(vol) or not np.issubdtype(vol.dtype, np.number):
        raise ValueError(f"volume must be real, got dtype {vol.dtype}")
    return vol.astype(np.float32, copy=False)


def radial_amplitude_spectrum(
    volume: npt.ArrayLike, *, threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Return the root-mean-square Fourier amplitude per one-voxel shell.

    Parameters
    ----------
    volume
        Cubic ``(N, N, N)`` map.
    threads
        ``scipy.fft`` workers.

    Returns
    -------
    shells : numpy.ndarray
        ``(N // 2 + 1,)`` shell frequencies ``i / N`` in cycles per voxel.
    amplitude : numpy.ndarray
        ``(N // 2 + 1,)`` ``sqrt(mean |F|²)`` over the Fourier voxels whose
        ``|k|`` rounds to shell ``i`` (Friedel mates counted).
    """
    import scipy.fft

    vol = _check_cubic(volume)
    n = vol.shape[0]
    spectrum = scipy.fft.rfftn(vol, workers=threads)
    return _shell_rms(np.abs(spectrum) ** 2, vol.shape, n)


def _shell_rms(power: np.ndarray, shape: tuple[int, ...], n: int) -> tuple[np.ndarray, np.ndarray]:
    k = _frequency_magnitude(shape)
    index = np.rint(k * n).astype(np.int64)
    count = n // 2 + 1
    keep = index < count
    weights = _rfft_multiplicity(shape)
    sums = np.bincount(index[keep], weights=(power * weights)[keep], minlength=count)
    counts = np.bincount(index[keep], weights=weights[keep], minlength=count)
    amplitude = np.sqrt(np.divide(sums, counts, out=np.zeros(count), where=counts > 0))
    return np.arange(count) / n, amplitude


def apply_b_factor(
    volume: npt.ArrayLike,
    pixel_size_angstroms: float,
    b_factor_angstroms2: float,
    *,
    threads: int = 1,
) -> np.ndarray:
    """Multiply a map's transform by ``exp(−B s² / 4)`` (``s`` in 1/Å; ``B > 0`` blurs).

    Parameters
    ----------
    volume
        ``(nz, ny, nx)`` map.
    pixel_size_angstroms
        Voxel size, Å.
    b_factor_angstroms2
        B-factor, Å².
    threads
        ``scipy.fft`` workers.

    Returns
    -------
    numpy.ndarray
        float32 map.
    """
    import scipy.fft

    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3-D, got shape {vol.shape}")
    if not pixel_size_angstroms > 0:
        raise ValueError(f"pixel_size_angstroms must be positive, got {pixel_size_angstroms}")
    s = _frequency_magnitude(vol.shape) / pixel_size_angstroms
    spectrum = scipy.fft.rfftn(vol, workers=threads)
    spectrum *= np.exp(-b_factor_angstroms2 * s * s / 4.0)
    return scipy.fft.irfftn(spectrum, s=vol.shape, workers=threads).astype(np.float32)


def fom_weights(
    spatial_frequency_per_angstrom: npt.ArrayLike,
    statistics_resolution_angstroms: npt.ArrayLike,
    statistics_rec_ssnr: npt.ArrayLike,
    *,
    ssnr_scale: float = 1.0,
) -> np.ndarray:
    """Return the figure of merit ``SSNR / (1 + SSNR)`` at given frequencies.

    Parameters
    ----------
    spatial_frequency_per_angstrom
        Where to evaluate, 1/Å (any shape).
    statistics_resolution_angstroms
        ``(n,)`` resolution of each statistics shell, Å (decreasing).
    statistics_rec_ssnr
        ``(n,)`` reconstruction SSNR per shell (not square-rooted); negative
        values count as 0.
    ssnr_scale
        Multiplies the SSNR first.

    Returns
    -------
    numpy.ndarray
        float64 weights in ``[0, 1)``; the SSNR is interpolated linearly in
        frequency, held at the first shell's value below it and at the last
        shell's value beyond it.
    """
    resolution = np.asarray(statistics_resolution_angstroms, dtype=np.float64).reshape(-1)
    ssnr = np.asarray(statistics_rec_ssnr, dtype=np.float64).reshape(-1)
    if resolution.shape != ssnr.shape or resolution.size == 0:
        raise ValueError(
            f"statistics arrays must be non-empty and equal in length, got {resolution.size} "
            f"resolutions and {ssnr.size} SSNR values"
        )
    if np.any(~np.isfinite(resolution)) or np.any(resolution <= 0):
        raise ValueError("statistics resolutions must be positive and finite")
    frequency = 1.0 / resolution
    order = np.argsort(frequency)
    frequency, ssnr = frequency[order], np.clip(np.nan_to_num(ssnr[order]), 0.0, None)
    values = np.interp(
        np.asarray(spatial_frequency_per_angstrom, dtype=np.float64),
        frequency,
        ssnr,
        left=ssnr[0],
        right=ssnr[-1],
    )
    values = values * float(ssnr_scale)
    return values / (1.0 + values)


def invert_hand(volume: npt.ArrayLike) -> np.ndarray:
    """Mirror a map through the xy plane through the box centre (``z → −z``).

    Voxel ``k`` goes to ``2 (N // 2) − k`` (mod N), so the centre voxel stays put.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3-D, got shape {vol.shape}")
    flipped = vol[::-1]
    if vol.shape[0] % 2 == 0:
        flipped = np.roll(flipped, 1, axis=0)
    return np.ascontiguousarray(flipped)


def correct_gridding(
    volume: npt.ArrayLike,
    *,
    max_radius_voxels: float | None = None,
    padding_factor: float = 1.0,
) -> np.ndarray:
    """Divide out the real-space attenuation of trilinear Fourier interpolation.

    Trilinear interpolation in a transform of ``p·N`` voxels multiplies the map
    by ``sinc²(r / (p N))`` (``sinc(x) = sin(πx)/(πx)``); this divides by it,
    with ``r`` (distance from the box centre, voxels) clamped at
    ``max_radius_voxels`` so that corners are not amplified further.

    Parameters
    ----------
    volume
        Cubic ``(N, N, N)`` map.
    max_radius_voxels
        Clamp radius; ``None`` = ``N / 2``.
    padding_factor
        Padding of the reconstruction's transform (1 = none).

    Returns
    -------
    numpy.ndarray
        float32 corrected map.
    """
    vol = _check_cubic(volume)
    n = vol.shape[0]
    if not padding_factor >= 1.0:
        raise ValueError(f"padding_factor must be >= 1, got {padding_factor}")
    limit = n / 2.0 if max_radius_voxels is None else float(max_radius_voxels)
    if not limit > 0:
        raise ValueError(f"max_radius_voxels must be positive, got {max_radius_voxels}")
    axis = np.arange(n, dtype=np.float64) - n // 2
    r = np.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2)
    attenuation = np.sinc(np.minimum(r, limit) / (padding_factor * n)) ** 2
    return (vol / attenuation).astype(np.float32)


def _spectrum_mask(
    vol: np.ndarray,
    params: SharpenParams,
    mask: np.ndarray | None,
    outer_angstroms: float,
    threads: int,
) -> np.ndarray:
    psize = params.pixel_size_angstroms
    if mask is not None:
        weights = np.asarray(mask, dtype=np.float32)
        if weights.shape != vol.shape:
            raise ValueError(f"mask has shape {weights.shape}, the volume {vol.shape}")
        return np.clip(weights, 0.0, 1.0)
    if params.auto_mask:
        weights = masks.auto_mask(
            vol, psize, outer_radius_angstroms=outer_angstroms, threads=threads
        )
        if weights.any():
            return weights
    inner = min(params.inner_mask_radius_angstroms, 0.9 * outer_angstroms)
    return masks.spherical_mask(
        vol.shape,
        psize,
        outer_angstroms,
        inner_radius_angstroms=inner,
        edge_width_angstroms=SPECTRUM_MASK_EDGE_ANGSTROMS,
    )


def sharpen_map(
    volume: npt.ArrayLike,
    params: SharpenParams,
    *,
    mask: npt.ArrayLike | None = None,
    statistics_resolution_angstroms: npt.ArrayLike | None = None,
    statistics_rec_ssnr: npt.ArrayLike | None = None,
    threads: int = 1,
) -> SharpenResult:
    """Sharpen a map (see the module docstring for every step).

    Parameters
    ----------
    volume
        Cubic ``(N, N, N)`` map, box centre at ``N // 2``.
    params
        :class:`SharpenParams`.
    mask
        Optional ``(N, N, N)`` weights (e.g. :func:`masks.user_mask`) used for
        the spectrum instead of the auto-mask or shell.
    statistics_resolution_angstroms, statistics_rec_ssnr
        Resolution statistics per shell (both or neither): with them the map
        is FOM-weighted by ``SSNR / (1 + SSNR)``.
    threads
        ``scipy.fft`` workers.

    Returns
    -------
    SharpenResult
        The map and the spectra before and after.
    """
    import scipy.fft

    vol = _check_cubic(volume)
    n = vol.shape[0]
    psize = params.pixel_size_angstroms
    outer = (
        params.outer_mask_radius_angstroms
        if params.outer_mask_radius_angstroms is not None
        else psize * n / 2.0
    )
    if (statistics_resolution_angstroms is None) != (statistics_rec_ssnr is None):
        raise ValueError("give both statistics arrays (resolution and rec SSNR) or neither")

    weights = _spectrum_mask(
        vol, params, None if mask is None else np.asarray(mask), outer, threads
    )
    masked = masks.apply_mask(vol, weights)
    masked_spectrum = scipy.fft.rfftn(masked, workers=threads)
    shells, amplitude = _shell_rms(np.abs(masked_spectrum) ** 2, vol.shape, n)

    k = _frequency_magnitude(vol.shape)
    k_w = min(psize / params.flatten_from_resolution_angstroms, 0.5)
    b_low = params.pre_cutoff_b_factor_angstroms2 / psize**2
    b_high = params.post_cutoff_b_factor_angstroms2 / psize**2

    def radial_filter(kk: np.ndarray) -> np.ndarray:
        kk2 = kk * kk
        low = np.exp(-b_low * kk2 / 4.0)
        a_k = np.interp(kk, shells, amplitude)
        a_w = float(np.interp(k_w, shells, amplitude))
        safe = np.where(a_k > 0, a_k, np.inf)
        high = a_w * np.exp(-(b_low * k_w**2 + b_high * (kk2 - k_w**2)) / 4.0) / safe
        out = np.where(kk <= k_w, low, high)
        out = np.where(kk <= 0.5, out, 0.0)
        if statistics_resolution_angstroms is not None:
            out = out * fom_weights(
                kk / psize,
                statistics_resolution_angstroms,
                statistics_rec_ssnr,  # type: ignore[arg-type]
                ssnr_scale=params.ssnr_scale,
            )
        if params.resolution_limit_angstroms is not None:
            width = psize / params.filter_edge_angstroms
            end = psize / params.resolution_limit_angstroms
            out = out * masks.cosine_edge((kk - (end - width)) / width)
        return out

    spectrum = scipy.fft.rfftn(vol, workers=threads)
    spectrum *= radial_filter(k)
    sharpened = scipy.fft.irfftn(spectrum, s=vol.shape, workers=threads).astype(np.float32)
    filter_curve = radial_filter(shells)
    _, sharpened_amplitude = radial_amplitude_spectrum(
        masks.apply_mask(sharpened, weights), threads=threads
    )
    if params.invert_hand:
        sharpened = invert_hand(sharpened)
    if params.correct_gridding:
        sharpened = correct_gridding(sharpened, max_radius_voxels=outer / psize)
    return SharpenResult(
        volume=sharpened,
        spatial_frequency=shells / psize,
        original_amplitude=amplitude,
        sharpened_amplitude=sharpened_amplitude,
        filter=filter_curve,
        mask=weights,
    )
