"""The contrast transfer function (CTF) in CTFFIND/cisTEM conventions.

Convention (CTFFIND 4/5, cisTEM ``src/core/ctf.cpp``, Rohou & Grigorieff 2015)
------------------------------------------------------------------------------
For a spatial frequency ``k`` (1/Å) at azimuth ``α`` (angle of the frequency
vector from the +x axis, x = the fast axis = numpy axis ``-1``, measured
towards +y = numpy axis ``-2``)::

    Δf(α) = ½ [df1 + df2 + (df1 − df2) cos(2 (α − α_ast))]
    χ(k, α) = π λ k² (Δf(α) − ½ λ² k² Cs) + φ + w,   w = atan(A / sqrt(1 − A²))
    CTF(k, α) = −sin χ(k, α)

* λ: relativistic electron wavelength in Å (:func:`electron_wavelength_angstroms`);
* Cs: spherical aberration in Å (the parameter is in mm, ×10⁷);
* df1, df2: defocus in Å, **positive = underfocus**; ``df1`` is the defocus
  along the azimuth ``α_ast`` and ``df2`` perpendicular to it. CTFFIND reports
  ``df1 ≥ df2`` and ``−90° < α_ast ≤ 90°`` (:meth:`CTFParams.enforce_convention`);
* α_ast: astigmatism azimuth in **degrees** from the x axis;
* φ: additional phase shift (phase plate) in **radians**, as in CTFFIND's output;
* A: amplitude contrast fraction (0.07 for cryo samples); ``w`` is the phase
  that puts ``−sin χ = −(sqrt(1 − A²) sin χ₀ + A cos χ₀)``.

With this sign convention a weak-phase object (positive projected potential)
imaged in underfocus appears dark at low resolution (``CTF(0) = −A`` and the
first lobe is negative).

Converting: RELION's ``rlnDefocusU/V/Angle`` and cryoSPARC's ``df1_A/df2_A``
use the same definitions (U = df1, V = df2, angle = α_ast in degrees);
RELION's ``rlnPhaseShift`` is in degrees (φ here is radians). The envelope
``exp(−B k² / 4)`` (B in Å²) is cisTEM's ``ApplyBFactor`` convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from cistemd.kernels.fourier import spatial_frequency_grid

__all__ = [
    "CTFParams",
    "amplitude_contrast_phase_radians",
    "chi",
    "ctf_1d",
    "ctf_2d",
    "ctf_zero_frequencies",
    "defocus_at_azimuth",
    "electron_wavelength_angstroms",
]

# CODATA 2018 exact/recommended values (SI).
_PLANCK_J_S = 6.62607015e-34
_ELECTRON_MASS_KG = 9.1093837015e-31
_ELEMENTARY_CHARGE_C = 1.602176634e-19
_SPEED_OF_LIGHT_M_S = 299792458.0


def electron_wavelength_angstroms(voltage_kv: float) -> float:
    """Return the relativistic de Broglie wavelength of an electron, in Å.

    ``λ = h / sqrt(2 m₀ e U (1 + e U / (2 m₀ c²)))`` with CODATA 2018
    constants: 0.019687 Å at 300 kV, 0.025079 Å at 200 kV, 0.037014 Å at 100 kV.
    (cisTEM's rounded ``12.2639 / sqrt(U + 0.97845e-6 U²)`` agrees to 3·10⁻⁵.)

    Parameters
    ----------
    voltage_kv
        Acceleration voltage in kV (> 0).
    """
    if not voltage_kv > 0:
        raise ValueError(f"voltage_kv must be positive, got {voltage_kv}")
    volts = voltage_kv * 1000.0
    energy = _ELEMENTARY_CHARGE_C * volts
    momentum_sq = (
        2.0
        * _ELECTRON_MASS_KG
        * energy
        * (1.0 + energy / (2.0 * _ELECTRON_MASS_KG * _SPEED_OF_LIGHT_M_S**2))
    )
    return _PLANCK_J_S / math.sqrt(momentum_sq) * 1e10


def amplitude_contrast_phase_radians(amplitude_contrast: float) -> float:
    """Return ``atan(A / sqrt(1 − A²))`` (= ``asin(A)``), the amplitude-contrast phase."""
    if not 0.0 <= amplitude_contrast <= 1.0:
        raise ValueError(f"amplitude_contrast must be in [0, 1], got {amplitude_contrast}")
    if amplitude_contrast >= 1.0:
        return math.pi / 2
    return math.atan(amplitude_contrast / math.sqrt(1.0 - amplitude_contrast**2))


@dataclass(frozen=True, slots=True, kw_only=True)
class CTFParams:
    """Parameters of an astigmatic CTF, CTFFIND conventions (see module docstring).

    Keyword-only, so that no positional call can mix up defocus and voltage.

    Attributes
    ----------
    defocus_1_angstroms
        Defocus along the astigmatism azimuth, Å, positive = underfocus.
    defocus_2_angstroms
        Defocus perpendicular to it, Å.
    astigmatism_angle_degrees
        Azimuth of ``df1`` from the x axis (fast axis), degrees.
    voltage_kv
        Acceleration voltage, kV.
    spherical_aberration_mm
        Cs, mm.
    amplitude_contrast
        Fraction in [0, 1).
    additional_phase_shift_radians
        Phase-plate phase shift, radians.
    """

    defocus_1_angstroms: float
    defocus_2_angstroms: float
    astigmatism_angle_degrees: float = 0.0
    voltage_kv: float = 300.0
    spherical_aberration_mm: float = 2.7
    amplitude_contrast: float = 0.07
    additional_phase_shift_radians: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "defocus_1_angstroms",
            "defocus_2_angstroms",
            "astigmatism_angle_degrees",
            "voltage_kv",
            "spherical_aberration_mm",
            "amplitude_contrast",
            "additional_phase_shift_radians",
        ):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f"CTFParams.{name} must be finite, got {value}")
            object.__setattr__(self, name, value)
        if self.voltage_kv <= 0:
            raise ValueError(f"CTFParams.voltage_kv must be positive, got {self.voltage_kv}")
        if not 0.0 <= self.amplitude_contrast < 1.0:
            raise ValueError(
                f"CTFParams.amplitude_contrast must be in [0, 1), got {self.amplitude_contrast}"
            )

    @property
    def wavelength_angstroms(self) -> float:
        """Relativistic electron wavelength, Å."""
        return electron_wavelength_angstroms(self.voltage_kv)

    @property
    def spherical_aberration_angstroms(self) -> float:
        """Cs in Å."""
        return self.spherical_aberration_mm * 1.0e7

    @property
    def mean_defocus_angstroms(self) -> float:
        """``(df1 + df2) / 2``, Å."""
        return 0.5 * (self.defocus_1_angstroms + self.defocus_2_angstroms)

    @property
    def additional_phase_shift_degrees(self) -> float:
        """Phase-plate phase shift in degrees (cisTEM ``.star`` unit)."""
        return math.degrees(self.additional_phase_shift_radians)

    def enforce_convention(self) -> CTFParams:
        """Return the same CTF with ``df1 ≥ df2`` and the azimuth in ``(−90°, 90°]``."""
        df1, df2 = self.defocus_1_angstroms, self.defocus_2_angstroms
        angle = self.astigmatism_angle_degrees
        if df1 < df2:
            df1, df2 = df2, df1
            angle += 90.0
        angle = angle - 180.0 * math.floor((angle + 90.0) / 180.0)
        if angle <= -90.0:
            angle += 180.0
        return replace(
            self, defocus_1_angstroms=df1, defocus_2_angstroms=df2, astigmatism_angle_degrees=angle
        )


def defocus_at_azimuth(params: CTFParams, azimuth_degrees: npt.ArrayLike) -> np.ndarray:
    """Return ``Δf(α) = ½[df1 + df2 + (df1 − df2) cos 2(α − α_ast)]`` in Å."""
    alpha = np.deg2rad(np.asarray(azimuth_degrees, dtype=np.float64))
    alpha_ast = math.radians(params.astigmatism_angle_degrees)
    return 0.5 * (
        params.defocus_1_angstroms
        + params.defocus_2_angstroms
        + (params.defocus_1_angstroms - params.defocus_2_angstroms)
        * np.cos(2.0 * (alpha - alpha_ast))
    )


def _chi_from_squared_frequency(
    k_squared: np.ndarray, defocus_angstroms: npt.ArrayLike, params: CTFParams
) -> np.ndarray:
    wavelength = params.wavelength_angstroms
    return (
        np.pi
        * wavelength
        * k_squared
        * (
            np.asarray(defocus_angstroms, dtype=np.float64)
            - 0.5 * wavelength**2 * k_squared * params.spherical_aberration_angstroms
        )
        + params.additional_phase_shift_radians
        + amplitude_contrast_phase_radians(params.amplitude_contrast)
    )


def chi(
    spatial_frequency_per_angstrom: npt.ArrayLike,
    params: CTFParams,
    *,
    azimuth_degrees: npt.ArrayLike | None = None,
) -> np.ndarray:
    """Return the phase aberration χ (radians), including the amplitude-contrast phase.

    Parameters
    ----------
    spatial_frequency_per_angstrom
        ``|k|`` in 1/Å, any shape.
    params
        The CTF.
    azimuth_degrees
        Azimuth of each frequency (broadcast against ``k``), degrees from the
        x axis. ``None`` uses the mean defocus ``(df1 + df2) / 2`` -- the
        astigmatism-free (rotationally averaged) χ.

    Returns
    -------
    numpy.ndarray
        float64, broadcast shape of the inputs.
    """
    k = np.asarray(spatial_frequency_per_angstrom, dtype=np.float64)
    if azimuth_degrees is None:
        defocus: npt.ArrayLike = params.mean_defocus_angstroms
    else:
        defocus = defocus_at_azimuth(params, azimuth_degrees)
    return _chi_from_squared_frequency(k * k, defocus, params)


def ctf_1d(
    spatial_frequency_per_angstrom: npt.ArrayLike,
    params: CTFParams,
    *,
    azimuth_degrees: npt.ArrayLike | None = None,
    envelope_b_factor_angstroms2: float = 0.0,
) -> np.ndarray:
    """Return ``−sin χ(k, α) · exp(−B k² / 4)`` along an azimuth (float64).

    ``azimuth_degrees=None`` evaluates the astigmatism-free CTF at the mean
    defocus, the curve a rotational average is compared with.
    """
    k = np.asarray(spatial_frequency_per_angstrom, dtype=np.float64)
    value = -np.sin(chi(k, params, azimuth_degrees=azimuth_degrees))
    if envelope_b_factor_angstroms2:
        value = value * np.exp(-envelope_b_factor_angstroms2 * k * k / 4.0)
    return value


def ctf_2d(
    shape: tuple[int, int],
    pixel_size_angstroms: float,
    params: CTFParams,
    *,
    envelope_b_factor_angstroms2: float = 0.0,
    rfft: bool = False,
    centered: bool = False,
) -> np.ndarray:
    """Return the 2-D CTF sampled on the Fourier grid of an ``(ny, nx)`` image.

    Parameters
    ----------
    shape
        Real-space image shape ``(ny, nx)``.
    pixel_size_angstroms
        Å per pixel.
    params
        The CTF.
    envelope_b_factor_angstroms2
        B of an envelope ``exp(−B k² / 4)`` standing for the spatial and
        temporal coherence envelopes (0 = none).
    rfft
        If true, the ``(ny, nx // 2 + 1)`` half-plane layout of
        ``numpy.fft.rfft2``; otherwise the full ``(ny, nx)`` plane.
    centered
        If true (full plane only), ``fftshift`` layout with the origin at
        ``(ny // 2, nx // 2)``; otherwise numpy's FFT layout, origin at ``[0, 0]``.

    Returns
    -------
    numpy.ndarray
        float32 CTF values; multiply the image's FFT (same layout) by it.
        The azimuth of pixel ``(iy, ix)`` is ``atan2(ky, kx)``.
    """
    if len(shape) != 2:
        raise ValueError(f"shape must be (ny, nx), got {shape}")
    if rfft and centered:
        raise ValueError("centered=True is only available for the full plane (rfft=False)")
    ky, kx = spatial_frequency_grid(shape, pixel_size_angstroms, rfft=rfft, centered=centered)
    k_squared = kx * kx + ky * ky
    azimuth = np.arctan2(ky, kx)
    alpha_ast = math.radians(params.astigmatism_angle_degrees)
    defocus = 0.5 * (
        params.defocus_1_angstroms
        + params.defocus_2_angstroms
        + (params.defocus_1_angstroms - params.defocus_2_angstroms)
        * np.cos(2.0 * (azimuth - alpha_ast))
    )
    value = -np.sin(_chi_from_squared_frequency(k_squared, defocus, params))
    if envelope_b_factor_angstroms2:
        value *= np.exp(-envelope_b_factor_angstroms2 * k_squared / 4.0)
    return value.astype(np.float32)


def ctf_zero_frequencies(
    params: CTFParams,
    *,
    azimuth_degrees: float | None,
    max_frequency_per_angstrom: float,
) -> np.ndarray:
    """Return the spatial frequencies (1/Å) of the CTF zeros along one azimuth.

    χ is a quadratic in ``u = k²``: ``χ(u) = a u² + b u + c`` with
    ``a = −½ π λ³ Cs``, ``b = π λ Δf(α)``, ``c = φ + w``. The CTF vanishes where
    ``χ = nπ`` for an integer ``n``; every root ``0 < u ≤ k_max²`` of
    ``a u² + b u + (c − nπ) = 0`` is returned, including those beyond the
    extremum of χ (where the rings turn back at high defocus/low Cs).

    Parameters
    ----------
    params
        The CTF.
    azimuth_degrees
        Azimuth in degrees from the x axis; ``None`` = mean defocus.
    max_frequency_per_angstrom
        Upper limit of the search, 1/Å (e.g. Nyquist ``1 / (2 · pixel size)``).

    Returns
    -------
    numpy.ndarray
        Sorted, float64, strictly positive frequencies.
    """
    if max_frequency_per_angstrom <= 0:
        raise ValueError(
            f"max_frequency_per_angstrom must be positive, got {max_frequency_per_angstrom}"
        )
    wavelength = params.wavelength_angstroms
    if azimuth_degrees is None:
        defocus = params.mean_defocus_angstroms
    else:
        defocus = float(defocus_at_azimuth(params, azimuth_degrees))
    a = -0.5 * np.pi * wavelength**3 * params.spherical_aberration_angstroms
    b = np.pi * wavelength * defocus
    c = params.additional_phase_shift_radians + amplitude_contrast_phase_radians(
        params.amplitude_contrast
    )
    u_max = max_frequency_per_angstrom**2

    def chi_u(u: float) -> float:
        return a * u * u + b * u + c

    candidates = [0.0, u_max]
    if a != 0.0:
        u_extremum = -b / (2.0 * a)
        if 0.0 < u_extremum < u_max:
            candidates.append(u_extremum)
    values = [chi_u(u) for u in candidates]
    n_low = math.ceil(min(values) / math.pi - 1e-12)
    n_high = math.floor(max(values) / math.pi + 1e-12)
    roots: list[float] = []
    for n in range(n_low, n_high + 1):
        target = c - n * math.pi
        if a == 0.0:
            if b != 0.0:
                roots.append(-target / b)
            continue
        discriminant = b * b - 4.0 * a * target
        if discriminant < 0.0:
            continue
        sqrt_d = math.sqrt(discriminant)
        # Numerically stable pair of roots.
        q = -0.5 * (b + math.copysign(sqrt_d, b))
        roots.append(q / a)
        if q != 0.0:
            roots.append(target / q)
    tolerance = 1e-12 * max(u_max, 1e-30)
    accepted = sorted({round(u, 15) for u in roots if tolerance < u <= u_max * (1 + 1e-12)})
    return np.sqrt(np.asarray(accepted, dtype=np.float64))
