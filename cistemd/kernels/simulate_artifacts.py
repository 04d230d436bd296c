"""Carbon edges and contamination for simulated micrographs (tests of picking exclusions).

Real micrographs are not all thin ice: the edge of the carbon film around a
hole and blobs of contamination (ice crystals, ethane droplets) are where
pickers find false particles. This module adds both to a *noise-free*
micrograph from :func:`cistemd.kernels.simulate.simulate_micrograph`
(``shot_noise=False``), then draws the counts:

* **Carbon film**: everything outside a large circular hole whose rim crosses
  the image. The film transmits a fraction ``carbon_transmission`` of the
  electrons (scattering outside the objective aperture) and adds a phase
  ``σ · (V_carbon · t + δV(x))`` -- a mean-potential step at the rim plus
  amorphous fluctuations -- imaged through the micrograph's CTF.
* **Contamination**: blobs with irregular outlines, much lower transmission
  and a large phase, also imaged through the CTF.

Both edges are softened over ``edge_angstroms``. Everything is pure numpy
and deterministic given the generator; masks are ``(ny, nx)`` floats in
[0, 1] with 1 on the artefact, so a test can ask whether a pick lies on one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cistemd.kernels.ctf import CTFParams, ctf_2d
from cistemd.kernels.simulate import interaction_constant_rad_per_volt_angstrom

__all__ = [
    "Artifacts",
    "add_artifacts",
    "carbon_edge_mask",
    "contamination_mask",
]


@dataclass(frozen=True, slots=True)
class Artifacts:
    """Masks of the artefacts added to a micrograph (1 on the artefact).

    Attributes
    ----------
    carbon
        ``(ny, nx)`` soft mask of the carbon film.
    contamination
        ``(ny, nx)`` soft mask of the contamination blobs.
    """

    carbon: np.ndarray
    contamination: np.ndarray

    @property
    def any(self) -> np.ndarray:
        """``(ny, nx)`` mask of either artefact (the larger of the two)."""
        return np.maximum(self.carbon, self.contamination)


def _soft_step(signed_distance: np.ndarray, width: float) -> np.ndarray:
    """0 for distance < -width/2, 1 for > width/2, a raised cosine between."""
    t = np.clip(signed_distance / max(width, 1e-9) + 0.5, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * t)


def _grid(shape: tuple[int, int], pixel_size_angstroms: float) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(shape[0], dtype=np.float64)[:, None] * pixel_size_angstroms
    x = np.arange(shape[1], dtype=np.float64)[None, :] * pixel_size_angstroms
    return y, x


def carbon_edge_mask(
    shape: tuple[int, int],
    pixel_size_angstroms: float,
    *,
    rng: np.random.Generator,
    hole_radius_angstroms: float = 6000.0,
    carbon_fraction: float = 0.3,
    edge_angstroms: float = 20.0,
) -> np.ndarray:
    """Return a soft mask of the carbon film outside a circular hole crossing the image.

    The hole's centre lies outside the image, in a random direction, such that
    about ``carbon_fraction`` of the image width is film.
    """
    ny, nx = shape
    width = nx * pixel_size_angstroms
    height = ny * pixel_size_angstroms
    angle = rng.uniform(0.0, 2.0 * math.pi)
    direction = np.array([math.cos(angle), math.sin(angle)])
    centre = np.array([width / 2.0, height / 2.0])
    half_extent = 0.5 * (abs(direction[0]) * width + abs(direction[1]) * height)
    rim_offset = half_extent * (1.0 - 2.0 * carbon_fraction)
    hole_centre = centre - direction * (hole_radius_angstroms - rim_offset)
    y, x = _grid(shape, pixel_size_angstroms)
    distance = np.sqrt((x - hole_centre[0]) ** 2 + (y - hole_centre[1]) ** 2)
    return _soft_step(distance - hole_radius_angstroms, edge_angstroms)


def contamination_mask(
    shape: tuple[int, int],
    pixel_size_angstroms: float,
    *,
    rng: np.random.Generator,
    n_blobs: int = 3,
    radius_range_angstroms: tuple[float, float] = (120.0, 350.0),
    edge_angstroms: float = 15.0,
    avoid: np.ndarray | None = None,
) -> np.ndarray:
    """Return a soft mask of ``n_blobs`` irregular blobs (lumpy discs).

    Blob centres avoid the image border by their radius and, if ``avoid`` is
    given (a mask), areas where ``avoid > 0.5``.
    """
    ny, nx = shape
    y, x = _grid(shape, pixel_size_angstroms)
    mask = np.zeros(shape)
    placed = 0
    for _ in range(200 * max(n_blobs, 1)):
        if placed >= n_blobs:
            break
        radius = rng.uniform(*radius_range_angstroms)
        cx = rng.uniform(radius, nx * pixel_size_angstroms - radius)
        cy = rng.uniform(radius, ny * pixel_size_angstroms - radius)
        ix = min(nx - 1, int(cx / pixel_size_angstroms))
        iy = min(ny - 1, int(cy / pixel_size_angstroms))
        if avoid is not None and avoid[iy, ix] > 0.5:
            continue
        theta = np.arctan2(y - cy, x - cx)
        lumps = np.zeros_like(theta)
        for order in (2, 3, 5):
            lumps += rng.uniform(0.0, 0.12) * np.cos(order * theta + rng.uniform(0, 2 * np.pi))
        distance = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        blob = _soft_step(radius * (1.0 + lumps) - distance, edge_angstroms)
        mask = np.maximum(mask, blob)
        placed += 1
    return mask


def add_artifacts(
    expected_counts: np.ndarray,
    *,
    pixel_size_angstroms: float,
    ctf: CTFParams,
    rng: np.random.Generator,
    carbon: np.ndarray | None = None,
    contamination: np.ndarray | None = None,
    carbon_thickness_angstroms: float = 50.0,
    carbon_potential_volts: float = 9.0,
    carbon_transmission: float = 0.8,
    contamination_thickness_angstroms: float = 100.0,
    contamination_transmission: float = 0.35,
    shot_noise: bool = True,
) -> tuple[np.ndarray, Artifacts]:
    """Put carbon film and contamination into a noise-free micrograph and draw the counts.

    Parameters
    ----------
    expected_counts
        ``(ny, nx)`` expected counts (``simulate_micrograph(..., shot_noise=False)``).
    pixel_size_angstroms
        Å per pixel.
    ctf
        The micrograph's CTF (the artefacts are imaged through it).
    rng
        Random generator (fluctuations, shot noise).
    carbon, contamination
        Masks from :func:`carbon_edge_mask` / :func:`contamination_mask`;
        ``None`` = no such artefact.
    carbon_thickness_angstroms, carbon_potential_volts, carbon_transmission
        The film: thickness, mean inner potential, fraction of electrons kept.
    contamination_thickness_angstroms, contamination_transmission
        The blobs (vitreous-ice-like potential, 4.5 V).
    shot_noise
        Draw Poisson counts (uint16) or return float32 expected counts.

    Returns
    -------
    tuple
        ``(micrograph, Artifacts)``.
    """
    expected = np.asarray(expected_counts, dtype=np.float64)
    shape = expected.shape
    carbon_mask = np.zeros(shape) if carbon is None else np.asarray(carbon, dtype=np.float64)
    blob_mask = (
        np.zeros(shape) if contamination is None else np.asarray(contamination, dtype=np.float64)
    )
    mean_counts = float(expected.mean())
    sigma = interaction_constant_rad_per_volt_angstrom(ctf.voltage_kv)
    # Amorphous carbon is clumpy: a Gaussian field with a 1/(k² + k0²) power spectrum
    # (k0 = 1/50 Å⁻¹), 0.1 rad r.m.s., so the film is textured at picking resolutions.
    ky = np.fft.fftfreq(shape[0], d=pixel_size_angstroms)[:, None]
    kx = np.fft.rfftfreq(shape[1], d=pixel_size_angstroms)[None, :]
    white = np.fft.rfft2(rng.normal(size=shape))
    fluctuation = np.fft.irfft2(white / np.sqrt(kx * kx + ky * ky + (1.0 / 50.0) ** 2), s=shape)
    fluctuation *= 0.1 / max(float(fluctuation.std()), 1e-12)
    phase = (
        sigma * carbon_potential_volts * carbon_thickness_angstroms * carbon_mask
        + fluctuation * carbon_mask
        + sigma * 4.5 * contamination_thickness_angstroms * blob_mask
    )
    transfer = ctf_2d(shape, pixel_size_angstroms, ctf, envelope_b_factor_angstroms2=40.0,
                      rfft=True)
    spectrum = np.fft.rfft2(phase)
    spectrum[0, 0] = 0.0
    contrast = np.fft.irfft2(spectrum * (2.0 * transfer), s=shape)
    transmission = (
        1.0
        - (1.0 - carbon_transmission) * carbon_mask
        - (1.0 - contamination_transmission) * blob_mask
    )
    transmission = np.clip(transmission, 0.02, 1.0)
    result = np.maximum(transmission * (expected + mean_counts * contrast), 0.0)
    masks = Artifacts(carbon=carbon_mask, contamination=blob_mask)
    if shot_noise:
        counts = rng.poisson(result)
        return np.minimum(counts, np.iinfo(np.uint16).max).astype(np.uint16), masks
    return result.astype(np.float32), masks
