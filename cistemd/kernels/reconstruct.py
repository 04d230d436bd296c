"""CTF-weighted direct Fourier reconstruction (cisTEM reconstruct3d / merge3d, reference §2.6).

Conventions as :mod:`cistemd.kernels.projection`: volumes ``[z, y, x]`` with
their centre at voxel ``n // 2``; Euler ZYZ in degrees; Frealign shifts in Å
(an image holds its particle centred at ``n // 2 + shift / pixel_size``).

Method
------
Each particle's transform ``X`` is phase-shifted by ``−shift``, multiplied by
its CTF and weight and spread by trilinear interpolation into a 3-D
accumulator ``Σ X·CTF·w`` (complex) next to ``Σ CTF²·w`` (real), one pair per
half set, at ``R·Sᵀ`` for every symmetry operator ``S`` (symmetry copies).
(The two sums are stored interleaved in one float32 array,
:attr:`Reconstruction.accumulator`, for cache locality.) Accumulators of
different particle chunks add (:meth:`Reconstruction.merge`),
so workers can each insert a chunk and one merge finishes. A half map is
``F = Σ X·CTF·w / (Σ CTF²·w + 100)`` (cisTEM's ``Calculate3DSimple``),
inverse-transformed, divided by the trilinear gridding kernel (``sinc²`` per
axis of the padded box) and masked with a soft sphere.

Per-particle weights (:func:`particle_weights`) follow cisTEM:
``w = (occ / ⟨occ⟩) / (σ / ⟨σ⟩)²`` and a per-frequency score weight
``exp((score − ⟨score⟩) · B_conv · k² / 4)`` (``B_conv`` = the score-to-weight
conversion in Å², ``k`` in 1/Å).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.fft

from cistemd.kernels.ctf import amplitude_contrast_phase_radians, electron_wavelength_angstroms
from cistemd.kernels.projection import gridding_correction
from cistemd.kernels.rotation import euler_to_matrix

__all__ = [
    "CALCULATE_3D_SIMPLE_CONSTANT",
    "ParticleBatch",
    "Reconstruction",
    "adjust_scores_for_defocus",
    "assign_half_sets",
    "cosine_sphere_mask",
    "ctf_table",
    "particle_weights",
    "score_threshold_value",
    "select_particles",
]

#: cisTEM's ``Calculate3DSimple`` adds this to ``Σ CTF²`` (units: one particle
#: inserts at most weight 1 per voxel).
CALCULATE_3D_SIMPLE_CONSTANT = 100.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticleBatch:
    """Particles to insert, all arrays of length ``m``.

    Attributes
    ----------
    images
        float ``(m, n, n)`` particle images (protein as in the map's sign).
    euler_degrees
        ``(m, 3)`` ``φ, θ, ψ`` degrees.
    shifts_angstroms
        ``(m, 2)`` Frealign ``x_shift, y_shift`` Å.
    defocus
        ``(m, 3)`` df1 Å, df2 Å, astigmatism angle degrees.
    phase_shift_degrees
        ``(m,)`` additional phase shift, degrees (cisTEM ``.star`` unit).
    voltage_kv, spherical_aberration_mm, amplitude_contrast
        ``(m,)`` microscope values per particle.
    weights
        ``(m,)`` particle weights (see :func:`particle_weights`).
    score_b_factors
        ``(m,)`` score B-factors in Å² (0 = no frequency weighting).
    halves
        ``(m,)`` half set, 0 or 1.
    """

    images: np.ndarray
    euler_degrees: np.ndarray
    shifts_angstroms: np.ndarray
    defocus: np.ndarray
    phase_shift_degrees: np.ndarray
    voltage_kv: np.ndarray
    spherical_aberration_mm: np.ndarray
    amplitude_contrast: np.ndarray
    weights: np.ndarray
    score_b_factors: np.ndarray
    halves: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


def ctf_table(
    defocus: np.ndarray,
    phase_shift_degrees: np.ndarray,
    voltage_kv: np.ndarray,
    spherical_aberration_mm: np.ndarray,
    amplitude_contrast: np.ndarray,
) -> np.ndarray:
    """Return the ``(m, 6)`` per-particle CTF table of the numba loops.

    Columns: df1 Å, df2 Å, astigmatism azimuth rad, total phase rad
    (additional phase shift + amplitude-contrast phase), wavelength Å, Cs Å.
    Inputs: ``defocus`` ``(m, 3)`` (df1, df2, angle in degrees), the rest ``(m,)``.
    """
    defocus = np.asarray(defocus, dtype=np.float64).reshape(-1, 3)
    m = defocus.shape[0]
    phase = np.broadcast_to(np.asarray(phase_shift_degrees, dtype=np.float64), (m,))
    volts = np.broadcast_to(np.asarray(voltage_kv, dtype=np.float64), (m,))
    cs = np.broadcast_to(np.asarray(spherical_aberration_mm, dtype=np.float64), (m,))
    ac = np.broadcast_to(np.asarray(amplitude_contrast, dtype=np.float64), (m,))
    table = np.empty((m, 6), dtype=np.float64)
    table[:, 0] = defocus[:, 0]
    table[:, 1] = defocus[:, 1]
    table[:, 2] = np.deg2rad(defocus[:, 2])
    phases = {float(a): amplitude_contrast_phase_radians(float(a)) for a in np.unique(ac)}
    wavelengths = {float(v): electron_wavelength_angstroms(float(v)) for v in np.unique(volts)}
    table[:, 3] = np.deg2rad(phase) + np.array([phases[float(a)] for a in ac])
    table[:, 4] = np.array([wavelengths[float(v)] for v in volts])
    table[:, 5] = cs * 1.0e7
    return table


@dataclass(slots=True)
class Reconstruction:
    """Accumulators of a direct Fourier reconstruction (two half sets).

    Attributes
    ----------
    box_size
        ``n``, edge of the particle images and the output map.
    pixel_size_angstroms
        Å per pixel.
    padding
        Integer oversampling ``N / n`` of the 3-D grid (cisTEM default 1).
    accumulator
        float32 ``(2, N, N, N // 2 + 1, 3)``: per half set and voxel
        ``Re Σ X·CTF·w``, ``Im Σ X·CTF·w`` and ``Σ CTF²·w`` side by side (one
        cache line holds both x-neighbours of trilinear spreading); see the
        :attr:`numerator` and :attr:`ctf_squared` views.
    particle_counts
        int64 ``(2,)`` particles inserted per half set (before symmetry).
    """

    box_size: int
    pixel_size_angstroms: float
    padding: int
    accumulator: np.ndarray
    particle_counts: np.ndarray

    @property
    def numerator(self) -> np.ndarray:
        """complex64 view ``(2, N, N, N // 2 + 1)`` of ``Σ X·CTF·w`` (writable)."""
        return self.accumulator[..., :2].view(np.complex64)[..., 0]

    @property
    def ctf_squared(self) -> np.ndarray:
        """float32 view ``(2, N, N, N // 2 + 1)`` of ``Σ CTF²·w`` (writable)."""
        return self.accumulator[..., 2]

    @classmethod
    def empty(
        cls, box_size: int, pixel_size_angstroms: float, *, padding: int = 1
    ) -> Reconstruction:
        """Return zeroed accumulators for ``box_size`` images."""
        if box_size < 4:
            raise ValueError(f"box_size must be at least 4, got {box_size}")
        if int(padding) != padding or padding < 1:
            raise ValueError(f"padding must be a positive integer, got {padding}")
        if not pixel_size_angstroms > 0:
            raise ValueError(f"pixel_size_angstroms must be positive, got {pixel_size_angstroms}")
        big_n = box_size * int(padding)
        return cls(
            box_size=int(box_size),
            pixel_size_angstroms=float(pixel_size_angstroms),
            padding=int(padding),
            accumulator=np.zeros((2, big_n, big_n, big_n // 2 + 1, 3), dtype=np.float32),
            particle_counts=np.zeros(2, dtype=np.int64),
        )

    @property
    def padded_size(self) -> int:
        """``N = padding · n``."""
        return self.box_size * self.padding

    def check(self) -> None:
        """Raise ``ValueError`` if the arrays do not fit the declared sizes."""
        big_n = self.padded_size
        shape = (2, big_n, big_n, big_n // 2 + 1, 3)
        if self.accumulator.shape != shape:
            raise ValueError(f"accumulator must be {shape}, got {self.accumulator.shape}")
        if self.accumulator.dtype != np.float32 or not self.accumulator.flags.c_contiguous:
            raise ValueError("accumulator must be a C-contiguous float32 array")
        if self.particle_counts.shape != (2,):
            raise ValueError("particle_counts must have shape (2,)")

    def insert(
        self,
        batch: ParticleBatch,
        *,
        symmetry_matrices: npt.ArrayLike | None = None,
        use_ctf: bool = True,
        resolution_limit_angstroms: float = 0.0,
        workers: int | None = None,
    ) -> None:
        """Insert a batch of particles (in place).

        Parameters
        ----------
        batch
            The particles.
        symmetry_matrices
            ``(s, 3, 3)`` operators of the point group (identity first);
            ``None`` = C1.
        use_ctf
            Multiply by the CTF (``False``: images are CTF-free projections).
        resolution_limit_angstroms
            Insert only frequencies up to this resolution (0 = Nyquist).
        workers
            Threads for the image FFTs.
        """
        from cistemd.kernels._reconstruct_numba import insert_slices

        n = self.box_size
        images = np.asarray(batch.images, dtype=np.float32)
        m = images.shape[0]
        if images.shape != (m, n, n):
            raise ValueError(f"images must be (m, {n}, {n}), got {images.shape}")
        if m == 0:
            return
        for name in ("weights", "score_b_factors", "halves", "phase_shift_degrees"):
            if np.shape(getattr(batch, name)) != (m,):
                raise ValueError(f"batch.{name} must have shape ({m},)")
        halves = np.asarray(batch.halves, dtype=np.int64)
        if np.any((halves != 0) & (halves != 1)):
            raise ValueError("batch.halves must be 0 or 1")
        sym = (
            np.eye(3)[None]
            if symmetry_matrices is None
            else np.asarray(symmetry_matrices, dtype=np.float64)
        )
        if sym.ndim != 3 or sym.shape[1:] != (3, 3):
            raise ValueError(f"symmetry_matrices must be (s, 3, 3), got {sym.shape}")
        angles = np.asarray(batch.euler_degrees, dtype=np.float64).reshape(m, 3)
        rotations = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
        composite = np.ascontiguousarray(np.einsum("mij,skj->msik", rotations, sym))
        transforms = scipy.fft.rfft2(images, workers=workers).astype(np.complex64)
        shifts = np.asarray(batch.shifts_angstroms, dtype=np.float64).reshape(m, 2)
        centres = n // 2 + shifts / self.pixel_size_angstroms
        max_radius = n / 2.0
        if resolution_limit_angstroms > 0:
            max_radius = min(max_radius, n * self.pixel_size_angstroms / resolution_limit_angstroms)
        insert_slices(
            self.accumulator.reshape((*self.accumulator.shape[:3], -1)),
            transforms,
            composite,
            halves,
            np.ascontiguousarray(centres),
            np.asarray(batch.weights, dtype=np.float64),
            np.asarray(batch.score_b_factors, dtype=np.float64),
            ctf_table(
                batch.defocus,
                batch.phase_shift_degrees,
                batch.voltage_kv,
                batch.spherical_aberration_mm,
                batch.amplitude_contrast,
            ),
            bool(use_ctf),
            self.pixel_size_angstroms,
            float(self.padding),
            float(max_radius),
        )
        self.particle_counts += np.bincount(halves, minlength=2)

    def merge(self, other: Reconstruction) -> None:
        """Add another accumulator of the same geometry (in place)."""
        if (other.box_size, other.padding) != (self.box_size, self.padding):
            raise ValueError(
                f"cannot merge a box {other.box_size} / padding {other.padding} reconstruction "
                f"into box {self.box_size} / padding {self.padding}"
            )
        if abs(other.pixel_size_angstroms - self.pixel_size_angstroms) > 1e-4:
            raise ValueError(
                f"cannot merge pixel size {other.pixel_size_angstroms} into "
                f"{self.pixel_size_angstroms}"
            )
        self.accumulator += other.accumulator
        self.particle_counts += other.particle_counts

    def half_map(
        self,
        half: int | None,
        *,
        constant: float = CALCULATE_3D_SIMPLE_CONSTANT,
        workers: int | None = None,
    ) -> np.ndarray:
        """Return ``Σ X·CTF / (Σ CTF² + constant)`` in real space, gridding-corrected.

        Parameters
        ----------
        half
            0 or 1 for a half map, ``None`` for both halves together.
        constant
            Added to ``Σ CTF²`` (cisTEM's ``Calculate3DSimple`` uses 100).
        workers
            FFT threads.

        Returns
        -------
        numpy.ndarray
            float32 ``(n, n, n)``, centre at voxel ``n // 2``; not masked.
        """
        if half is None:
            num = self.numerator[0] + self.numerator[1]
            ctf2 = self.ctf_squared[0] + self.ctf_squared[1]
        else:
            num, ctf2 = self.numerator[half], self.ctf_squared[half]
        denominator = ctf2 + np.float32(constant)
        transform = np.divide(
            num, denominator, out=np.zeros_like(num), where=denominator > 0
        )
        return self.volume_from_transform(transform, workers=workers)

    def volume_from_transform(
        self, transform: np.ndarray, *, workers: int | None = None
    ) -> np.ndarray:
        """Inverse-transform a padded 3-D transform, crop to ``n³`` and undo the gridding blur.

        The map's integral is kept at the transform's origin value (which no
        interpolation touched).
        """
        big_n = self.padded_size
        n = self.box_size
        padded = scipy.fft.fftshift(
            scipy.fft.irfftn(transform, s=(big_n,) * 3, workers=workers)
        )
        start = big_n // 2 - n // 2
        volume = padded[start : start + n, start : start + n, start : start + n]
        profile = gridding_correction(n, big_n)
        volume = volume / (profile[:, None, None] * profile[None, :, None] * profile[None, None, :])
        # The origin is sampled exactly by every slice (no interpolation blur), so
        # the division above must not scale it: restore the integral it had.
        volume += (float(transform[0, 0, 0].real) - volume.sum(dtype=np.float64)) / n**3
        return volume.astype(np.float32)


def cosine_sphere_mask(
    n: int, outer_radius_px: float, *, inner_radius_px: float = 0.0, edge_px: float = 5.0
) -> np.ndarray:
    """Return a soft spherical shell mask ``(n, n, n)`` centred at voxel ``n // 2``.

    1 between ``inner_radius_px`` and ``outer_radius_px``, falling to 0 with a
    raised-cosine edge of width ``edge_px`` outside both radii (no inner hole
    when ``inner_radius_px`` is 0).
    """
    coords = np.arange(n, dtype=np.float64) - n // 2
    r = np.sqrt(
        coords[:, None, None] ** 2 + coords[None, :, None] ** 2 + coords[None, None, :] ** 2
    )
    edge = max(float(edge_px), 1e-6)
    mask = np.ones_like(r)
    outer = r > outer_radius_px
    mask[outer] = 0.5 * (1 + np.cos(np.pi * np.clip((r[outer] - outer_radius_px) / edge, 0, 1)))
    if inner_radius_px > 0:
        inner = r < inner_radius_px
        mask[inner] = 0.5 * (
            1 + np.cos(np.pi * np.clip((inner_radius_px - r[inner]) / edge, 0, 1))
        )
    return mask.astype(np.float32)


def particle_weights(
    occupancy: npt.ArrayLike,
    sigma: npt.ArrayLike,
    score: npt.ArrayLike,
    *,
    score_weight_conversion: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Return cisTEM's particle weights and score B-factors.

    ``w = (occ / ⟨occ⟩) / (σ / ⟨σ⟩)²`` and ``B = (score − ⟨score⟩) ·
    score_weight_conversion`` (Å²; inserted as ``exp(B k² / 4)``). Means are
    over the particles given (the selected ones). Non-positive sigmas count
    as the mean sigma.
    """
    occ = np.asarray(occupancy, dtype=np.float64)
    sig = np.asarray(sigma, dtype=np.float64)
    sc = np.asarray(score, dtype=np.float64)
    if occ.size == 0:
        return np.zeros(0), np.zeros(0)
    mean_occ = occ.mean() if occ.mean() > 0 else 1.0
    positive = sig[sig > 0]
    mean_sigma = positive.mean() if positive.size else 1.0
    sig = np.where(sig > 0, sig, mean_sigma)
    weights = (occ / mean_occ) / (sig / mean_sigma) ** 2
    b_factors = (sc - sc.mean()) * float(score_weight_conversion)
    return weights, b_factors


def score_threshold_value(scores: npt.ArrayLike, threshold: float) -> float:
    """Return the minimum score kept for cisTEM's ``score_threshold`` argument.

    ``0 < t < 1``: keep the best fraction ``t`` (the score at percentile
    ``1 − t``); ``t = 1`` or ``t ≤ 0``: keep all (the minimum score);
    ``t > 1``: ``t`` is an absolute score.
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        return -np.inf
    if 0 < threshold < 1:
        return float(np.quantile(values, 1.0 - threshold))
    if threshold > 1:
        return float(threshold)
    return float(values.min())


def select_particles(
    *,
    occupancy: npt.ArrayLike,
    image_is_active: npt.ArrayLike,
    score: npt.ArrayLike,
    score_threshold: float = 0.0,
) -> np.ndarray:
    """Return a boolean mask of particles to insert (cisTEM's selection rule).

    Kept: occupancy ≠ 0, ``image_is_active ≥ 0`` and score at or above
    :func:`score_threshold_value` (computed over the otherwise eligible ones).
    """
    occ = np.asarray(occupancy, dtype=np.float64)
    active = np.asarray(image_is_active)
    sc = np.asarray(score, dtype=np.float64)
    eligible = (occ != 0) & (active >= 0)
    minimum = score_threshold_value(sc[eligible], score_threshold)
    return eligible & (sc >= minimum)


def adjust_scores_for_defocus(score: npt.ArrayLike, defocus: npt.ArrayLike) -> np.ndarray:
    """Remove the linear dependence of the scores on defocus ("adjust scores for defocus").

    Fits ``score = a + b·defocus`` by least squares and returns
    ``score − b·(defocus − ⟨defocus⟩)``; the mean score is unchanged.
    """
    sc = np.asarray(score, dtype=np.float64)
    df = np.asarray(defocus, dtype=np.float64)
    if sc.size < 3 or np.ptp(df) == 0:
        return sc.copy()
    centred = df - df.mean()
    slope = float(np.dot(centred, sc - sc.mean()) / np.dot(centred, centred))
    return sc - slope * centred


def assign_half_sets(
    position_in_stack: npt.ArrayLike,
    assigned_subset: npt.ArrayLike | None = None,
    *,
    block_size: int = 1,
) -> np.ndarray:
    """Return the half set (0 or 1) of every particle.

    ``assigned_subset`` values 1/2 (odd/even for larger numbers) decide where
    any is non-zero; otherwise particles alternate in blocks of ``block_size``
    consecutive stack positions (``((position − 1) // block_size) mod 2``), so
    the split does not depend on how particles are chunked between workers.
    """
    positions = np.asarray(position_in_stack, dtype=np.int64)
    if assigned_subset is not None:
        subset = np.asarray(assigned_subset, dtype=np.int64)
        if subset.shape == positions.shape and np.any(subset > 0):
            return ((subset - 1) % 2).astype(np.int64)
    block = max(1, int(block_size))
    return (((positions - 1) // block) % 2).astype(np.int64)
