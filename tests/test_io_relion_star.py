"""RELION 3.0/3.1 particle star files: real files, sign conventions, round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cistemd.errors import InvalidInputError
from cistemd.io import relion_star
from cistemd.io._star import read_star
from cistemd.io.parameters import ParticleParameters

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "particles"


def _need(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"shared test data not present: {path}")
    return path


def _raw_column(path: Path, block: str, label: str) -> np.ndarray:
    blocks = read_star(path, lambda b, lab: "float" if lab == label else None)
    chosen = next(b for b in blocks if b.name == block)
    return np.asarray(chosen.columns[label])


def test_relion31_real_file() -> None:
    path = _need("relion31.star")
    particles = relion_star.read(path)
    params = particles.params
    assert particles.version == "3.1" and len(particles) == 5
    (group,) = particles.optics_groups
    assert (group.name, group.pixel_size_angstroms, group.voltage_kv) == ("opticsGroup1", 2.806,
                                                                         300.0)
    assert (group.spherical_aberration_mm, group.amplitude_contrast, group.image_size) == (
        0.01, 0.1, 256)
    np.testing.assert_allclose(params.get("pixel_size"), 2.806)
    np.testing.assert_allclose(params.get("microscope_spherical_aberration_mm"), 0.01)
    np.testing.assert_allclose(params.get("defocus_1")[:2], [13108.082418, 12906.018499])
    np.testing.assert_allclose(params.get("defocus_2")[0], 12845.582418)
    np.testing.assert_allclose(params.get("defocus_angle")[0], -160.39)
    # phi = Rot, theta = Tilt, psi = Psi
    np.testing.assert_allclose(params.get("phi")[0], -102.30296)
    np.testing.assert_allclose(params.get("theta")[0], 82.318041)
    np.testing.assert_allclose(params.get("psi")[0], 124.706463)
    # cisTEM shift = -rlnOriginXAngst
    origin_x = _raw_column(path, "particles", "rlnOriginXAngst")
    np.testing.assert_allclose(params.get("x_shift"), -origin_x)
    np.testing.assert_allclose(params.get("y_shift")[:2], [0.64686, -0.403454])
    np.testing.assert_array_equal(params.get("position_in_stack"), [1, 2, 3, 4, 5])
    assert set(params.get("stack_filename")) == {"relion31.mrcs"}
    assert particles.image_names[0] == "000001@relion31.mrcs"
    assert particles.micrograph_names is not None
    assert particles.micrograph_names[0].startswith("Micrographs/18aug10a_MC2")
    assert particles.coordinates_pixels is not None
    np.testing.assert_allclose(particles.coordinates_pixels[0], [3277.0, 983.0])
    np.testing.assert_array_equal(params.get("assigned_subset"), [1] * 5)
    # The wizard's defaults for what RELION does not have.
    np.testing.assert_allclose(params.get("occupancy"), 100.0)
    np.testing.assert_allclose(params.get("sigma"), 10.0)
    np.testing.assert_array_equal(params.get("image_is_active"), 1)


def test_sample_relion31_two_optics_groups() -> None:
    particles = relion_star.read(_need("sample_particles_relion31.star"))
    params = particles.params
    assert len(particles) == 17 and [g.voltage_kv for g in particles.optics_groups] == [300, 200]
    np.testing.assert_array_equal(particles.optics_group, [1] * 8 + [2] * 9)
    np.testing.assert_allclose(params.get("microscope_voltage_kv"), [300.0] * 8 + [200.0] * 9)
    np.testing.assert_allclose(params.get("pixel_size"), 1.4)
    np.testing.assert_allclose(params.get("defocus_1"), 21186.804688)


def test_sample_relion30_pixel_size_from_magnification() -> None:
    path = _need("sample_particles_relion30.star")
    particles = relion_star.read(path)
    params = particles.params
    assert particles.version == "3.0" and len(particles) == 17 and particles.optics_groups == ()
    pixel = 5.0 * 1e4 / 37369.207031  # _rlnDetectorPixelSize µm × 10⁴ / _rlnMagnification
    np.testing.assert_allclose(params.get("pixel_size"), pixel)
    # 3.0 origins are in pixels: cisTEM shift = -rlnOriginX × pixel size.
    origin_x = _raw_column(path, "model_class_1", "rlnOriginX")
    np.testing.assert_allclose(params.get("x_shift"), -origin_x * pixel)
    np.testing.assert_allclose(params.get("microscope_voltage_kv"), [300.0] * 8 + [200.0] * 9)
    # The same particles in the 3.1 sample carry the same angles (its 15th row is a
    # copy of the 14th, so compare the first 14).
    same = relion_star.read(_need("sample_particles_relion31.star")).params
    for name in ("phi", "theta", "psi", "defocus_1", "defocus_2", "defocus_angle"):
        np.testing.assert_allclose(params.get(name)[:14], same.get(name)[:14])


def test_empiar_10076_ctf_only() -> None:
    particles = relion_star.read(_need("empiar_10076_7.star"))
    params = particles.params
    assert len(particles) == 7
    np.testing.assert_allclose(params.get("pixel_size"), 5.0 * 1e4 / 38168)
    np.testing.assert_allclose(params.get("defocus_1")[0], 15301.1)
    np.testing.assert_allclose(params.get("defocus_2")[0], 14916.4)
    np.testing.assert_allclose(params.get("defocus_angle"), 5.28)
    np.testing.assert_allclose(params.get("amplitude_contrast"), 0.07)
    np.testing.assert_array_equal(params.get("position_in_stack"), np.arange(1, 8))
    assert not np.any(np.signbit(params.get("x_shift")))  # no negative zeros


def test_relion30_without_pixel_size_needs_it(tmp_path: Path) -> None:
    path = tmp_path / "nopix.star"
    path.write_text(
        "data_\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n"
        "_rlnVoltage\n_rlnSphericalAberration\n_rlnAmplitudeContrast\n_rlnOriginX\n"
        "1@s.mrcs 10000 9000 10 300 2.7 0.1 2.0\n"
    )
    with pytest.raises(InvalidInputError, match=r"no pixel size.*pixel_size_angstroms="):
        relion_star.read(path)
    params = relion_star.read(path, pixel_size_angstroms=1.5).params
    np.testing.assert_allclose(params.get("x_shift"), -3.0)
    np.testing.assert_allclose(params.get("pixel_size"), 1.5)


def _table(n: int, seed: int = 0) -> ParticleParameters:
    rng = np.random.default_rng(seed)
    return ParticleParameters({
        "position_in_stack": np.arange(1, n + 1),
        "psi": rng.uniform(-180, 180, n),
        "theta": rng.uniform(0, 180, n),
        "phi": rng.uniform(-180, 180, n),
        "x_shift": rng.normal(0, 3, n),
        "y_shift": rng.normal(0, 3, n),
        "defocus_1": rng.uniform(8000, 30000, n),
        "defocus_2": rng.uniform(8000, 30000, n),
        "defocus_angle": rng.uniform(-90, 90, n),
        "phase_shift": rng.uniform(0, 90, n),
        "pixel_size": np.full(n, 1.06),
        "microscope_voltage_kv": np.full(n, 300.0),
        "microscope_spherical_aberration_mm": np.full(n, 2.7),
        "amplitude_contrast": np.full(n, 0.07),
        "stack_filename": np.array(["particles/stack.mrcs"] * n, dtype=object),
        "original_image_filename": np.array([f"mic_{i % 3}.mrc" for i in range(n)], dtype=object),
        "assigned_subset": rng.integers(1, 3, n),
    })


@pytest.mark.parametrize("version", ["3.1", "3.0"])
def test_round_trip(tmp_path: Path, version: str) -> None:
    table = _table(25)
    names = [f"{i:06d}@particles/stack.mrcs" for i in range(1, 26)]
    path = tmp_path / f"rt{version}.star"
    relion_star.write(path, table, image_names=names, version=version, image_size=128)
    back = relion_star.read(path)
    assert back.version == version
    assert back.image_names == names
    assert back.micrograph_names == list(table.get("original_image_filename"))
    for name in table.active_names:
        got, want = back.params.get(name), table.get(name)
        if got.dtype == object:
            assert list(got) == list(want)
        else:
            np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-9, err_msg=name)
    if version == "3.1":
        (group,) = back.optics_groups
        assert (group.name, group.image_size) == ("opticsGroup1", 128)


def test_several_optics_groups_are_written(tmp_path: Path) -> None:
    table = _table(6)
    table.set("microscope_voltage_kv", [300.0, 200.0, 300.0, 200.0, 300.0, 300.0])
    path = tmp_path / "g.star"
    relion_star.write(path, table, image_names=[f"{i}@s.mrcs" for i in range(1, 7)])
    back = relion_star.read(path)
    assert sorted(g.name for g in back.optics_groups) == ["opticsGroup1", "opticsGroup2"]
    np.testing.assert_allclose(back.params.get("microscope_voltage_kv"),
                               table.get("microscope_voltage_kv"))


def test_write_validation(tmp_path: Path) -> None:
    table = _table(3)
    with pytest.raises(ValueError, match="3 particles"):
        relion_star.write(tmp_path / "x.star", table, image_names=["1@a"])
    with pytest.raises(ValueError, match="version"):
        relion_star.write(tmp_path / "x.star", table, image_names=["a"] * 3, version="4.0")
    table.set("pixel_size", 0.0)
    with pytest.raises(ValueError, match="positive"):
        relion_star.write(tmp_path / "x.star", table, image_names=["a"] * 3)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("data_\nloop_\n_rlnMicrographName\nm.mrc\n", "no _rlnImageName"),
        ("data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n_rlnVoltage\n"
         "_rlnSphericalAberration\n_rlnAmplitudeContrast\n1 1.0 300 2.7 0.1\n"
         "data_particles\nloop_\n_rlnImageName\n_rlnOpticsGroup\n_rlnDefocusU\n1@a.mrcs 2 1000\n",
         "optics group 2 is not in data_optics"),
        ("data_\nloop_\n_rlnImageName\n_rlnDetectorPixelSize\n_rlnMagnification\n"
         "1@a.mrcs 5 0\n", "_rlnMagnification is 0.0"),
        ("data_\nloop_\n_rlnImageName\n_rlnImagePixelSize\n1@a.mrcs 1.0\n", "no _rlnDefocusU"),
        ("data_\nloop_\n_rlnImageName\n_rlnImagePixelSize\n_rlnDefocusU\n"
         "x@a.mrcs 1.0 100\n", "is not NUMBER@FILE"),
        ("data_\nloop_\n_rlnImageName\n_rlnImagePixelSize\n_rlnDefocusU\n"
         "1@a.mrcs 1.0 inf\n", "not a finite number"),
    ],
)
def test_errors(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.star"
    path.write_text(body)
    with pytest.raises(InvalidInputError, match=message):
        relion_star.read(path)
