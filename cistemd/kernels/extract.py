"""Particle extraction: boxing, edge-mean padding, normalisation and contrast.

cisTEM's refinement-package wizard (reference §3.3) boxes each particle from
its micrograph at ``round(x / pixel_size), round(y / pixel_size)`` (positions
in Å from the first pixel, x along the fast axis), pads what falls outside the
micrograph with the average of the micrograph's edge pixels, sets the box to
zero mean and unit variance, and inverts it when protein is white in the
micrograph, so that protein is dark in every stack.

Box convention: a box of size ``b`` has the particle centre at pixel
``(b // 2, b // 2)`` -- the origin convention of every other kernel.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "edge_mean",
    "extract_particles",
    "normalize_box",
    "replace_outliers_with_mean",
]


def edge_mean(image: npt.ArrayLike) -> float:
    """Return the mean of the pixels on the four edges of a 2-D image."""
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2 or min(array.shape) < 2:
        raise ValueError(f"image must be 2-D and at least 2x2, got shape {array.shape}")
    edges = np.concatenate([array[0, :], array[-1, :], array[1:-1, 0], array[1:-1, -1]])
    return float(edges.mean())


def replace_outliers_with_mean(image: npt.ArrayLike, n_sigma: float = 6.0) -> np.ndarray:
    """Return a float32 copy with values beyond ``mean ± n_sigma·σ`` set to the mean.

    Hot pixels and dead columns otherwise dominate the normalisation of the
    boxes that contain them (cisTEM replaces them at 6σ before boxing).
    """
    array = np.array(image, dtype=np.float32)
    mean = float(array.mean(dtype=np.float64))
    sigma = float(array.std(dtype=np.float64))
    if sigma > 0:
        outliers = np.abs(array - mean) > n_sigma * sigma
        array[outliers] = mean
    return array


def normalize_box(box: npt.ArrayLike) -> np.ndarray:
    """Return ``(box − mean) / σ`` as float32 (a constant box becomes zeros)."""
    array = np.asarray(box, dtype=np.float64)
    centred = array - array.mean()
    sigma = float(centred.std())
    return (centred / sigma if sigma > 0 else centred).astype(np.float32)


def extract_particles(
    image: npt.ArrayLike,
    x_angstroms: npt.ArrayLike,
    y_angstroms: npt.ArrayLike,
    *,
    pixel_size_angstroms: float,
    box_size: int,
    normalize: bool = True,
    invert: bool = False,
    pad_value: float | None = None,
) -> np.ndarray:
    """Box particles out of a micrograph.

    Parameters
    ----------
    image
        ``(ny, nx)`` micrograph.
    x_angstroms, y_angstroms
        ``(n,)`` particle centres, Å from the centre of the first pixel.
    pixel_size_angstroms
        Å per pixel of ``image``.
    box_size
        Edge of the square boxes, pixels (>= 2).
    normalize
        Zero mean, unit variance per box (cisTEM's ``ZeroFloatAndNormalize``).
    invert
        Multiply by −1 (protein white in the micrograph → dark in the stack).
    pad_value
        Value for box pixels outside the micrograph; ``None`` = the mean of the
        micrograph's edge pixels.

    Returns
    -------
    numpy.ndarray
        ``(n, box_size, box_size)`` float32 stack; particle ``i`` centred at
        pixel ``(box_size // 2, box_size // 2)``.
    """
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {array.shape}")
    if int(box_size) != box_size or box_size < 2:
        raise ValueError(f"box_size must be an integer >= 2, got {box_size!r}")
    if not pixel_size_angstroms > 0:
        raise ValueError(f"pixel_size_angstroms must be positive, got {pixel_size_angstroms!r}")
    xs = np.atleast_1d(np.asarray(x_angstroms, dtype=np.float64))
    ys = np.atleast_1d(np.asarray(y_angstroms, dtype=np.float64))
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got {xs.shape} and {ys.shape}")
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise ValueError("particle positions must be finite")
    box = int(box_size)
    fill = edge_mean(array) if pad_value is None else float(pad_value)
    ny, nx = array.shape
    half = box // 2
    stack = np.empty((xs.size, box, box), dtype=np.float32)
    # numpy's round-half-to-even differs from cisTEM's round-half-away-from-zero only
    # at exact .5 pixel positions; use the latter.
    centre_x = np.floor(xs / pixel_size_angstroms + 0.5).astype(np.int64)
    centre_y = np.floor(ys / pixel_size_angstroms + 0.5).astype(np.int64)
    for i, (cx, cy) in enumerate(zip(centre_x.tolist(), centre_y.tolist(), strict=True)):
        x0, y0 = cx - half, cy - half
        out = np.full((box, box), fill, dtype=np.float32)
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + box, nx), min(y0 + box, ny)
        if sx1 > sx0 and sy1 > sy0:
            out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = array[sy0:sy1, sx0:sx1]
        if normalize:
            out = normalize_box(out)
        if invert:
            out = -out
        stack[i] = out
    return stack
