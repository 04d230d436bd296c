"""Real-space masks for 3-D maps: spherical shells, auto-masks, user masks.

Conventions
-----------
* Volumes are ``(nz, ny, nx)`` arrays; the mask centre is voxel
  ``(nz // 2, ny // 2, nx // 2)`` (cisTEM's box centre).
* Radii and widths are in Å (divided by ``pixel_size_angstroms`` inside).
* A mask is a float32 weight array in ``[0, 1]``. Edges are raised cosines:
  ``w = (1 + cos(π t)) / 2`` as ``t`` runs from 0 to 1 across the edge.
* As in cisTEM's ``CosineMask``/``CosineRingMask``, a spherical edge of width
  ``w`` is *centred* on the radius: it runs from ``R − w/2`` to ``R + w/2``,
  so the weight is 0.5 at ``R`` and the soft sphere keeps about the volume of
  the hard one. Masking a map blends it towards a fill value -- by default the
  mean of the map over the edge, as cisTEM does, so no step is created where
  the solvent level is not zero.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "apply_mask",
    "auto_mask",
    "cosine_edge",
    "lowpass_volume",
    "mask_volume_voxels",
    "soft_edge_mask",
    "spherical_mask",
    "user_mask",
]


def _check_volume(volume: npt.ArrayLike, name: str = "volume") -> np.ndarray:
    vol = np.asarray(volume)
    if vol.ndim != 3 or min(vol.shape) < 2:
        raise ValueError(f"{name} must be a 3-D array, got shape {vol.shape}")
    if not (np.issubdtype(vol.dtype, np.number) or vol.dtype == np.bool_) or np.iscomplexobj(vol):
        raise ValueError(f"{name} must be real-valued, got dtype {vol.dtype}")
    return vol


def _check_positive(name: str, value: float) -> float:
    number = float(value)
    if not np.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return number


def _check_non_negative(name: str, value: float) -> float:
    number = float(value)
    if not np.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be zero or positive, got {value!r}")
    return number


def _radius_grid(shape: tuple[int, ...]) -> np.ndarray:
    """Distance of every voxel from the box centre, voxels (float64)."""
    axes = [np.arange(n, dtype=np.float64) - n // 2 for n in shape]
    squared = np.zeros(shape, dtype=np.float64)
    for index, axis in enumerate(axes):
        view = [1] * len(shape)
        view[index] = shape[index]
        squared = squared + axis.reshape(view) ** 2
    return np.sqrt(squared)


def cosine_edge(t: npt.ArrayLike) -> np.ndarray:
    """Return the raised-cosine fall-off: 1 for ``t ≤ 0``, 0 for ``t ≥ 1``.

    Parameters
    ----------
    t
        Position across the edge as a fraction of its width.

    Returns
    -------
    numpy.ndarray
        float64 ``(1 + cos(π t)) / 2`` with ``t`` clipped to ``[0, 1]``.
    """
    clipped = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * clipped))


def spherical_mask(
    shape: tuple[int, int, int],
    pixel_size_angstroms: float,
    outer_radius_angstroms: float,
    *,
    inner_radius_angstroms: float = 0.0,
    edge_width_angstroms: float = 10.0,
) -> np.ndarray:
    """Return a spherical (shell) mask with cosine edges.

    Parameters
    ----------
    shape
        ``(nz, ny, nx)``.
    pixel_size_angstroms
        Voxel size, Å.
    outer_radius_angstroms
        Radius where the outer edge passes 0.5, Å.
    inner_radius_angstroms
        Radius where the inner edge passes 0.5 (0 = a full sphere), Å.
    edge_width_angstroms
        Width of each cosine edge, Å (0 = hard edges).

    Returns
    -------
    numpy.ndarray
        float32 ``shape`` weights: 1 between ``inner + w/2`` and ``outer − w/2``,
        0 beyond ``outer + w/2`` and inside ``inner − w/2``.
    """
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (nz, ny, nx), got {shape}")
    psize = _check_positive("pixel_size_angstroms", pixel_size_angstroms)
    outer = _check_positive("outer_radius_angstroms", outer_radius_angstroms) / psize
    inner = _check_non_negative("inner_radius_angstroms", inner_radius_angstroms) / psize
    edge = _check_non_negative("edge_width_angstroms", edge_width_angstroms) / psize
    if inner >= outer:
        raise ValueError(
            f"inner_radius_angstroms ({inner_radius_angstroms}) must be smaller than "
            f"outer_radius_angstroms ({outer_radius_angstroms})"
        )
    r = _radius_grid(shape)
    if edge > 0:
        start = max(outer - edge / 2.0, 0.0)
        weights = cosine_edge((r - start) / edge)
    else:
        weights = (r <= outer).astype(np.float64)
    if inner > 0:
        if edge > 0:
            start_inner = inner + edge / 2.0
            weights = weights * cosine_edge((start_inner - r) / edge)
        else:
            weights = weights * (r >= inner)
    return weights.astype(np.float32)


def mask_volume_voxels(weights: npt.ArrayLike) -> float:
    """Return ``Σ w``, the volume a soft mask encloses, in voxels."""
    return float(np.sum(np.asarray(weights, dtype=np.float64)))


def soft_edge_mask(
    binary: npt.ArrayLike,
    pixel_size_angstroms: float,
    *,
    dilation_angstroms: float = 0.0,
    edge_width_angstroms: float = 10.0,
) -> np.ndarray:
    """Dilate a binary mask and give it an outward cosine edge.

    Parameters
    ----------
    binary
        ``(nz, ny, nx)`` boolean (or 0/1) mask.
    pixel_size_angstroms
        Voxel size, Å.
    dilation_angstroms
        Voxels within this distance of the mask become 1.
    edge_width_angstroms
        Width of the cosine fall-off beyond the dilated mask.

    Returns
    -------
    numpy.ndarray
        float32 weights: 1 within ``dilation`` of the mask, falling to 0 at
        ``dilation + edge`` (Euclidean distances).
    """
    import scipy.ndimage as ndi

    mask = _check_volume(binary, "binary").astype(bool)
    psize = _check_positive("pixel_size_angstroms", pixel_size_angstroms)
    dilation = _check_non_negative("dilation_angstroms", dilation_angstroms) / psize
    edge = _check_non_negative("edge_width_angstroms", edge_width_angstroms) / psize
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.float32)
    distance = ndi.distance_transform_edt(~mask)
    if edge > 0:
        weights = cosine_edge((distance - dilation) / edge)
    else:
        weights = (distance <= dilation).astype(np.float64)
    return np.asarray(weights, dtype=np.float32)


def lowpass_volume(
    volume: npt.ArrayLike,
    pixel_size_angstroms: float,
    resolution_angstroms: float,
    *,
    edge_width_fraction: float = 0.1,
    threads: int = 1,
) -> np.ndarray:
    """Low-pass filter a map with a cosine edge in Fourier space.

    Parameters
    ----------
    volume
        ``(nz, ny, nx)`` map.
    pixel_size_angstroms
        Voxel size, Å.
    resolution_angstroms
        Frequencies up to ``1/resolution`` pass; the cosine edge is centred
        on ``pixel_size / resolution`` cycles per voxel.
    edge_width_fraction
        Edge width in cycles per voxel (0.1 = a fifth of Nyquist).
    threads
        ``scipy.fft`` workers.

    Returns
    -------
    numpy.ndarray
        float32 filtered map.
    """
    import scipy.fft

    vol = _check_volume(volume).astype(np.float32)
    psize = _check_positive("pixel_size_angstroms", pixel_size_angstroms)
    resolution = _check_positive("resolution_angstroms", resolution_angstroms)
    width = _check_non_negative("edge_width_fraction", edge_width_fraction)
    k = _frequency_magnitude(vol.shape)
    cutoff = psize / resolution
    if width > 0:
        weights = cosine_edge((k - (cutoff - width / 2.0)) / width)
    else:
        weights = (k <= cutoff).astype(np.float64)
    spectrum = scipy.fft.rfftn(vol, workers=threads)
    spectrum *= weights
    return scipy.fft.irfftn(spectrum, s=vol.shape, workers=threads).astype(np.float32)


def _frequency_magnitude(shape: tuple[int, ...]) -> np.ndarray:
    """``|k|`` in cycles per voxel on the ``rfftn`` grid of ``shape``."""
    kz = np.fft.fftfreq(shape[0])[:, None, None]
    ky = np.fft.fftfreq(shape[1])[None, :, None]
    kx = np.fft.rfftfreq(shape[2])[None, None, :]
    return np.sqrt(kz * kz + ky * ky + kx * kx)


def auto_mask(
    volume: npt.ArrayLike,
    pixel_size_angstroms: float,
    *,
    outer_radius_angstroms: float | None = None,
    lowpass_resolution_angstroms: float = 10.0,
    threshold: float | None = None,
    dilation_angstroms: float = 3.0,
    edge_width_angstroms: float = 10.0,
    keep_largest: bool = True,
    threads: int = 1,
) -> np.ndarray:
    """Build a soft mask around the density of a map.

    The map is low-pass filtered, restricted to a sphere, thresholded, reduced
    to its largest connected region (optional), dilated and given a cosine edge.

    Parameters
    ----------
    volume
        ``(nz, ny, nx)`` map, protein positive.
    pixel_size_angstroms
        Voxel size, Å.
    outer_radius_angstroms
        Nothing beyond this radius is masked in; ``None`` = half the box.
    lowpass_resolution_angstroms
        Resolution of the low-pass filter applied before thresholding (cisTEM
        filters to 10 Å).
    threshold
        Density threshold on the low-passed map; ``None`` chooses
        ``background + max(4 σ_background, 0.1 (peak − background))``, with the
        background level and σ measured (median and MAD) outside the sphere,
        or in the outermost shell of the box if the sphere fills it.
    dilation_angstroms
        Dilation of the thresholded region, Å.
    edge_width_angstroms
        Cosine fall-off beyond the dilated region, Å.
    keep_largest
        Keep only the largest connected region (removes isolated noise blobs).
    threads
        ``scipy.fft`` workers.

    Returns
    -------
    numpy.ndarray
        float32 weights in ``[0, 1]``; all zeros if nothing exceeds the threshold.
    """
    import scipy.ndimage as ndi

    vol = _check_volume(volume).astype(np.float32)
    psize = _check_positive("pixel_size_angstroms", pixel_size_angstroms)
    half_box = min(vol.shape) // 2
    if outer_radius_angstroms is None:
        outer = float(half_box)
    else:
        outer = _check_positive("outer_radius_angstroms", outer_radius_angstroms) / psize
    smooth = lowpass_volume(
        vol, psize, max(lowpass_resolution_angstroms, 2.0 * psize), threads=threads
    )
    r = _radius_grid(vol.shape)
    inside = r <= outer
    outside = ~inside
    if np.count_nonzero(outside) < 100:
        outside = r >= half_box - 2
        if np.count_nonzero(outside) < 100:
            outside = np.ones(vol.shape, dtype=bool)
    background_values = smooth[outside]
    background = float(np.median(background_values))
    sigma = float(1.4826 * np.median(np.abs(background_values - background)))
    if threshold is None:
        peak = float(smooth[inside].max()) if inside.any() else background
        level = background + max(4.0 * sigma, 0.1 * (peak - background))
    else:
        level = float(threshold)
    binary = (smooth > level) & inside
    if keep_largest and binary.any():
        labels, count = ndi.label(binary)
        if count > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            binary = labels == int(np.argmax(sizes))
    weights = soft_edge_mask(
        binary,
        psize,
        dilation_angstroms=dilation_angstroms,
        edge_width_angstroms=edge_width_angstroms,
    )
    return weights


def user_mask(
    mask: npt.ArrayLike,
    pixel_size_angstroms: float,
    *,
    edge_width_angstroms: float = 10.0,
    threshold: float = 0.5,
) -> np.ndarray:
    """Turn a user-supplied mask volume into soft weights.

    Parameters
    ----------
    mask
        ``(nz, ny, nx)`` mask (binary or soft, 1 = keep).
    pixel_size_angstroms
        Voxel size, Å.
    edge_width_angstroms
        Width of the cosine edge added outside the thresholded mask
        (cisTEM's refinement default: 10 Å); 0 keeps the binarised mask.
    threshold
        Voxels above this value are inside.

    Returns
    -------
    numpy.ndarray
        float32 weights in ``[0, 1]``.

    Raises
    ------
    ValueError
        If no voxel exceeds ``threshold``.
    """
    vol = _check_volume(mask, "mask")
    binary = np.asarray(vol, dtype=np.float64) > float(threshold)
    if not binary.any():
        raise ValueError(f"the mask has no voxel above {threshold}; is it empty or inverted?")
    return soft_edge_mask(binary, pixel_size_angstroms, edge_width_angstroms=edge_width_angstroms)


def apply_mask(
    volume: npt.ArrayLike,
    weights: npt.ArrayLike,
    *,
    fill: Literal["edge_mean", "zero"] | float = "edge_mean",
    outside_weight: float = 0.0,
    pixel_size_angstroms: float | None = None,
    lowpass_outside_resolution_angstroms: float | None = None,
    threads: int = 1,
) -> np.ndarray:
    """Mask a map: ``m·w + (1 − w)·(fill + outside_weight·(m_out − fill))``.

    Parameters
    ----------
    volume
        ``(nz, ny, nx)`` map ``m``.
    weights
        Mask ``w`` of the same shape (see :func:`spherical_mask`,
        :func:`auto_mask`, :func:`user_mask`).
    fill
        Level the masked-out region tends to: ``"edge_mean"`` = the mean of
        ``m`` over the edge (``0 < w < 1``; the mean outside if there is no
        edge), ``"zero"``, or a number.
    outside_weight
        Fraction of the density kept outside the mask (cisTEM's "outside
        weight", 0 = remove), in ``[0, 1]``.
    pixel_size_angstroms
        Voxel size; needed with ``lowpass_outside_resolution_angstroms``.
    lowpass_outside_resolution_angstroms
        If set, the density kept outside is low-pass filtered to this
        resolution first (cisTEM's "low-pass filter outside mask").
    threads
        ``scipy.fft`` workers.

    Returns
    -------
    numpy.ndarray
        float32 masked map.
    """
    vol = _check_volume(volume).astype(np.float32)
    w = np.asarray(weights, dtype=np.float32)
    if w.shape != vol.shape:
        raise ValueError(f"weights have shape {w.shape}, the volume {vol.shape}")
    if not 0.0 <= outside_weight <= 1.0:
        raise ValueError(f"outside_weight must be in [0, 1], got {outside_weight}")
    if isinstance(fill, str):
        if fill == "zero":
            level = 0.0
        elif fill == "edge_mean":
            edge = (w > 0.0) & (w < 1.0)
            if not edge.any():
                edge = w <= 0.0
            level = float(vol[edge].mean()) if edge.any() else 0.0
        else:
            raise ValueError(f"fill must be 'edge_mean', 'zero' or a number, got {fill!r}")
    else:
        level = float(fill)
    outside = np.full(vol.shape, level, dtype=np.float32)
    if outside_weight > 0:
        kept = vol
        if lowpass_outside_resolution_angstroms is not None:
            if pixel_size_angstroms is None:
                raise ValueError("pixel_size_angstroms is needed to low-pass outside the mask")
            kept = lowpass_volume(
                vol, pixel_size_angstroms, lowpass_outside_resolution_angstroms, threads=threads
            )
        outside = outside + np.float32(outside_weight) * (kept - outside)
    return (vol * w + (1.0 - w) * outside).astype(np.float32)
