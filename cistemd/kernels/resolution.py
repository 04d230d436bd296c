"""Resolution statistics of a reconstruction (cisTEM ``FinalizeOptimal``, reference §2.6).

Shells
------
Fourier shell ``i`` of an ``n³`` map holds the voxels whose frequency
``|k|`` (cycles per pixel) rounds to ``i / n``; shells run from 1 to
``int((n / 2 + 1) √3)`` so the corners of the transform are included, as in
cisTEM's statistics files. Shell ``i`` is at resolution ``pixel_size · n / i``.

Quantities
----------
* ``fsc``: Fourier shell correlation of the two (masked) half maps;
* ``part_fsc``: the volume-normalised particle FSC
  ``FSC/f / (1 + (1/f − 1)|FSC|)``, ``f = V_particle / V_mask``,
  ``V_particle = mass_kDa · 1000 / 0.81`` Å³ (cisTEM's ``kDa_to_Angstrom3``);
* ``rec_ssnr = 2·part_fsc / (1.00001 − part_fsc)`` (0 where part_fsc ≤ 0);
* ``part_ssnr = (V_mask/V_box) · 2|FSC| / (1.00001 − |FSC|) · n_voxels / Σ CTF²``
  per shell (the SSNR per particle-image pixel);
* the optimally filtered map ``Σ X·CTF / (Σ CTF² + W / part_ssnr(k))``,
  low-passed with a cosine edge from 0.4 to 0.5 cycles per pixel (cisTEM:
  0.45 ± 0.05). cisTEM scales its part_SSNR by
  ``c = V_box / V_particle · A_particle / n²`` in this denominator; here
  ``part_ssnr`` is already the SSNR per pixel of the boxed particle images
  (on simulations with known noise it came out at 0.5-0.8 × the true value
  per shell), which is what the Wiener denominator needs, so ``c = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.fft

from cistemd.kernels.reconstruct import Reconstruction, cosine_sphere_mask

__all__ = [
    "ShellStatistics",
    "compute_statistics",
    "filtered_map",
    "fsc",
    "kda_to_cubic_angstroms",
    "number_of_shells",
    "particle_fsc",
    "resolution_at_threshold",
    "shell_indices",
]

_FSC_EPSILON = 1.00001


def kda_to_cubic_angstroms(mass_kda: float) -> float:
    """Return the protein volume of ``mass_kda`` kDa in Å³ (density 0.81 Da/Å³, as cisTEM)."""
    return float(mass_kda) * 1000.0 / 0.81


def number_of_shells(n: int) -> int:
    """Return the number of shells 0 .. last of an ``n³`` map (up to the corners)."""
    return round(math.sqrt(3.0) * (n // 2)) + 1


def shell_indices(n: int, padding: int = 1) -> np.ndarray:
    """Return the shell of every voxel of an ``rfftn`` half transform of an ``(n·padding)³`` grid.

    Shells are in units of ``1 / n`` cycles per pixel of the *unpadded* map.
    Shape ``(N, N, N // 2 + 1)``, int64.
    """
    big_n = n * padding
    f = np.fft.fftfreq(big_n) * big_n / padding
    fx = np.arange(big_n // 2 + 1) / padding
    r = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2)
    return np.rint(r).astype(np.int64)


def _half_weights(big_n: int) -> np.ndarray:
    """Multiplicity of each rfft x-plane in the full transform (1 or 2)."""
    weights = np.full(big_n // 2 + 1, 2.0)
    weights[0] = 1.0
    if big_n % 2 == 0:
        weights[-1] = 1.0
    return weights


def fsc(
    map_1: npt.ArrayLike, map_2: npt.ArrayLike, *, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(shells, fsc)`` between two ``(n, n, n)`` maps, shells ``1 .. last``.

    Shells without voxels (none in practice) get FSC 0.
    """
    a = np.asarray(map_1, dtype=np.float32)
    b = np.asarray(map_2, dtype=np.float32)
    if a.shape != b.shape or a.ndim != 3 or len(set(a.shape)) != 1:
        raise ValueError(f"maps must be equal cubes, got {a.shape} and {b.shape}")
    n = a.shape[0]
    fa = scipy.fft.rfftn(a, workers=workers)
    fb = scipy.fft.rfftn(b, workers=workers)
    shells = shell_indices(n).ravel()
    weight = np.broadcast_to(_half_weights(n)[None, None, :], fa.shape).ravel()
    count = number_of_shells(n)
    cross = np.bincount(shells, weight * (fa * np.conj(fb)).real.ravel(), minlength=count)
    power_a = np.bincount(shells, weight * (np.abs(fa) ** 2).ravel(), minlength=count)
    power_b = np.bincount(shells, weight * (np.abs(fb) ** 2).ravel(), minlength=count)
    denominator = np.sqrt(power_a * power_b)
    values = np.divide(cross, denominator, out=np.zeros(count), where=denominator > 0)
    shell_numbers = np.arange(1, count)
    return shell_numbers, values[1:count]


def particle_fsc(fsc_values: npt.ArrayLike, volume_fraction: float) -> np.ndarray:
    """Return the volume-normalised FSC ``FSC/f / (1 + (1/f − 1)|FSC|)``."""
    values = np.asarray(fsc_values, dtype=np.float64)
    f = float(volume_fraction)
    if not 0 < f <= 1:
        raise ValueError(f"volume_fraction must be in (0, 1], got {f}")
    return values / f / (1.0 + (1.0 / f - 1.0) * np.abs(values))


def resolution_at_threshold(
    shells: npt.ArrayLike,
    curve: npt.ArrayLike,
    *,
    box_size: int,
    pixel_size_angstroms: float,
    threshold: float = 0.143,
) -> float:
    """Return the resolution (Å) where ``curve`` first falls below ``threshold``.

    Only shells up to Nyquist count. Linear interpolation in frequency between
    the bracketing shells; Nyquist (``2 · pixel size``) if the curve never
    falls below, ``inf`` if the first shell is below.
    """
    s = np.asarray(shells, dtype=np.float64)
    c = np.asarray(curve, dtype=np.float64)
    within = s <= box_size / 2.0  # beyond Nyquist the shells hold no data
    s, c = s[within], c[within]
    below = np.nonzero(c < threshold)[0]
    if c.size == 0:
        return float("inf")
    if below.size == 0:
        return float(pixel_size_angstroms * box_size / s[-1])
    first = int(below[0])
    if first == 0:
        return float("inf")
    c0, c1 = c[first - 1], c[first]
    t = (c0 - threshold) / (c0 - c1) if c0 != c1 else 0.0
    shell = s[first - 1] + t * (s[first] - s[first - 1])
    return float(pixel_size_angstroms * box_size / shell)


@dataclass(frozen=True, slots=True)
class ShellStatistics:
    """Per-shell statistics; field names match :class:`cistemd.io.statistics.ResolutionStatistics`.

    Attributes
    ----------
    pixel_size_angstroms, box_size
        Geometry of the map.
    shell
        ``(s,)`` shells 1 .. last.
    fsc, part_fsc, part_ssnr, rec_ssnr
        ``(s,)`` curves (SSNRs not square-rooted).
    """

    pixel_size_angstroms: float
    box_size: int
    shell: np.ndarray
    fsc: np.ndarray
    part_fsc: np.ndarray
    part_ssnr: np.ndarray
    rec_ssnr: np.ndarray

    def resolution(self, threshold: float = 0.143, *, use_part_fsc: bool = False) -> float:
        """Resolution in Å at an FSC threshold (see :func:`resolution_at_threshold`)."""
        return resolution_at_threshold(
            self.shell,
            self.part_fsc if use_part_fsc else self.fsc,
            box_size=self.box_size,
            pixel_size_angstroms=self.pixel_size_angstroms,
            threshold=threshold,
        )


def _mask_volume_voxels(n: int, outer_radius_px: float, inner_radius_px: float) -> float:
    outer = min(outer_radius_px, n / 2.0)
    volume = 4.0 / 3.0 * math.pi * (outer**3 - max(inner_radius_px, 0.0) ** 3)
    return float(min(max(volume, 1.0), float(n) ** 3))


def compute_statistics(
    reconstruction: Reconstruction,
    *,
    molecular_mass_kda: float,
    outer_mask_radius_angstroms: float,
    inner_mask_radius_angstroms: float = 0.0,
    mask_edge_angstroms: float = 10.0,
    workers: int | None = None,
) -> tuple[ShellStatistics, np.ndarray, np.ndarray]:
    """Return the statistics and the two masked half maps of a reconstruction.

    Parameters
    ----------
    reconstruction
        Accumulators with both half sets filled.
    molecular_mass_kda
        Particle mass (for the particle volume in ``part_fsc``).
    outer_mask_radius_angstroms, inner_mask_radius_angstroms
        Radii of the soft spherical mask applied to the half maps (Å).
    mask_edge_angstroms
        Width of the mask's cosine edge (Å).
    workers
        FFT threads.

    Returns
    -------
    stats : ShellStatistics
    half_1, half_2 : numpy.ndarray
        float32 ``(n, n, n)`` masked half maps (``Calculate3DSimple``).
    """
    n = reconstruction.box_size
    psize = reconstruction.pixel_size_angstroms
    outer_px = outer_mask_radius_angstroms / psize
    inner_px = inner_mask_radius_angstroms / psize
    mask = cosine_sphere_mask(
        n, outer_px, inner_radius_px=inner_px, edge_px=mask_edge_angstroms / psize
    )
    half_1 = reconstruction.half_map(0, workers=workers) * mask
    half_2 = reconstruction.half_map(1, workers=workers) * mask
    shells, fsc_values = fsc(half_1, half_2, workers=workers)
    mask_voxels = _mask_volume_voxels(n, outer_px, inner_px)
    particle_voxels = kda_to_cubic_angstroms(molecular_mass_kda) / psize**3
    fraction = min(1.0, particle_voxels / mask_voxels)
    part = particle_fsc(fsc_values, fraction)
    rec = np.where(part > 0, np.abs(2.0 * part / (_FSC_EPSILON - part)), 0.0)
    # Σ CTF² per shell (both halves), counted over voxels that received data.
    ctf2 = reconstruction.ctf_squared[0] + reconstruction.ctf_squared[1]
    shell_of_voxel = shell_indices(n, reconstruction.padding).ravel()
    sampled = ctf2.ravel() != 0
    count = number_of_shells(n)
    ctf_sum = np.bincount(shell_of_voxel[sampled], ctf2.ravel()[sampled], minlength=count)
    voxel_count = np.bincount(shell_of_voxel[sampled], minlength=count).astype(np.float64)
    mean_ctf2 = np.divide(ctf_sum, voxel_count, out=np.zeros(count), where=voxel_count > 0)[1:]
    abs_fsc = np.abs(fsc_values)
    volume_ssnr = 2.0 * abs_fsc / (_FSC_EPSILON - abs_fsc)
    mask_fraction = mask_voxels / float(n) ** 3
    part_ssnr = np.divide(
        mask_fraction * volume_ssnr, mean_ctf2, out=np.zeros_like(volume_ssnr), where=mean_ctf2 > 0
    )
    stats = ShellStatistics(
        pixel_size_angstroms=psize,
        box_size=n,
        shell=shells,
        fsc=fsc_values,
        part_fsc=part,
        part_ssnr=part_ssnr,
        rec_ssnr=rec,
    )
    return stats, half_1, half_2


def filtered_map(
    reconstruction: Reconstruction,
    part_ssnr: npt.ArrayLike,
    *,
    wiener_numerator: float = 1.0,
    workers: int | None = None,
) -> np.ndarray:
    """Return the SSNR-weighted (optimally filtered) map of both half sets.

    ``F = Σ X·CTF / (Σ CTF² + W / part_ssnr(k))`` (module docstring),
    with ``part_ssnr`` interpolated linearly between shells (shell 0 =
    8 × shell 1, as cisTEM), then a cosine low-pass from 0.4 to 0.5 cycles per
    pixel. Returns float32 ``(n, n, n)``, unmasked.
    """
    n = reconstruction.box_size
    padding = reconstruction.padding
    big_n = reconstruction.padded_size
    ssnr = np.asarray(part_ssnr, dtype=np.float64)
    curve = np.concatenate([[8.0 * ssnr[0] if ssnr.size else 0.0], ssnr])
    f = np.fft.fftfreq(big_n) * big_n / padding
    fx = np.arange(big_n // 2 + 1) / padding
    radius = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2)
    ssnr_voxel = np.interp(radius, np.arange(curve.size), curve, right=0.0)
    with np.errstate(divide="ignore"):
        regulariser = np.where(
            ssnr_voxel > 0, wiener_numerator / np.maximum(ssnr_voxel, 1e-30), np.inf
        )
    num = reconstruction.numerator[0] + reconstruction.numerator[1]
    ctf2 = reconstruction.ctf_squared[0] + reconstruction.ctf_squared[1]
    transform = np.where(np.isfinite(regulariser), num / (ctf2 + regulariser), 0.0)
    frequency = radius / n  # cycles per pixel of the output map
    low_pass = np.where(
        frequency <= 0.4,
        1.0,
        np.where(frequency >= 0.5, 0.0, 0.5 * (1 + np.cos(np.pi * (frequency - 0.4) / 0.1))),
    )
    return reconstruction.volume_from_transform(
        (transform * low_pass).astype(np.complex64), workers=workers
    )
