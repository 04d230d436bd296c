"""Fourier-space projection of a volume (central-slice extraction), cisTEM conventions.

Conventions
-----------
* Volumes are ``(n, n, n)`` indexed ``[z, y, x]``, centre at voxel ``n // 2``;
  images ``(n, n)`` indexed ``[y, x]``, centre at pixel ``n // 2``.
* Angles ``(φ, θ, ψ)`` in degrees, Euler ZYZ, ``R = Rz(ψ) Ry(θ) Rz(φ)``
  (:mod:`cistemd.kernels.rotation`): ``image(x', y') = ∫ map(Rᵀ (x', y', z')) dz'``.
* Shifts are Frealign/cisTEM ``x_shift``, ``y_shift`` in Å: the projection
  is drawn with its centre at ``(n // 2 + x_shift / pixel_size, n // 2 +
  y_shift / pixel_size)`` (reconstruction undoes this with a phase shift by
  ``−shift``).
* The CTF (:func:`cistemd.kernels.ctf.ctf_2d`, CTFFIND convention) multiplies
  the projection's transform; ``−sin χ`` makes a positive potential dark in
  underfocus.

Method: the volume is divided by the gridding kernel's transform
(``sinc²`` per axis of the padded box), zero-padded ``padding``-fold, moved to
the origin and transformed once (:func:`prepare_projector`); each projection is
then a central slice through that transform sampled by trilinear
interpolation (:func:`project`) and an inverse 2-D FFT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.fft

from cistemd.kernels.ctf import CTFParams
from cistemd.kernels.rotation import euler_to_matrix

__all__ = ["Projector", "gridding_correction", "prepare_projector", "project"]


def gridding_correction(n: int, padded_n: int) -> np.ndarray:
    """Return ``sinc²(x / padded_n)`` for ``x = i − n // 2``, ``i = 0 .. n − 1``, shape ``(n,)``.

    Trilinear interpolation in a ``padded_n``-point transform multiplies real
    space by the outer product of this profile along every axis (centre =
    voxel ``n // 2``).
    """
    x = np.arange(n, dtype=np.float64) - n // 2
    return np.sinc(x / padded_n) ** 2


def _pad_centered(volume: np.ndarray, padded_n: int) -> np.ndarray:
    n = volume.shape[0]
    if padded_n == n:
        return volume
    out = np.zeros((padded_n,) * 3, dtype=volume.dtype)
    start = padded_n // 2 - n // 2
    out[start : start + n, start : start + n, start : start + n] = volume
    return out


@dataclass(frozen=True, slots=True)
class Projector:
    """A volume prepared for central-slice extraction.

    Attributes
    ----------
    transform
        complex64 ``(N, N, N // 2 + 1)``: ``rfftn`` of the gridding-corrected,
        padded volume with its centre moved to index 0.
    box_size
        ``n``, the edge of the original volume (and of the projections).
    padding
        ``N / n``.
    """

    transform: np.ndarray
    box_size: int
    padding: float


def prepare_projector(
    volume: npt.ArrayLike, *, padding: int = 2, workers: int | None = None
) -> Projector:
    """Return the padded 3-D transform of ``volume`` used by :func:`project`.

    Parameters
    ----------
    volume
        ``(n, n, n)`` real map, centre at voxel ``n // 2``.
    padding
        Integer oversampling of the transform (2 keeps trilinear
        interpolation errors below ~1 % to Nyquist; 1 is cheaper).
    workers
        Threads for the FFT.
    """
    array = np.asarray(volume, dtype=np.float32)
    if array.ndim != 3 or len(set(array.shape)) != 1:
        raise ValueError(f"volume must be a cube (n, n, n), got shape {array.shape}")
    if int(padding) != padding or padding < 1:
        raise ValueError(f"padding must be a positive integer, got {padding}")
    n = array.shape[0]
    padded_n = n * int(padding)
    profile = gridding_correction(n, padded_n).astype(np.float32)
    corrected = array / (profile[:, None, None] * profile[None, :, None] * profile[None, None, :])
    padded = _pad_centered(corrected.astype(np.float32), padded_n)
    transform = scipy.fft.rfftn(scipy.fft.ifftshift(padded), workers=workers)
    # Every slice samples the origin exactly (no interpolation), so it takes
    # the uncorrected mean: projections keep the volume's integral.
    transform[0, 0, 0] = array.sum(dtype=np.float64)
    return Projector(
        transform=np.ascontiguousarray(transform.astype(np.complex64)),
        box_size=n,
        padding=float(padding),
    )


def project(
    projector: Projector,
    euler_degrees: npt.ArrayLike,
    *,
    shifts_angstroms: npt.ArrayLike | None = None,
    pixel_size_angstroms: float = 1.0,
    ctf: CTFParams | list[CTFParams] | None = None,
    max_resolution_angstroms: float | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Return projections of the prepared volume at the given poses.

    Parameters
    ----------
    projector
        From :func:`prepare_projector`.
    euler_degrees
        ``(3,)`` or ``(m, 3)``: ``φ, θ, ψ`` in degrees (cisTEM ZYZ).
    shifts_angstroms
        ``(2,)`` or ``(m, 2)`` Frealign ``(x_shift, y_shift)`` in Å (default 0).
    pixel_size_angstroms
        Å per pixel (for shifts, the CTF and the resolution limit).
    ctf
        One CTF for all, one per projection, or ``None`` (no CTF).
    max_resolution_angstroms
        Zero the transform beyond this resolution (default: keep to Nyquist).
    workers
        Threads for the inverse FFTs.

    Returns
    -------
    numpy.ndarray
        float32 ``(m, n, n)`` (or ``(n, n)`` for a single pose).
    """
    from cistemd.kernels._reconstruct_numba import extract_slices
    from cistemd.kernels.reconstruct import ctf_table

    angles = np.asarray(euler_degrees, dtype=np.float64)
    single = angles.ndim == 1
    angles = angles.reshape(-1, 3)
    m = angles.shape[0]
    n = projector.box_size
    matrices = np.ascontiguousarray(euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2]))
    max_radius = n / 2.0
    if max_resolution_angstroms is not None and max_resolution_angstroms > 0:
        max_radius = min(max_radius, n * pixel_size_angstroms / max_resolution_angstroms)
    shifts = np.zeros((m, 2)) if shifts_angstroms is None else np.asarray(shifts_angstroms, float)
    centres = n // 2 + np.broadcast_to(shifts.reshape(-1, 2), (m, 2)) / pixel_size_angstroms
    if ctf is None:
        table = np.zeros((m, 6))
    else:
        ctfs = [ctf] * m if isinstance(ctf, CTFParams) else list(ctf)
        if len(ctfs) != m:
            raise ValueError(f"ctf has {len(ctfs)} entries for {m} orientations")
        table = ctf_table(
            np.array(
                [[c.defocus_1_angstroms, c.defocus_2_angstroms, c.astigmatism_angle_degrees]
                 for c in ctfs]
            ),
            np.array([c.additional_phase_shift_degrees for c in ctfs]),
            np.array([c.voltage_kv for c in ctfs]),
            np.array([c.spherical_aberration_mm for c in ctfs]),
            np.array([c.amplitude_contrast for c in ctfs]),
        )
    slices = np.empty((m, n, n // 2 + 1), dtype=np.complex64)
    extract_slices(
        projector.transform,
        matrices,
        projector.padding,
        float(max_radius),
        np.ascontiguousarray(centres, dtype=np.float64),
        table,
        ctf is not None,
        float(pixel_size_angstroms),
        slices,
    )
    images = scipy.fft.irfft2(slices, s=(n, n), workers=workers).astype(np.float32)
    return images[0] if single else images
