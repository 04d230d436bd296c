"""Numba inner loops of :mod:`cistemd.kernels.simulate` (private; call the wrappers there).

Both splatting routines spread each weighted point over its neighbouring
grid nodes with linear interpolation weights (the adjoint of (bi/tri)linear
interpolation), so the total weight is conserved for points inside the grid.
Points whose interpolation footprint leaves the grid are dropped whole.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["splat_bilinear", "splat_trilinear"]


@njit(cache=True, nogil=True)
def splat_bilinear(
    x_px: np.ndarray, y_px: np.ndarray, weights: np.ndarray, out: np.ndarray
) -> int:  # pragma: no cover - compiled
    """Add ``weights[c, i]`` at ``(y_px[i], x_px[i])`` into ``out[c]``; return points dropped.

    ``out`` is ``(n_channels, ny, nx)``; coordinates are in pixels with pixel
    ``(j, i)`` centred at ``(y, x) = (j, i)``.
    """
    n_channels, ny, nx = out.shape
    dropped = 0
    for i in range(x_px.shape[0]):
        x = x_px[i]
        y = y_px[i]
        x0 = np.floor(x)
        y0 = np.floor(y)
        ix = int(x0)
        iy = int(y0)
        if ix < 0 or iy < 0 or ix + 1 >= nx or iy + 1 >= ny:
            dropped += 1
            continue
        fx = x - x0
        fy = y - y0
        w00 = (1.0 - fx) * (1.0 - fy)
        w01 = fx * (1.0 - fy)
        w10 = (1.0 - fx) * fy
        w11 = fx * fy
        for c in range(n_channels):
            w = weights[c, i]
            out[c, iy, ix] += w * w00
            out[c, iy, ix + 1] += w * w01
            out[c, iy + 1, ix] += w * w10
            out[c, iy + 1, ix + 1] += w * w11
    return dropped


@njit(cache=True, nogil=True)
def splat_trilinear(
    x_px: np.ndarray, y_px: np.ndarray, z_px: np.ndarray, weights: np.ndarray, out: np.ndarray
) -> int:  # pragma: no cover - compiled
    """Add ``weights[i]`` at ``(z, y, x)`` into the ``(nz, ny, nx)`` grid ``out``; count drops."""
    nz, ny, nx = out.shape
    dropped = 0
    for i in range(x_px.shape[0]):
        x0 = np.floor(x_px[i])
        y0 = np.floor(y_px[i])
        z0 = np.floor(z_px[i])
        ix = int(x0)
        iy = int(y0)
        iz = int(z0)
        if ix < 0 or iy < 0 or iz < 0 or ix + 1 >= nx or iy + 1 >= ny or iz + 1 >= nz:
            dropped += 1
            continue
        fx = x_px[i] - x0
        fy = y_px[i] - y0
        fz = z_px[i] - z0
        w = weights[i]
        for dz in range(2):
            wz = fz if dz == 1 else 1.0 - fz
            for dy in range(2):
                wy = fy if dy == 1 else 1.0 - fy
                for dx in range(2):
                    wx = fx if dx == 1 else 1.0 - fx
                    out[iz + dz, iy + dy, ix + dx] += w * wz * wy * wx
    return dropped
