"""Find Particles: a matched filter for roughly globular particles (Sigworth 2004).

This is cisTEM's Find Particles (reference §2.3), written from the paper and
the description of cisTEM's pipeline:

1. **Resample** the micrograph by Fourier cropping so that the highest
   resolution used for picking is the new Nyquist frequency (the short axis
   gets the next FFT-friendly even size; the long axis keeps the aspect).
2. **Local mean and σ maps** of the resampled micrograph band-passed by the
   template's amplitude spectrum, over a square of side twice the maximum
   radius; their median and a FWHM-like width (2.3548 × 1.4826 × the median
   absolute deviation) define what is "normal".
3. **Exclusions**: areas where the local mean lies outside
   ``median ± 2·width`` ("avoid abnormal local mean") or the local σ exceeds
   ``median + high·width`` ("avoid high variance"), grown by the maximum
   radius so that no particle box reaches into them, and areas where the
   local σ falls below ``median + low·width`` ("avoid low variance"). The
   excluded areas are filled with the typical grey level (soft edge), so the
   strong edges of carbon and contamination do not ring into the score.
4. **Phase-flip** with the micrograph's CTF, remove slow density ramps with a
   cosine high-pass (pass band from 20, stop below 10 Fourier pixels of the
   long axis, as cisTEM), and negate when protein is white. Dark protein
   (the usual cryo-EM contrast, ``−sin χ`` CTF of :mod:`cistemd.kernels.ctf`)
   is then bright, like the template.
5. **Templates**: discs with a cosine edge (5 original pixels, at least one
   resampled pixel), filtered by ``|CTF|`` (the micrograph was phase-flipped)
   and by the same high-pass. Radii span the characteristic radius ± 40 %
   (capped at the maximum radius), half a resampled pixel apart.
6. **Background whitening**: the power spectra of the boxes (side
   ``2·max radius + 2`` px) of lowest local σ of the phase-flipped, high-passed
   micrograph (algorithm ``"lowest"``) or of local σ nearest its median
   (``"mean"``), outside the excluded areas, are averaged; ``1/sqrt(P_bg)``
   whitens micrograph and templates.
7. **Matched filter**: each whitened template, restricted to a disc of the
   maximum radius plus the CTF's delocalisation, edge-mean subtracted and
   scaled to a unit sum of squares, is cross-correlated with the whitened
   micrograph; the correlation is interpolated (zero-padded spectrum) onto a
   grid twice as fine as the resampled one, the score is the best template's
   at each point, expressed in σ of the background score (mean and standard
   deviation of the score over the allowed area away from candidate
   particles, see below) and zeroed in the excluded areas.
8. **Peaks**: local maxima of the score, their position and height refined
   by a parabola through the three scores along each axis, are taken highest
   first while the refined height reaches the threshold; a peak is dropped
   when it lies closer to an accepted one than the maximum radius or than the
   sum of the two peaks' template radii (particles do not overlap). Accepted
   peaks too close to the edges are not reported but still suppress their
   neighbours, as in cisTEM.

Differences from cisTEM, and why:

* A single disc matches only particles whose edge lies within about a quarter
  period of the highest frequency used (7 Å at 30 Å); a family of radii keeps
  a mismatched characteristic radius from turning the score negative. With
  the default 80 Å, a 120 Å (hollow, apoferritin-like) particle is matched
  best by discs of ~50 Å: ± 30 % found 0.19 of them at 0.8 µm, ± 40 % 0.84.
* Picks must be *local maxima* of the score, and cisTEM's exclusion circle of
  twice the maximum radius (which stops the shoulder of a strong peak being
  picked again) would, at the default 120 Å, also drop true neighbours of
  small particles. Instead two picks must be further apart than the maximum
  radius (the GUI's "exclusion radius") and than the sum of the radii of the
  templates that matched them: large particles at high defocus make
  secondary maxima just outside their rim (~120-135 Å from the centre of a
  200 Å particle, 0.4 of its height, matched by small discs), and the
  maximum radius alone let them through (precision 0.54-0.80 on 200 Å
  particles at 1.5-2.5 µm, now 0.96-0.99).
* Median and MAD instead of the histogram's mode and FWHM: with carbon or
  contamination the histogram has several peaks and the mode may be the
  artefact's. Local statistics are taken before the high-pass (carbon and
  contamination differ from ice mostly in their mean), exclusions of edges
  are grown by the maximum radius and excluded areas are filled before the
  matched filter; the low-variance threshold is −1.5 (cisTEM's program −1.0,
  its GUI −0.5), as thin, particle-free ice is normal, not an artefact.
* Scores are rescaled by the measured background σ, as crowded micrographs
  leave particle signal in the background boxes; the number of background
  boxes is capped at what fits in a quarter of the resampled micrograph.
  The background is the allowed area outside discs of the maximum radius
  around every score maximum above 4 σ (two rounds, starting from the median
  and lower half of the distribution). Measured over the whole micrograph,
  particles and their CTF side lobes raised the zero by 0.25-0.4 σ on
  crowded micrographs; now the score between particles (more than 1.1
  diameters from any, away from the edges) has mean within ±0.12 and σ
  0.92-1.09 (135 Å particles, 0.8 µm, six micrographs). Candidates from 3 σ
  would also drop noise maxima and bias σ low. Points closer than a
  template's support to an excluded area or to the micrograph's edge do not
  count: there the template overlaps the flat fill or wraps around, and σ
  came out half the true one on micrographs half covered by carbon.
* Peak positions are interpolated rather than integer, and the score is
  evaluated on a grid twice as fine as the resampled micrograph. Close to
  focus the CTF passes mostly the frequencies near the highest resolution, so
  the peaks are only one or two resampled pixels wide and sampling them at the
  resampled pixels alone lost up to a quarter of their height (0.8 µm,
  135 Å particle: recall 0.51 → 0.79, 1.2 µm: 0.84 → 1.00); the threshold
  applies to the interpolated height, so maxima up to 1 σ below it on the
  grid are examined too.
* Together (135 Å particles, 0.8 µm, 1 Å/px, 30 e/Å², six micrographs
  pooled): recall 0.87 → 0.905 at precision 0.99; 200 Å particles, and
  135 Å particles from 1.2 µm: recall 1.00, precision ≥ 0.96.

Coordinates: images are ``(ny, nx)``, x along axis 1. Positions are in Å
from the centre of the first pixel (x = column × pixel size), cisTEM's
particle-position convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cistemd.kernels.ctf import CTFParams, ctf_1d

__all__ = [
    "BACKGROUND_ALGORITHMS",
    "PickingMaps",
    "PickingParams",
    "Picks",
    "find_particles",
    "picking_maps",
    "resampled_shape",
]

BACKGROUND_ALGORITHMS = ("lowest", "mean")
"""Where background boxes are taken: lowest local σ, or local σ nearest its median."""

_COSINE_EDGE_PX = 5.0
TEMPLATE_RADIUS_SPAN = 0.4
"""Templates span the characteristic radius ± this fraction (:func:`template_radii_angstroms`)."""
_BACKGROUND_AREA_FRACTION = 0.25
_CANDIDATE_SIGMA = 4.0
"""Score maxima above this many σ are left out (with their surroundings) when measuring σ."""
_MIN_BACKGROUND_SAMPLES = 400
_PEAK_SEARCH_MARGIN_SIGMA = 1.0
"""Grid maxima this far below the threshold are interpolated in case their peak reaches it."""


@dataclass(frozen=True, slots=True)
class PickingParams:
    """Parameters of :func:`find_particles`; defaults are cisTEM's ``find_particles``.

    Attributes
    ----------
    characteristic_radius_angstroms
        Radius of the disc template (cisTEM GUI: "characteristic particle radius", 80 Å).
    maximum_radius_angstroms
        Largest particle radius: size of the local statistics boxes, of the
        background boxes and of the exclusion circle between picks (120 Å).
    threshold_sigma
        Minimum peak height, in σ of the background score (6.0).
    highest_resolution_angstroms
        Highest resolution used; the micrograph is resampled so that this is
        Nyquist (30 Å).
    minimum_distance_from_edges_px
        Picks closer than this to an edge, in *original* micrograph pixels, are
        dropped (128).
    avoid_high_variance, high_variance_threshold_fwhm
        Exclude local σ above ``median + threshold·width`` (on, 2.0).
    avoid_low_variance, low_variance_threshold_fwhm
        Exclude local σ below ``median + threshold·width`` (on, −1.5; cisTEM −1.0/−0.5).
    avoid_abnormal_local_mean
        Exclude local means outside ``median ± 2·width`` (on).
    number_of_background_boxes
        Boxes used to estimate the background spectrum (50).
    background_algorithm
        ``"lowest"`` (lowest local variance, cisTEM's algorithm 0) or
        ``"mean"`` (local σ nearest its median, cisTEM: nearest its mode).
    particles_are_white
        Protein is bright in the micrograph (negative-stain-like contrast).
    """

    characteristic_radius_angstroms: float = 80.0
    maximum_radius_angstroms: float = 120.0
    threshold_sigma: float = 6.0
    highest_resolution_angstroms: float = 30.0
    minimum_distance_from_edges_px: int = 128
    avoid_high_variance: bool = True
    high_variance_threshold_fwhm: float = 2.0
    avoid_low_variance: bool = True
    low_variance_threshold_fwhm: float = -1.5
    avoid_abnormal_local_mean: bool = True
    number_of_background_boxes: int = 50
    background_algorithm: str = "lowest"
    particles_are_white: bool = False

    def __post_init__(self) -> None:
        for name in (
            "characteristic_radius_angstroms",
            "maximum_radius_angstroms",
            "highest_resolution_angstroms",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("threshold_sigma", "high_variance_threshold_fwhm",
                     "low_variance_threshold_fwhm"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        if self.minimum_distance_from_edges_px < 0:
            raise ValueError(
                f"minimum_distance_from_edges_px must be >= 0, got "
                f"{self.minimum_distance_from_edges_px}"
            )
        if self.number_of_background_boxes < 1:
            raise ValueError(
                f"number_of_background_boxes must be >= 1, got {self.number_of_background_boxes}"
            )
        if self.background_algorithm not in BACKGROUND_ALGORITHMS:
            raise ValueError(
                f"background_algorithm must be one of {', '.join(BACKGROUND_ALGORITHMS)}, "
                f"got {self.background_algorithm!r}"
            )


@dataclass(frozen=True, slots=True)
class Picks:
    """Picked particle positions.

    Attributes
    ----------
    x_angstroms, y_angstroms
        ``(n,)`` float64 positions, Å from the centre of the first pixel, x
        along the fast axis (cisTEM's ``X_POSITION``/``Y_POSITION``).
    peak_height
        ``(n,)`` float64 matched-filter score at each pick (interpolated peak), in σ of the
        background; picks are sorted by it, highest first.
    """

    x_angstroms: np.ndarray
    y_angstroms: np.ndarray
    peak_height: np.ndarray

    def __len__(self) -> int:
        return int(self.x_angstroms.shape[0])


@dataclass(frozen=True, slots=True)
class PickingMaps:
    """Intermediate maps of one picking run, on the resampled grid (for diagnostics).

    Attributes
    ----------
    score
        ``(2·my, 2·mx)`` matched-filter score (σ), before exclusions, on a grid
        twice as fine as the resampled micrograph ``(my, mx)``.
    excluded
        ``(2·my, 2·mx)`` bool, true where an exclusion zeroed the score.
    local_mean, local_sigma
        ``(my, mx)`` local statistics of the band-passed micrograph.
    pixel_size_x_angstroms, pixel_size_y_angstroms
        Pixel size of the score grid along each axis (half the resampled
        micrograph's).
    background_boxes
        Number of background boxes actually used.
    best_radius
        ``(2·my, 2·mx)`` radius (Å) of the disc template that gave the score:
        an estimate of the size of a particle centred there.
    """

    score: np.ndarray
    excluded: np.ndarray
    local_mean: np.ndarray
    local_sigma: np.ndarray
    pixel_size_x_angstroms: float
    pixel_size_y_angstroms: float
    background_boxes: int
    best_radius: np.ndarray


def _even_fast_length(n: int) -> int:
    from scipy.fft import next_fast_len

    n = max(int(n), 8)
    while True:
        n = int(next_fast_len(n, real=True))
        if n % 2 == 0:
            return n
        n += 1


def resampled_shape(
    shape: tuple[int, int], pixel_size_angstroms: float, highest_resolution_angstroms: float
) -> tuple[int, int]:
    """Return the ``(my, mx)`` the micrograph is Fourier-cropped to before picking.

    The short axis gets the smallest FFT-friendly even length of at least
    ``n · pixel_size · 2 / highest_resolution``; the long axis is scaled by
    the same factor (rounded to even). A micrograph already coarser than that
    is not resampled.
    """
    ny, nx = int(shape[0]), int(shape[1])
    scale = 2.0 * pixel_size_angstroms / highest_resolution_angstroms
    if scale >= 1.0:
        return ny, nx
    short, long_ = (ny, nx) if ny <= nx else (nx, ny)
    new_short = min(_even_fast_length(int(short * scale)), short - short % 2)
    new_long = min(long_ - long_ % 2, 2 * round(long_ * new_short / short / 2.0))
    return (new_short, new_long) if ny <= nx else (new_long, new_short)


def _crop_rfft(
    spectrum: np.ndarray, shape: tuple[int, int], new_shape: tuple[int, int]
) -> np.ndarray:
    """Crop an ``rfft2`` spectrum of ``shape`` to that of ``new_shape`` (both axes smaller)."""
    my, mx = new_shape
    half = my // 2
    rows = np.concatenate([spectrum[: my - half], spectrum[shape[0] - half :]], axis=0)
    return np.ascontiguousarray(rows[:, : mx // 2 + 1])


def _frequency_grid(
    shape: tuple[int, int], pixel_x: float, pixel_y: float
) -> tuple[np.ndarray, np.ndarray]:
    """(ky, kx) in 1/Å on the rfft2 half-plane of ``shape`` with per-axis pixel sizes."""
    ky = np.fft.fftfreq(shape[0], d=pixel_y)[:, None]
    kx = np.fft.rfftfreq(shape[1], d=pixel_x)[None, :]
    return ky, kx


def _cosine_edge(distance: np.ndarray, radius: float, width: float) -> np.ndarray:
    """1 inside ``radius``, a half-cosine fall to 0 over ``width``, 0 beyond."""
    t = np.clip((distance - radius) / width, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def _typical_value_and_width(values: np.ndarray) -> tuple[float, float]:
    """Typical value and a FWHM-like width of ``values``: median and 2.3548 × 1.4826·MAD.

    cisTEM uses the mode and FWHM of the histogram; with carbon or
    contamination in the field the histogram has several peaks and its mode
    can belong to the artefact. The median and the median absolute deviation
    (scaled to a Gaussian's FWHM) describe the majority, the ice, as long as
    artefacts cover less than half of the micrograph.
    """
    finite = values[np.isfinite(values)]
    centre = float(np.median(finite))
    mad = float(np.median(np.abs(finite - centre)))
    return centre, 2.3548 * 1.4826 * mad


def _local_mean_sigma(image: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import uniform_filter

    side = max(int(side), 1)
    mean = uniform_filter(image, size=side, mode="reflect")
    mean_sq = uniform_filter(image * image, size=side, mode="reflect")
    sigma = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
    return mean, sigma


def _background_spectrum(
    micrograph: np.ndarray,
    local_sigma: np.ndarray,
    box: int,
    n_boxes: int,
    algorithm: str,
    sigma_mode: float,
    frequency_bins: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Radially averaged power spectrum (per pixel) of the background boxes."""
    my, mx = micrograph.shape
    box = min(box, my, mx)
    fit = int(_BACKGROUND_AREA_FRACTION * my * mx / (box * box))
    n_boxes = max(1, min(n_boxes, fit))
    if algorithm == "lowest":
        badness = local_sigma.astype(np.float64).copy()
    else:
        badness = np.abs(local_sigma - sigma_mode).astype(np.float64)
    half = box // 2
    usable = np.full(badness.shape, np.inf)
    usable[half : my - (box - half) + 1, half : mx - (box - half) + 1] = 0.0
    badness = badness + usable
    if not np.any(np.isfinite(badness)):  # everything excluded: fall back to all areas
        badness = np.where(np.isfinite(local_sigma), local_sigma, 0.0) + usable
    fy = np.fft.fftfreq(box)[:, None]
    fx = np.fft.fftfreq(box)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    which = np.clip(np.digitize(radius, frequency_bins) - 1, 0, frequency_bins.size - 2)
    power = np.zeros(frequency_bins.size - 1)
    counts = np.bincount(which.ravel(), minlength=power.size).astype(np.float64)
    used = 0
    for _ in range(n_boxes):
        flat = int(np.argmin(badness))
        cy, cx = divmod(flat, mx)
        if not np.isfinite(badness[cy, cx]):
            break
        y0, x0 = cy - half, cx - half
        patch = micrograph[y0 : y0 + box, x0 : x0 + box].astype(np.float64)
        patch = patch - patch.mean()
        spectrum = np.abs(np.fft.fft2(patch)) ** 2 / (box * box)
        power += np.bincount(which.ravel(), weights=spectrum.ravel(), minlength=power.size)
        used += 1
        badness[max(0, y0 - half) : y0 + box + half, max(0, x0 - half) : x0 + box + half] = np.inf
    if used == 0:
        raise ValueError("the micrograph is too small for one background box")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_power = power / (counts * used)
    return mean_power, used


def picking_maps(
    image: npt.ArrayLike,
    *,
    pixel_size_angstroms: float,
    ctf: CTFParams,
    params: PickingParams | None = None,
    threads: int = 1,
) -> PickingMaps:
    """Compute the matched-filter score and the exclusion maps (steps 1-7 of the module).

    Parameters
    ----------
    image
        ``(ny, nx)`` micrograph (any real dtype; counts or normalised).
    pixel_size_angstroms
        Å per pixel of ``image``.
    ctf
        The micrograph's CTF (defocus positive = underfocus, angle from x).
    params
        Picking parameters; ``None`` = defaults.
    threads
        ``workers`` for scipy.fft.

    Returns
    -------
    PickingMaps
        Score and exclusion mask on a grid twice as fine as the resampled
        micrograph, local statistics on the resampled grid.
    """
    from scipy import fft as sfft

    p = params or PickingParams()
    array = np.asarray(image)
    if array.ndim != 2 or min(array.shape) < 16:
        raise ValueError(f"image must be a 2-D array of at least 16x16, got shape {array.shape}")
    if not (math.isfinite(pixel_size_angstroms) and pixel_size_angstroms > 0):
        raise ValueError(f"pixel_size_angstroms must be positive, got {pixel_size_angstroms!r}")
    ny, nx = array.shape
    my, mx = resampled_shape((ny, nx), pixel_size_angstroms, p.highest_resolution_angstroms)
    pixel_x = pixel_size_angstroms * nx / mx
    pixel_y = pixel_size_angstroms * ny / my
    pixel = math.sqrt(pixel_x * pixel_y)
    workers = max(1, int(threads))

    data = array.astype(np.float32, copy=False)
    spectrum = sfft.rfft2(data, workers=workers)
    if (my, mx) != (ny, nx):
        spectrum = _crop_rfft(spectrum, (ny, nx), (my, mx))
    spectrum = spectrum.astype(np.complex128)
    spectrum[0, 0] = 0.0

    ky, kx = _frequency_grid((my, mx), pixel_x, pixel_y)
    k = np.sqrt(kx * kx + ky * ky)
    azimuth = np.degrees(np.arctan2(ky, kx))
    ctf_values = ctf_1d(k, ctf, azimuth_degrees=azimuth)
    long_axis_angstroms = max(my * pixel_y, mx * pixel_x)
    high_pass = 1.0 - _cosine_edge(k * long_axis_angstroms, 10.0, 10.0)
    flip = np.where(ctf_values < 0, -1.0, 1.0)
    sign = -1.0 if p.particles_are_white else 1.0

    # Templates: soft discs at the origin (wrap-around), |CTF|- and high-pass-filtered.
    yy = np.minimum(np.arange(my), my - np.arange(my))[:, None] * pixel_y
    xx = np.minimum(np.arange(mx), mx - np.arange(mx))[None, :] * pixel_x
    distance = np.sqrt(xx * xx + yy * yy)
    edge = max(_COSINE_EDGE_PX * pixel_size_angstroms, pixel)
    disc_ft = sfft.rfft2(
        _cosine_edge(distance, p.characteristic_radius_angstroms - edge / 2, edge), workers=workers
    )
    amplitude = np.abs(disc_ft)
    band_pass = amplitude / amplitude.max()

    # Local statistics of the band-passed micrograph.
    # (Not high-passed: contamination and carbon differ from ice mostly in their mean.)
    micrograph_bp = sfft.irfft2(spectrum * band_pass, s=(my, mx), workers=workers)
    box_side = round(2.0 * p.maximum_radius_angstroms / pixel)
    local_mean, local_sigma = _local_mean_sigma(micrograph_bp, box_side)
    mean_mode, mean_fwhm = _typical_value_and_width(local_mean)
    sigma_mode, sigma_fwhm = _typical_value_and_width(local_sigma)

    excluded = np.zeros((my, mx), dtype=bool)
    if p.avoid_abnormal_local_mean:
        excluded |= np.abs(local_mean - mean_mode) > 2.0 * mean_fwhm
    if p.avoid_high_variance:
        excluded |= local_sigma > sigma_mode + p.high_variance_threshold_fwhm * sigma_fwhm

    # A particle's box must not reach into an area of abnormal mean or high variance:
    # grow those exclusions by the maximum radius.
    if excluded.any():
        from scipy.ndimage import binary_dilation

        reach = p.maximum_radius_angstroms / pixel
        r = math.ceil(reach)
        oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
        excluded = binary_dilation(excluded, structure=(ox * ox + oy * oy) <= reach * reach)
    # Low variance marks empty or over-thick areas, not edges: no growth.
    if p.avoid_low_variance:
        excluded |= local_sigma < sigma_mode + p.low_variance_threshold_fwhm * sigma_fwhm

    # Excluded areas are filled with the typical grey level (soft edge), so that the
    # strong edges of carbon and contamination do not ring into the score elsewhere.
    if excluded.any() and not excluded.all():
        from scipy.ndimage import gaussian_filter

        plain = sfft.irfft2(spectrum, s=(my, mx), workers=workers)
        weight = np.clip(gaussian_filter(excluded.astype(np.float64), 1.5), 0.0, 1.0)
        weight = np.maximum(weight, excluded)
        fill = float(np.median(plain[~excluded]))
        spectrum = sfft.rfft2(plain * (1.0 - weight) + fill * weight, workers=workers)
        spectrum[0, 0] = 0.0
    micrograph_ft = spectrum * (flip * high_pass * sign)
    micrograph = sfft.irfft2(micrograph_ft, s=(my, mx), workers=workers)

    # Background spectrum and whitening filter, from boxes outside the excluded areas.
    frequency_bins = np.linspace(0.0, math.sqrt(0.5) + 1e-6, 64)
    _, flat_sigma = _local_mean_sigma(
        sfft.irfft2(micrograph_ft * band_pass, s=(my, mx), workers=workers), box_side
    )
    background, used = _background_spectrum(
        micrograph, np.where(excluded, np.inf, flat_sigma), box_side + 2,
        p.number_of_background_boxes, p.background_algorithm,
        float(np.median(flat_sigma[~excluded])) if not excluded.all() else sigma_mode,
        frequency_bins,
    )
    centres = 0.5 * (frequency_bins[:-1] + frequency_bins[1:])
    valid = np.isfinite(background) & (background > 0)
    if not np.any(valid):
        raise ValueError("the background power spectrum is empty (a blank micrograph?)")
    fraction = np.sqrt((kx * pixel_x) ** 2 + (ky * pixel_y) ** 2)
    background_grid = np.interp(fraction, centres[valid], background[valid])
    floor = background[valid].max() * 1e-6
    whitening = 1.0 / np.sqrt(np.maximum(background_grid, floor))
    whitening[0, 0] = 0.0
    whitened_ft = micrograph_ft * whitening

    # Matched filter: each template whitened like the micrograph, restricted to its
    # support, unit sum of squares; the score is the best template's.
    wavelength = ctf.wavelength_angstroms
    delocalisation = (
        max(ctf.defocus_1_angstroms, ctf.defocus_2_angstroms)
        * wavelength / p.highest_resolution_angstroms
    )
    support = p.maximum_radius_angstroms + delocalisation
    inside = distance <= support
    rim = inside & (distance > support - 1.5 * pixel)
    transfer = np.abs(ctf_values) * high_pass * whitening
    score = np.full((2 * my, 2 * mx), -np.inf)
    best_radius = np.zeros((2 * my, 2 * mx), dtype=np.float32)
    for radius in template_radii_angstroms(p, pixel):
        disc = _cosine_edge(distance, radius - edge / 2, edge)
        template = sfft.irfft2(sfft.rfft2(disc, workers=workers) * transfer, s=(my, mx),
                               workers=workers)
        edge_mean = float(template[rim].mean()) if np.any(rim) else 0.0
        template = np.where(inside, template - edge_mean, 0.0)
        norm = math.sqrt(float(np.sum(template * template)))
        if not norm > 0:
            raise ValueError("the template is empty; check the radii and the resolution")
        template /= norm
        product = np.conj(sfft.rfft2(template, workers=workers)) * whitened_ft
        current = sfft.irfft2(_pad_rfft_twofold(product, (my, mx)), s=(2 * my, 2 * mx),
                              workers=workers)
        best_radius[current > score] = radius
        np.maximum(score, current, out=score)
    excluded = np.repeat(np.repeat(excluded, 2, axis=0), 2, axis=1)
    fine_pixel = math.sqrt(pixel_x * pixel_y) / 2.0
    centre, sigma = _background_level_and_sigma(
        score, excluded, p.maximum_radius_angstroms / fine_pixel, support / fine_pixel
    )
    if sigma > 0:
        score = (score - centre) / sigma

    return PickingMaps(
        score=score.astype(np.float32),
        excluded=excluded,
        local_mean=local_mean.astype(np.float32),
        local_sigma=local_sigma.astype(np.float32),
        pixel_size_x_angstroms=pixel_x / 2.0,
        pixel_size_y_angstroms=pixel_y / 2.0,
        background_boxes=used,
        best_radius=best_radius,
    )


def _background_level_and_sigma(
    score: np.ndarray, excluded: np.ndarray, radius_px: float, support_px: float
) -> tuple[float, float]:
    """Mean and σ of the score where no particle is: the unit of the threshold.

    Start from robust figures (median, and its distance to the 15.9th
    percentile), then twice: take the local maxima above
    :data:`_CANDIDATE_SIGMA` as candidate particles, leave out discs of
    ``radius_px`` (the maximum radius) around them and the excluded areas, and
    measure the mean and standard deviation of what is left. Particles and
    their CTF side lobes otherwise raise the median (by 0.25-0.4 σ on a
    crowded micrograph). Only points at least a template's support
    (``support_px``) from the excluded areas and the micrograph's edges count
    when there are enough of them: closer in, the template overlaps the flat
    fill or the other side of the micrograph (σ came out half the true one on
    micrographs half covered by carbon).
    """
    from scipy.ndimage import distance_transform_edt, maximum_filter

    allowed = ~excluded
    # Outside the micrograph counts as excluded: the correlation wraps around there.
    clear = distance_transform_edt(np.pad(allowed, 1))[1:-1, 1:-1] > support_px
    if np.count_nonzero(clear) > _MIN_BACKGROUND_SAMPLES:
        allowed = clear
    if np.count_nonzero(allowed) <= _MIN_BACKGROUND_SAMPLES:
        allowed = np.ones_like(excluded)
    centre, lower = np.percentile(score[allowed], [50.0, 15.865])
    sigma = float(centre - lower)
    for _ in range(2):
        if not sigma > 0:
            break
        threshold = centre + _CANDIDATE_SIGMA * sigma
        candidates = allowed & (score >= threshold) & (score == maximum_filter(score, size=3))
        if not candidates.any():
            break
        far = distance_transform_edt(~candidates) > radius_px
        background = score[allowed & far]
        if background.size <= _MIN_BACKGROUND_SAMPLES:
            break
        centre, sigma = float(background.mean()), float(background.std())
    return float(centre), sigma


def _pad_rfft_twofold(spectrum: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Zero-pad an ``rfft2`` spectrum of ``shape`` to that of twice the size on each axis.

    The inverse transform (``s`` = twice ``shape``) interpolates the image onto a
    grid twice as fine; its even-indexed samples are the original image. Nyquist
    rows and columns of an even ``shape`` are split between the positive and
    negative frequencies.
    """
    my, mx = shape
    padded = np.zeros((2 * my, mx + 1), dtype=spectrum.dtype)
    positive = (my + 1) // 2  # rows 0 .. ceil(my/2) - 1
    padded[:positive, : mx // 2 + 1] = spectrum[:positive]
    padded[2 * my - (my - positive) :, : mx // 2 + 1] = spectrum[positive:]
    if my % 2 == 0:  # the Nyquist row -my/2 is also +my/2
        padded[positive, : mx // 2 + 1] = 0.5 * spectrum[positive]
        padded[2 * my - (my - positive), : mx // 2 + 1] *= 0.5
    if mx % 2 == 0:  # the Nyquist column counts once in irfft2, a padded column twice
        padded[:, mx // 2] *= 0.5
    return padded * 4.0


def template_radii_angstroms(params: PickingParams, pixel_size_angstroms: float) -> np.ndarray:
    """Radii of the disc templates for a picking run, Å.

    Discs from ``(1 − span)`` to ``(1 + span)`` times the characteristic radius
    (capped at the maximum radius), half a resampled pixel apart; ``span`` is
    :data:`TEMPLATE_RADIUS_SPAN`.
    """
    low = (1.0 - TEMPLATE_RADIUS_SPAN) * params.characteristic_radius_angstroms
    high = min((1.0 + TEMPLATE_RADIUS_SPAN) * params.characteristic_radius_angstroms,
               max(params.maximum_radius_angstroms, params.characteristic_radius_angstroms))
    if TEMPLATE_RADIUS_SPAN <= 0 or high <= low:
        return np.array([params.characteristic_radius_angstroms])
    count = max(1, math.ceil((high - low) / (0.5 * pixel_size_angstroms))) + 1
    return np.linspace(low, high, count)


def _parabola_peak(
    minus: np.ndarray, centre: np.ndarray, plus: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Vertex of the parabola through three equally spaced samples, per element.

    Returns the offset of the vertex from the centre sample (grid units, within
    ±0.5) and how much higher the parabola is there than the centre sample;
    both 0 where the samples are not concave.
    """
    curvature = minus - 2.0 * centre + plus
    slope = 0.5 * (plus - minus)
    concave = curvature < 0
    offset = np.where(concave, np.clip(-slope / np.where(concave, curvature, -1.0), -0.5, 0.5),
                      0.0)
    gain = slope * offset + 0.5 * curvature * offset * offset
    return offset, np.maximum(gain, 0.0)


def find_particles(
    image: npt.ArrayLike,
    *,
    pixel_size_angstroms: float,
    ctf: CTFParams,
    params: PickingParams | None = None,
    threads: int = 1,
) -> Picks:
    """Pick particles in a micrograph with a CTF-aware matched filter.

    Parameters
    ----------
    image
        ``(ny, nx)`` micrograph, x along axis 1.
    pixel_size_angstroms
        Å per pixel.
    ctf
        The micrograph's CTF (its estimate from CTFFIND).
    params
        :class:`PickingParams`; ``None`` = cisTEM's defaults.
    threads
        ``workers`` for scipy.fft.

    Returns
    -------
    Picks
        Positions in Å from the centre of the first pixel and peak heights (σ),
        highest first.

    Raises
    ------
    ValueError
        A bad image shape, pixel size or parameter.
    """
    from scipy.ndimage import maximum_filter

    p = params or PickingParams()
    maps = picking_maps(image, pixel_size_angstroms=pixel_size_angstroms, ctf=ctf, params=p,
                        threads=threads)
    score = maps.score.astype(np.float64)
    allowed = np.where(maps.excluded, 0.0, score)
    my, mx = score.shape
    # Local maxima whose interpolated height may reach the threshold: a peak between
    # grid points is higher than its best grid point.
    peaks = (allowed >= p.threshold_sigma - _PEAK_SEARCH_MARGIN_SIGMA) & (
        allowed == maximum_filter(allowed, size=3, mode="nearest")
    )
    iy, ix = np.nonzero(peaks)
    offset_x, gain_x = _parabola_peak(allowed[iy, (ix - 1) % mx], allowed[iy, ix],
                                      allowed[iy, (ix + 1) % mx])
    offset_y, gain_y = _parabola_peak(allowed[(iy - 1) % my, ix], allowed[iy, ix],
                                      allowed[(iy + 1) % my, ix])
    height = allowed[iy, ix] + gain_x + gain_y
    keep = height >= p.threshold_sigma
    order = np.argsort(-height[keep], kind="stable")
    iy, ix = iy[keep][order], ix[keep][order]
    offset_x, offset_y, height = offset_x[keep][order], offset_y[keep][order], height[keep][order]

    ny, nx = np.asarray(image).shape
    margin = p.minimum_distance_from_edges_px * pixel_size_angstroms
    x_max = (nx - 1) * pixel_size_angstroms - margin
    y_max = (ny - 1) * pixel_size_angstroms - margin
    accepted_r: list[float] = []  # radius of the template that matched each accepted pick
    accepted_x: list[float] = []
    accepted_y: list[float] = []
    xs: list[float] = []
    ys: list[float] = []
    heights: list[float] = []
    for y, x, dx, dy, h in zip(iy.tolist(), ix.tolist(), offset_x.tolist(), offset_y.tolist(),
                               height.tolist(), strict=True):
        x_angstroms = (x + dx) * maps.pixel_size_x_angstroms
        y_angstroms = (y + dy) * maps.pixel_size_y_angstroms
        if accepted_x:
            d_sq = (np.asarray(accepted_x) - x_angstroms) ** 2 + (
                np.asarray(accepted_y) - y_angstroms
            ) ** 2
            # Particles do not overlap: at least the sum of the two matched radii apart,
            # and never closer than the maximum (exclusion) radius.
            reach = np.maximum(np.asarray(accepted_r) + float(maps.best_radius[y, x]),
                               p.maximum_radius_angstroms)
            if np.any(d_sq < reach * reach):
                continue
        accepted_x.append(x_angstroms)
        accepted_y.append(y_angstroms)
        accepted_r.append(float(maps.best_radius[y, x]))
        if margin <= x_angstroms <= x_max and margin <= y_angstroms <= y_max:
            xs.append(x_angstroms)
            ys.append(y_angstroms)
            heights.append(h)
    return Picks(
        x_angstroms=np.asarray(xs, dtype=np.float64),
        y_angstroms=np.asarray(ys, dtype=np.float64),
        peak_height=np.asarray(heights, dtype=np.float64),
    )

