"""Per-particle parameters: the one in-memory table every metadata format maps to.

cisTEM's ``.star``/``.cistem`` files, Frealign ``.par`` files, RELION ``.star``
files and the project database's refinement tables all describe the same
thing: one row per particle image with its pose, shifts, CTF and scores. This
module defines that row once (:data:`COLUMNS`), in cisTEM's conventions:

* angles ``psi``, ``theta``, ``phi`` in degrees, Euler ZYZ (Frealign/cisTEM);
* shifts ``x_shift``, ``y_shift`` in Å (RELION's ``rlnOriginX/Y`` negated);
* defocus in Å, positive = underfocus; ``defocus_angle`` in degrees;
* ``phase_shift`` in degrees in the cisTEM ``.star`` text, **radians** in CTFFIND
  output -- this table stores degrees, as the cisTEM ``.star`` file does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["COLUMNS", "Column", "ParticleParameters"]


@dataclass(frozen=True, slots=True)
class Column:
    """One particle-parameter column.

    Attributes
    ----------
    name
        Python-side name, snake_case.
    star_label
        cisTEM ``.star`` label without the ``_cisTEM`` prefix.
    fmt
        printf-style format cisTEM writes it with.
    dtype
        numpy dtype of the column (``object`` for strings).
    default
        Value used when a file does not carry the column.
    """

    name: str
    star_label: str
    fmt: str
    dtype: Any
    default: Any


# Write order and formats follow cisTEM's star writer (reference §5.1).
COLUMNS: tuple[Column, ...] = (
    Column("position_in_stack", "PositionInStack", "%8u", np.int64, 0),
    Column("psi", "AnglePsi", "%7.2f", np.float64, 0.0),
    Column("theta", "AngleTheta", "%7.2f", np.float64, 0.0),
    Column("phi", "AnglePhi", "%7.2f", np.float64, 0.0),
    Column("x_shift", "XShift", "%9.2f", np.float64, 0.0),
    Column("y_shift", "YShift", "%9.2f", np.float64, 0.0),
    Column("defocus_1", "Defocus1", "%8.1f", np.float64, 0.0),
    Column("defocus_2", "Defocus2", "%8.1f", np.float64, 0.0),
    Column("defocus_angle", "DefocusAngle", "%7.2f", np.float64, 0.0),
    Column("phase_shift", "PhaseShift", "%7.2f", np.float64, 0.0),
    Column("image_is_active", "ImageActivity", "%5i", np.int64, 1),
    Column("occupancy", "Occupancy", "%7.2f", np.float64, 100.0),
    Column("logp", "LogP", "%9i", np.int64, 0),
    Column("sigma", "Sigma", "%10.4f", np.float64, 10.0),
    Column("score", "Score", "%7.2f", np.float64, 0.0),
    Column("score_change", "ScoreChange", "%7.2f", np.float64, 0.0),
    Column("pixel_size", "PixelSize", "%8.5f", np.float64, 1.0),
    Column("microscope_voltage_kv", "MicroscopeVoltagekV", "%7.2f", np.float64, 300.0),
    Column("microscope_spherical_aberration_mm", "MicroscopeCsMM", "%7.2f", np.float64, 2.7),
    Column("amplitude_contrast", "AmplitudeContrast", "%7.4f", np.float64, 0.07),
    Column("beam_tilt_x", "BeamTiltX", "%7.3f", np.float64, 0.0),
    Column("beam_tilt_y", "BeamTiltY", "%7.3f", np.float64, 0.0),
    Column("image_shift_x", "ImageShiftX", "%7.3f", np.float64, 0.0),
    Column("image_shift_y", "ImageShiftY", "%7.3f", np.float64, 0.0),
    Column("best_2d_class", "Best2DClass", "%5i", np.int64, 0),
    Column("beam_tilt_group", "BeamTiltGroup", "%5i", np.int64, 0),
    Column("stack_filename", "StackFilename", "%50s", object, ""),
    Column("original_image_filename", "OriginalImageFilename", "%50s", object, ""),
    Column("reference_3d_filename", "Reference3DFilename", "%50s", object, ""),
    Column("particle_group", "ParticleGroup", "%8u", np.int64, 0),
    Column("assigned_subset", "AssignedSubset", "%8i", np.int64, 0),
    Column("pre_exposure", "PreExposure", "%7.2f", np.float64, 0.0),
    Column("total_exposure", "TotalExposure", "%7.2f", np.float64, 0.0),
    Column("original_x_position", "OriginalXPosition", "%8.2f", np.float64, 0.0),
    Column("original_y_position", "OriginalYPosition", "%8.2f", np.float64, 0.0),
)

_BY_NAME = {c.name: c for c in COLUMNS}


@dataclass(slots=True)
class ParticleParameters:
    """A table of particle parameters, one numpy array per column.

    Only the columns a file actually carried (or a caller set) are in
    ``columns``; :meth:`get` fills the others with their defaults.

    Parameters
    ----------
    columns
        Mapping of column name (see :data:`COLUMNS`) to a 1-D array, all the
        same length.
    """

    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lengths = set()
        for name, values in list(self.columns.items()):
            if name not in _BY_NAME:
                raise ValueError(f"unknown particle-parameter column {name!r}")
            array = np.asarray(values, dtype=_BY_NAME[name].dtype)
            if array.ndim != 1:
                raise ValueError(f"column {name!r} must be 1-D, got shape {array.shape}")
            self.columns[name] = array
            lengths.add(array.shape[0])
        if len(lengths) > 1:
            raise ValueError(f"particle-parameter columns differ in length: {sorted(lengths)}")

    def __len__(self) -> int:
        for values in self.columns.values():
            return int(values.shape[0])
        return 0

    @property
    def active_names(self) -> list[str]:
        """Names of the columns present, in cisTEM's write order."""
        return [c.name for c in COLUMNS if c.name in self.columns]

    def get(self, name: str) -> np.ndarray:
        """Return column ``name``, or an array of its default if absent."""
        if name not in _BY_NAME:
            raise KeyError(f"unknown particle-parameter column {name!r}")
        if name in self.columns:
            return self.columns[name]
        column = _BY_NAME[name]
        return np.full(len(self), column.default, dtype=column.dtype)

    def set(self, name: str, values: Any) -> None:
        """Set column ``name`` (broadcasting a scalar to the table length)."""
        if name not in _BY_NAME:
            raise KeyError(f"unknown particle-parameter column {name!r}")
        column = _BY_NAME[name]
        n = len(self) if self.columns else np.size(values)
        self.columns[name] = np.broadcast_to(np.asarray(values, dtype=column.dtype), (n,)).copy()

    @classmethod
    def with_defaults(cls, n: int, names: list[str] | None = None) -> ParticleParameters:
        """Return ``n`` rows of defaults for ``names`` (default: every column)."""
        chosen = names if names is not None else [c.name for c in COLUMNS]
        table = cls({})
        for name in chosen:
            column = _BY_NAME[name]
            table.columns[name] = np.full(n, column.default, dtype=column.dtype)
        if "position_in_stack" in table.columns:
            table.columns["position_in_stack"] = np.arange(1, n + 1, dtype=np.int64)
        return table
